"""Hostile HTTP/1.1 input through a running pyproxy, against an independent origin (h11).

Regression tests for the review's findings on the request side (smuggling through Upgrade + a
body, a request executed while the client got only a 400, a write timeout that did not free a
client) and a differential fuzz run with a fixed budget: generated request streams, each
checked by hostilekit.check_one. The long run is bench/fuzz_requests.py.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from enginekit import free_port, proxy_config, rp_route
from hostilekit import RecordingOrigin, check_one, expected_requests, read_responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@pytest.fixture
def recording_origin() -> Iterator[RecordingOrigin]:
    o = RecordingOrigin()
    yield o
    o.stop()


@pytest.fixture
def guarded_proxy(run_proxy: Any, recording_origin: RecordingOrigin) -> int:
    """`respond /admin 403` in front of the origin, like a site that blocks a path."""
    port = free_port()
    routes = [
        {
            "match": [{"path": ["/admin", "/admin/*"]}],
            "handle": [{"handler": "static_response", "status_code": 403}],
        },
        rp_route(f"127.0.0.1:{recording_origin.port}"),
    ]
    run_proxy(proxy_config(port, routes), port)
    return port


def send(port: int, data: bytes, methods: list[str], want: int) -> list[Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        responses, hung = read_responses(s, methods, want, 10)
    assert not hung, responses
    return responses


SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"


def test_upgrade_with_body_cannot_smuggle_a_request(
    guarded_proxy: int, recording_origin: RecordingOrigin
) -> None:
    # Critical 1 and 2: the body of an Upgrade request used to stay unsent while its
    # Content-Length went upstream; the pooled connection then read the next client's
    # request as that body, and that request's body as a request (here GET /admin, which
    # the site blocks). The origin also hung waiting for the body.
    early = (
        b"POST /early HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(SMUGGLED), SMUGGLED)
    )
    first = send(guarded_proxy, early, ["POST"], 1)
    assert first[0].status == 200 and "x-seen" in first[0].headers
    # Another client, on the same pooled upstream connection.
    nxt = b"POST /next HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%b" % (
        len(SMUGGLED),
        SMUGGLED,
    )
    second = send(guarded_proxy, nxt, ["POST"], 1)
    assert second[0].status == 200
    seen = [(s.method, s.target, s.body) for s in recording_origin.seen]
    assert seen == [("POST", "/early", SMUGGLED), ("POST", "/next", SMUGGLED)]


def test_request_before_garbage_is_answered_then_refused(
    guarded_proxy: int, recording_origin: RecordingOrigin
) -> None:
    # Major 4: the origin executed /transfer while the client got only a 400 and a close.
    data = b"POST /transfer HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGARBAGE\r\n\r\n"
    responses = send(guarded_proxy, data, ["POST"], 2)
    assert [r.status for r in responses] == [200, 400]
    assert responses[0].headers["x-seen"] == "0"
    assert [(s.method, s.target, s.body) for s in recording_origin.seen] == [
        ("POST", "/transfer", b"abc")
    ]


def test_broken_chunked_body_never_completes_at_the_origin(
    guarded_proxy: int, recording_origin: RecordingOrigin
) -> None:
    data = (
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\nzz\r\n" + SMUGGLED
    )
    responses = send(guarded_proxy, data, ["POST"], 1)
    assert responses[0].status == 400
    # The origin got a chunked body without its last chunk (it records only complete
    # requests): nothing was executed.
    assert recording_origin.count() == 0


def test_connection_naming_host_keeps_host(
    guarded_proxy: int, recording_origin: RecordingOrigin
) -> None:
    # Minor: `Connection: Host` made pyproxy strip Host and forward a request without one.
    responses = send(
        guarded_proxy, b"GET /x HTTP/1.1\r\nHost: site.test\r\nConnection: Host\r\n\r\n", ["GET"], 1
    )
    assert responses[0].status == 200
    assert ("host", "site.test") in recording_origin.seen[0].headers


class EndlessOrigin:
    """Answers one request with a 1 GiB body, written until the proxy drops the connection;
    `dropped` is set then."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = int(self.sock.getsockname()[1])
        self.dropped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            while b"\r\n\r\n" not in conn.recv(65536):
                pass
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 30))
            chunk = b"x" * 65536
            try:
                for _ in range((1 << 30) // len(chunk)):
                    conn.sendall(chunk)
            except OSError:
                self.dropped.set()


def test_write_timeout_frees_a_client_that_stopped_reading(run_proxy: Any) -> None:
    # Major 6: with `write_timeout`, a client that stops reading kept its socket and its
    # upstream connection open until it went away; Caddy frees both when the timeout passes.
    upstream = EndlessOrigin()
    port = free_port()
    run_proxy(
        proxy_config(port, [rp_route(f"127.0.0.1:{upstream.port}")], write_timeout="1s"), port
    )
    client = socket.create_connection(("127.0.0.1", port))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    try:
        # The client never reads. The proxy's buffers fill, the write timeout passes, and
        # the proxy must drop both connections (the origin's writes then fail).
        assert upstream.dropped.wait(20), "upstream connection still open after write_timeout"
    finally:
        client.close()


# -- differential fuzz ----------------------------------------------------------------------

METHODS = st.sampled_from(["GET", "POST", "PUT", "HEAD", "FOO", "DELETE", "OPTIONS"])
PATHS = st.sampled_from(
    ["/", "/a", "/a/b?x=1", "/a%20b", "/a/../b", "//x", "/a;b", "/x#f", "/%2e%2e/", "*"]
)
FIELDS = st.sampled_from(
    [
        b"Accept: */*",
        b"X-A: b",
        b"Connection: close",
        b"Connection: keep-alive",
        b"Connection: Upgrade",
        b"Upgrade: foo",
        b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: gzip, chunked",
        b"Transfer-Encoding: identity",
        b"Content-Length: 0",
        b"Content-Length: 3",
        b"Content-Length: 5",
        b"Content-Length: 3, 3",
        b"Content-Length: +3",
        b"Expect: 100-continue",
        b"Host: b",
        b"Host: a b",
        b"X-Forwarded-For: 1.2.3.4",
        b"Te: trailers",
        b"Connection: Host",
        b" X-Fold: y",
        b"X-Bad : y",
        b"X-Ctl: a\x01b",
        b"X-Lf: a\nb",
    ]
)
BODIES = st.sampled_from(
    [b"", b"abc", b"hello", b"3\r\nabc\r\n0\r\n\r\n", b"5\r\nhelloX\r\n0\r\n\r\n", b"zz\r\n"]
)
VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"RTSP/1.0"])


@st.composite
def request_bytes(draw: Any) -> bytes:
    method: bytes = draw(METHODS).encode()
    path: bytes = draw(PATHS).encode()
    version: bytes = draw(VERSIONS)
    fields = [b"Host: a"] if draw(st.booleans()) or version == b"HTTP/1.1" else []
    fields += draw(st.lists(FIELDS, max_size=4))
    body: bytes = draw(BODIES)
    head = b"%s %s %s\r\n" % (method, path, version) + b"".join(f + b"\r\n" for f in fields)
    return head + b"\r\n" + body


@st.composite
def connection_bytes(draw: Any) -> bytes:
    data = b"".join(draw(st.lists(request_bytes(), min_size=1, max_size=3)))
    if draw(st.integers(0, 4)) == 0 and data:
        # A random byte flipped, inserted or deleted somewhere.
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.integers(0, 2))
        b = bytes([draw(st.integers(0, 255))])
        data = (
            data[:i] + b + data[i + 1 :]
            if op == 0
            else (data[:i] + b + data[i:] if op == 1 else data[:i] + data[i + 1 :])
        )
    return data


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: Any) -> Iterator[tuple[int, RecordingOrigin]]:
    """One proxy and one origin for the whole fuzz run (started here, not per example)."""
    import json
    import os
    import subprocess

    from conftest import PYPROXY, ROOT, _free_port, wait_port

    origin = RecordingOrigin()
    port = free_port()
    tmp = tmp_path_factory.mktemp("fuzz")
    cfg = proxy_config(port, [rp_route(f"127.0.0.1:{origin.port}")])
    path = tmp / "config.json"
    path.write_text(json.dumps(cfg))
    env = dict(os.environ, PYTHONPATH=str(ROOT), CADDY_ADMIN=f"127.0.0.1:{_free_port()}")
    env["XDG_CONFIG_HOME"] = str(tmp / "xdg")
    log = open(tmp / "proxy.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [*PYPROXY, "run", "--config", str(path), "--workers", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp,
        env=env,
    )
    try:
        wait_port("127.0.0.1", port, proc=proc)
        yield port, origin
        assert proc.poll() is None, "pyproxy died during the fuzz run"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        origin.stop()
        text = (tmp / "proxy.log").read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=connection_bytes())
def test_differential_fuzz(fuzz_target: tuple[int, RecordingOrigin], data: bytes) -> None:
    port, origin = fuzz_target
    if expected_requests(data).incomplete:
        # The stream ends inside a head or a body: pyproxy rightly waits for the rest. Close it
        # with enough bytes to finish any head, then judge the prefix only.
        data += b"\r\n\r\n"
    verdict = check_one(port, origin, data)
    assert verdict.ok, (verdict.reason, data)
