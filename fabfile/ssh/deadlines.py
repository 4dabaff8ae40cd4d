"""Every remote step has a deadline: a host that stops answering ends as a status, never a hang.

paramiko waits without a limit in several places a frozen host reaches: an
``exec`` or ``subsystem`` request on a freshly opened channel, an SFTP reply,
a keepalive's answer; and invoke's command timeout only starts once the
command has been started. So each step on a host runs under a `deadline`: if
the host makes no progress for that long, one shared watchdog thread closes
the host's SSH transport, which wakes every wait on it, and the step raises
`HostStalled` naming the step. Uploads report progress, so a slow link is not
a stalled host; only silence is.

One watchdog thread serves every host (a heap of deadlines), so a fleet of
500 hosts costs one thread here, not 500.
"""

import heapq
import itertools
import threading
import time
from contextlib import contextmanager

#: A step may be silent this many times the config's connect_timeout before
#: the host counts as stalled (10 s -> 30 s): generous for a loaded Pi on Wi-Fi.
STALL_FACTOR = 3


class HostStalled(TimeoutError):
    """The host stopped answering during a step; the message names the step and the limit."""


#: Opening an SSH session may take this many times the connect timeout: sshd
#: forks for it, slow on a busy board (or 64 simulated hosts on two CPUs). Less
#: than `STALL_FACTOR`, so a session that never opens is named as such, before
#: the step's own deadline.
SESSION_FACTOR = 2


def session_open_seconds(connect_timeout):
    """How long opening an SSH session may take (`SESSION_FACTOR` x the connect timeout)."""
    return SESSION_FACTOR * float(connect_timeout or 10)


def step_seconds(cxn, extra=0.0):
    """The silence a step on `cxn` may take: `STALL_FACTOR` x its connect timeout, plus `extra`."""
    return STALL_FACTOR * float(getattr(cxn, "connect_timeout", None) or 10) + extra


class _Watchdog:
    """One daemon thread that fires the earliest pending deadline; registration is O(log n)."""

    def __init__(self):
        self._lock = threading.Condition()
        self._heap = []
        self._order = itertools.count()
        self._thread = None

    def add(self, watch):
        with self._lock:
            heapq.heappush(self._heap, (watch.expires, next(self._order), watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="host-deadlines", daemon=True)
                self._thread.start()
            self._lock.notify()

    def _run(self):
        while True:
            with self._lock:
                while not self._heap:
                    self._lock.wait()
                expires, _, watch = self._heap[0]
                now = time.monotonic()
                if watch.done or expires != watch.expires:
                    heapq.heappop(self._heap)  # finished, or pushed back by progress (re-added)
                    continue
                if expires > now:
                    self._lock.wait(expires - now)
                    continue
                heapq.heappop(self._heap)
            watch.fire()


_WATCHDOG = _Watchdog()


class Watch:
    """One step's deadline on one connection; `progress()` pushes it back."""

    def __init__(self, cxn, step, seconds):
        self.cxn, self.step, self.seconds = cxn, step, seconds
        self.expires = time.monotonic() + seconds
        self.done = False
        self.fired = False

    def progress(self, *_):
        """The host answered: the step may be silent for another full period (cheap; called per chunk)."""
        now = time.monotonic()
        if now - (self.expires - self.seconds) > 1.0:  # re-arm at most once a second
            self.expires = now + self.seconds
            _WATCHDOG.add(self)

    def fire(self):
        """Time is up: close the transport, which wakes whatever waits on it."""
        if self.done:
            return
        self.fired = True
        transport = self.cxn.client.get_transport() if getattr(self.cxn, "client", None) else None
        if transport is not None:
            try:
                transport.close()
            except Exception:
                pass  # already gone: the wait ends either way

    def error(self):
        return HostStalled(f"the host stopped answering: {self.step} got no answer within {self.seconds:g}s")


@contextmanager
def deadline(cxn, step, seconds=None):
    """Run the block under a deadline of `seconds` of silence (default `step_seconds(cxn)`).

    Yields the `Watch` (call ``watch.progress()`` as data moves). When the
    deadline fires, whatever the block raised becomes `HostStalled` naming
    `step`; a block that ends in time is untouched.
    """
    watch = Watch(cxn, step, step_seconds(cxn) if seconds is None else seconds)
    _WATCHDOG.add(watch)
    try:
        yield watch
    except BaseException as exc:
        if watch.fired and not isinstance(exc, KeyboardInterrupt):
            raise watch.error() from None
        if "Timeout opening channel" in str(exc):  # paramiko's channel_timeout: the same stall, sooner
            limit = session_open_seconds(getattr(cxn, "connect_timeout", None))
            raise HostStalled(f"the host stopped answering: {step}: session not opened within {limit:g}s") from None
        if isinstance(exc, TimeoutError) and not isinstance(exc, HostStalled):
            if not str(exc):  # paramiko's bare socket.timeout(): a channel's read timeout, the same
                # silence as this step's (open_sftp sets it), which can beat the watchdog on a busy
                # machine: the same stall, named the same way
                raise watch.error() from None
            raise HostStalled(f"the host stopped answering: {step}: {exc}") from None
        raise
    finally:
        watch.done = True
    if watch.fired:
        raise watch.error()
