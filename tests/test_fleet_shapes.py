"""Fleet shapes the README promises: entries sharing an address, a ``user@host`` gateway, a client that dies.

Each runs the real CLI against the real sshd of the testbed.
"""

import json
import os
import signal
import subprocess

from harness.cli import FAB, fab, fab_json
from tests.test_dispatch import agent_processes, wait_until


#: The task's timeout when its client is killed: long enough that the connection is seen closed (a
#: loaded machine takes seconds) while PicoClaw still runs, so its end is the host's timeout's doing.
HOST_TIMEOUT_S = 15


def alias_of(testbed, host, name):
    """`host`'s config entry again, under another name: the same ``user@host:port``."""
    return {**testbed.fleet_config([host])["hosts"][0], "name": name}


def test_two_entries_sharing_an_address_each_get_the_broadcast(testbed, fleet_config, guarded_env):
    """Keyed by Fabric's Connection (user, host, port), one of the two would run nothing and the other twice."""
    [host] = testbed.add_workers(1, prefix="sa")
    path = fleet_config(hosts=[host], extra_hosts=[alias_of(testbed, host, "same-board")])
    before = len(testbed.command_log(host))
    result, _, hosts = fab_json(["dispatch", "--config", str(path), "--all", "-t", "hello", "--json"], guarded_env)
    assert result.returncode == 0, result.stderr
    assert sorted(hosts) == sorted([host.name, "same-board"])
    assert all(hosts[name]["status"] == "ok" and hosts[name]["answer"] for name in hosts)
    ran = [command for command in testbed.command_log(host)[before:] if "agent -s" in command]
    assert len(ran) == 2  # one task per entry, on the one account they share


def test_two_entries_sharing_an_address_each_run_their_pinned_batch_tasks(testbed, fleet_config, guarded_env,
                                                                          tmp_path):
    [host] = testbed.add_workers(1, prefix="sb")
    path = fleet_config(hosts=[host], extra_hosts=[alias_of(testbed, host, "same-board")])
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"t{i}", "task": f"task {i}", "host": name}) + "\n"
                             for i, name in enumerate([host.name, "same-board", host.name, "same-board"])))
    result = fab(["batch", "--config", str(path), "--tasks-file", str(tasks), "--json"], guarded_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(t["id"], t["host"], t["status"]) for t in report["tasks"]] == [
        ("t0", host.name, "ok"), ("t1", "same-board", "ok"), ("t2", host.name, "ok"), ("t3", "same-board", "ok")]
    assert {h["name"]: h["tasks_run"] for h in report["hosts"]} == {host.name: 2, "same-board": 2}
    assert report["connections_opened"] == 2  # one per entry, even to one address


def test_a_gateway_given_as_user_at_host(testbed, sim_hosts, fleet_config, guarded_env, closed_port):
    """``gateway: "user@host:port"`` (not a config host): the jump is made with Fabric's own key (-i)."""
    jump, target = sim_hosts[0], sim_hosts[1]
    via = dict(testbed.fleet_config([target])["hosts"][0], name="via-user-at-host",
               gateway=f"{jump.user}@127.0.0.1:{jump.port}")
    path = fleet_config(hosts=[], extra_hosts=[via])
    before = len(testbed.command_log(target))
    result, _, hosts = fab_json(["-i", str(testbed.client_key), "status", "--config", str(path), "--json"], guarded_env)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert hosts["via-user-at-host"]["status"] == "ok"
    assert len(testbed.command_log(target)) == before + 1  # the probe ran on the target, through the jump
    broken = dict(via, gateway=f"{jump.user}@127.0.0.1:{closed_port}")
    result, _, hosts = fab_json(["-i", str(testbed.client_key), "status", "--config",
                                 str(fleet_config(hosts=[], extra_hosts=[broken])), "--json"], guarded_env)
    assert result.returncode == 1
    assert hosts["via-user-at-host"]["status"] == "unreachable"
    assert hosts["via-user-at-host"]["message"].startswith(f"via gateway {jump.user}@127.0.0.1:{closed_port}: ")


def answered_and_sleeping(testbed, host):
    """The task's PicoClaw has written its answer and sleeps (``::hang::``): from here on it writes nothing.

    Killed any sooner, our client could leave PicoClaw a closed channel to
    write its banner or answer to, and the broken pipe would end it, as it
    would the real (Go) binary: that is not the host's timeout at work.
    """
    for line in agent_processes(testbed, host):
        try:
            with open(f"/proc/{line.split()[0]}/wchan") as handle:
                if "nanosleep" in handle.read():
                    return True
        except OSError:
            continue
    return False


def test_the_host_stops_picoclaw_at_its_timeout_after_our_client_died(testbed, fleet_config, guarded_env):
    """``timeout -k`` runs on the host: a client killed mid-task (laptop lid, OOM) leaves no PicoClaw behind.

    No pty, so closing the connection sends the task no hangup: it is the
    host's own ``timeout`` that ends it, and the wrapper still removes the
    task's session and log files.
    """
    [host] = testbed.add_workers(1, prefix="sk")
    path = fleet_config(hosts=[host])
    proc = subprocess.Popen(
        [FAB, "dispatch", "--config", str(path), "--host", host.name, "-t", "::hang::working", "--timeout", str(HOST_TIMEOUT_S)],
        env=guarded_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: answered_and_sleeping(testbed, host), "the task to answer and hang")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    wait_until(lambda: not testbed.processes(host, "sshd: " + host.user), "the client's connection to close")
    assert agent_processes(testbed, host), "the client's death alone stopped PicoClaw (a hangup?)"
    wait_until(lambda: not agent_processes(testbed, host), "the host's timeout to stop PicoClaw")
    picoclaw_dir = host.home / ".picoclaw"
    wait_until(lambda: not list(picoclaw_dir.glob("fleet-*.log")), "the wrapper to remove the task's log")
    sessions = picoclaw_dir / "workspace" / "sessions"
    assert not list(sessions.glob("agent_main_pcf-*")), list(sessions.iterdir())
