"""Request fields stay serialized bytes until something reads `headers` (proxy fast path)."""

from __future__ import annotations

from proxy.http.request import Request


def _req() -> Request:
    r = Request("GET", "/a?b=1", "HTTP/1.1", None, "10.0.0.1", 1234, "http")
    r._raw = b"User-Agent: wrk\r\nAccept: */*\r\nX-Empty: \r\nX-Colon: a: b\r\n"
    r._special = [(b"Host", b"a.test")]
    return r


def test_headers_decoded_lazily_and_in_full() -> None:
    r = _req()
    assert r._headers is None
    assert r.headers == [
        ("User-Agent", "wrk"),
        ("Accept", "*/*"),
        ("X-Empty", ""),
        ("X-Colon", "a: b"),
        ("Host", "a.test"),
    ]
    assert r.header("accept") == "*/*"
    assert r._raw is not None  # reading does not invalidate the serialized block


def test_assigning_headers_drops_the_raw_block() -> None:
    r = _req()
    r.set_header("Accept", "text/html")
    assert r._raw is None
    assert r.header_values("Accept") == ["text/html"]
    r2 = _req()
    r2.headers = [("X", "1")]
    assert r2._raw is None and r2.headers == [("X", "1")]


def test_request_built_with_headers_list() -> None:
    r = Request("GET", "/", "HTTP/1.1", [("Host", "x")], "::1", 1, "https")
    assert r.header("host") == "x"
