"""`uri replace` edits the query too (pyproxy issue #11 item 5).

Caddy's substrReplacer runs strings.Replace on the escaped path and on RawQuery (2.6.2 and
current Caddy agree), so `/old/page?ref=/old/x` is forwarded as `/new/page?ref=/new/x`.
"""

from __future__ import annotations

from typing import Any

from enginekit import free_port
from test_engine_server import raw_exchange


def test_uri_replace_reaches_the_origin_in_path_and_query(raw_origin: Any, run_proxy: Any) -> None:
    heads: list[bytes] = []

    def script(conn: int, idx: int, head: bytes) -> bytes:
        heads.append(head)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    upstream = raw_origin(script)
    port = free_port()
    caddyfile = (
        f"{{\n\tadmin off\n\tauto_https off\n}}\n:{port} {{\n"
        f"\turi replace /old/ /new/\n\treverse_proxy 127.0.0.1:{upstream.port}\n}}\n"
    )
    run_proxy(caddyfile, port)
    resp = raw_exchange(
        port, b"GET /old/page?ref=/old/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    assert resp.startswith(b"HTTP/1.1 200 ") and resp.endswith(b"ok")
    assert len(heads) == 1
    assert heads[0].startswith(b"GET /new/page?ref=/new/x HTTP/1.1\r\n")
