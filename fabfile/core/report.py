"""Per-host results and how they are shown: a table or blocks for people, JSON for agents.

Every verb returns a `FleetReport` of `HostReport`s, failures included, as
Fabric's `GroupResult` holds a result or an exception per host. ``status``
is a `Status`; what the verb learned or did lives in ``details``, an object
of the verb's own type (`verbs.status.StatusDetails`, `host.install.
InstallOutcome`, `host.removal.RemovalOutcome`, `host.agent.AgentResult`...)
whose ``to_dict()`` is flattened into the host's JSON object.
"""

import json
import sys
from collections import Counter
from dataclasses import dataclass, field

from .status import Status


@dataclass
class HostReport:
    """What one verb did on one host."""

    name: str
    address: str
    status: Status
    duration_s: float
    message: str = ""
    details: object = None

    @property
    def ok(self):
        """True when the host did what was asked."""
        return self.status == Status.OK

    def to_dict(self):
        """The host's JSON object: fixed fields first, then the verb's details."""
        data = {
            "name": self.name,
            "address": self.address,
            "status": str(self.status),
            "duration_s": round(self.duration_s, 3),
        }
        if self.message:
            data["message"] = self.message
        if self.details is not None:
            data.update(self.details.to_dict())
        return data


@dataclass
class FleetReport:
    """A verb's result over the selected hosts, in config order."""

    verb: str
    hosts: list
    extra: dict = field(default_factory=dict)
    interrupted: bool = False

    @property
    def summary(self):
        """``{status: count}`` over the hosts."""
        return dict(Counter(str(h.status) for h in self.hosts))

    @property
    def exit_code(self):
        """0 when every host is ok (and there was at least one), else 1."""
        return 0 if self.hosts and all(h.ok for h in self.hosts) else 1

    def to_json(self):
        """The one JSON object ``--json`` prints: verb, hosts, summary (+ verb extras)."""
        data = {"verb": self.verb, "hosts": [h.to_dict() for h in self.hosts], "summary": self.summary,
                "interrupted": self.interrupted}
        data.update(self.extra)
        return json.dumps(data, indent=2, ensure_ascii=False)


def render_table(rows, headers):
    """Left-aligned columns with a header line; `rows` are lists of cell text."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def summary_line(report):
    """``3 hosts: 2 ok, 1 unreachable`` for the foot of human output."""
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.summary.items()))
    plural = "host" if len(report.hosts) == 1 else "hosts"
    stopped = "; interrupted" if getattr(report, "interrupted", False) else ""
    return f"{len(report.hosts)} {plural}: {counts or 'none selected'}{stopped}"


def emit(text, stream=None):
    """Print `text` to stdout (or `stream`), flushing so agents reading a pipe see it."""
    stream = stream or sys.stdout
    try:
        stream.write(text if text.endswith("\n") else text + "\n")
        stream.flush()
    except BrokenPipeError:
        pass  # the reader (a pipe, a terminal that hung up) is gone: nobody is left to tell
