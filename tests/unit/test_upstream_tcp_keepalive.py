"""reverse_proxy `transport.keep_alive.probe_interval`: TCP keep-alive on upstream connections.

Current Caddy (httptransport.go NewTransport) defaults it to 30 s and hands it to Go's dialer as
`KeepAliveConfig{Enable: probe_interval > 0, Interval: probe_interval}`: the first probe after
Go's default idle time (15 s), then one every probe_interval, 9 probes; a negative value turns
keep-alive probes off. The options are read back from real loopback connections.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
import trustme

from config.errors import ConfigError
from config.model import ReverseProxyHandler, load_model
from proxy.handlers.reverse_proxy import ReverseProxy
from proxy.upstream.pool import ConnectionPool, PoolManager
from proxy.upstream.resolve import Resolver
from proxy.upstream.upstream import HostRegistry

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads Linux TCP_KEEP* socket options"
)

HANDLER = "apps.http.servers.s.routes[0].handle[0]"


def proxy_config(keep_alive: dict[str, Any] | None, port: int = 1) -> ReverseProxyHandler:
    transport: dict[str, Any] = {"protocol": "http"}
    if keep_alive is not None:
        transport["keep_alive"] = keep_alive
    handler = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": f"127.0.0.1:{port}"}],
        "transport": transport,
    }
    config = {
        "apps": {
            "http": {"servers": {"s": {"listen": [":8080"], "routes": [{"handle": [handler]}]}}}
        }
    }
    http = load_model(config).http
    assert http is not None
    rp = http.servers["s"].routes[0].handle[0]
    assert isinstance(rp, ReverseProxyHandler)
    return rp


@pytest.fixture
async def origin_port() -> AsyncIterator[int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def keepalive_options(sock: Any) -> tuple[int, int, int, int]:
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )


@pytest.mark.parametrize(
    ("keep_alive", "expected_s"),
    [
        (None, 30.0),  # Caddy's default
        ({"probe_interval": 0}, 30.0),  # zero is the default too
        ({"probe_interval": "7s"}, 7.0),
        ({"probe_interval": 2_500_000_000}, 2.5),  # nanoseconds
        ({"probe_interval": "-1s"}, -1.0),  # negative: probes off
    ],
)
def test_the_model_reads_probe_interval(
    keep_alive: dict[str, Any] | None, expected_s: float
) -> None:
    assert proxy_config(keep_alive).transport.keepalive_probe_interval_s == expected_s


def test_a_bad_probe_interval_names_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        proxy_config({"probe_interval": "often"})
    assert str(info.value) == (
        f"{HANDLER}.transport.keep_alive.probe_interval: invalid duration 'often': "
        'time: invalid duration "often"'
    )


async def _connect(pool: ConnectionPool) -> Any:
    conn = await asyncio.wait_for(pool.connect(), 5.0)
    return conn


@pytest.mark.parametrize(
    ("interval_s", "expected"),
    [
        (30.0, (1, 15, 30, 9)),
        (7.0, (1, 15, 7, 9)),
        (2.5, (1, 15, 3, 9)),  # the kernel takes whole seconds; Go rounds up
    ],
)
async def test_an_upstream_connection_gets_the_probe_interval(
    origin_port: int, interval_s: float, expected: tuple[int, int, int, int]
) -> None:
    loop = asyncio.get_running_loop()
    pool = ConnectionPool(
        loop, "127.0.0.1", origin_port, resolver=Resolver(), keepalive_probe_interval_s=interval_s
    )
    conn = await _connect(pool)
    try:
        assert keepalive_options(conn.transport.get_extra_info("socket")) == expected
    finally:
        conn.close()


async def test_a_negative_probe_interval_turns_probes_off(origin_port: int) -> None:
    loop = asyncio.get_running_loop()
    pool = ConnectionPool(
        loop, "127.0.0.1", origin_port, resolver=Resolver(), keepalive_probe_interval_s=-1.0
    )
    conn = await _connect(pool)
    try:
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    finally:
        conn.close()


async def test_a_tls_upstream_connection_gets_the_probe_interval_too() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("origin.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client_ctx)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    try:
        pool = ConnectionPool(
            asyncio.get_running_loop(),
            "127.0.0.1",
            server.sockets[0].getsockname()[1],
            resolver=Resolver(),
            ssl_context=client_ctx,
            server_hostname="origin.test",
            keepalive_probe_interval_s=11.0,
        )
        conn = await _connect(pool)
        try:
            assert conn.transport.get_extra_info("ssl_object") is not None
            assert keepalive_options(conn.transport.get_extra_info("socket")) == (1, 15, 11, 9)
        finally:
            conn.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_the_reverse_proxy_dials_with_its_transports_probe_interval(
    origin_port: int,
) -> None:
    """From the JSON to the socket: the handler's pool dials with the configured interval, and
    two transports with different intervals to one upstream do not share a pool."""
    loop = asyncio.get_running_loop()
    pools = PoolManager(loop)
    ctx = SimpleNamespace(
        loop=loop,
        registry=HostRegistry(),
        pools=pools,
        server_trusted=(),
        access_logged=False,
        on_start=[],
        on_stop=[],
    )
    seven = ReverseProxy(proxy_config({"probe_interval": "7s"}, origin_port), ctx)
    default = ReverseProxy(proxy_config(None, origin_port), ctx)
    pool = seven.pool_for(seven.upstreams[0])
    assert default.pool_for(default.upstreams[0]) is not pool
    conn = await _connect(pool)
    try:
        assert keepalive_options(conn.transport.get_extra_info("socket")) == (1, 15, 7, 9)
    finally:
        conn.close()
        pools.close()
