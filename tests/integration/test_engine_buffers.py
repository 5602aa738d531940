"""reverse_proxy `request_buffers` / `response_buffers` through a real `pyproxy run`.

Caddy semantics: up to N body bytes are read before the request goes upstream, so a body that
fits is sent with a Content-Length (even when the client sent it chunked) and a larger one
streams on after the first N; responses are likewise held up to N bytes before the client
gets the head (a small unknown-length response then goes out with a Content-Length).
"""

from __future__ import annotations

import hashlib
import http.client
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from enginekit import (
    free_port,
    payload,
    proxy_config,
    read_response,
    read_sse_event_by_event,
    rp_route,
)


def _post(port: int, body: bytes, chunked: bool) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        if chunked:
            pieces: Iterator[bytes] = (body[i : i + 1000] for i in range(0, len(body), 1000))
            conn.request("POST", "/echo", body=pieces, encode_chunked=True)
        else:
            conn.request("POST", "/echo", body=body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _origin_saw(origin: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in origin.requests[-1]["headers"]}


@pytest.fixture
def buffered(origin: Any, run_proxy: Any) -> Any:
    port = free_port()
    route = rp_route(f"127.0.0.1:{origin.port}", request_buffers=8192)
    run_proxy(proxy_config(port, [route]), port)
    return port, origin


@pytest.mark.parametrize("chunked", [True, False])
def test_small_body_fully_buffered_gets_content_length(buffered: Any, chunked: bool) -> None:
    port, origin = buffered
    data = payload(5000)
    status, headers, body = _post(port, data, chunked)
    assert status == 200
    assert body == data
    assert headers["x-body-sha256"] == hashlib.sha256(data).hexdigest()
    saw = _origin_saw(origin)
    assert saw["content-length"] == "5000"
    assert "transfer-encoding" not in saw


def test_large_chunked_body_streams_after_buffer(buffered: Any) -> None:
    port, origin = buffered
    data = payload(300 * 1024)
    status, headers, _ = _post(port, data, chunked=True)
    assert status == 200
    assert headers["x-body-sha256"] == hashlib.sha256(data).hexdigest()
    saw = _origin_saw(origin)
    assert saw.get("transfer-encoding") == "chunked"
    assert "content-length" not in saw


def test_large_content_length_body_passes_through(buffered: Any) -> None:
    port, origin = buffered
    data = payload(2 * 1024 * 1024)
    status, headers, _ = _post(port, data, chunked=False)
    assert status == 200
    assert headers["x-body-sha256"] == hashlib.sha256(data).hexdigest()
    assert _origin_saw(origin)["content-length"] == str(len(data))


def test_without_request_buffers_chunked_stays_chunked(origin: Any, run_proxy: Any) -> None:
    port = free_port()
    run_proxy(proxy_config(port, [rp_route(f"127.0.0.1:{origin.port}")]), port)
    data = payload(5000)
    status, headers, _ = _post(port, data, chunked=True)
    assert status == 200
    assert headers["x-body-sha256"] == hashlib.sha256(data).hexdigest()
    assert _origin_saw(origin).get("transfer-encoding") == "chunked"


def _chunked_answer(body: bytes) -> bytes:
    out = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
    out += b"Transfer-Encoding: chunked\r\n\r\n"
    for i in range(0, len(body), 1000):
        piece = body[i : i + 1000]
        out += b"%x\r\n%b\r\n" % (len(piece), piece)
    return out + b"0\r\n\r\n"


def _get_raw(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        with s.makefile("rb") as f:
            return read_response(f)


@pytest.mark.parametrize("size,buffered_whole", [(3000, True), (200 * 1024, False)])
def test_response_buffers(raw_origin: Any, run_proxy: Any, size: int, buffered_whole: bool) -> None:
    body = payload(size)
    o = raw_origin(lambda c, n, head: _chunked_answer(body))
    port = free_port()
    run_proxy(proxy_config(port, [rp_route(f"127.0.0.1:{o.port}", response_buffers=8192)]), port)
    for _ in range(2):  # twice: the pooled upstream connection stays usable
        status, headers, got = _get_raw(port, "/x")
        assert status == 200
        assert got == body
        if buffered_whole:
            assert headers["content-length"] == str(size)
            assert "transfer-encoding" not in headers
        else:
            assert headers["transfer-encoding"] == "chunked"


def test_response_buffers_head_request(raw_origin: Any, run_proxy: Any) -> None:
    o = raw_origin(lambda c, n, head: b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    port = free_port()
    run_proxy(proxy_config(port, [rp_route(f"127.0.0.1:{o.port}", response_buffers=8192)]), port)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"HEAD /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            assert chunk
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    assert b"Content-Length: 1234" in data


# -- flush_interval ---------------------------------------------------------------------------
# A positive interval coalesces the writes of known-length responses (at most 64 KiB, and
# everything at the end of the response); SSE and unknown-length responses go out at once.
# An hour-long interval shows nothing waits for the timer when it must not.

HOUR_NS = 3600 * 10**9


@pytest.fixture
def coalescing(origin: Any, run_proxy: Any) -> Any:
    port = free_port()
    route = rp_route(f"127.0.0.1:{origin.port}", flush_interval=HOUR_NS)
    run_proxy(proxy_config(port, [route]), port)
    return port, origin


@pytest.mark.parametrize("size", [4096, 5 * 1024 * 1024])
def test_flush_interval_known_length_complete(coalescing: Any, size: int) -> None:
    port, _ = coalescing
    for _ in range(2):
        status, headers, body = _get_raw(port, f"/bytes/{size}")
        assert status == 200
        assert headers["content-length"] == str(size)
        assert body == payload(size)


def test_flush_interval_sse_is_immediate(coalescing: Any) -> None:
    port, origin = coalescing
    assert b"data: event 2" in read_sse_event_by_event(port, origin)


def test_flush_interval_known_length_event_stream_is_immediate(
    raw_origin: Any, run_proxy: Any
) -> None:
    # Only the first event of a 1000-byte body: it must reach the client without the rest.
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 1000\r\n\r\n"
    o = raw_origin(lambda c, n, h: head + b"data: first\n\n")
    port = free_port()
    run_proxy(proxy_config(port, [rp_route(f"127.0.0.1:{o.port}", flush_interval=HOUR_NS)]), port)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        while b"data: first\n\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, buf
            buf += chunk


def test_request_buffers_with_expect_continue(buffered: Any) -> None:
    port, origin = buffered
    data = payload(3000)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        with s.makefile("rb") as f:
            assert f.readline().startswith(b"HTTP/1.1 100")
            assert f.readline() == b"\r\n"
            s.sendall(data)
            status, _, body = read_response(f)
    assert status == 200
    assert body == data
    assert _origin_saw(origin)["content-length"] == "3000"
