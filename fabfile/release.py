"""Which PicoClaw binary a host gets: GitHub release, asset per arch, local cache.

A run resolves the release once (one GitHub API request), then fetches each
asset it needs once, when the first host of that arch asks for it: hosts of
one arch wait for the same download. Downloads are kept in a local cache
keyed by their sha256, so the next run of the same release downloads
nothing, and are checked against the release's ``checksums.txt`` (or the
digest GitHub publishes) before any host sees them.

``--from-file`` replaces all of this with one local binary or archive: no
network at all, for air-gapped fleets.
"""

import gzip
import hashlib
import io
import os
import re
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from .errors import UsageError

#: How long to wait for GitHub: connect, then between bytes.
HTTP_TIMEOUT = (15, 60)
BINARY_NAME = "picoclaw"

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
CHECKSUMS_NAME = re.compile(r"(^|[_.-])checksums\.txt$|^sha256sums(\.txt)?$", re.I)


class ReleaseError(UsageError):
    """The release cannot be resolved at all: one line, exit 2, before any host is contacted."""


class AssetProblem(Exception):
    """A host's binary cannot be had; `status` names why (``no-asset``, ``checksum-mismatch``...)."""

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
        """The ``checksums.txt`` asset, or None when the release has none."""
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


# ---- resolving the release -------------------------------------------------


def github_session():
    """A requests session that speaks GitHub's REST API (and reuses its connections)."""
    import requests  # imported here: slow to import, and `fab --list` never needs it

    session = requests.Session()
    session.headers.update(
        {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "picoclaw-fleet",
        }
    )
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
    """GET one GitHub API URL; an unreachable API is a `ReleaseError`."""
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return session.get(url, headers=headers, timeout=HTTP_TIMEOUT)
    except requests.RequestException as exc:
        raise ReleaseError(f"cannot reach the GitHub API at {url}: {type(exc).__name__}; use --from-file offline") from None


def asset_from_json(item):
    """An `Asset` from one entry of a release's ``assets`` list."""
    digest = item.get("digest") or ""
    return Asset(
        name=item["name"],
        url=item["browser_download_url"],
        size=item.get("size"),
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
    """GitHub's own ``message`` from an error body, else the HTTP reason."""
    try:
        return str(response.json().get("message") or response.reason or "")
    except (ValueError, AttributeError):
        return response.reason or ""


def reset_note(response):
    """`` (resets at 14:05:09, in 12 min)`` from ``X-RateLimit-Reset``, or nothing."""
    reset = response.headers.get("X-RateLimit-Reset", "")
    if not reset.isdigit():
        return ""
    minutes = max(0, round((int(reset) - time.time()) / 60))
    return f" (resets at {time.strftime('%H:%M:%S', time.localtime(int(reset)))}, in {minutes} min)"


def token_hint(response):
    """Suggest GITHUB_TOKEN when the request went without one."""
    sent = response.request is not None and "Authorization" in response.request.headers
    return "" if sent else "; set GITHUB_TOKEN to raise the limit"


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
        raise AssetProblem("no-asset", f"{release.repo} {release.tag} has no Linux {arch} build (assets: {seen})")
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
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            member = next(
                (m for m in archive.getmembers() if m.isfile() and m.name.rsplit("/", 1)[-1] == BINARY_NAME), None
            )
            if member is None:
                names = ", ".join(m.name for m in archive.getmembers())
                raise AssetProblem("bad-asset", f"{source} holds no '{BINARY_NAME}' file (it has: {names})")
            return archive.extractfile(member).read()
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, OSError) as exc:
        raise AssetProblem("bad-asset", f"{source} is not a readable .tar.gz: {exc}") from None


def binary_from_file(path):
    """The `Binary` for ``--from-file``: a raw executable or a .tar.gz holding ``picoclaw``."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--from-file {path}: {exc.strerror or exc}") from None
    try:
        binary = extract_binary(data, str(path))
    except AssetProblem as problem:
        raise UsageError(f"--from-file: {problem}") from None
    if not binary:
        raise UsageError(f"--from-file {path}: the binary is empty")
    return Binary(data=binary, sha256=sha256_hex(binary), source=str(path))


# ---- the local download cache --------------------------------------------------


def cache_dir(environ=None):
    """``$XDG_CACHE_HOME/picoclaw-fleet``, else ``~/.cache/picoclaw-fleet``."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "picoclaw-fleet"


class DownloadCache:
    """Downloaded assets on local disk, each stored under its own sha256.

    An asset whose expected digest is known (checksums.txt, GitHub's digest)
    is found by that digest; otherwise by its URL, size and upload time,
    which GitHub changes when an asset is replaced. Entries are written to a
    temporary name and renamed, so concurrent runs never see half a file.
    """

    def __init__(self, root):
        self.root = Path(root)

    def _blob(self, digest):
        return self.root / "sha256" / digest

    def _index(self, asset):
        key = sha256_hex(f"{asset.url}\n{asset.size}\n{asset.updated_at}".encode())
        return self.root / "by-url" / key

    def lookup(self, asset, expected=None):
        """The cached bytes of `asset`, or None; a corrupted entry counts as absent."""
        digest = expected
        if digest is None:
            try:
                digest = self._index(asset).read_text().strip()
            except OSError:
                return None
        try:
            data = self._blob(digest).read_bytes()
        except OSError:
            return None
        return data if sha256_hex(data) == digest else None

    def store(self, asset, data):
        """Keep `data` (the bytes of `asset`); a cache that cannot be written is skipped."""
        digest = sha256_hex(data)
        try:
            atomic_write(self._blob(digest), data)
            atomic_write(self._index(asset), digest.encode())
        except OSError:
            pass  # a read-only or full cache costs a re-download next run, nothing more


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

    def _write(self, text):
        with self._lock:
            self.stream.write(text)
            self.stream.flush()


def download(session, asset, what="download"):
    """The bytes at `asset.url`; `AssetProblem` ``download-failed`` on any error."""
    import requests

    progress = Progress(asset.name, asset.size)
    chunks = []
    try:
        with session.get(asset.url, stream=True, timeout=HTTP_TIMEOUT, headers={"Accept": "application/octet-stream"}) as response:
            if response.status_code != 200:
                raise AssetProblem("download-failed", f"cannot {what} {asset.name}: HTTP {response.status_code} from {asset.url}")
            for chunk in response.iter_content(65536):
                chunks.append(chunk)
                progress.advance(len(chunk))
    except requests.RequestException as exc:
        raise AssetProblem("download-failed", f"cannot {what} {asset.name}: {type(exc).__name__}: {exc}") from None
    progress.finish()
    return b"".join(chunks)


class ReleaseBinaries:
    """Per run: the PicoClaw binary for each arch, fetched once and shared by every host.

    Thread-safe: the first host of an arch downloads, verifies and extracts;
    the others of that arch wait for it and get the same `Binary` (or the
    same `AssetProblem`, so a bad checksum fails every host of that arch with
    one clear message, after one download).
    """

    def __init__(self, release, session, cache):
        self.release, self.session, self.cache = release, session, cache
        self._lock = threading.Lock()
        self._arch_locks = {}
        self._results = {}
        self._checksums = None

    def describe(self):
        """What the run installs, for the report: repository and tag."""
        return {"repo": self.release.repo, "tag": self.release.tag, "version": self.release.version}

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
        data = self.cache.lookup(asset, expected)
        if data is None:
            data = download(self.session, asset)
            if expected is not None and sha256_hex(data) != expected:
                raise AssetProblem(
                    "checksum-mismatch",
                    f"{asset.name} from {self.release.repo} {self.release.tag} does not match its published "
                    f"sha256 (expected {expected}, downloaded {sha256_hex(data)}): not installed",
                )
            self.cache.store(asset, data)
        binary = extract_binary(data, asset.name)
        return Binary(data=binary, sha256=sha256_hex(binary), source=asset.name)

    def expected_digest(self, asset):
        """The sha256 `asset` must have: from checksums.txt, else GitHub's digest, else None."""
        sums = self.checksums()
        if sums is None:
            return asset.digest
        if asset.name not in sums:
            raise AssetProblem(
                "checksum-mismatch", f"{self.release.checksums.name} of {self.release.tag} lists no sha256 for {asset.name}"
            )
        return sums[asset.name]

    def checksums(self):
        """``{name: sha256}`` from the release's checksums file (fetched once), or None."""
        with self._lock:
            if self._checksums is None and self.release.checksums is not None:
                text = download(self.session, self.release.checksums, "fetch").decode("utf-8", "replace")
                self._checksums = parse_checksums(text)
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
    """Resolve the release named by the config (and `--version`): the run's `ReleaseBinaries`."""
    environ = os.environ if environ is None else environ
    session = github_session()
    release = resolve_release(defaults.github_api, defaults.release_repo, tag, environ.get("GITHUB_TOKEN"), session)
    return ReleaseBinaries(release, session, DownloadCache(cache_dir(environ)))
