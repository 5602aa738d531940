"""Active health checks against real tiny HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme

from config.model import load_active_health
from proxy.upstream.health import ActiveHealthChecker, http_probe
from proxy.upstream.upstream import Upstream

S = 1_000_000_000


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Origin:
    """A tiny HTTP/1.1 server whose answer the test changes between probes."""

    status: int = 200
    body: bytes = b"OK"
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    chunked: bool = False
    hang: bool = False
    respond: Callable[[Seen], tuple[int, list[tuple[str, str]], bytes]] | None = None
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if line:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            seen = Seen(method, target, headers, body)
            self.seen.append(seen)
            if self.hang:
                # Never answer; return once the client gives up and closes, so the server
                # can shut down (wait_closed waits for open connections on 3.12+).
                await reader.read()
                return
            status, hdrs, payload = (
                self.respond(seen)
                if self.respond
                else (self.status, list(self.extra_headers), self.body)
            )
            out = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in hdrs]
            if self.chunked:
                out.append("Transfer-Encoding: chunked")
                half = len(payload) // 2
                data = b"".join(
                    b"%x\r\n%s\r\n" % (len(p), p) for p in (payload[:half], payload[half:]) if p
                )
                data += b"0\r\n\r\n"
            else:
                out.append(f"Content-Length: {len(payload)}")
                data = payload
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + data)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    o = Origin()
    o.server = await asyncio.start_server(o.handle, "127.0.0.1", 0)
    o.port = o.server.sockets[0].getsockname()[1]
    yield o
    o.server.close()
    await o.server.wait_closed()


def checker(cfg: dict[str, Any], *ups: Upstream, **kw: Any) -> ActiveHealthChecker:
    """The checker of a handler whose `health_checks.active` JSON is `cfg` (through the model)."""
    active = load_active_health(cfg, "health_checks.active")
    assert active is not None
    return ActiveHealthChecker(active, list(ups), **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_status_flips_health_and_logs(
    origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pyproxy.health")
    up = Upstream(f"127.0.0.1:{origin.port}")
    hc = checker({"uri": "/health?deep=1"}, up)
    [result] = await hc.check_all()
    assert result.passed and up.active_healthy
    assert origin.seen[0].method == "GET" and origin.seen[0].target == "/health?deep=1"
    assert origin.seen[0].headers["host"] == f"127.0.0.1:{origin.port}"

    origin.status = 500
    [result] = await hc.check_all()
    assert not result.passed and result.changed_to is False and not up.available(0)
    assert f"127.0.0.1:{origin.port}: upstream is unhealthy: status 500" in caplog.messages

    origin.status = 204
    [result] = await hc.check_all()
    assert result.changed_to is True and up.available(0)
    assert f"127.0.0.1:{origin.port}: upstream is healthy" in caplog.messages


async def test_fail_and_pass_thresholds(origin: Origin) -> None:
    up = Upstream(f"127.0.0.1:{origin.port}")
    hc = checker({"uri": "/", "fails": 2, "passes": 2}, up)
    origin.status = 503
    await hc.check_all()
    assert up.active_healthy
    await hc.check_all()
    assert not up.active_healthy
    origin.status = 200
    await hc.check_all()
    assert not up.active_healthy
    await hc.check_all()
    assert up.active_healthy


async def test_expect_status_and_body(origin: Origin) -> None:
    up = Upstream(f"127.0.0.1:{origin.port}")
    hc = checker({"uri": "/", "expect_status": 418, "expect_body": "^ready:\\s+\\d+$"}, up)
    origin.status, origin.body = 418, b"ready: 42"
    assert (await hc.check_all())[0].passed
    origin.body = b"ready: soon"
    result = (await hc.check_all())[0]
    assert not result.passed and result.reason == "response body failed expectations"
    origin.status, origin.body = 200, b"ready: 42"
    assert (await hc.check_all())[0].reason == "status 200"
    # A chunked body is decoded before matching.
    origin.status, origin.chunked = 418, True
    assert (await hc.check_all())[0].passed


async def test_status_class_expectation(origin: Origin) -> None:
    up = Upstream(f"127.0.0.1:{origin.port}")
    hc = checker({"uri": "/", "expect_status": 3}, up)
    origin.status = 301
    assert (await hc.check_all())[0].passed
    origin.status = 200
    assert not (await hc.check_all())[0].passed


async def test_method_body_headers_and_placeholders(origin: Origin) -> None:
    dial = f"127.0.0.1:{origin.port}"
    up = Upstream(dial)
    hc = checker(
        {
            "uri": "/probe",
            "method": "POST",
            "body": "ping",
            "headers": {
                "Host": ["health.internal"],
                "X-Target": ["{http.reverse_proxy.active.target_upstream}"],
                "X-Multi": ["a", "b"],
                "X-Keep": ["{unknown.placeholder}"],
            },
        },
        up,
    )
    assert (await hc.check_all())[0].passed
    seen = origin.seen[0]
    assert (seen.method, seen.target, seen.body) == ("POST", "/probe", b"ping")
    assert seen.headers["host"] == "health.internal"
    assert seen.headers["x-target"] == dial
    assert seen.headers["x-keep"] == "{unknown.placeholder}"
    assert seen.headers["content-length"] == "4"


async def test_port_override(origin: Origin) -> None:
    # The upstream's own port is closed; the health port is the origin.
    up = Upstream(f"127.0.0.1:{free_port()}")
    hc = checker({"port": origin.port}, up)
    [result] = await hc.check_all()
    assert result.passed, result.reason
    assert origin.seen[0].target == "/" and origin.seen[0].headers["host"].endswith(
        f":{origin.port}"
    )


async def test_alternative_upstream(origin: Origin) -> None:
    up = Upstream(f"127.0.0.1:{free_port()}")
    hc = checker({"uri": "/x", "upstream": f"127.0.0.1:{origin.port}", "port": 1}, up)
    assert (await hc.check_all())[0].passed


async def test_connection_refused_marks_unhealthy() -> None:
    up = Upstream(f"127.0.0.1:{free_port()}")
    hc = checker({"uri": "/"}, up)
    [result] = await hc.check_all()
    assert not result.passed and result.changed_to is False and result.reason


async def test_timeout_marks_unhealthy(origin: Origin) -> None:
    origin.hang = True
    up = Upstream(f"127.0.0.1:{origin.port}")
    hc = checker({"uri": "/", "timeout": 0.2 * S}, up)
    loop = asyncio.get_running_loop()
    start = loop.time()
    [result] = await hc.check_all()
    assert loop.time() - start < 2.0
    assert not result.passed and result.reason == "timeout after 0.2s"


async def test_redirects_not_followed_by_default_then_followed(origin: Origin) -> None:
    def respond(seen: Seen) -> tuple[int, list[tuple[str, str]], bytes]:
        if seen.target == "/old":
            return 302, [("Location", "/new?x=1")], b""
        return 200, [], b"OK"

    origin.respond = respond
    up = Upstream(f"127.0.0.1:{origin.port}")
    assert (await checker({"uri": "/old"}, up).check_all())[0].reason == "status 302"
    origin.seen.clear()
    hc = checker({"uri": "/old", "method": "POST", "body": "b", "follow_redirects": True}, up)
    assert (await hc.check_all())[0].passed
    assert [(s.method, s.target, s.body) for s in origin.seen] == [
        ("POST", "/old", b"b"),
        ("GET", "/new?x=1", b""),
    ]


async def test_redirect_loop_is_bounded(origin: Origin) -> None:
    origin.status, origin.extra_headers = 307, [("Location", "/again")]
    up = Upstream(f"127.0.0.1:{origin.port}")
    hc = checker({"uri": "/", "follow_redirects": True}, up)
    result = (await hc.check_all())[0]
    assert not result.passed and "redirects" in result.reason
    assert len(origin.seen) == 11


async def test_malformed_response_fails_check() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        up = Upstream(f"127.0.0.1:{port}")
        result = (await checker({"uri": "/"}, up).check_all())[0]
        assert not result.passed and "malformed status line" in result.reason
    finally:
        server.close()
        await server.wait_closed()


async def test_start_and_stop_probe_on_interval(origin: Origin) -> None:
    up = Upstream(f"127.0.0.1:{origin.port}")
    origin.status = 500
    hc = checker({"uri": "/", "interval": 0.05 * S, "timeout": 1 * S}, up)
    hc.start()
    hc.start()  # idempotent
    try:
        for _ in range(100):
            if not up.active_healthy:
                break
            await asyncio.sleep(0.01)
        assert not up.active_healthy
        origin.status = 200
        for _ in range(100):
            if up.active_healthy:
                break
            await asyncio.sleep(0.01)
        assert up.active_healthy
        assert hc.running
    finally:
        await hc.stop()
    assert not hc.running
    count = len(origin.seen)
    await asyncio.sleep(0.15)
    assert len(origin.seen) == count  # no probes after stop
    await hc.stop()  # stopping twice is fine


async def test_stop_cancels_in_flight_probe(origin: Origin) -> None:
    origin.hang = True
    up = Upstream(f"127.0.0.1:{origin.port}")
    hc = checker({"uri": "/", "timeout": 30 * S}, up)
    hc.start()
    for _ in range(100):
        if origin.seen:
            break
        await asyncio.sleep(0.01)
    assert origin.seen
    await asyncio.wait_for(hc.stop(), 2.0)
    assert not hc.running and up.active_healthy


async def test_probes_all_upstreams_concurrently(origin: Origin) -> None:
    other = Origin(status=502)
    other.server = await asyncio.start_server(other.handle, "127.0.0.1", 0)
    other.port = other.server.sockets[0].getsockname()[1]
    try:
        a, b = Upstream(f"127.0.0.1:{origin.port}"), Upstream(f"127.0.0.1:{other.port}")
        results = await checker({"uri": "/"}, a, b).check_all()
        assert [r.passed for r in results] == [True, False]
        assert a.active_healthy and not b.active_healthy
    finally:
        other.server.close()
        await other.server.wait_closed()


async def test_ipv6_loopback() -> None:
    o = Origin()
    try:
        o.server = await asyncio.start_server(o.handle, "::1", 0)
    except OSError:
        pytest.skip("::1 cannot be bound here")
    o.port = o.server.sockets[0].getsockname()[1]
    try:
        up = Upstream(f"[::1]:{o.port}")
        assert (await checker({"uri": "/"}, up).check_all())[0].passed
        assert o.seen[0].headers["host"] == f"[::1]:{o.port}"
    finally:
        o.server.close()
        await o.server.wait_closed()


async def test_tls_upstream(origin: Origin) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    tls_origin = Origin(body=b"secure")
    tls_origin.server = await asyncio.start_server(
        tls_origin.handle, "127.0.0.1", 0, ssl=server_ctx
    )
    tls_origin.port = tls_origin.server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    try:
        up = Upstream(f"127.0.0.1:{tls_origin.port}")
        hc = checker({"uri": "/", "expect_body": "secure"}, up, ssl_context=client_ctx)
        assert (await hc.check_all())[0].passed
        # SNI name override still verifies against the certificate.
        hc2 = checker({"uri": "/"}, up, ssl_context=client_ctx, server_name="localhost")
        assert (await hc2.check_all())[0].passed
        # An untrusted certificate fails the check.
        hc3 = checker({"uri": "/"}, up, ssl_context=ssl.create_default_context())
        result = (await hc3.check_all())[0]
        assert not result.passed and "CERTIFICATE_VERIFY_FAILED" in result.reason
        # except_ports probes the plain-HTTP origin without TLS.
        plain = Upstream(f"127.0.0.1:{origin.port}")
        hc4 = checker({"uri": "/"}, plain, ssl_context=client_ctx, tls_except_ports=[origin.port])
        assert (await hc4.check_all())[0].passed
    finally:
        tls_origin.server.close()
        await tls_origin.server.wait_closed()


async def test_http_probe_body_cap_and_head(origin: Origin) -> None:
    origin.body = b"x" * 5000
    resp = await http_probe(
        host="127.0.0.1",
        port=origin.port,
        host_header="h",
        read_body=True,
        max_body=100,
    )
    assert resp.status == 200 and resp.body == b"x" * 100
    origin.chunked = True
    resp = await http_probe(
        host="127.0.0.1", port=origin.port, host_header="h", read_body=True, max_body=3000
    )
    assert resp.body == b"x" * 3000
    resp = await http_probe(
        host="127.0.0.1", port=origin.port, method="HEAD", host_header="h", read_body=True
    )
    assert resp.body == b"" and resp.header("transfer-encoding") == "chunked"


async def test_unix_socket_upstream(tmp_path: Any) -> None:
    o = Origin()
    path = str(tmp_path / "app.sock")
    o.server = await asyncio.start_unix_server(o.handle, path)
    try:
        up = Upstream(f"unix/{path}")
        assert (await checker({"uri": "/u"}, up).check_all())[0].passed
        assert o.seen[0].headers["host"] == "localhost"
    finally:
        o.server.close()
        await o.server.wait_closed()


async def test_dynamic_dial_is_not_probed_nor_marked_down() -> None:
    up = Upstream("{http.request.host}:80")
    [result] = await checker({"uri": "/"}, up).check_all()
    assert not result.passed and result.changed_to is None and up.active_healthy
