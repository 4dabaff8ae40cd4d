"""A real HTTP server on 127.0.0.1 that plays GitHub's releases API and asset downloads.

Deploy talks to GitHub with `requests`; tests, the demo and the benchmark
point ``defaults.github_api`` here instead. It serves what deploy uses:

  GET /repos/{owner}/{repo}/releases/latest
  GET /repos/{owner}/{repo}/releases/tags/{tag}
  GET /download/{owner}/{repo}/{tag}/{asset}      (each asset's browser_download_url)

Publish with `publish(repo, tag, assets)`; make the API fail with
`fail_api(...)` / `rate_limit(...)`; read `requests_log` to see what was asked
and with which headers (e.g. the Authorization bearer token). Stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


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
    assets: dict  # name -> bytes
    digests: bool = False


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
        self.requests_log: list[Request] = []
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

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="release-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
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
                digests: bool = False, checksums_name: str = "checksums.txt") -> Published:
        """Publish release `tag` of `repo` with `assets` ({name: bytes}).

        checksums=True adds a goreleaser-style ``checksums.txt`` of the assets;
        a dict {name: hex} writes those lines instead (to publish a wrong one);
        bytes are published as the file's content verbatim (a real release's
        file); False publishes none. checksums_name names that asset (real
        goreleaser releases use ``picoclaw_<version>_checksums.txt``).
        digests=True adds GitHub's ``digest`` field.
        """
        files = dict(assets)
        if isinstance(checksums, (bytes, bytearray)):
            files[checksums_name] = bytes(checksums)
        elif checksums:
            sums = checksums if isinstance(checksums, dict) else {
                name: hashlib.sha256(data).hexdigest() for name, data in assets.items()}
            files[checksums_name] = "".join(f"{digest}  {name}\n" for name, digest in sums.items()).encode()
        release = Published(repo, tag, files, digests)
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

    def heal(self) -> None:
        """Stop failing."""
        self._api_failure = self._download_failure = None

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
        if parts[:1] == ["repos"]:
            if self._api_failure is not None:
                return self._send_failure(handler, self._api_failure)
            return self._serve_api(handler, parts)
        if parts[:1] == ["download"] and len(parts) == 5:
            if self._download_failure is not None:
                return self._send_failure(handler, self._download_failure)
            return self._serve_asset(handler, parts)
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
            asset = {"id": index + 1, "name": name, "size": len(data), "state": "uploaded",
                     "content_type": "application/octet-stream", "updated_at": "2025-01-01T00:00:00Z",
                     "browser_download_url": f"{self.url}/download/{release.repo}/{release.tag}/{name}"}
            if release.digests:
                asset["digest"] = "sha256:" + hashlib.sha256(data).hexdigest()
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
        handler.wfile.write(data)

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
