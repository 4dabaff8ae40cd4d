"""The fleet config: path resolution, template, schema errors, host selection.

The CLI cases run the real `fab` in a subprocess with the loopback guard, and
check the user-facing contract: one line on stderr, exit 2, nothing on stdout
(so no host was reported on, and none was contacted).
"""

import json
import subprocess
import sys

import pytest

from fabfile.core import config as fleet_config_module
from fabfile.core.config import TEMPLATE, config_path, load_config, select_hosts
from fabfile.core.errors import UsageError
from harness.cli import FAB, REPO



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


def test_every_violation_is_listed_on_one_line(tmp_path):
    hosts = [{"name": "bad name", "host": "127.0.0.1", "user": "u", "port": 0}]
    path = write_json(tmp_path / "fleet.json", minimal(hosts, timeout=-1, colour="blue"))
    with pytest.raises(UsageError) as caught:
        load_config(str(path))
    [line] = str(caught.value).splitlines()
    assert line.startswith("invalid config: ")
    problems = line.removeprefix("invalid config: ").split("; ")
    assert any(p.startswith("hosts[0].name:") for p in problems)
    assert any(p.startswith("hosts[0].port:") for p in problems)
    assert any(p.startswith("defaults.timeout:") for p in problems)
    assert any("defaults: Additional properties are not allowed ('colour'" in p for p in problems)


def test_many_violations_are_counted_not_listed(tmp_path):
    hosts = [{"name": f"bad name {i}", "host": "127.0.0.1", "user": "u"} for i in range(40)]
    with pytest.raises(UsageError) as caught:
        load_config(str(write_json(tmp_path / "fleet.json", minimal(hosts))))
    [line] = str(caught.value).splitlines()
    assert line.count("does not match") == 5 and line.endswith("(and 35 more problems)")


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
    from fabfile.core.config import model_choice

    fleet = load_config(str(write_json(tmp_path / "fleet.json", minimal())))
    choice = model_choice(fleet.defaults, fleet.hosts[0])
    assert (choice.name, choice.provider, choice.model_id, choice.api_base) == (
        "claude-sonnet-4.6", "anthropic", "claude-sonnet-4-6", None)
    assert choice.restrict_to_workspace is True
    assert model_choice(fleet.defaults, fleet.hosts[0], "openai").name == "gpt-5.4"


def test_host_overrides_model_api_base_and_sandbox(tmp_path):
    from fabfile.core.config import model_choice

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
    from fabfile.core.config import model_choice

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


# --- input the parser must survive: one line, exit 2, no host contacted ----------------------------------


def assert_one_line_exit_2(result, fragment):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "data, expected",
    [
        (b'{"hosts": [{"name": "a", "host": "h", "user": "\xff"}]}',
         "not UTF-8 text: byte 0xff at offset 47 (line 1) cannot be decoded"),
        (b'{\n"hosts": [\n]\n}\n\xc3', "not UTF-8 text: byte 0xc3 at offset 17 (line 5)"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON nested deeper than 32 levels"),
        (b'{"hosts": ' + b"[" * 500 + b"]" * 500 + b"}", "JSON nested deeper than 32 levels (at hosts[0][0][0]...)"),
        (b'{"hosts": [], "defaults": {"timeout": NaN}}', "invalid JSON at line 1, column 39: NaN: JSON has no NaN"),
        (b'{"hosts": [],\n "defaults": {"timeout": Infinity}}', "line 2, column 26: Infinity: JSON has no NaN"),
        (b'{"hosts": [], "defaults": {"timeout": -Infinity}}', "column 39: -Infinity: JSON has no NaN"),
        (b'{"hosts": [], "defaults": {"timeout": 1e999}}', "1e999: too large for a number"),
        (b'{"hosts": [], "defaults": {"parallel": 1' + b"0" * 5000 + b"}}", "an integer of more than 20 digits"),
        (b'{"hosts": "NaN"}', "hosts: 'NaN' is not of type 'array'"),
    ],
    ids=["bad-byte", "bad-last-byte", "100000-arrays", "500-arrays", "nan", "infinity", "-infinity", "1e999",
         "5000-digits", "nan-string"],
)
def test_config_bytes_the_parser_refuses(tmp_path, guarded_env, data, expected):
    path = tmp_path / "fleet.json"
    path.write_bytes(data)
    assert_one_line_exit_2(run_fab(["status", "--config", str(path)], guarded_env), expected)


def test_a_bom_is_allowed(tmp_path):
    path = tmp_path / "fleet.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(minimal()).encode())
    assert load_config(str(path)).hosts[0].name == "pi-1"


def test_control_characters_in_strings_are_refused(tmp_path):
    """Python's `$` matches before a final newline: the name pattern alone would let "pi-1\\n" through."""
    path = write_json(tmp_path / "fleet.json", minimal([{"name": "pi-1\n", "host": "127.0.0.1", "user": "pi"}]))
    with pytest.raises(UsageError, match=r"hosts\[0\].name: 'pi-1\\n' contains a control character"):
        load_config(str(path))


def test_integers_written_as_floats_become_ints(tmp_path):
    hosts = [{"name": "a", "host": "127.0.0.1", "user": "u", "port": 2222.0, "max_tasks": 2.0}]
    fleet = load_config(str(write_json(tmp_path / "fleet.json", minimal(hosts, parallel=8.0))))
    assert (fleet.hosts[0].port, fleet.hosts[0].max_tasks, fleet.defaults.parallel) == (2222, 2, 8)
    assert all(type(v) is int for v in (fleet.hosts[0].port, fleet.hosts[0].max_tasks, fleet.defaults.parallel))


def test_template_cannot_be_written_under_a_file(tmp_path, guarded_env):
    (tmp_path / "a-file").write_text("")
    path = tmp_path / "a-file" / "sub" / "fleet.json"
    assert_one_line_exit_2(run_fab(["status", "--config", str(path)], guarded_env),
                           f"cannot write a template config at {path}: {tmp_path / 'a-file'} is not a directory")


def test_template_cannot_be_written_in_a_read_only_directory(tmp_path, guarded_env):
    from harness.faults import run_with_read_only

    directory = tmp_path / "ro"
    directory.mkdir()
    path = directory / "cfg" / "fleet.json"
    result = run_with_read_only(directory, [FAB, "status", "--config", path], guarded_env)
    assert_one_line_exit_2(result, f"cannot write a template config at {path}: {directory} is not writable")
    assert not path.exists()


def test_unreadable_config_is_one_line(tmp_path, guarded_env):
    """Root reads any mode, so "unreadable" is a directory here, and a symlink to nothing."""
    directory = tmp_path / "dir.json"
    directory.mkdir()
    assert_one_line_exit_2(run_fab(["status", "--config", str(directory)], guarded_env),
                           f"cannot read config {directory}: Is a directory")
    dangling = tmp_path / "link.json"
    dangling.symlink_to(tmp_path / "gone.json")
    assert_one_line_exit_2(run_fab(["status", "--config", str(dangling)], guarded_env),
                           f"cannot read config {dangling}: no such file (a symlink to {tmp_path / 'gone.json'}")
    assert not (tmp_path / "gone.json").exists(), "no template is written through a dangling symlink"


def test_config_larger_than_16_mib_is_refused(tmp_path, guarded_env):
    path = tmp_path / "fleet.json"
    path.write_bytes(b'{"hosts": []}' + b" " * (16 << 20))
    assert_one_line_exit_2(run_fab(["status", "--config", str(path)], guarded_env), "larger than 16 MiB")


# --- caps, each saying why ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hosts, defaults, expected",
    [
        ([{"max_tasks": 65}], {}, "hosts[0].max_tasks: 65 is greater than the maximum of 64 (each batch slot is an "
                                  "SSH session on the host's one connection (batch keeps one more to stop tasks), "
                                  "and sshd allows MaxSessions per connection, 10 by default: at most 64)"),
        ([{}], {"parallel": 1025}, "defaults.parallel: 1025 is greater than the maximum of 1024"),
        ([{}], {"timeout": 86401}, "defaults.timeout: 86401 is greater than the maximum of 86400 (seconds a task "
                                   "may run: at most 86400, one day)"),
        ([{}], {"connect_timeout": 1e9}, "defaults.connect_timeout: 1000000000.0 is greater than the maximum of 86400"),
        ([{}] * 10001, {}, "hosts: 10001 hosts, at most 10000 in one config"),
    ],
    ids=["max_tasks", "parallel", "timeout", "connect_timeout", "hosts"],
)
def test_caps(tmp_path, guarded_env, hosts, defaults, expected):
    entries = [{"name": f"h{i}", "host": "127.0.0.1", "user": "u", **extra} for i, extra in enumerate(hosts)]
    path = write_json(tmp_path / "fleet.json", minimal(entries, **defaults))
    assert_one_line_exit_2(run_fab(["status", "--config", str(path)], guarded_env), expected)


def test_caps_themselves_are_allowed(tmp_path):
    hosts = [{"name": "a", "host": "127.0.0.1", "user": "u", "max_tasks": 64}]
    fleet = load_config(str(write_json(tmp_path / "fleet.json",
                                       minimal(hosts, parallel=1024, timeout=86400, connect_timeout=86400))))
    assert (fleet.hosts[0].max_tasks, fleet.defaults.parallel, fleet.defaults.timeout) == (64, 1024, 86400)


def test_schema_documents_every_cap():
    schema = json.loads(fleet_config_module.SCHEMA_FILE.read_text())
    host, defaults = schema["$defs"]["host"]["properties"], schema["$defs"]["defaults"]["properties"]
    assert schema["properties"]["hosts"]["maxItems"] == fleet_config_module.MAX_HOSTS == 10000
    assert host["max_tasks"]["maximum"] == 64 and "MaxSessions" in host["max_tasks"]["description"]
    assert defaults["parallel"]["maximum"] == 1024
    assert defaults["timeout"]["maximum"] == defaults["connect_timeout"]["maximum"] == 86400
    for item in (schema["properties"]["hosts"], host["max_tasks"], defaults["parallel"], defaults["timeout"],
                 defaults["connect_timeout"]):
        assert item["description"]


# --- host specs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target, user, host, port",
    [
        ("u@[::1]:22", "u", "::1", 22),
        ("u@[::1]", "u", "::1", None),
        ("u@::1", "u", "::1", None),
        ("u@[fe80::1%eth0]:2222", "u", "fe80::1%eth0", 2222),
        ("u@2001:db8::7", "u", "2001:db8::7", None),
        ("u@10.0.0.5:0022", "u", "10.0.0.5", 22),
        ("u@box", "u", "box", None),
    ],
)
def test_parse_target(target, user, host, port):
    from fabfile.core.config import parse_target

    entry = parse_target(target)
    assert (entry.user, entry.host, entry.port, entry.name) == (user, host, port, host)


def test_ipv6_address_is_shown_in_brackets():
    from fabfile.core.config import parse_target

    assert parse_target("u@[::1]:22").address == "u@[::1]:22"
    assert parse_target("u@::1").address == "u@[::1]"


@pytest.mark.parametrize(
    "target, complaint",
    [
        ("a@b@c", "expected user@host[:port], with exactly one @"),
        ("@host", "the user before @ is empty"),
        ("u@", "the host after @ is empty"),
        ("u@:22", "the host after @ is empty"),
        ("u@host:", "the port must be a number from 1 to 65535"),
        ("u@host:0", "the port must be a number from 1 to 65535"),
        ("u@host:65536", "the port must be a number from 1 to 65535"),
        ("u@host:²", "the port must be a number from 1 to 65535"),
        ("u@host:1" + "0" * 5000, "the port must be a number from 1 to 65535"),
        ("u@host:-1", "the port must be a number from 1 to 65535"),
        ("u@[::1]:x", "the port must be a number from 1 to 65535"),
        ("u@[::1", "'[' without its ']'"),
        ("u@[::1]22", "expected :port after ]"),
        ("u@[box]:22", "[box] is not an IPv6 address"),
        ("u@host:22:33", "not host:port, nor an IPv6 address"),
        ("u@ho st", "a space or a control character"),
        ("u@host\n", "a space or a control character"),
    ],
)
def test_bad_targets(target, complaint):
    from fabfile.core.config import parse_target

    with pytest.raises(UsageError) as caught:
        parse_target(target)
    assert complaint in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def test_cli_bad_target_is_one_line_and_needs_no_config(tmp_path, guarded_env):
    path = tmp_path / "absent.json"
    for spec, complaint in (("a@b@c", "bad target 'a@b@c': expected user@host[:port], with exactly one @"),
                            ("u@host:99999", "the port must be a number from 1 to 65535")):
        assert_one_line_exit_2(run_fab(["status", "--config", str(path), "--hosts", spec], guarded_env), complaint)
        assert not path.exists()


def test_adhoc_targets_are_deduplicated(tagged_fleet):
    assert [h.name for h in select_hosts(tagged_fleet, "u@127.0.0.5,u@127.0.0.5, nuc")] == ["nuc", "127.0.0.5"]


# --- one rule for an empty selection, in every verb ---------------------------------------------------------


@pytest.mark.parametrize("spec", [",,", "", " , "])
def test_empty_spec_selects_nothing_and_says_so(tagged_fleet, spec):
    with pytest.raises(UsageError, match=f"no hosts selected: --hosts '{spec}' names none"):
        select_hosts(tagged_fleet, spec)


EMPTY_SELECTION_RUNS = [
    ("status", []),
    ("deploy", []),
    ("teardown", ["--yes"]),
    ("batch", ["-t", "hi"]),
    ("dispatch", ["-t", "hi"]),
    ("dispatch", ["--all", "-t", "hi"]),
]


@pytest.mark.parametrize("verb, flags", EMPTY_SELECTION_RUNS)
def test_every_verb_refuses_a_config_without_hosts(tmp_path, guarded_env, verb, flags):
    path = write_json(tmp_path / "fleet.json", {"hosts": []})
    result = run_fab([verb, "--config", str(path), *flags], dict(guarded_env, ANTHROPIC_API_KEY="sk-x"))
    assert_one_line_exit_2(result, f"no hosts selected: {path} lists no hosts")


@pytest.mark.parametrize("verb, flags", EMPTY_SELECTION_RUNS[:4] + [("dispatch", ["-t", "hi"])])
@pytest.mark.parametrize("flag, spec", [("--hosts", ",,"), ("--hosts", "")])
def test_every_verb_refuses_an_empty_hosts_flag(tmp_path, guarded_env, verb, flags, flag, spec):
    path = write_json(tmp_path / "fleet.json", minimal())
    result = run_fab([verb, "--config", str(path), *flags, flag, spec], dict(guarded_env, ANTHROPIC_API_KEY="sk-x"))
    assert_one_line_exit_2(result, f"no hosts selected: {flag} '{spec}' names none")


def test_dispatch_refuses_an_empty_host_flag(tmp_path, guarded_env):
    path = write_json(tmp_path / "fleet.json", minimal())
    result = run_fab(["dispatch", "--config", str(path), "--host", ",", "-t", "hi"], guarded_env)
    assert_one_line_exit_2(result, "no hosts selected: --host ',' names none")


# --- a config that passed is not checked again ----------------------------------------------------


def marks(cache):
    directory = cache / "picoclaw-fleet" / "valid-configs"
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def test_a_config_that_passed_is_remembered_and_any_change_is_checked_again(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = write_json(tmp_path / "fleet.json", minimal(parallel=7))
    first = load_config(str(path))
    [mark] = marks(tmp_path / "cache")
    checked = []
    monkeypatch.setattr(fleet_config_module, "validate_config", lambda data: checked.append(data))
    assert load_config(str(path)) == first and checked == []  # same bytes, same rules: no check
    write_json(path, minimal(parallel=8))
    assert load_config(str(path)).defaults.parallel == 8 and len(checked) == 1  # new bytes: checked
    monkeypatch.setattr(fleet_config_module, "validation_rules", lambda: b"other schema")
    load_config(str(path))
    assert len(checked) == 2  # the same bytes under other rules: checked
    assert mark in marks(tmp_path / "cache")


def test_a_config_that_failed_is_never_remembered(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = write_json(tmp_path / "fleet.json", minimal([{"name": "pi-1", "host": "127.0.0.1", "arch": "x86"}]))
    for _ in range(2):
        with pytest.raises(UsageError, match=r"hosts\[0\].arch: 'x86' is not one of"):
            load_config(str(path))
    assert marks(tmp_path / "cache") == []
    # A valid config's mark never vouches for an invalid one: marks are by content.
    write_json(path, minimal())
    load_config(str(path))
    write_json(path, minimal([{"name": "pi-1", "host": "127.0.0.1", "arch": "x86"}]))
    with pytest.raises(UsageError, match="is not one of"):
        load_config(str(path))


def test_an_unwritable_cache_only_means_the_check_runs(monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    path = write_json(tmp_path / "fleet.json", minimal())
    assert load_config(str(path)).hosts[0].name == "pi-1"
    assert load_config(str(path)).hosts[0].name == "pi-1"


def test_marks_are_kept_to_max_marks(monkeypatch, tmp_path):
    from fabfile.core import cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "MAX_MARKS", 3)
    path = tmp_path / "fleet.json"
    for parallel in range(1, 6):
        write_json(path, minimal(parallel=parallel))
        load_config(str(path))
    assert len(marks(tmp_path / "cache")) == 3
    assert cache.ValidConfigs(fleet_config_module.validation_rules()).known(path.read_bytes())


def test_a_run_whose_config_passed_before_never_imports_jsonschema(tmp_path, guarded_env):
    path = write_json(tmp_path / "fleet.json", minimal())
    env = dict(guarded_env, XDG_CACHE_HOME=str(tmp_path / "cache"))
    code = ("import sys; from fabfile.core.config import load_config; "
            f"load_config({str(path)!r}); print('jsonschema' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                           check=True).stdout.strip() for _ in range(2)]
    assert runs == ["True", "False"]
