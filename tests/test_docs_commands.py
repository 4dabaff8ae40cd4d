"""Every command line SKILL.md and README.md show is real.

A command line is a line of a fenced code block that starts (after an
optional ``$ ``) with ``fab``, ``invoke``/``inv``, ``picoclaw-fleet`` or
``make``. Each one is checked in two ways:

* **parsed**, always: by the real CLI parser (Fabric's/Invoke's, in-process,
  nothing executed) -- an unknown verb, an unknown flag or a flag missing its
  value fails. ``make`` lines are expanded with ``make -n`` and the fab
  command they run is parsed the same way; a script they run must exist.
* **run** against the testbed, when it can be: a fleet verb whose targets are
  names of the doc fleet or loopback addresses. The doc fleet is three hosts
  named ``pi-1``, ``pi-2``, ``pi-3`` (tag ``lab``) behind the testbed sshd,
  given by ``PICOCLAW_FLEET_CONFIG``; the working directory holds
  ``tasks.txt`` and ``tasks.jsonl``; HOME is private and holds an
  ~/.ssh/config naming the three hosts; an API key is set; releases come
  from the local release server. Each run must exit 0 (and print JSON when
  asked to). Before each run the hosts are put back to "deployed", so the
  order of the docs does not matter. Lines that need a real fleet (a
  non-loopback address, an ``-i``/``-S`` file, ``--from-file``, a
  ``<placeholder>``) and the dev targets are parsed only.
"""

import contextlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import ParseError

from harness.cli import REPO
from harness.release_server import ReleaseServer
from harness.standin import standin_archive

BIN = Path(sys.executable).parent
SKILL_MD = "skill/picoclaw-fleet/SKILL.md"
DOCS = (SKILL_MD, "README.md")
PROGRAMS = {"fab", "invoke", "inv", "picoclaw-fleet", "make"}
FLEET_VERBS = {"init", "status", "deploy", "dispatch", "batch", "teardown"}
DOC_HOSTS = ("pi-1", "pi-2", "pi-3")
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "2>", "2>&1", "<"}
PARSE_ONLY_FLAGS = {"-i", "--identity", "-S", "--ssh-config", "--from-file"}
LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|localhost|\[?::1\]?)(:\d+)?$")
TIMEOUT = 300


# --- finding the command lines ------------------------------------------------------------------


def code_block_lines(text):
    """The lines inside fenced code blocks, with backslash continuations joined."""
    lines, inside, pending = [], False, ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        lines.append(line)
    return lines


def command_lines(text):
    """Command lines of our CLIs in `text`, as argv lists (comments and shell plumbing dropped)."""
    commands = []
    for line in code_block_lines(text):
        line = line.removeprefix("$ ")
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words.pop(0)  # VAR=value before the command
        if not words or words[0] not in PROGRAMS:
            continue
        cut = next((i for i, w in enumerate(words) if w in SHELL_OPERATORS), len(words))
        commands.append(words[:cut])
    return commands


def documented_commands():
    """(doc name, argv) for every command line of the docs that exist."""
    found = []
    for name in DOCS:
        path = REPO / name
        if path.exists():
            found += [(name, argv) for argv in command_lines(path.read_text())]
    return found


# --- parsing without running --------------------------------------------------------------------


#: Parses argv (JSON in argv[1]) with the real CLI parser and prints the tasks it names, or the
#: parse error. Run in a fresh interpreter, so the parser sees the fabfile exactly as `fab` does
#: at start-up, whatever this process has imported since.
PARSE_SCRIPT = """
import contextlib, io, json, sys
from invoke import Exit, ParseError, Program

argv = json.loads(sys.argv[1])
if argv[0] in ("invoke", "inv"):
    import tasks  # the repo's tasks.py, as `invoke` loads it
    program = Program(namespace=tasks.namespace, name="Invoke", binary="invoke")
else:
    from fabfile.cli import make_program  # Fabric's Fab over the fabfile: `fab` and `picoclaw-fleet`
    program = make_program()


def parse(step, *args):
    # one parsing step; picoclaw-fleet's program turns a ParseError into a usage error (Exit, code 2)
    try:
        step(*args)
    except Exit as exc:
        if exc.code:
            raise ParseError(exc.message) from None
        raise


try:
    with contextlib.redirect_stdout(io.StringIO()):
        program.create_config()
        try:
            parse(program.parse_core, argv)
            core_only = False
        except Exit:  # --version and friends: valid, nothing more to parse
            core_only = True
        if not core_only:
            program.parse_collection()
            parse(program.parse_tasks)
    if core_only:
        print(json.dumps({"tasks": []}))
        sys.exit(0)
    if not program.tasks and not (program.args.list.value or program.args.help.value):
        raise ParseError("no task named")
    print(json.dumps({"tasks": [task.name for task in program.tasks]}))
except ParseError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def parse_cli(argv):
    """Parse `argv` with the real CLI parser (nothing runs); ParseError if it is not a valid command line."""
    result = subprocess.run([sys.executable, "-c", PARSE_SCRIPT, json.dumps(argv)], cwd=REPO,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    if "error" in answer:
        raise ParseError(f"{shlex.join(argv)}: {answer['error']}")
    return answer["tasks"]


def make_dry_run(argv, env):
    """`make -n`: the commands a make line runs (checks the target exists and its variables)."""
    result = subprocess.run(["make", "-n", *argv[1:]], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, f"{shlex.join(argv)}: {result.stderr.strip()}"
    commands = []
    for line in result.stdout.splitlines():
        with contextlib.suppress(ValueError):  # shell plumbing (continued lines) is not ours to parse
            commands.append(shlex.split(line))
    return [words for words in commands if words]


def check_parses(argv, env):
    """Parse one documented command line (and, for make, what it runs)."""
    if argv[0] != "make":
        parse_cli(argv)
        return
    for command in make_dry_run(argv, env):
        program = Path(command[0]).name
        if program == "fab":
            parse_cli(["fab", *command[1:]])
        elif program == "python" and len(command) > 1 and command[1].endswith(".py"):
            assert (REPO / command[1]).exists(), f"{shlex.join(argv)} runs {command[1]}, which does not exist"


# --- running against the testbed ------------------------------------------------------------------


def verb_of(argv):
    """The fleet verb a command line runs, or None."""
    if argv[0] == "make":
        return next((w for w in argv[1:] if w in FLEET_VERBS), None)
    words = iter(argv[1:])
    for word in words:
        if word in ("-i", "--identity", "-S", "--ssh-config", "-r", "--search-root"):
            next(words, None)  # a core flag's value, not the verb
        elif not word.startswith("-"):
            return word
    return None


def runnable(argv):
    """True when the line can run against the doc fleet (see the module docstring)."""
    verb = verb_of(argv)
    if verb not in FLEET_VERBS or any(w in PARSE_ONLY_FLAGS for w in argv) or any("<" in w for w in argv):
        return False
    for word in argv:
        for item in word.split(","):
            user, at, host = item.partition("@")
            if at and user and not LOOPBACK.match(host.split("=")[-1]):
                return False
    return True


def runnable_argv(argv, workdir):
    """The argv to execute: our binaries from the venv, fab/invoke told where the repo is."""
    program, rest = argv[0], argv[1:]
    if program == "make":
        absolute = [f"FILE={workdir / w[5:]}" if w.startswith("FILE=") and not w[5:].startswith("/") else w
                    for w in rest]
        return ["make", "-s", "-C", str(REPO), *absolute]
    binary = str(BIN / ("invoke" if program == "inv" else program))
    if program in ("fab", "invoke", "inv"):
        return [binary, "--search-root", str(REPO), *rest]
    return [binary, *rest]


@pytest.fixture(scope="module")
def doc_fleet(testbed, tmp_path_factory):
    """The fleet the docs talk about: pi-1..pi-3 (@lab), a release server, a private HOME."""
    hosts = testbed.add_hosts(len(DOC_HOSTS), prefix="doc")
    for sim, name in zip(hosts, DOC_HOSTS):
        sim.name = name
    workdir = tmp_path_factory.mktemp("docs")
    home = workdir / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("".join(
        f"Host {name}\n  HostName 127.0.0.1\n  Port {sim.port}\n  User {sim.user}\n  IdentityFile {testbed.client_key}\n"
        for name, sim in zip(DOC_HOSTS, hosts)))
    (workdir / "tasks.txt").write_text("# one task a line\nCheck the disk\nCheck the load\n")
    (workdir / "tasks.jsonl").write_text('{"id": "disk", "task": "Check the disk"}\n'
                                         '{"id": "load", "task": "Check the load", "host": "pi-2"}\n')
    with ReleaseServer() as server:
        server.publish("sipeed/picoclaw", "v0.5.0", {f"picoclaw_{arch}.tar.gz": standin_archive("0.5.0", arch)
                                                         for arch in ("Linux_x86_64", "Linux_arm64")})
        config = testbed.fleet_config(hosts, github_api=server.url, known_hosts=str(workdir / "known_hosts"))
        for entry in config["hosts"]:
            entry["tags"] = ["lab"]
        (workdir / "fleet.json").write_text(json.dumps(config, indent=2))
        yield {"hosts": hosts, "workdir": workdir, "home": home, "config": workdir / "fleet.json"}


def doc_env(guarded_env, fleet, config_path):
    env = dict(guarded_env, HOME=str(fleet["home"]), XDG_CACHE_HOME=str(fleet["workdir"] / "cache"),
               PICOCLAW_FLEET_CONFIG=str(config_path), ANTHROPIC_API_KEY="sk-docs-test-not-real")
    for name in ("SSH_AUTH_SOCK", "MAKEFLAGS", "MAKELEVEL"):
        env.pop(name, None)
    return env


def reset_to_deployed(testbed, hosts):
    """Every doc host has the stand-in and an .env, whatever the previous doc line did."""
    for host in hosts:
        testbed.install_standin(host, version="0.5.0")
        testbed.run_as(host, "mkdir -p ~/.picoclaw && printf 'PROVIDER=anthropic\\n' > ~/.picoclaw/.env")


# --- the tests ------------------------------------------------------------------------------------


def test_skill_md_is_an_openclaw_skill():
    text = (REPO / SKILL_MD).read_text()
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "SKILL.md must start with YAML frontmatter between --- lines"
    front = match.group(1)
    assert re.search(r"^name: picoclaw-fleet$", front, re.M)
    description = re.search(r"^description: (.+)$", front, re.M)
    assert description and len(description.group(1)) > 40
    body = text[match.end():]
    for step in ("status", "deploy", "dispatch", "batch", "teardown", "--json"):
        assert step in body


def test_docs_show_enough_commands_to_matter():
    commands = documented_commands()
    skill = [argv for doc, argv in commands if doc == SKILL_MD]
    assert len(skill) >= 8
    assert {verb_of(argv) for argv in skill} >= FLEET_VERBS
    assert sum(runnable(argv) for argv in skill) >= 6


def test_the_checker_catches_a_wrong_flag_and_a_wrong_verb(guarded_env):
    """The check itself: a doc naming a flag or verb that does not exist would fail it."""
    for bad in (["fab", "dispatch", "--tsak", "x"], ["picoclaw-fleet", "statuss"], ["invoke", "deploy", "--hostz", "a"],
                ["fab", "status", "--hosts"]):
        with pytest.raises(ParseError):
            parse_cli(bad)
    with pytest.raises(AssertionError):
        check_parses(["make", "no-such-target"], guarded_env)
    assert parse_cli(["fab", "-i", "k", "dispatch", "--host", "pi-1", "--task", "x"]) == ["dispatch"]


@pytest.mark.parametrize("doc, argv", documented_commands(), ids=lambda v: shlex.join(v) if isinstance(v, list) else v)
def test_documented_command(doc, argv, testbed, doc_fleet, guarded_env, tmp_path):
    fresh_config = tmp_path / "fleet.json"  # init lines write a config of their own
    config = fresh_config if verb_of(argv) == "init" else doc_fleet["config"]
    env = doc_env(guarded_env, doc_fleet, config)
    check_parses(argv, env)
    if not runnable(argv):
        return
    reset_to_deployed(testbed, doc_fleet["hosts"])
    result = subprocess.run(runnable_argv(argv, doc_fleet["workdir"]), cwd=doc_fleet["workdir"], env=env,
                            capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{doc}: {shlex.join(argv)}\n{result.stdout}\n{result.stderr}"
    if any(word == "--json" or (word.startswith("ARGS=") and "--json" in word[5:].split()) for word in argv):
        json.loads(result.stdout)
    assert "sk-docs-test-not-real" not in result.stdout + result.stderr
