"""Request-target rules (proxy.http.target) against Go's net/url and current Caddy.

Every expected value below is what Go's url.ParseRequestURI / URL.EscapedPath and Caddy's
rewrite.go produce for the input (worked out from their source; tests/integration/
test_hostile_paths.py checks the observable ones against /usr/bin/caddy).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http.request import Request
from proxy.http.target import (
    BadRequestTarget,
    change_path,
    clean_path,
    escape_path,
    escaped_path,
    parse_request_target,
    regexp_replace_path,
    replace_in_path,
    strip_path_prefix,
    strip_path_suffix,
    trim_path_prefix,
    unescape_path,
    valid_encoded,
)
from proxy.http.wire_errors import RequestError

# ------------------------------------------------------------------------------------------
# parse_request_target: (target, URL.Path, URL.EscapedPath(), URL.RawQuery)
# ------------------------------------------------------------------------------------------

PARSE_CASES = [
    ("/", "/", "/", ""),
    ("/a/b?x=1&y", "/a/b", "/a/b", "x=1&y"),
    ("/a/b/", "/a/b/", "/a/b/", ""),
    # '#' is no delimiter in a request-target: part of Path, forwarded escaped (finding 1)
    ("/admin#x", "/admin#x", "/admin%23x", ""),
    ("/admin#x?y=1", "/admin#x", "/admin%23x", "y=1"),
    ("/a%23b", "/a#b", "/a%23b", ""),
    # a backslash and the other bytes EscapedPath must escape
    ("/a\\b", "/a\\b", "/a%5Cb", ""),
    ("/a|b{c}^`", "/a|b{c}^`", "/a%7Cb%7Bc%7D%5E%60", ""),
    ('/a"<>', '/a"<>', "/a%22%3C%3E", ""),
    # a valid non-canonical encoding is kept exactly as received
    ("/a%2fb", "/a/b", "/a%2fb", ""),
    ("/a%2Fb", "/a/b", "/a%2Fb", ""),
    ("/a%41", "/aA", "/a%41", ""),
    ("/%2e%2e/x", "/../x", "/%2e%2e/x", ""),
    ("/a%20b", "/a b", "/a%20b", ""),
    ("/a+b", "/a+b", "/a+b", ""),  # '+' is no space in a path
    ("/%C3%A9", "/é", "/%C3%A9", ""),
    ("/caf\xc3\xa9", "/café", "/caf%C3%A9", ""),  # raw UTF-8 bytes (wire text is Latin-1)
    ("/\xff", "/\ufffd", "/%FF", ""),
    ("/%ff", "/\ufffd", "/%ff", ""),  # a byte that is no UTF-8: matched as U+FFFD
    ("/%25zz", "/%zz", "/%25zz", ""),
    # ... but an invalid one makes Go re-escape the whole decoded path: %2f becomes '/'
    ("/a%2fb#", "/a/b#", "/a/b%23", ""),
    # sub-delims, ':' '@' '[' ']' are valid as they are
    ("/!$&'()*+,;=:@[]~-._", "/!$&'()*+,;=:@[]~-._", "/!$&'()*+,;=:@[]~-._", ""),
    ("//x/./y/../z", "//x/./y/../z", "//x/./y/../z", ""),  # no cleaning at parse time
    # the query is kept raw (Go does not validate it)
    ("/a?%zz#?", "/a", "/a", "%zz#?"),
    ("/a?", "/a", "/a", ""),  # Go's ForceQuery: pyproxy has no empty-vs-absent query
    ("/a??b", "/a", "/a", "?b"),
    ("*", "*", "*", ""),
    # absolute-form: the path after the authority
    ("http://h/p%2Fq?x", "/p/q", "/p%2Fq", "x"),
    ("HTTP://h:8080/p", "/p", "/p", ""),
    ("http://h", "", "", ""),  # forwarded as "/" (URL.RequestURI)
    ("http://u:p%40@h/p", "/p", "/p", ""),
    ("http://[::1]:80/p#x", "/p#x", "/p%23x", ""),
    ("http://[fe80::1%25en0]/", "/", "/", ""),
    ("http://h:/p", "/p", "/p", ""),
    ("http://%C3%A9.example/", "/", "/", ""),  # non-ASCII may be escaped in a host
]


@pytest.mark.parametrize(("target", "path", "escaped", "query"), PARSE_CASES)
def test_parse_request_target(target: str, path: str, escaped: str, query: str) -> None:
    assert parse_request_target(target) == (path, escaped, query)


def test_parse_connect_authority_form() -> None:
    # net/http readRequest: CONNECT host:port is parsed as "http://host:port" (empty Path).
    assert parse_request_target("example.com:443", connect=True) == ("", "", "")
    assert parse_request_target("/p", connect=True) == ("/p", "/p", "")


BAD_TARGETS = [
    ("", "empty"),
    ("/%zz", "invalid URL escape"),  # finding 2
    ("/a%", "invalid URL escape"),
    ("/a%2", "invalid URL escape"),
    ("/a%g0", "invalid URL escape"),
    ("/ok/%zz?q", "invalid URL escape"),
    ("http://h/%zz", "invalid URL escape"),
    ("foo", "invalid URI for request"),
    ("foo/bar", "invalid URI for request"),
    (":x", "missing protocol scheme"),
    ("mailto:x", "opaque"),
    ("/a\x01b", "control character"),
    ("/a\x7f", "control character"),
    ("http://h:x/", "invalid port"),
    ("http://h:8a/", "invalid port"),
    ("http://[::1/", "missing ']'"),
    ("http://[::1]x/", "invalid port"),
    ("http://h%41/", "invalid URL escape"),  # ASCII may not be escaped in a host
    ("http://h{/", "invalid character"),
    ("http://u^@h/", "invalid userinfo"),
    ("http://u%zz@h/", "invalid URL escape"),
    ("http://[fe80::1%25%00]/", "invalid URL escape"),
]


@pytest.mark.parametrize(("target", "message"), BAD_TARGETS)
def test_parse_request_target_rejects(target: str, message: str) -> None:
    with pytest.raises(BadRequestTarget, match=re.escape(message)):
        parse_request_target(target)


def test_bad_request_target_is_a_400_request_error() -> None:
    # The server refuses every RequestError with its status, as Go's server does a bad URL.
    with pytest.raises(RequestError) as caught:
        parse_request_target("/%zz")
    assert caught.value.status == 400
    assert str(caught.value) == "invalid URL escape in request-target path '/%zz'"


def test_text_that_is_no_wire_bytes_is_refused() -> None:
    with pytest.raises(BadRequestTarget, match="not bytes"):
        parse_request_target("/\u20ac")


# ------------------------------------------------------------------------------------------
# Request.set_uri: the fast path equals the full parse
# ------------------------------------------------------------------------------------------


def request(target: str, method: str = "GET") -> Request:
    return Request(method, target, "HTTP/1.1", None, "127.0.0.1", 40000, "http")


@pytest.mark.parametrize(("target", "path", "escaped", "query"), PARSE_CASES)
def test_request_fields_follow_the_parse(target: str, path: str, escaped: str, query: str) -> None:
    req = request(target)
    assert (req.path, req.raw_path, req.query, req.uri) == (path, escaped, query, target)


def test_request_rejects_bad_escape() -> None:
    with pytest.raises(BadRequestTarget):
        request("/%zz")


# Any byte but controls and space: what the wire rules let through in a request-target.
_TARGET_CHARS = "".join(chr(c) for c in range(0x21, 0x100) if c != 0x7F)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=_TARGET_CHARS, max_size=24))
def test_set_uri_fast_path_agrees_with_parse(tail: str) -> None:
    target = "/" + tail
    try:
        expected = parse_request_target(target)
    except BadRequestTarget:
        with pytest.raises(BadRequestTarget):
            request(target)
        return
    req = request(target)
    assert (req.path, req.raw_path, req.query) == expected
    # EscapedPath is always a valid encoding whose decoding is Path again.
    assert valid_encoded(req.raw_path) or req.raw_path == "*"
    assert parse_request_target(req.raw_path).escaped_path == req.raw_path


# ------------------------------------------------------------------------------------------
# escape / unescape / validEncoded / EscapedPath
# ------------------------------------------------------------------------------------------


def test_unescape_path() -> None:
    assert unescape_path("/a%2Fb%2b+") == b"/a/b++"
    assert unescape_path("/%C3%A9") == "/é".encode()
    assert unescape_path("/%zz") is None
    assert unescape_path("/%") is None
    assert unescape_path("/a%2") is None


def test_escape_path() -> None:
    assert escape_path(b"/a b?#%/") == "/a%20b%3F%23%25/"
    assert escape_path("/é".encode()) == "/%C3%A9"
    assert escape_path(b"/$&+,:;=@-_.~") == "/$&+,:;=@-_.~"
    assert escape_path(b"/!'()*[]") == "/%21%27%28%29%2A%5B%5D"


def test_valid_encoded() -> None:
    assert valid_encoded("/!'()*[]%2f")
    assert not valid_encoded("/a#b")
    assert not valid_encoded("/a?b")
    assert not valid_encoded("/a\\b")
    assert not valid_encoded("/é")


ESCAPED_PATH_CASES = [
    (b"/a/b", "", "/a/b"),
    (b"/a/b", "/a%2fb", "/a%2fb"),  # valid and decodes to Path: kept
    (b"/a/b", "/a%2fc", "/a/b"),  # decodes to something else: ignored
    (b"/a#", "/a#", "/a%23"),  # not a valid encoding: ignored
    (b"/a?b", "", "/a%3Fb"),
    (b"*", "", "*"),  # Go issue 11202
    (b"", "", ""),
]


@pytest.mark.parametrize(("path", "raw", "expected"), ESCAPED_PATH_CASES)
def test_escaped_path(path: bytes, raw: str, expected: str) -> None:
    assert escaped_path(path, raw) == expected


# ------------------------------------------------------------------------------------------
# CleanPath on escaped paths (encoded dots are no dot segments)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "collapse", "expected"),
    [
        ("/a//b", True, "/a/b"),
        ("/a/./x", True, "/a/x"),
        ("/a/x/../../a/y", True, "/a/y"),
        ("/a/b;/../c", True, "/a/c"),
        ("/a/%2e%2e/b", True, "/a/%2e%2e/b"),
        ("/a//b", False, "/a//b"),
        ("//a/../b", False, "//b"),
    ],
)
def test_clean_escaped_path(path: str, collapse: bool, expected: str) -> None:
    assert clean_path(path, collapse) == expected


# ------------------------------------------------------------------------------------------
# trimPathPrefix / strip_path_prefix / strip_path_suffix / changePath
# ------------------------------------------------------------------------------------------

TRIM_CASES = [
    ("/a/b", "/a", "/b"),
    ("/A/b", "/a", "/b"),  # case-insensitive
    ("/a/b", "/A", "/b"),
    ("/ab", "/a", "b"),
    ("/b", "/a", "/b"),
    ("/a", "/a/", "/a"),  # prefix longer than the path: unchanged
    ("/%61/b", "/a", "/b"),  # an escape in the path is compared decoded
    ("/a%2fb", "/a/", "b"),
    ("/a%2Fb", "/a%2f", "b"),  # the same escape (any case) where the prefix has one
    ("/a/b", "/a%2f", "/a/b"),  # ... an escape in the prefix needs that escape
    ("/a%2Fb", "/a%2e", "/a%2Fb"),
    ("/%C3%A9/x", "/é", "/%C3%A9/x"),  # Go's EqualFold quirk: see _fold_equal
]


@pytest.mark.parametrize(("escaped", "prefix", "expected"), TRIM_CASES)
def test_trim_path_prefix(escaped: str, prefix: str, expected: str) -> None:
    assert trim_path_prefix(escaped, prefix) == expected


STRIP_PREFIX_CASES = [
    # finding 3: Caddy cleans before trimming
    ("/a//b", "/a", "/b"),
    ("/a/./x", "/a", "/x"),
    ("/a/x/../../a/y", "/a", "/y"),
    ("/a/b;/../c", "/a", "/c"),
    ("/a/b", "/a", "/b"),
    ("/a/", "/a", "/"),
    ("/a/b/", "/a", "/b/"),
    ("/a/%2e%2e/b", "/a", "/%2e%2e/b"),  # encoded dots are no dot segments
    ("/a/b%2Fc", "/a", "/b%2Fc"),  # the received escapes survive
    ("/a/b#c", "/a", "/b%23c"),  # EscapedPath form
    ("/A/b", "/a", "/b"),
    ("/a//b", "/a//", "b"),  # a prefix with "//" keeps empty segments
    ("/a/b", "a", "/b"),  # Caddy adds the leading '/'
    ("/b", "/a", "/b"),
]


@pytest.mark.parametrize(("target", "prefix", "expected"), STRIP_PREFIX_CASES)
def test_strip_path_prefix(target: str, prefix: str, expected: str) -> None:
    escaped = parse_request_target(target).escaped_path
    assert strip_path_prefix(escaped, prefix) == expected


@pytest.mark.parametrize(
    ("target", "suffix", "expected"),
    [
        ("/a/b.html", ".html", "/a/b"),
        ("/a/b.HTML", ".html", "/a/b"),
        ("/a/./b.html", ".html", "/a/b"),
        ("/a/b.html/", ".html", "/a/b.html/"),
        ("/a/b%2Ehtml", ".html", "/a/b%2Ehtml"),  # reversed, the escape is no escape
        ("/a/b%2Fx", "%2Fx", "/a/b"),
    ],
)
def test_strip_path_suffix(target: str, suffix: str, expected: str) -> None:
    escaped = parse_request_target(target).escaped_path
    assert strip_path_suffix(escaped, suffix) == expected


def test_change_path_drops_a_canonical_raw_path() -> None:
    # The result is the EscapedPath of the edited fields: a valid edit is kept as written...
    assert change_path("/a%2Fb", lambda p: p.replace("a", "c")) == "/c%2Fb"
    # ... an edit that breaks the encoding falls back to editing the decoded Path.
    assert change_path("/a%2Fb", lambda p: p.replace("%2", "%z")) == "/a/b"


def test_replace_in_path_cleans_and_works_on_the_escaped_path() -> None:
    assert replace_in_path("/a/../x%20y", "%20", "-", -1, True) == "/x-y"
    assert replace_in_path("/x y".replace(" ", "%20"), " ", "-", -1, True) == "/x%20y"
    assert replace_in_path("/a/a/a", "a", "b", 2, True) == "/b/b/a"


def test_regexp_replace_path_on_the_escaped_path() -> None:
    assert regexp_replace_path("/a%2Fb", re.compile("%2F"), "/") == "/a/b"
    assert regexp_replace_path("/a/../b", re.compile("b$"), "c") == "/a/../c"  # not cleaned


def test_ascii_query_escapes_only_non_ascii_bytes() -> None:
    from proxy.http.target import ascii_query

    assert ascii_query("a=1&b=%41") == "a=1&b=%41"
    assert ascii_query("q=caf\xc3\xa9&x=\xdf") == "q=caf%C3%A9&x=%DF"
