"""Helpers for the `fab batch` tests: running the CLI, reading its JSON, shaping configs.

The CLI runs as a real subprocess (with the loopback guard), fed its tasks on
stdin or from a file, exactly as a sysadmin or an agent would run it.
"""

import json
import signal
import subprocess

from harness.cli import FAB, REPO
from tests.test_dispatch import agent_processes, wait_until  # noqa: F401 (shared with the batch tests)

#: Only there to stop a hung run from hanging the suite; no test measures time.
RUN_LIMIT_S = 300


def batch(config, env, *args, stdin=""):
    """Run ``fab batch --config CONFIG ARGS`` with `stdin` as its input; the CompletedProcess."""
    return subprocess.run(
        [FAB, "batch", "--config", str(config), *map(str, args)],
        cwd=REPO, env=env, input=stdin, capture_output=True, text=True, timeout=RUN_LIMIT_S,
    )


def batch_json(config, env, *args, stdin=""):
    """Run with ``--json``: (CompletedProcess, the JSON object, its tasks by id)."""
    proc = batch(config, env, "--json", *args, stdin=stdin)
    assert proc.stdout, proc.stderr
    data = json.loads(proc.stdout)
    return proc, data, {task["id"]: task for task in data["tasks"]}


def start_batch(config, env, tasks_file, *args):
    """Start ``fab batch`` in the background (for faults injected while it runs)."""
    return subprocess.Popen(
        [FAB, "batch", "--config", str(config), "--tasks-file", str(tasks_file), *map(str, args)],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def interrupt(proc):
    """Ctrl-C the background run and return its (stdout, stderr)."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=RUN_LIMIT_S)
    finally:
        proc.kill()


def jsonl_file(path, items):
    """Write a JSON Lines tasks file and return its path."""
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def set_max_tasks(config, slots):
    """Give the named hosts of a config file their ``max_tasks``: ``{name: n}``."""
    data = json.loads(config.read_text())
    for host in data["hosts"]:
        if host["name"] in slots:
            host["max_tasks"] = slots[host["name"]]
    config.write_text(json.dumps(data, indent=2))
    return config


def running_tasks(testbed, host):
    """One line per PicoClaw task running on `host`: the stand-in itself, not its ``timeout`` parent."""
    return testbed.processes(host, "^python3 .*picoclaw agent")


def no_task_left_running(testbed, hosts):
    """Wait until none of `hosts` runs a PicoClaw task (fails the test after SETTLE_S)."""
    wait_until(lambda: not any(agent_processes(testbed, host) for host in hosts), "PicoClaw to stop on every host")
