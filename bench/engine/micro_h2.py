#!/usr/bin/env python3
"""In-memory micro-benchmark of the HTTP/2 proxy hot path (no sockets, no TLS, no kernel time).

Like micro.py, but the client side is an `HTTP2Connection`: one request stream per iteration
(HEADERS with END_STREAM, the fields h2load sends, HPACK-indexed after the first request as on
a real keepalive connection), through the router and reverse_proxy into a pooled upstream
connection whose transport is fake, answered with a 4 KiB response. Measures the Python CPU per
request: what h2conn + h2server + hpack add to the shared request path.

    .venv/bin/python bench/engine/micro_h2.py [--n 20000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import hpack

from bench.engine.micro import FakeTransport
from config.model import load_model
from proxy.handlers import BuildContext
from proxy.http import h2frames as F
from proxy.http.client import UpstreamConnection
from proxy.http.h2server import HTTP2Connection
from proxy.http.runtime import ServerRuntime
from proxy.upstream.pool import PoolManager
from proxy.upstream.upstream import HostRegistry

CONFIG = {
    "apps": {
        "http": {
            "servers": {
                "s": {
                    "listen": [":1"],
                    "routes": [
                        {
                            "handle": [
                                {"handler": "reverse_proxy", "upstreams": [{"dial": "127.0.0.1:9"}]}
                            ],
                        }
                    ],
                }
            }
        }
    }
}
REQUEST_FIELDS = [
    (b":method", b"GET"),
    (b":path", b"/4k.txt"),
    (b":scheme", b"https"),
    (b":authority", b"a.test"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="cProfile one round instead")
    args = ap.parse_args()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    model = load_model(CONFIG)
    assert model.http is not None
    ctx = BuildContext(loop, PoolManager(loop), HostRegistry())
    rt = ServerRuntime(model.http.servers["s"], ctx, None)
    handler = rt.routes.routes[0].handlers[0]
    up = handler.upstreams[0]  # type: ignore[attr-defined]
    pool = handler.pool_for(up)  # type: ignore[attr-defined]
    uconn = UpstreamConnection(pool)
    ut = FakeTransport()
    uconn.connection_made(ut)
    uconn.requests = 1
    pool.release(uconn)
    client = HTTP2Connection(rt, "https")
    ct = FakeTransport()
    client.connection_made(ct)
    # h2load's windows: 2^30-1 per stream and for the connection.
    client.data_received(
        F.PREFACE
        + F.settings_frame([(F.SETTINGS_INITIAL_WINDOW_SIZE, (1 << 30) - 1)])
        + F.window_update(0, (1 << 30) - 65535)
        + F.SETTINGS_ACK
    )
    encoder = hpack.Encoder()
    body = b"x" * 4096
    response = (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 4096\r\n"
        b"Last-Modified: Thu, 01 Jan 2026 00:00:00 GMT\r\nConnection: keep-alive\r\n"
        b'ETag: "abc-1000"\r\nAccept-Ranges: bytes\r\n\r\n' + body
    )
    sid = 1

    def one() -> None:
        nonlocal sid
        block = encoder.encode(REQUEST_FIELDS)
        client.data_received(
            F.frame_header(len(block), F.HEADERS, F.FLAG_END_HEADERS | F.FLAG_END_STREAM, sid)
            + block
            + F.window_update(0, 4096)
        )
        uconn.data_received(response)
        sid += 2

    for _ in range(100):  # warm-up and correctness check
        one()
    assert ct.out[-1].endswith(body), ct.out[-1][-200:]
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.n):
            one()
            ct.out.clear()
            ut.out.clear()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return 0
    # The client's HPACK encoding is measured too; subtract it (measured alone, same fields).
    t0 = time.process_time()
    for _ in range(args.n):
        encoder.encode(REQUEST_FIELDS)
    client_cost = time.process_time() - t0
    best = float("inf")
    for _ in range(args.rounds):  # best of N rounds: the machine may be shared
        t0 = time.process_time()
        for _ in range(args.n):
            one()
            ct.out.clear()
            ut.out.clear()
        best = min(best, time.process_time() - t0)
    print(
        f"{(best - client_cost) / args.n * 1e6:.2f} µs CPU per proxied 4 KiB HTTP/2 request "
        f"(in-memory, best of {args.rounds} x {args.n})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
