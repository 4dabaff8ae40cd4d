"""``fab runs`` and ``fab show``: the ledger read back, for people and agents.

``fab runs`` lists the recorded runs, newest first: one row a run (its id,
verb, start, how long it took, what its tasks or hosts ended with, and
whether it was detached, re-ran another, was interrupted, or still has
tasks pending). ``fab show RUN`` prints a run again as it printed itself:
the same blocks (or, for one host, the bare answer) or ``--json`` object,
rebuilt from the ledger's rows with the very renderers the run used
(`verbs.answers`, `verbs.batch_report`), so a detached run's answers read
like any other's once collected. What a ``--detach`` start prints (the run
id alone on stdout, a line per task that could not start) lives here too.
"""

import json
from collections import Counter

from .answers import render_blocks, show_inline
from .batch_report import BatchReport, render_batch
from ..core.detach import RUNNING
from ..core.ledger import TASK_VERBS, parse_iso
from ..core.recording import PENDING_EXIT, recorded_json
from ..core.report import FleetReport, HostReport, emit, render_table
from ..core.scheduler import NO_HOST, TaskOutcome
from ..core.tasks import Task
from ..host.agent import AgentResult

#: What a ``fab runs`` row says in its TASKS column when a run had none recorded.
NO_TASKS = "-"


# --- fab runs -------------------------------------------------------------------------------------


def run_summary(run, counts):
    """``{status: n}`` of a run: its tasks' (dispatch, batch) or, for deploy and teardown, its hosts'."""
    return dict(counts) if run.verb in TASK_VERBS else dict(run.report.get("summary") or {})


def took(run):
    """Seconds from the run's start to its end (None while it has no end: detached and pending, or cut off)."""
    if run.ended_at is None:
        return None
    return round((parse_iso(run.ended_at) - parse_iso(run.started_at)).total_seconds(), 3)


def run_exit_code(run, counts):
    """The run's exit code as things stand: for a run with tasks, 0 / 1 / 3 (`recorded_exit_code`)."""
    if run.verb not in TASK_VERBS or not counts:
        return run.exit_code
    if run.report.get("interrupted") or any(status not in ("ok", RUNNING) for status in counts):
        return 1
    return PENDING_EXIT if counts.get(RUNNING) else 0


def run_notes(run, counts):
    """What a reader should know of a run besides its tasks, as short words."""
    notes = []
    if run.detached:
        notes.append("detached")
    if counts.get(RUNNING):
        notes.append(f"{counts[RUNNING]} pending (fab collect {run.id})")
    if run.parent:
        notes.append(f"rerun of {run.parent}")
    if run.report.get("interrupted"):
        notes.append("interrupted")
    if run.ended_at is None and not run.detached:
        notes.append("unfinished")
    return notes


def runs_json(entries):
    """``fab runs --json``: ``{"runs": [...]}``, newest first, each run with its summary and options."""
    runs = []
    for run, counts in entries:
        runs.append({
            "run": run.id, "verb": run.verb, "started_at": run.started_at, "ended_at": run.ended_at,
            "duration_s": took(run), "summary": run_summary(run, counts), "pending": counts.get(RUNNING, 0),
            "exit_code": run_exit_code(run, counts), "detached": run.detached, "rerun_of": run.parent, "config": run.config,
            "options": run.options,
        })
    return json.dumps({"runs": runs}, indent=2, ensure_ascii=False)


def render_runs(entries):
    """The ``fab runs`` table, newest first."""
    if not entries:
        return "no runs recorded yet"
    rows = []
    for run, counts in entries:
        summary = run_summary(run, counts)
        shown = ", ".join(f"{n} {status}" for status, n in sorted(summary.items())) or NO_TASKS
        seconds = took(run)
        started = parse_iso(run.started_at).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        rows.append([run.id, run.verb, started, "-" if seconds is None else f"{seconds:.1f}s", shown,
                     "-" if run_exit_code(run, counts) is None else run_exit_code(run, counts),
                     "; ".join(run_notes(run, counts))])
    return render_table(rows, ["RUN", "VERB", "STARTED", "TOOK", "RESULT", "EXIT", "NOTE"])


def render_pruned(deleted, kept, age):
    """What ``fab runs --prune`` did, in one line."""
    text = f"pruned {deleted} run{'s' if deleted != 1 else ''} older than {age}"
    if kept:
        text += f"; kept {kept} with tasks still pending (fab collect --all first)"
    return text


# --- fab show -------------------------------------------------------------------------------------


def show_run(run, rows, as_json=False, raw=False, out=None, err=None):
    """Print a recorded run as it printed itself: its ``--json`` object, or its human report."""
    if as_json:
        emit(json.dumps(recorded_json(run, rows), indent=2, ensure_ascii=False), out)
    elif run.verb == "dispatch":
        raw = raw or bool(run.options.get("raw"))
        report = dispatch_report(run, rows)
        if run.options.get("mode") == "broadcast":
            emit(render_blocks(report, run.options.get("fold", True), raw), out)
        else:
            show_inline(report, out, err, raw)
    elif run.verb == "batch":
        emit(render_batch(batch_report(run, rows), raw or bool(run.options.get("raw"))), out)
    else:
        emit(render_one_line(run), out)


def task_result(record):
    """The `AgentResult` a task's recorded JSON object describes (what the renderers read)."""
    return AgentResult(record.get("stdout", ""), record.get("stderr", ""), record.get("exit_code"),
                       record.get("status"), record.get("message", ""), record.get("duration_s") or 0.0,
                       record.get("answer", ""), record.get("log", ""), record.get("session"),
                       record.get("dropped_bytes"), tuple(record.get("not_utf8") or ()))


def host_report(row):
    """A task row as the `HostReport` of the host it ran on, its result the details."""
    return HostReport(row.host or NO_HOST, row.address or NO_HOST, row.status, row.duration_s or 0.0, row.message,
                      task_result(row.record))


def dispatch_report(run, rows):
    """A dispatch run as the `FleetReport` it printed."""
    extra = {key: value for key, value in run.report.items()
             if key not in ("verb", "hosts", "summary", "interrupted")}
    return FleetReport("dispatch", [host_report(row) for row in rows], extra,
                       interrupted=bool(run.report.get("interrupted")))


def batch_report(run, rows):
    """A batch run as the `BatchReport` it printed (hosts as their recorded objects)."""
    outcomes = [TaskOutcome(Task(row.record.get("id", row.task_id), b"", row.seq, ""), host_report(row),
                            row.attempts or 0) for row in rows]
    hosts = [HostReport(h.get("name"), h.get("address"), h.get("status"), h.get("duration_s") or 0.0,
                        h.get("message", "")) for h in run.report.get("hosts") or []]
    return BatchReport(outcomes, hosts, run.report.get("connections_opened", 0), run.report.get("duration_s") or 0.0,
                       bool(run.report.get("interrupted")))


def render_one_line(run):
    """A deploy or teardown run: what it did to which hosts."""
    summary = ", ".join(f"{n} {status}" for status, n in sorted((run.report.get("summary") or {}).items()))
    lines = [f"run {run.id}: {run.verb} at {run.started_at}: {summary or 'no hosts'}"]
    for host in run.report.get("hosts") or []:
        message = f": {host['message']}" if host.get("message") else ""
        lines.append(f"  {host.get('name')}: {host.get('status')}{message}")
    return "\n".join(lines)


# --- a --detach start -----------------------------------------------------------------------------


def render_started(run, rows):
    """A detached start for people: (stdout: the run id alone, stderr lines: what could not start, how to collect)."""
    started = [row for row in rows if row.status == RUNNING]
    lines = []
    for row in rows:
        if row.status != RUNNING or row.message:
            where = f" on {row.host}" if row.host else ""
            detail = f": {row.message}" if row.message else ""
            lines.append(f"task {row.record.get('id', row.task_id)}{where}: {row.status}{detail}")
    hosts = len({row.host for row in started})
    lines.append(f"run {run.id}: {len(started)} of {len(rows)} task{'s' if len(rows) != 1 else ''} started detached "
                 f"on {hosts} host{'s' if hosts != 1 else ''}; collect with: fab collect {run.id} [--wait]")
    if len(started) < len(rows):
        lines.append("not started: " + ", ".join(f"{n} {status}" for status, n in sorted(
            Counter(row.status for row in rows if row.status != RUNNING).items())))
    return run.id + "\n", lines
