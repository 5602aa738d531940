"""reverse_proxy's own `rewrite` (Caddyfile `method` / `rewrite` subdirectives).

Current Caddy (reverseproxy.go prepareRequest) applies h.Rewrite to the clone of the request
that goes upstream, with placeholders expanded (`{uri}` includes the query; a uri with `?`
replaces the query, rewrite.go Rewrite.Rewrite). The client's request, as later handlers and
`header_down` placeholders see it, is not changed.
"""

from __future__ import annotations

import http.client
import threading
from typing import Any

import pytest
from enginekit import free_port


class _Recorder:
    """Script for RawOrigin: answers 200 and records each request line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, conn_index: int, request_index: int, head: bytes) -> bytes:
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        with self.lock:
            self.lines.append(line)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _request(port: int, method: str, target: str) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, target)
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("directives", "method", "target", "upstream_line"),
    [
        ("method GET\n\t\trewrite /verify", "POST", "/login?next=/a", "GET /verify?next=/a"),
        ("method GET\n\t\trewrite /verify", "GET", "/x", "GET /verify"),
        ("rewrite /v2{uri}", "GET", "/items?id=7", "GET /v2/items?id=7"),
        ("rewrite /v2{uri}", "PUT", "/items", "PUT /v2/items"),
        ("method POST", "GET", "/p?q=1", "POST /p?q=1"),
        ("rewrite /fixed?k=v", "GET", "/old?q=1", "GET /fixed?k=v"),
    ],
)
def test_upstream_gets_rewritten_request(
    raw_origin: Any,
    run_proxy: Any,
    directives: str,
    method: str,
    target: str,
    upstream_line: str,
) -> None:
    rec = _Recorder()
    origin = raw_origin(rec)
    port = free_port()
    caddyfile = (
        "{\n\tadmin off\n\tauto_https off\n}\n"
        f"http://127.0.0.1:{port} {{\n"
        f"\treverse_proxy 127.0.0.1:{origin.port} {{\n"
        f"\t\t{directives}\n"
        "\t\theader_down X-Client {method}|{uri}\n"
        "\t}\n}\n"
    )
    run_proxy(caddyfile, port)
    status, headers = _request(port, method, target)
    assert status == 200
    assert rec.lines == [f"{upstream_line} HTTP/1.1"]
    # The client's request is unchanged for placeholders evaluated after proxying.
    assert headers["x-client"] == f"{method}|{target}"


def test_rewrite_to_get_sends_no_body(raw_origin: Any, run_proxy: Any) -> None:
    # prepareRequest: a rewrite to GET or HEAD drops the body (and its framing).
    heads: list[bytes] = []

    def script(conn_index: int, request_index: int, head: bytes) -> bytes:
        heads.append(head)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    origin = raw_origin(script)
    port = free_port()
    caddyfile = (
        "{\n\tadmin off\n\tauto_https off\n}\n"
        f"http://127.0.0.1:{port} {{\n"
        f"\treverse_proxy 127.0.0.1:{origin.port} {{\n"
        "\t\tmethod GET\n\t\trewrite /verify\n"
        "\t}\n}\n"
    )
    run_proxy(caddyfile, port)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", "/login", body=b"user=a")
        resp = conn.getresponse()
        assert resp.read() == b"ok"
    finally:
        conn.close()
    assert len(heads) == 1
    fields = [line.split(b":", 1)[0].lower() for line in heads[0].split(b"\r\n")[1:]]
    assert heads[0].startswith(b"GET /verify HTTP/1.1\r\n")
    assert b"content-length" not in fields
    assert b"transfer-encoding" not in fields
