"""Our verbs as the bench calls them: the fabfile's own task objects, in this process.

In-process because the baselines (ThreadingGroup, parallel-ssh) run in this
process too: interpreter start-up is measured on its own (figure 5) rather
than charged to every verb. Calling the task objects, not the functions
under them, keeps everything a user pays for -- config loading and schema
validation, the fan-out, rendering -- in the measurement. Each call asks for
``--json`` and checks it: a run where a host failed raises instead of being
timed.
"""

import contextlib
import io
import json

import paramiko
from invoke import Collection

import fabfile

#: The tasks as ``fab`` sees them: the `Collection` fab builds from the package,
#: so the bench calls exactly what ``fab <verb>`` would.
TASKS = Collection.from_module(fabfile)


class VerbFailed(RuntimeError):
    """A verb run in the bench did not succeed on every host."""


def context():
    """What ``fab`` hands a task: an Invoke context over a fresh Fabric config (one per run)."""
    from fabric import Config
    from invoke import Context

    return Context(config=Config())


def run_task(verb, **options):
    """Call the fabfile task `verb` with ``--json``; its parsed JSON, or `VerbFailed` unless exit 0."""
    from invoke import Exit

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            TASKS[verb](context(), json=True, **options)
    except Exit as exc:
        raise VerbFailed(f"{verb} exited {exc.code}: {summary(out.getvalue())} {exc.message or ''}") from None
    return json.loads(out.getvalue())


def summary(text):
    """The ``summary`` of a verb's JSON output and its first failure, or its first line when it is not JSON."""
    try:
        data = json.loads(text)
    except ValueError:
        return (text.splitlines() or [""])[0]
    failed = next((h for h in data.get("hosts", []) if h.get("status") != "ok"), None)
    first = f"; first failure: {failed['name']}: {failed['status']}: {failed.get('message', '')}" if failed else ""
    return f"{data.get('summary')}{first}"


def dispatch_all(config, text):
    """``fab dispatch --all --task TEXT``."""
    return run_task("dispatch", task=text, all=True, config=str(config))


def status(config):
    """``fab status``."""
    return run_task("status", config=str(config))


def deploy(config, from_file=None):
    """``fab deploy`` (the latest release), or ``fab deploy --from-file FILE``."""
    return run_task("deploy", config=str(config), from_file=from_file and str(from_file))


def batch(config, tasks_file):
    """``fab batch --tasks-file TASKS``."""
    return run_task("batch", config=str(config), tasks_file=str(tasks_file))


class ConnectionCounter:
    """Counts SSH connections opened in this process while active (``paramiko.SSHClient.connect``)."""

    def __init__(self):
        self.opened = 0
        self._original = None

    def __enter__(self):
        import threading

        lock, original = threading.Lock(), paramiko.SSHClient.connect
        counter = self

        def counting_connect(client, *args, **kwargs):
            with lock:
                counter.opened += 1
            return original(client, *args, **kwargs)

        self._original = original
        paramiko.SSHClient.connect = counting_connect
        return self

    def __exit__(self, *exc):
        paramiko.SSHClient.connect = self._original
        return False
