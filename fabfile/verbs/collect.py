"""``fab collect``: bring in what detached tasks have finished, and say what still runs.

The ledger knows every task started with ``--detach`` and not collected yet
(``running``), and where: its host, its files' key and slot. One round
visits each such host once, through the one fan-out (a connection per host,
under the config the run used), and asks `host.detached.collect_host` how
its tasks stand. A task that ended is settled in the ledger with its answer
-- and only then are its files removed from the host (the whole run
directory once none of the run is left there), so a ledger that cannot be
written loses nothing: the next collect finds the files again. A task still
queued or running stays pending, and so does every task of a host that
cannot be reached: collect never guesses it lost. ``--wait`` repeats the
round, a little less often each time, until nothing is left running on a
host that answers.

Two collects at once are safe: a task is settled once (`Ledger.settle`
changes only a pending row), and removing files already gone is no error.
"""

import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

from ..core.context import quiet
from ..core.detach import RUNNING
from ..core.errors import UsageError
from ..core.ledger import LedgerError, iso, utc_now
from ..core.recording import capped
from ..core.report import HostReport
from ..core.status import Status
from ..host.agent import AgentOptions
from ..host.detached import Placed, collect_host, forget
from ..ssh.fanout import fan_out

#: The first pause between two rounds of ``--wait``, growing by half each round up to the last.
FIRST_POLL_S, MAX_POLL_S = 1.0, 10.0


@dataclass
class Collection:
    """What a collect did: the runs it looked at, tasks brought in, tasks still pending, problems met."""

    runs: list
    collected: int = 0
    pending: int = 0
    rounds: int = 0
    notes: list = field(default_factory=list)
    interrupted: bool = False


@dataclass
class HostRound:
    """One host's part in a round: tasks settled, tasks seen running or queued, problems."""

    collected: int = 0
    running: int = 0
    notes: list = field(default_factory=list)

    def to_dict(self):
        return {"collected": self.collected, "running": self.running}


def collect(ledger, run_ids, connect, wait=False, notify=quiet, sleep=time.sleep):
    """Collect the pending tasks of `run_ids`; a `Collection`.

    `connect(config, targets)` gives the `RunContext` to reach those hosts
    (``--hosts`` targets) under that config, and ``{target: entry}`` of the
    ones it could name, the others' problems as ``{target: message}``.
    """
    outcome = Collection(list(run_ids))
    delay = FIRST_POLL_S
    while True:
        outcome.rounds += 1
        waiting, interrupted = collect_round(ledger, run_ids, connect, outcome, notify)
        if interrupted:
            outcome.interrupted = True
            break
        if not wait or not waiting:
            break
        notify(f"{waiting} task{'s' if waiting != 1 else ''} still running; looking again in {delay:g}s")
        try:
            sleep(delay)
        except KeyboardInterrupt:
            outcome.interrupted = True
            break
        delay = min(delay * 1.5, MAX_POLL_S)
    outcome.pending = sum(len(tasks) for _, tasks in ledger.pending(run_ids).values())
    return outcome


def collect_round(ledger, run_ids, connect, outcome, notify):
    """One visit to every host with pending tasks; (tasks seen running on a host that answered, interrupted)."""
    groups = defaultdict(lambda: defaultdict(list))
    for run, tasks in ledger.pending(run_ids).values():
        for task in tasks:
            groups[run.config][task.target].append((run, task))
    waiting, interrupted = 0, False
    for config, by_target in groups.items():
        try:
            run, entries, problems = connect(config, list(by_target))
        except UsageError as exc:
            problems, entries = {target: str(exc) for target in by_target}, {}
        for target, problem in problems.items():
            note_pending(ledger, by_target[target], f"{target}: not contacted: {problem}", outcome)
        if not entries:
            continue
        work = {id(entry): by_target[target] for target, entry in entries.items()}
        done = fan_out(run.on(list(entries.values())),
                       lambda cxn, entry: collect_on_host(cxn, entry, work[id(entry)], ledger, notify))
        interrupted = interrupted or done.interrupted
        for (target, entry), report in zip(entries.items(), done.reports):
            if isinstance(report.details, HostRound):
                outcome.collected += report.details.collected
                waiting += report.details.running
                outcome.notes += report.details.notes
            else:
                reason = f"{report.status}" + (f": {report.message}" if report.message else "")
                note_pending(ledger, by_target[target], f"{entry.name} was {reason} at collect", outcome)
    return waiting, interrupted


def note_pending(ledger, items, reason, outcome):
    """Tasks whose host could not be asked: they stay pending, and say why (in the ledger and the notes)."""
    outcome.notes.append(f"{reason}: {len(items)} task{'s' if len(items) != 1 else ''} stay pending")
    for run, task in items:
        try:
            ledger.settle(run.id, pending_row(task, f"pending: {reason} ({iso(utc_now())})"))
        except LedgerError as exc:
            outcome.notes.append(f"could not note it in the ledger: {exc}")
            return


def collect_on_host(cxn, entry, items, ledger, notify):
    """Collect one host's pending tasks, run by run; a `HostReport` whose details are its `HostRound`."""
    started = time.monotonic()
    tally = HostRound()
    by_run = defaultdict(list)
    for run, task in items:
        by_run[run.id].append((run, task))
    for run_id, pairs in by_run.items():
        unrestricted = bool(pairs[0][0].options.get("unrestricted"))
        placed = [Placed(task.remote_key, task.slot, task.timeout_s or 0.0,
                         AgentOptions(session=task.session, unrestricted=unrestricted)) for _, task in pairs]
        states = collect_host(cxn, run_id, placed)
        settled, recorded = [], True
        for (_, task), got in zip(pairs, states):
            row = settled_row(task, got.result) if got.final else pending_row(
                task, f"{got.state} on {entry.name} ({iso(utc_now())})")
            try:
                ledger.settle(run_id, row)
            except LedgerError as exc:
                tally.notes.append(f"{entry.name}: not recorded, its files stay on the host: {exc}")
                recorded = False
                break
            if got.final:
                settled.append(task.remote_key)
                tally.collected += 1
                notify(f"{entry.name}: run {run_id} task {task.task_id}: {got.result.status}")
            else:
                tally.running += 1
        if recorded and settled:
            forget(cxn, run_id, settled, everything=all(got.final for got in states))
    return HostReport(entry.name, entry.address, Status.OK, time.monotonic() - started, details=tally)


def settled_row(task, result):
    """The ledger row of a collected task: its record now holds the result (`AgentResult`) and status."""
    old = {key: value for key, value in task.record.items() if key != "message"}
    keys = list(old)
    head = keys[:keys.index("status")] if "status" in keys else []  # id, host, address (a dispatch: name, ...)
    record = {key: old[key] for key in head}
    record["status"] = str(result.status)
    record["duration_s"] = round(result.duration_s, 3)
    if result.message:
        record["message"] = result.message
    record.update(result.to_dict())
    record.update({key: value for key, value in old.items() if key not in record})  # detached, version, model
    record["attempts"] = 1
    record = capped(record)
    return replace(task, status=str(result.status), message=result.message, answer=result.answer,
                   stderr=record.get("stderr", ""), exit_code=result.exit_code, duration_s=result.duration_s,
                   attempts=1 if result.status not in (Status.NOT_RUN,) else 0, record=record,
                   collected_at=iso(utc_now()))


def pending_row(task, message):
    """The ledger row of a task still pending, with what collect last learned of it."""
    record = dict(task.record, message=message)
    return replace(task, status=RUNNING, message=message, record=record)
