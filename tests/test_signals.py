"""SIGINT, SIGTERM and SIGHUP to every long verb: stop, leave no PicoClaw running, report what finished.

The CLI runs as a real process; the signal comes while PicoClaw tasks hang on
real sim hosts (the stand-in's ``::pid::`` directive: print, then sleep). After
the signal the verb must print one valid report (``--json``: one object;
``--jsonl``: a line per task), exit 1, and no PicoClaw may survive on any host.
"""

import json
import signal

import pytest

from harness.cli import API_KEY, start_fab
from tests.batch_support import RUN_LIMIT_S, jsonl_file, no_task_left_running, running_tasks, wait_until

STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


def stop(proc, sig):
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=RUN_LIMIT_S)
    finally:
        proc.kill()


@pytest.fixture
def hosts(testbed):
    return testbed.add_workers(2, prefix="sg")


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_batch_stops_its_tasks_and_reports(testbed, hosts, fleet_config, guarded_env, tmp_path, sig):
    items = [{"id": f"hang{n}", "task": f"::pid::hanging {n}"} for n in range(4)]
    proc = start_fab(["batch", "--config", fleet_config(hosts=hosts, timeout=600), "--json",
                  "--tasks-file", jsonl_file(tmp_path / "t.jsonl", items)], guarded_env)
    wait_until(lambda: all(running_tasks(testbed, h) for h in hosts), "a task to run on each host")
    out, err = stop(proc, sig)
    assert proc.returncode == 1, err
    data = json.loads(out)
    assert data["interrupted"] is True
    assert sorted(t["status"] for t in data["tasks"]) == ["interrupted", "interrupted", "not-run", "not-run"]
    assert "Traceback" not in err
    no_task_left_running(testbed, hosts)


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: s.name)
def test_broadcast_stops_every_host_and_reports(testbed, hosts, fleet_config, guarded_env, sig):
    proc = start_fab(["dispatch", "--config", fleet_config(hosts=hosts, timeout=600), "--all", "--json",
                  "-t", "::pid::working"], guarded_env)
    wait_until(lambda: all(running_tasks(testbed, h) for h in hosts), "the task to run on each host")
    out, err = stop(proc, sig)
    assert proc.returncode == 1, err
    data = json.loads(out)
    assert data["interrupted"] is True
    assert [h["status"] for h in data["hosts"]] == ["interrupted", "interrupted"]
    for host in data["hosts"]:
        # What arrived before the stop is kept: the stand-in's pid line and its text, or a prefix of
        # them when the signal came between the process starting (what the test waits for) and its output.
        pid, _, rest = host["answer"].partition("\n")
        assert pid.isdigit() or host["answer"] == "", host["answer"]
        assert "working".startswith(rest), host["answer"]
    assert "Traceback" not in err
    no_task_left_running(testbed, hosts)


def test_one_host_dispatch_stops_on_sigterm(testbed, hosts, fleet_config, guarded_env):
    proc = start_fab(["dispatch", "--config", fleet_config(hosts=hosts, timeout=600), "--host", hosts[0].name,
                  "-t", "::pid::working"], guarded_env)
    wait_until(lambda: running_tasks(testbed, hosts[0]), "the task to run")
    out, err = stop(proc, signal.SIGTERM)
    assert proc.returncode == 1
    assert f"{hosts[0].name}: interrupted" in err
    no_task_left_running(testbed, hosts)


def test_status_on_a_hanging_host_stops_at_once_and_reports(testbed, fleet_config, guarded_env):
    good, stuck = testbed.add_workers(2, prefix="sg")
    testbed.hang_probe(stuck)  # its probe never ends
    proc = start_fab(["status", "--config", fleet_config(hosts=[good, stuck]), "--json"], guarded_env)
    wait_until(lambda: testbed.processes(stuck, "kernel/arch"), "the stuck probe to run")
    # The good host is done once its connection is closed: no process of its user is left.
    wait_until(lambda: not testbed.processes(good, "."), "the good host's probe to end")
    out, err = stop(proc, signal.SIGTERM)
    try:
        assert proc.returncode == 1, err
        data = json.loads(out)
        by_name = {h["name"]: h for h in data["hosts"]}
        assert by_name[good.name]["status"] == "ok"
        assert by_name[stuck.name]["status"] == "interrupted"
    finally:
        testbed.cut(stuck)


def test_a_second_signal_exits_at_once(testbed, hosts, fleet_config, guarded_env, tmp_path):
    """While batch waits for its stopped tasks, another Ctrl-C ends the process straight away (130)."""
    install = ("#!/bin/sh\n[ \"$1\" = agent ] || { echo 'picoclaw 0.1.0'; exit 0; }\n"
               "trap '' TERM\nprintf '\\n\\360\\237\\246\\236 stubborn\\n'\nexec sleep 3600\n")
    for host in hosts:
        path = host.home / ".local" / "bin" / "picoclaw"
        path.write_text(install)  # ignores TERM: the first stop waits for the host's KILL
    proc = start_fab(["batch", "--config", fleet_config(hosts=hosts, timeout=600), "--json", "-t", "a", "-t", "b"],
                 guarded_env)
    wait_until(lambda: all(testbed.processes(h, "sleep 3600") for h in hosts), "the tasks to run")
    proc.send_signal(signal.SIGINT)
    stopping = lambda h: any("pkill -TERM" in c for c in testbed.command_log(h))  # noqa: E731
    wait_until(lambda: all(stopping(h) for h in hosts), "the first stop to reach the hosts")
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=RUN_LIMIT_S)
        assert proc.returncode == 130
    finally:
        proc.kill()
        for host in hosts:
            testbed.cut(host)


def test_deploy_stops_on_sigterm_and_reports(testbed, fleet_config, guarded_env, tmp_path):
    from harness.standin import build_standin

    good, stuck = testbed.add_hosts(2, prefix="sg")
    testbed.hang_probe(stuck)
    binary = build_standin(tmp_path / "picoclaw")
    env = {**guarded_env, "ANTHROPIC_API_KEY": API_KEY, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = start_fab(["deploy", "--config", fleet_config(hosts=[stuck]), "--from-file", binary, "--json"], env)
    wait_until(lambda: testbed.processes(stuck, "kernel/arch"), "the stuck deploy to run")
    out, err = stop(proc, signal.SIGTERM)
    try:
        assert proc.returncode == 1, err
        data = json.loads(out)
        assert [h["status"] for h in data["hosts"]] == ["interrupted"]
        assert API_KEY not in out + err
    finally:
        testbed.cut(stuck)
