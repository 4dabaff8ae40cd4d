"""Timing that survives a noisy machine: interleaved repetitions, medians, paired ratios.

Every figure compares two things measured in the same run on the same
hosts. Repetitions alternate, and who goes first rotates (A B, B A, A B ...),
so that a burst of load from a neighbour hits both sides; each ratio is
taken within one round before the median is. Absolute times are reported
but never judged.
"""

import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Sample:
    """Repeated measurements of one thing, in `unit`."""

    values: list = field(default_factory=list)
    unit: str = "s"

    @property
    def median(self):
        return statistics.median(self.values)

    def summary(self):
        """``{median, min, max, unit, n}`` for results.json."""
        return {"median": self.median, "min": min(self.values), "max": max(self.values),
                "unit": self.unit, "n": len(self.values)}

    def text(self):
        """``1.23 s (1.10-1.40)`` for the table."""
        return f"{fmt(self.median, self.unit)} ({fmt(min(self.values), self.unit, False)}-{fmt(max(self.values), self.unit, False)})"


def fmt(value, unit, with_unit=True):
    """A number as the table shows it: 3 significant figures (whole numbers for counts), then the unit."""
    if unit in ("B", "MB", "") or abs(value) >= 100:
        text = f"{value:.0f}"
    else:
        text = f"{value:.3g}"
    if not with_unit or not unit:
        return text
    return f"{text}{unit}" if unit == "x" else f"{text} {unit}"


def timed(action):
    """Seconds `action()` took (monotonic clock), and what it returned."""
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


@dataclass
class Measured:
    """What a side returns to be recorded as something other than its wall time (bytes, MB...)."""

    value: float
    unit: str


def interleaved(reps, sides, warmup=True, between=None):
    """Run each callable of `sides` (name -> callable) `reps` times, alternating (A, B, B, A ...).

    A warm-up round (not recorded) first, so that one-time costs -- imports,
    the page cache, sshd's first fork of a user -- are paid before anything
    counts. `between()` runs untimed before every call (e.g. to reset the
    hosts a deploy changed). Each call's wall time is recorded, unless it
    returns a `Measured`, which is recorded instead. Returns name ->
    `Sample`. Each callable checks its own result: a failed run must raise,
    never be timed as fast.
    """
    samples = {name: Sample() for name in sides}
    order = list(sides.items())
    for rep in range(-1 if warmup else 0, reps):
        start = rep % len(order)  # rotate who goes first, so that no side always follows the same one
        for name, action in order[start:] + order[:start]:
            if between:
                between()
            seconds, result = timed(action)
            if rep < 0:
                continue
            if isinstance(result, Measured):
                samples[name].unit = result.unit
                samples[name].values.append(result.value)
            else:
                samples[name].values.append(seconds)
    return samples


@dataclass
class ChildRun:
    """One finished child process: wall seconds, exit code, output, and its peak RSS when asked for."""

    seconds: float
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float | None = None


PEAK_RSS = Path(__file__).with_name("peak_rss.py")


def run_child(argv, env=None, cwd=None, timeout=900, peak_rss=False):
    """Run `argv` to completion and return a `ChildRun` (a hang is killed after `timeout`).

    With `peak_rss`, the command runs under ``peak_rss.py``, which reports
    the command's own peak RSS: ``wait4`` on a direct child would report the
    bench's, because Linux carries the peak across fork and exec. The
    middleman costs a few ms, so it is used only where memory is measured.
    """
    with tempfile.TemporaryDirectory(prefix="pcf-bench-child-") as tmp:
        report = Path(tmp) / "peak.json"
        if peak_rss:
            argv = [sys.executable, "-I", "-S", str(PEAK_RSS), str(report), "--", *argv]
        started = time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        seconds = time.perf_counter() - started
        run = ChildRun(seconds, proc.returncode, proc.stdout.decode("utf-8", "replace"),
                       proc.stderr.decode("utf-8", "replace"))
        if peak_rss:
            measured = json.loads(report.read_text())
            run.returncode, run.peak_rss_mb = measured["returncode"], measured["peak_rss_kb"] / 1024
        return run
