"""transport tls.handshake_timeout: the upstream TLS handshake has its own limit.

Go's transport (Caddy) bounds the TCP connect by the dialer's timeout (dial_timeout) and the TLS
handshake by TLSHandshakeTimeout (tls.handshake_timeout); a handshake timeout is a timeout
error, which Caddy answers with 504. Real loopback servers: one that accepts TCP and never
answers the ClientHello, and a real TLS server.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest
import trustme

from proxy.upstream.errors import DialTimeout, TLSHandshakeTimeout
from proxy.upstream.pool import ConnectionPool
from proxy.upstream.resolve import Resolver


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """Accepts TCP connections and reads the ClientHello, never answering it."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(65536):
                pass
        finally:
            writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def _client_context(ca: trustme.CA | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca is not None:
        ca.configure_trust(ctx)
    return ctx


def _pool(
    port: int, ctx: ssl.SSLContext, dial_s: float, handshake_s: float | None
) -> ConnectionPool:
    return ConnectionPool(
        asyncio.get_running_loop(),
        "127.0.0.1",
        port,
        resolver=Resolver(),
        ssl_context=ctx,
        server_hostname="origin.test",
        dial_timeout_s=dial_s,
        handshake_timeout_s=handshake_s,
    )


async def test_a_stalled_handshake_ends_at_handshake_timeout_as_a_timeout(silent_port: int) -> None:
    pool = _pool(silent_port, _client_context(), dial_s=10.0, handshake_s=0.3)
    with pytest.raises(TLSHandshakeTimeout, match="TLS handshake timeout") as err:
        await asyncio.wait_for(pool.connect(), 10)
    assert isinstance(err.value, DialTimeout)  # the handler answers 504, as Caddy does
    assert pool.active == 0


async def test_dial_timeout_bounds_only_the_tcp_connect(silent_port: int) -> None:
    # The handshake may take longer than dial_timeout: it ends at its own limit, reported as a
    # handshake timeout, not as the dial's "i/o timeout".
    pool = _pool(silent_port, _client_context(), dial_s=0.2, handshake_s=0.8)
    with pytest.raises(TLSHandshakeTimeout):
        await asyncio.wait_for(pool.connect(), 10)


async def test_a_handshake_within_the_limit_gives_a_tls_connection() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("origin.test").configure_cert(server_ctx)

    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hello, "127.0.0.1", 0, ssl=server_ctx)
    try:
        port = server.sockets[0].getsockname()[1]
        pool = _pool(port, _client_context(ca), dial_s=5.0, handshake_s=5.0)
        conn = await asyncio.wait_for(pool.connect(), 10)
        try:
            sslobj = conn.transport.get_extra_info("ssl_object")
            assert sslobj is not None and sslobj.version() is not None
            assert pool.active == 1
        finally:
            conn.transport.close()
    finally:
        server.close()
