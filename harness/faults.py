"""Hosts and links that fail, for real: each fault is a real process, socket, signal or mount.

  closed_port()        a 127.0.0.1 port where connecting is refused
  SilentListener       accepts TCP and never sends a byte (no SSH banner)
  RotatingKeySshd      an sshd whose host key can be replaced (re-imaged host, MITM)
  NoSftpSshd           an sshd without the SFTP subsystem (a bare Dropbear)
  CipherLimitedSshd    an sshd offering only the ciphers it is given (an old or cut-down one)
  FrozenSshd           an sshd SIGSTOPped with its children, before or after the handshake
  freeze_host()        SIGSTOP every process of a host's user: a board that wedges mid-session
  mount_tmpfs()        a tiny tmpfs over a host's directory: a full disk
  run_with_read_only() a command that sees one directory on a read-only mount, even as root

(`Testbed.cut` kills a host's processes: a host that dies mid-task.) Where
this machine cannot make a fault (no mount namespaces, no tmpfs) the helper
raises `Unsupported`, which tests/conftest.py turns into a skip saying why.
"""

from __future__ import annotations

import os
import pwd
import secrets
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from .cli import REPO
from .loopback import LOOPBACK
from .sshd import SshdServer
from .system import Unsupported, free_port

#: Only there to turn a hang into a failure: waiting for a process sshd forks.
PROCESS_APPEARS_TIMEOUT = 60.0


def closed_port() -> int:
    """A 127.0.0.1 port with nothing listening: connecting is refused."""
    return free_port()


class SilentListener:
    """TCP server on 127.0.0.1 that accepts and never sends a byte: an SSH
    client waiting for the banner hangs until its own timeout."""

    def __init__(self):
        self._sock: socket.socket | None = None
        self._clients: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.port = 0

    def start(self) -> "SilentListener":
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(128)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="silent-listener", daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:  # accept timeout, or the socket closed by stop()
                continue
            self._clients.append(client)  # held open, never written to

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for sock in [*self._clients, self._sock]:
            if sock is not None:
                sock.close()
        self._clients.clear()

    def __enter__(self) -> "SilentListener":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RotatingKeySshd:
    """A second sshd for the same users with its own host key, which can be
    replaced (restarting on the same port) to simulate a re-imaged host or a
    man-in-the-middle: clients with the old known_hosts line must refuse."""

    def __init__(self, testbed):
        self._server = testbed.new_server(f"sshd-rotating-{secrets.token_hex(3)}")

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> "RotatingKeySshd":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def rotate_host_key(self) -> None:
        self._server.stop()
        self._server.generate_host_key()
        self._server.start(port=self._server.port)

    def host_key_line(self) -> str:
        return self._server.host_key_line()

    def __enter__(self) -> "RotatingKeySshd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class NoSftpSshd(SshdServer):
    """A second sshd for the testbed's users with no SFTP subsystem (like a bare Dropbear)."""

    def __init__(self, testbed, name: str = "sshd-nosftp"):
        super().__init__(testbed.workdir / name, testbed.allow_users)

    def config_text(self) -> str:
        return "".join(line + "\n" for line in super().config_text().splitlines() if not line.startswith("Subsystem"))


class CipherLimitedSshd(SshdServer):
    """A second sshd for the testbed's users offering only `ciphers` (OpenSSH's ``Ciphers``), like an old
    or cut-down server; made by `cipher_limited_sshd`, with the testbed's host key: the same machine."""

    def __init__(self, directory, allow_users, force_command=None, host_key=None, ciphers="aes128-ctr"):
        super().__init__(directory, allow_users, force_command, host_key=host_key)
        self.ciphers = ciphers

    def config_text(self) -> str:
        return super().config_text() + f"Ciphers {self.ciphers}\n"


def cipher_limited_sshd(testbed, ciphers: str, name: str = "sshd-ciphers") -> CipherLimitedSshd:
    """A started `CipherLimitedSshd` for `testbed`'s users; the testbed stops it."""
    server = testbed.new_server(name, CipherLimitedSshd, host_key=testbed.host_key, ciphers=ciphers)
    server.start()
    return server


# ---- frozen processes --------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (sshd forks one or two per connection)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def process_owner(pid: int) -> int | None:
    """The uid a process runs as, or None once it is gone."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def user_pids(user: str) -> list[int]:
    """Every process of a Unix user (a host's sshd session process and what it runs)."""
    found = subprocess.run(["pgrep", "-u", user], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def processes_with_argument(argument: str) -> list[int]:
    """Pids of the processes one of whose command-line arguments is exactly `argument` (from /proc)."""
    wanted, found = argument.encode(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if wanted in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def process_environment(pid: int) -> list[bytes]:
    """The ``NAME=value`` entries of a process's environment (empty when it is gone)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def kill_processes_with_argument(argument: str) -> None:
    """SIGKILL what `processes_with_argument` finds (a warm-connection process left by a test)."""
    for pid in processes_with_argument(argument):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop_processes(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass


def thaw_and_kill_pids(pids) -> None:
    """SIGCONT, then SIGKILL, each process that was frozen (gone ones are skipped)."""
    for pid in pids:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _wait_for(find, what: str):
    """find() until it returns something truthy; a failure after PROCESS_APPEARS_TIMEOUT."""
    deadline = time.monotonic() + PROCESS_APPEARS_TIMEOUT
    while True:
        found = find()
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if not found:
        raise AssertionError(f"no {what}")
    return found


def freeze_host(host) -> list[int]:
    """SIGSTOP every process of the host's user: the connection stays open and
    nothing answers, like a board that wedged. Call it once a connection is
    open (sshd forks the user's session process just after authentication).
    Returns the frozen pids, for `thaw_and_kill`."""
    pids = _wait_for(lambda: user_pids(host.user), f"session process of {host.user} to freeze")
    stop_processes(pids)
    return pids


def thaw_and_kill(testbed, host, pids) -> None:
    """Undo `freeze_host`: thaw and kill the frozen processes, then whatever else the host runs."""
    thaw_and_kill_pids(pids)
    testbed.cut(host)


class FrozenSshd:
    """A second real sshd for the testbed's users that `freeze()` SIGSTOPs with
    everything below it: the kernel still accepts TCP for it, nothing answers."""

    def __init__(self, testbed):
        self._server = testbed.new_server(f"sshd-frozen-{secrets.token_hex(3)}")
        self._stopped: list[int] = []

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> "FrozenSshd":
        self._server.start()
        return self

    def freeze(self, host=None) -> list[int]:
        """SIGSTOP the listener and everything below it; with `host`, first wait
        for that user's session process under it (sshd forks it just after
        authentication succeeds), so the handshake is over. Returns the pids."""
        listener = self._server.pid
        pids = descendants(listener)
        if host is not None:
            uid = pwd.getpwnam(host.user).pw_uid

            def with_session():
                found = descendants(listener)
                return found if any(process_owner(pid) == uid for pid in found) else None

            pids = _wait_for(with_session, f"session process of {host.user} under sshd {listener}")
        stop_processes(pids)
        self._stopped.extend(pids)
        return pids

    def stop(self) -> None:
        thaw_and_kill_pids(self._stopped)
        self._stopped.clear()
        self._server.stop()

    def __enter__(self) -> "FrozenSshd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---- disks -------------------------------------------------------------------------------------


def mount_tmpfs(target: Path, size: str, uid: int, mode: int = 0o755) -> None:
    """Mount a tmpfs of `size` (e.g. "64k") owned by `uid` over `target`, on the
    machine itself: undo it with `unmount` (kill what uses it first)."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},uid={uid},mode={mode:o}", "tmpfs",
                              str(target)], capture_output=True, text=True)
    if mounted.returncode != 0:
        raise Unsupported(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")


def unmount(target: Path) -> None:
    """Unmount `target`, retrying while the kernel still calls it busy (processes just killed)."""
    deadline = time.monotonic() + PROCESS_APPEARS_TIMEOUT
    while subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{target} stays mounted")
        time.sleep(0.1)


READ_ONLY_SCRIPT = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"'


def read_only_mounts_work() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


def run_with_read_only(directory, argv, env, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """`argv` run where `directory` is read-only, even for root (for whom a 0444
    file is still writable, a read-only mount is not): in a mount namespace of
    its own (``unshare -m``) with `directory` bind-mounted read-only, so the rest
    of the machine never sees the change. The CompletedProcess, text output."""
    if not read_only_mounts_work():
        raise Unsupported("needs root and mount namespaces (unshare -m) to make a read-only directory")
    return subprocess.run(["unshare", "-m", "sh", "-c", READ_ONLY_SCRIPT, "sh", str(directory), *map(str, argv)],
                          cwd=REPO if cwd is None else cwd, env=env, capture_output=True, text=True, timeout=timeout)
