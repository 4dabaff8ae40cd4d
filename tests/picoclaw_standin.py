#!/usr/bin/env python3
"""Stand-in for the PicoClaw binary, installed on simulated hosts as `picoclaw`.

The real PicoClaw is a Go binary that talks to an LLM provider; tests need
something that honours the same command line but answers deterministically
and offline.  This script is stdlib-only because it runs under whatever
python3 the (simulated) remote host has.

Subcommands:
  version                 banner line with VERSION (rewritten by build_standin)
  onboard                 create ~/.picoclaw/config.json, asking before overwrite
  agent -m/--message TEXT echo TEXT byte-for-byte, unless a directive says otherwise

Directives are a prefix of TEXT, or come from PICOCLAW_STANDIN_MODE (or the
DEFAULT_MODE baked in by build_standin) and then apply to every task:
  ::sleep=SECONDS::rest   sleep, then print rest
  ::fail::rest            "stand-in failure: rest" on stderr, exit 3
  ::hang::rest            print rest, then sleep forever
  ::env::                 report PROVIDER and which *_API_KEY vars are set
  ::pid::rest             print own pid, then behave like ::hang::
"""

import json
import os
import re
import sys
import time

VERSION = "0.0.0"
DEFAULT_MODE = None

FAIL_EXIT = 3
USAGE_EXIT = 2
DIRECTIVE = re.compile(r"::(sleep=(?P<seconds>[0-9.]+)|fail|hang|env|pid)::", re.DOTALL)
USAGE = """usage: picoclaw <command> [args]

commands:
  version              show version
  onboard              initialise ~/.picoclaw
  agent -m MESSAGE     run one task and print the answer
"""


def out(text, stream=None):
    """Write text as UTF-8 bytes: the remote locale may be C/POSIX, and task
    text must survive byte-for-byte (argv bytes are restored by fsencode)."""
    stream = stream or sys.stdout
    data = text if isinstance(text, bytes) else os.fsencode(text)
    stream.buffer.write(data)
    stream.buffer.flush()


def config_path():
    """Where PicoClaw keeps its config; HOME-relative like the real binary."""
    return os.path.join(os.path.expanduser("~"), ".picoclaw", "config.json")


def cmd_version(_args):
    out("\U0001f99e picoclaw v%s (stand-in for tests)\n" % VERSION)
    return 0


def cmd_onboard(_args):
    """Mimic the real onboard prompt so tests can prove that a product which
    closes stdin never clobbers an existing config."""
    path = config_path()
    if os.path.exists(path):
        out("Config already exists at %s\n" % path)
        out("Overwrite? (y/n): ")
        answer = sys.stdin.readline().strip().lower()
        if answer != "y":
            out("Aborted.\n")
            return 0
    home = os.path.dirname(path)
    os.makedirs(home, mode=0o700, exist_ok=True)
    os.chmod(home, 0o700)
    os.makedirs(os.path.join(home, "workspace"), exist_ok=True)
    config = {"agents": {"defaults": {"model": "stand-in"}},
              "written_by": "picoclaw-standin onboard"}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2)
        fh.write("\n")
    out("\U0001f99e picoclaw is ready!\n")
    return 0


def parse_agent_args(args):
    """Return the message, or None.  Hand-rolled rather than argparse because
    argparse rejects values that start with '-', while the real (pflag-based)
    CLI takes the next argument verbatim."""
    message = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-m", "--message"):
            if i + 1 >= len(args):
                return None
            message = args[i + 1]
            i += 2
        elif arg.startswith("--message="):
            message = arg[len("--message="):]
            i += 1
        elif arg.startswith("-m") and len(arg) > 2:
            message = arg[3:] if arg[2] == "=" else arg[2:]
            i += 1
        elif arg in ("-s", "--session", "--model"):
            i += 2
        else:
            i += 1  # -d/--debug and unknown flags are ignored
    return message


def split_directive(text):
    """(directive match or None, rest).  A directive in the task wins over the
    host-wide mode; the mode is applied by prefixing it to the task text."""
    match = DIRECTIVE.match(text)
    if match is None:
        mode = os.environ.get("PICOCLAW_STANDIN_MODE") or DEFAULT_MODE
        if mode:
            match = DIRECTIVE.match(mode + text)
            if match is not None:
                return match, (mode + text)[match.end():]
        return None, text
    return match, text[match.end():]


def provider():
    """Provider as the real binary resolves it: env var over config file."""
    value = os.environ.get("PICOCLAW_AGENTS_DEFAULTS_PROVIDER")
    if value:
        return value
    try:
        with open(config_path(), encoding="utf-8") as fh:
            value = json.load(fh).get("agents", {}).get("defaults", {}).get("provider")
    except (OSError, ValueError, AttributeError):
        value = None
    return value or "unset"


def report_env():
    """Say which keys are present without ever echoing a secret value."""
    out("PROVIDER=%s\n" % provider())
    for name in sorted(os.environ):
        if name.endswith("_API_KEY"):
            out("%s=set\n" % name)


def hang():
    while True:
        time.sleep(3600)


def cmd_agent(args):
    text = parse_agent_args(args)
    if text is None:
        out("picoclaw agent: -m/--message MESSAGE is required\n", sys.stderr)
        return USAGE_EXIT
    match, rest = split_directive(text)
    kind = match.group(1) if match else "echo"
    if kind == "env":
        report_env()
        return 0
    if kind == "fail":
        out("stand-in failure: %s\n" % rest, sys.stderr)
        return FAIL_EXIT
    if kind == "pid":
        out("%d\n" % os.getpid())
    if kind.startswith("sleep="):
        time.sleep(float(match.group("seconds")))
    out(os.fsencode(rest) + b"\n")
    if kind in ("hang", "pid"):
        hang()
    return 0


COMMANDS = {"version": cmd_version, "onboard": cmd_onboard, "agent": cmd_agent}


def main(argv):
    if len(argv) < 2 or argv[1] not in COMMANDS:
        out(USAGE, sys.stderr)
        return USAGE_EXIT
    return COMMANDS[argv[1]](argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
