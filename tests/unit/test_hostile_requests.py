"""Hostile-input corpus for the HTTP/1.1 server, run in memory (no sockets, no subprocess).

Each case is the bytes a client sends on one connection and what must come back: the statuses
of the responses in order, and whether the connection ends. The routes answer with the method
and target they routed, so a request smuggled inside another one's body would show up as an
extra answer (and `/admin` answers 403, like a site's `respond /admin 403`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest
from test_http_server import FakeTransport

from config.model import load_model
from proxy.handlers import BuildContext
from proxy.http.runtime import ServerRuntime
from proxy.http.server import HTTP1Connection
from proxy.upstream.pool import PoolManager
from proxy.upstream.upstream import HostRegistry

ECHO = "{http.request.method} {http.request.orig_uri}"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def connect(loop: asyncio.AbstractEventLoop) -> tuple[HTTP1Connection, FakeTransport]:
    routes = [
        {
            "match": [{"path": ["/admin", "/admin/*"]}],
            "handle": [{"handler": "static_response", "status_code": 403}],
        },
        {"handle": [{"handler": "static_response", "body": ECHO}]},
    ]
    model = load_model({"apps": {"http": {"servers": {"s": {"listen": [":1"], "routes": routes}}}}})
    assert model.http is not None
    ctx = BuildContext(loop, PoolManager(loop), HostRegistry())
    conn = ServerRuntime(model.http.servers["s"], ctx, None).protocol_factory()
    assert isinstance(conn, HTTP1Connection)  # plain HTTP: always HTTP/1.1
    t = FakeTransport()
    conn.connection_made(t)
    return conn, t


class DispatchTo:
    """The server's runtime with another dispatch (a compiled runtime cannot be patched)."""

    def __init__(self, runtime: Any, dispatch: Any) -> None:
        self._runtime = runtime
        self.dispatch = dispatch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)


def statuses(data: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def upgrade_with_body(body: bytes) -> bytes:
    return (
        b"POST /early HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )


SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"

CASES: dict[str, tuple[bytes, list[int], bool]] = {
    # name: (bytes sent, statuses answered in order, connection ends)
    "plain": (b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", [200], False),
    # Critical 1: the body of an Upgrade request is a body, never a second request; and what
    # follows an Upgrade request is held for its response, never parsed (a non-101 closes).
    "upgrade_body_is_a_body": (upgrade_with_body(SMUGGLED), [200], True),
    "upgrade_body_then_request": (upgrade_with_body(b"abc") + SMUGGLED, [200], True),
    "upgrade_chunked_body": (
        b"POST /early HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED),
        [200],
        True,
    ),
    # Major 4: a valid request, then garbage: the valid one is answered, then the 400.
    "valid_then_garbage": (
        b"POST /transfer HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGARBAGE\r\n\r\n",
        [200, 400],
        True,
    ),
    "two_valid_then_bad_head": (
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /3 HTTP/1.1\r\nHost: a b\r\n\r\n" + SMUGGLED,
        [200, 200, 400],
        True,
    ),
    # A static answer needs no body, so /2 is answered before its body is read; the broken
    # chunk then ends the connection (a proxied /2 is aborted: tests/integration).
    "bad_chunk_in_pipelined_body": (
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + SMUGGLED,
        [200, 200],
        True,
    ),
    # Nothing after a request that says Connection: close is parsed.
    "nothing_after_connection_close": (
        b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" + SMUGGLED,
        [200],
        True,
    ),
    # CL+TE and duplicate differing CL: refused before anything is executed.
    "cl_te": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0\r\n\r\n" + SMUGGLED,
        [400],
        True,
    ),
    "te_gzip_chunked_501": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        [501],
        True,
    ),
    "te_identity_chunked_501": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
        [501],
        True,
    ),
    "http09": (b"GET /admin\r\n\r\n", [400], True),
    "http2_line": (b"GET /x HTTP/2.0\r\nHost: a\r\n\r\n", [505], True),
    "rtsp": (b"GET /x RTSP/1.0\r\nHost: a\r\n\r\n", [400], True),
    "unknown_method_is_served": (b"FOO /x HTTP/1.1\r\nHost: a\r\n\r\n", [200], False),
    "host_with_space": (b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n", [400], True),
    "host_with_comma": (b"GET /x HTTP/1.1\r\nHost: a, b\r\n\r\n", [400], True),
    "host_with_path": (b"GET /x HTTP/1.1\r\nHost: x/../y\r\n\r\n", [400], True),
    # A body is read by its length even when nobody wants it: the next request starts after.
    "unread_body_then_request": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello" + SMUGGLED,
        [200, 403],
        False,
    ),
    # A chunked body nobody reads has no known end when the answer goes out: the answer says
    # Connection: close rather than read an unbounded body (Go discards up to 256 KiB).
    "unread_chunked_body_closes": (
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nT: 1\r\n\r\n" + SMUGGLED,
        [200],
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input(loop: asyncio.AbstractEventLoop, name: str) -> None:
    raw, expected, ends = CASES[name]
    conn, t = connect(loop)
    conn.data_received(raw)
    assert statuses(t.data) == expected, t.data
    assert t.ended == ends
    if ends:
        # Whatever the client sends now is never read as a request.
        conn.data_received(SMUGGLED)
        assert statuses(t.data) == expected


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_byte_by_byte(loop: asyncio.AbstractEventLoop, name: str) -> None:
    """The same answers when every byte arrives in its own read (framing never depends on how
    the input is split)."""
    raw, expected, ends = CASES[name]
    conn, t = connect(loop)
    for i in range(len(raw)):
        conn.data_received(raw[i : i + 1])
    assert statuses(t.data) == expected, t.data
    assert t.ended == ends


def test_upgrade_body_reaches_the_handler_as_body(loop: asyncio.AbstractEventLoop) -> None:
    conn, _t = connect(loop)
    got: list[Any] = []

    class Sink:
        def on_body(self, data: bytes) -> None:
            got.append(data)

        def on_body_end(self) -> None:
            got.append(None)

    conn.runtime = DispatchTo(conn.runtime, lambda ex: ex.req.attach_body(Sink()))
    conn.data_received(upgrade_with_body(SMUGGLED))
    assert b"".join(g for g in got if g is not None) == SMUGGLED and got[-1] is None


def test_write_timeout_aborts_a_client_that_stopped_reading(
    loop: asyncio.AbstractEventLoop,
) -> None:
    conn, t = connect(loop)
    conn.runtime.timeouts = type(conn.runtime.timeouts)(write_s=1.0)
    conn.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    conn.pause_writing()  # the kernel buffer is full: the client stopped reading
    conn.check_timeout(conn.runtime.now + 0.5)
    assert not t.closed
    conn.check_timeout(conn.runtime.now + 2)
    # close() would wait for the unsent bytes forever; the timeout must free the socket.
    assert t.aborted


def test_refusal_waits_for_an_answer_that_comes_later(loop: asyncio.AbstractEventLoop) -> None:
    """A proxied request is answered after its read event, inside an upstream read's batch:
    its response still goes out before the refusal of the garbage behind it."""
    conn, t = connect(loop)
    held: list[Any] = []
    conn.runtime = DispatchTo(conn.runtime, held.append)
    conn.data_received(
        b"POST /transfer HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGARBAGE\r\n\r\n"
    )
    assert t.data == b"" and len(held) == 1  # nothing refused while /transfer is in flight
    owned = conn.begin_batch()  # what an upstream read does around the response it relays
    held[0].respond(200, None, b"done")
    if owned:
        conn.end_batch()
    assert statuses(t.data) == [200, 400]
    assert t.data.index(b"done") < t.data.index(b"400 Bad Request")
    assert t.ended


def test_answers_before_a_queued_refusal_are_not_lost(loop: asyncio.AbstractEventLoop) -> None:
    """/1 is answered within the read, /2 is still in flight when the garbage is read: /1's
    answer goes out at once, /2's when it comes, then the refusal."""
    conn, t = connect(loop)
    held: list[Any] = []

    def dispatch(ex: Any) -> None:
        if ex.req.path == "/1":
            ex.respond(200, None, b"one")
        else:
            held.append(ex)

    conn.runtime = DispatchTo(conn.runtime, dispatch)
    conn.data_received(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE\r\n\r\n"
    )
    assert statuses(t.data) == [200] and t.data.endswith(b"one")
    held[0].respond(200, None, b"two")
    assert statuses(t.data) == [200, 200, 400]
    assert t.ended
