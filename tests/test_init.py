"""`fab init`, ad-hoc targets without a config, and Fabric's `-i` reaching our connections.

Every case runs the real `fab` in a subprocess with HOME pointed at a temp
dir (so neither the user's ~/.ssh nor their fleet config is read or written)
and checks what a sysadmin would: the file on disk, the one-line error,
the exit code, and -- where hosts are involved -- a real `fab status` against
the testbed sshd.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from fabfile.core.config import TEMPLATE, load_config
from harness.cli import FAB, REPO



@pytest.fixture(scope="module")
def init_hosts(testbed):
    return testbed.add_hosts(2, prefix="in")


def fab(args, env):
    return subprocess.run([FAB, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def assert_usage_error(result, fragment):
    """Exit 2, nothing on stdout, one line on stderr that says `fragment`."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert fragment in lines[0], lines[0]


# --- the template ---------------------------------------------------------------------------


def test_init_writes_template_then_refuses_without_force(tmp_path, home_env):
    path = tmp_path / "cfg" / "fleet.json"
    first = fab(["init", "--config", str(path)], home_env)
    assert first.returncode == 0, first.stderr
    assert json.loads(path.read_text()) == TEMPLATE
    assert f"wrote a template config at {path}" in first.stdout

    path.write_text('{"hosts": [], "defaults": {}}\n')
    again = fab(["init", "--config", str(path)], home_env)
    assert_usage_error(again, "already exists: pass --force")
    assert path.read_text() == '{"hosts": [], "defaults": {}}\n'

    forced = fab(["init", "--config", str(path), "--force"], home_env)
    assert forced.returncode == 0, forced.stderr
    assert json.loads(path.read_text()) == TEMPLATE


def test_init_default_path_follows_env_then_home(tmp_path, home_env):
    result = fab(["init"], home_env)
    assert result.returncode == 0, result.stderr
    default = Path(home_env["HOME"]) / ".openclaw/workspace/config/picoclaw-fleet.json"
    assert json.loads(default.read_text()) == TEMPLATE

    env_path = tmp_path / "from-env.json"
    result = fab(["init"], dict(home_env, PICOCLAW_FLEET_CONFIG=str(env_path)))
    assert result.returncode == 0, result.stderr
    assert env_path.exists()


# --- --host -----------------------------------------------------------------------------------


def test_init_hosts_create_a_config_that_status_can_use(testbed, init_hosts, tmp_path, home_env):
    """--host twice (one named), then `fab -i KEY status` reaches both: the whole seed-user path."""
    path = tmp_path / "fleet.json"
    first, second = init_hosts
    result = fab(
        [
            "init", "--config", str(path),
            "--host", f"{first.user}@127.0.0.1:{first.port}",
            "--host", f"second={second.user}@127.0.0.1:{second.port}",
        ],
        home_env,
    )
    # Both unnamed targets would be called "127.0.0.1": the second one needs its NAME=.
    assert result.returncode == 0, result.stderr
    assert f"added 2 hosts to {path}: 127.0.0.1, second" in result.stdout
    fleet = load_config(str(path))
    assert [(h.name, h.host, h.user, h.port) for h in fleet.hosts] == [
        ("127.0.0.1", "127.0.0.1", first.user, first.port),
        ("second", "127.0.0.1", second.user, second.port),
    ]

    known_hosts = tmp_path / "known_hosts"
    config = json.loads(path.read_text())
    config["defaults"]["known_hosts"] = str(known_hosts)
    path.write_text(json.dumps(config))
    status = fab(["-i", str(testbed.client_key), "status", "--config", str(path), "--json"], home_env)
    assert status.returncode == 0, status.stderr
    assert [h["status"] for h in json.loads(status.stdout)["hosts"]] == ["ok", "ok"]


def test_init_host_appends_to_existing_config_and_keeps_defaults(tmp_path, home_env):
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"hosts": [{"name": "a", "host": "127.0.0.1", "user": "u"}],
                                "defaults": {"timeout": 33}}))
    result = fab(["init", "--config", str(path), "--host", "b=pi@127.0.0.2:2200,c=pi@127.0.0.3"], home_env)
    assert result.returncode == 0, result.stderr
    data = json.loads(path.read_text())
    assert [h["name"] for h in data["hosts"]] == ["a", "b", "c"]
    assert data["hosts"][1] == {"name": "b", "host": "127.0.0.2", "user": "pi", "port": 2200}
    assert data["defaults"] == {"timeout": 33}


def test_init_host_replaces_the_template_example_host(tmp_path, home_env):
    """Appending beside the template's 192.168.50.57 would make it a host we contact: it goes."""
    path = tmp_path / "fleet.json"
    assert fab(["init", "--config", str(path)], home_env).returncode == 0
    result = fab(["init", "--config", str(path), "--host", "pi-1=pi@127.0.0.1"], home_env)
    assert result.returncode == 0, result.stderr
    data = json.loads(path.read_text())
    assert data["hosts"] == [{"name": "pi-1", "host": "127.0.0.1", "user": "pi"}]
    assert "192.168.50.57" not in path.read_text()


def test_init_host_force_starts_a_new_config(tmp_path, home_env):
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"hosts": [{"name": "old", "host": "127.0.0.1", "user": "u"}]}))
    result = fab(["init", "--config", str(path), "--force", "--host", "new=pi@127.0.0.1"], home_env)
    assert result.returncode == 0, result.stderr
    assert [h["name"] for h in json.loads(path.read_text())["hosts"]] == ["new"]


@pytest.mark.parametrize(
    "targets, fragment",
    [
        (["a=pi@127.0.0.9"], "host name already in the config: a (nothing was added"),
        (["x=pi@127.0.0.9", "x=pi@127.0.0.8"], "host name already in the config: x"),
        (["bad name=pi@127.0.0.9"], "invalid config: hosts[1].name"),
        (["pi@127.0.0.9:99999"], "the port must be a number from 1 to 65535"),
        (["127.0.0.9"], "expected [NAME=]user@addr[:port]"),
    ],
)
def test_init_host_refusals_leave_the_file_untouched(tmp_path, home_env, targets, fragment):
    path = tmp_path / "fleet.json"
    original = json.dumps({"hosts": [{"name": "a", "host": "127.0.0.1", "user": "u"}]})
    path.write_text(original)
    args = ["init", "--config", str(path)]
    for target in targets:
        args += ["--host", target]
    assert_usage_error(fab(args, home_env), fragment)
    assert path.read_text() == original
    assert [p.name for p in tmp_path.iterdir()] == ["fleet.json", "home"]  # no temp file left


def test_init_host_refuses_to_add_to_an_unreadable_config(tmp_path, home_env):
    path = tmp_path / "fleet.json"
    path.write_text('{"hosts": [}')
    assert_usage_error(fab(["init", "--config", str(path), "--host", "pi@127.0.0.1"], home_env), "invalid JSON at line 1")
    assert path.read_text() == '{"hosts": [}'


# --- --from-ssh-config --------------------------------------------------------------------------


def ssh_config_text(testbed, hosts):
    """An ssh config as a sysadmin writes one: aliases for the sim hosts, a wildcard, a jump."""
    blocks = [
        "Host *\n  ServerAliveInterval 30\n",
        "Host *.lan !skip.lan\n  User nobody\n",
    ]
    for index, host in enumerate(hosts, start=1):
        blocks.append(
            f"Host board-{index}\n  HostName 127.0.0.1\n  Port {host.port}\n"
            f"  User {host.user}\n  IdentityFile {testbed.client_key}\n"
        )
    blocks.append(f"Host behind\n  HostName 127.0.0.1\n  User {hosts[0].user}\n  ProxyJump board-1\n")
    return "\n".join(blocks)


def test_init_from_ssh_config_runtime_file(testbed, init_hosts, tmp_path, home_env):
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(ssh_config_text(testbed, init_hosts))
    path = tmp_path / "fleet.json"
    result = fab(["-S", str(ssh_config), "init", "--from-ssh-config", "--config", str(path)], home_env)
    assert result.returncode == 0, result.stderr
    assert "added 3 hosts" in result.stdout and "behind, board-1, board-2" in result.stdout
    hosts = {h["name"]: h for h in json.loads(path.read_text())["hosts"]}
    assert sorted(hosts) == ["behind", "board-1", "board-2"]  # the wildcard blocks are not hosts
    assert hosts["board-2"] == {
        "name": "board-2", "host": "127.0.0.1", "user": init_hosts[1].user,
        "port": init_hosts[1].port, "ssh_key": str(testbed.client_key),
    }
    assert hosts["behind"]["gateway"] == "board-1"

    config = json.loads(path.read_text())
    config["defaults"]["known_hosts"] = str(tmp_path / "known_hosts")
    path.write_text(json.dumps(config))
    status = fab(["status", "--config", str(path), "--hosts", "board-*", "--json"], home_env)
    assert status.returncode == 0, status.stderr
    assert [h["status"] for h in json.loads(status.stdout)["hosts"]] == ["ok", "ok"]


def test_init_from_ssh_config_reads_home_ssh_config_and_combines_with_host(
    testbed, init_hosts, tmp_path, home_env
):
    ssh_dir = Path(home_env["HOME"]) / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "config").write_text(ssh_config_text(testbed, init_hosts[:1]))
    path = tmp_path / "fleet.json"
    result = fab(["init", "--from-ssh-config", "--host", "extra=pi@127.0.0.7", "--config", str(path)], home_env)
    assert result.returncode == 0, result.stderr
    assert [h["name"] for h in json.loads(path.read_text())["hosts"]] == ["behind", "board-1", "extra"]

    again = fab(["init", "--from-ssh-config", "--config", str(path)], home_env)
    assert_usage_error(again, "host name already in the config: behind, board-1")


def test_init_from_ssh_config_without_concrete_hosts(tmp_path, home_env):
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host *\n  User x\nHost *.lan\n  Port 2222\n")
    path = tmp_path / "fleet.json"
    result = fab(["-S", str(ssh_config), "init", "--from-ssh-config", "--config", str(path)], home_env)
    assert_usage_error(result, "names no concrete Host alias")
    assert not path.exists()


def test_init_from_ssh_config_skips_multi_hop_jump_with_a_warning(tmp_path, home_env):
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host ok\n  HostName 127.0.0.1\n  User u\nHost far\n  ProxyJump a@127.0.0.2,b@127.0.0.3\n")
    path = tmp_path / "fleet.json"
    result = fab(["-S", str(ssh_config), "init", "--from-ssh-config", "--config", str(path)], home_env)
    assert result.returncode == 0, result.stderr
    assert "skipped far: its ProxyJump" in result.stderr
    assert [h["name"] for h in json.loads(path.read_text())["hosts"]] == ["ok"]


# --- ad-hoc targets without a config, and fab -i -------------------------------------------------


def test_adhoc_target_needs_no_config_and_fab_identity_reaches_connections(testbed, init_hosts, tmp_path, home_env):
    """The seed's `fleet-status` on a host not in any config: `fab -i KEY status --hosts user@host:port`.

    Without -i there is no key to offer (private HOME, no agent): auth fails.
    With Fabric's own -i the same command succeeds, so -i reaches our
    connections. Neither run writes a template config.
    """
    host = init_hosts[0]
    target = f"{host.user}@127.0.0.1:{host.port}"
    missing = tmp_path / "no-such-config.json"

    without_key = fab(["status", "--config", str(missing), "--hosts", target, "--json"], home_env)
    assert without_key.returncode == 1, without_key.stderr
    assert json.loads(without_key.stdout)["hosts"][0]["status"] == "auth-failed"

    with_key = fab(["-i", str(testbed.client_key), "status", "--config", str(missing), "--hosts", target, "--json"],
                   home_env)
    assert with_key.returncode == 0, with_key.stderr
    report = json.loads(with_key.stdout)["hosts"][0]
    assert (report["name"], report["status"], report["address"]) == ("127.0.0.1", "ok", target)
    assert not missing.exists()
    # accept-new recorded the key in the default known_hosts under the private HOME
    known_hosts = Path(home_env["HOME"]) / ".ssh" / "known_hosts"
    assert f"[127.0.0.1]:{host.port}" in known_hosts.read_text()


def test_named_host_with_missing_config_still_writes_the_template(tmp_path, home_env):
    path = tmp_path / "fleet.json"
    result = fab(["status", "--config", str(path), "--hosts", "pi-1,pi@127.0.0.1"], home_env)
    assert_usage_error(result, "wrote a template config")
    assert json.loads(path.read_text()) == TEMPLATE


def test_adhoc_only_with_existing_config_uses_its_defaults(testbed, init_hosts, tmp_path, home_env):
    """An existing config is still read (and validated) for an ad-hoc run: its defaults apply."""
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"hosts": [], "defaults": {"host_key_policy": "strict",
                                                          "known_hosts": str(tmp_path / "empty")}}))
    host = init_hosts[0]
    result = fab(["-i", str(testbed.client_key), "status", "--config", str(path),
                  "--hosts", f"{host.user}@127.0.0.1:{host.port}", "--json"], home_env)
    assert result.returncode == 1
    assert json.loads(result.stdout)["hosts"][0]["status"] == "hostkey-rejected"

    path.write_text('{"hosts": "nope"}')
    assert_usage_error(fab(["status", "--config", str(path), "--hosts", "u@127.0.0.1"], home_env), "invalid config")


def test_init_leaves_no_secret_or_env_behind(tmp_path, home_env):
    """init only writes the config: no key material, whatever the environment holds."""
    path = tmp_path / "fleet.json"
    env = dict(home_env, ANTHROPIC_API_KEY="sk-init-test-secret")
    result = fab(["init", "--config", str(path), "--host", "pi@127.0.0.1"], env)
    assert result.returncode == 0
    assert "sk-init-test-secret" not in path.read_text() + result.stdout + result.stderr
    assert os.stat(path).st_mode & 0o777 == 0o644


# --- host specs and files init cannot write: one line, exit 2, the file as it was ----------------------


@pytest.mark.parametrize(
    "target, fragment",
    [
        ("a@b@c", "bad --host 'a@b@c': expected user@host[:port], with exactly one @"),
        ("n=a@b@c", "bad --host 'a@b@c': expected user@host[:port], with exactly one @"),
        ("u@", "bad --host 'u@': the host after @ is empty"),
        ("@h", "the user before @ is empty"),
        ("u@h:", "the port must be a number from 1 to 65535"),
        ("u@h:²", "the port must be a number from 1 to 65535"),
        ("u@[::1]:2222", "bad --host 'u@[::1]:2222': '::1' cannot be a host name"),
        ("u@[::1]:0", "the port must be a number from 1 to 65535"),
        (",,", "no hosts selected: --host ',,' names none"),
    ],
)
def test_init_bad_host_specs(tmp_path, home_env, target, fragment):
    path = tmp_path / "fleet.json"
    assert_usage_error(fab(["init", "--config", str(path), "--host", target], home_env), fragment)
    assert not path.exists()


def test_init_ipv6_host_with_a_name(tmp_path, home_env):
    path = tmp_path / "fleet.json"
    result = fab(["init", "--config", str(path), "--host", "v6=pi@[::1]:2222", "--host", "bare=pi@::1"], home_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(path.read_text())["hosts"] == [
        {"name": "v6", "host": "::1", "user": "pi", "port": 2222},
        {"name": "bare", "host": "::1", "user": "pi"},
    ]
    fleet = load_config(str(path))
    assert [h.address for h in fleet.hosts] == ["pi@[::1]:2222", "pi@[::1]"]


def test_init_cannot_write_under_a_file(tmp_path, home_env):
    (tmp_path / "a-file").write_text("x")
    path = tmp_path / "a-file" / "fleet.json"
    assert_usage_error(fab(["init", "--config", str(path)], home_env),
                       f"cannot write a template config at {path}: {tmp_path / 'a-file'} is not a directory")
    assert_usage_error(fab(["init", "--config", str(path), "--host", "pi@127.0.0.1"], home_env),
                       f"cannot write config {path}: {tmp_path / 'a-file'} is not a directory")


def test_init_cannot_write_in_a_read_only_directory(tmp_path, home_env):
    from harness.cli import FAB
    from harness.faults import run_with_read_only

    directory = tmp_path / "ro"
    directory.mkdir()
    existing = directory / "fleet.json"
    existing.write_text('{"hosts": []}\n')
    result = run_with_read_only(directory, [FAB, "init", "--config", existing, "--host", "pi@127.0.0.1"], home_env)
    assert_usage_error(result, f"cannot write config {existing}: {directory} is not writable")
    assert existing.read_text() == '{"hosts": []}\n'
    fresh = directory / "sub" / "fleet.json"
    result = run_with_read_only(directory, [FAB, "init", "--config", fresh], home_env)
    assert_usage_error(result, f"cannot write a template config at {fresh}: {directory} is not writable")


@pytest.mark.parametrize("port", ["99999", "²", "0x16"])
def test_init_from_ssh_config_with_a_bad_port(tmp_path, home_env, port):
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Host box\n  HostName 127.0.0.1\n  Port {port}\n")
    path = tmp_path / "fleet.json"
    result = fab(["-S", str(ssh_config), "init", "--from-ssh-config", "--config", str(path)], home_env)
    assert_usage_error(result, f"ssh config: Host box has Port '{port}', not a number from 1 to 65535")


def test_init_host_beside_a_config_with_odd_names_is_one_line(tmp_path, home_env):
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"hosts": [{"name": [1], "host": "h", "user": "u"}]}))
    assert_usage_error(fab(["init", "--config", str(path), "--host", "pi@127.0.0.1"], home_env),
                       "invalid config: hosts[0].name: [1] is not of type 'string'")
