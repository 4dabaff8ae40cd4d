"""The warm-connection process: authenticated SSH connections kept open between runs.

``python -m fabfile.ssh.persist_daemon DIR`` -- started by a run with
``persist`` (`persist.reach_daemon`), never by hand. It listens on
``DIR/warm.sock`` (mode 0600 in a 0700 directory), answers only its own
user, and exits once no run has used it for the last run's ``persist``
seconds. One lock file keeps it to one process per directory.

Each request is a socket of its own, handled by a thread: a *lease* holds
one host's connection for a run until the socket closes (`Pool`); an
*exec* runs one command on a leased connection and streams it back
(`run_command`). A connection is built as a fresh one would be
(`connections.build_connection`: same host-key policy, keys, deadlines); a
reused one must still present the key known_hosts has for it, and one the
host has dropped is replaced before the command starts, so nothing runs
twice.
"""

import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from fabric import Config

from ..core.config import HostEntry
from .connections import (apply_deadlines, build_connection, classify_failure, close_quietly,
                          fabric_config, file_signature)
from .deadlines import deadline, step_seconds
from .known_hosts import HostKeyStore, KnownHosts, known_hosts_name
from .persist import (
    ANSWER, EXIT, REQUEST, SOCKET_NAME, STDERR, STDIN, STDIN_EOF, STDOUT, STDOUT_EOF, read_frame, send_frame, send_json,
)

LOCK_NAME = "warm.lock"
#: How often idle connections (and the process itself) are looked at.
REAP_EVERY_S = 0.5
#: After the output's end, how often the exit status is looked for (it has mostly come before).
EXIT_POLL_S = 0.005
#: How often a kept connection's reader thread wakes when nothing arrives (paramiko's own: 0.1 s).
READ_TICK_S = 1.0


@dataclass
class WarmHost:
    """One kept connection: whose it is (`key`), who leases it now, and what it has done."""

    conn_id: int
    key: str
    spec: dict
    cxn: object = None
    leased: bool = False
    dropped: bool = False
    uses: int = 0
    handshakes: int = 0
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)

    def alive(self):
        transport = self.cxn.client.get_transport() if self.cxn is not None else None
        return transport is not None and transport.is_active()

    def close(self):
        if self.cxn is not None:
            close_quietly(self.cxn)
            self.cxn = None


class Pool:
    """Every kept connection, by id, and the requests under way; the idle limit of the latest run."""

    def __init__(self):
        self.lock = threading.Lock()
        self.hosts = {}
        self.next_id = 1
        self.busy = 0
        self.persist_s = 60.0
        self.last_activity = time.monotonic()
        self.configs = {}
        self.known_hosts = {}

    def touch(self, persist_s=None):
        with self.lock:
            self.last_activity = time.monotonic()
            if persist_s:
                self.persist_s = float(persist_s)

    def lease(self, spec):
        """A connection for `spec`, leased: a kept one that is still good, else a new one (opened here)."""
        key = json.dumps(spec, sort_keys=True)
        with self.lock:
            candidates = [h for h in self.hosts.values() if h.key == key and not h.leased]
            for host in candidates:
                host.leased = True
                break
            else:
                host = WarmHost(self.next_id, key, spec, leased=True)
                self.next_id += 1
                self.hosts[host.conn_id] = host
        host.dropped = False
        try:
            if not (host.alive() and self.key_still_known(host)):
                self.reconnect(host)
        except BaseException:
            host.dropped = True  # never kept: the next run connects afresh and meets the same failure
            self.release(host)
            raise
        host.uses += 1
        host.last_used = time.monotonic()
        return host

    def reconnect(self, host):
        """Replace `host`'s connection by a fresh one: a full handshake under the spec's policy."""
        host.close()
        host.cxn = self.build(host.spec)
        host.handshakes += 1
        host.cxn.open()
        slow_idle_reader(host.cxn)

    def release(self, host):
        with self.lock:
            host.leased = False
            host.last_used = self.last_activity = time.monotonic()
            if host.dropped or not host.alive():
                host.close()
                self.hosts.pop(host.conn_id, None)

    def drop(self, conn_id):
        """The run's deadline fired on this connection: close it; it is not trusted again."""
        host = self.hosts.get(conn_id)
        if host is not None:
            host.dropped = True
            transport = host.cxn.client.get_transport() if host.cxn is not None else None
            if transport is not None:
                transport.close()

    def build(self, spec):
        """The `FleetConnection` a run would build for `spec` (`connections.build_connection`)."""
        defaults = SimpleNamespace(**spec["defaults"])
        keys = HostKeyStore(defaults.host_key_policy, defaults.known_hosts, read=self.read_known_hosts)
        entry = HostEntry(**spec["entry"])
        hops = [HostEntry(**hop) for hop in spec["hops"]]
        config = self.fabric_config(spec)
        apply_deadlines(config, float(defaults.connect_timeout))
        return build_connection(entry, defaults, keys, config, hops)

    def fabric_config(self, spec):
        """One Fabric config per ssh_config and ``-i`` keys (it parses ~/.ssh/config once)."""
        key = (spec.get("ssh_config"), tuple(spec.get("key_filename") or ()))
        with self.lock:
            if key not in self.configs:
                config = fabric_config(Config(runtime_ssh_path=key[0]))
                if key[1]:
                    config.connect_kwargs.key_filename = list(key[1])
                self.configs[key] = config
            return self.configs[key]

    def key_still_known(self, host):
        """Whether known_hosts, read now, still holds the key this connection's host showed.

        A run that removed or changed the host's line since the connection
        was made gets a fresh one, and with it the policy's own verdict.
        """
        policy = host.spec["defaults"]["host_key_policy"]
        if policy == "off":
            return True
        server_key = host.cxn.client.get_transport().get_remote_server_key()
        name = known_hosts_name(host.cxn.host, host.cxn.port)
        known = (self.known_host_keys(host.spec["defaults"]["known_hosts"]).lookup(name) or {})
        found = known.get(server_key.get_name())
        return found is not None and found.asbytes() == server_key.asbytes()

    def known_host_keys(self, path):
        """known_hosts as it is now (`KnownHosts`); nothing is known when it cannot be read."""
        try:
            return self.read_known_hosts(path)
        except Exception:  # noqa: BLE001 - unreadable now: nothing is known, so nothing is reused
            return KnownHosts()

    def read_known_hosts(self, path):
        """known_hosts as it is now (`KnownHosts`), read again only when it changed; OSError when it cannot be.

        Both the check of a kept connection and the building of a new one
        (`HostKeyStore`) read it here: a first run over many hosts reads it
        once, not once a host.
        """
        path = str(path)
        signature = file_signature(path)
        with self.lock:
            cached = self.known_hosts.get(path)
            if signature is not None and cached is not None and cached[0] == signature:
                return cached[1]
        keys = KnownHosts.read(Path(path))
        if signature is not None:
            with self.lock:
                self.known_hosts[path] = (signature, keys)
        return keys

    def reap(self):
        """Close kept connections idle past the limit; True when the process itself should go."""
        now = time.monotonic()
        with self.lock:
            idle = [h for h in self.hosts.values() if not h.leased and now - h.last_used > self.persist_s]
            for host in idle:
                self.hosts.pop(host.conn_id, None)
            leased = any(h.leased for h in self.hosts.values())
            done = not leased and not self.busy and now - self.last_activity > self.persist_s
        for host in idle:
            host.close()
        return done

    def describe(self):
        now = time.monotonic()
        with self.lock:
            hosts = list(self.hosts.values())
        return [{"conn": h.conn_id, "name": h.spec["entry"]["name"], "address": HostEntry(**h.spec["entry"]).address,
                 "alive": h.alive(), "leased": h.leased, "uses": h.uses, "handshakes": h.handshakes,
                 "age_s": round(now - h.created, 3), "idle_s": round(now - h.last_used, 3)} for h in hosts]

    def close_all(self):
        with self.lock:
            hosts = list(self.hosts.values())
            self.hosts.clear()
        for host in hosts:
            host.close()


def slow_idle_reader(cxn):
    """Let `cxn`'s reader thread sleep `READ_TICK_S` between looks at a silent socket, not 0.1 s.

    paramiko's thread reads with a 0.1 s timeout so that it notices a local
    close and a due keepalive; kept connections are idle most of their
    life, and 64 of them woke this process 640 times a second: 2% of a core
    doing nothing (README, Performance). Data, a host's close and our own
    close (`Pool.drop`: the channels end at once) do not wait for the tick;
    only the thread's own exit after a local close does.
    """
    transport = cxn.client.get_transport()
    if transport is not None:
        transport.sock.settimeout(READ_TICK_S)


def failure(exc, spec):
    """The answer for a host that failed: its status and message as `classify_failure` names them."""
    status, message = classify_failure(exc, spec["defaults"]["connect_timeout"])
    return {"ok": False, "status": str(status), "message": message}


class Server:
    """The listening socket, its lock, and a thread per request."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.pool = Pool()
        self.stopping = threading.Event()
        self.started = time.time()

    def serve(self):
        lock = open(self.directory / LOCK_NAME, "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0  # another one serves this directory
        path = self.directory / SOCKET_NAME
        path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(str(path))
        finally:
            os.umask(old_umask)
        listener.listen(1024)
        listener.settimeout(REAP_EVERY_S)
        inode = path.stat().st_ino
        try:
            while not self.stopping.is_set():
                try:
                    sock, _ = listener.accept()
                except socket.timeout:
                    if self.pool.reap():
                        break
                    continue
                sock.settimeout(None)
                threading.Thread(target=self.handle, args=(sock,), daemon=True).start()
        finally:
            try:
                if path.stat().st_ino == inode:
                    path.unlink()
            except OSError:
                pass
            listener.close()
            self.pool.close_all()
        return 0

    def handle(self, sock):
        """One request: refused unless it comes from our own user."""
        with self.pool.lock:
            self.pool.busy += 1
        try:
            if peer_uid(sock) != os.getuid():
                return
            kind, payload = read_frame(sock)
            if kind != REQUEST:
                return
            request = json.loads(payload)
            self.pool.touch(request.get("persist"))
            op = request.get("op")
            if op == "lease":
                self.lease(sock, request)
            elif op == "exec":
                self.execute(sock, request)
            else:
                send_json(sock, ANSWER, self.answer(op, request))
        except (OSError, ValueError):
            pass  # the run went away mid-request: nothing is waiting for an answer
        finally:
            sock.close()
            with self.pool.lock:
                self.pool.busy -= 1
            self.pool.touch()

    def answer(self, op, request):
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "drop":
            self.pool.drop(request.get("conn"))
            return {"ok": True}
        if op == "status":
            return {"ok": True, "pid": os.getpid(), "persist_s": self.pool.persist_s,
                    "socket": str(self.directory / SOCKET_NAME), "started": self.started,
                    "connections": self.pool.describe()}
        if op == "stop":
            self.stopping.set()
            return {"ok": True, "pid": os.getpid()}
        return {"ok": False, "status": "failed", "message": f"unknown request {op!r}"}

    def lease(self, sock, request):
        """Hold one connection for the run until its socket closes; answer keepalives on the way."""
        spec = request["spec"]
        if spec.get("auth_sock") != os.environ.get("SSH_AUTH_SOCK"):
            send_json(sock, ANSWER, {"ok": False, "direct": True, "message": "another ssh-agent than the process's"})
            return
        try:
            host = self.pool.lease(spec)
        except Exception as exc:  # the host's failure, named as a fresh connection's would be
            send_json(sock, ANSWER, failure(exc, spec))
            return
        try:
            send_json(sock, ANSWER, {"ok": True, "conn": host.conn_id})
            while True:
                kind, payload = read_frame(sock)
                if kind != REQUEST:
                    return
                request = json.loads(payload)
                send_json(sock, ANSWER, self.on_lease(host, request))
        finally:
            self.pool.release(host)

    def on_lease(self, host, request):
        if request.get("op") == "keepalive":
            try:
                started = time.monotonic()
                with deadline(host.cxn, "the SSH keepalive"):
                    host.cxn.client.get_transport().global_request("keepalive@openssh.com", wait=True)
                return {"ok": True, "ms": (time.monotonic() - started) * 1000}
            except Exception as exc:  # noqa: BLE001 - a dead connection is the run's to name
                return {"ok": False, "message": str(exc) or type(exc).__name__}
        return {"ok": False, "message": f"unknown request {request.get('op')!r}"}

    def execute(self, sock, request):
        """Start the command on the leased connection (a fresh one if it died unused), then stream it."""
        host = self.pool.hosts.get(request.get("conn"))
        if host is None or not host.leased:
            send_json(sock, ANSWER, {"ok": False, "status": "unreachable",
                                     "message": "the warm connection was given back"})
            return
        channel, answer = None, None
        for fresh in (False, True):
            try:
                if fresh:
                    self.pool.reconnect(host)
                channel = start_command(host.cxn, request)
                break
            except Exception as exc:  # noqa: BLE001 - a host's failure is its answer
                if fresh or host.dropped:
                    answer = failure(exc, host.spec)
                    break
        if channel is None:
            send_json(sock, ANSWER, answer)
            return
        host.last_used = time.monotonic()
        send_json(sock, ANSWER, {"ok": True})
        stream(sock, channel, host.cxn)


def start_command(cxn, request):
    """A channel on `cxn` running the request's command (the session and exec under a deadline)."""
    with deadline(cxn, "starting the command", step_seconds(cxn)):
        channel = cxn.client.get_transport().open_session(timeout=step_seconds(cxn))
        if request.get("env"):
            channel.update_environment(request["env"])
        channel.exec_command(request["command"])
    return channel


def stream(sock, channel, cxn):
    """Copy the command's output to the run, and the run's input to the command, until it has ended.

    Ended means its output's end (EOF) and its exit status have both come,
    or the channel closed: sshd sends the exit status when the command's
    process exits, and what a child of it still prints follows, up to the
    EOF. How far the command has got is read before each drain of the
    buffers: paramiko's reader thread buffers a message's output before it
    marks what comes after, so a drain after the reading holds everything
    sent before it, where a drain before it could miss output that came
    with the end (`tests/test_persist.py` tries every interleaving of the
    two threads).
    """
    transport = cxn.client.get_transport()
    eof_sent = False
    try:
        while True:
            watch = [sock] if eof_sent else [sock, channel]
            readable, _, _ = select.select(watch, [], [], EXIT_POLL_S if eof_sent else 1.0)
            # the latest of sshd's messages first: a close read here means the EOF is read below
            active = transport.is_active()
            closed = channel.closed
            exited = channel.exit_status_ready()
            eof = channel.eof_received
            forward_output(sock, channel)
            if eof and not eof_sent:
                send_frame(sock, STDOUT_EOF)
                eof_sent = True
            if exited and (eof or closed):
                send_json(sock, EXIT, {"code": channel.recv_exit_status()})
                return
            if closed or not active:
                send_json(sock, EXIT, {"code": None, "lost": not active})
                return
            if sock in readable:
                kind, payload = read_frame(sock)
                if kind is None:
                    return  # the run stopped waiting: close the channel, as a run's own close would
                if kind == STDIN:
                    channel.sendall(payload)
                elif kind == STDIN_EOF:
                    channel.shutdown_write()
    finally:
        channel.close()


def forward_output(sock, channel):
    """Send the run what the command's stderr and stdout buffers hold now."""
    while channel.recv_stderr_ready():
        send_frame(sock, STDERR, channel.recv_stderr(1 << 16))
    while channel.recv_ready():
        send_frame(sock, STDOUT, channel.recv(1 << 16))


def peer_uid(sock):
    """The uid of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def main(argv):
    directory = Path(argv[0])
    server = Server(directory)
    signal.signal(signal.SIGTERM, lambda *_: server.stopping.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return server.serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
