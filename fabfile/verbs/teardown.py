"""``fab teardown``: take PicoClaw off the selected hosts, confirming first when that is the whole fleet."""

import sys

from ..core.errors import UsageError
from ..core.report import FleetReport, render_table, summary_line
from ..host.removal import teardown_host
from ..ssh.fanout import fan_out


def targets_every_host(fleet, entries, spec):
    """True when the selection is the whole fleet (no ``--hosts``, or one naming them all)."""
    if not spec:
        return True
    chosen = {e.name for e in entries}
    return bool(fleet.hosts) and all(h.name in chosen for h in fleet.hosts)


def confirm_teardown(fleet, entries, spec, yes, stdin=None, stderr=None):
    """Make sure removing PicoClaw from the whole fleet is meant; `UsageError` when it is not confirmed.

    A subset of hosts needs no confirmation. The whole fleet needs ``--yes``
    when stdin is not a terminal (an agent or a script must say so
    explicitly), and one y/N question when it is.
    """
    stdin, stderr = stdin or sys.stdin, stderr or sys.stderr
    if yes or not targets_every_host(fleet, entries, spec):
        return
    count = f"all {len(entries)} hosts" if len(entries) != 1 else "the only host"
    if not stdin.isatty():
        raise UsageError(f"teardown would remove PicoClaw from {count} in {fleet.path}: pass --yes to confirm, or --hosts to pick some")
    stderr.write(f"Remove PicoClaw from {count} in {fleet.path}? [y/N] ")
    stderr.flush()
    if stdin.readline().strip().lower() not in ("y", "yes"):
        raise UsageError("teardown cancelled: nothing was removed")


def teardown_fleet(run, purge=False):
    """The ``teardown`` verb over `run` (a `RunContext`): `teardown_host` on every host, detached tasks' leftovers too."""
    done = fan_out(run, lambda cxn, entry: teardown_host(cxn, entry, purge, detached=True))
    return FleetReport("teardown", done.reports, {"purge": bool(purge)}, interrupted=done.interrupted)


def render_teardown(report):
    """One row a host: what was removed, what was already absent (DETACHED: the detached tasks); then the summary."""
    rows = []
    for host in report.hosts:
        d = host.details.to_dict() if host.details is not None else {}
        rows.append([host.name, host.address, host.status, d.get("binary", "-"), d.get("env", "-"),
                     d.get("picoclaw_dir", "-"), d.get("detached", "-"), host.message])
    headers = ["HOST", "ADDRESS", "STATUS", "BINARY", ".ENV", "~/.PICOCLAW", "DETACHED", "NOTE"]
    return render_table(rows, headers) + "\n" + summary_line(report)
