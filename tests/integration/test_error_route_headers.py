"""Headers set before an error reach the `handle_errors` response (pyproxy issue #11 item 4).

Caddy's error routes write to the same ResponseWriter, so its header map — with whatever a
non-deferred `header` directive put there — is already filled when they run. Deferred ops
(`header -Server`, `defer`) live in a wrapper around that writer which the error chain does not
go through, so they are not applied (checked against Caddy 2.6.2).
"""

from __future__ import annotations

from typing import Any

from enginekit import free_port
from test_engine_server import raw_exchange

CADDYFILE = """{{
\tadmin off
\tauto_https off
}}
:{port} {{
\theader X-Site yes
\theader -Server
\theader X-Def d {{
\t\tdefer
\t}}
\terror /boom 500
\thandle_errors {{
\t\theader X-Err e
\t\trespond "err {{err.status_code}}"
\t}}
}}
"""


def test_site_headers_survive_into_error_routes(run_proxy: Any) -> None:
    port = free_port()
    run_proxy(CADDYFILE.format(port=port), port)
    resp = raw_exchange(port, b"GET /boom HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 500 ")
    assert body == b"err 500"
    assert b"X-Site: yes" in lines
    assert b"X-Err: e" in lines
    # The deferred ops of the main routes are not applied to the error response.
    assert b"Server: Caddy" in lines
    assert not any(line.startswith(b"X-Def:") for line in lines)


def test_unhandled_request_gets_no_deferred_headers(run_proxy: Any) -> None:
    # Caddy writes the empty 200 of a request no handler answered on its own ResponseWriter,
    # not through the deferred-header wrapper: only the non-deferred ops show (Caddy 2.6.2).
    port = free_port()
    run_proxy(CADDYFILE.format(port=port), port)
    resp = raw_exchange(port, b"GET /fine HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    lines = resp.partition(b"\r\n\r\n")[0].split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 200 ")
    assert b"X-Site: yes" in lines
    assert b"Server: Caddy" in lines
    assert not any(line.startswith(b"X-Def:") for line in lines)
