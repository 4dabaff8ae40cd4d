"""A known_hosts file, indexed by host name: looking a host up reads only the lines that name it.

paramiko's `HostKeys.lookup` walks every line for each host, and for a hashed
name (``|1|salt|hash``, what ``HashKnownHosts yes`` writes: Debian's and
Ubuntu's default) it computes the name's HMAC and compares it byte by byte in
Python, ~14 us a line. A fleet's known_hosts grows with the fleet, so that cost
grew with the square of it: with 512 hashed lines, 7 ms of client CPU a host,
more than the host's whole SSH connection (README, Performance). Here a plain
name is a dict lookup and a hashed one an HMAC computed in C and compared in
constant time, and a line's key is parsed only once a host we look up matches
it. What a lookup returns is what paramiko's would for the same file: the
matching lines are handed to paramiko's own lookup.
"""

import base64
import binascii
import hashlib
import hmac
import re

import paramiko

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
