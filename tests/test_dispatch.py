"""`fab dispatch` against the real sshd testbed: answers, faults, selection, deploy.

Every fault is produced for real: a task that overstays its timeout on a
host, a host whose processes are killed mid-task, a closed port, a host
without PicoClaw. Process checks use `pgrep -u` on the host's user, so "no
PicoClaw left running" means exactly that.
"""

import json
import os
import re
import socket
import subprocess
import time

import pytest

from fabfile.host import agent as agent_command
from fabfile.core.tasks import MAX_TASK_BYTES, task_bytes
from fabfile.host.agent import agent_command as remote_command, run_agent
from harness.cli import API_KEY, FAB, connect, fab, fab_json
from harness.release_server import RELEASE_REPO, ReleaseServer
from harness.shims import set_path
from harness.standin import standin_archive
from harness.testbed import env_file, installed_binary

#: Generous bound for waiting on a host's processes to go: only there to avoid a hang.
SETTLE_S = 20

INJECTION_CORPUS = [
    "plain words",
    "it's \"quoted\" 'twice'",
    "$(touch /tmp/pwned-by-dispatch) `id` ${HOME} $HOME $((1+1))",
    "a; rm -rf ~; echo b && false || true | cat > /dev/null &",
    "first line\nsecond line\n\nlast line",
    "trailing newlines\n\n\n",
    "\nleading newline",
    "-m --message=x -- --help",
    "-",
    "ünïcödé — 🦞 日本語 \u200b zero-width",
    "back\\slash \\n not a newline \\\\",
    "'\"'\"'",
    "*.txt ? [a-z] ~root {a,b}",
    "tab\there\r\ncarriage return",
    "%s %d %n {0} {task}",
    "   spaces around   ",
    "!! !$ history",
    "::not a directive",
]


def wait_until(predicate, what):
    """Poll `predicate` for up to SETTLE_S seconds; fail with `what` if it never holds."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"gave up waiting for {what}")


def agent_processes(testbed, host):
    """The host's processes running a PicoClaw task (the stand-in's command line)."""
    return testbed.processes(host, "picoclaw agent")


def install_script(testbed, host, script):
    """Put a shell script at ~/.local/bin/picoclaw, for behaviours the stand-in lacks."""
    testbed.install_standin(host)
    path = installed_binary(host)
    path.write_text(script)
    path.chmod(0o755)


@pytest.fixture(scope="module")
def workers(testbed):
    """Three hosts with the stand-in that no test changes."""
    return testbed.add_workers(3, prefix="dw")


@pytest.fixture
def fresh(testbed):
    """Factory: `n` new hosts of this test's own (stand-in installed unless told otherwise)."""

    def make(n=1, standin=True):
        return testbed.add_workers(n, prefix="dx") if standin else testbed.add_hosts(n, prefix="dx")

    return make


@pytest.fixture
def release(testbed):
    """A fake GitHub on 127.0.0.1 publishing stand-in builds, as deploy needs."""
    with ReleaseServer() as server:
        server.publish(RELEASE_REPO, "v0.3.0", {
            f"picoclaw_Linux_{arch}.tar.gz": standin_archive("0.3.0", f"Linux_{arch}")
            for arch in ("x86_64", "arm64", "riscv64", "armv7")
        })
        yield server


@pytest.fixture
def deploy_env(guarded_env, tmp_path):
    """The CLI's environment when it may deploy: the API key set and a private download cache."""
    return {**guarded_env, "ANTHROPIC_API_KEY": API_KEY, "XDG_CACHE_HOME": str(tmp_path / "cache")}


def dispatch(path, env, *args, timeout=180):
    return fab(["dispatch", "--config", path, *args], env, timeout=timeout)


def dispatch_json(path, env, *args, timeout=180):
    return fab_json(["dispatch", "--config", path, *args], env, timeout=timeout)


# --- the task text arrives byte for byte ---------------------------------------------------------


def test_injection_corpus_arrives_verbatim_and_never_on_a_command_line(testbed, workers):
    host = workers[0]
    before = len(testbed.command_log(host))
    cxn = connect(testbed, host)
    try:
        for text in INJECTION_CORPUS:
            result = run_agent(cxn, task_bytes(text), 30)
            assert (result.status, result.answer, result.stderr) == ("ok", text, ""), repr(text)
    finally:
        cxn.close()
    assert not os.path.exists("/tmp/pwned-by-dispatch")
    commands = testbed.command_log(host)[before:]
    task_ids = [re.search(r"fleet-([0-9a-f]{12})\.log", command).group(1) for command in commands]
    assert len(set(task_ids)) == len(INJECTION_CORPUS)  # a session of its own for each task
    assert commands == [remote_command(30, task_id=task_id) for task_id in task_ids]


@pytest.mark.parametrize(
    "text",
    [
        "'" * 100_000,  # five bytes each once shell-quoted: 500 KB, which no sh -c argument could hold
        "ü'🦞\n$(x)" * 10_000,  # 120,000 bytes
        "x" * MAX_TASK_BYTES,  # the longest argument Linux passes
    ],
    ids=["100KB-single-quotes", "mixed-unicode", "MAX_ARG_STRLEN-1"],
)
def test_long_tasks_arrive_verbatim(testbed, workers, text):
    cxn = connect(testbed, workers[1])
    try:
        result = run_agent(cxn, task_bytes(text), 60)
    finally:
        cxn.close()
    assert result.status == "ok", result.stderr
    assert result.answer == text


def test_one_host_prints_only_the_answer(workers, fleet_config, guarded_env):
    text = "-n it's $(x)\nline two 🦞"
    result = dispatch(fleet_config(hosts=workers), guarded_env, "--host", workers[2].name, "-t", text)
    assert result.returncode == 0, result.stderr
    assert result.stdout == text + "\n"
    assert "Traceback" not in result.stderr


def test_task_over_the_argument_limit_is_refused_before_connecting(testbed, workers, fleet_config, capsys):
    """A text Linux could not pass as one argument costs no host a connection.

    In-process, because the local exec of `fab` has the same per-argument limit.
    """
    from fabfile.cli import make_program

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        raw = {"name": "watched", "host": "127.0.0.1", "user": workers[0].user, "port": listener.getsockname()[1],
               "ssh_key": str(testbed.client_key)}
        path = fleet_config(hosts=[], extra_hosts=[raw])
        for flags in ([], ["--all"], ["--host", "watched"]):
            with pytest.raises(SystemExit) as exited:
                make_program().run(["fab", "dispatch", "--config", str(path), *flags, "-t", "y" * (MAX_TASK_BYTES + 1)])
            assert exited.value.code == 2
            assert "131072 bytes; Linux limits one argument to 131071 bytes" in capsys.readouterr().err
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected


def test_env_file_is_not_loaded_into_picoclaw(testbed, fresh, fleet_config, guarded_env):
    """PicoClaw takes its key from .security.yml: the agent's tools must not find one in their environment."""
    [host] = fresh()
    testbed.run_as(host, f"printf \"PROVIDER=groq\\nGROQ_API_KEY='{API_KEY}'\\n\" > ~/.picoclaw/.env")
    result, data, hosts = dispatch_json(fleet_config(hosts=[host]), guarded_env, "--host", host.name, "-t", "::env::")
    assert result.returncode == 0, result.stderr
    assert hosts[host.name]["answer"] == "model=claude-sonnet-4.6\nkey=set\nrestrict_to_workspace=true"
    assert API_KEY not in "".join(testbed.command_log(host)) + result.stdout + result.stderr


def test_picoclaw_runs_with_stdin_at_eof(testbed, fresh, fleet_config, guarded_env):
    """The task comes in on the channel's stdin, but PicoClaw itself must read nothing there."""
    [host] = fresh()
    install_script(testbed, host, '#!/bin/sh\nif IFS= read -r line; then echo "stdin: $line"; else echo eof; fi\n')
    result = dispatch(fleet_config(hosts=[host]), guarded_env, "--host", host.name, "-t", "task\nmore")
    assert (result.returncode, result.stdout) == (0, "eof\n")


# --- statuses of a task that does not simply succeed --------------------------------------------------


def test_failed_task_shows_its_stderr_and_exits_1(workers, fleet_config, guarded_env):
    result = dispatch(fleet_config(hosts=workers), guarded_env, "--host", workers[0].name, "-t", "::fail::no quota")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Error: stand-in failure: no quota\n" in result.stderr
    assert f"{workers[0].name}: failed: PicoClaw exited with status 1" in result.stderr


def test_timeout_keeps_partial_output_and_leaves_no_process(testbed, fresh, fleet_config, guarded_env):
    [host] = fresh()
    result, _, hosts = dispatch_json(fleet_config(hosts=[host]), guarded_env,
                                     "--host", host.name, "-t", "::pid::partial answer", "--timeout", "1")
    assert result.returncode == 1
    answer = hosts[host.name]
    assert (answer["status"], answer["exit_code"]) == ("timeout", 124)
    pid, rest = answer["answer"].split("\n", 1)
    assert rest == "partial answer"
    assert answer["duration_s"] >= 1
    wait_until(lambda: not agent_processes(testbed, host), "PicoClaw to be gone")
    assert not os.path.exists(f"/proc/{int(pid)}")


def test_timeout_kills_the_tasks_whole_process_group(testbed, fresh, fleet_config, guarded_env):
    """A PicoClaw that started helpers (tools, shells) leaves none of them behind."""
    [host] = fresh()
    install_script(testbed, host, "#!/bin/sh\nsleep 3600 &\necho helper started\nwait\n")
    result, _, hosts = dispatch_json(fleet_config(hosts=[host]), guarded_env,
                                     "--host", host.name, "-t", "go", "--timeout", "1")
    assert hosts[host.name]["status"] == "timeout"
    assert hosts[host.name]["stdout"] == "helper started\n"
    wait_until(lambda: not testbed.processes(host, "sleep 3600"), "the helper to be killed")


def test_host_that_cannot_stop_the_task_times_out_on_our_side(testbed, fresh, monkeypatch):
    """Without coreutils `timeout` on the host, the local deadline still ends the wait, output kept."""
    [host] = fresh()
    fakebin = host.home / ".nobin"
    testbed.run_as(host, f"mkdir {fakebin} && ln -s /bin/cat /usr/bin/env /usr/bin/python3 {fakebin}/")
    set_path(host, str(fakebin))
    monkeypatch.setattr(agent_command, "KILL_AFTER_S", 0.5)
    monkeypatch.setattr(agent_command, "LOCAL_GRACE_S", 0.5)
    cxn = connect(testbed, host)
    try:
        result = run_agent(cxn, task_bytes("::hang::so far"), 1)
    finally:
        cxn.close()
        testbed.cut(host)  # nothing on the host enforced the limit: clean up behind it
    assert (result.status, result.answer, result.exit_code) == ("timeout", "so far", None)
    assert "the host did not stop it" in result.message


def test_host_killed_mid_task_is_lost(testbed, fresh, fleet_config, guarded_env):
    [host] = fresh()
    path = fleet_config(hosts=[host])
    proc = subprocess.Popen(
        [FAB, "dispatch", "--config", str(path), "--host", host.name, "-t", "::hang::working", "--json"],
        env=guarded_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: agent_processes(testbed, host), "the task to start")
        testbed.cut(host)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    answer = json.loads(out)["hosts"][0]
    assert proc.returncode == 1
    assert (answer["status"], answer["exit_code"]) == ("lost", None)
    assert "connection dropped" in answer["message"]


# --- broadcast ----------------------------------------------------------------------------------------


def test_broadcast_with_faulty_hosts_rest_succeed_exit_1(testbed, workers, fresh, fleet_config, guarded_env,
                                                          closed_port):
    [bare] = fresh(standin=False)
    closed = {"name": "closed", "host": "127.0.0.1", "user": workers[0].user, "port": closed_port,
              "ssh_key": str(testbed.client_key)}
    path = fleet_config(hosts=[*workers, bare], extra_hosts=[closed], connect_timeout=3)
    logs_before = {h.name: len(testbed.command_log(h)) for h in [*workers, bare]}
    result, data, hosts = dispatch_json(path, guarded_env, "--all", "-t", "same 'answer'")
    assert result.returncode == 1
    assert data["summary"] == {"ok": 3, "not-installed": 1, "unreachable": 1}
    for worker in workers:
        answer = hosts[worker.name]
        assert {k: answer[k] for k in ("status", "answer", "stderr", "exit_code")} == {
            "status": "ok", "answer": "same 'answer'", "stderr": "", "exit_code": 0}
        assert answer["stdout"].endswith("\n\U0001f99e same 'answer'\n")  # PicoClaw's own, banner first
        assert answer["duration_s"] > 0
    assert hosts[bare.name]["status"] == "not-installed"
    assert hosts[bare.name]["exit_code"] == 127
    assert (hosts["closed"]["status"], hosts["closed"]["stdout"], hosts["closed"]["exit_code"]) == (
        "unreachable", "", None)
    # One command per host: a broadcast does not probe first.
    for host in [*workers, bare]:
        assert len(testbed.command_log(host)) == logs_before[host.name] + 1


def test_broadcast_folds_identical_answers(workers, fresh, fleet_config, guarded_env):
    [bare] = fresh(standin=False)
    path = fleet_config(hosts=[*workers, bare])
    names = ", ".join(w.name for w in workers)
    result = dispatch(path, guarded_env, "--hosts", ",".join(h.name for h in [*workers, bare]), "-t", "hi")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"---- {names} (3 hosts): ok, ")
    assert lines[1] == "hi"
    assert lines[2].startswith(f"---- {bare.name}: not-installed, ")
    assert lines[3] == "[not-installed] PicoClaw is not installed at ~/.local/bin/picoclaw"
    assert lines[4] == "4 hosts: 1 not-installed, 3 ok"
    unfolded = dispatch(path, guarded_env, "--hosts", ",".join(w.name for w in workers), "-t", "hi", "--no-fold")
    assert unfolded.returncode == 0
    assert [line for line in unfolded.stdout.splitlines() if line == "hi"] == ["hi"] * 3
    assert all(f"---- {w.name}: ok, " in unfolded.stdout for w in workers)


def test_broadcast_timeouts_leave_no_process_anywhere(testbed, fresh, fleet_config, guarded_env):
    hosts = fresh(3)
    result, data, answers = dispatch_json(fleet_config(hosts=hosts), guarded_env, "--all",
                                          "-t", "::hang::half done", "--timeout", "1")
    assert result.returncode == 1
    assert data["summary"] == {"timeout": 3}
    assert {a["answer"] for a in answers.values()} == {"half done"}
    for host in hosts:
        wait_until(lambda: not agent_processes(testbed, host), f"PicoClaw to be gone from {host.name}")


# --- choosing the host ------------------------------------------------------------------------------------


def test_selection_picks_the_least_loaded_host_with_picoclaw(testbed, fresh, fleet_config, guarded_env,
                                                            closed_port):
    busy, idle, other = fresh(3)
    [bare] = fresh(standin=False)
    testbed.set_load(busy, 3.0, 4)   # 0.75 per CPU
    testbed.set_load(idle, 0.8, 2)   # 0.40
    testbed.set_load(bare, 0.0, 8)   # idlest, but has no PicoClaw
    testbed.set_load(other, 2.0, 4)  # 0.50
    closed = {"name": "gone", "host": "127.0.0.1", "user": busy.user, "port": closed_port,
              "ssh_key": str(testbed.client_key)}
    path = fleet_config(hosts=[busy, idle, bare, other], extra_hosts=[closed], connect_timeout=3)
    result, data, hosts = dispatch_json(path, guarded_env, "-t", "where am I?")
    assert result.returncode == 0, result.stderr
    assert list(hosts) == [idle.name]
    assert hosts[idle.name]["answer"] == "where am I?"
    assert data["selected"]["host"] == idle.name
    assert "least loaded (0.40 load/CPU) of 3 reachable hosts with PicoClaw" in data["selected"]["reason"]
    assert f"picoclaw-fleet: {idle.name}: chosen: the least loaded" in result.stderr


def test_selection_tie_goes_to_the_first_in_config_order(testbed, fresh, fleet_config, guarded_env):
    first, second = fresh(2)
    testbed.set_load(first, 1.0, 4)
    testbed.set_load(second, 0.5, 2)
    result = dispatch(fleet_config(hosts=[second, first]), guarded_env, "-t", "tie")
    assert result.returncode == 0
    assert result.stdout == "tie\n"
    reason = "the least loaded (0.25 load/CPU, tied with 1 more, first in config order)"
    assert f"{second.name}: chosen: {reason}" in result.stderr


def test_no_deploy_refuses_when_no_host_has_picoclaw(fresh, fleet_config, guarded_env):
    hosts = fresh(2, standin=False)
    result, data, answers = dispatch_json(fleet_config(hosts=hosts), guarded_env, "-t", "x", "--no-deploy")
    assert result.returncode == 1
    [answer] = answers.values()
    assert answer["status"] == "not-installed"
    assert "--no-deploy" in answer["message"]
    human = dispatch(fleet_config(hosts=hosts), guarded_env, "-t", "x", "--no-deploy")
    assert human.returncode == 1 and human.stdout == ""
    assert "not-installed: no reachable host has PicoClaw" in human.stderr


def test_no_reachable_host(testbed, workers, fleet_config, guarded_env, closed_port):
    closed = {"name": "gone", "host": "127.0.0.1", "user": workers[0].user, "port": closed_port,
              "ssh_key": str(testbed.client_key)}
    result, data, hosts = dispatch_json(fleet_config(hosts=[], extra_hosts=[closed]), guarded_env, "-t", "x")
    assert result.returncode == 1
    assert hosts["gone"]["status"] == "unreachable"
    assert data["selected"] is None


# --- deploying for the task -------------------------------------------------------------------------------


def test_no_picoclaw_anywhere_deploys_to_the_chosen_host_then_runs(testbed, fresh, fleet_config, deploy_env,
                                                                  release):
    busy, idle = fresh(2, standin=False)
    testbed.set_load(busy, 4.0, 4)
    testbed.set_load(idle, 0.1, 4)
    path = fleet_config(hosts=[busy, idle], github_api=release.url, release_repo=RELEASE_REPO)
    result, data, hosts = dispatch_json(path, deploy_env, "-t", "fresh worker")
    assert result.returncode == 0, result.stderr
    answer = hosts[idle.name]
    assert (answer["status"], answer["answer"]) == ("ok", "fresh worker")
    assert [s["step"] for s in answer["steps"]] == ["deploy"]
    assert "no reachable host has PicoClaw: deploying to the least loaded" in data["selected"]["reason"]
    assert installed_binary(idle).exists() and not installed_binary(busy).exists()
    assert API_KEY not in result.stdout + result.stderr


def test_ephemeral_deploys_runs_and_tears_down(testbed, fresh, fleet_config, deploy_env, release):
    [host] = fresh(standin=False)
    path = fleet_config(hosts=[host], github_api=release.url, release_repo=RELEASE_REPO)
    result, data, hosts = dispatch_json(path, deploy_env, "--host", host.name, "--ephemeral", "-t", "::env::")
    assert result.returncode == 0, result.stderr
    answer = hosts[host.name]
    assert "model=claude-sonnet-4.6\nkey=set" in answer["answer"]  # the freshly provisioned model and key
    assert [(s["step"], s["status"]) for s in answer["steps"]] == [("deploy", "ok"), ("run", "ok"), ("teardown", "ok")]
    assert not installed_binary(host).exists() and not env_file(host).exists()
    for step in ("deploy: ok", "teardown: ok"):
        assert f"{host.name}: {step}" in result.stderr
    assert API_KEY not in result.stdout + result.stderr


def test_ephemeral_broadcast_tears_down_every_host(testbed, fresh, fleet_config, deploy_env, release):
    hosts = [*fresh(1), *fresh(1, standin=False)]
    path = fleet_config(hosts=hosts, github_api=release.url, release_repo=RELEASE_REPO)
    result = dispatch(path, deploy_env, "--all", "--ephemeral", "-t", "once")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == "once"
    assert all(not installed_binary(h).exists() for h in hosts)


def test_ephemeral_tears_down_after_a_failed_task_too(testbed, fresh, fleet_config, deploy_env, release):
    """Already installed: nothing to deploy; the task fails; the worker is still removed."""
    [host] = fresh()
    testbed.run_as(host, "mkdir -p ~/.picoclaw && echo PROVIDER=x > ~/.picoclaw/.env")
    path = fleet_config(hosts=[host], github_api=release.url, release_repo=RELEASE_REPO)
    result, data, hosts = dispatch_json(path, deploy_env, "--host", host.name, "--ephemeral", "-t", "::fail::bad")
    assert result.returncode == 1
    answer = hosts[host.name]
    assert (answer["status"], answer["stderr"]) == ("failed", "Error: stand-in failure: bad\n")
    assert [(s["step"], s["status"]) for s in answer["steps"]] == [("run", "failed"), ("teardown", "ok")]
    assert not installed_binary(host).exists() and not env_file(host).exists()


def test_deploy_needing_a_missing_api_key_is_a_usage_error(fresh, fleet_config, guarded_env, release):
    [host] = fresh(standin=False)
    path = fleet_config(hosts=[host], github_api=release.url, release_repo=RELEASE_REPO)
    env = {k: v for k, v in guarded_env.items() if k != "ANTHROPIC_API_KEY"}
    for flags in (["--host", host.name], ["--ephemeral"], []):
        result = dispatch(path, env, *flags, "-t", "x")
        assert result.returncode == 2, (flags, result.stderr)
        assert "$ANTHROPIC_API_KEY is unset or empty" in result.stderr
        assert "Traceback" not in result.stderr
    assert not installed_binary(host).exists()


# --- usage errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["--host", "{w0}", "--all", "-t", "x"], "--host names one host"),
        (["--all", "--hosts", "{w0}", "-t", "x"], "give --all or --hosts, not both"),
        (["--all", "-t", "x", "--timeout", "0"], "--timeout must be more than 0 seconds"),
        (["--all", "-t", "x", "--timeout", "soon"], "--timeout must be a number of seconds"),
        (["--all"], "the task is empty"),
        (["--host", "nope", "-t", "x"], "unknown host 'nope'"),
        (["--all", "-t", "x", "--parallel", "0"], "--parallel"),
        (["--all", "-t", "x", "--ephemeral", "--no-deploy"], "cannot be combined with --no-deploy"),
    ],
)
def test_usage_errors_exit_2_with_one_line(workers, fleet_config, guarded_env, args, complaint):
    args = [a.format(w0=workers[0].name) for a in args]
    result = dispatch(fleet_config(hosts=workers), guarded_env, *args)
    assert result.returncode == 2
    assert complaint in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


# --- what PicoClaw prints, and the session it keeps -------------------------------------------------------


def session_files_left(host):
    sessions = host.home / ".picoclaw" / "workspace" / "sessions"
    return sorted(p.name for p in sessions.iterdir()) if sessions.exists() else []


def test_answer_is_bare_and_raw_keeps_picoclaws_stdout(workers, fleet_config, guarded_env):
    text = "I like \U0001f99e.\n\n\U0001f99e this line too\n"
    path = fleet_config(hosts=workers)
    inline = dispatch(path, guarded_env, "--host", workers[0].name, "-t", text)
    assert inline.returncode == 0, inline.stderr
    assert inline.stdout == text  # the answer as PicoClaw gave it (it ends in a newline), nothing before or after
    raw = dispatch(path, guarded_env, "--host", workers[0].name, "-t", "plain", "--raw")
    assert raw.stdout.startswith("\n\u2588\u2588") and raw.stdout.endswith("\n\U0001f99e plain\n")  # banner first
    result, _, hosts = dispatch_json(path, guarded_env, "--host", workers[0].name, "-t", "plain")
    answer = hosts[workers[0].name]
    assert answer["answer"] == "plain"
    assert answer["stdout"].replace("\r\n", "\n") == raw.stdout  # (text mode read the banner's \r\n as \n)
    assert "WRN" not in answer["stdout"]  # PicoClaw's log went to its file...
    assert '"level":"warn"' in answer["log"]  # ...and from there to `log`
    assert not list((workers[0].home / ".picoclaw").glob("fleet-*.log"))  # the file is gone


def test_each_task_has_its_own_session_and_it_is_removed(testbed, fresh, fleet_config, guarded_env):
    [host] = fresh()
    path = fleet_config(hosts=[host])
    for _ in range(3):
        result, _, hosts = dispatch_json(path, guarded_env, "--host", host.name, "-t", "::history::")
        assert hosts[host.name]["answer"] == "history=0"  # no task sees another's messages
    assert session_files_left(host) == []


def test_named_session_continues_and_is_kept(testbed, fresh, fleet_config, guarded_env):
    [host] = fresh()
    path = fleet_config(hosts=[host])
    dispatch(path, guarded_env, "--host", host.name, "--session", "triage", "-t", "remember 42")
    result, _, hosts = dispatch_json(path, guarded_env, "--host", host.name, "--session", "triage", "-t", "::history::")
    assert hosts[host.name]["answer"] == "history=2" and hosts[host.name]["session"] == "triage"
    assert session_files_left(host) == ["agent_main_triage.jsonl", "agent_main_triage.meta.json"]
    for bad in ("main", "a:b", "pcf-abc"):
        refused = dispatch(path, guarded_env, "--host", host.name, "--session", bad, "-t", "x")
        assert refused.returncode == 2 and "session" in refused.stderr and len(refused.stderr.splitlines()) == 1


def test_unrestricted_lifts_the_sandbox_for_one_run_only(testbed, fresh, fleet_config, guarded_env):
    [host] = fresh()
    path = fleet_config(hosts=[host])
    lifted = dispatch(path, guarded_env, "--host", host.name, "--unrestricted", "-t", "::env::")
    assert "restrict_to_workspace=false" in lifted.stdout
    again = dispatch(path, guarded_env, "--host", host.name, "-t", "::env::")
    assert "restrict_to_workspace=true" in again.stdout
    assert '"restrict_to_workspace": true' in (host.home / ".picoclaw" / "config.json").read_text()


def test_unprovisioned_picoclaw_fails_with_its_own_error(testbed, fresh, fleet_config, guarded_env):
    """A binary with no model chosen fails the way the real one does, and says so on stderr."""
    [host] = fresh(standin=False)
    testbed.install_standin(host, provision=False)
    result = dispatch(fleet_config(hosts=[host]), guarded_env, "--host", host.name, "-t", "x")
    assert result.returncode == 1 and result.stdout == ""
    assert 'Error: error creating provider: model "" not found in model_list' in result.stderr
