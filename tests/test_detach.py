"""Detached tasks (``--detach``, ``fab collect``) against the real sshd testbed.

The faults are real: a connection whose sshd processes are killed under it,
a task that overstays its timeout with nobody connected, a host that cannot
be reached when collect comes, a teardown while tasks still run. Whether a
PicoClaw is still running is asked of the host's process table
(`testbed.processes`), and what is left on its disk of its home directory.
"""

import json
import os
import re
import signal

import pytest

from fabfile.core.ledger import Ledger, new_run_id
from fabfile.host.agent import stop_running_tasks
from fabfile.host.detached import DetachedTask, Placed, collect_host, run_dir, start_detached
from harness.cli import connect, fab, fab_json
from harness.testbed import installed_binary
from tests.test_dispatch import agent_processes, wait_until


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "state" / "runs.sqlite"


@pytest.fixture
def env(guarded_env, ledger_path):
    return dict(guarded_env, PICOCLAW_FLEET_LEDGER=str(ledger_path))


@pytest.fixture
def fresh(testbed):
    """Factory: `n` new hosts with the stand-in, this test's own."""
    return lambda n=1: testbed.add_workers(n, prefix="dt")


def runs_dir(host):
    return host.home / ".picoclaw" / "fleet-runs"


def collect_json(env, *args):
    """``fab collect ARGS --json``: (CompletedProcess, the object, {run id: its run object})."""
    result = fab(["collect", *args, "--json"], env)
    data = json.loads(result.stdout)
    return result, data, {run["run"]: run for run in data["runs"]}


#: A PicoClaw that answers only once the test lets it (a file appears): it runs as long as the test needs.
GATED_PICOCLAW = """#!/bin/sh
while [ ! -e "$HOME/release" ]; do sleep 0.1; done
printf '\\n\\360\\237\\246\\236 released after the cut\\n'
"""


def test_a_detached_task_survives_its_connection_being_cut(testbed, fresh):
    [host] = fresh()
    installed_binary(host).write_text(GATED_PICOCLAW)
    run_id = new_run_id()
    cxn = connect(testbed, host)
    try:
        [start] = start_detached(cxn, run_id, {"s0": [DetachedTask("t0", b"wait for it", 60)]})
        assert start.status == "running", start
        wait_until(lambda: agent_processes(testbed, host), "the task to start")
        stop_running_tasks(cxn)  # batch's Ctrl-C: TERM every session under this connection
        sessions = testbed.processes(host, "sshd")
        assert sessions
        for line in sessions:  # the cut: the connection's sshd processes die, the client's socket with them
            os.kill(int(line.split()[0]), signal.SIGKILL)
        wait_until(lambda: not cxn.client.get_transport().is_active(), "the connection to drop")
    finally:
        cxn.close()
    assert agent_processes(testbed, host), "the detached task died with its connection"
    testbed.run_as(host, "touch ~/release")
    wait_until(lambda: (host.home / run_dir(run_id) / "t0.rc").exists(), "the task to end")
    again = connect(testbed, host)
    try:
        [got] = collect_host(again, run_id, [Placed("t0", "s0", 60)])
    finally:
        again.close()
    assert (got.state, got.result.status, got.result.answer, got.result.exit_code) == (
        "done", "ok", "released after the cut", 0)


def test_a_detached_batch_runs_its_slots_queues_and_collect_brings_every_answer(fresh, fleet_config, env,
                                                                                 ledger_path, testbed):
    hosts = fresh(2)
    config = fleet_config(hosts=hosts)
    start = fab(["batch", "--config", config, "--detach", "-t", "::sleep=1::first", "-t", "second", "-t",
                 "::fail::third", "-t", "fourth"], env)
    assert start.returncode == 0, start.stderr
    run_id = start.stdout.strip()
    assert start.stdout == run_id + "\n" and f"fab collect {run_id}" in start.stderr
    run, rows = Ledger(ledger_path).load(run_id)
    assert run.detached and [row.status for row in rows] == ["running"] * 4
    assert {row.host for row in rows} == {h.name for h in hosts} and {row.slot for row in rows} == {"s0"}
    assert all(row.picoclaw_version == "0.1.0" and row.model for row in rows)  # the probe knew them

    result, data, runs = collect_json(env, run_id, "--wait")
    assert result.returncode == 1  # one task failed
    tasks = {t["id"]: t for t in runs[run_id]["tasks"]}
    assert {i: (t["status"], t["answer"]) for i, t in tasks.items()} == {
        1: ("ok", "first"), 2: ("ok", "second"), 3: ("failed", ""), 4: ("ok", "fourth")}
    assert tasks[3]["stderr"] == "Error: stand-in failure: third\n" and tasks[3]["exit_code"] == 1
    assert (data["collected"], data["pending"]) == (4, 0)
    assert all(not any(runs_dir(h).iterdir()) for h in hosts), "collected tasks left files on a host"
    assert not any(agent_processes(testbed, h) for h in hosts)

    shown = fab(["show", run_id], env)
    assert shown.returncode == 1 and "---- task 1 on" in shown.stdout and "first\n" in shown.stdout
    assert "[stderr] Error: stand-in failure: third" in shown.stdout
    assert [row.collected_at is not None for row in Ledger(ledger_path).load(run_id)[1]] == [True] * 4


def test_a_detached_task_past_its_timeout_is_stopped_on_the_host(fresh, fleet_config, env, testbed):
    [host] = fresh()
    result, data, hosts = fab_json(["dispatch", "--config", fleet_config(hosts=[host]), "--host", host.name,
                                    "--detach", "-t", "::pid::partial answer", "--timeout", "1"], env)
    assert result.returncode == 0 and hosts[host.name]["status"] == "running" and data["detached"] is True
    collected, _, runs = collect_json(env, data["run"], "--wait")
    [task] = runs[data["run"]]["hosts"]
    assert collected.returncode == 1
    assert (task["status"], task["exit_code"]) == ("timeout", 124)
    pid, rest = task["answer"].split("\n", 1)
    assert rest == "partial answer" and task["duration_s"] >= 1
    assert not os.path.exists(f"/proc/{int(pid)}") and not agent_processes(testbed, host)
    assert not (host.home / ".picoclaw/workspace/sessions").exists() or not any(
        p.name.startswith("agent_main_pcf-") for p in (host.home / ".picoclaw/workspace/sessions").iterdir())


def test_collect_is_idempotent(fresh, fleet_config, env):
    hosts = fresh(2)
    result, data, _ = fab_json(["dispatch", "--config", fleet_config(hosts=hosts), "--all", "--detach",
                                "-t", "once only"], env)
    first, one, _ = collect_json(env, data["run"], "--wait")
    second, two, _ = collect_json(env, data["run"])
    assert first.returncode == second.returncode == 0
    assert one["runs"] == two["runs"] and (one["collected"], two["collected"]) == (2, 0)
    assert [h["answer"] for h in two["runs"][0]["hosts"]] == ["once only"] * 2
    human = [fab(["collect", data["run"]], env) for _ in range(2)]
    assert human[0].stdout == human[1].stdout and human[0].stdout.count("once only") == 1  # folded, as dispatch does
    assert "collected 0 tasks; 0 still pending" in human[1].stderr


def test_a_host_unreachable_at_collect_keeps_its_task_pending(fresh, fleet_config, env, closed_port, testbed):
    [host] = fresh()
    config = fleet_config(hosts=[host])
    result, data, _ = fab_json(["dispatch", "--config", config, "--host", host.name, "--detach",
                                "-t", "::sleep=1::worth the wait"], env)
    cut_off = json.loads(config.read_text())
    cut_off["hosts"][0]["port"] = closed_port
    unreachable = config.with_name("unreachable.json")
    unreachable.write_text(json.dumps(cut_off))
    pending, _, runs = collect_json(env, data["run"], "--wait", "--config", unreachable)
    [task] = runs[data["run"]]["hosts"]
    assert pending.returncode == 3  # nothing failed, something still pending
    assert task["status"] == "running" and "unreachable" in task["message"]
    assert f"{host.name} was unreachable" in pending.stderr
    done, _, runs = collect_json(env, data["run"], "--wait")
    [task] = runs[data["run"]]["hosts"]
    assert done.returncode == 0 and (task["status"], task["answer"]) == ("ok", "worth the wait")


def test_a_queued_task_waits_for_its_slot_and_runs_when_it_frees(fresh, fleet_config, env, testbed, tmp_path):
    [host] = fresh()
    config = fleet_config(hosts=[host])  # max_tasks 1: one slot
    start = fab(["batch", "--config", config, "--detach", "--timeout", "600", "-t", "::hang::holding the slot",
                 "-t", "next in line"], env)
    run_id = start.stdout.strip()
    wait_until(lambda: agent_processes(testbed, host), "the first task to start")
    waiting, _, runs = collect_json(env, run_id)
    first, second = runs[run_id]["tasks"]
    assert waiting.returncode == 3 and (first["status"], second["status"]) == ("running", "running")
    assert first["message"].startswith("running on") and second["message"].startswith("queued on")
    sessions = {re.search(r"agent:main:(\S+)", line).group(1) for line in agent_processes(testbed, host)}
    assert len(sessions) == 1 and not testbed.processes(host, "next in line")  # one slot, one task at a time
    testbed.run_as(host, "pkill -TERM -f 'picoclaw agent'")  # the first task is stopped on the host
    done, _, runs = collect_json(env, run_id, "--wait")
    first, second = runs[run_id]["tasks"]
    assert first["status"] == "failed" and first["answer"] == "holding the slot"
    assert (second["status"], second["answer"]) == ("ok", "next in line")


def test_collect_all_sweeps_every_pending_run(fresh, fleet_config, env):
    hosts = fresh(2)
    config = fleet_config(hosts=hosts)
    ids = [fab(["dispatch", "--config", config, "--host", h.name, "--detach", "-t", f"from {h.name}"], env)
           .stdout.strip() for h in hosts]
    result, data, runs = collect_json(env, "--all", "--wait")
    assert result.returncode == 0 and set(runs) == set(ids) and data["pending"] == 0
    assert [runs[i]["hosts"][0]["answer"] for i in ids] == [f"from {h.name}" for h in hosts]
    again = fab(["collect", "--all"], env)
    assert again.returncode == 0 and "nothing to collect" in again.stderr


def test_teardown_stops_detached_tasks_and_removes_their_files(fresh, fleet_config, env, testbed):
    [host] = fresh()
    config = fleet_config(hosts=[host])
    run_id = fab(["dispatch", "--config", config, "--host", host.name, "--detach", "--timeout", "600",
                  "-t", "::hang::forever"], env).stdout.strip()
    wait_until(lambda: agent_processes(testbed, host), "the task to start")
    result, _, hosts = fab_json(["teardown", "--config", config, "--yes"], env)
    assert result.returncode == 0 and hosts[host.name]["detached"] == "removed"
    wait_until(lambda: not agent_processes(testbed, host), "the detached task to be stopped")
    assert not runs_dir(host).exists()
    again = fab_json(["teardown", "--config", config, "--yes"], env)[2]
    assert again[host.name]["detached"] == "absent"
    testbed.install_standin(host)
    lost, _, runs = collect_json(env, run_id)
    [task] = runs[run_id]["hosts"]
    assert lost.returncode == 1 and task["status"] == "lost" and "files are gone" in task["message"]


@pytest.mark.parametrize("args, complaint", [
    (["dispatch", "--all", "-t", "x", "--detach", "--no-record"], "--no-record"),
    (["dispatch", "--all", "-t", "x", "--detach", "--ephemeral"], "--ephemeral"),
    (["dispatch", "--all", "-t", "x", "--detach", "--outdir", "out"], "fab show RUN --outdir"),
    (["batch", "-t", "x", "--detach", "--jsonl"], "--jsonl"),
])
def test_detach_refuses_what_cannot_outlive_the_run(fresh, fleet_config, env, args, complaint, testbed):
    [host] = fresh()
    result = fab([*args[:1], "--config", fleet_config(hosts=[host]), *args[1:]], env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and complaint in result.stderr, result.stderr
    assert not runs_dir(host).exists()
