"""The REAL PicoClaw, deployed and driven through our CLI, against a fake LLM on 127.0.0.1.

Only ever inside a loopback-only network namespace (see harness/real_picoclaw.py):
the fixtures skip these tests anywhere else (and fail them when $CI is set).
Run them as `make test` does::

    unshare --net sh -c 'ip link set lo up; exec .venv/bin/python -m pytest -q tests/test_real_picoclaw.py'

The first tests check the harness itself (the fake LLM, the release server,
the real binary run by hand as a sim host's user) and need nothing new from
the product. The fleet tests then follow one module-scoped fleet of two
fresh hosts through deploy, re-deploy, upgrade, status, dispatch, sessions,
batch, timeout and teardown, in file order; a fleet test run on its own
deploys first (`deployed`), so each still says what the product did.
"""

import json
import stat
import threading
import time
import urllib.error
import urllib.request

import pytest

# The harness is also registered as a plugin (its fixtures) below; have it
# assertion-rewritten like a conftest before its first import here.
pytest.register_assert_rewrite("harness.real_picoclaw", "harness.fake_llm")

from harness.fake_llm import ANSWER_PREFIX, FakeLLM  # noqa: E402
from harness.real_picoclaw import (  # noqa: E402
    API_KEY, ARCHIVE_NAME, MODEL_ID, MODEL_NAME, NEW_TAG, OLD_TAG, RELEASE_REPO, binary_path, config_path,
    install_real_binary, picoclaw_dir, publish_real, read_security, security_path, session_files, sessions_dir,
    shown, write_picoclaw_config,
)

pytest_plugins = ["harness.real_picoclaw"]

OLD_VERSION = OLD_TAG[1:]
NEW_VERSION = NEW_TAG[1:]
#: PicoClaw's banner (first line of its block-letter logo) and answer marker on stdout.
BANNER = "██████╗ ██╗ ██████╗"
LOBSTER = "\U0001f99e "
#: Only there to stop a wait from hanging; no test measures time.
SETTLE_S = 15

#: For every test that needs the real builds: the netns/directory gate is set up before
#: anything else (the testbed's sshd included), so a skip is immediate and clean.
needs_real = pytest.mark.usefixtures("real_picoclaw_releases")


def answer(task):
    return ANSWER_PREFIX + task


def no_proxy_opener():
    """urllib without any *_proxy of the environment: the harness servers are on 127.0.0.1."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post_json(url, body, timeout=10):
    """(status, parsed JSON) of a POST to the fake LLM."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json",
                                                              "Authorization": "Bearer sk-unit"})
    try:
        with no_proxy_opener().open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def chat(*user_messages):
    messages = [{"role": "system", "content": "sys"}]
    for text in user_messages:
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]
    return {"model": MODEL_ID, "messages": messages[:-1], "max_tokens": 10}


def mode_of(path):
    return stat.S_IMODE(path.stat().st_mode)


def wait_until(predicate, what, timeout=SETTLE_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"gave up waiting for {what}")


# ==== the harness ====================================================================================


def test_fake_llm_answers_records_and_obeys_its_directives():
    with FakeLLM() as fake:
        assert fake.url.startswith("http://127.0.0.1:") and fake.url.endswith("/v1")
        status, body = post_json(fake.url + "/chat/completions", chat("first", "second"))
        assert status == 200 and body["object"] == "chat.completion"
        assert body["choices"][0]["message"] == {"role": "assistant", "content": answer("second")}
        assert body["choices"][0]["finish_reason"] == "stop" and "usage" in body
        (request,) = fake.requests
        assert request.path == "/v1/chat/completions" and request.header("authorization") == "Bearer sk-unit"
        assert fake.user_messages(request) == ["first", "second"] and request.body["model"] == MODEL_ID

        assert post_json(fake.url + "/chat/completions", chat("::empty::"))[1]["choices"][0]["message"]["content"] == ""
        status, body = post_json(fake.url + "/chat/completions", chat("::status=429::slow down"))
        assert status == 429 and body["error"]["code"] == 429
        fake.set_reply("fixed")
        assert post_json(fake.url + "/chat/completions", chat("x"))[1]["choices"][0]["message"]["content"] == "fixed"
        fake.set_reply(lambda req: "via " + fake.last_user_message(req))
        assert post_json(fake.url + "/chat/completions", chat("y"))[1]["choices"][0]["message"]["content"] == "via y"
        fake.set_reply()
        assert post_json(fake.url + "/models", {})[0] == 404
        assert len(fake.requests) == 6


def test_fake_llm_caps_bodies_and_wakes_sleepers_when_it_stops():
    fake = FakeLLM(max_body_bytes=1000).start()
    try:
        assert post_json(fake.url + "/chat/completions", chat("x" * 2000))[0] == 413
        results = []
        sleeper = threading.Thread(target=lambda: results.append(
            post_json(fake.url + "/chat/completions", chat("::sleep=100::zz"), timeout=60)))
        sleeper.start()
        assert len(fake.wait_for_requests(2, timeout=10)) == 2  # recorded before it sleeps
    finally:
        fake.stop()
    sleeper.join(timeout=10)
    assert not sleeper.is_alive() and results and results[0][0] == 503


@needs_real
def test_release_server_publishes_the_real_builds_as_github_would(real_picoclaw_releases, real_release_server):
    opener = no_proxy_opener()
    base = f"{real_release_server.url}/repos/{RELEASE_REPO}/releases"
    with opener.open(f"{base}/latest", timeout=10) as response:
        latest = json.loads(response.read())
    assert latest["tag_name"] == OLD_TAG
    release = real_picoclaw_releases[OLD_TAG]
    assets = {a["name"]: a for a in latest["assets"]}
    assert set(assets) == {ARCHIVE_NAME, f"picoclaw_{OLD_VERSION}_checksums.txt"}
    with opener.open(assets[ARCHIVE_NAME]["browser_download_url"], timeout=30) as response:
        assert response.read() == release.archive.read_bytes()
    with opener.open(assets[release.checksums_name]["browser_download_url"], timeout=10) as response:
        assert response.read() == release.checksums.read_bytes()
    with opener.open(f"{base}/tags/{NEW_TAG}", timeout=10) as response:
        assert json.loads(response.read())["tag_name"] == NEW_TAG


@needs_real
def test_harness_runs_the_real_binary_as_a_sim_host_against_the_fake_llm(testbed, real_picoclaw_releases, fake_llm):
    """No product code: the real binary, a hand-written config, the fake LLM. Proves the harness."""
    (host,) = testbed.add_hosts(1, prefix="rs")
    install_real_binary(testbed, host, real_picoclaw_releases[OLD_TAG])
    write_picoclaw_config(testbed, host, api_base=fake_llm.url, api_key="sk-harness-self-test")
    version = testbed.run_as(host, "NO_COLOR=1 ~/.local/bin/picoclaw version")
    assert version.returncode == 0 and f"{LOBSTER}picoclaw {OLD_VERSION} (git: cf67dd38)" in version.stdout

    mark = fake_llm.mark()
    run = testbed.run_as(host, "PICOCLAW_LOG_FILE=$HOME/picoclaw.log NO_COLOR=1 "
                               "~/.local/bin/picoclaw agent -s agent:main:selftest -m 'harness self-test' </dev/null",
                         timeout=60)
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert run.stdout.startswith("\n" + BANNER)
    assert run.stdout.endswith(f"\n{LOBSTER}{answer('harness self-test')}\n")
    (request,) = fake_llm.requests_since(mark)
    assert request.path == "/v1/chat/completions"
    assert request.header("Authorization") == "Bearer sk-harness-self-test"
    assert request.header("User-Agent") == f"PicoClaw/{OLD_VERSION}"
    assert request.body["model"] == MODEL_ID and request.body["messages"][0]["role"] == "system"
    assert fake_llm.user_messages(request) == ["harness self-test"]
    assert session_files(host, "agent_main_selftest.*") == ["agent_main_selftest.jsonl", "agent_main_selftest.meta.json"]
    assert not testbed.processes(host, "picoclaw")


# ==== the fleet: deploy, upgrade, status, dispatch, batch, teardown ===================================


@pytest.fixture(scope="module")
def fleet(real_fleet_factory):
    """Two fresh hosts with a config for the real builds and the fake LLM, shared in file order."""
    return real_fleet_factory(2, prefix="rp")


@pytest.fixture
def deployed(fleet):
    """The fleet, deployed (by test_deploy_... when it ran and passed, else here)."""
    if not fleet.state.get("deployed"):
        result = fleet.fab("deploy")
        assert result.returncode == 0, "deploy (prerequisite) failed: " + shown(result)
        fleet.state["deployed"] = True
    return fleet


def no_key_on_any_command_line(testbed, hosts, *texts):
    for host in hosts:
        log = testbed.command_log(host)
        assert log, f"nothing recorded for {host.name}"
        assert not [c for c in log if API_KEY in c], f"the API key was on a command line sshd ran for {host.name}"
    for text in texts:
        assert API_KEY not in text


def model_entry(config, name=MODEL_NAME):
    entries = [e for e in config.get("model_list", []) if e.get("model_name") == name]
    assert entries, f"no model_list entry named {name!r}"
    return entries[0]


@needs_real
def test_a_deploy_installs_the_latest_real_release_and_configures_its_model(testbed, fleet):
    result, data, by_name = fleet.fab_json("deploy")
    assert result.returncode == 0, shown(result)
    for host in fleet.hosts:
        h = by_name[host.name]
        assert h["status"] == "ok", h
        assert (h["binary"], h["version"], h["model"], h["model_name"]) == (
            "installed", OLD_VERSION, "configured", MODEL_NAME), h
        config = json.loads(config_path(host).read_text())
        assert config["agents"]["defaults"]["model_name"] == MODEL_NAME
        assert model_entry(config)["api_base"] == fleet.fake.url
        assert mode_of(picoclaw_dir(host)) == 0o700 and mode_of(security_path(host)) == 0o600
        keys = read_security(host)["model_list"][f"{MODEL_NAME}:0"]["api_keys"]
        assert API_KEY in keys
        version = testbed.run_as(host, "NO_COLOR=1 ~/.local/bin/picoclaw version")
        assert f"picoclaw {OLD_VERSION}" in version.stdout
    no_key_on_any_command_line(testbed, fleet.hosts, result.stdout, result.stderr)
    fleet.state["deployed"] = True


@needs_real
def test_b_redeploy_with_nothing_changed_changes_nothing(deployed):
    fleet = deployed
    files = [p for host in fleet.hosts for p in (config_path(host), security_path(host))]
    before = {p: p.stat().st_mtime_ns for p in files}
    result, data, by_name = fleet.fab_json("deploy")
    assert result.returncode == 0, shown(result)
    for host in fleet.hosts:
        h = by_name[host.name]
        assert (h["status"], h["binary"], h["model"], h["env"], h["uploaded_bytes"]) == (
            "ok", "unchanged", "unchanged", "unchanged", 0), h
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert data.get("uploaded_bytes", 0) == 0


@needs_real
def test_c_a_new_release_upgrades_and_status_reports_version_model_and_key(real_picoclaw_releases, deployed):
    fleet = deployed
    publish_real(fleet.server, real_picoclaw_releases[NEW_TAG], latest=True)
    result, data, by_name = fleet.fab_json("deploy")
    assert result.returncode == 0, shown(result)
    for host in fleet.hosts:
        assert (by_name[host.name]["binary"], by_name[host.name]["version"]) == ("upgraded", NEW_VERSION), by_name
    result, data, by_name = fleet.fab_json("status")
    assert result.returncode == 0, shown(result)
    for host in fleet.hosts:
        h = by_name[host.name]
        assert (h["version"], h["model"], h["api_key"], h["restrict_to_workspace"]) == (
            NEW_VERSION, MODEL_NAME, True, True), h
    no_key_on_any_command_line(fleet.testbed, fleet.hosts, result.stdout, result.stderr)


@needs_real
def test_d_dispatch_prints_only_the_answer_and_leaves_no_session_behind(deployed):
    fleet = deployed
    host = fleet.hosts[0]
    mark = fleet.fake.mark()

    result = fleet.fab("dispatch", "--host", host.name, "-t", "hello fleet")
    assert result.returncode == 0, shown(result)
    assert result.stdout == answer("hello fleet") + "\n"

    result, data, by_name = fleet.fab_json("dispatch", "--host", host.name, "-t", "hello fleet")
    assert result.returncode == 0, shown(result)
    h = by_name[host.name]
    assert h["status"] == "ok" and h["answer"] == answer("hello fleet"), h
    assert f"{LOBSTER}{answer('hello fleet')}" in h["stdout"], h

    result = fleet.fab("dispatch", "--host", host.name, "-t", "hello fleet", "--raw")
    assert result.returncode == 0, shown(result)
    assert BANNER in result.stdout and f"\n{LOBSTER}{answer('hello fleet')}\n" in result.stdout

    requests = fleet.fake.requests_since(mark)
    assert len(requests) == 3, [fleet.fake.user_messages(r) for r in requests]
    for request in requests:
        assert request.header("Authorization") == f"Bearer {API_KEY}"
        assert fleet.fake.user_messages(request) == ["hello fleet"]  # a fresh session each time
    assert session_files(host, "agent_main_*") == [], session_files(host)
    no_key_on_any_command_line(fleet.testbed, [host], result.stdout, result.stderr)


@needs_real
def test_e_a_named_session_carries_the_conversation_and_stays(deployed):
    fleet = deployed
    host = fleet.hosts[1]
    mark = fleet.fake.mark()
    first = fleet.fab("dispatch", "--host", host.name, "--session", "demo", "-t", "remember the word lobster")
    assert first.returncode == 0, shown(first)
    second = fleet.fab("dispatch", "--host", host.name, "--session", "demo", "-t", "what was the word?")
    assert second.returncode == 0, shown(second)
    assert second.stdout == answer("what was the word?") + "\n"
    requests = fleet.fake.requests_since(mark)
    assert len(requests) == 2, [fleet.fake.user_messages(r) for r in requests]
    assert fleet.fake.user_messages(requests[0]) == ["remember the word lobster"]
    assert fleet.fake.user_messages(requests[1]) == ["remember the word lobster", "what was the word?"]
    assert "agent_main_demo.jsonl" in session_files(host), session_files(host)


@needs_real
def test_f_batch_on_a_host_with_two_slots_keeps_each_task_to_itself(deployed):
    fleet = deployed
    host = fleet.hosts[1]
    config = fleet.config_with(max_tasks={host.name: 2})
    tasks = ["batch task one", "batch task two", "batch task three", "batch task four"]
    mark = fleet.fake.mark()
    args = [item for text in tasks for item in ("-t", text)]
    result, data, _ = fleet.fab_json("batch", "--hosts", host.name, *args, config=config)
    assert result.returncode == 0, shown(result)
    assert [t["status"] for t in data["tasks"]] == ["ok"] * 4, data["tasks"]
    assert [t["answer"] for t in data["tasks"]] == [answer(text) for text in tasks], data["tasks"]
    requests = fleet.fake.requests_since(mark)
    seen = [fleet.fake.user_messages(r) for r in requests]
    assert all(len(users) == 1 for users in seen), seen
    assert sorted(users[0] for users in seen) == sorted(tasks), seen


@needs_real
def test_g_a_task_past_its_timeout_is_stopped_and_picoclaw_ends(deployed):
    fleet = deployed
    host = fleet.hosts[0]
    mark = fleet.fake.mark()
    result, data, by_name = fleet.fab_json("dispatch", "--host", host.name, "-t", "::sleep=30::slow", "--timeout", "3")
    assert by_name[host.name]["status"] == "timeout", shown(result)
    assert fleet.fake.requests_since(mark), "PicoClaw never asked the fake LLM"
    wait_until(lambda: not fleet.testbed.processes(host, "picoclaw"), f"PicoClaw to end on {host.name}")
    # The remote shell outlived PicoClaw and cleaned up after it: no task session, no log file.
    wait_until(lambda: not session_files(host, "agent_main_pcf-*"), f"the task's session to be removed on {host.name}")
    assert not list(picoclaw_dir(host).glob("fleet-*.log"))


@needs_real
def test_h_teardown_purge_removes_binary_and_picoclaw_dir(deployed):
    fleet = deployed
    result, data, by_name = fleet.fab_json("teardown", "--purge", "--yes")
    assert result.returncode == 0, shown(result)
    for host in fleet.hosts:
        assert by_name[host.name]["status"] == "ok", by_name[host.name]
        assert not binary_path(host).exists()
        assert not picoclaw_dir(host).exists()
        assert not sessions_dir(host).exists()
    fleet.state["deployed"] = False
