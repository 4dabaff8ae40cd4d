"""`fab deploy` end to end: the real CLI, the real sshd testbed, a real local release server.

Each test makes its own sim hosts (prefix "dp") so that host state never
leaks between tests or into other engineers' tests sharing the sshd.
"""

import hashlib
import json
import stat
import subprocess
import threading
import time

import pytest

from fabfile.core.context import RunContext
from fabfile.core.config import Defaults, FleetConfig, HostEntry
from fabfile.ssh.fanout import fan_out
from fabfile.host.install import deploy_host, deploy_plan
from fabfile.core.errors import UsageError
from fabfile.host.release import extract_binary
from harness.cli import API_KEY, FAB, REPO, fab, fab_json
from harness.release_server import RELEASE_REPO, ReleaseServer
from harness.standin import build_standin, standin_archive
from harness.testbed import env_file, installed_binary

import yaml

ARCHES = {"x86_64": "amd64", "arm64": "arm64", "riscv64": "riscv64", "armv7": "armv7"}


def upstream_assets(version):
    return {f"picoclaw_Linux_{name}.tar.gz": standin_archive(version, f"Linux_{name}") for name in ARCHES}


def sha(data):
    return hashlib.sha256(data).hexdigest()


def mode_of(path):
    return stat.S_IMODE(path.stat().st_mode)


def run_installed(testbed, host, args="version"):
    return testbed.run_as(host, f"$HOME/.local/bin/picoclaw {args}")


def installed_version(testbed, host):
    """What the installed binary says its version is (the line after its banner)."""
    from fabfile.host.facts import parse_version

    return parse_version(run_installed(testbed, host).stdout)


def put_file(host, path, text):
    """Write a file in the sim host's home as its user would (0600, directories 0700)."""
    import os
    import pwd

    owner = pwd.getpwnam(host.user)
    target = host.home / path
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(target.parent, owner.pw_uid, owner.pw_gid)
    target.write_text(text)
    target.chmod(0o600)
    os.chown(target, owner.pw_uid, owner.pw_gid)


def picoclaw_config(host):
    return json.loads((host.home / ".picoclaw" / "config.json").read_text())


def security(host):
    return yaml.safe_load((host.home / ".picoclaw" / ".security.yml").read_text())


@pytest.fixture
def server():
    with ReleaseServer() as srv:
        srv.publish(RELEASE_REPO, "v0.1.0", upstream_assets("0.1.0"), latest=False)
        srv.publish(RELEASE_REPO, "v0.2.0", upstream_assets("0.2.0"))
        yield srv


@pytest.fixture
def env(guarded_env, tmp_path):
    """The CLI's environment: the API key set, a private download cache, no GitHub token."""
    environ = dict(guarded_env)
    for name in ("GITHUB_TOKEN", "PROVIDER", "API_KEY_ENV", "OPENAI_API_KEY"):
        environ.pop(name, None)
    environ["ANTHROPIC_API_KEY"] = API_KEY
    environ["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    return environ


@pytest.fixture
def config(fleet_config, server):
    """Factory: a config for `hosts` that takes releases from the local server."""
    def make(hosts, extra_hosts=(), **defaults):
        defaults.setdefault("github_api", server.url)
        defaults.setdefault("release_repo", RELEASE_REPO)
        return fleet_config(hosts, extra_hosts, **defaults)

    return make


def deploy(config_path, env, *args, timeout=300):
    return fab_json(["deploy", "--config", config_path, *args], env, timeout)


def no_secret_anywhere(testbed, hosts, *texts):
    """The key is on no command line sshd ran for these hosts, and in none of `texts`."""
    for host in hosts:
        log = testbed.command_log(host)
        assert log, f"nothing recorded for {host.name}"
        assert not [c for c in log if API_KEY in c], f"API key on a command line of {host.name}"
    for text in texts:
        assert API_KEY not in text


# ---- the happy path ----------------------------------------------------------------------


def test_first_deploy_installs_binary_env_and_onboards(testbed, server, config, env):
    hosts = testbed.add_hosts(2, prefix="dp")
    path = config(hosts)
    result, data, by_name = deploy(path, env)
    assert result.returncode == 0, result.stderr
    expected = extract_binary(upstream_assets("0.2.0")["picoclaw_Linux_x86_64.tar.gz"], "x")
    for host in hosts:
        h = by_name[host.name]
        assert (h["status"], h["binary"], h["version"], h["env"], h["onboard"]) == ("ok", "installed", "0.2.0", "written", "ran")
        assert (h["model"], h["model_name"], h["restrict_to_workspace"]) == ("configured", "claude-sonnet-4.6", True)
        written = [".picoclaw/.env", ".picoclaw/config.json", ".picoclaw/.security.yml", ".picoclaw/.fleet-version"]
        assert h["arch"] == "amd64"
        assert h["uploaded_bytes"] == len(expected) + sum((host.home / f).stat().st_size for f in written)
        binary = installed_binary(host)
        # the status probe's note: the version, and a second name of the very binary it describes
        assert (host.home / ".picoclaw/.fleet-version").read_text() == "0.2.0\n"
        assert (host.home / ".picoclaw/.fleet-binary").samefile(binary)
        assert binary.read_bytes() == expected and mode_of(binary) == 0o755
        assert binary.stat().st_uid == host.home.stat().st_uid
        assert mode_of(host.home / ".picoclaw") == 0o700 and mode_of(env_file(host)) == 0o600
        assert picoclaw_config(host)["agents"]["defaults"]["model_name"] == "claude-sonnet-4.6"
        assert security(host)["model_list"]["claude-sonnet-4.6:0"] == {"api_keys": [API_KEY]}
        assert mode_of(host.home / ".picoclaw" / ".security.yml") == 0o600
        assert mode_of(host.home / ".picoclaw" / "config.json") == 0o600
        assert installed_version(testbed, host) == "0.2.0"
        assert sorted(p.name for p in binary.parent.iterdir()) == ["picoclaw"]  # no temp file left
    assert data["release"] == {"repo": RELEASE_REPO, "tag": "v0.2.0", "version": "0.2.0", "verification": "checksums"}
    assert data["summary"] == {"ok": 2}
    assert data["uploaded_bytes"] >= 2 * len(expected)
    assert len(server.api_requests()) == 1  # resolved once per run, not once per host
    assert len(server.downloads("picoclaw_Linux_x86_64.tar.gz")) == 1  # downloaded once for both hosts
    no_secret_anywhere(testbed, hosts, result.stdout, result.stderr)


def test_picoclaw_finds_model_and_key_without_any_environment(testbed, config, env):
    """PicoClaw reads no key from the environment: the files alone must make it work."""
    (host,) = testbed.add_hosts(1, prefix="dp")
    result, _, _ = deploy(config([host]), env)
    assert result.returncode == 0, result.stderr
    lines = env_file(host).read_text().splitlines()
    assert "PROVIDER=anthropic" in lines and f"ANTHROPIC_API_KEY={API_KEY}" in lines  # the seed's contract
    assert not [line for line in lines if line.startswith("PICOCLAW_")]  # PicoClaw ignores these
    ran = testbed.run_as(host, "env -i HOME=$HOME PATH=/usr/bin:/bin ~/.local/bin/picoclaw agent -m '::env::'")
    assert ran.returncode == 0, ran.stderr
    assert "model=claude-sonnet-4.6" in ran.stdout and "key=set" in ran.stdout


def test_provider_and_key_variable_come_from_the_environment(testbed, config, env):
    (host,) = testbed.add_hosts(1, prefix="dp")
    env = {**env, "PROVIDER": "openai", "API_KEY_ENV": "OPENAI_API_KEY", "OPENAI_API_KEY": "sk-openai-xyz"}
    env.pop("ANTHROPIC_API_KEY")
    result, _, by_name = deploy(config([host]), env)
    assert result.returncode == 0, result.stderr
    lines = env_file(host).read_text().splitlines()
    assert {"PROVIDER=openai", "OPENAI_API_KEY=sk-openai-xyz"} <= set(lines)
    assert not any("ANTHROPIC" in line for line in lines)
    assert by_name[host.name]["model_name"] == "gpt-5.4"  # PicoClaw's default for openai
    assert picoclaw_config(host)["agents"]["defaults"]["model_name"] == "gpt-5.4"
    assert security(host)["model_list"]["gpt-5.4:0"] == {"api_keys": ["sk-openai-xyz"]}


def test_redeploy_uploads_nothing_and_downloads_nothing(testbed, server, config, env):
    hosts = testbed.add_hosts(2, prefix="dp")
    path = config(hosts)
    assert deploy(path, env)[0].returncode == 0
    files = [".local/bin/picoclaw", ".picoclaw/.env", ".picoclaw/config.json", ".picoclaw/.security.yml"]
    before = {h.name: [(h.home / f).stat().st_ino for f in files] + [(h.home / f).stat().st_mtime_ns for f in files]
              for h in hosts}
    result, data, by_name = deploy(path, env)
    assert result.returncode == 0, result.stderr
    for host in hosts:
        h = by_name[host.name]
        assert (h["binary"], h["env"], h["onboard"], h["model"], h["uploaded_bytes"]) == (
            "unchanged", "unchanged", "skipped", "unchanged", 0)
        assert h["version"] == "0.2.0"
        now = [(host.home / f).stat().st_ino for f in files] + [(host.home / f).stat().st_mtime_ns for f in files]
        assert now == before[host.name]
    assert data["uploaded_bytes"] == 0
    assert len(server.downloads("picoclaw_Linux_x86_64.tar.gz")) == 1  # the second run used the cache


def test_force_reinstalls_the_same_binary(testbed, config, env):
    (host,) = testbed.add_hosts(1, prefix="dp")
    path = config([host])
    deploy(path, env)
    inode = installed_binary(host).stat().st_ino
    result, _, by_name = deploy(path, env, "--force")
    assert result.returncode == 0
    assert by_name[host.name]["binary"] == "reinstalled" and by_name[host.name]["uploaded_bytes"] > 0
    assert installed_binary(host).stat().st_ino != inode


def test_upgrade_and_downgrade_report_old_and_new_versions(testbed, server, config, env):
    (host,) = testbed.add_hosts(1, prefix="dp")
    testbed.install_standin(host, version="0.1.0")
    path = config([host])
    result = fab(["deploy", "--config", path], env)
    assert result.returncode == 0, result.stderr
    assert "upgraded" in result.stdout and "0.1.0 -> 0.2.0" in result.stdout
    assert f"{RELEASE_REPO} v0.2.0" in result.stdout
    result, data, by_name = deploy(path, env, "--version", "v0.1.0")
    assert result.returncode == 0
    assert data["release"]["tag"] == "v0.1.0"
    assert (by_name[host.name]["binary"], by_name[host.name]["previous_version"], by_name[host.name]["version"]) == (
        "downgraded", "0.2.0", "0.1.0")
    assert installed_version(testbed, host) == "0.1.0"


def test_github_token_is_sent_and_never_shown(testbed, server, config, env):
    (host,) = testbed.add_hosts(1, prefix="dp")
    result, data, _ = deploy(config([host]), {**env, "GITHUB_TOKEN": "ghp_fleet_token_99"})
    assert result.returncode == 0
    assert server.api_requests()[0].headers["Authorization"] == "Bearer ghp_fleet_token_99"
    assert "ghp_fleet_token_99" not in result.stdout + result.stderr


# ---- onboard ----------------------------------------------------------------------------------


def test_onboard_skipped_and_user_settings_kept_when_config_exists(testbed, config, env):
    (host,) = testbed.add_hosts(1, prefix="dp")
    testbed.run_as(host, "mkdir -p ~/.picoclaw && echo '{\"mine\": true, \"version\": 3}' > ~/.picoclaw/config.json")
    result, _, by_name = deploy(config([host]), env)
    assert result.returncode == 0, result.stderr
    assert by_name[host.name]["onboard"] == "skipped"
    merged = picoclaw_config(host)
    assert merged["mine"] is True and merged["agents"]["defaults"]["model_name"] == "claude-sonnet-4.6"
    assert merged["model_list"] == [{"model_name": "claude-sonnet-4.6", "provider": "anthropic",
                                     "model": "claude-sonnet-4-6"}]
    assert not [c for c in testbed.command_log(host) if "onboard" in c]


def test_onboard_runs_with_stdin_closed(testbed, config, env):
    (host,) = testbed.add_hosts(1, prefix="dp")
    deploy(config([host]), env)
    (onboard,) = [c for c in testbed.command_log(host) if "onboard" in c]
    assert onboard.endswith("onboard </dev/null")


# ---- the key ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_or_empty_key_is_exit_2_before_any_host(testbed, server, config, env, value):
    (host,) = testbed.add_hosts(1, prefix="dp")
    env = dict(env)
    env.pop("ANTHROPIC_API_KEY")
    if value is not None:
        env["ANTHROPIC_API_KEY"] = value
    result = fab(["deploy", "--config", config([host])], env)
    assert result.returncode == 2
    assert "$ANTHROPIC_API_KEY is unset or empty" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert testbed.command_log(host) == []  # no host contacted
    assert server.requests_log == []  # nor GitHub


def test_key_is_never_on_a_command_line_in_output_or_in_json(testbed, config, env, closed_port):
    hosts = testbed.add_hosts(2, prefix="dp")
    testbed.run_as(hosts[1], "mkdir -p ~/.local/bin && chmod 0555 ~/.local/bin")  # a failing host too
    extra = [{"name": "down", "host": "127.0.0.1", "port": closed_port, "user": "nobody"}]
    path = config(hosts, extra)
    plain = fab(["deploy", "--config", path], env)
    as_json = fab(["deploy", "--config", path, "--json", "--force"], env)
    assert plain.returncode == 1 and as_json.returncode == 1
    assert API_KEY in env_file(hosts[0]).read_text()  # it did reach the host, inside the file
    no_secret_anywhere(testbed, hosts, plain.stdout, plain.stderr, as_json.stdout, as_json.stderr)


def test_plan_repr_and_errors_hide_the_key(testbed, server):
    fleet = FleetConfig(path=None, hosts=[], defaults=Defaults(github_api=server.url, release_repo=RELEASE_REPO))
    plan = deploy_plan(fleet, environ={"ANTHROPIC_API_KEY": API_KEY, "XDG_CACHE_HOME": "/nonexistent"})
    assert API_KEY in plan.env_text.decode()
    assert API_KEY not in repr(plan)
    with pytest.raises(UsageError) as raised:
        deploy_plan(fleet, environ={"ANTHROPIC_API_KEY": API_KEY + "\nX"})
    assert API_KEY not in str(raised.value)


# ---- faults ---------------------------------------------------------------------------------------


def test_unreachable_and_auth_failed_beside_healthy(testbed, config, env, closed_port, silent_listener):
    hosts = testbed.add_hosts(2, prefix="dp")
    noauth = testbed.add_unauthorized_host()
    extra = [
        {"name": "refused", "host": "127.0.0.1", "port": closed_port, "user": "nobody"},
        {"name": "silent", "host": "127.0.0.1", "port": silent_listener.port, "user": "nobody"},
        {"name": "noauth", "host": noauth.address, "port": noauth.port, "user": noauth.user,
         "ssh_key": str(testbed.client_key)},
    ]
    result, data, by_name = deploy(config(hosts, extra, connect_timeout=3), env)
    assert result.returncode == 1
    for host in hosts:
        assert by_name[host.name]["status"] == "ok" and by_name[host.name]["binary"] == "installed"
    assert by_name["refused"]["status"] == "unreachable"
    assert by_name["silent"]["status"] == "unreachable"
    assert by_name["noauth"]["status"] == "auth-failed"
    assert data["summary"] == {"ok": 2, "unreachable": 2, "auth-failed": 1}


def test_unwritable_bin_dir_fails_that_host_only(testbed, config, env):
    good, bad = testbed.add_hosts(2, prefix="dp")
    testbed.install_standin(bad, version="0.1.0")
    testbed.run_as(bad, "chmod 0555 ~/.local/bin")
    try:
        result, _, by_name = deploy(config([good, bad]), env)
    finally:
        testbed.run_as(bad, "chmod 0755 ~/.local/bin")
    assert result.returncode == 1
    assert by_name[good.name]["status"] == "ok"
    assert by_name[bad.name]["status"] == "failed"
    assert by_name[bad.name]["message"] == "cannot write ~/.local/bin/picoclaw: permission denied"
    assert installed_version(testbed, bad) == "0.1.0"


def test_upload_cut_part_way_leaves_old_binary_working(testbed, config, env, tmp_path):
    (host,) = testbed.add_hosts(1, prefix="dp")
    testbed.install_standin(host, version="0.1.0")
    old = installed_binary(host).read_bytes()
    big = build_standin(tmp_path / "big" / "picoclaw", version="0.9.0", pad_bytes=150_000_000)
    path = config([host])
    proc = subprocess.Popen([FAB, "deploy", "--config", str(path), "--from-file", str(big), "--json"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    bindir = installed_binary(host).parent
    partial = None
    deadline = time.monotonic() + 240  # only a guard against hanging
    while partial is None and proc.poll() is None and time.monotonic() < deadline:
        for entry in bindir.iterdir():
            if entry.name.startswith(".picoclaw.tmp-") and entry.stat().st_size > 5_000_000:
                partial = entry
        time.sleep(0.005)
    assert partial is not None, "the upload was never seen in progress"
    testbed.cut(host)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err
    assert partial.stat().st_size < big.stat().st_size  # it really was cut part-way
    assert installed_binary(host).read_bytes() == old
    assert installed_version(testbed, host) == "0.1.0"
    assert '"status": "unreachable"' in out
    # and the next deploy finishes the job
    result, _, by_name = deploy(path, env)
    assert by_name[host.name]["binary"] == "upgraded" and by_name[host.name]["version"] == "0.2.0"


def test_two_deploys_to_one_host_at_once_leave_a_valid_binary(testbed, config, env, tmp_path):
    (host,) = testbed.add_hosts(1, prefix="dp")
    testbed.install_standin(host, version="0.1.0")
    path = config([host])
    files = [build_standin(tmp_path / f"b{i}" / "picoclaw", version=f"0.{i + 4}.0", pad_bytes=3_000_000)
             for i in range(2)]
    results = [None, None]

    def run(i):
        results[i] = fab(["deploy", "--config", path, "--from-file", files[i]], env)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    installed = installed_binary(host).read_bytes()
    assert installed in (files[0].read_bytes(), files[1].read_bytes())
    assert run_installed(testbed, host).returncode == 0
    assert sorted(p.name for p in installed_binary(host).parent.iterdir()) == ["picoclaw"]
    assert f"ANTHROPIC_API_KEY={API_KEY}" in env_file(host).read_text().splitlines()


def test_checksum_mismatch_fails_every_host_of_that_arch(testbed, server, config, env):
    hosts = testbed.add_hosts(2, prefix="dp")
    assets = upstream_assets("0.3.0")
    sums = {name: sha(data) for name, data in assets.items()}
    sums["picoclaw_Linux_x86_64.tar.gz"] = "f" * 64
    server.publish(RELEASE_REPO, "v0.3.0", assets, checksums=sums)
    result, _, by_name = deploy(config(hosts), env)
    assert result.returncode == 1
    for host in hosts:
        h = by_name[host.name]
        assert h["status"] == "checksum-mismatch"
        assert "picoclaw_Linux_x86_64.tar.gz" in h["message"] and "f" * 64 in h["message"]
        assert not installed_binary(host).exists()
    assert len(server.downloads("picoclaw_Linux_x86_64.tar.gz")) == 1


def test_each_host_gets_its_arch_and_a_missing_asset_fails_only_that_arch(testbed, server, config, env):
    amd, arm, mips = testbed.add_hosts(3, prefix="dp")
    testbed.set_machine(arm, "aarch64")
    testbed.set_machine(mips, "mips", elf_byte_order="02")  # big-endian MIPS: upstream builds only mipsle
    server.publish(RELEASE_REPO, "v0.3.0", {"picoclaw_Linux_arm64.tar.gz": standin_archive("0.3.0", "Linux_arm64"),
                                            "picoclaw_Darwin_x86_64.tar.gz": b"not for linux"})
    result, _, by_name = deploy(config([amd, arm, mips]), env)
    assert result.returncode == 1
    assert by_name[arm.name]["status"] == "ok" and by_name[arm.name]["arch"] == "arm64"
    assert by_name[arm.name]["version"] == "0.3.0"
    assert len(server.downloads("picoclaw_Linux_arm64.tar.gz")) == 1
    assert server.downloads("picoclaw_Darwin_x86_64.tar.gz") == []
    assert by_name[amd.name]["status"] == "no-asset"
    assert "no Linux amd64 build" in by_name[amd.name]["message"]
    for name in ("picoclaw_Linux_arm64.tar.gz", "picoclaw_Darwin_x86_64.tar.gz", "checksums.txt"):
        assert name in by_name[amd.name]["message"]
    assert by_name[mips.name]["status"] == "unsupported-arch" and "mips" in by_name[mips.name]["message"]


def test_every_upstream_linux_build_reaches_its_board(testbed, server, config, env):
    """armv6 (Pi Zero), loong64, little-endian MIPS and s390x get their own archive, named as upstream does."""
    machines = {"armv6l": ("armv6", None), "loongarch64": ("loong64", None), "mips": ("mipsle", "01"),
                "s390x": ("s390x", None)}
    hosts = testbed.add_hosts(len(machines), prefix="dp")
    for host, (machine, (_, byte_order)) in zip(hosts, machines.items()):
        testbed.set_machine(host, machine, elf_byte_order=byte_order)
    names = ["x86_64", "arm64", "armv7", "armv6", "riscv64", "loong64", "mipsle", "s390x"]
    server.publish(RELEASE_REPO, "v0.4.0", {f"picoclaw_Linux_{name}.tar.gz": standin_archive("0.4.0", f"Linux_{name}")
                                            for name in names})
    result, _, by_name = deploy(config(hosts), env)
    assert result.returncode == 0, result.stderr
    for host, (arch, _) in zip(hosts, machines.values()):
        assert (by_name[host.name]["status"], by_name[host.name]["arch"]) == ("ok", arch)
        assert len(server.downloads(f"picoclaw_Linux_{arch}.tar.gz")) == 1
    for name in ("x86_64", "arm64", "armv7", "riscv64"):
        assert server.downloads(f"picoclaw_Linux_{name}.tar.gz") == []


def per_arch_raw_binaries(tmp_path):
    """Raw binary assets, a different version per arch, so a host's version says which it got."""
    return {f"picoclaw-linux-{arch}": build_standin(tmp_path / arch / "picoclaw", version=f"1.0.{i}").read_bytes()
            for i, arch in enumerate(["amd64", "arm64", "riscv64", "armv7"])}


def test_raw_binary_assets_per_arch(testbed, server, config, env, tmp_path):
    amd, arm, rv = testbed.add_hosts(3, prefix="dp")
    testbed.set_machine(arm, "aarch64")
    testbed.set_machine(rv, "riscv64")
    server.publish(RELEASE_REPO, "v1.0.0", per_arch_raw_binaries(tmp_path))
    result, _, by_name = deploy(config([amd, arm, rv]), env)
    assert result.returncode == 0, result.stderr
    assert [by_name[h.name]["version"] for h in (amd, arm, rv)] == ["1.0.0", "1.0.1", "1.0.2"]
    assert [by_name[h.name]["arch"] for h in (amd, arm, rv)] == ["amd64", "arm64", "riscv64"]


def test_config_arch_that_disagrees_is_reported_and_detected_arch_used(testbed, server, fleet_config, env, tmp_path):
    (host,) = testbed.add_hosts(1, prefix="dp")
    server.publish(RELEASE_REPO, "v1.0.0", per_arch_raw_binaries(tmp_path))
    path = fleet_config([host], github_api=server.url, release_repo=RELEASE_REPO)
    import json

    data = json.loads(path.read_text())
    data["hosts"][0]["arch"] = "riscv64"
    path.write_text(json.dumps(data))
    result, _, by_name = deploy(path, env)
    h = by_name[host.name]
    assert result.returncode == 0 and h["arch"] == "amd64"
    assert "config says riscv64" in h["arch_mismatch"] and "x86_64" in h["arch_mismatch"]
    assert h["version"] == "1.0.0"  # the amd64 build, not the riscv64 one


@pytest.mark.parametrize("fault, expected", [
    ("missing", "latest release not found"),
    ("rate-limit", "API rate limit exceeded for 127.0.0.1"),
])
def test_github_api_errors_are_exit_2_before_any_host(testbed, config, env, fault, expected):
    (host,) = testbed.add_hosts(1, prefix="dp")
    with ReleaseServer() as empty:
        if fault == "rate-limit":
            empty.rate_limit(reset_in_s=1800)
        result = fab(["deploy", "--config", config([host], github_api=empty.url)], env)
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr
    if fault == "rate-limit":
        assert "resets at" in result.stderr and "in 30 min" in result.stderr
    assert testbed.command_log(host) == []


def test_unknown_version_is_exit_2(testbed, config, env):
    (host,) = testbed.add_hosts(1, prefix="dp")
    result = fab(["deploy", "--config", config([host]), "--version", "v7.7.7"], env)
    assert result.returncode == 2 and "release v7.7.7 not found" in result.stderr


def test_from_file_needs_no_network(testbed, config, env, tmp_path, closed_port):
    hosts = testbed.add_hosts(2, prefix="dp")
    archive = tmp_path / "picoclaw_Linux_x86_64.tar.gz"
    archive.write_bytes(standin_archive("0.7.0", "Linux_x86_64"))
    path = config(hosts, github_api=f"http://127.0.0.1:{closed_port}")
    result, data, by_name = deploy(path, env, "--from-file", archive)
    assert result.returncode == 0, result.stderr
    assert data["release"]["from_file"] == str(archive)
    assert all(by_name[h.name]["version"] == "0.7.0" for h in hosts)


def test_from_file_binary_that_does_not_run_leaves_old_binary(testbed, config, env, tmp_path):
    (host,) = testbed.add_hosts(1, prefix="dp")
    testbed.install_standin(host, version="0.1.0")
    wrong = tmp_path / "picoclaw"
    wrong.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x02\x00\xb7\x00" + b"\0" * 200)  # an aarch64 ELF stub
    result, _, by_name = deploy(config([host]), env, "--from-file", wrong)
    assert result.returncode == 1
    assert by_name[host.name]["status"] == "failed"
    assert "does not run on this host" in by_name[host.name]["message"]
    assert installed_version(testbed, host) == "0.1.0"
    assert sorted(p.name for p in installed_binary(host).parent.iterdir()) == ["picoclaw"]


@pytest.mark.parametrize("args, expected", [
    (["--from-file", "/nonexistent/picoclaw"], "--from-file /nonexistent/picoclaw"),
    (["--from-file", "x", "--version", "v0.1.0"], "exclude each other"),
    (["--parallel", "many"], "--parallel 'many'"),
])
def test_usage_errors_are_one_line_exit_2(testbed, config, env, args, expected):
    (host,) = testbed.add_hosts(1, prefix="dp")
    result = fab(["deploy", "--config", config([host]), *args], env)
    assert result.returncode == 2 and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---- the per-host contract other verbs use ------------------------------------------------------


def test_deploy_host_through_fan_out_with_a_shared_plan(testbed, server):
    hosts = testbed.add_hosts(2, prefix="dp")
    defaults = Defaults(github_api=server.url, release_repo=RELEASE_REPO, known_hosts=str(testbed.known_hosts))
    entries = [HostEntry(h.name, h.address, h.user, h.port, ssh_key=str(testbed.client_key)) for h in hosts]
    fleet = FleetConfig(path=None, hosts=entries, defaults=defaults)
    plan = deploy_plan(fleet, environ={"ANTHROPIC_API_KEY": API_KEY, "XDG_CACHE_HOME": str(testbed.workdir / "dp-cache")})
    reports = fan_out(RunContext(fleet, entries), lambda cxn, entry: deploy_host(cxn, entry, plan)).reports
    assert [r.status for r in reports] == ["ok", "ok"]
    assert [r.details.binary for r in reports] == ["installed", "installed"]
    assert plan.uploaded.total == sum(r.details.uploaded_bytes for r in reports)  # binary, .env, config files


# ---- the model and the key, merged into PicoClaw's own files ----------------------------------------


def test_users_own_settings_and_keys_are_kept_and_api_base_is_set(testbed, config, env):
    (host,) = testbed.add_hosts(1, prefix="dp")
    mine = {
        "version": 3,
        "agents": {"defaults": {"model_name": "", "max_tokens": 1234}},
        "model_list": [
            {"model_name": "claude-sonnet-4.6", "provider": "anthropic", "model": "claude-sonnet-4-6",
             "api_base": "https://api.anthropic.com/v1", "request_timeout": 90},
            {"model_name": "local", "provider": "vllm", "model": "qwen3", "api_base": "http://127.0.0.1:8000/v1"},
        ],
        "channels": {"telegram": {"enabled": True}},
    }
    theirs = "channel_list:\n  telegram:\n    token: tg-user-token\nmodel_list:\n  local:0:\n    api_keys: [sk-local]\n"
    put_file(host, ".picoclaw/config.json", json.dumps(mine))
    put_file(host, ".picoclaw/.security.yml", theirs)
    result, _, by_name = deploy(config([host], api_base="http://127.0.0.1:9/v1"), env)
    assert result.returncode == 0, result.stderr
    assert by_name[host.name]["model"] == "configured"
    merged = picoclaw_config(host)
    assert merged["agents"]["defaults"] == {"model_name": "claude-sonnet-4.6", "max_tokens": 1234,
                                            "restrict_to_workspace": True}
    assert merged["model_list"][0] == {**mine["model_list"][0], "api_base": "http://127.0.0.1:9/v1"}
    assert merged["model_list"][1] == mine["model_list"][1] and merged["channels"] == mine["channels"]
    keys = security(host)
    assert keys["channel_list"] == {"telegram": {"token": "tg-user-token"}}
    assert keys["model_list"] == {"local:0": {"api_keys": ["sk-local"]}, "claude-sonnet-4.6:0": {"api_keys": [API_KEY]}}


def test_host_model_and_sandbox_override_the_fleets(testbed, config, env):
    lan, plain = testbed.add_hosts(2, prefix="dp")
    extra = dict(model="qwen3-local", api_base="http://127.0.0.1:8000/v1", restrict_to_workspace=False)
    path = config([lan, plain])
    data = json.loads(path.read_text())
    data["hosts"][0].update(extra)
    path.write_text(json.dumps(data))
    result, _, by_name = deploy(path, env)
    assert result.returncode == 0, result.stderr
    assert by_name[lan.name]["model_name"] == "qwen3-local" and by_name[plain.name]["model_name"] == "claude-sonnet-4.6"
    defaults = picoclaw_config(lan)["agents"]["defaults"]
    assert (defaults["model_name"], defaults["restrict_to_workspace"]) == ("qwen3-local", False)
    entry = [m for m in picoclaw_config(lan)["model_list"] if m["model_name"] == "qwen3-local"]
    assert entry == [{"model_name": "qwen3-local", "provider": "anthropic", "model": "qwen3-local",
                      "api_base": "http://127.0.0.1:8000/v1"}]
    assert picoclaw_config(plain)["agents"]["defaults"]["restrict_to_workspace"] is True
    status = fab_json(["status", "--config", path], env)[2]
    assert (status[lan.name]["model"], status[lan.name]["api_key"], status[lan.name]["restrict_to_workspace"]) == (
        "qwen3-local", True, False)
    assert (status[plain.name]["model"], status[plain.name]["restrict_to_workspace"]) == ("claude-sonnet-4.6", True)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "~/.picoclaw/config.json is not valid JSON (line 1, column 2"),
        ('{"version": 1, "providers": {}}', "~/.picoclaw/config.json is config version 1"),
        ("[1, 2]", "~/.picoclaw/config.json does not hold a JSON object"),
    ],
)
def test_a_config_deploy_cannot_read_is_left_alone(testbed, config, env, content, message):
    (host,) = testbed.add_hosts(1, prefix="dp")
    testbed.run_as(host, f"mkdir -p ~/.picoclaw && printf '%s' '{content}' > ~/.picoclaw/config.json")
    result, _, by_name = deploy(config([host]), env)
    assert result.returncode == 1
    assert by_name[host.name]["status"] == "failed"
    assert by_name[host.name]["message"].startswith(message)
    assert (host.home / ".picoclaw" / "config.json").read_text() == content


def test_broken_security_file_is_reported_without_quoting_it(testbed, config, env):
    (host,) = testbed.add_hosts(1, prefix="dp")
    deploy(config([host]), env)
    (host.home / ".picoclaw" / ".security.yml").write_text("model_list: [sk-leaky-secret\n")
    result, _, by_name = deploy(config([host]), env)
    assert by_name[host.name]["status"] == "failed"
    assert "~/.picoclaw/.security.yml is not valid YAML at line" in by_name[host.name]["message"]
    assert "sk-leaky-secret" not in result.stdout + result.stderr
