"""The run ledger against the real sshd testbed: what runs print is what the ledger keeps and shows again.

Every run here is the real CLI (`fab`) with its ledger in the test's own
directory (``PICOCLAW_FLEET_LEDGER``); the ledger is then read back both
through the CLI (``fab runs``, ``fab show``) and directly (`Ledger`), so a
record that merely looks right on screen cannot pass.
"""

import json
import os
import re
import sqlite3
import subprocess
import threading
import time
from datetime import timedelta

import pytest

from fabfile.core.ledger import Ledger, utc_now
from fabfile.core.outdir import safe_name
from harness.cli import FAB, REPO, fab, fab_json
from harness.standin import STANDIN_MODEL_NAME

RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{4}")
#: Human output shows durations (rounded to 2 places); the ledger keeps the milliseconds --json has.
DURATION = re.compile(r"\d+\.\d\d(-\d+\.\d\d)?s")


@pytest.fixture(scope="module")
def workers(testbed):
    """Two hosts with the stand-in that no test changes."""
    return testbed.add_workers(2, prefix="rl")


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "state" / "runs.sqlite"


@pytest.fixture
def env(guarded_env, ledger_path):
    return dict(guarded_env, PICOCLAW_FLEET_LEDGER=str(ledger_path))


def jsonl_tasks(path, items):
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def agent_runs(testbed, host):
    """How many PicoClaw tasks the host has run (foreground or detached): its command log says."""
    return sum(1 for command in testbed.command_log(host) if " agent -s " in command)


def one_line_exit_2(result, *words):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


# --- what a run printed is what the ledger keeps ---------------------------------------------------


def test_a_batch_is_recorded_as_it_printed_and_shown_again(workers, fleet_config, env, ledger_path, tmp_path):
    config = fleet_config(hosts=workers)
    tasks = jsonl_tasks(tmp_path / "tasks.jsonl", [
        {"id": "plain", "task": "it's \"quoted\" $(not run) 🦞"},
        {"id": "broken", "task": "::fail::no quota"},
        {"id": 7, "task": "pinned", "host": workers[1].name, "timeout": 30},
    ])
    proc = fab(["batch", "--config", config, "--tasks-file", tasks, "--json"], env)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert RUN_ID.fullmatch(data["run"]) and list(data)[0] == "run"

    shown = fab(["show", data["run"], "--json"], env)
    assert shown.returncode == 1 and json.loads(shown.stdout) == data

    run, rows = Ledger(ledger_path).load(data["run"])
    assert (run.verb, run.config, run.parent, run.detached, run.exit_code) == ("batch", str(config), None, False, 1)
    assert run.options["tasks_file"] == str(tasks) and "api_key" not in json.dumps(run.options)
    assert [row.record for row in rows] == data["tasks"]
    assert [(row.task_id, row.text, row.pin, row.timeout_s) for row in rows] == [
        ("plain", "it's \"quoted\" $(not run) 🦞", None, 60), ("broken", "::fail::no quota", None, 60),
        ("7", "pinned", workers[1].name, 30)]
    assert [(row.status, row.answer, row.exit_code, row.attempts) for row in rows] == [
        ("ok", "it's \"quoted\" $(not run) 🦞", 0, 1), ("failed", "", 1, 1), ("ok", "pinned", 0, 1)]
    assert rows[1].stderr == "Error: stand-in failure: no quota\n"
    assert rows[2].host == workers[1].name and rows[2].target == workers[1].name
    # what the batch's probe found on each task's host (the stand-in's provisioned model)
    assert {(row.picoclaw_version, row.model) for row in rows} == {("0.1.0", STANDIN_MODEL_NAME)}

    human = fab(["batch", "--config", config, "--tasks-file", tasks], env)
    run_id = re.search(r"recorded as run (\S+)", human.stderr).group(1)
    again = fab(["show", run_id], env)
    assert again.returncode == human.returncode == 1
    assert DURATION.sub("T", again.stdout) == DURATION.sub("T", human.stdout)
    assert "[stderr] Error: stand-in failure: no quota" in again.stdout


def test_a_dispatch_is_shown_again_inline_or_as_blocks(workers, fleet_config, env, ledger_path):
    config = fleet_config(hosts=workers)
    result, data, _ = fab_json(["dispatch", "--config", config, "--all", "-t", "same answer"], env)
    assert result.returncode == 0
    shown = fab(["show", data["run"], "--json"], env)
    assert json.loads(shown.stdout) == data
    run, rows = Ledger(ledger_path).load(data["run"])
    assert [(row.task_id, row.host, row.text, row.answer) for row in rows] == [
        ("1", h.name, "same answer", "same answer") for h in workers]
    assert run.options["mode"] == "broadcast" and run.options["all"] is True

    inline = fab(["dispatch", "--config", config, "--host", workers[0].name, "-t", "bare answer"], env)
    assert (inline.returncode, inline.stdout) == (0, "bare answer\n")
    assert "recorded as run" in inline.stderr
    last = fab(["show", "last"], env)
    assert (last.returncode, last.stdout, last.stderr) == (0, "bare answer\n", "")

    failed = fab(["dispatch", "--config", config, "--host", workers[0].name, "-t", "::fail::nope"], env)
    again = fab(["show", "last"], env)
    assert failed.returncode == again.returncode == 1 and again.stdout == failed.stdout == ""
    assert "Error: stand-in failure: nope" in again.stderr and f"{workers[0].name}: failed" in again.stderr


def test_deploy_and_teardown_leave_a_one_line_record(testbed, fleet_config, env, ledger_path):
    [host] = testbed.add_workers(1, prefix="rt")
    result = fab(["teardown", "--config", fleet_config(hosts=[host]), "--yes", "--json"], env)
    assert result.returncode == 0 and "run" not in json.loads(result.stdout)
    [(run, counts)] = Ledger(ledger_path).runs()
    assert (run.verb, run.exit_code, counts) == ("teardown", 0, {})
    assert run.report["hosts"] == [{"name": host.name, "status": "ok"}] and run.options["purge"] is False
    shown = fab(["show", run.id], env)
    assert shown.returncode == 0 and f"run {run.id}: teardown" in shown.stdout and f"{host.name}: ok" in shown.stdout
    rerun = fab(["rerun", run.id], env)
    one_line_exit_2(rerun, "only dispatch and batch runs can be re-run")


# --- several fab processes at once ------------------------------------------------------------------


def test_concurrent_runs_are_all_recorded(workers, fleet_config, env, ledger_path):
    config = fleet_config(hosts=workers)
    procs = [subprocess.Popen([FAB, "dispatch", "--config", str(config), "--all", "-t", f"run number {n}", "--json"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL) for n in range(4)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, outputs
    assert not any("not recorded" in err for _, err in outputs)
    printed = {json.loads(out)["run"]: json.loads(out) for out, _ in outputs}
    listed = json.loads(fab(["runs", "--json"], env).stdout)["runs"]
    assert {run["run"] for run in listed} == set(printed) and len(printed) == 4
    ledger = Ledger(ledger_path)
    for run_id, data in printed.items():
        assert [row.record for row in ledger.load(run_id)[1]] == data["hosts"]


def test_a_run_waits_for_another_process_holding_the_ledger(workers, fleet_config, env, ledger_path, testbed):
    """WAL and a busy timeout: a writer that finds the ledger locked waits its turn instead of losing its record."""
    Ledger(ledger_path).check_writable()
    holder = sqlite3.connect(ledger_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process, mid-write
    host = workers[0]
    before = agent_runs(testbed, host)
    proc = subprocess.Popen([FAB, "dispatch", "--config", str(fleet_config(hosts=workers)), "--host", host.name,
                             "-t", "patient"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    try:
        while agent_runs(testbed, host) == before and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(1)  # the task is over: the run is now at its record, behind our lock
        assert proc.poll() is None, "the run did not wait for the ledger"
    finally:
        holder.execute("COMMIT")
        holder.close()
    out, err = proc.communicate(timeout=300)
    assert (proc.returncode, out) == (0, "patient\n") and "not recorded" not in err
    [(run, counts)] = Ledger(ledger_path).runs()
    assert counts == {"ok": 1} and run.verb == "dispatch"


# --- fab rerun ---------------------------------------------------------------------------------------


def test_rerun_failed_runs_exactly_the_failed_tasks_again(testbed, fleet_config, env, ledger_path, tmp_path):
    good, flaky = testbed.add_workers(2, prefix="rr")
    testbed.install_standin(flaky, mode="::fail::")  # every task on it fails, until it is repaired
    config = fleet_config(hosts=[good, flaky])
    tasks = jsonl_tasks(tmp_path / "tasks.jsonl", [
        {"id": "x1", "task": "one", "host": good.name},
        {"id": "x2", "task": "two", "host": flaky.name, "timeout": 45},
        {"id": "x3", "task": "three", "host": flaky.name, "session": "kept-one"},
        {"id": "x4", "task": "four"},
    ])
    proc = fab(["batch", "--config", config, "--tasks-file", tasks, "--json", "--timeout", "50"], env)
    first = json.loads(proc.stdout)
    failed = [t["id"] for t in first["tasks"] if t["status"] != "ok"]
    assert "x2" in failed and "x3" in failed and "x1" not in failed

    testbed.install_standin(flaky)  # repaired
    runs_before = {h.name: agent_runs(testbed, h) for h in (good, flaky)}
    result = fab(["rerun", first["run"], "--failed", "--json"], env)
    again = json.loads(result.stdout)
    assert result.returncode == 0, result.stderr
    assert again["rerun_of"] == first["run"] and again["run"] != first["run"]
    texts = {"x2": "two", "x3": "three", "x4": "four"}  # x4 is unpinned: it failed if it went to the flaky host
    assert [t["id"] for t in again["tasks"]] == failed
    assert [(t["status"], t["answer"]) for t in again["tasks"]] == [("ok", texts[i]) for i in failed]
    ran = {h.name: agent_runs(testbed, h) - runs_before[h.name] for h in (good, flaky)}
    assert sum(ran.values()) == len(failed)
    old_rows = {row.task_id: row for row in Ledger(ledger_path).load(first["run"])[1]}
    new_run, new_rows = Ledger(ledger_path).load(again["run"])
    assert new_run.parent == first["run"]
    for row in new_rows:
        old = old_rows[row.task_id]
        assert (row.text, row.pin, row.timeout_s, row.session) == (old.text, old.pin, old.timeout_s, old.session)
    assert {row.task_id: row.timeout_s for row in new_rows}["x2"] == 45

    nothing = fab(["rerun", again["run"], "--failed"], env)
    assert nothing.returncode == 0 and nothing.stdout == "" and "nothing to rerun" in nothing.stderr
    everything = fab(["rerun", first["run"], "--json"], env)
    assert [t["id"] for t in json.loads(everything.stdout)["tasks"]] == ["x1", "x2", "x3", "x4"]


def test_rerun_failed_of_a_broadcast_goes_to_the_failed_hosts_only(testbed, fleet_config, env):
    good, flaky = testbed.add_workers(2, prefix="rb")
    testbed.install_standin(flaky, mode="::fail::")
    config = fleet_config(hosts=[good, flaky])
    result, data, hosts = fab_json(["dispatch", "--config", config, "--all", "-t", "ping", "--timeout", "40"], env)
    assert (hosts[good.name]["status"], hosts[flaky.name]["status"]) == ("ok", "failed")
    testbed.install_standin(flaky)
    again = fab(["rerun", data["run"], "--failed", "--json"], env)
    rerun = json.loads(again.stdout)
    assert again.returncode == 0 and [h["name"] for h in rerun["hosts"]] == [flaky.name]
    assert rerun["hosts"][0]["answer"] == "ping" and rerun["rerun_of"] == data["run"]


# --- --outdir ----------------------------------------------------------------------------------------


def test_outdir_writes_a_file_per_task_and_never_overwrites(workers, fleet_config, env, testbed, tmp_path):
    config = fleet_config(hosts=workers)
    out = tmp_path / "answers"
    tasks = jsonl_tasks(tmp_path / "tasks.jsonl", [
        {"id": "disk", "task": "disk is fine", "host": workers[0].name},
        {"id": "../up/and away", "task": "odd id", "host": workers[1].name},
        {"id": 3, "task": "::fail::no quota", "host": workers[0].name},
    ])
    result = fab(["batch", "--config", config, "--tasks-file", tasks, "--outdir", out, "--json"], env)
    data = json.loads(result.stdout)
    odd = safe_name("../up/and away")
    assert odd.startswith("_up_and_away-") and "/" not in odd
    expected = {f"disk.{workers[0].name}.answer", f"{odd}.{workers[1].name}.answer", f"3.{workers[0].name}.answer",
                f"3.{workers[0].name}.stderr", "summary.json"}
    assert {p.name for p in out.iterdir()} == expected
    assert (out / f"disk.{workers[0].name}.answer").read_text() == "disk is fine"
    assert (out / f"{odd}.{workers[1].name}.answer").read_text() == "odd id"
    assert (out / f"3.{workers[0].name}.stderr").read_text() == "Error: stand-in failure: no quota\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"] == data["run"] and summary["summary"] == {"ok": 2, "failed": 1}
    assert [(t["id"], t["status"], t["answer_file"]) for t in summary["tasks"]] == [
        ("disk", "ok", f"disk.{workers[0].name}.answer"), ("../up/and away", "ok", f"{odd}.{workers[1].name}.answer"),
        (3, "failed", f"3.{workers[0].name}.answer")]

    contents = {p.name: p.read_bytes() for p in out.iterdir()}
    runs_before = sum(agent_runs(testbed, h) for h in workers)
    again = fab(["batch", "--config", config, "--tasks-file", tasks, "--outdir", out], env)
    one_line_exit_2(again, "--outdir", "never overwritten")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == contents
    assert sum(agent_runs(testbed, h) for h in workers) == runs_before  # refused before any host

    broadcast = tmp_path / "broadcast"
    fab(["dispatch", "--config", config, "--all", "-t", "hi all", "--outdir", broadcast], env)
    assert sorted(p.name for p in broadcast.iterdir()) == sorted(
        [f"1.{h.name}.answer" for h in workers] + ["summary.json"])
    shown = tmp_path / "shown"
    assert fab(["show", data["run"], "--outdir", shown], env).returncode == 1
    assert {p.name for p in shown.iterdir()} == expected
    assert (shown / f"disk.{workers[0].name}.answer").read_text() == "disk is fine"


# --- no record, a ledger that cannot be written ------------------------------------------------------


def test_no_record_leaves_no_trace(workers, fleet_config, env, ledger_path):
    result, data, _ = fab_json(["dispatch", "--config", fleet_config(hosts=workers), "--all", "-t", "secret plan",
                                "--no-record"], env)
    assert result.returncode == 0 and data["run"] is None
    assert not ledger_path.exists() and not ledger_path.parent.exists()
    human = fab(["dispatch", "--config", fleet_config(hosts=workers), "--host", workers[0].name, "-t", "quiet",
                 "--no-record"], env)
    assert (human.returncode, human.stdout, human.stderr) == (0, "quiet\n", "")
    assert not ledger_path.exists()


def test_a_ledger_that_cannot_be_written_never_fails_the_run(workers, fleet_config, guarded_env, tmp_path, testbed):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    env = dict(guarded_env, PICOCLAW_FLEET_LEDGER=str(blocker / "runs.sqlite"))
    config = fleet_config(hosts=workers)
    result = fab(["dispatch", "--config", config, "--host", workers[0].name, "-t", "still answered"], env)
    assert (result.returncode, result.stdout) == (0, "still answered\n")
    assert "the run was not recorded: ledger" in result.stderr and str(blocker) in result.stderr
    assert "recorded as run" not in result.stderr
    listed = fab(["batch", "--config", config, "-t", "a", "-t", "b", "--json"], env)
    assert listed.returncode == 0 and json.loads(listed.stdout)["run"] is None

    runs_before = sum(agent_runs(testbed, h) for h in workers)
    detached = fab(["dispatch", "--config", config, "--all", "-t", "later", "--detach"], env)
    one_line_exit_2(detached, "--detach needs the ledger")
    assert sum(agent_runs(testbed, h) for h in workers) == runs_before

    (tmp_path / "junk.sqlite").write_bytes(b"this is no database at all" * 100)
    junk = dict(guarded_env, PICOCLAW_FLEET_LEDGER=str(tmp_path / "junk.sqlite"))
    result = fab(["dispatch", "--config", config, "--host", workers[0].name, "-t", "fine"], junk)
    assert (result.returncode, result.stdout) == (0, "fine\n") and "not recorded" in result.stderr
    one_line_exit_2(fab(["runs"], junk), "junk.sqlite")


# --- fab runs, prune, and the errors a user can make -------------------------------------------------


def test_runs_lists_newest_first_and_prune_forgets_old_runs(workers, fleet_config, env, ledger_path):
    config = fleet_config(hosts=workers)
    assert fab(["runs"], env).stdout == "no runs recorded yet\n" and not ledger_path.exists()
    ids = []
    for text in ("first", "second", "third"):
        result, data, _ = fab_json(["dispatch", "--config", config, "--all", "-t", text], env)
        ids.append(data["run"])
    listed = json.loads(fab(["runs", "--json"], env).stdout)["runs"]
    assert [run["run"] for run in listed] == ids[::-1]
    assert listed[0]["summary"] == {"ok": 2} and listed[0]["exit_code"] == 0 and listed[0]["options"]["all"]
    assert [run["run"] for run in json.loads(fab(["runs", "--json", "--limit", "2"], env).stdout)["runs"]] == ids[:0:-1]
    table = fab(["runs"], env).stdout.splitlines()
    assert table[0].split() == ["RUN", "VERB", "STARTED", "TOOK", "RESULT", "EXIT", "NOTE"]
    assert [line.split()[0] for line in table[1:]] == ids[::-1]
    assert fab(["show", ids[1][:-1], "--json"], env).returncode == 0  # a unique prefix names it

    kept = fab(["runs", "--prune", "--older-than", "1d"], env)
    assert kept.stdout == "pruned 0 runs older than 1d\n"
    ledger = Ledger(ledger_path)
    assert ledger.prune(3600, now=utc_now() + timedelta(days=2)) == (3, 0)
    assert fab(["runs", "--json"], env).stdout.count('"run"') == 0
    assert not Ledger(ledger_path).runs()


@pytest.mark.parametrize("args, complaint", [
    (["show", "20000101-000000-dead"], "unknown run"),
    (["show", "--help"], "--help first"),
    (["rerun", "nope", "--failed"], "unknown run"),
    (["collect", "last", "--all"], "name the run to collect"),
    (["runs", "--prune"], "--prune and --older-than go together"),
    (["runs", "--prune", "--older-than", "30 days"], "--older-than '30 days'"),
    (["runs", "--limit", "-3"], "--limit"),
])
def test_usage_errors_are_one_line_and_exit_2(workers, fleet_config, env, args, complaint):
    fab_json(["dispatch", "--config", fleet_config(hosts=workers), "--all", "-t", "something to find"], env)
    one_line_exit_2(fab(args, env), complaint)


def test_an_ambiguous_prefix_is_refused(workers, fleet_config, env):
    config = fleet_config(hosts=workers)
    ids = {fab_json(["dispatch", "--config", config, "--all", "-t", "x"], env)[1]["run"] for _ in range(2)}
    prefix = os.path.commonprefix(sorted(ids))  # at least the date: both runs are in this test's own ledger
    one_line_exit_2(fab(["show", prefix], env), "ambiguous")


@pytest.mark.parametrize("attempt", range(20))
def test_concurrent_threads_record_through_one_ledger(ledger_path, attempt):
    """In-process: writers in many threads (each call its own connection) all land, none clobbers another,
    also while they all create the file at once (switching a new file to WAL once lost ~1 write in 20 tries)."""
    from fabfile.core.ledger import Run, TaskRow, iso, new_run_id

    ledger = Ledger(ledger_path)
    made = []

    def record(n):
        run = Run(new_run_id(), "batch", iso(utc_now()), iso(utc_now()), options={"n": n})
        ledger.record(run, [TaskRow(seq, str(seq), "ok", f"task {n}.{seq}", {"id": seq}) for seq in range(5)])
        made.append(run.id)

    threads = [threading.Thread(target=record, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 16 and {run.id for run, _ in ledger.runs()} == set(made)
    assert all(counts == {"ok": 5} for _, counts in ledger.runs())


def test_run_ids_drawn_in_one_process_never_repeat():
    """16 bits of suffix: 5,000 runs started in the same second would share ids ~190 times over; one process
    never hands out one twice (the threaded test above once failed so: two of its 16 threads drew the same id)."""
    from fabfile.core.ledger import new_run_id

    started = utc_now()
    ids = [new_run_id(started) for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(RUN_ID.fullmatch(run_id) and run_id[:15] == ids[0][:15] for run_id in ids)


@pytest.mark.parametrize("detach", [False, True])
def test_a_run_whose_id_another_process_recorded_first(ledger_path, detach):
    """Another process drew the same id in the same second and recorded first: that run is kept as it was; a
    run that is not detached is recorded under a new id of the same second, and a detached one (its id names
    its tasks on the hosts) is not recorded, with the warnings that say so."""
    from fabfile.core.ledger import Run, RunIdTaken, TaskRow, iso
    from fabfile.core.recording import Recorder

    warnings = []
    recorder = Recorder("batch", {"n": 2}, detach=detach, ledger=Ledger(ledger_path), warn=warnings.append)
    first = Run(recorder.id, "batch", iso(utc_now()), iso(utc_now()), options={"n": 1})
    Ledger(ledger_path).record(first, [TaskRow(0, "1", "ok", "the other run's task", {"id": 1})])
    with pytest.raises(RunIdTaken):
        Ledger(ledger_path).record(first, [])

    taken = recorder.id
    run = recorder.finish({"tasks": []}, [TaskRow(0, "1", "ok", "this run's task", {"id": 1})], 0)
    kept = Ledger(ledger_path).load(taken)
    assert kept[0].options == {"n": 1} and [row.text for row in kept[1]] == ["the other run's task"]
    if detach:
        assert not recorder.recorded and run.id == taken and recorder.fields()["run"] is None
        assert f"another run has the id {taken}" in warnings[0] and "fab collect cannot find them" in warnings[1]
    else:
        assert recorder.recorded and run.id == recorder.id != taken and warnings == []
        assert RUN_ID.fullmatch(run.id) and run.id[:15] == taken[:15]
        again, rows = Ledger(ledger_path).load(run.id)
        assert again.options == {"n": 2} and [row.text for row in rows] == ["this run's task"]
