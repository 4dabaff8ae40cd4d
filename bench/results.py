"""One row per figure: what was measured, against what, the goal, and whether it was met.

The table on stdout and ``bench/results.json`` are two views of the same
rows. A goal is judged on the median (of the paired ratios, or of our own
figure when the goal is absolute); min and max are shown so that a reader
can see how much the machine's noise moved it.
"""

import json
import operator
from dataclasses import dataclass, field

from .measure import Sample

GOAL_TESTS = {"<=": operator.le, "==": operator.eq}


@dataclass
class Goal:
    """``ratio <= 1.2``, ``ours <= 0.6`` or ``ours == 0``: which number is judged, how, against what."""

    on: str  # "ratio" or "ours"
    op: str  # "<=" or "=="
    limit: float

    def met(self, row):
        sample = row.ratio if self.on == "ratio" else row.ours
        if sample is None or not sample.values:
            return None
        return GOAL_TESTS[self.op](sample.median, self.limit)

    def text(self, unit):
        suffix = "x" if self.on == "ratio" else f" {unit}"
        return f"{self.op} {self.limit:g}{suffix}"


@dataclass
class Row:
    """One figure of the table."""

    figure: str
    what: str
    ours: Sample = None
    baseline: Sample = None
    baseline_what: str = ""
    goal: Goal = None
    notes: list = field(default_factory=list)
    error: str = ""
    absent: str = ""  # a figure that cannot be measured yet by design ("not built"): said, never an error
    tags: dict = field(default_factory=dict)  # what the row is a point of, for tables built over rows (figure 7)

    @property
    def ratio(self):
        """Paired per-repetition ratios when both sides were measured in alternation, else None."""
        if self.ours is None or self.baseline is None or not self.baseline.values:
            return None
        if len(self.baseline.values) == 1:  # a constant (the ideal makespan): divide every rep by it
            return Sample([v / self.baseline.values[0] for v in self.ours.values], unit="x")
        return Sample([a / b for a, b in zip(self.ours.values, self.baseline.values)], unit="x")

    @property
    def verdict(self):
        """``pass``, ``MISS``, ``error`` or ``-`` (informational row)."""
        if self.error:
            return "error"
        if self.goal is None:
            return "-"
        met = self.goal.met(self)
        return "-" if met is None else ("pass" if met else "MISS")

    def cells(self):
        """The table's cells for this row."""
        if self.error:
            return [self.figure, self.what, "-", self.baseline_what or "-", "-", self.goal_text(), "error"]
        if self.absent:
            return [self.figure, self.what, self.absent, self.baseline_what or "-", "-", self.goal_text(), "-"]
        baseline = f"{self.baseline_what}: {self.baseline.text()}" if self.baseline else (self.baseline_what or "-")
        ratio = self.ratio.text() if self.ratio else "-"
        return [self.figure, self.what, self.ours.text(), baseline, ratio, self.goal_text(), self.verdict]

    def goal_text(self):
        return self.goal.text(self.ours.unit if self.ours else "") if self.goal else "-"

    def to_json(self):
        data = {"figure": self.figure, "what": self.what, "baseline_what": self.baseline_what,
                "ours": self.ours.summary() if self.ours else None,
                "baseline": self.baseline.summary() if self.baseline else None,
                "ratio": self.ratio.summary() if self.ratio else None,
                "goal": self.goal_text() if self.goal else None, "verdict": self.verdict,
                "notes": self.notes}
        if self.error:
            data["error"] = self.error
        if self.absent:
            data["absent"] = self.absent
        if self.tags:
            data["tags"] = self.tags
        return data


HEADERS = ["FIG", "WHAT", "OURS median (min-max)", "BASELINE median (min-max)", "RATIO median (min-max)",
           "GOAL", "RESULT"]


def render(rows):
    """The table people read, then each row's notes."""
    from fabfile.core.report import render_table

    text = render_table([row.cells() for row in rows], HEADERS)
    notes = [f"  {row.figure}: {note}" for row in rows for note in ([row.error] if row.error else []) + row.notes]
    return text + ("\nnotes:\n" + "\n".join(notes) if notes else "")


def write_json(path, rows, run_info):
    """``bench/results.json``: how the run was made, then every row."""
    data = {**run_info, "figures": [row.to_json() for row in rows]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
