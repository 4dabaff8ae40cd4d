"""Whatever a user feeds in -- config files, tasks files, host specs -- ends in one line and exit 2, or a run.

Hypothesis generates the input: JSON-ish documents (NaN, Infinity, huge
numbers, deep nesting, odd strings), near-valid configs with one value
wrong, and raw bytes. Each is run in-process through the real CLI
(`fabfile.cli.make_program`). The contract:

* exit 2: exactly one line on stderr, nothing on stdout, no traceback, and
  no host contacted;
* otherwise the input happened to be valid: exit 0 or 1, no traceback.

Contacting a host is impossible here: `FleetConnection.open` is replaced by
a recorder that refuses, so a valid run reports every host unreachable and
a usage error can be checked to have dialled nobody.

The tasks file's limits (streamed, capped, each refusal naming its line)
are tested first, without Hypothesis.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis keeps caches (unicode tables, constants) in ./.hypothesis: keep them out of the repository.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "pcf-hypothesis"))

from fabfile.core import tasks as batch_tasks
from fabfile.core.tasks import MAX_LINE_BYTES, MAX_TASKS, read_tasks
from fabfile.cli import make_program
from fabfile.ssh.connections import FleetConnection
from fabfile.core.errors import UsageError
from harness.cli import FAB, REPO

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- running the CLI in-process, with no way to reach a host -----------------------------------------


class Run:
    def __init__(self, code, stdout, stderr, dialled):
        self.code, self.stdout, self.stderr, self.dialled = code, stdout, stderr, dialled


def run_cli(argv, home):
    """`fab <argv>` in this process: (exit code, stdout, stderr, connections attempted)."""
    dialled = []

    def refuse(cxn):
        dialled.append(cxn.host)
        raise ConnectionRefusedError(111, "refused by the fuzz test")

    out, err = io.StringIO(), io.StringIO()
    env = {"HOME": str(home), "PICOCLAW_FLEET_CONFIG": str(Path(home) / "default.json"),
           "ANTHROPIC_API_KEY": "sk-fuzz"}
    code = 0
    with mock.patch.object(FleetConnection, "open", refuse), mock.patch.dict(os.environ, env), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            make_program().run(["fab", *argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Run(code, out.getvalue(), err.getvalue(), dialled)


def check_contract(result):
    """Exit 2 is one line and no host; anything else is a run (exit 0 or 1). Never a traceback."""
    event(f"exit {result.code}")  # --hypothesis-show-statistics: how many inputs were valid runs
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    if result.code == 2:
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("picoclaw-fleet: "), result.stderr
        assert result.dialled == []
    else:
        assert result.code in (0, 1), (result.code, result.stderr)


@contextlib.contextmanager
def scratch():
    with tempfile.TemporaryDirectory(prefix="pcf-fuzz-") as directory:
        home = Path(directory) / "home"
        home.mkdir()
        yield Path(directory), home


def valid_config(port=1, **defaults):
    """A config that passes validation; its hosts' port is closed (and `open` is refused anyway)."""
    hosts = [{"name": "pi-1", "host": "127.0.0.1", "user": "pi", "port": port},
             {"name": "pi-2", "host": "127.0.0.1", "user": "pi", "port": port, "tags": ["lab"]}]
    return {"hosts": hosts, "defaults": {"connect_timeout": 1, "github_api": "http://127.0.0.1:1", **defaults}}


# --- the tasks file: streamed and bounded ----------------------------------------------------------


#: Runs the `fab` script and writes its peak RSS (VmHWM, KiB) to the file named by $PCF_PEAK_FILE. Not
#: ru_maxrss: Linux carries the forking parent's RSS (the pytest process) into the child's ru_maxrss.
PEAK_WRAPPER = """
import atexit, os, runpy, sys
def peak():
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["PCF_PEAK_FILE"], "w") as out:
        out.write(kib)
atexit.register(peak)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def fab_batch(tasks_file, config, env):
    """`fab batch` in a subprocess: (exit code, stdout, stderr, its peak RSS in KiB)."""
    with tempfile.TemporaryDirectory() as directory:
        peak_file = Path(directory) / "peak"
        result = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, FAB, "batch", "--config", str(config),
                                 "--tasks-file", str(tasks_file)], cwd=REPO, env=dict(env, PCF_PEAK_FILE=str(peak_file)),
                                capture_output=True, text=True, timeout=600)
        return result.returncode, result.stdout, result.stderr, int(peak_file.read_text())


def test_a_million_line_tasks_file_is_refused_at_the_cap_without_a_gigabyte(tmp_path, guarded_env):
    tasks = tmp_path / "tasks.txt"
    with open(tasks, "w") as handle:
        for number in range(1, 1_000_001):
            handle.write(f"task number {number}\n")
    config = tmp_path / "fleet.json"
    config.write_text(json.dumps(valid_config()))
    code, out, err, peak_kib = fab_batch(tasks, config, guarded_env)
    assert (code, out) == (2, "")
    assert err == f"picoclaw-fleet: {tasks} line {MAX_TASKS + 1}: more than {MAX_TASKS} tasks in one batch; split the file\n"
    assert peak_kib < 256 * 1024, f"peak RSS {peak_kib} KiB"


def test_a_huge_line_is_refused_naming_it_without_reading_it_whole(tmp_path, guarded_env):
    tasks = tmp_path / "tasks.txt"
    with open(tasks, "wb") as handle:
        handle.write(b"first task\nsecond task\n")
        for _ in range(200):
            handle.write(b"x" * (1 << 20))  # 200 MiB, no newline
    config = tmp_path / "fleet.json"
    config.write_text(json.dumps(valid_config()))
    code, out, err, peak_kib = fab_batch(tasks, config, guarded_env)
    assert (code, out) == (2, "")
    assert err == f"picoclaw-fleet: {tasks} line 3: longer than 1 MiB (a task is at most 131071 bytes)\n"
    assert peak_kib < 150 * 1024, f"peak RSS {peak_kib} KiB: the 200 MiB line was read whole"


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"one\ntw\xffo\n", "line 2: not valid UTF-8 (byte 0xff at column 3)"),
        (b"one\r\ntwo\r\n\xc3", "line 3: not valid UTF-8 (byte 0xc3 at column 1)"),
        (b'{"task": "a", "timeout": NaN}\n', "line 1: invalid JSON: NaN: JSON has no NaN or Infinity"),
        (b'{"task": "a", "timeout": 1e999}\n', "line 1: invalid JSON: 1e999: too large for a number"),
        (b'{"task": "a", "timeout": 86401}\n', 'line 1: "timeout" must be a number of seconds above 0 and at most 86400'),
        (b'{"task": "a", "id": ' + b"1" * 5000 + b"}\n", "line 1: invalid JSON: 111111111111111111111111...: an integer"),
        (b'{"task": "a"}\n{"task": ' + b"[" * 100_000 + b"\n", "line 2: JSON nested deeper than 32 levels"),
        (b'{"task": "a"}\n{"task": ' + b"[" * 100 + b"]" * 100 + b"}\n", "line 2: JSON nested deeper than 32 levels"),
        (b"x" * (MAX_LINE_BYTES + 1) + b"\n", "line 1: longer than 1 MiB"),
    ],
    ids=["bad-byte", "bad-last-byte", "nan", "1e999", "a-day-and-a-second", "5000-digit-id", "deep", "deepish",
         "long-line"],
)
def test_tasks_file_refusals_name_the_line(tmp_path, data, expected):
    path = tmp_path / "tasks.txt"
    path.write_bytes(data)
    with pytest.raises(UsageError) as caught:
        read_tasks(str(path))
    assert str(caught.value) == f"{path} {expected}" or str(caught.value).startswith(f"{path} {expected}")


def test_a_line_of_exactly_the_cap_is_read(tmp_path):
    """The cap is on the line, CRLF aside; the task inside is then checked by its own limit."""
    path = tmp_path / "tasks.txt"
    path.write_bytes(b"short\r\n" + b"y" * MAX_LINE_BYTES + b"\r\n")
    with pytest.raises(UsageError, match=r"line 2: the task is 1048576 bytes"):
        read_tasks(str(path))


def test_the_total_task_text_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(batch_tasks, "MAX_TOTAL_TASK_BYTES", 10)
    path = tmp_path / "tasks.txt"
    path.write_text("12345\n# comment\n6789\nabc\n")
    with pytest.raises(UsageError, match=r"line 4: the tasks add up to more than 0 MiB; split the file"):
        read_tasks(str(path))


def test_stdin_is_streamed_too(tmp_path):
    class Stdin:
        buffer = io.BytesIO(b"one\n\xfftwo\n")

    with pytest.raises(UsageError, match=r"^stdin line 2: not valid UTF-8 \(byte 0xff at column 1\)$"):
        read_tasks("-", stdin=Stdin())
    Stdin.buffer = io.BytesIO(b"one\n\ntwo")
    assert [t.data for t in read_tasks("-", stdin=Stdin())] == [b"one", b"two"]


# --- fuzz: config files ----------------------------------------------------------------------------


JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-10**30, max_value=10**30)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
                | st.sampled_from(["127.0.0.1", "pi", "pi-1", "@lab", "a@b@c", "u@[::1]:22", "~/.ssh/x", "", "\n"]))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=20)

HOST_KEYS = ["name", "host", "user", "port", "arch", "ssh_key", "tags", "gateway", "max_tasks", "model",
             "api_base", "restrict_to_workspace"]
DEFAULT_KEYS = ["provider", "api_key_env", "release_repo", "github_api", "timeout", "connect_timeout", "parallel",
                "host_key_policy", "known_hosts", "model", "api_base", "restrict_to_workspace"]


#: Values a key may well have (most valid, some at or past a limit), drawn as often as anything at all.
PLAUSIBLE = {
    "name": st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True) | st.sampled_from(["pi 1", "pi-1\n", ""]),
    "host": st.sampled_from(["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "a b", "u@h", ""]),
    "user": st.sampled_from(["pi", "root", "a b", "", "u\n"]),
    "port": st.integers(-1, 70000) | st.just(22.0),
    "arch": st.sampled_from(["amd64", "arm64", "x86", "mipsle"]),
    "ssh_key": st.sampled_from(["~/.ssh/x", "/nonexistent", "", "~"]),
    "tags": st.lists(st.sampled_from(["lab", "pi", "bad tag", ""]), max_size=3),
    "gateway": st.sampled_from(["pi-1", "pi-2", "u@127.0.0.1", "u@127.0.0.1:0", "a@b@c", "nobody", ""]),
    "max_tasks": st.integers(-1, 70),
    "model": st.sampled_from(["gpt-5.4", "has space", "x" * 129]),
    "api_base": st.sampled_from(["http://127.0.0.1:1/v1", "ftp://x", "http://", "http://u:p@h/v1"]),
    "restrict_to_workspace": st.booleans(),
    "provider": st.sampled_from(["anthropic", "openai", "acme", "bad provider"]),
    "api_key_env": st.sampled_from(["ANTHROPIC_API_KEY", "1BAD", "UNSET_FUZZ_KEY"]),
    "release_repo": st.sampled_from(["sipeed/picoclaw", "no-slash"]),
    "github_api": st.sampled_from(["http://127.0.0.1:1", "ftp://x"]),
    "timeout": st.floats(-1, 90000, allow_nan=False) | st.sampled_from([0, 86400, 86400.5]),
    "connect_timeout": st.floats(0, 2) | st.sampled_from([86401, 0.001]),
    "parallel": st.integers(-1, 1100),
    "host_key_policy": st.sampled_from(["accept-new", "strict", "off", "yolo"]),
    "known_hosts": st.sampled_from(["~/.ssh/known_hosts", "/dev/null", "/", "/nonexistent/dir/kh", "/proc/self"]),
}


def value_for(key):
    plausible = PLAUSIBLE.get(key)
    return JSON_VALUES if plausible is None else st.one_of(plausible, plausible, plausible, JSON_VALUES)


@st.composite
def near_valid_configs(draw):
    """A valid config with a few values replaced (by likely ones or by anything), a key added or a host added."""
    config = valid_config()
    for _ in range(draw(st.integers(1, 2))):
        where = draw(st.sampled_from(["host", "host", "defaults", "defaults", "root", "extra-host"]))
        key = draw(st.sampled_from((HOST_KEYS if where == "host" else DEFAULT_KEYS) + ["colour"]))
        value = draw(value_for(key))
        hosts_ok = isinstance(config.get("hosts"), list) and bool(config["hosts"]) and all(
            isinstance(h, dict) for h in config["hosts"][:2])
        if where in ("host", "extra-host") and not hosts_ok or where == "defaults" and not isinstance(
                config.get("defaults"), dict):
            where = "root"
        if where == "host":
            config["hosts"][draw(st.integers(0, min(1, len(config["hosts"]) - 1)))][key] = value
        elif where == "defaults":
            config["defaults"][key] = value
        elif where == "root":
            config[draw(st.sampled_from(["hosts", "defaults", "extra"]))] = value
        else:
            config["hosts"].append(draw(st.sampled_from([dict(config["hosts"][0]), {
                "name": "g", "host": "127.0.0.1", "user": "u", "gateway": "g"}, value])))
    return config


def mutated(data, edits):
    data = bytearray(data)
    for position, kind, byte in edits:
        position %= len(data) + 1
        if kind == "insert":
            data[position:position] = bytes([byte])
        elif kind == "delete" and position < len(data):
            del data[position]
        elif position < len(data):
            data[position] = byte
    return bytes(data)


CONFIG_BYTES = st.one_of(
    JSON_VALUES.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    near_valid_configs().map(lambda c: json.dumps(c, allow_nan=True).encode()),
    st.tuples(near_valid_configs(), st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(
        ["insert", "delete", "replace"]), st.integers(0, 255)), min_size=1, max_size=4)).map(
        lambda pair: mutated(json.dumps(pair[0]).encode(), pair[1])),
    st.binary(max_size=200),
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 5000).map(lambda n: b'{"hosts": ' + b"[" * n + b"]" * n + b"}"),
)


@FUZZ
@given(CONFIG_BYTES)
def test_fuzz_config_files(data):
    with scratch() as (directory, home):
        path = directory / "fleet.json"
        path.write_bytes(data)
        check_contract(run_cli(["status", "--config", str(path)], home))


@FUZZ
@given(near_valid_configs(), st.sampled_from([["status"], ["deploy"], ["teardown", "--yes"], ["batch", "-t", "hi"],
                                              ["dispatch", "-t", "hi"], ["dispatch", "--all", "-t", "hi"]]))
@example(config=valid_config(host_key_policy="off"),
         verb=["deploy"])  # the insecure notice once came before deploy's usage error: two lines
def test_fuzz_near_valid_configs_in_every_verb(config, verb):
    with scratch() as (directory, home):
        path = directory / "fleet.json"
        path.write_text(json.dumps(config, allow_nan=True))
        result = run_cli([*verb, "--config", str(path), "--json"], home)
        check_contract(result)


# --- fuzz: host specs ---------------------------------------------------------------------------------


SPEC_PARTS = st.sampled_from(["pi-1", "pi-*", "@lab", "@", "u@127.0.0.1", "u@[::1]:22", "u@[::1]", "u@::1",
                              "a@b@c", "u@h:0", "u@h:65536", "u@h:²", "[", "]", ":", ",", " ", "", "u@", "@u"])
HOST_SPECS = st.one_of(
    st.lists(SPEC_PARTS | st.text(max_size=12), max_size=6).map(",".join),
    st.text(max_size=40),
).filter(lambda s: "\x00" not in s)


@FUZZ
@given(HOST_SPECS, st.sampled_from(["status", "teardown", "dispatch-host", "dispatch-hosts"]))
def test_fuzz_host_specs(spec, verb):
    with scratch() as (directory, home):
        path = directory / "fleet.json"
        path.write_text(json.dumps(valid_config()))
        if verb == "dispatch-host":
            argv = ["dispatch", f"--host={spec}", "-t", "hi"]
        elif verb == "dispatch-hosts":
            argv = ["dispatch", f"--hosts={spec}", "-t", "hi"]
        else:
            argv = [verb, f"--hosts={spec}", *(["--yes"] if verb == "teardown" else [])]
        result = run_cli([*argv, "--config", str(path), "--json"], home)
        check_contract(result)


# --- fuzz: tasks files ---------------------------------------------------------------------------------


TASK_LINES = st.one_of(
    st.text(max_size=30),
    JSON_VALUES.map(lambda v: json.dumps(v, allow_nan=True)),
    st.fixed_dictionaries({"task": JSON_VALUES}, optional={"id": JSON_VALUES, "host": JSON_VALUES,
                                                           "timeout": JSON_VALUES, "session": JSON_VALUES,
                                                           "colour": JSON_VALUES}).map(
        lambda v: json.dumps(v, allow_nan=True)),
    st.sampled_from(["# comment", "", "   ", '{"task": "a", "timeout": NaN}', '{"task": "b", "host": "pi-1"}',
                     '{"id": 1, "task": "c"}', '{"id": 1, "task": "d"}']),
)
TASKS_BYTES = st.one_of(
    st.lists(TASK_LINES, max_size=6).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
    st.binary(max_size=200),
    st.tuples(st.lists(TASK_LINES, min_size=1, max_size=4), st.binary(min_size=1, max_size=3)).map(
        lambda pair: "\n".join(pair[0]).encode("utf-8", "surrogatepass") + b"\n" + pair[1]),
)


@FUZZ
@given(TASKS_BYTES)
def test_fuzz_tasks_files(data):
    with scratch() as (directory, home):
        config = directory / "fleet.json"
        config.write_text(json.dumps(valid_config()))
        tasks = directory / "tasks.txt"
        tasks.write_bytes(data)
        result = run_cli(["batch", "--config", str(config), "--tasks-file", str(tasks), "--json"], home)
        check_contract(result)
