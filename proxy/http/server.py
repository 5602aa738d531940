"""HTTP/1.1 server side: one `HTTP1Connection` (asyncio.Protocol) per client.

Owns reading requests (the wire rules and their defences are in proxy/http/wire.py: one place
decides what a request is and where its body ends), keepalive, pipelining, Expect:
100-continue, response framing, timeouts (checked by a per-server sweeper, so the fast path
arms no timers), and Upgrade tunnels. Routing and handlers live elsewhere: the connection hands
each complete request head to `runtime.dispatch(exchange)`.

Two rules keep a malformed byte from reaching an origin as something else:
- a request is executed only once its head was fully validated; bytes after a bad head are
  never parsed (the connection answers the requests before it, then the error, then closes);
- the body of a request is read by its framing, whatever else the request says: an Upgrade
  request's body is a body (llhttp used to hand it over as upgrade data, which let a client
  smuggle a request in it), and bytes after an Upgrade request wait for the response: a 101
  makes them tunnel data, anything else closes the connection.

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any, Final

import httptools

from proxy.http.exchange import Exchange, http_date
from proxy.http.fields import (
    BY_CHUNKS,
    BY_CLOSE,
    CONTINUE_HEAD,
    HTTP_10,
    HTTP_11,
    reason_phrase,
    response_framing,
    status_line,
)
from proxy.http.request import Request
from proxy.http.wire import (
    CHUNKED,
    HEAD_SLACK_BYTES,
    ChunkedDecoder,
    RequestHead,
    parse_request_head,
)
from proxy.http.wire_errors import RequestError
from proxy.listen import set_tcp_keepalive

log = logging.getLogger("pyproxy.http")

# Reading a body that nobody wants: Go's server discards up to 256 KiB to keep the connection
# alive, and closes it beyond that (net/http maxPostHandlerReadBytes).
MAX_DISCARD_BYTES: Final = 256 * 1024
# Stop reading when this many pipelined requests wait (RFC 9112 §9.3.2 allows pipelining; we
# bound the memory it can take).
MAX_PIPELINED: Final = 16
# Pause reading the client when this much request body is queued before a handler wants it.
MAX_QUEUED_BODY_BYTES: Final = 256 * 1024
# After a rejection, keep reading (and discarding) this long before closing, so that the
# client reads the error instead of a reset from unread bytes (Go's closeWriteAndWait, nginx's
# lingering_close). The sweeper's 1 s tick makes it 1-2 s.
LINGER_S: Final = 1.0


def error_response(status: int, detail: str = "") -> bytes:
    """The answer to a request the server refuses, shaped like Go's server's: the reason phrase
    (and its detail, e.g. "malformed Host header") in the status line and as a plain-text body,
    then close. Go writes no Content-Length; we add one so TLS clients, which get no half-close,
    need not wait for the close."""
    phrase = reason_phrase(status)
    if detail:
        phrase = f"{phrase}: {detail}"
    # Go's body for a 501 (an unsupported Transfer-Encoding) is its own text.
    text = "Unsupported transfer encoding" if status == 501 else f"{status} {phrase}"
    return (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Connection: close\r\nContent-Length: {len(text)}\r\n\r\n{text}"
    ).encode("latin-1")


# Connection states (also what the timeout sweeper looks at).
IDLE: Final = 0
HEAD: Final = 1
BODY: Final = 2
ACTIVE: Final = 3
TUNNEL: Final = 4
CLOSED: Final = 5
LINGER: Final = 6  # refused: the error is written, the rest of the input is read and dropped

# Why reading from the client is paused (bits of `_paused_by`).
PAUSE_PIPELINE: Final = 1  # MAX_PIPELINED parsed requests wait
PAUSE_BODY: Final = 2  # a body nobody consumes yet, or its consumer pushes back
PAUSE_HOLD: Final = 4  # after an Upgrade request or a bad request: nothing more is parsed


class HTTP1Connection(asyncio.Protocol):
    __slots__ = (
        "_batch",
        "_body_left",
        "_buf",
        "_chunked_out",
        "_chunks",
        "_close_after",
        "_cur",
        "_deadline",
        "_error_after",
        "_last_request",
        "_paused_by",
        "_pending",
        "_reading_paused",
        "_tls",
        "_tunnel",
        "_upgrade_buf",
        "_writable",
        "_write_paused",
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
        self.parsing: Request | None = None  # request whose body is being read
        self._cur: Exchange | None = None  # exchange being answered
        self._pending: deque[Request] = deque()  # pipelined, parsed heads waiting
        self._buf = b""  # the start of a head not complete yet
        self._body_left = 0  # Content-Length bytes of `parsing` still to come
        self._chunks: ChunkedDecoder | None = None  # the chunked body of `parsing`
        # A bad request behind requests still being answered: refused once they are.
        self._error_after: RequestError | None = None
        self._last_request = False  # the client said Connection: close; parse nothing after
        self._batch: list[bytes] | None = None
        self._chunked_out = False
        self._close_after = False
        self._deadline = 0.0
        self._reading_paused = False
        self._paused_by = 0  # PAUSE_* bits
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
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Caddy sets TCP keep-alive on every accepted connection (server keepalive_interval).
            with contextlib.suppress(OSError):  # the client may already have reset it
                set_tcp_keepalive(sock, self.runtime.server.keepalive_interval_s)
        self._set_deadline(self.runtime.timeouts.idle_s)
        sslobj = transport.get_extra_info("ssl_object") if self.scheme == "https" else None
        if sslobj is not None:
            # What `{http.request.tls.*}` placeholders and logs read (placeholders.py convention).
            cipher = sslobj.cipher()
            self._tls = {
                "version": sslobj.version() or "",
                "cipher_suite": cipher[0] if cipher else "",
                "proto": sslobj.selected_alpn_protocol() or "",
                "server_name": getattr(sslobj, "pyproxy_sni", None) or "",  # tls.sni_callback
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
        if self.state >= CLOSED or self._error_after is not None:
            return  # refused (lingering) or a refusal queued: the rest is never parsed
        if self._close_after and self._cur is None:
            return
        if self.state == IDLE:
            self.state = HEAD
            self._set_deadline(self.runtime.timeouts.read_header_s)
        batch: list[bytes] = []
        self._batch = batch
        try:
            self._parse(data)
        except RequestError as exc:
            self._refuse(exc)
            return
        except Exception:
            log.exception("internal error reading a request")
            self._refuse(RequestError(500))
            return
        finally:
            self._batch = None
        if batch and not self.transport.is_closing():
            self.transport.write(b"".join(batch) if len(batch) > 1 else batch[0])

    def eof_received(self) -> bool | None:
        # Like Go's server: EOF from the client while a request is in flight means the client
        # went away (its context is cancelled, logged as 499); close our side too.
        return None

    # -- reading requests --------------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        """Read heads and bodies from `data` (after what an earlier read left unfinished)."""
        if self._buf:
            data = self._buf + data
            self._buf = b""
        pos = 0
        n = len(data)
        limit = self.runtime.max_header_bytes + HEAD_SLACK_BYTES
        while pos < n:
            req = self.parsing
            if req is not None:
                pos = self._read_body(req, data, pos)
                if self._upgrade_buf is not None:
                    # RFC 9110 §7.8: what follows an Upgrade request waits for its response.
                    if pos < n:
                        self._upgrade_buf.append(data[pos:])
                    return
                continue
            if self._last_request or self._error_after is not None:
                return  # Connection: close was the last request; nothing after it is read
            end = data.find(b"\r\n\r\n", pos)
            if end < 0:
                if n - pos > limit:
                    raise RequestError(431)
                self._buf = data[pos:] if pos else data
                if self.state == IDLE:
                    self.state = HEAD
                    self._set_deadline(self.runtime.timeouts.read_header_s)
                return
            if end + 4 - pos > limit:
                raise RequestError(431)
            self._head_complete(parse_request_head(data, pos, end))
            pos = end + 4
            if self._upgrade_buf is not None:
                if pos < n:
                    self._upgrade_buf.append(data[pos:])
                return

    def _read_body(self, req: Request, data: bytes, pos: int) -> int:
        n = len(data)
        chunks = self._chunks
        if chunks is None:
            left = self._body_left
            take = left if left < n - pos else n - pos
            self._on_body(req, data if take == n else data[pos : pos + take])
            pos += take
            self._body_left = left - take
            if not self._body_left:
                self._message_complete(req)
            return pos
        pieces: list[bytes] = []
        pos = chunks.feed(data, pos, pieces)
        for piece in pieces:
            if piece:
                self._on_body(req, piece)
        if chunks.done:
            self._chunks = None
            self._message_complete(req)
        return pos

    def _head_complete(self, head: RequestHead) -> None:
        ver = "HTTP/1.1" if head.minor == 1 else "HTTP/1.0"
        req = Request(
            head.method, head.target, ver, None, self.remote_ip, self.remote_port, self.scheme
        )
        req._conn = self
        req._raw = head.raw
        req._special = head.special
        req._odd = head.odd
        req.keep_alive = head.keep_alive
        if self._tls is not None:
            req.vars["tls"] = self._tls
        if self.runtime.access_log is not None:
            # Not loop.time(): uvloop caches it per iteration, durations would read 0.
            req.start_time = time.monotonic()
        if head.host is not None:
            req.host = head.host
        length = head.length
        req.chunked = length == CHUNKED
        req.content_length = length if length is not None and length >= 0 else None
        req.expect_continue = head.expect_continue
        if req.uri[:1] not in ("/", "*", ""):
            # absolute-form: its authority replaces Host (RFC 9112 §3.2.2), as in Go.
            with contextlib.suppress(Exception):
                parsed = httptools.parse_url(req.uri.encode("latin-1"))
                if parsed.host:
                    req.host = parsed.host.decode("latin-1")
                    if parsed.port:
                        req.host += f":{parsed.port}"
        req.upgrade = head.upgrade
        if not head.keep_alive:
            self._last_request = True
        if req.has_body:
            self.parsing = req
            if req.chunked:
                # Trailers count against the same limit as the head.
                self._chunks = ChunkedDecoder(self.runtime.max_header_bytes)
            else:
                self._body_left = req.content_length or 0
            self.state = BODY
            self._set_deadline(self.runtime.timeouts.read_s)
        else:
            self.state = ACTIVE
        if self._cur is None:
            self._dispatch(req)
        else:
            self._pending.append(req)
            if len(self._pending) >= MAX_PIPELINED:
                self._pause_reading(PAUSE_PIPELINE)
        if not req.has_body:
            self._message_complete(req)

    def _on_body(self, req: Request, body: bytes) -> None:
        req.feed_body(body)
        if (
            req.body_sink is None
            and req._body_queue is not None
            and req.queued_body_bytes() > MAX_QUEUED_BODY_BYTES
        ):
            self._pause_reading(PAUSE_BODY)

    def _message_complete(self, req: Request) -> None:
        self.parsing = None
        req.end_body()
        if req.upgrade:
            # Hold what follows until the response: tunnel data after a 101, else dropped.
            self._upgrade_buf = []
            self._pause_reading(PAUSE_HOLD)
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
            self.write(CONTINUE_HEAD)
            self.flush()
        self._resume_reading(PAUSE_BODY)

    def pause_body(self) -> None:
        self._pause_reading(PAUSE_BODY)

    def resume_body(self) -> None:
        self._resume_reading(PAUSE_BODY)

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
        elif self.transport is not None and self.state != LINGER:
            self.transport.write(data)

    def begin_batch(self) -> bool:
        if self._batch is None:
            self._batch = []
            return True
        return False

    def end_batch(self) -> None:
        batch, self._batch = self._batch, None
        if (
            batch
            and self.transport is not None
            and self.state != LINGER  # half-closed after a refusal: nothing more is written
            and not self.transport.is_closing()
        ):
            self.transport.write(b"".join(batch) if len(batch) > 1 else batch[0])

    def flush(self) -> None:
        batch = self._batch
        if batch and self.state != LINGER:
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
        framing = response_framing(
            status, length, req.method == "HEAD", HTTP_11 if req.proto == "HTTP/1.1" else HTTP_10
        )
        if framing.content_length is not None:
            tail += f"Content-Length: {framing.content_length}\r\n"
        if framing.delimit == BY_CHUNKS:
            tail += "Transfer-Encoding: chunked\r\n"
            self._chunked_out = True
        elif framing.delimit == BY_CLOSE:
            keep = False  # HTTP/1.0: the body ends when the connection closes (RFC 9112 §6.3)
        if req.upgrade and status != 101:
            # What followed the Upgrade request was held unparsed (it may already be the new
            # protocol's bytes, RFC 9110 §7.8): never read it as requests; close.
            keep = False
        if not req.body_done:
            if req.expect_continue:
                # We never asked for the body (RFC 9110 §10.1.1): close rather than read it.
                keep = False
            if req.chunked or (req.content_length or 0) - req.body_received > MAX_DISCARD_BYTES:
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
        if self._paused_by & PAUSE_BODY:
            self._resume_reading(PAUSE_BODY)
        # Next pipelined request, if its head is already parsed.
        if self._pending:
            nxt = self._pending.popleft()
            self._resume_reading(PAUSE_PIPELINE)
            self._dispatch(nxt)
        elif self._error_after is not None:
            # Every request before the bad one is answered: now the refusal (RFC 9112 §9.3.2
            # keeps responses in request order).
            err, self._error_after = self._error_after, None
            self._refuse(err)
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
        self._resume_reading(PAUSE_PIPELINE | PAUSE_BODY | PAUSE_HOLD)
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

    def _refuse(self, err: RequestError) -> None:
        """Answer a request the wire rules refuse, after the requests before it. Responses
        already batched for this read go out first."""
        cur = self._cur
        broken = self.parsing  # a request whose body was being read when it went wrong
        self.parsing = None
        self._chunks = None
        if broken is not None and broken in self._pending:
            self._pending.remove(broken)  # never executed: it was waiting its turn
            broken = None
        if cur is not None and broken is None:
            # Requests parsed before this one are being answered: let them finish, then
            # refuse (response_done). Nothing more is read or executed meanwhile.
            self._error_after = err
            self._pause_reading(PAUSE_HOLD)
            self.flush()  # answers completed in this read still go out now
            return
        # The bad bytes belong to the request being answered (its body broke off), or nothing
        # is in flight: refuse now. A request whose body broke is aborted: the origin, if it
        # was proxied, never gets the rest of the body, so it never sees a complete request.
        t = self.transport
        self._pending.clear()
        if not t.is_closing():
            # Responses still batched (by this read, or by the upstream read that finished
            # the last one) go first: order is everything here.
            self.flush()
            if cur is None or not cur.head_sent:
                t.write(error_response(err.status, err.detail))
        if cur is not None:
            self._cur = None
            cur.done = True
            cb = cur.on_client_gone
            if cb is not None:
                cb()  # a proxy call drops its upstream connection
            cur.status = cur.status or err.status
            self.runtime.log_exchange(cur)
        self._linger()

    def _linger(self) -> None:
        """Stop reading requests; half-close, drop what the client still sends, then close."""
        self.state = LINGER
        self._resume_reading(PAUSE_PIPELINE | PAUSE_BODY | PAUSE_HOLD)
        t = self.transport
        if t.is_closing():
            return
        try:
            if t.can_write_eof():
                t.write_eof()
        except (OSError, RuntimeError, AttributeError):
            t.close()
            return
        self._set_deadline(LINGER_S)

    def _set_deadline(self, seconds: float | None) -> None:
        # The runtime's clock is updated by its 1 s sweeper: deadlines are that coarse anyway.
        self._deadline = self.runtime.now + seconds if seconds else 0.0

    # -- timeouts and shutdown (called by the runtime) -----------------------------------------

    def check_timeout(self, now: float) -> None:
        if self._deadline and now > self._deadline and self.state != CLOSED:
            if self._write_paused or self.state == LINGER:
                # write_timeout: the client stopped reading. close() would wait for the
                # buffered response forever; Go's write deadline fails the write and frees the
                # connection (and with it the upstream one): abort.
                self.state = CLOSED
                if self.transport is not None:
                    self.transport.abort()
                return
            # Like Go's server, a read/idle timeout closes the connection without a response.
            self.close()

    def shutdown(self) -> None:
        """Graceful stop: close if idle, else after the current response."""
        if self._cur is None and (self.state == IDLE or (self.state == HEAD and not self._buf)):
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
