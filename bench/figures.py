"""The figures of ``make bench``, each a function from the running `Bench` to table rows.

Every figure sets up the host state it needs (stand-in installed or not)
on its own subset of the fleet, so figures can run alone (``--only 3``)
and in any order. Our side and the baseline alternate within one loop.
Figures 7 (fleet sizes against the peer tools) and 8 (warm connections)
live in bench/sizes.py.
"""

import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fabfile.host.agent import agent_command
from harness.standin import build_standin
from harness.testbed import DEFAULT_PATH, installed_binary

from . import baselines, verbs
from .sizes import figure_sizes, figure_warm
from .fleet import TIMEOUT_S, VERSION
from .measure import Measured, Sample, interleaved, run_child
from .results import Goal, Row

ROOT = Path(__file__).resolve().parent.parent
#: The batch figure: each task sleeps this long on its host.
TASK_SLEEP_S = 0.2


@dataclass
class Bench:
    """Everything a figure needs: the fleet, the options, where to write, how to start our CLI."""

    fleet: object
    options: object
    workdir: Path
    env: dict  # environment for child processes (loopback guard loaded)
    have_pssh: bool

    @property
    def bindir(self):
        """The venv's bin directory: ``fab`` and ``picoclaw-fleet`` as this Python installed them."""
        return Path(sys.executable).parent

    @property
    def hosts(self):
        return self.fleet.hosts[: self.options.hosts]

    def parallel(self, hosts):
        """The concurrency for a figure: ``--parallel``, else one per host (what ThreadingGroup does)."""
        return self.options.parallel or len(hosts)

    def cli(self, *args, cwd=ROOT, peak_rss=False):
        """Run ``fab ARGS`` as a user would; a `measure.ChildRun`, raising on a non-zero exit."""
        run = run_child([str(self.bindir / "fab"), *map(str, args)], env=self.env, cwd=cwd, peak_rss=peak_rss)
        if run.returncode != 0:
            said = verbs.summary(run.stdout) if run.stdout.strip() else run.stderr.strip()[-300:]
            raise verbs.VerbFailed(f"fab {args[0]} exited {run.returncode}: {said}")
        return run


def expect_all_ok(data, count, verb):
    """Raise unless the verb's JSON says every one of `count` hosts is ``ok``."""
    if data.get("summary") != {"ok": count}:
        raise verbs.VerbFailed(f"{verb}: expected {count} ok hosts, got {data.get('summary')}")
    return data


# ---- 1. dispatch --all ------------------------------------------------------------


def figure_dispatch(bench):
    """``dispatch --all`` of a trivial task against raw ThreadingGroup, parallel-ssh and OpenSSH."""
    hosts, key = bench.hosts, bench.fleet.client_key
    parallel = bench.parallel(hosts)
    bench.fleet.install_standin(hosts)
    config = bench.fleet.config("dispatch", hosts, parallel)
    text = "bench: hello"
    known_hosts = bench.workdir / "openssh_known_hosts"

    def ours():
        data = expect_all_ok(verbs.dispatch_all(config, text), len(hosts), "dispatch")
        if any(h["answer"] != text for h in data["hosts"]):
            raise verbs.VerbFailed("dispatch: a host answered something other than the task text")

    sides = {
        "ours": ours,
        "tg": lambda: baselines.threading_group_run(hosts, key),
        "tg_same": lambda: baselines.threading_group_run(hosts, key, same_agent_command(text)),
        "openssh": lambda: baselines.openssh_run(hosts, key, known_hosts, parallel),
        "cli": lambda: bench.cli("dispatch", "--all", "--task", text, "--config", config, "--json"),
    }
    if bench.have_pssh:
        sides["pssh"] = lambda: baselines.pssh_run(hosts, key, parallel)
    s = interleaved(bench.options.reps, sides)
    n = f"{len(hosts)} hosts"
    rows = [
        Row("1a", f"dispatch --all, {n}", s["ours"], s["tg"], "ThreadingGroup.run('true')", Goal("ratio", "<=", 1.2)),
        pssh_row("1b", f"dispatch --all, {n}", s["ours"], s.get("pssh"), "run_command('true')", Goal("ratio", "<=", 0.6)),
        Row("1c", f"dispatch --all, {n}", s["ours"], s["openssh"], f"ssh x{len(hosts)} in parallel"),
        Row("1d", f"fab dispatch --all (CLI), {n}", s["cli"], s["tg"], "ThreadingGroup.run('true')"),
        Row("1e", f"dispatch --all, {n}", s["ours"], s["tg_same"], "ThreadingGroup.run(same remote command)",
            Goal("ratio", "<=", 1.2)),
    ]
    kind = standin_kind(installed_binary(hosts[0]), hosts[0])
    rows[0].notes.append(f"parallel={parallel} for every side; the task runs the stand-in picoclaw ({kind}) on each "
                         "host, the baselines run 'true'")
    rows[3].notes.append("the CLI row includes interpreter start, imports and config parsing (figure 5)")
    agent_ms = remote_command_cpu_ms(agent_command(TIMEOUT_S), hosts[0], text.encode())
    true_ms = remote_command_cpu_ms("true", hosts[0])
    rows[4].notes.append(
        "isolates our own cost: the baseline runs dispatch's remote command through a bare ThreadingGroup. "
        f"That command costs {agent_ms:.0f} ms of CPU per host against {true_ms:.0f} ms for 'true' (measured "
        f"here), and the {len(hosts)} sim hosts share this machine's {os.cpu_count()} CPUs with the client")
    return rows


def same_agent_command(text):
    """Dispatch's remote command with the task on stdin (a here-document), for a bare ThreadingGroup."""
    return f"exec 0<<'PCF_BENCH_EOF'\n{text}\nPCF_BENCH_EOF\n{agent_command(TIMEOUT_S)}"


def pssh_row(figure, what, ours, pssh, baseline_what, goal):
    """A row against parallel-ssh, or an error row saying it is not installed."""
    if pssh is None:
        return Row(figure, what, ours, None, f"parallel-ssh {baseline_what}", goal,
                   error="parallel-ssh is not installed (make bench installs it into .venv/bench-extras)")
    return Row(figure, what, ours, pssh, f"parallel-ssh {baseline_what}", goal)


# ---- 2. status ----------------------------------------------------------------------


def figure_status(bench):
    """``status`` against raw ThreadingGroup ``true``, and against the same probe, on the same hosts."""
    from fabfile.host.facts import PROBE_COMMAND

    hosts, key = bench.hosts, bench.fleet.client_key
    bench.fleet.install_standin(hosts)
    config = bench.fleet.config("status", hosts, bench.parallel(hosts))
    s = interleaved(bench.options.reps, {
        "ours": lambda: expect_all_ok(verbs.status(config), len(hosts), "status"),
        "tg": lambda: baselines.threading_group_run(hosts, key),
        "tg_probe": lambda: baselines.threading_group_run(hosts, key, PROBE_COMMAND),
    })
    n = f"{len(hosts)} hosts"
    rows = [
        Row("2", f"status, {n}", s["ours"], s["tg"], "ThreadingGroup.run('true')", Goal("ratio", "<=", 1.3)),
        Row("2b", f"status, {n}", s["ours"], s["tg_probe"], "ThreadingGroup.run(facts.PROBE_COMMAND)",
            Goal("ratio", "<=", 1.3)),
    ]
    rows[0].notes.append("status runs one probe command per host: shell reads of /proc and /sys, the version from deploy's note, one head for PicoClaw's config.json (the shell masks .security.yml)")
    probe_ms, true_ms = remote_command_cpu_ms(PROBE_COMMAND, hosts[0]), remote_command_cpu_ms("true", hosts[0])
    rows[1].notes.append("isolates our own cost: the baseline runs the same probe through a bare ThreadingGroup. "
                         f"The probe costs {probe_ms:.0f} ms of CPU per host against {true_ms:.0f} ms for 'true'")
    return rows + [known_hosts_row(bench, len(hosts))]


def known_hosts_row(bench, count):
    """Row 2c: the client CPU a host of finding its key in a fleet-sized, hashed known_hosts.

    The simulated hosts all answer at one address and port, so one known_hosts
    line serves them all and the rows above never show what a real fleet's file
    costs: a line per host, hashed where ``HashKnownHosts yes`` is the default
    (Debian, Ubuntu). Measured in this process, as each side reads the file and
    looks up `count` different names: ours (`HostKeyStore`) against paramiko's
    `HostKeys`, loaded once and asked per host, as a Fabric user who checks
    host keys gets it (a bare ThreadingGroup checks none).
    """
    import time

    import paramiko

    from fabfile.ssh.known_hosts import HostKeyStore

    key = bench.fleet.testbed.host_key_line().split(" ", 1)[1]
    ports = [20000 + n for n in range(count)]
    path = bench.workdir / f"known_hosts-hashed-{count}"
    path.write_text("".join(f"{paramiko.HostKeys.hash_host(f'[127.0.0.1]:{port}')} {key}\n" for port in ports))

    def per_host_ms(lookup_all):
        started = time.process_time()
        found = lookup_all()
        if found != count:
            raise verbs.VerbFailed(f"known_hosts: {found} of {count} names found")
        return Measured((time.process_time() - started) / count * 1000, "ms")

    def ours():
        store = HostKeyStore("strict", path)
        clients = [paramiko.SSHClient() for _ in ports]
        for client, port in zip(clients, ports):
            store.apply(client, "127.0.0.1", port)
        return sum(len(client.get_host_keys()) for client in clients)

    def paramiko_host_keys():
        keys = paramiko.HostKeys(str(path))
        return sum(keys.lookup(f"[127.0.0.1]:{port}") is not None for port in ports)

    s = interleaved(bench.options.reps, {"ours": lambda: per_host_ms(ours),
                                          "paramiko": lambda: per_host_ms(paramiko_host_keys)})
    row = Row("2c", f"known_hosts of {count} hashed lines: a host's lookup (client CPU)", s["ours"], s["paramiko"],
              "paramiko HostKeys, loaded once", Goal("ratio", "<=", 0.2))
    row.notes.append("the simulated hosts share one address, so one known_hosts line serves figures 1-8; a real "
                     "fleet's file has a line per host, hashed under HashKnownHosts yes (Debian's default). Each "
                     "side reads the file and looks up every name; process CPU, in this process")
    return row


# ---- 3. deploy ----------------------------------------------------------------------


def figure_deploy(bench):
    """Re-deploy of the installed version (bytes, wall / status); first 15 MB deploy vs parallel-ssh copy."""
    hosts = bench.hosts
    config = bench.fleet.config("deploy", hosts, bench.parallel(hosts))
    bench.fleet.wipe(hosts)
    expect_all_ok(verbs.deploy(config), len(hosts), "deploy")  # the install being re-deployed: untimed

    def redeploy():
        data = expect_all_ok(verbs.deploy(config), len(hosts), "deploy")
        if any(h.get("binary") != "unchanged" for h in data["hosts"]):
            raise verbs.VerbFailed("re-deploy: a host's binary was not 'unchanged'")
        return data

    uploaded = Sample(unit="B")

    def redeploy_counting():
        uploaded.values.append(redeploy()["uploaded_bytes"])

    s = interleaved(bench.options.reps, {
        "ours": redeploy_counting,
        "status": lambda: expect_all_ok(verbs.status(config), len(hosts), "status"),
    })
    uploaded.values = uploaded.values[-bench.options.reps:]  # drop the warm-up round's count
    n = f"{len(hosts)} hosts"
    rows = [
        Row("3a", f"re-deploy v{VERSION}, {n}: bytes uploaded", uploaded, None, "", Goal("ours", "==", 0)),
        Row("3b", f"re-deploy v{VERSION}, {n}", s["ours"], s["status"], "status", Goal("ratio", "<=", 2)),
        first_deploy_row(bench, hosts),
    ]
    bench.fleet.wipe(hosts)
    return rows


def first_deploy_row(bench, hosts):
    """Figure 3c: ``deploy --from-file`` of a big stand-in to clean hosts vs parallel-ssh ``copy_file``."""
    size_mb = bench.options.big_mb
    big = build_standin(bench.workdir / "big" / "picoclaw", VERSION, pad_bytes=int(size_mb * 1024 * 1024))
    config = bench.fleet.config("deploy-big", hosts, bench.parallel(hosts))
    what = f"first deploy of a {size_mb:g} MB binary, {len(hosts)} hosts"
    if not bench.have_pssh:
        return pssh_row("3c", what, None, None, "copy_file", None)

    def wipe():
        bench.fleet.wipe(hosts)
        for host in hosts:
            shutil.rmtree(host.home / "pssh-copy", ignore_errors=True)

    def ours():
        data = expect_all_ok(verbs.deploy(config, from_file=big), len(hosts), "deploy")
        if data["uploaded_bytes"] < len(hosts) * big.stat().st_size:
            raise verbs.VerbFailed(f"first deploy uploaded only {data['uploaded_bytes']} bytes")

    s = interleaved(bench.options.reps, {
        "ours": ours,
        "pssh": lambda: baselines.pssh_copy(hosts, bench.fleet.client_key, bench.parallel(hosts), big,
                                            "pssh-copy/picoclaw"),
    }, between=wipe, warmup=False)  # a first deploy is cold by nature; and each round moves 2 GB
    row = Row("3c", what, s["ours"], s["pssh"], "parallel-ssh copy_file")
    per_host = [["sha256sum", str(big)], [str(big), "version"], [str(big), "version"]]  # check, version, onboard
    checks = cpu_seconds(per_host, hosts[0]) * len(hosts)
    row.notes.append(f"ours also verifies on each host (sha256sum of the upload, the new binary's 'version', "
                     f"then onboard) and writes .env; the copy only copies. Those checks alone cost {checks:.1f} "
                     f"CPU-s over {len(hosts)} hosts here (the {size_mb:g} MB stand-in: {standin_kind(big, hosts[0])}); "
                     "the hosts share this machine's CPUs")
    return row


def standin_kind(binary, host):
    """What the hosts' PicoClaw is, for the notes: the harness's one stand-in, and what a start costs here."""
    start_ms = cpu_seconds([[str(binary), "version"]] * 5, host) / 5 * 1000
    return f"the harness's Python stand-in, {start_ms:.0f} ms of CPU per 'version'"


def cpu_seconds(commands, host, stdin=b""):
    """CPU seconds that running `commands` (argv lists) costs, as sim `host` would run them.

    Run here, in the host's home with the PATH sshd gives it (so the
    stand-in's ``env python3`` finds the system Python, as on the hosts):
    the sim hosts share this machine's CPUs, so what their commands cost is
    a floor under every figure whose hosts run them.
    """
    import resource

    env = {"PATH": DEFAULT_PATH, "HOME": str(host.home), "LANG": "C.UTF-8"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for argv in commands:
        subprocess.run(argv, env=env, cwd=host.home, input=stdin, capture_output=True, check=True, timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def remote_command_cpu_ms(command, host, stdin=b"", runs=5):
    """Milliseconds of CPU one run of shell `command` costs on a sim host (``bash -c``, averaged)."""
    return cpu_seconds([["/bin/bash", "-c", command]] * runs, host, stdin) / runs * 1000


# ---- 4. batch -----------------------------------------------------------------------


def figure_batch(bench):
    """``batch`` of many short tasks over a few hosts: makespan / ideal, and connections opened."""
    hosts = bench.fleet.hosts[: bench.options.batch_hosts]
    count = bench.options.batch_tasks
    bench.fleet.install_standin(hosts)
    config = bench.fleet.config("batch", hosts, len(hosts))
    tasks_file = bench.workdir / "batch-tasks.txt"
    tasks = [f"::sleep={TASK_SLEEP_S:g}::task {i}" for i in range(count)]
    tasks_file.write_text("".join(task + "\n" for task in tasks))
    ideal = math.ceil(count / len(hosts)) * TASK_SLEEP_S
    connections, reported = Sample(unit=""), set()

    def ours():
        with verbs.ConnectionCounter() as counter:
            data = expect_tasks_ok(verbs.batch(config, tasks_file), count)
        connections.values.append(counter.opened)
        reported.add(data.get("connections_opened"))

    commands = [same_agent_command(task) for task in tasks]
    sides = {
        "ours": ours,
        "raw": lambda: baselines.fabric_sequential_tasks(hosts, bench.fleet.client_key, commands),
    }
    if bench.have_pssh:
        sides["pssh"] = lambda: baselines.pssh_sequential_tasks(hosts, bench.fleet.client_key, commands)
    s = interleaved(bench.options.reps, sides)
    connections.values = connections.values[-bench.options.reps:]
    what = f"batch {count} x {TASK_SLEEP_S:g} s tasks, {len(hosts)} hosts"
    rows = [
        Row("4a", f"{what}: makespan", s["ours"], Sample([ideal]), "ideal (tasks/hosts x sleep)",
            Goal("ratio", "<=", 1.2)),
        Row("4b", f"{what}: SSH connections opened", connections, None, "", Goal("ours", "==", len(hosts))),
        Row("4c", f"{what}: makespan", s["ours"], s["raw"], "raw Fabric, 1 Connection/host, tasks in turn",
            Goal("ratio", "<=", 1.2)),
        pssh_row("4d", f"{what}: makespan", s["ours"], s.get("pssh"), "run_command rounds, 1 connection/host",
                 Goal("ratio", "<=", 1.0)),
    ]
    task_ms = remote_command_cpu_ms(agent_command(TIMEOUT_S), hosts[0], tasks[0].encode(), runs=3)
    floor = count * task_ms / 1000 / os.cpu_count()
    kind = standin_kind(installed_binary(hosts[0]), hosts[0])
    rows[0].notes.append(f"each task costs {task_ms:.0f} ms of CPU on its host (stand-in: {kind}); "
                         f"{count} of them need >= {floor:.2f} s of this machine's {os.cpu_count()} CPUs before any "
                         f"SSH work, against the {ideal * 1.2:.2f} s the goal allows")
    rows[2].notes.append("isolates our own cost: the baseline deals the same tasks out evenly in advance and "
                         "runs them (the same remote command) on one connection per host: no queue, no probe")
    rows[3].notes.append("parallel-ssh deals the same tasks (the same remote command) out evenly in advance and "
                         "runs them in rounds, one task per host at a time, on connections kept across rounds")
    rows[1].notes.append("counted by wrapping paramiko.SSHClient.connect in the bench; batch's own "
                         f"connections_opened said {', '.join(map(str, sorted(reported, key=str)))}")
    return rows


def expect_tasks_ok(data, count):
    """Raise unless the batch JSON reports `count` tasks, all ``ok``."""
    statuses = [task["status"] for task in data["tasks"]]
    if len(statuses) != count or any(s != "ok" for s in statuses):
        raise verbs.VerbFailed(f"batch: expected {count} ok tasks, got {data.get('summary')}")
    return data


# ---- 5. CLI start ---------------------------------------------------------------------


FLOOR_FABFILE = '''"""Fabric's own floor: a fabfile with one task and no imports."""
from invoke import task


@task
def hello(c):
    """Say hello."""
'''

IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)\s*$")


def import_time_ms(stderr, module):
    """The cumulative import time of `module` from ``python -X importtime`` output, in ms."""
    for line in stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match and match.group(4) == module:
            return int(match.group(2)) / 1000
    raise RuntimeError(f"no import time line for {module!r}")


def imported_modules(stderr):
    """Top-level package names an ``-X importtime`` run imported."""
    return {m.group(4).split(".")[0] for m in map(IMPORT_LINE.match, stderr.splitlines()) if m}


def figure_cli(bench):
    """``fab --list``, ``picoclaw-fleet --help`` and ``import fabfile``, against Fabric's own floor."""
    floor = bench.workdir / "fabric-floor"
    floor.mkdir(exist_ok=True)
    (floor / "fabfile.py").write_text(FLOOR_FABFILE)
    python, fab, console = sys.executable, str(bench.bindir / "fab"), str(bench.bindir / "picoclaw-fleet")

    def child(argv, cwd, expect=""):
        run = run_child(argv, env=bench.env, cwd=cwd)
        if run.returncode != 0 or expect not in run.stdout:
            raise RuntimeError(f"{' '.join(argv)} failed ({run.returncode}): {run.stderr.strip()[-300:]}")
        return run

    def import_ms(module):
        run = child([python, "-X", "importtime", "-c", f"import {module}"], bench.workdir)
        return Measured(import_time_ms(run.stderr, module), "ms")

    s = interleaved(max(bench.options.reps, 5), {
        "list": lambda: child([fab, "--list"], ROOT, "status"),
        "floor_list": lambda: child([fab, "--list"], floor, "hello"),
        "help": lambda: child([console, "--help"], bench.workdir, "Usage"),
        "floor_help": lambda: child([fab, "--help"], floor, "Usage"),
        "import": lambda: import_ms("fabfile"),
        "floor_import": lambda: import_ms("fabric"),
    })
    heavy = imported_modules(child([python, "-X", "importtime", fab, "--list"], ROOT).stderr)
    rows = [
        Row("5a", "fab --list (wall)", s["list"], s["floor_list"], "fab --list, 1-task fabfile",
            Goal("ours", "<=", 0.6)),
        Row("5b", "picoclaw-fleet --help (wall)", s["help"], s["floor_help"], "fab --help"),
        Row("5c", "import fabfile (-X importtime, cumulative)", s["import"], s["floor_import"], "import fabric"),
    ]
    loaded = sorted(heavy & {"requests", "jsonschema", "paramiko", "cryptography", "urllib3"})
    rows[0].notes.append(f"heavy packages imported by fab --list: {', '.join(loaded) or 'none'} "
                         "(paramiko and cryptography come with fabric itself)")
    return rows


# ---- 6. peak RSS ----------------------------------------------------------------------


def figure_rss(bench):
    """Peak RSS of the ``fab`` process fanning out to many hosts, against a raw ThreadingGroup process."""
    hosts = bench.fleet.hosts[: bench.options.rss_hosts]
    bench.fleet.install_standin(hosts)
    config = bench.fleet.config("rss", hosts, parallel=32)
    hosts_file = baselines.write_hosts_file(bench.workdir / "rss-hosts.json", hosts, bench.fleet.client_key)
    walls = {"ours": Sample(), "tg": Sample()}

    def ours():
        run = bench.cli("dispatch", "--all", "--task", "rss", "--config", config, "--json", peak_rss=True)
        walls["ours"].values.append(run.seconds)
        return Measured(run.peak_rss_mb, "MB")

    def threading_group():
        run = run_child([sys.executable, "-m", "bench.baselines", "threading-group", str(hosts_file)],
                        env=bench.env, cwd=ROOT, peak_rss=True)
        if run.returncode != 0:
            raise RuntimeError(f"ThreadingGroup child failed: {run.stderr.strip()[-300:]}")
        walls["tg"].values.append(run.seconds)
        return Measured(run.peak_rss_mb, "MB")

    s = interleaved(bench.options.reps, {"ours": ours, "tg": threading_group}, warmup=False)
    row = Row("6", f"peak RSS, fab dispatch --all, {len(hosts)} hosts", s["ours"], s["tg"],
              "ThreadingGroup.run('true') process", Goal("ours", "<=", 200))
    row.notes.append(f"ours at the config's parallel=32; ThreadingGroup opens all {len(hosts)} at once. "
                     f"wall: ours {walls['ours'].text()}, ThreadingGroup {walls['tg'].text()}")
    return [row]


FIGURES = {
    "1": figure_dispatch,
    "2": figure_status,
    "3": figure_deploy,
    "4": figure_batch,
    "5": figure_cli,
    "6": figure_rss,
    "7": figure_sizes,
    "8": figure_warm,
}
