"""Taking PicoClaw off one host: the binary and the API key's ``.env`` (``--purge``: all of ~/.picoclaw).

``fab teardown`` also stops the host's detached tasks and removes their
files (`detached.remove_all_runs`); dispatch's ``--ephemeral`` does not, so
another run's detached tasks survive it.

Only these exact paths are removed, by name, through `remote_files`: never a
glob, never a shell variable. Removing what is already gone is success
(``absent``), so a teardown can be re-run until every host reports ``ok``.
"""

import time
from dataclasses import asdict, dataclass

from . import remote_files
from .detached import remove_all_runs
from .paths import BINARY_PATH, ENV_FILE, PICOCLAW_DIR, VERSION_CACHE, VERSION_CACHE_BINARY
from .remote_files import RemoteFileError
from ..core.report import HostReport
from ..core.status import Status


@dataclass
class RemovalOutcome:
    """What `teardown_host` did: each of ``binary``, ``env``, ``picoclaw_dir`` ``removed`` or ``absent``
    (``picoclaw_dir`` ``kept`` without ``--purge``), and ``detached`` (the detached tasks' leftovers, when
    asked); None where it did not get that far."""

    binary: str | None = None
    env: str | None = None
    picoclaw_dir: str | None = None
    detached: str | None = None

    def to_dict(self):
        """The host's JSON fields: what was reached."""
        return {key: value for key, value in asdict(self).items() if value is not None}


def teardown_host(cxn, entry, purge=False, detached=False):
    """Remove PicoClaw from one host; a `HostReport` (never raises for the host's own refusals).

    Contract for other verbs (dispatch --ephemeral): pass the connection and
    `HostEntry` from `fanout.fan_out`. Removes ~/.local/bin/picoclaw and
    ~/.picoclaw/.env; with `purge`, the whole ~/.picoclaw directory (config,
    workspace, sessions); with `detached`, first stops the host's detached
    tasks and removes ~/.picoclaw/fleet-runs. Status ``ok`` with a `RemovalOutcome`; ``failed``
    with a message (and what was removed before it) when the host
    refuses (e.g. permission denied). A dropped connection propagates for
    `fan_out` to classify.
    """
    started = time.monotonic()
    outcome = RemovalOutcome()
    try:
        cxn.open()
        if detached:
            outcome.detached = removed_or_absent(remove_all_runs(cxn))
        outcome.binary = removed_or_absent(remote_files.remove(cxn, BINARY_PATH))
        for note in (VERSION_CACHE, VERSION_CACHE_BINARY):  # deploy's note of the binary goes with it
            remote_files.remove(cxn, note)
        outcome.env = removed_or_absent(remote_files.remove(cxn, ENV_FILE))
        outcome.picoclaw_dir = removed_or_absent(remote_files.remove_tree(cxn, PICOCLAW_DIR)) if purge else "kept"
    except RemoteFileError as exc:
        return HostReport(entry.name, entry.address, Status.FAILED, time.monotonic() - started, str(exc), outcome)
    return HostReport(entry.name, entry.address, Status.OK, time.monotonic() - started, details=outcome)


def removed_or_absent(was_there):
    return "removed" if was_there else "absent"
