"""``fab batch``: a queue of one-shot PicoClaw tasks spread over the fleet's free slots.

The seed started one ``dispatch.sh ... &`` per host and waited; 200 tasks on
20 boards need a queue instead. Here every selected host gets one SSH
connection, opened once and probed once (`facts.probe_host`: load, CPUs,
PicoClaw present), and ``max_tasks`` slots. Each slot is a thread that runs
one task at a time as its own exec channel on the host's connection, so a
host's whole share of the queue costs one handshake. `TaskQueue` decides
which free slot gets which task: the least loaded host first, pinned tasks
only on their host, retries elsewhere when another host is free.

Running one task -- the remote command, its deadline, what its exit means --
is `agent_command.run_agent`'s, the same as ``fab dispatch``.

Every input task ends with exactly one final status. A host that cannot be
reached, or whose connection fails before a task starts, is dropped and the
task goes back on the queue; a task whose connection died while it ran is
``lost`` and runs again only with ``--retry-lost`` (it may have had effects).
"""

import threading
import time
from dataclasses import dataclass, field

from ..core.tasks import Task, check_pins
from ..core.errors import UsageError

#: Statuses after which ``--retries`` runs a task again.
RETRYABLE = ("failed", "timeout")
#: Run ``fab deploy`` for hosts dropped with this.
NOT_INSTALLED = "not-installed"
#: The host name of a task that never ran anywhere (``null`` in JSON).
NO_HOST = "-"



# --- the queue ------------------------------------------------------------------------------

CONNECTING, READY, DROPPED = "connecting", "ready", "dropped"


@dataclass
class HostState:
    """One host's part in the run: its connection, its slots and how loaded it is."""

    entry: object
    order: int
    cxn: object = None
    state: str = CONNECTING
    status: str = "ok"
    message: str = ""
    slots: int = 0
    running: int = 0
    tasks_run: int = 0
    load1: float | None = None
    ncpu: int | None = None
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

    def load(self):
        """What least-loaded-first compares: (1-minute load + our running tasks) per CPU.

        The probe's load is from before the run; adding the tasks we have
        running there since keeps one host from getting every task. A host
        whose load is unknown ranks after those whose load is known, as in
        ``fab dispatch``.
        """
        return ((self.load1 or 0.0) + self.running) / (self.ncpu or 1)


@dataclass(eq=False)
class Slot:
    """One of a host's ``max_tasks`` places to run a task; `job` is set when one is handed over."""

    host: HostState
    wake: threading.Condition
    job: object = None


@dataclass(eq=False)
class Job:
    """A task on its way through the queue: how often it ran and where."""

    task: Task
    attempts: int = 0
    tried: list = field(default_factory=list)
    last: object = None


@dataclass
class TaskOutcome:
    """A task's one final status: the host's report of its last run, and how many runs it took.

    `report` is a `report.HostReport` of the host it ran on (or would have),
    whose details carry ``answer``, ``stdout``, ``stderr``, ``log`` and ``exit_code``.
    """

    task: Task
    report: object
    attempts: int

    @property
    def ok(self):
        """True when the task ended ``ok``."""
        return self.report.ok

    @property
    def status(self):
        """The task's final status (``ok``, ``failed``, ``timeout``, ``lost``...)."""
        return self.report.status

    def to_dict(self):
        """The task's JSON object: id, host, status, duration, output (every field, even unrun), attempts."""
        from ..host.agent import AgentResult

        host = self.report.to_dict()
        name, address = host.pop("name"), host.pop("address")
        data = {"id": self.task.id, "host": None if name == NO_HOST else name, "address": None if address == NO_HOST else address}
        data.update(host)
        data.update({key: data.get(key, empty) for key, empty in AgentResult.nothing().to_dict().items()})
        data["attempts"] = self.attempts
        return data


class TaskQueue:
    """Which free slot runs which task, and every task's final status.

    One lock guards everything; whoever changes the state (a host ready or
    dropped, a task finished) hands out what can now be handed out, so no
    dispatcher thread is needed. Each slot waits on its own condition and is
    woken only when it has a task or the run is over for it.

    With fewer tasks than the hosts have slots, which hosts get them is a
    real choice, so nothing is handed out until every host has answered its
    probe (or failed): then the least loaded win. With at least as many
    tasks as slots, every slot gets work anyway and a host starts as soon as
    it is ready.
    """

    def __init__(self, tasks, hosts, retries=0, retry_lost=False):
        self.tasks = list(tasks)
        self.hosts = list(hosts)
        self.retries = retries
        self.retry_lost = retry_lost
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.pending = [Job(task) for task in self.tasks]
        self.slots = []
        self.idle = []
        self.running = {}
        self.outcomes = {}
        self.finish_order = []
        self.reported = 0
        self.stopping = False
        self.transports = set()
        self.hold = len(self.tasks) < sum(max(1, host.entry.max_tasks) for host in self.hosts)

    # -- state a reader (the progress line, the report) looks at --

    @property
    def complete(self):
        """True once every task has its final status."""
        return len(self.outcomes) == len(self.tasks)

    def counts(self):
        """(done, total, running, not ok) for the progress line."""
        with self.lock:
            failed = sum(1 for outcome in self.outcomes.values() if not outcome.ok)
            return len(self.outcomes), len(self.tasks), len(self.running), failed

    def new_outcomes(self, timeout=0):
        """The outcomes that became final since the last call, waiting up to `timeout` for one.

        For the main thread only: it alone writes ``--jsonl`` lines and the
        progress line, so output never interleaves.
        """
        with self.changed:
            if len(self.finish_order) == self.reported and not self.complete and timeout:
                self.changed.wait(timeout)
            new = self.finish_order[self.reported:]
            self.reported = len(self.finish_order)
            return new

    # -- hosts --

    def saw_transport(self, transport):
        """Note an SSH transport the run used (the same one again changes nothing)."""
        if transport is not None:
            with self.lock:
                self.transports.add(transport)

    @property
    def connections_opened(self):
        """How many SSH connections the run opened: one per host unless one was re-opened."""
        return len(self.transports)

    def host_ready(self, host, facts):
        """`host` is connected and has PicoClaw: its slots join the run, idle; returns them.

        The slots are idle from this moment, not from when their threads
        first ask for work: otherwise the last host to answer its probe
        could release the hold before its own slots were counted, and a
        small batch would go to busier hosts.
        """
        with self.lock:
            host.state, host.load1, host.ncpu = READY, facts.load1, facts.ncpu
            host.slots = max(1, host.entry.max_tasks)
            new = [Slot(host, threading.Condition(self.lock)) for _ in range(host.slots)]
            self.slots.extend(new)
            self.idle.extend(new)
            self._assign()
            return new

    def drop_host(self, host, status, message):
        """`host` takes no more tasks; tasks only it could run end with its status."""
        with self.lock:
            self._drop(host, status, message)
            self._settle()
            self._assign()

    def skip_host(self, host):
        """`host` was never needed (every task ended before its turn to connect)."""
        with self.lock:
            host.state, host.ended = DROPPED, time.monotonic()
            if self.stopping:
                host.status, host.message = "interrupted", "not connected: the run was interrupted"
            else:
                host.status, host.message = "unused", "not connected: every task had ended"
            self._assign()

    @property
    def closed(self):
        """True when no more tasks will be handed out (all final, or Ctrl-C)."""
        with self.lock:
            return self.stopping or self.complete

    # -- slots --

    def next_job(self, slot):
        """Wait for the slot's next task; None when the run is over for it."""
        with self.lock:
            if slot.job is None and self._open_for(slot):
                if slot not in self.idle:
                    self.idle.append(slot)
                self._assign()
            while slot.job is None and self._open_for(slot):
                slot.wake.wait()
            if slot in self.idle:
                self.idle.remove(slot)
            job, slot.job = slot.job, None
            return job

    def not_started(self, slot, job, status, message):
        """The host failed before `job` started: drop the host, the task goes back on the queue."""
        with self.lock:
            self._release(slot)
            self._requeue(job)
            self._drop(slot.host, status, message)
            self._settle()
            self._assign()

    def slot_refused(self, slot, job, message):
        """The host refused the slot's session: the slot leaves, the task goes back, the host stays.

        The host keeps the slots it can hold; with none left it is dropped.
        """
        with self.lock:
            host = slot.host
            self._release(slot)
            self._requeue(job)
            self.slots.remove(slot)
            host.slots -= 1
            host.message = message
            if host.slots == 0:
                self._drop(host, "failed", message)
            self._settle()
            self._assign()

    def finished(self, slot, job, result):
        """`job` ran on the slot's host with `result` (an `AgentResult`): final, or again."""
        from ..host.agent import agent_report

        with self.lock:
            host = slot.host
            self._release(slot)
            if result.status == NOT_INSTALLED:
                # Nothing ran: the binary went missing. Another host can have the task.
                self._requeue(job)
                self._drop(host, NOT_INSTALLED, result.message)
            else:
                host.tasks_run += 1
                job.attempts += 1
                job.tried.append(host.name)
                job.last = agent_report(host.entry, result)
                if self.stopping and result.status != "ok":
                    job.last.status, job.last.message = "interrupted", "stopped by Ctrl-C while it ran"
                if result.status == "lost":
                    self._drop(host, "lost", f"the connection dropped while task {job.task.id!r} ran")
                if self._runs_again(job):
                    self._requeue(job)
                else:
                    self._final(job, job.last)
            self._settle()
            self._assign()

    # -- Ctrl-C --

    def interrupt(self):
        """Hand out nothing more; unstarted tasks end ``not-run``. Returns hosts with tasks running."""
        with self.lock:
            self.stopping = True
            pending, self.pending = self.pending, []
            for job in pending:
                self._requeue(job)
            self._wake_all()
            return [host for host in self.hosts if host.running and host.state == READY]

    def abandon_running(self, message):
        """Give the tasks still running (their stop unconfirmed) a final ``interrupted``."""
        from ..core.report import HostReport

        with self.lock:
            for slot, job in list(self.running.items()):
                entry = slot.host.entry
                self._final(job, HostReport(entry.name, entry.address, "interrupted", 0.0, message))
            self.running.clear()

    # -- inside the lock --

    def _open_for(self, slot):
        """True while the slot may still get tasks."""
        return not self.stopping and not self.complete and slot.host.state == READY

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
            fits = [s for s in self.idle if job.task.host in (None, s.host.name)]
            if not fits:
                continue
            slot = min(fits, key=lambda s: (s.host.name in job.tried, s.host.load1 is None, s.host.load(), s.host.order))
            self.pending.remove(job)
            self.idle.remove(slot)
            slot.job = job
            slot.host.running += 1
            self.running[slot] = job
            slot.wake.notify()

    def _runs_again(self, job):
        """True when `--retries` (or `--retry-lost`) gives the task another run."""
        if self.stopping:
            return False
        status = job.last.status
        if status in RETRYABLE:
            return job.attempts <= self.retries
        if status == "lost" and self.retry_lost:
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
                slot.wake.notify()

    def _settle(self):
        """Give a final status to every pending task no live host can take.

        A task pinned to a dropped host ends with that host's status; any
        other task ends ``not-run`` once no host is left at all. A task that
        already ran and was waiting for a retry keeps its last result.
        """
        from ..core.report import HostReport

        by_name = {host.name: host for host in self.hosts}
        any_alive = any(host.alive for host in self.hosts)
        for job in [j for j in self.pending if not (by_name[j.task.host].alive if j.task.host else any_alive)]:
            self.pending.remove(job)
            pinned = by_name.get(job.task.host)
            if job.last is not None:
                self._final(job, job.last)
            elif pinned is not None:
                message = f"pinned to {pinned.name}, which is {pinned.status}" + (
                    f": {pinned.message}" if pinned.message else ""
                )
                self._final(job, HostReport(pinned.name, pinned.entry.address, pinned.status, 0.0, message))
            else:
                self._final(job, not_run("no host left to run it: " + dropped_hosts(self.hosts)))

    def _final(self, job, report):
        """Record the task's one final status and tell whoever waits."""
        if job.task.position in self.outcomes:
            return
        outcome = TaskOutcome(job.task, report, job.attempts)
        self.outcomes[job.task.position] = outcome
        self.finish_order.append(outcome)
        self.changed.notify_all()
        if self.complete:
            self._wake_all()

    def _wake_all(self):
        """Wake every waiting slot (the run is over, or stopping)."""
        for slot in self.slots:
            slot.wake.notify()


def not_run(message):
    """The report of a task that never ran anywhere (its host is `NO_HOST`)."""
    from ..core.report import HostReport

    return HostReport(NO_HOST, NO_HOST, "not-run", 0.0, message)


def dropped_hosts(hosts):
    """``h00 unreachable, h01 auth-failed`` for a message, at most eight named."""
    names = [f"{h.name} {h.status}" for h in hosts if not h.alive]
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "") or "no hosts"


# --- the hosts ------------------------------------------------------------------------------


#: More runs than this of one failing task is a loop, not a retry.
MAX_RETRIES = 100


@dataclass(frozen=True)
class BatchSettings:
    """The run's knobs: default task timeout, retries, and how hosts are connected to."""

    timeout_s: float
    retries: int = 0
    retry_lost: bool = False
    parallel: int = 32
    connect_timeout: float = 10
    unrestricted: bool = False


def batch_settings(run, timeout=None, retries=None, retry_lost=False, unrestricted=False):
    """The run's `BatchSettings` from the flags and the config; `UsageError` on a bad value."""
    from ..core.tasks import check_timeout

    text = str(0 if retries is None else retries)
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_RETRIES:
        raise UsageError(f"--retries {retries!r}: expected a whole number of extra runs from 0 to {MAX_RETRIES}")
    return BatchSettings(
        timeout_s=check_timeout(run.defaults.timeout if timeout is None else timeout),
        retries=int(text),
        retry_lost=bool(retry_lost),
        parallel=run.bound,
        connect_timeout=run.defaults.connect_timeout,
        unrestricted=bool(unrestricted),
    )


def serve_host(queue, host, settings, setup_bound):
    """Connect and probe `host`, run its slots until the queue is done with it, then close."""
    from ..ssh.connections import close_quietly

    try:
        facts = connect_host(queue, host, setup_bound, settings.connect_timeout)
        if facts is None:
            return
        slots = queue.host_ready(host, facts)
        helpers = [start_thread(work_slot, queue, slot, settings) for slot in slots[1:]]
        work_slot(queue, slots[0], settings)
        for helper in helpers:
            helper.join()
    finally:
        close_quietly(host.cxn)
        host.ended = host.ended or time.monotonic()


def connect_host(queue, host, setup_bound, connect_timeout):
    """Open `host`'s one connection and probe it; its `HostFacts`, or None when it is dropped.

    At most ``--parallel`` hosts are in this step at once: 200 boards must
    not mean 200 simultaneous handshakes. A host whose turn comes after the
    run is over is not contacted at all.
    """
    from ..ssh.connections import classify_failure
    from ..host.facts import probe_host
    from ..host.paths import BINARY_PATH

    with setup_bound:
        if queue.closed:
            queue.skip_host(host)
            return None
        try:
            if isinstance(host.cxn, Exception):
                raise host.cxn  # its connection could not even be built (`open_fleet`)
            host.cxn.open()
            queue.saw_transport(host.cxn.transport)
            facts = probe_host(host.cxn)
        except Exception as exc:  # a host's failure is its status, never the run's crash
            queue.drop_host(host, *classify_failure(exc, connect_timeout))
            return None
    if not facts.installed:
        queue.drop_host(host, NOT_INSTALLED, f"PicoClaw is not installed at ~/{BINARY_PATH} (fab deploy installs it)")
        return None
    return facts


def work_slot(queue, slot, settings):
    """Run tasks on one slot of a host, one at a time, until the queue is done with it.

    The host's connection is checked before each task: Fabric would quietly
    reconnect a dropped one, and a host whose connection failed is out of
    the run. A reconnect that slips through anyway is counted, not hidden.
    A session refused on a connection that is still up (paramiko names the
    cause only for one of several refusals at once) retires just this slot.
    """
    from ..host.agent import AgentOptions, run_agent
    from ..ssh.connections import classify_failure

    cxn = slot.host.cxn
    while (job := queue.next_job(slot)) is not None:
        if not cxn.is_connected:
            queue.not_started(slot, job, "lost", "the connection dropped between tasks")
            return
        try:
            options = AgentOptions(session=job.task.session, unrestricted=settings.unrestricted)
            result = run_agent(cxn, job.task.data, job.task.timeout or settings.timeout_s, options)
        except Exception as exc:  # the channel could not be opened: the task never started
            if cxn.is_connected:  # the host is there but holds no more sessions
                queue.slot_refused(slot, job, refused_session_message(exc))
            else:
                queue.not_started(slot, job, *classify_failure(exc, settings.connect_timeout))
            return
        queue.saw_transport(cxn.transport)
        queue.finished(slot, job, result)


def refused_session_message(exc):
    """What to tell the sysadmin when a host refuses a session on a live connection.

    sshd refuses sessions beyond its MaxSessions (10 by default), which
    ``max_tasks`` can exceed: a config to fix, not an unreachable host.
    """
    return (
        f"the host refused an SSH session ({exc}), so it ran fewer tasks at once than max_tasks: "
        "keep max_tasks below its sshd MaxSessions (10 by default; batch needs one spare to stop tasks on Ctrl-C)"
    )


def start_thread(target, *args):
    """A started daemon thread: a host stuck in a handshake must not keep the program alive."""
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


# --- the run --------------------------------------------------------------------------------


def run_batch(run, tasks, settings, on_progress=None):
    """Run `tasks` over `entries`; the `BatchReport` once every task has its final status.

    `on_progress(new_outcomes, queue)` is called from this (the main) thread
    whenever tasks finish, and now and then besides, so that ``--jsonl`` and
    the progress line are written by one thread only. Ctrl-C stops handing
    out tasks, stops the running ones on their hosts, and still returns the
    report, marked interrupted.
    """
    from .batch_report import BatchReport
    from ..ssh.connections import open_fleet

    if not run.entries:
        raise UsageError(f"no hosts to run the tasks on: {run.fleet.path} lists none (or name some with --hosts user@host)")
    check_pins(tasks, run.entries)
    hosts = [HostState(entry, order, cxn) for order, (entry, cxn) in enumerate(zip(run.entries, open_fleet(run)))]
    queue = TaskQueue(tasks, hosts, settings.retries, settings.retry_lost)
    started = time.monotonic()
    setup_bound = threading.BoundedSemaphore(max(1, settings.parallel))
    threads = [start_thread(serve_host, queue, host, settings, setup_bound) for host in hosts]
    on_progress = on_progress or (lambda outcomes, queue: None)
    interrupted = False
    try:
        watch(queue, on_progress)
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        interrupted = True
        stop_batch(queue, hosts, on_progress)
    on_progress(queue.new_outcomes(), queue)
    return BatchReport(queue, time.monotonic() - started, interrupted)


def watch(queue, on_progress, until=None):
    """Pass newly final tasks to `on_progress` until every task is final (or `until`)."""
    while not queue.complete and (until is None or time.monotonic() < until):
        on_progress(queue.new_outcomes(0.25), queue)


def stop_batch(queue, hosts, on_progress):
    """Ctrl-C: no new tasks, TERM the running ones on their hosts, wait for them to end.

    The wait is bounded by how long the host's ``timeout -k`` may take to
    KILL a task that ignores TERM; a task still not back by then is reported
    ``interrupted`` with that said. A second Ctrl-C stops the waiting.
    """
    from ..host.agent import KILL_AFTER_S, LOCAL_GRACE_S, stop_running_tasks

    busy = queue.interrupt()
    stoppers = [start_thread(stop_running_tasks, host.cxn) for host in busy]
    try:
        watch(queue, on_progress, until=time.monotonic() + KILL_AFTER_S + LOCAL_GRACE_S)
        for stopper in stoppers:
            stopper.join(LOCAL_GRACE_S)
    except KeyboardInterrupt:
        pass
    queue.abandon_running("interrupted; could not confirm that it stopped on the host")
    with queue.lock:
        for host in hosts:
            if host.state == CONNECTING:
                host.state, host.status, host.message = DROPPED, "interrupted", "still connecting when interrupted"
