"""Differential testing against Caddy: the same Caddyfile and raw requests to both servers.

One Caddyfile holds every case's snippet as its own site on its own loopback port, so one
Caddy (/usr/bin/caddy) and one pyproxy serve a whole table. Both proxy to one recording origin;
requests are sent one at a time, so what the origin saw during a request belongs to it.

Comparison drops only what legitimately differs between two implementations or two runs: the
Date header, the Server header's value (its presence is compared), the framing headers
(Content-Length, Transfer-Encoding, Connection, Keep-Alive), the listening ports (replaced by
"PORT" wherever they occur), and the `Accept-Encoding: gzip` Go's transport adds upstream.
A gzip or zstd response body is compared decoded (the compressed bytes legitimately differ);
its Content-Encoding and Vary are compared as sent.

A snippet that contains "{PORT}" is written as whole site blocks (several hosts on one port);
any other snippet is the body of a site on its own port. {ORIGIN} is the recording origin and
{DEAD} a closed loopback port (an upstream that refuses connections). Both servers run with
ENV in their environment, for `{$VAR}` and `{env.VAR}`.
"""

from __future__ import annotations

import gzip
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import zstandard
from enginekit import distinct_free_ports, free_port

CADDY = "/usr/bin/caddy"
ROOT = Path(__file__).resolve().parents[2]
ORIGIN_PLACEHOLDER = "{ORIGIN}"
DEAD_PLACEHOLDER = "{DEAD}"
PORT_PLACEHOLDER = "{PORT}"
# Set for both servers: `{$DIFF_GREETING}` (parse time) and `{env.DIFF_GREETING}` (run time).
ENV = {"DIFF_GREETING": "hello-env", "DIFF_STATUS": "203"}
# Not compared: per-run values and message framing (RFC 9112 section 6: either framing is fine).
IGNORED_RESPONSE = frozenset(
    {"date", "content-length", "transfer-encoding", "connection", "keep-alive"}
)
# Compared for presence only (so `header -Server` is checked), not for its value.
PRESENCE_ONLY = frozenset({"server"})
IGNORED_UPSTREAM = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
# Go's transport adds this when the client sent no Accept-Encoding and then un-gzips the answer
# itself, so the client never sees the difference; pyproxy forwards the request as it came.
GO_TRANSPORT_GZIP = ("accept-encoding", "gzip")

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Case:
    """One differential case: a site snippet (may use {ORIGIN}), a raw request without Host."""

    id: str
    snippet: str
    request: bytes
    deviation: str | None = None  # "deviation: ..." or "pyproxy bug: ..." (strict xfail)
    host: str = "localhost"
    repeat: int = 1  # the request is sent this many times, in order; all answers are compared
    unordered: bool = False  # compare the answers as a multiset (nondeterministic lb policies)


@dataclass(frozen=True)
class Seen:
    """What the origin received for one request."""

    method: str
    target: str
    headers: Headers
    body: bytes


@dataclass(frozen=True)
class Outcome:
    status: int
    reason: str
    headers: Headers
    body: bytes
    upstream: tuple[Seen, ...]


def _read_head(conn: socket.socket, buf: bytearray) -> bytes | None:
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    buf[:] = rest
    return head


def _read_exact(conn: socket.socket, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
    out = bytes(buf[:n])
    del buf[:n]
    return out


def _read_line(conn: socket.socket, buf: bytearray) -> bytes:
    while b"\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return bytes(buf)
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\r\n")
    buf[:] = rest
    return line


def _parse_headers(lines: list[bytes]) -> Headers:
    out = []
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        out.append((name.strip(), value.strip()))
    return tuple(out)


def _read_chunked(conn: socket.socket, buf: bytearray) -> bytes:
    body = bytearray()
    while True:
        size = int(_read_line(conn, buf).split(b";")[0] or b"0", 16)
        if size == 0:
            while _read_line(conn, buf):  # trailers up to the empty line
                pass
            return bytes(body)
        body += _read_exact(conn, buf, size)
        _read_line(conn, buf)


class RecordingOrigin:
    """A loopback HTTP/1.1 origin that records each request and answers 200 "origin".

    It sends `X-Origin-Resp: old` so tests can see how response header ops combine with it.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        buf = bytearray()
        with conn:
            try:
                while not self._stop:
                    head = _read_head(conn, buf)
                    if head is None:
                        return
                    first, *lines = head.split(b"\r\n")
                    method, target, _ = first.decode("latin-1").split(" ", 2)
                    headers = _parse_headers(lines)
                    names = {k.lower(): v for k, v in headers}
                    if "chunked" in names.get("transfer-encoding", "").lower():
                        body = _read_chunked(conn, buf)
                    else:
                        body = _read_exact(conn, buf, int(names.get("content-length", "0")))
                    with self._lock:
                        self.seen.append(Seen(method, target, headers, body))
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                        b"X-Origin-Resp: old\r\nContent-Length: 6\r\n\r\norigin"
                    )
            except OSError:
                return

    def take(self) -> tuple[Seen, ...]:
        with self._lock:
            out, self.seen = tuple(self.seen), []
        return out

    def stop(self) -> None:
        self._stop = True
        self.sock.close()
        self.thread.join(5)


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)  # polling a port, bounded by the deadline
    raise RuntimeError(f"port {port} not listening after {timeout_s}s:\n{log.read_text()}")


def site_snippets(cases: list[Case]) -> list[str]:
    """The distinct snippets in table order (equal snippets share one site)."""
    seen: list[str] = []
    for c in cases:
        if c.snippet not in seen:
            seen.append(c.snippet)
    return seen


def caddyfile(
    snippets: list[str],
    ports: list[int],
    origin_port: int,
    admin: str,
    dead_port: int = 0,
    prelude: str = "",
) -> str:
    """The whole table as one Caddyfile; `prelude` (e.g. `(name) {...}` snippets) follows the
    global options."""
    # default_bind: every site listens on loopback only (both 2.6.2 and pyproxy honour it).
    out = [f"{{\n\tadmin {admin}\n\tauto_https off\n\tdefault_bind 127.0.0.1\n}}\n", prelude]
    for snippet, port in zip(snippets, ports, strict=True):
        body = snippet.replace(ORIGIN_PLACEHOLDER, f"127.0.0.1:{origin_port}")
        body = body.replace(DEAD_PLACEHOLDER, f"127.0.0.1:{dead_port}")
        if PORT_PLACEHOLDER in body:
            out.append(body.replace(PORT_PLACEHOLDER, str(port)) + "\n")
        else:
            out.append(f":{port} {{\n{body}\n}}\n")
    return "".join(out)


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    ports: dict[str, int] = field(default_factory=dict)  # snippet -> port

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_server(
    name: str,
    snippets: list[str],
    origin_port: int,
    workdir: Path,
    dead_port: int = 0,
    prelude: str = "",
) -> Server:
    """Start Caddy ("caddy") or pyproxy ("pyproxy") on fresh loopback ports, one per snippet."""
    *ports, admin_port = distinct_free_ports(len(snippets) + 1)
    path = workdir / f"Caddyfile.{name}"
    admin = f"127.0.0.1:{admin_port}"
    path.write_text(caddyfile(snippets, ports, origin_port, admin, dead_port, prelude))
    log = workdir / f"{name}.log"
    env = dict(
        os.environ,
        XDG_CONFIG_HOME=str(workdir / f"{name}-config"),
        XDG_DATA_HOME=str(workdir / f"{name}-data"),
        HOME=str(workdir),
        **ENV,
    )
    if name == "caddy":
        argv = [CADDY, "run", "--config", str(path), "--adapter", "caddyfile"]
    else:
        env["PYTHONPATH"] = str(ROOT)
        argv = [sys.executable, "-m", "proxy", "run", "--config", str(path)]
        argv += ["--adapter", "caddyfile", "--workers", "1"]
    with open(log, "wb") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    server = Server(name, proc, dict(zip(snippets, ports, strict=True)))
    try:
        for port in ports:
            wait_port(port, proc, log)
    except BaseException:
        server.stop()
        raise
    return server


def exchange(
    port: int, request: bytes, host: str = "localhost", timeout_s: float = 5
) -> tuple[int, str, Headers, bytes]:
    """Send `request` (a head without Host; Host and Connection: close are added).

    A connection closed (or reset) before any response head is status 0 (`abort`)."""
    head, sep, body = request.partition(b"\r\n\r\n")
    fields = b"\r\nHost: " + host.encode() + b"\r\nConnection: close"
    data = head + fields + (sep or b"\r\n\r\n") + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(data)
        buf = bytearray()
        try:
            resp_head = _read_head(s, buf)
        except ConnectionResetError:
            resp_head = None
        if resp_head is None:
            return 0, "", (), b""
        first, *lines = resp_head.split(b"\r\n")
        _, code, *reason = first.decode("latin-1").split(" ", 2)
        headers = _parse_headers(lines)
        names = {k.lower(): v for k, v in headers}
        if request.startswith(b"HEAD ") or code in ("204", "304"):
            payload = b""
        elif "chunked" in names.get("transfer-encoding", "").lower():
            payload = _read_chunked(s, buf)
        elif "content-length" in names:
            payload = _read_exact(s, buf, int(names["content-length"]))
        else:
            while chunk := s.recv(65536):
                buf += chunk
            payload = bytes(buf)
    return int(code), reason[0] if reason else "", headers, payload


def _ports_out(text: str, ports: set[int]) -> str:
    return re.sub(r"\d{2,5}", lambda m: "PORT" if int(m.group()) in ports else m.group(), text)


def normalise_headers(headers: Headers, ignored: frozenset[str], ports: set[int]) -> Headers:
    kept = [
        (k.lower(), "*" if k.lower() in PRESENCE_ONLY else _ports_out(v, ports))
        for k, v in headers
        if k.lower() not in ignored
    ]
    return tuple(sorted(kept))


def _without_go_gzip(headers: Headers, request: bytes) -> Headers:
    if b"\naccept-encoding:" in request.lower():
        return headers
    return tuple(h for h in headers if h != GO_TRANSPORT_GZIP)


def decoded(headers: Headers, body: bytes) -> bytes:
    """The body with its Content-Encoding (gzip, zstd) undone, last coding first."""
    codings = [
        c.strip().lower()
        for k, v in headers
        if k.lower() == "content-encoding"
        for c in v.split(",")
    ]
    for coding in reversed(codings):
        if coding == "gzip":
            body = gzip.decompress(body)
        elif coding == "zstd":
            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
    return body


def run_case(server: Server, origin: RecordingOrigin, case: Case) -> list[Outcome]:
    outcomes = [_run_once(server, origin, case) for _ in range(case.repeat)]
    if case.unordered:
        outcomes.sort(key=repr)
    return outcomes


def _run_once(server: Server, origin: RecordingOrigin, case: Case) -> Outcome:
    port = server.ports[case.snippet]
    origin.take()
    status, reason, headers, body = exchange(port, case.request, case.host)
    body = decoded(headers, body)
    ports = {port, origin.port}
    upstream = tuple(
        Seen(
            s.method,
            _ports_out(s.target, ports),
            _without_go_gzip(normalise_headers(s.headers, IGNORED_UPSTREAM, ports), case.request),
            s.body,
        )
        for s in origin.take()
    )
    return Outcome(
        status, reason, normalise_headers(headers, IGNORED_RESPONSE, ports), body, upstream
    )
