"""Run a command where one directory is read-only, even for root.

The tests run as root, for whom a 0444 file or a 0555 directory is still
writable; a read-only *mount* is not. `run_with_read_only` runs the command
in a mount namespace of its own (``unshare -m``) where `directory` is bind-
mounted read-only, so the rest of the machine never sees the change.
"""

import subprocess

import pytest

from tests.testbed import REPO

SCRIPT = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"'


def read_only_mounts_work() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


def run_with_read_only(directory, argv, env, timeout=300) -> subprocess.CompletedProcess:
    """`argv` run with `directory` read-only; skips the test where mount namespaces are unavailable."""
    if not read_only_mounts_work():
        pytest.skip("needs root and mount namespaces (unshare -m) to make a read-only directory")
    return subprocess.run(["unshare", "-m", "sh", "-c", SCRIPT, "sh", str(directory), *map(str, argv)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
