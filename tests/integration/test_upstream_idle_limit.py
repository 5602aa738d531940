"""keep_alive.max_idle_conns through a running pyproxy: one transport keeps at most that many
idle upstream connections across all its hosts (Go's Transport.MaxIdleConns), so with 1 and two
upstreams used in turn, each release closes the other host's idle connection."""

from __future__ import annotations

import http.client
from typing import Any

import pytest
from enginekit import free_port, proxy_config, rp_route

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
REQUESTS = 4


def get(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@pytest.mark.parametrize(("keep_alive", "dials"), [({"max_idle_conns": 1}, 4), ({}, 2)])
def test_idle_connections_are_capped_across_hosts(
    raw_origin: Any, run_proxy: Any, keep_alive: dict[str, int], dials: int
) -> None:
    a = raw_origin(lambda c, n, head: OK)
    b = raw_origin(lambda c, n, head: OK)
    port = free_port()
    route = rp_route(
        [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"],
        load_balancing={"selection_policy": {"policy": "round_robin"}},
        transport={"protocol": "http", "keep_alive": keep_alive},
    )
    run_proxy(proxy_config(port, [route]), port)
    assert [get(port) for _ in range(REQUESTS)] == [200] * REQUESTS
    # Capped: every request found the idle connection to its host closed and dialed anew.
    assert a.connections + b.connections == dials
