#!/usr/bin/env python3
"""The soak benchmark's origin: a plain asyncio HTTP/1.1 server on 127.0.0.1 (keepalive).

It runs as its own process so that run.py can kill it (SIGKILL, by pid) and start it again on
the same port, which is what an origin crash and restart look like to pyproxy.

    python bench/soak/origin.py --port PORT

- `GET /4k`: 4096 bytes, Content-Length framing.
- `GET /stream?kib=N&chunk_kib=C&ms=D`: N KiB in C KiB writes, each after the previous one
  drained and D ms passed (a large body produced slowly); Content-Length framing, so a
  truncation is visible to the client.
- anything else: 404.

Request bodies (Content-Length) are read and discarded; chunked request bodies are refused
with 501, since pyproxy only ever forwards the benchmark's GETs here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from urllib.parse import parse_qs, urlsplit

BODY_4K = bytes(range(256)) * 16
# Bounds on /stream so a typo cannot make the origin send gigabytes.
MAX_STREAM_KIB = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024
# An idle keepalive connection is closed after this long, like a typical origin's keepalive
# timeout (nginx: 75 s); longer than pyproxy's upstream idle timeout in run.py's config, so
# pyproxy is the side that closes idle connections.
IDLE_CLOSE_S = 60.0


def response_head(status: str, length: int, close: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {status}",
        "Content-Type: application/octet-stream",
        f"Content-Length: {length}",
    ]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_CLOSE_S)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                writer.write(response_head("400 Bad Request", 0, True))
                await writer.drain()
                return
            target = parts[1]
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            close = headers.get("connection", "").lower() == "close"
            if "chunked" in headers.get("transfer-encoding", "").lower():
                writer.write(response_head("501 Not Implemented", 0, True))
                await writer.drain()
                return
            length = int(headers.get("content-length", "0") or "0")
            if length:
                await reader.readexactly(length)
            url = urlsplit(target)
            if url.path == "/4k":
                writer.write(response_head("200 OK", len(BODY_4K), close) + BODY_4K)
                await writer.drain()
            elif url.path == "/stream":
                query = parse_qs(url.query)
                kib = min(int(query.get("kib", ["1024"])[0]), MAX_STREAM_KIB)
                chunk_kib = max(1, int(query.get("chunk_kib", ["16"])[0]))
                delay_s = int(query.get("ms", ["10"])[0]) / 1000.0
                writer.write(response_head("200 OK", kib * 1024, close))
                chunk = b"s" * (chunk_kib * 1024)
                left = kib * 1024
                while left > 0:
                    n = min(left, len(chunk))
                    writer.write(chunk[:n])
                    left -= n
                    await writer.drain()
                    if delay_s:
                        await asyncio.sleep(delay_s)
            else:
                writer.write(response_head("404 Not Found", 0, close))
                await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        return
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def serve(port: int) -> None:
    # reuse_address (asyncio's default on Unix) lets a restarted origin bind the port while
    # connections of the killed one are still in TIME_WAIT.
    server = await asyncio.start_server(
        handle, "127.0.0.1", port, reuse_address=True, limit=MAX_HEAD_BYTES, backlog=512
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
