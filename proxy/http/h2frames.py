"""HTTP/2 frame codec (RFC 9113 §4.1, §6), server side: the frame header, a reader that cuts
received bytes into complete frames (with the SETTINGS_MAX_FRAME_SIZE check of §4.2), and
builders for the frames a server sends.

Frames are plain tuples and ints, not objects: a received frame is `(type, flags, stream_id,
payload)`; a built frame is its wire bytes. proxy/http/h2conn.py gives them meaning. Nothing
here is dynamic, for the compiler.

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

from typing import Final

# RFC 9113 §6: frame types.
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

# Flags (§6.1, §6.2, §6.5, §6.7).
FLAG_END_STREAM: Final = 0x1
FLAG_ACK: Final = 0x1
FLAG_END_HEADERS: Final = 0x4
FLAG_PADDED: Final = 0x8
FLAG_PRIORITY: Final = 0x20

# §7: error codes.
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
SETTINGS_TIMEOUT: Final = 0x4
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
CONNECT_ERROR: Final = 0xA
ENHANCE_YOUR_CALM: Final = 0xB
INADEQUATE_SECURITY: Final = 0xC
HTTP_1_1_REQUIRED: Final = 0xD

# §6.5.2: SETTINGS parameters.
SETTINGS_HEADER_TABLE_SIZE: Final = 0x1
SETTINGS_ENABLE_PUSH: Final = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS: Final = 0x3
SETTINGS_INITIAL_WINDOW_SIZE: Final = 0x4
SETTINGS_MAX_FRAME_SIZE: Final = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE: Final = 0x6

FRAME_HEADER_LEN: Final = 9
DEFAULT_MAX_FRAME_SIZE: Final = 16384  # §4.2: the initial SETTINGS_MAX_FRAME_SIZE
MAX_FRAME_SIZE_LIMIT: Final = (1 << 24) - 1
MAX_WINDOW: Final = (1 << 31) - 1  # §6.9.1
# §3.4: the client connection preface.
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame_header(length: int, frame_type: int, flags: int, stream_id: int) -> bytes:
    """§4.1: Length (24) | Type (8) | Flags (8) | R (1) | Stream Identifier (31)."""
    return ((length << 48) | (frame_type << 40) | (flags << 32) | stream_id).to_bytes(9, "big")


def parse_frame_header(buf: bytes | bytearray, pos: int) -> tuple[int, int, int, int]:
    """(length, type, flags, stream id) of the header at `pos`; the reserved bit is ignored
    (§4.1: "MUST be ignored when receiving")."""
    length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
    sid = ((buf[pos + 5] & 0x7F) << 24) | (buf[pos + 6] << 16) | (buf[pos + 7] << 8) | buf[pos + 8]
    return length, buf[pos + 3], buf[pos + 4], sid


def build_frame(frame_type: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return frame_header(len(payload), frame_type, flags, stream_id) + payload


class FrameReader:
    """Cuts received bytes into complete frames. `feed` appends; `next_frame` returns the next
    complete frame or None. A frame longer than `max_frame_size` (what we advertise, §4.2)
    sets `oversize` and stops the reader: a FRAME_SIZE_ERROR connection error, since the
    frame's payload is not read."""

    __slots__ = ("_buf", "_pos", "max_frame_size", "oversize")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_frame_size = max_frame_size
        self.oversize = False

    def feed(self, data: bytes) -> None:
        buf = self._buf
        if self._pos:
            # Drop what was consumed before appending: the buffer holds at most one partial
            # frame plus the new bytes.
            del buf[: self._pos]
            self._pos = 0
        buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_frame(self) -> tuple[int, int, int, bytes] | None:
        if self.oversize:
            return None
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < FRAME_HEADER_LEN:
            return None
        length, ftype, flags, sid = parse_frame_header(buf, pos)
        if length > self.max_frame_size:
            self.oversize = True
            return None
        end = pos + FRAME_HEADER_LEN + length
        if len(buf) < end:
            return None
        payload = bytes(buf[pos + FRAME_HEADER_LEN : end])
        self._pos = end
        return ftype, flags, sid, payload


# -- builders for what a server sends --------------------------------------------------------


def settings_frame(settings: list[tuple[int, int]]) -> bytes:
    payload = b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in settings)
    return build_frame(SETTINGS, 0, 0, payload)


SETTINGS_ACK: Final = frame_header(0, SETTINGS, FLAG_ACK, 0)


def ping_ack(opaque: bytes) -> bytes:
    return frame_header(8, PING, FLAG_ACK, 0) + opaque


def window_update(stream_id: int, increment: int) -> bytes:
    return frame_header(4, WINDOW_UPDATE, 0, stream_id) + increment.to_bytes(4, "big")


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame_header(4, RST_STREAM, 0, stream_id) + code.to_bytes(4, "big")


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    payload = last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big") + debug
    return build_frame(GOAWAY, 0, 0, payload)


def data_frame(stream_id: int, data: bytes, end_stream: bool) -> bytes:
    return frame_header(len(data), DATA, FLAG_END_STREAM if end_stream else 0, stream_id) + data


def headers_frames(stream_id: int, block: bytes, end_stream: bool, max_frame_size: int) -> bytes:
    """HEADERS, followed by CONTINUATION frames when the block is larger than the peer's
    SETTINGS_MAX_FRAME_SIZE (§6.2, §6.10); END_HEADERS on the last of them."""
    flags = FLAG_END_STREAM if end_stream else 0
    if len(block) <= max_frame_size:
        return frame_header(len(block), HEADERS, flags | FLAG_END_HEADERS, stream_id) + block
    parts = [frame_header(max_frame_size, HEADERS, flags, stream_id), block[:max_frame_size]]
    pos = max_frame_size
    while pos < len(block):
        chunk = block[pos : pos + max_frame_size]
        pos += len(chunk)
        last = pos >= len(block)
        parts.append(
            frame_header(len(chunk), CONTINUATION, FLAG_END_HEADERS if last else 0, stream_id)
        )
        parts.append(chunk)
    return b"".join(parts)


def strip_padding(flags: int, payload: bytes, extra: int = 0) -> bytes | None:
    """The payload of a DATA or HEADERS frame without its padding (§6.1, §6.2), or None when
    the pad length is not smaller than what it pads (a PROTOCOL_ERROR). `extra`: fixed fields
    after the Pad Length that the padding may not eat into (HEADERS' priority, 5 bytes)."""
    if not flags & FLAG_PADDED:
        if len(payload) < extra:
            return None
        return payload
    if not payload:
        return None
    pad = payload[0]
    if pad + extra >= len(payload):
        return None
    return payload[1 : len(payload) - pad]
