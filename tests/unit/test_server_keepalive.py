"""Server `keepalive_interval`: TCP keep-alive on accepted connections, as Caddy sets it.

Caddy (modules/caddyhttp/app.go) listens with Go's net.ListenConfig.KeepAliveConfig: probes on
by default every 15 s after 15 s idle, 9 probes; a negative interval disables them. The test
runs a real server on loopback and reads the options of the server's side of the connection.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from config.model import load_model
from proxy.handlers import BuildContext
from proxy.http.runtime import ServerRuntime
from proxy.listen import set_tcp_keepalive
from proxy.upstream.pool import PoolManager
from proxy.upstream.upstream import HostRegistry

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "TCP_KEEPIDLE"), reason="needs Linux TCP keep-alive options"
)


def _options(sock: Any) -> tuple[int, int, int, int]:
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )


async def _accepted_options(server_fields: dict[str, Any]) -> tuple[int, int, int, int]:
    loop = asyncio.get_running_loop()
    routes = [{"handle": [{"handler": "static_response", "body": "hi"}]}]
    model = load_model(
        {
            "apps": {
                "http": {"servers": {"s": {"listen": [":1"], "routes": routes, **server_fields}}}
            }
        }
    )
    assert model.http is not None
    rt = ServerRuntime(
        model.http.servers["s"], BuildContext(loop, PoolManager(loop), HostRegistry()), None
    )
    server = await loop.create_server(rt.protocol_factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            # Answered, so the server has accepted and set up the connection.
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
            (conn,) = rt.connections
            return _options(conn.transport.get_extra_info("socket"))
        finally:
            writer.close()
    finally:
        server.close()


async def test_default_is_go_keepalive_15s_idle_15s_interval_9_probes() -> None:
    assert await _accepted_options({}) == (1, 15, 15, 9)


async def test_keepalive_interval_sets_the_probe_interval() -> None:
    assert await _accepted_options({"keepalive_interval": "40s"}) == (1, 15, 40, 9)


async def test_zero_keepalive_interval_means_the_default() -> None:
    assert await _accepted_options({"keepalive_interval": 0}) == (1, 15, 15, 9)


async def test_negative_keepalive_interval_disables_keepalive() -> None:
    assert (await _accepted_options({"keepalive_interval": "-1s"}))[0] == 0


def test_unix_socket_is_left_alone() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        set_tcp_keepalive(a, 30.0)  # no TCP options on a Unix socket: no error, nothing set
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
