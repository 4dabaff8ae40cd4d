"""Warm connections: repeat calls reuse SSH connections a background process keeps open.

A handshake costs ~4 ms of our CPU and ~17 ms of sshd's per host; an agent
calling ``status`` or ``dispatch`` all day pays it on every call. With
``defaults.persist`` (or ``--persist SECONDS``) the run's connections are
`WarmConnection`s: the authenticating and the SSH transport live in a
per-user process (`persist_daemon`) that outlives the run and exits after
that many idle seconds; a run reaches it over a Unix socket in a directory
only its user can open, and the process accepts only its own user
(``SO_PEERCRED``).

The process builds each connection with `connections.build_connection`, so
the host-key policy, known_hosts, keys and deadlines are the ones a fresh
connection has; before reusing one it checks the host's key against
known_hosts as it is now. A `WarmConnection` is leased to one run at a time
(a second run in parallel gets a connection of its own), so stopping a
run's tasks -- which TERMs the sessions of its SSH connection -- never
reaches another run's. Whatever goes wrong with the warm path -- no process,
a process that dies, a connection the host has dropped -- ends in a fresh
connection, never in a failure a direct connection would not have had.

Wire format on the socket: frames of one kind byte, a 4-byte length and
the payload (`send_frame`, `read_frame`).
"""

import json
import os
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from paramiko.buffered_pipe import BufferedPipe, PipeTimeout

from ..core.status import Status
from .connections import MAX_GATEWAY_HOPS, ConnectFailed, ConnectStalled, FleetConnection, gateway_entry

#: Overrides where the socket lives (else $XDG_RUNTIME_DIR/picoclaw-fleet, else /tmp/picoclaw-fleet-UID).
ENV_RUNTIME_DIR = "PICOCLAW_FLEET_RUNTIME_DIR"
SOCKET_NAME = "warm.sock"
LOG_NAME = "warm.log"
#: How long a run waits for a process it started to listen: it imports Fabric (~0.3 s on a quiet machine).
SPAWN_WAIT_S = 10
#: A request's answer may take this many times the connect timeout (`answer_seconds`).
ANSWER_FACTOR = 5
#: ... and, for ``fab persist`` (no fleet, no connect timeout), this many seconds.
STATUS_ANSWER_S = 10

_HEADER = struct.Struct(">cI")
#: Frames: a request (JSON) and the answer to it; stdin, its end, stdout, stderr, their end, the exit.
REQUEST, ANSWER, STDIN, STDIN_EOF, STDOUT, STDERR, STDOUT_EOF, EXIT = (
    b"Q", b"A", b"i", b"e", b"o", b"r", b"E", b"c")


class DaemonUnavailable(Exception):
    """The warm-connection process cannot be reached (or went away before answering)."""


class WarmHostFailure(ConnectFailed):
    """The host failed as the warm-connection process saw it: its status and message, as classified there."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = Status(status)


def send_frame(sock, kind, payload=b""):
    """Write one frame (all of it)."""
    sock.sendall(_HEADER.pack(kind, len(payload)) + payload)


def send_json(sock, kind, message):
    """Write one frame whose payload is `message` as JSON."""
    send_frame(sock, kind, json.dumps(message).encode())


def read_frame(sock):
    """(kind, payload) of the next frame; (None, b"") when the other side closed."""
    header = _read_exact(sock, _HEADER.size)
    if header is None:
        return None, b""
    kind, size = _HEADER.unpack(header)
    payload = _read_exact(sock, size) if size else b""
    if payload is None:
        return None, b""
    return kind, payload


def _read_exact(sock, size):
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 16))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def runtime_dir(environ=None):
    """The directory of the socket: $PICOCLAW_FLEET_RUNTIME_DIR, else $XDG_RUNTIME_DIR/picoclaw-fleet, else /tmp."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_RUNTIME_DIR):
        return Path(environ[ENV_RUNTIME_DIR]).expanduser()
    if environ.get("XDG_RUNTIME_DIR"):
        return Path(environ["XDG_RUNTIME_DIR"]) / "picoclaw-fleet"
    return Path(tempfile.gettempdir()) / f"picoclaw-fleet-{os.getuid()}"


def private_dir(path):
    """Create `path` (mode 0700) or check it is ours alone; the reason it cannot be used, or None.

    The socket's own mode is not enough on every system: the directory
    around it is what keeps other users from connecting (or planting a socket).
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} is not a directory"
    if info.st_uid != os.getuid():
        return f"{path} belongs to another user"
    if info.st_mode & 0o077:
        return f"{path} is open to other users (mode {stat.S_IMODE(info.st_mode):o}; it must be 700)"
    return None


def answer_seconds(connect_timeout):
    """How long the process may take to answer a request: its own work (a handshake, under the
    connection's deadlines) and then some. A process that takes longer is stuck, not slow."""
    return ANSWER_FACTOR * float(connect_timeout)


class Daemon:
    """The warm-connection process of this user, as a run reaches it: one socket per request.

    Every answer is awaited at most `answer_timeout` seconds: a stopped or
    wedged process ends as `DaemonUnavailable`, never as a hang.
    """

    def __init__(self, path, persist_s, answer_timeout=STATUS_ANSWER_S):
        self.path, self.persist_s, self.answer_timeout = Path(path), persist_s, answer_timeout

    def connect(self):
        """A socket connected to the process; `DaemonUnavailable` when nobody listens."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.answer_timeout)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            raise DaemonUnavailable(f"{self.path}: {exc.strerror or exc}") from None
        return sock

    def request(self, message, sock=None):
        """Send `message` (a dict) and return the answer (a dict), on `sock` or a socket of its own."""
        own = sock is None
        sock = self.connect() if own else sock
        try:
            send_json(sock, REQUEST, {**message, "persist": self.persist_s})
            kind, payload = read_frame(sock)
        except OSError as exc:
            raise DaemonUnavailable(f"the warm-connection process went away ({exc.strerror or exc})") from None
        finally:
            if own:
                sock.close()
        if kind != ANSWER:
            raise DaemonUnavailable("the warm-connection process went away before it answered")
        return json.loads(payload)


def reach_daemon(persist_s, answer_timeout, environ=None):
    """The `Daemon` to use, started if it is not running; (None, why) when there cannot be one."""
    directory = runtime_dir(environ)
    problem = private_dir(directory)
    if problem is not None:
        return None, problem
    daemon = Daemon(directory / SOCKET_NAME, persist_s, answer_timeout)
    try:
        daemon.request({"op": "ping"})
        return daemon, None
    except DaemonUnavailable:
        pass
    try:
        start_daemon(directory)
    except OSError as exc:
        return None, f"cannot start it: {exc.strerror or exc}"
    waited_until = time.monotonic() + SPAWN_WAIT_S
    while True:
        try:
            daemon.request({"op": "ping"})
            return daemon, None
        except DaemonUnavailable as exc:
            if time.monotonic() > waited_until:
                return None, f"it did not start listening within {SPAWN_WAIT_S}s ({exc}; see {directory / LOG_NAME})"
            time.sleep(0.02)


def start_daemon(directory):
    """Start `persist_daemon` in a session of its own; it takes a lock, so two at once leave one."""
    package_root = Path(__file__).resolve().parents[2]  # `-m` imports from the working directory
    with open(directory / LOG_NAME, "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "fabfile.ssh.persist_daemon", str(directory)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=package_root,
            start_new_session=True, close_fds=True,
        )


def existing_daemon(environ=None):
    """The running `Daemon`, or None: for ``fab persist``, which never starts one."""
    directory = runtime_dir(environ)
    if not (directory / SOCKET_NAME).exists():
        return None
    daemon = Daemon(directory / SOCKET_NAME, None)
    try:
        daemon.request({"op": "ping"})
    except DaemonUnavailable:
        return None
    return daemon


def connection_spec(entry, defaults, config, config_hosts):
    """What the process needs to build `entry`'s connection as `build_connection` would here (JSON)."""
    hops, gateway = [], entry.gateway
    while gateway and len(hops) <= MAX_GATEWAY_HOPS:
        hop = gateway_entry(gateway, config_hosts)
        hops.append(hop)
        gateway = hop.gateway
    key_filename = config.connect_kwargs.get("key_filename")
    if isinstance(key_filename, str):
        key_filename = [key_filename]
    return {
        "entry": entry_dict(entry),
        "hops": [entry_dict(hop) for hop in hops],
        "defaults": {"connect_timeout": float(defaults.connect_timeout), "host_key_policy": defaults.host_key_policy,
                     "known_hosts": str(Path(defaults.known_hosts).expanduser())},
        "key_filename": [os.path.abspath(os.path.expanduser(k)) for k in key_filename or ()],
        "ssh_config": config._runtime_ssh_path,
        "auth_sock": os.environ.get("SSH_AUTH_SOCK"),
    }


def entry_dict(entry):
    """The connection-relevant fields of a `HostEntry`."""
    return {"name": entry.name, "host": entry.host, "user": entry.user, "port": entry.port,
            "ssh_key": os.path.expanduser(entry.ssh_key) if entry.ssh_key else None, "gateway": entry.gateway}


class WarmConnection(FleetConnection):
    """A `FleetConnection` whose SSH transport lives in the warm-connection process.

    `open` leases a warm connection (the process connects if it has none
    for this host, or its one is gone); the lease is a socket held open
    until `close`, so a run that dies gives its leases back. Commands go
    over sockets of their own (`RemoteChannel`), which Fabric's runner
    drives as it would a paramiko channel. If the process cannot be reached
    the connection is an ordinary fresh one.
    """

    daemon = None
    spec = None
    lease = None
    direct_reason = None

    def __init__(self, *args, daemon=None, spec=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.daemon, self.spec = daemon, spec

    def open(self):
        """Lease the host's warm connection; connect directly when the process cannot be had."""
        if self.is_connected:
            return None
        if self.key_problem is not None:
            raise self.key_problem
        if self.direct_reason is None:
            self._release()  # a lease whose connection died: give it back before taking another
            try:
                return self._lease()
            except DaemonUnavailable as exc:
                self.direct_reason = str(exc)
        return super().open()

    def _lease(self):
        sock = self.daemon.connect()
        try:
            answer = self.daemon.request({"op": "lease", "spec": self.spec}, sock)
        except BaseException:
            sock.close()
            raise
        if not answer.get("ok"):
            sock.close()
            if answer.get("direct"):
                raise DaemonUnavailable(answer.get("message", "the process cannot make this connection"))
            raise WarmHostFailure(answer["status"], answer["message"])
        self.lease = sock
        self.transport = WarmTransport(self, answer["conn"])
        self.client._transport = self.transport  # measure_latency, deadlines, connection_dropped ask the client
        return None

    def go_direct(self, why):
        """Leave the warm path for good: a fresh connection from here on (the lease is given back)."""
        self._release()
        self.direct_reason = why
        super().open()

    def _release(self):
        if isinstance(self.transport, WarmTransport):
            self.transport.active = False
            self.transport = None
            self.client._transport = None
        if self.lease is not None:
            try:
                self.lease.close()
            finally:
                self.lease = None

    def close(self):
        """Give the lease back (the connection stays warm); a direct connection closes as usual."""
        if isinstance(self.transport, WarmTransport):
            self._release()
            return
        super().close()


class WarmTransport:
    """Stands in for paramiko's `Transport` on a `WarmConnection`: what our code and Fabric's ask of it."""

    def __init__(self, cxn, conn_id):
        self.cxn, self.conn_id = cxn, conn_id
        self.active = True
        self.lock = threading.Lock()
        self.channels = set()

    def is_active(self):
        return self.active

    def get_log_channel(self):
        return "paramiko.transport"

    def open_session(self, *args, **kwargs):
        """A `RemoteChannel`: nothing is sent until a command is given to it."""
        channel = RemoteChannel(self)
        with self.lock:
            self.channels.add(channel)
        return channel

    def global_request(self, kind, data=None, wait=True):
        """Only the keepalive round trip (`facts.measure_latency`), timed by the process on the host's transport."""
        if kind != "keepalive@openssh.com":
            raise NotImplementedError(kind)
        answer = self._ask({"op": "keepalive", "conn": self.conn_id})
        if not answer.get("ok"):
            self.active = False
            raise EOFError(answer.get("message", "the warm connection is gone"))
        return answer

    def _ask(self, message):
        lease = self.cxn.lease
        if lease is None:
            raise EOFError("the warm connection was given back")
        with self.lock:
            return self.cxn.daemon.request(message, lease)

    def close(self):
        """The host stopped answering (a deadline fired): cut every command and let the process drop the transport."""
        if not self.active:
            return
        self.active = False
        with self.lock:
            channels = list(self.channels)
        for channel in channels:
            channel.close()
        # from a thread of its own: this runs in the one deadline watchdog, which must never wait on the process
        threading.Thread(target=self._drop, daemon=True, name="warm-drop").start()

    def _drop(self):
        try:
            self.cxn.daemon.request({"op": "drop", "conn": self.conn_id})
        except DaemonUnavailable:
            pass


class RemoteChannel:
    """One command on a warm connection, with the paramiko `Channel` methods Fabric's runner uses.

    The command is sent to the process on a socket of its own; a reader
    thread sorts what comes back into stdout and stderr buffers. When the
    process cannot be reached before the command starts, the channel turns
    into a direct one (`direct`) on a fresh connection, and forwards to it.
    """

    def __init__(self, transport):
        self.transport = transport
        self.sock = None
        self.direct = None
        self.env = {}
        self.timeout = None
        self.out, self.err = BufferedPipe(), BufferedPipe()
        self.exited = threading.Event()
        self.exit_code = -1
        self.eof_received = False
        self.lost = False
        self.closed = False
        self.send_lock = threading.Lock()

    # -- starting --------------------------------------------------------
    def exec_command(self, command):
        self._start({"command": command}, lambda channel: channel.exec_command(command))

    def invoke_subsystem(self, name):
        """SFTP and the like go over a fresh connection: the warm path carries commands only."""
        self._go_direct(f"subsystem {name}", lambda channel: channel.invoke_subsystem(name))

    def update_environment(self, env):
        self.env.update(env)

    def get_pty(self, *args, **kwargs):
        raise NotImplementedError("a warm connection runs commands without a terminal")

    def _start(self, message, direct_start):
        cxn = self.transport.cxn
        try:
            sock = self.sock = cxn.daemon.connect()  # noted at once: a deadline's close() must reach it
        except DaemonUnavailable as exc:
            return self._go_direct(str(exc), direct_start)
        try:
            send_json(sock, REQUEST, {"op": "exec", "conn": self.transport.conn_id, "env": self.env,
                                      "persist": cxn.daemon.persist_s, **message})
            kind, payload = read_frame(sock)
        except socket.timeout:
            sock.close()  # it may yet start the command: never start it a second time, directly
            raise ConnectStalled(f"the warm-connection process did not answer within "
                                 f"{cxn.daemon.answer_timeout:g}s") from None
        except OSError:
            kind = None
        if self.closed:
            raise OSError("the channel was closed (the host's deadline passed)")
        if kind != ANSWER:
            sock.close()
            self.sock = None
            return self._go_direct("the warm-connection process went away", direct_start)
        answer = json.loads(payload)
        if not answer.get("ok"):
            sock.close()
            self.sock = None
            self.transport.active = False
            raise WarmHostFailure(answer["status"], answer["message"])
        sock.settimeout(None)  # a task may print nothing for its whole run: the host's deadlines bound it
        threading.Thread(target=self._read, daemon=True, name="warm-channel").start()
        return None

    def _go_direct(self, why, direct_start):
        cxn = self.transport.cxn
        if cxn.transport is self.transport:  # else another channel already took the connection direct
            cxn.go_direct(why)
        self.direct = cxn.transport.open_session()
        if self.env:
            self.direct.update_environment(self.env)
        direct_start(self.direct)

    def _read(self):
        """Sort the process's frames into stdout, stderr, EOF and the exit status until the end."""
        try:
            while True:
                kind, payload = read_frame(self.sock)
                if kind == STDOUT:
                    self.out.feed(payload)
                elif kind == STDERR:
                    self.err.feed(payload)
                elif kind == STDOUT_EOF:
                    self.eof_received = True
                elif kind == EXIT:
                    end = json.loads(payload)
                    self.exit_code = -1 if end.get("code") is None else end["code"]
                    self.lost = bool(end.get("lost"))
                    break
                else:
                    self.lost = True
                    break
        except OSError:
            self.lost = not self.closed  # our own close() ends the read too: not a lost connection
        finally:
            if self.lost:
                self.transport.active = False
            self.out.close()
            self.err.close()
            self.exited.set()

    # -- paramiko Channel ------------------------------------------------
    def __getattr__(self, name):
        direct = self.__dict__.get("direct")
        if direct is None:
            raise AttributeError(name)
        return getattr(direct, name)

    def settimeout(self, timeout):
        if self.direct is not None:
            return self.direct.settimeout(timeout)
        self.timeout = timeout

    def recv(self, nbytes):
        if self.direct is not None:
            return self.direct.recv(nbytes)
        return self._read_pipe(self.out, nbytes)

    def recv_stderr(self, nbytes):
        if self.direct is not None:
            return self.direct.recv_stderr(nbytes)
        return self._read_pipe(self.err, nbytes)

    def _read_pipe(self, pipe, nbytes):
        try:
            return pipe.read(nbytes, self.timeout)
        except PipeTimeout:
            raise socket.timeout() from None

    def recv_ready(self):
        return self.direct.recv_ready() if self.direct is not None else self.out.read_ready()

    def recv_stderr_ready(self):
        return self.direct.recv_stderr_ready() if self.direct is not None else self.err.read_ready()

    def sendall(self, data):
        if self.direct is not None:
            return self.direct.sendall(data)
        self._send(STDIN, bytes(data))

    def send(self, data):
        if self.direct is not None:
            return self.direct.send(data)
        self._send(STDIN, bytes(data))
        return len(data)

    def shutdown_write(self):
        if self.direct is not None:
            return self.direct.shutdown_write()
        self._send(STDIN_EOF)

    def _send(self, kind, payload=b""):
        if self.sock is None or self.closed:
            raise OSError("the channel is closed")
        with self.send_lock:
            send_frame(self.sock, kind, payload)

    def exit_status_ready(self):
        return self.direct.exit_status_ready() if self.direct is not None else self.exited.is_set()

    @property
    def status_event(self):
        """Set when the command has ended, as paramiko's ``Channel.status_event`` (`runner.FleetRemote` waits on it)."""
        return self.direct.status_event if self.direct is not None else self.exited

    def recv_exit_status(self):
        if self.direct is not None:
            return self.direct.recv_exit_status()
        self.exited.wait()
        return self.exit_code

    def close(self):
        """Stop waiting for this command (the process closes its channel on the host)."""
        if self.direct is not None:
            return self.direct.close()
        self.closed = True
        with self.transport.lock:
            self.transport.channels.discard(self)
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
        self.out.close()
        self.err.close()
        self.exited.set()
