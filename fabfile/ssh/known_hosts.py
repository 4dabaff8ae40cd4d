"""Host keys: the known_hosts file looked up by name, the policy for a key it lacks, the run's store.

`HostKeyStore` is known_hosts as one run sees it, checked before any host is
contacted and shared by every connection; `StrictPolicy`, `AcceptNewPolicy`
and `TrustAllPolicy` are ``host_key_policy``'s three answers to a key it does
not hold (a changed key never reaches them: paramiko refuses it first).

`KnownHosts` reads the file indexed by host name, so that looking a host up
reads only the lines that name it. paramiko's `HostKeys.lookup` walks every
line for each host, and for a hashed name (``|1|salt|hash``, what
``HashKnownHosts yes`` writes: Debian's and Ubuntu's default) it computes the
name's HMAC and compares it byte by byte in Python, ~14 us a line. A fleet's
known_hosts grows with the fleet, so that cost grew with the square of it:
with 512 hashed lines, 7 ms of client CPU a host, more than the host's whole
SSH connection (README, Performance). Here a plain name is a dict lookup and a
hashed one an HMAC computed in C and compared in constant time, and a line's
key is parsed only once a host we look up matches it. What a lookup returns is
what paramiko's would for the same file: the matching lines are handed to
paramiko's own lookup.
"""

import base64
import binascii
import fcntl
import hashlib
import hmac
import os
import re
import stat
import threading
from pathlib import Path

import paramiko

from ..core.config import directory_problem, path_exists
from ..core.errors import UsageError

#: How a hashed name starts (OpenSSH's ``HASH_MAGIC``); the salt and hash follow, base64, ``|``-separated.
HASHED_PREFIX = "|1|"


def known_hosts_name(host, port):
    """How known_hosts names `host` at `port`: the bare host on port 22, else ``[host]:port``."""
    return host if port in (None, 22) else f"[{host}]:{port}"


class KnownHosts:
    """The lines of one known_hosts file, with the names each line gives, looked up by name."""

    def __init__(self, lines=()):
        """`lines`: ``(line number, text)`` pairs, comments and blank lines included (they are skipped)."""
        self._lines = []
        self._plain = {}
        self._hashed = []
        self._found = {}
        for number, text in lines:
            self._add(number, text.strip())

    @classmethod
    def read(cls, path):
        """The known_hosts file at `path` (raises OSError when it cannot be read).

        Bytes that are not UTF-8 are replaced, so such a line names no host
        we look up, where paramiko's own ``load`` stops at it; OpenSSH skips it.
        """
        data = path.read_bytes()
        return cls((number, raw.decode("utf-8", "replace")) for number, raw in enumerate(data.splitlines(), 1))

    def _add(self, number, text):
        """Index one line under its names, as paramiko's ``HostKeyEntry.from_line`` splits them."""
        if not text or text.startswith("#"):
            return
        fields = re.split(" |\t", text)
        if len(fields) < 3:
            return
        index = len(self._lines)
        self._lines.append((number, text))
        for name in fields[0].split(","):
            hashed = hashed_name(name)
            if hashed is not None:
                salt, digest = hashed
                self._hashed.append((hmac.new(salt, digestmod=hashlib.sha1), digest, index))
            elif not name.startswith(HASHED_PREFIX):
                self._plain.setdefault(name, []).append(index)

    def lookup(self, name):
        """paramiko's ``HostKeys.lookup(name)``: the keys known for `name` by type, or None.

        Remembered per name: the warm-connection process asks again for the
        same hosts, and keeps one `KnownHosts` while the file is unchanged.
        """
        if name not in self._found:
            self._found[name] = self._entries_for(name)
        keys = paramiko.HostKeys()
        keys._entries = list(self._found[name])
        return keys.lookup(name)

    def _entries_for(self, name):
        """The parsed entries of the lines that name `name`, in file order; a line paramiko cannot read is skipped."""
        indexes = set(self._plain.get(name, ()))
        if not name.startswith(HASHED_PREFIX):
            encoded = name.encode()
            indexes.update(index for keyed, digest, index in self._hashed
                           if hmac.compare_digest(name_hash(keyed, encoded), digest))
        entries = []
        for index in sorted(indexes):
            number, text = self._lines[index]
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(text, number)
            except Exception:  # noqa: BLE001 - a malformed line is skipped, whatever paramiko raises for it
                continue
            if entry is not None:
                entries.append(entry)
        return tuple(entries)


def name_hash(keyed, name):
    """The HMAC of `name` under `keyed`, an HMAC already keyed with a line's salt (copied: ~1 us, a new one ~1.5)."""
    copy = keyed.copy()
    copy.update(name)
    return copy.digest()


def hashed_name(name):
    """``(salt, hash)`` of a hashed known_hosts name, or None when `name` is not one paramiko can match.

    paramiko matches a hashed name by re-encoding the HMAC of the host name
    with the decoded salt and comparing the text, so only the canonical
    base64 of a 20-byte salt and a 20-byte SHA-1 can match; a salt of another
    length or bad base64 makes paramiko raise, where OpenSSH skips the line.
    """
    parts = name.split("|")
    if len(parts) != 4 or not name.startswith(HASHED_PREFIX):
        return None
    try:
        salt, digest = (base64.b64decode(part, validate=True) for part in parts[2:])
    except (binascii.Error, ValueError):
        return None
    size = hashlib.sha1().digest_size
    if len(salt) != size or len(digest) != size:
        return None
    if base64.b64encode(salt).decode() != parts[2] or base64.b64encode(digest).decode() != parts[3]:
        return None
    return salt, digest


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
        try:
            append_known_host(self.known_hosts, hostname, key)
        except OSError as exc:
            raise HostKeyRejected(f"cannot record the host key of {hostname} in {self.known_hosts} "
                                  f"({exc.strerror or exc}), and host_key_policy accept-new trusts only a recorded key") from None
        client.get_host_keys().add(hostname, key.get_name(), key)


class TrustAllPolicy(paramiko.MissingHostKeyPolicy):
    """``off``: accept any key and record nothing (insecure; the task says so)."""

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)


#: One append at a time in this process (flock orders processes; it does not order threads sharing a file).
_KNOWN_HOSTS_LOCK = threading.Lock()


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
    """The known_hosts file, parsed once per run and shared by every connection.

    Checked before any host is contacted, since it applies to every host: a
    known_hosts that is a directory or cannot be read is a `UsageError`, and
    so, under ``accept-new`` (which records new keys), is one that cannot be
    written. Lines that are not known_hosts lines are skipped, as OpenSSH does.
    """

    def __init__(self, policy, known_hosts, read=KnownHosts.read):
        """`read` reads the file (raising OSError when it cannot): the warm process passes one that
        keeps the file read while it is unchanged, so each connection it makes does not read it again."""
        self.policy = policy
        self.path = Path(known_hosts).expanduser()
        self.known = KnownHosts()
        if policy == "off":
            return
        problem = known_hosts_problem(self.path, must_write=policy == "accept-new")
        if problem is not None:
            raise UsageError(f"known_hosts {known_hosts}: {problem}")
        if self.path.is_file():
            self.known = read_known_hosts(self.path, read)

    def apply(self, client, host, port):
        """Give `client` what we know of `host:port` and the missing-key policy."""
        name = known_hosts_name(host, port)
        for keytype, key in (self.known.lookup(name) or {}).items():
            client.get_host_keys().add(name, keytype, key)
        client.set_missing_host_key_policy(self.missing_key_policy())

    def missing_key_policy(self):
        """The paramiko policy object for this store's policy name."""
        if self.policy == "strict":
            return StrictPolicy()
        if self.policy == "off":
            return TrustAllPolicy()
        return AcceptNewPolicy(self.path)


def known_hosts_problem(path, must_write):
    """Why `path` cannot serve as known_hosts (read, and written when `must_write`), or None."""
    if not path_exists(path):
        if not must_write:
            return None
        problem = directory_problem(path.parent)
        return None if problem is None else f"cannot be created ({problem}), and host_key_policy accept-new records new host keys in it"
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "is a directory (defaults.known_hosts names a file)"
    if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):  # /dev/null is a known_hosts that knows nobody
        return "is not a regular file"
    if not os.access(path, os.R_OK):
        return "cannot be read: permission denied"
    if must_write and not os.access(path, os.W_OK):
        return ("is read-only, and host_key_policy accept-new records new host keys in it "
                "(make it writable, or use host_key_policy strict)")
    return None


def read_known_hosts(path, read=KnownHosts.read):
    """The known_hosts file at `path`, indexed (`KnownHosts`, by `read`); one that cannot be read is a `UsageError`."""
    try:
        return read(path)
    except OSError as exc:
        raise UsageError(f"known_hosts {path}: cannot be read: {exc.strerror or exc}") from None
