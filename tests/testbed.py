"""Local SSH testbed: a real OpenSSH server with one Unix user per simulated host.

Why this shape: the product speaks real SSH (paramiko/Fabric), so its tests
need a real sshd -- but everything must stay on 127.0.0.1.  Each simulated
host is a separate Unix user with its own home, authorized_keys and process
table slice, all served by one sshd on a private high port.  That gives
per-host state (files, processes, environment, faults) at the cost of one
`useradd` per host, so hundreds of hosts are cheap enough for benchmarks.

Importable without pytest (bench/ and demo scripts use it).  Needs root.

Users are named "pcf" + 4 random hex digits (one prefix per Testbed, so two
testbeds on one machine never collide) + a 3-digit index, and carry the
GECOS marker below so that leftovers of a killed run can be recognised and
purged safely (see purge_stale_testbeds).
"""

from __future__ import annotations

import atexit
import contextlib
import gzip
import hashlib
import importlib.util
import io
import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
PRIVSEP_DIR = Path("/run/sshd")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
RUNUSER = "/usr/sbin/runuser"
USERADD = "/usr/sbin/useradd"
USERDEL = "/usr/sbin/userdel"

TESTS_DIR = Path(__file__).resolve().parent
#: The repository, and the `fab` of the venv running the tests: the CLI under test.
REPO = TESTS_DIR.parent
FAB = str(Path(sys.executable).with_name("fab"))
STANDIN_SOURCE = TESTS_DIR / "picoclaw_standin.py"
NATIVE_STANDIN_SOURCE = TESTS_DIR / "picoclaw_standin.sh"
LOOPBACK_GUARD_DIR = TESTS_DIR / "loopback_guard"

#: What install_standin provisions, as a deploy with the fleet's defaults would:
#: PicoClaw's model_name, its model_list entry, and the key in ~/.picoclaw/.security.yml.
STANDIN_MODEL_NAME = "claude-sonnet-4.6"
STANDIN_PROVIDER = "anthropic"
STANDIN_MODEL_ID = "claude-sonnet-4-6"
STANDIN_API_BASE = "https://api.anthropic.com/v1"
STANDIN_API_KEY = "sk-standin-test"

USER_PREFIX = "pcf"
USER_NAME = re.compile(r"^pcf[0-9a-f]{4}[0-9]{3}$")
GECOS = "pcf-testbed"
WORKDIR_PREFIX = "pcf-testbed-"
OWNER_FILE = "owner.pid"
MAX_USERS = 1000  # 3-digit index

SSHD_START_TIMEOUT = 15.0
PROCESS_GONE_TIMEOUT = 10.0


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def _run(argv, check=True, timeout=60, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run with captured text output and an error that shows stderr
    (a bare CalledProcessError hides why useradd/ssh-keygen failed)."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _run_shadow_tool(argv, check=True) -> subprocess.CompletedProcess:
    """Run useradd/userdel, retrying while /etc/passwd is locked: another
    testbed (a colleague's pytest run) may be adding users at the same time."""
    deadline = time.monotonic() + 30
    while True:
        proc = _run(argv, check=False)
        if proc.returncode == 0 or "lock" not in proc.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _write_file(path: Path, content: str | bytes, mode: int, owner: tuple[int, int] | None = None) -> Path:
    """Write, chmod and chown in-process: per-user setup must stay cheap for
    256 hosts, so no extra subprocesses."""
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(data)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)
    return path


def _make_dir(path: Path, mode: int, owner: tuple[int, int] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)
    return path


def _free_port() -> int:
    """A currently free 127.0.0.1 port (the kernel picks from the high range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def closed_port() -> int:
    """A 127.0.0.1 port with nothing listening: connecting is refused."""
    return _free_port()


def _wait_for_banner(port: int, proc: subprocess.Popen, timeout: float) -> bool:
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


def _keygen(path: Path, comment: str) -> Path:
    """Fresh passphrase-less ed25519 key pair (replacing any old one)."""
    for old in (path, path.with_name(path.name + ".pub")):
        old.unlink(missing_ok=True)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path


def _public_key(private_key: Path) -> str:
    """'ssh-ed25519 AAAA...' without the comment."""
    return " ".join(private_key.with_name(private_key.name + ".pub").read_text().split()[:2])


def _check_traversable(path: Path) -> None:
    """Sim users must reach their homes under the workdir; a parent like
    /root (0700) would make every login fail with a confusing auth error."""
    for parent in [path, *path.parents]:
        if not parent.stat().st_mode & 0o001:
            raise ValueError(f"{parent} is not world-traversable; sim users could not reach their homes")


@contextlib.contextmanager
def _sigint_ignored():
    """Ignore Ctrl-C while cleaning up, so a second Ctrl-C cannot leave half
    the users behind.  Signal handlers can only be changed in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _kill_uids(uids) -> None:
    """SIGKILL every process of these users and wait until they are reaped,
    so userdel does not fail with 'user is currently used by process'."""
    uid_list = ",".join(str(uid) for uid in uids)
    if not uid_list:
        return
    _run(["pkill", "-KILL", "-U", uid_list], check=False)
    deadline = time.monotonic() + PROCESS_GONE_TIMEOUT
    while time.monotonic() < deadline:
        if _run(["pgrep", "-U", uid_list], check=False).returncode != 0:
            return
        time.sleep(0.05)


def _delete_users(names) -> None:
    for name in names:
        _run_shadow_tool([USERDEL, "-f", "-r", name], check=False)



def drain_terminal(fd: int) -> bytes:
    """Everything a pseudo-terminal's controller side can still read: Linux
    reports EIO (not EOF) once the other end is closed and drained."""
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return data
        if not chunk:
            return data
        data += chunk


def guarded_env(base: dict | None = None) -> dict:
    """Copy of the environment whose Python subprocesses load the loopback
    guard (tests/loopback_guard/sitecustomize.py) at start-up."""
    env = dict(os.environ if base is None else base)
    parts = [str(LOOPBACK_GUARD_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def install_loopback_guard() -> None:
    """Install the guard in this process.  Loaded from its file under another
    module name because 'sitecustomize' may already be taken."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pcf_loopback_guard", LOOPBACK_GUARD_DIR / "sitecustomize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.install()


# --------------------------------------------------------------------------
# stand-in PicoClaw
# --------------------------------------------------------------------------

def standin_commit(version: str) -> str:
    """The git commit a stand-in of `version` reports: 8 hex digits, fixed per version."""
    return hashlib.sha1(version.encode()).hexdigest()[:8]


def _standin_source(version: str, mode: str | None, pad_bytes: int, native: bool = False) -> str:
    """The stand-in's text: the Python one (every directive), or with `native`
    the sh one that starts as fast as the real Go binary (benchmarks; no mode)."""
    commit = standin_commit(version)
    if native:
        if mode is not None:
            raise ValueError("the native-speed stand-in has no baked-in mode")
        source = NATIVE_STANDIN_SOURCE.read_text(encoding="utf-8")
        source = re.sub(r'^VERSION=.*$', lambda _: f'VERSION="{version}"', source, count=1, flags=re.M)
        source = re.sub(r'^COMMIT=.*$', lambda _: f'COMMIT="{commit}"', source, count=1, flags=re.M)
        return source + _padding(pad_bytes)  # after its final `exit`: never read by the shell
    source = STANDIN_SOURCE.read_text(encoding="utf-8")
    source = re.sub(r'^VERSION = .*$', lambda _: f"VERSION = {version!r}", source, count=1, flags=re.M)
    source = re.sub(r'^COMMIT = .*$', lambda _: f"COMMIT = {commit!r}", source, count=1, flags=re.M)
    source = re.sub(r'^DEFAULT_MODE = .*$', lambda _: f"DEFAULT_MODE = {mode!r}", source, count=1, flags=re.M)
    return source + _padding(pad_bytes)


def _padding(pad_bytes: int) -> str:
    """A comment block of exactly pad_bytes (ASCII) bytes.  Hex from a seeded
    PRNG: incompressible like a real binary, yet identical on every build."""
    hexdata = random.Random(pad_bytes).randbytes(pad_bytes // 2 + 1).hex()
    lines = []
    for pos in range(0, max(pad_bytes, 0), 80):
        width = min(80, pad_bytes - pos)
        lines.append(("#" + hexdata[pos:pos + width])[:width - 1] + "\n")
    return "".join(lines)


def build_standin(dest: Path, version: str = "0.1.0", pad_bytes: int = 0, mode: str | None = None,
                  native: bool = False) -> Path:
    """Write an executable stand-in picoclaw at dest.  pad_bytes grows it
    (benchmarks upload a 15 MB 'binary'); mode bakes a default directive in,
    like PICOCLAW_STANDIN_MODE but immune to the product rewriting ~/.picoclaw/.env;
    native picks the sh stand-in (see _standin_source)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _write_file(dest, _standin_source(version, mode, pad_bytes, native), 0o755)
    return dest


def _tar_member(name: str, data: bytes, mode: int) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    info.uname = info.gname = "root"
    return info, io.BytesIO(data)


def standin_archive(version: str = "0.1.0", arch_name: str = "Linux_x86_64", native: bool = False) -> bytes:
    """A goreleaser-style release archive (picoclaw_<arch_name>.tar.gz contents:
    binary, README.md, LICENSE at top level).  Byte-for-byte deterministic so
    checksum tests can precompute digests."""
    files = [
        ("README.md", f"# PicoClaw {version} ({arch_name})\n\nStand-in build for tests.\n".encode(), 0o644),
        ("LICENSE", b"MIT License (stand-in)\n", 0o644),
        ("picoclaw", _standin_source(version, None, 0, native).encode(), 0o755),
    ]
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, data, mode in files:
                tar.addfile(*_tar_member(name, data, mode))
    return buf.getvalue()


_standin_module_cache = []


def standin_module():
    """picoclaw_standin.py imported as a module (its banners, its default config)."""
    if not _standin_module_cache:
        spec = importlib.util.spec_from_file_location("pcf_picoclaw_standin", STANDIN_SOURCE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _standin_module_cache.append(module)
    return _standin_module_cache[0]


def provisioned_picoclaw_config(picoclaw_dir: Path, model_name: str = STANDIN_MODEL_NAME) -> dict:
    """~/.picoclaw/config.json after `picoclaw onboard` and a deploy choosing
    `model_name`: PicoClaw's defaults (version 3, its model_list, which holds
    STANDIN_MODEL_NAME) with that model selected and the sandbox on."""
    config = standin_module().default_config(str(picoclaw_dir))
    config["agents"]["defaults"]["model_name"] = model_name
    config["agents"]["defaults"]["restrict_to_workspace"] = True
    if not any(entry["model_name"] == model_name for entry in config["model_list"]):
        config["model_list"].append({"model_name": model_name, "provider": STANDIN_PROVIDER,
                                     "model": STANDIN_MODEL_ID, "api_base": STANDIN_API_BASE})
    return config


def provisioned_security_yml(config: dict, model_name: str = STANDIN_MODEL_NAME,
                             api_key: str | None = STANDIN_API_KEY) -> str:
    """~/.picoclaw/.security.yml as a deploy leaves it (PyYAML block style): `api_key`
    for every entry of `model_name`, an empty entry for every other model."""
    names, seen = [], {}
    for entry in config["model_list"]:
        index = seen[entry["model_name"]] = seen.get(entry["model_name"], -1) + 1
        names.append((entry["model_name"], f"{entry['model_name']}:{index}"))
    lines = ["model_list:"]
    for name, key in sorted(names, key=lambda pair: pair[1]):
        if name == model_name and api_key:
            lines += [f"  {key}:", "    api_keys:", f"    - {api_key}"]
        else:
            lines.append(f"  {key}: {{}}")
    return "\n".join(lines) + "\n"


def write_picoclaw_config(home: Path, owner: tuple[int, int] | None = None, model_name: str = STANDIN_MODEL_NAME,
                          api_key: str | None = STANDIN_API_KEY) -> Path:
    """Give `home` a provisioned PicoClaw: ~/.picoclaw (0700) with config.json
    and .security.yml (0600) selecting `model_name` with `api_key` (None: no
    key), and the workspace.  Returns the ~/.picoclaw directory."""
    picoclaw_dir = _make_dir(Path(home) / ".picoclaw", 0o700, owner)
    config = provisioned_picoclaw_config(picoclaw_dir, model_name)
    _write_file(picoclaw_dir / "config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n", 0o600, owner)
    _write_file(picoclaw_dir / ".security.yml", provisioned_security_yml(config, model_name, api_key), 0o600, owner)
    _make_dir(picoclaw_dir / "workspace", 0o755, owner)
    return picoclaw_dir


# --------------------------------------------------------------------------
# sshd
# --------------------------------------------------------------------------

def _sshd_supports(option: str, host_key: Path) -> bool:
    """Whether this sshd knows a config option (sshd -t rejects unknown ones)."""
    proc = _run([SSHD, "-t", "-f", "/dev/null", "-o", f"HostKey={host_key}", "-o", option], check=False)
    return proc.returncode == 0


class SshdServer:
    """One sshd process with its own directory (host key, config, pid, log).

    Testbed runs one; RotatingKeySshd runs another that serves the same users
    through the same config writer.
    """

    def __init__(self, directory: Path, allow_users: str, force_command: Path | None = None):
        self.directory = _make_dir(Path(directory), 0o755)
        self.allow_users = allow_users
        self.force_command = force_command
        self.host_key = self.directory / "ssh_host_ed25519_key"
        self.config = self.directory / "sshd_config"
        self.log = self.directory / "sshd.log"
        self.pid_file = self.directory / "sshd.pid"
        self.port = 0
        self._proc: subprocess.Popen | None = None

    def generate_host_key(self) -> None:
        _keygen(self.host_key, "pcf-testbed-host")

    def config_text(self) -> str:
        """sshd_config for a private, loopback-only server.  StrictModes no and
        UsePAM no because sim users are throwaway accounts with '*' passwords;
        PermitUserEnvironment PATH lets set_load install per-user shims."""
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
        if _sshd_supports("PerSourcePenalties=no", self.host_key):
            # OpenSSH >= 9.8 would otherwise throttle 127.0.0.1 after the
            # deliberate auth failures and kills that fault tests cause.
            lines.append("PerSourcePenalties no")
        if self.force_command is not None:
            lines.append(f"ForceCommand {self.force_command}")
        return "\n".join(lines) + "\n"

    def start(self, port: int | None = None) -> None:
        """Start on `port` (or a free one, retrying if another process grabs
        it first) and return once sshd answers with its banner."""
        if not self.host_key.exists():
            self.generate_host_key()
        _make_dir(PRIVSEP_DIR, 0o755)
        for _ in range(1 if port else 5):
            self.port = port or _free_port()
            self.config.write_text(self.config_text())
            if self._spawn():
                return
        raise RuntimeError(f"sshd did not start on 127.0.0.1:{self.port}: {self._log_tail()}")

    def _spawn(self) -> bool:
        with open(self.log, "ab") as log:
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if _wait_for_banner(self.port, proc, SSHD_START_TIMEOUT):
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
        return f"[{LOOPBACK}]:{self.port} {_public_key(self.host_key)}"

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


# --------------------------------------------------------------------------
# the testbed
# --------------------------------------------------------------------------

@dataclass
class SimHost:
    name: str      # config name, e.g. "h00"
    user: str      # unix user, e.g. "pcf3a9c000"
    home: Path
    address: str = LOOPBACK
    port: int = 0


RECORD_COMMAND = r"""#!/bin/sh
# sshd ForceCommand of a recording testbed: log the client's command, then run
# it exactly as sshd would have (login shell -c CMD, or a login shell), by exec
# so stdin, stdout, stderr and the exit status pass through untouched.
cmd=$SSH_ORIGINAL_COMMAND
unset SSH_ORIGINAL_COMMAND
case $cmd in
  "{sftp_server}"|internal-sftp) record=sftp ;;
  *) record=$cmd ;;
esac
# NUL-terminated records (commands may contain newlines); flock because
# sessions of one user run concurrently and long commands need several writes.
# A subshell, so that a failing redirection cannot abort the real command.
( exec 9>>"{log_dir}/$LOGNAME" && /usr/bin/flock 9 && printf '%s\0' "$record" >&9 ) 2>/dev/null
[ -n "$cmd" ] || exec "${{SHELL:-/bin/sh}}" -l
exec "${{SHELL:-/bin/sh}}" -c "$cmd"
"""

CAT_SHIM = """#!/bin/sh
# set_load shim: all sim hosts share one kernel, so fake this user's load.
if [ "$#" -eq 1 ] && [ "$1" = /proc/loadavg ]; then
  echo "{load} {load} {load} 1/100 12345"
  exit 0
fi
exec /bin/cat "$@"
"""

NPROC_SHIM = """#!/bin/sh
# set_load shim: fake CPU count for this sim host.
echo {ncpu}
"""


class Testbed:
    """Real sshd on 127.0.0.1 plus throwaway Unix users, one per simulated host."""

    def __init__(self, workdir: Path | None = None, record_commands: bool = False):
        self.record_commands = record_commands
        self.workdir: Path | None = Path(workdir) if workdir is not None else None
        self._owns_workdir = False
        self.user_prefix = ""
        self.port = 0
        self._server: SshdServer | None = None
        self._servers: list[SshdServer] = []
        self._users: dict[str, int] = {}  # unix user -> uid (-1 until useradd succeeded)
        self._counter = 0
        self._started = False

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> "Testbed":
        if self._started:
            return self
        if os.geteuid() != 0:
            raise RuntimeError("Testbed needs root (it creates Unix users and runs sshd)")
        purge_stale_testbeds()
        atexit.register(self.stop)
        self._started = True
        self._make_workdir()
        self.user_prefix = self._pick_user_prefix()
        keys = _make_dir(self.workdir / "keys", 0o700)
        self.client_key = _keygen(keys / "client_key", "pcf-testbed-client")
        self.other_key = _keygen(keys / "other_key", "pcf-testbed-other")
        self.known_hosts = _write_file(self.workdir / "known_hosts", "", 0o644)
        if self.record_commands:
            _make_dir(self.cmdlog_dir, 0o755)
            _write_file(self.workdir / "record-command", RECORD_COMMAND.format(
                sftp_server=SFTP_SERVER, log_dir=self.cmdlog_dir), 0o755)
        self._server = self.new_server("sshd")
        self._server.start()
        self.port = self._server.port
        return self

    def _make_workdir(self) -> None:
        """Workdir (and homes/) must be 0755: mkdtemp makes 0700 and users
        could not reach their homes.  owner.pid marks it as alive."""
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
            self._owns_workdir = True
        elif not self.workdir.exists():
            self._owns_workdir = True
        self.workdir = self.workdir.resolve()
        _make_dir(self.workdir, 0o755)
        _make_dir(self.homes_dir, 0o755)
        _check_traversable(self.homes_dir)
        _write_file(self.workdir / OWNER_FILE, f"{os.getpid()}\n", 0o644)

    @staticmethod
    def _pick_user_prefix() -> str:
        taken = {entry.pw_name[:7] for entry in pwd.getpwall()}
        while True:
            prefix = USER_PREFIX + secrets.token_hex(2)
            if prefix not in taken:
                return prefix

    def stop(self) -> None:
        """Tear everything down; idempotent, never raises, Ctrl-C safe."""
        if not self._started:
            return
        with _sigint_ignored():
            for step in (self._stop_servers, self._remove_users, self._remove_workdir):
                try:
                    step()
                except Exception as exc:  # noqa: BLE001 - cleanup must go on
                    print(f"testbed cleanup: {step.__name__}: {exc}", file=sys.stderr)
            self._started = False
            atexit.unregister(self.stop)

    def _stop_servers(self) -> None:
        while self._servers:
            self._servers.pop().stop()

    def _remove_users(self) -> None:
        _kill_uids(uid for uid in self._users.values() if uid >= 0)
        _delete_users(list(self._users))
        self._users.clear()

    def _remove_workdir(self) -> None:
        if self._owns_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Testbed":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- paths and keys --------------------------------------------------

    @property
    def homes_dir(self) -> Path:
        return self.workdir / "homes"

    @property
    def cmdlog_dir(self) -> Path:
        return self.workdir / "cmdlog"

    @property
    def allow_users(self) -> str:
        return f"{self.user_prefix}*"

    def new_server(self, name: str) -> SshdServer:
        """An SshdServer (not started) for this testbed's users, stopped by
        stop().  Shared by the main sshd and RotatingKeySshd."""
        force = self.workdir / "record-command" if self.record_commands else None
        server = SshdServer(self.workdir / name, self.allow_users, force)
        self._servers.append(server)
        return server

    def host_key_line(self) -> str:
        return self._server.host_key_line()

    # ---- hosts -----------------------------------------------------------

    def add_hosts(self, n: int, prefix: str = "h") -> list[SimHost]:
        """n fresh users authorized for client_key; names continue a counter
        so they stay unique across calls."""
        return [self._add_host(_public_key(self.client_key), prefix=prefix) for _ in range(n)]

    def add_workers(self, n: int, prefix: str = "w", mode: str | None = None,
                    provision: bool = True) -> list[SimHost]:
        """n fresh hosts that already have the stand-in picoclaw (optionally
        with a baked-in directive `mode`) and, unless `provision` is false, its
        model and key configured: as a previous deploy would leave them."""
        hosts = self.add_hosts(n, prefix=prefix)
        for host in hosts:
            self.install_standin(host, mode=mode, provision=provision)
        return hosts

    def add_unauthorized_host(self, name: str = "noauth") -> SimHost:
        """A user whose authorized_keys holds only other_key: client_key fails."""
        return self._add_host(_public_key(self.other_key), name=name)

    def _add_host(self, authorized_key: str, prefix: str = "h", name: str | None = None) -> SimHost:
        if not self._started:
            raise RuntimeError("Testbed.start() first")
        index = self._counter
        if index >= MAX_USERS:
            raise RuntimeError(f"at most {MAX_USERS} sim hosts per testbed")
        self._counter += 1
        user = f"{self.user_prefix}{index:03d}"
        home = self.homes_dir / user
        self._users[user] = -1  # registered before useradd so stop() cleans a half-made user
        _run_shadow_tool([USERADD, "-m", "-d", str(home), "-s", "/bin/bash", "-p", "*", "-c", GECOS, user])
        entry = pwd.getpwnam(user)
        self._users[user] = entry.pw_uid
        owner = (entry.pw_uid, entry.pw_gid)
        ssh_dir = _make_dir(home / ".ssh", 0o700, owner)
        _write_file(ssh_dir / "authorized_keys", authorized_key + "\n", 0o600, owner)
        if self.record_commands:
            _write_file(self.cmdlog_dir / user, b"", 0o600, owner)
        return SimHost(name=name or f"{prefix}{index:02d}", user=user, home=home, port=self.port)

    def _owner(self, host: SimHost) -> tuple[int, int]:
        entry = pwd.getpwnam(host.user)
        return entry.pw_uid, entry.pw_gid

    # ---- acting on hosts -------------------------------------------------

    def run_as(self, host: SimHost, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run `command` with /bin/sh as the host's user, locally (no ssh):
        for arranging or inspecting host state behind the product's back."""
        env = {"HOME": str(host.home), "USER": host.user, "LOGNAME": host.user,
               "PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "SHELL": "/bin/sh"}
        return subprocess.run([RUNUSER, "-u", host.user, "--", "/bin/sh", "-c", command],
                              env=env, cwd=host.home, capture_output=True, text=True,
                              encoding="utf-8", errors="replace", timeout=timeout)

    def processes(self, host: SimHost, pattern: str) -> list[str]:
        """'PID cmdline' of the host's processes whose command line matches."""
        proc = _run(["pgrep", "-a", "-u", host.user, "-f", pattern], check=False)
        return proc.stdout.splitlines()

    def cut(self, host: SimHost) -> None:
        """Kill every process of the host, including its sshd session process,
        so the client's connection drops: 'host died mid-task'."""
        _kill_uids([self._users[host.user]])

    def command_log(self, host: SimHost) -> list[str]:
        """Every command sshd ran for this host, in order ('sftp' for SFTP,
        '' for an interactive shell)."""
        if not self.record_commands:
            raise RuntimeError("command_log needs Testbed(record_commands=True)")
        data = (self.cmdlog_dir / host.user).read_bytes()
        return [record.decode("utf-8", "replace") for record in data.split(b"\0")[:-1]]

    def set_load(self, host: SimHost, load1: float, ncpu: int) -> None:
        """Make `cat /proc/loadavg` and `nproc` report these values for this
        host only, via PATH shims announced in ~/.ssh/environment."""
        owner = self._owner(host)
        fakebin = _make_dir(host.home / ".fakebin", 0o755, owner)
        _write_file(fakebin / "cat", CAT_SHIM.format(load=f"{load1:.2f}"), 0o755, owner)
        _write_file(fakebin / "nproc", NPROC_SHIM.format(ncpu=int(ncpu)), 0o755, owner)
        _write_file(host.home / ".ssh" / "environment", f"PATH={fakebin}:{DEFAULT_PATH}\n", 0o600, owner)

    def install_standin(self, host: SimHost, version: str = "0.1.0", mode: str | None = None,
                        native: bool = False, provision: bool = True) -> Path:
        """Put the stand-in at ~/.local/bin/picoclaw, owned by the user, and
        (unless `provision` is false: a bare binary, which refuses every task
        like an unconfigured PicoClaw) ~/.picoclaw as a deploy leaves it, see
        provision_picoclaw.  mode is a directive (e.g. '::fail::') applied to
        every task on this host."""
        owner = self._owner(host)
        bindir = _make_dir(_make_dir(host.home / ".local", 0o755, owner) / "bin", 0o755, owner)
        path = build_standin(bindir / "picoclaw", version=version, mode=mode, native=native)
        os.chown(path, *owner)
        if provision:
            self.provision_picoclaw(host)
        return path

    def provision_picoclaw(self, host: SimHost, model_name: str = STANDIN_MODEL_NAME,
                           api_key: str | None = STANDIN_API_KEY) -> Path:
        """~/.picoclaw of the host as a deploy leaves it: config.json (version 3,
        model_name selected, its model_list entry) and .security.yml with
        `api_key` for "<model_name>:0" (both 0600, the directory 0700, owned by
        the user).  Returns the ~/.picoclaw directory."""
        return write_picoclaw_config(host.home, self._owner(host), model_name, api_key)

    # ---- product config --------------------------------------------------

    def fleet_config(self, hosts, extra_hosts=(), **defaults) -> dict:
        """Config dict in the product's JSON format; kwargs override defaults,
        extra_hosts are raw host dicts (fault hosts)."""
        entries = [{"name": h.name, "host": h.address, "port": h.port, "user": h.user,
                    "ssh_key": str(self.client_key)} for h in hosts]
        base = {"provider": "anthropic", "api_key_env": "ANTHROPIC_API_KEY",
                "known_hosts": str(self.known_hosts), "host_key_policy": "accept-new",
                "connect_timeout": 5, "timeout": 60, "parallel": 32}
        return {"hosts": entries + [dict(h) for h in extra_hosts], "defaults": {**base, **defaults}}

    def write_config(self, path: Path, hosts, extra_hosts=(), **defaults) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.fleet_config(hosts, extra_hosts, **defaults), indent=2) + "\n")
        return path


# --------------------------------------------------------------------------
# faults
# --------------------------------------------------------------------------

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

    def __init__(self, testbed: Testbed):
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


# --------------------------------------------------------------------------
# leftovers of killed runs
# --------------------------------------------------------------------------

def _owner_alive(workdir: Path) -> bool:
    try:
        pid = int((workdir / OWNER_FILE).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def _kill_stale_sshd(workdir: Path) -> None:
    """Kill an sshd a dead testbed left behind, checking its command line
    points into that workdir before signalling the pid from its pid file."""
    for pid_file in workdir.glob("*/sshd.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(workdir).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)


def purge_stale_testbeds() -> list[str]:
    """Remove users (and sshd, workdir) of testbeds whose owning process died
    without cleanup (SIGKILL, CI timeout).  Only users with our name pattern,
    GECOS marker and a dead owner are touched; live testbeds of concurrent
    runs are left alone.  Returns the removed user names."""
    stale: dict[str, int] = {}
    workdirs: set[Path] = set()
    for entry in pwd.getpwall():
        if not USER_NAME.match(entry.pw_name) or entry.pw_gecos != GECOS:
            continue
        workdir = Path(entry.pw_dir).parent.parent
        if not _owner_alive(workdir):
            stale[entry.pw_name] = entry.pw_uid
            workdirs.add(workdir)
    for workdir in workdirs:
        _kill_stale_sshd(workdir)
    _kill_uids(stale.values())
    _delete_users(stale)
    for workdir in workdirs:
        if workdir.name.startswith(WORKDIR_PREFIX):
            shutil.rmtree(workdir, ignore_errors=True)
    return list(stale)
