"""Fixtures for engine integration tests: real origins on loopback and `pyproxy run` subprocesses.

- `origin`: an aiohttp origin in a background thread (own event loop) with endpoints for
  bodies, echo, headers, SSE (gated event by event), WebSocket echo, and a connection counter.
- `raw_origin`: a tiny asyncio origin whose behaviour per request is scripted (stall, close
  reused connections, …) for failure-path tests.
- `run_proxy(config_dict_or_caddyfile_text)`: starts `pyproxy run` on a config, waits until
  every listen port accepts, and stops it (SIGTERM, by pid) at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from enginekit import free_port, payload

ROOT = Path(__file__).resolve().parents[2]
PYPROXY = [sys.executable, "-m", "proxy"]


class ThreadedOrigin:
    def __init__(self) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.peers: set[tuple[str, int]] = set()
        self.requests: list[dict[str, Any]] = []
        self.sse_gate: asyncio.Semaphore | None = None
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    # -- handlers --------------------------------------------------------------------------

    def _note(self, request: web.Request) -> None:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add((peer[0], peer[1]))
        self.requests.append(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": list(request.headers.items()),
            }
        )

    async def bytes_(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        n = int(request.match_info["n"])
        return web.Response(body=payload(n), content_type="application/octet-stream")

    async def echo(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        body = await request.read()
        resp = web.Response(body=body, content_type="application/octet-stream")
        resp.headers["X-Body-Sha256"] = hashlib.sha256(body).hexdigest()
        resp.headers["X-Request-Chunked"] = str(request.headers.get("Transfer-Encoding", ""))
        return resp

    async def headers(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        resp = web.json_response(
            {"headers": list(request.headers.items()), "path": request.path_qs}
        )
        resp.headers["Connection"] = "keep-alive, X-Hop"
        resp.headers["X-Hop"] = "should-not-pass"
        resp.headers["Keep-Alive"] = "timeout=5"
        resp.headers["X-Origin"] = "yes"
        return resp

    async def sse(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        assert self.sse_gate is not None
        for i in range(3):
            await resp.write(f"data: event {i}\n\n".encode())
            # Wait for the test to confirm it got this event through the proxy.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.sse_gate.acquire(), 10)
        await resp.write_eof()
        return resp

    async def ws(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def big(self, request: web.Request) -> web.StreamResponse:
        """n bytes of b"x", streamed in 1 MiB writes (each waits for the socket to drain)."""
        self._note(request)
        n = int(request.match_info["n"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = n
        await resp.prepare(request)
        chunk = b"x" * (1024 * 1024)
        while n > 0:
            await resp.write(chunk[: min(n, len(chunk))])
            n -= len(chunk)
        return resp

    async def slow(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.Response(text="late")

    def release_sse(self) -> None:
        gate = self.sse_gate
        if gate is not None:
            self.loop.call_soon_threadsafe(gate.release)

    # -- lifecycle -------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.sse_gate = asyncio.Semaphore(0)
        app = web.Application(client_max_size=200 * 1024 * 1024)
        app.router.add_route("*", "/bytes/{n}", self.bytes_)
        app.router.add_route("*", "/echo", self.echo)
        app.router.add_route("*", "/headers", self.headers)
        app.router.add_get("/sse", self.sse)
        app.router.add_get("/ws", self.ws)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/big/{n}", self.big)
        app.router.add_route("*", "/{tail:.*}", self.headers)
        self._runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self.loop.run_until_complete(site.start())
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._runner.cleanup())

    def start(self) -> ThreadedOrigin:
        self.thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def origin() -> Iterator[ThreadedOrigin]:
    o = ThreadedOrigin().start()
    yield o
    o.stop()


class RawOrigin:
    """An origin whose answer to each request is `script(conn_index, request_index, head)`.

    The script returns bytes to send, None to stay silent (stall), or b"" to close.
    """

    def __init__(
        self,
        script: Callable[[int, int, bytes], bytes | None],
        idle_close_s: float = 15.0,
        read_when_stalled: bool = True,
    ) -> None:
        self.idle_close_s = idle_close_s
        self.read_when_stalled = read_when_stalled
        self.port = free_port()
        self.script = script
        self.connections = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self._stop = False
        self._threads: list[threading.Thread] = []
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
            idx = self.connections
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn, idx), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket, idx: int) -> None:
        # Waiting for the next request longer than idle_close_s closes the connection, like an
        # upstream with a short keepalive timeout.
        conn.settimeout(self.idle_close_s)
        buf = b""
        n = 0
        with conn:
            while not self._stop:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                answer = self.script(idx, n, head)
                n += 1
                if answer is None and not self.read_when_stalled:
                    # Stall without reading: the peer's writes back up (flow control test).
                    while not self._stop:
                        time.sleep(0.05)
                    return
                if answer is None:
                    # Stall until the peer goes away or we are stopped.
                    while not self._stop:
                        try:
                            if not conn.recv(65536):
                                return
                        except TimeoutError:
                            continue
                        except OSError:
                            return
                    return
                if answer == b"":
                    return
                conn.sendall(answer)

    def stop(self) -> None:
        self._stop = True
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def raw_origin() -> Iterator[Callable[..., RawOrigin]]:
    made: list[RawOrigin] = []

    def make(script: Callable[[int, int, bytes], bytes | None], **kw: Any) -> RawOrigin:
        o = RawOrigin(script, **kw)
        made.append(o)
        return o

    yield make
    for o in made:
        o.stop()


def wait_port(
    host: str, port: int, timeout_s: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"pyproxy exited early with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open")


class ProxyProcess:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def run_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    procs: list[ProxyProcess] = []

    def start(
        config: dict[str, Any] | str,
        port: int,
        *,
        adapter: str | None = None,
        extra: list[str] | None = None,
        wait_hosts: tuple[str, ...] = ("127.0.0.1",),
        env_extra: dict[str, str] | None = None,
    ) -> ProxyProcess:
        n = len(procs)
        if isinstance(config, dict):
            path = tmp_path / f"config{n}.json"
            path.write_text(json.dumps(config))
            adapter = adapter or "json"
        else:
            path = tmp_path / f"Caddyfile{n}"
            path.write_text(config)
            adapter = adapter or "caddyfile"
        log_path = tmp_path / f"proxy{n}.log"
        logf = open(log_path, "wb")  # noqa: SIM115 (closed with the process)
        env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
        # Never the default admin address (localhost:2019): tests run in parallel, and a config
        # without an `admin` object gets this free port instead; autosaves stay in tmp_path.
        env.setdefault("CADDY_ADMIN", f"127.0.0.1:{_free_port()}")
        env.setdefault("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
        proc = subprocess.Popen(
            [
                *PYPROXY,
                "run",
                "--config",
                str(path),
                "--adapter",
                adapter,
                *(extra if extra is not None else ["--workers", "1"]),
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
        pp = ProxyProcess(proc, port, log_path)
        procs.append(pp)
        for host in wait_hosts:
            wait_port(host, port, proc=proc)
        return pp

    yield start
    for p in procs:
        p.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
