"""The fleet config: path resolution, template, schema errors, host selection.

The CLI cases run the real `fab` in a subprocess with the loopback guard, and
check the user-facing contract: one line on stderr, exit 2, nothing on stdout
(so no host was reported on, and none was contacted).
"""

import json
import subprocess

import pytest

from fabfile import config as fleet_config_module
from fabfile.config import TEMPLATE, config_path, load_config, select_hosts
from fabfile.errors import UsageError
from tests.testbed import FAB, REPO



def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def minimal(hosts=None, **defaults):
    hosts = hosts if hosts is not None else [{"name": "pi-1", "host": "127.0.0.1", "user": "pi"}]
    return {"hosts": hosts, "defaults": defaults} if defaults else {"hosts": hosts}


def run_fab(args, env):
    return subprocess.run([FAB, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


# --- where the config is -------------------------------------------------------------


def test_path_explicit_beats_env_beats_default(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("PICOCLAW_FLEET_CONFIG", raising=False)
    assert config_path() == tmp_path / ".openclaw/workspace/config/picoclaw-fleet.json"
    monkeypatch.setenv("PICOCLAW_FLEET_CONFIG", str(tmp_path / "env.json"))
    assert config_path() == tmp_path / "env.json"
    assert config_path(str(tmp_path / "cli.json")) == tmp_path / "cli.json"


# --- template --------------------------------------------------------------------------


def test_missing_config_writes_template_and_stops(tmp_path):
    path = tmp_path / "deep" / "dir" / "fleet.json"
    with pytest.raises(UsageError, match="wrote a template config at .*fleet.json: edit its hosts"):
        load_config(str(path))
    assert json.loads(path.read_text()) == TEMPLATE


def test_template_hosts_unchanged_are_refused(tmp_path):
    path = write_json(tmp_path / "fleet.json", TEMPLATE)
    with pytest.raises(UsageError, match="still holds only the template's example host"):
        load_config(str(path))


def test_seed_template_validates_unchanged():
    fleet_config_module.validate_config(json.loads(json.dumps(TEMPLATE)))


def test_example_file_is_the_template_with_every_optional_field():
    example = json.loads((REPO / "fleet.example.json").read_text())
    fleet_config_module.validate_config(example)
    schema = json.loads(fleet_config_module.SCHEMA_FILE.read_text())
    host_fields = set(schema["$defs"]["host"]["properties"]) - {"gateway"}
    assert host_fields <= set(example["hosts"][0])
    assert set(schema["$defs"]["defaults"]["properties"]) == set(example["defaults"])
    for key, value in TEMPLATE["hosts"][0].items():
        assert example["hosts"][0][key] == value
    for key, value in TEMPLATE["defaults"].items():
        assert example["defaults"][key] == value


def test_cli_missing_config_exits_2_without_contacting_any_host(tmp_path, guarded_env):
    path = tmp_path / "fleet.json"
    result = run_fab(["status", "--config", str(path), "--json"], guarded_env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert "wrote a template config" in result.stderr and "Traceback" not in result.stderr
    assert path.exists()
    again = run_fab(["status", "--config", str(path)], guarded_env)
    assert again.returncode == 2 and again.stdout == ""
    assert "template's example host" in again.stderr


def test_cli_env_var_names_the_config(tmp_path, guarded_env):
    path = tmp_path / "from-env.json"
    env = dict(guarded_env, PICOCLAW_FLEET_CONFIG=str(path))
    result = run_fab(["status"], env)
    assert result.returncode == 2 and path.exists()


# --- bad input: one line each, exit 2 ---------------------------------------------------


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "fleet.json"
    path.write_text('{\n  "hosts": [\n    {"name": "a",, }\n  ]\n}\n')
    with pytest.raises(UsageError, match=r"invalid JSON at line 3, column 18"):
        load_config(str(path))


def test_schema_violation_reports_json_path(tmp_path):
    hosts = [
        {"name": "a", "host": "127.0.0.1", "user": "u"},
        {"name": "b", "host": "127.0.0.1", "user": "u"},
        {"name": "c", "host": "127.0.0.1", "user": "u", "arch": "x86"},
    ]
    path = write_json(tmp_path / "fleet.json", minimal(hosts))
    with pytest.raises(UsageError) as caught:
        load_config(str(path))
    assert "hosts[2].arch: 'x86' is not one of ['amd64', 'arm64', 'armv7', 'armv6', 'riscv64', 'loong64', 'mipsle', 's390x']" in str(caught.value)


def test_every_violation_is_listed(tmp_path):
    hosts = [{"name": "bad name", "host": "127.0.0.1", "user": "u", "port": 0}]
    path = write_json(tmp_path / "fleet.json", minimal(hosts, timeout=-1, colour="blue"))
    with pytest.raises(UsageError) as caught:
        load_config(str(path))
    lines = str(caught.value).splitlines()
    assert any(line.startswith("invalid config: hosts[0].name:") for line in lines)
    assert any(line.startswith("invalid config: hosts[0].port:") for line in lines)
    assert any(line.startswith("invalid config: defaults.timeout:") for line in lines)
    assert any("defaults: Additional properties are not allowed ('colour'" in line for line in lines)


def test_unknown_host_key_is_rejected(tmp_path):
    hosts = [{"name": "a", "host": "127.0.0.1", "user": "u", "password": "hunter2"}]
    path = write_json(tmp_path / "fleet.json", minimal(hosts))
    with pytest.raises(UsageError, match=r"hosts\[0\]: Additional properties are not allowed \('password'"):
        load_config(str(path))


def test_missing_required_field(tmp_path):
    path = write_json(tmp_path / "fleet.json", minimal([{"name": "a", "host": "127.0.0.1"}]))
    with pytest.raises(UsageError, match=r"hosts\[0\]: 'user' is a required property"):
        load_config(str(path))


def test_duplicate_host_names(tmp_path):
    hosts = [{"name": "a", "host": "127.0.0.1", "user": "u"}, {"name": "a", "host": "127.0.0.2", "user": "u"}]
    path = write_json(tmp_path / "fleet.json", minimal(hosts))
    with pytest.raises(UsageError, match=r"hosts\[1\].name: duplicate host name 'a' \(also hosts\[0\]\)"):
        load_config(str(path))


def test_unreadable_file(tmp_path):
    path = tmp_path / "is-a-directory.json"
    path.mkdir()
    with pytest.raises(UsageError, match="cannot read config"):
        load_config(str(path))


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"hosts": [}', "invalid JSON at line 1"),
        ('{"hosts": [{"name": "a", "host": "h", "user": "u", "arch": "x86"}]}', "hosts[0].arch: 'x86' is not one of"),
        ('{"hosts": [{"name": "a", "host": "h", "user": "u"}, {"name": "a", "host": "h", "user": "u"}]}', "duplicate host name"),
        ('{"hosts": [], "defaults": {"host_key_policy": "yolo"}}', "defaults.host_key_policy: 'yolo' is not one of"),
    ],
)
def test_cli_bad_config_is_one_line_and_exit_2(tmp_path, guarded_env, text, expected):
    path = tmp_path / "fleet.json"
    path.write_text(text)
    result = run_fab(["status", "--config", str(path)], guarded_env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- defaults --------------------------------------------------------------------------


def test_defaults_fill_in(tmp_path):
    fleet = load_config(str(write_json(tmp_path / "fleet.json", minimal(timeout=30))))
    assert fleet.defaults.timeout == 30
    assert fleet.defaults.connect_timeout == 10
    assert fleet.defaults.parallel == 32
    assert fleet.defaults.host_key_policy == "accept-new"
    assert fleet.defaults.release_repo == "sipeed/picoclaw"
    assert fleet.hosts[0].port is None and fleet.hosts[0].max_tasks == 1


# --- host selection --------------------------------------------------------------------


@pytest.fixture
def tagged_fleet(tmp_path):
    hosts = [
        {"name": "pi-1", "host": "127.0.0.1", "user": "u", "tags": ["pi", "kitchen"]},
        {"name": "pi-2", "host": "127.0.0.1", "user": "u", "tags": ["pi"]},
        {"name": "nuc", "host": "127.0.0.1", "user": "u", "tags": ["x86"]},
    ]
    return load_config(str(write_json(tmp_path / "fleet.json", minimal(hosts))))


@pytest.mark.parametrize(
    "spec, names",
    [
        (None, ["pi-1", "pi-2", "nuc"]),
        ("", ["pi-1", "pi-2", "nuc"]),
        ("nuc", ["nuc"]),
        ("pi-*", ["pi-1", "pi-2"]),
        ("@kitchen", ["pi-1"]),
        ("nuc,@pi", ["pi-1", "pi-2", "nuc"]),
        ("pi-2, pi-2", ["pi-2"]),
    ],
)
def test_select_hosts(tagged_fleet, spec, names):
    assert [h.name for h in select_hosts(tagged_fleet, spec)] == names


@pytest.mark.parametrize("spec", ["pi-3", "zz*", "@garage", "nuc,typo"])
def test_select_unknown_is_usage_error(tagged_fleet, spec):
    with pytest.raises(UsageError, match="unknown host"):
        select_hosts(tagged_fleet, spec)


def test_select_adhoc_target(tagged_fleet):
    chosen = select_hosts(tagged_fleet, "nuc,eric@127.0.0.5:2222")
    assert [h.name for h in chosen] == ["nuc", "127.0.0.5"]
    assert (chosen[1].user, chosen[1].host, chosen[1].port) == ("eric", "127.0.0.5", 2222)


@pytest.mark.parametrize("spec", ["eric@", "@@", "eric@host:port", "eric@host:70000"])
def test_select_bad_adhoc_target(tagged_fleet, spec):
    with pytest.raises(UsageError):
        select_hosts(tagged_fleet, spec)


def test_cli_unknown_host_is_exit_2(tmp_path, guarded_env):
    path = write_json(tmp_path / "fleet.json", minimal())
    result = run_fab(["status", "--config", str(path), "--hosts", "nope"], guarded_env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "unknown host 'nope'" in result.stderr


# --- the PicoClaw model: defaults.model / api_base / restrict_to_workspace, per host too -------


def test_model_defaults_to_the_providers_picoclaw_default(tmp_path):
    from fabfile.config import model_choice

    fleet = load_config(str(write_json(tmp_path / "fleet.json", minimal())))
    choice = model_choice(fleet.defaults, fleet.hosts[0])
    assert (choice.name, choice.provider, choice.model_id, choice.api_base) == (
        "claude-sonnet-4.6", "anthropic", "claude-sonnet-4-6", None)
    assert choice.restrict_to_workspace is True
    assert model_choice(fleet.defaults, fleet.hosts[0], "openai").name == "gpt-5.4"


def test_host_overrides_model_api_base_and_sandbox(tmp_path):
    from fabfile.config import model_choice

    hosts = [{"name": "pi-1", "host": "127.0.0.1", "user": "pi"},
             {"name": "lan", "host": "127.0.0.1", "user": "pi", "model": "qwen3-local",
              "api_base": "http://127.0.0.1:8000/v1", "restrict_to_workspace": False}]
    data = minimal(hosts, model="gpt-5.4", provider="openai", api_base="https://proxy.example/v1")
    fleet = load_config(str(write_json(tmp_path / "fleet.json", data)))
    first, lan = (model_choice(fleet.defaults, h) for h in fleet.hosts)
    assert (first.name, first.api_base, first.restrict_to_workspace) == ("gpt-5.4", "https://proxy.example/v1", True)
    assert (lan.name, lan.model_id, lan.api_base, lan.restrict_to_workspace) == (
        "qwen3-local", "qwen3-local", "http://127.0.0.1:8000/v1", False)


def test_unknown_provider_without_model_is_a_usage_error(tmp_path):
    from fabfile.config import model_choice

    fleet = load_config(str(write_json(tmp_path / "fleet.json", minimal(provider="acme"))))
    with pytest.raises(UsageError, match="set defaults.model"):
        model_choice(fleet.defaults, fleet.hosts[0])


@pytest.mark.parametrize(
    "defaults, expected",
    [
        ({"model": 7}, "defaults.model: 7 is not of type 'string'"),
        ({"model": "has space"}, "defaults.model: 'has space' does not match"),
        ({"api_base": "ftp://x/v1"}, "defaults.api_base: 'ftp://x/v1' does not match"),
        ({"api_base": "http://"}, "defaults.api_base: 'http://' is not an http(s) URL"),
        ({"api_base": "http://user:pw@host/v1"}, "is not an http(s) URL"),
        ({"api_base": "http://host:notaport/v1"}, "is not an http(s) URL"),
        ({"restrict_to_workspace": "no"}, "defaults.restrict_to_workspace: 'no' is not of type 'boolean'"),
    ],
)
def test_bad_model_settings_exit_2_before_any_host(tmp_path, guarded_env, defaults, expected):
    path = write_json(tmp_path / "fleet.json", minimal(**defaults))
    result = run_fab(["status", "--config", str(path)], guarded_env)
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_bad_host_api_base_names_the_host(tmp_path):
    hosts = [{"name": "pi-1", "host": "127.0.0.1", "user": "pi", "api_base": "localhost:8000"}]
    with pytest.raises(UsageError, match=r"hosts\[0\].api_base"):
        load_config(str(write_json(tmp_path / "fleet.json", minimal(hosts))))
