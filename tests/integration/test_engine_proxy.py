"""reverse_proxy through a real `pyproxy run` subprocess against real origins on loopback."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import socket
import subprocess
import threading
import time
from typing import Any

import pytest
from enginekit import (
    free_port,
    payload,
    proxy_config,
    read_response,
    read_sse_event_by_event,
    rp_route,
)

from proxy.native import check_manifest


def _get(
    port: int,
    path: str,
    host: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
    method: str = "GET",
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


@pytest.fixture
def proxied(origin: Any, run_proxy: Any) -> Any:
    port = free_port()
    cfg = proxy_config(port, [rp_route(f"127.0.0.1:{origin.port}")])
    proc = run_proxy(cfg, port)
    return port, origin, proc


@pytest.mark.parametrize("size", [4096, 1024 * 1024])
def test_download_byte_identical(proxied: Any, size: Any) -> None:
    port, _, _ = proxied
    status, headers, body = _get(port, f"/bytes/{size}")
    assert status == 200
    assert body == payload(size)
    assert headers["content-length"] == str(size)


@pytest.mark.parametrize("size", [4096, 1024 * 1024])
def test_upload_byte_identical(proxied: Any, size: Any) -> None:
    port, _, _ = proxied
    data = payload(size)
    status, headers, body = _get(port, "/echo", method="POST", body=data)
    assert status == 200
    assert headers["x-body-sha256"] == hashlib.sha256(data).hexdigest()
    assert body == data


@pytest.mark.parametrize("native", ["1", "0"])
def test_compiled_and_interpreted_builds_answer_alike(
    origin: Any, run_proxy: Any, native: str
) -> None:
    # CI runs the suite on the compiled build (proxy/native.py); the interpreted source is the
    # fallback wherever no build exists, so it must carry the same traffic.
    port = free_port()
    proc = run_proxy(
        proxy_config(port, [rp_route(f"127.0.0.1:{origin.port}")]),
        port,
        env_extra={"PYPROXY_NATIVE": native},
    )
    data = payload(300_000)
    status, headers, body = _get(port, "/echo", method="POST", body=data)
    assert (status, body) == (200, data)
    assert headers["x-body-sha256"] == hashlib.sha256(data).hexdigest()
    status, headers, body = _get(port, "/bytes/4096", method="HEAD")
    assert (status, headers["content-length"], body) == (200, "4096", b"")
    proc.stop()  # the log is complete (flushed) once the process has exited
    if native == "0":
        assert "native build: off: disabled by PYPROXY_NATIVE" in proc.log
    elif check_manifest().active:  # a build matching this tree exists (as in CI)
        assert "native build: on" in proc.log


@pytest.mark.slow
def test_100mib_both_ways(proxied: Any, tmp_path: Any) -> None:
    port, _, _ = proxied
    size = 100 * 1024 * 1024
    src = tmp_path / "big.bin"
    src.write_bytes(payload(1024 * 1024) * 100)
    out = tmp_path / "out.bin"
    subprocess.run(
        [
            "curl",
            "-sS",
            "--fail",
            "-o",
            str(out),
            "--data-binary",
            f"@{src}",
            "-H",
            "Content-Type: application/octet-stream",
            f"http://127.0.0.1:{port}/echo",
        ],
        check=True,
        timeout=120,
    )
    assert out.stat().st_size == size
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()


def test_chunked_upload(proxied: Any) -> None:
    port, _, _ = proxied
    chunks = [payload(1000), payload(70000), b"tail"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request(
        "POST",
        "/echo",
        body=iter(chunks),
        encode_chunked=True,
        headers={"Transfer-Encoding": "chunked"},
    )
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 200
    assert body == b"".join(chunks)
    assert resp.getheader("X-Request-Chunked") == "chunked"


def test_head(proxied: Any) -> None:
    port, _, _ = proxied
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("HEAD", "/bytes/5000")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.read() == b""
    assert resp.getheader("Content-Length") == "5000"
    # The connection stays usable after a HEAD response (no body bytes were expected).
    conn.request("GET", "/bytes/10")
    resp = conn.getresponse()
    assert resp.read() == payload(10)
    conn.close()


def test_expect_100_continue(proxied: Any) -> None:
    port, _, _ = proxied
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        first = s.recv(100)
        assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"hello")
        data = b""
        while not data.endswith(b"hello"):
            chunk = s.recv(65536)
            assert chunk
            data += chunk
        assert b"200 OK" in data


def test_expect_100_continue_curl(proxied: Any, tmp_path: Any) -> None:
    port, _, _ = proxied
    src = tmp_path / "b.bin"
    src.write_bytes(payload(2 * 1024 * 1024))
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-v",
            "-o",
            str(tmp_path / "o.bin"),
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            f"@{src}",
            f"http://127.0.0.1:{port}/echo",
        ],
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert b"HTTP/1.1 100 Continue" in out.stderr
    assert (tmp_path / "o.bin").read_bytes() == src.read_bytes()


def test_pipelining(proxied: Any) -> None:
    port, _, _ = proxied
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        reqs = b"".join(
            f"GET /bytes/{n} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for n in (10, 20, 30)
        )
        s.sendall(reqs)
        f = s.makefile("rb")
        for n in (10, 20, 30):
            status, _, body = read_response(f)
            assert status == 200
            assert body == payload(n)


def test_keepalive_reuses_upstream_connections(proxied: Any) -> None:
    port, origin, _ = proxied
    for _ in range(20):
        status, _, _ = _get(port, "/bytes/10")  # a new client connection each time
        assert status == 200
    # Sequential requests: the pool hands back the same warm connection.
    assert len(origin.peers) == 1


def test_x_forwarded_headers_replaced_for_untrusted_peer(proxied: Any) -> None:
    port, _, _ = proxied
    status, _, body = _get(
        port,
        "/headers",
        headers={
            "Host": "site.test",
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.test",
        },
    )
    assert status == 200
    got = json.loads(body)["headers"]
    names = [k.lower() for k, _ in got]
    assert names.count("x-forwarded-for") == 1
    h = {k.lower(): v for k, v in got}
    assert h["x-forwarded-for"] == "127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == "site.test"
    assert h["host"] == "site.test"  # Host passes through unchanged


def test_x_forwarded_for_appended_for_trusted_peer(origin: Any, run_proxy: Any) -> None:
    port = free_port()
    cfg = proxy_config(
        port,
        [rp_route(f"127.0.0.1:{origin.port}")],
        trusted_proxies={"source": "static", "ranges": ["127.0.0.1/32", "::1"]},
    )
    run_proxy(cfg, port)
    _, _, body = _get(
        port, "/headers", headers={"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https"}
    )
    h = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert h["x-forwarded-for"] == "1.2.3.4, 127.0.0.1"
    assert h["x-forwarded-proto"] == "https"


def test_hop_by_hop_removed_both_ways(proxied: Any) -> None:
    port, _, _ = proxied
    status, headers, body = _get(
        port,
        "/headers",
        headers={
            "Connection": "keep-alive, X-Custom-Hop",
            "X-Custom-Hop": "1",
            "Keep-Alive": "300",
            "Proxy-Authorization": "secret",
            "Te": "gzip",
            "X-End-To-End": "yes",
        },
    )
    assert status == 200
    h = {k.lower(): v for k, v in json.loads(body)["headers"]}
    for gone in ("x-custom-hop", "keep-alive", "proxy-authorization", "te"):
        assert gone not in h
    assert h["x-end-to-end"] == "yes"
    assert "x-hop" not in headers and "keep-alive" not in headers
    assert headers["x-origin"] == "yes"


def test_websocket_echo(proxied: Any) -> None:
    port, _, _ = proxied
    import asyncio

    import websockets

    async def run() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            for i in range(3):
                await ws.send(f"msg{i}")
                assert await ws.recv() == f"echo:msg{i}"
            await ws.send(b"\x00\x01binary")
            assert await ws.recv() == b"\x00\x01binary"

    asyncio.run(run())


def test_sse_arrives_event_by_event(proxied: Any) -> None:
    port, origin, _ = proxied
    # The origin sends the next event only after we got this one through the proxy.
    assert b"text/event-stream" in read_sse_event_by_event(port, origin)


def test_502_when_upstream_down(run_proxy: Any) -> None:
    port = free_port()
    dead = free_port()
    run_proxy(proxy_config(port, [rp_route(f"127.0.0.1:{dead}")]), port)
    status, _, body = _get(port, "/")
    assert status == 502
    assert body == b""


def test_504_on_stalled_upstream(raw_origin: Any, run_proxy: Any) -> None:
    stall = raw_origin(lambda c, n, head: None)
    port = free_port()
    cfg = proxy_config(
        port,
        [
            rp_route(
                f"127.0.0.1:{stall.port}",
                transport={"protocol": "http", "response_header_timeout": "500ms"},
            )
        ],
    )
    run_proxy(cfg, port)
    status, _, _ = _get(port, "/")
    assert status == 504


def test_endless_response_head_is_cut_off_with_502(run_proxy: Any) -> None:
    # An origin that never ends its head: the proxy must stop reading at Go's 10 MiB response
    # head limit and answer 502, not buffer whatever the origin sends.
    limit = 64 * 1024 * 1024  # what the origin would send at most before giving up itself
    sent = 0
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def endless_origin() -> None:
        nonlocal sent
        with contextlib.suppress(OSError), listener.accept()[0] as conn:
            conn.settimeout(30)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            field = b"X-Filler: " + b"a" * 4000 + b"\r\n"
            while sent < limit:
                conn.sendall(field * 16)
                sent += len(field) * 16

    origin = threading.Thread(target=endless_origin, daemon=True)
    origin.start()
    port = free_port()
    run_proxy(proxy_config(port, [rp_route(f"127.0.0.1:{listener.getsockname()[1]}")]), port)
    try:
        status, _, _ = _get(port, "/")
        origin.join(30)
    finally:
        listener.close()
    assert status == 502
    assert sent < limit  # the proxy closed the connection; the origin did not finish


def test_retry_when_upstream_closed_reused_connection(raw_origin: Any, run_proxy: Any) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"

    # Every connection answers its first request and closes on the second one without a
    # byte: what an upstream whose keepalive timer just fired looks like.
    def script(conn: int, n: int, head: bytes) -> bytes | None:
        return ok if n == 0 else b""

    o = raw_origin(script)
    port = free_port()
    run_proxy(proxy_config(port, [rp_route(f"127.0.0.1:{o.port}")]), port)
    for _ in range(5):
        status, _, body = _get(port, "/")
        assert (status, body) == (200, b"ok")
    assert o.connections >= 5


def test_retry_when_upstream_closes_idle_connections_every_second(
    raw_origin: Any, run_proxy: Any
) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    o = raw_origin(lambda c, n, head: ok, idle_close_s=1.0)
    port = free_port()
    run_proxy(proxy_config(port, [rp_route(f"127.0.0.1:{o.port}")]), port)
    # Reuse pooled connections right around the moment the upstream closes them.
    for delay in (0.9, 0.97, 1.0, 1.02, 1.05, 0.99):
        status, _, body = _get(port, "/")
        assert (status, body) == (200, b"ok")
        time.sleep(delay)
    assert _get(port, "/")[0] == 200


def test_http10_client(proxied: Any) -> None:
    port, _, _ = proxied
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /bytes/100 HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == payload(100)


def test_client_abort_logged_499(origin: Any, run_proxy: Any, tmp_path: Any) -> None:
    port = free_port()
    log = tmp_path / "access.log"
    cfg = proxy_config(
        port, [rp_route(f"127.0.0.1:{origin.port}")], logs={"default_logger_name": "log0"}
    )
    cfg["logging"] = {
        "logs": {
            "default": {"exclude": ["http.log.access.log0"]},
            "log0": {
                "writer": {"output": "file", "filename": str(log)},
                "include": ["http.log.access.log0"],
            },
        }
    }
    run_proxy(cfg, port)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /slow?s=3 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
    _get(port, "/bytes/1")
    deadline = time.monotonic() + 5
    entries = []
    while time.monotonic() < deadline:
        entries = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        if len(entries) >= 2:
            break
        time.sleep(0.1)
    statuses = sorted(e["status"] for e in entries)
    assert statuses == [200, 499]
    e = next(e for e in entries if e["status"] == 200)
    assert e["logger"] == "http.log.access.log0"
    assert e["msg"] == "handled request"
    assert e["request"]["uri"] == "/bytes/1"


def test_https_upstream_with_ca_and_insecure(run_proxy: Any, tmp_path: Any) -> None:
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = f"tls ok host={self.headers['Host']}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        up = srv.server_address[1]
        port = free_port()
        routes = [
            {
                "match": [{"path": ["/ca"]}],
                **rp_route(
                    f"127.0.0.1:{up}",
                    transport={
                        "protocol": "http",
                        "tls": {"root_ca_pem_files": [str(ca_path)], "server_name": "localhost"},
                    },
                    headers={
                        "request": {"set": {"Host": ["{http.reverse_proxy.upstream.hostport}"]}}
                    },
                ),
            },
            rp_route(
                f"127.0.0.1:{up}",
                transport={"protocol": "http", "tls": {"insecure_skip_verify": True}},
            ),
        ]
        run_proxy(proxy_config(port, routes), port)
        status, _, body = _get(port, "/ca")
        assert (status, body) == (200, f"tls ok host=127.0.0.1:{up}".encode())
        # An HTTPS upstream gets its own host:port as Host by default (current Caddy).
        status, _, body = _get(port, "/other", headers={"Host": "site.test"})
        assert (status, body) == (200, f"tls ok host=127.0.0.1:{up}".encode())
    finally:
        srv.shutdown()


def test_https_upstream_untrusted_certificate_is_502(run_proxy: Any) -> None:
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import trustme

    cert = trustme.CA().issue_cert("localhost")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = free_port()
        tr = {"protocol": "http", "tls": {}}
        run_proxy(
            proxy_config(port, [rp_route(f"127.0.0.1:{srv.server_address[1]}", transport=tr)]),
            port,
        )
        assert _get(port, "/")[0] == 502
    finally:
        srv.shutdown()


def test_load_balancing_round_robin_and_retry_past_dead_upstream(
    raw_origin: Any, run_proxy: Any
) -> None:
    def answer(name: bytes) -> Any:
        return lambda c, n, head: b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + name

    a, b = raw_origin(answer(b"a")), raw_origin(answer(b"b"))
    dead = free_port()
    port = free_port()
    lb = {
        "selection_policy": {"policy": "round_robin"},
        "try_duration": "2s",
        "try_interval": "10ms",
    }
    run_proxy(
        proxy_config(
            port,
            [
                rp_route(
                    [f"127.0.0.1:{a.port}", f"127.0.0.1:{dead}", f"127.0.0.1:{b.port}"],
                    load_balancing=lb,
                )
            ],
        ),
        port,
    )
    bodies = [_get(port, "/")[2] for _ in range(6)]
    assert set(bodies) == {b"a", b"b"}  # the dead one is skipped by retrying, never a 502


def test_graceful_stop_finishes_in_flight_request(origin: Any, run_proxy: Any) -> None:
    port = free_port()
    cfg = proxy_config(port, [rp_route(f"127.0.0.1:{origin.port}")])
    cfg["apps"]["http"]["grace_period"] = "10s"
    proc = run_proxy(cfg, port)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("GET", "/slow?s=1")
    time.sleep(0.3)
    proc.proc.send_signal(15)
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"late")
    assert proc.proc.wait(10) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_envfile_placeholder(run_proxy: Any, tmp_path: Any) -> None:
    env = tmp_path / "env"
    env.write_text("# comment\nGREETING='hello from env'\n")
    port = free_port()
    routes = [{"handle": [{"handler": "static_response", "body": "{env.GREETING}"}]}]
    run_proxy(proxy_config(port, routes), port, extra=["--workers", "1", "--envfile", str(env)])
    assert _get(port, "/")[2] == b"hello from env"


def test_two_workers_share_the_port(origin: Any, run_proxy: Any) -> None:
    port = free_port()
    run_proxy(
        proxy_config(port, [rp_route(f"127.0.0.1:{origin.port}")]), port, extra=["--workers", "2"]
    )
    for _ in range(10):
        assert _get(port, "/bytes/100")[2] == payload(100)


def test_header_handler_and_header_down_with_proxy(origin: Any, run_proxy: Any) -> None:
    port = free_port()
    routes = [
        {
            "handle": [
                {"handler": "headers", "response": {"set": {"X-Early": ["1"]}}},
                {"handler": "headers", "response": {"deferred": True, "delete": ["X-Origin"]}},
                {
                    "handler": "reverse_proxy",
                    "upstreams": [{"dial": f"127.0.0.1:{origin.port}"}],
                    "headers": {
                        "request": {"set": {"X-Up": ["{http.request.host}"]}},
                        "response": {"add": {"X-Down": ["yes"]}},
                    },
                },
            ]
        }
    ]
    run_proxy(proxy_config(port, routes), port)
    status, headers, body = _get(port, "/headers", headers={"Host": "h.test"})
    assert status == 200
    assert headers["x-early"] == "1" and headers["x-down"] == "yes"
    assert "x-origin" not in headers
    h = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert h["x-up"] == "h.test"


def test_non_deferred_header_kept_on_fast_path(origin: Any, run_proxy: Any) -> None:
    port = free_port()
    routes = [
        {
            "handle": [
                {"handler": "headers", "response": {"set": {"X-Site": ["a"]}}},
                {"handler": "reverse_proxy", "upstreams": [{"dial": f"127.0.0.1:{origin.port}"}]},
            ]
        }
    ]
    run_proxy(proxy_config(port, routes), port)
    status, headers, _ = _get(port, "/bytes/10")
    assert status == 200 and headers["x-site"] == "a"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_download_back_pressure_bounds_proxy_memory(origin: Any, run_proxy: Any) -> None:
    port = free_port()
    proc = run_proxy(proxy_config(port, [rp_route(f"127.0.0.1:{origin.port}")]), port)
    pid = proc.proc.pid
    _get(port, "/bytes/10")  # warm up imports and the pool
    baseline = _rss_kib(pid)
    size = 96 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(f"GET /big/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, _, body_start = buf.partition(b"\r\n\r\n")
        assert f"Content-Length: {size}".encode() in head
        got = len(body_start)
        while got < 1024 * 1024:
            got += len(s.recv(65536))
        # The client stops reading: the proxy must stop reading the upstream too, instead of
        # buffering the ~95 MiB still to come.
        time.sleep(1.5)
        assert _rss_kib(pid) - baseline < 32 * 1024
        while got < size:
            chunk = s.recv(1024 * 1024)
            assert chunk
            got += len(chunk)
    assert got == size


def test_upload_back_pressure_bounds_proxy_memory(raw_origin: Any, run_proxy: Any) -> None:
    # The upstream reads the request head and then nothing: the proxy must stop reading the
    # client instead of buffering the whole upload.
    o = raw_origin(lambda c, n, head: None, read_when_stalled=False)
    port = free_port()
    proc = run_proxy(proxy_config(port, [rp_route(f"127.0.0.1:{o.port}")]), port)
    pid = proc.proc.pid
    baseline = _rss_kib(pid)
    size = 256 * 1024 * 1024
    chunk = b"u" * (256 * 1024)
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
        s.setblocking(False)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and sent < size:
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
        assert sent < size  # the client was pushed back
        assert _rss_kib(pid) - baseline < 48 * 1024


def test_max_conns_per_host_queues_requests(raw_origin: Any, run_proxy: Any) -> None:
    import threading

    def slow_ok(c: int, n: int, head: bytes) -> bytes:
        time.sleep(0.2)  # keep the single connection busy so requests overlap
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    o = raw_origin(slow_ok)
    port = free_port()
    tr = {"protocol": "http", "max_conns_per_host": 1}
    run_proxy(proxy_config(port, [rp_route(f"127.0.0.1:{o.port}", transport=tr)]), port)
    results: list[int] = []

    def client() -> None:
        results.append(_get(port, "/")[0])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == [200] * 4
    assert o.connections == 1


def test_active_health_check_takes_failing_upstream_out(raw_origin: Any, run_proxy: Any) -> None:
    def upstream(name: bytes, healthy: bool) -> Any:
        def script(c: int, n: int, head: bytes) -> bytes:
            if head.startswith(b"GET /health "):
                status = b"200 OK" if healthy else b"503 Service Unavailable"
                return b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n"
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + name

        return script

    good, bad = raw_origin(upstream(b"g", True)), raw_origin(upstream(b"b", False))
    port = free_port()
    hc = {"active": {"uri": "/health", "interval": "200ms", "timeout": "1s"}}
    lb = {"selection_policy": {"policy": "round_robin"}}
    run_proxy(
        proxy_config(
            port,
            [
                rp_route(
                    [f"127.0.0.1:{good.port}", f"127.0.0.1:{bad.port}"],
                    health_checks=hc,
                    load_balancing=lb,
                )
            ],
        ),
        port,
    )
    # Wait (bounded) for the first probe round, then every request goes to the healthy one.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and bad.connections == 0:
        time.sleep(0.05)
    time.sleep(0.5)
    assert {_get(port, "/")[2] for _ in range(6)} == {b"g"}
