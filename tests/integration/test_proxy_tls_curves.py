"""`transport http { tls_curves ... }` restricts the upstream TLS key-exchange groups.

Caddy's TLSConfig.MakeTLSClientConfig sets tls.Config.CurvePreferences from `curves`; here it is
SSL_CTX_set1_groups_list on the upstream context (proxy.tls.set_groups). The loopback origin
accepts only secp384r1, so a proxy limited to x25519 cannot complete the handshake (502) and
one limited to secp384r1 can.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from enginekit import free_port

from proxy.tls import groups_problem, set_groups

trustme = pytest.importorskip("trustme")


class _Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def p384_origin() -> Iterator[int]:
    if groups_problem(("secp384r1",)) is not None:
        pytest.skip("this libssl cannot restrict groups")
    cert = trustme.CA().issue_cert("127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    set_groups(ctx, ["secp384r1"])
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.mark.parametrize(("curves", "status"), [("x25519", 502), ("secp384r1", 200)])
def test_tls_curves_apply_to_the_upstream_handshake(
    p384_origin: int, run_proxy: Any, curves: str, status: int
) -> None:
    port = free_port()
    caddyfile = (
        "{\n\tadmin off\n\tauto_https off\n}\n"
        f"http://127.0.0.1:{port} {{\n"
        f"\treverse_proxy https://127.0.0.1:{p384_origin} {{\n"
        "\t\ttransport http {\n"
        "\t\t\ttls_insecure_skip_verify\n"
        f"\t\t\ttls_curves {curves}\n"
        "\t\t}\n\t}\n}\n"
    )
    run_proxy(caddyfile, port)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == status
    finally:
        conn.close()


def test_unsupported_curve_is_a_config_error() -> None:
    from config.errors import ConfigError
    from config.model import TransportTLS
    from proxy.handlers.reverse_proxy import build_ssl_context

    with pytest.raises(ConfigError, match=r"transport\.tls\.curves\[1\]: unsupported curve: x448"):
        build_ssl_context(TransportTLS(curves=("x25519", "x448")))
