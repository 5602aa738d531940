"""One request/response exchange: the response-writing API handlers use.

Handlers produce a response through `send_head` / `send_body` / `finish` (or `respond`).
Middleware-style handlers (headers with deferred ops, encode) register *head hooks*, which run
innermost-first when the head is sent, like Caddy's wrapped ResponseWriters, and may install a
*body filter* (compression). Framing (Content-Length, chunked, close-delimited) is decided by the
connection, per RFC 9112 §6.

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from proxy.http.fields import SERVER_FIELD
from proxy.http.request import Request


class BodyFilter(Protocol):
    def write(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


HeadHook = Callable[["Exchange"], None]

_DATE_CACHE: Final[list[Any]] = [0, ""]


def http_date() -> str:
    """RFC 9110 §5.6.7 IMF-fixdate, cached per second (Go adds Date to every response)."""
    now = int(time.time())
    if _DATE_CACHE[0] != now:
        _DATE_CACHE[0] = now
        _DATE_CACHE[1] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
    return str(_DATE_CACHE[1])


class HandlerError(Exception):
    """An HTTP error raised by a handler (Caddy's caddyhttp.HandlerError)."""

    def __init__(self, status: int, message: str = "", err_id: str = "") -> None:
        super().__init__(message or f"HTTP {status}")
        self.status = status
        self.message = message
        self.err_id = err_id


class Exchange:
    __slots__ = (
        "body_filter",
        "bytes_written",
        "conn",
        "done",
        "error_routes",
        "flow",
        "head_hooks",
        "head_sent",
        "log_fields",
        "on_client_gone",
        "req",
        "resp_headers",
        "resp_length",
        "runtime",
        "status",
    )

    def __init__(self, conn: Any, req: Request, runtime: Any) -> None:
        # The client side that writes the response: an HTTP1Connection, or the H2Stream of an
        # HTTP/2 request (proxy/http/h2server.py), which offer the same methods.
        self.conn = conn
        self.req = req
        self.runtime = runtime
        self.status = 0
        # Caddy sets `Server: Caddy` before any handler runs, so `header -Server` removes it.
        self.resp_headers: list[tuple[str, str]] = [SERVER_FIELD]
        self.resp_length: int | None = None
        self.head_hooks: list[HeadHook] | None = None
        self.body_filter: BodyFilter | None = None
        self.head_sent = False
        self.done = False
        self.bytes_written = 0
        self.error_routes: Any = None
        self.on_client_gone: Callable[[], None] | None = None
        # Whoever produces the body (a proxy call) gets client_pause()/client_resume() here.
        self.flow: Any = None
        self.log_fields: dict[str, Any] | None = None

    def add_head_hook(self, hook: HeadHook) -> None:
        if self.head_hooks is None:
            self.head_hooks = [hook]
        else:
            self.head_hooks.append(hook)

    # -- response writing --------------------------------------------------------------------

    def send_head(
        self, status: int, headers: list[tuple[str, str]] | None, length: int | None
    ) -> None:
        """Start the response. `headers` are merged after the pre-set ones (e.g. Server)."""
        if self.head_sent or self.done:
            return
        self.status = status
        if headers:
            # Go's Header.Add semantics: an upstream Server header is added beside ours.
            self.resp_headers.extend(headers)
        self.resp_length = length
        hooks = self.head_hooks
        if hooks:
            for hook in reversed(hooks):
                hook(self)
        self.head_sent = True
        self.conn.write_head(self, self.status, self.resp_headers, self.resp_length)

    def send_head_raw(self, status: int, block: bytes, length: int | None, has_date: bool) -> None:
        """Fast path for a head already serialized (status line included) by a proxy call;
        only valid when no head hooks are registered and headers are not logged."""
        if self.head_sent or self.done:
            return
        self.status = status
        self.resp_length = length
        self.head_sent = True
        self.conn.write_head_raw(self, status, block, length, has_date)

    def send_body(self, data: bytes) -> None:
        if self.done:
            return
        f = self.body_filter
        if f is not None:
            data = f.write(data)
            if not data:
                return
        self.bytes_written += len(data)
        self.conn.write_body(data)

    def finish(self) -> None:
        if self.done:
            return
        if not self.head_sent:
            self.send_head(self.status or 200, None, 0)
        f = self.body_filter
        if f is not None:
            tail = f.finish()
            if tail:
                self.bytes_written += len(tail)
                self.conn.write_body(tail)
        self.done = True
        self.conn.response_done(self)

    def respond(
        self, status: int, headers: list[tuple[str, str]] | None, body: bytes = b""
    ) -> None:
        self.send_head(status, headers, len(body))
        if body and self.req.method != "HEAD":
            self.send_body(body)
        self.finish()

    def abort(self) -> None:
        """Close the client connection without (further) response: Caddy's `abort`."""
        if self.done:
            return
        self.done = True
        if not self.status:
            self.status = 0
        self.conn.abort_exchange(self)

    def fail(self, err: HandlerError) -> None:
        """Handle an error like Caddy: run the errors routes, else an empty `status` response."""
        if self.done:
            return
        if self.head_sent:
            # Too late for an error response: the client sees a truncated body.
            self.abort()
            return
        self.runtime.handle_error(self, err)

    def flush(self) -> None:
        self.conn.flush()
