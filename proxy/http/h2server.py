"""HTTP/2 server side (RFC 9113): one `HTTP2Connection` (asyncio.Protocol) per TLS client that
chose `h2` by ALPN, or plain-HTTP client that opened with the HTTP/2 preface on a server whose
`protocols` list h2c (proxy/http/alpn.py), on top of pyproxy's own connection state machine
(proxy/http/h2conn.py: framing, stream states, flow control, SETTINGS, PING, header validation
of RFC 9113 §8.2/§8.3; HPACK in proxy/http/hpack.py). It hands over each received burst as
one list of compact events and takes what we send in one write per burst.

Every stream becomes the same `Request` / `Exchange` pair an HTTP/1.1 request does, answered by
`runtime.dispatch`: handlers, matchers, placeholders, logs and metrics see one request model.
The exchange's `conn` is the stream (`H2Stream`), which offers the surface `HTTP1Connection`
offers an exchange (write_head / write_body / response_done / abort_exchange, batching, body
flow control) and turns it into frames:

- the response head becomes HEADERS (sent with the first body bytes, or with END_STREAM when
  there is no body; encoded as HPACK literals that leave the dynamic table alone, as nginx
  does, see `h2conn.literal_block`), the body DATA frames cut to the peer's flow-control windows and
  SETTINGS_MAX_FRAME_SIZE. What the window does not admit waits in a per-stream buffer; past
  `STREAM_BUFFER_BYTES` the producer (a proxy call: its upstream read) is paused, as the
  HTTP/1.1 path pauses it on transport backpressure, and resumed by WINDOW_UPDATE;
- the request body is handed to the handler as DATA arrives; its flow-control credit is
  returned (WINDOW_UPDATE) only once the handler takes it, so a handler that pushes back (an
  upstream that reads slowly) stops the client after one window;
- a handler error after the head resets the stream (RST_STREAM INTERNAL_ERROR, as Go's server
  does for a handler that panics or aborts); a client's RST_STREAM cancels the exchange like a
  closed HTTP/1.1 connection (the proxy call drops its upstream connection, logged as 499).

Limits are Go's http2.Server defaults as Caddy runs it: 250 concurrent streams, 1 MiB stream
and connection receive windows, SETTINGS_MAX_HEADER_LIST_SIZE = max_header_bytes + 320.
Floods (RFC 9113 §10.5) are held to Go's budgets, kept in proxy/http/h2limits.py: rapid reset
(handler slots, reset streams holding theirs until their work winds down, and a queue of 4 x 250
streams beyond which GOAWAY(ENHANCE_YOUR_CALM)); 10000 SETTINGS/PING acknowledgements queued for
a client that does not read; a header block still open past 2 x the header list size
(PROTOCOL_ERROR). HPACK bombs meet a decoder bound by the SETTINGS_MAX_HEADER_LIST_SIZE we
announce (a longer list is a connection error ENHANCE_YOUR_CALM, as h2 answered; Go answers 431
after decoding in full) and a 4096-byte dynamic table. A stream whose
window the client keeps closed longer than `timeouts.write` is reset (INTERNAL_ERROR) and its
upstream released; Go's WriteTimeout is a deadline on the whole response instead, counted from
the request (deviation: here only time spent blocked by a closed window counts).
SETTINGS_ENABLE_CONNECT_PROTOCOL is not sent: WebSocket clients open an HTTP/1.1 connection
(RFC 8441 is not implemented).

Lifecycle: a graceful stop sends GOAWAY naming the last stream taken (RFC 9113 §6.8), refuses
newer streams and closes once the open ones are answered. A reload keeps the connection: the
streams it opens afterwards are served by the new config (like HTTP/1.1 keepalive connections).
The idle timeout closes a connection without streams with GOAWAY(NO_ERROR).

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any, Final

from proxy.http import h2conn, h2limits
from proxy.http import h2frames as F
from proxy.http.exchange import Exchange, http_date
from proxy.http.fields import (
    H2_CONNECTION_SPECIFIC_FIELDS,
    HTTP_2,
    NO_BODY,
    h2_response_fields,
    response_framing,
)
from proxy.http.request import Request
from proxy.http.target import BadRequestTarget
from proxy.listen import set_tcp_keepalive

log = logging.getLogger("pyproxy.http")

# Go's http2.Server defaults (golang.org/x/net/http2/server.go), which Caddy keeps.
MAX_CONCURRENT_STREAMS: Final = 250  # defaultMaxStreams
STREAM_RECV_WINDOW: Final = 1 << 20  # MaxUploadBufferPerStream
CONN_RECV_WINDOW: Final = 1 << 20  # MaxUploadBufferPerConnection
HEADER_LIST_SLACK: Final = 320  # maxHeaderListSize(): MaxHeaderBytes + 10 fields * 32
# Response bytes a stream buffers beyond what the peer's window admits before its producer is
# paused (one upstream read may overshoot it; the buffer stays bounded by that).
STREAM_BUFFER_BYTES: Final = 64 * 1024
GOAWAY_LINGER_S: Final = 1.0  # Go's goAwayTimeout

_CANONICAL: dict[bytes, str] = {}
# An HTTP/1.1 response head line -> its HTTP/2 field: upstream heads repeat most of their lines.
_head_lines: dict[bytes, tuple[bytes, bytes]] = {}


def canonical_name(name: bytes) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey of an HTTP/2 field name (lowercase on the wire,
    RFC 9113 §8.2.1), so handlers, placeholders and the upstream request see the names an
    HTTP/1.1 client would have sent (Go's http2 server canonicalizes them too)."""
    out = _CANONICAL.get(name)
    if out is None:
        text = name.decode("latin-1")
        out = "-".join(p[:1].upper() + p[1:] for p in text.split("-"))
        if len(_CANONICAL) < 4096:
            _CANONICAL[name] = out
    return out


class H2Stream:
    """One request stream: what its Exchange calls `conn`."""

    __slots__ = (
        "_head",
        "_out",
        "_out_bytes",
        "_producer_paused",
        "_unacked",
        "body_paused",
        "conn",
        "counted",
        "ending",
        "ex",
        "no_body",
        "req",
        "reset",
        "runtime",
        "sent_end",
        "sid",
        "stalled_since",
    )

    def __init__(self, conn: HTTP2Connection, sid: int, runtime: Any) -> None:
        self.conn = conn
        self.sid = sid
        self.runtime = runtime
        self.req: Request | None = None
        self.ex: Exchange | None = None
        self._head: list[tuple[bytes, bytes]] | None = None  # HEADERS not sent yet
        self._out: deque[memoryview] = deque()
        self._out_bytes = 0
        self._producer_paused = False
        self._unacked = 0  # request body bytes received but not yet taken by the handler
        self.body_paused = False
        self.ending = False  # response complete: END_STREAM once the buffer is sent
        self.no_body = False  # HEAD, 1xx/204/304: body bytes are dropped
        self.reset = False
        self.sent_end = False
        self.counted = False  # holds a handler slot of the connection's budget
        self.stalled_since = 0.0  # when the peer's window last stopped this stream's output

    # -- batching (the upstream client and proxy call batch their writes) ----------------------

    @property
    def _batch(self) -> list[bytes] | None:
        return self.conn._batch

    @_batch.setter
    def _batch(self, value: list[bytes] | None) -> None:
        self.conn._batch = value

    def begin_batch(self) -> bool:
        return self.conn.begin_batch()

    def end_batch(self) -> None:
        self.conn.end_batch()

    def flush(self) -> None:
        self.pump()
        self.conn.send_now()

    # -- response ----------------------------------------------------------------------------

    def write_head(
        self, ex: Exchange, status: int, headers: list[tuple[str, str]], length: int | None
    ) -> None:
        fields = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self._prepare_head(status, fields, length, ex.req.method == "HEAD")

    def write_head_raw(
        self, ex: Exchange, status: int, block: bytes, length: int | None, has_date: bool
    ) -> None:
        # The proxy's fast path serialized an HTTP/1.1 head (status line first): read it back.
        fields: list[tuple[bytes, bytes]] = []
        cache = _head_lines
        for line in block.split(b"\r\n")[1:]:
            if line:
                field = cache.get(line)
                if field is None:
                    name, _sep, value = line.partition(b":")
                    field = (name.lower(), value.strip())
                    if len(cache) >= 4096:
                        cache.clear()  # bounded: a Date line changes every second
                    cache[line] = field
                fields.append(field)
        self._prepare_head(status, fields, length, ex.req.method == "HEAD")

    def _prepare_head(
        self, status: int, fields: list[tuple[bytes, bytes]], length: int | None, head_req: bool
    ) -> None:
        if self.reset:
            return
        framing = response_framing(status, length, head_req, HTTP_2)
        out = [(b":status", str(status).encode())]
        out += h2_response_fields(fields, http_date().encode(), framing.content_length)
        self.no_body = framing.delimit == NO_BODY
        self._head = out

    def _send_head(self, end: bool) -> None:
        head, self._head = self._head, None
        if head is None:
            return
        self.conn.h2.send_headers(self.sid, head, end)
        if end:
            self.sent_end = True

    def write(self, data: bytes) -> None:
        """Raw HTTP/1.1 bytes from a handler: only an interim head (103 Early Hints) is
        meaningful here; it becomes a HEADERS frame without END_STREAM (RFC 9113 §8.1)."""
        text = data.decode("latin-1")
        status_line, _sep, rest = text.partition("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit() or not 100 <= int(parts[1]) < 200:
            log.debug("h2 stream %d: raw write that is no interim response dropped", self.sid)
            return
        self._informational(int(parts[1]), rest)

    def _informational(self, status: int, block: str = "") -> None:
        if self.reset or self.sent_end or self.conn.closed:
            return
        out = [(b":status", str(status).encode())]
        for line in block.split("\r\n"):
            if line:
                name, _sep, value = line.partition(":")
                lname = name.lower().encode("latin-1")
                if lname not in H2_CONNECTION_SPECIFIC_FIELDS:
                    out.append((lname, value.strip().encode("latin-1")))
        self.conn.h2.send_headers(self.sid, out)
        self.conn.send_soon()

    def write_body(self, data: bytes) -> None:
        if not data or self.no_body or self.reset:
            return
        self._out.append(memoryview(data))
        self._out_bytes += len(data)
        conn = self.conn
        if conn._batch is not None:
            # Sent when the batch ends (or with the end of the response, in one frame with
            # END_STREAM): a proxied response's head, body and end usually come in one read.
            conn.dirty.add(self)
            return
        self.pump()
        conn.send_now()

    def pump(self) -> None:
        """Send what the flow-control windows admit (RFC 9113 §6.9), in frames of at most
        the peer's SETTINGS_MAX_FRAME_SIZE; pause or resume the producer on what is left."""
        if self.reset or self.sent_end or self.conn.closed:
            return
        h2c = self.conn.h2
        out = self._out
        sid = self.sid
        if self._head is not None:
            self._send_head(not out and self.ending)
        while out:
            room = min(h2c.window(sid), h2c.max_frame_size)
            if room <= 0:
                # The window is closed: a clock runs until WINDOW_UPDATE lets data out again.
                if not self.stalled_since:
                    self.stalled_since = self.conn.runtime.now
                break
            self.stalled_since = 0.0
            chunk = out[0]
            if len(chunk) <= room:
                out.popleft()
                # The last frame of a complete response carries END_STREAM.
                last = self.ending and not out
                h2c.send_data(sid, chunk.tobytes(), last)
                self._out_bytes -= len(chunk)
                if last:
                    self.sent_end = True
            else:
                h2c.send_data(sid, chunk[:room].tobytes())
                out[0] = chunk[room:]
                self._out_bytes -= room
        if not out and self.ending:
            if not self.sent_end:
                h2c.end_stream(sid)
                self.sent_end = True
            self.conn.stream_finished(self)
            return
        self._update_producer()

    def _update_producer(self) -> None:
        paused = self._out_bytes >= STREAM_BUFFER_BYTES or self.conn.write_paused
        if paused == self._producer_paused:
            return
        self._producer_paused = paused
        ex = self.ex
        flow = ex.flow if ex is not None else None
        if flow is not None:
            if paused:
                flow.client_pause()
            else:
                flow.client_resume()

    def response_done(self, ex: Exchange) -> None:
        self.runtime.log_exchange(ex)
        req = ex.req
        if not req.body_done:
            req.detach_body()
            self.take_body()
        if self.reset:
            return
        self.ending = True
        self.pump()
        self.conn.send_soon()

    def abort_exchange(self, ex: Exchange) -> None:
        """A handler error after the head, or Caddy's `abort`: reset the stream."""
        self.runtime.log_exchange(ex)
        self.cancel(F.INTERNAL_ERROR)

    def close(self) -> None:
        self.cancel(F.CANCEL)

    def cancel(self, code: int) -> None:
        if self.reset:
            return
        self.reset = True
        self._out.clear()
        self._out_bytes = 0
        self._head = None
        if self.conn.h2.stream_open(self.sid):
            # Not ended both ways yet (our END_STREAM, or the client's request body).
            self.conn.h2.reset_stream(self.sid, code)
        self.take_body()
        self.conn.stream_finished(self)
        self.conn.send_soon()

    def peer_reset(self) -> None:
        """The client reset the stream (RST_STREAM): like a closed HTTP/1.1 connection."""
        self.reset = True
        self._out.clear()
        self._out_bytes = 0
        self.take_body()
        ex = self.ex
        if ex is not None and not ex.done:
            cb = ex.on_client_gone
            if cb is not None:
                cb()
            if not ex.done:
                ex.done = True
                self.runtime.log_exchange(ex, client_gone=True)
        self.conn.stream_finished(self)

    def write_timed_out(self) -> None:
        """The client kept the window closed longer than the write timeout: reset the stream
        (RST_STREAM INTERNAL_ERROR, what Go's server sends when a stream's write deadline
        passes) and release what serves it (the proxy call drops its upstream connection)."""
        ex = self.ex
        log.debug("h2 stream %d: window closed longer than the write timeout", self.sid)
        self.cancel(F.INTERNAL_ERROR)
        if ex is not None and not ex.done:
            cb = ex.on_client_gone
            if cb is not None:
                cb()
            if not ex.done:
                ex.done = True
                self.runtime.log_exchange(ex, client_gone=True)

    def start_tunnel(self, tunnel: Any) -> None:
        # Unreachable: no HTTP/2 request is an Upgrade (RFC 9113 §8.6), req.upgrade is False.
        self.cancel(F.INTERNAL_ERROR)

    # -- request body ------------------------------------------------------------------------

    def on_data(self, data: bytes, flow_len: int) -> None:
        req = self.req
        if req is None:
            return
        req.feed_body(data)
        if req.body_sink is not None and not self.body_paused:
            if flow_len:
                self.conn.h2.ack_data(self.sid, flow_len)
        else:
            self._unacked += flow_len

    def take_body(self) -> None:
        """Return the credit of the body received so far (RFC 9113 §6.9: WINDOW_UPDATE once
        the data is consumed)."""
        n, self._unacked = self._unacked, 0
        if n:
            self.conn.h2.ack_data(self.sid, n)
            self.conn.send_soon()

    def body_wanted(self, req: Request) -> None:
        if req.expect_continue and not req.body_done:
            req.expect_continue = False
            self._informational(100)  # RFC 9110 §10.1.1
        self.body_paused = False
        self.take_body()

    def pause_body(self) -> None:
        self.body_paused = True

    def resume_body(self) -> None:
        self.body_paused = False
        self.take_body()


class HTTP2Connection(asyncio.Protocol):
    """One HTTP/2 client connection (after ALPN chose h2)."""

    def __init__(self, runtime: Any, scheme: str = "https") -> None:
        self.runtime = runtime
        self.scheme = scheme
        self.transport: Any = None
        self.streams: dict[int, H2Stream] = {}
        self._answered_early: set[int] = set()  # answered, the request body still open
        self._retiring: list[_RetiringStreams] = []
        self.budget = h2limits.ConnectionBudget(MAX_CONCURRENT_STREAMS)
        self._unstarted: deque[H2Stream] = deque()  # waiting for a handler slot
        self.dirty: set[H2Stream] = set()  # streams with body written during a batch
        self._batch: list[bytes] | None = None
        self._tls: dict[str, Any] | None = None
        self.write_paused = False
        self._goaway_last: int | None = None  # set once GOAWAY was sent: the last stream taken
        self._deadline = 0.0
        self.closed = False
        self.remote_ip = ""
        self.remote_port = 0

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.runtime.successor is not None:
            self.runtime = self.runtime.latest()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.remote_ip, self.remote_port = str(peer[0]), int(peer[1])
            if self.remote_ip.startswith("::ffff:") and "." in self.remote_ip:
                self.remote_ip = self.remote_ip[7:]
        self.runtime.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                set_tcp_keepalive(sock, self.runtime.server.keepalive_interval_s)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            cipher = sslobj.cipher()
            self._tls = {
                "version": sslobj.version() or "",
                "cipher_suite": cipher[0] if cipher else "",
                "proto": sslobj.selected_alpn_protocol() or "",
                "server_name": getattr(sslobj, "pyproxy_sni", None) or "",
                "resumed": bool(sslobj.session_reused),
            }
        self.h2 = h2c = h2conn.H2ServerConnection(
            MAX_CONCURRENT_STREAMS,
            STREAM_RECV_WINDOW,
            CONN_RECV_WINDOW,
            self.runtime.max_header_bytes + HEADER_LIST_SLACK,
        )
        h2c.initiate()
        self._set_deadline(self.runtime.timeouts.idle_s)
        self.send_now()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.runtime.connections.discard(self)
        for stream in list(self.streams.values()):
            stream.peer_reset()
        self.streams.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.runtime.timeouts.write_s:
            self._set_deadline(self.runtime.timeouts.write_s)
        for stream in list(self.streams.values()):
            stream._update_producer()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.budget.writes_drained()
        self._deadline = 0.0 if self.streams else self._deadline
        for stream in list(self.streams.values()):
            stream._update_producer()

    def eof_received(self) -> bool | None:
        return None

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        owned = self.begin_batch()
        try:
            h2c = self.h2
            events = h2c.receive(data)
            if h2c.error >= 0:
                # A connection error: the GOAWAY with its code is queued (RFC 9113 §5.4.1);
                # what came before it in this read is abandoned with the connection.
                log.debug("h2 connection error from %s: %s", self.remote_ip, events[-1][3].decode())
                self._batch = None
                self._goaway_sent_close()
                return
            for kind, sid, arg, payload, headers in events:
                if self.closed:
                    break  # a flood budget ended the connection
                try:
                    self._on_event(kind, sid, arg, payload, headers)
                except Exception:
                    # A bug here must not leave the connection half-served: end it (RFC 9113
                    # §5.4.1 INTERNAL_ERROR), the way an HTTP/1.1 read error answers 500.
                    log.exception("internal error serving an HTTP/2 connection")
                    h2c.goaway(F.INTERNAL_ERROR)
                    self._batch = None
                    self._goaway_sent_close()
                    return
        finally:
            if owned:
                self.end_batch()

    def _on_event(
        self, kind: int, sid: int, arg: int, payload: bytes, headers: h2conn.Headers | None
    ) -> None:
        if kind == h2conn.EV_DATA:
            stream = self.streams.get(sid)
            if stream is not None:
                stream.on_data(payload, arg)
                return
            # A stream we answered (or reset) already: its data still used window.
            self.h2.ack_data(sid, arg)
            if sid in self._answered_early:
                self._answered_early.discard(sid)
                self.h2.reset_stream(sid, F.NO_ERROR)
        elif kind == h2conn.EV_REQUEST:
            assert headers is not None
            self._request(sid, headers, arg != 0)
        elif kind == h2conn.EV_END:
            stream = self.streams.get(sid)
            if stream is not None and stream.req is not None:
                stream.req.end_body()
            self._answered_early.discard(sid)
        elif kind == h2conn.EV_WINDOW:
            if sid:
                stream = self.streams.get(sid)
                if stream is not None:
                    stream.pump()
            else:
                self._pump_all()
        elif kind == h2conn.EV_SETTINGS:
            self._pump_all()
            self._control_frame_queued()  # its acknowledgement is queued
        elif kind == h2conn.EV_PING:
            self._control_frame_queued()  # its acknowledgement is queued
        elif kind == h2conn.EV_RESET:
            # The client's RST_STREAM, or a stream error we found (e.g. a body longer than
            # its Content-Length): the exchange ends like on a closed HTTP/1.1 connection.
            stream = self.streams.get(sid)
            if stream is not None:
                stream.peer_reset()
            self._answered_early.discard(sid)
        elif kind == h2conn.EV_GOAWAY:
            # The client's GOAWAY: it takes no more from us, so the streams still open are
            # abandoned like on a closed connection (their proxy calls drop the upstream
            # request).
            self.closed = True
            for stream in list(self.streams.values()):
                stream.peer_reset()
            self.close()

    def _pump_all(self) -> None:
        for stream in list(self.streams.values()):
            if stream._out or stream.ending:
                stream.pump()

    # -- requests ----------------------------------------------------------------------------

    def _request(self, sid: int, headers: h2conn.Headers, ended: bool) -> None:
        if self._goaway_last is not None and sid > self._goaway_last:
            # After our GOAWAY (RFC 9113 §6.8): not processed, the client may retry it.
            self.h2.reset_stream(sid, F.REFUSED_STREAM)
            return
        if self.runtime.successor is not None:
            # A reload replaced this server: new streams are served by the new config.
            self.adopt(self.runtime.latest())
        rt = self.runtime
        self._deadline = 0.0
        stream = H2Stream(self, sid, rt)
        self.streams[sid] = stream
        method = path = authority = ""
        host_field = ""
        fields: list[tuple[str, str]] = []
        cookies: list[str] = []
        length: int | None = None
        bad_length = False
        expect = False
        for n, v in headers:
            if n[:1] == b":":
                if n == b":method":
                    method = v.decode("latin-1")
                elif n == b":path":
                    path = v.decode("latin-1")
                elif n == b":authority":
                    authority = v.decode("latin-1")
                continue  # :scheme: the connection's scheme is the request's (as in Go)
            text = v.decode("latin-1")
            if n == b"cookie":
                cookies.append(text)  # RFC 9113 §8.2.3: crumbs are joined again
                continue
            if n == b"host":
                host_field = text  # RFC 9113 §8.3.1: :authority wins over Host
                continue
            if n == b"content-length":
                if length is None and text.isdigit():
                    length = int(text)
                elif length is None or text != str(length):
                    bad_length = True
            elif n == b"expect" and text.lower() == "100-continue":
                expect = True
            fields.append((canonical_name(n), text))
        if cookies:
            fields.append(("Cookie", "; ".join(cookies)))
        if method == "CONNECT":
            path = authority  # RFC 9113 §8.5: the target is the authority
        req = Request(
            method, path, "HTTP/2.0", fields, self.remote_ip, self.remote_port, self.scheme
        )
        req._conn = stream
        stream.req = req
        req.host = authority or host_field
        if self._tls is not None:
            req.vars["tls"] = self._tls
        if rt.access_log is not None:
            req.start_time = time.monotonic()
        req.content_length = length
        # No Content-Length and DATA to come: a body of unknown length (sent upstream chunked,
        # like Go's transport does for ContentLength -1).
        req.chunked = length is None and not ended
        req.expect_continue = expect and not ended
        ex = Exchange(stream, req, rt)
        stream.ex = ex
        if bad_length:
            ex.respond(400, None)
            return
        verdict = self.budget.new_stream()
        if verdict.close:
            self._calm_down(verdict.reason)
        elif verdict.action == "queue":
            # Every handler slot is taken (some perhaps by streams reset a moment ago, whose
            # work is still winding down): it starts when one frees (Go's unstartedHandlers).
            self._unstarted.append(stream)
        else:
            stream.counted = True
            self._run(stream)

    def _run(self, stream: H2Stream) -> None:
        ex = stream.ex
        assert ex is not None
        if not self.h2.stream_open(stream.sid):
            # Reset by the client in the same read (closed already; its EV_RESET follows):
            # nothing to serve, but the slot stays taken until then.
            return
        try:
            stream.runtime.dispatch(ex)
        except BadRequestTarget:
            if not ex.done:
                ex.respond(400, None)
        except Exception:
            log.exception("handler error")
            if not ex.done:
                if ex.head_sent:
                    ex.abort()
                else:
                    ex.resp_headers = []
                    ex.respond(500, None)

    def _handler_done(self) -> None:
        self.budget.handler_done()
        self._start_queued()

    def _start_queued(self) -> None:
        """Start the handlers of queued streams while slots are free; drop the queued streams
        that were reset while they waited (Go's handlerDone)."""
        queue = self._unstarted
        while queue and not self.closed:
            stream = queue[0]
            if stream.reset:
                queue.popleft()
                self.budget.dequeue(started=False)
                continue
            if self.budget.free_slots <= 0:
                return
            queue.popleft()
            self.budget.dequeue(started=True)
            stream.counted = True
            self._run(stream)

    def _control_frame_queued(self) -> None:
        """An acknowledgement (PING, SETTINGS) was queued: counted while the client does not
        read what we write (Go's queuedControlFrames)."""
        if self.write_paused and self.budget.control_frames_queued(1).close:
            self._calm_down("too_many_control_frames")

    def _calm_down(self, reason: str) -> None:
        """A flood budget is spent: GOAWAY(ENHANCE_YOUR_CALM) and close (RFC 9113 §5.4.1)."""
        if self.closed:
            return
        log.warning(
            "h2 connection from %s closed: %s (GOAWAY ENHANCE_YOUR_CALM)", self.remote_ip, reason
        )
        self.h2.goaway(F.ENHANCE_YOUR_CALM)
        self._unstarted.clear()
        if self.write_paused:
            # The client does not read: nothing more reaches it; free what it holds now.
            self.closed = True
            for stream in list(self.streams.values()):
                stream.peer_reset()
            if self.transport is not None:
                self.transport.abort()
            return
        self._goaway_sent_close()

    def stream_finished(self, stream: H2Stream) -> None:
        """The stream is over on our side (END_STREAM sent, or reset)."""
        if self.streams.get(stream.sid) is stream:
            del self.streams[stream.sid]
        if stream.counted:
            stream.counted = False
            if stream.reset:
                # Its handler was cancelled; what it started (a dial, an upstream read) winds
                # down on the loop's next turn, and holds its slot until then (as Go counts the
                # handler of a reset stream until it returns).
                self.runtime.loop.call_soon(self._handler_done)
            else:
                self.budget.handler_done()
                if self._unstarted:
                    self.runtime.loop.call_soon(self._start_queued)
        if self._retiring:
            self._release_retired()
        req = stream.req
        if not stream.reset and req is not None and not req.body_done:
            # Answered before the client finished its request: if it goes on sending DATA it
            # is asked to stop then (RST_STREAM NO_ERROR, RFC 9113 §8.1). Not at once: until
            # then h2conn still checks what it sends on the stream (e.g. HEADERS that are no
            # trailers are a PROTOCOL_ERROR, §8.1). Bounded: these streams are open in h2conn
            # and count against SETTINGS_MAX_CONCURRENT_STREAMS.
            self._answered_early.add(stream.sid)
        if self.streams or self.closed:
            return
        if self._goaway_last is not None:
            self._close_gracefully()
            return
        if self.runtime.successor is not None:
            self.adopt(self.runtime.latest())
        self._set_deadline(self.runtime.timeouts.idle_s)

    # -- writing -----------------------------------------------------------------------------

    def begin_batch(self) -> bool:
        if self._batch is None:
            self._batch = []
            return True
        return False

    def end_batch(self) -> None:
        self._batch = None
        dirty = self.dirty
        if dirty:
            self.dirty = set()
            for stream in dirty:
                stream.pump()
        self.send_now()

    def send_soon(self) -> None:
        """Write what h2conn queued, unless a batch collects this event's writes."""
        if self._batch is None:
            self.send_now()

    def send_now(self) -> None:
        data = self.h2.data_to_send()
        t = self.transport
        if data and t is not None and not t.is_closing():
            t.write(data)

    # -- lifecycle (called by the runtime) ---------------------------------------------------

    def _set_deadline(self, seconds: float | None) -> None:
        self._deadline = self.runtime.now + seconds if seconds else 0.0

    def check_timeout(self, now: float) -> None:
        write_s = self.runtime.timeouts.write_s
        if write_s and not self.closed:
            stalled = [
                s
                for s in self.streams.values()
                if s.stalled_since and now - s.stalled_since > write_s and not s.reset
            ]
            for stream in stalled:
                stream.write_timed_out()
            if stalled:
                self.send_now()
        if not self._deadline or now <= self._deadline or self.closed:
            return
        if self.write_paused:
            # write_timeout: the client stopped reading; free the connection and its upstreams.
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            return
        if not self.streams:
            self._close_gracefully()  # idle_timeout

    def _close_gracefully(self) -> None:
        """GOAWAY(NO_ERROR) and close: nothing is in flight."""
        if self.closed:
            return
        self.h2.goaway(F.NO_ERROR)
        self._goaway_sent_close()

    def _goaway_sent_close(self) -> None:
        """Send the queued GOAWAY, then close after GOAWAY_LINGER_S, dropping what still
        arrives: closing at once with unread input makes the kernel reset the connection,
        and the peer may lose the GOAWAY (Go's server waits goAwayTimeout, 1 s, too)."""
        self.send_now()
        self.closed = True
        for stream in list(self.streams.values()):
            stream.peer_reset()
        # Still in the runtime's connections: a stopping server closes it without the wait.
        self.runtime.loop.call_later(GOAWAY_LINGER_S, self.close)

    def shutdown(self) -> None:
        """Graceful stop: GOAWAY now (RFC 9113 §6.8), close once open streams are answered."""
        if self.closed:
            return
        if not self.streams:
            self._close_gracefully()
            return
        if self._goaway_last is None:
            self._goaway_last = last = self.h2.highest_inbound_stream_id
            # Not final: the open streams must still be answered and their frames read.
            self.h2.goaway(F.NO_ERROR, last, final=False)
            self.send_now()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def busy(self) -> bool:
        return bool(self.streams)

    @property
    def tunnel(self) -> Any:
        return None

    def adopt(self, runtime: Any) -> None:
        """Move to `runtime` (the same listeners under a new config). New streams use it; open
        ones finish with the runtime they started with, which keeps a `_RetiringStreams` in
        its connection set until they are done (so its retirement waits for them, up to its
        grace period, before its pools are released)."""
        old = self.runtime
        old.connections.discard(self)
        if any(s.runtime is old for s in self.streams.values()):
            tracker = _RetiringStreams(self, old)
            self._retiring.append(tracker)
            old.connections.add(tracker)
        self.runtime = runtime
        if self.closed:
            return
        runtime.connections.add(self)
        if not runtime.accepting:
            self.shutdown()

    def _release_retired(self) -> None:
        for tracker in list(self._retiring):
            if not tracker.busy:
                self._retiring.remove(tracker)
                tracker.runtime.connections.discard(tracker)


class _RetiringStreams:
    """What a replaced runtime keeps of an HTTP/2 connection that moved on: its streams still
    open there. Looks like a connection to `ServerRuntime.retire`."""

    __slots__ = ("conn", "runtime")

    def __init__(self, conn: HTTP2Connection, runtime: Any) -> None:
        self.conn = conn
        self.runtime = runtime

    def _streams(self) -> list[H2Stream]:
        return [s for s in self.conn.streams.values() if s.runtime is self.runtime]

    @property
    def busy(self) -> bool:
        return bool(self._streams())

    @property
    def tunnel(self) -> Any:
        return None

    def check_timeout(self, now: float) -> None:
        pass  # the connection itself is swept by its current runtime

    def shutdown(self) -> None:
        pass  # the streams finish; the connection lives on in its new runtime

    def close(self) -> None:
        """The grace period is over: reset the streams still open under the old config."""
        self.runtime.connections.discard(self)
        for stream in self._streams():
            stream.cancel(F.CANCEL)
        self.conn.send_now()

    def adopt(self, runtime: Any) -> None:
        self.runtime.connections.discard(self)
