"""The upstream transport's gzip, as Go's http.Transport does it under Caddy.

net/http transport.go: when the outgoing request has no Accept-Encoding and no Range and is
not HEAD (requestedGzip), the transport sends `Accept-Encoding: gzip` and decodes a gzip answer,
removing Content-Encoding and Content-Length, so the client gets the identity body. A client's
own Accept-Encoding is passed through and the answer is not decoded. `transport http {
compression off }` (DisableCompression) turns it off.
"""

from __future__ import annotations

import gzip
import http.client
import socket
import threading
from typing import Any

import pytest
from enginekit import free_port, payload

_BODY = payload(300_000)
# 32 MiB that compress to ~32 KiB: decoding outruns the client, which must push back.
_ZEROS = 32 << 20
_ZEROS_GZ = gzip.compress(bytes(_ZEROS))


class _GzipOrigin:
    """RawOrigin script: records each head; answers gzip (or garbage under /bad)."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, conn_index: int, request_index: int, head: bytes) -> bytes:
        with self.lock:
            self.heads.append(head)
        line = head.split(b"\r\n", 1)[0]
        if b" /bad" in line:
            body = gzip.compress(_BODY)[:-40] + b"not gzip at all" * 4
        elif b" /truncated" in line:
            body = gzip.compress(_BODY)[:-12]
        elif b" /zeros" in line:
            body = _ZEROS_GZ
        elif b" /twice" in line:
            body = gzip.compress(b"first,") + gzip.compress(b"second")
        else:
            body = gzip.compress(_BODY)
        body_out = b"" if line.startswith(b"HEAD ") else body
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body_out)
        )

    def accept_encoding(self) -> list[bytes]:
        with self.lock:
            assert len(self.heads) == 1
            head = self.heads[0]
        return [
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")[1:]
            if line.split(b":", 1)[0].lower() == b"accept-encoding"
        ]


def _raw_request(
    port: int, method: str, target: str, fields: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly the given fields (http.client would add Accept-Encoding)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        sock.sendall(
            f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{fields}"
            "Connection: close\r\n\r\n".encode()
        )
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        sock.close()


def _start(raw_origin: Any, run_proxy: Any, transport: str = "") -> tuple[int, _GzipOrigin]:
    rec = _GzipOrigin()
    origin = raw_origin(rec)
    port = free_port()
    block = f" {{\n\t\ttransport http {{\n\t\t\t{transport}\n\t\t}}\n\t}}" if transport else ""
    caddyfile = (
        "{\n\tadmin off\n\tauto_https off\n}\n"
        f"http://127.0.0.1:{port} {{\n"
        f"\treverse_proxy 127.0.0.1:{origin.port}{block}\n}}\n"
    )
    run_proxy(caddyfile, port)
    return port, rec


def test_asks_for_gzip_and_decodes_for_client_without_accept_encoding(
    raw_origin: Any, run_proxy: Any
) -> None:
    port, rec = _start(raw_origin, run_proxy)
    status, headers, body = _raw_request(port, "GET", "/file")
    assert rec.accept_encoding() == [b"gzip"]
    assert status == 200
    assert "content-encoding" not in headers
    assert headers.get("content-length") in (None, str(len(_BODY)))
    assert body == _BODY


def test_highly_compressed_body_decoded_whole(raw_origin: Any, run_proxy: Any) -> None:
    port, _ = _start(raw_origin, run_proxy)
    status, _, body = _raw_request(port, "GET", "/zeros")
    assert status == 200
    assert len(body) == _ZEROS
    assert body.count(0) == _ZEROS


def test_concatenated_gzip_members_are_all_decoded(raw_origin: Any, run_proxy: Any) -> None:
    port, _ = _start(raw_origin, run_proxy)
    status, _, body = _raw_request(port, "GET", "/twice")
    assert status == 200
    assert body == b"first,second"


def test_client_accept_encoding_passed_through_and_not_decoded(
    raw_origin: Any, run_proxy: Any
) -> None:
    port, rec = _start(raw_origin, run_proxy)
    status, headers, body = _raw_request(port, "GET", "/file", "Accept-Encoding: gzip, br\r\n")
    assert rec.accept_encoding() == [b"gzip, br"]
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == _BODY


def test_compression_off_asks_for_nothing(raw_origin: Any, run_proxy: Any) -> None:
    port, rec = _start(raw_origin, run_proxy, "compression off")
    status, headers, body = _raw_request(port, "GET", "/file")
    assert rec.accept_encoding() == []
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == _BODY


@pytest.mark.parametrize(("method", "fields"), [("HEAD", ""), ("GET", "Range: bytes=0-9\r\n")])
def test_head_and_range_requests_ask_for_nothing(
    raw_origin: Any, run_proxy: Any, method: str, fields: str
) -> None:
    port, rec = _start(raw_origin, run_proxy)
    status, headers, _ = _raw_request(port, method, "/file", fields)
    assert rec.accept_encoding() == []
    assert status == 200
    assert headers["content-encoding"] == "gzip"


@pytest.mark.parametrize("target", ["/bad", "/truncated"])
def test_malformed_gzip_aborts_the_client_response(
    raw_origin: Any, run_proxy: Any, target: str
) -> None:
    # Caddy: the head is written before the body is copied; a copy error then aborts the
    # stream, so the client sees a truncated (unterminated chunked) response.
    port, _ = _start(raw_origin, run_proxy)
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        _raw_request(port, "GET", target)
