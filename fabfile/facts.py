"""Reading the fleet: what each host is and has, without changing anything.

One SSH command per host gathers every fact (`PROBE_COMMAND`), so ``status``
over a large fleet costs one round of commands, and the same probe serves
host selection for dispatch and batch.
"""

import re
import time
from dataclasses import dataclass

from .report import HostReport

#: Where deploy installs PicoClaw, relative to the remote user's home.
BINARY_PATH = ".local/bin/picoclaw"
ENV_FILE = ".picoclaw/.env"

ARCH_NAMES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "riscv64": "riscv64",
    "armv7l": "armv7",
    "armv7": "armv7",
    "armv8l": "armv7",
}

#: Prints ``key=value`` lines. The binary's ``version`` is bounded by
#: ``timeout`` when the host has it, so a broken binary cannot hang status.
#: Its first line is cut by the shell (``${v%%<newline>*}``), not by a
#: ``printf | head`` pipeline: every process the probe starts is paid on each
#: host at every status, and the benchmark showed the probe, not our client,
#: dominating ``status`` time.
PROBE_COMMAND = (
    'echo "arch=$(uname -m)"; '
    'echo "loadavg=$(cat /proc/loadavg 2>/dev/null)"; '
    'echo "ncpu=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null)"; '
    f'bin="$HOME/{BINARY_PATH}"; '
    'if [ -x "$bin" ]; then '
    'if command -v timeout >/dev/null 2>&1; then v=$(timeout 10 "$bin" version 2>&1 </dev/null); '
    'else v=$("$bin" version 2>&1 </dev/null); fi; '
    "echo \"version_rc=$?\"; nl='\n'; printf 'version=%s\\n' \"${v%%\"$nl\"*}\"; "
    "else echo version_rc=127; fi; "
    f'if [ -f "$HOME/{ENV_FILE}" ]; then echo env=yes; else echo env=no; fi'
)

VERSION_PATTERN = re.compile(r"v?(\d+\.\d+(?:\.\d+)?(?:[-+][0-9A-Za-z.+-]*)?)")


@dataclass
class HostFacts:
    """What the probe learned about one host."""

    arch: str | None
    machine: str
    version: str | None
    load1: float | None
    ncpu: int | None
    env_present: bool
    latency_ms: float | None = None

    @property
    def installed(self):
        """True when a runnable PicoClaw answered ``version``."""
        return self.version is not None

    @property
    def load_per_cpu(self):
        """1-minute load divided by CPU count, or None when either is unknown."""
        return load_per_cpu(self.load1, self.ncpu)


def load_per_cpu(load1, ncpu):
    """What "least loaded" compares: `load1` / `ncpu`, or None when either is unknown."""
    return None if load1 is None or not ncpu else load1 / ncpu


def normalize_arch(machine):
    """Map ``uname -m`` to our arch names (amd64/arm64/riscv64/armv7), or None."""
    return ARCH_NAMES.get(machine.strip().lower())


def parse_version(text):
    """The version number in ``picoclaw version`` output, e.g. ``0.1.2``; None if absent."""
    match = VERSION_PATTERN.search(text or "")
    return match.group(1) if match else None


def parse_probe(stdout):
    """`HostFacts` from the probe's ``key=value`` lines."""
    values = dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
    load_fields = values.get("loadavg", "").split()
    installed = values.get("version_rc") == "0"
    return HostFacts(
        arch=normalize_arch(values.get("arch", "")),
        machine=values.get("arch", "").strip(),
        version=(parse_version(values.get("version")) or "unknown") if installed else None,
        load1=float(load_fields[0]) if load_fields and _is_number(load_fields[0]) else None,
        ncpu=int(values["ncpu"]) if values.get("ncpu", "").strip().isdigit() else None,
        env_present=values.get("env") == "yes",
    )


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def measure_latency(cxn):
    """One SSH round trip in milliseconds (a keepalive request that the server answers)."""
    transport = cxn.client.get_transport()
    started = time.monotonic()
    transport.global_request("keepalive@openssh.com", wait=True)
    return (time.monotonic() - started) * 1000


def probe_host(cxn):
    """Open the connection, run the probe, and return the host's `HostFacts`."""
    cxn.open()
    latency = measure_latency(cxn)
    result = cxn.run(PROBE_COMMAND, hide=True, warn=True, in_stream=False)
    facts = parse_probe(result.stdout)
    facts.latency_ms = latency
    return facts


def status_report(cxn, entry):
    """The ``status`` verb's `HostReport` for one host."""
    started = time.monotonic()
    facts = probe_host(cxn)
    return HostReport(entry.name, entry.address, "ok", time.monotonic() - started, details=facts_details(facts, entry))


def facts_details(facts, entry):
    """The facts as report details, flagging a config arch that disagrees with the host."""
    details = {
        "arch": facts.arch or facts.machine,
        "version": facts.version or "not-installed",
        "load1": facts.load1,
        "ncpu": facts.ncpu,
        "env": facts.env_present,
        "latency_ms": round(facts.latency_ms, 1) if facts.latency_ms is not None else None,
    }
    if entry.arch and facts.arch and entry.arch != facts.arch:
        details["arch_mismatch"] = f"config says {entry.arch}, host reports {facts.machine} ({facts.arch})"
    return details


def fleet_status(config, entries, parallel=None, base_config=None):
    """Probe every selected host: the ``status`` verb's `FleetReport`."""
    from .connections import fan_out
    from .report import FleetReport

    reports = fan_out(entries, status_report, config.defaults, parallel, base_config, config.hosts)
    return FleetReport("status", reports)


def render_status(report):
    """The status table people read: one row a host, then the summary."""
    from .report import render_table, summary_line

    rows = []
    for host in report.hosts:
        d = host.details
        if not host.ok:
            rows.append([host.name, host.address, host.status, "-", "-", "-", "-", "-", host.message])
            continue
        load = "-" if d["load1"] is None else f"{d['load1']:.2f}/{d['ncpu'] or '?'}"
        note = f"arch mismatch: {d['arch_mismatch']}" if "arch_mismatch" in d else ""
        latency = "-" if d["latency_ms"] is None else f"{d['latency_ms']:.0f}ms"
        env = "yes" if d["env"] else "no"
        rows.append([host.name, host.address, host.status, d["arch"], d["version"], load, env, latency, note])
    headers = ["HOST", "ADDRESS", "STATUS", "ARCH", "PICOCLAW", "LOAD/CPU", ".ENV", "RTT", "NOTE"]
    return render_table(rows, headers) + "\n" + summary_line(report)
