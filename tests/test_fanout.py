"""The one fan-out: every entry its own report, at most `parallel` at once, a stop as a value."""

import gc
import json
import os
import threading
import weakref

import pytest

from fabfile.core.context import RunContext
from fabfile.core.config import load_config
from fabfile.ssh.fanout import fan_out
from fabfile.core.report import HostReport
from harness.cli import fab_json
from harness.loopback import guarded_env


def test_two_entries_sharing_an_address_each_run_and_report(testbed, sim_hosts, fleet_config):
    """Fabric's Connection hashes on user, host and port: keyed by it, one of these would be lost."""
    host = sim_hosts[0]
    raw = testbed.fleet_config([host])["hosts"][0]
    alias = {**raw, "name": "same-board-again"}
    fleet = load_config(str(fleet_config(hosts=[host], extra_hosts=[alias])))
    before = len(testbed.command_log(host))
    seen = []

    def work(cxn, entry):
        seen.append(entry.name)
        cxn.run("true", hide=True, in_stream=False)
        return HostReport(entry.name, entry.address, "ok", 0.0)

    done = fan_out(RunContext(fleet, fleet.hosts), work)
    assert [r.name for r in done.reports] == [host.name, "same-board-again"]
    assert [r.status for r in done.reports] == ["ok", "ok"] and not done.interrupted
    assert sorted(seen) == sorted([host.name, "same-board-again"])
    assert testbed.command_log(host)[before:] == ["true", "true"]


def test_work_that_raises_is_a_failed_report_not_a_crash(sim_hosts, fleet_config):
    fleet = load_config(str(fleet_config(hosts=sim_hosts[:2])))

    def work(cxn, entry):
        if entry.name == sim_hosts[1].name:
            raise ValueError("broken verb")
        return HostReport(entry.name, entry.address, "ok", 0.0)

    done = fan_out(RunContext(fleet, fleet.hosts), work)
    assert [r.status for r in done.reports] == ["ok", "failed"]
    assert "broken verb" in done.reports[1].message


def test_at_most_parallel_hosts_at_once(testbed, fleet_config):
    hosts = testbed.add_hosts(6, prefix="fo")
    fleet = load_config(str(fleet_config(hosts=hosts)))
    lock, running, peak = threading.Lock(), [0], [0]

    def work(cxn, entry):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            cxn.run("sleep 0.3", hide=True, in_stream=False)
            return HostReport(entry.name, entry.address, "ok", 0.0)
        finally:
            with lock:
                running[0] -= 1

    assert [r.status for r in fan_out(RunContext(fleet, fleet.hosts, parallel=2), work).reports] == ["ok"] * 6
    assert peak[0] == 2


def test_connections_are_built_in_the_calling_thread_only(sim_hosts, fleet_config, monkeypatch):
    """Building a connection writes the shared Fabric config (its deadlines): never from several threads.

    Built from the workers, a full `make bench` saw hosts fail with invoke's
    "No attribute or config key found for 'timeouts'" while another thread merged the config.
    """
    import fabfile.ssh.connections as connections_module

    fleet = load_config(str(fleet_config(hosts=sim_hosts)))
    builders, real = [], connections_module.build_connection

    def recording(*args, **kwargs):
        builders.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(connections_module, "build_connection", recording)
    done = fan_out(RunContext(fleet, fleet.hosts), lambda cxn, entry: HostReport(entry.name, entry.address, "ok", 0.0))
    assert [r.status for r in done.reports] == ["ok"] * len(sim_hosts)
    assert builders == [threading.current_thread()] * len(sim_hosts)


def test_a_run_writes_the_shared_fabric_config_once_not_once_per_host(sim_hosts, fleet_config, monkeypatch):
    """Each write to invoke's config merges all its levels again. Fabric's Connection assigns its
    ``inline_ssh_env``, which it does not declare, so every Connection built wrote the shared config;
    a run writes it (its runner, its deadlines) as often for one host as for four."""
    from invoke.config import Config

    from fabfile.ssh import connections

    writes, modify = [], Config._modify

    def recording(config, keypath, key, value):
        writes.append((*keypath, key))
        return modify(config, keypath, key, value)

    monkeypatch.setattr(Config, "_modify", recording)
    per_run = []
    for hosts in (sim_hosts[:1], sim_hosts):
        fleet = load_config(str(fleet_config(hosts=hosts)))
        writes.clear()
        cxns = connections.open_fleet(RunContext(fleet, fleet.hosts))
        assert len(cxns) == len(hosts) and all(cxn.inline_ssh_env is True for cxn in cxns)
        per_run.append(list(writes))
    assert per_run[0] == per_run[1] and ("timeouts", "connect") in per_run[0]


# ---- how a command's end is awaited (ssh/runner.py) -------------------------------------------


class _Command:
    """A stand-in for Fabric's runner state: a command that ends after `polls_to_end` checks of
    `process_is_finished`, or when `end()` sets the channel's event; the checks are counted."""

    def __init__(self, channel, polls_to_end=None):
        self.channel, self.polls_to_end, self.checks, self.dead = channel, polls_to_end, 0, False

    @property
    def process_is_finished(self):
        self.checks += 1
        event = getattr(self.channel, "status_event", None)
        return (event is not None and event.is_set()) or (self.polls_to_end is not None
                                                          and self.checks >= self.polls_to_end)

    @property
    def has_dead_threads(self):
        return self.dead


@pytest.mark.parametrize("runner", ["config", "task"])
def test_every_run_s_commands_wait_on_the_channel_not_a_poll(runner):
    """fabric_config gives each run's connections `FleetRemote`, and a task (dispatch, batch), which
    makes its own `TaskRunner`, gets the same wait: a command running 0.5 s is looked at a handful
    of times (invoke's own wait looks every 10 ms: ~50), and ends when its event is set."""
    from types import SimpleNamespace

    from fabfile.host.agent import TaskRunner
    from fabfile.ssh.connections import fabric_config
    from fabfile.ssh.runner import THREAD_CHECK_S, FleetRemote

    runner_class = fabric_config().runners.remote if runner == "config" else TaskRunner
    assert issubclass(runner_class, FleetRemote)
    command = _Command(SimpleNamespace(status_event=threading.Event()))
    threading.Timer(0.5, command.channel.status_event.set).start()
    runner_class.wait(command)
    assert command.channel.status_event.is_set()
    assert command.checks <= 0.5 / THREAD_CHECK_S + 3, command.checks


def test_the_wait_ends_on_a_dead_reader_and_falls_back_without_an_event():
    """A reader thread that died ends the wait although the event never comes (as invoke's does);
    a channel with no event (none of ours) is waited for by invoke's own polling."""
    from types import SimpleNamespace

    from fabfile.ssh.runner import FleetRemote

    command = _Command(SimpleNamespace(status_event=threading.Event()))
    threading.Timer(0.3, lambda: setattr(command, "dead", True)).start()
    FleetRemote.wait(command)
    assert command.dead and not command.channel.status_event.is_set()

    polled = _Command(SimpleNamespace(), polls_to_end=5)
    polled.input_sleep = 0.001
    FleetRemote.wait(polled)  # invoke's own loop, which sleeps input_sleep between checks
    assert polled.checks == 5


def test_a_command_whose_time_ran_out_ends_its_wait_once_the_timer_closed_it():
    """invoke's timer closes the channel (kill); paramiko sets the event as that close begins, so the
    wait also waits for the timer to finish: invoke says "timed out" only once its timer has ended."""
    import time
    from types import SimpleNamespace

    from fabfile.ssh.runner import FleetRemote

    def slow_close():  # paramiko: the event first, then the CLOSE message goes out
        channel.status_event.set()
        time.sleep(0.3)

    channel = SimpleNamespace(status_event=threading.Event(), close=slow_close)
    command = _Command(channel)
    command._timer = threading.Timer(0.1, FleetRemote.kill, args=(command,))
    command._timer.start()
    FleetRemote.wait(command)
    assert command.killing and not command._timer.is_alive()


def test_every_direct_connection_sends_each_packet_at_once(sim_hosts, fleet_config):
    """TCP_NODELAY on each connection a run opens (paramiko leaves Nagle on, and a command after the
    first on a connection then waits for the host's delayed ACK); two commands on it both answer."""
    import socket

    from fabfile.ssh.connections import open_fleet

    fleet = load_config(str(fleet_config(hosts=sim_hosts[:1])))
    [cxn] = open_fleet(RunContext(fleet, fleet.hosts))
    try:
        cxn.open()
        assert [cxn.run(f"echo {n}", hide=True, in_stream=False).stdout for n in (1, 2)] == ["1\n", "2\n"]
        assert cxn.client.get_transport().sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        cxn.close()


def delayed_acks():
    """The kernel's count of ACKs it held back and sent only when the delayed-ACK timer fired, for
    this network namespace (the tests' own loopback one): /proc/net/netstat, TcpExt DelayedACKs."""
    header, values = open("/proc/net/netstat").read().splitlines()[:2]
    return int(dict(zip(header.split(), values.split()))["DelayedACKs"])


def first_command_delayed_acks(transport):
    """How many delayed ACKs the first command on `transport` (just authenticated) waited for."""
    before = delayed_acks()
    channel = transport.open_session()
    channel.exec_command("true")
    assert channel.recv_exit_status() == 0
    return delayed_acks() - before


def test_the_first_command_after_login_waits_for_no_delayed_ack(sim_hosts, fleet_config):
    """sshd announces its host keys right after login, Nagle on; unless we acknowledge that packet at
    once (PromptTransport), the answer to our first request waits for our delayed ACK (~40 ms). The
    kernel's own count, not a time: a stock paramiko transport on the same host shows the wait."""
    import socket

    import paramiko

    from fabfile.ssh.connections import open_fleet

    fleet = load_config(str(fleet_config(hosts=sim_hosts[:1])))
    [cxn] = open_fleet(RunContext(fleet, fleet.hosts))
    try:
        cxn.open()
        assert first_command_delayed_acks(cxn.client.get_transport()) == 0
    finally:
        cxn.close()

    entry = fleet.hosts[0]
    sock = socket.create_connection((entry.host, entry.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stock = paramiko.Transport(sock)
    try:
        stock.start_client(timeout=10)
        stock.auth_publickey(entry.user, paramiko.Ed25519Key.from_private_key_file(entry.ssh_key))
        assert first_command_delayed_acks(stock) >= 1
    finally:
        stock.close()


def negotiated_cipher(fleet):
    """The cipher each way, and a command's output, on the first host of `fleet` through `open_fleet`."""
    from fabfile.ssh.connections import open_fleet

    [cxn] = open_fleet(RunContext(fleet, fleet.hosts))
    try:
        cxn.open()
        transport = cxn.client.get_transport()
        return transport.local_cipher, transport.remote_cipher, cxn.run("echo hi", hide=True, in_stream=False).stdout
    finally:
        cxn.close()


def test_connections_ask_for_aes_gcm_and_a_host_without_it_is_reached_as_before(testbed, sim_hosts, fleet_config,
                                                                                 tmp_path):
    """AES-GCM first (its tag is checked in C, where paramiko checks a CTR cipher's HMAC in Python,
    byte by byte); a server that offers no GCM gets one of the ciphers paramiko offers after it."""
    from dataclasses import replace

    from harness.faults import cipher_limited_sshd

    fleet = load_config(str(fleet_config(hosts=sim_hosts[:1])))
    assert negotiated_cipher(fleet) == ("aes128-gcm@openssh.com", "aes128-gcm@openssh.com", "hi\n")

    server = cipher_limited_sshd(testbed, "aes256-ctr,aes128-cbc", f"sshd-ctr-{tmp_path.name}")
    try:
        no_gcm = replace(sim_hosts[0], port=server.port)
        fleet = load_config(str(fleet_config(hosts=[no_gcm])))
        assert negotiated_cipher(fleet) == ("aes256-ctr", "aes256-ctr", "hi\n")
    finally:
        server.stop()


class KeyFileOpens:
    """Counts the opens of one file by this process (Python's "open" audit event, which every
    ``open()`` in Python raises). An audit hook cannot be removed, so one is added, once."""

    path = None
    count = 0
    hooked = False

    def __init__(self, path):
        if not KeyFileOpens.hooked:
            import sys

            sys.addaudithook(KeyFileOpens.seen)
            KeyFileOpens.hooked = True
        KeyFileOpens.path, KeyFileOpens.count = os.fspath(path), 0

    @staticmethod
    def seen(event, args):
        if event == "open" and KeyFileOpens.path is not None and isinstance(args[0], (str, bytes, os.PathLike)):
            if os.fsdecode(args[0]) == KeyFileOpens.path:
                KeyFileOpens.count += 1

    def stop(self):
        KeyFileOpens.path = None
        return KeyFileOpens.count


def key_file_reads(testbed, fleet_config, hosts):
    """How often one run over `hosts` opened the key file beyond each host's check before connecting
    (`key_file_problem` opens it once a host), starting with no key loaded yet."""
    from fabfile.ssh import connections

    connections._client_keys.clear()
    fleet = load_config(str(fleet_config(hosts=hosts)))
    opens = KeyFileOpens(testbed.client_key)
    try:
        cxns = connections.open_fleet(RunContext(fleet, fleet.hosts))
        try:
            assert [cxn.run("echo in", hide=True, in_stream=False).stdout for cxn in cxns] == ["in\n"] * len(hosts)
        finally:
            for cxn in cxns:
                cxn.close()
    finally:
        count = opens.stop()
    return count - len(hosts)


def test_the_fleet_s_key_file_is_read_once_per_process_not_once_per_host(testbed, sim_hosts, fleet_config):
    """paramiko parses a key file anew for each connection, trying RSA, then ECDSA, then Ed25519;
    the key is loaded once and handed to every connection: one host or four, as many reads."""
    one, four = key_file_reads(testbed, fleet_config, sim_hosts[:1]), key_file_reads(testbed, fleet_config, sim_hosts)
    assert one > 0 and four == one


def config_with_key(testbed, host, key, path):
    """A fleet config at `path` for `host` alone, whose ssh_key is `key`."""
    config = testbed.fleet_config([host])
    config["hosts"][0]["ssh_key"] = str(key)
    path.write_text(json.dumps(config))
    return path


def test_a_key_file_replaced_while_the_process_runs_is_read_again(testbed, fleet_config, tmp_path):
    """A long-lived process (the warm one) must offer the key the file holds now: the old key is
    no longer authorized on the host, the new one is, and the next connection gets in."""
    import shutil

    from fabfile.ssh.connections import client_key
    from harness.sshd import keygen, public_key

    [host] = testbed.add_hosts(1, prefix="rot")
    key = tmp_path / "id_fleet"
    shutil.copy(testbed.client_key, key)
    key.chmod(0o600)
    fleet = load_config(str(config_with_key(testbed, host, key, tmp_path / "fleet-rotated.json")))
    assert negotiated_cipher(fleet)[2] == "hi\n"
    old = client_key(str(key))

    new = keygen(tmp_path / "new_key", "rotated")
    (host.home / ".ssh" / "authorized_keys").write_text(public_key(new) + "\n")
    os.replace(new, key)
    assert client_key(str(key)).get_fingerprint() != old.get_fingerprint()
    assert negotiated_cipher(fleet)[2] == "hi\n"


def test_a_key_that_needs_a_passphrase_is_left_to_paramiko(testbed, tmp_path):
    """Not loadable without its passphrase: the host's report is paramiko's own verdict, as before."""
    import subprocess

    from fabfile.ssh.connections import client_key
    from harness.sshd import public_key

    key = tmp_path / "id_locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(key)], check=True)
    assert client_key(str(key)) is None
    [host] = testbed.add_hosts(1, prefix="lck")
    (host.home / ".ssh" / "authorized_keys").write_text(public_key(key) + "\n")
    path = config_with_key(testbed, host, key, tmp_path / "fleet-locked.json")
    env = guarded_env({**os.environ, "SSH_AUTH_SOCK": ""})
    result, _, reports = fab_json(["status", "--config", path], env)
    report = reports[host.name]
    assert (result.returncode, report["status"]) == (1, "auth-failed")
    assert report["message"] == "authentication failed: Private key file is encrypted"


def test_the_first_run_s_connections_freeze_what_came_before_and_later_garbage_is_still_collected(
        sim_hosts, fleet_config, monkeypatch):
    """open_fleet freezes the objects made before it (gc.freeze: the collector stops walking the
    imports and the config); only the first time, so a cycle left behind after it is still freed."""
    from fabfile.ssh import connections

    class Node:
        pass

    fleet = load_config(str(fleet_config(hosts=sim_hosts[:1])))
    monkeypatch.setattr(connections, "_startup_frozen", False)
    gc.unfreeze()
    try:
        before = Node()
        before.me = before
        frozen_node = weakref.ref(before)
        del before
        connections.open_fleet(RunContext(fleet, fleet.hosts))
        assert gc.get_freeze_count() > 0
        gc.collect()
        assert frozen_node() is not None  # frozen: never collected

        after = Node()
        after.me = after
        later_node = weakref.ref(after)
        del after
        connections.open_fleet(RunContext(fleet, fleet.hosts))
        gc.collect()
        assert later_node() is None
    finally:
        gc.unfreeze()


# ---- what building and opening a connection costs the client (invoke's and paramiko's slow paths) ----


def attribute_listings(fleet_config, hosts, monkeypatch):
    """How many times one run over `hosts` called ``dir()``, building, opening and using its connections."""
    import builtins

    from fabfile.ssh.connections import open_fleet
    from fabfile.ssh.runner import command_output

    fleet = load_config(str(fleet_config(hosts=hosts)))
    listed, real_dir = [], builtins.dir

    def counting_dir(*args):
        listed.append(args)
        return real_dir(*args)

    monkeypatch.setattr(builtins, "dir", counting_dir)
    try:
        cxns = open_fleet(RunContext(fleet, fleet.hosts))
        try:
            for cxn in cxns:
                cxn.open()
            assert [command_output(cxn, "echo in") for cxn in cxns] == ["in\n"] * len(hosts)
        finally:
            for cxn in cxns:
                cxn.close()
    finally:
        monkeypatch.undo()
    return len(listed)


def test_a_run_builds_and_opens_its_connections_without_listing_attributes_per_host(sim_hosts, fleet_config,
                                                                                     monkeypatch):
    """invoke checks every assignment to a Connection against ``dir(self)`` (Fabric's ``__init__``
    makes 13), and answers the two names it asks the root config for on every section read
    (``_keypath``, ``_root``), which a root lacks, with an error listing ``dir()`` of its class:
    17 ``dir()`` calls a connection, ~0.2 ms of client CPU. One host or four: as many calls."""
    one = attribute_listings(fleet_config, sim_hosts[:1], monkeypatch)
    four = attribute_listings(fleet_config, sim_hosts, monkeypatch)
    assert one == four


def test_the_run_s_config_and_connections_keep_invoke_s_meaning_of_an_assignment(sim_hosts, fleet_config):
    """The shortcuts above change no outcome: a value set through a config section is a modification
    that survives a merge and is copied by a clone (not shared with it); a name the Connection
    declares is an attribute, any other name a config key, as invoke decides."""
    from fabfile.ssh.connections import fabric_config, open_fleet

    config = fabric_config()
    config.connect_kwargs.banner_timeout = 7
    config.merge()
    clone = config.clone()
    clone.connect_kwargs.banner_timeout = 9
    assert (config.connect_kwargs.banner_timeout, clone.connect_kwargs.banner_timeout) == (7, 9)
    del config.connect_kwargs.banner_timeout
    config.merge()
    assert "banner_timeout" not in config.connect_kwargs

    fleet = load_config(str(fleet_config(hosts=sim_hosts[:1])))
    [cxn] = open_fleet(RunContext(fleet, fleet.hosts))
    cxn.label = "renamed"
    cxn.fleet_note = "a config key"
    assert cxn.label == "renamed" and "label" not in cxn.config
    assert cxn.config.fleet_note == "a config key" and "fleet_note" not in vars(cxn)


def test_the_host_s_login_debug_message_is_formatted_only_when_a_debug_log_shows_it(sim_hosts, fleet_config,
                                                                                      monkeypatch, caplog):
    """OpenSSH sends a debug message at every public-key login (``key options: ...``), which paramiko
    escapes byte by byte in Python (``util.safe_string``); with paramiko's debug log off it is not
    escaped at all, and with it on it is logged as before."""
    import logging

    from paramiko import util

    escaped, real_escape = [], util.safe_string
    monkeypatch.setattr(util, "safe_string", lambda text: escaped.append(text) or real_escape(text))
    fleet = load_config(str(fleet_config(hosts=sim_hosts[:1])))
    assert negotiated_cipher(fleet)[2] == "hi\n"
    assert escaped == []

    caplog.set_level(logging.DEBUG, logger="paramiko.transport")
    assert negotiated_cipher(fleet)[2] == "hi\n"
    assert any(b"key options" in text for text in escaped)
    assert any("Debug msg: " in record.getMessage() and "key options" in record.getMessage()
               for record in caplog.records)


def test_a_connection_starts_one_thread_and_its_handshake_deadline_is_the_clock(sim_hosts, fleet_config, monkeypatch):
    """paramiko started a timer thread per connection for its handshake deadline besides the transport's
    own thread; the deadline is read off the clock in the reader's own check, so opening four connections
    starts four threads, all transports. The deadline still ends a handshake, and only an unfinished one."""
    from fabfile.ssh.connections import FleetTransport, HandshakeClockPacketizer, open_fleet

    started, start = [], threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda thread: started.append(type(thread)) or start(thread))
    fleet = load_config(str(fleet_config(hosts=sim_hosts)))
    cxns = open_fleet(RunContext(fleet, fleet.hosts))
    try:
        for cxn in cxns:
            cxn.open()
        monkeypatch.undo()
        assert started == [FleetTransport] * len(sim_hosts)
        assert all(type(cxn.client.get_transport().packetizer) is HandshakeClockPacketizer for cxn in cxns)
    finally:
        for cxn in cxns:
            cxn.close()

    late, on_time, finished = (HandshakeClockPacketizer(None) for _ in range(3))
    late.start_handshake(0)
    on_time.start_handshake(60)
    finished.start_handshake(0)
    finished.complete_handshake()
    assert (late.handshake_timed_out(), on_time.handshake_timed_out(), finished.handshake_timed_out()) == (
        True, False, False)
