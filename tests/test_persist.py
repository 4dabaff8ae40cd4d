"""Warm connections (``--persist``, ``defaults.persist``, ``fab persist``) against the real sshd.

What must hold: a second run reuses the first run's SSH connections (the
host's sshd session process is the same one, no new handshake); every way a
warm connection can be dead -- the host dropped it, the process was killed,
the process cannot be started, the host froze -- ends in a fresh connection
or the failure a fresh connection would have had, never a hang or a crash;
the host-key policy is applied as it is now; nobody but the user can reach
the process; it leaves when idle.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabfile.ssh.persist import SOCKET_NAME
from harness import faults
from harness.cli import FAB, REPO, start_fab
from harness.sshd import public_key
from tests.batch_support import RUN_LIMIT_S, no_task_left_running, running_tasks, wait_until


def fab(args, env, timeout=180):
    return subprocess.run([FAB, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def daemon_pids(runtime):
    """Pids of warm-connection processes serving `runtime` (from /proc, not from the process itself)."""
    return faults.processes_with_argument(str(runtime))


@pytest.fixture
def warm_env(home_env, tmp_path):
    """`home_env` with a runtime directory of the test's own; its process is killed afterwards."""
    runtime = tmp_path / "rt"
    env = dict(home_env, PICOCLAW_FLEET_RUNTIME_DIR=str(runtime))
    yield env
    for pid in daemon_pids(runtime):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def warm_hosts(testbed):
    hosts = testbed.add_hosts(3, prefix="wm")
    for host in hosts:
        testbed.install_standin(host, version="0.3.1")
    return hosts


def status(config, env, *extra):
    result = fab(["status", "--config", str(config), "--json", *extra], env)
    assert result.stdout, result.stderr
    return result, {h["name"]: h for h in json.loads(result.stdout)["hosts"]}


def warm_state(env):
    result = fab(["persist", "status", "--json"], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def session_pids(hosts):
    """Each host's processes (its sshd session process, while a connection is open)."""
    return {host.user: sorted(faults.user_pids(host.user)) for host in hosts}


def comparable(report):
    """A status row without what differs between two runs of the same fleet (times, the machine's load)."""
    row = dict(report)
    for key in ("duration_s", "latency_ms", "load1"):
        row.pop(key, None)
    if isinstance(row.get("details"), dict):
        row["details"] = {k: v for k, v in row["details"].items() if k != "latency_ms"}
    return row


def test_second_run_reuses_the_first_runs_connections(testbed, warm_hosts, fleet_config, warm_env):
    config = fleet_config(warm_hosts)
    cold, cold_hosts = status(config, warm_env)  # no persist: a plain run, nothing kept
    assert cold.returncode == 0 and not daemon_pids(warm_env["PICOCLAW_FLEET_RUNTIME_DIR"])

    first, first_hosts = status(config, warm_env, "--persist", "60")
    assert first.returncode == 0, first.stderr
    kept = session_pids(warm_hosts)
    assert all(kept.values()), "each host keeps its sshd session process between runs"
    second, second_hosts = status(config, warm_env, "--persist", "60")
    assert second.returncode == 0, second.stderr
    assert session_pids(warm_hosts) == kept, "the same SSH connections served the second run"

    assert {n: comparable(h) for n, h in second_hosts.items()} == {n: comparable(h) for n, h in cold_hosts.items()}
    state = warm_state(warm_env)
    assert state["running"] and len(state["connections"]) == 3
    assert all(c["handshakes"] == 1 and c["uses"] == 2 and not c["leased"] for c in state["connections"])


def test_dispatch_and_batch_run_over_warm_connections(warm_hosts, fleet_config, warm_env):
    config = fleet_config(warm_hosts, persist=60)  # defaults.persist, no flag
    tasks = ["first task", "second task", "third task", "fourth task"]
    for _ in range(2):
        result = fab(["dispatch", "--config", str(config), "--all", "-t", "über task\n", "--json", "--no-record"],
                     warm_env)
        assert result.returncode == 0, result.stderr
        hosts = json.loads(result.stdout)["hosts"]
        assert [h["status"] for h in hosts] == ["ok"] * 3
        assert all("über task" in h["answer"] for h in hosts), "stdin reached PicoClaw byte for byte"
    batch = fab(["batch", "--config", str(config), "--json", "--no-record",
                 *[arg for t in tasks for arg in ("--task", t)]], warm_env)
    assert batch.returncode == 0, batch.stderr
    report = json.loads(batch.stdout)
    assert sorted(t["status"] for t in report["tasks"]) == ["ok"] * 4
    state = warm_state(warm_env)
    assert {c["handshakes"] for c in state["connections"]} == {1}
    assert {c["uses"] for c in state["connections"]} == {3}


def test_a_connection_the_host_dropped_is_replaced_by_a_fresh_one(testbed, warm_hosts, fleet_config, warm_env):
    config = fleet_config(warm_hosts)
    assert status(config, warm_env, "--persist", "60")[0].returncode == 0
    testbed.cut(warm_hosts[0])  # kills the host's sshd session process: the kept connection is dead
    wait_until(lambda: not faults.user_pids(warm_hosts[0].user), "the session process to die")
    result, hosts = status(config, warm_env, "--persist", "60")
    assert result.returncode == 0, result.stderr
    assert {h["status"] for h in hosts.values()} == {"ok"}
    handshakes = {c["name"]: c["handshakes"] for c in warm_state(warm_env)["connections"]}
    assert handshakes == {warm_hosts[0].name: 2, warm_hosts[1].name: 1, warm_hosts[2].name: 1}


def test_dispatch_after_the_host_dropped_the_connection_runs_the_task_once(testbed, warm_hosts, fleet_config,
                                                                           warm_env):
    config = fleet_config(warm_hosts[:1])
    args = ["dispatch", "--config", str(config), "--host", warm_hosts[0].name, "-t", "count me", "--json",
            "--no-record", "--persist", "60"]
    assert fab(args, warm_env).returncode == 0
    testbed.cut(warm_hosts[0])
    wait_until(lambda: not faults.user_pids(warm_hosts[0].user), "the session process to die")
    before = len([c for c in testbed.command_log(warm_hosts[0]) if "picoclaw" in c and " agent" in c])
    result = fab(args, warm_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["hosts"][0]["status"] == "ok"
    after = len([c for c in testbed.command_log(warm_hosts[0]) if "picoclaw" in c and " agent" in c])
    assert after == before + 1, "the task was started once, on the fresh connection"


def test_a_killed_process_and_its_stale_socket_are_replaced(warm_hosts, fleet_config, warm_env):
    config = fleet_config(warm_hosts)
    runtime = Path(warm_env["PICOCLAW_FLEET_RUNTIME_DIR"])
    assert status(config, warm_env, "--persist", "60")[0].returncode == 0
    [pid] = daemon_pids(runtime)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not daemon_pids(runtime), "the process to die")
    assert (runtime / SOCKET_NAME).exists(), "a killed process leaves its socket behind"
    result, hosts = status(config, warm_env, "--persist", "60")
    assert result.returncode == 0, result.stderr
    assert {h["status"] for h in hosts.values()} == {"ok"}
    assert daemon_pids(runtime) and daemon_pids(runtime) != [pid]
    assert "persist:" not in result.stderr


def test_without_a_process_the_run_connects_directly_and_says_why(warm_hosts, fleet_config, warm_env):
    config = fleet_config(warm_hosts)
    runtime = Path(warm_env["PICOCLAW_FLEET_RUNTIME_DIR"])
    runtime.mkdir(mode=0o700)
    runtime.chmod(0o777)  # not private: no socket may live there
    result, hosts = status(config, warm_env, "--persist", "60")
    assert result.returncode == 0, result.stderr
    assert {h["status"] for h in hosts.values()} == {"ok"}
    assert "persist: no warm-connection process" in result.stderr and "open to other users" in result.stderr
    assert not daemon_pids(runtime)


def test_a_host_that_froze_under_a_warm_connection_ends_in_time(testbed, fleet_config, warm_env):
    hosts = testbed.add_hosts(2, prefix="wf")
    for host in hosts:
        testbed.install_standin(host, version="0.3.1")
    config = fleet_config(hosts, connect_timeout=1)
    assert status(config, warm_env, "--persist", "60")[0].returncode == 0
    frozen = faults.freeze_host(hosts[0])
    try:
        result, reports = status(config, warm_env, "--persist", "60")
    finally:
        faults.thaw_and_kill(testbed, hosts[0], frozen)
    assert result.returncode == 1
    assert reports[hosts[0].name]["status"] == "unreachable"
    assert "stopped answering" in reports[hosts[0].name]["message"]
    assert reports[hosts[1].name]["status"] == "ok"
    result, reports = status(config, warm_env, "--persist", "60")  # thawed and cut: a fresh connection again
    assert result.returncode == 0 and {r["status"] for r in reports.values()} == {"ok"}


def test_host_key_policy_is_applied_to_a_kept_connection(testbed, warm_hosts, fleet_config, warm_env, tmp_path):
    known_hosts = tmp_path / "kh"
    known_hosts.touch()
    config = fleet_config(warm_hosts, known_hosts=str(known_hosts))  # accept-new: the first run records the key
    assert status(config, warm_env, "--persist", "60")[0].returncode == 0
    recorded = known_hosts.read_text()
    assert recorded.count("\n") == 1
    name = recorded.split()[0]
    impostor = public_key(testbed.client_key).split()[:2]  # any other ed25519 key will do
    known_hosts.write_text(f"{name} {impostor[0]} {impostor[1]}\n")  # the host's key "changed" since
    result, hosts = status(config, warm_env, "--persist", "60")
    assert result.returncode == 1
    assert {h["status"] for h in hosts.values()} == {"hostkey-rejected"}
    assert all("CHANGED" in h["message"] for h in hosts.values())
    strict = fleet_config(warm_hosts, known_hosts=str(tmp_path / "empty"), host_key_policy="strict")
    (tmp_path / "empty").touch()
    result, hosts = status(strict, warm_env, "--persist", "60")
    assert {h["status"] for h in hosts.values()} == {"hostkey-rejected"}


@pytest.fixture
def open_parent_env(warm_env):
    """`warm_env` with its runtime directory under one that every user may traverse (as /run/user is)."""
    parent = Path(tempfile.mkdtemp(prefix="pcf-warm-"))
    parent.chmod(0o711)
    runtime = parent / "rt"
    yield dict(warm_env, PICOCLAW_FLEET_RUNTIME_DIR=str(runtime))
    for pid in daemon_pids(runtime):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(parent, ignore_errors=True)


def test_only_its_own_user_reaches_the_process(warm_hosts, fleet_config, open_parent_env):
    warm_env = open_parent_env
    config = fleet_config(warm_hosts)
    runtime = Path(warm_env["PICOCLAW_FLEET_RUNTIME_DIR"])
    assert status(config, warm_env, "--persist", "60")[0].returncode == 0
    assert (runtime.stat().st_mode & 0o777) == 0o700
    assert ((runtime / SOCKET_NAME).stat().st_mode & 0o777) == 0o600
    # the process may close on a stranger before the request is written (a broken pipe), or after (a reset)
    probe = ("import socket, sys\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "s.connect(sys.argv[1])\n"
             "try:\n"
             "    s.sendall(b'Q' + (30).to_bytes(4, 'big') + b'{\"op\": \"status\", \"persist\": 1}')\n"
             "    print(repr(s.recv(100)))\n"
             "except (ConnectionResetError, BrokenPipeError):\n    print('reset')\n")
    other = warm_hosts[0].user
    refused = subprocess.run(["runuser", "-u", other, "--", "python3", "-c", probe, str(runtime / SOCKET_NAME)],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "PermissionError" in refused.stderr
    runtime.chmod(0o711)  # even with the directory and socket opened up, the process answers only its user
    (runtime / SOCKET_NAME).chmod(0o666)
    try:
        ignored = subprocess.run(["runuser", "-u", other, "--", "python3", "-c", probe, str(runtime / SOCKET_NAME)],
                                 capture_output=True, text=True, timeout=30)
    finally:
        runtime.chmod(0o700)
        (runtime / SOCKET_NAME).chmod(0o600)
    assert ignored.returncode == 0 and ignored.stdout.strip() in ("b''", "reset"), ignored.stderr


def test_the_process_reads_known_hosts_once_for_a_run_of_new_connections(testbed, warm_hosts, fleet_config, tmp_path,
                                                                          monkeypatch):
    """Each new warm connection's host keys come from the known_hosts the process keeps while the file
    is unchanged: the first run over a fleet read and indexed the whole file once a host, which grows
    with the square of the fleet. A changed file is read again, and what it says now is used."""
    from fabfile.core.config import load_config
    from fabfile.ssh import persist_daemon
    from fabfile.ssh.connections import fabric_config
    from fabfile.ssh.known_hosts import KnownHosts, known_hosts_name
    from fabfile.ssh.persist import connection_spec

    known = tmp_path / "known_hosts"
    known.write_text(testbed.host_key_line() + "\n")
    fleet = load_config(fleet_config(warm_hosts, host_key_policy="strict", known_hosts=str(known)))
    reads = []
    read = KnownHosts.read
    monkeypatch.setattr(KnownHosts, "read", classmethod(lambda cls, path: reads.append(path) or read(path)))
    pool = persist_daemon.Pool()
    specs = [connection_spec(entry, fleet.defaults, fabric_config(), fleet.hosts) for entry in fleet.hosts]
    name = known_hosts_name(warm_hosts[0].address, warm_hosts[0].port)

    built = [pool.build(spec) for spec in specs]
    assert len(reads) == 1, "one read for three new connections"
    assert all(cxn.client.get_host_keys().lookup(name) for cxn in built)

    known.write_text("")  # the host's line removed: the next connection must not know its key
    assert pool.build(specs[0]).client.get_host_keys().lookup(name) is None
    assert len(reads) == 2


def test_a_lease_is_one_runs_alone(warm_hosts, fleet_config, warm_env, monkeypatch):
    config = fleet_config(warm_hosts[:1])
    assert status(config, warm_env, "--persist", "60")[0].returncode == 0
    from fabfile.core.config import load_config
    from fabfile.core.context import RunContext
    from fabfile.ssh.connections import open_fleet

    fleet = load_config(config)
    # in this process, the test's own directory (and the session's again afterwards: monkeypatch restores it)
    monkeypatch.setenv("PICOCLAW_FLEET_RUNTIME_DIR", warm_env["PICOCLAW_FLEET_RUNTIME_DIR"])
    one, two = (open_fleet(RunContext(fleet, fleet.hosts, persist=60))[0] for _ in range(2))
    one.open()
    two.open()
    assert one.transport.conn_id != two.transport.conn_id, "a run in parallel gets a connection of its own"
    assert one.run("echo one", hide=True, in_stream=False).stdout == "one\n"
    assert two.run("echo two", hide=True, in_stream=False).stdout == "two\n"
    first_id = one.transport.conn_id
    one.close()
    three = open_fleet(RunContext(fleet, fleet.hosts, persist=60))[0]
    three.open()
    assert three.transport.conn_id == first_id, "a given-back connection is leased again"
    three.close()
    two.close()


def test_output_after_the_commands_exit_status_still_reaches_the_run(warm_hosts, fleet_config, warm_env, monkeypatch):
    """sshd sends a command's exit status when its process exits, and what a child left behind still
    prints comes after it, until the output's end (EOF). A direct run reads to that end; the warm
    process ended the command at the exit status, and lost the rest."""
    from fabfile.core.config import load_config
    from fabfile.core.context import RunContext
    from fabfile.ssh import persist
    from fabfile.ssh.connections import open_fleet

    config = fleet_config(warm_hosts[:1])
    fleet = load_config(config)
    monkeypatch.setenv("PICOCLAW_FLEET_RUNTIME_DIR", warm_env["PICOCLAW_FLEET_RUNTIME_DIR"])
    command = "(sleep 0.5; echo late; echo late-err >&2) & echo early; exit 3"
    results = {}
    for persist_s in (None, 60):
        [cxn] = open_fleet(RunContext(fleet, fleet.hosts, persist=persist_s))
        try:
            cxn.open()
            assert isinstance(cxn.transport, persist.WarmTransport) == bool(persist_s)
            result = cxn.run(command, hide=True, warn=True, in_stream=False)
            results[persist_s] = (result.exited, result.stdout, result.stderr)
        finally:
            cxn.close()
    assert results[None] == (3, "early\nlate\n", "late-err\n"), "a direct run reads to the output's end"
    assert results[60] == results[None]


class ScriptedChannel:
    """A paramiko channel to which the command's SSH messages arrive whenever `stream` looks at it.

    In the warm process paramiko's reader thread handles the host's messages
    while `stream` drains the buffers, and may run between any two of its
    steps. Here `arrivals[i]` is how many messages arrive just before its
    i-th look at the channel (one a look once they run out), so each draw
    is one interleaving of the two threads. Messages are ("out"|"err",
    bytes), ("exit", code), ("eof",) and ("close",).
    """

    def __init__(self, messages, arrivals):
        self.messages, self.arrivals = list(messages), list(arrivals)
        self.out, self.err = bytearray(), bytearray()
        self.eof, self.exit_code, self.ended, self.closed_by_stream = False, None, False, False
        self.readable, self.writer = os.pipe()
        os.write(self.writer, b"x")  # select() always finds it readable, as paramiko's after an EOF

    def fileno(self):
        return self.readable

    def arrive(self):
        for _ in range(self.arrivals.pop(0) if self.arrivals else 1):
            if not self.messages:
                return
            kind, *value = self.messages.pop(0)
            if kind in ("out", "err"):
                getattr(self, kind).extend(value[0])
            elif kind == "exit":
                self.exit_code = value[0]
            elif kind == "eof":
                self.eof = True
            else:
                self.ended = True

    @property
    def eof_received(self):
        self.arrive()
        return self.eof

    @property
    def closed(self):
        self.arrive()
        return self.ended

    def exit_status_ready(self):
        self.arrive()
        return self.exit_code is not None

    def recv_exit_status(self):
        return self.exit_code

    def recv_ready(self):
        self.arrive()
        return bool(self.out)

    def recv_stderr_ready(self):
        self.arrive()
        return bool(self.err)

    def recv(self, nbytes):
        return self.take(self.out, nbytes)

    def recv_stderr(self, nbytes):
        return self.take(self.err, nbytes)

    @staticmethod
    def take(buffer, nbytes):
        data = bytes(buffer[:nbytes])
        del buffer[:nbytes]
        return data

    def close(self):
        self.closed_by_stream = True
        os.close(self.readable)
        os.close(self.writer)


@st.composite
def command_messages(draw):
    """What sshd sends for one command: its output, the exit status anywhere before the EOF or just
    after it (sshd sends it when the process exits; a child may print on), then the close."""
    output = draw(st.lists(st.tuples(st.sampled_from(["out", "err"]), st.binary(min_size=1, max_size=6)),
                           max_size=6))
    code = draw(st.integers(0, 255))
    messages = [*output, ("eof",)]
    messages.insert(draw(st.integers(0, len(messages))), ("exit", code))
    return [*messages, ("close",)], output, code


@settings(max_examples=400, deadline=None)
@given(script=command_messages(), arrivals=st.lists(st.integers(0, 4), max_size=40))
def test_every_byte_the_command_printed_reaches_the_run_before_its_exit(script, arrivals):
    """The CI run that failed: a warm `status` row once lost its probe's last lines, the .security.yml
    section that says whether the worker has a key (`api_key` false). `stream` drained the buffers, then
    read that the command had ended, and output that came in between was never sent."""
    from fabfile.ssh.persist import EXIT, STDERR, STDOUT, STDOUT_EOF, read_frame
    from fabfile.ssh.persist_daemon import stream

    messages, output, code = script
    channel = ScriptedChannel(messages, arrivals)
    host = SimpleNamespace(client=SimpleNamespace(get_transport=lambda: SimpleNamespace(is_active=lambda: True)))
    process_side, run_side = socket.socketpair()
    with process_side, run_side:
        stream(process_side, channel, host)
        process_side.shutdown(socket.SHUT_WR)
        frames = list(iter(lambda: read_frame(run_side), (None, b"")))
    assert channel.closed_by_stream
    sent = {kind: b"".join(payload for k, payload in frames if k == kind) for kind in (STDOUT, STDERR)}
    assert sent[STDOUT] == b"".join(data for kind, data in output if kind == "out")
    assert sent[STDERR] == b"".join(data for kind, data in output if kind == "err")
    assert frames[-1] == (EXIT, json.dumps({"code": code}).encode()), "the exit comes last, after all output"
    assert [k for k, _ in frames].count(STDOUT_EOF) == 1


def test_the_probe_over_a_warm_connection_survives_a_command_that_ended_at_once(warm_hosts, fleet_config, warm_env,
                                                                                monkeypatch):
    """The warm process closes a command's socket once the command has ended; a probe that wrote to
    it afterwards (an end of stdin) failed with a broken pipe: 6 of 64 hosts in one bench run, when
    the probe was quicker than the client. Made certain here: every write waits for the end first."""
    from fabfile.core.config import load_config
    from fabfile.core.context import RunContext
    from fabfile.host.facts import probe_host
    from fabfile.ssh import persist
    from fabfile.ssh.connections import open_fleet

    config = fleet_config(warm_hosts[:1])
    assert status(config, warm_env, "--persist", "60")[0].returncode == 0
    fleet = load_config(config)
    monkeypatch.setenv("PICOCLAW_FLEET_RUNTIME_DIR", warm_env["PICOCLAW_FLEET_RUNTIME_DIR"])
    send = persist.RemoteChannel._send

    def after_the_end(channel, kind, payload=b""):
        channel.exited.wait(10)
        time.sleep(0.2)  # and the process has closed the command's socket
        return send(channel, kind, payload)

    monkeypatch.setattr(persist.RemoteChannel, "_send", after_the_end)
    [cxn] = open_fleet(RunContext(fleet, fleet.hosts, persist=60))
    try:
        cxn.open()
        assert isinstance(cxn.transport, persist.WarmTransport)
        assert probe_host(cxn).version == "0.3.1"
    finally:
        cxn.close()


def wakeups(pid):
    """How many times the threads of `pid` have gone to sleep and woken since they began (from /proc)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def test_idle_kept_connections_leave_the_process_asleep(warm_hosts, fleet_config, warm_env):
    """Between runs, each kept connection's reader wakes about once a second, not paramiko's ten
    times: a count of wake-ups, which load can only lower, never a time bound."""
    import time

    from fabfile.ssh.persist_daemon import REAP_EVERY_S

    assert status(fleet_config(warm_hosts), warm_env, "--persist", "60")[0].returncode == 0
    [pid] = daemon_pids(warm_env["PICOCLAW_FLEET_RUNTIME_DIR"])
    time.sleep(1)  # the run's own threads have gone
    before, started = wakeups(pid), time.monotonic()
    time.sleep(3)
    woken, seconds = wakeups(pid) - before, time.monotonic() - started
    expected = seconds * (1 / REAP_EVERY_S + len(warm_hosts) * 1.0)  # the listener's, and once a second each reader
    assert woken <= expected * 1.5 + 5, (woken, expected)  # paramiko's own 0.1 s: ~3x `expected` here


def test_the_process_leaves_after_the_idle_time(warm_hosts, fleet_config, warm_env):
    config = fleet_config(warm_hosts[:1])
    runtime = Path(warm_env["PICOCLAW_FLEET_RUNTIME_DIR"])
    assert status(config, warm_env, "--persist", "1")[0].returncode == 0
    assert daemon_pids(runtime)
    wait_until(lambda: not daemon_pids(runtime), "the idle process to exit")
    assert not (runtime / SOCKET_NAME).exists()
    wait_until(lambda: not faults.user_pids(warm_hosts[0].user), "its connection to close")


def test_fab_persist_status_and_stop(warm_hosts, fleet_config, warm_env):
    assert warm_state(warm_env) == {"running": False, "directory": warm_env["PICOCLAW_FLEET_RUNTIME_DIR"],
                                    "connections": []}
    assert "none" in fab(["persist", "status"], warm_env).stdout
    config = fleet_config(warm_hosts)
    assert status(config, warm_env, "--persist", "60")[0].returncode == 0
    text = fab(["persist", "status"], warm_env)
    assert text.returncode == 0 and all(h.name in text.stdout for h in warm_hosts)
    stopped = fab(["persist", "stop"], warm_env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout and "3 connections closed" in stopped.stdout
    wait_until(lambda: not daemon_pids(warm_env["PICOCLAW_FLEET_RUNTIME_DIR"]), "the process to stop")
    assert not warm_state(warm_env)["running"]


@pytest.mark.parametrize("value", ["-1", "abc", "86401", "nan"])
def test_bad_persist_is_one_line_and_exit_2(value, warm_hosts, fleet_config, warm_env):
    result = fab(["status", "--config", str(fleet_config(warm_hosts)), "--persist", value], warm_env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--persist" in result.stderr


def test_bad_defaults_persist_is_a_usage_error(warm_hosts, fleet_config, warm_env):
    result = fab(["status", "--config", str(fleet_config(warm_hosts, persist=-5))], warm_env)
    assert result.returncode == 2 and "persist" in result.stderr and "Traceback" not in result.stderr


def test_fab_persist_unknown_action(warm_env):
    result = fab(["persist", "restart"], warm_env)
    assert result.returncode == 2 and result.stderr.strip() == "picoclaw-fleet: fab persist 'restart': expected one of status, stop"



def test_a_stopped_run_stops_its_tasks_on_warm_connections_and_no_other_runs(testbed, fleet_config, warm_env):
    """Ctrl-C TERMs the sessions of the run's own SSH connection: a lease is the run's alone."""
    hosts = testbed.add_workers(2, prefix="ws")
    config = fleet_config(hosts=hosts, timeout=600)
    other = start_fab(["dispatch", "--config", config, "--host", hosts[0].name, "--json", "--no-record",
                   "-t", "::pid::other run", "--persist", "60"], warm_env)
    wait_until(lambda: running_tasks(testbed, hosts[0]), "the other run's task")
    proc = start_fab(["dispatch", "--config", config, "--all", "--json", "--no-record", "-t", "::pid::working",
                  "--persist", "60"], warm_env)
    wait_until(lambda: all(len(running_tasks(testbed, h)) == (2 if h is hosts[0] else 1) for h in hosts),
               "the task to run on each host")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=RUN_LIMIT_S)
    assert proc.returncode == 1, err
    assert [h["status"] for h in json.loads(out)["hosts"]] == ["interrupted", "interrupted"]
    wait_until(lambda: len(running_tasks(testbed, hosts[0])) == 1 and not running_tasks(testbed, hosts[1]),
               "the stopped run's tasks to end")
    assert other.poll() is None, "the other run's task on the same host was left alone"
    other.send_signal(signal.SIGINT)
    other.communicate(timeout=RUN_LIMIT_S)
    no_task_left_running(testbed, hosts)


def test_teardown_never_starts_or_uses_the_process(testbed, fleet_config, warm_env):
    """deploy, teardown and collect move files over SFTP: defaults.persist does not apply to them."""
    [host] = testbed.add_hosts(1, prefix="wt")
    testbed.install_standin(host, version="0.3.1")
    config = fleet_config([host], persist=60)
    result = fab(["teardown", "--config", str(config), "--yes", "--json", "--no-record"], warm_env)
    assert result.returncode == 0, result.stderr
    assert not daemon_pids(warm_env["PICOCLAW_FLEET_RUNTIME_DIR"])
    assert not (host.home / ".local" / "bin" / "picoclaw").exists()


def test_a_run_with_another_ssh_agent_connects_directly(warm_hosts, fleet_config, warm_env, tmp_path):
    """The process authenticates with the agent it was started with: another run's agent is not its to use."""
    config = fleet_config(warm_hosts)
    assert status(config, warm_env, "--persist", "60")[0].returncode == 0  # started without an agent
    other_agent = dict(warm_env, SSH_AUTH_SOCK=str(tmp_path / "agent.sock"))
    result, hosts = status(config, other_agent, "--persist", "60")
    assert result.returncode == 0, result.stderr
    assert {h["status"] for h in hosts.values()} == {"ok"}
    assert {c["uses"] for c in warm_state(warm_env)["connections"]} == {1}, "no kept connection served it"


def test_a_frozen_process_ends_in_a_direct_run_not_a_hang(warm_hosts, fleet_config, warm_env):
    """A warm-connection process that stops answering (SIGSTOP) is waited for a bounded time, then bypassed."""
    config = fleet_config(warm_hosts, connect_timeout=1)
    assert status(config, warm_env, "--persist", "60")[0].returncode == 0
    [pid] = daemon_pids(warm_env["PICOCLAW_FLEET_RUNTIME_DIR"])
    os.kill(pid, signal.SIGSTOP)
    try:
        result, hosts = status(config, warm_env, "--persist", "60")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert result.returncode == 0, result.stderr
    assert {h["status"] for h in hosts.values()} == {"ok"}
    assert "persist: no warm-connection process" in result.stderr
