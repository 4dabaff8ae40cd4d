"""Local SSH testbed: a real OpenSSH server with one Unix user per simulated host.

Why this shape: the product speaks real SSH (paramiko/Fabric), so its tests
need a real sshd -- but everything must stay on 127.0.0.1.  Each simulated
host is a separate Unix user with its own home, authorized_keys and process
table slice, all served by one sshd on a private high port.  That gives
per-host state (files, processes, environment, faults) at the cost of one
`useradd` per host, so hundreds of hosts are cheap enough for benchmarks.
A host given a load of its own (`Testbed.set_load`) gets an sshd of its own
(harness.load).

Importable without pytest (bench/ and demo scripts use it).  Needs root.

Users are named "pcf" + 4 random hex digits (one prefix per Testbed, so two
testbeds on one machine never collide) + a 3-digit index, and carry the
GECOS marker below so that leftovers of a killed run can be recognised and
purged safely (see purge_stale_testbeds).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .load import LoadedSshd
from .loopback import LOOPBACK
from .sshd import SFTP_SERVER, SshdServer, keygen, public_key
from .standin import STANDIN_API_KEY, STANDIN_MODEL_NAME, build_standin, write_picoclaw_config
from .system import kill_uids, make_dir, run, write_file

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
RUNUSER = "/usr/sbin/runuser"
USERADD = "/usr/sbin/useradd"
USERDEL = "/usr/sbin/userdel"

USER_PREFIX = "pcf"
USER_NAME = re.compile(r"^pcf[0-9a-f]{4}[0-9]{3}$")
GECOS = "pcf-testbed"
WORKDIR_PREFIX = "pcf-testbed-"
OWNER_FILE = "owner.pid"
MAX_USERS = 1000  # 3-digit index


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def _run_shadow_tool(argv, check=True) -> subprocess.CompletedProcess:
    """Run useradd/userdel, retrying while /etc/passwd is locked: another
    testbed (a colleague's pytest run) may be adding users at the same time."""
    deadline = time.monotonic() + 30
    while True:
        proc = run(argv, check=False)
        if proc.returncode == 0 or "lock" not in proc.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


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


def _delete_users(names) -> None:
    for name in names:
        _run_shadow_tool([USERDEL, "-f", "-r", name], check=False)


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


def installed_binary(host: SimHost) -> Path:
    """Where a deploy (and install_standin) puts PicoClaw on the host."""
    return host.home / ".local" / "bin" / "picoclaw"


def env_file(host: SimHost) -> Path:
    """The ~/.picoclaw/.env a deploy writes on the host."""
    return host.home / ".picoclaw" / ".env"


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
        self._loaded: dict[str, LoadedSshd] = {}  # unix user -> the sshd of its faked load
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
        keys = make_dir(self.workdir / "keys", 0o700)
        self.client_key = keygen(keys / "client_key", "pcf-testbed-client")
        self.other_key = keygen(keys / "other_key", "pcf-testbed-other")
        self.known_hosts = write_file(self.workdir / "known_hosts", "", 0o644)
        if self.record_commands:
            make_dir(self.cmdlog_dir, 0o755)
            write_file(self.workdir / "record-command", RECORD_COMMAND.format(
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
        make_dir(self.workdir, 0o755)
        make_dir(self.homes_dir, 0o755)
        _check_traversable(self.homes_dir)
        write_file(self.workdir / OWNER_FILE, f"{os.getpid()}\n", 0o644)

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
        self._loaded.clear()

    def _remove_users(self) -> None:
        kill_uids(uid for uid in self._users.values() if uid >= 0)
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

    def new_server(self, name: str, server_class=SshdServer, allow_users: str | None = None,
                   **options) -> SshdServer:
        """A `server_class` (not started) for this testbed's users -- or only
        `allow_users` -- recording commands like the main sshd, stopped by
        stop().  Shared by the main sshd, the faults' and the faked loads'."""
        force = self.workdir / "record-command" if self.record_commands else None
        server = server_class(self.workdir / name, allow_users or self.allow_users, force, **options)
        self._servers.append(server)
        return server

    def host_key_line(self) -> str:
        return self._server.host_key_line()

    @property
    def host_key(self) -> Path:
        """The main sshd's host key: a second sshd serving it looks like the same machine."""
        return self._server.host_key

    # ---- hosts -----------------------------------------------------------

    def add_hosts(self, n: int, prefix: str = "h") -> list[SimHost]:
        """n fresh users authorized for client_key; names continue a counter
        so they stay unique across calls."""
        return [self._add_host(public_key(self.client_key), prefix=prefix) for _ in range(n)]

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
        return self._add_host(public_key(self.other_key), name=name)

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
        ssh_dir = make_dir(home / ".ssh", 0o700, owner)
        write_file(ssh_dir / "authorized_keys", authorized_key + "\n", 0o600, owner)
        if self.record_commands:
            write_file(self.cmdlog_dir / user, b"", 0o600, owner)
        return SimHost(name=name or f"{prefix}{index:02d}", user=user, home=home, port=self.port)

    def _owner(self, host: SimHost) -> tuple[int, int]:
        entry = pwd.getpwnam(host.user)
        return entry.pw_uid, entry.pw_gid

    # ---- acting on hosts -------------------------------------------------

    def run_as(self, host: SimHost, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run `command` with /bin/sh as the host's user, locally (no ssh):
        for arranging or inspecting host state behind the product's back.
        A host with a faked load is entered as its sessions see it."""
        env = {"HOME": str(host.home), "USER": host.user, "LOGNAME": host.user,
               "PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "SHELL": "/bin/sh"}
        argv = [RUNUSER, "-u", host.user, "--", "/bin/sh", "-c", command]
        loaded = self._loaded.get(host.user)
        if loaded is not None:
            env.update(loaded.environment())
            argv = loaded.enter() + argv
        return subprocess.run(argv, env=env, cwd=host.home, capture_output=True, text=True,
                              encoding="utf-8", errors="replace", timeout=timeout)

    def processes(self, host: SimHost, pattern: str) -> list[str]:
        """'PID cmdline' of the host's processes whose command line matches."""
        proc = run(["pgrep", "-a", "-u", host.user, "-f", pattern], check=False)
        return proc.stdout.splitlines()

    def cut(self, host: SimHost) -> None:
        """Kill every process of the host, including its sshd session process,
        so the client's connection drops: 'host died mid-task'."""
        kill_uids([self._users[host.user]])

    def command_log(self, host: SimHost) -> list[str]:
        """Every command sshd ran for this host, in order ('sftp' for SFTP,
        '' for an interactive shell)."""
        if not self.record_commands:
            raise RuntimeError("command_log needs Testbed(record_commands=True)")
        data = (self.cmdlog_dir / host.user).read_bytes()
        return [record.decode("utf-8", "replace") for record in data.split(b"\0")[:-1]]

    def host_sshd(self, host: SimHost) -> LoadedSshd:
        """The sshd of its own a host with faked kernel files gets (made on first use, see harness.load)."""
        server = self._loaded.get(host.user)
        if server is None:
            server = self.new_server(f"sshd-load-{host.user}", LoadedSshd, allow_users=host.user,
                                     host_key=self.host_key)
            self._loaded[host.user] = server
        return server

    def set_machine(self, host: SimHost, machine: str, elf_byte_order: str | None = None) -> None:
        """Make this host another board: the kernel's arch (/proc/sys/kernel/arch, what the
        probe reads) and `uname -m` say `machine`; `elf_byte_order` (``01``/``02``) also fakes
        the `od` the probe reads a MIPS host's byte order with. Like `set_load`, it gives the
        host an sshd of its own: write its fleet config after this."""
        from .shims import set_machine as shim_uname

        shim_uname(host, machine, elf_byte_order)
        server = self.host_sshd(host)
        server.set_machine(machine)
        host.port = server.port

    def hang_probe(self, host: SimHost) -> None:
        """Make the status probe on this host wait forever, the way a wedged board's reads do:
        the kernel's arch becomes a FIFO nobody writes. Write its fleet config after this."""
        server = self.host_sshd(host)
        server.set_machine(None)
        host.port = server.port

    def set_load(self, host: SimHost, load1: float, ncpu: int) -> None:
        """Make this host, and only it, report a 1-minute load of `load1` and
        `ncpu` CPUs however they are read -- /proc/loadavg by `cat` or a shell's
        `read`, `nproc`, `getconf _NPROCESSORS_ONLN`, /sys/devices/system/cpu,
        /proc/cpuinfo -- through an sshd of its own whose mount namespace holds
        the fakes (harness.load). That changes the host's port: write its
        fleet config after this. Called again, it changes the values in place."""
        server = self.host_sshd(host)
        server.set_load(load1, ncpu)
        host.port = server.port

    def install_standin(self, host: SimHost, version: str = "0.1.0", mode: str | None = None,
                        provision: bool = True, note: bool = False) -> Path:
        """Put the stand-in at ~/.local/bin/picoclaw, owned by the user, and
        (unless `provision` is false: a bare binary, which refuses every task
        like an unconfigured PicoClaw) ~/.picoclaw as a deploy leaves it, see
        provision_picoclaw.  mode is a directive (e.g. '::fail::') applied to
        every task on this host.  `note` also leaves the version note a deploy
        leaves (install.record_version: the hard link ~/.picoclaw/.fleet-binary
        and ~/.picoclaw/.fleet-version, 0600, written after the binary), so the
        status probe reads the version instead of starting the stand-in."""
        owner = self._owner(host)
        make_dir(make_dir(host.home / ".local", 0o755, owner) / "bin", 0o755, owner)
        path = build_standin(installed_binary(host), version=version, mode=mode)
        os.chown(path, *owner)
        if provision:
            self.provision_picoclaw(host)
        if note:
            from fabfile.host.paths import PICOCLAW_DIR, VERSION_CACHE, VERSION_CACHE_BINARY

            make_dir(host.home / PICOCLAW_DIR, 0o700, owner)
            link = host.home / VERSION_CACHE_BINARY
            link.unlink(missing_ok=True)  # `ln -f`
            os.link(path, link)
            write_file(host.home / VERSION_CACHE, f"{version}\n", 0o600, owner)
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
    kill_uids(stale.values())
    _delete_users(stale)
    for workdir in workdirs:
        if workdir.name.startswith(WORKDIR_PREFIX):
            shutil.rmtree(workdir, ignore_errors=True)
    return list(stale)
