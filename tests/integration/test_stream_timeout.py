"""reverse_proxy `stream_timeout`: an upgraded stream (WebSocket) is closed when it expires.

Caddy (reverseproxy/streaming.go handleUpgradeResponse) starts a timer when the upgrade
succeeds and closes both sides when it fires, however busy the stream is; unset, a stream lasts
as long as its peers keep it (the tunnel tests in test_upstream_faults.py). A real proxy
process and a loopback origin that switches to a WebSocket and echoes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from enginekit import free_port, proxy_config, rp_route

IO_TIMEOUT_S = 10.0
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
UPGRADE = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


class EchoAfterUpgrade:
    """Answers the first request with 101, then echoes; `closed` is set when the proxy hangs up."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(SWITCH)
            while data := await reader.read(65536):
                writer.write(data)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.set()
            writer.close()


@pytest.fixture
async def echo_origin() -> AsyncIterator[EchoAfterUpgrade]:
    origin = EchoAfterUpgrade()
    server = await asyncio.start_server(origin.serve, "127.0.0.1", 0)
    origin.port = server.sockets[0].getsockname()[1]
    try:
        yield origin
    finally:
        server.close()


async def _open_tunnel(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(UPGRADE)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT_S)
    assert head.startswith(b"HTTP/1.1 101 ")
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), IO_TIMEOUT_S) == b"ping"
    return reader, writer


async def test_stream_timeout_closes_both_sides_of_an_upgraded_stream(
    run_proxy: Any, echo_origin: EchoAfterUpgrade
) -> None:
    port = free_port()
    route = rp_route(f"127.0.0.1:{echo_origin.port}", stream_timeout="500ms")
    run_proxy(proxy_config(port, [route]), port)
    reader, writer = await _open_tunnel(port)
    try:
        # The proxy ends the stream: the client reads EOF and the origin sees its side close.
        assert await asyncio.wait_for(reader.read(), IO_TIMEOUT_S) == b""
        await asyncio.wait_for(echo_origin.closed.wait(), IO_TIMEOUT_S)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
