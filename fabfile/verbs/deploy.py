"""``fab deploy``: plan once (key, release), then install PicoClaw on every selected host."""

from ..core.report import FleetReport, render_table, summary_line
from ..host.install import deploy_host, deploy_plan
from ..ssh.fanout import fan_out


def deploy_fleet(run, version=None, from_file=None, force=False, allow_unverified=False, environ=None):
    """The ``deploy`` verb over `run` (a `RunContext`): `deploy_host` on every host, at most ``run.bound`` at once.

    Everything that can be checked before a host is contacted is: the API
    key, the release (or ``--from-file``), each host's model choice.
    """
    plan = deploy_plan(run.fleet, version, from_file, force, environ, allow_unverified)
    for entry in run.entries:
        plan.model_for(entry)  # a host with no usable model is a usage error before any host is contacted
    done = fan_out(run, lambda cxn, entry: deploy_host(cxn, entry, plan))
    return FleetReport("deploy", done.reports, {"release": plan.binaries.describe(), "uploaded_bytes": plan.uploaded.total},
                       interrupted=done.interrupted)


def render_deploy(report):
    """What people read: where the binary came from, one row a host, the summary."""
    source = report.extra["release"]
    origin = (
        f"from {source['from_file']} (sha256 {source['sha256'][:12]})"
        if "from_file" in source
        else f"{source['repo']} {source['tag']} (verified by {source['verification']})"
        if not source.get("verification", "").startswith(("unverified", "none"))
        else f"{source['repo']} {source['tag']} ({source['verification']})"
    )
    rows = [deploy_row(host) for host in report.hosts]
    headers = ["HOST", "ADDRESS", "STATUS", "ARCH", "BINARY", "VERSION", "MODEL", ".ENV", "ONBOARD", "NOTE"]
    uploaded = f"uploaded {human_bytes(report.extra['uploaded_bytes'])}"
    return f"PicoClaw {origin}\n" + render_table(rows, headers) + "\n" + summary_line(report) + f"; {uploaded}"


def human_bytes(n):
    """``0 B``, ``7.2 kB``, ``480.2 MB``: a size as people read it."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def deploy_row(host):
    """One host's table row; a failure shows its message in the NOTE column."""
    outcome = host.details
    if outcome is None:  # the host was never reached: its connection failed
        return [host.name, host.address, host.status] + ["-"] * 6 + [host.message]
    version = outcome.version or "-"
    if outcome.previous_version and outcome.previous_version != version:
        version = f"{outcome.previous_version} -> {version}"
    notes = [host.message] if host.message else []
    if outcome.arch_mismatch:
        notes.append(f"arch mismatch: {outcome.arch_mismatch}")
    model = f"{outcome.model_name} ({outcome.model})" if outcome.model else "-"
    return [host.name, host.address, host.status, outcome.arch, outcome.binary or "-", version, model,
            outcome.env or "-", outcome.onboard or "-", "; ".join(notes)]
