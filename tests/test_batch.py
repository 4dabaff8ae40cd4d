"""`fab batch`: reading tasks, the queue on the real sshd testbed, and what it prints.

Reading tasks is tested in-process (it is pure); everything that schedules
runs the real CLI against sim hosts. The faults (hosts dying, unreachable,
timeouts, Ctrl-C) are in test_batch_faults.py.
"""

import dataclasses
import io
import json
import os
import pty
import pwd
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from fabfile.core.tasks import check_pins, read_tasks
from fabfile.core.config import HostEntry
from fabfile.core.errors import UsageError
from harness.cli import drain_terminal
from tests.batch_support import (
    FAB, REPO, RUN_LIMIT_S, agent_processes, batch, batch_json, interrupt, jsonl_file, no_task_left_running,
    running_tasks, set_max_tasks, start_batch, wait_until,
)


@pytest.fixture(scope="module")
def workers(testbed):
    """Three hosts with the stand-in, which no test changes."""
    return testbed.add_workers(3, prefix="bq")


@pytest.fixture
def fresh(testbed):
    """Factory: `n` new hosts of this test's own, with the stand-in (optionally in a fixed `mode`)."""

    def make(n=1, mode=None):
        return testbed.add_workers(n, prefix="bx", mode=mode)

    return make


# --- reading tasks (no hosts involved) -----------------------------------------------------------


def test_plain_lines_skip_blanks_and_comments_and_take_the_line_number_as_id(tmp_path):
    path = tmp_path / "tasks.txt"
    path.write_bytes(b"# what to ask\n\nfirst task\r\n   second, spaced   \n  # indented comment\nthird \xf0\x9f\xa6\x9e\n")
    tasks = read_tasks(str(path))
    assert [(t.id, t.data.decode(), t.position) for t in tasks] == [(3, "first task", 0), (4, "second, spaced", 1),
                                                                    (6, "third 🦞", 2)]
    assert tasks[0].where == f"{path} line 3"


def test_json_lines_give_id_host_and_timeout_and_default_the_id_to_the_line(tmp_path):
    path = jsonl_file(tmp_path / "tasks.jsonl", [
        {"id": "summarise", "task": "Summarise:\n  'quoted' $HOME", "host": "pi-2", "timeout": 2.5},
        {"task": "no id here"},
        {"id": 7, "task": "numbered"},
    ])
    tasks = read_tasks(str(path))
    assert [(t.id, t.data.decode(), t.host, t.timeout) for t in tasks] == [
        ("summarise", "Summarise:\n  'quoted' $HOME", "pi-2", 2.5),
        (2, "no id here", None, None),
        (7, "numbered", None, None),
    ]


def test_dash_reads_stdin_and_repeated_task_options_are_numbered_in_order():
    stdin = io.TextIOWrapper(io.BytesIO(b'{"id": "x", "task": "from stdin"}\n'))
    assert [(t.id, t.data) for t in read_tasks("-", stdin=stdin)] == [("x", b"from stdin")]
    tasks = read_tasks(None, ["one", "  two  "])
    assert [(t.id, t.data, t.where) for t in tasks] == [(1, b"one", "--task #1"), (2, b"  two  ", "--task #2")]


@pytest.mark.parametrize("content, complaint", [
    ('{"task": "a"}\n{"task": "b"\n', "line 2: invalid JSON at column 13: Expecting ',' delimiter"),
    ('{"task": "a"}\nplain text after JSON\n', "line 2: invalid JSON"),
    ('{"task": "a"}\n["a list"]\n', "line 2: expected a JSON object"),
    ('\n# c\n{"task": "a", "hots": "pi-1"}\n', "line 3: unknown key 'hots'"),
    ('{"id": 1, "task": ""}\n', 'line 1: "task" must be a non-empty string'),
    ('{"id": 1}\n', 'line 1: "task" must be a non-empty string'),
    ('{"task": "a", "timeout": 0}\n', 'line 1: "timeout" must be a number of seconds above 0'),
    ('{"task": "a", "timeout": "5"}\n', 'line 1: "timeout" must be a number'),
    ('{"task": "a", "id": true}\n', 'line 1: "id" must be a non-empty string or an integer'),
    ('{"task": "a", "host": 3}\n', 'line 1: "host" must be a host name'),
    ('{"id": "x", "task": "a"}\n\n{"id": "x", "task": "b"}\n', "line 3: id 'x' is already used by"),
    ('{"id": 3, "task": "a"}\n{"task": "b"}\n{"task": "c"}\n', "line 3: id 3 is already used by"),
    ('{"task": "nul \\u0000 byte"}\n', "line 1: the task text contains a NUL byte"),
    ("# only a comment\n\n   \n", "holds no tasks"),
])
def test_a_malformed_tasks_file_is_a_usage_error_naming_the_line(tmp_path, content, complaint):
    path = tmp_path / "tasks"
    path.write_text(content)
    with pytest.raises(UsageError) as caught:
        read_tasks(str(path))
    assert complaint in str(caught.value)


def test_invalid_utf8_and_an_oversized_task_name_their_line(tmp_path):
    path = tmp_path / "tasks"
    path.write_bytes(b"fine\nbad \xff byte\n")
    with pytest.raises(UsageError, match="line 2: not valid UTF-8"):
        read_tasks(str(path))
    path.write_text("fine\n" + "x" * (128 * 1024) + "\n")
    with pytest.raises(UsageError, match="line 2: the task is 131072 bytes"):
        read_tasks(str(path))


def test_task_sources_must_be_one_or_the_other():
    with pytest.raises(UsageError, match="not both"):
        read_tasks("tasks.txt", ["also this"])
    with pytest.raises(UsageError, match="no tasks"):
        read_tasks(None, [])


def test_a_pin_outside_the_selected_hosts_is_a_usage_error():
    tasks = read_tasks(None, ["a"])
    pinned = [dataclasses.replace(tasks[0], host="pi-9", where="line 4")]
    entries = [HostEntry("pi-1", "127.0.0.1", "pi"), HostEntry("pi-2", "127.0.0.1", "pi")]
    with pytest.raises(UsageError, match=r"line 4: host 'pi-9' is not one of the selected hosts \(pi-1, pi-2\)"):
        check_pins(pinned, entries)
    check_pins(tasks, entries)


# --- usage errors on the command line --------------------------------------------------------------


@pytest.mark.parametrize("args, stdin, complaint", [
    (["--tasks-file", "-"], '{"task": "a"}\n\n{"task": \n', "stdin line 3: invalid JSON"),
    (["--tasks-file", "-", "--task", "b"], "a\n", "not both"),
    ([], "", "no tasks"),
    (["--task", "a", "--json", "--jsonl"], "", "--json or --jsonl"),
    (["--task", "a", "--retries", "twice"], "", "--retries 'twice'"),
    (["--task", "a", "--timeout", "0"], "", "--timeout must be more than 0"),
    (["--task", "a", "--parallel", "0"], "", "--parallel"),
    (["--tasks-file", "-"], '{"task": "a", "host": "nowhere"}\n', "host 'nowhere' is not one of the selected hosts"),
    (["--tasks-file", "/nonexistent/tasks.txt"], "", "cannot read tasks file /nonexistent/tasks.txt"),
])
def test_usage_errors_exit_2_with_one_line_before_any_host_is_contacted(testbed, workers, fleet_config, guarded_env,
                                                                        args, stdin, complaint):
    path = fleet_config(hosts=workers)
    before = [testbed.command_log(host) for host in workers]
    proc = batch(path, guarded_env, *args, stdin=stdin)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and complaint in proc.stderr, proc.stderr
    assert [testbed.command_log(host) for host in workers] == before


# --- the queue on real hosts --------------------------------------------------------------------------


def test_results_come_in_input_order_with_id_host_status_duration_and_stdout(workers, fleet_config, guarded_env):
    path = fleet_config(hosts=workers)
    tasks = "# slow one first, so finish order differs from input order\n::sleep=1.5::slow\nquick\n::fail::bad\n'q' $HOME\n"
    proc, data, tasks_by_id = batch_json(path, guarded_env, "--tasks-file", "-", stdin=tasks)
    assert proc.returncode == 1
    assert [t["id"] for t in data["tasks"]] == [2, 3, 4, 5]
    assert [(t["status"], t["answer"]) for t in data["tasks"]] == [
        ("ok", "slow"), ("ok", "quick"), ("failed", ""), ("ok", "'q' $HOME"),
    ]
    assert tasks_by_id[4]["stderr"] == "Error: stand-in failure: bad\n" and tasks_by_id[4]["exit_code"] == 1
    assert {t["host"] for t in data["tasks"]} <= {h.name for h in workers}
    assert all(t["duration_s"] > 0 and t["attempts"] == 1 for t in data["tasks"])
    assert tasks_by_id[2]["duration_s"] >= 1.5
    assert data["summary"] == {"ok": 3, "failed": 1}
    assert (data["verb"], data["interrupted"]) == ("batch", False)

    human = batch(path, guarded_env, "--tasks-file", "-", stdin=tasks)
    assert human.returncode == 1
    headers = [line for line in human.stdout.splitlines() if line.startswith("---- task")]
    assert [h.split()[2] for h in headers] == ["2", "3", "4", "5"]
    assert "---- task 4 on " in human.stdout and ": failed, " in headers[2]
    assert "[stderr] Error: stand-in failure: bad\n" in human.stdout
    assert human.stdout.splitlines()[-1].startswith("4 tasks: 1 failed, 3 ok; 3 hosts, 3 SSH connections")


def test_every_task_runs_once_over_one_connection_and_one_probe_per_host(testbed, workers, fleet_config, guarded_env):
    path = fleet_config(hosts=workers)
    logs_before = {host.name: len(testbed.command_log(host)) for host in workers}
    tasks = "".join(f"::sleep=0.2::answer {n}\n" for n in range(12))
    proc, data, tasks_by_id = batch_json(path, guarded_env, "--tasks-file", "-", stdin=tasks)
    assert proc.returncode == 0, proc.stderr
    assert sorted(t["answer"] for t in data["tasks"]) == sorted(f"answer {n}" for n in range(12))
    assert data["connections_opened"] == len(workers)
    hosts = {h["name"]: h for h in data["hosts"]}
    for host in workers:
        commands = testbed.command_log(host)[logs_before[host.name]:]
        probes = [c for c in commands if "version_rc" in c]
        agents = [c for c in commands if " agent -s agent:main:" in c]
        assert len(probes) == 1
        assert len(agents) == hosts[host.name]["tasks_run"] == sum(t["host"] == host.name for t in data["tasks"])
        assert hosts[host.name]["status"] == "ok" and hosts[host.name]["slots"] == 1
    assert sum(h["tasks_run"] for h in hosts.values()) == 12


def test_max_tasks_runs_that_many_tasks_at_once_on_the_one_connection(testbed, fresh, fleet_config, guarded_env,
                                                                      tmp_path):
    [host] = fresh()
    path = set_max_tasks(fleet_config(hosts=[host]), {host.name: 3})
    tasks = jsonl_file(tmp_path / "tasks.jsonl", [{"id": f"t{n}", "task": f"::pid::{n}"} for n in range(4)])
    proc = start_batch(path, guarded_env, tasks, "--json")
    wait_until(lambda: len(running_tasks(testbed, host)) == 3, "three tasks running at once")
    out, _ = interrupt(proc)
    data = json.loads(out)
    assert data["connections_opened"] == 1
    assert sorted(t["status"] for t in data["tasks"]) == ["interrupted"] * 3 + ["not-run"]
    assert data["hosts"][0]["slots"] == 3
    no_task_left_running(testbed, [host])


def test_the_least_loaded_hosts_get_the_tasks_when_slots_outnumber_tasks(testbed, fresh, fleet_config, guarded_env):
    busy, idle, light, medium = fresh(4)
    testbed.set_load(busy, 3.0, 1)    # 3.00 per CPU
    testbed.set_load(idle, 0.0, 4)    # 0.00, then 0.25 with one task of ours
    testbed.set_load(light, 0.2, 2)   # 0.10
    testbed.set_load(medium, 2.0, 2)  # 1.00
    path = set_max_tasks(fleet_config(hosts=[busy, medium, light, idle]), {idle.name: 2})
    proc, data, tasks_by_id = batch_json(path, guarded_env, "--task", "first", "--task", "second")
    assert proc.returncode == 0, proc.stderr
    assert (tasks_by_id[1]["host"], tasks_by_id[2]["host"]) == (idle.name, light.name)
    hosts = {h["name"]: h for h in data["hosts"]}
    assert (hosts[busy.name]["load1"], hosts[busy.name]["ncpu"]) == (3.0, 1)
    assert [hosts[h.name]["tasks_run"] for h in (busy, medium, light, idle)] == [0, 0, 1, 1]


#: The probe's ``head`` on a metered host (the one program the probe starts on a provisioned host,
#: to copy PicoClaw's config.json): it logs when the probe gets there and when it leaves, in
#: one log every host shares, holding until GATE probes have started (20 s at most), then a little
#: longer: time for one more probe to start, had the bound let one in.
PROBE_METER = """#!/bin/sh
log={log}
echo "start $LOGNAME" >> "$log"
n=0
while [ "$(grep -c '^start' "$log")" -lt {gate} ] && [ "$n" -lt 400 ]; do sleep 0.05; n=$((n + 1)); done
sleep 0.3
echo "end $LOGNAME" >> "$log"
exec /usr/bin/head "$@"
"""


def meter_probes(testbed, hosts, gate):
    """Give each host's probe the `PROBE_METER` (through ~/.ssh/environment's PATH); the shared log's path."""
    meter = Path(tempfile.mkdtemp(prefix="probe-meter-", dir=testbed.workdir))
    meter.chmod(0o755)
    log = meter / "probes.log"
    log.touch()
    log.chmod(0o666)
    for host in hosts:
        bindir = host.home / ".probe-meter"
        bindir.mkdir()
        (bindir / "head").write_text(PROBE_METER.format(log=log, gate=gate))
        (bindir / "head").chmod(0o755)
        (host.home / ".ssh" / "environment").write_text(f"PATH={bindir}:/usr/local/bin:/usr/bin:/bin\n")
        user = pwd.getpwnam(host.user)
        for path in (bindir, bindir / "head", host.home / ".ssh" / "environment"):
            os.chown(path, user.pw_uid, user.pw_gid)
    return log


def most_probing_at_once(log):
    """The most probes in progress at one time, from the order of the log's start and end lines."""
    running = peak = 0
    for line in log.read_text().splitlines():
        running += 1 if line.startswith("start ") else -1
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("parallel", [2, 5])
def test_parallel_bounds_how_many_hosts_connect_and_probe_at_once(testbed, fresh, fleet_config, guarded_env,
                                                                  parallel):
    """200 boards must not mean 200 handshakes at once: at most --parallel hosts connect and probe together.

    A host's connection is opened and probed inside the bound, so the probes in progress at once
    count the hosts in that step. The meter holds each probe until `parallel` have started: the
    bound is reached for sure, and one past it would have had the time to show.
    """
    hosts = fresh(6)
    log = meter_probes(testbed, hosts, gate=parallel)
    path = fleet_config(hosts=hosts)  # its defaults.parallel is 32: here --parallel is what bounds
    proc, data, tasks_by_id = batch_json(path, guarded_env, "--parallel", parallel, "--task", "one")
    assert proc.returncode == 0, proc.stderr
    assert sorted(log.read_text().splitlines()) == sorted(f"{step} {host.user}" for host in hosts
                                                          for step in ("start", "end"))  # each host probed once
    assert most_probing_at_once(log) == parallel
    assert data["connections_opened"] == 6 and tasks_by_id[1]["status"] == "ok"


def test_pinned_tasks_run_only_on_their_host(workers, fleet_config, guarded_env, tmp_path):
    path = fleet_config(hosts=workers)
    pinned = workers[1].name
    items = [{"id": f"p{n}", "task": f"pinned {n}", "host": pinned} for n in range(4)]
    items += [{"id": f"f{n}", "task": f"free {n}"} for n in range(4)]
    proc, data, tasks_by_id = batch_json(path, guarded_env, "--tasks-file", jsonl_file(tmp_path / "t.jsonl", items))
    assert proc.returncode == 0, proc.stderr
    assert {tasks_by_id[f"p{n}"]["host"] for n in range(4)} == {pinned}
    assert all(t["status"] == "ok" for t in data["tasks"])


def test_retries_run_a_failed_task_again_on_another_host(testbed, fresh, fleet_config, guarded_env):
    [failing] = fresh(mode="::fail::")
    [healthy] = fresh()
    testbed.set_load(failing, 0.0, 4)  # least loaded: the task goes there first
    testbed.set_load(healthy, 3.0, 4)
    path = fleet_config(hosts=[failing, healthy])
    proc, data, tasks_by_id = batch_json(path, guarded_env, "--task", "try me")
    assert proc.returncode == 1
    assert (tasks_by_id[1]["status"], tasks_by_id[1]["host"], tasks_by_id[1]["attempts"]) == ("failed", failing.name, 1)

    proc, data, tasks_by_id = batch_json(path, guarded_env, "--task", "try me", "--retries", "1")
    assert proc.returncode == 0, proc.stderr
    assert (tasks_by_id[1]["status"], tasks_by_id[1]["host"], tasks_by_id[1]["attempts"]) == ("ok", healthy.name, 2)
    assert tasks_by_id[1]["answer"] == "try me"


def test_retries_that_keep_failing_end_failed_after_the_last_run(testbed, fresh, fleet_config, guarded_env):
    hosts = fresh(2, mode="::fail::")
    path = fleet_config(hosts=hosts)
    before = {h.name: len(testbed.command_log(h)) for h in hosts}
    proc, data, tasks_by_id = batch_json(path, guarded_env, "--task", "never works", "--retries", "2")
    assert proc.returncode == 1
    assert (tasks_by_id[1]["status"], tasks_by_id[1]["attempts"]) == ("failed", 3)
    runs = {h.name: sum(" agent -s agent:main:" in c for c in testbed.command_log(h)[before[h.name]:]) for h in hosts}
    assert sorted(runs.values()) == [1, 2]  # the second run went to the other host


def test_jsonl_streams_each_task_as_it_finishes(testbed, fresh, fleet_config, guarded_env, tmp_path):
    hosts = fresh(2)
    path = fleet_config(hosts=hosts)
    tasks = jsonl_file(tmp_path / "t.jsonl", [{"id": "held", "task": "::pid::still going"}, {"id": "quick", "task": "done"}])
    proc = start_batch(path, guarded_env, tasks, "--jsonl")
    first = json.loads(proc.stdout.readline())
    assert (first["id"], first["status"], first["answer"]) == ("quick", "ok", "done")
    # The line came while the other task still runs: it was streamed, not printed at the end.
    assert proc.poll() is None
    wait_until(lambda: any(agent_processes(testbed, h) for h in hosts), "the held task to be running")
    out, err = interrupt(proc)
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(t["id"], t["status"]) for t in lines] == [("held", "interrupted")]
    assert lines[0]["answer"].endswith("\nstill going")
    assert "2 tasks: 1 interrupted, 1 ok" in err
    assert proc.returncode == 1
    no_task_left_running(testbed, hosts)


def test_progress_line_on_a_terminal_only(workers, fleet_config, guarded_env):
    path = fleet_config(hosts=workers)
    args = [FAB, "batch", "--config", str(path), "--json", "--task", "a", "--task", "b", "--task", "c"]
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(args, cwd=REPO, env=guarded_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=follower, timeout=RUN_LIMIT_S)
        os.close(follower)
        terminal = drain_terminal(leader)
    finally:
        os.close(leader)
    assert proc.returncode == 0
    assert re.search(rb"\r\x1b\[Kbatch: [0-3]/3 done, [0-3] running, 0 failed", terminal), terminal
    assert terminal.endswith(b"\r\x1b[K")  # cleared before the results are printed
    assert b"batch:" not in proc.stdout and json.loads(proc.stdout)["summary"] == {"ok": 3}
    piped = batch(path, guarded_env, "--task", "a")
    assert "batch:" not in piped.stderr and "batch:" not in piped.stdout
