"""Stopping a run: Ctrl-C, SIGTERM and a hang-up all mean "stop now, and tell me what finished".

Python turns only SIGINT into `KeyboardInterrupt`; SIGTERM (a supervisor, an
agent's kill) would end the process at once, with no report and every
PicoClaw still running on the hosts. So every verb installs `handle_stops`:
the first SIGINT, SIGTERM or SIGHUP raises `KeyboardInterrupt` in the main
thread, where each verb stops handing out work, stops what runs on the hosts
and reports what finished (``interrupted`` / ``not-run`` for the rest; exit
code 1). A second signal while it does so exits at once, with 128 + the
signal's number, as a shell would.
"""

import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: Set by the first stop signal: the run is winding down.
stopping = threading.Event()


def handle_stops():
    """Route SIGINT, SIGTERM and SIGHUP to `_stop` (main thread only, as Python requires)."""
    if threading.current_thread() is not threading.main_thread():
        return
    stopping.clear()
    for sig in SIGNALS:
        signal.signal(sig, _stop)


def _stop(signum, frame):
    """First signal: `KeyboardInterrupt` for the verb to wind down; the next: exit now."""
    if stopping.is_set():
        os._exit(128 + signum)
    stopping.set()
    raise KeyboardInterrupt(signal.Signals(signum).name)
