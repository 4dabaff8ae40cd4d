"""`fab batch` under real faults: hosts dying mid-run, unreachable, lacking PicoClaw, timeouts, Ctrl-C.

Every fault is produced on the testbed for real -- a host's processes and
sshd session killed while it works, a closed port, a silent listener, a
key the host refuses, a task that overstays its timeout, a SIGINT to the
CLI -- and every test checks the batch's promise: each input task ends with
exactly one final status, and no PicoClaw is left running.
"""

import dataclasses
import json
from collections import Counter

from harness.sshd import SshdServer
from tests.batch_support import (
    agent_processes, batch_json, interrupt, jsonl_file, no_task_left_running, set_max_tasks, start_batch, wait_until,
)


def make_hosts(testbed, n):
    """`n` new hosts with the stand-in, for a test that breaks them."""
    hosts = testbed.add_hosts(n, prefix="bf")
    for host in hosts:
        testbed.install_standin(host)
    return hosts


def unreachable_hosts(testbed, closed_port, silent_port):
    """Raw config entries: a closed port, a silent listener, and a host that refuses our key."""
    refusing = testbed.add_unauthorized_host("bfnoauth")
    key = str(testbed.client_key)
    return [
        {"name": "closed", "host": "127.0.0.1", "port": closed_port, "user": "nobody", "ssh_key": key},
        {"name": "silent", "host": "127.0.0.1", "port": silent_port, "user": "nobody", "ssh_key": key},
        {"name": "noauth", "host": "127.0.0.1", "port": refusing.port, "user": refusing.user, "ssh_key": key},
    ]


def run_cut_mid_run(testbed, fleet_config, guarded_env, tmp_path, *flags):
    """Six 1-second tasks over two hosts; the first host is cut while one of them runs there."""
    victim, survivor = make_hosts(testbed, 2)
    testbed.set_load(victim, 0.0, 4)
    testbed.set_load(survivor, 0.0, 4)
    path = fleet_config(hosts=[victim, survivor])
    tasks = jsonl_file(tmp_path / "tasks.jsonl", [{"id": f"t{n}", "task": f"::sleep=1::answer {n}"} for n in range(6)])
    proc = start_batch(path, guarded_env, tasks, "--json", *flags)
    try:
        wait_until(lambda: agent_processes(testbed, victim), "a task to run on the victim")
        testbed.cut(victim)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return proc, json.loads(out), victim, survivor


def test_a_host_that_dies_mid_run_loses_its_running_task_and_the_rest_finish_elsewhere(testbed, fleet_config,
                                                                                      guarded_env, tmp_path):
    proc, data, victim, survivor = run_cut_mid_run(testbed, fleet_config, guarded_env, tmp_path)
    assert proc.returncode == 1
    assert len(data["tasks"]) == 6 and len({t["id"] for t in data["tasks"]}) == 6
    lost = [t for t in data["tasks"] if t["status"] == "lost"]
    assert len(lost) == 1 and lost[0]["host"] == victim.name and lost[0]["attempts"] == 1
    assert "connection dropped" in lost[0]["message"]
    others = [t for t in data["tasks"] if t["status"] != "lost"]
    assert {t["status"] for t in others} == {"ok"}
    assert all(t["answer"] == f"answer {t['id'][1:]}" for t in others)
    # The victim ran nothing after the task it lost; everything after that went to the survivor.
    victim_runs = [t for t in data["tasks"] if t["host"] == victim.name]
    assert lost[0] in victim_runs and all(t["status"] == "ok" for t in victim_runs if t is not lost[0])
    hosts = {h["name"]: h for h in data["hosts"]}
    assert hosts[victim.name]["status"] == "lost" and hosts[survivor.name]["status"] == "ok"
    assert data["connections_opened"] == 2  # no reconnect to the dead host, none per task
    assert data["summary"] == {"ok": 5, "lost": 1}


def test_retry_lost_runs_the_lost_task_again_on_another_host(testbed, fleet_config, guarded_env, tmp_path):
    proc, data, victim, survivor = run_cut_mid_run(testbed, fleet_config, guarded_env, tmp_path, "--retry-lost")
    assert proc.returncode == 0, data
    assert data["summary"] == {"ok": 6}
    again = [t for t in data["tasks"] if t["attempts"] == 2]
    assert len(again) == 1 and again[0]["host"] == survivor.name
    assert data["connections_opened"] == 2


def test_all_hosts_unreachable_reports_every_task_and_exits_1(testbed, fleet_config, guarded_env, closed_port,
                                                              silent_listener):
    path = fleet_config(hosts=[], extra_hosts=unreachable_hosts(testbed, closed_port, silent_listener.port),
                        connect_timeout=2)
    proc, data, tasks_by_id = batch_json(path, guarded_env, "--tasks-file", "-", stdin="one\ntwo\nthree\n")
    assert proc.returncode == 1
    assert sorted(tasks_by_id) == [1, 2, 3]
    assert data["summary"] == {"not-run": 3}
    for task in data["tasks"]:
        assert task["host"] is None and task["attempts"] == 0
        assert "no host left to run it: closed unreachable, silent unreachable, noauth auth-failed" in task["message"]
    assert {h["name"]: h["status"] for h in data["hosts"]} == {
        "closed": "unreachable", "silent": "unreachable", "noauth": "auth-failed",
    }
    assert data["connections_opened"] == 0


def test_tasks_pinned_to_an_unreachable_host_end_with_its_status_and_never_run_elsewhere(
        testbed, fleet_config, guarded_env, closed_port, tmp_path):
    hosts = make_hosts(testbed, 2)
    dead = {"name": "dead", "host": "127.0.0.1", "port": closed_port, "user": "nobody",
            "ssh_key": str(testbed.client_key)}
    path = fleet_config(hosts=hosts, extra_hosts=[dead])
    before = {h.name: len(testbed.command_log(h)) for h in hosts}
    items = [{"id": "pin-a", "task": "::sleep=0.3::PINNED", "host": "dead"}, {"id": "free", "task": "free task"},
             {"id": "pin-b", "task": "PINNED", "host": "dead"}, {"id": "live", "task": "on a live one", "host": hosts[0].name}]
    proc, data, tasks_by_id = batch_json(path, guarded_env, "--tasks-file", jsonl_file(tmp_path / "t.jsonl", items))
    assert proc.returncode == 1
    for task_id in ("pin-a", "pin-b"):
        task = tasks_by_id[task_id]
        assert (task["status"], task["host"], task["attempts"], task["answer"]) == ("unreachable", "dead", 0, "")
        assert task["message"].startswith("pinned to dead, which is unreachable: connection refused")
    assert (tasks_by_id["free"]["status"], tasks_by_id["live"]["status"]) == ("ok", "ok")
    assert tasks_by_id["live"]["host"] == hosts[0].name
    assert not any("PINNED" in c for h in hosts for c in testbed.command_log(h)[before[h.name]:])


def test_more_slots_than_tasks_runs_each_task_once(testbed, fleet_config, guarded_env):
    hosts = make_hosts(testbed, 3)
    path = set_max_tasks(fleet_config(hosts=hosts), {h.name: 4 for h in hosts})
    before = {h.name: len(testbed.command_log(h)) for h in hosts}
    proc, data, tasks_by_id = batch_json(path, guarded_env, "--task", "only one", "--task", "and two")
    assert proc.returncode == 0, proc.stderr
    assert data["summary"] == {"ok": 2}
    assert [t["attempts"] for t in data["tasks"]] == [1, 1]
    runs = sum(" agent -s agent:main:" in c for h in hosts for c in testbed.command_log(h)[before[h.name]:])
    assert runs == 2
    assert data["connections_opened"] == 3


def test_one_task_timing_out_among_many(testbed, fleet_config, guarded_env, tmp_path):
    hosts = make_hosts(testbed, 2)
    path = fleet_config(hosts=hosts)
    items = [{"id": n, "task": f"quick {n}"} for n in range(8)]
    items.insert(3, {"id": "slow", "task": "::sleep=60::never printed", "timeout": 1})
    proc, data, tasks_by_id = batch_json(path, guarded_env, "--tasks-file", jsonl_file(tmp_path / "t.jsonl", items))
    assert proc.returncode == 1
    assert data["summary"] == {"ok": 8, "timeout": 1}
    slow = tasks_by_id["slow"]
    assert (slow["status"], slow["answer"], slow["attempts"]) == ("timeout", "", 1)
    assert "stopped after 1s" in slow["message"]
    assert [t["id"] for t in data["tasks"]] == [0, 1, 2, "slow", 3, 4, 5, 6, 7]
    no_task_left_running(testbed, hosts)


def test_a_timeout_is_retried_on_the_other_host_with_retries(testbed, fleet_config, guarded_env, tmp_path):
    hosts = make_hosts(testbed, 2)
    path = fleet_config(hosts=hosts)
    items = [{"id": "slow", "task": "::sleep=60::never printed", "timeout": 1}]
    proc, data, tasks_by_id = batch_json(path, guarded_env, "--retries", "1",
                                         "--tasks-file", jsonl_file(tmp_path / "t.jsonl", items))
    assert proc.returncode == 1
    assert (tasks_by_id["slow"]["status"], tasks_by_id["slow"]["attempts"]) == ("timeout", 2)
    assert sorted(h["tasks_run"] for h in data["hosts"]) == [1, 1]
    no_task_left_running(testbed, hosts)


def test_a_host_without_picoclaw_is_dropped_and_its_pinned_tasks_say_so(testbed, fleet_config, guarded_env, tmp_path):
    [worker] = make_hosts(testbed, 1)
    [bare] = testbed.add_hosts(1, prefix="bf")
    path = fleet_config(hosts=[bare, worker])
    items = [{"id": "pinned", "task": "x", "host": bare.name}] + [{"id": n, "task": f"t{n}"} for n in range(3)]
    proc, data, tasks_by_id = batch_json(path, guarded_env, "--tasks-file", jsonl_file(tmp_path / "t.jsonl", items))
    assert proc.returncode == 1
    assert tasks_by_id["pinned"]["status"] == "not-installed"
    assert "PicoClaw is not installed at ~/.local/bin/picoclaw" in tasks_by_id["pinned"]["message"]
    assert all(tasks_by_id[n]["status"] == "ok" and tasks_by_id[n]["host"] == worker.name for n in range(3))
    hosts = {h["name"]: h for h in data["hosts"]}
    assert (hosts[bare.name]["status"], hosts[bare.name]["tasks_run"]) == ("not-installed", 0)


class LimitedSshd(SshdServer):
    """An sshd for the testbed's users that holds only two sessions per connection."""

    def config_text(self):
        return super().config_text().replace("MaxSessions 128", "MaxSessions 2")


def test_max_tasks_above_the_hosts_max_sessions_runs_fewer_at_once_and_says_so(testbed, fleet_config, guarded_env):
    [host] = make_hosts(testbed, 1)
    server = LimitedSshd(testbed.workdir / f"sshd-limited-{host.user}", testbed.allow_users)
    server.start()
    try:
        path = set_max_tasks(fleet_config(hosts=[dataclasses.replace(host, port=server.port)]), {host.name: 3})
        tasks = [arg for n in range(4) for arg in ("--task", f"::sleep=0.5::answer {n}")]
        proc, data, tasks_by_id = batch_json(path, guarded_env, *tasks)
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stdout
    assert [t["answer"] for t in data["tasks"]] == [f"answer {n}" for n in range(4)]
    [report] = data["hosts"]
    assert report["status"] == "ok" and report["tasks_run"] == 4 and 1 <= report["slots"] < 3
    assert "keep max_tasks below its sshd MaxSessions" in report["message"]
    assert data["connections_opened"] == 1


def test_ctrl_c_stops_handing_out_stops_the_running_tasks_and_reports_everything(testbed, fleet_config, guarded_env,
                                                                                tmp_path):
    hosts = make_hosts(testbed, 2)
    path = fleet_config(hosts=hosts, timeout=600)  # so only our stop can end them
    items = [{"id": "fast", "task": "finished before the interrupt"}]
    items += [{"id": f"hang{n}", "task": f"::pid::hanging {n}"} for n in range(5)]
    proc = start_batch(path, guarded_env, jsonl_file(tmp_path / "t.jsonl", items), "--json")
    hanging = lambda host: testbed.processes(host, "^python3 .*picoclaw agent -s [^ ]* -m ::pid::")  # noqa: E731
    wait_until(lambda: all(hanging(h) for h in hosts), "a hanging task to run on each host")
    out, err = interrupt(proc)
    assert proc.returncode == 1
    data = json.loads(out)
    assert data["interrupted"] is True
    statuses = Counter(t["status"] for t in data["tasks"])
    assert statuses == {"ok": 1, "interrupted": 2, "not-run": 3}
    assert len(data["tasks"]) == 6
    for task in data["tasks"]:
        if task["status"] == "interrupted":
            assert task["host"] in {h.name for h in hosts}
            # What it printed so far: the stand-in's pid line and its text, or a prefix of them when
            # Ctrl-C came between the process starting (what the test waits for) and its output arriving.
            pid, _, rest = task["answer"].partition("\n")
            assert pid.isdigit() or task["answer"] == "", task["answer"]
            assert task["id"].replace("hang", "hanging ").startswith(rest), task["answer"]
            assert task["message"] == "stopped by Ctrl-C while it ran"
        if task["status"] == "not-run":
            assert (task["host"], task["attempts"], task["message"]) == (None, 0, "interrupted before it started")
    no_task_left_running(testbed, hosts)
