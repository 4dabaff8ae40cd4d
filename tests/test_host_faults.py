"""Hosts that stop answering, print too much, or run out of disk: each ends as a status, never a hang.

Real faults, real processes: a host's sshd session is frozen with SIGSTOP
after the handshake (a board that wedges), a task prints 50 MB, a disk is a
64 KiB tmpfs. No test measures time: each checks what the product reports.
"""

import os

import pytest

from fabfile.host import remote_files
from fabfile.core.tasks import task_bytes
from fabfile.host.agent import CAPTURE_BYTES, run_agent
from fabfile.ssh.deadlines import HostStalled
from fabfile.host.facts import probe_host
from harness.cli import API_KEY, connect, fab_json
from harness.faults import freeze_host, mount_tmpfs, thaw_and_kill, unmount
from harness.standin import build_standin

LOBSTER = b"\n\xf0\x9f\xa6\x9e "


@pytest.fixture
def frozen(testbed):
    """Factory: (connection, host) with the connection open and then the host frozen; cleaned up after."""
    made = []

    def make():
        [host] = testbed.add_workers(1, prefix="fz")
        cxn = connect(testbed, host, connect_timeout=1)  # every step may then be silent 3 s
        cxn.open()
        made.append((cxn, host, freeze_host(host)))
        return cxn, host

    yield make
    for cxn, host, pids in made:
        thaw_and_kill(testbed, host, pids)
        cxn.close()


@pytest.mark.parametrize("expected, action", [
    ("the SSH keepalive got no answer within 3s", lambda cxn: probe_host(cxn)),
    ("opening SFTP: session not opened within 2s", lambda cxn: remote_files.read(cxn, ".picoclaw/config.json")),
    ("starting the task: session not opened within 2s", lambda cxn: run_agent(cxn, task_bytes("hello"), 1)),
])
def test_a_host_frozen_after_the_handshake_ends_each_step_as_stalled(frozen, expected, action):
    cxn, _ = frozen()
    with pytest.raises(HostStalled) as stalled:
        action(cxn)
    assert str(stalled.value) == f"the host stopped answering: {expected}"


@pytest.mark.parametrize("size, expected", [
    (1000, "the host stopped answering: read ~/.picoclaw/x got no answer within 3s"),  # over the open SFTP
    (100_000, "the host stopped answering: hashing ~/.picoclaw/x: session not opened within 2s"),
])
def test_sftp_on_an_open_session_stalls_when_the_host_freezes(testbed, size, expected):
    """SFTP already open (a deploy half way), then the board wedges: the next step ends, named."""
    [host] = testbed.add_workers(1, prefix="fz")
    cxn = connect(testbed, host, connect_timeout=1)
    cxn.open()
    remote_files.sftp(cxn)
    pids = freeze_host(host)
    try:
        with pytest.raises(HostStalled) as stalled:
            remote_files.write_if_changed(cxn, ".picoclaw/x", b"y" * size, 0o600)
        assert str(stalled.value) == expected
    finally:
        thaw_and_kill(testbed, host, pids)
        cxn.close()


def test_a_read_timeout_that_beats_the_watchdog_names_the_stall_the_same_way():
    """paramiko's channel read timeout (a bare ``socket.timeout()``, no text) and the watchdog wait the
    same silence; whichever ends first, the user reads the same complete line."""
    import socket
    from types import SimpleNamespace

    from fabfile.ssh.deadlines import deadline

    cxn = SimpleNamespace(connect_timeout=1, client=None)
    with pytest.raises(HostStalled) as stalled:
        with deadline(cxn, "read ~/.picoclaw/x"):
            raise socket.timeout()
    assert str(stalled.value) == "the host stopped answering: read ~/.picoclaw/x got no answer within 3s"


def test_the_latency_is_the_second_keepalive_not_the_wait_after_login(monkeypatch):
    """The first request after authentication waits on the host (~40 ms on loopback): status's
    latency is timed on a second keepalive, so it shows the round trip alone."""
    from types import SimpleNamespace

    from fabfile.host import facts

    clock = [100.0]
    waits = iter([0.040, 0.0003])  # seconds each keepalive takes: the first after login, then a plain one
    asked = []

    def global_request(kind, wait):
        asked.append((kind, wait))
        clock[0] += next(waits)

    transport = SimpleNamespace(global_request=global_request)
    cxn = SimpleNamespace(connect_timeout=1, client=SimpleNamespace(get_transport=lambda: transport))
    monkeypatch.setattr(facts, "time", SimpleNamespace(monotonic=lambda: clock[0]))  # facts' clock only
    assert facts.measure_latency(cxn) == pytest.approx(0.3)
    assert asked == [("keepalive@openssh.com", True)] * 2


def test_status_names_the_stalled_step_and_the_other_hosts_answer(testbed, fleet_config, guarded_env):
    """Through the CLI: one host wedges mid-session (its probe hangs), the others report as usual."""
    good, stuck = testbed.add_workers(2, prefix="fz")
    # On the stuck host the probe's first read never returns, the way a wedged board's reads do.
    testbed.hang_probe(stuck)
    result, data, hosts = fab_json(["status", "--config", fleet_config(hosts=[good, stuck], connect_timeout=1)],
                                   guarded_env)
    try:
        assert hosts[good.name]["status"] == "ok"
        assert hosts[stuck.name]["status"] == "unreachable"
        assert "the status probe got no answer within 13s" in hosts[stuck.name]["message"]
    finally:
        testbed.cut(stuck)


# --- output: bounded, linear, flagged ----------------------------------------------------------------


def install_script(testbed, host, script):
    testbed.install_standin(host)
    path = host.home / ".local" / "bin" / "picoclaw"
    path.write_text(script)
    path.chmod(0o755)


def test_a_task_printing_50_mb_keeps_its_cap_and_says_what_was_dropped(testbed):
    [host] = testbed.add_hosts(1, prefix="fo")
    install_script(testbed, host, "#!/bin/sh\nprintf '\\n\\360\\237\\246\\236 '\n"
                                  "head -c 50000000 /dev/zero | tr '\\0' a\necho\n")
    cxn = connect(testbed, host)
    try:
        result = run_agent(cxn, task_bytes("flood"), 120)
    finally:
        cxn.close()
    assert result.status == "ok", result.message
    kept = CAPTURE_BYTES["stdout"]
    assert len(result.stdout.encode()) == kept
    assert result.answer == "a" * (kept - len(LOBSTER))
    assert result.dropped_bytes["stdout"] == 50_000_000 + len(LOBSTER) + 1 - kept
    assert "stdout cut at 4 MiB" in result.message


def test_output_that_is_not_utf8_is_flagged(testbed):
    [host] = testbed.add_hosts(1, prefix="fo")
    install_script(testbed, host, "#!/bin/sh\nprintf '\\n\\360\\237\\246\\236 caf\\351\\n'\necho 'bad \\377' >&2\n")
    cxn = connect(testbed, host)
    try:
        result = run_agent(cxn, task_bytes("x"), 30)
    finally:
        cxn.close()
    assert result.answer == "caf\ufffd"
    assert result.not_utf8 == ("stderr", "stdout")
    assert "stdout is not valid UTF-8" in result.message


# --- a full disk is called a full disk ----------------------------------------------------------------------


@pytest.fixture
def tiny_disk(testbed):
    """A host whose ~/.local/bin is a 64 KiB tmpfs (mounted as root, removed afterwards)."""
    [host] = testbed.add_hosts(1, prefix="fd")
    target = host.home / ".local" / "bin"
    testbed.run_as(host, "mkdir -p ~/.local/bin")
    mount_tmpfs(target, "64k", target.stat().st_uid)  # a skip where this machine cannot
    try:
        yield host
    finally:
        testbed.cut(host)
        unmount(target)


def test_deploy_to_a_full_disk_says_no_space_left(testbed, tiny_disk, fleet_config, guarded_env, tmp_path):
    binary = build_standin(tmp_path / "picoclaw", pad_bytes=300_000)
    env = {**guarded_env, "ANTHROPIC_API_KEY": API_KEY, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result, data, hosts = fab_json(["deploy", "--config", fleet_config(hosts=[tiny_disk]), "--from-file", str(binary)],
                                   env)
    assert result.returncode == 1
    report = hosts[tiny_disk.name]
    assert report["status"] == "failed"
    assert report["message"].startswith("cannot write ~/.local/bin/picoclaw: no space left on device")
    assert "corrupted" not in report["message"]
    assert os.listdir(tiny_disk.home / ".local" / "bin") == []  # the partial upload was removed
