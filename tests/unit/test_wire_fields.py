"""The shared field and status rules of proxy/http/fields.py, from tables."""

from __future__ import annotations

import pytest

from proxy.http import fields as F
from proxy.http.status_text import GO_STATUS_TEXT


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (200, "HTTP/1.1 200 OK\r\n"),
        (103, "HTTP/1.1 103 Early Hints\r\n"),
        (418, "HTTP/1.1 418 I'm a teapot\r\n"),  # Go's spelling, not Python's
        (413, "HTTP/1.1 413 Request Entity Too Large\r\n"),  # Go's, not RFC 9110's rename
        (499, "HTTP/1.1 499 Client Closed Request\r\n"),  # Caddy's client-gone status
        (299, "HTTP/1.1 299 status code 299\r\n"),  # Go's writeStatusLine for an unknown code
        (999, "HTTP/1.1 999 status code 999\r\n"),
    ],
)
def test_status_line(status: int, line: str) -> None:
    assert F.status_line(status) == line
    assert F.status_line_bytes(status) == line.encode("latin-1")


def test_every_go_status_has_its_line() -> None:
    for code, text in GO_STATUS_TEXT.items():
        assert F.status_line_bytes(code) == f"HTTP/1.1 {code} {text}\r\n".encode()


@pytest.mark.parametrize(
    ("status", "phrase"), [(404, "Not Found"), (499, "Client Closed Request"), (299, "")]
)
def test_reason_phrase(status: int, phrase: str) -> None:
    assert F.reason_phrase(status) == phrase


@pytest.mark.parametrize(
    ("actual", "configured", "expected"),
    [
        (200, 200, True),
        (204, 2, True),
        (299, 2, True),
        (300, 2, False),
        (199, 2, False),
        (599, 5, True),
        (600, 5, False),
        (404, 404, True),
        (403, 404, False),
        (404, 4, True),
        (200, 201, False),
        (50, 0, False),  # 0 is no class
    ],
)
def test_status_code_matches(actual: int, configured: int, expected: bool) -> None:
    assert F.status_code_matches(actual, configured) is expected


@pytest.mark.parametrize(
    ("actual", "configured", "expected"),
    [
        (502, [404, 5], True),
        (404, (404, 5), True),
        (200, [404, 5], False),
        (200, [], False),
    ],
)
def test_status_in(actual: int, configured: list[int] | tuple[int, ...], expected: bool) -> None:
    assert F.status_in(actual, configured) is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (100, True),
        (101, True),
        (103, True),
        (199, True),
        (200, False),
        (204, True),
        (205, False),
        (304, True),
        (404, False),
    ],
)
def test_bodiless_status(status: int, expected: bool) -> None:
    assert F.bodiless_status(status) is expected


H11, H10, H2 = F.HTTP_11, F.HTTP_10, F.HTTP_2


@pytest.mark.parametrize(
    ("status", "length", "head", "protocol", "content_length", "delimit"),
    [
        # A known length is Content-Length on every protocol.
        (200, 5, False, H11, 5, F.BY_LENGTH),
        (200, 5, False, H10, 5, F.BY_LENGTH),
        (200, 5, False, H2, 5, F.BY_LENGTH),
        (200, 0, False, H11, 0, F.BY_LENGTH),
        # An unknown length: chunked, until close, END_STREAM.
        (200, None, False, H11, None, F.BY_CHUNKS),
        (200, None, False, H10, None, F.BY_CLOSE),
        (200, None, False, H2, None, F.BY_STREAM_END),
        # HEAD: no body; a known non-zero length is still announced, zero is not (Go).
        (200, 5, True, H11, 5, F.NO_BODY),
        (200, 5, True, H2, 5, F.NO_BODY),
        (200, 0, True, H11, None, F.NO_BODY),
        (200, None, True, H10, None, F.NO_BODY),
        # 1xx, 204, 304: never a body nor a Content-Length (RFC 9110 §6.4.1, §8.6).
        (101, None, False, H11, None, F.NO_BODY),
        (103, None, False, H2, None, F.NO_BODY),
        (204, 0, False, H11, None, F.NO_BODY),
        (304, 120, False, H11, None, F.NO_BODY),
        (304, 120, True, H2, None, F.NO_BODY),
    ],
)
def test_response_framing(
    status: int,
    length: int | None,
    head: bool,
    protocol: int,
    content_length: int | None,
    delimit: int,
) -> None:
    framing = F.response_framing(status, length, head, protocol)
    assert framing == F.ResponseFraming(content_length, delimit)
    assert (framing.content_length, framing.delimit) == (content_length, delimit)


DATE = b"Thu, 03 Dec 2026 17:50:00 GMT"


@pytest.mark.parametrize(
    ("given", "content_length", "expected"),
    [
        # Date added when absent, kept (not doubled) when present.
        ([(b"server", b"Caddy")], None, [(b"server", b"Caddy"), (b"date", DATE)]),
        (
            [(b"date", b"Mon, 01 Jan 2024 00:00:00 GMT")],
            None,
            [(b"date", b"Mon, 01 Jan 2024 00:00:00 GMT")],
        ),
        # RFC 9113 §8.2.2 connection-specific fields and the HTTP/1.1 framing dropped; the
        # Content-Length written is ours.
        (
            [
                (b"connection", b"keep-alive"),
                (b"keep-alive", b"timeout=5"),
                (b"proxy-connection", b"x"),
                (b"transfer-encoding", b"chunked"),
                (b"upgrade", b"websocket"),
                (b"content-length", b"99"),
                (b"x-a", b"1"),
            ],
            3,
            [(b"x-a", b"1"), (b"date", DATE), (b"content-length", b"3")],
        ),
        # Hop-by-hop but not connection-specific: end-to-end in HTTP/2 (TE, Trailer, Alt-Svc).
        (
            [(b"trailer", b"x-t"), (b"alt-svc", b'h3=":443"')],
            None,
            [(b"trailer", b"x-t"), (b"alt-svc", b'h3=":443"'), (b"date", DATE)],
        ),
    ],
)
def test_h2_response_fields(
    given: list[tuple[bytes, bytes]],
    content_length: int | None,
    expected: list[tuple[bytes, bytes]],
) -> None:
    assert F.h2_response_fields(given, DATE, content_length) == expected


def test_field_sets() -> None:
    # Caddy's hopHeaders, and the text forms the proxy's slow paths use agree with the bytes.
    assert {n.encode() for n in F.HOP_BY_HOP_NAMES} == F.HOP_BY_HOP_FIELDS
    assert {n.encode() for n in F.X_FORWARDED_NAMES} == F.X_FORWARDED_FIELDS
    assert {n.encode() for n in F.PLAIN_CONNECTION_NAMES} == F.PLAIN_CONNECTION_TOKENS
    assert F.H2_CONNECTION_SPECIFIC_FIELDS < F.HOP_BY_HOP_FIELDS
    name, value = F.SERVER_FIELD
    assert f"{name}: {value}\r\n".encode() == F.SERVER_FIELD_LINE
