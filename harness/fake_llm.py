"""A fake LLM API on 127.0.0.1 that answers the real PicoClaw's chat completions.

The real PicoClaw (harness/real_picoclaw.py) is pointed at this server through
its model's ``api_base``. Its providers POST OpenAI-style requests to
``{api_base}/chat/completions`` without streaming and expect a standard
``chat.completion`` JSON object back; that is all this server speaks:

  POST .../chat/completions   -> 200 {"object": "chat.completion", "choices": [...], ...}
  anything else               -> 404 with an OpenAI-style error body

The answer is ``fake-llm answer to: <last user message>``, so a test can tell
which task an answer belongs to, unless the last user message starts with a
directive:

  ``::sleep=S::``     wait S seconds (at most MAX_SLEEP_S; cut short when the
                      server stops), then answer as usual
  ``::empty::``       answer with empty content
  ``::status=CODE::`` answer HTTP CODE with an OpenAI-style error body

`set_reply` fixes the answer text (a string, or a function of the request)
for requests without a directive. Every request is recorded, before it is
answered, in `requests` (path, headers, parsed JSON body): a test can check
what PicoClaw sent (the API key, the conversation) even for a request that is
still sleeping. Bodies are read by Content-Length, at most MAX_BODY_BYTES.

Stdlib only; a context manager, like harness/release_server.py.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOOPBACK = "127.0.0.1"
#: The answer for a request without a directive or fixed reply: PREFIX + the last user message.
ANSWER_PREFIX = "fake-llm answer to: "
#: Largest request body read (PicoClaw's first request, with 16 tool schemas, is ~11 KB).
MAX_BODY_BYTES = 8 * 1024 * 1024
#: At most this much of an oversized body is read (and dropped) before answering 413.
DISCARD_LIMIT = 64 * 1024 * 1024
#: Longest ``::sleep=S::`` honoured.
MAX_SLEEP_S = 120.0

SLEEP = re.compile(r"^::sleep=(\d+(?:\.\d+)?)::")
STATUS = re.compile(r"^::status=(\d{3})::")
EMPTY = "::empty::"


@dataclass
class LLMRequest:
    """One request the fake received: its path, headers and JSON body (None if it was not JSON)."""

    method: str
    path: str
    headers: dict
    body: dict | None

    def header(self, name: str, default: str | None = None) -> str | None:
        """A header's value, whatever the case of its name."""
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), default)

    @property
    def messages(self) -> list:
        body = self.body if isinstance(self.body, dict) else {}
        messages = body.get("messages")
        return messages if isinstance(messages, list) else []


def message_text(message: dict) -> str:
    """A message's content as text: a string as is, OpenAI content parts joined."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


class FakeLLM:
    """Threaded fake chat-completions server; use as a context manager.

    ``url`` is the ``api_base`` to configure (``http://127.0.0.1:PORT/v1``).
    """

    def __init__(self, reply=None, max_body_bytes: int = MAX_BODY_BYTES, max_sleep_s: float = MAX_SLEEP_S):
        self._lock = threading.Lock()
        self._requests: list[LLMRequest] = []
        self._reply = reply
        self._stopping = threading.Event()
        self._count = 0
        self.max_body_bytes = max_body_bytes
        self.max_sleep_s = max_sleep_s
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------

    def start(self) -> "FakeLLM":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - http.server's naming
                server._handle(self, "POST")

            def do_GET(self):  # noqa: N802
                server._handle(self, "GET")

            def log_message(self, *args):
                pass  # quiet: tests read .requests instead

        self._stopping.clear()
        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; requests still sleeping wake up and find their client gone or answered."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeLLM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """The ``api_base`` PicoClaw should use: it appends ``/chat/completions``."""
        return f"http://{LOOPBACK}:{self.port}/v1"

    # ---- behaviour -------------------------------------------------------------

    def set_reply(self, reply=None) -> None:
        """Answer every request without a directive with `reply`: a string, or a
        function of the `LLMRequest` returning one. None restores the default."""
        with self._lock:
            self._reply = reply

    # ---- what was asked ----------------------------------------------------------

    @property
    def requests(self) -> list[LLMRequest]:
        """Every request so far, in arrival order (a snapshot copy)."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def mark(self) -> int:
        """A position in `requests`; `requests_since(mark)` gives what came after it."""
        with self._lock:
            return len(self._requests)

    def requests_since(self, mark: int) -> list[LLMRequest]:
        with self._lock:
            return list(self._requests[mark:])

    def wait_for_requests(self, count: int, timeout: float = 30.0, since: int = 0) -> list[LLMRequest]:
        """Wait until at least `count` requests arrived after `since`; returns them (maybe fewer on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.requests_since(since)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        return self.requests_since(since)

    @staticmethod
    def user_messages(request: LLMRequest) -> list[str]:
        """The contents of the request's user-role messages, in order."""
        return [message_text(m) for m in request.messages if isinstance(m, dict) and m.get("role") == "user"]

    @classmethod
    def last_user_message(cls, request: LLMRequest) -> str:
        users = cls.user_messages(request)
        return users[-1] if users else ""

    @staticmethod
    def default_answer(task: str) -> str:
        return ANSWER_PREFIX + task

    # ---- serving -------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path = handler.path.split("?", 1)[0]
        headers = dict(handler.headers.items())
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            self._drain(handler)
            self._record(LLMRequest(method, path, headers, None))
            return self._send_error(handler, 404, f"no route for {method} {path}", "not_found")
        length = handler.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self._record(LLMRequest(method, path, headers, None))
            handler.close_connection = True
            return self._send_error(handler, 411, "Content-Length required", "invalid_request_error")
        size = int(length)
        if size > self.max_body_bytes:
            self._record(LLMRequest(method, path, headers, None))
            self._discard(handler, size)
            handler.close_connection = True
            return self._send_error(handler, 413, f"request body of {size} bytes exceeds {self.max_body_bytes}",
                                    "invalid_request_error")
        raw = handler.rfile.read(size)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        request = LLMRequest(method, path, headers, body if isinstance(body, dict) else None)
        self._record(request)
        if request.body is None:
            return self._send_error(handler, 400, "request body is not a JSON object", "invalid_request_error")
        self._answer(handler, request)

    def _answer(self, handler, request: LLMRequest) -> None:
        task = self.last_user_message(request)
        status = STATUS.match(task)
        if status:
            code = int(status.group(1))
            return self._send_error(handler, code, f"fake-llm: status {code} as asked", "fake_error", code=code)
        sleep = SLEEP.match(task)
        if sleep:
            self._stopping.wait(min(float(sleep.group(1)), self.max_sleep_s))
            if self._stopping.is_set():
                handler.close_connection = True
                return self._send_error(handler, 503, "fake-llm is shutting down", "server_error")
        if task.startswith(EMPTY):
            content = ""
        else:
            with self._lock:
                reply = self._reply
            if reply is None:
                content = self.default_answer(task)
            else:
                content = str(reply(request) if callable(reply) else reply)
        self._send_completion(handler, request, content)

    def _record(self, request: LLMRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _send_completion(self, handler, request: LLMRequest, content: str) -> None:
        with self._lock:
            self._count += 1
            number = self._count
        body = request.body or {}
        prompt_tokens = sum(len(message_text(m).split()) for m in request.messages if isinstance(m, dict))
        completion_tokens = len(content.split())
        self._send_json(handler, 200, {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model", "fake")),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    @classmethod
    def _send_error(cls, handler, status: int, message: str, kind: str, code=None) -> None:
        cls._send_json(handler, status, {"error": {"message": message, "type": kind, "param": None,
                                                   "code": code}})

    @staticmethod
    def _send_json(handler, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            handler.wfile.flush()
        except OSError:
            handler.close_connection = True  # the client gave up (e.g. PicoClaw was killed mid-request)

    def _drain(self, handler) -> None:
        """Read the body of a request we refuse, so keep-alive stays in sync."""
        length = handler.headers.get("Content-Length")
        if length and length.strip().isdigit():
            size = int(length)
            if size <= self.max_body_bytes:
                handler.rfile.read(size)
            else:
                self._discard(handler, size)
                handler.close_connection = True

    @staticmethod
    def _discard(handler, size: int) -> None:
        """Read and drop up to DISCARD_LIMIT bytes of an oversized body, a chunk at a time, so
        the client gets our error instead of a reset; a larger body is left for the close."""
        left = min(size, DISCARD_LIMIT)
        while left > 0:
            chunk = handler.rfile.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)
