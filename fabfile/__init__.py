"""picoclaw-fleet: Fabric tasks that run a fleet of PicoClaw workers over SSH.

Each task is thin: parse options, call one function, render the result.
Errors the user can cause exit 2 with one line; otherwise the exit code is 0
when every selected host succeeded and 1 when any did not.

The verbs (``fabfile.verbs``) and what they stand on are imported inside
the tasks: ``fab --list`` and ``fab --help`` then load invoke alone, not
paramiko, jsonschema and PyYAML; jsonschema is loaded only to check a config
that has not passed before (`core.cache`). Everywhere else imports are at
module top.

Dispatch and batch runs are recorded in the run ledger (README, Runs): the
tasks make a `core.recording.Recorder` before any host is contacted and
hand it the finished report once; the verbs never know. ``rerun`` re-enters
dispatch and batch from here, since verbs do not import each other.
"""

import json as jsonlib
import sys
from contextlib import contextmanager

from invoke import Argument, Exit, Task, task

COMMON_HELP = {
    "config": "Fleet config file (default: $PICOCLAW_FLEET_CONFIG, else config/picoclaw-fleet.json in OpenClaw's workspace)",
    "hosts": "Hosts to act on: names, globs (pi-*), @tag or user@host[:port], comma-separated (default: all)",
    "parallel": "At most this many hosts at once (default: the config's defaults.parallel)",
    "json": "Print one JSON object on stdout instead of human output",
}
PERSIST_HELP = "Keep the SSH connections warm this many seconds for the next run (default: defaults.persist; 0: off)"


@contextmanager
def usage_errors(*more):
    """Turn a `UsageError` (or one of `more`) into one line on stderr and exit code 2."""
    from .core.errors import UsageError

    try:
        yield
    except (UsageError, *more) as exc:
        raise Exit(f"picoclaw-fleet: {exc}", code=2) from None


def ledger_errors():
    """`usage_errors`, and a ledger that cannot be read (``fab runs``, ``show``, ``rerun``, ``collect``)."""
    from .core.ledger import LedgerError

    return usage_errors(LedgerError)


def handle_stops():
    """Ctrl-C, SIGTERM and SIGHUP stop the run and still report what finished (`interrupts`)."""
    from .ssh.interrupts import handle_stops as install

    install()


def load_fleet(config, hosts):
    """The validated fleet config (`hosts` may name targets outside it: user@host[:port])."""
    from .core.config import load_for_targets

    return load_for_targets(config, hosts)


def run_context(c, fleet, entries, parallel, persist=None):
    """The verb's `RunContext`: the fleet, the hosts it acts on, ``--parallel``, ``--persist``, Fabric's config."""
    from .core.context import RunContext, to_stderr

    return RunContext(fleet, entries, parallel_option(parallel), c.config, to_stderr, persist_option(persist))


def fleet_run(c, config, hosts, parallel, persist=None):
    """The `RunContext` of a verb over the hosts ``--hosts`` selects (all when not given)."""
    from .core.config import select_hosts

    fleet = load_fleet(config, hosts)
    return run_context(c, fleet, select_hosts(fleet, hosts), parallel, persist)


def finish(report, as_json, render):
    """Print `report` as JSON or through `render`, then exit 0 or 1 from its hosts."""
    from .core.report import emit

    emit(report.to_json() if as_json else render(report))
    if report.exit_code:
        raise Exit(code=report.exit_code)


def warn(message):
    """A line for the person at the terminal; never on stdout, which --json owns."""
    print(f"picoclaw-fleet: {message}", file=sys.stderr, flush=True)


def recorder(verb, options, parent=None, detach=False, outdir=None, no_record=False):
    """The run's `Recorder` (its id, ``--outdir`` and, for ``--detach``, the ledger checked now)."""
    from .core.recording import Recorder

    return Recorder(verb, options, parent, detach, outdir, no_record, warn=warn)


def record_brief(rec, report, config):
    """A deploy's or teardown's one-line record: per host its status and message, and the summary."""
    data = jsonlib.loads(report.to_json())
    hosts = [{key: h[key] for key in ("name", "status", "message") if key in h} for h in data["hosts"]]
    brief = {"verb": data["verb"], "hosts": hosts, "summary": data["summary"], "interrupted": data["interrupted"]}
    rec.finish(brief, [], report.exit_code, config)


def finish_recorded(rec, data, rows, config, exit_code, as_json, human):
    """Record the run, then print it -- ``--json`` with its ``run`` id first, or `human()` -- and exit.

    A detached start prints what `verbs.runs.render_started` says instead
    (the run id alone on stdout); it exits 0 when every task started.
    """
    from .core.detach import RUNNING
    from .core.recording import recorded_json
    from .core.report import emit
    from .verbs.runs import render_started

    if rec.detach:
        exit_code = 0 if rows and all(row.status == RUNNING for row in rows) else 1
    run = rec.finish(data, rows, exit_code, config)
    if rec.detach and as_json:
        emit(jsonlib.dumps(recorded_json(run, rows), indent=2, ensure_ascii=False))
    elif rec.detach:
        out, lines = render_started(run, rows)
        emit(out)
        for line in lines:
            warn(line)
    elif as_json:
        emit(jsonlib.dumps({**rec.fields(), **data}, indent=2, ensure_ascii=False))
    else:
        human()
        if rec.recorded:
            warn(f"recorded as run {rec.id} (fab show {rec.id})")
    if exit_code:
        raise Exit(code=exit_code)


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


class RunOrAll(ShortFlagTask):
    """A task whose positional RUN may be left out when ``--all`` is given: ``fab collect RUN | --all``.

    Invoke requires every positional argument: one whose value is None is
    "missing", which lets the parser take the next bare word as its value and
    fails the parse when none came. Here RUN stops being missing once
    ``--all`` is set (`OptionalRun`), so ``fab collect --all`` parses, and
    ``fab collect`` alone is still refused by invoke's parser.
    """

    def get_arguments(self, ignore_unknown_help=None):
        args = super().get_arguments(ignore_unknown_help)
        by_name = {arg.name: arg for arg in args}
        by_name["run"].__class__ = OptionalRun
        by_name["run"].instead = by_name["all"]
        return args


class OptionalRun(Argument):
    """RUN, no longer missing once the argument it can be given `instead` of (``--all``) is set."""

    instead = None

    @property
    def value(self):
        value = Argument.value.fget(self)
        return "" if value is None and self.instead is not None and self.instead.value else value

    @value.setter
    def value(self, arg):
        Argument.value.fset(self, arg)


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


#: ``--persist`` and ``defaults.persist`` keep connections at most a day (fleet.schema.json says the same).
MAX_PERSIST_S = 86400
#: What deploy, teardown and collect pass: their SFTP work never goes over a warm connection.
NO_PERSIST = 0


def persist_option(value):
    """``--persist`` as seconds, 0 (off) to a day (None when not given); `UsageError` otherwise."""
    from .core.errors import UsageError

    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not 0 <= seconds <= MAX_PERSIST_S:
        raise UsageError(f"--persist {value!r}: expected seconds from 0 (off) to {MAX_PERSIST_S}")
    return seconds


@task(klass=ShortFlagTask, help={**COMMON_HELP, "persist": PERSIST_HELP})
def status(c, hosts=None, config=None, parallel=None, json=False, persist=None):
    """Report each host: reachable, arch, PicoClaw version, model, key, sandbox, load, latency."""
    handle_stops()
    with usage_errors():
        from .verbs.status import fleet_status, render_status

        run = fleet_run(c, config, hosts, parallel, persist)
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
        "no-record": "Leave no record of this run in the run ledger (fab runs)",
    }
)
def deploy(c, hosts=None, config=None, parallel=None, json=False, version=None, from_file=None, force=False,
           allow_unverified=False, no_record=False):
    """Install PicoClaw on the hosts: binary, onboard, its model and API key (~/.picoclaw), .env."""
    handle_stops()
    with usage_errors():
        from .verbs.deploy import deploy_fleet, render_deploy

        run = fleet_run(c, config, hosts, parallel, persist=NO_PERSIST)
        rec = recorder("deploy", dict(hosts=hosts, parallel=parallel, version=version, from_file=from_file,
                                      force=force, allow_unverified=allow_unverified), no_record=no_record)
        report = deploy_fleet(run, version, from_file, force, allow_unverified)
    record_brief(rec, report, run.fleet.path)
    finish(report, json, render_deploy)


@task(
    klass=ShortFlagTask,
    help={
        **COMMON_HELP,
        "purge": "Also remove ~/.picoclaw entirely (config, workspace, sessions)",
        "yes": "Confirm a teardown of every host without asking (required when stdin is not a terminal)",
        "no-record": "Leave no record of this run in the run ledger (fab runs)",
    }
)
def teardown(c, hosts=None, config=None, parallel=None, json=False, purge=False, yes=False, no_record=False):
    """Remove PicoClaw (~/.local/bin/picoclaw, ~/.picoclaw/.env, detached tasks' leftovers) from the hosts."""
    handle_stops()
    with usage_errors():
        from .verbs.teardown import confirm_teardown, render_teardown, teardown_fleet

        run = fleet_run(c, config, hosts, parallel, persist=NO_PERSIST)
        rec = recorder("teardown", dict(hosts=hosts, parallel=parallel, purge=purge), no_record=no_record)
        confirm_teardown(run.fleet, run.entries, hosts, yes)
        report = teardown_fleet(run, purge)
    record_brief(rec, report, run.fleet.path)
    finish(report, json, render_teardown)


RUN_HELP = {
    "detach": "Start the tasks on their hosts and return at once with the run id; fab collect RUN brings the answers in",
    "outdir": "Write each task's answer (and stderr) to a file of its own in DIR, plus summary.json (DIR new or empty)",
    "no-record": "Leave no record of this run in the run ledger (fab runs, fab show)",
}


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
        "persist": PERSIST_HELP,
        **RUN_HELP,
    },
)
def dispatch(c, task=None, host=None, all=False, hosts=None, timeout=None, fold=True, deploy=True,
             ephemeral=False, session=None, raw=False, unrestricted=False, config=None, parallel=None, json=False,
             detach=False, outdir=None, no_record=False, persist=None):
    """Run one PicoClaw task on the least loaded host, a named one, or (--all/--hosts) on many."""
    handle_stops()
    flags = dict(host=host, all=all, hosts=hosts, timeout=timeout, fold=fold, deploy=deploy, ephemeral=ephemeral,
                 session=session, raw=raw, unrestricted=unrestricted, parallel=parallel, persist=persist)
    run_dispatch(c, task, flags, config, json, detach, outdir, no_record)


def run_dispatch(c, text, flags, config, as_json, detach, outdir, no_record, parent=None):
    """A dispatch of `text` as `flags` say (also a rerun's): run it, record it, print it, exit 0 or 1."""
    with usage_errors():
        from .core.recording import dispatch_rows, targets_of
        from .core.tasks import check_timeout, session_name
        from .host.agent import AgentOptions
        from .verbs.answers import render_blocks, show_inline
        from .verbs.dispatch import dispatch as dispatch_task, dispatch_targets

        session = flags["session"]
        options = AgentOptions(session_name(session) if session is not None else None, flags["unrestricted"],
                               flags["raw"])
        fleet = load_fleet(config, flags["host"] or flags["hosts"])
        targets = dispatch_targets(fleet, flags["host"], flags["hosts"], flags["all"])
        rec = recorder("dispatch", {**flags, "mode": targets.mode, "detach": bool(detach), "outdir": outdir},
                       parent, detach, outdir, no_record)
        run = run_context(c, fleet, targets.entries, flags["parallel"], flags.get("persist"))
        report = dispatch_task(run, targets.mode, text, flags["timeout"], flags["deploy"], flags["ephemeral"], options,
                               detach=rec.id if detach else None)
        timeout_s = check_timeout(run.defaults.timeout if flags["timeout"] is None else flags["timeout"])
    data = jsonlib.loads(report.to_json())
    rows = dispatch_rows(data, text, timeout_s, options.session, targets_of(fleet, report_entries(run, report)))
    if targets.mode == "broadcast":
        human = lambda: emit_text(render_blocks(report, flags["fold"], flags["raw"]))  # noqa: E731
    else:
        human = lambda: show_inline(report, raw=flags["raw"])  # noqa: E731
    finish_recorded(rec, data, rows, fleet.path, report.exit_code, as_json, human)


def report_entries(run, report):
    """The config entries of the hosts a report names (dispatch's policy mode reports the probed hosts)."""
    by_name = {entry.name: entry for entry in run.entries}
    return [by_name[host.name] for host in report.hosts if host.name in by_name]


def emit_text(text):
    """Print `text` on stdout (flushed)."""
    from .core.report import emit

    emit(text)


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
        "persist": PERSIST_HELP,
        **RUN_HELP,
    },
)
def batch(c, task=None, tasks_file=None, hosts=None, timeout=None, retries=None, retry_lost=False, raw=False,
          unrestricted=False, json=False, jsonl=False, config=None, parallel=None, detach=False, outdir=None,
          no_record=False, persist=None):
    """Run a queue of PicoClaw tasks over the hosts' free slots (max_tasks each); one result per task."""
    handle_stops()

    def read():
        from .core.tasks import read_tasks

        return read_tasks(tasks_file, task)

    flags = dict(tasks_file=tasks_file, hosts=hosts, timeout=timeout, retries=retries, retry_lost=retry_lost,
                 raw=raw, unrestricted=unrestricted, parallel=parallel, persist=persist)
    run_batch_tasks(c, read, flags, config, json, jsonl, detach, outdir, no_record)


def run_batch_tasks(c, read, flags, config, as_json, jsonl, detach, outdir, no_record, parent=None):
    """A batch of the tasks `read()` gives (also a rerun's): run, record, print, exit 0 or 1."""
    with usage_errors():
        from .core.errors import UsageError
        from .core.recording import batch_rows, targets_of
        from .verbs.batch import batch_settings, run_batch, start_detached_batch
        from .verbs.batch_report import ProgressPrinter, render_batch, summary_text

        if as_json and jsonl:
            raise UsageError("give --json or --jsonl, not both")
        if detach and jsonl:
            raise UsageError("--jsonl streams tasks as they finish, detached ones finish later: "
                             "use --json, then fab collect RUN --json")
        run = fleet_run(c, config, flags["hosts"], flags["parallel"], flags.get("persist"))
        tasks = read()
        settings = batch_settings(run, flags["timeout"], flags["retries"], flags["retry_lost"], flags["unrestricted"])
        rec = recorder("batch", {**flags, "detach": bool(detach), "outdir": outdir}, parent, detach, outdir, no_record)
        if detach:
            report = start_detached_batch(run, tasks, settings, rec.id)
        else:
            report = run_batch(run, tasks, settings, ProgressPrinter(jsonl))
    data = report.to_dict()
    rows = batch_rows(data, tasks, settings.timeout_s, targets_of(run.fleet, run.entries))
    if jsonl:
        rec.finish(data, rows, report.exit_code, run.fleet.path)
        warn(summary_text(report) + (f"; recorded as run {rec.id}" if rec.recorded else ""))
        if report.exit_code:
            raise Exit(code=report.exit_code)
        return
    finish_recorded(rec, data, rows, run.fleet.path, report.exit_code, as_json,
                    lambda: emit_text(render_batch(report, flags["raw"])))


@task(
    klass=ShortFlagTask,
    help={
        "action": "status: the process and the connections it keeps; stop: close them and end it",
        "json": COMMON_HELP["json"],
    },
)
def persist(c, action, json=False):
    """Show (status) or stop the per-user process keeping SSH connections warm (defaults.persist, --persist)."""
    with usage_errors():
        from .core.report import emit
        from .verbs.persist import render_warm_status, warm_status

        state = warm_status(action)
    emit(jsonlib.dumps(state) if json else render_warm_status(state))


@task(
    klass=ShortFlagTask,
    help={
        "limit": "Show at most this many runs, newest first (default 20; 0 shows all)",
        "json": "Print one JSON object on stdout instead of the table",
        "prune": "Delete recorded runs instead of listing them (with --older-than)",
        "older-than": "With --prune: the runs started longer ago than this, e.g. 30d, 12h, 2w (s, m, h, d, w)",
    },
)
def runs(c, limit=20, json=False, prune=False, older_than=None):
    """List the recorded runs, newest first (the run ledger); --prune --older-than 30d forgets old ones."""
    with ledger_errors():
        from .core.errors import UsageError
        from .core.ledger import Ledger, age_seconds
        from .core.report import emit
        from .verbs.runs import render_pruned, render_runs, runs_json

        ledger = Ledger()
        if prune or older_than is not None:
            if not (prune and older_than is not None):
                raise UsageError("--prune and --older-than go together: fab runs --prune --older-than 30d")
            deleted, kept = ledger.prune(age_seconds(older_than))
            emit(jsonlib.dumps({"pruned": deleted, "kept_pending": kept}) if json else
                 render_pruned(deleted, kept, older_than))
            return
        text = str(limit)
        if not (text.isascii() and text.isdigit()):
            raise UsageError(f"--limit {limit!r}: expected a whole number of runs (0 shows all)")
        entries = ledger.runs(int(text))
        emit(runs_json(entries) if json else render_runs(entries))


@task(
    klass=ShortFlagTask,
    help={
        "run": "The run: its id (fab runs), a unique prefix of it, or last (the newest dispatch or batch)",
        "json": "Print the run's JSON object, as the run printed it with --json",
        "raw": "Show PicoClaw's stdout untouched (banner included) instead of each answer",
        "outdir": "Also write each task's answer (and stderr) to a file in DIR, plus summary.json (DIR new or empty)",
    },
)
def show(c, run, json=False, raw=False, outdir=None):
    """Print a recorded run again, as it printed itself (or --json); exit 0 all ok, 1 some not, 3 some pending."""
    with ledger_errors():
        from .core.ledger import Ledger
        from .core.outdir import check_outdir
        from .core.recording import recorded_exit_code, write_run_files
        from .verbs.runs import show_run

        ledger = Ledger()
        recorded, rows = ledger.load(ledger.resolve(run))
        directory = check_outdir(outdir) if outdir else None
    show_run(recorded, rows, json, raw)
    if directory is not None:
        for problem in write_run_files(directory, recorded, rows):
            warn(problem)
    code = recorded_exit_code(rows, recorded.report.get("interrupted")) if rows else (recorded.exit_code or 0)
    if code:
        raise Exit(code=code)


@task(
    klass=ShortFlagTask,
    help={
        "run": "The run to repeat: its id, a unique prefix of it, or last",
        "failed": "Only the tasks that did not end ok (a detached task not yet collected is left out)",
        "config": "Fleet config file (default: the one the run used)",
        "hosts": "Run on these hosts instead (batch: instead of the run's --hosts; dispatch: a broadcast to them)",
        "parallel": "At most this many hosts at once (default: the run's)",
        "json": COMMON_HELP["json"],
        "jsonl": "Batch: stream one JSON line per task as each finishes",
        **RUN_HELP,
    },
)
def rerun(c, run, failed=False, config=None, hosts=None, parallel=None, json=False, jsonl=False, detach=False,
          outdir=None, no_record=False):
    """Run a recorded run's tasks again (--failed: those not ok), same texts, pins, timeouts, as a new run."""
    handle_stops()
    with ledger_errors():
        from .core.errors import UsageError
        from .core.ledger import Ledger
        from .core.recording import recorded_config, rerun_dispatch_flags, rerun_rows, rerun_tasks

        ledger = Ledger()
        old, rows = ledger.load(ledger.resolve(run))
        chosen = rerun_rows(old, rows, failed)
        if not chosen:
            pending = sum(1 for row in rows if row.pending)
            warn(f"nothing to rerun: every task of run {old.id} ended ok" if not pending else
                 f"nothing to rerun in run {old.id}: {pending} task(s) still pending (fab collect {old.id})")
            return
        parallel = parallel if parallel is not None else old.options.get("parallel")
        if old.verb == "dispatch":
            if jsonl:
                raise UsageError(f"--jsonl streams a batch's tasks; run {old.id} is a dispatch: use --json")
            flags = {**rerun_dispatch_flags(old, chosen, hosts), "parallel": parallel}
            config = recorded_config(old, config, flags["host"] or flags["hosts"])
        else:
            flags = {key: old.options.get(key) for key in ("timeout", "retries", "retry_lost", "raw", "unrestricted")}
            flags.update(hosts=hosts if hosts is not None else old.options.get("hosts"), parallel=parallel,
                         tasks_file=None)
            config = recorded_config(old, config, flags["hosts"])
    if old.verb == "dispatch":
        return run_dispatch(c, chosen[0].text, flags, config, json, detach, outdir, no_record, parent=old.id)
    tasks = rerun_tasks(old, chosen)
    run_batch_tasks(c, lambda: tasks, flags, config, json, jsonl, detach, outdir, no_record, parent=old.id)


@task(
    klass=RunOrAll,
    help={
        "run": "The detached run to collect: its id, a unique prefix of it, or last",
        "all": "Collect every run that still has tasks pending",
        "wait": "Keep collecting until no task is left running on a host that answers",
        "json": "Print one JSON object: the runs as fab show --json prints them, and what was collected",
        "config": "Fleet config file (default: the one each run used)",
        "parallel": COMMON_HELP["parallel"],
    },
)
def collect(c, run, all=False, wait=False, json=False, config=None, parallel=None):
    """Bring in the answers of detached tasks that finished; exit 0 all ok, 1 some not, 3 some still pending."""
    handle_stops()
    with ledger_errors():
        from .core.config import select_hosts
        from .core.context import to_stderr
        from .core.errors import UsageError
        from .core.ledger import Ledger
        from .core.recording import recorded_config_path
        from .verbs.collect import collect as collect_runs

        if bool(all) == bool(run):
            raise UsageError("name the run to collect (fab collect RUN), or give --all (not both)")
        ledger = Ledger()
        run_ids = [ledger.resolve(run)] if run else ledger.pending_runs()

        def connect(recorded, targets):
            """The `RunContext` over `targets` under the run's config; {target: entry}, {target: problem}."""
            fleet = load_fleet(recorded_config_path(recorded, config, ",".join(targets)), ",".join(targets))
            entries, problems = {}, {}
            for target in targets:
                try:
                    entries[target] = select_hosts(fleet, target)[0]
                except UsageError as exc:
                    problems[target] = str(exc)
            return run_context(c, fleet, list(entries.values()), parallel, NO_PERSIST), entries, problems

        outcome = collect_runs(ledger, run_ids, connect, wait, notify=to_stderr)
        loaded = [ledger.load(run_id) for run_id in outcome.runs]
    show_collected(outcome, loaded, json)


def show_collected(outcome, loaded, as_json):
    """Print the runs a collect looked at (as ``fab show`` does), what it did on stderr, and exit 0, 1 or 3."""
    from .core.recording import recorded_exit_code, recorded_json
    from .core.report import emit
    from .verbs.runs import show_run

    for note in outcome.notes:
        warn(note)
    rows = [row for _, run_rows in loaded for row in run_rows]
    if as_json:
        emit(jsonlib.dumps({"verb": "collect", "runs": [recorded_json(run, run_rows) for run, run_rows in loaded],
                            "collected": outcome.collected, "pending": outcome.pending,
                            "interrupted": outcome.interrupted}, indent=2, ensure_ascii=False))
    for run, run_rows in loaded if not as_json else ():
        if len(loaded) > 1:
            emit(f"==== run {run.id} ({run.verb}) ====")
        show_run(run, run_rows)
    if not loaded:
        warn("nothing to collect: no run has tasks pending")
    else:
        warn(f"collected {outcome.collected} task{'s' if outcome.collected != 1 else ''}; "
             f"{outcome.pending} still pending" + ("; interrupted" if outcome.interrupted else ""))
    code = recorded_exit_code(rows, outcome.interrupted) if loaded else 0
    if code:
        raise Exit(code=code)
