"""The HTTP/1.1 request wire rules (proxy/http/wire.py), from tables.

Each row is a rule of Go's net/http server (what Caddy runs on) or of RFC 9112 where we are
stricter; the expectations marked "Caddy 2.6.2" were checked against the live server.
"""

from __future__ import annotations

import pytest

from proxy.http.wire import (
    CHUNKED,
    ChunkedDecoder,
    RequestHead,
    body_length,
    has_token,
    parse_request_head,
    valid_host,
)
from proxy.http.wire_errors import RequestError


def head_of(raw: bytes) -> RequestHead:
    end = raw.find(b"\r\n\r\n")
    assert end >= 0
    return parse_request_head(raw, 0, end)


def refusal(raw: bytes) -> tuple[int, str]:
    with pytest.raises(RequestError) as info:
        head_of(raw)
    return info.value.status, info.value.detail


ACCEPTED = [
    # (raw head, method, target, minor, host)
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET", "/", 1, "a"),
    (b"GET / HTTP/1.0\r\n\r\n", "GET", "/", 0, None),
    # Go: any token is a method, forwarded as it is (Caddy 2.6.2 answers FOO).
    (b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", "FOO", "/", 1, "a"),
    (b"M-SEARCH * HTTP/1.1\r\nHost: a\r\n\r\n", "M-SEARCH", "*", 1, "a"),
    # HTTP/1.y with y > 1 is served as HTTP/1.1 (Go's ProtoAtLeast(1, 1); Caddy 2.6.2: 200).
    (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", "GET", "/", 1, "a"),
    (b"GET http://b:8/x HTTP/1.1\r\nHost: a\r\n\r\n", "GET", "http://b:8/x", 1, "a"),
    (b"CONNECT b:443 HTTP/1.1\r\n\r\n", "CONNECT", "b:443", 1, None),
    (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", "GET", "/", 1, ""),  # empty Host: Go accepts
    (b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", "GET", "/", 1, "[::1]:8080"),
    (b"GET / HTTP/1.1\r\nHost:   a  \r\n\r\n", "GET", "/", 1, "a"),  # OWS trimmed
    (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", "GET", "/caf\xc3\xa9", 1, "a"),
]


@pytest.mark.parametrize(("raw", "method", "target", "minor", "host"), ACCEPTED)
def test_accepted_heads(raw: bytes, method: str, target: str, minor: int, host: str) -> None:
    head = head_of(raw)
    assert (head.method, head.target, head.minor, head.host) == (method, target, minor, host)


REFUSED = [
    # (raw head, status, detail): Go's server, or RFC 9112 where we are stricter (marked).
    (b"GET /\r\n\r\n", 400, ""),  # HTTP/0.9 (Caddy 2.6.2: 400)
    (b"GET / RTSP/1.0\r\nHost: a\r\n\r\n", 400, ""),  # Caddy 2.6.2: 400
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "unsupported protocol version"),  # 2.6.2: 505
    (b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400, ""),
    (b"GET / http/1.1\r\nHost: a\r\n\r\n", 400, ""),
    (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, ""),  # double space (Caddy 2.6.2: 400)
    (b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400, ""),
    (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, ""),  # not a token
    (b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, ""),
    (b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, ""),  # leading empty line: Go 400
    (b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400, ""),  # control byte in the target
    (b"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400, ""),
    (b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400, ""),  # bare LF (stricter than Go)
    (b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400, "invalid header value"),  # bare CR
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400, ""),  # obs-fold (stricter)
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, ""),  # space before the colon
    (b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400, ""),
    (b"GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n", 400, ""),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400, "invalid header value"),  # 2.6.2
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00\r\n\r\n", 400, "invalid header value"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, "missing required Host header"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "too many Host headers"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, "too many Host headers"),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "malformed Host header"),  # 2.6.2
    (b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", 400, "malformed Host header"),
    (b"GET / HTTP/1.1\r\nHost: x/../y\r\n\r\n", 400, "malformed Host header"),
    (b"GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n", 400, "malformed Host header"),
    (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400, "malformed Host header"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: x\r\n\r\n", 417, ""),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: \xff\r\n\r\n", 400, ""),
]


@pytest.mark.parametrize(("raw", "status", "detail"), REFUSED)
def test_refused_heads(raw: bytes, status: int, detail: str) -> None:
    assert refusal(raw) == (status, detail)


FRAMING = [
    # (Content-Length values, Transfer-Encoding values, minor, length or refusal status)
    (None, None, 1, None),
    ([b"0"], None, 1, 0),
    ([b"12"], None, 1, 12),
    ([b"007"], None, 1, 7),  # Go's ParseUint: leading zeros are fine
    ([b"3", b"3"], None, 1, 3),  # repeated with one value: Go accepts (Caddy 2.6.2: 200)
    ([b"3", b"4"], None, 1, 400),
    ([b"+1"], None, 1, 400),  # Caddy 2.6.2: 400
    ([b"-1"], None, 1, 400),
    ([b"1 2"], None, 1, 400),
    ([b""], None, 1, 400),
    ([b"0x10"], None, 1, 400),
    ([b"9" * 19], None, 1, 400),  # beyond Go's 63 bits
    (None, [b"chunked"], 1, CHUNKED),
    (None, [b"Chunked"], 1, CHUNKED),
    (None, [b"gzip, chunked"], 1, 501),  # Go: only "chunked" (Caddy 2.6.2: 501)
    (None, [b"identity, chunked"], 1, 501),
    (None, [b"chunked, gzip"], 1, 501),
    (None, [b"identity"], 1, 501),  # Caddy 2.6.2: 501
    (None, [b"chunked", b"chunked"], 1, 501),  # Go: "too many transfer encodings"
    ([b"3"], [b"chunked"], 1, 400),  # RFC 9112 §6.3 rule 3 (Go lets chunked win)
    (None, [b"chunked"], 0, 400),  # RFC 9112 §6.1: HTTP/1.0 with Transfer-Encoding
]


@pytest.mark.parametrize(("lengths", "codings", "minor", "expected"), FRAMING)
def test_body_framing(
    lengths: list[bytes] | None, codings: list[bytes] | None, minor: int, expected: int | None
) -> None:
    if expected is not None and expected >= 400:
        with pytest.raises(RequestError) as info:
            body_length(lengths, codings, minor)
        assert info.value.status == expected
    else:
        assert body_length(lengths, codings, minor) == expected


@pytest.mark.parametrize(
    ("raw", "keep_alive", "upgrade", "expect"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True, False, False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False, False, False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n", False, False, False),
        (b"GET / HTTP/1.0\r\n\r\n", False, False, False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True, False, False),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: ws\r\n\r\n",
            True,
            True,
            False,
        ),
        (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: ws\r\n\r\n", True, False, False),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n", True, False, False),
        (
            b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: 100-Continue\r\n\r\n",
            True,
            False,
            True,
        ),
        (b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n", True, False, False),
        (
            b"PUT / HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n",
            False,
            False,
            False,
        ),
    ],
)
def test_connection_decisions(raw: bytes, keep_alive: bool, upgrade: bool, expect: bool) -> None:
    head = head_of(raw)
    assert (head.keep_alive, head.upgrade, head.expect_continue) == (keep_alive, upgrade, expect)


def test_fields_split_into_forwarded_block_and_special_ones() -> None:
    head = head_of(
        b"GET / HTTP/1.1\r\nHost: a\r\nAccept:*/*\r\nX-Forwarded-For: 1.2.3.4\r\n"
        b"User-Agent:  t  \r\n\r\n"
    )
    # Ordinary fields are re-serialized in one canonical form: what we parsed is what the
    # origin reads.
    assert head.raw == b"Accept: */*\r\nUser-Agent: t\r\n"
    assert head.special == [(b"Host", b"a"), (b"X-Forwarded-For", b"1.2.3.4")]
    assert head.odd  # X-Forwarded-For sends the proxy to its slow path


def test_valid_host_is_gos_table() -> None:
    for host in (b"a.example", b"[::1]:80", b"xn--caf-dma.example", b"a_b-c~d", b"%25", b""):
        assert valid_host(host), host
    for host in (b"a b", b"a/b", b"a\\b", b"a@b", b'a"b', b"a\tb", b"a{b", b"\xc3\xa9"):
        assert not valid_host(host), host


def test_has_token() -> None:
    assert has_token([b"keep-alive, Upgrade"], b"upgrade")
    assert has_token([b"a", b" close "], b"close")
    assert not has_token([b"closed"], b"close")
    assert not has_token(None, b"close")


def decode(chunks: list[bytes], max_trailer: int = 1024) -> tuple[bytes, bytes]:
    """Feed `chunks` to a decoder; return (body, bytes after the body)."""
    dec = ChunkedDecoder(max_trailer)
    out: list[bytes] = []
    rest = b""
    for data in chunks:
        if dec.done:
            rest += data
            continue
        pos = dec.feed(data, 0, out)
        rest += data[pos:]
    assert dec.done
    return b"".join(out), rest


CHUNKED_OK = [
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5;ext=1\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5 ;ext\r\nhello\r\n0\r\n\r\n", b"hello"),  # BWS before an extension
    (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
    (b"0\r\nTrailer-A: 1\r\nTrailer-B: 2\r\n\r\n", b""),
    (b"000\r\n\r\n", b""),
]


@pytest.mark.parametrize(("wire", "body"), CHUNKED_OK)
def test_chunked_bodies_at_every_split(wire: bytes, body: bytes) -> None:
    tail = b"GET / HTTP/1.1\r\n"
    assert decode([wire + tail]) == (body, tail)
    for i in range(1, len(wire)):
        assert decode([wire[:i], wire[i:] + tail]) == (body, tail), i
    assert decode([bytes([b]) for b in wire] + [tail]) == (body, tail)


CHUNKED_BAD = [
    (b"zz\r\nabc\r\n0\r\n\r\n", 400),
    (b"\r\nabc\r\n0\r\n\r\n", 400),  # empty size
    (b"-1\r\n", 400),
    (b"5\r\nhelloXX0\r\n\r\n", 400),  # data longer than its size
    (b"5\nhello\r\n0\r\n\r\n", 400),  # bare LF ends no line
    (b"5\r\nhello\r\n0\r\nBad Trailer\r\n\r\n", 400),
    (b"1" * 17 + b"\r\n", 400),  # more than 64 bits
    (b"5;a\x01\r\nhello\r\n0\r\n\r\n", 400),
    (b"1" + b" " * 5000, 400),  # a size line that never ends
    (b"0\r\nX: " + b"a" * 2000 + b"\r\n\r\n", 431),  # trailers beyond the limit
]


@pytest.mark.parametrize(("wire", "status"), CHUNKED_BAD)
def test_chunked_refusals(wire: bytes, status: int) -> None:
    dec = ChunkedDecoder(1024)
    with pytest.raises(RequestError) as info:
        dec.feed(wire, 0, [])
    assert info.value.status == status
