"""picoclaw-fleet: Fabric tasks that run a fleet of PicoClaw workers over SSH.

Each task is thin: parse options, call one function, render the result.
Errors the user can cause exit 2 with one line; otherwise the exit code is 0
when every selected host succeeded and 1 when any did not.

The verbs (``fabfile.verbs``) and what they stand on are imported inside
the tasks: ``fab --list`` and ``fab --help`` then load invoke alone, not
paramiko, jsonschema and PyYAML. Everywhere else imports are at module top.
"""

import sys
from contextlib import contextmanager

from invoke import Exit, Task, task

COMMON_HELP = {
    "config": "Fleet config file (default: $PICOCLAW_FLEET_CONFIG, else config/picoclaw-fleet.json in OpenClaw's workspace)",
    "hosts": "Hosts to act on: names, globs (pi-*), @tag or user@host[:port], comma-separated (default: all)",
    "parallel": "At most this many hosts at once (default: the config's defaults.parallel)",
    "json": "Print one JSON object on stdout instead of human output",
}


@contextmanager
def usage_errors():
    """Turn a `UsageError` into one line on stderr and exit code 2."""
    from .core.errors import UsageError

    try:
        yield
    except UsageError as exc:
        raise Exit(f"picoclaw-fleet: {exc}", code=2) from None


def handle_stops():
    """Ctrl-C, SIGTERM and SIGHUP stop the run and still report what finished (`interrupts`)."""
    from .ssh.interrupts import handle_stops as install

    install()


def load_fleet(config, hosts):
    """The validated fleet config (`hosts` may name targets outside it: user@host[:port])."""
    from .core.config import load_for_targets

    return load_for_targets(config, hosts)


def run_context(c, fleet, entries, parallel):
    """The verb's `RunContext`: the fleet, the hosts it acts on, ``--parallel``, Fabric's config."""
    from .core.context import RunContext, to_stderr

    return RunContext(fleet, entries, parallel_option(parallel), c.config, to_stderr)


def fleet_run(c, config, hosts, parallel):
    """The `RunContext` of a verb over the hosts ``--hosts`` selects (all when not given)."""
    from .core.config import select_hosts

    fleet = load_fleet(config, hosts)
    return run_context(c, fleet, select_hosts(fleet, hosts), parallel)


def finish(report, as_json, render):
    """Print `report` as JSON or through `render`, then exit 0 or 1 from its hosts."""
    from .core.report import emit

    emit(report.to_json() if as_json else render(report))
    if report.exit_code:
        raise Exit(code=report.exit_code)


def warn(message):
    """A line for the person at the terminal; never on stdout, which --json owns."""
    print(f"picoclaw-fleet: {message}", file=sys.stderr, flush=True)


def warn_if_insecure(run):
    """Say so when host key checking is switched off."""
    if run.defaults.host_key_policy == "off":
        warn("host_key_policy is 'off': host keys are not checked (insecure)")


class ShortFlagTask(Task):
    """A task whose short flags are named (``short_flags={"task": "t"}``), not guessed.

    Invoke would give every option the first free letter of its name, so
    ``--host`` would take ``-h``, which people type for help.
    """

    def __init__(self, *args, short_flags=None, **kwargs):
        self.short_flags = short_flags or {}
        super().__init__(*args, auto_shortflags=False, **kwargs)

    def arg_opts(self, name, default, taken_names):
        """Invoke's option spec, plus this option's named short flag."""
        opts = super().arg_opts(name, default, taken_names)
        if name in self.short_flags:
            opts["names"].append(self.short_flags[name])
        return opts


#: The config's own cap on ``parallel`` (fleet.schema.json): each is a thread and an SSH connection.
MAX_PARALLEL = 1024


def parallel_option(value):
    """``--parallel`` as a positive int (None when not given); `UsageError` otherwise."""
    from .core.errors import UsageError

    if value is None:
        return None
    text = str(value)
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_PARALLEL:
        raise UsageError(f"--parallel {value!r}: expected a whole number of hosts from 1 to {MAX_PARALLEL}")
    return int(text)


@task(klass=ShortFlagTask, help=COMMON_HELP)
def status(c, hosts=None, config=None, parallel=None, json=False):
    """Report each host: reachable, arch, PicoClaw version, model, key, sandbox, load, latency."""
    handle_stops()
    with usage_errors():
        from .verbs.status import fleet_status, render_status

        run = fleet_run(c, config, hosts, parallel)
        warn_if_insecure(run)
        report = fleet_status(run)
    finish(report, json, render_status)


@task(
    iterable=["host"],
    klass=ShortFlagTask,
    help={
        "config": COMMON_HELP["config"],
        "force": "Replace an existing config (with the template, or with only the hosts given)",
        "from-ssh-config": "Add one host per concrete Host alias of ~/.ssh/config (or of fab -S FILE)",
        "host": "Add a host: [NAME=]user@addr[:port]; repeatable",
    },
)
def init(c, config=None, force=False, from_ssh_config=False, host=None):
    """Write the template config, or add hosts to the config (validated before it is saved)."""
    with usage_errors():
        from .ssh.connections import fabric_config
        from .verbs.init import init_fleet_config
        from .core.report import emit

        ssh_source = fabric_config(c.config) if from_ssh_config else None
        emit(init_fleet_config(config, force, host or (), ssh_source, warn))


@task(
    klass=ShortFlagTask,
    help={
        **COMMON_HELP,
        "version": "Install this release tag (e.g. v0.2.0) instead of the latest release",
        "from-file": "Install this local binary or .tar.gz holding 'picoclaw' instead (no network needed)",
        "force": "Upload and install even where the same binary is already installed",
        "allow-unverified": "Install a release that publishes no checksum file and no asset digest (said in the report)",
    }
)
def deploy(c, hosts=None, config=None, parallel=None, json=False, version=None, from_file=None, force=False,
           allow_unverified=False):
    """Install PicoClaw on the hosts: binary, onboard, its model and API key (~/.picoclaw), .env."""
    handle_stops()
    with usage_errors():
        from .verbs.deploy import deploy_fleet, render_deploy

        run = fleet_run(c, config, hosts, parallel)
        warn_if_insecure(run)
        report = deploy_fleet(run, version, from_file, force, allow_unverified)
    finish(report, json, render_deploy)


@task(
    klass=ShortFlagTask,
    help={
        **COMMON_HELP,
        "purge": "Also remove ~/.picoclaw entirely (config, workspace, sessions)",
        "yes": "Confirm a teardown of every host without asking (required when stdin is not a terminal)",
    }
)
def teardown(c, hosts=None, config=None, parallel=None, json=False, purge=False, yes=False):
    """Remove PicoClaw (~/.local/bin/picoclaw and ~/.picoclaw/.env) from the hosts."""
    handle_stops()
    with usage_errors():
        from .verbs.teardown import confirm_teardown, render_teardown, teardown_fleet

        run = fleet_run(c, config, hosts, parallel)
        warn_if_insecure(run)
        confirm_teardown(run.fleet, run.entries, hosts, yes)
        report = teardown_fleet(run, purge)
    finish(report, json, render_teardown)


@task(
    klass=ShortFlagTask,
    short_flags={"task": "t"},
    help={
        "task": "The task text for PicoClaw (sent byte for byte; at most 128 KiB)",
        "host": "Run on this one host (name or user@host[:port]) instead of the least loaded one",
        "all": "Broadcast: run the task on every host of the config, in parallel",
        "hosts": "Broadcast to these hosts: names, globs (pi-*), @tag or user@host[:port], comma-separated",
        "timeout": "Stop the task after this many seconds (default: the config's defaults.timeout)",
        "fold": "Show hosts with identical output as one block (default); --no-fold gives each host its own",
        "deploy": "Deploy PicoClaw to the chosen host if it lacks it (default); --no-deploy refuses instead",
        "ephemeral": "Deploy where needed, run, then remove the binary and .env again",
        "session": "Continue the PicoClaw session NAME (kept on the host); default: a fresh session per task, removed afterwards",
        "raw": "Print PicoClaw's stdout untouched (banner included) instead of its answer",
        "unrestricted": "Let PicoClaw's tools reach outside its workspace for this run (restrict_to_workspace off)",
        "config": COMMON_HELP["config"],
        "parallel": COMMON_HELP["parallel"],
        "json": COMMON_HELP["json"],
    },
)
def dispatch(c, task=None, host=None, all=False, hosts=None, timeout=None, fold=True, deploy=True,
             ephemeral=False, session=None, raw=False, unrestricted=False, config=None, parallel=None, json=False):
    """Run one PicoClaw task on the least loaded host, a named one, or (--all/--hosts) on many."""
    handle_stops()
    with usage_errors():
        from .core.tasks import session_name
        from .host.agent import AgentOptions
        from .verbs.answers import render_blocks, show_inline
        from .verbs.dispatch import dispatch as dispatch_task, dispatch_targets

        options = AgentOptions(session_name(session) if session is not None else None, unrestricted, raw)
        fleet = load_fleet(config, host or hosts)
        targets = dispatch_targets(fleet, host, hosts, all)
        run = run_context(c, fleet, targets.entries, parallel)
        warn_if_insecure(run)
        report = dispatch_task(run, targets.mode, task, timeout, deploy, ephemeral, options)

    if json or targets.mode == "broadcast":
        return finish(report, json, lambda r: render_blocks(r, fold, raw))
    show_inline(report, raw=raw)
    if report.exit_code:
        raise Exit(code=report.exit_code)


@task(
    klass=ShortFlagTask,
    short_flags={"task": "t"},
    iterable=["task"],
    help={
        "task": "A task for PicoClaw; repeat --task for several (instead of --tasks-file)",
        "tasks-file": 'One task a line, or JSON Lines {"id", "task", "host", "timeout", "session"}; - reads stdin',
        "hosts": COMMON_HELP["hosts"],
        "timeout": "Stop a task after this many seconds (default: the config's defaults.timeout; a JSON line's own wins)",
        "retries": "Run a task that ended failed or timeout again, up to this many times, elsewhere when possible",
        "retry-lost": "Also run again a task whose host dropped while it ran (it may have had effects)",
        "raw": "Show PicoClaw's stdout untouched (banner included) instead of each answer",
        "unrestricted": "Let PicoClaw's tools reach outside its workspace for this run (restrict_to_workspace off)",
        "json": "Print one JSON object at the end instead of human output",
        "jsonl": "Stream one JSON line per task on stdout as each finishes (finish order)",
        "config": COMMON_HELP["config"],
        "parallel": "At most this many hosts connecting at once (default: the config's defaults.parallel)",
    },
)
def batch(c, task=None, tasks_file=None, hosts=None, timeout=None, retries=None, retry_lost=False, raw=False,
          unrestricted=False, json=False, jsonl=False, config=None, parallel=None):
    """Run a queue of PicoClaw tasks over the hosts' free slots (max_tasks each); one result per task."""
    handle_stops()
    with usage_errors():
        from .core.errors import UsageError
        from .core.tasks import read_tasks
        from .verbs.batch import batch_settings, run_batch
        from .verbs.batch_report import ProgressPrinter, render_batch, summary_text

        if json and jsonl:
            raise UsageError("give --json or --jsonl, not both")
        run = fleet_run(c, config, hosts, parallel)
        tasks = read_tasks(tasks_file, task)
        settings = batch_settings(run, timeout, retries, retry_lost, unrestricted)
        warn_if_insecure(run)
        report = run_batch(run, tasks, settings, ProgressPrinter(jsonl))
    if not jsonl:
        return finish(report, json, lambda r: render_batch(r, raw))
    warn(summary_text(report))
    if report.exit_code:
        raise Exit(code=report.exit_code)
