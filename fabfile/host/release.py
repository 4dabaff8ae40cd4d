"""Which PicoClaw binary a host gets: GitHub release, asset per arch, local cache.

A run resolves the release once (one GitHub API request), then fetches each
asset it needs once, when the first host of that arch asks for it: hosts of
one arch wait for the same download. Downloads stream into a local cache
keyed by their sha256, so the next run of the same release downloads
nothing, and are checked against the release's checksum file (or the digest
GitHub publishes) before any host sees them. A release that publishes
neither is not installed unless the run allows it (``--allow-unverified``).

Every request to GitHub has a total deadline and a byte cap, not only
per-read timeouts: a server that trickles a byte every few seconds, or
sends more than it declared, fails that request instead of holding the
deploy (see the constants below).

``--from-file`` replaces all of this with one local binary or archive: no
network at all, for air-gapped fleets.
"""

import functools
import gzip
import hashlib
import io
import json
import os
import re
import socket
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urljoin

from ..core.cache import cache_dir
from ..core.status import Status
from ..core.errors import UsageError

KiB, MiB = 1024, 1024 * 1024

#: Per step of any request to GitHub: connect, then the longest silence between two reads.
#: These alone cannot stop a server that trickles; the deadlines below can.
HTTP_TIMEOUT = (15, 60)
#: Total time for one releases-API request (connect, redirects, headers and JSON together).
#: GitHub answers in well under a second; a minute covers a slow link and a busy proxy.
API_DEADLINE = 60.0
#: The most an API answer may hold. A release's JSON is tens of KiB, a few hundred with long
#: notes and many assets; more than this is not GitHub.
API_MAX_BYTES = 4 * MiB
#: Total time for fetching a release's checksum file, and the most it may hold (goreleaser's
#: lists one ~100-byte line per asset).
CHECKSUMS_DEADLINE = 60.0
CHECKSUMS_MAX_BYTES = 1 * MiB
#: An asset's total deadline is this floor (connect, GitHub's redirect to its CDN, first
#: bytes) plus its declared size at ASSET_MIN_RATE: upstream's x86_64 archive (11.4 MB) gets
#: 60 s + 87 s. A link slower than 1 Mbit/s for the whole download counts as stalled.
ASSET_DEADLINE_FLOOR = 60.0
ASSET_MIN_RATE = 128 * KiB  # bytes per second
#: The most an asset may hold when the API declares no size (GitHub always does: then the
#: declared size is the cap, and a longer stream is cut). Also the most a binary extracted
#: from an archive may hold, as it is read into memory to be uploaded.
ASSET_MAX_BYTES = 512 * MiB
#: Redirects followed per request (GitHub sends asset downloads to its CDN: one).
MAX_REDIRECTS = 5
CHUNK = 64 * KiB

BINARY_NAME = "picoclaw"
GZIP_MAGIC = b"\x1f\x8b"
#: What `ReleaseBinaries.describe` says under "verification" when nothing could be checked.
UNVERIFIED_ALLOWED = "unverified (--allow-unverified)"
UNVERIFIED_REFUSED = "none: refused (no checksum file, no digest)"

#: The words an asset name may use for each of our arch names (``facts.normalize_arch``).
ARCH_WORDS = {
    "amd64": ("amd64", "x86_64", "x86-64", "x64"),
    "arm64": ("arm64", "aarch64"),
    "armv7": ("armv7", "armv7l", "armhf"),
    "armv6": ("armv6", "armv6l"),
    "riscv64": ("riscv64",),
    "loong64": ("loong64", "loongarch64"),
    "mipsle": ("mipsle", "mipsel"),
    "s390x": ("s390x",),
}
OTHER_SYSTEMS = re.compile(r"(darwin|macos|osx|windows|win64|win32|freebsd|netbsd|openbsd|android)", re.I)
NOT_BINARIES = re.compile(
    r"\.(txt|sha256|sha512|sig|asc|pem|sbom|json|deb|rpm|apk|zip|msi|pkg|dmg|md)$|checksums|sha256sums", re.I
)
#: ``checksums.txt``, goreleaser's ``picoclaw_<version>_checksums.txt``, ``SHA256SUMS``.
CHECKSUMS_NAME = re.compile(r"(^|[_.-])checksums\.txt$|^sha256sums(\.txt)?$", re.I)


class ReleaseError(UsageError):
    """The release cannot be resolved at all: one line, exit 2, before any host is contacted."""


class AssetProblem(Exception):
    """A host's binary cannot be had; `status` names why (``no-asset``, ``checksum-mismatch``,
    ``unverified``, ``download-failed``, ``bad-asset``)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Asset:
    """One file attached to a release, as GitHub's API lists it."""

    name: str
    url: str
    size: int | None = None
    digest: str | None = None  # sha256 hex when GitHub publishes one
    updated_at: str | None = None


@dataclass(frozen=True)
class Release:
    """A resolved release: its repository, tag and assets."""

    repo: str
    tag: str
    assets: tuple

    @property
    def version(self):
        """The tag without its leading ``v``: ``v0.2.0`` -> ``0.2.0``."""
        return self.tag[1:] if self.tag[:1] in "vV" and self.tag[1:2].isdigit() else self.tag

    @property
    def checksums(self):
        """The checksum file asset (``checksums.txt``...), or None when the release has none."""
        return next((a for a in self.assets if CHECKSUMS_NAME.search(a.name)), None)


@dataclass(frozen=True)
class Binary:
    """The PicoClaw executable one or more hosts get, ready to upload."""

    data: bytes = field(repr=False)
    sha256: str
    source: str  # the asset name or local file it came from

    @property
    def size(self):
        return len(self.data)


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def amount(n):
    """``4 MiB``, ``512 KiB``, ``100 bytes``: a byte cap as people read it."""
    for unit, size in (("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def file_sha256(path):
    """The sha256 hex of a local file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1024 * KiB), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---- bounded HTTP: a total deadline and a byte cap per request ----------------------------


class FetchError(Exception):
    """One bounded GET failed: `kind` is ``deadline``, ``too-long``, ``redirects`` or ``network``."""

    def __init__(self, kind, message, received=0, error=None):
        super().__init__(message)
        self.kind, self.received, self.error = kind, received, error  # error: the exception's type name


_ACTIVE = threading.local()  # the `Deadline` of the request this thread is making, if any
_OWNERS = threading.Lock()  # guards which `Deadline` owns a connection (``_picoclaw_deadline``)


def _shut(sock):
    """Shut a socket down under whoever is blocked reading it (TLS included); never raises."""
    if sock is not None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: leaves TLS state alone
        except (OSError, TypeError, ValueError):
            pass  # already closed


class Deadline:
    """A total time limit on one HTTP request: connect, redirects, headers and body together.

    Per-read timeouts cannot stop a server that sends one byte every few
    seconds, and `requests` blocks inside reads of 64 KiB; so a watchdog
    thread shuts down the sockets of every connection the request used when
    the time is up, and whatever read is blocked on them returns at once.
    Connections register themselves (`_watched_connection`) while a deadline
    is active in their thread. A connection back in the pool belongs to no
    deadline, so one request's watchdog never cuts another's.
    """

    def __init__(self, seconds):
        self.seconds = seconds
        self.expired = False
        self._ends = time.monotonic() + seconds
        self._armed = False
        self._connections = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self):
        self._outer = getattr(_ACTIVE, "deadline", None)
        _ACTIVE.deadline = self
        self._ends = time.monotonic() + self.seconds
        self._armed = True
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self.disarm()
        _ACTIVE.deadline = self._outer

    def remaining(self):
        return max(0.0, self._ends - time.monotonic())

    def watch(self, connection):
        """Shut `connection` down when the time is up (at once if it already is)."""
        with _OWNERS:
            if not self._armed or connection is None:
                return
            connection._picoclaw_deadline = self
            if getattr(connection, "sock", None) is not None:
                connection._picoclaw_sock = connection.sock
            if self.expired:
                _shut(_socket_of(connection))
            elif connection not in self._connections:
                self._connections.append(connection)

    @staticmethod
    def release(connection):
        """`connection` goes back to the pool: no deadline may cut it any more."""
        with _OWNERS:
            if connection is not None:
                connection._picoclaw_deadline = None

    def disarm(self):
        """The request is over: never touch its connections again."""
        with _OWNERS:
            self._armed = False
            for connection in self._connections:
                if getattr(connection, "_picoclaw_deadline", None) is self:
                    connection._picoclaw_deadline = None
            self._connections.clear()
        self._timer.cancel()

    def _expire(self):
        with _OWNERS:
            if not self._armed:
                return
            self.expired = True
            for connection in self._connections:
                if getattr(connection, "_picoclaw_deadline", None) is self:
                    _shut(_socket_of(connection))


def _socket_of(connection):
    """The socket a connection reads from: its own, or the one it handed to its response.

    An answer with ``Connection: close`` makes http.client drop the
    connection's ``sock`` while the response goes on reading the socket
    through its file: without the socket noted when the request was made, a
    server saying "close" and then trickling would outlive the deadline. A
    socket noted and since closed has no descriptor left: shutting it is a no-op.
    """
    return getattr(connection, "sock", None) or getattr(connection, "_picoclaw_sock", None)


def _watched_connection(base):
    class Watched(base):
        """A urllib3 connection that puts itself under its thread's active `Deadline`."""

        def connect(self):
            deadline = getattr(_ACTIVE, "deadline", None)
            if deadline is not None:
                deadline.watch(self)
            super().connect()
            if deadline is not None:
                deadline.watch(self)  # the socket now exists: shut it at once if time ran out meanwhile

        def request(self, *args, **kwargs):
            deadline = getattr(_ACTIVE, "deadline", None)
            if deadline is not None:
                deadline.watch(self)  # a pooled connection reused by this request
            return super().request(*args, **kwargs)

    Watched.__name__ = Watched.__qualname__ = f"Watched{base.__name__}"
    return Watched


@functools.cache
def _watched_adapter_class():
    """A requests adapter whose connections obey `Deadline` (plain, TLS and HTTP(S) proxies).

    requests and urllib3 are imported when a release is first resolved, not
    at the top: dispatch imports this module for its automatic deploy but
    needs it only for a host without PicoClaw, and requests costs ~45 ms of
    start-up (``python -X importtime``), a tenth of a dispatch to a few hosts.
    """
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class WatchedHTTPPool(HTTPConnectionPool):
        ConnectionCls = _watched_connection(HTTPConnection)

        def _put_conn(self, conn):
            Deadline.release(conn)
            super()._put_conn(conn)

    class WatchedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = _watched_connection(HTTPSConnection)

        def _put_conn(self, conn):
            Deadline.release(conn)
            super()._put_conn(conn)

    pools = {"http": WatchedHTTPPool, "https": WatchedHTTPSPool}

    class WatchedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy, **proxy_kwargs):
            manager = super().proxy_manager_for(proxy, **proxy_kwargs)
            if not proxy.lower().startswith("socks"):  # SOCKS pools are their own; the body is still watched
                manager.pool_classes_by_scheme = pools
            return manager

    return WatchedAdapter


def _ensure_watched(session):
    if not getattr(session, "_picoclaw_watched", False):
        adapter = _watched_adapter_class()()
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session._picoclaw_watched = True


@dataclass
class Answer:
    """One HTTP answer, its body read whole (small) or streamed elsewhere (``body`` empty)."""

    status_code: int
    reason: str
    url: str
    headers: dict
    body: bytes
    authorized: bool  # the request carried an Authorization header

    def json(self):
        return json.loads(self.body)


def bounded_get(session, url, seconds, limit, headers=None, sink=None):
    """GET `url` within `seconds` in all and at most `limit` body bytes; an `Answer`.

    Redirects are followed (at most MAX_REDIRECTS, their bodies never read;
    an Authorization header is dropped when the host changes). With `sink`,
    a 200 answer's body goes to ``sink(chunk)`` as it arrives and is never
    held whole; any other answer's body is not read. Without it the body is
    read into ``Answer.body``. Raises `FetchError` when the deadline passes,
    the body exceeds `limit`, or the network fails.
    """
    import requests

    _ensure_watched(session)
    headers = dict(headers or {})
    received = 0
    deadline = Deadline(seconds)
    try:
        with deadline:
            for _ in range(MAX_REDIRECTS + 1):
                timeout = (max(0.001, min(HTTP_TIMEOUT[0], deadline.remaining())), HTTP_TIMEOUT[1])
                response = session.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=False)
                with response:
                    deadline.watch(getattr(response.raw, "connection", None))
                    location = response.headers.get("Location")
                    if response.is_redirect and location:
                        target = urljoin(response.url, location)
                        if "Authorization" in headers and session.should_strip_auth(response.url, target):
                            del headers["Authorization"]
                        url = target
                        continue
                    answer = Answer(response.status_code, response.reason or "", response.url,
                                    response.headers, b"", "Authorization" in headers)
                    if sink is not None and response.status_code != 200:
                        return answer
                    chunks = []
                    for chunk in response.iter_content(CHUNK):
                        received += len(chunk)
                        if received > limit:
                            raise FetchError("too-long", f"more than {limit} bytes", received)
                        if deadline.expired:
                            raise _missed(deadline, received)
                        if sink is None:
                            chunks.append(chunk)
                        else:
                            sink(chunk)
                    deadline.disarm()
                    if deadline.expired:  # it ran out as the last byte came: still too late
                        raise _missed(deadline, received)
                    answer.body = b"".join(chunks)
                    return answer
            raise FetchError("redirects", f"more than {MAX_REDIRECTS} redirects", received)
    except requests.RequestException as exc:
        if deadline.expired:
            raise _missed(deadline, received) from None
        raise FetchError("network", f"{type(exc).__name__}: {exc}", received, type(exc).__name__) from None


def _missed(deadline, received):
    return FetchError("deadline", f"no complete answer within the {deadline.seconds:g} s deadline", received)


# ---- resolving the release -------------------------------------------------


def github_session():
    """A requests session that speaks GitHub's REST API (and reuses its connections)."""
    import requests  # here, not at the top: see `_watched_adapter_class`

    session = requests.Session()
    session.headers.update(
        {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "picoclaw-fleet",
        }
    )
    _ensure_watched(session)
    return session


def release_url(api, repo, tag=None):
    """The API URL of the latest release, or of the release tagged `tag`."""
    base = f"{api.rstrip('/')}/repos/{repo}/releases"
    return f"{base}/tags/{quote(tag, safe='')}" if tag else f"{base}/latest"


def resolve_release(api, repo, tag=None, token=None, session=None):
    """The latest release of `repo` (or the one tagged `tag`); `ReleaseError` if GitHub says no.

    `token` (GITHUB_TOKEN) goes only into the Authorization header of this
    API request: never into a URL, so no message or log line can show it,
    and never to the asset downloads, which may be served by another host.
    A tag given without its ``v`` (``0.2.0``) is also tried as ``v0.2.0``.
    Each request has API_DEADLINE in all and at most API_MAX_BYTES.
    """
    session = session or github_session()
    response = api_get(session, release_url(api, repo, tag), token)
    if response.status_code == 404 and tag and not tag.startswith("v"):
        retry = api_get(session, release_url(api, repo, "v" + tag), token)
        if retry.status_code != 404:
            response, tag = retry, "v" + tag
    if response.status_code != 200:
        raise api_error(response, repo, tag)
    try:
        data = response.json()
        assets = tuple(asset_from_json(item) for item in data.get("assets", []))
        return Release(repo=repo, tag=data["tag_name"], assets=assets)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ReleaseError(f"{response.url} did not answer with a GitHub release (unexpected JSON)") from None


def api_get(session, url, token=None):
    """GET one GitHub API URL as an `Answer`; unreachable, too slow or too big is a `ReleaseError`."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return bounded_get(session, url, API_DEADLINE, API_MAX_BYTES, headers)
    except FetchError as exc:
        if exc.kind == "deadline":
            raise ReleaseError(
                f"the GitHub API at {url} sent no complete answer within its {API_DEADLINE:g} s deadline; "
                "use --from-file offline"
            ) from None
        if exc.kind == "too-long":
            raise ReleaseError(
                f"{url} answered with more than {amount(API_MAX_BYTES)}, the most a GitHub release is read to: "
                "not a GitHub release"
            ) from None
        if exc.kind == "redirects":
            raise ReleaseError(f"{url} redirected more than {MAX_REDIRECTS} times") from None
        raise ReleaseError(f"cannot reach the GitHub API at {url}: {exc.error}; use --from-file offline") from None


def asset_from_json(item):
    """An `Asset` from one entry of a release's ``assets`` list."""
    digest = item.get("digest") or ""
    size = item.get("size")
    return Asset(
        name=item["name"],
        url=item["browser_download_url"],
        size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
        digest=digest[len("sha256:") :].lower() if digest.startswith("sha256:") else None,
        updated_at=item.get("updated_at"),
    )


def api_error(response, repo, tag):
    """The one-line `ReleaseError` for a GitHub API answer other than 200."""
    message = github_message(response)
    status = response.status_code
    which = f"release {tag}" if tag else "latest release"
    if status == 404:
        hint = "check the tag" if tag else "does the repository publish releases?"
        return ReleaseError(f"{repo}: {which} not found ({response.url} answered 404; {hint})")
    if status in (403, 429) and (
        response.headers.get("X-RateLimit-Remaining") == "0" or "rate limit" in message.lower()
    ):
        return ReleaseError(f"GitHub API rate limit: {message}{reset_note(response)}{token_hint(response)}")
    if status == 401:
        return ReleaseError(f"GitHub rejected GITHUB_TOKEN: {message} (401)")
    return ReleaseError(f"GitHub API error for {repo} {which}: {status} {message}".rstrip())


def github_message(response):
    """GitHub's own ``message`` from an error body (on one line), else the HTTP reason."""
    try:
        message = str(response.json().get("message") or response.reason or "")
    except (ValueError, AttributeError):
        message = response.reason or ""
    return " ".join(message.split())[:500]


def reset_note(response):
    """`` (resets at 14:05:09, in 12 min)`` from ``X-RateLimit-Reset``, or nothing."""
    reset = response.headers.get("X-RateLimit-Reset", "")
    if not reset.isdigit():
        return ""
    minutes = max(0, round((int(reset) - time.time()) / 60))
    return f" (resets at {time.strftime('%H:%M:%S', time.localtime(int(reset)))}, in {minutes} min)"


def token_hint(response):
    """Suggest GITHUB_TOKEN when the request went without one."""
    return "" if response.authorized else "; set GITHUB_TOKEN to raise the limit"


# ---- choosing the asset for an arch ------------------------------------------


def pick_asset(release, arch):
    """The asset holding PicoClaw for `arch`; `AssetProblem` ``no-asset`` naming what is there.

    A goreleaser archive (``picoclaw_Linux_arm64.tar.gz``) is preferred over
    a raw binary whose name carries the arch (``picoclaw-linux-arm64``).
    Builds for other systems (Darwin, Windows...) are never picked.
    """
    candidates = [a for a in release.assets if names_arch(a.name, arch) and not OTHER_SYSTEMS.search(a.name)]
    archives = [a for a in candidates if is_tar_gz(a.name)]
    raw = [a for a in candidates if not is_tar_gz(a.name) and not NOT_BINARIES.search(a.name)]
    chosen = (archives or raw or [None])[0]
    if chosen is None:
        seen = ", ".join(a.name for a in release.assets) or "none"
        raise AssetProblem(Status.NO_ASSET, f"{release.repo} {release.tag} has no Linux {arch} build (assets: {seen})")
    return chosen


def names_arch(name, arch):
    """True when `name` carries one of `arch`'s words as a whole word."""
    return any(re.search(rf"(?<![a-z0-9]){re.escape(word)}(?![a-z0-9])", name.lower()) for word in ARCH_WORDS[arch])


def is_tar_gz(name):
    return name.lower().endswith((".tar.gz", ".tgz"))


def parse_checksums(text):
    """``{file name: sha256}`` from ``<sha256>  <file>`` lines (``*file`` binary mode too)."""
    sums = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            sums[parts[1].strip().lstrip("*")] = parts[0].lower()
    return sums


# ---- turning a download into a binary -----------------------------------------


def extract_binary(data, source):
    """The ``picoclaw`` executable from a .tar.gz (any directory), or `data` itself if it is no archive.

    Only that one member is read, into memory: nothing of the archive is
    written to disk, so a hostile member name cannot escape anywhere.
    """
    if data[:2] != GZIP_MAGIC:
        return data
    return _binary_from_archive(io.BytesIO(data), source)


def extract_binary_file(path, source):
    """`extract_binary` for a local file: an archive is read as a stream, only the binary into memory."""
    with open(path, "rb") as file:
        archive = file.read(2) == GZIP_MAGIC
        file.seek(0)
        return _binary_from_archive(file, source) if archive else file.read()


def _binary_from_archive(fileobj, source):
    try:
        with tarfile.open(fileobj=fileobj, mode="r:gz") as archive:
            members = archive.getmembers()
            member = next((m for m in members if m.isfile() and m.name.rsplit("/", 1)[-1] == BINARY_NAME), None)
            if member is None:
                names = ", ".join(m.name for m in members[:20]) + (", ..." if len(members) > 20 else "")
                raise AssetProblem(Status.BAD_ASSET, f"{source} holds no '{BINARY_NAME}' file (it has: {names})")
            if member.size > ASSET_MAX_BYTES:
                raise AssetProblem(Status.BAD_ASSET, f"{source}: its {member.name} is {member.size} bytes, more than "
                                                f"the {amount(ASSET_MAX_BYTES)} a binary may have")
            return archive.extractfile(member).read()
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, OSError) as exc:
        raise AssetProblem(Status.BAD_ASSET, f"{source} is not a readable .tar.gz: {exc}") from None


def binary_from_file(path):
    """The `Binary` for ``--from-file``: a raw executable or a .tar.gz holding ``picoclaw``."""
    path = Path(path).expanduser()
    try:
        binary = extract_binary_file(path, str(path))
    except OSError as exc:
        raise UsageError(f"--from-file {path}: {exc.strerror or exc}") from None
    except AssetProblem as problem:
        raise UsageError(f"--from-file: {problem}") from None
    if not binary:
        raise UsageError(f"--from-file {path}: the binary is empty")
    return Binary(data=binary, sha256=sha256_hex(binary), source=str(path))


# ---- the local download cache --------------------------------------------------


class DownloadCache:
    """Downloaded assets on local disk, each stored under its own sha256.

    An asset whose expected digest is known (checksums.txt, GitHub's digest)
    is found by that digest; otherwise by its URL, size and upload time,
    which GitHub changes when an asset is replaced. A download streams into
    a temporary file beside the entries (`incoming`) and is renamed into
    place once verified (`keep`), so concurrent runs never see half a file.
    """

    def __init__(self, root):
        self.root = Path(root)

    def _blob(self, digest):
        return self.root / "sha256" / digest

    def _index(self, asset):
        key = sha256_hex(f"{asset.url}\n{asset.size}\n{asset.updated_at}".encode())
        return self.root / "by-url" / key

    def lookup(self, asset, expected=None):
        """The path of `asset`'s cached file (its sha256 checked), or None; a corrupted entry counts as absent."""
        digest = expected
        if digest is None:
            try:
                digest = self._index(asset).read_text().strip()
            except OSError:
                return None
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            return None
        try:
            return self._blob(digest) if file_sha256(self._blob(digest)) == digest else None
        except OSError:
            return None

    def incoming(self):
        """A temporary file for one download (an `Incoming`), removed on exit unless kept."""
        return Incoming(self.root / "sha256")

    def keep(self, asset, incoming, digest):
        """Rename a verified download into the cache: its path there (its temporary one if the cache cannot be written)."""
        incoming.file.close()
        if not incoming.in_cache:
            return incoming.path
        try:
            os.replace(incoming.path, self._blob(digest))
        except OSError:
            return incoming.path
        incoming.path = None  # the cache's now
        try:
            atomic_write(self._index(asset), digest.encode())
        except OSError:
            pass  # found by its digest when one is known; else downloaded again next run
        return self._blob(digest)


class Incoming:
    """A download in progress: a temporary file in the cache directory.

    When the cache cannot be written, the file goes to the system's
    temporary directory instead: a read-only or full cache costs a
    re-download next run, nothing more.
    """

    def __init__(self, directory):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".partial-", dir=directory)
            self.in_cache = True
        except OSError:
            fd, name = tempfile.mkstemp(prefix="picoclaw-fleet-download-")
            self.in_cache = False
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()
        if self.path is not None:
            try:
                self.path.unlink()
            except OSError:
                pass


def atomic_write(path, data):
    """Write `data` to local `path` through a temporary name and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    temp.write_bytes(data)
    os.replace(temp, path)


# ---- downloading -------------------------------------------------------------


class Progress:
    """Download progress on stderr, only when stderr is a terminal (agents get no noise)."""

    _lock = threading.Lock()

    def __init__(self, name, total, stream=None):
        self.name, self.total, self.done = name, total or 0, 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._shown = -1

    def advance(self, n):
        self.done += n
        if not self.enabled:
            return
        percent = int(self.done * 100 / self.total) if self.total else 0
        if percent != self._shown:
            self._shown = percent
            self._write(f"\rdownloading {self.name}: {percent:3d}% ({self.done / 1e6:.1f} MB)")

    def finish(self):
        if self.enabled:
            self._write(f"\rdownloading {self.name}: done ({self.done / 1e6:.1f} MB)\n")

    def abandon(self):
        if self.enabled and self._shown >= 0:
            self._write(f"\rdownloading {self.name}: failed ({self.done / 1e6:.1f} MB)\n")

    def _write(self, text):
        with self._lock:
            self.stream.write(text)
            self.stream.flush()


def asset_deadline(size):
    """Seconds a download of `size` bytes may take in all: ASSET_DEADLINE_FLOOR plus `size` at
    ASSET_MIN_RATE (ASSET_MAX_BYTES when the size is unknown)."""
    return ASSET_DEADLINE_FLOOR + (ASSET_MAX_BYTES if size is None else size) / ASSET_MIN_RATE


def download(session, asset, file):
    """Stream `asset` into the open binary `file`, hashing as it goes; its sha256 hex.

    Never held whole in memory. At most its declared size (a longer stream
    is cut off there), else ASSET_MAX_BYTES; all within `asset_deadline`.
    `AssetProblem` ``download-failed`` on any error.
    """
    limit = ASSET_MAX_BYTES if asset.size is None else asset.size
    seconds = asset_deadline(asset.size)
    progress = Progress(asset.name, asset.size)
    digest = hashlib.sha256()

    def sink(chunk):
        file.write(chunk)
        digest.update(chunk)
        progress.advance(len(chunk))

    def failed(why):
        progress.abandon()
        return AssetProblem(Status.DOWNLOAD_FAILED, f"cannot download {asset.name}: {why}")

    try:
        answer = bounded_get(session, asset.url, seconds, limit, {"Accept": "application/octet-stream"}, sink)
    except FetchError as exc:
        if exc.kind == "too-long" and asset.size is not None:
            why = f"the stream is longer than the {asset.size} bytes the release declares: cut off there, not installed"
        elif exc.kind == "too-long":
            why = (f"the stream is longer than {amount(ASSET_MAX_BYTES)}, the most an asset of undeclared size "
                   "may have: cut off there, not installed")
        elif exc.kind == "deadline":
            of = "" if asset.size is None else f" of {asset.size}"
            why = (f"not complete within its {seconds:.0f} s deadline ({exc.received}{of} bytes saved; "
                   f"{ASSET_DEADLINE_FLOOR:g} s plus the size at {ASSET_MIN_RATE // KiB} KiB/s)")
        else:
            why = str(exc)
        raise failed(why) from None
    except OSError as exc:
        raise failed(f"cannot write it to {getattr(file, 'name', 'disk')}: {exc.strerror or exc}") from None
    if answer.status_code != 200:
        raise failed(f"HTTP {answer.status_code} from {asset.url}")
    if asset.size is not None and progress.done != asset.size:
        raise failed(f"the stream ended after {progress.done} of the {asset.size} bytes the release declares")
    progress.finish()
    return digest.hexdigest()


def fetch_checksums(session, asset):
    """``{name: sha256}`` from a release's checksum file; `AssetProblem` ``download-failed`` if it cannot be had."""
    try:
        answer = bounded_get(session, asset.url, CHECKSUMS_DEADLINE, CHECKSUMS_MAX_BYTES,
                             {"Accept": "application/octet-stream"})
    except FetchError as exc:
        why = {
            "deadline": f"not complete within its {CHECKSUMS_DEADLINE:g} s deadline",
            "too-long": f"larger than {amount(CHECKSUMS_MAX_BYTES)}, more than any checksum file holds",
        }.get(exc.kind, str(exc))
        raise AssetProblem(Status.DOWNLOAD_FAILED, f"cannot fetch {asset.name}: {why}") from None
    if answer.status_code != 200:
        raise AssetProblem(Status.DOWNLOAD_FAILED, f"cannot fetch {asset.name}: HTTP {answer.status_code} from {asset.url}")
    return parse_checksums(answer.body.decode("utf-8", "replace"))


def installable(asset):
    """True for an asset `pick_asset` could choose for some arch (a Linux build, not a side file)."""
    return (not OTHER_SYSTEMS.search(asset.name) and not NOT_BINARIES.search(asset.name)
            and any(names_arch(asset.name, arch) for arch in ARCH_WORDS))


class ReleaseBinaries:
    """Per run: the PicoClaw binary for each arch, fetched once and shared by every host.

    Thread-safe: the first host of an arch downloads, verifies and extracts;
    the others of that arch wait for it and get the same `Binary` (or the
    same `AssetProblem`, so a bad checksum fails every host of that arch with
    one clear message, after one download).

    Verification is not optional: an asset with neither a checksum file
    entry nor a GitHub digest fails ``unverified`` before it is downloaded,
    unless `allow_unverified` (``deploy --allow-unverified``).
    """

    def __init__(self, release, session, cache, allow_unverified=False):
        self.release, self.session, self.cache = release, session, cache
        self.allow_unverified = allow_unverified
        self._lock = threading.Lock()
        self._arch_locks = {}
        self._results = {}
        self._checksums_lock = threading.Lock()
        self._checksums = None  # {name: sha256}, or the AssetProblem fetching them raised

    def describe(self):
        """What the run installs, for the report: repository, tag and how it is verified."""
        return {"repo": self.release.repo, "tag": self.release.tag, "version": self.release.version,
                "verification": self.verification()}

    def verification(self):
        """``checksums`` (the release's checksum file), ``digest`` (GitHub's, on every Linux build),
        else UNVERIFIED_ALLOWED with `allow_unverified` and UNVERIFIED_REFUSED without."""
        if self.release.checksums is not None:
            return "checksums"
        builds = [a for a in self.release.assets if installable(a)] or list(self.release.assets)
        if builds and all(a.digest for a in builds):
            return "digest"
        return UNVERIFIED_ALLOWED if self.allow_unverified else UNVERIFIED_REFUSED

    def for_arch(self, arch):
        """The `Binary` for `arch`, or raise its `AssetProblem`."""
        with self._lock:
            arch_lock = self._arch_locks.setdefault(arch, threading.Lock())
        with arch_lock:
            if arch not in self._results:
                try:
                    self._results[arch] = self._fetch(arch)
                except AssetProblem as problem:
                    self._results[arch] = problem
        result = self._results[arch]
        if isinstance(result, AssetProblem):
            raise result
        return result

    def _fetch(self, arch):
        asset = pick_asset(self.release, arch)
        expected = self.expected_digest(asset)
        cached = self.cache.lookup(asset, expected)
        if cached is not None:
            return self._binary(cached, asset)
        with self.cache.incoming() as incoming:
            digest = download(self.session, asset, incoming.file)
            if expected is not None and digest != expected:
                raise AssetProblem(
                    Status.CHECKSUM_MISMATCH,
                    f"{asset.name} from {self.release.repo} {self.release.tag} does not match its published "
                    f"sha256 (expected {expected}, downloaded {digest}): not installed",
                )
            return self._binary(self.cache.keep(asset, incoming, digest), asset)

    @staticmethod
    def _binary(path, asset):
        try:
            binary = extract_binary_file(path, asset.name)
        except OSError as exc:
            raise AssetProblem(Status.DOWNLOAD_FAILED, f"cannot read the download of {asset.name}: {exc}") from None
        return Binary(data=binary, sha256=sha256_hex(binary), source=asset.name)

    def expected_digest(self, asset):
        """The sha256 `asset` must have: from the checksum file, else GitHub's digest.

        None only with `allow_unverified` when the release publishes neither;
        without it that is `AssetProblem` ``unverified``.
        """
        sums = self.checksums()
        if sums is not None:
            if asset.name not in sums:
                raise AssetProblem(
                    Status.CHECKSUM_MISMATCH, f"{self.release.checksums.name} of {self.release.tag} lists no sha256 for {asset.name}"
                )
            return sums[asset.name]
        if asset.digest is not None or self.allow_unverified:
            return asset.digest
        raise AssetProblem(
            Status.UNVERIFIED,
            f"{self.release.repo} {self.release.tag} publishes no checksum file and no digest for {asset.name}, "
            "so it cannot be verified: not installed (--allow-unverified installs it anyway)",
        )

    def checksums(self):
        """``{name: sha256}`` from the release's checksum file (fetched once), or None when it has none."""
        with self._checksums_lock:
            if self._checksums is None and self.release.checksums is not None:
                try:
                    self._checksums = fetch_checksums(self.session, self.release.checksums)
                except AssetProblem as problem:
                    self._checksums = problem
            if isinstance(self._checksums, AssetProblem):
                raise self._checksums
            return self._checksums


class FileBinaries:
    """``--from-file``: the same local binary for every arch (the host proves it runs)."""

    def __init__(self, binary):
        self.binary = binary

    def describe(self):
        return {"from_file": self.binary.source, "sha256": self.binary.sha256}

    def for_arch(self, arch):
        return self.binary


def release_binaries(defaults, tag=None, environ=None, allow_unverified=False):
    """Resolve the release named by the config (and `--version`): the run's `ReleaseBinaries`.

    `allow_unverified` (``deploy --allow-unverified``) installs a release that
    publishes no checksum file and no digest; ``describe()`` then says so.
    """
    environ = os.environ if environ is None else environ
    session = github_session()
    release = resolve_release(defaults.github_api, defaults.release_repo, tag, environ.get("GITHUB_TOKEN"), session)
    return ReleaseBinaries(release, session, DownloadCache(cache_dir(environ)), allow_unverified=allow_unverified)
