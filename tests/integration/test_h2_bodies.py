"""HTTP/2 bodies and concurrency through `pyproxy run` with the default config (issue #13).

The client is test_h2_server's `H2Client` (python-hyper's `h2` over TLS), here hashing the DATA
it receives instead of keeping it, and streaming request bodies from a generator, so a 100 MiB
body is never held in memory by the test. The origin is an aiohttp server in a thread that
streams a deterministic byte pattern, hashes request bodies as they arrive, holds requests at a
gate (to prove streams are concurrent), and counts what it has written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h2.events
import pytest
import test_h2_server
from aiohttp import web
from conftest import ProxyProcess, wait_port
from enginekit import free_port
from test_h2_hostile import tree_rss_kib
from test_h2_server import TIMEOUT_S, H2Client, h2_caddyfile

cert_pair = test_h2_server.cert_pair

KIB, MIB = 1024, 1024 * 1024
# A prime length, so the pattern never lines up with frame, window or chunk sizes: a frame
# delivered twice, dropped or out of order changes the hash.
PATTERN_LEN = 1_000_003
PATTERN = hashlib.shake_256(b"pyproxy issue 13").digest(PATTERN_LEN)
CHUNK = 256 * KIB


def pattern_chunks(n: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """The first n bytes of the endless repetition of PATTERN, in pieces of at most `chunk`."""
    offset = 0
    while offset < n:
        start = offset % PATTERN_LEN
        size = min(chunk, n - offset, PATTERN_LEN - start)
        yield PATTERN[start : start + size]
        offset += size


def pattern_sha256(n: int) -> str:
    h = hashlib.sha256()
    for piece in pattern_chunks(n, 4 * MIB):
        h.update(piece)
    return h.hexdigest()


# ---- the origin --------------------------------------------------------------------------------


class BodyOrigin:
    """GET /pattern/{n}: n pattern bytes, streamed (each write waits for the socket to drain);
    POST /hash: the sha256 and length of the request body, read as it streams in;
    GET /gated/{i}: held until `gate` requests are in flight (or GATE_TIMEOUT_S), then answered
    after `delay_ms`, with body "slow-{i}"."""

    GATE_TIMEOUT_S = 20.0

    def __init__(self, gate: int = 0, delay_ms: int = 0) -> None:
        self.port = free_port()
        self.gate = gate
        self.delay_ms = delay_ms
        self.in_flight = 0
        self.max_in_flight = 0
        self.pattern_sent = 0  # bytes of /pattern bodies written so far, all requests
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self._gate_open: asyncio.Event | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def pattern(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        n = int(request.match_info["n"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = n
        await resp.prepare(request)
        for piece in pattern_chunks(n):
            await resp.write(piece)
            self.pattern_sent += len(piece)
        return resp

    async def hash(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        h = hashlib.sha256()
        length = 0
        async for piece in request.content.iter_chunked(CHUNK):
            h.update(piece)
            length += len(piece)
        return web.json_response({"sha256": h.hexdigest(), "length": length})

    async def gated(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        assert self._gate_open is not None
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.in_flight >= self.gate:
            self._gate_open.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gate_open.wait(), self.GATE_TIMEOUT_S)
            await asyncio.sleep(self.delay_ms / 1000)  # the slow upstream's own delay
        finally:
            self.in_flight -= 1
        return web.Response(text=f"slow-{request.match_info['i']}")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._gate_open = asyncio.Event()
        app = web.Application(client_max_size=0)  # 0: no limit on the request body
        app.router.add_get("/pattern/{n}", self.pattern)
        app.router.add_post("/hash", self.hash)
        app.router.add_get("/gated/{i}", self.gated)
        runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", self.port, backlog=1024)
        self.loop.run_until_complete(site.start())
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    def start(self) -> BodyOrigin:
        self.thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def body_origin() -> Iterator[Callable[..., BodyOrigin]]:
    made: list[BodyOrigin] = []

    def make(**kw: Any) -> BodyOrigin:
        o = BodyOrigin(**kw).start()
        made.append(o)
        return o

    yield make
    for o in made:
        o.stop()


# ---- the client --------------------------------------------------------------------------------


class HashingClient(H2Client):
    """H2Client that hashes each stream's DATA instead of keeping it (its `answers[sid].body`
    stays empty), and leaves the DATA of `stalled` streams unacknowledged: their window closes
    while the connection's, and every other stream's, is credited back as usual."""

    def __init__(self, port: int, **kw: Any) -> None:
        self.digests: dict[int, Any] = {}
        self.received: dict[int, int] = {}
        self.stalled: set[int] = set()
        self.kept: set[int] = set()  # streams whose (small) body is kept, as H2Client does
        super().__init__(port, **kw)

    def _on_event(self, event: h2.events.Event) -> None:
        if not isinstance(event, h2.events.DataReceived) or event.stream_id in self.kept:
            super()._on_event(event)
            return
        sid = event.stream_id
        self.digests.setdefault(sid, hashlib.sha256()).update(event.data)
        self.received[sid] = self.received.get(sid, 0) + len(event.data)
        n = event.flow_controlled_length
        if sid in self.stalled:
            # Only the connection's window is credited: the stream's stays closed (RFC 9113
            # §6.9: the two windows are separate), so the others go on.
            if n:
                self.conn.increment_flow_control_window(n)
        elif n:
            self.conn.acknowledge_received_data(n, sid)

    def sha256(self, sid: int) -> str:
        return str(self.digests.get(sid, hashlib.sha256()).hexdigest())

    def post_streaming(self, path: str, n: int) -> int:
        """POST n pattern bytes, streamed as the server's windows open."""
        sid = self.conn.get_next_available_stream_id()
        fields = [
            (":method", "POST"),
            (":scheme", self.scheme),
            (":authority", "localhost"),
            (":path", path),
            ("content-length", str(n)),
        ]
        self.conn.send_headers(sid, fields)
        self.answers[sid] = test_h2_server.Answer()
        self.kept.add(sid)  # the origin's JSON answer
        self._send()
        self.send_body(sid, pattern_chunks(n), timeout_s=4 * TIMEOUT_S)
        return sid


@pytest.fixture
def default_proxy(
    run_proxy: Callable[..., ProxyProcess], tmp_path: Path, cert_pair: tuple[Path, Path]
) -> Callable[..., ProxyProcess]:
    """A TLS site on localhost whose server leaves `protocols` unset (h1 h2 by default)."""

    def start(body: str, extra_global: str = "") -> ProxyProcess:
        port = free_port()
        caddyfile = h2_caddyfile(
            tmp_path, cert_pair, port, body, protocols="", extra_global=extra_global
        )
        return run_proxy(caddyfile, port)

    return start


def to(origin: BodyOrigin) -> str:
    return f"\treverse_proxy 127.0.0.1:{origin.port}\n"


SIZES = [4 * KIB, MIB, 100 * MIB]
SIZE_IDS = ["4KiB", "1MiB", "100MiB"]


# ---- byte-identical bodies ---------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_response_bodies_are_byte_identical(
    default_proxy: Callable[..., ProxyProcess],
    body_origin: Callable[..., BodyOrigin],
    size: int,
) -> None:
    origin = body_origin()
    proxy = default_proxy(to(origin))
    client = HashingClient(proxy.port)
    try:
        assert client.alpn == "h2"
        sid = client.request("GET", f"/pattern/{size}")
        answer = client.answers[sid]
        client.wait(lambda: answer.ended or answer.reset is not None, timeout_s=60)
    finally:
        client.close()
    assert answer.status == 200 and answer.ended and answer.reset is None
    assert answer.header("content-length") == str(size)
    assert client.received[sid] == size
    assert client.sha256(sid) == pattern_sha256(size)


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_request_bodies_are_byte_identical(
    default_proxy: Callable[..., ProxyProcess],
    body_origin: Callable[..., BodyOrigin],
    size: int,
) -> None:
    """POSTed bodies streamed in as the proxy's windows open; the origin hashes what it got."""
    origin = body_origin()
    proxy = default_proxy(to(origin))
    client = HashingClient(proxy.port)
    try:
        sid = client.post_streaming("/hash", size)
        a = client.answers[sid]
        client.wait(lambda: a.ended or a.reset is not None, timeout_s=60)
    finally:
        client.close()
    assert a.status == 200 and a.ended
    assert json.loads(bytes(a.body)) == {"sha256": pattern_sha256(size), "length": size}


# ---- concurrency -------------------------------------------------------------------------------


def test_200_concurrent_streams_to_a_slow_upstream(
    default_proxy: Callable[..., ProxyProcess],
    body_origin: Callable[..., BodyOrigin],
) -> None:
    """200 streams on one connection (the server announces 250), each held by the origin until
    all 200 have reached it, then answered after a delay: all 200 were in flight upstream at
    once, and every stream gets its own body."""
    streams = 200
    origin = body_origin(gate=streams, delay_ms=200)
    proxy = default_proxy(to(origin))
    client = H2Client(proxy.port)
    try:
        client.wait(lambda: 3 in client.remote_settings)  # SETTINGS_MAX_CONCURRENT_STREAMS
        assert client.remote_settings[3] >= streams
        sids = {client.request("GET", f"/gated/{i}"): i for i in range(streams)}
        answers = {sid: client.answers[sid] for sid in sids}
        client.wait(
            lambda: all(a.ended or a.reset is not None for a in answers.values()),
            timeout_s=BodyOrigin.GATE_TIMEOUT_S + TIMEOUT_S,
        )
    finally:
        client.close()
    assert origin.max_in_flight == streams
    for sid, i in sids.items():
        a = answers[sid]
        assert a.status == 200 and a.reset is None, (i, a)
        assert bytes(a.body) == f"slow-{i}".encode()
    assert "Traceback" not in proxy.log


def worker_pids(pid: int) -> list[int]:
    """`pid` and its descendants (the supervisor and its worker processes)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


STALLED_SIZE = 512 * MIB  # far more than the proxy may buffer for one stalled stream
RSS_GROWTH_LIMIT_KIB = 48 * 1024


def test_a_stalled_stream_holds_no_more_than_a_bounded_buffer(
    default_proxy: Callable[..., ProxyProcess],
    body_origin: Callable[..., BodyOrigin],
) -> None:
    """A client stops reading one stream (its window at 0) of a 512 MiB response: the other
    streams of that connection and another connection go on being served (40 MiB through
    them), while the proxy's memory grows by a bounded amount and the origin is held back by
    the proxy's flow control, never having sent more than a bounded part of the stalled body."""
    origin = body_origin()
    proxy = default_proxy(to(origin))
    assert len(worker_pids(proxy.proc.pid)) >= 2  # the supervisor and its worker
    warm = HashingClient(proxy.port)
    try:  # the first request's one-off costs (imports, pools) before the baseline
        warm.answer(warm.request("GET", f"/pattern/{MIB}"))
    finally:
        warm.close()
    before = tree_rss_kib(proxy.proc.pid)
    client = HashingClient(proxy.port, window=64 * KIB)
    other = HashingClient(proxy.port)
    try:
        stuck = client.request("GET", f"/pattern/{STALLED_SIZE}")
        client.stalled.add(stuck)
        client.wait(lambda: client.received.get(stuck, 0) >= 64 * KIB)  # its window is 0 now
        for round_ in range(10):
            for c in (client, other):
                sid = c.request("GET", f"/pattern/{2 * MIB}")
                a = c.answer(sid)
                assert a.status == 200 and a.ended, (round_, a)
                assert c.sha256(sid) == pattern_sha256(2 * MIB)
        grown = tree_rss_kib(proxy.proc.pid) - before
        held_back = STALLED_SIZE - origin.pattern_sent
        stalled = client.answers[stuck]
        assert not stalled.ended and stalled.reset is None
        assert client.received[stuck] == 64 * KIB  # not one byte past the window
    finally:
        client.close()
        other.close()
    assert grown < RSS_GROWTH_LIMIT_KIB, grown
    # The origin wrote all of the 20 small responses (40 MiB) and, of the stalled one, what
    # the socket buffers and the proxy's bounded buffer hold; the rest waits.
    assert held_back > STALLED_SIZE - 40 * MIB - 64 * MIB, origin.pattern_sent
    assert "Traceback" not in proxy.log


# ---- reloads under load ------------------------------------------------------------------------


H2LOAD_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
H2LOAD_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def test_no_failed_request_through_three_reloads_under_h2load(
    run_proxy: Callable[..., ProxyProcess],
    body_origin: Callable[..., BodyOrigin],
    tmp_path: Path,
    cert_pair: tuple[Path, Path],
) -> None:
    """h2load (8 connections, 10 streams each, a bounded 20000 requests) runs while the config
    is reloaded three times through the admin API: every request succeeds with a 2xx (a
    reload sends GOAWAY to h2 connections; h2load reconnects for what was not yet sent)."""
    h2load = shutil.which("h2load")
    if h2load is None:
        pytest.skip("h2load is not installed")
    origin = body_origin()
    port, admin = free_port(), free_port()
    total = 20000

    def caddyfile(tag: int) -> str:
        body = f"\theader X-Config {tag}\n{to(origin)}"
        return h2_caddyfile(
            tmp_path,
            cert_pair,
            port,
            body,
            protocols="",
            extra_global=f"\tadmin 127.0.0.1:{admin}\n",
        )

    proxy = run_proxy(caddyfile(0), port)
    wait_port("127.0.0.1", admin, proc=proxy.proc)
    load = subprocess.Popen(
        [h2load, "-n", str(total), "-c", "8", "-m", "10", f"https://localhost:{port}/pattern/512"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        served_before_reloads = 0
        for tag in (1, 2, 3):
            # Each reload starts once more requests reached the origin (not a sleep: a
            # bounded wait on the origin's counter), so all three land inside the run.
            deadline = time.monotonic() + 60
            while origin.requests < served_before_reloads + total // 10:
                assert load.poll() is None, "h2load ended before the reloads"
                assert time.monotonic() < deadline, "h2load made no progress"
                time.sleep(0.01)
            request = urllib.request.Request(
                f"http://127.0.0.1:{admin}/load",
                data=caddyfile(tag).encode(),
                headers={"Content-Type": "text/caddyfile"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=30) as resp:
                assert resp.status == 200
            served_before_reloads = origin.requests
        assert served_before_reloads < total  # the third reload finished inside the run
        out, _ = load.communicate(timeout=120)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(10)
    requests = H2LOAD_REQUESTS.search(out)
    status = H2LOAD_STATUS.search(out)
    assert requests and status, out
    _total, _started, done, succeeded, failed, errored, timeout = map(int, requests.groups())
    assert (succeeded, failed, errored, timeout) == (total, 0, 0, 0), out
    assert int(status.group(1)) == total, out
    assert done == total
    assert "Traceback" not in proxy.log
