"""The HTTP/2 floods of test_h2_hostile.py (RFC 9113 §10.5), over h2c: a plain-HTTP listener
whose server lists h2c, spoken to with prior knowledge (RFC 9113 §3.3).

The listener first sniffs the preface (proxy/http/alpn.py `PrefaceSniff`), then hands the
connection to the same HTTP/2 server as TLS does, so every defence must hold here too. The
attacks are the same frames as over TLS; the raw client is test_h2_hostile's `RawH2` on a plain
socket, and the well-behaved second client is `H2Client(tls=False)`. The budgets are Go's
(proxy/http/h2limits.py).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

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
    HeadersFrame,
    PingFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from test_h2_hostile import RSS_GROWTH_LIMIT_KIB, RawH2, tree_rss_kib
from test_h2_server import TIMEOUT_S, ClosingWatchOrigin, H2Client

watch_origin = test_h2_server.watch_origin  # a fixture of the h2 server tests, by name


def rst_stream(sid: int) -> bytes:
    return b"\x00\x00\x04\x03\x00" + sid.to_bytes(4, "big") + b"\x00\x00\x00\x08"


class RawH2c(RawH2):
    """RawH2 on a plain TCP connection: the preface and SETTINGS with prior knowledge."""

    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(TIMEOUT_S)
        raw.connect(("127.0.0.1", port))
        self.sock = raw  # type: ignore[assignment]  # RawH2 says SSLSocket; only send/recv used
        self.buf = b""
        self.closed = False
        self.goaway = None
        self.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize())
        while not any(isinstance(f, SettingsFrame) for f in self.read_frames()):
            assert not self.closed, "no SETTINGS: the listener did not speak h2c"
        self.send(SettingsFrame(0, flags=["ACK"]).serialize())
        self.encoder = hpack.Encoder()

    def request_block(self, extra: list[tuple[str, str]] | None = None) -> bytes:
        return bytes(
            self.encoder.encode(
                [
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":authority", "localhost"),
                    (":path", "/"),
                    *(extra or []),
                ]
            )
        )


def served(port: int) -> bytes:
    """A well-behaved h2c client's request, on its own connection."""
    client = H2Client(port, tls=False)
    try:
        a = client.answer(client.request("GET", "/"))
    finally:
        client.close()
    assert a.status == 200, a
    return bytes(a.body)


@pytest.fixture
def h2c_proxy(
    run_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> Callable[..., ProxyProcess]:
    """A plain-HTTP site whose server lists h1 h2c, with extra server options."""

    def start(body: str, server_options: str = "") -> ProxyProcess:
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

    return start


def test_rapid_reset_flood_gets_enhance_your_calm(
    h2c_proxy: Callable[..., ProxyProcess],
) -> None:
    """CVE-2023-44487 over h2c: 6000 HEADERS + RST_STREAM pairs in one burst."""
    proxy = h2c_proxy('\trespond "calm"\n')
    assert served(proxy.port) == b"calm"
    before = tree_rss_kib(proxy.proc.pid)
    attacker = RawH2c(proxy.port)
    try:
        burst = bytearray()
        for i in range(6000):
            sid = 1 + 2 * i
            block = attacker.request_block()
            burst += HeadersFrame(sid, block, flags=["END_HEADERS", "END_STREAM"]).serialize()
            burst += rst_stream(sid)
        attacker.send(bytes(burst))
        goaway = attacker.wait_goaway()
        assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert served(proxy.port) == b"calm"
    finally:
        attacker.close()
    assert tree_rss_kib(proxy.proc.pid) - before < RSS_GROWTH_LIMIT_KIB
    assert "too_many_early_resets" in proxy.log
    assert "Traceback" not in proxy.log


def test_a_stream_reset_in_the_same_read_as_its_headers_is_not_served(
    h2c_proxy: Callable[..., ProxyProcess],
) -> None:
    proxy = h2c_proxy('\trespond "calm"\n')
    attacker = RawH2c(proxy.port)
    try:
        headers = HeadersFrame(1, attacker.request_block(), flags=["END_HEADERS", "END_STREAM"])
        ping = PingFrame(0, b"after-it").serialize()
        assert attacker.send(headers.serialize() + rst_stream(1) + ping)
        seen: list[Frame] = []
        deadline = time.monotonic() + TIMEOUT_S
        while not any(isinstance(f, PingFrame) and "ACK" in f.flags for f in seen):
            assert time.monotonic() < deadline and not attacker.closed
            seen += attacker.read_frames()
        assert not any(f.stream_id == 1 for f in seen)
        assert served(proxy.port) == b"calm"
    finally:
        attacker.close()
    assert "Traceback" not in proxy.log


def test_continuation_flood_is_cut_at_twice_the_header_list_size(
    h2c_proxy: Callable[..., ProxyProcess],
) -> None:
    """CVE-2024-27316 over h2c, with max_header_size 4KiB: GOAWAY(PROTOCOL_ERROR)."""
    proxy = h2c_proxy('\trespond "still here"\n', server_options="\t\tmax_header_size 4KiB\n")
    before = tree_rss_kib(proxy.proc.pid)
    attacker = RawH2c(proxy.port)
    try:
        assert attacker.send(
            HeadersFrame(1, attacker.request_block(), flags=["END_STREAM"]).serialize()
        )
        sent = 0
        while sent < 40 and attacker.send(ContinuationFrame(1, b"\x00" * 1024).serialize()):
            sent += 1
        goaway = attacker.wait_goaway()
        assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
        assert served(proxy.port) == b"still here"
    finally:
        attacker.close()
    assert tree_rss_kib(proxy.proc.pid) - before < RSS_GROWTH_LIMIT_KIB


def test_continuation_flood_at_default_limits(h2c_proxy: Callable[..., ProxyProcess]) -> None:
    proxy = h2c_proxy('\trespond "still here"\n')
    before = tree_rss_kib(proxy.proc.pid)
    attacker = RawH2c(proxy.port)
    try:
        attacker.send(HeadersFrame(1, attacker.request_block()).serialize())
        frame = ContinuationFrame(1, b"\x00" * 16384).serialize()
        for _ in range(1000):  # 16 MiB at most
            if not attacker.send(frame) or attacker.goaway is not None:
                break
        goaway = attacker.wait_goaway()
        assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
        assert served(proxy.port) == b"still here"
    finally:
        attacker.close()
    assert tree_rss_kib(proxy.proc.pid) - before < RSS_GROWTH_LIMIT_KIB


def test_hpack_bomb_is_a_connection_error(h2c_proxy: Callable[..., ProxyProcess]) -> None:
    """5 KiB of header block decoding to 4 MB: refused by the advertised header list size."""
    proxy = h2c_proxy('\trespond "defused"\n')
    before = tree_rss_kib(proxy.proc.pid)
    attacker = RawH2c(proxy.port)
    try:
        block = attacker.request_block([("x-bomb", "a" * 4000)])
        block += b"\xbe" * 1000  # RFC 7541 §6.1: indexed field 62, the newest dynamic entry
        attacker.send(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        goaway = attacker.wait_goaway()
        assert goaway.error_code in (ErrorCodes.ENHANCE_YOUR_CALM, ErrorCodes.PROTOCOL_ERROR)
        assert served(proxy.port) == b"defused"
    finally:
        attacker.close()
    assert tree_rss_kib(proxy.proc.pid) - before < RSS_GROWTH_LIMIT_KIB


@pytest.mark.parametrize(
    "frame",
    [PingFrame(0, b"12345678").serialize(), SettingsFrame(0).serialize()],
    ids=["ping", "settings"],
)
def test_control_frame_flood_from_a_client_that_never_reads(
    h2c_proxy: Callable[..., ProxyProcess], frame: bytes
) -> None:
    """CVE-2019-9512/9515 over h2c: past Go's 10000 queued control frames the connection is
    closed; memory stays bounded."""
    proxy = h2c_proxy('\trespond "pong"\n')
    before = tree_rss_kib(proxy.proc.pid)
    attacker = RawH2c(proxy.port, rcvbuf=4096)
    try:
        batch = frame * 1000
        for _ in range(2000):  # 2M frames at most
            if not attacker.send(batch):
                break
        assert attacker.closed, "the flood was never stopped"
        assert served(proxy.port) == b"pong"
    finally:
        attacker.close()
    assert tree_rss_kib(proxy.proc.pid) - before < RSS_GROWTH_LIMIT_KIB
    assert "too_many_control_frames" in proxy.log


@pytest.mark.parametrize(
    "frame",
    [DataFrame(1, b"").serialize(), WindowUpdateFrame(0, 1).serialize()],
    ids=["empty-data", "window-update"],
)
def test_frames_that_need_no_answer_cost_no_memory(
    h2c_proxy: Callable[..., ProxyProcess], frame: bytes
) -> None:
    proxy = h2c_proxy('\trespond "flat"\n')
    attacker = RawH2c(proxy.port)
    try:
        attacker.send(HeadersFrame(1, attacker.request_block(), flags=["END_HEADERS"]).serialize())
        before = tree_rss_kib(proxy.proc.pid)
        batch = frame * 2000
        for _ in range(100):  # 200000 frames
            if not attacker.send(batch):
                break
        assert served(proxy.port) == b"flat"
        grown = tree_rss_kib(proxy.proc.pid) - before
    finally:
        attacker.close()
    assert grown < RSS_GROWTH_LIMIT_KIB
    assert "Traceback" not in proxy.log


def test_zero_window_stream_is_reset_after_the_write_timeout(
    h2c_proxy: Callable[..., ProxyProcess],
    watch_origin: Callable[..., ClosingWatchOrigin],
) -> None:
    """A stream stuck at a closed window past `timeouts.write` is reset (INTERNAL_ERROR) and
    its upstream connection released, over h2c as over TLS."""
    up = watch_origin(50 * 1024 * 1024, 1024 * 1024)
    proxy = h2c_proxy(
        f"\thandle /big {{\n\t\treverse_proxy 127.0.0.1:{up.port}\n\t}}\n\trespond ok\n",
        server_options="\t\ttimeouts {\n\t\t\twrite 1s\n\t\t}\n",
    )
    client = H2Client(proxy.port, window=16 * 1024, auto_ack=False, tls=False)
    try:
        sid = client.request("GET", "/big")
        big = client.answers[sid]
        client.wait(lambda: client.unacked.get(sid, 0) >= 16 * 1024)
        other = client.answer(client.request("GET", "/"))
        assert other.status == 200 and bytes(other.body) == b"ok"
        assert served(proxy.port) == b"ok"
        client.wait(lambda: big.reset is not None)
        assert big.reset == ErrorCodes.INTERNAL_ERROR and not big.ended
        assert up.closed.wait(TIMEOUT_S), "the upstream connection was not released"
        again = client.answer(client.request("GET", "/"))
        assert bytes(again.body) == b"ok"
    finally:
        client.close()
    assert "Traceback" not in proxy.log
