"""Recording a run: its id from the start, its report turned into ledger rows at the end, ``--outdir``.

The tasks (``fabfile/__init__.py``) make a `Recorder` before anything
connects -- the run id exists from the start (a detached task's files on its
host are named by it), ``--outdir`` and, for ``--detach``, the ledger are
checked then -- and hand it the finished report's JSON object once
(`Recorder.finish`). The verbs never know they are recorded.

A report becomes one `ledger.TaskRow` per task: a batch's ``tasks``, or a
dispatch's ``hosts`` (each host ran the one task). Each row keeps the
task's own JSON object as the run printed it, its long fields (``stdout``,
``stderr``, ``log``) bounded by `FIELD_CAP` -- ``ledger_cut`` then says how
much was left out -- so `recorded_json` gives back what ``--json`` printed.
"""

import dataclasses
from collections import Counter
from pathlib import Path

from .config import only_adhoc_targets
from .detach import RUNNING
from .ledger import Ledger, LedgerError, Run, RunIdTaken, TaskRow, iso, new_run_id, utc_now
from .outdir import check_outdir, write_outputs
from .errors import UsageError
from .status import CONNECTION_FAILURES, Status
from .tasks import Task

#: The most of a task's stdout, stderr or log the ledger keeps (UTF-8 bytes); answers are kept whole.
FIELD_CAP = 64 << 10
CAPPED_FIELDS = ("stdout", "stderr", "log")
#: Statuses of a task that never reached PicoClaw (it ran 0 times; a detached one started counts as run).
NEVER_RAN = CONNECTION_FAILURES | {Status.NOT_RUN, Status.NOT_INSTALLED, Status.UNUSED}
#: Exit code of a recorded run whose tasks have not all been collected, none failed so far.
PENDING_EXIT = 3


def tasks_key(verb):
    """Where a report's JSON holds its tasks: a dispatch's ``hosts`` (each ran the task), a batch's ``tasks``."""
    return "hosts" if verb == "dispatch" else "tasks"


def capped(item):
    """`item` (a task's JSON object) with its long fields cut to `FIELD_CAP`, saying so in ``ledger_cut``."""
    record = dict(item)
    for name in CAPPED_FIELDS:
        value = record.get(name)
        if isinstance(value, str) and len(value) > FIELD_CAP // 4:
            data = value.encode("utf-8", "surrogatepass")
            if len(data) > FIELD_CAP:
                record[name] = data[:FIELD_CAP].decode("utf-8", "ignore")
                record.setdefault("ledger_cut", {})[name] = len(data) - FIELD_CAP
    return record


def task_row(seq, item, text, targets, pin=None, timeout_s=None, session=None, host_json=None):
    """The `TaskRow` of one task's JSON object `item` (its text and how it ran given alongside).

    PicoClaw's version and model come from the task's own object, else from
    its host's (`host_json`: a batch host's, as its probe found them).
    """
    probed = host_json or {}
    record = capped(item)
    host = item.get("host", item.get("name"))
    detached = item.get("detached") or {}
    status = str(item.get("status"))
    return TaskRow(
        seq=seq, task_id=str(item.get("id", 1)), status=status, text=text, record=record,
        host=host, address=item.get("address"), target=targets.get(host, host) if host else None,
        message=item.get("message", ""), pin=pin, timeout_s=timeout_s, session=session,
        answer=item.get("answer") or "", stderr=record.get("stderr") or "", exit_code=item.get("exit_code"),
        duration_s=item.get("duration_s"), attempts=item.get("attempts", 0 if status in NEVER_RAN else 1),
        picoclaw_version=item.get("picoclaw_version") or probed.get("picoclaw_version"),
        model=item.get("model") or probed.get("model"),
        remote_key=detached.get("key"), slot=detached.get("slot"),
    )


def dispatch_rows(data, text, timeout_s, session, targets):
    """A dispatch's rows: one per host, each running the one task (id 1)."""
    return [task_row(seq, item, text, targets, timeout_s=timeout_s, session=session)
            for seq, item in enumerate(data["hosts"])]


def batch_rows(data, tasks, timeout_s, targets):
    """A batch's rows: one per task, in input order (`tasks` are the run's `tasks.Task`s, the same order).

    A task's PicoClaw version and model are its host's, as the batch's probe found them.
    """
    probed = {host.get("name"): host for host in data.get("hosts", [])}
    return [task_row(seq, item, task.data.decode("utf-8"), targets, task.host, task.timeout or timeout_s,
                     task.session, probed.get(item.get("host")))
            for seq, (item, task) in enumerate(zip(data["tasks"], tasks))]


def recorded_json(run, rows):
    """The run's ``--json`` object again, from the ledger: ``run`` (``rerun_of``, ``detached``), then the report.

    Its summary is counted from the rows, so it follows what collect has
    brought in since.
    """
    data = {"run": run.id}
    if run.parent:
        data["rerun_of"] = run.parent
    if run.detached:
        data["detached"] = True
    report = dict(run.report)
    if run.verb in ("dispatch", "batch"):
        report[tasks_key(run.verb)] = [row.record for row in rows]
        report["summary"] = dict(Counter(row.status for row in rows))
    data.update(report)
    return data


def recorded_exit_code(rows, interrupted=False):
    """0 when every task ended ``ok``; `PENDING_EXIT` when none failed but some are still pending; else 1."""
    if interrupted or not rows or any(row.status not in (Status.OK, RUNNING) for row in rows):
        return 1
    return PENDING_EXIT if any(row.status == RUNNING for row in rows) else 0


class Recorder:
    """One run's record, from before it starts until its report is in.

    `options` are the flags to keep (the tasks choose them; never a
    secret); `parent` the run a ``fab rerun`` repeats. ``--no-record``
    leaves no trace (`recorded` stays False). ``--outdir`` must be new or
    empty, and ``--detach`` needs a ledger it can write, both checked here,
    before any host is contacted (`UsageError`).
    """

    def __init__(self, verb, options, parent=None, detach=False, outdir=None, no_record=False, ledger=None,
                 warn=None):
        if detach and no_record:
            raise UsageError("--detach needs the ledger (fab collect reads it): it cannot be combined with --no-record")
        if detach and outdir:
            raise UsageError("--outdir cannot wait for detached tasks: once collected, "
                             "write their files with fab show RUN --outdir DIR")
        self.verb, self.options, self.parent, self.detach = verb, dict(options), parent, bool(detach)
        self.started = utc_now()
        self.id = new_run_id(self.started)
        self.outdir = check_outdir(outdir) if outdir else None
        self.ledger = None if no_record else (ledger or Ledger())
        self.recorded = False
        self.warn = warn or (lambda line: None)
        if detach:
            try:
                self.ledger.check_writable()
            except LedgerError as exc:
                raise UsageError(f"--detach needs the ledger: {exc}") from None

    def fields(self):
        """What a run's ``--json`` object starts with: ``run`` (null when it was not recorded), ``rerun_of``."""
        return {"run": self.id if self.recorded else None, **({"rerun_of": self.parent} if self.parent else {})}

    def finish(self, data, rows, exit_code, config=None):
        """Record the finished run (its report's JSON `data` and its `TaskRow`s) and write ``--outdir``.

        Returns the `Run` recorded -- or that would have been, when the
        ledger could not be written (a warning says why) or with
        ``--no-record`` -- for the caller to render.
        """
        report = dict(data)
        if self.verb in ("dispatch", "batch"):
            report[tasks_key(self.verb)] = None  # the rows hold them
        run = Run(self.id, self.verb, iso(self.started), None if self.detach else iso(utc_now()),
                  None if config is None else str(config), self.options, self.parent, self.detach, exit_code, report)
        if self.ledger is not None:
            try:
                run = self.record(run, rows)
                self.recorded = True
            except LedgerError as exc:
                self.warn(f"the run was not recorded: {exc}")
                if self.detach:
                    self.warn(f"its detached tasks run on the hosts, but fab collect cannot find them; "
                              f"fab teardown removes them ({run.id})")
        if self.outdir is not None:
            # from the report itself, not the rows: the files get stderr whole
            for problem in write_outputs(self.outdir, files_head(self.id if self.recorded else None, self.verb, rows),
                                         items_of(data, self.verb)):
                self.warn(problem)
        return run


    def record(self, run, rows):
        """Write `run` to the ledger; the `Run` written. A run whose id another process took first gets
        a new one, unless it is detached: its id already names its tasks on the hosts (`RunIdTaken` then)."""
        while True:
            try:
                self.ledger.record(run, rows)
                return run
            except RunIdTaken:
                if self.detach:
                    raise
                self.id = new_run_id(self.started)
                run = dataclasses.replace(run, id=self.id)


def files_head(run_id, verb, rows):
    """What ``summary.json`` opens with: the run, its verb, its summary."""
    return {"run": run_id, "verb": verb, "summary": dict(Counter(row.status for row in rows))}


def items_of(data, verb):
    """The task objects of a report's JSON, each with ``id`` and ``host`` (a dispatch's hosts ran task 1)."""
    if verb == "dispatch":
        return [{**item, "id": 1, "host": item.get("name")} for item in data.get("hosts", [])]
    return list(data.get(tasks_key(verb), []))


def write_run_files(directory, run, rows):
    """``fab show RUN --outdir DIR``: a recorded run's files, from the ledger; the problems met."""
    items = [{**row.record, "id": row.record.get("id", row.task_id), "host": row.host} for row in rows]
    return write_outputs(directory, files_head(run.id, run.verb, rows), items)


# --- what a run needs to be run again -------------------------------------------------------------


def target_of(fleet, entry):
    """How ``--hosts`` names `entry` again: its config name, or ``user@host[:port]`` for an ad-hoc target."""
    return entry.name if fleet.host(entry.name) is entry else entry.address


def targets_of(fleet, entries):
    """{host name: its `target_of`} for a run's entries."""
    return {entry.name: target_of(fleet, entry) for entry in entries}


def rerun_rows(run, rows, failed=False):
    """The rows of `run` that ``fab rerun`` runs again: all, or (`failed`) those that ended other than ``ok``.

    A task still pending (detached, not collected) is neither: it may yet
    succeed. `UsageError` for a run that had no tasks (deploy, teardown).
    """
    if run.verb not in ("dispatch", "batch"):
        raise UsageError(f"run {run.id} is a {run.verb}: only dispatch and batch runs can be re-run")
    return [row for row in rows if row.status != RUNNING and (not failed or row.status != Status.OK)]


def rerun_tasks(run, rows):
    """A batch's rows as `tasks.Task`s again: the same ids, texts, pins, timeouts and sessions."""
    return [Task(row.record.get("id", row.task_id), row.text.encode("utf-8"), position,
                 f"run {run.id} task {row.record.get('id', row.task_id)}", row.pin, row.timeout_s, row.session)
            for position, row in enumerate(rows)]


def rerun_dispatch_flags(run, rows, hosts=None):
    """A dispatch's flags again, aimed at the hosts of `rows` (a broadcast's, or the one named), or at `hosts`.

    A run whose host the policy chose lets the policy choose again.
    """
    flags = {key: run.options.get(key) for key in ("fold", "deploy", "ephemeral", "raw", "unrestricted", "parallel")}
    flags.update(timeout=rows[0].timeout_s, session=rows[0].session, host=None, hosts=hosts, all=False)
    mode = run.options.get("mode")
    if hosts is None and mode == "broadcast":
        flags["hosts"] = ",".join(dict.fromkeys(row.target for row in rows if row.target))
    elif hosts is None and mode == "named":
        flags["host"] = rows[0].target
    return flags


def recorded_config_path(recorded, explicit=None, spec=None):
    """The config to run under again: ``--config``, else the one the run used -- if it is still there.

    A missing config is not re-created from the template (as a first run
    would): the run used a real one, so that is a usage error, unless every
    host is an ad-hoc ``user@host`` target, which needs no config.
    """
    if explicit:
        return explicit
    if recorded and not Path(recorded).exists() and not only_adhoc_targets(spec):
        raise UsageError(f"the config the run used, {recorded}, is gone: pass --config FILE")
    return recorded


def recorded_config(run, explicit=None, spec=None):
    """`recorded_config_path` for a recorded `Run`."""
    return recorded_config_path(run.config, explicit, spec)
