"""The HTTP/2 frame codec (proxy/http/h2frames.py), checked against hyperframe's reading and
writing of the same frames (RFC 9113 §4.1, §6)."""

from __future__ import annotations

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from proxy.http import h2frames as F


def parse_all(data: bytes) -> list[Frame]:
    out: list[Frame] = []
    pos = 0
    while pos < len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[pos : pos + 9]))
        frame.parse_body(memoryview(data[pos + 9 : pos + 9 + length]))
        out.append(frame)
        pos += 9 + length
    return out


@pytest.mark.parametrize(
    ("length", "ftype", "flags", "sid"),
    [(0, F.SETTINGS, 0, 0), (16384, F.DATA, 1, 1), (5, F.HEADERS, 0x25, (1 << 31) - 1)],
)
def test_frame_header_round_trip(length: int, ftype: int, flags: int, sid: int) -> None:
    raw = F.frame_header(length, ftype, flags, sid)
    assert len(raw) == 9
    assert F.parse_frame_header(raw, 0) == (length, ftype, flags, sid)
    frame, parsed_len = Frame.parse_frame_header(memoryview(raw))
    assert (parsed_len, frame.stream_id) == (length, sid)


def test_reserved_bit_is_ignored_on_receipt() -> None:
    raw = bytearray(F.frame_header(0, F.PING, 0, 3))
    raw[5] |= 0x80  # §4.1: R "MUST be ignored when receiving"
    assert F.parse_frame_header(raw, 0)[3] == 3


def test_reader_yields_frames_fed_byte_by_byte_and_in_bursts() -> None:
    wire = (
        PingFrame(0, b"12345678").serialize()
        + DataFrame(1, b"hello", flags=["END_STREAM"]).serialize()
        + WindowUpdateFrame(0, 7).serialize()
    )
    expected = [
        (F.PING, 0, 0, b"12345678"),
        (F.DATA, F.FLAG_END_STREAM, 1, b"hello"),
        (F.WINDOW_UPDATE, 0, 0, (7).to_bytes(4, "big")),
    ]
    slow = F.FrameReader()
    got = []
    for i in range(len(wire)):
        slow.feed(wire[i : i + 1])
        while (frame := slow.next_frame()) is not None:
            got.append(frame)
    assert got == expected
    assert slow.buffered == 0
    burst = F.FrameReader()
    burst.feed(wire)
    got = []
    while (frame := burst.next_frame()) is not None:
        got.append(frame)
    assert got == expected


@pytest.mark.parametrize(("length", "oversize"), [(16384, False), (16385, True)])
def test_reader_checks_the_max_frame_size(length: int, oversize: bool) -> None:
    reader = F.FrameReader()
    reader.feed(F.frame_header(length, F.DATA, 0, 1))  # §4.2: judged on the header alone
    assert reader.next_frame() is None
    assert reader.oversize is oversize
    if not oversize:
        reader.feed(b"x" * length)
        assert reader.next_frame() == (F.DATA, 0, 1, b"x" * length)


@pytest.mark.parametrize(
    ("block_len", "max_frame", "frames"),
    [(10, 16384, 1), (16384, 16384, 1), (16385, 16384, 2), (40000, 16384, 3)],
)
def test_headers_are_cut_into_continuation_frames(
    block_len: int, max_frame: int, frames: int
) -> None:
    block = bytes(i % 251 for i in range(block_len))
    parsed = parse_all(F.headers_frames(5, block, True, max_frame))
    assert len(parsed) == frames
    assert isinstance(parsed[0], HeadersFrame) and "END_STREAM" in parsed[0].flags
    assert all(isinstance(f, ContinuationFrame) for f in parsed[1:])
    assert ["END_HEADERS" in f.flags for f in parsed] == [False] * (frames - 1) + [True]
    fragments = [f.data for f in parsed if isinstance(f, HeadersFrame | ContinuationFrame)]
    assert all(f.stream_id == 5 for f in parsed) and all(len(d) <= max_frame for d in fragments)
    assert b"".join(fragments) == block


@pytest.mark.parametrize(
    ("frame", "extra", "expected"),
    [
        (DataFrame(1, b"abc"), 0, b"abc"),
        (DataFrame(1, b"abc", flags=["PADDED"], pad_length=4), 0, b"abc"),
        (DataFrame(1, b"", flags=["PADDED"], pad_length=0), 0, b""),
        (DataFrame(1, b"", flags=["PADDED"], pad_length=3), 0, b""),  # all padding: allowed
        (
            HeadersFrame(1, b"blk", flags=["PADDED", "PRIORITY"], pad_length=2, depends_on=3),
            5,
            None,  # checked below: the 5 priority bytes stay, the padding goes
        ),
    ],
)
def test_strip_padding(frame: Frame, extra: int, expected: bytes | None) -> None:
    raw = frame.serialize()
    flags = raw[4]
    got = F.strip_padding(flags, raw[9:], extra)
    if expected is None:
        assert got is not None and got[5:] == b"blk" and len(got) == 5 + 3
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("flags", "payload", "extra"),
    [
        (F.FLAG_PADDED, b"\x04abc", 0),  # §6.1: padding as long as the payload
        (F.FLAG_PADDED, b"\x09abc", 0),
        (F.FLAG_PADDED, b"", 0),
        (F.FLAG_PADDED | F.FLAG_PRIORITY, b"\x01" + b"\x00" * 5, 5),  # padding eats priority
        (F.FLAG_PRIORITY, b"\x00" * 4, 5),  # priority fields cut short
    ],
)
def test_bad_padding_is_refused(flags: int, payload: bytes, extra: int) -> None:
    assert F.strip_padding(flags, payload, extra) is None


def test_built_control_frames_read_back() -> None:
    settings, ack, ping, wu, rst, goaway, data = parse_all(
        F.settings_frame([(F.SETTINGS_MAX_CONCURRENT_STREAMS, 250), (F.SETTINGS_ENABLE_PUSH, 0)])
        + F.SETTINGS_ACK
        + F.ping_ack(b"abcdefgh")
        + F.window_update(3, 1000)
        + F.rst_stream(5, F.CANCEL)
        + F.goaway(7, F.ENHANCE_YOUR_CALM, b"calm")
        + F.data_frame(9, b"body", True)
    )
    assert isinstance(settings, SettingsFrame)
    assert settings.settings == {SettingsFrame.MAX_CONCURRENT_STREAMS: 250, 2: 0}
    assert isinstance(ack, SettingsFrame) and "ACK" in ack.flags and not ack.settings
    assert isinstance(ping, PingFrame) and "ACK" in ping.flags and ping.opaque_data == b"abcdefgh"
    assert isinstance(wu, WindowUpdateFrame) and (wu.stream_id, wu.window_increment) == (3, 1000)
    assert isinstance(rst, RstStreamFrame) and (rst.stream_id, rst.error_code) == (5, F.CANCEL)
    assert isinstance(goaway, GoAwayFrame)
    assert (goaway.last_stream_id, goaway.error_code, goaway.additional_data) == (
        7,
        F.ENHANCE_YOUR_CALM,
        b"calm",
    )
    assert isinstance(data, DataFrame) and data.data == b"body" and "END_STREAM" in data.flags
