"""The HTTP/2 server connection state machine (proxy/http/h2conn.py), fed bytes in memory.

Client frames are written with hyperframe and requests encoded with the `hpack` package, so the
codec under test never checks itself; what the server sends is read back with hyperframe."""

from __future__ import annotations

from collections.abc import Callable

import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from test_h2frames import parse_all

from proxy.http import h2conn as C
from proxy.http import h2frames as F

GET = [(":method", "GET"), (":scheme", "https"), (":authority", "example.com"), (":path", "/")]
POST = [(":method", "POST"), *GET[1:]]
MAX_HEADER_LIST = 8192


class Client:
    """A connected client: the preface and SETTINGS exchanged, the server's frames read."""

    def __init__(self, **server_args: int) -> None:
        args = {
            "max_concurrent_streams": 250,
            "initial_window": 1 << 20,
            "connection_window": 1 << 20,
            "max_header_list_size": MAX_HEADER_LIST,
        }
        args.update(server_args)
        self.server = C.H2ServerConnection(**args)
        self.server.initiate()
        self.encoder = hpack.Encoder()
        self.greeting = self.read()
        self.events = self.send(F.PREFACE + SettingsFrame(0).serialize())

    def send(self, data: bytes) -> list[C.Event]:
        return self.server.receive(data)

    def frames(self, *frames: Frame) -> list[C.Event]:
        return self.send(b"".join(f.serialize() for f in frames))

    def block(self, headers: list[tuple[str, str]]) -> bytes:
        return bytes(self.encoder.encode(headers))

    def request(
        self, sid: int, headers: list[tuple[str, str]] = GET, end: bool = True
    ) -> list[C.Event]:
        flags = ["END_HEADERS", "END_STREAM"] if end else ["END_HEADERS"]
        return self.frames(HeadersFrame(sid, self.block(headers), flags=flags))

    def read(self) -> list[Frame]:
        return parse_all(self.server.data_to_send())


def kinds(events: list[C.Event]) -> list[tuple[int, int]]:
    return [(e[0], e[1]) for e in events]


def test_greeting_settings_and_connection_window() -> None:
    c = Client()
    settings, window = c.greeting
    assert isinstance(settings, SettingsFrame)
    assert settings.settings == {
        SettingsFrame.MAX_CONCURRENT_STREAMS: 250,
        SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 20,
        SettingsFrame.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
    }
    assert isinstance(window, WindowUpdateFrame)
    assert window.window_increment == (1 << 20) - 65535
    # The client's SETTINGS is acknowledged.
    (ack,) = c.read()
    assert isinstance(ack, SettingsFrame) and "ACK" in ack.flags
    assert kinds(c.events) == [(C.EV_SETTINGS, 0)]


def test_preface_may_arrive_in_pieces() -> None:
    server = C.H2ServerConnection()
    wire = F.PREFACE + SettingsFrame(0).serialize()
    events = []
    for i in range(len(wire)):
        events += server.receive(wire[i : i + 1])
    assert kinds(events) == [(C.EV_SETTINGS, 0)]


@pytest.mark.parametrize(
    "wire",
    [
        b"GET / HTTP/1.1\r\n\r\n" + b"x" * 10,
        F.PREFACE + PingFrame(0, b"12345678").serialize(),  # §3.4: SETTINGS first
        F.PREFACE + SettingsFrame(0, flags=["ACK"]).serialize(),
    ],
    ids=["http1", "ping-first", "settings-ack-first"],
)
def test_bad_preface_is_a_protocol_error(wire: bytes) -> None:
    server = C.H2ServerConnection()
    events = server.receive(wire)
    assert events[-1][:3] == (C.EV_ERROR, 0, F.PROTOCOL_ERROR)
    assert server.error == F.PROTOCOL_ERROR
    assert server.receive(SettingsFrame(0).serialize()) == []  # nothing more is read


def test_get_request_and_response() -> None:
    c = Client()
    c.read()
    events = c.request(1, [*GET, ("accept", "*/*"), ("cookie", "a=1"), ("cookie", "b=2")])
    ((kind, sid, ended, _data, headers),) = events
    assert (kind, sid, ended) == (C.EV_REQUEST, 1, 1)
    assert headers is not None and headers[4:] == [
        (b"accept", b"*/*"),
        (b"cookie", b"a=1"),
        (b"cookie", b"b=2"),
    ]
    assert c.server.stream_open(1)
    c.server.send_headers(1, [(b":status", b"200")])
    assert c.server.window(1) == 65535
    c.server.send_data(1, b"hi", True)
    head, body = c.read()
    assert isinstance(head, HeadersFrame) and "END_HEADERS" in head.flags
    assert [tuple(h) for h in hpack.Decoder().decode(head.data, raw=True)] == [(b":status", b"200")]
    assert isinstance(body, DataFrame) and body.data == b"hi" and "END_STREAM" in body.flags
    assert not c.server.stream_open(1)  # closed both ways
    assert c.server.window(1) == 0


def test_request_body_data_end_and_trailers() -> None:
    c = Client()
    assert kinds(c.request(1, [*POST, ("content-length", "5")], end=False)) == [(C.EV_REQUEST, 1)]
    events = c.frames(
        DataFrame(1, b"ab", flags=["PADDED"], pad_length=3),
        DataFrame(1, b"cde"),
        HeadersFrame(1, c.block([("x-trailer", "1")]), flags=["END_HEADERS", "END_STREAM"]),
    )
    assert events == [
        (C.EV_DATA, 1, 6, b"ab", None),  # flow-controlled length counts the padding
        (C.EV_DATA, 1, 3, b"cde", None),
        (C.EV_END, 1, 0, b"", None),
    ]


def test_continuation_frames_make_one_header_block() -> None:
    c = Client()
    block = c.block([*GET, ("x-long", "v" * 100)])
    events = c.frames(
        HeadersFrame(1, block[:10], flags=["END_STREAM"]),
        ContinuationFrame(1, block[10:50]),
        ContinuationFrame(1, block[50:], flags=["END_HEADERS"]),
    )
    ((kind, sid, ended, _data, headers),) = events
    assert (kind, sid, ended) == (C.EV_REQUEST, 1, 1)
    assert headers is not None and headers[-1] == (b"x-long", b"v" * 100)


def test_response_head_larger_than_the_peer_frame_size_uses_continuation() -> None:
    c = Client()
    c.request(1)
    c.read()
    c.server.send_headers(1, [(b":status", b"200"), (b"x-big", b"y" * 20000)], end_stream=True)
    head, rest = c.read()
    assert isinstance(head, HeadersFrame) and isinstance(rest, ContinuationFrame)
    assert "END_STREAM" in head.flags and "END_HEADERS" in rest.flags
    decoded = hpack.Decoder().decode(head.data + rest.data, raw=True)
    assert tuple(list(decoded)[1]) == (b"x-big", b"y" * 20000)


def test_ping_is_answered_and_its_ack_is_not() -> None:
    c = Client()
    c.read()
    events = c.frames(PingFrame(0, b"abcdefgh"), PingFrame(0, b"zzzzzzzz", flags=["ACK"]))
    assert kinds(events) == [(C.EV_PING, 0)]
    (ack,) = c.read()
    assert isinstance(ack, PingFrame) and "ACK" in ack.flags and ack.opaque_data == b"abcdefgh"


def test_peer_settings_move_the_send_windows_and_frame_size() -> None:
    c = Client()
    c.request(1, end=False)
    c.server.send_data(1, b"x" * 1000)
    assert c.server.window(1) == 65535 - 1000
    c.frames(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 500}))
    # §6.9.2: the stream's window moves by the difference, here below zero.
    assert c.server.streams[1].send_window == 500 - 1000
    assert c.server.window(1) < 0
    c.frames(SettingsFrame(0, settings={SettingsFrame.MAX_FRAME_SIZE: 32768}))
    assert c.server.max_frame_size == 32768
    events = c.frames(WindowUpdateFrame(1, 1000), WindowUpdateFrame(1, 1))
    assert kinds(events) == [(C.EV_WINDOW, 1)]  # one event for a run of updates
    assert c.server.window(1) == 501


def test_consumed_data_is_credited_in_half_window_steps() -> None:
    c = Client(initial_window=1000, connection_window=65535)
    c.read()
    c.request(1, POST, end=False)
    c.frames(DataFrame(1, b"x" * 400))
    c.server.ack_data(1, 400)
    assert c.read() == []  # below half a window: nothing yet
    c.frames(DataFrame(1, b"x" * 400))
    c.server.ack_data(1, 400)
    (update,) = c.read()
    assert isinstance(update, WindowUpdateFrame)
    assert (update.stream_id, update.window_increment) == (1, 800)
    # More than the stream's window: a stream error FLOW_CONTROL_ERROR (§6.9.1).
    events = c.frames(DataFrame(1, b"x" * 1001))
    assert events == [(C.EV_RESET, 1, F.FLOW_CONTROL_ERROR, b"", None)]
    (rst,) = [f for f in c.read() if isinstance(f, RstStreamFrame)]
    assert rst.error_code == F.FLOW_CONTROL_ERROR


def test_frames_on_a_stream_we_reset_are_ignored_but_its_data_is_credited() -> None:
    c = Client(connection_window=65535)
    c.request(1, POST, end=False)
    c.server.reset_stream(1, F.CANCEL)
    c.read()
    block = c.block([("x-t", "1")])
    events = c.frames(
        # In flight when we reset: not an error (§5.1 "closed").
        *(DataFrame(1, b"y" * 16000) for _ in range(3)),
        HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]),
        WindowUpdateFrame(1, 10),
        RstStreamFrame(1, F.CANCEL),
    )
    assert events == []
    (update,) = c.read()  # the connection window is returned, nobody consumes that data
    assert isinstance(update, WindowUpdateFrame) and update.stream_id == 0
    # The HPACK state stayed in step: the trailer block was decoded although ignored.
    assert kinds(c.request(3, [*GET, ("x-t", "1")])) == [(C.EV_REQUEST, 3)]


def test_concurrent_streams_past_the_limit_are_refused() -> None:
    c = Client(max_concurrent_streams=2)
    c.read()
    events = c.request(1, end=False) + c.request(3, end=False) + c.request(5, end=False)
    assert kinds(events) == [(C.EV_REQUEST, 1), (C.EV_REQUEST, 3)]
    (rst,) = c.read()
    assert isinstance(rst, RstStreamFrame)
    assert (rst.stream_id, rst.error_code) == (5, F.REFUSED_STREAM)  # §5.1.2


def test_request_ended_by_peer_reset_is_not_open() -> None:
    c = Client()
    events = c.request(1, end=False) + c.frames(RstStreamFrame(1, F.CANCEL))
    assert kinds(events) == [(C.EV_REQUEST, 1), (C.EV_RESET, 1)]
    assert events[1][2] == F.CANCEL
    assert not c.server.stream_open(1)


def test_goaway_last_stream_id_never_grows() -> None:
    c = Client()
    c.request(1, end=False)
    c.read()
    c.server.goaway(F.NO_ERROR, 1, final=False)
    c.request(3)  # still read after a graceful GOAWAY
    c.server.goaway(F.NO_ERROR)
    first, second = (f for f in c.read() if isinstance(f, GoAwayFrame))
    assert (first.last_stream_id, second.last_stream_id) == (1, 1)  # §6.8
    assert c.server.error == F.NO_ERROR


def test_client_goaway_is_an_event() -> None:
    c = Client()
    events = c.frames(GoAwayFrame(0, last_stream_id=0, error_code=F.NO_ERROR, additional_data=b"x"))
    assert events == [(C.EV_GOAWAY, 0, F.NO_ERROR, b"x", None)]


def test_unknown_frame_types_are_ignored() -> None:
    c = Client()
    events = c.send(_raw(0xFA, 0xFF, 0, b"whatever"))  # §5.5
    assert events == []
    assert kinds(c.request(1)) == [(C.EV_REQUEST, 1)]


# ---- connection errors: GOAWAY with the code, nothing more is read ---------------------------


def _raw(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return F.frame_header(len(payload), ftype, flags, sid) + payload


CONNECTION_ERRORS: list[tuple[str, Callable[[Client], bytes], int]] = [
    ("data-stream-0", lambda c: _raw(F.DATA, 0, 0, b"x"), F.PROTOCOL_ERROR),
    ("data-idle", lambda c: DataFrame(1, b"x").serialize(), F.PROTOCOL_ERROR),
    ("rst-idle", lambda c: RstStreamFrame(1, 0).serialize(), F.PROTOCOL_ERROR),
    ("rst-stream-0", lambda c: _raw(F.RST_STREAM, 0, 0, b"\0\0\0\0"), F.PROTOCOL_ERROR),
    ("rst-length", lambda c: _raw(F.RST_STREAM, 0, 1, b"\0\0\0"), F.FRAME_SIZE_ERROR),
    ("window-idle", lambda c: WindowUpdateFrame(1, 1).serialize(), F.PROTOCOL_ERROR),
    ("window-zero", lambda c: _raw(F.WINDOW_UPDATE, 0, 0, b"\0\0\0\0"), F.PROTOCOL_ERROR),
    ("window-length", lambda c: _raw(F.WINDOW_UPDATE, 0, 0, b"\0\0\1"), F.FRAME_SIZE_ERROR),
    (
        "window-overflow",
        lambda c: WindowUpdateFrame(0, (1 << 31) - 1).serialize(),
        F.FLOW_CONTROL_ERROR,
    ),
    ("continuation-alone", lambda c: ContinuationFrame(1, b"").serialize(), F.PROTOCOL_ERROR),
    (
        "headers-interrupted",
        lambda c: HeadersFrame(1, c.block(GET)[:3]).serialize() + PingFrame(0).serialize(),
        F.PROTOCOL_ERROR,
    ),
    (
        "continuation-other-stream",
        lambda c: (
            HeadersFrame(1, c.block(GET)[:3]).serialize()
            + ContinuationFrame(3, b"", flags=["END_HEADERS"]).serialize()
        ),
        F.PROTOCOL_ERROR,
    ),
    (
        "header-block-flood",
        lambda c: (
            HeadersFrame(1, c.block(GET)).serialize()
            + ContinuationFrame(1, b"\0" * 16000).serialize() * 2
        ),
        F.PROTOCOL_ERROR,
    ),
    (
        "headers-even",
        lambda c: HeadersFrame(2, c.block(GET), flags=["END_HEADERS"]).serialize(),
        F.PROTOCOL_ERROR,
    ),
    (
        "headers-stream-0",
        lambda c: _raw(F.HEADERS, F.FLAG_END_HEADERS, 0, b"\x82"),
        F.PROTOCOL_ERROR,
    ),
    (
        "headers-bad-padding",
        lambda c: _raw(F.HEADERS, F.FLAG_END_HEADERS | F.FLAG_PADDED, 1, b"\x09\x82"),
        F.PROTOCOL_ERROR,
    ),
    ("data-bad-padding", lambda c: _raw(F.DATA, F.FLAG_PADDED, 1, b"\x05ab"), F.PROTOCOL_ERROR),
    (
        "hpack-garbage",
        lambda c: _raw(F.HEADERS, F.FLAG_END_HEADERS, 1, b"\xff\xff\xff\xff\xff"),
        F.COMPRESSION_ERROR,
    ),
    (
        "header-list-too-large",
        lambda c: HeadersFrame(
            1, c.block([*GET, ("x-big", "z" * 9000)]), flags=["END_HEADERS"]
        ).serialize(),
        F.ENHANCE_YOUR_CALM,
    ),
    ("ping-length", lambda c: _raw(F.PING, 0, 0, b"1234567"), F.FRAME_SIZE_ERROR),
    ("ping-stream", lambda c: _raw(F.PING, 0, 1, b"12345678"), F.PROTOCOL_ERROR),
    ("settings-stream", lambda c: _raw(F.SETTINGS, 0, 1, b""), F.PROTOCOL_ERROR),
    ("settings-length", lambda c: _raw(F.SETTINGS, 0, 0, b"\0\3\0\0"), F.FRAME_SIZE_ERROR),
    (
        "settings-ack-payload",
        lambda c: _raw(F.SETTINGS, F.FLAG_ACK, 0, b"\0" * 6),
        F.FRAME_SIZE_ERROR,
    ),
    (
        "settings-enable-push",
        lambda c: SettingsFrame(0, settings={SettingsFrame.ENABLE_PUSH: 2}).serialize(),
        F.PROTOCOL_ERROR,
    ),
    (
        "settings-window",
        lambda c: SettingsFrame(
            0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 31}
        ).serialize(),
        F.FLOW_CONTROL_ERROR,
    ),
    (
        "settings-frame-size",
        lambda c: SettingsFrame(0, settings={SettingsFrame.MAX_FRAME_SIZE: 16383}).serialize(),
        F.PROTOCOL_ERROR,
    ),
    ("goaway-stream", lambda c: _raw(F.GOAWAY, 0, 1, b"\0" * 8), F.PROTOCOL_ERROR),
    (
        "push-promise",
        lambda c: PushPromiseFrame(1, 2, flags=["END_HEADERS"]).serialize(),
        F.PROTOCOL_ERROR,
    ),
    ("frame-too-large", lambda c: _raw(F.DATA, 0, 1, b"x" * 16385), F.FRAME_SIZE_ERROR),
]


@pytest.mark.parametrize(
    ("wire", "code"),
    [(w, code) for _id, w, code in CONNECTION_ERRORS],
    ids=[i for i, _w, _c in CONNECTION_ERRORS],
)
def test_connection_errors(wire: Callable[[Client], bytes], code: int) -> None:
    c = Client(max_header_list_size=MAX_HEADER_LIST)
    c.read()
    events = c.send(wire(c))
    assert events[-1][:3] == (C.EV_ERROR, 0, code)
    (goaway,) = [f for f in c.read() if isinstance(f, GoAwayFrame)]
    assert goaway.error_code == code
    assert c.server.receive(PingFrame(0).serialize()) == []


def test_stream_ids_going_down_and_closed_streams() -> None:
    c = Client()
    c.request(5)
    c.server.send_headers(5, [(b":status", b"204")], end_stream=True)
    assert not c.server.stream_open(5)
    # §5.1.1: 3 was skipped, so it is closed; a HEADERS there is a PROTOCOL_ERROR.
    assert c.request(3)[-1][:3] == (C.EV_ERROR, 0, F.PROTOCOL_ERROR)
    c = Client()
    c.request(1)
    c.server.send_headers(1, [(b":status", b"204")], end_stream=True)
    # §5.1: DATA on a stream closed both ways is a connection error STREAM_CLOSED.
    assert c.frames(DataFrame(1, b"x"))[-1][:3] == (C.EV_ERROR, 0, F.STREAM_CLOSED)
    c = Client()
    c.request(1, end=False)
    c.frames(RstStreamFrame(1, F.CANCEL))
    # Closed by the peer's RST_STREAM: HEADERS there is STREAM_CLOSED too.
    assert c.request(1)[-1][:3] == (C.EV_ERROR, 0, F.STREAM_CLOSED)


def test_trailers_errors_are_connection_errors() -> None:
    """Go's choice: trailers with a pseudo-header, or a second HEADERS without END_STREAM."""
    for trailer, flags in [
        ([(":method", "POST")], ["END_HEADERS", "END_STREAM"]),
        ([("x-t", "1")], ["END_HEADERS"]),
    ]:
        c = Client()
        c.request(1, POST, end=False)
        events = c.frames(HeadersFrame(1, c.block(trailer), flags=flags))
        assert events[-1][:3] == (C.EV_ERROR, 0, F.PROTOCOL_ERROR)


# ---- stream errors: RST_STREAM, the connection goes on ----------------------------------------

MALFORMED_REQUESTS: list[tuple[str, list[tuple[str, str]]]] = [
    ("uppercase-name", [*GET, ("X-Upper", "1")]),
    ("pseudo-after-regular", [*GET[:3], ("accept", "*/*"), GET[3]]),
    ("unknown-pseudo", [*GET, (":foo", "x")]),
    ("response-pseudo", [*GET, (":status", "200")]),
    ("duplicate-path", [*GET, (":path", "/again")]),
    ("duplicate-method", [GET[0], *GET]),
    ("missing-method", GET[1:]),
    ("missing-scheme", [GET[0], GET[2], GET[3]]),
    ("missing-path", GET[:3]),
    ("empty-path", [*GET[:3], (":path", "")]),
    ("connection", [*GET, ("connection", "keep-alive")]),
    ("transfer-encoding", [*GET, ("transfer-encoding", "chunked")]),
    ("upgrade", [*GET, ("upgrade", "websocket")]),
    ("te-gzip", [*GET, ("te", "trailers, gzip")]),
    ("value-with-newline", [*GET, ("x-a", "b\nc")]),
    ("value-with-space-around", [*GET, ("x-a", " b")]),
    ("name-with-space", [*GET, ("x a", "b")]),
    ("host-differs", [*GET, ("host", "other.example")]),
    ("connect-with-path", [(":method", "CONNECT"), (":authority", "a:443"), (":path", "/")]),
    ("protocol-pseudo", [*GET, (":protocol", "websocket")]),
    ("length-with-no-body", [*GET, ("content-length", "3")]),
]


@pytest.mark.parametrize(
    "headers", [h for _i, h in MALFORMED_REQUESTS], ids=[i for i, _h in MALFORMED_REQUESTS]
)
def test_malformed_requests_are_stream_errors(headers: list[tuple[str, str]]) -> None:
    c = Client()
    c.read()
    assert c.request(1, headers) == []  # never handed out
    (rst,) = c.read()
    assert isinstance(rst, RstStreamFrame) and (rst.stream_id, rst.error_code) == (1, 1)
    assert kinds(c.request(3)) == [(C.EV_REQUEST, 3)]  # the connection goes on


@pytest.mark.parametrize(
    "headers",
    [
        [*GET, ("te", "trailers")],
        [*GET, ("host", "example.com")],
        [(":method", "CONNECT"), (":authority", "a:443")],
        [(":method", "OPTIONS"), (":scheme", "https"), (":authority", "a"), (":path", "*")],
        [*GET, ("content-length", "0")],
    ],
    ids=["te-trailers", "host-same", "connect", "options-star", "length-zero"],
)
def test_valid_requests_are_handed_out(headers: list[tuple[str, str]]) -> None:
    assert kinds(Client().request(1, headers)) == [(C.EV_REQUEST, 1)]


STREAM_ERRORS: list[tuple[str, Callable[[Client], list[Frame]], int]] = [
    (
        "body-longer-than-length",
        lambda c: [DataFrame(1, b"abcd")],
        F.PROTOCOL_ERROR,
    ),
    (
        "body-shorter-than-length",
        lambda c: [DataFrame(1, b"ab", flags=["END_STREAM"])],
        F.PROTOCOL_ERROR,
    ),
    (
        "trailers-before-the-whole-body",
        lambda c: [
            DataFrame(1, b"ab"),
            HeadersFrame(1, c.block([("x-t", "1")]), flags=["END_HEADERS", "END_STREAM"]),
        ],
        F.PROTOCOL_ERROR,
    ),
    ("self-dependent-priority", lambda c: [PriorityFrame(1, depends_on=1)], F.PROTOCOL_ERROR),
    ("window-update-zero", lambda c: [WindowUpdateFrame(1, 0)], F.PROTOCOL_ERROR),
    (
        "window-overflow",
        lambda c: [WindowUpdateFrame(1, (1 << 31) - 1)],
        F.FLOW_CONTROL_ERROR,
    ),
]


@pytest.mark.parametrize(
    ("frames", "code"),
    [(f, code) for _i, f, code in STREAM_ERRORS],
    ids=[i for i, _f, _c in STREAM_ERRORS],
)
def test_stream_errors_on_an_open_request(
    frames: Callable[[Client], list[Frame]], code: int
) -> None:
    c = Client()
    c.request(1, [*POST, ("content-length", "3")], end=False)
    c.read()
    events = c.frames(*frames(c))
    assert events[-1] == (C.EV_RESET, 1, code, b"", None)
    (rst,) = [f for f in c.read() if isinstance(f, RstStreamFrame)]
    assert (rst.stream_id, rst.error_code) == (1, code)
    assert c.server.error == -1


def test_data_after_end_stream_is_stream_closed() -> None:
    c = Client()
    c.request(1)  # half-closed (remote)
    events = c.frames(DataFrame(1, b"late"))
    assert events == [(C.EV_RESET, 1, F.STREAM_CLOSED, b"", None)]


def test_priority_on_an_idle_stream_is_accepted() -> None:
    c = Client()
    c.read()
    assert c.frames(PriorityFrame(9, depends_on=1)) == []
    assert c.read() == []
    assert kinds(c.request(1)) == [(C.EV_REQUEST, 1)]  # PRIORITY opened nothing
    bad = c.send(_raw(F.PRIORITY, 0, 3, b"\0\0\0\0"))  # §6.3: 5 octets
    assert bad == [] and c.server.error == -1
    (rst,) = c.read()
    assert isinstance(rst, RstStreamFrame) and rst.error_code == F.FRAME_SIZE_ERROR


# ---- response heads: literals that leave the dynamic table alone ------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [(b":status", b"200")],
        [(b":status", b"418"), (b"server", b"Caddy")],
        [(b":status", b"304"), (b"etag", b'"x"'), (b"x-custom-name", b"v" * 300)],
        [(b":status", b"500"), (b"www-authenticate", b""), (b"set-cookie", b"a=1")],
    ],
    ids=["indexed-status", "literal-status", "long-value", "last-static-name"],
)
def test_literal_block_decodes_and_adds_nothing_to_the_table(
    headers: list[tuple[bytes, bytes]],
) -> None:
    decoder = hpack.Decoder()
    assert [tuple(h) for h in decoder.decode(C.literal_block(headers), raw=True)] == headers
    assert len(decoder.header_table.dynamic_entries) == 0


@pytest.mark.parametrize(
    ("value", "prefix", "encoded"),
    [(10, 5, b"\x0a"), (1337, 5, b"\x1f\x9a\x0a"), (42, 8, b"\x2a"), (15, 4, b"\x0f\x00")],
)
def test_hpack_integer_is_rfc_7541_section_5_1(value: int, prefix: int, encoded: bytes) -> None:
    assert C.hpack_integer(value, prefix, 0) == encoded  # Appendix C.1 examples


def test_a_smaller_peer_table_is_signalled_in_the_next_block() -> None:
    c = Client()
    c.request(1, end=False)
    c.request(3, end=False)
    c.frames(SettingsFrame(0, settings={SettingsFrame.HEADER_TABLE_SIZE: 0}))
    c.read()
    c.server.send_headers(1, [(b":status", b"200")])
    c.server.send_headers(3, [(b":status", b"200")])
    first, second = c.read()
    assert isinstance(first, HeadersFrame) and isinstance(second, HeadersFrame)
    assert first.data[:1] == b"\x20"  # RFC 7541 §6.3: dynamic table size update to 0
    assert second.data == b"\x88"
    decoder = hpack.Decoder()
    decoder.max_allowed_table_size = 0
    assert list(decoder.decode(first.data + second.data, raw=True)) == [
        (b":status", b"200"),
        (b":status", b"200"),
    ]


def test_a_second_headers_without_end_stream_is_malformed_even_after_our_reset() -> None:
    """A stream answered early and reset (RST_STREAM NO_ERROR, §8.1), then the client's
    in-flight frames: DATA and trailers are ignored (§5.1), but a HEADERS without END_STREAM
    after the request's can never be valid (§8.1): a connection error PROTOCOL_ERROR whether
    or not our reset got there first (h2spec 8.1 raced on this)."""
    c = Client()
    c.request(1, POST, end=False)
    c.server.send_headers(1, [(b":status", b"200")], end_stream=True)
    c.server.reset_stream(1, F.NO_ERROR)
    ok = c.frames(
        DataFrame(1, b"test"),
        HeadersFrame(1, c.block([("x-t", "1")]), flags=["END_HEADERS", "END_STREAM"]),
    )
    assert ok == []
    c = Client()
    c.request(1, POST, end=False)
    c.server.send_headers(1, [(b":status", b"200")], end_stream=True)
    c.server.reset_stream(1, F.NO_ERROR)
    bad = c.frames(
        DataFrame(1, b"test"), HeadersFrame(1, c.block([("x-t", "1")]), flags=["END_HEADERS"])
    )
    assert bad[-1][:3] == (C.EV_ERROR, 0, F.PROTOCOL_ERROR)
