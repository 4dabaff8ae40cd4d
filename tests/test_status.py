"""`fab status` and the connection layer against the real sshd testbed.

Covers what every verb stands on: per-host facts, the fault hosts (closed
port, silent listener, unauthorized key, changed host key), the three host
key policies, ~/.ssh/config and gateway, the concurrency bound, and the
`--json` contract.
"""

import json
import subprocess
from pathlib import Path

import pytest

from fabfile.core.config import load_config
from fabfile.core.context import RunContext
from fabfile.core.policy import load_per_cpu
from fabfile.host.facts import PROBE_COMMAND, parse_probe, parse_version
from fabfile.verbs.status import fleet_status
from harness.cli import FAB, REPO
from harness.faults import RotatingKeySshd



def fab(args, env, **kwargs):
    return subprocess.run([FAB, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180, **kwargs)


def status_json(config_path, env, *extra):
    result = fab(["status", "--config", str(config_path), "--json", *extra], env)
    data = json.loads(result.stdout)
    return result, data, {h["name"]: h for h in data["hosts"]}


@pytest.fixture(scope="module")
def status_hosts(testbed):
    hosts = testbed.add_hosts(3, prefix="st")
    testbed.install_standin(hosts[1], version="0.4.2")
    testbed.run_as(hosts[1], "mkdir -p ~/.picoclaw && echo PROVIDER=x > ~/.picoclaw/.env")
    return hosts


# --- parsing (pure) ----------------------------------------------------------------------


def test_parse_probe_maps_arch_and_version():
    facts = parse_probe(
        "arch=aarch64\nloadavg=0.50 0.40 0.30 1/200 999\nncpu=4\nversion_rc=0\n"
        "version=🦞 picoclaw v0.1.2 (git abc)\nenv=yes\n"
    )
    assert (facts.arch, facts.version, facts.load1, facts.ncpu, facts.env_present) == ("arm64", "0.1.2", 0.5, 4, True)
    assert load_per_cpu(facts.load1, facts.ncpu) == pytest.approx(0.125)


def test_parse_probe_not_installed_and_unknown_values():
    facts = parse_probe("arch=mips\nloadavg=\nncpu=\nversion_rc=127\nenv=no\n")
    assert facts.arch is None and facts.machine == "mips"
    assert facts.version is None and not facts.installed
    assert load_per_cpu(facts.load1, facts.ncpu) is None


@pytest.mark.parametrize(
    "text, version",
    [("picoclaw v0.1.0", "0.1.0"), ("🦞 picoclaw 1.2.3-rc1\nbuild x", "1.2.3-rc1"), ("no digits", None)],
)
def test_parse_version(text, version):
    assert parse_version(text) == version


# --- fab status on healthy hosts ------------------------------------------------------------


def test_status_json_reports_each_host(testbed, status_hosts, fleet_config, guarded_env):
    path = fleet_config(hosts=status_hosts)
    result, data, hosts = status_json(path, guarded_env)
    assert result.returncode == 0, result.stderr
    assert data["verb"] == "status"
    assert data["summary"] == {"ok": 3}
    assert list(hosts) == [h.name for h in status_hosts]
    for sim in status_hosts:
        host = hosts[sim.name]
        assert host["status"] == "ok"
        assert host["address"] == f"{sim.user}@127.0.0.1:{sim.port}"
        assert host["arch"] == "amd64" if subprocess.getoutput("uname -m") == "x86_64" else host["arch"]
        assert host["ncpu"] >= 1 and host["load1"] is not None
        assert host["latency_ms"] > 0
        assert host["duration_s"] >= 0
    assert hosts[status_hosts[0].name]["version"] == "not-installed"
    assert hosts[status_hosts[1].name]["version"] == "0.4.2"
    assert hosts[status_hosts[1].name]["env"] is True
    assert hosts[status_hosts[0].name]["env"] is False
    installed, bare = hosts[status_hosts[1].name], hosts[status_hosts[0].name]
    assert (installed["model"], installed["api_key"], installed["restrict_to_workspace"]) == (
        "claude-sonnet-4.6", True, True)
    assert (bare["model"], bare["api_key"], bare["restrict_to_workspace"]) == (None, None, None)
    assert "sk-standin" not in result.stdout  # the probe masks the key on the host


def test_status_reads_the_version_past_the_banner_and_sees_a_missing_key(testbed, fleet_config, guarded_env):
    """The stand-in prints the real banner first; an empty .security.yml entry means no key, as in PicoClaw."""
    [host] = testbed.add_workers(1, prefix="st")
    testbed.run_as(host, "printf 'model_list:\\n  claude-sonnet-4.6:0: {}\\n' > ~/.picoclaw/.security.yml")
    result, _, hosts = status_json(fleet_config(hosts=[host]), guarded_env)
    assert result.returncode == 0, result.stderr
    assert hosts[host.name]["version"] == "0.1.0"
    assert (hosts[host.name]["model"], hosts[host.name]["api_key"]) == ("claude-sonnet-4.6", False)


def test_a_round_trip_shorter_than_a_tenth_of_a_millisecond_is_not_reported_as_zero():
    """A keepalive through sshd on loopback took under 0.05 ms in a full test run: rounded to 0.1 ms it read as 0."""
    from fabfile.host.facts import HostFacts
    from fabfile.verbs.status import StatusDetails

    facts = HostFacts(arch="amd64", machine="x86_64", version="0.4.2", load1=0.1, ncpu=4, env_present=True)
    facts.latency_ms = 0.0437
    assert StatusDetails(facts).to_dict()["latency_ms"] == 0.04


def test_status_runs_one_command_per_host(testbed, status_hosts, fleet_config):
    host = status_hosts[2]
    before = len(testbed.command_log(host))
    fleet = load_config(str(fleet_config(hosts=[host])))
    report = fleet_status(RunContext(fleet, fleet.hosts))
    assert report.hosts[0].ok
    assert testbed.command_log(host)[before:] == [PROBE_COMMAND]


def test_the_probe_is_read_off_its_channel_without_invoke_s_runner_threads(status_hosts, fleet_config, monkeypatch):
    """Only the probe's stdout counts, so it is read straight off the channel: invoke's runner would
    start two I/O threads (and a Result, and config look-ups) a host. Counted over a second probe of
    an open connection: paramiko's transport thread and the one deadline thread are already there."""
    import threading

    from fabfile.host.facts import probe_host
    from fabfile.ssh.connections import open_fleet

    fleet = load_config(str(fleet_config(hosts=status_hosts[1:2])))
    [cxn] = open_fleet(RunContext(fleet, fleet.hosts))
    started = []
    start = threading.Thread.start

    def counted(thread):
        started.append(type(thread).__name__)
        return start(thread)

    try:
        probe_host(cxn)
        monkeypatch.setattr(threading.Thread, "start", counted)
        facts = probe_host(cxn)
        monkeypatch.undo()
    finally:
        cxn.close()
    assert started == []
    assert (facts.version, facts.env_present) == ("0.4.2", True)


def test_status_human_table(status_hosts, fleet_config, guarded_env):
    result = fab(["status", "--config", str(fleet_config(hosts=status_hosts))], guarded_env)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:8] == ["HOST", "ADDRESS", "STATUS", "ARCH", "PICOCLAW", "MODEL", "KEY", "SANDBOX"]
    assert any(line.startswith(status_hosts[1].name) and "claude-sonnet-4.6  yes  workspace" in line for line in lines)
    assert any(line.startswith(status_hosts[1].name) and "0.4.2" in line for line in lines)
    assert lines[-1] == "3 hosts: 3 ok"


def test_status_flags_arch_mismatch(status_hosts, fleet_config, guarded_env, testbed):
    raw = testbed.fleet_config([status_hosts[0]])["hosts"][0]
    raw["arch"] = "riscv64"
    path = fleet_config(hosts=[], extra_hosts=[raw])
    result, _, hosts = status_json(path, guarded_env)
    assert result.returncode == 0
    assert "config says riscv64" in hosts[raw["name"]]["arch_mismatch"]


def test_status_selects_hosts(status_hosts, fleet_config, guarded_env):
    path = fleet_config(hosts=status_hosts)
    _, data, hosts = status_json(path, guarded_env, "--hosts", "st*")
    assert len(hosts) == 3
    _, data, hosts = status_json(path, guarded_env, "--hosts", status_hosts[2].name)
    assert list(hosts) == [status_hosts[2].name]


# --- fault hosts beside healthy ones ----------------------------------------------------------


def test_faults_reported_per_host_and_healthy_hosts_succeed(
    testbed, status_hosts, fleet_config, guarded_env, closed_port, silent_listener
):
    noauth = testbed.add_unauthorized_host()
    base = dict(host="127.0.0.1", ssh_key=str(testbed.client_key))
    extra = [
        dict(base, name="closed", user=status_hosts[0].user, port=closed_port),
        dict(base, name="silent", user=status_hosts[0].user, port=silent_listener.port),
        dict(base, name="noauth", user=noauth.user, port=testbed.port),
    ]
    path = fleet_config(hosts=status_hosts[:2], extra_hosts=extra, connect_timeout=2)
    result, data, hosts = status_json(path, guarded_env)
    assert result.returncode == 1
    assert hosts["closed"]["status"] == "unreachable"
    assert "refused" in hosts["closed"]["message"]
    assert hosts["silent"]["status"] == "unreachable"
    assert "no SSH banner within 2s" in hosts["silent"]["message"]
    assert hosts["noauth"]["status"] == "auth-failed"
    assert all(hosts[h.name]["status"] == "ok" for h in status_hosts[:2])
    assert data["summary"] == {"ok": 2, "unreachable": 2, "auth-failed": 1}
    assert result.stderr == "", "paramiko printed on stderr"


def test_wrong_key_is_auth_failed(testbed, status_hosts, fleet_config, guarded_env):
    raw = testbed.fleet_config([status_hosts[0]])["hosts"][0]
    raw["ssh_key"] = str(testbed.other_key)
    result, _, hosts = status_json(fleet_config(hosts=[], extra_hosts=[raw]), guarded_env)
    assert result.returncode == 1
    assert hosts[raw["name"]]["status"] == "auth-failed"


# --- host key policies -----------------------------------------------------------------------


def test_accept_new_records_key_then_trusts_it(testbed, status_hosts, fleet_config, guarded_env):
    path = fleet_config(hosts=status_hosts[:2])
    known_hosts = Path(json.loads(path.read_text())["defaults"]["known_hosts"])
    assert not known_hosts.exists() or known_hosts.read_text() == ""
    result, _, _ = status_json(path, guarded_env)
    assert result.returncode == 0
    recorded = known_hosts.read_text().splitlines()
    assert recorded == [testbed.host_key_line()]
    result, _, _ = status_json(path, guarded_env)
    assert result.returncode == 0
    assert known_hosts.read_text().splitlines() == recorded


def test_strict_refuses_unknown_key_and_accepts_known(testbed, status_hosts, fleet_config, guarded_env):
    path = fleet_config(hosts=status_hosts[:1], host_key_policy="strict")
    known_hosts = Path(json.loads(path.read_text())["defaults"]["known_hosts"])
    result, _, hosts = status_json(path, guarded_env)
    assert result.returncode == 1
    assert hosts[status_hosts[0].name]["status"] == "hostkey-rejected"
    assert not known_hosts.exists() or known_hosts.read_text() == ""
    known_hosts.write_text(testbed.host_key_line() + "\n")
    result, _, hosts = status_json(path, guarded_env)
    assert result.returncode == 0


@pytest.fixture
def rotating_sshd(testbed):
    server = RotatingKeySshd(testbed)
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("policy", ["accept-new", "strict"])
def test_changed_host_key_is_refused(testbed, status_hosts, fleet_config, guarded_env, rotating_sshd, policy):
    raw = dict(testbed.fleet_config([status_hosts[0]])["hosts"][0], name="rotating", port=rotating_sshd.port)
    path = fleet_config(hosts=[], extra_hosts=[raw], host_key_policy=policy)
    known_hosts = Path(json.loads(path.read_text())["defaults"]["known_hosts"])
    old_line = rotating_sshd.host_key_line()
    known_hosts.write_text(old_line + "\n")
    assert status_json(path, guarded_env)[0].returncode == 0
    rotating_sshd.rotate_host_key()
    result, _, hosts = status_json(path, guarded_env)
    assert result.returncode == 1
    assert hosts["rotating"]["status"] == "hostkey-rejected"
    assert "CHANGED" in hosts["rotating"]["message"]
    assert known_hosts.read_text().splitlines() == [old_line], "a changed key must never be recorded"


def test_policy_off_accepts_changed_key_and_warns(testbed, status_hosts, fleet_config, guarded_env, rotating_sshd):
    raw = dict(testbed.fleet_config([status_hosts[0]])["hosts"][0], name="rotating", port=rotating_sshd.port)
    path = fleet_config(hosts=[], extra_hosts=[raw], host_key_policy="off")
    known_hosts = Path(json.loads(path.read_text())["defaults"]["known_hosts"])
    old_line = rotating_sshd.host_key_line()
    known_hosts.write_text(old_line + "\n")
    rotating_sshd.rotate_host_key()
    result, _, hosts = status_json(path, guarded_env)
    assert result.returncode == 0
    assert hosts["rotating"]["status"] == "ok"
    assert "insecure" in result.stderr
    assert known_hosts.read_text().splitlines() == [old_line], "policy off records nothing"


# --- ~/.ssh/config and gateway -------------------------------------------------------------------


def test_ssh_config_supplies_hostname_and_port(testbed, status_hosts, fleet_config, guarded_env, tmp_path):
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Host fleet-alias\n  HostName 127.0.0.1\n  Port {testbed.port}\n")
    raw = dict(testbed.fleet_config([status_hosts[0]])["hosts"][0], host="fleet-alias")
    raw.pop("port")
    path = fleet_config(hosts=[], extra_hosts=[raw])
    result = fab(["-S", str(ssh_config), "status", "--config", str(path), "--json"], guarded_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["hosts"][0]["status"] == "ok"


def test_gateway_is_used(testbed, status_hosts, fleet_config, guarded_env, closed_port):
    jump, target = testbed.fleet_config(status_hosts[:2])["hosts"]
    via = dict(target, name="via-jump", gateway=jump["name"])
    path = fleet_config(hosts=[], extra_hosts=[jump, via])
    result, _, hosts = status_json(path, guarded_env)
    assert result.returncode == 0, result.stdout
    assert hosts["via-jump"]["status"] == "ok"
    broken_jump = dict(jump, port=closed_port)
    path = fleet_config(hosts=[], extra_hosts=[broken_jump, via])
    result, _, hosts = status_json(path, guarded_env, "--hosts", "via-jump")
    assert result.returncode == 1
    assert hosts["via-jump"]["status"] == "unreachable"


def test_json_output_is_only_json(status_hosts, fleet_config, guarded_env):
    result = fab(["status", "--config", str(fleet_config(hosts=status_hosts[:1])), "--json"], guarded_env)
    data = json.loads(result.stdout)
    assert set(data) == {"verb", "hosts", "summary", "interrupted"} and data["interrupted"] is False
