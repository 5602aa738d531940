"""The HTTP/1.1 server protocol, driven in memory (fake transport, no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from config.model import load_model
from proxy.handlers import BuildContext
from proxy.http.runtime import ServerRuntime
from proxy.http.server import HTTP1Connection
from proxy.upstream.pool import PoolManager
from proxy.upstream.upstream import HostRegistry


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.eof_written = False  # half-closed: the server's lingering close after a refusal
        self.paused = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    @property
    def ended(self) -> bool:
        """The server is done with this connection: closed, or refusing and half-closed."""
        return self.closed or self.eof_written

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def make_conn(
    loop: asyncio.AbstractEventLoop, **server: Any
) -> tuple[HTTP1Connection, FakeTransport]:
    routes = [
        {"match": [{"path": ["/hello"]}], "handle": [{"handler": "static_response", "body": "hi"}]},
        {
            "match": [{"path": ["/abort"]}],
            "handle": [{"handler": "static_response", "abort": True}],
        },
        {
            "match": [{"path": ["/json"]}],
            "handle": [{"handler": "static_response", "body": '{"a": 1}', "close": True}],
        },
    ]
    model = load_model(
        {"apps": {"http": {"servers": {"s": {"listen": [":1"], "routes": routes, **server}}}}}
    )
    assert model.http is not None
    ctx = BuildContext(loop, PoolManager(loop), HostRegistry())
    rt = ServerRuntime(model.http.servers["s"], ctx, None)
    conn = rt.protocol_factory()
    assert isinstance(conn, HTTP1Connection)  # plain HTTP: always HTTP/1.1
    t = FakeTransport()
    conn.connection_made(t)
    return conn, t


def test_pipelined_requests_answered_in_order_with_one_write(
    loop: asyncio.AbstractEventLoop,
) -> None:
    conn, t = make_conn(loop)
    conn.data_received(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n" * 3)
    assert len(t.writes) == 1  # one coalesced write per read event
    assert t.data.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert t.data.endswith(b"\r\n\r\nhi")
    assert not t.closed


def test_request_split_into_single_bytes(loop: asyncio.AbstractEventLoop) -> None:
    conn, t = make_conn(loop)
    for b in b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n":
        conn.data_received(bytes([b]))
    assert t.data.startswith(b"HTTP/1.1 200 OK\r\n") and t.data.endswith(b"hi")


def test_json_body_content_type_and_close(loop: asyncio.AbstractEventLoop) -> None:
    conn, t = make_conn(loop)
    conn.data_received(b"GET /json HTTP/1.1\r\nHost: a\r\n\r\n")
    assert b"Content-Type: application/json\r\n" in t.data
    assert b"Connection: close\r\n" in t.data
    assert t.closed


def test_http10_keepalive_only_when_asked(loop: asyncio.AbstractEventLoop) -> None:
    conn, t = make_conn(loop)
    conn.data_received(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert b"Connection: keep-alive\r\n" in t.data and not t.closed
    conn2, t2 = make_conn(loop)
    conn2.data_received(b"GET /hello HTTP/1.0\r\n\r\n")
    assert b"Connection: close\r\n" in t2.data and t2.closed


def test_head_keeps_length_without_body(loop: asyncio.AbstractEventLoop) -> None:
    conn, t = make_conn(loop)
    conn.data_received(b"HEAD /hello HTTP/1.1\r\nHost: a\r\n\r\n")
    head, _, body = t.data.partition(b"\r\n\r\n")
    assert b"Content-Length: 2" in head and body == b""


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        # Go's server: one limit for the whole head, max_header_bytes + 4096 (no 414).
        (b"GET /" + b"a" * 1100000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"b" * 1100000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n  folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n", 417),
    ],
)
def test_rejections_end_the_connection(
    loop: asyncio.AbstractEventLoop, raw: bytes, status: int
) -> None:
    conn, t = make_conn(loop)
    conn.data_received(raw)
    assert t.data.startswith(f"HTTP/1.1 {status} ".encode())
    assert t.eof_written and not t.closed  # lingering: the client reads the error, not a reset
    conn.data_received(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
    assert t.data.count(b"HTTP/1.1 ") == 1  # what comes after a refusal is never parsed
    conn.check_timeout(conn.runtime.now + 3)
    assert t.closed


def test_custom_max_header_bytes(loop: asyncio.AbstractEventLoop) -> None:
    conn, t = make_conn(loop, max_header_bytes=200)
    conn.data_received(b"GET /hello HTTP/1.1\r\nHost: a\r\nX: " + b"b" * 300 + b"\r\n\r\n")
    assert t.data.startswith(b"HTTP/1.1 200 ")  # within 200 + Go's 4096 bytes of slack
    conn2, t2 = make_conn(loop, max_header_bytes=200)
    conn2.data_received(b"GET /hello HTTP/1.1\r\nHost: a\r\nX: " + b"b" * 4300 + b"\r\n\r\n")
    assert t2.data.startswith(b"HTTP/1.1 431 ")


def test_idle_timeout_closes(loop: asyncio.AbstractEventLoop) -> None:
    conn, t = make_conn(loop, idle_timeout="1s")
    conn.data_received(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
    assert not t.closed
    conn.check_timeout(conn.runtime.now + 0.5)
    assert not t.closed
    conn.check_timeout(conn.runtime.now + 1.5)
    assert t.closed


def test_abort_after_pipelined_response_still_sends_it(loop: asyncio.AbstractEventLoop) -> None:
    conn, t = make_conn(loop)
    conn.data_received(
        b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\nGET /abort HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert t.data.startswith(b"HTTP/1.1 200 OK\r\n") and t.data.endswith(b"hi")
    assert t.data.count(b"HTTP/1.1") == 1
    assert t.closed
