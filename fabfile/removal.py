"""Taking PicoClaw off hosts: the binary and the API key's ``.env`` (``--purge``: all of ~/.picoclaw).

Only these exact paths are removed, by name, through `remote_files`: never a
glob, never a shell variable. Removing what is already gone is success
(``absent``), so a teardown can be re-run until every host reports ``ok``.
"""

import sys
import time

from . import remote_files
from .errors import UsageError
from .facts import BINARY_PATH, ENV_FILE, PICOCLAW_DIR
from .remote_files import RemoteFileError
from .report import HostReport


def teardown_host(cxn, entry, purge=False):
    """Remove PicoClaw from one host; a `HostReport` (never raises for the host's own refusals).

    Contract for other verbs (dispatch --ephemeral): pass the connection and
    `HostEntry` from `fanout.fan_out`. Removes ~/.local/bin/picoclaw and
    ~/.picoclaw/.env; with `purge`, the whole ~/.picoclaw directory (config,
    workspace, sessions). Status ``ok`` with details ``binary``, ``env`` and
    ``picoclaw_dir``, each ``removed`` or ``absent`` (``picoclaw_dir`` is
    ``kept`` without `purge`); ``failed`` with a message when the host
    refuses (e.g. permission denied). A dropped connection propagates for
    `fan_out` to classify.
    """
    started = time.monotonic()
    details = {}
    try:
        cxn.open()
        details["binary"] = removed_or_absent(remote_files.remove(cxn, BINARY_PATH))
        details["env"] = removed_or_absent(remote_files.remove(cxn, ENV_FILE))
        details["picoclaw_dir"] = removed_or_absent(remote_files.remove_tree(cxn, PICOCLAW_DIR)) if purge else "kept"
    except RemoteFileError as exc:
        return HostReport(entry.name, entry.address, "failed", time.monotonic() - started, str(exc), details)
    return HostReport(entry.name, entry.address, "ok", time.monotonic() - started, details=details)


def removed_or_absent(was_there):
    return "removed" if was_there else "absent"


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


def teardown_fleet(fleet, entries, purge=False, parallel=None, base_config=None):
    """The ``teardown`` verb: `teardown_host` on every selected host in parallel."""
    from .fanout import fan_out
    from .report import FleetReport

    done = fan_out(entries, lambda cxn, entry: teardown_host(cxn, entry, purge), fleet.defaults, parallel, base_config,
                   fleet.hosts)
    return FleetReport("teardown", done.reports, {"purge": bool(purge)}, interrupted=done.interrupted)


def render_teardown(report):
    """One row a host: what was removed, what was already absent; then the summary."""
    from .report import render_table, summary_line

    rows = []
    for host in report.hosts:
        d = host.details
        rows.append([host.name, host.address, host.status, d.get("binary", "-"), d.get("env", "-"), d.get("picoclaw_dir", "-"), host.message])
    headers = ["HOST", "ADDRESS", "STATUS", "BINARY", ".ENV", "~/.PICOCLAW", "NOTE"]
    return render_table(rows, headers) + "\n" + summary_line(report)
