"""``fab status``: what every selected host is and has, read by one probe each, as a table or JSON."""

import time
from dataclasses import dataclass

from ..core.report import FleetReport, HostReport, render_table, summary_line
from ..core.status import Status
from ..host.facts import probe_host
from ..ssh.fanout import fan_out


@dataclass
class StatusDetails:
    """A probed host's row: its `HostFacts`, and where the config's ``arch`` disagrees with it."""

    facts: object
    arch_mismatch: str | None = None

    def to_dict(self):
        """The host's JSON fields; a model, key or sandbox that cannot be told is null."""
        facts, worker = self.facts, self.facts.worker
        data = {
            "arch": facts.arch or facts.machine,
            "version": facts.version or "not-installed",
            "load1": facts.load1,
            "ncpu": facts.ncpu,
            "env": facts.env_present,
            # to 10 us: a round trip on loopback or a fast LAN can take under 50 us, which read as 0
            "latency_ms": round(facts.latency_ms, 2) if facts.latency_ms is not None else None,
            "model": worker.model if worker else None,
            "api_key": worker.api_key if worker else None,
            "restrict_to_workspace": worker.restrict_to_workspace if worker else None,
        }
        if worker and worker.problem:
            data["config_problem"] = worker.problem
        if self.arch_mismatch:
            data["arch_mismatch"] = self.arch_mismatch
        return data


def status_report(cxn, entry):
    """One host's ``status`` `HostReport` (the probe is the whole work)."""
    started = time.monotonic()
    facts = probe_host(cxn)
    return HostReport(entry.name, entry.address, Status.OK, time.monotonic() - started,
                      details=StatusDetails(facts, facts.arch_mismatch(entry)))


def fleet_status(run):
    """Probe every host of `run` (a `RunContext`): the ``status`` verb's `FleetReport`."""
    done = fan_out(run, status_report)
    return FleetReport("status", done.reports, interrupted=done.interrupted)


def sandbox_cell(restricted):
    """``workspace`` (PicoClaw's tools confined to it), ``off``, or ``-`` when unknown."""
    return "-" if restricted is None else ("workspace" if restricted else "off")


def yes_no(value):
    return "-" if value is None else ("yes" if value else "no")


def status_row(host):
    """One host's table row; a host that could not be probed shows its message in NOTE."""
    if not host.ok:
        return [host.name, host.address, host.status] + ["-"] * 7 + [host.message]
    d = host.details.to_dict()
    load = "-" if d["load1"] is None else f"{d['load1']:.2f}/{d['ncpu'] or '?'}"
    notes = [f"arch mismatch: {d['arch_mismatch']}"] if "arch_mismatch" in d else []
    notes += [d["config_problem"]] if "config_problem" in d else []
    latency = "-" if d["latency_ms"] is None else f"{d['latency_ms']:.0f}ms"
    return [host.name, host.address, host.status, d["arch"], d["version"], d["model"] or "-", yes_no(d["api_key"]),
            sandbox_cell(d["restrict_to_workspace"]), load, latency, "; ".join(notes)]


def render_status(report):
    """The status table people read: one row a host, then the summary."""
    headers = ["HOST", "ADDRESS", "STATUS", "ARCH", "PICOCLAW", "MODEL", "KEY", "SANDBOX", "LOAD/CPU", "RTT", "NOTE"]
    return render_table([status_row(host) for host in report.hosts], headers) + "\n" + summary_line(report)
