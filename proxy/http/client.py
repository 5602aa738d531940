"""HTTP/1.1 client side: one `UpstreamConnection` (Protocol + httptools) per upstream socket.

The connection parses responses and forwards every event to its current *call* (the request it
carries, see `proxy.handlers.reverse_proxy.ProxyCall`); between calls it sits idle in a
keepalive pool. Informational 1xx responses other than 101 are skipped (RFC 9110 §15.2), at
most 5 per request like Go's transport; a response to HEAD ends at its head whatever its
Content-Length says (RFC 9110 §9.3.2).

A connection is reused only when the response's framing held: the end of a response is
reported to the call after the whole read is parsed, and a read that carries any byte past that
end (a body on a 204/304 or HEAD response, more body than Content-Length, a second response)
closes the connection instead. Bytes arriving while the connection is idle close it too (Go's
transport: persistConn.readLoop, "Unsolicited response received on idle HTTP channel"). So a
broken upstream response can never become (part of) the answer to another request.

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, NoReturn, Protocol

import httptools

from proxy.http.fields import HOP_BY_HOP_FIELDS, PLAIN_CONNECTION_TOKENS

# Go's http.Transport default for MaxResponseHeaderBytes (Caddy's max_response_header_size).
MAX_RESPONSE_HEAD_BYTES: Final = 10 << 20
# Go's transport (persistConn.readResponse, max1xxResponses) gives up after this many 1xx
# informational responses to one request: "net/http: too many 1xx informational responses".
MAX_INFORMATIONAL_RESPONSES: Final = 5

# Fields on_header looks at: the hop-by-hop ones (removed from responses); Content-Length
# framing is the proxy's to write.
_SPECIAL: Final = HOP_BY_HOP_FIELDS | {b"content-length", b"date"}
# Most field names miss on length alone, which saves lowercasing them.
_SPECIAL_LENGTHS: Final = frozenset(len(n) for n in _SPECIAL)


def transfer_coding_error(http_11: bool, codings: list[bytes]) -> str:
    """Why a response's Transfer-Encoding fields (their values, in order) make its framing
    unusable, or "" when they are fine.

    Go's transport (net/http transfer.go, transferReader.parseTransferEncoding) accepts exactly
    one Transfer-Encoding field whose value is "chunked" in an HTTP/1.1 response and rejects
    everything else ("identity", "gzip", "gzip, chunked", two fields), so Caddy answers 502;
    an HTTP/1.0 response's Transfer-Encoding is ignored (Go issue 12785) and its body ends with
    the connection. llhttp decodes chunked even in HTTP/1.0, where Go would relay the chunk
    framing as content: that ambiguity is refused (RFC 9112 §6.1: an HTTP/1.0 message with
    Transfer-Encoding is to be treated as faulty framing).
    """
    if not codings:
        return ""
    if not http_11:
        for value in codings:
            for coding in value.split(b","):
                if coding.strip().lower() == b"chunked":
                    return "chunked transfer coding in an HTTP/1.0 response"
        return ""
    if len(codings) != 1:
        return f"too many transfer encodings: {b', '.join(codings).decode('latin-1')!r}"
    if codings[0].strip().lower() != b"chunked":
        return f"unsupported transfer encoding: {codings[0].decode('latin-1')!r}"
    return ""


def _upgrade_type(fields: list[tuple[bytes, bytes]]) -> bytes:
    # Go's upgradeType: the Upgrade value, but only when Connection names the "upgrade" token.
    connection_upgrade = False
    upgrade = b""
    for name, value in fields:
        lname = name.lower()
        if lname == b"connection":
            for token in value.split(b","):
                if token.strip().lower() == b"upgrade":
                    connection_upgrade = True
        elif lname == b"upgrade" and not upgrade:
            upgrade = value.strip()
    return upgrade if connection_upgrade else b""


def upgrade_refusal(requested: bytes, fields: list[tuple[bytes, bytes]]) -> str:
    """Why a 101 response with these fields must not become a tunnel for a request that asked
    for the `requested` protocol (b"" when it asked for none), or "" when it may.

    Go's ReverseProxy (httputil handleUpgradeResponse, which Caddy's reverseproxy/streaming.go
    copies) refuses a protocol that is not printable ASCII or differs, case-insensitively, from
    the requested one, and a 101 without Connection: upgrade and Upgrade (the transport then
    gives it no writable body: "101 switching protocols response with non-writable body").
    """
    offered = _upgrade_type(fields)
    if not offered:
        return "101 Switching Protocols without Connection: upgrade and Upgrade"
    for byte in offered:
        if byte < 0x20 or byte > 0x7E:
            return f"backend tried to switch to invalid protocol {offered.decode('latin-1')!r}"
    if offered.lower() != requested.lower():
        return (
            f"backend tried to switch protocol {offered.decode('latin-1')!r} when "
            f"{requested.decode('latin-1')!r} was requested"
        )
    return ""


class ResponseSink(Protocol):
    def on_response_head(self, status: int, length: int | None) -> None:
        """The head arrived; fields are in the connection (`lines`, `headers()`)."""

    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self, keep_alive: bool) -> None: ...
    def on_upgrade(self, rest: bytes) -> None: ...
    def upstream_lost(self, exc: Exception | None, got_bytes: bool) -> None: ...
    def upstream_bad_response(self, reason: str) -> None: ...
    def upstream_pause(self) -> None: ...
    def upstream_resume(self) -> None: ...
    def begin_batch(self) -> bool: ...
    def end_batch(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_chunked",
        "_complete",
        "_head_bytes",
        "_headers",
        "_in_body",
        "_informational",
        "_interim_count",
        "_keep",
        "_length",
        "_read_paused",
        "_read_timer",
        "_refused",
        "_status",
        "_te",
        "_unsent_at_check",
        "_write_timer",
        "_written_since_check",
        "call",
        "client",
        "closed",
        "conn_tokens",
        "counted",
        "got_bytes",
        "has_date",
        "head_only",
        "idle_since",
        "last_read",
        "lines",
        "parser",
        "pool",
        "read_timeout_s",
        "requests",
        "transport",
        "tunnel",
        "write_timeout_s",
    )

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.call: ResponseSink | None = None
        self.tunnel: Any = None
        self.closed = False
        self.counted = False  # included in the pool's open-connection count
        self.got_bytes = False
        self.head_only = False
        self.idle_since = 0.0
        self.requests = 0  # requests carried so far (>0 means the connection is reused)
        # Only the fields on_header singles out (hop-by-hop, framing, Date); the others are
        # in `lines`. `headers()` rebuilds the full list for the slow path.
        self._headers: list[tuple[bytes, bytes]] = []
        # Non-hop-by-hop response fields, serialized: b"".join(lines) is b"Name: value\r\n"...
        self.lines: list[bytes] = []
        self.has_date = False
        self.conn_tokens = False
        self.client: Any = None  # the client connection whose writes we batch
        self._length: int | None = None
        self._te = False  # the head has Transfer-Encoding (validated at its end)
        self._chunked = False  # the body is chunked
        self._in_body = False
        self._status = 0
        self._informational = False
        self._interim_count = 0  # 1xx responses to the current request
        self._head_bytes = 0  # bytes received while waiting for the current head
        # The current call's response is complete (its end is reported once the read that
        # completed it is parsed); any byte the parser meets after this is past its end.
        self._complete = False
        self._keep = False  # the parser's keep-alive verdict for the complete response
        self._refused = ""  # why a parser callback refused the response
        # Caddy's transport read_timeout / write_timeout (its tcpRWTimeoutConn sets a net.Conn
        # deadline before every Read and Write of the upstream connection). Go's transport has
        # a Read pending on the connection all the time except while the client's side holds
        # the body back, so the read deadline runs while waiting for the response, during its
        # body, while idle in the pool and inside an upgraded stream; it is paused with reading.
        # One timer per deadline, re-armed lazily from `last_read` (no timer churn per read).
        self.read_timeout_s: float = pool.read_timeout_s
        self.write_timeout_s: float = pool.write_timeout_s
        self.last_read = 0.0
        self._read_paused = False
        self._read_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._unsent_at_check = 0  # the transport's write buffer when the write timer was set
        self._written_since_check = 0  # bytes written since then

    # -- lifecycle ---------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.read_timeout_s > 0:
            self._arm_read_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_deadlines()
        self.pool.forget(self)
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.upstream_closed()
            return
        call, self.call = self.call, None
        if call is not None:
            if self._in_body and self._length is None and not self._chunked and exc is None:
                # A close-delimited body (RFC 9112 §6.3 rule 8) ends with the connection.
                call.on_response_end(False)
            else:
                call.upstream_lost(exc, self.got_bytes)

    def eof_received(self) -> bool | None:
        return None  # close our side too: HTTP/1.1 has no use for a half-open upstream

    def start(self, call: ResponseSink, head_only: bool, client: Any = None) -> None:
        """Begin carrying a request; the caller writes it right after."""
        self.call = call
        self.client = client
        self.got_bytes = False
        self.head_only = head_only
        self.requests += 1
        self._complete = False
        self._interim_count = 0
        self._refused = ""
        self._reset_head()

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)
            if self.write_timeout_s > 0:
                self._watch_write(len(data))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.call = None
            self._cancel_deadlines()
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.call = None
            self._cancel_deadlines()
            self.transport.abort()

    # -- read_timeout / write_timeout --------------------------------------------------------

    def _arm_read_deadline(self) -> None:
        loop = self.pool.loop
        self.last_read = loop.time()
        if self._read_timer is None:
            self._read_timer = loop.call_at(self.last_read + self.read_timeout_s, self._read_due)

    def _read_due(self) -> None:
        self._read_timer = None
        if self.closed or self._read_paused:
            return  # resume_reading starts a fresh deadline
        loop = self.pool.loop
        due = self.last_read + self.read_timeout_s
        if loop.time() < due:
            self._read_timer = loop.call_at(due, self._read_due)
            return
        self._deadline_exceeded("read")

    def _watch_write(self, size: int) -> None:
        # asyncio writes never block: the equivalent of Go's Write outliving its deadline is
        # the transport's buffer not draining by a single byte for write_timeout.
        if self._write_timer is not None:
            self._written_since_check += size
            return
        unsent = self.transport.get_write_buffer_size()
        if unsent:
            self._unsent_at_check = unsent
            self._written_since_check = 0
            self._write_timer = self.pool.loop.call_later(self.write_timeout_s, self._write_due)

    def _write_due(self) -> None:
        self._write_timer = None
        if self.closed:
            return
        unsent = self.transport.get_write_buffer_size()
        if not unsent:
            return
        if unsent < self._unsent_at_check + self._written_since_check:
            # Some bytes went out: a new deadline for the rest.
            self._unsent_at_check = unsent
            self._written_since_check = 0
            self._write_timer = self.pool.loop.call_later(self.write_timeout_s, self._write_due)
            return
        self._deadline_exceeded("write")

    def _deadline_exceeded(self, which: str) -> None:
        call = self.call
        # Go: the Read or Write fails with "i/o timeout" and the transport closes the
        # connection. A request in flight fails like a broken response (502 before the head,
        # an aborted response after it); an idle connection is just closed; an upgraded stream
        # ends on both sides (the client side is closed from connection_lost).
        if call is not None:
            call.upstream_bad_response(f"{which} tcp {self._peer()}: i/o timeout")
        if not self.closed:
            self.call = None
            self.closed = True
            self._cancel_deadlines()
            self.transport.abort()

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"{peer[0]}:{peer[1]}"
        return "upstream"

    def _cancel_deadlines(self) -> None:
        timer, self._read_timer = self._read_timer, None
        if timer is not None:
            timer.cancel()
        timer, self._write_timer = self._write_timer, None
        if timer is not None:
            timer.cancel()

    @property
    def usable(self) -> bool:
        return not self.closed and not self.transport.is_closing()

    # -- flow control ------------------------------------------------------------------------

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_pause()
        elif self.call is not None:
            self.call.upstream_pause()

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_resume()
        elif self.call is not None:
            self.call.upstream_resume()

    def pause_reading(self) -> None:
        if not self.closed:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.closed:
            self._read_paused = False
            self.transport.resume_reading()
            if self.read_timeout_s > 0:
                self._arm_read_deadline()

    # -- reading -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.read_timeout_s > 0:
            self.last_read = self.pool.loop.time()
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.from_upstream(data)
            return
        call = self.call
        if call is None:
            # Bytes on an idle connection (RFC 9112 §9.3 doesn't allow unsolicited responses):
            # it can't be reused safely. Go's transport closes it the same way.
            self.close()
            return
        self.got_bytes = True
        if not self._in_body:
            # httptools keeps an unfinished head without limit: bound it like Go's transport.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_RESPONSE_HEAD_BYTES:
                call.upstream_bad_response("response head too large")
                return
        client = self.client
        # Coalesce everything this read produces for the client into one write.
        owned = client is not None and client._batch is None
        if owned:
            client._batch = []
        try:
            beyond_end = False
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                offset = int(exc.args[0]) if exc.args else len(data)
                if self.call is not None:
                    self.call.on_upgrade(data[offset:])
            except httptools.HttpParserError as exc:
                if self._complete:
                    # The parser met bytes past the end of the complete response (the callbacks
                    # stop it at the first one): that response stands, the connection goes.
                    beyond_end = True
                else:
                    self._parse_failed(exc)
            if self._complete:
                self._end_response(self._keep and not beyond_end)
        finally:
            if owned:
                client.end_batch()

    def _parse_failed(self, exc: Exception) -> None:
        call = self.call
        if call is None:
            return
        if self._refused:
            call.upstream_bad_response(self._refused)
        elif isinstance(exc, httptools.HttpParserCallbackError):
            call.upstream_bad_response("response handling failed")
        else:
            call.upstream_bad_response(f"malformed response: {exc}")

    def _end_response(self, keep: bool) -> None:
        # Called once the whole read is parsed, never from inside the parser: the call may hand
        # this connection to the next request at once (a pipelined one), and nothing of this
        # read may reach that request.
        self._complete = False
        call = self.call
        if call is None:
            return
        self.call = None
        if keep and self.head_only:
            # The parser still expects the body the head announced: the next response gets a
            # fresh one.
            self.parser = httptools.HttpResponseParser(self)
        call.on_response_end(keep)

    def _refuse(self, reason: str) -> NoReturn:
        """Stop the parser: the response cannot be relayed (reported as a bad response)."""
        self._refused = reason
        raise ValueError(reason)

    def _reset_head(self) -> None:
        # When a request starts and after an interim (1xx) head. Not in on_message_begin: that
        # runs after data_received counted the read against the head limit reset here.
        self._headers = []
        self.lines = []
        self.has_date = False
        self.conn_tokens = False
        self._length = None
        self._te = False
        self._chunked = False
        self._in_body = False
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        if self._complete:
            # The first byte of another message after the complete response (a body on a
            # 204/304, more body than Content-Length, a pipelined answer nobody asked for).
            # llhttp skips CR/LF between messages before calling this; those bytes are consumed
            # and cannot reach any response.
            raise ValueError("bytes after the end of the response")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) not in _SPECIAL_LENGTHS:
            self.lines.extend((name, b": ", value, b"\r\n"))
            return
        lname = name.lower()
        if lname in _SPECIAL:
            if lname != b"date":
                self._headers.append((name, value))
            if lname == b"content-length":
                self._length = int(value)
            elif lname == b"transfer-encoding":
                self._te = True
            elif lname == b"date":
                self.has_date = True
                self.lines.extend((name, b": ", value, b"\r\n"))
            elif lname == b"connection" and value.lower() not in PLAIN_CONNECTION_TOKENS:
                self.conn_tokens = True  # names more hop-by-hop fields: slow path
            return
        # Serialized once, here (as fragments: extend is the cheapest way to collect them);
        # the proxy's fast path sends b"".join(lines) as it is.
        self.lines.extend((name, b": ", value, b"\r\n"))

    def headers(self) -> list[tuple[bytes, bytes]]:
        """All response fields as (name, value) pairs; built only when a slow path asks."""
        block = b"".join(self.lines)
        out = [tuple(line.split(b": ", 1)) for line in block.split(b"\r\n") if line]
        return [*out, *self._headers]  # type: ignore[list-item]

    def on_headers_complete(self) -> None:
        status = self._status = self.parser.get_status_code()
        if status < 100:
            # llhttp takes any 3 digits. Go's ReadResponse does too, but its server cannot write
            # a status below 100 (checkWriteHeaderCode), so Caddy gives the client no response.
            self._refuse(f"malformed HTTP status code {status:03d}")
        if self._te:
            self._check_transfer_coding()
        if 100 <= status < 200 and status != 101:
            self._interim_count += 1
            if self._interim_count > MAX_INFORMATIONAL_RESPONSES:
                self._refuse("too many 1xx informational responses")
            self._informational = True
            self._reset_head()
            return
        self._informational = False
        call = self.call
        if call is None:
            return
        length = self._length
        if self.head_only:
            call.on_response_head(status, length)
            if self.call is call:
                # RFC 9110 §9.3.2: a HEAD response has no content, whatever its framing
                # headers say: it is complete here.
                self._keep = self._head_keepalive()
                self._complete = True
            return
        if status in (204, 304):
            length = 0
        self._in_body = True
        call.on_response_head(status, length)

    def _check_transfer_coding(self) -> None:
        codings = [v for n, v in self._headers if n.lower() == b"transfer-encoding"]
        http_11 = self.parser.get_http_version() not in ("0.9", "1.0")
        reason = transfer_coding_error(http_11, codings)
        if reason:
            self._refuse(reason)
        # HTTP/1.0: the coding is ignored (as in Go) and the body ends with the connection.
        self._chunked = http_11

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            # Body bytes after a HEAD response's head are past its end.
            raise ValueError("body in a response to HEAD")
        call = self.call
        if call is not None:
            call.on_response_body(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._complete:
            # HEAD: the parser ends the message it thought had a body. That is only at the head
            # when the head announced no body; a chunked one means it read a body (RFC 9110
            # §9.3.2 allows none) that was past the end of the response.
            if self._chunked and self._status not in (204, 304):
                raise ValueError("body in a response to HEAD")
            return
        self._in_body = False
        if self._status == 101:
            return  # the upgrade exception follows: the connection becomes a tunnel
        if self.call is not None:
            self._keep = self.parser.should_keep_alive()
            self._complete = True

    def _head_keepalive(self) -> bool:
        for name, value in self._headers:
            if name.lower() == b"connection" and b"close" in value.lower():
                return False
        return self.parser.get_http_version() == "1.1"
