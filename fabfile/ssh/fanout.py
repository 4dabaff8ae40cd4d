"""The one fan-out: a piece of work on every selected host, at most `parallel` at once.

Fabric's `ThreadingGroup` keys its results by `Connection`, which hashes on
user, host and port only: two fleet entries that share an address (an alias,
two names for one board) would collapse into one. Here every result belongs
to its entry's position, so each entry gets its own report.

Failures are values, as in Fabric's `GroupResult`: a host that cannot be
reached, trusted or authenticated, or whose work raises, becomes a
`HostReport` with that status; it never stops or delays the others.

A stop (Ctrl-C, SIGTERM, SIGHUP: see `interrupts`) reaches the main thread as
`KeyboardInterrupt`. Then no host is started any more (``not-run``), each
running one is stopped by the verb's `stop(cxn)` (dispatch stops PicoClaw on
the host; the default closes the connection), and comes back ``interrupted``
with whatever its work had; the reports are returned all the same, marked.
"""

import threading
import time
from dataclasses import dataclass

from ..core.report import HostReport
from ..core.status import Status
from .connections import close_quietly, failure_report, open_fleet

#: How long a stopped host's work may take to return what it had.
STOP_GRACE_S = 12


@dataclass
class FanOut:
    """The reports of a fan-out, in entry order, and whether a stop cut it short."""

    reports: list
    interrupted: bool = False


def fan_out(run, work, stop=None):
    """Run ``work(connection, entry) -> HostReport`` on every entry of `run` (a `RunContext`); a `FanOut`.

    At most ``run.bound`` hosts at once. Each entry gets a connection of its
    own (`connections.open_fleet`), never shared, closed when its work ends.
    """
    state = _Run(run, work, stop or close_quietly)
    workers = [threading.Thread(target=state.worker, daemon=True, name=f"fan-out-{i}")
               for i in range(min(run.bound, max(1, len(state.entries))))]
    for worker in workers:
        worker.start()
    try:
        state.wait()
    except KeyboardInterrupt:
        state.stop_all()
        return FanOut(state.final_reports(), interrupted=True)
    return FanOut(state.final_reports())


class _Run:
    """The shared state of one fan-out: who is next, who is running, what came back."""

    def __init__(self, run, work, stop):
        self.entries, self.work, self.defaults, self.stop = list(run.entries), work, run.defaults, stop
        self.connections = open_fleet(run)
        self.lock = threading.Condition()
        self.next = 0
        self.running = {}  # position -> (connection, started)
        self.reports = [None] * len(self.entries)
        self.stopping = False
        self.stopped = set()  # positions that were running when the stop came
        self.finished = 0

    def worker(self):
        while True:
            with self.lock:
                if self.stopping or self.next >= len(self.entries):
                    return
                position, self.next = self.next, self.next + 1
            report = self.one(position)
            with self.lock:
                self.reports[position] = report
                self.running.pop(position, None)
                self.finished += 1
                self.lock.notify_all()

    def one(self, position):
        """The report of one entry: its work's, or its failure as a value."""
        entry, started = self.entries[position], time.monotonic()
        cxn = self.connections[position]
        if isinstance(cxn, Exception):
            return failure_report(entry, cxn, started, self.defaults.connect_timeout)
        try:
            with self.lock:
                if self.stopping:
                    return None  # stopped before it began: `final_reports` says not-run
                self.running[position] = (cxn, started)
            return self.work(cxn, entry)
        except Exception as exc:  # a host's failure is its report, never the run's crash
            return failure_report(entry, exc, started, self.defaults.connect_timeout)
        finally:
            close_quietly(cxn)

    def wait(self):
        """Until every entry has its report (in short waits, so a stop signal is taken at once)."""
        with self.lock:
            while self.finished < len(self.entries):
                self.lock.wait(0.2)

    def stop_all(self):
        """Start nothing more; stop the running hosts' work and give it `STOP_GRACE_S` to return."""
        with self.lock:
            self.stopping = True
            running = dict(self.running)
        stoppers = [threading.Thread(target=self.stop, args=(cxn,), daemon=True) for cxn, _ in running.values()]
        for stopper in stoppers:
            stopper.start()
        deadline = time.monotonic() + STOP_GRACE_S
        with self.lock:
            while any(p in self.running for p in running) and time.monotonic() < deadline:
                self.lock.wait(0.2)
        self.stopped = set(running)

    def final_reports(self):
        """Every entry's report: its own, or ``interrupted`` / ``not-run`` when a stop came first."""
        reports = []
        for position, entry in enumerate(self.entries):
            report = self.reports[position]
            if position in self.stopped:
                report = interrupted(entry, report, self.running.get(position))
            elif report is None:
                report = HostReport(entry.name, entry.address, Status.NOT_RUN, 0.0, "stopped before it started")
            reports.append(report)
        return reports


def interrupted(entry, report, still_running):
    """The report of a host whose work was stopped: what it had, marked ``interrupted``."""
    if report is None or still_running is not None:
        started = still_running[1] if still_running else time.monotonic()
        return HostReport(entry.name, entry.address, Status.INTERRUPTED, time.monotonic() - started,
                          "stopped; could not confirm that its work ended on the host")
    report.status = Status.INTERRUPTED
    report.message = "stopped while it ran"
    return report
