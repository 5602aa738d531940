"""Control message framing (proxy.control): pure encode/decode, no sockets."""

from __future__ import annotations

import json

import pytest

from proxy.control import HEADER, MAX_MESSAGE_BYTES, Decoder, encode


def test_roundtrip_one_message() -> None:
    msg = {"op": "prepare", "id": 1, "config": {"apps": {"http": {}}}}
    assert Decoder().feed(encode(msg)) == [msg]


def test_frame_is_length_prefixed_json() -> None:
    data = encode({"a": 1})
    (size,) = HEADER.unpack_from(data)
    assert size == len(data) - HEADER.size
    assert json.loads(data[HEADER.size :]) == {"a": 1}


def test_byte_by_byte_and_several_per_chunk() -> None:
    msgs = [{"id": i, "ok": True, "text": "é\n" * i} for i in range(5)]
    stream = b"".join(encode(m) for m in msgs)
    dec = Decoder()
    got = []
    for i in range(len(stream)):
        got += dec.feed(stream[i : i + 1])
    assert got == msgs
    assert dec.pending == 0
    assert Decoder().feed(stream) == msgs


def test_partial_frame_waits() -> None:
    data = encode({"op": "metrics", "id": 7})
    dec = Decoder()
    assert dec.feed(data[:-1]) == []
    assert dec.pending == len(data) - 1
    assert dec.feed(data[-1:]) == [{"op": "metrics", "id": 7}]


def test_large_message() -> None:
    config = {"sites": ["x" * 100 for _ in range(20_000)]}  # ~2 MB, like a 1,000-site config
    assert Decoder().feed(encode(config)) == [config]


def test_oversized_header_rejected() -> None:
    with pytest.raises(ValueError, match="too large"):
        Decoder().feed(HEADER.pack(MAX_MESSAGE_BYTES + 1))


def test_non_object_rejected() -> None:
    body = b"[1, 2]"
    with pytest.raises(ValueError, match="JSON object"):
        Decoder().feed(HEADER.pack(len(body)) + body)
