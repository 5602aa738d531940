"""HTTP/1.1 server side: one `HTTP1Connection` (asyncio.Protocol + httptools) per client.

Owns request parsing and its defences, keepalive, pipelining, Expect: 100-continue, response
framing, timeouts (checked by a per-server sweeper, so the fast path arms no timers), and
Upgrade tunnels. Routing and handlers live elsewhere: the connection hands each complete
request head to `runtime.dispatch(exchange)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from http import HTTPStatus
from typing import Any, Final

import httptools

from proxy.http.exchange import Exchange, http_date
from proxy.http.request import Request

log = logging.getLogger("pyproxy.http")

_REASONS: Final = {s.value: s.phrase for s in HTTPStatus}
_REASONS[499] = "Client Closed Request"
_STATUS_LINES: Final = {code: f"HTTP/1.1 {code} {phrase}\r\n" for code, phrase in _REASONS.items()}

# Reading a body that nobody wants: Go's server discards up to 256 KiB to keep the connection
# alive, and closes it beyond that (net/http maxPostHandlerReadBytes).
MAX_DISCARD_BYTES: Final = 256 * 1024
# Stop reading when this many pipelined requests wait (RFC 9112 §9.3.2 allows pipelining; we
# bound the memory it can take).
MAX_PIPELINED: Final = 16
# Pause reading the client when this much request body is queued before a handler wants it.
MAX_QUEUED_BODY_BYTES: Final = 256 * 1024
# Slack over max_header_bytes before we give up on a head still incomplete (like Go's 4096).
HEAD_SLACK_BYTES: Final = 4096
# Request fields the server or the proxy single out; all others stay serialized bytes
# (Request._raw). Checked by length first: most field names miss on that.
_SERVER_FIELDS: Final = frozenset({b"host", b"content-length", b"transfer-encoding", b"expect"})
_SPECIAL_FIELDS: Final = _SERVER_FIELDS | {
    b"connection",
    b"proxy-connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"upgrade",
    b"alt-svc",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
_SPECIAL_LENGTHS: Final = frozenset(len(n) for n in _SPECIAL_FIELDS)


def status_line(status: int) -> str:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} {_REASONS.get(status, 'status code ' + str(status))}\r\n"
    return line


def _error_response(status: int) -> bytes:
    # Go's net/http answers malformed requests with a plain-text body and closes.
    text = f"{status} {_REASONS.get(status, '')}"
    return (
        f"{status_line(status)}Content-Type: text/plain; charset=utf-8\r\n"
        f"Connection: close\r\nContent-Length: {len(text)}\r\n\r\n{text}"
    ).encode("latin-1")


class _Reject(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


# Connection states (also what the timeout sweeper looks at).
IDLE: Final = 0
HEAD: Final = 1
BODY: Final = 2
ACTIVE: Final = 3
TUNNEL: Final = 4
CLOSED: Final = 5


class HTTP1Connection(asyncio.Protocol):
    __slots__ = (
        "_batch",
        "_chunked",
        "_chunked_out",
        "_close_after",
        "_cur",
        "_deadline",
        "_expect",
        "_head_bytes",
        "_host",
        "_length",
        "_lines",
        "_odd",
        "_paused_by",
        "_pending",
        "_raw_head",
        "_reading_paused",
        "_special",
        "_tls",
        "_tunnel",
        "_upgrade_buf",
        "_url",
        "_writable",
        "_write_paused",
        "parser",
        "parsing",
        "remote_ip",
        "remote_port",
        "runtime",
        "scheme",
        "state",
        "transport",
    )

    def __init__(self, runtime: Any, scheme: str = "http") -> None:
        self.runtime = runtime
        self.scheme = scheme
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.parsing: Request | None = None  # request whose head/body is being parsed
        self._cur: Exchange | None = None  # exchange being answered
        self._pending: deque[Request] = deque()  # pipelined, parsed heads waiting
        self._lines: list[bytes] = []  # ordinary fields, as b"Name", b": ", b"value", b"\r\n"
        self._special: list[tuple[bytes, bytes]] = []
        self._odd = False
        self._url: list[bytes] = []
        self._host: str | None = None
        self._length: int | None = None
        self._chunked = False
        self._expect = False
        self._head_bytes = 0
        self._raw_head = 0
        self._batch: list[bytes] | None = None
        self._chunked_out = False
        self._close_after = False
        self._deadline = 0.0
        self._reading_paused = False
        self._paused_by = 0  # bit set: 1 pipelining, 2 body back-pressure
        self._write_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._tunnel: Any = None
        self._tls: dict[str, Any] | None = None
        self._upgrade_buf: list[bytes] | None = None
        self.remote_ip = ""
        self.remote_port = 0
        self.state = IDLE

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.runtime.successor is not None:
            # Accepted by a listener of a config that was replaced before this callback ran.
            self.runtime = self.runtime.latest()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.remote_ip, self.remote_port = str(peer[0]), int(peer[1])
            if self.remote_ip.startswith("::ffff:") and "." in self.remote_ip:
                self.remote_ip = self.remote_ip[7:]  # IPv4-mapped on a dual-stack socket
        self.runtime.connections.add(self)
        self._set_deadline(self.runtime.timeouts.idle_s)
        sslobj = transport.get_extra_info("ssl_object") if self.scheme == "https" else None
        if sslobj is not None:
            # What `{http.request.tls.*}` placeholders and logs read (placeholders.py convention).
            cipher = sslobj.cipher()
            self._tls = {
                "version": sslobj.version() or "",
                "cipher_suite": cipher[0] if cipher else "",
                "proto": sslobj.selected_alpn_protocol() or "",
                "server_name": sslobj.server_hostname or "",
                "resumed": bool(sslobj.session_reused),
            }

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.runtime.connections.discard(self)
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            tunnel.client_closed()
        ex, self._cur = self._cur, None
        if ex is not None and not ex.done:
            cb = ex.on_client_gone
            if cb is not None:
                cb()
            if not ex.done:
                ex.done = True
                self.runtime.log_exchange(ex, client_gone=True)
        w, self._writable = self._writable, None
        if w is not None and not w.done():
            w.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.runtime.timeouts.write_s:
            # write_timeout: a client that stops reading our response for that long is dropped.
            self._set_deadline(self.runtime.timeouts.write_s)
        ex = self._cur
        if ex is not None and ex.flow is not None:
            ex.flow.client_pause()
        if self._tunnel is not None:
            self._tunnel.client_pause()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.runtime.timeouts.write_s and self.state not in (IDLE, HEAD, BODY):
            self._deadline = 0.0
        ex = self._cur
        if ex is not None and ex.flow is not None:
            ex.flow.client_resume()
        if self._tunnel is not None:
            self._tunnel.client_resume()
        w, self._writable = self._writable, None
        if w is not None and not w.done():
            w.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.from_client(data)
            return
        if self._upgrade_buf is not None:
            self._upgrade_buf.append(data)
            return
        if self.state == CLOSED or (self._close_after and self._cur is None):
            return
        if self.state == IDLE:
            self.state = HEAD
            self._set_deadline(self.runtime.timeouts.read_header_s)
        batch: list[bytes] = []
        self._batch = batch
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            self._upgrade_buf = [data[offset:]] if offset < len(data) else []
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__ or exc.__cause__
            status = cause.status if isinstance(cause, _Reject) else 500
            if not isinstance(cause, _Reject):
                log.error("internal error handling request", exc_info=cause)
            self._reject(status, batch)
            return
        except httptools.HttpParserError:
            self._reject(400, batch)
            return
        finally:
            self._batch = None
        if self.state == HEAD:
            # httptools buffers an unfinished header line without limit: bound it here.
            self._raw_head += len(data)
            if self._raw_head > self.runtime.max_header_bytes + HEAD_SLACK_BYTES:
                self._reject(431, batch)
                return
        if batch and not self.transport.is_closing():
            self.transport.write(b"".join(batch) if len(batch) > 1 else batch[0])

    def eof_received(self) -> bool | None:
        # Like Go's server: EOF from the client while a request is in flight means the client
        # went away (its context is cancelled, logged as 499); close our side too.
        return None

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._lines = []
        self._special = []
        self._odd = False
        self._url = []
        self._head_bytes = 0
        self._host = None
        self._length = None
        self._chunked = False
        self._expect = False
        if self.state == IDLE:
            self.state = HEAD
            self._set_deadline(self.runtime.timeouts.read_header_s)

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_bytes += len(url)
        if self._head_bytes > self.runtime.max_header_bytes:
            raise _Reject(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.runtime.max_header_bytes:
            raise _Reject(431)
        if self.parsing is not None:
            # A trailer field after a chunked body (RFC 9112 §7.1.2): dropped, like the
            # proxy drops trailers (still bounded by the head limit above).
            return
        # Only a few fields matter to the server or the proxy; test the length first (cheap).
        if len(name) not in _SPECIAL_LENGTHS:
            self._lines.extend((name, b": ", value, b"\r\n"))
            return
        lname = name.lower()
        if lname not in _SPECIAL_FIELDS:
            self._lines.extend((name, b": ", value, b"\r\n"))
            return
        self._special.append((name, value))
        if lname not in _SERVER_FIELDS:
            self._odd = True  # hop-by-hop or X-Forwarded-*: the proxy's slow path
        else:
            if lname == b"host":
                if self._host is not None:
                    raise _Reject(400)  # RFC 9112 §3.2: more than one Host field
                self._host = value.decode("latin-1")
            elif lname == b"content-length":
                self._length = int(value)
            elif lname == b"transfer-encoding":
                self._chunked = True
            elif lname == b"expect":
                if value.lower() != b"100-continue":
                    raise _Reject(417)  # RFC 9110 §10.1.1: unknown expectation
                self._expect = True

    def on_headers_complete(self) -> None:
        parser = self.parser
        self._raw_head = 0
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        ver = parser.get_http_version()
        req = Request(
            parser.get_method().decode("ascii"),
            url.decode("latin-1"),
            "HTTP/1.1" if ver == "1.1" else f"HTTP/{ver}",
            None,
            self.remote_ip,
            self.remote_port,
            self.scheme,
        )
        req._conn = self
        req._raw = b"".join(self._lines)
        req._special = self._special
        req._odd = self._odd
        req.keep_alive = parser.should_keep_alive()
        if self._tls is not None:
            req.vars["tls"] = self._tls
        if self.runtime.access_log is not None:
            # Not loop.time(): uvloop caches it per iteration, durations would read 0.
            req.start_time = time.monotonic()
        host = self._host
        if host is None:
            if ver == "1.1":
                raise _Reject(400)  # RFC 9112 §3.2: a 1.1 request without Host is invalid
        else:
            req.host = host
        req.content_length = self._length
        req.chunked = self._chunked
        req.expect_continue = self._expect and ver == "1.1"
        if req.uri[:1] not in ("/", "*", ""):
            # absolute-form: its authority replaces Host (RFC 9112 §3.2.2), as in Go.
            with contextlib.suppress(Exception):
                parsed = httptools.parse_url(url)
                if parsed.host:
                    req.host = parsed.host.decode("latin-1")
                    if parsed.port:
                        req.host += f":{parsed.port}"
        req.upgrade = parser.should_upgrade()
        self.parsing = req
        self.state = BODY if req.has_body else ACTIVE
        if self.state == BODY:
            self._set_deadline(self.runtime.timeouts.read_s)
        if self._cur is None:
            self._dispatch(req)
        else:
            self._pending.append(req)
            if len(self._pending) >= MAX_PIPELINED:
                self._pause_reading(1)

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        if req is not None:
            req.feed_body(body)
            if (
                req.body_sink is None
                and req._body_queue is not None
                and req.queued_body_bytes() > MAX_QUEUED_BODY_BYTES
            ):
                self._pause_reading(2)

    def on_message_complete(self) -> None:
        req, self.parsing = self.parsing, None
        if req is not None:
            req.end_body()
        if self._cur is not None:
            self.state = ACTIVE
            self._deadline = 0.0
        elif not self._pending:
            self.state = IDLE
            self._set_deadline(self.runtime.timeouts.idle_s)

    # -- dispatch ----------------------------------------------------------------------------

    def _dispatch(self, req: Request) -> None:
        ex = Exchange(self, req, self.runtime)
        self._cur = ex
        self._chunked_out = False
        if self.state != BODY:
            self._deadline = 0.0
        try:
            self.runtime.dispatch(ex)
        except Exception:
            log.exception("handler error")
            if not ex.done:
                if ex.head_sent:
                    ex.abort()
                else:
                    ex.resp_headers = []
                    ex.respond(500, None)

    def body_wanted(self, req: Request) -> None:
        """A handler attached a body sink: send 100 Continue if the client waits for it."""
        if req.expect_continue and not req.body_done:
            req.expect_continue = False
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.flush()
        self._resume_reading(2)

    def pause_body(self) -> None:
        self._pause_reading(2)

    def resume_body(self) -> None:
        self._resume_reading(2)

    def _pause_reading(self, why: int) -> None:
        self._paused_by |= why
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            with contextlib.suppress(Exception):
                self.transport.pause_reading()

    def _resume_reading(self, why: int) -> None:
        self._paused_by &= ~why
        if self._reading_paused and not self._paused_by and self.transport is not None:
            self._reading_paused = False
            with contextlib.suppress(Exception):
                self.transport.resume_reading()

    # -- writing -----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        batch = self._batch
        if batch is not None:
            batch.append(data)
        elif self.transport is not None:
            self.transport.write(data)

    def begin_batch(self) -> bool:
        if self._batch is None:
            self._batch = []
            return True
        return False

    def end_batch(self) -> None:
        batch, self._batch = self._batch, None
        if batch and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(batch) if len(batch) > 1 else batch[0])

    def flush(self) -> None:
        batch = self._batch
        if batch:
            data = b"".join(batch) if len(batch) > 1 else batch[0]
            batch.clear()  # in place: data_received holds the same list
            self.transport.write(data)

    def write_head(
        self, ex: Exchange, status: int, headers: list[tuple[str, str]], length: int | None
    ) -> None:
        parts = [status_line(status)]
        has_date = False
        for k, v in headers:
            if len(k) == 4 and k.lower() == "date":
                has_date = True
            parts.append(f"{k}: {v}\r\n")
        self.write_head_raw(ex, status, "".join(parts).encode("latin-1"), length, has_date)

    def write_head_raw(
        self, ex: Exchange, status: int, block: bytes, length: int | None, has_date: bool
    ) -> None:
        """Write a head whose status line and fields are already serialized in `block`;
        add Date and the framing fields (RFC 9112 §6) and decide on keepalive."""
        req = ex.req
        tail = "" if has_date else f"Date: {http_date()}\r\n"
        rt = self.runtime
        keep = (
            req.keep_alive and not self._close_after and (rt.accepting or rt.successor is not None)
        )
        if status == 101:
            pass
        elif status < 200 or status in (204, 304):
            pass  # RFC 9110 §6.4.1: no content
        elif length is not None:
            if req.method != "HEAD" or length:
                tail += f"Content-Length: {length}\r\n"
        elif req.method == "HEAD":
            pass
        elif req.proto == "HTTP/1.1":
            tail += "Transfer-Encoding: chunked\r\n"
            self._chunked_out = True
        else:
            keep = False  # HTTP/1.0: the body ends when the connection closes (RFC 9112 §6.3)
        if not req.body_done:
            if req.upgrade and status != 101:
                keep = False  # the parser already switched to raw mode; no more requests
            if req.expect_continue:
                # We never asked for the body (RFC 9110 §10.1.1): close rather than read it.
                keep = False
            if req.chunked or (req.content_length or 0) - req.body_received > MAX_DISCARD_BYTES:
                keep = False
        elif req.upgrade and status != 101:
            keep = False
        if status != 101:
            if not keep:
                tail += "Connection: close\r\n"
                self._close_after = True
            elif req.proto == "HTTP/1.0":
                tail += "Connection: keep-alive\r\n"
        self.write(block + (tail + "\r\n").encode("latin-1"))

    def write_body(self, data: bytes) -> None:
        if not data:
            return
        if self._chunked_out:
            self.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.write(data)

    async def drain(self) -> None:
        """Wait until the client transport's buffer is below its high-water mark."""
        if self._write_paused and self.state != CLOSED:
            if self._writable is None:
                self._writable = self.runtime.loop.create_future()
            await self._writable

    def response_done(self, ex: Exchange) -> None:
        if self._chunked_out:
            self._chunked_out = False
            self.write(b"0\r\n\r\n")
        if self._cur is not ex:
            return
        self._cur = None
        req = ex.req
        self.runtime.log_exchange(ex)
        if self.runtime.successor is not None:
            # A reload replaced this server while the request was in flight: the next request
            # on this connection is served by the new config.
            self.adopt(self.runtime.latest())
        if self._close_after or self.state == CLOSED:
            self._close_soon()
            return
        if not req.body_done:
            req.detach_body()
        if self._paused_by & 2:
            self._resume_reading(2)
        # Next pipelined request, if its head is already parsed.
        if self._pending:
            nxt = self._pending.popleft()
            self._resume_reading(1)
            self._dispatch(nxt)
        elif self.parsing is None:
            self.state = IDLE
            self._set_deadline(self.runtime.timeouts.idle_s)

    def abort_exchange(self, ex: Exchange) -> None:
        if self._cur is ex:
            self._cur = None
        self.runtime.log_exchange(ex)
        # Earlier pipelined responses in this batch were complete: send them, then drop.
        self.flush()
        self._batch = None
        self.close()

    def start_tunnel(self, tunnel: Any) -> None:
        """After a 101 response: raw bytes both ways through `tunnel` (RFC 9110 §7.8)."""
        self._tunnel = tunnel
        self.state = TUNNEL
        self._deadline = 0.0
        ex, self._cur = self._cur, None
        if ex is not None:
            ex.done = True
            self.runtime.log_exchange(ex)
        self.flush()
        buf, self._upgrade_buf = self._upgrade_buf, None
        self._resume_reading(3)
        if buf:
            for chunk in buf:
                if chunk:
                    tunnel.from_client(chunk)

    def _close_soon(self) -> None:
        self.state = CLOSED
        if self.transport is not None:
            if self._batch:
                self.flush()
            self.transport.close()

    def close(self) -> None:
        self.state = CLOSED
        if self.transport is not None:
            self.transport.close()

    def _reject(self, status: int, batch: list[bytes]) -> None:
        t = self.transport
        if not t.is_closing():
            if batch:
                t.write(b"".join(batch))
            if self._cur is None or not self._cur.head_sent:
                t.write(_error_response(status))
        self.state = CLOSED
        t.close()

    def _set_deadline(self, seconds: float | None) -> None:
        # The runtime's clock is updated by its 1 s sweeper: deadlines are that coarse anyway.
        self._deadline = self.runtime.now + seconds if seconds else 0.0

    # -- timeouts and shutdown (called by the runtime) -----------------------------------------

    def check_timeout(self, now: float) -> None:
        if self._deadline and now > self._deadline and self.state != CLOSED:
            # Like Go's server, a read/idle timeout closes the connection without a response.
            self.close()

    def shutdown(self) -> None:
        """Graceful stop: close if idle, else after the current response."""
        if self._cur is None and (
            self.state == IDLE or (self.state == HEAD and not self._head_bytes)
        ):
            self.close()
        else:
            self._close_after = True

    @property
    def busy(self) -> bool:
        return self._cur is not None or self._tunnel is not None

    @property
    def tunnel(self) -> Any:
        return self._tunnel

    def adopt(self, runtime: Any) -> None:
        """Move to `runtime` (the same listeners under a new config), between requests."""
        self.runtime.connections.discard(self)
        self.runtime = runtime
        if self.state == CLOSED:
            return
        runtime.connections.add(self)
        if not runtime.accepting:
            # Its new home is being retired too, with nowhere further to go.
            self._close_after = True
