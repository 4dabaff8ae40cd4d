"""Prove the testbed is real: plain paramiko against the real sshd, the
stand-in run locally, the loopback guard.  No product code involved."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time

import paramiko
import pytest

from tests import testbed as tb

TIMEOUT = 30  # generous: only there to turn a hang into a failure


@contextlib.contextmanager
def ssh(host: tb.SimHost, key, port=None, policy=None, known_hosts=None, **kwargs):
    """A connected paramiko client, with no agent/default keys in play."""
    client = paramiko.SSHClient()
    if known_hosts is not None:
        client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(policy or paramiko.AutoAddPolicy())
    try:
        client.connect(tb.LOOPBACK, port=port or host.port, username=host.user, key_filename=str(key),
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
            "direct-tcpip", (tb.LOOPBACK, testbed.port), (tb.LOOPBACK, 0), timeout=TIMEOUT)
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
    with tb.RotatingKeySshd(testbed) as rotating:
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
        pid = stdout.readline().decode().strip()
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


def test_set_load_is_per_host(testbed, sim_hosts, fresh_host):
    testbed.set_load(fresh_host, 2.5, 3)
    probe = "cat /proc/loadavg; nproc; cat ~/.ssh/authorized_keys | wc -l"
    with ssh(fresh_host, testbed.client_key) as client:
        assert run(client, probe)[1] == b"2.50 2.50 2.50 1/100 12345\n3\n1\n"
    with ssh(sim_hosts[0], testbed.client_key) as client:
        lines = run(client, probe)[1].decode().splitlines()
    real_nproc = subprocess.run(["nproc"], capture_output=True, text=True, timeout=TIMEOUT).stdout.strip()
    assert lines[0] != "2.50 2.50 2.50 1/100 12345" and lines[1] == real_nproc


# ---------------------------------------------------------------- config

def test_fleet_config_format(testbed, sim_hosts, fleet_config):
    extra = {"name": "dead", "host": "127.0.0.1", "port": tb.closed_port(), "user": "x", "ssh_key": "k"}
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

def standin(path, *args, home, input=None, env=None, check_rc=None):
    """Run the stand-in locally with an argv list (no shell in between);
    stdin is closed unless input is given."""
    stdin = subprocess.DEVNULL if input is None else None
    proc = subprocess.run([str(path), *args], stdin=stdin, input=input, capture_output=True, timeout=TIMEOUT,
                          env={"HOME": str(home), "PATH": os.environ["PATH"], **(env or {})})
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


TRICKY_TEXTS = [
    "-leading dash",
    "--message",
    "it's \"quoted\" `backticks` $HOME \\ back\\slash; rm -rf / && echo",
    "line one\nline two\n\ttabbed\n",
    "unicode: 🦞 ünïcødé 漢字",
    "",
    "x" * 100_000,
]


@pytest.mark.parametrize("text", TRICKY_TEXTS, ids=lambda t: repr(t[:20]))
@pytest.mark.parametrize("flag", ["-m", "--message"])
def test_standin_echoes_text_verbatim(standin_path, tmp_path, text, flag):
    proc = standin(standin_path, "agent", flag, text, home=tmp_path, check_rc=0)
    assert proc.stdout == text.encode() + b"\n"


def test_standin_version_and_usage(standin_path, tmp_path):
    proc = standin(standin_path, "version", home=tmp_path, check_rc=0)
    assert proc.stdout.decode().splitlines()[0] == "🦞 picoclaw v0.1.0 (stand-in for tests)"
    assert standin(standin_path, "frobnicate", home=tmp_path, check_rc=2).stderr.startswith(b"usage:")


def test_standin_directives(standin_path, tmp_path):
    assert standin(standin_path, "agent", "-m", "::sleep=0.1::late", home=tmp_path, check_rc=0).stdout == b"late\n"
    failed = standin(standin_path, "agent", "-m", "::fail::boom", home=tmp_path, check_rc=3)
    assert (failed.stdout, failed.stderr) == (b"", b"stand-in failure: boom\n")
    env = {"PICOCLAW_AGENTS_DEFAULTS_PROVIDER": "anthropic", "ANTHROPIC_API_KEY": "sk-secret-value"}
    reported = standin(standin_path, "agent", "-m", "::env::", home=tmp_path, env=env, check_rc=0).stdout
    assert reported == b"PROVIDER=anthropic\nANTHROPIC_API_KEY=set\n"
    assert standin(standin_path, "agent", "-m", "::env::", home=tmp_path).stdout == b"PROVIDER=unset\n"


def test_standin_mode_applies_to_every_task(standin_path, tmp_path):
    mode = {"PICOCLAW_STANDIN_MODE": "::fail::"}
    assert standin(standin_path, "agent", "-m", "task", home=tmp_path, env=mode, check_rc=3).stderr == \
        b"stand-in failure: task\n"
    baked = tb.build_standin(tmp_path / "baked", mode="::fail::")
    standin(baked, "agent", "-m", "task", home=tmp_path, check_rc=3)
    assert standin(baked, "agent", "-m", "::sleep=0::own", home=tmp_path, check_rc=0).stdout == b"own\n"


def test_standin_pid_then_hang(standin_path, tmp_path):
    proc = subprocess.Popen([str(standin_path), "agent", "-m", "::pid::still here"], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env={"HOME": str(tmp_path)})
    try:
        assert proc.stdout.readline() == f"{proc.pid}\n".encode()
        assert proc.stdout.readline() == b"still here\n"
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)


def test_standin_onboard_never_overwrites_without_yes(standin_path, tmp_path):
    config = tmp_path / ".picoclaw" / "config.json"
    first = standin(standin_path, "onboard", home=tmp_path, check_rc=0)
    assert "picoclaw is ready" in first.stdout.decode()
    assert oct(config.parent.stat().st_mode & 0o777) == "0o700" and (config.parent / "workspace").is_dir()
    config.write_text("precious")

    refused = standin(standin_path, "onboard", home=tmp_path, check_rc=0)  # stdin closed
    assert "Config already exists" in refused.stdout.decode() and "Aborted." in refused.stdout.decode()
    assert config.read_text() == "precious"

    standin(standin_path, "onboard", home=tmp_path, input=b"y\n", check_rc=0)
    assert json.loads(config.read_text())["written_by"] == "picoclaw-standin onboard"


def test_install_standin_over_ssh(testbed, fresh_host):
    path = testbed.install_standin(fresh_host, version="0.2.0")
    assert path == fresh_host.home / ".local" / "bin" / "picoclaw"
    with ssh(fresh_host, testbed.client_key) as client:
        status, out, _ = run(client, "stat -c '%U %a' ~/.local/bin/picoclaw; ~/.local/bin/picoclaw version")
    assert status == 0
    assert out.decode().splitlines()[:2] == [f"{fresh_host.user} 755", "🦞 picoclaw v0.2.0 (stand-in for tests)"]


def test_build_standin_padding(tmp_path):
    plain = tb.build_standin(tmp_path / "plain")
    padded = tb.build_standin(tmp_path / "padded", version="9.9.9", pad_bytes=1_000_001)
    assert padded.stat().st_size - plain.stat().st_size == 1_000_001
    proc = standin(padded, "version", home=tmp_path, check_rc=0)
    assert b"v9.9.9" in proc.stdout


def test_standin_archive_is_goreleaser_style(tmp_path):
    data = tb.standin_archive("0.3.0", "Linux_x86_64")
    assert data == tb.standin_archive("0.3.0", "Linux_x86_64")  # deterministic
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"picoclaw", "README.md", "LICENSE"}
        assert members["picoclaw"].mode == 0o755
        tar.extract("picoclaw", tmp_path)
    assert b"v0.3.0" in standin(tmp_path / "picoclaw", "version", home=tmp_path, check_rc=0).stdout


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
