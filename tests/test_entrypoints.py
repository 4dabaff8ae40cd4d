"""Every way in: `fab`, `invoke` (tasks.py), `make`, the `picoclaw-fleet` console script,
and the seed's ad-hoc calls on a host that no config names.

Each entry point is run for real, as a subprocess, against the testbed sshd,
and checked for the same behaviour: same verbs, same flags, same results and
exit codes. Teardown (with --purge, and run twice) is exercised through them.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import REPO
from harness.release_server import ReleaseServer
from harness.standin import standin_archive

BIN = Path(sys.executable).parent
FAB, INVOKE, CONSOLE = str(BIN / "fab"), str(BIN / "invoke"), str(BIN / "picoclaw-fleet")
VERBS = {"init", "status", "deploy", "dispatch", "batch", "teardown"}
DEV_TASKS = {"test", "lint", "bench"}
API_KEY = "sk-entrypoint-test-not-real"
TIMEOUT = 300


def run(argv, env, cwd=REPO, **kwargs):
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


def task_names(list_output):
    """Task names from `--list` output (Invoke's layout: two-space indent, name, then help)."""
    return {m.group(1) for m in re.finditer(r"^  ([a-z][\w-]*)", list_output, re.M)}


def flags(help_output):
    """Every long flag a `<verb> --help` shows."""
    return set(re.findall(r"--[a-z][\w-]*", help_output.split("Options:", 1)[-1]))


def project_version():
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


@pytest.fixture(scope="module")
def release_server():
    with ReleaseServer() as server:
        server.publish("sipeed/picoclaw", "v0.3.0",
                       {f"picoclaw_{arch}.tar.gz": standin_archive("0.3.0", arch)
                        for arch in ("Linux_x86_64", "Linux_arm64")})
        yield server


@pytest.fixture(scope="module")
def ep_hosts(testbed):
    return testbed.add_hosts(3, prefix="ep")


@pytest.fixture
def cli_env(tmp_path, home_env):
    """`home_env` plus a private download cache and a dummy API key."""
    return dict(home_env, XDG_CACHE_HOME=str(tmp_path / "cache"), ANTHROPIC_API_KEY=API_KEY)


@pytest.fixture
def ep_config(testbed, ep_hosts, release_server, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.touch()
    return testbed.write_config(tmp_path / "fleet.json", ep_hosts, github_api=release_server.url,
                                known_hosts=str(known_hosts))


def installed(testbed, host):
    """(binary present, .env present, ~/.picoclaw present) on a sim host, looked at behind the CLI's back."""
    probe = testbed.run_as(host, 'for p in .local/bin/picoclaw .picoclaw/.env .picoclaw; do '
                                 '[ -e "$HOME/$p" ] && echo yes || echo no; done')
    return tuple(line == "yes" for line in probe.stdout.split())


def assert_no_secret(*texts):
    for text in texts:
        assert API_KEY not in text


# --- same verbs, same flags -------------------------------------------------------------------


def test_every_entry_point_lists_the_same_verbs(cli_env, tmp_path):
    fab_tasks = task_names(run([FAB, "--list"], cli_env).stdout)
    assert VERBS <= fab_tasks
    invoke_tasks = task_names(run([INVOKE, "--list"], cli_env).stdout)
    assert invoke_tasks == fab_tasks | DEV_TASKS
    console = run([CONSOLE, "--list"], cli_env, cwd=tmp_path)  # any directory: no fabfile lookup
    assert console.returncode == 0, console.stderr
    assert task_names(console.stdout) == fab_tasks


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_entry_point_takes_the_same_flags(verb, cli_env, tmp_path):
    fab_flags = flags(run([FAB, verb, "--help"], cli_env).stdout)
    assert "--config" in fab_flags
    assert flags(run([INVOKE, verb, "--help"], cli_env).stdout) == fab_flags
    assert flags(run([CONSOLE, verb, "--help"], cli_env, cwd=tmp_path).stdout) == fab_flags


def test_console_script_version(cli_env, tmp_path):
    result = run([CONSOLE, "--version"], cli_env, cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == f"picoclaw-fleet {project_version()}"


def test_pip_install_builds_a_working_console_script(testbed, ep_hosts, ep_config, cli_env, tmp_path):
    """`pip install .` (built from a copy of the source, no network) gives `picoclaw-fleet` that runs
    from any directory, with the schema file packaged (status validates the config with it)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, source / name)
    if not (source / "README.md").exists():
        (source / "README.md").write_text("picoclaw-fleet\n")
    shutil.copytree(REPO / "fabfile", source / "fabfile", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    build = run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                 "--target", str(target), str(source)], cli_env, cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    script = target / "bin" / "picoclaw-fleet"
    assert script.exists()

    env = dict(cli_env, PYTHONPATH=f"{target}:{cli_env['PYTHONPATH']}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    version = run([str(script), "--version"], env, cwd=elsewhere)
    assert version.stdout.startswith(f"picoclaw-fleet {project_version()}\n"), version.stderr
    where = run([sys.executable, "-c", "import fabfile; print(fabfile.__file__)"], env, cwd=elsewhere)
    assert where.stdout.strip() == str(target / "fabfile" / "__init__.py")

    status = run([str(script), "status", "--config", str(ep_config), "--json"], env, cwd=elsewhere)
    assert status.returncode == 0, status.stderr
    assert [h["status"] for h in json.loads(status.stdout)["hosts"]] == ["ok", "ok", "ok"]


# --- the same run through each entry point -----------------------------------------------------------


def test_status_is_the_same_through_fab_invoke_make_and_console_script(ep_config, cli_env, tmp_path):
    outputs = {
        "fab": run([FAB, "status", "--config", str(ep_config), "--json"], cli_env),
        "invoke": run([INVOKE, "status", "--config", str(ep_config), "--json"], cli_env),
        "make": run(["make", "-s", "status", f"CONFIG={ep_config}", "ARGS=--json"], cli_env),
        "console": run([CONSOLE, "status", "--config", str(ep_config), "--json"], cli_env, cwd=tmp_path),
    }
    shapes = {}
    for name, result in outputs.items():
        assert result.returncode == 0, (name, result.stderr)
        data = json.loads(result.stdout)
        shapes[name] = [(h["name"], h["status"], h["arch"]) for h in data["hosts"]]
    assert len({tuple(v) for v in shapes.values()}) == 1, shapes


def test_make_verbs_deploy_dispatch_teardown_and_invoke_teardown(testbed, ep_hosts, ep_config, cli_env):
    """make deploy / dispatch TASK=... (quotes and $ intact) / teardown, then teardown again via
    invoke and the console script: --purge removes ~/.picoclaw, and a second teardown is a no-op."""
    first = ep_hosts[0].name
    deploy = run(["make", "-s", "deploy", f"CONFIG={ep_config}"], cli_env)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert all(installed(testbed, h) == (True, True, True) for h in ep_hosts)

    text = """it's "quoted" $HOME `id` & done"""
    dispatch = run(["make", "-s", "dispatch", f"CONFIG={ep_config}", f"HOST={first}", f"TASK={text}"], cli_env)
    assert dispatch.returncode == 0, dispatch.stderr
    assert dispatch.stdout.endswith(text + "\n")

    teardown = run(["make", "-s", "teardown", f"CONFIG={ep_config}", f"HOSTS={first}", "ARGS=--purge --json"], cli_env)
    assert teardown.returncode == 0, teardown.stderr
    report = json.loads(teardown.stdout)["hosts"][0]
    assert (report["binary"], report["env"], report["picoclaw_dir"]) == ("removed", "removed", "removed")
    assert installed(testbed, ep_hosts[0]) == (False, False, False)

    via_invoke = run([INVOKE, "teardown", "--config", str(ep_config), "--yes", "--json"], cli_env)
    assert via_invoke.returncode == 0, via_invoke.stderr
    states = {h["name"]: (h["binary"], h["env"], h["picoclaw_dir"]) for h in json.loads(via_invoke.stdout)["hosts"]}
    assert states[first] == ("absent", "absent", "kept")
    assert all(states[h.name] == ("removed", "removed", "kept") for h in ep_hosts[1:])
    assert all(installed(testbed, h) == (False, False, True) for h in ep_hosts[1:])  # kept without --purge

    again = run([CONSOLE, "teardown", "--config", str(ep_config), "--yes", "--purge", "--json"], cli_env)
    assert again.returncode == 0, again.stderr
    assert [h["binary"] for h in json.loads(again.stdout)["hosts"]] == ["absent"] * 3
    assert all(installed(testbed, h) == (False, False, False) for h in ep_hosts)
    assert_no_secret(deploy.stdout, deploy.stderr, dispatch.stdout, teardown.stdout, via_invoke.stdout)


def test_make_batch_runs_a_task_file(testbed, ep_hosts, ep_config, cli_env, tmp_path):
    for host in ep_hosts:
        testbed.install_standin(host, version="0.3.0")
    tasks = tmp_path / "my tasks.txt"  # a space: FILE reaches fab as one argument
    tasks.write_text("# one task a line\nfirst job\nsecond job\n")
    result = run(["make", "-s", "batch", f"CONFIG={ep_config}", f"FILE={tasks}", "ARGS=--json"], cli_env)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert [(t["id"], t["status"], t["answer"]) for t in report["tasks"]] == [
        (2, "ok", "first job"), (3, "ok", "second job")]


@pytest.mark.parametrize("target, variable", [("dispatch", "TASK"), ("batch", "FILE")])
def test_make_verbs_say_what_they_need(target, variable, cli_env):
    result = run(["make", "-s", target], cli_env)
    assert result.returncode == 2
    assert f"usage: make {target} {variable}=" in result.stderr


def test_invoke_dev_tasks_run_the_makefile_targets(cli_env):
    """`invoke lint` runs `make lint` (pyflakes over our code); a dry run shows `invoke test` does the same."""
    result = run([INVOKE, "--dry", "test", "--args", "-k init -x"], cli_env)
    assert result.returncode == 0, result.stderr
    assert "make test PYTEST_ARGS='-k init -x'" in result.stdout
    for task in ("lint", "bench"):
        dry = run([INVOKE, "--dry", task], cli_env)
        assert f"make {task}" in dry.stdout, dry.stderr
    make_dry = run(["make", "-n", "lint"], cli_env)
    assert "pyflakes" in make_dry.stdout


def test_usage_error_is_exit_2_through_every_entry_point(cli_env, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hosts": [{"name": "x"}]}')
    for argv, cwd in (
        ([FAB, "status", "--config", str(bad)], REPO),
        ([INVOKE, "status", "--config", str(bad)], REPO),
        ([CONSOLE, "status", "--config", str(bad)], tmp_path),
    ):
        result = run(argv, cli_env, cwd=cwd)
        assert result.returncode == 2, argv
        assert result.stderr.startswith("picoclaw-fleet: invalid config") and "Traceback" not in result.stderr
    via_make = run(["make", "-s", "status", f"CONFIG={bad}"], cli_env)
    assert via_make.returncode == 2 and "invalid config" in via_make.stderr


@pytest.mark.parametrize("argv", [["status", "--bogus"], ["statuz"], ["dispatch", "--task"], ["--bogus"],
                                  ["--help", "statuz"]])
def test_a_command_line_the_console_script_cannot_parse_is_one_line_and_exit_2(argv, cli_env, tmp_path):
    """An unknown verb or flag, or a flag without its value: exit 2 like any usage error (1 would read
    as a failed host to an agent), one line, and no host contacted (there is no config at all)."""
    result = run([CONSOLE, *argv], cli_env, cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stderr.startswith("picoclaw-fleet: ") and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stdout == ""


# --- the seed's calls on a host that is in no config -------------------------------------------------------


def test_seed_calls_work_on_an_adhoc_host_without_any_config(testbed, cli_env, standin_path, tmp_path):
    """deploy <host> <user> <arch> [ssh_key] / dispatch <host> <user> <task> [timeout] / fleet-status,
    as `fab -i KEY <verb> --hosts user@host[:port]`, with no fleet config anywhere."""
    host = testbed.add_hosts(1, prefix="seed")[0]
    target = f"{host.user}@127.0.0.1:{host.port}"
    key = str(testbed.client_key)
    env = dict(cli_env, PICOCLAW_FLEET_CONFIG=str(tmp_path / "absent" / "fleet.json"))

    deploy = run([FAB, "-i", key, "deploy", "--hosts", target, "--from-file", str(standin_path)], env)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert installed(testbed, host)[:2] == (True, True)

    dispatch = run([FAB, "-i", key, "dispatch", "--host", target, "--task", "seed task", "--timeout", "60"], env)
    assert (dispatch.returncode, dispatch.stdout) == (0, "seed task\n"), dispatch.stderr

    status = run([FAB, "-i", key, "status", "--hosts", target, "--json"], env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["hosts"][0]["version"] == "0.1.0"

    teardown = run([FAB, "-i", key, "teardown", "--hosts", target, "--purge"], env)
    assert teardown.returncode == 0, teardown.stderr
    assert installed(testbed, host) == (False, False, False)
    assert not (tmp_path / "absent").exists()  # no template was written for an ad-hoc run
    assert_no_secret(deploy.stdout + deploy.stderr, dispatch.stderr, status.stdout, teardown.stdout)
