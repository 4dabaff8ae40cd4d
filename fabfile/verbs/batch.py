"""``fab batch``: a queue of one-shot PicoClaw tasks spread over the fleet's free slots.

The seed started one ``dispatch.sh ... &`` per host and waited; 200 tasks on
20 boards need a queue instead. Here every selected host gets one SSH
connection (`open_fleet`), opened once and probed once (`facts.probe_host`:
load, CPUs, PicoClaw present), and ``max_tasks`` slots. Each slot is a
thread that runs one task at a time as its own exec channel on the host's
connection, so a host's whole share of the queue costs one handshake.

Which free slot gets which task, and every task's one final status, are the
`core.scheduler.Scheduler`'s: this module only tells it what happened on
the hosts, under one lock, and wakes the slot it handed a task to. Running
one task -- the remote command, its deadline, what its exit means -- is
`agent.run_agent`'s, the same as ``fab dispatch``.

A host that cannot be reached, or whose connection fails before a task
starts, is dropped and the task goes back on the queue; a task whose
connection died while it ran is ``lost`` and runs again only with
``--retry-lost`` (it may have had effects). Ctrl-C stops handing out tasks,
stops the running ones on their hosts, and still reports every task.

``--detach`` (`start_detached_batch`) hands every task out at once instead:
each host is probed, every task placed in a slot's queue on the host
(`core.detach.place_tasks`), and each host's queues started there to run
on their own (`host.detached`); ``fab collect`` brings the answers in.
"""

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from .batch_report import BatchHostDetails, BatchReport, batch_report
from ..core.detach import place_tasks, slot_name, task_key, usable_hosts
from ..core.errors import UsageError
from ..core.report import HostReport
from ..core.scheduler import Scheduler, TaskOutcome, not_run
from ..core.status import Status
from ..core.tasks import check_pins, check_timeout
from ..host.agent import KILL_AFTER_S, LOCAL_GRACE_S, AgentOptions, run_agent, stop_running_tasks
from ..host.detached import DetachedTask, start_detached
from ..host.facts import probe_host
from ..host.paths import BINARY_PATH
from ..ssh.connections import classify_failure, close_quietly, open_fleet
from ..ssh.fanout import fan_out

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


# --- the scheduler, shared by the host threads ----------------------------------------------


class SharedScheduler:
    """The run's `Scheduler` as the host threads share it: one lock, and a condition per slot.

    Whoever has news (a host ready or dropped, a task finished) tells the
    scheduler under the lock, and it hands out what can now be handed out,
    so no dispatcher thread is needed. A slot's thread waits on its own
    condition and is woken only when it has a task or the run is over for
    it; the main thread waits on `changed` for tasks becoming final.
    """

    def __init__(self, tasks, entries, settings):
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.wakers = {}
        self.transports = set()
        self.scheduler = Scheduler(tasks, entries, settings.retries, settings.retry_lost, on_wake=self.wake)

    @property
    def hosts(self):
        """The run's `HostState`s, in config order."""
        return self.scheduler.hosts

    @contextmanager
    def held(self):
        """The scheduler, under the lock; the main thread hears when tasks became final meanwhile."""
        with self.lock:
            yield self.scheduler
            if self.scheduler.has_new or self.scheduler.complete:
                self.changed.notify_all()

    def tell(self, event, *args):
        """Tell the scheduler of `event` (one of its methods, e.g. `Scheduler.finished`); what it returns."""
        with self.held() as scheduler:
            return event(scheduler, *args)

    def wake(self, slot):
        """The scheduler's `on_wake`: wake the thread of `slot`, and only that one (under the lock)."""
        self.waker(slot).notify()

    def waker(self, slot):
        """The condition `slot`'s thread waits on (made on first use, under the lock)."""
        if slot not in self.wakers:
            self.wakers[slot] = threading.Condition(self.lock)
        return self.wakers[slot]

    def next_job(self, slot):
        """Wait for the slot's next task; None when the run is over for it."""
        with self.held() as scheduler:
            while (job := scheduler.ask(slot)) is None and scheduler.open_for(slot):
                self.waker(slot).wait()
            return job

    # -- what the main thread reads --

    @property
    def complete(self):
        """True once every task has its final status."""
        with self.lock:
            return self.scheduler.complete

    def counts(self):
        """(done, total, running, not ok) for the progress line."""
        with self.lock:
            return self.scheduler.counts()

    def new_outcomes(self, timeout=0):
        """The outcomes that became final since the last call, waiting up to `timeout` for one.

        For the main thread only: it alone writes ``--jsonl`` lines and the
        progress line, so output never interleaves.
        """
        with self.changed:
            if timeout and not self.scheduler.has_new and not self.scheduler.complete:
                self.changed.wait(timeout)
            return self.scheduler.new_outcomes()

    def saw_transport(self, transport):
        """Note an SSH transport the run used (the same one again changes nothing)."""
        if transport is not None:
            with self.lock:
                self.transports.add(transport)

    def report(self, duration_s, interrupted):
        """The `BatchReport`: every task in input order, each host's part, the connections it cost."""
        with self.lock:
            return batch_report(self.scheduler, len(self.transports), duration_s, interrupted)


# --- the hosts ------------------------------------------------------------------------------


def serve_host(shared, host, cxn, settings, setup_bound):
    """Connect and probe `host`, run its slots until the scheduler is done with it, then close."""
    try:
        facts = connect_host(shared, host, cxn, setup_bound, settings.connect_timeout)
        if facts is None:
            return
        host.version, host.model = facts.version, facts.worker.model if facts.worker else None
        slots = shared.tell(Scheduler.host_ready, host, facts.load1, facts.ncpu)
        helpers = [start_thread(work_slot, shared, slot, cxn, settings) for slot in slots[1:]]
        work_slot(shared, slots[0], cxn, settings)
        for helper in helpers:
            helper.join()
    finally:
        close_quietly(cxn)
        shared.tell(Scheduler.host_done, host)


def connect_host(shared, host, cxn, setup_bound, connect_timeout):
    """Open `host`'s one connection and probe it; its `HostFacts`, or None when it is dropped.

    At most ``--parallel`` hosts are in this step at once: 200 boards must
    not mean 200 simultaneous handshakes. A host whose turn comes after the
    run is over is not contacted at all.
    """
    with setup_bound:
        with shared.held() as scheduler:
            if scheduler.closed:
                scheduler.skip_host(host)
                return None
        try:
            if isinstance(cxn, Exception):
                raise cxn  # its connection could not even be built (`open_fleet`)
            cxn.open()
            shared.saw_transport(cxn.transport)
            facts = probe_host(cxn)
        except Exception as exc:  # a host's failure is its status, never the run's crash
            shared.tell(Scheduler.drop_host, host, *classify_failure(exc, connect_timeout))
            return None
    if not facts.installed:
        message = f"PicoClaw is not installed at ~/{BINARY_PATH} (fab deploy installs it)"
        shared.tell(Scheduler.drop_host, host, Status.NOT_INSTALLED, message)
        return None
    return facts


def work_slot(shared, slot, cxn, settings):
    """Run tasks on one slot of a host, one at a time, until the scheduler is done with it.

    The host's connection is checked before each task: Fabric would quietly
    reconnect a dropped one, and a host whose connection failed is out of
    the run. A reconnect that slips through anyway is counted, not hidden.
    A session refused on a connection that is still up (paramiko names the
    cause only for one of several refusals at once) retires just this slot.
    """
    while (job := shared.next_job(slot)) is not None:
        if not cxn.is_connected:
            shared.tell(Scheduler.not_started, slot, job, Status.LOST, "the connection dropped between tasks")
            return
        try:
            options = AgentOptions(session=job.task.session, unrestricted=settings.unrestricted)
            result = run_agent(cxn, job.task.data, job.task.timeout or settings.timeout_s, options)
        except Exception as exc:  # the channel could not be opened: the task never started
            if cxn.is_connected:  # the host is there but holds no more sessions
                shared.tell(Scheduler.slot_refused, slot, job, refused_session_message(exc))
            else:
                shared.tell(Scheduler.not_started, slot, job, *classify_failure(exc, settings.connect_timeout))
            return
        shared.saw_transport(cxn.transport)
        shared.tell(Scheduler.finished, slot, job, result)


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
    """Run `tasks` over `run`'s hosts; the `BatchReport` once every task has its final status.

    `on_progress(new_outcomes, shared)` is called from this (the main)
    thread whenever tasks finish, and now and then besides, so that
    ``--jsonl`` and the progress line are written by one thread only. Ctrl-C
    stops handing out tasks, stops the running ones on their hosts, and
    still returns the report, marked interrupted.
    """
    if not run.entries:
        raise UsageError(f"no hosts to run the tasks on: {run.fleet.path} lists none (or name some with --hosts user@host)")
    check_pins(tasks, run.entries)
    connections = open_fleet(run)
    shared = SharedScheduler(tasks, run.entries, settings)
    started = time.monotonic()
    setup_bound = threading.BoundedSemaphore(max(1, settings.parallel))
    threads = [start_thread(serve_host, shared, host, cxn, settings, setup_bound)
               for host, cxn in zip(shared.hosts, connections)]
    on_progress = on_progress or (lambda outcomes, shared: None)
    interrupted = False
    try:
        watch(shared, on_progress)
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        interrupted = True
        stop_batch(shared, dict(zip(shared.hosts, connections)), on_progress)
    on_progress(shared.new_outcomes(), shared)
    return shared.report(time.monotonic() - started, interrupted)


def watch(shared, on_progress, until=None):
    """Pass newly final tasks to `on_progress` until every task is final (or `until`)."""
    while not shared.complete and (until is None or time.monotonic() < until):
        on_progress(shared.new_outcomes(0.25), shared)


def stop_batch(shared, connections, on_progress):
    """Ctrl-C: no new tasks, TERM the running ones on their hosts, wait for them to end.

    The wait is bounded by how long the host's ``timeout -k`` may take to
    KILL a task that ignores TERM; a task still not back by then is reported
    ``interrupted`` with that said. A second Ctrl-C stops the waiting.
    `connections` maps each `HostState` to its connection.
    """
    busy = shared.tell(Scheduler.interrupt)
    stoppers = [start_thread(stop_running_tasks, connections[host]) for host in busy]
    try:
        watch(shared, on_progress, until=time.monotonic() + KILL_AFTER_S + LOCAL_GRACE_S)
        for stopper in stoppers:
            stopper.join(LOCAL_GRACE_S)
    except KeyboardInterrupt:
        pass
    shared.tell(Scheduler.abandon, "interrupted; could not confirm that it stopped on the host")


# --- --detach -------------------------------------------------------------------------------


def start_detached_batch(run, tasks, settings, run_id):
    """``--detach``: start every task on a slot of a host, to run there on its own; the `BatchReport` of the start.

    One probe of every host (PicoClaw present, load), then every task placed
    at once (`core.detach.place_tasks`) and each host's queues started in one
    visit (`host.detached.start_detached`). A task started is ``running``
    (``fab collect`` brings its answer in); one that could not be is final
    already: pinned to a host that is unreachable or lacks PicoClaw, or no
    host left to take it (``not-run``).
    """
    if not run.entries:
        raise UsageError(f"no hosts to run the tasks on: {run.fleet.path} lists none (or name some with --hosts user@host)")
    check_pins(tasks, run.entries)
    started = time.monotonic()
    probed = fan_out(run, probe_report)
    facts = [probe.details if probe.ok else None for probe in probed.reports]
    hosts = usable_hosts(run.entries, facts)
    unplaced = place_tasks(tasks, [] if probed.interrupted else hosts)
    keys = {task.position: task_key(task.position) for task in tasks}
    busy = [host for host in hosts if host.placed]
    started_on = fan_out(run.on([host.entry for host in busy]),
                         lambda cxn, entry: start_host(cxn, entry, busy, keys, settings, run_id, facts))
    outcomes = {task.position: unplaced_outcome(task, run.entries, probed) for task in unplaced}
    for host, report in zip(busy, started_on.reports):
        starts = report.details if isinstance(report.details, list) else None
        for index, task in enumerate(task for queue in host.queues for task in queue):
            if starts is None:  # the host failed before its tasks started: none runs
                outcomes[task.position] = TaskOutcome(task, HostReport(host.entry.name, host.entry.address,
                                                                       report.status, 0.0, report.message), 0)
            else:
                start = starts[index]
                outcomes[task.position] = TaskOutcome(task, HostReport(host.entry.name, host.entry.address,
                                                                       start.status, start.duration_s,
                                                                       start.message, start), 1)
    host_reports = [detached_host_report(entry, probe, hosts, started_on.reports, busy)
                    for entry, probe in zip(run.entries, probed.reports)]
    return BatchReport([outcomes[task.position] for task in tasks], host_reports,
                       sum(1 for probe in probed.reports if probe.ok) + len(busy), time.monotonic() - started,
                       probed.interrupted or started_on.interrupted)


def probe_report(cxn, entry):
    """A host's probe as a `HostReport` whose details are its `HostFacts`."""
    begun = time.monotonic()
    facts = probe_host(cxn)
    return HostReport(entry.name, entry.address, Status.OK, time.monotonic() - begun, details=facts)


def start_host(cxn, entry, busy, keys, settings, run_id, facts):
    """Start one host's queues; its report's details are the `DetachedStart` of each task, in queue order."""
    host = next(h for h in busy if h.entry is entry)
    slots = {slot_name(index): [DetachedTask(keys[task.position], task.data, task.timeout or settings.timeout_s,
                                             AgentOptions(session=task.session, unrestricted=settings.unrestricted))
                                for task in queue]
             for index, queue in enumerate(host.queues) if queue}
    fact = facts[host.order]
    model = fact.worker.model if fact.worker is not None else None
    begun = time.monotonic()
    starts = start_detached(cxn, run_id, slots, fact.version, model)
    by_key = {start.key: start for start in starts}
    ordered = [by_key[keys[task.position]] for queue in host.queues for task in queue]
    return HostReport(entry.name, entry.address, Status.OK, time.monotonic() - begun, details=ordered)


def unplaced_outcome(task, entries, probed):
    """The final outcome of a task no host could take: its pinned host's status, or ``not-run``."""
    if probed.interrupted:
        return TaskOutcome(task, not_run("interrupted before it started"), 0)
    for entry, probe in zip(entries, probed.reports):
        if task.host == entry.name:
            status, message = (probe.status, probe.message) if not probe.ok else (
                Status.NOT_INSTALLED, f"PicoClaw is not installed at ~/{BINARY_PATH} (fab deploy installs it)")
            return TaskOutcome(task, HostReport(entry.name, entry.address, status, 0.0,
                                                f"pinned to {entry.name}, which is {status}: {message}"), 0)
    return TaskOutcome(task, not_run("no reachable host with PicoClaw to start it on"), 0)


def detached_host_report(entry, probe, hosts, start_reports, busy):
    """A host's part in a detached start: its probe's status, or its start's; its slots and tasks started."""
    host = next((h for h in hosts if h.entry is entry), None)
    if host is None:
        status, message = (probe.status, probe.message) if not probe.ok else (
            Status.NOT_INSTALLED, f"PicoClaw is not installed at ~/{BINARY_PATH}")
        return HostReport(entry.name, entry.address, status, probe.duration_s, message,
                          BatchHostDetails(0, 0, None, None))
    report = start_reports[busy.index(host)] if host in busy else None
    if report is not None and not report.ok:
        status, message = report.status, report.message
    else:
        status, message = (Status.OK, "") if host in busy else (Status.UNUSED, "no task was placed on it")
    return HostReport(entry.name, entry.address, status, probe.duration_s + (report.duration_s if report else 0.0),
                      message, BatchHostDetails(len(host.queues), host.placed if report and report.ok else 0,
                                                host.load1, host.ncpu))
