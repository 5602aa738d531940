#!/usr/bin/env python3
"""The floor of a TLS handshake in CPython: a minimal uvloop server with `ssl`, nothing else.

Started by tls_run.py as its `python-floor` candidate: the same certificate, a 4 KiB answer to
every request head and, for `Connection: close`, a close after it. No routing, no proxying, no
logs. Its CPU per handshake is what OpenSSL (through CPython's `ssl` module and uvloop's TLS
transport) costs on this machine, so pyproxy's figure minus this one is what pyproxy adds.

    python bench/engine/tls_floor.py PORT CERT KEY
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from typing import cast

import uvloop

BODY = b"x" * 4096
KEEP = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n" + BODY
CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n" + BODY


class Answer(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport writes but subclasses none of asyncio's transport classes.
        self.transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            if b"connection: close" in head.lower():
                self.transport.write(CLOSE)
                self.transport.close()
                return
            self.transport.write(KEEP)


async def serve(port: int, cert: str, key: str) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.num_tickets = 1  # as pyproxy (and Go's TLS 1.3 server) send
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Answer, "127.0.0.1", port, ssl=ctx, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
