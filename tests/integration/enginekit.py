"""Helpers shared by the engine integration tests (ports, payloads, config builders)."""

from __future__ import annotations

import hashlib
import socket
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def distinct_free_ports(count: int) -> list[int]:
    """`count` different free loopback ports: each stays bound until all are chosen (the
    kernel may hand a just-closed port out again, so `free_port()` in a loop can repeat one)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def payload(n: int) -> bytes:
    """Deterministic, non-repeating-ish bytes (so truncation/reordering is detected)."""
    block = hashlib.sha256(str(n).encode()).digest() * 32  # 1 KiB
    out = bytearray()
    i = 0
    while len(out) < n:
        out += bytes((b + i) & 0xFF for b in block[:256]) if i % 7 == 0 else block
        i += 1
    return bytes(out[:n])


def proxy_config(port: int, routes: list[dict[str, Any]], **server: Any) -> dict[str, Any]:
    """A one-server plain-HTTP config. Automatic HTTPS is disabled (as Caddy would otherwise
    serve TLS for host-matched routes and add a :80 redirect server)."""
    srv = {"listen": [f":{port}"], "routes": routes, "automatic_https": {"disable": True}}
    srv.update(server)
    return {"apps": {"http": {"servers": {"srv0": srv}}}}


def rp_route(dial: str | list[str], **handler: Any) -> dict[str, Any]:
    dials = [dial] if isinstance(dial, str) else dial
    return {
        "handle": [
            {"handler": "reverse_proxy", "upstreams": [{"dial": d} for d in dials], **handler}
        ]
    }


def read_response(f: Any) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response (Content-Length or chunked) from a binary file object."""
    status_line = f.readline()
    if not status_line:
        raise EOFError("connection closed")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                f.readline()
                break
            body += f.read(size)
            f.readline()
    else:
        body = b""
    return status, headers, body


def read_sse_event_by_event(port: int, origin: Any, events: int = 3) -> bytes:
    """GET /sse through the proxy and wait for each event before the origin (the conftest's
    test origin) sends the next: passes only if the proxy flushes every event on arrival.
    Returns everything read."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        for i in range(events):
            want = f"data: event {i}\n\n".encode()
            while want not in buf:
                chunk = s.recv(65536)
                assert chunk, buf
                buf += chunk
            origin.release_sse()
        return buf
