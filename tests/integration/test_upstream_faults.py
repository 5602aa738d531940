"""Upstream responses that break HTTP/1.1 rules, through a running pyproxy.

The origin is a scripted raw asyncio server on loopback: its answer to each request is the bytes
a test gives it. The rules checked (Go's transport and ReverseProxy, which Caddy uses):
- a connection whose response framing was violated (any byte past the end of the response, in
  the same read or while idle) is closed, never reused; the client whose response was complete
  still gets exactly that response;
- more than 5 informational responses, a status below 100, an unusable Transfer-Encoding,
  Content-Length with Transfer-Encoding, differing Content-Lengths: 502, connection closed;
- a 101 becomes a tunnel only for the protocol the request asked for; else 502.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from enginekit import free_port, proxy_config, rp_route

IO_TIMEOUT_S = 10.0
MAX_REQUESTS_PER_CONNECTION = 100
MAX_TUNNEL_READS = 100
FOLLOW = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nfollow"

Script = Callable[[int, int, bytes], bytes]


class OriginConnection:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.heads: list[bytes] = []
        self.closed = asyncio.Event()  # the peer (the proxy) closed it, or the script did


class ScriptedOrigin:
    """An asyncio origin whose answer to request n on connection c is `script(c, n, head)`:
    bytes to send as they are, or b"" to close the connection, `latency_s` after the request
    arrived. After a 101 answer the connection echoes whatever arrives (a tunnel)."""

    def __init__(self, script: Script, latency_s: float = 0.0) -> None:
        self.script = script
        self.latency_s = latency_s
        self.conns: list[OriginConnection] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> ScriptedOrigin:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for c in self.conns:
            c.writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.conns)
        conn = OriginConnection(writer)
        self.conns.append(conn)
        try:
            for n in range(MAX_REQUESTS_PER_CONNECTION):
                head = await reader.readuntil(b"\r\n\r\n")
                conn.heads.append(head)
                length = _content_length(head)
                if length:
                    await reader.readexactly(length)
                answer = self.script(index, n, head)
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)  # a slow upstream, not synchronisation
                if not answer:
                    return
                writer.write(answer)
                await writer.drain()
                if answer.startswith(b"HTTP/1.1 101"):
                    for _ in range(MAX_TUNNEL_READS):
                        data = await reader.read(65536)
                        if not data:
                            return
                        writer.write(data)
                        await writer.drain()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the proxy closed the connection
        finally:
            conn.closed.set()
            writer.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Response:
    """One response as a client must frame it (RFC 9112 §6.3)."""
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if method == "HEAD" or status < 200 or status in (204, 304):
        return Response(status, headers, b"")
    if "content-length" in headers:
        return Response(status, headers, await reader.readexactly(int(headers["content-length"])))
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        assert await reader.readuntil(b"\r\n") == b"\r\n"
        return Response(status, headers, body)
    return Response(status, headers, await reader.read())


async def ask(port: int, method: str = "GET", extra: str = "") -> Response:
    """One request on a new client connection (closed after the response)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{method} / HTTP/1.1\r\nHost: a\r\n{extra}Connection: close\r\n\r\n".encode())
        return await asyncio.wait_for(read_response(reader, method), IO_TIMEOUT_S)
    finally:
        writer.close()


def answer(first: bytes) -> Script:
    """The first request overall gets `first`; every other request a good response."""
    return lambda c, n, head: first if (c, n) == (0, 0) else FOLLOW


def start_proxy(run_proxy: Any, origin: ScriptedOrigin) -> Any:
    port = free_port()
    return run_proxy(proxy_config(port, [rp_route(f"127.0.0.1:{origin.port}")]), port)


async def assert_first_connection_dropped(origin: ScriptedOrigin, proxy: Any) -> None:
    """The next request is answered on a new upstream connection: the first was closed."""
    await asyncio.wait_for(origin.conns[0].closed.wait(), IO_TIMEOUT_S)
    follow = await ask(proxy.port)
    assert (follow.status, follow.body) == (200, b"follow")
    assert len(origin.conns) == 2
    assert len(origin.conns[0].heads) == 1


async def wait_for_log(proxy: Any, text: str) -> None:
    deadline = asyncio.get_running_loop().time() + IO_TIMEOUT_S
    while text not in proxy.log:
        assert asyncio.get_running_loop().time() < deadline, proxy.log[-3000:]
        await asyncio.sleep(0.05)


# -- framing violations: the complete response stands, the connection goes -----------------


@pytest.mark.parametrize(
    ("raw", "status", "body"),
    [
        pytest.param(b"HTTP/1.1 204 No Content\r\n\r\nhello", 204, b"", id="204-with-body"),
        pytest.param(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello",
            304,
            b"",
            id="304-with-body",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhello", 200, b"he", id="body-too-long"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nmore",
            200,
            b"ok",
            id="bytes-after-chunked-body",
        ),
        # A second head whose body would swallow the next request's real response.
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n",
            200,
            b"ok",
            id="phantom-response-after-body",
        ),
    ],
)
async def test_bytes_past_the_response_end_close_the_connection(
    run_proxy: Any, raw: bytes, status: int, body: bytes
) -> None:
    async with ScriptedOrigin(answer(raw)) as origin:
        proxy = start_proxy(run_proxy, origin)
        first = await ask(proxy.port)
        assert (first.status, first.body) == (status, body)
        await assert_first_connection_dropped(origin, proxy)


async def test_head_response_followed_by_a_body_closes_the_connection(run_proxy: Any) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Origin: yes\r\n\r\n"
    async with ScriptedOrigin(answer(head + b"hello")) as origin:
        proxy = start_proxy(run_proxy, origin)
        first = await ask(proxy.port, "HEAD")
        assert first.status == 200
        assert first.headers["content-length"] == "5"
        assert first.headers["x-origin"] == "yes"
        await assert_first_connection_dropped(origin, proxy)


async def test_pipelined_head_then_get_get_exactly_their_own_responses(run_proxy: Any) -> None:
    def script(c: int, n: int, head: bytes) -> bytes:
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        return FOLLOW

    async with ScriptedOrigin(script) as origin:
        proxy = start_proxy(run_proxy, origin)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(
                b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            head = await asyncio.wait_for(read_response(reader, "HEAD"), IO_TIMEOUT_S)
            get = await asyncio.wait_for(read_response(reader), IO_TIMEOUT_S)
            rest = await asyncio.wait_for(reader.read(), IO_TIMEOUT_S)
        finally:
            writer.close()
        assert (head.status, head.headers["content-length"]) == (200, "5")
        assert (get.status, get.body) == (200, b"follow")
        assert rest == b""  # two requests, two responses, nothing else
        assert [len(c.heads) for c in origin.conns] == [1, 1]


async def test_bytes_on_an_idle_connection_close_it(run_proxy: Any) -> None:
    """Guard (this already held): a pooled connection that receives anything is dropped."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with ScriptedOrigin(answer(ok)) as origin:
        proxy = start_proxy(run_proxy, origin)
        first = await ask(proxy.port)
        assert (first.status, first.body) == (200, b"ok")
        origin.conns[0].writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nunwanted")
        await assert_first_connection_dropped(origin, proxy)


# -- responses that are refused: 502, and the connection is not reused ----------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 6
            + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "too many 1xx informational responses",
            id="six-1xx",
        ),
        pytest.param(
            b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok",
            "malformed HTTP status code 099",
            id="status-099",
        ),
        pytest.param(
            b"HTTP/1.1 99 Odd\r\nContent-Length: 2\r\n\r\nok", "malformed response", id="status-99"
        ),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"\r\n",
            "backend tried to switch protocol 'websocket' when '' was requested",
            id="unrequested-101",
        ),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "101 Switching Protocols without Connection: upgrade and Upgrade",
            id="bare-101",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nall of it",
            "unsupported transfer encoding: 'identity'",
            id="te-identity",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            "unsupported transfer encoding: 'gzip, chunked'",
            id="te-gzip-chunked",
        ),
        pytest.param(
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            "chunked transfer coding in an HTTP/1.0 response",
            id="te-chunked-http10",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n",
            "malformed response",
            id="content-length-and-chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
            "malformed response",
            id="differing-content-lengths",
        ),
    ],
)
async def test_unusable_response_is_502_and_connection_closed(
    run_proxy: Any, raw: bytes, reason: str
) -> None:
    async with ScriptedOrigin(answer(raw)) as origin:
        proxy = start_proxy(run_proxy, origin)
        first = await ask(proxy.port)
        assert first.status == 502
        await wait_for_log(proxy, reason)
        await assert_first_connection_dropped(origin, proxy)


async def test_five_1xx_responses_are_accepted(run_proxy: Any) -> None:
    """Go's limit is more than 5: five interim responses still lead to the final one."""
    raw = (
        b"HTTP/1.1 103 Early Hints\r\n\r\n" * 5 + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    async with ScriptedOrigin(answer(raw)) as origin:
        proxy = start_proxy(run_proxy, origin)
        first = await ask(proxy.port)
        assert (first.status, first.body) == (200, b"ok")


async def test_three_digit_status_above_599_is_relayed(run_proxy: Any) -> None:
    """Go's ReadResponse takes any 3 digits and its server writes up to 999."""
    raw = b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok"
    async with ScriptedOrigin(answer(raw)) as origin:
        proxy = start_proxy(run_proxy, origin)
        first = await ask(proxy.port)
        assert (first.status, first.body) == (600, b"ok")


async def test_http10_transfer_encoding_identity_body_ends_with_the_connection(
    run_proxy: Any,
) -> None:
    """Go ignores Transfer-Encoding in HTTP/1.0 responses: the body is read to EOF, complete."""
    raw = b"HTTP/1.0 200 OK\r\nTransfer-Encoding: identity\r\n\r\nall of it"
    async with ScriptedOrigin(answer(raw)) as origin:
        proxy = start_proxy(run_proxy, origin)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            got = await asyncio.wait_for(reader.readuntil(b"all of it\r\n"), IO_TIMEOUT_S)
            assert b"Transfer-Encoding: chunked" in got
            origin.conns[0].writer.close()  # the end of the body
            # The chunked response is terminated: the body was complete.
            assert await asyncio.wait_for(reader.readexactly(5), IO_TIMEOUT_S) == b"0\r\n\r\n"
        finally:
            writer.close()


async def test_requested_upgrade_matching_case_insensitively_becomes_a_tunnel(
    run_proxy: Any,
) -> None:
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: upgrade\r\n\r\n"
    )
    async with ScriptedOrigin(answer(switch)) as origin:
        proxy = start_proxy(run_proxy, origin)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT_S)
            assert head.startswith(b"HTTP/1.1 101 ")
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), IO_TIMEOUT_S) == b"ping"
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_upgrade_to_another_protocol_than_requested_is_502(run_proxy: Any) -> None:
    switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    async with ScriptedOrigin(answer(switch)) as origin:
        proxy = start_proxy(run_proxy, origin)
        first = await ask(proxy.port, extra="Upgrade: websocket\r\nConnection: Upgrade\r\n")
        assert first.status == 502
        await wait_for_log(proxy, "backend tried to switch protocol 'h2c' when 'websocket'")
        await assert_first_connection_dropped(origin, proxy)


async def test_bad_response_counts_for_passive_health_and_retry_keeps_its_own_timer(
    run_proxy: Any,
) -> None:
    """A malformed response is a failed round trip (Caddy counts it for passive health), and the
    retry on the next upstream runs under its own response_header_timeout: the first attempt's
    timer must not cut it short (here it would fire 0.5 s before the retry's answer)."""
    bad = b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok"
    async with (
        ScriptedOrigin(lambda c, n, head: bad) as broken,
        ScriptedOrigin(lambda c, n, head: FOLLOW, latency_s=1.0) as slow,
    ):
        port = free_port()
        route = rp_route(
            [f"127.0.0.1:{broken.port}", f"127.0.0.1:{slow.port}"],
            load_balancing={
                "selection_policy": {"policy": "first"},
                "retries": 1,
                "try_interval": "1.5s",
            },
            health_checks={"passive": {"fail_duration": "30s"}},
            transport={"protocol": "http", "response_header_timeout": "2s"},
        )
        proxy = run_proxy(proxy_config(port, [route]), port)
        got = await ask(proxy.port)
        assert (got.status, got.body) == (200, b"follow")
        assert len(broken.conns) == 1  # the broken upstream was marked down after one answer


async def test_dial_failure_marks_the_first_upstream_down_in_every_worker(
    run_proxy: Any,
) -> None:
    """lb_policy first + fail_duration, no lb_try_duration: a refused dial is a 502 (no retry)
    and is counted (Caddy's countFailure), so with max_fails 1 every *later* request goes to the
    next available upstream. With two workers the failure must be seen by both (Caddy is one
    process): each request below is a new connection, which SO_REUSEPORT spreads over them."""
    refused_port = free_port()  # nothing listens there: the dial is refused
    async with ScriptedOrigin(lambda c, n, head: FOLLOW) as second:
        port = free_port()
        caddyfile = (
            f":{port} {{\n\treverse_proxy 127.0.0.1:{refused_port} 127.0.0.1:{second.port} {{\n"
            "\t\tlb_policy first\n\t\tfail_duration 30s\n\t}\n}\n"
        )
        proxy = run_proxy(caddyfile, port, extra=["--workers", "2"])
        first = await ask(proxy.port)
        assert first.status == 502
        assert second.conns == []
        later = [await ask(proxy.port) for _ in range(SPREAD_REQUESTS)]
        assert [(r.status, r.body) for r in later] == [(200, b"follow")] * SPREAD_REQUESTS
        assert sum(len(c.heads) for c in second.conns) == SPREAD_REQUESTS


SPREAD_REQUESTS = 12
