"""WebSocket echo origin and round-trip load for the suite's `websocket` scenario.

    python -m bench.wsload serve --port PORT
    python -m bench.wsload load --url ws://127.0.0.1:PORT/ws --conns 10 --seconds 2

`serve` echoes every message back (RFC 6455 data frames, the `websockets` library) on
127.0.0.1. `load` opens --conns connections and on each sends a 64-byte message and waits for
its echo, again and again, until --seconds pass or --max-round-trips are done (whichever comes
first); it prints one JSON line: round trips, round trips/s, p50/p99/p999 latency (ms), errors.
Both run as their own processes so that the suite can pin them to the load core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

MESSAGE = b"x" * 64


async def echo(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass


async def run_server(port: int) -> None:
    async with serve(echo, "127.0.0.1", port, compression=None):
        await asyncio.Future()  # until SIGTERM


async def run_load(url: str, conns: int, seconds: float, max_round_trips: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    per_conn = max(1, max_round_trips // conns)

    async def one() -> None:
        nonlocal errors
        try:
            async with connect(url, compression=None, open_timeout=10) as ws:
                for _ in range(per_conn):
                    if time.monotonic() >= deadline:
                        return
                    t0 = time.perf_counter()
                    await ws.send(MESSAGE)
                    reply = await asyncio.wait_for(ws.recv(), 10)
                    latencies.append(time.perf_counter() - t0)
                    if reply != MESSAGE:
                        errors += 1
        except (OSError, websockets.WebSocketException, TimeoutError):
            errors += 1

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(conns)))
    elapsed = time.monotonic() - t0
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] * 1e3

    return {
        "requests": float(len(latencies)),
        "rps": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "p999_ms": pct(99.9),
        "mean_ms": statistics.fmean(latencies) * 1e3 if latencies else 0.0,
        "failed": float(errors),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    ld = sub.add_parser("load")
    ld.add_argument("--url", required=True)
    ld.add_argument("--conns", type=int, default=10)
    ld.add_argument("--seconds", type=float, default=2.0)
    ld.add_argument("--max-round-trips", type=int, default=1_000_000)
    args = ap.parse_args()
    if args.cmd == "serve":
        asyncio.run(run_server(args.port))
        return 0
    result = asyncio.run(run_load(args.url, args.conns, args.seconds, args.max_round_trips))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
