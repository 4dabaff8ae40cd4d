"""Figures 7 and 8: our CLI and the peer tools at 16/64/256 hosts (512 with --large), and warm connections.

Figure 7 times whole processes -- each tool started as a user starts it, so
interpreter start, imports and config parsing count for everyone -- against
a bare Fabric ``ThreadingGroup`` script running ``true`` (bench/scripts/),
started the same way, on the same hosts, in the same interleaved rounds: our
``fab dispatch --all`` and ``fab status``, then every peer of bench/peers.py,
all at one connection per host; then ``fab status`` and pyinfra again at the
fanout each picks when given none (what most users run).
A peer that is not installed, or that fails, gets an error row; the others
are still measured. Figure 8 is the warm-connection figure: a second
``dispatch --all`` over connections kept open, once fabfile has them.
"""

import json
import sys

from fabfile.core.config import DEFAULTS

from . import peers
from .measure import interleaved, run_child
from .results import Goal, Row

#: From this fleet size on, figure 7 makes at most `LARGE_REPS` repetitions (each round runs nine tools).
LARGE_FROM = 256
LARGE_REPS = 3
BASELINE_WHAT = "ThreadingGroup script ('true')"
#: Figure 7's row for ``fab status`` at the fleet's default ``parallel``, what a user who gives none gets.
DEFAULT_LABEL = "fab status (CLI), default --parallel"
DEFAULT_PARALLEL = DEFAULTS["parallel"]
TASK_TEXT = "bench: hello"


def size_reps(reps, hosts):
    """Repetitions at a fleet size: all of them below `LARGE_FROM` hosts, at most `LARGE_REPS` from it on."""
    return reps if hosts < LARGE_FROM else min(reps, LARGE_REPS)


def figure_sizes(bench):
    """Figure 7: one group of rows per fleet size."""
    rows = []
    for hosts in bench.options.sizes:
        print(f"bench: figure 7 at {hosts} hosts ...", file=sys.stderr, flush=True)
        rows += size_rows(bench, hosts, first=not rows)
    return rows


class Side:
    """One tool of a round: its process, checked; after a failure it stops running (and is reported)."""

    def __init__(self, argv, env, cwd, check):
        self.argv, self.env, self.cwd, self.check = [str(a) for a in argv], env, cwd, check
        self.error = ""

    def __call__(self):
        if self.error:
            return None
        try:
            self.check(run_child(self.argv, env=self.env, cwd=self.cwd))
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        return None


def bare_check(files):
    """The check of a bare script's run over `files`' hosts: exit 0, every host ok."""
    def check(run):
        if run.returncode != 0:
            raise peers.PeerFailed(f"exited {run.returncode}: {run.stderr.strip()[-300:]}")
        peers.expect_ok_count(run, files)
    return check


def cli_check(verb, count, warm=False):
    """The check of a ``fab VERB --json`` run: exit 0, `count` hosts ok, a dispatch's answers the task text.

    `warm`: the run must also have used the warm-connection process (no
    ``persist:`` line saying it connected directly).
    """
    from .figures import expect_all_ok
    from .verbs import VerbFailed, summary

    def check(run):
        if run.returncode != 0 or (warm and "persist:" in run.stderr):
            said = summary(run.stdout) if run.stdout.strip() else ""
            raise VerbFailed(f"fab {verb} exited {run.returncode}: {said} {run.stderr.strip()[-300:]}")
        data = expect_all_ok(json.loads(run.stdout), count, verb)
        if verb == "dispatch" and any(h["answer"] != TASK_TEXT for h in data["hosts"]):
            raise VerbFailed("dispatch: a host answered something other than the task text")
    return check


def size_rows(bench, count, first):
    """Figure 7 at `count` hosts: the rows ``7a/N`` (ours) ... ``7h/N`` (the peers)."""
    from .figures import ROOT

    hosts = bench.fleet.hosts[:count]
    bench.fleet.install_standin(hosts)
    files = peers.SizeFiles(hosts, bench.fleet.client_key, bench.fleet.known_hosts,
                            bench.workdir / f"peers-{count}").write()
    config = bench.fleet.config(f"sizes-{count}", hosts, count)
    default_config = bench.fleet.config(f"sizes-{count}-default", hosts, None)  # defaults.parallel: ours
    python, fab = sys.executable, str(bench.bindir / "fab")
    bare_ok = bare_check(files)

    tg_argv = [python, peers.SCRIPTS / "threading_group_true.py", files.path("hosts.json")]
    sides = {
        "threading-group": Side(tg_argv, bench.env, files.directory, bare_ok),
        "dispatch": Side([fab, "dispatch", "--all", "--task", TASK_TEXT, "--config", config, "--json"],
                         bench.env, ROOT, cli_check("dispatch", count)),
        "status": Side([fab, "status", "--config", config, "--json"], bench.env, ROOT,
                       cli_check("status", count)),
        "status-default": Side([fab, "status", "--config", default_config, "--json"], bench.env, ROOT,
                               cli_check("status", count)),
    }
    commands = {key: peers.Invocation(side.argv).text() for key, side in sides.items()}
    absent = {}
    for peer in peers.PEERS + peers.DEFAULT_FANOUT_PEERS:
        absent[peer.key] = peer.missing()
        if absent[peer.key]:
            continue
        invocation = peer.invocation(files, python)
        sides[peer.key] = Side(invocation.argv, peers.merged_env(bench.env, invocation.env), invocation.cwd,
                               lambda run, peer=peer: peer.check(run, files))
        commands[peer.key] = invocation.text()
    reps = size_reps(bench.options.reps, count)
    s = interleaved(reps, sides)

    tools = [("a", "dispatch", "fab dispatch --all (CLI)", "a task through the stand-in PicoClaw")]
    tools += [("b", "status", "fab status (CLI)", "the status probe")]
    tools += [(chr(ord("c") + i), p.key, p.label, f"{p.ran}, {p.version()}") for i, p in enumerate(peers.PEERS)]
    # then each at the fanout a user who gives none gets (every row above: one connection per host at once)
    tools += [(chr(ord("c") + len(peers.PEERS)), "status-default", DEFAULT_LABEL,
               f"the status probe at defaults.parallel {DEFAULT_PARALLEL}")]
    tools += [(chr(ord("d") + len(peers.PEERS) + i), p.key, p.label, f"{p.ran}, {p.version()}")
              for i, p in enumerate(peers.DEFAULT_FANOUT_PEERS)]
    baseline_error = sides["threading-group"].error
    rows = []
    for letter, key, label, ran in tools:
        row = Row(f"7{letter}/{count}", f"{label}, {count} hosts", baseline_what=BASELINE_WHAT,
                  tags={"tool": key, "label": label, "hosts": count})
        error = absent.get(key) or sides[key].error or (baseline_error and f"the baseline failed: {baseline_error}")
        if error:
            row.error = error
        else:
            row.ours, row.baseline = s[key], s["threading-group"]
        if first:
            row.notes.append(f"runs {ran}: {commands.get(key, '(not installed)')}")
        rows.append(row)
    rows[0].notes.insert(0, f"{reps} interleaved repetitions at {count} hosts"
                         + (f" (at most {LARGE_REPS} from {LARGE_FROM} hosts on, to keep the run short)"
                            if reps < bench.options.reps else "")
                         + f"; fanout {files.fanout} (one per host) for every tool but the last two rows, which "
                         f"run at their own default (ours: {DEFAULT_PARALLEL}; pyinfra: 20 per CPU); whole "
                         "processes; every OpenSSH-based peer uses the same ssh_config (curve25519-sha256, "
                         "no ControlMaster)")
    if first:
        rows[0].notes.insert(1, f"baseline: {commands['threading-group']}")
    return rows


# ---- 8. warm connections ----------------------------------------------------------------


def persist_built():
    """Whether fabfile has persistent connections: a ``persist`` task, or ``defaults.persist`` in its config."""
    from fabfile.core import config

    from .verbs import TASKS

    return "persist" in TASKS.task_names or "persist" in getattr(config, "DEFAULTS", {})


def figure_warm(bench):
    """Figure 8: a second ``dispatch --all`` (and ``status``) over warm connections, at ``--hosts``.

    The warm-up round of `interleaved` is the first run, which opens the
    connections; every timed run after it finds them kept. The process
    keeping them lives in a runtime directory of the bench's own and is
    stopped at the end.
    """
    from .figures import ROOT

    count = bench.options.hosts  # figures 1-3's fleet: 64 hosts, 4 with --quick
    what = f"{count} hosts"
    if not persist_built():
        row = Row("8", f"fab dispatch --all, warm connections, {what}", baseline_what=BASELINE_WHAT, absent="not built")
        row.notes.append("needs persistent connections (`fab persist` / defaults.persist)")
        return [row]
    print(f"bench: figure 8 (warm connections) at {count} hosts ...", file=sys.stderr, flush=True)
    hosts = bench.fleet.hosts[:count]
    bench.fleet.install_standin(hosts)
    files = peers.SizeFiles(hosts, bench.fleet.client_key, bench.fleet.known_hosts, bench.workdir / "warm").write()
    config = bench.fleet.config("warm", hosts, count)
    env = {**bench.env, "PICOCLAW_FLEET_RUNTIME_DIR": str(bench.workdir / "warm-runtime")}
    python, fab = sys.executable, str(bench.bindir / "fab")
    bare_ok = bare_check(files)

    dispatch = [fab, "dispatch", "--all", "--task", TASK_TEXT, "--config", config, "--json", "--no-record"]
    status = [fab, "status", "--config", config, "--json"]
    sides = {
        "threading-group": Side([python, peers.SCRIPTS / "threading_group_true.py", files.path("hosts.json")],
                                bench.env, files.directory, bare_ok),
        "warm-dispatch": Side([*dispatch, "--persist", "600"], env, ROOT, cli_check("dispatch", count, warm=True)),
        "cold-dispatch": Side(dispatch, env, ROOT, cli_check("dispatch", count)),
        "warm-status": Side([*status, "--persist", "600"], env, ROOT, cli_check("status", count, warm=True)),
    }
    try:
        s = interleaved(bench.options.reps, sides)
    finally:
        run_child([fab, "persist", "stop"], env=env, cwd=ROOT)
    rows = [
        Row("8a", f"fab dispatch --all, warm connections (a second run), {what}", baseline_what=BASELINE_WHAT,
            goal=Goal("ratio", "<=", 0.3)),
        Row("8b", f"fab status, warm connections (a second run), {what}", baseline_what=BASELINE_WHAT),
        Row("8c", f"fab dispatch --all, warm connections, {what}", baseline_what="the same, connecting afresh"),
    ]
    pairs = [("warm-dispatch", "threading-group"), ("warm-status", "threading-group"), ("warm-dispatch", "cold-dispatch")]
    for row, (ours, base) in zip(rows, pairs):
        error = sides[ours].error or sides[base].error
        if error:
            row.error = error
        else:
            row.ours, row.baseline = s[ours], s[base]
    rows[0].notes.append(f"{bench.options.reps} interleaved repetitions after a warm-up run that opens the "
                         "connections; the warm process runs in a directory of the bench's own, stopped afterwards")
    rows[0].notes.append("the hosts still run the stand-in PicoClaw for each task (~16 ms of CPU each, on the "
                         "same 2 CPUs as the client): that host work stays in the warm figure")
    return rows
