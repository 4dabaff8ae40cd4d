"""`make demo` for real: every step's banner and real output, then nothing left behind.

The demo creates its own sshd and Unix users (not the session testbed's), so
these tests check what a sysadmin would after running it: `id <demo user>`
fails, no sshd serves the demo's directory, the temp dirs are gone -- after a
clean run, after Ctrl-C in the middle, and after SIGTERM.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import REPO

DEMO = REPO / "demo" / "run_demo.py"
TIMEOUT = 900

STEPS = [
    ("init", "added 3 hosts to"),
    ("status", "3 hosts: 3 ok"),
    ("deploy", "installed"),
    ("dispatch", "What is the load on this board?"),
    ("broadcast", "Report free disk space"),
    ("batch", "How long has this board been up?"),
    ("teardown", "removed"),
]


@pytest.fixture
def demo_env(guarded_env):
    env = dict(guarded_env)
    for name in ("MAKEFLAGS", "MAKELEVEL", "PICOCLAW_FLEET_CONFIG", "ANTHROPIC_API_KEY"):
        env.pop(name, None)
    return env


def made_things(output):
    """The users, sshd directory and demo directory the demo says it made."""
    users = re.findall(r"= Unix user (\S+)", output)
    sshd_dir = re.search(r"files in (\S+)", output).group(1)
    demo_dir = str(Path(re.search(r"private HOME\s+(\S+)", output).group(1)).parent)
    return users, sshd_dir, demo_dir


def assert_nothing_left(output):
    users, sshd_dir, demo_dir = made_things(output)
    assert len(users) == 3
    for user in users:
        assert subprocess.run(["id", user], capture_output=True).returncode != 0, f"user {user} still exists"
    leftover = subprocess.run(["pgrep", "-af", sshd_dir], capture_output=True, text=True).stdout
    assert leftover == "", f"processes of the demo still run: {leftover}"
    assert not Path(sshd_dir).exists() and not Path(demo_dir).exists()


def test_make_demo_runs_every_step_and_leaves_nothing(demo_env):
    result = subprocess.run(["make", "demo"], cwd=REPO, env=demo_env, capture_output=True, text=True, timeout=TIMEOUT)
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert "STAND-IN picoclaw" in output and "not the real binary" in output

    positions = []
    for number, (step, evidence) in enumerate(STEPS, start=1):
        heading = re.search(rf"^==> \[{number}/{len(STEPS)}\] {step}:.*\n\$ fab .*\n", output, re.M)
        assert heading, f"no banner for step {number} ({step})"
        following = output[heading.end():]
        following = following.split("\n==> ", 1)[0]
        assert evidence in following, f"step {step}: {evidence!r} not in its output:\n{following}"
        positions.append(heading.start())
    assert positions == sorted(positions)
    assert "demo complete" in output and "no demo user, process or file is left" in output
    assert "demo-dummy-key" not in output + result.stderr  # the dummy key is never shown either
    assert_nothing_left(output)


def read_until(proc, marker, lines):
    """Collect the demo's stdout lines until one contains `marker` (or the demo ends)."""
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return True
    return False


@pytest.mark.parametrize(
    "how, interrupt_at",
    [("ctrl-c", "==> [3/7] deploy"), ("sigterm", "==> [5/7] broadcast")],
)
def test_interrupted_demo_cleans_up(demo_env, how, interrupt_at):
    """Ctrl-C (SIGINT to the whole foreground group, as a terminal sends it to `make demo`)
    or SIGTERM (to the demo process alone) mid-run: everything made so far is removed."""
    argv = ["make", "demo"] if how == "ctrl-c" else [sys.executable, str(DEMO)]
    proc = subprocess.Popen(argv, cwd=REPO, env=demo_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines = []
    try:
        assert read_until(proc, interrupt_at, lines), "".join(lines)
        time.sleep(0.2)  # let the step's command start
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        rest, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = "".join(lines) + rest
    assert proc.returncode != 0
    assert "demo interrupted" in output, output
    assert "no demo user, process or file is left" in output
    assert "demo complete" not in output
    assert_nothing_left(output)
