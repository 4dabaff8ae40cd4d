"""Which free slot of which host runs which task of a ``fab batch``, and every task's one final status.

Nothing here talks to a host or starts a thread: the runner
(`verbs.batch`) connects, probes and runs, and tells the `Scheduler` what
happened -- a host ready with its load, a host dropped, a task run with
its result, a session refused, Ctrl-C. After each event the scheduler
hands out what can now be handed out and records what became final, so
its decisions can be driven and checked event by event, without SSH.

The rules, in one place:

* every host has ``max_tasks`` slots, each running one task at a time;
* the least loaded host first, by `policy.load_rank` -- the one ranking
  ``fab dispatch`` uses, counting the tasks we have running there since
  the probe; a task that ran before prefers a host it has not run on;
* with fewer tasks than slots, which hosts get them is a real choice, so
  nothing is handed out until every host has answered its probe (or
  failed); with at least as many, a host starts as soon as it is ready;
* a pinned task waits for its host and never blocks the tasks behind it;
* ``--retries`` runs a ``failed`` or ``timeout`` task again, ``--retry-lost``
  a ``lost`` one (it may have had effects, so only when asked);
* a task that never started (its host dropped, or refused the session)
  goes back to the front of the queue; after Ctrl-C it ends ``not-run``.
"""

import time
from dataclasses import dataclass, field, replace

from .policy import load_rank
from .report import HostReport
from .status import RETRYABLE, Status

#: The host name of a task that never ran anywhere (``null`` in JSON).
NO_HOST = "-"

CONNECTING, READY, DROPPED = "connecting", "ready", "dropped"


@dataclass(eq=False)
class HostState:
    """One host's part in the run: where it is in it, its slots, how loaded it is, what it ran.

    `entry` is its `config.HostEntry`, `order` its place in the config (the
    last tie-break). `started` and `ended` time its part, for the report.
    """

    entry: object
    order: int
    state: str = CONNECTING
    status: Status = Status.OK
    message: str = ""
    slots: int = 0
    running: int = 0
    tasks_run: int = 0
    load1: float | None = None
    ncpu: int | None = None
    version: str | None = None  # PicoClaw's, as the probe found it (the ledger keeps it per task)
    model: str | None = None
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    @property
    def name(self):
        """The host's name in the config (what a task's ``host`` pins)."""
        return self.entry.name

    @property
    def alive(self):
        """True while the host may still run tasks (connecting or ready)."""
        return self.state != DROPPED

    def rank(self):
        """Least-loaded-first's sort key: `policy.load_rank` with the tasks we run there now."""
        return load_rank(self.load1, self.ncpu, self.order, self.running)


@dataclass(eq=False)
class Slot:
    """One of a host's ``max_tasks`` places to run a task; `job` is set when one is handed over.

    A slot whose session the host refused is `retired`: it gets nothing more.
    """

    host: HostState
    job: object = None
    retired: bool = False


@dataclass(eq=False)
class Job:
    """A task on its way through the queue: how often it ran, where, and its last run's report."""

    task: object
    attempts: int = 0
    tried: list = field(default_factory=list)
    last: HostReport | None = None


@dataclass
class TaskOutcome:
    """A task's one final status: the report of its last run (or why none), and how many runs it took.

    `report` is a `HostReport` of the host it ran on, whose details are the
    runner's result (an `AgentResult`); or, for a task that never ran, of
    the host it was pinned to or of `NO_HOST`, with no details.
    """

    task: object
    report: HostReport
    attempts: int

    @property
    def ok(self):
        """True when the task ended ``ok``."""
        return self.report.ok

    @property
    def status(self):
        """The task's final `Status` (``ok``, ``failed``, ``timeout``, ``lost``...)."""
        return self.report.status


class Scheduler:
    """Which free slot runs which task, and every task's final status, event by event.

    `tasks` are `tasks.Task`s in input order, `entries` the run's
    `config.HostEntry`s in config order (a `HostState` each, in `hosts`).
    `on_wake(slot)` is called when a slot was handed a task or the run is
    over for it: the runner wakes that slot's thread, and only that one.

    Not thread-safe by itself: a threaded runner calls it under one lock.
    """

    def __init__(self, tasks, entries, retries=0, retry_lost=False, on_wake=None):
        self.tasks = list(tasks)
        self.hosts = [HostState(entry, order) for order, entry in enumerate(entries)]
        self.retries = retries
        self.retry_lost = retry_lost
        self.on_wake = on_wake or (lambda slot: None)
        self.pending = [Job(task) for task in self.tasks]
        self.slots = []
        self.idle = []
        self.running = {}
        self.outcomes = {}
        self.finish_order = []
        self.reported = 0
        self.stopping = False
        self.hold = len(self.tasks) < sum(max(1, entry.max_tasks) for entry in entries)

    # -- what a reader (the progress line, the report) looks at --

    @property
    def complete(self):
        """True once every task has its final status."""
        return len(self.outcomes) == len(self.tasks)

    @property
    def closed(self):
        """True when no more tasks will be handed out (all final, or Ctrl-C)."""
        return self.stopping or self.complete

    def counts(self):
        """(done, total, running, not ok) for the progress line."""
        failed = sum(1 for outcome in self.outcomes.values() if not outcome.ok)
        return len(self.outcomes), len(self.tasks), len(self.running), failed

    @property
    def has_new(self):
        """True when tasks became final since `new_outcomes` was last called."""
        return len(self.finish_order) > self.reported

    def new_outcomes(self):
        """The outcomes that became final since the last call, in the order they did."""
        new = self.finish_order[self.reported:]
        self.reported = len(self.finish_order)
        return new

    def results(self):
        """Every task's outcome in input order; one the run never recorded says so rather than vanish."""
        unrecorded = not_run("no result was recorded for this task")
        return [self.outcomes.get(task.position) or TaskOutcome(task, unrecorded, 0) for task in self.tasks]

    # -- hosts --

    def host_ready(self, host, load1, ncpu):
        """`host` answered its probe and has PicoClaw: its slots join the run, idle; returns them.

        The slots are idle from this moment, not from when their threads
        first ask for work: otherwise the last host to answer its probe
        could release the hold before its own slots were counted, and a
        small batch would go to busier hosts.
        """
        host.state, host.load1, host.ncpu = READY, load1, ncpu
        host.slots = max(1, host.entry.max_tasks)
        new = [Slot(host) for _ in range(host.slots)]
        self.slots.extend(new)
        self.idle.extend(new)
        self._assign()
        return new

    def drop_host(self, host, status, message):
        """`host` takes no more tasks (unreachable, no PicoClaw...); tasks only it could run end with its status."""
        self._drop(host, status, message)
        self._settle()
        self._assign()

    def skip_host(self, host):
        """`host` was never contacted: every task had ended, or Ctrl-C came, before its turn."""
        host.state, host.ended = DROPPED, time.monotonic()
        if self.stopping:
            host.status, host.message = Status.INTERRUPTED, "not connected: the run was interrupted"
        else:
            host.status, host.message = Status.UNUSED, "not connected: every task had ended"
        self._assign()

    def host_done(self, host):
        """The runner is done with `host` (its connection closed): its part of the run ends now, if not before."""
        host.ended = host.ended if host.ended is not None else time.monotonic()

    # -- slots --

    def ask(self, slot):
        """The slot's next task, taken; None when it has none yet (see `open_for`) or the run is over for it."""
        if slot.job is None and self.open_for(slot):
            if slot not in self.idle:
                self.idle.append(slot)
            self._assign()
        if slot.job is None and not self.open_for(slot) and slot in self.idle:
            self.idle.remove(slot)
        job, slot.job = slot.job, None
        return job

    def open_for(self, slot):
        """True while the slot may still get tasks: its host is ready and the run goes on."""
        return not self.stopping and not self.complete and slot.host.state == READY and not slot.retired

    def not_started(self, slot, job, status, message):
        """The host failed before `job` started there: the host is dropped, the task goes back on the queue."""
        self._release(slot)
        self._requeue(job)
        self._drop(slot.host, status, message)
        self._settle()
        self._assign()

    def slot_refused(self, slot, job, message):
        """The host refused the slot's session: the slot leaves, the task goes back, the host stays.

        The host keeps the slots it can hold; with none left it is dropped ``failed``.
        """
        host = slot.host
        self._release(slot)
        self._requeue(job)
        slot.retired = True
        self.slots.remove(slot)
        host.slots -= 1
        host.message = message
        if host.slots == 0:
            self._drop(host, Status.FAILED, message)
        self._settle()
        self._assign()

    def finished(self, slot, job, result):
        """`job` ran on the slot's host: final, or again (``--retries``, ``--retry-lost``).

        `result` is what the run gave back (an `AgentResult`: ``status``,
        ``message``, ``duration_s``, and ``to_dict()`` for JSON); it becomes
        the details of the task's report. ``not-installed`` means nothing
        ran: the host is dropped and the task goes elsewhere.
        """
        host = slot.host
        self._release(slot)
        if result.status == Status.NOT_INSTALLED:
            self._requeue(job)
            self._drop(host, Status.NOT_INSTALLED, result.message)
        else:
            host.tasks_run += 1
            job.attempts += 1
            job.tried.append(host.name)
            job.last = HostReport(host.name, host.entry.address, result.status, result.duration_s, result.message,
                                  result)
            if self.stopping and result.status != Status.OK:
                job.last = replace(job.last, status=Status.INTERRUPTED, message="stopped by Ctrl-C while it ran")
            if result.status == Status.LOST:
                self._drop(host, Status.LOST, f"the connection dropped while task {job.task.id!r} ran")
            if self._runs_again(job):
                self._requeue(job)
            else:
                self._final(job, job.last)
        self._settle()
        self._assign()

    # -- Ctrl-C --

    def interrupt(self):
        """Hand out nothing more; unstarted tasks end ``not-run``. Returns the hosts with tasks running."""
        self.stopping = True
        pending, self.pending = self.pending, []
        for job in pending:
            self._requeue(job)
        self._wake_all()
        return [host for host in self.hosts if host.running and host.state == READY]

    def abandon(self, message):
        """The stop's last word: tasks still running (their stop unconfirmed) end ``interrupted`` with
        `message`; hosts still connecting are dropped ``interrupted``."""
        for slot, job in list(self.running.items()):
            entry = slot.host.entry
            self._final(job, HostReport(entry.name, entry.address, Status.INTERRUPTED, 0.0, message))
        self.running.clear()
        for host in self.hosts:
            if host.state == CONNECTING:
                host.state, host.status, host.message = DROPPED, Status.INTERRUPTED, "still connecting when interrupted"

    # -- the decisions --

    def _release(self, slot):
        """The slot's task is over (run or not)."""
        slot.host.running -= 1
        self.running.pop(slot, None)

    def _requeue(self, job):
        """Back to the front of the queue; after Ctrl-C it ends ``not-run`` (or with its last run) instead."""
        if self.stopping:
            self._final(job, job.last or not_run("interrupted before it started"))
        else:
            self.pending.insert(0, job)

    def _assign(self):
        """Hand pending tasks, in queue order, to idle slots: the least loaded host first.

        A pinned task waits for its host and never blocks the tasks behind
        it. A task that ran before prefers a host it has not run on.
        """
        if self.stopping or self.hold and any(host.state == CONNECTING for host in self.hosts):
            return
        self.hold = False
        for job in list(self.pending):
            if not self.idle:
                return
            fits = [slot for slot in self.idle if job.task.host in (None, slot.host.name)]
            if not fits:
                continue
            slot = min(fits, key=lambda s: (s.host.name in job.tried, s.host.rank()))
            self.pending.remove(job)
            self.idle.remove(slot)
            slot.job = job
            slot.host.running += 1
            self.running[slot] = job
            self.on_wake(slot)

    def _runs_again(self, job):
        """True when ``--retries`` (or ``--retry-lost``) gives the task another run."""
        if self.stopping:
            return False
        status = job.last.status
        if status in RETRYABLE:
            return job.attempts <= self.retries
        if status == Status.LOST and self.retry_lost:
            return job.attempts <= max(1, self.retries)
        return False

    def _drop(self, host, status, message):
        """Take `host` out of the run (once) and wake its slots so they stop."""
        if host.state == DROPPED:
            return
        host.state, host.status, host.message, host.ended = DROPPED, status, message, time.monotonic()
        self.idle = [slot for slot in self.idle if slot.host is not host]
        for slot in self.slots:
            if slot.host is host:
                if slot.job is not None:  # handed over but not yet picked up: it never started
                    job, slot.job = slot.job, None
                    self._release(slot)
                    self._requeue(job)
                self.on_wake(slot)

    def _settle(self):
        """Give a final status to every pending task no live host can take.

        A task pinned to a dropped host ends with that host's status; any
        other task ends ``not-run`` once no host is left at all. A task that
        already ran and was waiting for a retry keeps its last result.
        """
        by_name = {host.name: host for host in self.hosts}
        anyone = any(host.alive for host in self.hosts)
        for job in list(self.pending):
            pinned = by_name.get(job.task.host)
            if pinned.alive if pinned is not None else anyone and job.task.host is None:
                continue  # a live host can still take it
            self.pending.remove(job)
            if job.last is not None:
                self._final(job, job.last)
            elif pinned is not None:
                message = f"pinned to {pinned.name}, which is {pinned.status}" + (
                    f": {pinned.message}" if pinned.message else "")
                self._final(job, HostReport(pinned.name, pinned.entry.address, pinned.status, 0.0, message))
            elif job.task.host is not None:
                self._final(job, not_run(f"pinned to {job.task.host}, which is not one of the run's hosts"))
            else:
                self._final(job, not_run("no host left to run it: " + dropped_hosts(self.hosts)))

    def _final(self, job, report):
        """Record the task's one final status (a second one is ignored); wake every slot once all are final."""
        if job.task.position in self.outcomes:
            return
        outcome = TaskOutcome(job.task, report, job.attempts)
        self.outcomes[job.task.position] = outcome
        self.finish_order.append(outcome)
        if self.complete:
            self._wake_all()

    def _wake_all(self):
        """Wake every slot (the run is over, or stopping)."""
        for slot in self.slots:
            self.on_wake(slot)


def not_run(message):
    """The report of a task that never ran anywhere (its host is `NO_HOST`)."""
    return HostReport(NO_HOST, NO_HOST, Status.NOT_RUN, 0.0, message)


def dropped_hosts(hosts):
    """``h00 unreachable, h01 auth-failed`` for a message, at most eight named."""
    names = [f"{host.name} {host.status}" for host in hosts if not host.alive]
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "") or "no hosts"
