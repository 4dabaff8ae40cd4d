"""Connecting: every step has a deadline, every failure its real cause, and paramiko stays quiet.

Real faults on 127.0.0.1: listeners that close at once, send garbage or a
banner and then nothing; an SSH server (paramiko's, in this process) that
stalls in authentication or in opening a session; a real sshd frozen with
SIGSTOP before and after the handshake; a missing ``ssh_key``; a known_hosts
that is a directory or read-only; gateways chained and looping. No test
measures time: each checks what the product reports, and that it reports.
"""

import json
import socket
import subprocess
import threading

import paramiko
import pytest

from fabfile.core.config import load_config
from fabfile.ssh.fanout import fan_out
from fabfile.core.context import RunContext
from fabfile.verbs.status import status_report
from harness.cli import FAB, REPO
from harness.faults import FrozenSshd, run_with_read_only


def fab(args, env):
    return subprocess.run([FAB, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def status_json(path, env, *extra):
    result = fab(["status", "--config", str(path), "--json", *extra], env)
    try:
        data = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (exit {result.returncode}): {result.stdout!r} {result.stderr!r}") from None
    return result, {h["name"]: h for h in data["hosts"]}


def assert_usage_error(result, fragment):
    """Exit 2, nothing on stdout, one line on stderr that says `fragment`."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert fragment in lines[0], lines[0]


# --- fault servers ------------------------------------------------------------------------------


class ScriptedListener:
    """A 127.0.0.1 port whose every connection gets `behave(sock)` (in a thread); counts connections."""

    def __init__(self, behave):
        self.behave = behave
        self.accepted = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._held = []
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self._held.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        try:
            self.behave(client)
        except OSError:
            pass

    def close(self):
        self._stop.set()
        self._thread.join()
        for sock in [*self._held, self._sock]:
            sock.close()


def close_at_once(sock):
    sock.close()


def garbage_then_close(sock):
    sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    sock.close()


def many_lines_no_banner(sock):
    sock.sendall(b"220 smtp.example ESMTP\r\n" * 120)  # then silence: paramiko gives up after 100 lines


def banner_then_nothing(sock):
    sock.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")  # then never a key exchange


@pytest.fixture
def listener():
    made = []

    def make(behave=lambda sock: None):
        made.append(ScriptedListener(behave))
        return made[-1]

    yield make
    for item in made:
        item.close()


class StallingServer(paramiko.ServerInterface):
    """An SSH server that hangs in authentication or in opening a session, until released."""

    def __init__(self, stall, release):
        self.stall, self.release = stall, release

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        if self.stall == "auth":
            self.release.wait()
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind, chanid):
        if self.stall == "session":
            self.release.wait()
        return paramiko.OPEN_SUCCEEDED

    def check_channel_direct_tcpip_request(self, chanid, origin, destination):
        if self.stall == "session":
            self.release.wait()
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


@pytest.fixture
def stalling_ssh(listener):
    """Factory: the port of a real SSH server (paramiko, this process) that stalls at `stall`."""
    release, transports = threading.Event(), []
    host_key = paramiko.ECDSAKey.generate()

    def make(stall):
        def behave(sock):
            transport = paramiko.Transport(sock)
            transports.append(transport)
            transport.add_server_key(host_key)
            transport.start_server(server=StallingServer(stall, release))
        return listener(behave).port

    yield make
    release.set()
    for transport in transports:
        transport.close()


def fault_host(testbed, user_host, name, port, **extra):
    return dict(name=name, host="127.0.0.1", port=port, user=user_host.user, ssh_key=str(testbed.client_key), **extra)


# --- each connection step: its deadline and its name ----------------------------------------------


def test_each_stalled_or_broken_step_is_named_and_paramiko_prints_nothing(
        testbed, sim_hosts, fleet_config, guarded_env, listener, stalling_ssh, closed_port):
    """One run, every fault beside two healthy hosts: each host's own cause, stderr empty."""
    faults = {
        "closes": listener(close_at_once).port,
        "garbage": listener(garbage_then_close).port,
        "chatty": listener(many_lines_no_banner).port,
        "silent": listener().port,
        "banner-only": listener(banner_then_nothing).port,
        "auth-stall": stalling_ssh("auth"),
        "session-stall": stalling_ssh("session"),
        "refused": closed_port,
    }
    extra = [fault_host(testbed, sim_hosts[0], name, port) for name, port in faults.items()]
    path = fleet_config(hosts=sim_hosts[:2], extra_hosts=extra, connect_timeout=2)
    result, hosts = status_json(path, guarded_env)
    assert result.returncode == 1
    assert result.stderr == "", "paramiko (or anything) printed on stderr"
    assert [hosts[h.name]["status"] for h in sim_hosts[:2]] == ["ok", "ok"]
    expected = {
        "closes": "the connection was closed before an SSH banner: is it an SSH server?",
        "garbage": "the connection was closed before an SSH banner: is it an SSH server?",
        "chatty": "not an SSH server: it answered, but no line of it is an SSH banner",
        "silent": "no SSH banner within 2s",
        "banner-only": "SSH key exchange did not finish within 2s",
        "auth-stall": "authentication did not finish within 2s",
        "session-stall": "session not opened within 4s",
        "refused": "connection refused",
    }
    for name, message in expected.items():
        assert hosts[name]["status"] == "unreachable", (name, hosts[name])
        assert message in hosts[name]["message"], (name, hosts[name]["message"])


def test_paramiko_logs_nothing_through_the_root_logger(listener, fleet_config, testbed, sim_hosts):
    """In-process too: a garbage host leaves no record where a configured root logger would print it."""
    import logging

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    root = logging.getLogger()
    handler = Keep(level=logging.DEBUG)
    root.addHandler(handler)
    try:
        extra = [fault_host(testbed, sim_hosts[0], "garbage", listener(garbage_then_close).port)]
        fleet = load_config(str(fleet_config(hosts=[], extra_hosts=extra, connect_timeout=2)))
        [report] = fan_out(RunContext(fleet, fleet.hosts), status_report).reports
    finally:
        root.removeHandler(handler)
    assert report.status == "unreachable"
    assert [r for r in records if r.name.startswith("paramiko")] == []


# --- a real sshd, frozen --------------------------------------------------------------------------


@pytest.fixture
def frozen_sshd(testbed):
    """A second real sshd for the sim users, whose `freeze()` SIGSTOPs it with its children."""
    with FrozenSshd(testbed) as server:
        yield server


def test_status_reports_a_frozen_sshd_unreachable_and_the_others_ok(
        testbed, sim_hosts, fleet_config, guarded_env, frozen_sshd):
    """The sshd takes TCP (the kernel does) and then says nothing: no SSH banner, named, no hang."""
    frozen_sshd.freeze()
    extra = [fault_host(testbed, sim_hosts[2], "frozen", frozen_sshd.port)]
    result, hosts = status_json(fleet_config(hosts=sim_hosts[:2], extra_hosts=extra, connect_timeout=2), guarded_env)
    assert result.returncode == 1 and result.stderr == ""
    assert hosts["frozen"]["status"] == "unreachable"
    assert "no SSH banner within 2s" in hosts["frozen"]["message"]
    assert [hosts[h.name]["status"] for h in sim_hosts[:2]] == ["ok", "ok"]


def test_an_sshd_frozen_after_the_handshake_ends_the_status_probe_named(
        testbed, sim_hosts, fleet_config, frozen_sshd):
    """Connected and authenticated, then the sshd (listener and per-connection processes) stops."""
    extra = [fault_host(testbed, sim_hosts[2], "frozen", frozen_sshd.port)]
    fleet = load_config(str(fleet_config(hosts=sim_hosts[:2], extra_hosts=extra, connect_timeout=2)))
    frozen_pids = []

    def work(cxn, entry):
        if entry.name == "frozen":
            cxn.open()
            frozen_pids.extend(frozen_sshd.freeze(sim_hosts[2]))
        return status_report(cxn, entry)

    reports = {r.name: r for r in fan_out(RunContext(fleet, fleet.hosts), work).reports}
    assert len(frozen_pids) >= 3, "the listener and its per-connection processes were frozen"
    assert reports["frozen"].status == "unreachable"
    assert reports["frozen"].message  # which step stalled depends on the probe; that it is named does not
    assert "within" in reports["frozen"].message, reports["frozen"].message
    assert [reports[h.name].status for h in sim_hosts[:2]] == ["ok", "ok"]


def test_opening_a_session_on_a_frozen_sshd_is_named(testbed, sim_hosts, fleet_config, frozen_sshd):
    """The session-open step on its own: `session not opened within 2s` (2 x connect_timeout), not an hour's wait."""
    extra = [fault_host(testbed, sim_hosts[2], "frozen", frozen_sshd.port)]
    fleet = load_config(str(fleet_config(hosts=[], extra_hosts=extra, connect_timeout=1)))

    def work(cxn, entry):
        cxn.open()
        frozen_sshd.freeze(sim_hosts[2])
        cxn.run("true", hide=True, in_stream=False)
        raise AssertionError("the frozen sshd ran a command")

    [report] = fan_out(RunContext(fleet, fleet.hosts), work).reports
    assert (report.status, report.message) == ("unreachable", "session not opened within 2s")


# --- ssh_key and known_hosts: the real cause, before connecting ------------------------------------


def test_missing_ssh_key_is_auth_failed_naming_the_file_and_never_dials(
        testbed, sim_hosts, fleet_config, home_env, listener):
    counting = listener()
    raw = fault_host(testbed, sim_hosts[0], "nokey", counting.port)
    raw["ssh_key"] = "~/.ssh/x"
    is_dir = fault_host(testbed, sim_hosts[0], "dirkey", counting.port)
    is_dir["ssh_key"] = "~"
    result, hosts = status_json(fleet_config(hosts=sim_hosts[:1], extra_hosts=[raw, is_dir]), home_env)
    assert result.returncode == 1 and result.stderr == ""
    assert hosts["nokey"]["status"] == "auth-failed"
    assert hosts["nokey"]["message"] == "ssh_key ~/.ssh/x: no such file"
    assert hosts["dirkey"]["status"] == "auth-failed"
    assert hosts["dirkey"]["message"] == "ssh_key ~: is a directory, not a private key file"
    assert hosts[sim_hosts[0].name]["status"] == "ok"
    assert counting.accepted == 0


def test_a_key_file_that_is_not_a_key_is_auth_failed(testbed, sim_hosts, fleet_config, guarded_env, tmp_path):
    bad_key = tmp_path / "not_a_key"
    bad_key.write_text("this is not a private key\n")
    raw = dict(testbed.fleet_config([sim_hosts[0]])["hosts"][0], name="badkey", ssh_key=str(bad_key))
    result, hosts = status_json(fleet_config(hosts=[], extra_hosts=[raw]), guarded_env)
    assert result.returncode == 1 and result.stderr == ""
    assert hosts["badkey"]["status"] == "auth-failed", hosts["badkey"]


@pytest.mark.parametrize("policy", ["accept-new", "strict"])
def test_known_hosts_that_is_a_directory_is_a_usage_error(testbed, sim_hosts, fleet_config, guarded_env, tmp_path,
                                                          listener, policy):
    counting = listener()
    known = tmp_path / "kh-dir"
    known.mkdir()
    path = fleet_config(hosts=[], extra_hosts=[fault_host(testbed, sim_hosts[0], "h", counting.port)],
                        known_hosts=str(known), host_key_policy=policy)
    for verb in (["status"], ["teardown", "--yes"], ["batch", "-t", "hi"], ["dispatch", "--all", "-t", "hi"]):
        assert_usage_error(fab([*verb, "--config", str(path)], guarded_env),
                           f"known_hosts {known}: is a directory")
    assert counting.accepted == 0


def test_known_hosts_that_cannot_be_created_is_a_usage_error_under_accept_new(
        testbed, sim_hosts, fleet_config, guarded_env, tmp_path, listener):
    counting = listener()
    (tmp_path / "a-file").write_text("")
    known = tmp_path / "a-file" / "known_hosts"
    path = fleet_config(hosts=[], extra_hosts=[fault_host(testbed, sim_hosts[0], "h", counting.port)],
                        known_hosts=str(known))
    assert_usage_error(fab(["status", "--config", str(path)], guarded_env),
                       f"known_hosts {known}: cannot be created ({tmp_path / 'a-file'} is not a directory)")
    assert counting.accepted == 0


def test_read_only_known_hosts_is_a_usage_error_under_accept_new(testbed, sim_hosts, fleet_config, guarded_env,
                                                                 tmp_path, listener):
    """accept-new must record a new key: a known_hosts on a read-only mount is refused before connecting."""
    counting = listener()
    directory = tmp_path / "ro"
    directory.mkdir()
    known = directory / "known_hosts"
    known.write_text("")
    path = fleet_config(hosts=[], extra_hosts=[fault_host(testbed, sim_hosts[0], "h", counting.port)],
                        known_hosts=str(known))
    result = run_with_read_only(directory, [FAB, "status", "--config", path], guarded_env)
    assert_usage_error(result, f"known_hosts {known}: is read-only, and host_key_policy accept-new records")
    missing = directory / "not-yet"
    path = fleet_config(hosts=[], extra_hosts=[fault_host(testbed, sim_hosts[0], "h", counting.port)],
                        known_hosts=str(missing))
    result = run_with_read_only(directory, [FAB, "status", "--config", path], guarded_env)
    assert_usage_error(result, f"known_hosts {missing}: cannot be created ({directory} is not writable)")
    assert counting.accepted == 0


def test_read_only_known_hosts_is_fine_under_strict(testbed, sim_hosts, fleet_config, guarded_env, tmp_path):
    """strict only reads known_hosts: the same read-only file serves."""
    directory = tmp_path / "ro"
    directory.mkdir()
    known = directory / "known_hosts"
    known.write_text(testbed.host_key_line() + "\n")
    path = fleet_config(hosts=sim_hosts[:1], known_hosts=str(known), host_key_policy="strict")
    result = run_with_read_only(directory, [FAB, "status", "--config", path, "--json"], guarded_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["hosts"][0]["status"] == "ok"


def test_known_hosts_with_garbage_lines_is_read_like_openssh(testbed, sim_hosts, fleet_config, guarded_env, tmp_path):
    """Lines paramiko cannot parse (bad base64, not UTF-8) are skipped, not a crash; good lines still count."""
    known = tmp_path / "known_hosts"
    known.write_bytes(b"\xff\xfe not utf-8\n127.0.0.9 ssh-ed25519 !!!notbase64!!!\n# comment\n"
                      + testbed.host_key_line().encode() + b"\n")
    path = fleet_config(hosts=sim_hosts[:1], known_hosts=str(known), host_key_policy="strict")
    result, hosts = status_json(path, guarded_env)
    assert result.returncode == 0, result.stderr
    assert hosts[sim_hosts[0].name]["status"] == "ok"


def test_a_hashed_known_hosts_of_a_whole_fleet_is_honoured(testbed, sim_hosts, fleet_config, guarded_env, tmp_path):
    """As ``HashKnownHosts yes`` writes it (Debian's default): the host's hashed line among 300 others and a
    line paramiko cannot read lets strict in; the same name hashed with another key is a changed key."""
    import base64
    import os

    from harness.sshd import keygen, public_key

    name, key = testbed.host_key_line().split(" ", 1)
    other = public_key(keygen(tmp_path / "other_host_key", "other"))
    others = [f"{paramiko.HostKeys.hash_host(f'[127.0.0.1]:{3000 + n}')} {other}" for n in range(300)]
    unreadable = "|1|" + base64.b64encode(b"short").decode() + "|" + base64.b64encode(os.urandom(20)).decode()
    known = tmp_path / "known_hosts"
    known.write_text("\n".join([*others[:150], f"{unreadable} {key}", f"{paramiko.HostKeys.hash_host(name)} {key}",
                                *others[150:]]) + "\n")
    path = fleet_config(hosts=sim_hosts[:2], known_hosts=str(known), host_key_policy="strict")
    result, hosts = status_json(path, guarded_env)
    assert result.returncode == 0, result.stderr
    assert {hosts[h.name]["status"] for h in sim_hosts[:2]} == {"ok"}

    known.write_text("\n".join([*others, f"{paramiko.HostKeys.hash_host(name)} {other}"]) + "\n")
    result, hosts = status_json(path, guarded_env)
    assert result.returncode == 1 and result.stderr == ""
    assert hosts[sim_hosts[0].name]["status"] == "hostkey-rejected"
    assert "CHANGED" in hosts[sim_hosts[0].name]["message"]


# --- gateways: chains work, loops are refused ---------------------------------------------------------


def test_a_gateway_chain_of_config_hosts_works(testbed, sim_hosts, fleet_config, guarded_env, closed_port):
    """h0 via h1 via h2: each hop a direct-tcpip channel through the one before, over the real sshd."""
    first, second, third = testbed.fleet_config(sim_hosts[:3])["hosts"]
    chain = [dict(first, name="far", gateway="middle"), dict(second, name="middle", gateway="near"),
             dict(third, name="near")]
    result, hosts = status_json(fleet_config(hosts=[], extra_hosts=chain), guarded_env, "--hosts", "far")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert hosts["far"]["status"] == "ok"
    broken = [chain[0], chain[1], dict(chain[2], port=closed_port)]
    result, hosts = status_json(fleet_config(hosts=[], extra_hosts=broken), guarded_env)
    assert result.returncode == 1 and result.stderr == ""
    assert hosts["near"]["status"] == "unreachable"
    assert hosts["far"]["status"] == "unreachable"
    assert hosts["far"]["message"].startswith("via gateway middle: via gateway near: connection refused")


def test_a_gateway_whose_key_is_missing_is_named(testbed, sim_hosts, fleet_config, guarded_env):
    jump, target = testbed.fleet_config(sim_hosts[:2])["hosts"]
    hosts = [dict(jump, name="jump", ssh_key="/nonexistent/key"), dict(target, name="behind", gateway="jump")]
    result, reported = status_json(fleet_config(hosts=[], extra_hosts=hosts), guarded_env, "--hosts", "behind")
    assert reported["behind"]["status"] == "auth-failed"
    assert reported["behind"]["message"] == "via gateway jump: ssh_key /nonexistent/key: no such file"


@pytest.mark.parametrize("gateways, loop", [
    ({"a": "b", "b": "a"}, "a -> b -> a"),
    ({"a": "a"}, "a -> a"),
    ({"a": "b", "b": "c", "c": "b"}, "b -> c -> b"),
])
def test_a_gateway_loop_is_refused_at_load(testbed, sim_hosts, fleet_config, guarded_env, listener, gateways, loop):
    counting = listener()
    names = sorted(set(gateways) | set(gateways.values()))
    hosts = [fault_host(testbed, sim_hosts[0], n, counting.port, **({"gateway": gateways[n]} if n in gateways else {}))
             for n in names]
    path = fleet_config(hosts=[], extra_hosts=hosts)
    assert_usage_error(fab(["status", "--config", str(path)], guarded_env), f"gateway loop {loop}")
    assert counting.accepted == 0


def test_a_gateway_chain_longer_than_eight_hops_is_refused(testbed, sim_hosts, fleet_config, guarded_env):
    hosts = [fault_host(testbed, sim_hosts[0], f"g{i}", 1, **({"gateway": f"g{i + 1}"} if i < 9 else {}))
             for i in range(10)]
    result = fab(["status", "--config", str(fleet_config(hosts=[], extra_hosts=hosts))], guarded_env)
    assert_usage_error(result, "hosts[0].gateway: gateway chain g0 -> g1 -> g2 -> g3 -> ... is longer than 8 hops")


@pytest.mark.parametrize("gateway, complaint", [
    ("nobody", "'nobody' is neither a host name in this config nor user@host[:port]"),
    ("u@h:99999", "bad gateway 'u@h:99999': the port must be a number from 1 to 65535"),
    ("a@b@c", "bad gateway 'a@b@c': expected user@host[:port], with exactly one @"),
])
def test_a_bad_gateway_is_refused_at_load(testbed, sim_hosts, fleet_config, guarded_env, gateway, complaint):
    hosts = [fault_host(testbed, sim_hosts[0], "a", 1, gateway=gateway)]
    assert_usage_error(fab(["status", "--config", str(fleet_config(hosts=[], extra_hosts=hosts))], guarded_env),
                       f"hosts[0].gateway: {complaint}")


# --- IPv6 ad-hoc targets ------------------------------------------------------------------------------


def test_ipv6_target_with_a_port_is_dialled_at_that_port(guarded_env, tmp_path):
    """``user@[::1]:PORT``: host ::1, that port (nothing listens there: refused, or no IPv6 at all)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result, hosts = status_json(tmp_path / "none.json", guarded_env, "--hosts", f"u@[::1]:{port}")
    assert result.returncode == 1 and result.stderr == ""
    assert hosts["::1"]["address"] == f"u@[::1]:{port}"
    assert hosts["::1"]["status"] == "unreachable"
    assert not (tmp_path / "none.json").exists()


@pytest.mark.parametrize("stall, complaint", [
    ("session", "it did not open the forwarding channel within 2s"),
    ("nothing", "it could not connect onwards (Administratively prohibited)"),
])
def test_a_proxyjump_hop_that_does_not_forward_is_named(
        testbed, sim_hosts, fleet_config, home_env, stalling_ssh, tmp_path, stall, complaint):
    """~/.ssh/config's ProxyJump: Fabric builds that hop itself, and it gets the same deadlines."""
    hop_port = stalling_ssh(stall)
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Host behind\n  HostName 127.0.0.1\n  ProxyJump jump\n"
                          f"Host jump\n  HostName 127.0.0.1\n  Port {hop_port}\n  User u\n"
                          f"  IdentityFile {testbed.client_key}\n")
    raw = dict(testbed.fleet_config([sim_hosts[0]])["hosts"][0], name="behind", host="behind")
    path = fleet_config(hosts=[], extra_hosts=[raw], connect_timeout=2)
    result = fab(["-S", str(ssh_config), "status", "--config", str(path), "--json"], home_env)
    hosts = {h["name"]: h for h in json.loads(result.stdout)["hosts"]}
    assert result.returncode == 1 and result.stderr == ""
    assert hosts["behind"]["status"] == "unreachable"
    assert hosts["behind"]["message"] == f"via gateway u@127.0.0.1:{hop_port}: {complaint}"
