"""SshdServer: one real OpenSSH sshd on a private 127.0.0.1 port, with its own directory.

The product speaks real SSH (paramiko/Fabric), so its tests need a real
server -- never a mock of one. Each SshdServer has its own host key, config,
pid file and log under its directory; the Testbed runs the main one, and
fault and load helpers run more for the same users (RotatingKeySshd,
NoSftpSshd, a frozen one, the per-host sshd of a faked load). Subclasses
change what they need through `config_text` and `command`.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from .loopback import LOOPBACK
from .system import free_port, make_dir, run

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
PRIVSEP_DIR = Path("/run/sshd")
SSHD_START_TIMEOUT = 15.0


def keygen(path: Path, comment: str) -> Path:
    """Fresh passphrase-less ed25519 key pair (replacing any old one)."""
    for old in (path, path.with_name(path.name + ".pub")):
        old.unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path


def public_key(private_key: Path) -> str:
    """'ssh-ed25519 AAAA...' without the comment."""
    return " ".join(private_key.with_name(private_key.name + ".pub").read_text().split()[:2])


def wait_for_banner(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    """True once something on the port sends an SSH banner; False if sshd died
    (e.g. lost the port race) or the deadline passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as sock:
                if sock.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def sshd_supports(option: str, host_key: Path) -> bool:
    """Whether this sshd knows a config option (sshd -t rejects unknown ones)."""
    proc = run([SSHD, "-t", "-f", "/dev/null", "-o", f"HostKey={host_key}", "-o", option], check=False)
    return proc.returncode == 0


class SshdServer:
    """One sshd process with its own directory (host key, config, pid, log).

    `host_key` names an existing key to serve instead of generating one in the
    directory: a second sshd that must look like the same machine.
    """

    def __init__(self, directory: Path, allow_users: str, force_command: Path | None = None,
                 host_key: Path | None = None):
        self.directory = make_dir(Path(directory), 0o755)
        self.allow_users = allow_users
        self.force_command = force_command
        self.host_key = Path(host_key) if host_key is not None else self.directory / "ssh_host_ed25519_key"
        self.config = self.directory / "sshd_config"
        self.log = self.directory / "sshd.log"
        self.pid_file = self.directory / "sshd.pid"
        self.port = 0
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        """The listening sshd's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def generate_host_key(self) -> None:
        keygen(self.host_key, "pcf-testbed-host")

    def config_text(self) -> str:
        """sshd_config for a private, loopback-only server.  StrictModes no and
        UsePAM no because sim users are throwaway accounts with '*' passwords;
        PermitUserEnvironment PATH lets harness.shims give a host its own PATH."""
        lines = [
            f"ListenAddress {LOOPBACK}",
            f"Port {self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_file}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin no",
            f"AllowUsers {self.allow_users}",
            "AuthorizedKeysFile .ssh/authorized_keys",
            "MaxStartups 1024",
            "MaxSessions 128",
            "LoginGraceTime 30",
            "AllowTcpForwarding yes",
            "X11Forwarding no",
            "PermitUserEnvironment PATH",
            "PrintMotd no",
            "PrintLastLog no",
            f"Subsystem sftp {SFTP_SERVER}",
            "LogLevel ERROR",
        ]
        if sshd_supports("PerSourcePenalties=no", self.host_key):
            # OpenSSH >= 9.8 would otherwise throttle 127.0.0.1 after the
            # deliberate auth failures and kills that fault tests cause.
            lines.append("PerSourcePenalties no")
        if self.force_command is not None:
            lines.append(f"ForceCommand {self.force_command}")
        return "\n".join(lines) + "\n"

    def command(self) -> list[str]:
        """The argv that runs this sshd in the foreground; it must exec sshd
        itself, so that the started process is the listener."""
        return [SSHD, "-D", "-e", "-f", str(self.config)]

    def start(self, port: int | None = None) -> None:
        """Start on `port` (or a free one, retrying if another process grabs
        it first) and return once sshd answers with its banner."""
        if not self.host_key.exists():
            self.generate_host_key()
        make_dir(PRIVSEP_DIR, 0o755)
        for _ in range(1 if port else 5):
            self.port = port or free_port()
            self.config.write_text(self.config_text())
            if self._spawn():
                return
        raise RuntimeError(f"sshd did not start on 127.0.0.1:{self.port}: {self._log_tail()}")

    def _spawn(self) -> bool:
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        if wait_for_banner(self.port, proc, SSHD_START_TIMEOUT):
            self._proc = proc
            return True
        self._terminate(proc)
        return False

    @staticmethod
    def _terminate(proc: subprocess.Popen) -> None:
        """TERM, then KILL: sshd -D exits on SIGTERM; existing sessions are
        separate processes and stay up (like a real sshd restart)."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def stop(self) -> None:
        if self._proc is not None:
            self._terminate(self._proc)
            self._proc = None

    def host_key_line(self) -> str:
        """known_hosts line; non-22 ports use the [host]:port form."""
        return f"[{LOOPBACK}]:{self.port} {public_key(self.host_key)}"

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"
