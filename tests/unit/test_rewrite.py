"""The rewrite handler's path rules (current Caddy's rewrite.go) on real requests."""

from __future__ import annotations

from typing import Any

import pytest

from config.model import RewriteHandler
from proxy.handlers.rewrite import Rewrite, _split_uri_template
from proxy.http.request import Request


def request(target: str) -> Request:
    return Request("GET", target, "HTTP/1.1", None, "127.0.0.1", 40000, "http")


# ------------------------------------------------------------------------------------------
# The rewrite handler: uri template bounds and the escaped {path}
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("/x", ("/x", None)),
        ("/x?a=b", ("/x", "a=b")),
        ("/x?", ("/x", "")),
        ("?a=b", (None, "a=b")),
        ("/x#f", ("/x", None)),
        ("/x?a#f?b", ("/x", "a")),
        ("/x#f?b", ("/x", None)),
        ("#f", (None, None)),
    ],
)
def test_split_uri_template(template: str, expected: tuple[str | None, str | None]) -> None:
    assert _split_uri_template(template) == expected


class _Exchange:
    """The one attribute Rewrite.serve reads from an exchange."""

    def __init__(self, req: Request) -> None:
        self.req = req


def handler(**cfg: Any) -> RewriteHandler:
    return RewriteHandler(name="rewrite", raw={}, where="test", **cfg)


def rewritten(target: str, **cfg: Any) -> tuple[str, str, str, str]:
    req = request(target)
    Rewrite(handler(**cfg)).serve(_Exchange(req))  # type: ignore[arg-type]
    return req.uri, req.path, req.raw_path, req.query


REWRITE_CASES = [
    # {http.request.uri.path} is replaced by the escaped path, then the result is decoded:
    # no double decoding, no '?' or '#' from the path turning into delimiters.
    ("/a%2525", {"uri": "/x{http.request.uri.path}"}, ("/x/a%2525", "/x/a%25", "/x/a%2525", "")),
    (
        "/a%3Fb?q=1",
        {"uri": "/x{http.request.uri.path}"},
        ("/x/a%3Fb?q=1", "/x/a?b", "/x/a%3Fb", "q=1"),
    ),
    ("/a#b", {"uri": "/x{http.request.uri.path}"}, ("/x/a%23b", "/x/a#b", "/x/a%23b", "")),
    # RawPath is reset: a non-canonical escape is forwarded canonically after a uri rewrite
    ("/a%2fb", {"uri": "/x{http.request.uri.path}"}, ("/x/a/b", "/x/a/b", "/x/a/b", "")),
    ("/p?q=1", {"uri": "/new"}, ("/new?q=1", "/new", "/new", "q=1")),
    # the query part is built like Caddy's buildQueryString: placeholder values query-escaped,
    # except {http.request.uri.query} where a key goes; '=' in a value literal; empty keys go
    (
        "/a%20b?x=1",
        {"uri": "/r?p={http.request.uri.path}&{http.request.uri.query}"},
        ("/r?p=%2Fa+b&x=1", "/r", "/r", "p=%2Fa+b&x=1"),
    ),
    (
        "/a?x=1&y=2",
        {"uri": "/r?q={http.request.uri.query}"},
        ("/r?q=x%3D1%26y%3D2", "/r", "/r", "q=x%3D1%26y%3D2"),
    ),
    ("/a", {"uri": "/r?sig=ab==&&k"}, ("/r?sig=ab==&k", "/r", "/r", "sig=ab==&k")),
    ("/p?q=1", {"uri": "/new?r=2"}, ("/new?r=2", "/new", "/new", "r=2")),
    ("/p?q=1", {"uri": "?r=2&{http.request.uri.query}"}, ("/p?r=2&q=1", "/p", "/p", "r=2&q=1")),
    ("/p?q=1", {"uri": "/new#frag"}, ("/new?q=1", "/new", "/new", "q=1")),
    ("/p", {"uri": "/a b%zz"}, ("/a%20b%25zz", "/a b%zz", "/a%20b%25zz", "")),
    ("/p", {"uri": "/é"}, ("/%C3%A9", "/é", "/%C3%A9", "")),
    # strip_path_prefix (handle_path), finding 3
    ("/a//b?x", {"strip_path_prefix": "/a"}, ("/b?x", "/b", "/b", "x")),
    ("/a/./x", {"strip_path_prefix": "/a"}, ("/x", "/x", "/x", "")),
    ("/a/x/../../a/y", {"strip_path_prefix": "/a"}, ("/y", "/y", "/y", "")),
    ("/a/b;/../c", {"strip_path_prefix": "/a"}, ("/c", "/c", "/c", "")),
    ("/a/b%2Fc", {"strip_path_prefix": "/a"}, ("/b%2Fc", "/b/c", "/b%2Fc", "")),
    ("/ab", {"strip_path_prefix": "/a"}, ("/b", "/b", "/b", "")),  # pyproxy keeps origin-form
    ("/a/b.html", {"strip_path_suffix": ".html"}, ("/a/b", "/a/b", "/a/b", "")),
    # substring replacement also applies to the query (Caddy's substrReplacer)
    ("/a/x?a=1", {"uri_substring": (("a", "b", 0),)}, ("/b/x?b=1", "/b/x", "/b/x", "b=1")),
    (  # issue #11 item 5: Caddy 2.6.2 and current Caddy forward /new/page?ref=/new/x
        "/old/page?ref=/old/x",
        {"uri_substring": (("/old/", "/new/", 0),)},
        ("/new/page?ref=/new/x", "/new/page", "/new/page", "ref=/new/x"),
    ),
    (  # the limit counts in the path and in the query separately (two strings.Replace calls)
        "/old/old/?q=/old/&r=/old/",
        {"uri_substring": (("/old/", "/new/", 1),)},
        ("/new/old/?q=/new/&r=/old/", "/new/old/", "/new/old/", "q=/new/&r=/old/"),
    ),
    ("/a%20b", {"uri_substring": (("%20", "_", 0),)}, ("/a_b", "/a_b", "/a_b", "")),
    ("/a%2Fb", {"path_regexp": (("%2F", "-"),)}, ("/a-b", "/a-b", "/a-b", "")),
    ("/v1/x", {"path_regexp": (("^/v(\\d)/", "/api$1/"),)}, ("/api1/x", "/api1/x", "/api1/x", "")),
    # only the method changes: RequestURI is rebuilt from the URL (Caddy)
    ("/admin#x", {"method": "POST"}, ("/admin%23x", "/admin#x", "/admin%23x", "")),
]


@pytest.mark.parametrize(("target", "cfg", "expected"), REWRITE_CASES)
def test_rewrite(target: str, cfg: dict[str, Any], expected: tuple[str, str, str, str]) -> None:
    assert rewritten(target, **cfg) == expected


def test_rewrite_injected_query_only_with_an_empty_template_query() -> None:
    # A '?' from a placeholder value is a query only where the template ends in a bare '?'
    # (rewrite.go); braces in it are escaped so nothing in it is expanded again.
    req = request("/p?old=1")
    req.vars["target"] = "/t?x={y}"
    Rewrite(handler(uri="{http.vars.target}?")).serve(_Exchange(req))  # type: ignore[arg-type]
    assert (req.path, req.query) == ("/t", "x=%7By%7D")
    req = request("/p?old=1")
    req.vars["target"] = "/t?x=1"
    Rewrite(handler(uri="{http.vars.target}")).serve(_Exchange(req))  # type: ignore[arg-type]
    assert (req.path, req.query) == ("/t", "old=1")
