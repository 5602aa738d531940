#!/usr/bin/env python3
"""In-memory micro-benchmark of the proxy hot path (no sockets, no kernel time).

Feeds a keepalive GET through the real server protocol, router and reverse_proxy handler into a
pooled upstream connection whose transport is fake, feeds back a 4 KiB response, and measures
the Python CPU per request. This is the engine's own cost, free of the noise of a shared
machine; `run.py` measures the whole system.

    .venv/bin/python bench/engine/micro.py [--n 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from config.model import load_model
from proxy.handlers import BuildContext
from proxy.http.client import UpstreamConnection
from proxy.http.runtime import ServerRuntime
from proxy.http.server import HTTP1Connection
from proxy.upstream.pool import PoolManager
from proxy.upstream.upstream import HostRegistry


class FakeTransport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    model = load_model(
        {
            "apps": {
                "http": {
                    "servers": {
                        "s": {
                            "listen": [":1"],
                            "routes": [
                                {
                                    "match": [{"host": ["a.test"]}],
                                    "handle": [
                                        {
                                            "handler": "subroute",
                                            "routes": [
                                                {
                                                    "handle": [
                                                        {
                                                            "handler": "reverse_proxy",
                                                            "upstreams": [{"dial": "127.0.0.1:9"}],
                                                        }
                                                    ]
                                                }
                                            ],
                                        }
                                    ],
                                    "terminal": True,
                                }
                            ],
                        }
                    }
                }
            }
        }
    )
    assert model.http is not None
    ctx = BuildContext(loop, PoolManager(loop), HostRegistry())
    rt = ServerRuntime(model.http.servers["s"], ctx, None)
    handler = rt.routes.routes[0].handlers[0].routes.routes[0].handlers[0]  # type: ignore[attr-defined]
    up = handler.upstreams[0]
    pool = handler.pool_for(up)
    uconn = UpstreamConnection(pool)
    ut = FakeTransport()
    uconn.connection_made(ut)
    uconn.requests = 1
    pool.release(uconn)
    client = rt.protocol_factory()
    assert isinstance(client, HTTP1Connection)  # plain HTTP: always HTTP/1.1
    ct = FakeTransport()
    client.connection_made(ct)
    request = b"GET /4k.txt HTTP/1.1\r\nHost: a.test\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
    body = b"x" * 4096
    response = (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 4096\r\n"
        b"Last-Modified: Thu, 01 Jan 2026 00:00:00 GMT\r\nConnection: keep-alive\r\n"
        b'ETag: "abc-1000"\r\nAccept-Ranges: bytes\r\n\r\n' + body
    )
    # warm-up and correctness check
    for _ in range(100):
        client.data_received(request)
        uconn.data_received(response)
    assert ct.out[-1].endswith(body), ct.out[-1][:200]
    best = float("inf")
    for _ in range(args.rounds):  # best of N rounds: the machine may be shared
        t0 = time.process_time()
        for _ in range(args.n):
            client.data_received(request)
            uconn.data_received(response)
            ct.out.clear()
            ut.out.clear()
        best = min(best, time.process_time() - t0)
    print(
        f"{best / args.n * 1e6:.2f} µs CPU per proxied 4 KiB request "
        f"(in-memory, best of {args.rounds} x {args.n})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
