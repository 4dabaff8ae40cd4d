"""`fab teardown` end to end on the real sshd testbed: what is removed, what is never touched."""

import os
import pty
import subprocess

import pytest

from fabfile.core.context import RunContext
from fabfile.core.config import Defaults, FleetConfig, HostEntry
from fabfile.ssh.fanout import fan_out
from fabfile.host.removal import teardown_host
from harness.cli import FAB, REPO, fab, fab_json
from harness.testbed import env_file, installed_binary


@pytest.fixture
def env(guarded_env):
    return dict(guarded_env)


def install(testbed, host):
    """A deployed-looking host: binary, .env, config, workspace, plus look-alikes that must survive."""
    testbed.install_standin(host, version="0.1.0")
    testbed.run_as(host, "mkdir -p ~/.picoclaw/workspace/sessions && chmod 700 ~/.picoclaw && "
                         "echo 'ANTHROPIC_API_KEY=x' > ~/.picoclaw/.env && echo '{}' > ~/.picoclaw/config.json && "
                         "echo s > ~/.picoclaw/workspace/sessions/s1 && "
                         "echo keep > ~/.local/bin/picoclaw-helper && mkdir -p ~/.picoclaw.bak && "
                         "echo keep > ~/.picoclaw.bak/config.json && echo keep > ~/.env")


def survivors_intact(host):
    assert (host.home / ".local/bin/picoclaw-helper").read_text() == "keep\n"
    assert (host.home / ".picoclaw.bak/config.json").read_text() == "keep\n"
    assert (host.home / ".env").read_text() == "keep\n"


def teardown(config_path, env, *args):
    return fab_json(["teardown", "--config", config_path, *args], env)


def test_teardown_removes_binary_and_env_only(testbed, fleet_config, env):
    hosts = testbed.add_hosts(2, prefix="td")
    for host in hosts:
        install(testbed, host)
    result, data, by_name = teardown(fleet_config(hosts), env, "--yes")
    assert result.returncode == 0, result.stderr
    for host in hosts:
        h = by_name[host.name]
        assert (h["status"], h["binary"], h["env"], h["picoclaw_dir"]) == ("ok", "removed", "removed", "kept")
        assert not installed_binary(host).exists() and not env_file(host).exists()
        assert (host.home / ".picoclaw/config.json").exists()
        assert (host.home / ".picoclaw/workspace/sessions/s1").exists()
        survivors_intact(host)
    assert data["purge"] is False and data["summary"] == {"ok": 2}


def test_teardown_is_idempotent(testbed, fleet_config, env):
    (host,) = testbed.add_hosts(1, prefix="td")
    install(testbed, host)
    path = fleet_config([host])
    assert teardown(path, env, "--yes", "--purge")[0].returncode == 0
    result, _, by_name = teardown(path, env, "--yes", "--purge")
    assert result.returncode == 0
    h = by_name[host.name]
    assert (h["status"], h["binary"], h["env"], h["picoclaw_dir"]) == ("ok", "absent", "absent", "absent")
    human = fab(["teardown", "--config", path, "--yes"], env)
    assert human.returncode == 0 and "absent" in human.stdout and "1 host: 1 ok" in human.stdout


def test_purge_removes_the_whole_picoclaw_dir_and_nothing_else(testbed, fleet_config, env):
    (host,) = testbed.add_hosts(1, prefix="td")
    install(testbed, host)
    result, _, by_name = teardown(fleet_config([host]), env, "--yes", "--purge")
    assert result.returncode == 0
    assert by_name[host.name]["picoclaw_dir"] == "removed"
    assert not (host.home / ".picoclaw").exists() and not installed_binary(host).exists()
    survivors_intact(host)


def test_commands_name_exact_quoted_paths_never_globs(testbed, fleet_config, env):
    (host,) = testbed.add_hosts(1, prefix="td")
    install(testbed, host)
    teardown(fleet_config([host]), env, "--yes", "--purge")
    commands = [c for c in testbed.command_log(host) if c != "sftp"]
    assert commands == [c for c in commands if "*" not in c and "?" not in c]
    (rm,) = [c for c in commands if c.startswith("rm ")]
    assert rm == f"rm -rf -- {host.home}/.picoclaw"  # shlex.quote leaves a plain path bare


def test_every_host_needs_yes_when_stdin_is_not_a_terminal(testbed, fleet_config, env):
    hosts = testbed.add_hosts(2, prefix="td")
    for host in hosts:
        install(testbed, host)
    path = fleet_config(hosts)
    for selection in ([], ["--hosts", ",".join(h.name for h in hosts)]):
        result = fab(["teardown", "--config", path, *selection], env)
        assert result.returncode == 2
        assert "pass --yes to confirm" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert all(installed_binary(h).exists() for h in hosts)
    assert all(testbed.command_log(h) == [] for h in hosts)  # no host was contacted
    subset = fab(["teardown", "--config", path, "--hosts", hosts[0].name], env)
    assert subset.returncode == 0, subset.stderr
    assert not installed_binary(hosts[0]).exists() and installed_binary(hosts[1]).exists()


def run_on_terminal(args, env, answer):
    """Run fab with a pseudo-terminal as stdin, answer its question; (exit code, stderr)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([FAB, *map(str, args)], cwd=REPO, env=env, stdin=slave,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.write(master, answer.encode())
        out, err = proc.communicate(timeout=300)
    finally:
        os.close(master)
        os.close(slave)
    return proc.returncode, out, err


@pytest.mark.parametrize("answer, removed", [("y\n", True), ("n\n", False), ("\n", False)])
def test_every_host_on_a_terminal_asks_once(testbed, fleet_config, env, answer, removed):
    hosts = testbed.add_hosts(2, prefix="td")
    for host in hosts:
        install(testbed, host)
    code, out, err = run_on_terminal(["teardown", "--config", fleet_config(hosts)], env, answer)
    assert err.count("Remove PicoClaw from all 2 hosts") == 1
    assert code == (0 if removed else 2), err
    assert all(installed_binary(h).exists() != removed for h in hosts)
    if not removed:
        assert "teardown cancelled: nothing was removed" in err


def test_faults_beside_healthy_hosts(testbed, fleet_config, env, closed_port):
    good, locked = testbed.add_hosts(2, prefix="td")
    for host in (good, locked):
        install(testbed, host)
    testbed.run_as(locked, "chmod 0555 ~/.local/bin")
    extra = [{"name": "refused", "host": "127.0.0.1", "port": closed_port, "user": "nobody"}]
    try:
        result, data, by_name = teardown(fleet_config([good, locked], extra), env, "--yes")
    finally:
        testbed.run_as(locked, "chmod 0755 ~/.local/bin")
    assert result.returncode == 1
    assert by_name[good.name]["status"] == "ok"
    assert by_name["refused"]["status"] == "unreachable"
    assert by_name[locked.name]["status"] == "failed"
    assert by_name[locked.name]["message"] == "cannot remove ~/.local/bin/picoclaw: permission denied"
    assert installed_binary(locked).exists()


def test_teardown_host_contract_for_other_verbs(testbed):
    (host,) = testbed.add_hosts(1, prefix="td")
    install(testbed, host)
    defaults = Defaults(known_hosts=str(testbed.known_hosts))
    entry = HostEntry(host.name, host.address, host.user, host.port, ssh_key=str(testbed.client_key))
    run = RunContext(FleetConfig(path=None, hosts=[entry], defaults=defaults), [entry])
    (report,) = fan_out(run, lambda cxn, e: teardown_host(cxn, e, purge=False)).reports
    assert report.ok and report.details.to_dict() == {"binary": "removed", "env": "removed", "picoclaw_dir": "kept"}
    assert (host.home / ".picoclaw/config.json").exists()
