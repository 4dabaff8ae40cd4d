"""``make bench``: measure picoclaw-fleet against the bare tools on a throwaway local fleet.

    python bench/run.py                # the full suite: 64/32/256 hosts, 5 repetitions; figure 7 at 16/64/256
    python bench/run.py --large        # figure 7 also at 512 hosts
    python bench/run.py --quick        # a smoke run: 4 hosts, 1 repetition, small files
    python bench/run.py --only 1,5     # some figures only

Starts a real sshd on 127.0.0.1 with one Unix user per simulated host (the
harness's `Testbed`, as the tests use it; needs root), measures the figures, prints the
table (then figure 7 as a table of fleet sizes) and writes ``bench/results.json``
and, when figure 7 ran, its plot ``fleet-sizes.png`` next to it (``--plot``).
The peer tools and matplotlib come from ``.venv/bench-peers`` (``make bench``
installs them; nothing is installed here). Everything it created is removed at
the end, also after an error or Ctrl-C. Exit status: 0 when every figure was
measured (goals met or not: the numbers are the output), 1 when a figure
could not be measured (a peer that is not installed included).
"""

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__" and sys.path[0] == str(ROOT / "bench"):
    sys.path[0] = str(ROOT)  # run as a script: import bench.* and harness.* as packages, not bench/'s modules

from bench import plot  # noqa: E402
from bench.figures import FIGURES, Bench  # noqa: E402
from bench.fleet import API_KEY_ENV, DUMMY_KEY, BenchFleet  # noqa: E402
from bench.peers import DEFAULT_FANOUT_PEERS, PEERS, PEERS_DIR  # noqa: E402
from bench.results import Row, render, write_json  # noqa: E402
from harness.loopback import guarded_env, install_loopback_guard  # noqa: E402

#: Where ``make bench`` installs parallel-ssh (``pip --target``), which figures 1b and 3c import
#: in this process: never the product's venv itself.
EXTRAS = PEERS_DIR / "parallel-ssh"
#: The Python that draws figure 7's plot: a venv of its own, so matplotlib is never ours.
PLOT_PYTHON = PEERS_DIR / "matplotlib" / "bin" / "python"
ALL_FIGURES = "1,2,3,4,5,6,7,8"
SIZES = "16,64,256"
LARGE_SIZE = 512


def parse_options(argv=None):
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=64, help="hosts for figures 1-3 (default 64)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per figure, median reported (default 5)")
    parser.add_argument("--parallel", type=int, default=0,
                        help="concurrency for figures 1-3 (default: one per host, like ThreadingGroup)")
    parser.add_argument("--batch-hosts", type=int, default=32, help="hosts for figure 4 (default 32)")
    parser.add_argument("--batch-tasks", type=int, default=256, help="tasks for figure 4 (default 256)")
    parser.add_argument("--rss-hosts", type=int, default=256, help="hosts for figure 6 (default 256)")
    parser.add_argument("--big-mb", type=float, default=15, help="size of the first-deploy binary, MB (default 15)")
    parser.add_argument("--sizes", default=SIZES, help=f"fleet sizes for figure 7 (default {SIZES})")
    parser.add_argument("--large", action="store_true", help=f"figure 7 also at {LARGE_SIZE} hosts")
    parser.add_argument("--only", default=ALL_FIGURES, help="comma-separated figures to run (default all)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json", help="where to write JSON")
    parser.add_argument("--plot", type=Path, default=None,
                        help="where to write figure 7's plot (default: fleet-sizes.png next to --out)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: --hosts 4 --reps 1 --batch-hosts 4 --batch-tasks 16 --rss-hosts 8 --big-mb 1 "
                             "--sizes 4")
    options = parser.parse_args(argv)
    if options.quick:
        options.hosts, options.reps, options.batch_hosts = 4, 1, 4
        options.batch_tasks, options.rss_hosts, options.big_mb = 16, 8, 1
        options.sizes = "4"
    options.only = [f.strip() for f in options.only.split(",") if f.strip()]
    try:
        options.sizes = sorted({int(n) for n in options.sizes.split(",") if n.strip()} | ({LARGE_SIZE} if options.large else set()))
    except ValueError:
        parser.error("--sizes takes comma-separated numbers of hosts")
    if options.plot is None:
        options.plot = options.out.with_name("fleet-sizes.png")
    for name in ("hosts", "reps", "batch_hosts", "batch_tasks", "rss_hosts"):
        if getattr(options, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be 1 or more")
    if not options.sizes or min(options.sizes) < 1:
        parser.error("--sizes must name 1 or more hosts")
    return options


def fleet_size(options):
    """The sim hosts the run needs: the largest any of the chosen figures takes."""
    wanted = {"4": [options.batch_hosts], "6": [options.rss_hosts], "7": options.sizes, "8": [options.hosts]}
    return max([options.hosts] + [n for figure in options.only for n in wanted.get(figure, [])])


def use_bench_extras():
    """Make the bench-only packages importable; True when parallel-ssh is there."""
    if EXTRAS.is_dir() and str(EXTRAS) not in sys.path:
        sys.path.append(str(EXTRAS))  # after the venv's own packages: they win any overlap
    import importlib

    try:
        importlib.import_module("pssh.clients")  # its C extensions must load, not just the package be there
    except ImportError:
        return False
    return True


def compile_project():
    """Write the project's bytecode before anything is timed, as its first run on any machine does.

    The editable install leaves fabfile's ``__pycache__`` to Python, and a
    shell with PYTHONDONTWRITEBYTECODE set (this project's own sandbox has
    it) never writes it: every CLI run would compile ~20 modules from
    source, which the baselines, installed from wheels, never do.
    """
    import compileall

    compileall.compile_dir(str(ROOT / "fabfile"), quiet=1)


def child_env(workdir):
    """Environment for the CLI children: loopback guard, the dummy key, a private download cache and ledger."""
    env = guarded_env()
    env[API_KEY_ENV] = DUMMY_KEY
    env["XDG_CACHE_HOME"] = str(workdir / "cache")
    env["PICOCLAW_FLEET_CONFIG"] = str(workdir / "no-such-config.json")  # never the user's own fleet
    env["PICOCLAW_FLEET_LEDGER"] = str(workdir / "runs.sqlite")  # thousands of runs: never the user's ledger
    return env


def run_figures(bench, figures):
    """Each figure's rows; a figure that raises becomes one error row, and the others still run."""
    rows = []
    for figure in figures:
        started = time.monotonic()
        print(f"bench: figure {figure} ...", file=sys.stderr, flush=True)
        try:
            rows += FIGURES[figure](bench)
        except Exception as exc:
            traceback.print_exc()
            rows.append(Row(figure, f"figure {figure}", error=f"{type(exc).__name__}: {exc}"))
        print(f"bench: figure {figure} took {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def main(argv=None):
    options = parse_options(argv)
    unknown = [f for f in options.only if f not in FIGURES]
    if unknown:
        sys.exit(f"bench: unknown figure(s) {', '.join(unknown)}: choose from {', '.join(FIGURES)}")
    install_loopback_guard()  # this process talks to 127.0.0.1 only, whatever a bug says
    compile_project()
    have_pssh = use_bench_extras()
    size = fleet_size(options)
    started, load_at_start = time.time(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pcf-bench-") as tmp:
        workdir = Path(tmp)
        env = child_env(workdir)
        os.environ.update({k: env[k] for k in (API_KEY_ENV, "XDG_CACHE_HOME", "PICOCLAW_FLEET_CONFIG")})
        fleet = BenchFleet(size, workdir)
        try:
            print(f"bench: creating {size} sim hosts on a private sshd ...", file=sys.stderr, flush=True)
            fleet.start()
            print(f"bench: testbed up in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
            rows = run_figures(Bench(fleet, options, workdir, env, have_pssh), options.only)
        finally:
            fleet.stop()
    info = run_info(options, argv, started, have_pssh)
    info["machine"]["load1_at_start"] = load_at_start
    info["testbed"] = {"user_prefix": fleet.testbed.user_prefix, "workdir": str(fleet.testbed.workdir),
                       "scratch": str(workdir), "hosts": size}
    print(render(rows))
    table = plot.pivot([row.to_json() for row in rows])
    if table["tools"]:
        info["fleet_sizes"] = table
        print(f"\nfigure 7, wall time against fleet size: ratio to the {plot.BASELINE} (median seconds)")
        print(render_table(plot.table_rows(table), plot.headers(table)))
    write_json(options.out, rows, info)
    print(f"\nwritten to {options.out} ({time.time() - started:.0f} s)")
    if table["tools"]:
        print(draw_plot(options.out, options.plot))
    return 1 if any(row.error for row in rows) else 0


def render_table(rows, headers):
    from fabfile.core.report import render_table as render

    return render(rows, headers)


def draw_plot(results, out):
    """Draw figure 7's PNG with the matplotlib venv; what happened, as one line."""
    import subprocess

    if not PLOT_PYTHON.exists():
        return f"plot: not drawn, matplotlib is not installed ({PLOT_PYTHON}); make bench installs it"
    with tempfile.TemporaryDirectory(prefix="pcf-bench-plot-") as cache:  # matplotlib's font cache: not kept
        env = {**guarded_env(), "MPLCONFIGDIR": cache, "XDG_CACHE_HOME": cache}
        proc = subprocess.run([str(PLOT_PYTHON), str(ROOT / "bench" / "plot.py"), str(results), str(out)],
                              env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return f"plot: failed ({proc.returncode}): {proc.stderr.strip()[-500:]}"
    return f"plot written to {out}"


def run_info(options, argv, started, have_pssh):
    """How this run was made, for results.json."""
    import platform

    from bench.sizes import persist_built

    return {
        "command": " ".join(["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load1_at_end": os.getloadavg()[0]},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()},
        "parallel_ssh": have_pssh,
        "peers": {peer.key: peer.missing() for peer in PEERS + DEFAULT_FANOUT_PEERS},
        "peer_versions": {peer.key: peer.version() for peer in PEERS + DEFAULT_FANOUT_PEERS},
        "persist_built": persist_built(),
    }


if __name__ == "__main__":
    sys.exit(main())
