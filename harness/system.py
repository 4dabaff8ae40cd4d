"""Small root-side plumbing shared by the harness modules.

Subprocesses whose failure says why, files written with their owner and
mode in one step (per-user setup must stay cheap for 256 hosts: no extra
subprocess per file), a free 127.0.0.1 port, and killing a user's processes
until they are really gone.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from .loopback import LOOPBACK

PROCESS_GONE_TIMEOUT = 10.0


def run(argv, check=True, timeout=60, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run with captured text output and an error that shows stderr
    (a bare CalledProcessError hides why useradd/ssh-keygen failed)."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def write_file(path: Path, content: str | bytes, mode: int, owner: tuple[int, int] | None = None) -> Path:
    """Write, chmod and chown in-process."""
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(data)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)
    return path


def make_dir(path: Path, mode: int, owner: tuple[int, int] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)
    return path


def free_port() -> int:
    """A currently free 127.0.0.1 port (the kernel picks from the high range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def kill_uids(uids) -> None:
    """SIGKILL every process of these users and wait until they are reaped,
    so userdel does not fail with 'user is currently used by process'."""
    uid_list = ",".join(str(uid) for uid in uids)
    if not uid_list:
        return
    run(["pkill", "-KILL", "-U", uid_list], check=False)
    deadline = time.monotonic() + PROCESS_GONE_TIMEOUT
    while time.monotonic() < deadline:
        if run(["pgrep", "-U", uid_list], check=False).returncode != 0:
            return
        time.sleep(0.05)


class Unsupported(RuntimeError):
    """This machine cannot make what the harness was asked for (a mount
    namespace, a tmpfs): tests/conftest.py turns it into a skip that says why."""
