"""reverse_proxy transport read_timeout / write_timeout, through a running pyproxy.

Caddy (modules/caddyhttp/reverseproxy/httptransport.go, tcpRWTimeoutConn) sets a deadline before
every Read and every Write of the upstream connection: an upstream that sends nothing for
read_timeout, or accepts nothing for write_timeout, has its connection cut; the client gets a
502 when no response head was relayed yet, an aborted response after it. A deadline is per
read, not per response: an upstream that keeps sending stays within it however long it takes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from enginekit import free_port, proxy_config, rp_route

IO_TIMEOUT_S = 10.0
HEAD_200 = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
MAX_UPLOAD_CHUNKS = 4096  # 256 MiB at most, far more than loopback buffers hold
UPLOAD_CHUNK = b"x" * 65536

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Origin:
    """A loopback origin running `serve` for each connection; `release` ends stalled ones."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.release = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Origin:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.append(writer)
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await self.serve(reader, writer)
            writer.close()

        self._server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self.release.set()
        self._server.close()
        for w in self._writers:
            w.close()
        await self._server.wait_closed()


def start(run_proxy: Any, origin: Origin, **transport: str) -> int:
    port = free_port()
    route = rp_route(f"127.0.0.1:{origin.port}", transport={"protocol": "http", **transport})
    run_proxy(proxy_config(port, [route]), port)
    return port


async def get(port: int) -> tuple[bytes, bytes]:
    """The response head and whatever body arrived before the proxy closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT_S)
        body = await asyncio.wait_for(reader.read(), IO_TIMEOUT_S)
        return head, body
    finally:
        writer.close()


async def test_upstream_silent_before_the_head_is_502(run_proxy: Any) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await origin.release.wait()

    async with Origin(silent) as origin:
        port = start(run_proxy, origin, read_timeout="300ms")
        head, _ = await get(port)
        assert head.startswith(b"HTTP/1.1 502 ")


async def test_upstream_stalling_mid_body_aborts_the_response(run_proxy: Any) -> None:
    async def stall_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD_200 + b"partial")
        await writer.drain()
        await origin.release.wait()

    async with Origin(stall_mid_body) as origin:
        port = start(run_proxy, origin, read_timeout="300ms")
        head, body = await get(port)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Content-Length: 100" in head
        # The connection ends after the part the origin sent: 93 bytes are missing.
        assert body == b"partial"


async def test_upstream_sending_steadily_outlives_read_timeout(run_proxy: Any) -> None:
    pieces = 10

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (pieces * 10))
        for _ in range(pieces):
            # A slow upstream (the behaviour under test), each gap well within read_timeout
            # while all of them together exceed it.
            await asyncio.sleep(0.15)
            writer.write(b"0123456789")
            await writer.drain()

    async with Origin(trickle) as origin:
        port = start(run_proxy, origin, read_timeout="600ms")
        head, body = await get(port)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert body == b"0123456789" * pieces


async def test_upstream_not_reading_the_request_body_is_502(run_proxy: Any) -> None:
    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await origin.release.wait()

    async with Origin(never_reads) as origin:
        port = start(run_proxy, origin, write_timeout="300ms")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def upload() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(MAX_UPLOAD_CHUNKS):
                    writer.write(UPLOAD_CHUNK)
                    await writer.drain()

        writer.write(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
            % (MAX_UPLOAD_CHUNKS * len(UPLOAD_CHUNK))
        )
        uploading = asyncio.create_task(upload())
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT_S)
            assert head.startswith(b"HTTP/1.1 502 ")
        finally:
            uploading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await uploading
            writer.close()
