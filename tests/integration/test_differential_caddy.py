"""Differential suite: pyproxy against Caddy 2.6.2 (/usr/bin/caddy) on the same Caddyfile.

Each case is (site snippet, raw request, optional deviation). Both servers get the whole table
as one Caddyfile (one site per distinct snippet), receive the same request and must answer the
same status, headers and body and forward the same request to the origin (see
differentialkit for what is normalised). A case where current Caddy differs from 2.6.2 carries
`deviation="deviation: ..."` and is a strict xfail: pyproxy follows current Caddy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from differentialkit import (
    CADDY,
    Case,
    RecordingOrigin,
    Server,
    run_case,
    site_snippets,
    start_server,
)

pytestmark = pytest.mark.skipif(not os.path.exists(CADDY), reason=f"needs Caddy at {CADDY}")

GET = b"GET %s HTTP/1.1\r\n\r\n"

PATHS = """\t@admin path /admin /admin/*
\trespond @admin "admin {path}"
\trespond "other {path}\""""

SITE_HEADERS = """\theader X-Site yes
\theader X-Def d {
\t\tdefer
\t}
\trespond /missing 404
\terror /boom 500
\thandle_errors {
\t\theader X-Err e
\t\trespond "err {err.status_code} {err.message}"
\t}"""

PROXY_HEADERS = """\treverse_proxy {ORIGIN} {
\t\theader_up X-Up 1
\t\theader_up -X-Drop
\t\theader_down X-Down 2
\t\theader_down -X-Origin-Resp
\t}"""


def get(target: bytes, *headers: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


CASES = [
    Case("respond-body", '\trespond "hello"', get(b"/")),
    Case("respond-status-path", "\trespond /x 404\n\trespond ok", get(b"/x")),
    Case("respond-placeholders", '\trespond "{method} {uri} {query}"', get(b"/a/b?c=1&d")),
    Case("redir-relative", "\tredir /old /new", get(b"/old")),
    Case("redir-permanent-uri", "\tredir https://example.com{uri} permanent", get(b"/a?b=1")),
    Case("header-set-respond", "\theader X-A 1\n\theader +X-B 2\n\trespond ok", get(b"/")),
    Case("header-site-404-response", SITE_HEADERS, get(b"/missing")),
    Case("header-site-into-handle_errors", SITE_HEADERS, get(b"/boom")),  # issue #11 item 4
    Case("handle_errors-unmatched", SITE_HEADERS, get(b"/fine")),
    Case(
        "header-set-before-proxy-adds",
        "\theader X-Origin-Resp new\n\treverse_proxy {ORIGIN}",
        get(b"/p"),
    ),
    Case(
        "header-defer-replaces-upstream",
        "\theader X-Origin-Resp new {\n\t\tdefer\n\t}\n\treverse_proxy {ORIGIN}",
        get(b"/p"),
    ),
    Case("rewrite-path", '\trewrite /a /b?x=1\n\trespond "{uri}"', get(b"/a?y=2")),
    Case("uri-strip_prefix", '\turi strip_prefix /api\n\trespond "{path}"', get(b"/api/v1")),
    Case(  # issue #11 item 5
        "uri-replace-path-and-query",
        "\turi replace /old/ /new/\n\treverse_proxy {ORIGIN}",
        get(b"/old/page?ref=/old/x"),
    ),
    Case(
        "handle_path-proxy",
        "\thandle_path /api/* {\n\t\treverse_proxy {ORIGIN}\n\t}",
        get(b"/api/x/y?q=1"),
    ),
    Case(
        "handle_path-double-slash",
        "\thandle_path /api/* {\n\t\treverse_proxy {ORIGIN}\n\t}",
        get(b"/api//x"),
    ),
    Case("path-plain", PATHS, get(b"/admin/x")),
    Case("path-dot-segments", PATHS, get(b"/x/../admin")),
    Case("path-encoded-dots", PATHS, get(b"/x/%2e%2e/admin")),
    Case("path-encoded-slash", PATHS, get(b"/admin%2Fx")),
    Case("path-double-slash", PATHS, get(b"//admin")),
    Case("path-semicolon", PATHS, get(b"/admin;x")),
    Case("path-case", PATHS, get(b"/ADMIN")),
    Case("path-fragment", PATHS, get(b"/admin#x")),
    Case("path-double-encoded", PATHS, get(b"/admin%252Fx")),
    Case("path-dot-segment-escape", PATHS, get(b"/admin/../secret")),
    Case(
        "redir-html",
        "\tredir /x /y html",
        get(b"/x"),
        deviation="deviation: pyproxy's adapter sets Content-Type text/html on `redir html`;"
        " Caddy 2.6.2 sets none, so its static_response sends text/plain",
    ),
    Case("respond-head", '\trespond "hello"', b"HEAD / HTTP/1.1\r\n\r\n"),
    Case(
        "header-defer-delete-server",
        "\theader -Server\n\theader X-A a\n\trespond ok",
        get(b"/"),
    ),
    Case(
        "rewrite-placeholders",
        '\trewrite * /r?{query}&h={header.X-A}\n\trespond "{uri}"',
        get(b"/a?b=1", b"X-A: v w"),
    ),
    Case(
        "rewrite-query-placeholder-as-value",
        '\trewrite * /r?q={query}&&sig=ab==&{query}\n\trespond "{uri}"',
        get(b"/a?x=1&y=a+b"),
    ),
    Case(
        "uri-strip_prefix-dot-segments",
        '\turi strip_prefix /api\n\trespond "{path}"',
        get(b"/api/../api/x"),
    ),
    Case(
        "handle_path-encoded-slash",
        "\thandle_path /api/* {\n\t\treverse_proxy {ORIGIN}\n\t}",
        get(b"/api/a%2Fb"),
    ),
    Case(
        "error-message-handle_errors",
        '\terror /e "Nope" 403\n\thandle_errors {\n'
        '\t\trespond "{err.status_code}:{err.message}"\n\t}',
        get(b"/e"),
    ),
    Case("proxy-header-ops", PROXY_HEADERS, get(b"/h?x=1", b"X-Drop: t", b"X-Keep: k")),
    Case(
        "proxy-header_up-delete-user-agent",
        "\treverse_proxy {ORIGIN} {\n\t\theader_up -User-Agent\n\t}",
        get(b"/ua", b"User-Agent: t"),
        deviation="deviation: Caddy's Go transport then sends its own User-Agent"
        " (Go-http-client/1.1); pyproxy sends none, as the operator asked",
    ),
    Case(
        "proxy-client-accept-encoding",
        "\treverse_proxy {ORIGIN}",
        get(b"/ae", b"Accept-Encoding: br"),
    ),
    Case(
        "proxy-post-body",
        "\treverse_proxy {ORIGIN}",
        b"POST /post HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    ),
    Case(
        "proxy-forwarded-headers",
        "\treverse_proxy {ORIGIN}",
        get(b"/f", b"X-Forwarded-For: 10.0.0.1", b"X-Forwarded-Proto: https"),
    ),
]


@pytest.fixture(scope="module")
def origin() -> Iterator[RecordingOrigin]:
    o = RecordingOrigin()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def servers(
    origin: RecordingOrigin, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    workdir: Path = tmp_path_factory.mktemp("differential")
    snippets = site_snippets(CASES)
    started: dict[str, Server] = {}
    try:
        for name in ("caddy", "pyproxy"):
            started[name] = start_server(name, snippets, origin.port, workdir)
        yield started
    finally:
        for server in started.values():
            server.stop()


def _param(case: Case) -> object:
    if case.deviation is None:
        return pytest.param(case, id=case.id)
    mark = pytest.mark.xfail(reason=case.deviation, strict=True)
    return pytest.param(case, id=case.id, marks=mark)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_same_as_caddy(case: Case, servers: dict[str, Server], origin: RecordingOrigin) -> None:
    want = run_case(servers["caddy"], origin, case)
    got = run_case(servers["pyproxy"], origin, case)
    assert (got.status, got.reason) == (want.status, want.reason)
    assert got.headers == want.headers
    assert got.body == want.body
    assert got.upstream == want.upstream
