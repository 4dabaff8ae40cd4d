"""The one fan-out: every entry its own report, at most `parallel` at once, a stop as a value."""

import threading

from fabfile.core.context import RunContext
from fabfile.core.config import load_config
from fabfile.ssh.fanout import fan_out
from fabfile.core.report import HostReport


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
