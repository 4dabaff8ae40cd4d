"""SSH connections to fleet hosts: host-key policy, bounded fan-out, failure names.

Every verb reaches its hosts through `fan_out`, which builds one Fabric
`Connection` per host, runs the verb's per-host function over a
`BoundedThreadingGroup`, and turns whatever went wrong into a status a
sysadmin can act on (`unreachable`, `auth-failed`, `hostkey-rejected`, ...).
"""

import fcntl
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
from fabric import Config, Connection, ThreadingGroup
from fabric.exceptions import GroupException
from fabric.group import GroupResult

from .errors import UsageError
from .report import HostReport

_KNOWN_HOSTS_LOCK = threading.Lock()


class HostKeyRejected(paramiko.SSHException):
    """The host's key is unknown and the policy says not to trust it."""


class StrictPolicy(paramiko.MissingHostKeyPolicy):
    """``strict``: an unknown host key is refused, like ``StrictHostKeyChecking yes``."""

    def missing_host_key(self, client, hostname, key):
        raise HostKeyRejected(f"host key for {hostname} is not in known_hosts (host_key_policy is strict)")


class AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """``accept-new``: trust an unknown key once and record it, like OpenSSH's ``accept-new``.

    Paramiko's AutoAddPolicy rewrites the whole file from one client's view,
    which loses entries when many hosts are added at once; this appends one
    line under a lock instead. A *changed* key never reaches this policy:
    paramiko raises BadHostKeyException for it first.
    """

    def __init__(self, known_hosts):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        append_known_host(self.known_hosts, hostname, key)


class TrustAllPolicy(paramiko.MissingHostKeyPolicy):
    """``off``: accept any key and record nothing (insecure; the task says so)."""

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)


def append_known_host(path, hostname, key):
    """Append one known_hosts line, safe against other threads and processes.

    Two fleet entries may share one address (aliases, or many users on one
    box): the first records the key and the others find the line already
    there, so the file never grows duplicates.
    """
    line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _KNOWN_HOSTS_LOCK, open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        if line not in handle.readlines():
            handle.write(line)


class HostKeyStore:
    """The known_hosts file, parsed once per run and shared by every connection."""

    def __init__(self, policy, known_hosts):
        self.policy = policy
        self.path = Path(known_hosts).expanduser()
        self.keys = paramiko.HostKeys()
        if policy != "off" and self.path.exists():
            self.keys.load(str(self.path))

    def apply(self, client, host, port):
        """Give `client` what we know of `host:port` and the missing-key policy."""
        name = host if port in (None, 22) else f"[{host}]:{port}"
        for keytype, key in (self.keys.lookup(name) or {}).items():
            client.get_host_keys().add(name, keytype, key)
        client.set_missing_host_key_policy(self.missing_key_policy())

    def missing_key_policy(self):
        """The paramiko policy object for this store's policy name."""
        if self.policy == "strict":
            return StrictPolicy()
        if self.policy == "off":
            return TrustAllPolicy()
        return AcceptNewPolicy(self.path)


class BoundedThreadingGroup(ThreadingGroup):
    """A `ThreadingGroup` that works on at most `parallel` hosts at once.

    Fabric's ThreadingGroup starts one thread per host with no limit; 200
    boards would mean 200 simultaneous handshakes. This keeps the same
    `GroupResult` shape (connection -> result or exception).
    """

    parallel = 32

    @classmethod
    def bounded(cls, connections, parallel):
        """A group over `connections` with at most `parallel` at work."""
        group = cls.from_connections(connections)
        group.parallel = max(1, int(parallel))
        return group

    def map(self, work):
        """Run ``work(connection)`` per host; a `GroupResult` of results or exceptions."""
        results = GroupResult()
        with ThreadPoolExecutor(max_workers=min(self.parallel, max(1, len(self)))) as pool:
            futures = {cxn: pool.submit(work, cxn) for cxn in self}
        for cxn, future in futures.items():
            error = future.exception()
            results[cxn] = error if error is not None else future.result()
        return results

    def _do(self, method, *args, **kwargs):
        """Fabric's hook for run/sudo/put/get, with the same raise-on-failure contract."""
        results = self.map(lambda cxn: getattr(cxn, method)(*args, **kwargs))
        if results.failed:
            raise GroupException(results)
        return results


def fabric_config(base=None):
    """One Fabric config per run: it parses ~/.ssh/config once, not once per host."""
    return base if isinstance(base, Config) else Config()


def build_connection(entry, defaults, keys, config, config_hosts=()):
    """A Fabric `Connection` for `entry` honouring its port, key, gateway and ~/.ssh/config."""
    timeout = defaults.connect_timeout
    connect_kwargs = {"banner_timeout": timeout, "auth_timeout": timeout, "channel_timeout": timeout}
    if entry.ssh_key:
        connect_kwargs["key_filename"] = [os.path.expanduser(entry.ssh_key)]
        connect_kwargs["look_for_keys"] = False
    gateway = None
    if entry.gateway:
        gateway = build_connection(gateway_entry(entry.gateway, config_hosts), defaults, keys, config)
    cxn = Connection(
        host=entry.host,
        user=entry.user,
        port=entry.port,
        config=config,
        gateway=gateway,
        connect_timeout=int(timeout) or 1,
        connect_kwargs=connect_kwargs,
    )
    keys.apply(cxn.client, cxn.host, cxn.port)
    return cxn


def gateway_entry(gateway, config_hosts):
    """The jump host: another host of the config by name, or ``user@host[:port]``."""
    from .config import parse_target

    named = next((h for h in config_hosts if h.name == gateway), None)
    if named is not None:
        return named
    if "@" not in gateway:
        raise UsageError(f"gateway {gateway!r} is neither a host name in the config nor user@host[:port]")
    return parse_target(gateway)


def classify_failure(exc, connect_timeout):
    """(status, message) for an exception raised while talking to a host."""
    if isinstance(exc, paramiko.BadHostKeyException):
        return "hostkey-rejected", (
            f"host key CHANGED for {exc.hostname} (got {exc.key.get_fingerprint().hex()}): "
            "refusing to connect; if the host was reinstalled, remove its old line from known_hosts"
        )
    if isinstance(exc, HostKeyRejected):
        return "hostkey-rejected", str(exc)
    if isinstance(exc, paramiko.AuthenticationException):
        return "auth-failed", f"authentication failed: {exc}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "unreachable", f"no answer within {connect_timeout:g}s"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return "unreachable", f"connection refused ({exc.strerror or exc})"
    if isinstance(exc, (OSError, EOFError)):
        return "unreachable", f"{type(exc).__name__}: {exc}"
    if isinstance(exc, paramiko.SSHException):
        text = str(exc)
        # A listener that accepts but never speaks ends either in a banner
        # timeout or, when the handshake wait expires first, "No existing session".
        if any(sign in text for sign in ("banner", "No existing session", "Negotiation failed")):
            return "unreachable", f"no SSH handshake within {connect_timeout:g}s (is it an SSH server?)"
        if "No authentication methods available" in text:
            return "auth-failed", "no SSH key to offer: set ssh_key, use ~/.ssh/config or an agent, or pass fab -i KEY"
        return "unreachable", f"SSH error: {text}"
    return "failed", f"{type(exc).__name__}: {exc}"


def failure_report(entry, exc, started, connect_timeout):
    """The `HostReport` of a host whose work raised `exc` (a failure named by `classify_failure`)."""
    status, message = classify_failure(exc, connect_timeout)
    return HostReport(entry.name, entry.address, status, time.monotonic() - started, message)


def fan_out(entries, work, defaults, parallel=None, base_config=None, config_hosts=()):
    """Run ``work(connection, entry) -> HostReport`` on every host, in parallel.

    Returns the reports in the order of `entries`. A host that cannot be
    reached, authenticated or trusted becomes a report with that status; it
    never stops or delays the others beyond the connect timeout. Connections
    are closed before returning.
    """
    keys = HostKeyStore(defaults.host_key_policy, defaults.known_hosts)
    config = fabric_config(base_config)
    connections = [build_connection(e, defaults, keys, config, config_hosts) for e in entries]
    by_connection = dict(zip(connections, entries))

    def guarded(cxn):
        entry, started = by_connection[cxn], time.monotonic()
        try:
            return work(cxn, entry)
        except Exception as exc:  # a host's failure is its report, never the run's crash
            return failure_report(entry, exc, started, defaults.connect_timeout)
        finally:
            close_quietly(cxn)

    group = BoundedThreadingGroup.bounded(connections, parallel or defaults.parallel)
    results = group.map(guarded)
    return [results[cxn] for cxn in connections]


def close_quietly(cxn):
    """Close a connection (and its gateway) without letting a dead socket raise."""
    try:
        cxn.close()
    except Exception:
        pass
