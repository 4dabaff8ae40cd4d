"""Prove the harness is real: plain paramiko against the real sshd, faked loads
seen however they are read, the stand-in run locally, the loopback guard.
No product code involved."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import zipfile

import paramiko
import pytest

from harness import faults, load
from harness.loopback import LOOPBACK
from harness.standin import (
    STANDIN_MODEL_NAME, build_standin, standin_archive, standin_binary, standin_commit, standin_module,
    write_picoclaw_config,
)
from harness.testbed import DEFAULT_PATH, SimHost

TIMEOUT = 30  # generous: only there to turn a hang into a failure


@contextlib.contextmanager
def ssh(host: SimHost, key, port=None, policy=None, known_hosts=None, **kwargs):
    """A connected paramiko client, with no agent/default keys in play."""
    client = paramiko.SSHClient()
    if known_hosts is not None:
        client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(policy or paramiko.AutoAddPolicy())
    try:
        client.connect(LOOPBACK, port=port or host.port, username=host.user, key_filename=str(key),
                       look_for_keys=False, allow_agent=False, timeout=TIMEOUT, **kwargs)
        yield client
    finally:
        client.close()


def run(client, command, stdin: bytes | None = None):
    """(exit status, stdout bytes, stderr bytes) of one exec'd command."""
    chan = client.get_transport().open_session(timeout=TIMEOUT)
    chan.settimeout(TIMEOUT)
    chan.exec_command(command)
    if stdin is not None:
        chan.sendall(stdin)
    chan.shutdown_write()
    out, err = chan.makefile("rb").read(), chan.makefile_stderr("rb").read()
    return chan.recv_exit_status(), out, err


@pytest.fixture
def fresh_host(testbed):
    """A host of its own, for tests that change host state or read its log."""
    return testbed.add_hosts(1, prefix="t")[0]


# ---------------------------------------------------------------- ssh basics

def test_key_auth_and_whoami(testbed, sim_hosts):
    host = sim_hosts[0]
    with ssh(host, testbed.client_key) as client:
        status, out, _ = run(client, "whoami")
    assert (status, out.decode().strip()) == (0, host.user)
    assert host.address == "127.0.0.1" and host.port == testbed.port


def test_each_host_has_its_own_home(testbed, sim_hosts):
    homes = set()
    for host in sim_hosts[:2]:
        with ssh(host, testbed.client_key) as client:
            _, out, _ = run(client, 'echo "$HOME"; pwd; stat -c %U "$HOME"')
        home, cwd, owner = out.decode().split()
        assert home == cwd == str(host.home) and owner == host.user
        homes.add(home)
    assert len(homes) == 2


def test_unauthorized_host_rejects_client_key(testbed):
    host = testbed.add_unauthorized_host()
    with pytest.raises(paramiko.AuthenticationException):
        with ssh(host, testbed.client_key):
            pass
    with ssh(host, testbed.other_key) as client:  # control: the host itself works
        assert run(client, "whoami")[1].decode().strip() == host.user


def test_sim_host_works_as_jump_host(testbed, sim_hosts):
    """direct-tcpip through one sim host to another (the product's gateway)."""
    gateway, target = sim_hosts[0], sim_hosts[1]
    with ssh(gateway, testbed.client_key) as jump:
        tunnel = jump.get_transport().open_channel(
            "direct-tcpip", (LOOPBACK, testbed.port), (LOOPBACK, 0), timeout=TIMEOUT)
        with ssh(target, testbed.client_key, sock=tunnel) as client:
            assert run(client, "whoami")[1].decode().strip() == target.user


def test_run_as_runs_locally_as_the_user(testbed, sim_hosts):
    host = sim_hosts[1]
    proc = testbed.run_as(host, 'whoami; echo "$HOME"')
    assert proc.returncode == 0
    assert proc.stdout.split() == [host.user, str(host.home)]


# ---------------------------------------------------------------- faults

def test_closed_port_refuses(testbed, sim_hosts, closed_port):
    with pytest.raises(paramiko.ssh_exception.NoValidConnectionsError) as refused:
        with ssh(sim_hosts[0], testbed.client_key, port=closed_port):
            pass
    assert all(isinstance(e, ConnectionRefusedError) for e in refused.value.errors.values())


def test_silent_listener_times_out_on_banner(testbed, sim_hosts, silent_listener):
    with pytest.raises(paramiko.SSHException, match="banner"):
        with ssh(sim_hosts[0], testbed.client_key, port=silent_listener.port, banner_timeout=1):
            pass


def test_rotating_key_sshd_changes_host_key(testbed, sim_hosts, tmp_path):
    host = sim_hosts[0]
    with faults.RotatingKeySshd(testbed) as rotating:
        port, old_line = rotating.port, rotating.host_key_line()
        assert port != testbed.port and old_line.startswith(f"[127.0.0.1]:{port} ssh-ed25519 ")
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(old_line + "\n")
        pinned = dict(port=port, policy=paramiko.RejectPolicy(), known_hosts=known_hosts)
        with ssh(host, testbed.client_key, **pinned) as client:
            assert run(client, "whoami")[1].decode().strip() == host.user

        rotating.rotate_host_key()
        assert rotating.port == port and rotating.host_key_line() != old_line
        with pytest.raises(paramiko.BadHostKeyException):
            with ssh(host, testbed.client_key, **pinned):
                pass


def test_cut_kills_processes_and_drops_connection(testbed, fresh_host):
    testbed.install_standin(fresh_host)
    with ssh(fresh_host, testbed.client_key) as client:
        chan = client.get_transport().open_session(timeout=TIMEOUT)
        chan.settimeout(TIMEOUT)
        chan.exec_command("~/.local/bin/picoclaw agent -m '::pid::working'")
        stdout = chan.makefile("rb")
        line = b""
        while not line.startswith("🦞 ".encode()):  # after the banner and the log line
            line = stdout.readline()
            assert line, "no answer line"
        pid = line.decode().split()[1]
        assert stdout.readline() == b"working\n"
        assert any(line.split()[0] == pid for line in testbed.processes(fresh_host, "picoclaw"))

        testbed.cut(fresh_host)
        assert stdout.read() == b""  # EOF rather than a hang
        deadline = time.monotonic() + TIMEOUT
        while client.get_transport().is_active() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not client.get_transport().is_active()
    assert testbed.processes(fresh_host, "picoclaw") == []


# ---------------------------------------------------------------- recording

def test_command_log_records_exact_commands(testbed, fresh_host):
    tricky = "printf '%s\\n' \"it's\" 'say \"hi\"'\necho second line; exit 5"
    with ssh(fresh_host, testbed.client_key) as client:
        status, out, _ = run(client, tricky)
        assert (status, out) == (5, b"it's\nsay \"hi\"\nsecond line\n")
        assert run(client, "cat; exit 4", stdin=b"\x00binary\xffin\n") == (4, b"\x00binary\xffin\n", b"")
    assert testbed.command_log(fresh_host) == [tricky, "cat; exit 4"]


def test_command_log_handles_100kb_command(testbed, fresh_host):
    command = "printf %s " + "x" * 100_000
    with ssh(fresh_host, testbed.client_key) as client:
        assert run(client, command) == (0, b"x" * 100_000, b"")
    assert testbed.command_log(fresh_host) == [command]


def test_sftp_works_under_recording(testbed, fresh_host):
    with ssh(fresh_host, testbed.client_key) as client:
        with client.open_sftp() as sftp:
            sftp.putfo(io.BytesIO(b"payload\n"), "uploaded.txt")
            assert sftp.stat("uploaded.txt").st_size == 8
    assert (fresh_host.home / "uploaded.txt").read_bytes() == b"payload\n"
    assert testbed.command_log(fresh_host) == ["sftp"]


# ---------------------------------------------------------------- faked load

#: Every way a probe might read the load and the CPU count, then where the commands come from.
LOAD_PROBE = ("read -r l _ < /proc/loadavg; echo $l; cat /proc/loadavg; nproc; getconf _NPROCESSORS_ONLN; "
              "cat /sys/devices/system/cpu/online; grep -c ^processor /proc/cpuinfo; uptime; "
              'command -v cat nproc getconf; echo "$PATH"; nproc --all; getconf _NPROCESSORS_CONF')


def test_set_load_is_seen_however_the_host_reads_it(testbed, fresh_host):
    """The product's probe may read the load with `cat` or a shell's `read`, the CPUs with
    `nproc`, `getconf` or /sys: each sees the fake, and no command is swapped on PATH."""
    testbed.set_load(fresh_host, 3.0, 4)
    assert fresh_host.port not in (0, testbed.port)  # the host's own sshd
    with ssh(fresh_host, testbed.client_key) as client:
        status, out, err = run(client, LOAD_PROBE)
    lines = out.decode().splitlines()
    assert status == 0, err
    assert lines[:6] == ["3.00", "3.00 3.00 3.00 1/100 12345", "4", "4", "0-3", "4"]
    assert lines[6].endswith("load average: 3.00, 3.00, 3.00")
    assert all(os.path.dirname(path) in ("/usr/bin", "/bin") for path in lines[7:10]), lines[7:10]
    assert ".fakebin" not in lines[10] and not (fresh_host.home / ".ssh" / "environment").exists()
    assert lines[11:] == ["4", "4"]  # the CPUs configured, not only the online ones
    assert testbed.command_log(fresh_host) == [LOAD_PROBE]  # recorded like any other host


def test_set_load_leaves_other_hosts_and_this_machine_alone(testbed, sim_hosts, fresh_host):
    testbed.set_load(fresh_host, 3.0, 4)
    with ssh(sim_hosts[0], testbed.client_key) as client:
        lines = run(client, LOAD_PROBE)[1].decode().splitlines()
    here = subprocess.run(["sh", "-c", "nproc; getconf _NPROCESSORS_ONLN; cat /sys/devices/system/cpu/online"],
                          capture_output=True, text=True, timeout=TIMEOUT).stdout.splitlines()
    assert lines[2:5] == here and sim_hosts[0].port == testbed.port
    fake = load.loadavg_text(3.0).strip()
    assert lines[1] != fake and open("/proc/loadavg").read().strip() != fake


def test_set_load_again_changes_the_values_on_the_same_port(testbed, fresh_host):
    testbed.set_load(fresh_host, 3.0, 4)
    port = fresh_host.port
    with ssh(fresh_host, testbed.client_key) as client:  # a session open across the change sees it
        testbed.set_load(fresh_host, 0.5, 4)
        assert run(client, "cat /proc/loadavg")[1] == b"0.50 0.50 0.50 1/100 12345\n"
    testbed.set_load(fresh_host, 1.25, 2)  # another CPU count: its sshd restarts, on the same port
    assert fresh_host.port == port
    with ssh(fresh_host, testbed.client_key) as client:
        lines = run(client, LOAD_PROBE)[1].decode().splitlines()
    assert lines[:6] == ["1.25", "1.25 1.25 1.25 1/100 12345", "2", "2", "0-1", "2"]
    arranged = testbed.run_as(fresh_host, "cat /proc/loadavg; nproc")  # run_as sees what the sessions see
    assert (arranged.returncode, arranged.stdout) == (0, "1.25 1.25 1.25 1/100 12345\n2\n")


def test_fake_cpu_files():
    template = "processor\t: 0\nmodel name\t: X\nsiblings\t: 2\ncore id\t\t: 0\ncpu cores\t: 2\n\nprocessor\t: 1\n"
    blocks = load.cpuinfo_text(3, template).rstrip("\n").split("\n\n")
    assert [block.splitlines() for block in blocks] == [
        [f"processor\t: {n}", "model name\t: X", "siblings\t: 3", f"core id\t\t: {n}", "cpu cores\t: 3"]
        for n in range(3)]
    assert (load.cpus_text(1), load.cpus_text(4)) == ("0\n", "0-3\n")


# ---------------------------------------------------------------- config

def test_fleet_config_format(testbed, sim_hosts, fleet_config):
    extra = {"name": "dead", "host": "127.0.0.1", "port": faults.closed_port(), "user": "x", "ssh_key": "k"}
    path = fleet_config(extra_hosts=[extra], parallel=4)
    config = json.loads(path.read_text())
    assert [h["name"] for h in config["hosts"]] == [h.name for h in sim_hosts] + ["dead"]
    assert config["hosts"][0] == {"name": sim_hosts[0].name, "host": "127.0.0.1", "port": testbed.port,
                                  "user": sim_hosts[0].user, "ssh_key": str(testbed.client_key)}
    defaults = config["defaults"]
    assert defaults["parallel"] == 4 and defaults["host_key_policy"] == "accept-new"
    assert defaults["known_hosts"] == str(path.parent / "known_hosts")
    assert os.path.getsize(defaults["known_hosts"]) == 0


# ---------------------------------------------------------------- stand-in

SA = standin_module()
BANNER_PLAIN, BANNER_COLOR = SA.BANNER_PLAIN.encode(), SA.BANNER_COLOR.encode()
#: sha256 of the banners captured from the real picoclaw (sipeed/picoclaw cf67dd38).
BANNER_PLAIN_SHA256 = "1a9741860942e3bd4993f104ce3013ea9589eaf5a508e7d561d5ae272ed5b7d8"
BANNER_COLOR_SHA256 = "d1d719b8e2741219f04193fd87f5c6fc82fde42aad0b906be3ed57323ee9c759"
LOBSTER = "\U0001f99e".encode()
LOG_LINE = re.compile(rb"^\d\d:\d\d:\d\d (DBG|INF|WRN|ERR) \S+ github\.com/sipeed/picoclaw/\S+ > ")
WRN_LINE = re.compile(rb"^\d\d:\d\d:\d\d WRN agent github\.com/sipeed/picoclaw/pkg/agent/pipeline_llm\.go:315 > "
                      rb"Transient LLM error, retrying after backoff error=\"[^\n]*\" backoff=0s "
                      rb"reason=server_error retry=0\n")
SHARED = "sk_v1_cb10fea2cfe7f7373a42cc19db45c88fb87caebad9d6295e89a00577b35d7cc1"
REAL_PICOCLAW = os.environ.get("PICOCLAW_REAL_BINARY", "/tmp/pc/picoclaw")


def standin(path, *args, home, input=None, env=None, check_rc=None, color=False):
    """Run the stand-in locally with an argv list (no shell in between), plain
    banner unless color; stdin is closed unless input is given."""
    stdin = subprocess.DEVNULL if input is None else None
    base = {"HOME": str(home), "PATH": os.environ["PATH"]}
    if not color:
        base["NO_COLOR"] = "1"
    proc = subprocess.run([str(path), *args], stdin=stdin, input=input, capture_output=True, timeout=TIMEOUT,
                          env={**base, **(env or {})})
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


def after_banner(stdout: bytes, banner: bytes = BANNER_PLAIN) -> bytes:
    assert stdout.startswith(banner), stdout[:80]
    return stdout[len(banner):]


def answer_of(stdout: bytes) -> bytes:
    """The answer of a one-shot agent run: banner, log line(s), "\\n🦞 ", answer, "\\n"."""
    rest = after_banner(stdout)
    head, sep, answer = rest.partition(b"\n" + LOBSTER + b" ")
    assert sep and all(LOG_LINE.match(line) for line in head.splitlines(keepends=True)), rest[:300]
    assert answer.endswith(b"\n")
    return answer[:-1]


@pytest.fixture
def home(tmp_path):
    """A HOME with PicoClaw provisioned as a deploy leaves it."""
    home = tmp_path / "home"
    write_picoclaw_config(home)
    return home


def sessions(home) -> dict:
    """{file name: parsed content} of ~/.picoclaw/workspace/sessions."""
    found = {}
    for path in sorted((home / ".picoclaw" / "workspace" / "sessions").glob("*")):
        text = path.read_text(encoding="utf-8")
        found[path.name] = json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines()]
    return found


def run_real_picoclaw(*args, home, env=None) -> subprocess.CompletedProcess:
    """The real picoclaw, only ever inside a fresh network namespace of its own
    (`unshare --net`: nothing but a down loopback); skip when that is impossible."""
    if not os.access(REAL_PICOCLAW, os.X_OK) or shutil.which("unshare") is None:
        pytest.skip(f"no real picoclaw at {REAL_PICOCLAW} (PICOCLAW_REAL_BINARY) or no unshare")
    probe = subprocess.run(["unshare", "--net", "--", "true"], capture_output=True, timeout=TIMEOUT)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace: {probe.stderr.decode(errors='replace').strip()}")
    return subprocess.run(["unshare", "--net", "--", REAL_PICOCLAW, *args], capture_output=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL, env={"HOME": str(home), "PATH": os.environ["PATH"], **(env or {})})


# ---- banner, version, usage

def test_banner_literals_are_the_captured_bytes():
    assert (len(BANNER_PLAIN), len(BANNER_COLOR)) == (958, 1190)
    assert hashlib.sha256(BANNER_PLAIN).hexdigest() == BANNER_PLAIN_SHA256
    assert hashlib.sha256(BANNER_COLOR).hexdigest() == BANNER_COLOR_SHA256
    assert BANNER_PLAIN.startswith(b"\r\n") and BANNER_PLAIN.endswith(b"\n \r\n")
    assert BANNER_PLAIN.count(b"\n") == 8 and BANNER_COLOR.endswith(b"\n \x1b[0m\r\n")


@pytest.mark.parametrize("env, args, plain", [
    ({"NO_COLOR": "1"}, [], True),
    ({"NO_COLOR": "x"}, [], True),
    ({"TERM": "dumb"}, [], True),
    ({}, ["--no-color"], True),
    ({"NO_COLOR": ""}, [], False),
    ({"TERM": "xterm-256color"}, [], False),
])
def test_standin_banner_choice(standin_path, tmp_path, env, args, plain):
    proc = standin(standin_path, *args, "version", home=tmp_path, env=env, color=True, check_rc=0)
    assert proc.stdout.startswith(BANNER_PLAIN if plain else BANNER_COLOR)


def test_standin_version_lines(standin_path, tmp_path):
    proc = standin(standin_path, "version", home=tmp_path, check_rc=0)
    commit = standin_commit("0.1.0")
    assert after_banner(proc.stdout) == (f"🦞 picoclaw 0.1.0 (git: {commit})\n"
                                         f"  Build: {SA.BUILD_TIME}\n  Go: go1.27.3\n").encode()
    assert proc.stderr == b"" and re.fullmatch(r"[0-9a-f]{8}", commit)


@pytest.mark.parametrize("color", [False, True])
def test_banner_and_version_match_real_binary(standin_path, tmp_path, color):
    """Compared live, when the real binary can run in a network namespace."""
    env = {} if color else {"NO_COLOR": "1"}
    real = run_real_picoclaw("version", home=tmp_path, env=env)
    ours = standin(standin_path, "version", home=tmp_path, env=env, color=color, check_rc=0)
    banner = BANNER_COLOR if color else BANNER_PLAIN
    assert real.returncode == 0 and real.stdout[:len(banner)] == banner == ours.stdout[:len(banner)]
    shape = rb"\xf0\x9f\xa6\x9e picoclaw \S+ \(git: [0-9a-f]+\)\n  Build: \S+\n  Go: go\S+\n"
    assert re.fullmatch(shape, real.stdout[len(banner):]) and re.fullmatch(shape, ours.stdout[len(banner):])


def test_tz_lines_match_real_binary(standin_path, tmp_path):
    for zone in ("UTC", "Europe/Berlin", "Bogus/Zone"):
        real = run_real_picoclaw("version", home=tmp_path, env={"NO_COLOR": "1", "TZ": zone})
        ours = standin(standin_path, "version", home=tmp_path, env={"TZ": zone}, check_rc=0)
        assert after_banner(real.stdout).splitlines()[:3] == after_banner(ours.stdout).splitlines()[:3]


def test_standin_tz_lines(standin_path, tmp_path):
    proc = standin(standin_path, "version", home=tmp_path, env={"TZ": "UTC"}, check_rc=0)
    assert after_banner(proc.stdout).startswith(
        b"TZ environment: UTC\nZONEINFO environment: \nTime zone loaded successfully: UTC\n\xf0\x9f\xa6\x9e picoclaw ")
    bogus = standin(standin_path, "version", home=tmp_path, env={"TZ": "No/Such", "ZONEINFO": "/z"}, check_rc=0)
    assert after_banner(bogus.stdout).startswith(
        b"TZ environment: No/Such\nZONEINFO environment: /z\nError loading time zone: unknown time zone No/Such\n")


def test_standin_usage_errors(standin_path, home):
    unknown = standin(standin_path, "frobnicate", home=home, check_rc=1)
    assert (after_banner(unknown.stdout), unknown.stderr) == (b"", b'Error: unknown command "frobnicate" for "picoclaw"\n')
    assert after_banner(standin(standin_path, home=home, check_rc=0).stdout).startswith(
        b"\xf0\x9f\xa6\x9e PicoClaw is a lightweight personal AI assistant.\n\nVersion: 0.1.0 (git: ")
    flag = standin(standin_path, "agent", "-m", "hi", "--foo", home=home, check_rc=1)
    assert flag.stderr.startswith(b"Error: unknown flag: --foo\n\nInteract with the agent directly\n")
    assert standin(standin_path, "agent", "-m", home=home, check_rc=1).stderr.startswith(
        b"Error: flag needs an argument: 'm' in -m\n\n")
    assert standin(standin_path, "agent", "-m", "hi", "extra", home=home, check_rc=1).stderr == \
        b'Error: unknown command "extra" for "picoclaw agent"\n'


# ---- agent: answer, logs, sessions

TRICKY_TEXTS = [
    "-leading dash",
    "--message",
    "it's \"quoted\" `backticks` $HOME \\ back\\slash; rm -rf / && echo",
    "line one\nline two\n\ttabbed\n",
    "unicode: 🦞 ünïcødé 漢字",
    "x" * 100_000,
]


@pytest.mark.parametrize("text", TRICKY_TEXTS, ids=lambda t: repr(t[:20]))
@pytest.mark.parametrize("flag", ["-m", "--message"])
def test_standin_answers_text_verbatim(standin_path, home, text, flag):
    proc = standin(standin_path, "agent", flag, text, home=home, check_rc=0)
    rest = after_banner(proc.stdout)
    log = WRN_LINE.match(rest)
    assert log and rest[log.end():] == b"\n" + LOBSTER + b" " + text.encode() + b"\n"
    assert proc.stderr == b""


def test_standin_answer_keeps_odd_bytes(standin_path, home):
    odd = b"caf\xe9 \xff not UTF-8 \x1b[0m"
    proc = subprocess.run([str(standin_path).encode(), b"agent", b"-m", odd], capture_output=True, timeout=TIMEOUT,
                          env={"HOME": str(home), "NO_COLOR": "1", "PATH": os.environ["PATH"]},
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and answer_of(proc.stdout) == odd
    assert sessions(home)[SHARED + ".jsonl"][0]["content"] == "caf\ufffd \ufffd not UTF-8 \x1b[0m"


def test_standin_empty_message_is_interactive_mode(standin_path, home):
    closed = standin(standin_path, "agent", "-m", "", home=home, check_rc=0)
    assert after_banner(closed.stdout) == b"\xf0\x9f\xa6\x9e Interactive mode (Ctrl+C to exit)\n\n\nGoodbye!\n"
    lines = standin(standin_path, "agent", "-s", "agent:i", home=home, input=b"one\n\n  two  \nexit\nnever\n",
                    check_rc=0)
    without_logs = b"".join(line for line in after_banner(lines.stdout).splitlines(keepends=True)
                            if not LOG_LINE.match(line))
    assert without_logs == "🦞 Interactive mode (Ctrl+C to exit)\n\n\n🦞 one\n\n\n🦞 two\n\nGoodbye!\n".encode()
    assert [m["content"] for m in sessions(home)["agent_i.jsonl"]] == ["one", "one", "two", "two"]


def test_standin_logs_to_stdout_or_log_file(standin_path, home, tmp_path):
    plain = standin(standin_path, "agent", "-m", "hi", home=home, check_rc=0)
    assert WRN_LINE.match(after_banner(plain.stdout))
    log = tmp_path / "logs" / "picoclaw.log"
    filed = standin(standin_path, "agent", "-m", "::log-after::hi", home=home,
                    env={"PICOCLAW_LOG_FILE": str(log)}, check_rc=0)
    assert after_banner(filed.stdout) == b"\n" + LOBSTER + b" hi\n"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["level"], r["component"], r["message"]) for r in records] == [
        ("warn", "agent", "Transient LLM error, retrying after backoff"),
        ("info", "events", "Runtime event: agent.turn.end")]
    assert records[0]["caller"] == "github.com/sipeed/picoclaw/pkg/agent/pipeline_llm.go:315"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)", records[0]["time"])


def test_standin_log_after_answer(standin_path, home):
    rest = after_banner(standin(standin_path, "agent", "-m", "::log-after::done", home=home, check_rc=0).stdout)
    head, answer, tail = rest.split(b"\n")[0], rest.split(b"\n")[1:3], rest.split(b"\n", 3)[3]
    assert WRN_LINE.match(head + b"\n") and answer == [b"", LOBSTER + b" done"]
    assert re.fullmatch(rb"\d\d:\d\d:\d\d INF events \S+runtime_event_logger\.go:186 > Runtime event: agent\.turn\.end "
                        rb".* status=completed .*\n", tail)


def test_standin_missing_config_warns_on_stdout_even_with_log_file(standin_path, tmp_path):
    log = tmp_path / "picoclaw.log"
    proc = standin(standin_path, "agent", "-m", "hi", home=tmp_path, env={"PICOCLAW_LOG_FILE": str(log)}, check_rc=1)
    path = tmp_path / ".picoclaw" / "config.json"
    assert re.fullmatch(rb"\d\d:\d\d:\d\d WRN config github\.com/sipeed/picoclaw/pkg/config/config\.go:1272 > config "
                        rb"file not found, using default config path=" + re.escape(str(path).encode()) + rb"\n",
                        after_banner(proc.stdout))
    assert proc.stderr == b'Error: error creating provider: model "" not found in model_list: model "" not found ' \
                          b'in model_list or providers\n'
    assert log.read_bytes() == b""  # opened after the config was loaded, before the model was looked up


@pytest.mark.parametrize("key, file", [
    (None, SHARED), ("cli:default", SHARED), ("", SHARED), ("foo", SHARED), ("my/sess:1", SHARED),
    ("agent:main:job1", "agent_main_job1"), ("Agent:Main:X", "Agent_Main_X"), ("AGENT:x/y\\z", "AGENT_x_y_z"),
    ("sk_v1_abc", "sk_v1_abc"), ("SK_V1_Abc:1", "SK_V1_Abc_1"), (" agent:trim ", "agent_trim"),
])
def test_standin_session_files(standin_path, home, key, file):
    args = ["agent", "-m", "task <&> 🦞"] + ([] if key is None else ["-s", key])
    standin(standin_path, *args, home=home, check_rc=0)
    found = sessions(home)
    assert sorted(found) == [f"{file}.jsonl", f"{file}.meta.json"]
    messages = found[f"{file}.jsonl"]
    assert [(m["role"], m["content"]) for m in messages] == [("user", "task <&> 🦞"), ("assistant", "task <&> 🦞")]
    assert messages[1]["model_name"] == "claude-sonnet-4.6"
    raw = (home / ".picoclaw" / "workspace" / "sessions" / f"{file}.jsonl").read_text()
    assert '"content":"task \\u003c\\u0026\\u003e 🦞"' in raw  # Go's encoding/json escaping
    meta = found[f"{file}.meta.json"]
    assert (meta["key"], meta["count"], meta["skip"]) == (SHARED if file == SHARED else key.strip(), 2, 0)


def test_standin_shared_session_and_history(standin_path, home):
    def history(key):
        return answer_of(standin(standin_path, "agent", "-s", key, "-m", "::history::", home=home, check_rc=0).stdout)

    assert history("agent:a") == b"history=0"
    assert history("agent:a") == b"history=2"
    assert history("AGENT:a") == b"history=0"  # explicit keys keep their case
    assert history("whatever") == b"history=0"
    assert history("cli:default") == b"history=2"  # every other key is the one shared session
    standin(standin_path, "agent", "-m", "::fail::x", home=home, check_rc=1)
    assert history("other") == b"history=5"  # a failed turn keeps the user message
    env = {"PICOCLAW_AGENTS_DEFAULTS_WORKSPACE": str(home / "elsewhere")}  # the workspace can move
    standin(standin_path, "agent", "-s", "agent:a", "-m", "x", home=home, env=env, check_rc=0)
    assert (home / "elsewhere" / "sessions" / "agent_a.jsonl").exists()


# ---- directives

def test_standin_directives(standin_path, home):
    assert answer_of(standin(standin_path, "agent", "-m", "::sleep=0.1::late", home=home, check_rc=0).stdout) == b"late"
    failed = standin(standin_path, "agent", "-m", "::fail::boom", home=home, check_rc=1)
    assert WRN_LINE.fullmatch(after_banner(failed.stdout)) and failed.stderr == b"Error: stand-in failure: boom\n"
    env = {"ANTHROPIC_API_KEY": "sk-secret-value", "OPENAI_API_KEY": "x",
           "PICOCLAW_AGENTS_DEFAULTS_RESTRICT_TO_WORKSPACE": "false"}
    reported = answer_of(standin(standin_path, "agent", "-m", "::env::", home=home, env=env, check_rc=0).stdout)
    assert reported == (b"model=claude-sonnet-4.6\nkey=set\nrestrict_to_workspace=false\n"
                        b"ANTHROPIC_API_KEY=set\nOPENAI_API_KEY=set")
    assert answer_of(standin(standin_path, "agent", "-m", "::env::", home=home, check_rc=0).stdout) == \
        b"model=claude-sonnet-4.6\nkey=set\nrestrict_to_workspace=true"
    chained = standin(standin_path, "agent", "-m", "::sleep=0::::history::", home=home, check_rc=0)
    assert answer_of(chained.stdout).startswith(b"history=")


def test_standin_mode_applies_to_every_task(standin_path, home, tmp_path):
    mode = {"PICOCLAW_STANDIN_MODE": "::fail::"}
    assert standin(standin_path, "agent", "-m", "task", home=home, env=mode, check_rc=1).stderr == \
        b"Error: stand-in failure: task\n"
    baked = build_standin(tmp_path / "baked", mode="::fail::")
    standin(baked, "agent", "-m", "task", home=home, check_rc=1)
    assert answer_of(standin(baked, "agent", "-m", "::sleep=0::own", home=home, check_rc=0).stdout) == b"own"


def test_standin_config_checks_come_before_directives(standin_path, tmp_path):
    proc = standin(standin_path, "agent", "-m", "::env::", home=tmp_path, check_rc=1)
    assert b"not found in model_list" in proc.stderr and LOBSTER not in after_banner(proc.stdout)


def test_standin_pid_then_hang(standin_path, home):
    proc = subprocess.Popen([str(standin_path), "agent", "-m", "::pid::still here"], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env={"HOME": str(home), "NO_COLOR": "1"})
    try:
        assert proc.stdout.read(len(BANNER_PLAIN)) == BANNER_PLAIN
        assert WRN_LINE.match(proc.stdout.readline()) and proc.stdout.readline() == b"\n"
        assert proc.stdout.readline() == LOBSTER + f" {proc.pid}\n".encode()
        assert proc.stdout.readline() == b"still here\n"
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)


# ---- config and key checks

def write_config(home, config=None, security=None):
    picoclaw = home / ".picoclaw"
    picoclaw.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (picoclaw / "config.json").write_text(config if isinstance(config, str) else json.dumps(config, indent=2))
    if security is not None:
        (picoclaw / ".security.yml").write_text(security)
    return home


def config(model_name="claude-sonnet-4.6", **entry):
    model = {"model_name": "claude-sonnet-4.6", "provider": "anthropic", "model": "claude-sonnet-4-6",
             "api_base": "https://api.anthropic.com/v1", **entry}
    return {"version": 3, "agents": {"defaults": {"model_name": model_name}}, "model_list": [model]}


KEYED = 'model_list:\n  "claude-sonnet-4.6:0":\n    api_keys: ["sk-x"]\n'
NOT_FOUND = b'Error: error creating provider: model "%s" not found in model_list: model "%s" not found in ' \
            b'model_list or providers\n'
NO_KEY = b'Error: error creating provider: failed to create provider for model "claude-sonnet-4.6": api_key is ' \
         b'required for anthropic protocol (model: claude-sonnet-4-6)\n'


@pytest.mark.parametrize("name, conf, security, env, args, stderr", [
    ("empty model", config(""), KEYED, {}, [], NOT_FOUND % (b"", b"")),
    ("unknown model", config("nope"), KEYED, {}, [], NOT_FOUND % (b"nope", b"nope")),
    ("env model", config(), KEYED, {"PICOCLAW_AGENTS_DEFAULTS_MODEL_NAME": "nope"}, [], NOT_FOUND % (b"nope", b"nope")),
    ("flag model", config(), KEYED, {}, ["--model", "nope"], NOT_FOUND % (b"nope", b"nope")),
    ("no security file", config(), None, {}, [], NO_KEY),
    ("empty entry replaces config keys", config(api_keys=["sk-in-config"]),
     'model_list:\n  "claude-sonnet-4.6:0": {}\n', {}, [], NO_KEY),
    ("key for another index", config(), 'model_list:\n  "claude-sonnet-4.6:1":\n    api_keys: ["sk-x"]\n', {}, [],
     NO_KEY),
    ("empty key list", config(), "model_list:\n  claude-sonnet-4.6:0:\n    api_keys: []\n", {}, [], NO_KEY),
    ("no model_list entries", dict(config(), model_list=[]), KEYED, {}, [],
     b"Error: error creating provider: no providers configured. Please add entries to model_list in your config\n"),
    ("bad restrict env", config(), KEYED, {"PICOCLAW_AGENTS_DEFAULTS_RESTRICT_TO_WORKSPACE": "maybe"}, [],
     b'Error: error loading config: env: parse error on field "RestrictToWorkspace" of type "bool": '
     b'strconv.ParseBool: parsing "maybe": invalid syntax\n'),
    ("unknown field", config(api_key="sk-x"), KEYED, {}, [],
     b"Error: error loading config: config.json contains unknown field(s): model_list[0].api_key\n"),
    ("newer version", dict(config(), version=4), KEYED, {}, [],
     b"Error: error loading config: unsupported config version: 4\n"),
    ("entry without model", config(model=""), KEYED, {}, [],
     b"Error: error loading config: model_list[0]: model is required\n"),
    ("unknown provider", config(provider="nosuch"), KEYED, {}, [],
     b'Error: error creating provider: failed to create provider for model "claude-sonnet-4.6": unknown protocol '
     b'"nosuch" in model "claude-sonnet-4-6"\n'),
])
def test_standin_config_errors(standin_path, tmp_path, name, conf, security, env, args, stderr):
    home = write_config(tmp_path, conf, security)
    proc = standin(standin_path, "agent", "-m", "hi", *args, home=home, env=env, check_rc=1)
    assert proc.stderr == stderr
    assert LOBSTER not in after_banner(proc.stdout)


def test_standin_malformed_config(standin_path, tmp_path):
    home = write_config(tmp_path, '{\n  "version": 3,\n  "agents": {"defaults": {"model_name": "x",}}\n}\n')
    proc = standin(standin_path, "agent", "-m", "hi", home=home, check_rc=1)
    assert proc.stderr == (b"Error: error loading config: config.json syntax error at line 3, column 45: invalid "
                           b"character '}' looking for beginning of object key string\n"
                           b'     3 |   "agents": {"defaults": {"model_name": "x",}}\n'
                           b"                                                     ^\n")
    assert b" ERR config github.com/sipeed/picoclaw/pkg/config/config.go:1287 > Malformed config file: " in proc.stdout


@pytest.mark.parametrize("security", [
    'model_list:\n  "claude-sonnet-4.6:0":\n    api_keys: ["sk-x"]\n',
    "model_list:\n  claude-sonnet-4.6:0:\n    api_keys:\n    - sk-x\n  gpt-5.4:0: {}\n",  # PyYAML's block style
    "model_list:\n  claude-sonnet-4.6:0:\n    api_keys:\n      - sk-x\n",  # PicoClaw's own
    "model_list:\n  'claude-sonnet-4.6':\n    api_keys: ['sk-x']\n",  # bare name as fallback
    "model_list:\n  claude-sonnet-4.6:0: {api_keys: [sk-x]}\n",
    '# keys\nchannel_list:\n  slack:\n    settings: {}\nmodel_list:\n  # mine\n  "claude-sonnet-4.6:0":  # entry\n'
    '    api_keys:  # list\n      - "sk-x"  # the key\nweb:\n  brave: {}\n',
])
def test_standin_reads_security_yml_variants(standin_path, tmp_path, security):
    home = write_config(tmp_path, config(), security)
    assert answer_of(standin(standin_path, "agent", "-m", "hi", home=home, check_rc=0).stdout) == b"hi"


def test_standin_config_overrides(standin_path, tmp_path):
    home = write_config(tmp_path, config(""), KEYED)
    assert answer_of(standin(standin_path, "agent", "--model=claude-sonnet-4.6", "-mhi", home=home, check_rc=0)
                     .stdout) == b"hi"
    env = {"PICOCLAW_AGENTS_DEFAULTS_MODEL_NAME": "claude-sonnet-4.6"}
    assert answer_of(standin(standin_path, "agent", "-m", "hi", home=home, env=env, check_rc=0).stdout) == b"hi"
    moved = write_picoclaw_config(tmp_path / "other")  # PICOCLAW_HOME replaces ~/.picoclaw
    env = {"PICOCLAW_HOME": str(moved)}
    assert answer_of(standin(standin_path, "agent", "-m", "hi", home=tmp_path / "nohome", env=env, check_rc=0)
                     .stdout) == b"hi"
    openai = write_config(tmp_path / "oa", config(provider="openai"))  # key or api_base is enough there
    assert answer_of(standin(standin_path, "agent", "-m", "::env::", home=openai, check_rc=0).stdout).startswith(
        b"model=claude-sonnet-4.6\nkey=unset\n")


# ---- onboard

def test_standin_onboard_fresh_and_existing(standin_path, tmp_path):
    first = standin(standin_path, "onboard", home=tmp_path, input=b"", check_rc=0)
    picoclaw = tmp_path / ".picoclaw"
    assert after_banner(first.stdout) == SA.ONBOARD_DONE.format(config_path=picoclaw / "config.json").encode()
    written = json.loads((picoclaw / "config.json").read_text())
    assert written["version"] == 3 and written["agents"]["defaults"] == {
        **written["agents"]["defaults"], "workspace": str(picoclaw / "workspace"),
        "restrict_to_workspace": True, "model_name": ""}
    models = {m["model_name"]: m for m in written["model_list"]}
    assert models["claude-sonnet-4.6"] == {"model_name": "claude-sonnet-4.6", "provider": "anthropic",
                                           "model": "claude-sonnet-4-6", "api_base": "https://api.anthropic.com/v1"}
    assert models["gpt-5.4"] == {"model_name": "gpt-5.4", "provider": "openai", "model": "gpt-5.4",
                                 "api_base": "https://api.openai.com/v1"}
    security = (picoclaw / ".security.yml").read_text()
    assert security.startswith("model_list:\n") and "  claude-sonnet-4.6:0: {}\n" in security
    assert [oct(p.stat().st_mode & 0o777) for p in (picoclaw / "config.json", picoclaw / ".security.yml")] == \
        ["0o600", "0o600"]
    assert (picoclaw / "workspace").is_dir()

    provisioned = write_picoclaw_config(tmp_path / "p")  # no prompt: kept, re-saved
    before = json.loads((provisioned / "config.json").read_text())
    standin(standin_path, "onboard", home=tmp_path / "p", check_rc=0)
    assert json.loads((provisioned / "config.json").read_text()) == before
    assert answer_of(standin(standin_path, "agent", "-m", "hi", home=tmp_path / "p", check_rc=0).stdout) == b"hi"

    broken = write_config(tmp_path / "b", "precious")
    refused = standin(standin_path, "onboard", home=broken, check_rc=1)
    assert after_banner(refused.stdout).split(b"\n")[-4].startswith(b"Error loading existing config: config.json "
                                                                    b"syntax error at line 1, column 1: invalid ")
    assert (broken / ".picoclaw" / "config.json").read_text() == "precious"


# ---- testbed installation

def test_install_standin_over_ssh(testbed, fresh_host):
    path = testbed.install_standin(fresh_host, version="0.2.0")
    assert path == fresh_host.home / ".local" / "bin" / "picoclaw"
    probe = ("stat -c '%U %a %n' ~/.local/bin/picoclaw ~/.picoclaw ~/.picoclaw/config.json ~/.picoclaw/.security.yml;"
             " ~/.local/bin/picoclaw version")
    with ssh(fresh_host, testbed.client_key) as client:
        status, out, _ = run(client, probe)
        answered = run(client, "NO_COLOR=1 ~/.local/bin/picoclaw agent -m 'over ssh'")
    user, stats = fresh_host.user, out.split(b"\n", 4)
    assert status == 0 and [line.decode() for line in stats[:4]] == [
        f"{user} 755 {path}", f"{user} 700 {fresh_host.home}/.picoclaw",
        f"{user} 600 {fresh_host.home}/.picoclaw/config.json", f"{user} 600 {fresh_host.home}/.picoclaw/.security.yml"]
    version = stats[4]
    assert version.startswith(BANNER_COLOR)  # no NO_COLOR over a plain ssh exec
    assert version[len(BANNER_COLOR):].startswith(f"🦞 picoclaw 0.2.0 (git: {standin_commit('0.2.0')})\n".encode())
    assert answered[0] == 0 and answer_of(answered[1]) == b"over ssh"
    conf = json.loads((fresh_host.home / ".picoclaw" / "config.json").read_text())
    assert conf["version"] == 3 and conf["agents"]["defaults"]["model_name"] == STANDIN_MODEL_NAME
    assert {"model_name": "claude-sonnet-4.6", "provider": "anthropic", "model": "claude-sonnet-4-6",
            "api_base": "https://api.anthropic.com/v1"} in conf["model_list"]
    assert "  claude-sonnet-4.6:0:\n    api_keys:\n    - sk-standin-test\n" in \
        (fresh_host.home / ".picoclaw" / ".security.yml").read_text()


def test_install_bare_standin_fails_like_unconfigured_picoclaw(testbed):
    host = testbed.add_workers(1, prefix="bare", provision=False)[0]
    assert not (host.home / ".picoclaw").exists()
    proc = testbed.run_as(host, "NO_COLOR=1 ~/.local/bin/picoclaw agent -m hi")
    assert proc.returncode == 1 and "config file not found" in proc.stdout
    assert proc.stderr == 'Error: error creating provider: model "" not found in model_list: model "" not found ' \
                          'in model_list or providers\n'
    testbed.provision_picoclaw(host)
    done = testbed.run_as(host, "NO_COLOR=1 ~/.local/bin/picoclaw agent -m hi")
    assert done.returncode == 0 and done.stdout.endswith("\n🦞 hi\n")


def test_add_workers_are_provisioned(testbed):
    host = testbed.add_workers(1, prefix="wk", mode="::fail::")[0]
    proc = testbed.run_as(host, "NO_COLOR=1 ~/.local/bin/picoclaw agent -m task")
    assert (proc.returncode, proc.stderr) == (1, "Error: stand-in failure: task\n")


def test_build_standin_padding(tmp_path):
    plain = build_standin(tmp_path / "plain")
    padded = build_standin(tmp_path / "padded", version="9.9.9", pad_bytes=1_000_001)
    assert padded.stat().st_size - plain.stat().st_size == 1_000_001
    proc = standin(padded, "version", home=tmp_path, check_rc=0)
    assert b"picoclaw 9.9.9 (git: " in proc.stdout


def test_standin_archive_is_goreleaser_style(tmp_path):
    data = standin_archive("0.3.0", "Linux_x86_64")
    assert data == standin_archive("0.3.0", "Linux_x86_64")  # deterministic
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"picoclaw", "README.md", "LICENSE"}
        assert members["picoclaw"].mode == 0o755
        tar.extract("picoclaw", tmp_path)
    assert b"picoclaw 0.3.0 (git: " in standin(tmp_path / "picoclaw", "version", home=tmp_path, check_rc=0).stdout


def test_standin_binary_is_a_zipapp_whose_bytecode_fits_the_hosts_python(testbed, fresh_host, tmp_path):
    """Packed as Python's own zipapps are, so a start loads bytecode instead of compiling the
    program -- for the python3 the hosts run; another python3 compiles __main__.py instead."""
    data = standin_binary("0.1.0")
    assert data.startswith(b"#!/usr/bin/env -S python3 -I -S\n")
    path = tmp_path / "picoclaw"
    path.write_bytes(data)
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["__main__.py", "__main__.pyc"]
        source, pyc = archive.read("__main__.py"), archive.read("__main__.pyc")
    assert source.startswith(b"#!/usr/bin/env -S python3 -I -S\n") and b"\nVERSION = '0.1.0'\n" in source
    magic = testbed.run_as(fresh_host, "python3 -c 'import importlib.util; print(importlib.util.MAGIC_NUMBER.hex())'")
    assert pyc[:4].hex() == magic.stdout.strip()

    other = io.BytesIO()  # bytecode of another Python: ignored
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("__main__.py", source)
        archive.writestr("__main__.pyc", b"\x00\x00\r\n" + pyc[4:])
    path.write_bytes(b"#!/usr/bin/env -S python3 -I -S\n" + other.getvalue())
    path.chmod(0o755)
    assert b"picoclaw 0.1.0 (git: " in standin(path, "version", home=tmp_path, check_rc=0).stdout


def imported_modules(path, *args, home):
    """The modules a run of the stand-in imports (python3 -X importtime), and the run."""
    proc = subprocess.run(["python3", "-I", "-S", "-X", "importtime", str(path), *args], capture_output=True,
                          env={"HOME": str(home), "PATH": DEFAULT_PATH, "NO_COLOR": "1"}, stdin=subprocess.DEVNULL,
                          timeout=TIMEOUT)
    lines = proc.stderr.decode().splitlines()
    return {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}, proc


def test_standin_version_imports_neither_json_nor_re(standin_path, home):
    """`version` is what the status probe and deploy run on every host: json and re cost more to import
    than the rest of that run, so only the commands that use them import them."""
    modules, proc = imported_modules(standin_path, "version", home=home)
    assert proc.returncode == 0 and b"picoclaw 0.1.0" in proc.stdout
    assert "runpy" in modules and not modules & {"json", "re", "json.decoder"}, sorted(modules)
    modules, proc = imported_modules(standin_path, "agent", "-m", "hi", home=home)
    assert proc.returncode == 0 and answer_of(proc.stdout) == b"hi"
    assert {"json", "re"} <= modules  # the check sees imports: a task reads the config


# ---------------------------------------------------------------- loopback guard

TEST_NET = ("192.0.2.1", 9)  # RFC 5737: never routed; the guard must stop us first anyway


def assert_guard_installed():
    """Checked before any refused call, so a missing guard fails the test
    instead of sending a packet."""
    assert hasattr(socket.socket.connect, "__loopback_guard__"), "loopback guard not installed"


def test_guard_refuses_non_loopback_in_process():
    assert_guard_installed()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(OSError, match="loopback guard: refusing to connect to"):
            sock.connect(TEST_NET)
        with pytest.raises(OSError, match="loopback guard"):
            sock.connect_ex(TEST_NET)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(OSError, match="loopback guard"):
            udp.sendto(b"x", TEST_NET)
    with pytest.raises(OSError, match="loopback guard: refusing to resolve"):
        socket.getaddrinfo("example.invalid", 22)


def test_guard_allows_loopback(testbed):
    assert_guard_installed()
    with socket.create_connection(("127.0.0.1", testbed.port), timeout=TIMEOUT) as sock:
        assert sock.recv(4) == b"SSH-"
    with socket.create_connection(("localhost", testbed.port), timeout=TIMEOUT) as sock:
        assert sock.recv(4) == b"SSH-"


def test_guard_in_subprocess(guarded_env):
    code = (
        "import socket, sys\n"
        "if not hasattr(socket.socket.connect, '__loopback_guard__'): sys.exit('guard missing')\n"
        "try:\n"
        f"    socket.create_connection({TEST_NET!r}, timeout=1)\n"
        "except OSError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=guarded_env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "loopback guard: refusing to connect to ('192.0.2.1', 9)" in proc.stdout
