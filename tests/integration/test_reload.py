"""Zero-downtime reloads of a running `pyproxy run`, under continuous load.

Four client threads run for the whole test (two open a connection per request, two keep one
connection alive) against a static route and a proxied route while the instance is reloaded 20
times, alternately through `pyproxy reload` and `POST /load`, with configs that also add and
remove a second listener. Every request is checked; one reload is invalid and must be refused
with its error while the old config keeps serving.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, ProxyProcess, ThreadedOrigin, wait_port
from enginekit import free_port

RELOADS = 20
CLIENT_THREADS = 4
# Bounds for the load loop: it stops when the reloads are done, or at these limits.
MAX_REQUESTS_PER_THREAD = 200_000
MAX_LOAD_S = 120.0
CLIENT_TIMEOUT_S = 10.0


def make_config(
    port: int, admin_port: int, origin_port: int, tag: str, extra_port: int | None = None
) -> dict[str, Any]:
    listen = [f"127.0.0.1:{port}"] + ([f"127.0.0.1:{extra_port}"] if extra_port else [])
    return {
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "apps": {
            "http": {
                "metrics": {},
                "servers": {
                    "srv0": {
                        "listen": listen,
                        "automatic_https": {"disable": True},
                        "routes": [
                            {
                                "match": [{"path": ["/proxy/*", "/ws"]}],
                                "handle": [
                                    {
                                        "handler": "reverse_proxy",
                                        "upstreams": [{"dial": f"127.0.0.1:{origin_port}"}],
                                    }
                                ],
                            },
                            {"handle": [{"handler": "static_response", "body": f"config-{tag}"}]},
                        ],
                    }
                },
            }
        },
    }


def post_load(admin_port: int, config: dict[str, Any]) -> tuple[int, str]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/load",
        data=json.dumps(config).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def cli_reload(
    path: Path, admin_port: int, adapter: str = "json"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "reload",
            "--config",
            str(path),
            "--adapter",
            adapter,
            "--address",
            f"127.0.0.1:{admin_port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


class Load:
    """Client threads for the whole test; every response is checked, every failure kept."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.refused = 0
        self.bodies: set[str] = set()
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(i % 2 == 0, i), daemon=True)
            for i in range(CLIENT_THREADS)
        ]

    def _check(self, path: str, status: int, body: bytes) -> str | None:
        if status != 200:
            return f"{path}: status {status}"
        if path.startswith("/proxy/"):
            if json.loads(body).get("path") != path:
                return f"{path}: wrong proxied body {body[:80]!r}"
            return None
        text = body.decode()
        if not text.startswith("config-"):
            return f"{path}: unexpected body {text[:80]!r}"
        with self._lock:
            self.bodies.add(text)
        return None

    def _run(self, keepalive: bool, idx: int) -> None:
        conn: http.client.HTTPConnection | None = None
        deadline = time.monotonic() + MAX_LOAD_S
        for n in range(MAX_REQUESTS_PER_THREAD):
            if self.stop.is_set() or time.monotonic() > deadline:
                break
            path = f"/proxy/t{idx}/{n}" if n % 2 else "/static"
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, CLIENT_TIMEOUT_S)
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                problem = self._check(path, resp.status, body)
                if not keepalive or resp.will_close:
                    conn.close()
                    conn = None
            except ConnectionRefusedError as exc:
                self.refused += 1
                problem = f"{path}: refused: {exc}"
                conn = None
            except (OSError, http.client.HTTPException) as exc:
                problem = f"{path}: {type(exc).__name__}: {exc}"
                if conn is not None:
                    conn.close()
                conn = None
            with self._lock:
                if problem is None:
                    self.ok += 1
                else:
                    kind = "keepalive" if keepalive else "new-connection"
                    self.failures.append(f"client {idx} ({kind}) #{n} {problem}")
        if conn is not None:
            conn.close()

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(CLIENT_TIMEOUT_S * 2)


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "run_args",
    [["--workers", "1"], ["--workers", "2"], ["--workers", "1", "--no-uvloop"]],
    ids=["1-worker", "2-workers", "stock-asyncio"],
)
def test_twenty_reloads_under_load_drop_nothing(
    run_proxy: Callable[..., ProxyProcess],
    origin: ThreadedOrigin,
    tmp_path: Path,
    run_args: list[str],
) -> None:
    port, admin_port, extra_port = free_port(), free_port(), free_port()
    first = make_config(port, admin_port, origin.port, "0")
    proc = run_proxy(first, port, extra=run_args)
    wait_port("127.0.0.1", admin_port, proc=proc.proc)
    assert get(port, "/static") == (200, b"config-0")

    load = Load(port)
    load.start()
    invalid_at = 7
    last_valid = first
    results: list[str] = []
    try:
        time.sleep(0.3)  # load is flowing before the first reload
        for i in range(1, RELOADS + 1):
            tag = str(i)
            config = make_config(
                port, admin_port, origin.port, tag, extra_port if i % 3 == 0 else None
            )
            if i == invalid_at:
                # Valid JSON, refused by the engine: a handler pyproxy does not know.
                config["apps"]["http"]["servers"]["srv0"]["routes"][1]["handle"][0] = {
                    "handler": "frobnicate"
                }
            if i % 2:
                path = tmp_path / f"reload{i}.json"
                path.write_text(json.dumps(config))
                out = cli_reload(path, admin_port)
                ok, err = out.returncode == 0, out.stderr
            else:
                status, body = post_load(admin_port, config)
                ok, err = status == 200, body
            results.append(f"{i}: ok={ok} {err.strip()[:200]}")
            if i == invalid_at:
                assert not ok, results
                assert "frobnicate" in err, err
                # The old config still serves.
                assert get(port, "/static") == (200, f"config-{i - 1}".encode())
                continue
            assert ok, results
            last_valid = config
            assert get(port, "/static") == (200, f"config-{tag}".encode())
            if i % 3 == 0:
                assert get(extra_port, "/static") == (200, f"config-{tag}".encode())
            time.sleep(0.1)
        time.sleep(0.3)  # load continues on the final config
    finally:
        load.finish()

    assert load.failures == [], (load.failures[:20], proc.log[-3000:])
    assert load.refused == 0
    assert load.ok > 200, load.ok
    # Responses from several configs were served during the run.
    assert len(load.bodies) > 3, load.bodies
    # The last valid config is in effect, and is what /config/ reports.
    final_tag = last_valid["apps"]["http"]["servers"]["srv0"]["routes"][1]["handle"][0]["body"]
    assert get(port, "/static") == (200, final_tag.encode())
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/config/", timeout=10) as resp:
        assert json.loads(resp.read()) == last_valid
    # The extra listener of config 18 was closed by config 19/20.
    with pytest.raises(OSError):
        get(extra_port, "/static")
    assert proc.proc.poll() is None


def test_bind_error_keeps_old_config(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    port, admin_port = free_port(), free_port()
    proc = run_proxy(make_config(port, admin_port, origin.port, "old"), port)
    wait_port("127.0.0.1", admin_port, proc=proc.proc)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        status, body = post_load(
            admin_port, make_config(port, admin_port, origin.port, "new", extra_port=taken)
        )
    assert status == 400
    err = json.loads(body)["error"]
    assert f"listening on 127.0.0.1:{taken}" in err
    assert "address already in use" in err.lower()
    assert get(port, "/static") == (200, b"config-old")


def test_unchanged_config_is_a_noop_unless_forced(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin, tmp_path: Path
) -> None:
    port, admin_port = free_port(), free_port()
    config = make_config(port, admin_port, origin.port, "same")
    proc = run_proxy(config, port)
    wait_port("127.0.0.1", admin_port, proc=proc.proc)
    path = tmp_path / "same.json"
    path.write_text(json.dumps(config))
    assert cli_reload(path, admin_port).returncode == 0
    assert "config is unchanged" in proc.log
    assert "config loaded" not in proc.log
    forced = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "reload",
            "--config",
            str(path),
            "--address",
            f"127.0.0.1:{admin_port}",
            "--force",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert forced.returncode == 0, forced.stderr
    deadline = time.monotonic() + 5
    while "config loaded" not in proc.log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "config loaded" in proc.log


def _ws_roundtrip(ws: Any, text: str) -> str:
    ws.send(text)
    reply: str = ws.recv(timeout=5)
    return reply


def test_websocket_survives_reload_that_keeps_its_route(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    port, admin_port = free_port(), free_port()
    proc = run_proxy(make_config(port, admin_port, origin.port, "a"), port)
    wait_port("127.0.0.1", admin_port, proc=proc.proc)
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as ws:
        assert _ws_roundtrip(ws, "before") == "echo:before"
        # Only the static route changes: the reverse_proxy handler is identical.
        assert post_load(admin_port, make_config(port, admin_port, origin.port, "b"))[0] == 200
        assert get(port, "/static") == (200, b"config-b")
        assert _ws_roundtrip(ws, "after") == "echo:after"
        # A second reload; the tunnel moved to config b's runtime and survives again.
        assert post_load(admin_port, make_config(port, admin_port, origin.port, "c"))[0] == 200
        assert _ws_roundtrip(ws, "again") == "echo:again"

    # A reload that changes the reverse_proxy handler closes its upgraded connections (after
    # its stream_close_delay, 0 here), as Caddy does.
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as ws:
        assert _ws_roundtrip(ws, "x") == "echo:x"
        changed = make_config(port, admin_port, origin.port, "d")
        rp = changed["apps"]["http"]["servers"]["srv0"]["routes"][0]["handle"][0]
        rp["headers"] = {"request": {"set": {"X-Changed": ["1"]}}}
        assert post_load(admin_port, changed)[0] == 200
        with pytest.raises(ConnectionClosed):
            for _ in range(50):
                _ws_roundtrip(ws, "y")
                time.sleep(0.1)


def test_https_listener_and_keepalive_connection_survive_reload(
    run_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    import ssl

    https_port, http_port, admin_port = free_port(), free_port(), free_port()

    def caddyfile(body: str) -> str:
        return (
            "{\n"
            f"\thttp_port {http_port}\n\thttps_port {https_port}\n"
            f"\tstorage file_system {tmp_path / 'data'}\n"
            f"\tadmin 127.0.0.1:{admin_port}\n"
            "}\n"
            f'localhost {{\n\ttls internal\n\trespond "{body}"\n}}\n'
        )

    proc = run_proxy(caddyfile("tls-one"), https_port)
    wait_port("127.0.0.1", admin_port, proc=proc.proc)
    root = tmp_path / "data" / "pki" / "authorities" / "local" / "root.crt"
    deadline = time.monotonic() + 20
    while not root.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    ctx = ssl.create_default_context(cafile=str(root))

    def conn() -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("localhost", https_port, timeout=10, context=ctx)

    def fetch(c: http.client.HTTPSConnection) -> bytes:
        c.request("GET", "/", headers={"Host": "localhost"})
        resp = c.getresponse()
        assert resp.status == 200
        return resp.read()

    keep = conn()
    deadline = time.monotonic() + 20
    while True:  # the worker serves once its certificate is in place
        try:
            assert fetch(keep) == b"tls-one"
            break
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            keep = conn()
    path = tmp_path / "Caddyfile-two"
    path.write_text(caddyfile("tls-two"))
    out = cli_reload(path, admin_port, adapter="caddyfile")
    assert out.returncode == 0, out.stderr
    # The TLS connection opened before the reload is now served by the new config...
    assert fetch(keep) == b"tls-two"
    keep.close()
    # ...and new handshakes on the kept listener work.
    fresh = conn()
    assert fetch(fresh) == b"tls-two"
    fresh.close()


def test_websocket_in_a_caddyfile_site_survives_reload_of_another_site(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin, tmp_path: Path
) -> None:
    from websockets.sync.client import connect

    port, admin_port = free_port(), free_port()

    def caddyfile(other: str) -> str:
        return (
            f"{{\n\tadmin 127.0.0.1:{admin_port}\n}}\n"
            f"http://ws.localhost:{port} {{\n\treverse_proxy 127.0.0.1:{origin.port}\n}}\n"
            f'http://other.localhost:{port} {{\n\trespond "{other}"\n}}\n'
        )

    proc = run_proxy(caddyfile("one"), port)
    wait_port("127.0.0.1", admin_port, proc=proc.proc)
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    with connect(f"ws://ws.localhost:{port}/ws", sock=sock, open_timeout=5) as ws:
        assert _ws_roundtrip(ws, "before") == "echo:before"
        path = tmp_path / "Caddyfile-next"
        path.write_text(caddyfile("two"))
        out = cli_reload(path, admin_port, adapter="caddyfile")
        assert out.returncode == 0, out.stderr
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/", headers={"Host": "other.localhost"})
        assert conn.getresponse().read() == b"two"
        conn.close()
        assert _ws_roundtrip(ws, "after") == "echo:after"
