"""The server side of one HTTP/2 connection (RFC 9113): a state machine fed received bytes,
answering with events, and told what to send. No sockets, no clock: proxy/http/h2server.py
wires it to asyncio and to the request model.

`receive(data)` parses the bytes in one pass and returns events, each a 5-tuple
`(kind, stream_id, arg, data, headers)`:

    EV_REQUEST  sid, arg=1 if END_STREAM came with it, headers = the decoded request fields
    EV_DATA     sid, arg=flow-controlled length (padding included), data = the body bytes
    EV_END      sid: the request ended (END_STREAM on DATA, or trailers; trailers are dropped)
    EV_WINDOW   sid (0: the connection): more send window
    EV_SETTINGS the peer's SETTINGS were applied (and their ACK queued)
    EV_PING     a PING was answered (its ACK queued)
    EV_RESET    sid, arg=error code: the stream is gone (the peer's RST_STREAM, or a stream
                error we detected on a stream already handed out as EV_REQUEST)
    EV_GOAWAY   sid=the peer's last stream id, arg=error code, data=debug data
    EV_ERROR    arg=error code, data=reason: a connection error; GOAWAY is queued and nothing
                more is read (§5.4.1)

What is sent (`send_headers`, `send_data`, `reset_stream`, the ACKs, WINDOW_UPDATE, GOAWAY)
is queued and taken in one piece by `data_to_send()`: one transport write per receive burst.

What it checks, as h2 did for us and h2spec tests: the preface and the first SETTINGS (§3.4),
frame sizes (§4.2), stream states and identifiers (§5.1, §5.1.1), the concurrency limit
(§5.1.2, REFUSED_STREAM), self-dependency (§5.3.1), flow control both ways with window
overflow (§5.2, §6.9), padding (§6.1, §6.2), CONTINUATION sequencing (§6.10), SETTINGS values
(§6.5.2), request header validity (§8.2, §8.3) and Content-Length against the DATA received
(§8.1.1). Error choices follow Go's server (x/net/http2), which Caddy runs: a malformed request
is a stream error PROTOCOL_ERROR, malformed trailers and a HEADERS after the request's that is
no trailers are connection errors. Frames on a stream we reset are ignored (§5.1 "closed");
DATA or HEADERS on a stream closed otherwise are a connection error STREAM_CLOSED.

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

from typing import Final

from proxy.http import h2frames as F
from proxy.http import h2limits
from proxy.http.fields import H2_CONNECTION_SPECIFIC_FIELDS
from proxy.http.hpack import Decoder, Encoder, HeaderListTooLarge, HPACKError

Headers = list[tuple[bytes, bytes]]
Event = tuple[int, int, int, bytes, Headers | None]

EV_REQUEST: Final = 1
EV_DATA: Final = 2
EV_END: Final = 3
EV_WINDOW: Final = 4
EV_SETTINGS: Final = 5
EV_PING: Final = 6
EV_RESET: Final = 7
EV_GOAWAY: Final = 8
EV_ERROR: Final = 9

DEFAULT_WINDOW: Final = 65535  # §6.9.2: every window's initial size
# Streams closed lately, remembered to tell a late frame on one (ignored after our
# RST_STREAM, STREAM_CLOSED otherwise) from a stream id that was skipped (§5.1.1). Bounded:
# older ones count as skipped.
CLOSED_MEMORY: Final = 1024

# RFC 9110 §5.6.2 tchar, lowercase only (§8.2.1: uppercase names are malformed).
_NAME_CHARS: Final = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"


# RFC 7541 Appendix A: the static table's names (first index of each) and :status entries.
_STATIC_NAME_INDEX: Final = {
    name: i + 1
    for i, name in reversed(
        list(
            enumerate(
                b":authority :method :method :path :path :scheme :scheme :status :status :status "
                b":status :status :status :status accept-charset accept-encoding accept-language "
                b"accept-ranges accept access-control-allow-origin age allow authorization "
                b"cache-control content-disposition content-encoding content-language "
                b"content-length content-location content-range content-type cookie date etag "
                b"expect expires from host if-match if-modified-since if-none-match if-range "
                b"if-unmodified-since last-modified link location max-forwards proxy-authenticate "
                b"proxy-authorization range referer refresh retry-after server set-cookie "
                b"strict-transport-security transfer-encoding user-agent vary via "
                b"www-authenticate".split()
            )
        )
    )
}
_STATUS_INDEXED: Final = {
    b"200": b"\x88",
    b"204": b"\x89",
    b"206": b"\x8a",
    b"304": b"\x8b",
    b"400": b"\x8c",
    b"404": b"\x8d",
    b"500": b"\x8e",
}
_name_prefixes: dict[bytes, bytes] = {}  # field name -> its encoded name part (bounded)


def hpack_integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 §5.1: `value` with an N-bit prefix, `first` holding the representation's
    pattern bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal_block(headers: Headers) -> bytes:
    """A header block that leaves the dynamic table alone: :status from the static table when
    it is there, every other field a literal without indexing (RFC 7541 §6.2.2), its name a
    static-table index where one exists, no Huffman coding. What nginx sends for responses;
    each field costs a dict lookup and a join instead of an encoder's table search, for some
    bytes more on the wire than indexing would take (names must be lowercase, §8.2.1)."""
    parts: list[bytes] = []
    for name, value in headers:
        if name == b":status":
            indexed = _STATUS_INDEXED.get(value)
            if indexed is not None:
                parts.append(indexed)
                continue
        prefix = _name_prefixes.get(name)
        if prefix is None:
            index = _STATIC_NAME_INDEX.get(name, 0)
            if index:
                prefix = hpack_integer(index, 4, 0)
            else:
                prefix = b"\x00" + hpack_integer(len(name), 7, 0) + name
            if len(_name_prefixes) < 1024:
                _name_prefixes[name] = prefix
        parts.append(prefix)
        n = len(value)
        parts.append(bytes((n,)) if n < 127 else hpack_integer(n, 7, 0))
        parts.append(value)
    return b"".join(parts)


def check_request(headers: Headers) -> tuple[str, int]:
    """(why the request is malformed or "", its Content-Length or -1 when absent, -2 when
    present but not one non-negative integer: left to the server, which answers 400).

    §8.3.1: pseudo-headers first, each once, only the request ones; :method, :scheme and a
    non-empty :path unless CONNECT (§8.5: :authority only). §8.2.1/§8.2.2: lowercase token
    names, no NUL/CR/LF or surrounding whitespace in values, no connection-specific fields,
    `te` only "trailers". §8.3.1: Host, when also present, names what :authority names."""
    method = scheme = path = authority = host = b""
    has_method = has_scheme = has_path = has_authority = has_host = False
    regular = False
    length = -1
    for name, value in headers:
        if not name:
            return "empty field name", -1
        if name[0] == 0x3A:  # ':'
            if regular:
                return "pseudo-header field after a regular one", -1
            if name == b":method":
                if has_method:
                    return "duplicate :method", -1
                has_method, method = True, value
            elif name == b":path":
                if has_path:
                    return "duplicate :path", -1
                has_path, path = True, value
            elif name == b":scheme":
                if has_scheme:
                    return "duplicate :scheme", -1
                has_scheme, scheme = True, value
            elif name == b":authority":
                if has_authority:
                    return "duplicate :authority", -1
                has_authority, authority = True, value
            else:
                # :status, or :protocol (RFC 8441 is not offered: no ENABLE_CONNECT_PROTOCOL).
                return "unknown pseudo-header field", -1
            continue
        regular = True
        if name.translate(None, _NAME_CHARS):
            return "invalid field name", -1
        if b"\x00" in value or b"\r" in value or b"\n" in value:
            return "invalid field value", -1
        if value and (value[0] in (0x20, 0x09) or value[-1] in (0x20, 0x09)):
            return "field value with surrounding whitespace", -1
        if name in H2_CONNECTION_SPECIFIC_FIELDS:  # §8.2.2: malformed in HTTP/2
            return "connection-specific field", -1
        if name == b"te":
            if value.lower() != b"trailers":
                return "te other than trailers", -1
        elif name == b"content-length":
            if value.isdigit() and (length == -1 or length == int(value)):
                length = int(value)
            else:
                length = -2
        elif name == b"host":
            has_host, host = True, value
    if not has_method:
        return "missing :method", -1
    if method == b"CONNECT":
        if not has_authority or has_scheme or has_path:
            return "CONNECT with :scheme or :path, or without :authority", -1
    else:
        if not has_scheme or not has_path:
            return "missing :scheme or :path", -1
        if not path:
            return "empty :path", -1
    del scheme
    if has_host and has_authority and host != authority:
        return "Host differs from :authority", -1
    return "", length


def check_trailers(headers: Headers) -> str:
    """§8.1: trailers carry no pseudo-header fields; names and values as in a request."""
    for name, value in headers:
        if not name or name[0] == 0x3A:
            return "pseudo-header field in trailers"
        if name.translate(None, _NAME_CHARS):
            return "invalid field name in trailers"
        if b"\x00" in value or b"\r" in value or b"\n" in value:
            return "invalid field value in trailers"
    return ""


class _Stream:
    """A stream the peer opened and we accepted."""

    __slots__ = (
        "content_length",
        "local_closed",
        "received",
        "recv_window",
        "remote_closed",
        "send_window",
        "sid",
        "unacked",
    )

    def __init__(self, sid: int, send_window: int, recv_window: int, content_length: int) -> None:
        self.sid = sid
        self.send_window = send_window
        self.recv_window = recv_window
        self.content_length = content_length
        self.received = 0
        self.unacked = 0  # body bytes consumed since our last WINDOW_UPDATE for the stream
        self.remote_closed = False
        self.local_closed = False


class H2ServerConnection:
    """The connection state. `max_concurrent_streams`, `initial_window` (per stream),
    `connection_window` and `max_header_list_size` are what we advertise."""

    def __init__(
        self,
        max_concurrent_streams: int = 250,
        initial_window: int = DEFAULT_WINDOW,
        connection_window: int = DEFAULT_WINDOW,
        max_header_list_size: int = 65536,
    ) -> None:
        self.max_concurrent_streams = max_concurrent_streams
        self.local_initial_window = initial_window
        self.local_connection_window = connection_window
        self.max_header_list_size = max_header_list_size
        self.reader = F.FrameReader()
        self.decoder = Decoder(4096, max_header_list_size)
        self.encoder = Encoder()
        self.out: list[bytes] = []
        self.streams: dict[int, _Stream] = {}
        self.closed_streams: dict[int, bool] = {}  # sid -> True when we reset it
        self.highest_inbound_stream_id = 0
        self.error = -1  # the code of the connection error that ended it, -1 while alive
        self.goaway_sent = False
        self._goaway_last = 0
        self._preface = b""
        self._preface_done = False
        self._settings_seen = False
        # The peer's settings (§6.5.2 initial values until its SETTINGS say otherwise).
        self.peer_initial_window = DEFAULT_WINDOW
        self.max_frame_size = F.DEFAULT_MAX_FRAME_SIZE  # the peer's: what we may send
        self.peer_header_table_size = 4096
        # Set when the peer's SETTINGS_HEADER_TABLE_SIZE changed ours: the next header block
        # must start with the dynamic table size update (RFC 7541 §4.2), which the encoder
        # writes; the dynamic-table-free blocks of `literal_block` wait until it has.
        self._table_update_pending = False
        self.send_window = DEFAULT_WINDOW  # the connection's, for what we send
        self.recv_window = DEFAULT_WINDOW  # the connection's, for what the peer sends
        self._conn_unacked = 0
        # The open header block: HEADERS without END_HEADERS, then CONTINUATION (§6.10).
        self._block_sid = 0
        self._block_end_stream = False
        self._block_self_dependent = False
        self._block_parts: list[bytes] = []
        self._block_size = 0

    # -- sending -----------------------------------------------------------------------------

    def initiate(self) -> None:
        """Our SETTINGS (the server's part of the preface, §3.4) and the connection window."""
        self.out.append(
            F.settings_frame(
                [
                    (F.SETTINGS_MAX_CONCURRENT_STREAMS, self.max_concurrent_streams),
                    (F.SETTINGS_INITIAL_WINDOW_SIZE, self.local_initial_window),
                    (F.SETTINGS_MAX_HEADER_LIST_SIZE, self.max_header_list_size),
                ]
            )
        )
        extra = self.local_connection_window - DEFAULT_WINDOW
        if extra > 0:
            self.out.append(F.window_update(0, extra))
            self.recv_window += extra

    def data_to_send(self) -> bytes:
        out = self.out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        self.out = []
        return data

    def stream_open(self, sid: int) -> bool:
        return sid in self.streams

    def window(self, sid: int) -> int:
        """What may be sent on `sid` now (§6.9.1: the stream's and the connection's window)."""
        st = self.streams.get(sid)
        if st is None or st.local_closed:
            return 0
        return min(st.send_window, self.send_window)

    def send_headers(self, sid: int, headers: Headers, end_stream: bool = False) -> None:
        st = self.streams.get(sid)
        if st is None or st.local_closed:
            return
        if self._table_update_pending:
            self._table_update_pending = False
            block = self.encoder.encode(headers)
        else:
            block = literal_block(headers)
        self.out.append(F.headers_frames(sid, block, end_stream, self.max_frame_size))
        if end_stream:
            self._local_end(st)

    def send_data(self, sid: int, data: bytes, end_stream: bool = False) -> None:
        """DATA within the windows: the caller cuts `data` to `window(sid)` and
        `max_frame_size`."""
        st = self.streams.get(sid)
        if st is None or st.local_closed:
            return
        n = len(data)
        st.send_window -= n
        self.send_window -= n
        self.out.append(F.frame_header(n, F.DATA, F.FLAG_END_STREAM if end_stream else 0, sid))
        if n:
            self.out.append(data)
        if end_stream:
            self._local_end(st)

    def end_stream(self, sid: int) -> None:
        self.send_data(sid, b"", True)

    def reset_stream(self, sid: int, code: int) -> None:
        """RST_STREAM (§6.4); later frames on the stream are ignored (§5.1 "closed")."""
        self.out.append(F.rst_stream(sid, code))
        self.streams.pop(sid, None)
        self._remember_closed(sid, True)

    def ack_data(self, sid: int, n: int) -> None:
        """`n` flow-controlled bytes of `sid` were consumed: return their credit (§6.9), in
        WINDOW_UPDATE frames once half a window is owed (as h2 and Go do: fewer frames)."""
        if n <= 0:
            return
        self._credit_connection(n)
        st = self.streams.get(sid)
        if st is not None and not st.remote_closed:
            st.unacked += n
            if st.unacked >= self.local_initial_window // 2 or st.recv_window <= 0:
                self.out.append(F.window_update(sid, st.unacked))
                st.recv_window += st.unacked
                st.unacked = 0

    def goaway(self, code: int, last_stream_id: int = -1, final: bool = True) -> None:
        """GOAWAY (§6.8). `final`: nothing more is read (a connection error, or closing)."""
        last = self.highest_inbound_stream_id if last_stream_id < 0 else last_stream_id
        if self.goaway_sent:
            last = min(last, self._goaway_last)  # §6.8: never more than a GOAWAY before
        self._goaway_last = last
        self.out.append(F.goaway(last, code))
        self.goaway_sent = True
        if final and self.error < 0:
            self.error = code

    def _credit_connection(self, n: int) -> None:
        self._conn_unacked += n
        if (
            self._conn_unacked >= self.local_connection_window // 2
            or self.recv_window < self.local_connection_window // 2
        ):
            self.out.append(F.window_update(0, self._conn_unacked))
            self.recv_window += self._conn_unacked
            self._conn_unacked = 0

    def _local_end(self, st: _Stream) -> None:
        st.local_closed = True
        if st.remote_closed:
            del self.streams[st.sid]
            self._remember_closed(st.sid, False)

    def _remember_closed(self, sid: int, by_us: bool) -> None:
        closed = self.closed_streams
        closed[sid] = by_us
        if len(closed) > CLOSED_MEMORY:
            del closed[next(iter(closed))]

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self.error >= 0:
            return events
        if not self._preface_done:
            pre = self._preface + data
            if len(pre) < len(F.PREFACE):
                if not F.PREFACE.startswith(pre):
                    self._connection_error(F.PROTOCOL_ERROR, "invalid connection preface", events)
                    return events
                self._preface = pre
                return events
            if not pre.startswith(F.PREFACE):
                self._connection_error(F.PROTOCOL_ERROR, "invalid connection preface", events)
                return events
            self._preface = b""
            self._preface_done = True
            data = pre[len(F.PREFACE) :]
        reader = self.reader
        reader.feed(data)
        while self.error < 0:
            frame = reader.next_frame()
            if frame is None:
                if reader.oversize:
                    # §4.2: a frame larger than SETTINGS_MAX_FRAME_SIZE.
                    self._connection_error(F.FRAME_SIZE_ERROR, "frame too large", events)
                break
            ftype, flags, sid, payload = frame
            self._frame(ftype, flags, sid, payload, events)
        return events

    def _connection_error(self, code: int, reason: str, events: list[Event]) -> None:
        """§5.4.1: GOAWAY with the code, then the connection ends."""
        if self.error >= 0:
            return
        last = self.highest_inbound_stream_id
        if self.goaway_sent:
            last = min(last, self._goaway_last)  # §6.8: never more than a GOAWAY before
        self._goaway_last = last
        self.out.append(F.goaway(last, code, reason.encode()))
        self.goaway_sent = True
        self.error = code
        events.append((EV_ERROR, 0, code, reason.encode(), None))

    def _stream_error(self, sid: int, code: int, events: list[Event]) -> None:
        """§5.4.2: RST_STREAM; a stream already handed out is announced as EV_RESET."""
        self.out.append(F.rst_stream(sid, code))
        if self.streams.pop(sid, None) is not None:
            events.append((EV_RESET, sid, code, b"", None))
        self._remember_closed(sid, True)

    def _idle(self, sid: int) -> bool:
        # Even ids are the server's, and it pushes none: never opened (§5.1.1).
        return sid > self.highest_inbound_stream_id or not sid & 1

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if self._block_sid:
            # §6.10: nothing but the block's CONTINUATION frames until END_HEADERS.
            if ftype != F.CONTINUATION or sid != self._block_sid:
                self._connection_error(F.PROTOCOL_ERROR, "header block interrupted", events)
                return
            self._continuation(flags, payload, events)
            return
        if not self._settings_seen:
            # §3.4: the preface's SETTINGS comes first.
            if ftype != F.SETTINGS or flags & F.FLAG_ACK:
                self._connection_error(F.PROTOCOL_ERROR, "preface without SETTINGS", events)
                return
            self._settings_seen = True
        if ftype == F.DATA:
            self._data(flags, sid, payload, events)
        elif ftype == F.HEADERS:
            self._headers(flags, sid, payload, events)
        elif ftype == F.WINDOW_UPDATE:
            self._window_update(sid, payload, events)
        elif ftype == F.SETTINGS:
            self._settings(flags, sid, payload, events)
        elif ftype == F.RST_STREAM:
            self._rst_stream(sid, payload, events)
        elif ftype == F.PING:
            if sid != 0:
                self._connection_error(F.PROTOCOL_ERROR, "PING on a stream", events)
            elif len(payload) != 8:
                self._connection_error(F.FRAME_SIZE_ERROR, "PING length", events)
            elif not flags & F.FLAG_ACK:
                self.out.append(F.ping_ack(payload))
                events.append((EV_PING, 0, 0, b"", None))
        elif ftype == F.PRIORITY:
            # §5.3.2: accepted and ignored (RFC 9113 deprecates the scheme); §6.3 checks.
            if sid == 0:
                self._connection_error(F.PROTOCOL_ERROR, "PRIORITY on stream 0", events)
            elif len(payload) != 5:
                self._stream_error(sid, F.FRAME_SIZE_ERROR, events)
            elif int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == sid:
                self._stream_error(sid, F.PROTOCOL_ERROR, events)  # §5.3.1
        elif ftype == F.GOAWAY:
            if sid != 0:
                self._connection_error(F.PROTOCOL_ERROR, "GOAWAY on a stream", events)
            elif len(payload) < 8:
                self._connection_error(F.FRAME_SIZE_ERROR, "GOAWAY length", events)
            else:
                last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                code = int.from_bytes(payload[4:8], "big")
                events.append((EV_GOAWAY, last, code, payload[8:], None))
        elif ftype == F.PUSH_PROMISE:
            # §8.4: a client cannot push.
            self._connection_error(F.PROTOCOL_ERROR, "PUSH_PROMISE from a client", events)
        elif ftype == F.CONTINUATION:
            self._connection_error(F.PROTOCOL_ERROR, "CONTINUATION without HEADERS", events)
        # §5.5: frames of unknown types are ignored.

    def _data(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if sid == 0:
            self._connection_error(F.PROTOCOL_ERROR, "DATA on stream 0", events)
            return
        body = F.strip_padding(flags, payload)
        if body is None:
            self._connection_error(F.PROTOCOL_ERROR, "DATA padding too long", events)
            return
        n = len(payload)  # §6.9.1: the whole payload, padding included, is flow-controlled
        if n > self.recv_window:
            self._connection_error(F.FLOW_CONTROL_ERROR, "connection window exceeded", events)
            return
        self.recv_window -= n
        st = self.streams.get(sid)
        if st is None:
            if self._idle(sid):
                self._connection_error(F.PROTOCOL_ERROR, "DATA on an idle stream", events)
                return
            self._credit_connection(n)  # nobody consumes it: its credit returns now
            if self.closed_streams.get(sid, False):
                return  # we reset it; the peer may not know yet (§5.1)
            self._connection_error(F.STREAM_CLOSED, "DATA on a closed stream", events)
            return
        if st.remote_closed:
            self._credit_connection(n)
            self._stream_error(sid, F.STREAM_CLOSED, events)
            return
        if n > st.recv_window:
            self._credit_connection(n)
            self._stream_error(sid, F.FLOW_CONTROL_ERROR, events)
            return
        st.recv_window -= n
        st.received += len(body)
        end = flags & F.FLAG_END_STREAM != 0
        cl = st.content_length
        if cl >= 0 and (st.received > cl or (end and st.received != cl)):
            # §8.1.1: a body that does not match its Content-Length is malformed.
            self._credit_connection(n)
            self._stream_error(sid, F.PROTOCOL_ERROR, events)
            return
        if n or body:
            events.append((EV_DATA, sid, n, body, None))
        if end:
            self._remote_end(st, events)

    def _remote_end(self, st: _Stream, events: list[Event]) -> None:
        st.remote_closed = True
        events.append((EV_END, st.sid, 0, b"", None))
        if st.local_closed:
            del self.streams[st.sid]
            self._remember_closed(st.sid, False)

    def _headers(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if sid == 0:
            self._connection_error(F.PROTOCOL_ERROR, "HEADERS on stream 0", events)
            return
        priority = flags & F.FLAG_PRIORITY != 0
        block = F.strip_padding(flags, payload, 5 if priority else 0)
        if block is None:
            self._connection_error(F.PROTOCOL_ERROR, "HEADERS padding too long", events)
            return
        self_dependent = False
        if priority:
            self_dependent = int.from_bytes(block[:4], "big") & 0x7FFFFFFF == sid
            block = block[5:]
        end_stream = flags & F.FLAG_END_STREAM != 0
        if flags & F.FLAG_END_HEADERS:
            self._header_block(sid, end_stream, self_dependent, block, events)
            return
        self._block_sid = sid
        self._block_end_stream = end_stream
        self._block_self_dependent = self_dependent
        self._block_parts = [block]
        self._block_size = len(block)
        self._check_block_size(events)

    def _continuation(self, flags: int, payload: bytes, events: list[Event]) -> None:
        self._block_parts.append(payload)
        self._block_size += len(payload)
        if not self._check_block_size(events):
            return
        if flags & F.FLAG_END_HEADERS:
            sid = self._block_sid
            block = b"".join(self._block_parts)
            self._block_sid = 0
            self._block_parts = []
            self._block_size = 0
            self._header_block(
                sid, self._block_end_stream, self._block_self_dependent, block, events
            )

    def _check_block_size(self, events: list[Event]) -> bool:
        if h2limits.header_block_too_large(self._block_size, self.max_header_list_size):
            # CVE-2024-27316: refuse to buffer more of a block that cannot decode to a header
            # list we accept (Go answers PROTOCOL_ERROR).
            self._block_parts = []
            self._connection_error(F.PROTOCOL_ERROR, "header block too large", events)
            return False
        return True

    def _header_block(
        self, sid: int, end_stream: bool, self_dependent: bool, block: bytes, events: list[Event]
    ) -> None:
        # Decoded whatever becomes of the stream: the HPACK table is the connection's (§4.3).
        try:
            headers = self.decoder.decode(block)
        except HeaderListTooLarge:
            # Past the SETTINGS_MAX_HEADER_LIST_SIZE we advertise (an HPACK bomb, or a client
            # ignoring it): h2's answer, kept (Go replies 431 after decoding in full).
            self._connection_error(F.ENHANCE_YOUR_CALM, "header list too large", events)
            return
        except HPACKError:
            self._connection_error(F.COMPRESSION_ERROR, "header block does not decode", events)
            return
        st = self.streams.get(sid)
        if st is not None:
            self._trailers(st, end_stream, headers, events)
            return
        if self._idle(sid):
            if not sid & 1:
                self._connection_error(F.PROTOCOL_ERROR, "even stream id", events)
                return
        else:
            closed = self.closed_streams.get(sid)
            if closed is None:
                # §5.1.1: ids only grow; a smaller one was skipped and is closed.
                self._connection_error(F.PROTOCOL_ERROR, "stream id went down", events)
            elif not closed:
                self._connection_error(F.STREAM_CLOSED, "HEADERS on a closed stream", events)
            elif not end_stream or check_trailers(headers):
                # We reset it, so what the client had in flight is ignored (§5.1), but a
                # second HEADERS that is no valid trailers is malformed whatever our reset
                # did (§8.1): the error trailers on an open stream get (Go does the same).
                self._connection_error(F.PROTOCOL_ERROR, "malformed trailers", events)
            return
        self.highest_inbound_stream_id = sid
        if self_dependent:
            self._stream_error(sid, F.PROTOCOL_ERROR, events)  # §5.3.1
            return
        if len(self.streams) >= self.max_concurrent_streams:
            self._stream_error(sid, F.REFUSED_STREAM, events)  # §5.1.2
            return
        reason, length = check_request(headers)
        if reason or (end_stream and length > 0):
            # §8.1.1: malformed (Go: a stream error PROTOCOL_ERROR).
            self._stream_error(sid, F.PROTOCOL_ERROR, events)
            return
        st = _Stream(sid, self.peer_initial_window, self.local_initial_window, length)
        st.remote_closed = end_stream
        self.streams[sid] = st
        events.append((EV_REQUEST, sid, 1 if end_stream else 0, b"", headers))

    def _trailers(
        self, st: _Stream, end_stream: bool, headers: Headers, events: list[Event]
    ) -> None:
        if st.remote_closed:
            self._stream_error(st.sid, F.STREAM_CLOSED, events)  # §5.1 half-closed (remote)
            return
        # §8.1: a second HEADERS is trailers, which end the stream. Go: connection errors.
        if not end_stream:
            self._connection_error(F.PROTOCOL_ERROR, "HEADERS without END_STREAM", events)
            return
        if check_trailers(headers):
            self._connection_error(F.PROTOCOL_ERROR, "malformed trailers", events)
            return
        if st.content_length >= 0 and st.received != st.content_length:
            self._stream_error(st.sid, F.PROTOCOL_ERROR, events)  # §8.1.1
            return
        self._remote_end(st, events)

    def _rst_stream(self, sid: int, payload: bytes, events: list[Event]) -> None:
        if sid == 0:
            self._connection_error(F.PROTOCOL_ERROR, "RST_STREAM on stream 0", events)
            return
        if len(payload) != 4:
            self._connection_error(F.FRAME_SIZE_ERROR, "RST_STREAM length", events)
            return
        if self._idle(sid):
            self._connection_error(F.PROTOCOL_ERROR, "RST_STREAM on an idle stream", events)
            return
        if self.streams.pop(sid, None) is None:
            return  # closed already
        self._remember_closed(sid, False)
        events.append((EV_RESET, sid, int.from_bytes(payload, "big"), b"", None))

    def _window_update(self, sid: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            self._connection_error(F.FRAME_SIZE_ERROR, "WINDOW_UPDATE length", events)
            return
        inc = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if sid == 0:
            if inc == 0:
                self._connection_error(F.PROTOCOL_ERROR, "WINDOW_UPDATE of 0", events)
                return
            self.send_window += inc
            if self.send_window > F.MAX_WINDOW:
                self._connection_error(F.FLOW_CONTROL_ERROR, "window above 2^31-1", events)
                return
        else:
            st = self.streams.get(sid)
            if st is None:
                if self._idle(sid):
                    self._connection_error(
                        F.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream", events
                    )
                return  # closed: ignored (§6.9)
            if inc == 0:
                self._stream_error(sid, F.PROTOCOL_ERROR, events)
                return
            st.send_window += inc
            if st.send_window > F.MAX_WINDOW:
                self._stream_error(sid, F.FLOW_CONTROL_ERROR, events)
                return
        if events:
            last = events[-1]
            if last[0] == EV_WINDOW and last[1] == sid:
                return  # one event per run of updates
        events.append((EV_WINDOW, sid, 0, b"", None))

    def _settings(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if sid != 0:
            self._connection_error(F.PROTOCOL_ERROR, "SETTINGS on a stream", events)
            return
        if flags & F.FLAG_ACK:
            if payload:
                self._connection_error(F.FRAME_SIZE_ERROR, "SETTINGS ACK with payload", events)
            return
        if len(payload) % 6:
            self._connection_error(F.FRAME_SIZE_ERROR, "SETTINGS length", events)
            return
        for pos in range(0, len(payload), 6):
            ident = (payload[pos] << 8) | payload[pos + 1]
            value = int.from_bytes(payload[pos + 2 : pos + 6], "big")
            if ident == F.SETTINGS_HEADER_TABLE_SIZE:
                if value != self.peer_header_table_size:
                    self.peer_header_table_size = value
                    self.encoder.set_max_table_size(min(value, 4096))
                    self._table_update_pending = True
            elif ident == F.SETTINGS_ENABLE_PUSH:
                if value > 1:
                    self._connection_error(F.PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1", events)
                    return
            elif ident == F.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > F.MAX_WINDOW:
                    self._connection_error(
                        F.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1", events
                    )
                    return
                # §6.9.2: every stream's window moves by the difference (and may go negative).
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for st in self.streams.values():
                    st.send_window += delta
                    if st.send_window > F.MAX_WINDOW:
                        self._connection_error(
                            F.FLOW_CONTROL_ERROR, "stream window above 2^31-1", events
                        )
                        return
            elif ident == F.SETTINGS_MAX_FRAME_SIZE:
                if not F.DEFAULT_MAX_FRAME_SIZE <= value <= F.MAX_FRAME_SIZE_LIMIT:
                    self._connection_error(F.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range", events)
                    return
                self.max_frame_size = value
            # MAX_CONCURRENT_STREAMS limits pushes (we send none), MAX_HEADER_LIST_SIZE is
            # advisory (§6.5.2), unknown ones are ignored.
        self.out.append(F.SETTINGS_ACK)
        events.append((EV_SETTINGS, 0, 0, b"", None))
