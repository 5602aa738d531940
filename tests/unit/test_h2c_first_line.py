"""The first line on an h2c listener: an invalid HTTP/2 preface is closed, HTTP/1.1 is answered
(proxy/http/alpn.py `first_line_verdict`; RFC 9113 §3.4, RFC 9112 §3)."""

from __future__ import annotations

import pytest

from proxy.http.alpn import FIRST_LINE_SNIFF_BYTES, HTTP1, NOT_HTTP, WAIT, first_line_verdict


@pytest.mark.parametrize(
    ("first_bytes", "verdict"),
    [
        # h2spec http2/3.5: no preface, and no HTTP request line either
        (b"INVALID CONNECTION PREFACE\r\n\r\n", NOT_HTTP),
        (b"GET /\r\n", NOT_HTTP),  # HTTP/0.9 names no version
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n", NOT_HTTP),  # TLS on the plain port
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", HTTP1),
        (b"GET / HTTP/1.0\n", HTTP1),  # a bare LF ends the line for the verdict
        (b"GET / HTTP/2.0\r\n", HTTP1),  # a version, if a bad one: HTTP/1.1 answers 505
        (b"GET / HTTP/9\r\n", HTTP1),
        (b"\r\nGET / HTTP/1.1\r\n", NOT_HTTP),  # an empty first line (HTTP/1.1: 400 too)
        (b"GET / HTT", WAIT),
        (b"GET / HTTP/1.1\r", WAIT),
        (b"", WAIT),
        (b"G" * FIRST_LINE_SNIFF_BYTES, HTTP1),  # too long to tell: HTTP/1.1's limits decide
    ],
)
def test_first_line_verdict(first_bytes: bytes, verdict: int) -> None:
    assert first_line_verdict(first_bytes) == verdict
