"""SSH connections to fleet hosts: building them, their deadlines, failure names.

`build_connection` makes the Fabric `Connection` for one fleet entry (its
port, key, gateway chain and ~/.ssh/config, with a deadline on every step of
connecting); `classify_failure` turns whatever went wrong into a status a
sysadmin can act on (`unreachable`, `auth-failed`, `hostkey-rejected`, ...).
The fan-out over the fleet is `fanout.fan_out`; host keys and their policy
are `known_hosts`.
"""

import dataclasses
import gc
import logging
import math
import os
import socket
import stat
import threading
import time
from functools import partial

import paramiko
from fabric import Config, Connection

from ..core.config import parse_target
from ..core.errors import UsageError, one_line
from ..core.report import HostReport
from ..core.status import Status
from .deadlines import session_open_seconds
from .known_hosts import HostKeyRejected, HostKeyStore
from .runner import FleetRemote

_CONFIG_LOCK = threading.Lock()

#: A gateway chain longer than this is refused (config.MAX_GATEWAY_HOPS says the same at load).
MAX_GATEWAY_HOPS = 8


def silence_paramiko():
    """Keep paramiko's own log lines off stderr: every failure it logs is a host's report here.

    Paramiko logs "Exception (client): ..." and whole tracebacks (ERROR) from
    its transport thread when a host sends garbage, closes early or never
    sends a banner; with no handler configured, Python's last-resort handler
    would print them on stderr, beside our one-line reports.
    """
    logger = logging.getLogger("paramiko")
    if not any(isinstance(handler, logging.NullHandler) for handler in logger.handlers):
        logger.addHandler(logging.NullHandler())
    logger.propagate = False


silence_paramiko()


def fabric_config(base=None):
    """One Fabric config per run: it parses ~/.ssh/config once, not once per host.
    Its commands run under `runner.FleetRemote`, which waits for their end without polling."""
    config = base if isinstance(base, Config) else Config()
    # invoke asks the config for these two on every read of a section
    # (``config.connect_kwargs``: twice per Connection built) and, a root having
    # neither, composes an error listing all its keys and attributes before the
    # caller falls back to ``()`` and the config itself (~30 us each). A root is
    # its own root at the empty key path; where invoke reads them, that is what
    # it assumed (`clone` copies neither).
    config._set(_keypath=(), _root=config)
    config.runners.remote = FleetRemote
    return config


class KeyFileError(paramiko.AuthenticationException):
    """The host's ``ssh_key`` file is missing or unreadable: found before connecting, reported per host."""


class ConnectFailed(Exception):
    """A connection step failed in a way its message names (``unreachable``): not an SSH server, say."""

    status = Status.UNREACHABLE


class ConnectStalled(ConnectFailed, TimeoutError):
    """A connection step (TCP, banner, key exchange, authentication, session) got no answer in time."""


class GatewayFailure(Exception):
    """Reaching a host's gateway failed; `cause` is why, `gateway` names the jump host."""

    def __init__(self, gateway, cause):
        super().__init__(f"via gateway {gateway}: {cause}")
        self.gateway, self.cause = gateway, cause


def with_loaded_key(connect_kwargs):
    """`connect_kwargs` with its first key file handed to paramiko already loaded (`client_key`), the rest as they were.

    paramiko parses every ``key_filename`` again for each connection, trying
    one key type after another (RSA, then ECDSA, then Ed25519): ~0.3 ms of
    client CPU a host for one Ed25519 key (README, Performance). It tries
    ``pkey`` first and the files after it, so the order of the keys offered is
    unchanged. A key that does not load here (encrypted, an unknown type) stays
    a file, for paramiko to try and name as before. A new dict when a key was
    loaded; otherwise `connect_kwargs` itself, untouched.
    """
    files = connect_kwargs.get("key_filename")
    if not files or "pkey" in connect_kwargs:
        return connect_kwargs
    files = [files] if isinstance(files, str) else list(files)
    key = client_key(files[0])
    if key is None:
        return connect_kwargs
    kwargs = {name: value for name, value in connect_kwargs.items() if name != "key_filename"}
    kwargs["pkey"] = key
    if files[1:]:
        kwargs["key_filename"] = files[1:]
    return kwargs


def client_key(path):
    """The private key at `path` (with its ``-cert.pub`` certificate, if any), parsed once per process; None if it will not load.

    Read again when the key file or its certificate changes (modification
    time, size, inode), so a long-lived process -- the warm-connection one --
    offers a rotated key or a renewed certificate, never a stale one. A key
    that needs a passphrase, or that paramiko cannot read, is None, and its
    file is left to paramiko itself.
    """
    path = os.path.expanduser(path)
    signature = (file_signature(path), file_signature(path + CERT_SUFFIX))
    if signature[0] is None:
        return None
    with _CLIENT_KEYS_LOCK:
        cached = _client_keys.get(path)
    if cached is not None and cached[0] == signature:
        return cached[1]
    try:
        key = paramiko.PKey.from_path(path)
    except Exception:  # noqa: BLE001 - encrypted, unknown or unreadable: paramiko's own load says why
        key = None
    with _CLIENT_KEYS_LOCK:
        _client_keys[path] = (signature, key)
    return key


#: paramiko loads ``<key>-cert.pub`` beside a private key as its certificate.
CERT_SUFFIX = "-cert.pub"
_CLIENT_KEYS_LOCK = threading.Lock()
_client_keys = {}


def file_signature(path):
    """What changes when the file at `path` is rewritten or replaced (mtime, size, inode), or None if it is not there."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


def key_file_problem(ssh_key):
    """Why the private key file `ssh_key` cannot be used (``no such file``...), or None."""
    path = os.path.expanduser(ssh_key)
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            return "is a directory, not a private key file"
        if not stat.S_ISREG(mode):
            return "is not a regular file"
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        return "no such file"
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    return None


class FleetConnection(Connection):
    """A Fabric `Connection` whose every connection step has a deadline and a name when it fails.

    * `connect_timeout` stays a float (Fabric rounds it down to whole seconds;
      0.5 would become "no timeout");
    * the ``ssh_key`` is checked before connecting: a missing file is
      `KeyFileError` (``auth-failed``), never a dial;
    * a step that gets no answer raises `ConnectStalled` naming it (no SSH
      banner, key exchange, authentication, session), so a host that accepts
      TCP and then stalls is ``unreachable`` within its deadline;
    * a failure on the way through a gateway is `GatewayFailure`, naming the
      gateway; closing a connection closes its gateways too.
    """

    # Declared here because Fabric's Connection (an invoke DataProxy) turns an
    # assignment to an undeclared attribute into a key of the shared config.
    # Fabric's own ``inline_ssh_env`` is one: undeclared, each Connection made
    # wrote it into the shared config, which merged all its levels again
    # (README, Performance).
    key_problem = None
    label = None
    inline_ssh_env = None

    def __init__(self, *args, connect_timeout=None, key_problem=None, label=None, **kwargs):
        super().__init__(*args, connect_timeout=connect_timeout, **kwargs)
        self.connect_timeout = connect_timeout
        self.key_problem = key_problem
        self.label = label or self.host
        if key_problem is None:
            self.connect_kwargs = with_loaded_key(self.connect_kwargs)

    def __setattr__(self, name, value):
        """As invoke's, but a name the class declares is set without listing ``dir(self)`` first.

        invoke checks each assignment against ``dir(self)`` (~8 us on a
        Connection) to tell an attribute from a config key; Fabric's
        ``__init__`` makes 13 assignments, all to names its class declares.
        A name only the instance has still goes through invoke's check.
        """
        if hasattr(type(self), name):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def open(self):
        """Connect (gateway first), or raise why not, named."""
        if self.is_connected:
            return None
        if self.key_problem is not None:
            raise self.key_problem
        try:
            return super().open()
        except GatewayFailure:
            raise
        except Exception as exc:
            named = self.named_failure(exc)
            if named is None:
                raise
            raise named from exc

    def named_failure(self, exc):
        """The `ConnectFailed` (mostly `ConnectStalled`) naming the step of `open` that failed, or None."""
        seconds = f"{self.connect_timeout:g}s"
        text = str(exc)
        if type(exc) in (TimeoutError, socket.timeout):
            return ConnectStalled(f"no answer to the TCP connection within {seconds}")
        if isinstance(exc, paramiko.AuthenticationException) and "Authentication timeout" in text:
            return ConnectStalled(f"authentication did not finish within {seconds}")
        if not isinstance(exc, paramiko.SSHException):
            return None
        if text.startswith("Error reading SSH protocol banner"):
            if isinstance(exc.__context__, (EOFError, ConnectionError)):
                return ConnectFailed("the connection was closed before an SSH banner: is it an SSH server?")
            return ConnectStalled(f"no SSH banner within {seconds}")
        if text.startswith("Indecipherable protocol version"):
            return ConnectFailed("not an SSH server: it answered, but no line of it is an SSH banner")
        if "No existing session" in text or "Negotiation timed out" in text:
            transport = self.client.get_transport()
            if transport is None or not transport.remote_version:
                return ConnectStalled(f"no SSH banner within {seconds}")
            return ConnectStalled(f"SSH key exchange did not finish within {seconds}")
        return None

    def open_gateway(self):
        """The channel through the gateway; `GatewayFailure` naming the gateway when it cannot be had."""
        try:
            return super().open_gateway()
        except Exception as exc:
            raise GatewayFailure(gateway_label(self.gateway), exc) from exc

    def create_session(self):
        """A session channel; `ConnectStalled` when the host does not open it within the connect timeout."""
        try:
            return super().create_session()
        except paramiko.SSHException as exc:
            if "Timeout opening channel" in str(exc):
                raise ConnectStalled(f"session not opened within {session_open_seconds(self.connect_timeout):g}s") from exc
            raise

    def close(self):
        """Close the connection and then its gateways (Fabric leaves a gateway open)."""
        try:
            super().close()
        finally:
            if isinstance(self.gateway, Connection):
                self.gateway.close()


def gateway_label(gateway):
    """How messages name a gateway: its config name, ``user@host:port`` (a ProxyJump), or the ProxyCommand."""
    if isinstance(gateway, FleetConnection):
        return gateway.label
    if isinstance(gateway, Connection):
        return f"{gateway.user}@{gateway.host}:{gateway.port}"
    return f"ProxyCommand {gateway!r}"


def apply_deadlines(config, timeout):
    """Give every Connection made from `config` our step deadlines, also the hops Fabric builds itself.

    A ``ProxyJump`` of ~/.ssh/config becomes a plain Fabric `Connection` made
    inside Fabric, from this config: without this, its banner, authentication
    and forwarding channel would wait paramiko's defaults (15 s, 30 s, an hour).
    """
    wanted = {"banner_timeout": timeout, "auth_timeout": timeout, "channel_timeout": session_open_seconds(timeout)}
    connect = max(1, math.ceil(timeout))  # Fabric keeps whole seconds for a Connection it makes
    with _CONFIG_LOCK:  # once per run in practice: each set merges invoke's config levels again
        if config.timeouts.connect != connect:
            config.timeouts.connect = connect
        for key, value in wanted.items():
            if config.connect_kwargs.get(key) != value:
                config.connect_kwargs[key] = value


def fleet_transport(sock, **kwargs):
    """Our `FleetTransport` on `sock`, which sends each SSH packet at once (``TCP_NODELAY``).

    paramiko leaves Nagle's algorithm on, so a small packet written while the
    one before it is not yet acknowledged waits for that ACK, which the host
    delays by ~40 ms: a step of the key exchange, and every command after the
    first on a connection (its CHANNEL_OPEN follows the last one's CLOSE).
    On loopback that was 60 ms a connect instead of 19, and 45 ms a later
    command instead of 3 (README, Performance). A gateway's channel is no
    socket and is left as it is.
    """
    if is_tcp(sock):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return FleetTransport(sock, **kwargs)


class FleetTransport(paramiko.Transport):
    """paramiko's `Transport`, asking for AES-GCM first and acknowledging at once what the host sends unasked after login.

    Ciphers: with AES-CTR, paramiko checks each packet's HMAC in pure Python,
    byte by byte (``util.constant_time_bytes_eq``); AES-GCM's tag is checked
    inside ``cryptography``. Offering GCM first saves ~0.2 ms of client CPU
    a host (README, Performance). OpenSSH has had it since 6.2 (2013); every
    other cipher paramiko offers follows, in paramiko's order, so a host
    without GCM is reached as before.

    The handshake's deadline: paramiko's `Packetizer` starts a timer thread per
    connection only to set a flag its reader checks every 0.1 s;
    `HandshakeClockPacketizer` compares the clock in that check instead.

    The first request: right after authentication, sshd announces its host
    keys (``hostkeys-00@openssh.com``, no reply wanted) on a socket where
    Nagle's algorithm is on. Our kernel delays its ACK of that packet by
    ~40 ms, so the host's answer to our first request, written behind it,
    waited that long: every connection's first command or keepalive took
    ~45 ms on loopback instead of ~2 (README, Performance). ``TCP_QUICKACK``
    once the packet is read sends the pending ACK now (Linux; elsewhere it is
    left).
    """

    _preferred_ciphers = tuple(sorted(paramiko.Transport._preferred_ciphers, key=lambda name: "-gcm@" not in name))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # paramiko builds its Packetizer itself; this is the same object, with the handshake deadline below
        try:
            self.packetizer.__class__ = HandshakeClockPacketizer
        except TypeError:  # a paramiko whose Packetizer cannot take it keeps its own timer
            pass

    def _parse_debug(self, m):
        """paramiko's, but the message is formatted only when a DEBUG line would show it.

        OpenSSH sends one on every public-key login (``key options: ...``),
        and paramiko escapes it byte by byte in Python (``util.safe_string``,
        ~20 us of client CPU a host) for a log line that is off unless asked for.
        """
        if self.logger.isEnabledFor(logging.DEBUG):
            super()._parse_debug(m)

    def _parse_global_request(self, m):
        super()._parse_global_request(m)
        if is_tcp(self.sock) and hasattr(socket, "TCP_QUICKACK"):
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:
                pass  # the connection is already gone: nothing to acknowledge


class HandshakeClockPacketizer(paramiko.packet.Packetizer):
    """paramiko's `Packetizer`, whose handshake deadline is a time read off the clock, not a timer thread.

    paramiko starts a `threading.Timer` for each connection's handshake
    (``Transport.handshake_timeout``, 15 s) whose only act is to set a flag
    that its reader checks before each read, at least every 0.1 s; the
    thread's start, wake-up on cancel and end cost ~0.12 ms of client CPU a
    host. Reading the clock in that same check ends a handshake at the same
    moment, with no thread. As paramiko's, only the first handshake is timed
    (a re-key is not).
    """

    _handshake_deadline = None
    _handshake_done = False

    def start_handshake(self, timeout):
        if self._handshake_deadline is None:
            self._handshake_deadline = time.monotonic() + float(timeout)

    def handshake_timed_out(self):
        return (self._handshake_deadline is not None and not self._handshake_done
                and time.monotonic() >= self._handshake_deadline)

    def complete_handshake(self):
        if self._handshake_deadline is not None:
            self._handshake_done = True


def is_tcp(sock):
    """Whether `sock` is a TCP socket (a gateway's channel is not)."""
    return isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6)


def connect_kwargs_for(entry, timeout):
    """paramiko's connect arguments for `entry`: every step's deadline is `timeout`, packets go out at once."""
    kwargs = {"banner_timeout": timeout, "auth_timeout": timeout, "channel_timeout": session_open_seconds(timeout),
              "transport_factory": fleet_transport}
    if entry.ssh_key:
        kwargs["key_filename"] = [os.path.expanduser(entry.ssh_key)]
        kwargs["look_for_keys"] = False
    return kwargs


def build_connection(entry, defaults, keys, config, config_hosts=(), _chain=(), warm=None):
    """A `FleetConnection` for `entry` honouring its port, key, gateway and ~/.ssh/config.

    Every connection step -- TCP connect, SSH banner, key exchange,
    authentication, opening a session (also the gateway's forwarding
    channel) -- has `defaults.connect_timeout` seconds. A gateway that names a
    config host is built the same way, with that host's own gateway: a chain
    ``h00 -> h01 -> h02`` opens ``h02`` first. `warm` (from `open_fleet`)
    makes the host's connection a warm one; its gateways are the process's. A loop, or more than
    `MAX_GATEWAY_HOPS` hops, is a `UsageError` (the config's load refuses
    both already; this guards callers that build entries themselves).
    `config` has had `apply_deadlines` (once, by the caller: reading invoke's
    config is slow enough to matter per host).
    """
    timeout = float(defaults.connect_timeout)
    chain = (*_chain, entry.name)
    gateway = None
    if entry.gateway:
        hop = gateway_entry(entry.gateway, config_hosts)
        if hop.name in chain:
            raise UsageError(f"gateway loop {' -> '.join((*chain, hop.name))}: none of them can ever be reached")
        if len(chain) > MAX_GATEWAY_HOPS:
            raise UsageError(f"gateway chain {' -> '.join(chain[:4])} -> ... is longer than {MAX_GATEWAY_HOPS} hops")
        gateway = build_connection(hop, defaults, keys, config, config_hosts, chain)
    key_problem = None
    if entry.ssh_key:
        problem = key_file_problem(entry.ssh_key)
        if problem is not None:
            key_problem = KeyFileError(f"ssh_key {entry.ssh_key}: {problem}")
    make = FleetConnection if warm is None else partial(warm, entry)
    cxn = make(
        host=entry.host,
        user=entry.user,
        port=entry.port,
        config=config,
        gateway=gateway,
        connect_timeout=timeout,
        connect_kwargs=connect_kwargs_for(entry, timeout),
        key_problem=key_problem,
        label=entry.name,
    )
    keys.apply(cxn.client, cxn.host, cxn.port)
    return cxn


def open_fleet(run):
    """A connection for every entry of `run` (a `RunContext`), in order: the run's one opener.

    Every verb reaches its hosts through here. Each entry gets a connection
    of its own, even two entries naming one ``user@host:port`` (results are
    keyed by entry, never by `Connection`, whose equality is that address).
    They are built in the calling thread, before any worker starts: building
    one writes the shared Fabric config (its deadlines), which is not safe
    from several threads at once. A connection is only an object until it is
    opened. With ``persist`` they are `persist.WarmConnection`s, reached
    through the per-user process that keeps them (started here if need be;
    when it cannot be, the run says why and connects directly). An entry whose connection cannot even be built (a key file that
    is gone...) gets the exception instead, to become its report later; a
    config mistake (a gateway that names nothing) is a `UsageError` before
    any host is contacted.
    """
    freeze_startup_objects()
    defaults = run.fleet.defaults
    if defaults.host_key_policy == "off":
        say_once(run.notify, INSECURE_NOTICE)
    keys = HostKeyStore(defaults.host_key_policy, defaults.known_hosts)
    config = fabric_config(run.base_config)
    apply_deadlines(config, float(defaults.connect_timeout))
    warm = warm_connections(run, config) if run.persist_s > 0 else None
    connections = []
    for entry in run.entries:
        try:
            connections.append(build_connection(entry, defaults, keys, config, run.fleet.hosts, warm=warm))
        except UsageError:
            raise
        except Exception as exc:  # a host's failure is its report, never the run's crash
            connections.append(exc)
    return connections


#: Said on stderr by the first run that connects with host key checking off.
INSECURE_NOTICE = "host_key_policy is 'off': host keys are not checked (insecure)"


def say_once(notify, line):
    """`notify` `line` the first time this process asks, and never again.

    The insecure-policy notice belongs where hosts are about to be contacted,
    not where the config is read: a run that stops on a usage error first
    (exit 2) contacts nobody, and its one line on stderr is that error. A
    verb with several fan-outs (deploy's checks, batch's probe and tasks)
    still says it once.
    """
    if line not in _said:
        _said.add(line)
        notify(line)


_said = set()


def freeze_startup_objects():
    """Leave what the process made before its first connections out of every garbage collection (`gc.freeze`).

    The imports and the loaded config are a few hundred thousand objects that
    live as long as the process. Each SSH connection allocates enough to set
    the collector going, and its older generations walked all of them again
    and again: ~8% of the client's CPU in ``fab status`` to 256 hosts (perf;
    README, Performance). Frozen the first time only, so the cyclic garbage
    of one fan-out's closed connections is still collected before the next.
    """
    global _startup_frozen
    if not _startup_frozen:
        gc.freeze()
        _startup_frozen = True


_startup_frozen = False


def warm_connections(run, config):
    """A function making `persist.WarmConnection`s for `run`, or None (said why) when there is no process."""
    from . import persist  # only runs that keep connections pay for its import

    daemon, problem = persist.reach_daemon(run.persist_s, persist.answer_seconds(run.defaults.connect_timeout))
    if daemon is None:
        run.notify(f"persist: no warm-connection process ({problem}); connecting directly")
        return None

    def make(entry, **kwargs):
        spec = persist.connection_spec(entry, run.fleet.defaults, config, run.fleet.hosts)
        return persist.WarmConnection(daemon=daemon, spec=spec, **kwargs)

    return make


def gateway_entry(gateway, config_hosts):
    """The jump host: another host of the config by name, or ``user@host[:port]`` (named so in messages)."""
    named = next((h for h in config_hosts if h.name == gateway), None)
    if named is not None:
        return named
    if "@" not in gateway:
        raise UsageError(f"gateway {gateway!r} is neither a host name in the config nor user@host[:port]")
    return dataclasses.replace(parse_target(gateway, "gateway"), name=gateway)


#: paramiko's words for a private key file it cannot use (pkey.py): an ``auth-failed``, not an unreachable host.
KEY_FILE_SIGNS = ("private key file", "not a valid", "Invalid key", "Unable to parse key", "key file",
                  "encountered", "Unknown key type", "PEM")


def classify_failure(exc, connect_timeout):
    """(status, message) for an exception raised while talking to a host."""
    status, message = _classify(exc, connect_timeout)
    return status, one_line(message, 500)


def _classify(exc, connect_timeout):
    if isinstance(exc, GatewayFailure):
        return gateway_failure(exc, connect_timeout)
    if isinstance(exc, KeyFileError):
        return Status.AUTH_FAILED, str(exc)
    if isinstance(exc, ConnectFailed):
        return exc.status, str(exc)
    if isinstance(exc, paramiko.BadHostKeyException):
        return Status.HOSTKEY_REJECTED, (
            f"host key CHANGED for {exc.hostname} (got {exc.key.get_fingerprint().hex()}): "
            "refusing to connect; if the host was reinstalled, remove its old line from known_hosts"
        )
    if isinstance(exc, HostKeyRejected):
        return Status.HOSTKEY_REJECTED, str(exc)
    if isinstance(exc, paramiko.AuthenticationException):
        if "Authentication timeout" in str(exc):
            return Status.UNREACHABLE, f"authentication did not finish within {connect_timeout:g}s"
        return Status.AUTH_FAILED, f"authentication failed: {exc}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        if type(exc) in (socket.timeout, TimeoutError):
            return Status.UNREACHABLE, f"no answer within {connect_timeout:g}s"
        return getattr(exc, "status", Status.UNREACHABLE), str(exc)  # deadlines.HostStalled and the like: named
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return Status.UNREACHABLE, f"connection refused ({exc.strerror or exc})"
    if isinstance(exc, EOFError):
        return Status.UNREACHABLE, "the host closed the connection" + (f" ({exc})" if str(exc) else "")
    if isinstance(exc, OSError):
        return Status.UNREACHABLE, f"{type(exc).__name__}: {exc}"
    if isinstance(exc, paramiko.SSHException):
        text = str(exc)
        if "Timeout opening channel" in text:
            return Status.UNREACHABLE, f"session not opened within {session_open_seconds(connect_timeout):g}s"
        # A listener that accepts but never speaks ends either in a banner
        # timeout or, when the handshake wait expires first, "No existing session".
        if any(sign in text for sign in ("banner", "No existing session", "Negotiation")):
            return Status.UNREACHABLE, f"no SSH handshake within {connect_timeout:g}s (is it an SSH server?)"
        if "No authentication methods available" in text:
            return Status.AUTH_FAILED, "no SSH key to offer: set ssh_key, use ~/.ssh/config or an agent, or pass fab -i KEY"
        if any(sign in text for sign in KEY_FILE_SIGNS):
            return Status.AUTH_FAILED, f"the private key cannot be used: {text}"
        return Status.UNREACHABLE, f"SSH error: {text}"
    return Status.FAILED, f"{type(exc).__name__}: {exc}"


def gateway_failure(exc, connect_timeout):
    """A failure on the way through a gateway: the gateway's own status, its message prefixed with it."""
    cause = exc.cause
    if isinstance(cause, paramiko.ChannelException):
        return Status.UNREACHABLE, f"via gateway {exc.gateway}: it could not connect onwards ({cause.text or cause})"
    if isinstance(cause, paramiko.SSHException) and "Timeout opening channel" in str(cause):
        return Status.UNREACHABLE, (f"via gateway {exc.gateway}: it did not open the forwarding channel "
                               f"within {connect_timeout:g}s")
    status, message = _classify(cause, connect_timeout)
    return status, f"via gateway {exc.gateway}: {message}"


def failure_report(entry, exc, started, connect_timeout):
    """The `HostReport` of a host whose work raised `exc` (a failure named by `classify_failure`)."""
    status, message = classify_failure(exc, connect_timeout)
    return HostReport(entry.name, entry.address, status, time.monotonic() - started, message)


def close_quietly(cxn):
    """Close a connection (and its gateway) without letting a dead socket raise."""
    try:
        cxn.close()
    except Exception:
        pass
