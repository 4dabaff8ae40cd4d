"""A real HTTP server on 127.0.0.1 that plays GitHub's releases API and asset downloads.

Deploy talks to GitHub with `requests`; tests, the demo and the benchmark
point ``defaults.github_api`` here instead. It serves what deploy uses:

  GET /repos/{owner}/{repo}/releases/latest
  GET /repos/{owner}/{repo}/releases/tags/{tag}
  GET /download/{owner}/{repo}/{tag}/{asset}      (each asset's browser_download_url)
  GET /cdn/download/{owner}/{repo}/{tag}/{asset}  (where `redirect_downloads()` sends those)

Publish with `publish(repo, tag, assets)`; make the API fail with
`fail_api(...)` / `rate_limit(...)`; read `requests_log` to see what was asked
and with which headers (e.g. the Authorization bearer token). Stdlib only.

Fault modes for deadlines and byte caps: `trickle(after, every, which)` sends
a response's first bytes, then one byte every few seconds (`trickles` says
how far each got and whether the client hung up); ``publish(sizes=...)``
declares a size in the API other than what is served (an over-long stream);
a `Generated` asset is made on the fly, never held whole in memory (a large
download); ``publish(checksums=False)`` publishes no checksum file.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable
from urllib.parse import unquote

#: PicoClaw's GitHub repository: what the tests publish releases under (the product's default release_repo).
RELEASE_REPO = "sipeed/picoclaw"
CHUNK = 64 * 1024
#: What a client hanging up looks like to the server's writes.
HUNG_UP = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class Stopping(ConnectionAbortedError):
    """The server is stopping: a trickle or a generated stream ends early."""


class Generated:
    """An asset body made on the fly, chunk by chunk: served (and measured) without ever
    holding it whole, so a test can publish hundreds of MB.

    `chunks` returns a fresh iterable of bytes each call (once per download,
    once to measure length and sha256). `Generated.repeat(n)` is n bytes of a pattern.
    """

    def __init__(self, chunks: Callable[[], Iterable[bytes]]):
        self._chunks = chunks
        self._lock = threading.Lock()
        self._measured: tuple[int, str] | None = None

    @classmethod
    def repeat(cls, length: int, pattern: bytes = b"picoclaw-fleet large download test\n") -> "Generated":
        block = (pattern * (CHUNK // len(pattern) + 1))[:CHUNK]

        def chunks():
            left = length
            while left > 0:
                yield block[:min(left, CHUNK)]
                left -= CHUNK
        return cls(chunks)

    def chunks(self) -> Iterable[bytes]:
        return iter(self._chunks())

    def _measure(self) -> tuple[int, str]:
        with self._lock:
            if self._measured is None:
                digest, length = hashlib.sha256(), 0
                for chunk in self.chunks():
                    digest.update(chunk)
                    length += len(chunk)
                self._measured = (length, digest.hexdigest())
            return self._measured

    def __len__(self) -> int:
        return self._measure()[0]

    @property
    def sha256(self) -> str:
        return self._measure()[1]


def sha256_of(data) -> str:
    """The sha256 hex of an asset body: bytes or `Generated`."""
    return data.sha256 if isinstance(data, Generated) else hashlib.sha256(data).hexdigest()


@dataclass
class Trickle:
    """One response the server trickled (see `ReleaseServer.trickle`), and how far it got."""

    path: str
    sent: int = 0  # bytes written, status line and headers included
    done: bool = False  # the whole response was written
    hung_up: bool = False  # the client went away first
    ended: threading.Event = field(default_factory=threading.Event, repr=False)


class _TrickleWriter:
    """Wraps a handler's wfile: `after` bytes at once, then one byte every `every` seconds."""

    def __init__(self, wfile, after: int, every: float, stopping: threading.Event, record: Trickle):
        self.wfile, self.after, self.every, self.stopping, self.record = wfile, after, every, stopping, record

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        try:
            head = max(0, min(len(view), self.after - self.record.sent))
            if head:
                self.wfile.write(view[:head])
                self.record.sent += head
            for i in range(head, len(view)):
                if self.stopping.wait(self.every):
                    raise Stopping("release server stopping")
                self.wfile.write(view[i:i + 1])
                self.wfile.flush()
                self.record.sent += 1
        except HUNG_UP as exc:
            self.record.hung_up = not isinstance(exc, Stopping)
            self.record.ended.set()
            raise
        return len(data)

    def flush(self) -> None:
        self.wfile.flush()

    def __getattr__(self, name):  # closed, close...: the wrapped writer's
        return getattr(self.wfile, name)


class _QuietServer(ThreadingHTTPServer):
    """A client hanging up (a deadline, a cut download) is what the fault tests do: no traceback."""

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], HUNG_UP):
            super().handle_error(request, client_address)


@dataclass
class Request:
    """One request the server received."""

    method: str
    path: str
    headers: dict


@dataclass
class Published:
    repo: str
    tag: str
    assets: dict  # name -> bytes or Generated
    digests: bool = False
    sizes: dict = field(default_factory=dict)  # name -> size the API declares instead (None: no size)


@dataclass
class Failure:
    status: int
    body: dict
    headers: dict = field(default_factory=dict)


class ReleaseServer:
    """Threaded HTTP server with a small publishing API. Use as a context manager."""

    def __init__(self):
        self._lock = threading.Lock()
        self._releases: dict[tuple[str, str], Published] = {}
        self._latest: dict[str, str] = {}
        self._api_failure: Failure | None = None
        self._download_failure: Failure | None = None
        self._trickle: tuple[int, float, str] | None = None
        self._redirect = False
        self._stopping = threading.Event()
        self.requests_log: list[Request] = []
        self.trickles: list[Trickle] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----------------------------------------------------------

    def start(self) -> "ReleaseServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - http.server's naming
                server._handle(self)

            def log_message(self, *args):
                pass  # quiet: tests read requests_log instead

        self._stopping.clear()
        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="release-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends trickles at once
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "ReleaseServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL to put in ``defaults.github_api``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ---- publishing -----------------------------------------------------------

    def publish(self, repo: str, tag: str, assets: dict, checksums: bool | dict | bytes = True, latest: bool = True,
                digests: bool = False, checksums_name: str = "checksums.txt", sizes: dict | None = None) -> Published:
        """Publish release `tag` of `repo` with `assets` ({name: bytes or `Generated`}).

        checksums=True adds a goreleaser-style ``checksums.txt`` of the assets;
        a dict {name: hex} writes those lines instead (to publish a wrong one);
        bytes are published as the file's content verbatim (a real release's
        file); False publishes none. checksums_name names that asset (real
        goreleaser releases use ``picoclaw_<version>_checksums.txt``).
        digests=True adds GitHub's ``digest`` field. sizes={name: n} makes the
        API declare size n for that asset whatever is served (None: no size).
        """
        files = dict(assets)
        if isinstance(checksums, (bytes, bytearray)):
            files[checksums_name] = bytes(checksums)
        elif checksums:
            sums = checksums if isinstance(checksums, dict) else {
                name: sha256_of(data) for name, data in assets.items()}
            files[checksums_name] = "".join(f"{digest}  {name}\n" for name, digest in sums.items()).encode()
        release = Published(repo, tag, files, digests, dict(sizes or {}))
        with self._lock:
            self._releases[(repo, tag)] = release
            if latest:
                self._latest[repo] = tag
        return release

    def replace_asset(self, repo: str, tag: str, name: str, data: bytes) -> None:
        """Swap an asset's bytes after publishing (a tampered or corrupted download)."""
        with self._lock:
            self._releases[(repo, tag)].assets[name] = data

    def fail_api(self, status: int, message: str, headers: dict | None = None) -> None:
        """Answer every API request with `status` and GitHub's error body."""
        self._api_failure = Failure(status, {"message": message, "documentation_url": "https://docs.github.com/rest"},
                                    dict(headers or {}))

    def rate_limit(self, reset_in_s: int = 900, message: str | None = None) -> int:
        """Answer API requests like GitHub's exhausted rate limit; returns the reset epoch."""
        reset = int(time.time()) + reset_in_s
        self.fail_api(403, message or "API rate limit exceeded for 127.0.0.1. (But here's the good news: "
                      "Authenticated requests get a higher rate limit.)",
                      {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)})
        return reset

    def fail_downloads(self, status: int) -> None:
        """Answer asset downloads with `status`."""
        self._download_failure = Failure(status, {"message": "download failure (test)"})

    def redirect_downloads(self, on: bool = True) -> None:
        """Answer asset downloads with a 302 to ``/cdn/download/...`` (as GitHub sends them to its CDN)."""
        self._redirect = on

    def trickle(self, after: int, every: float, which: str = "downloads") -> None:
        """Trickle responses: their first `after` bytes (status line and headers count) at once,
        then one byte every `every` seconds, until done, the client hangs up, or `stop`.

        `which`: ``"api"``, ``"downloads"`` (every asset) or one asset's name.
        Each trickled response is recorded in `trickles`.
        """
        self._trickle = (after, every, which)

    def heal(self) -> None:
        """Stop failing (and trickling)."""
        self._api_failure = self._download_failure = None
        self._trickle = None

    # ---- what was asked -----------------------------------------------------------

    def api_requests(self) -> list[Request]:
        return [r for r in self.requests_log if r.path.startswith("/repos/")]

    def downloads(self, name: str | None = None) -> list[Request]:
        return [r for r in self.requests_log if r.path.startswith("/download/")
                and (name is None or r.path.endswith("/" + name))]

    # ---- serving ----------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        with self._lock:
            self.requests_log.append(Request("GET", path, dict(handler.headers.items())))
        parts = [unquote(p) for p in path.strip("/").split("/")]
        record = self._start_trickle(handler, path, parts)
        try:
            self._route(handler, parts)
        except HUNG_UP:
            handler.close_connection = True  # the client went away (a cut download, a deadline): not an error
        if record is not None:
            record.done = not record.ended.is_set()  # else the writer saw it end early
            record.ended.set()

    def _start_trickle(self, handler, path, parts) -> Trickle | None:
        trickle = self._trickle
        if trickle is None:
            return None
        after, every, which = trickle
        download = parts[:1] == ["download"] or parts[:2] == ["cdn", "download"]
        if not ((which == "api" and parts[:1] == ["repos"])
                or (which == "downloads" and download)
                or (download and parts[-1] == which)):
            return None
        record = Trickle(path)
        with self._lock:
            self.trickles.append(record)
        handler.wfile = _TrickleWriter(handler.wfile, after, every, self._stopping, record)
        handler.close_connection = True  # the wrapper stays on this connection: never reuse it
        end_headers = handler.end_headers

        def end_headers_saying_close():
            # ...and say so: a client must not send its next request (a redirect's target) on it
            handler.send_header("Connection", "close")
            end_headers()

        handler.end_headers = end_headers_saying_close
        return record

    def _route(self, handler: BaseHTTPRequestHandler, parts: list) -> None:
        if parts[:1] == ["repos"]:
            if self._api_failure is not None:
                return self._send_failure(handler, self._api_failure)
            return self._serve_api(handler, parts)
        if parts[:1] == ["download"] and len(parts) == 5:
            if self._download_failure is not None:
                return self._send_failure(handler, self._download_failure)
            if self._redirect:
                return self._send_redirect(handler, "/cdn" + handler.path)
            return self._serve_asset(handler, parts)
        if parts[:2] == ["cdn", "download"] and len(parts) == 6:
            return self._serve_asset(handler, parts[1:])
        self._send_json(handler, 404, {"message": "Not Found"})

    def _serve_api(self, handler, parts) -> None:
        # repos/{owner}/{repo}/releases/latest | repos/{owner}/{repo}/releases/tags/{tag}
        repo = "/".join(parts[1:3])
        with self._lock:
            if parts[3:] == ["releases", "latest"]:
                release = self._releases.get((repo, self._latest.get(repo, "")))
            elif parts[3:5] == ["releases", "tags"] and len(parts) == 6:
                release = self._releases.get((repo, parts[5]))
            else:
                release = None
        if release is None:
            return self._send_json(handler, 404, {"message": "Not Found",
                                                  "documentation_url": "https://docs.github.com/rest"})
        self._send_json(handler, 200, self._release_json(release))

    def _release_json(self, release: Published) -> dict:
        assets = []
        for index, (name, data) in enumerate(sorted(release.assets.items())):
            asset = {"id": index + 1, "name": name, "size": release.sizes.get(name, len(data)), "state": "uploaded",
                     "content_type": "application/octet-stream", "updated_at": "2025-01-01T00:00:00Z",
                     "browser_download_url": f"{self.url}/download/{release.repo}/{release.tag}/{name}"}
            if asset["size"] is None:
                del asset["size"]
            if release.digests:
                asset["digest"] = "sha256:" + sha256_of(data)
            assets.append(asset)
        return {"tag_name": release.tag, "name": release.tag, "draft": False, "prerelease": False,
                "assets": assets}

    def _serve_asset(self, handler, parts) -> None:
        repo, tag, name = "/".join(parts[1:3]), parts[3], parts[4]
        with self._lock:
            release = self._releases.get((repo, tag))
            data = release.assets.get(name) if release else None
        if data is None:
            return self._send_json(handler, 404, {"message": "Not Found"})
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if isinstance(data, Generated):
            for chunk in data.chunks():
                if self._stopping.is_set():
                    raise Stopping("release server stopping")
                handler.wfile.write(chunk)
        else:
            handler.wfile.write(data)

    @staticmethod
    def _send_redirect(handler, location: str) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def _send_failure(self, handler, failure: Failure) -> None:
        self._send_json(handler, failure.status, failure.body, failure.headers)

    @staticmethod
    def _send_json(handler, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)
