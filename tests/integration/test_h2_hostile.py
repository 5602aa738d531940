"""HTTP/2 floods against `pyproxy run` (RFC 9113 §10.5), on loopback: every attack over TLS
(ALPN h2) and over h2c (a plain listener whose server lists h2c, prior knowledge, RFC 9113 §3.3).

Each attack comes from a raw client (the `h2` package for the handshake, hyperframe/hpack for
the frames h2 would refuse to send); meanwhile a second, well-behaved client must still be
served, and the proxy's memory (RSS of its process tree) must stay bounded. The budgets are
Go's (proxy/http/h2limits.py).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hpack
import pytest
import test_h2_server
from conftest import ProxyProcess
from enginekit import free_port
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from test_h2_server import TIMEOUT_S, ClosingWatchOrigin, H2Client

# The fixtures of the h2 server tests, used here by name.
cert_pair = test_h2_server.cert_pair
h2_proxy = test_h2_server.h2_proxy
watch_origin = test_h2_server.watch_origin

RSS_GROWTH_LIMIT_KIB = 64 * 1024  # what a flood may add to the proxy's memory, at most


def tree_rss_kib(pid: int) -> int:
    """VmRSS of `pid` and its descendants (pyproxy may run workers)."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}").joinpath("task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


def served(port: int, tls: bool = True) -> bytes:
    """A well-behaved client's request, on its own connection."""
    client = H2Client(port, tls=tls)
    try:
        a = client.answer(client.request("GET", "/"))
    finally:
        client.close()
    assert a.status == 200, a
    return bytes(a.body)


class RawH2:
    """A connection (TLS with ALPN h2, or plain h2c with prior knowledge) that has done the
    HTTP/2 handshake, then writes raw frames and reads frames without interpreting them."""

    def __init__(self, port: int, rcvbuf: int | None = None, *, tls: bool = True) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(TIMEOUT_S)
        raw.connect(("127.0.0.1", port))
        self.scheme = "https" if tls else "http"
        self.sock: socket.socket = raw  # h2c: prior knowledge on the plain connection
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
            assert self.sock.selected_alpn_protocol() == "h2"
        self.buf = b""
        self.closed = False
        self.goaway: GoAwayFrame | None = None
        self.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize())
        # The server's SETTINGS, acknowledged: h2's decoder then enforces the header list size.
        while not any(isinstance(f, SettingsFrame) for f in self.read_frames()):
            assert not self.closed, "no SETTINGS: the server did not speak HTTP/2"
        self.send(SettingsFrame(0, flags=["ACK"]).serialize())
        self.encoder = hpack.Encoder()

    def send(self, data: bytes) -> bool:
        """False once the server has closed the connection."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.closed = True
            return False
        return True

    def read_frames(self) -> list[Frame]:
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return []
        self.buf += data
        frames: list[Frame] = []
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                break
            frame, _ = Frame.parse_frame_header(memoryview(self.buf[:9]))
            frame.parse_body(memoryview(self.buf[9 : 9 + length]))
            self.buf = self.buf[9 + length :]
            if isinstance(frame, GoAwayFrame):
                self.goaway = frame
            frames.append(frame)
        return frames

    def wait_goaway(self) -> GoAwayFrame:
        deadline = time.monotonic() + TIMEOUT_S
        while self.goaway is None and not self.closed:
            assert time.monotonic() < deadline, "no GOAWAY in time"
            self.read_frames()
        assert self.goaway is not None, "closed without GOAWAY"
        return self.goaway

    def request_block(self, extra: list[tuple[str, str]] | None = None) -> bytes:
        return bytes(
            self.encoder.encode(
                [
                    (":method", "GET"),
                    (":scheme", self.scheme),
                    (":authority", "localhost"),
                    (":path", "/"),
                    *(extra or []),
                ]
            )
        )

    def close(self) -> None:
        self.sock.close()


@dataclass
class Target:
    """Where the attacks go: a TLS listener (ALPN h2) or a plain one whose server lists h2c.
    Both hand the connection to the same HTTP/2 server, so every defence must hold on both."""

    tls: bool
    start: Callable[..., ProxyProcess]  # (body, server_options="") -> the running proxy

    def raw(self, port: int, rcvbuf: int | None = None) -> RawH2:
        return RawH2(port, rcvbuf, tls=self.tls)

    def served(self, port: int) -> bytes:
        return served(port, tls=self.tls)

    def client(self, port: int, **kw: Any) -> H2Client:
        return H2Client(port, tls=self.tls, **kw)


@pytest.fixture(params=["tls", "h2c"])
def target(
    request: pytest.FixtureRequest,
    h2_proxy: Callable[..., ProxyProcess],
    run_proxy: Callable[..., ProxyProcess],
    tmp_path: Path,
) -> Target:
    if request.param == "tls":
        return Target(tls=True, start=h2_proxy)

    def start_h2c(body: str, server_options: str = "") -> ProxyProcess:
        port = free_port()
        caddyfile = (
            "{\n"
            f"\thttp_port {port}\n"
            f"\thttps_port {free_port()}\n"
            f"\tstorage file_system {tmp_path / 'data'}\n"
            "\tadmin off\n"
            f"\tservers {{\n\t\tprotocols h1 h2c\n{server_options}\t}}\n"
            "}\n"
            f"http://:{port} {{\n{body}}}\n"
        )
        return run_proxy(caddyfile, port)

    return Target(tls=False, start=start_h2c)


def test_rapid_reset_flood_gets_enhance_your_calm(
    target: Target,
) -> None:
    """CVE-2023-44487: HEADERS + RST_STREAM pairs, far more than 250 handlers plus Go's queue
    of 4 x 250 unstarted ones, in one burst: GOAWAY(ENHANCE_YOUR_CALM), as Go's server."""
    proxy = target.start('\trespond "calm"\n')
    assert target.served(proxy.port) == b"calm"
    before = tree_rss_kib(proxy.proc.pid)
    attacker = target.raw(proxy.port)
    try:
        burst = bytearray()
        sid = 1
        for _ in range(6000):
            block = attacker.request_block()  # indexed fields after the first: a few bytes
            burst += HeadersFrame(sid, block, flags=["END_HEADERS", "END_STREAM"]).serialize()
            # RST_STREAM(CANCEL), RFC 9113 §6.4
            burst += b"\x00\x00\x04\x03\x00" + sid.to_bytes(4, "big") + b"\x00\x00\x00\x08"
            sid += 2
        attacker.send(bytes(burst))
        goaway = attacker.wait_goaway()
        assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert target.served(proxy.port) == b"calm"  # the second client, meanwhile
    finally:
        attacker.close()
    assert tree_rss_kib(proxy.proc.pid) - before < RSS_GROWTH_LIMIT_KIB
    assert "too_many_early_resets" in proxy.log
    assert "Traceback" not in proxy.log


def test_a_stream_reset_in_the_same_read_as_its_headers_is_not_served(
    target: Target,
) -> None:
    """HEADERS and RST_STREAM in one write: h2 has closed the stream before its request is
    handled, so no handler runs and nothing is written on it (no handler error either)."""
    proxy = target.start('\trespond "calm"\n')
    attacker = target.raw(proxy.port)
    try:
        headers = HeadersFrame(1, attacker.request_block(), flags=["END_HEADERS", "END_STREAM"])
        rst = b"\x00\x00\x04\x03\x00" + (1).to_bytes(4, "big") + b"\x00\x00\x00\x08"
        ping = PingFrame(0, b"after-it").serialize()
        assert attacker.send(headers.serialize() + rst + ping)
        seen: list[Frame] = []
        deadline = time.monotonic() + TIMEOUT_S
        while not any(isinstance(f, PingFrame) and "ACK" in f.flags for f in seen):
            assert time.monotonic() < deadline and not attacker.closed
            seen += attacker.read_frames()
        assert not any(f.stream_id == 1 for f in seen)  # no HEADERS, DATA or RST on stream 1
        assert target.served(proxy.port) == b"calm"
    finally:
        attacker.close()
    assert "Traceback" not in proxy.log


def test_continuation_flood_is_cut_at_twice_the_header_list_size(
    target: Target,
) -> None:
    """CVE-2024-27316: CONTINUATION frames without END_HEADERS. With max_header_size 4KiB the
    block is refused past 2 x (4096 + 320) encoded bytes (Go's bound), long before h2's own cap
    of 64 CONTINUATION frames: GOAWAY(PROTOCOL_ERROR)."""
    proxy = target.start('\trespond "still here"\n', server_options="\t\tmax_header_size 4KiB\n")
    before = tree_rss_kib(proxy.proc.pid)
    attacker = target.raw(proxy.port)
    try:
        start = HeadersFrame(1, attacker.request_block(), flags=["END_STREAM"]).serialize()
        assert attacker.send(start)
        sent = 0
        # 1 KiB of (never decoded) block per frame; bounded at 40 frames (< h2's 64).
        while sent < 40 and attacker.send(ContinuationFrame(1, b"\x00" * 1024).serialize()):
            sent += 1
        goaway = attacker.wait_goaway()
        assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
        assert target.served(proxy.port) == b"still here"
    finally:
        attacker.close()
    assert tree_rss_kib(proxy.proc.pid) - before < RSS_GROWTH_LIMIT_KIB


def test_continuation_flood_at_default_limits(target: Target) -> None:
    """The same flood with 16 KiB frames at the default 1 MiB header size: ended (h2 caps a
    header block at 64 CONTINUATION frames) with memory bounded."""
    proxy = target.start('\trespond "still here"\n')
    before = tree_rss_kib(proxy.proc.pid)
    attacker = target.raw(proxy.port)
    try:
        attacker.send(HeadersFrame(1, attacker.request_block()).serialize())
        frame = ContinuationFrame(1, b"\x00" * 16384).serialize()
        for _ in range(1000):  # 16 MiB at most
            if not attacker.send(frame):
                break
            if attacker.goaway is not None:
                break
        goaway = attacker.wait_goaway()
        assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
        assert target.served(proxy.port) == b"still here"
    finally:
        attacker.close()
    assert tree_rss_kib(proxy.proc.pid) - before < RSS_GROWTH_LIMIT_KIB


def test_hpack_bomb_is_a_connection_error(target: Target) -> None:
    """A 5 KiB header block that decodes to 4 MB (one 4000-byte field in the dynamic table,
    then 1000 one-byte references to it): refused by the advertised header list size."""
    proxy = target.start('\trespond "defused"\n')
    before = tree_rss_kib(proxy.proc.pid)
    attacker = target.raw(proxy.port)
    try:
        block = attacker.request_block([("x-bomb", "a" * 4000)])
        block += b"\xbe" * 1000  # RFC 7541 §6.1: indexed field 62, the newest dynamic entry
        attacker.send(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        goaway = attacker.wait_goaway()
        assert goaway.error_code in (ErrorCodes.ENHANCE_YOUR_CALM, ErrorCodes.PROTOCOL_ERROR)
        assert target.served(proxy.port) == b"defused"
    finally:
        attacker.close()
    assert tree_rss_kib(proxy.proc.pid) - before < RSS_GROWTH_LIMIT_KIB


@pytest.mark.parametrize(
    "frame",
    [
        PingFrame(0, b"12345678").serialize(),
        SettingsFrame(0).serialize(),  # each one must be acknowledged
    ],
    ids=["ping", "settings"],
)
def test_control_frame_flood_from_a_client_that_never_reads(target: Target, frame: bytes) -> None:
    """CVE-2019-9512/9515: acknowledgements pile up for a client that does not read. Past
    Go's 10000 queued control frames the connection is closed; memory stays bounded."""
    proxy = target.start('\trespond "pong"\n')
    before = tree_rss_kib(proxy.proc.pid)
    attacker = target.raw(proxy.port, rcvbuf=4096)
    try:
        batch = frame * 1000
        for _ in range(2000):  # 2M frames at most
            if not attacker.send(batch):
                break
        assert attacker.closed, "the flood was never stopped"
        assert target.served(proxy.port) == b"pong"
    finally:
        attacker.close()
    assert tree_rss_kib(proxy.proc.pid) - before < RSS_GROWTH_LIMIT_KIB
    assert "too_many_control_frames" in proxy.log


@pytest.mark.parametrize(
    "frame",
    [
        DataFrame(1, b"").serialize(),
        WindowUpdateFrame(0, 1).serialize(),
    ],
    ids=["empty-data", "window-update"],
)
def test_frames_that_need_no_answer_cost_no_memory(target: Target, frame: bytes) -> None:
    """Empty DATA on an open stream and WINDOW_UPDATE (CVE-2019-9518 style): nothing is queued
    for them, so memory stays flat; other clients are served meanwhile."""
    proxy = target.start('\trespond "flat"\n')
    attacker = target.raw(proxy.port)
    try:
        # Stream 1 open, its request body still to come.
        attacker.send(HeadersFrame(1, attacker.request_block(), flags=["END_HEADERS"]).serialize())
        before = tree_rss_kib(proxy.proc.pid)
        batch = frame * 2000
        for _ in range(100):  # 200000 frames
            if not attacker.send(batch):
                break
        assert target.served(proxy.port) == b"flat"
        grown = tree_rss_kib(proxy.proc.pid) - before
    finally:
        attacker.close()
    assert grown < RSS_GROWTH_LIMIT_KIB
    assert "Traceback" not in proxy.log


def test_zero_window_stream_is_reset_after_the_write_timeout(
    target: Target,
    watch_origin: Callable[..., ClosingWatchOrigin],
) -> None:
    """A client that opens a large response and never credits its window: past
    `timeouts.write` the stream is reset (INTERNAL_ERROR, as Go's server when a stream's write
    deadline passes) and its upstream connection released; another stream on the same
    connection and another client are served meanwhile."""
    up = watch_origin(50 * 1024 * 1024, 1024 * 1024)
    proxy = target.start(
        f"\thandle /big {{\n\t\treverse_proxy 127.0.0.1:{up.port}\n\t}}\n\trespond ok\n",
        server_options="\t\ttimeouts {\n\t\t\twrite 1s\n\t\t}\n",
    )
    client = target.client(proxy.port, window=16 * 1024, auto_ack=False)
    try:
        sid = client.request("GET", "/big")
        big = client.answers[sid]
        client.wait(lambda: client.unacked.get(sid, 0) >= 16 * 1024)  # its window is 0 now
        other = client.answer(client.request("GET", "/"))  # the same connection meanwhile
        assert other.status == 200 and bytes(other.body) == b"ok"
        assert target.served(proxy.port) == b"ok"  # and another client
        client.wait(lambda: big.reset is not None)
        assert big.reset == ErrorCodes.INTERNAL_ERROR and not big.ended
        assert up.closed.wait(TIMEOUT_S), "the upstream connection was not released"
        again = client.answer(client.request("GET", "/"))  # the connection lives on
        assert bytes(again.body) == b"ok"
    finally:
        client.close()
    assert "Traceback" not in proxy.log
