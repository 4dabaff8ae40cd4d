"""What ``fab batch`` shows: per-task results for people and agents, and a progress line.

People get one block per task in input order (the same block body as a
dispatch broadcast), the hosts that dropped out, and a summary. ``--json``
is one object at the end; ``--jsonl`` streams one line per task as it
finishes, for an agent that acts on results while the rest still run. The
progress line goes to stderr, and only when stderr is a terminal.
"""

import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from typing import ClassVar

from .answers import NO_OUTPUT, RULE, block_body
from ..core.report import HostReport, emit
from ..core.scheduler import NO_HOST


@dataclass
class BatchReport:
    """A batch's result: every task's `TaskOutcome` in input order, and each host's part (`HostReport`s)."""

    tasks: list
    hosts: list
    connections_opened: int
    duration_s: float
    interrupted: bool = False

    verb: ClassVar[str] = "batch"

    @property
    def summary(self):
        """``{status: count}`` over the tasks."""
        return dict(Counter(str(outcome.status) for outcome in self.tasks))

    @property
    def exit_code(self):
        """0 when every task ended ``ok`` (and the run was not interrupted), else 1."""
        return 0 if self.tasks and all(t.ok for t in self.tasks) and not self.interrupted else 1

    def to_dict(self):
        """The ``--json`` object: verb, tasks, hosts, summary, and what the run cost."""
        return {
            "verb": self.verb,
            "tasks": [task_dict(outcome) for outcome in self.tasks],
            "hosts": [host.to_dict() for host in self.hosts],
            "summary": self.summary,
            "connections_opened": self.connections_opened,
            "duration_s": round(self.duration_s, 3),
            "interrupted": self.interrupted,
        }

    def to_json(self):
        """The one JSON object ``--json`` prints."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


def batch_report(scheduler, connections_opened, duration_s, interrupted=False):
    """The `BatchReport` of the run `scheduler` (a `core.scheduler.Scheduler`) decided."""
    hosts = [host_report(host) for host in scheduler.hosts]
    return BatchReport(scheduler.results(), hosts, connections_opened, duration_s, interrupted)


@dataclass
class BatchHostDetails:
    """A host's part in a batch: its slots, how many tasks it ran, its load when probed."""

    slots: int
    tasks_run: int
    load1: float | None
    ncpu: int | None
    picoclaw_version: str | None = None
    model: str | None = None

    def to_dict(self):
        """The fields a host's ``--json`` object adds: slots, tasks run, load, CPUs, PicoClaw's version and model."""
        return asdict(self)


def host_report(host):
    """A host's part in the batch (a `core.scheduler.HostState`) as a `HostReport` with `BatchHostDetails`."""
    ended = host.ended if host.ended is not None else host.started
    details = BatchHostDetails(host.slots, host.tasks_run, host.load1, host.ncpu, host.version, host.model)
    return HostReport(host.name, host.entry.address, host.status, max(0.0, ended - host.started), host.message, details)


def task_dict(outcome):
    """A task's JSON object: id, host, status, duration, output (every field, even unrun), attempts.

    A task that never ran has no output; its fields are there anyway, empty,
    so that a reader finds the same keys on every line.
    """
    host = outcome.report.to_dict()
    name, address = host.pop("name"), host.pop("address")
    data = {"id": outcome.task.id, "host": None if name == NO_HOST else name,
            "address": None if address == NO_HOST else address}
    data.update(host)
    data.update({key: data.get(key, empty) for key, empty in NO_OUTPUT.to_dict().items()})
    data["attempts"] = outcome.attempts
    return data


def jsonl_line(outcome):
    """One task's ``--jsonl`` line (no newline)."""
    return json.dumps(task_dict(outcome), ensure_ascii=False)


def render_batch(report, raw=False):
    """The human view: one block per task in input order, hosts with something to say, the summary."""
    parts = [task_header(outcome) + block_body(outcome.report, raw) for outcome in report.tasks]
    parts += [f"host {h.name} ({h.address}): {h.status}: {h.message}\n" for h in report.hosts if h.message]
    parts.append(summary_text(report) + "\n")
    return "".join(parts)


def task_header(outcome):
    """``---- task 3 on h01: ok, 0.21s ----`` (``(2 runs)`` when it took more than one)."""
    where = f" on {outcome.report.name}" if outcome.attempts else ""
    runs = f" ({outcome.attempts} runs)" if outcome.attempts > 1 else ""
    return f"{RULE} task {outcome.task.id}{where}: {outcome.status}, {outcome.report.duration_s:.2f}s{runs} {RULE}\n"


def summary_text(report):
    """``256 tasks: 250 ok, 6 failed; 32 hosts, 32 SSH connections, 4.21s``."""
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.summary.items()))
    hosts = Counter(h.status for h in report.hosts)
    host_text = f"{len(report.hosts)} host{'s' if len(report.hosts) != 1 else ''}"
    if set(hosts) - {"ok"}:
        host_text += " (" + ", ".join(f"{n} {status}" for status, n in sorted(hosts.items())) + ")"
    plural = "connection" if report.connections_opened == 1 else "connections"
    tasks = f"{len(report.tasks)} task{'s' if len(report.tasks) != 1 else ''}"
    text = f"{tasks}: {counts}; {host_text}, {report.connections_opened} SSH {plural}, {report.duration_s:.2f}s"
    return text + ("; interrupted" if report.interrupted else "")


class ProgressPrinter:
    """Writes ``--jsonl`` lines as tasks finish and a progress line on a terminal's stderr.

    Called by `batch.run_batch` from the main thread only, so lines never
    interleave. The progress line is redrawn in place and cleared before any
    other output, so it never ends up in a pipe or a log.
    """

    def __init__(self, jsonl=False, out=None, err=None):
        self.jsonl = jsonl
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.tty = hasattr(self.err, "isatty") and self.err.isatty()
        self.shown = ""

    def __call__(self, new_outcomes, run):
        """Stream the newly final tasks (``--jsonl``) and redraw the progress line.

        `run` tells how far the batch is: ``complete`` and ``counts()``.
        """
        if self.jsonl and new_outcomes:
            self.clear()
            for outcome in new_outcomes:
                emit(jsonl_line(outcome), self.out)
        if self.tty and run.complete:
            self.clear()  # the results come next, on stdout: they must not start on this line
        elif self.tty:
            done, total, running, failed = run.counts()
            self.show(f"batch: {done}/{total} done, {running} running, {failed} failed")

    def show(self, text):
        """Redraw the progress line (only when it changed)."""
        if text != self.shown:
            self.err.write("\r\033[K" + text)
            self.err.flush()
            self.shown = text

    def clear(self):
        """Remove the progress line so the next output starts on a clean line."""
        if self.shown:
            self.err.write("\r\033[K")
            self.err.flush()
            self.shown = ""
