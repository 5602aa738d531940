"""Request/response matchers (proxy.matchers) against Caddy's documented and coded behaviour."""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from request_fakes import FakeRequest, request_for

from proxy.header_ops import Headers
from proxy.http.request import Request
from proxy.http.target import BadRequestTarget
from proxy.matchers import (
    clean_path,
    compile_go_regexp,
    compile_matcher_set,
    compile_matcher_sets,
    compile_response_matcher,
    register_matcher,
    status_code_matches,
)

Req = FakeRequest


req = request_for


def m(match_set: dict[str, Any]) -> Any:
    return compile_matcher_set(match_set)


# ------------------------------------------------------------------------------------------
# path
# ------------------------------------------------------------------------------------------

PATH_CASES = [
    # exact
    ("/foo", "/foo", True),
    ("/foo", "/foo/", False),
    ("/foo", "/foobar", False),
    ("/foo", "/FOO", True),
    ("/FOO", "/foo", True),
    ("/", "/", True),
    ("/", "/a", False),
    # prefix
    ("/foo*", "/foobar", True),
    ("/foo*", "/foo", True),
    ("/foo/*", "/foo", False),
    ("/foo/*", "/foo/", True),
    ("/foo/*", "/foo/bar/baz", True),
    ("/api/*", "/API/v1", True),
    # suffix
    ("*.php", "/a/b.php", True),
    ("*.php", "/a/b.PHP", True),
    ("*.php", "/a/b.phps", False),
    # substring
    ("*/bar/*", "/foo/bar/x", True),
    ("*/bar/*", "/foo/bar", False),
    ("*bar*", "/xbarx", True),
    # middle wildcard: path.Match, '*' never crosses '/'
    ("/foo/*/baz", "/foo/x/baz", True),
    ("/foo/*/baz", "/foo/x/y/baz", False),
    ("/a*b*c", "/axbyc", True),
    ("/a*b*c", "/ax/byc", False),
    ("/x?", "/xy", True),
    ("/x?", "/x/", False),
    ("/[ab]c", "/ac", True),
    ("/[ab]c", "/cc", False),
    ("/[^a]c", "/bc", True),
    ("/[a-c]*/z", "/bzz/z", True),
    ("/[", "/[", False),  # malformed pattern never matches
    ("/a\\*b", "/a*b", True),  # escaped star is literal in path.Match
    # cleaning: dot segments and repeated slashes
    ("/foo", "/bar/../foo", True),
    ("/foo", "/./foo", True),
    ("/foo", "//foo", True),
    ("/foo/", "/foo//", True),
    ("//foo", "//foo", True),  # pattern with // keeps empty segments
    ("//foo", "/foo", False),
    ("/a//b*", "/a//b/c", True),
    # decoded path
    ("/foo bar", "/foo%20bar", True),
    ("/foo/bar", "/foo%2Fbar", True),
    ("/é", "/%C3%A9", True),
    ("/.well-known/*", "/.well-known/acme", True),
    # escape sequences in the pattern compare against the escaped path
    ("/foo%2fbar", "/foo%2Fbar", True),
    ("/foo%2Fbar", "/foo%2fbar", True),
    ("/foo%2fbar", "/foo/bar", False),
    ("/foo%2f*", "/foo%2Fbar", True),
    ("/foo%2f*", "/foo%2Fbar/baz", False),
    ("/api/%*/x", "/api/a%2Fb/x", True),
    ("/api/*/x", "/api/a%2Fb/x", False),
    ("/a%20b", "/a%20b", True),
    ("/a%20b/c", "/a%20b/%63", True),  # unescaped pattern chars match escaped path chars
    ("/a%20b", "/a%2", False),
    # match all
    ("*", "/anything/at/all", True),
    ("*", "/", True),
]


@pytest.mark.parametrize(("pattern", "target", "expected"), PATH_CASES)
def test_path(pattern: str, target: str, expected: bool) -> None:
    assert m({"path": [pattern]})(req(target)) is expected


def test_path_list_is_ored() -> None:
    matcher = m({"path": ["/a", "/b*", "*.css"]})
    assert matcher(req("/a"))
    assert matcher(req("/bee"))
    assert matcher(req("/x/y.css"))
    assert not matcher(req("/c"))


def test_path_star_anywhere_in_list_matches_all() -> None:
    assert m({"path": ["/nope", "*"]})(req("/x"))


def test_path_mixed_escape_and_plain_and_nomerge_patterns() -> None:
    matcher = m({"path": ["/plain", "/enc%2fx", "//double"]})
    assert matcher(req("/plain"))
    assert matcher(req("/enc%2Fx"))
    assert matcher(req("//double"))
    assert not matcher(req("/enc/x"))


def test_path_placeholder_pattern() -> None:
    matcher = m({"path": ["/{http.vars.section}/*"]})
    assert matcher(req("/Docs/page", vars={"section": "docs"}))
    assert not matcher(req("/docs/page", vars={"section": "blog"}))
    # unknown placeholders become empty in matchers
    assert m({"path": ["/x{nope.nothing}"]})(req("/x"))


def test_path_empty_list_matches_nothing() -> None:
    assert not m({"path": []})(req("/"))


def test_path_rejects_non_list() -> None:
    with pytest.raises(ValueError, match="path"):
        m({"path": "/foo"})


CLEAN_CASES = [
    ("/", True, "/"),
    ("", True, "."),
    ("/a/b/", True, "/a/b/"),
    ("/a//b", True, "/a/b"),
    ("/a//b", False, "/a//b"),
    ("/a/./b/../c", True, "/a/c"),
    ("/../a", True, "/a"),
    ("/a//../b", False, "/a/b"),
    ("//", False, "//"),
    ("///", False, "///"),
    ("/a/..", True, "/"),
    ("/a/../", True, "/"),
    ("a/../..", True, ".."),
    ("*", True, "*"),
]


@pytest.mark.parametrize(("path", "collapse", "expected"), CLEAN_CASES)
def test_clean_path(path: str, collapse: bool, expected: str) -> None:
    assert clean_path(path, collapse) == expected


@settings(max_examples=300, deadline=None)
@given(
    pattern=st.text(alphabet="/ab*?[]^-\\%2fF.", max_size=12),
    path=st.text(alphabet="/ab%2fF.*[] é", max_size=16),
)
def test_path_matching_never_raises(pattern: str, path: str) -> None:
    matcher = m({"path": [pattern]})
    result = matcher(Req(uri=path, path=path, raw_path=path))
    assert isinstance(result, bool)


@settings(max_examples=200, deadline=None)
@given(path=st.text(alphabet="/ab.", max_size=20))
def test_clean_path_is_idempotent_and_rooted(path: str) -> None:
    cleaned = clean_path("/" + path)
    assert cleaned.startswith("/")
    assert clean_path(cleaned) == cleaned
    assert "//" not in cleaned
    assert "/./" not in cleaned + "/"


# ------------------------------------------------------------------------------------------
# path and path_regexp on real requests: Request.set_uri gives them Go's URL.Path and
# URL.EscapedPath(), as Caddy's MatchPath / MatchPathRE see them (current Caddy)
# ------------------------------------------------------------------------------------------


def real_request(target: str) -> Request:
    return Request("GET", target, "HTTP/1.1", None, "127.0.0.1", 40000, "http")


BLOCKED = {"path": ["/admin", "/admin/*", "*.bak"]}

MATCH_CASES = [
    (BLOCKED, "/admin", True),
    (BLOCKED, "/ADMIN", True),
    (BLOCKED, "/admin/", True),
    (BLOCKED, "/admin/x", True),
    (BLOCKED, "//admin", True),
    (BLOCKED, "/x/../admin", True),
    (BLOCKED, "/%61dmin", True),
    (BLOCKED, "/admin%2Fx", True),  # decoded: "/admin/x"
    (BLOCKED, "/x.bak", True),
    (BLOCKED, "/x.BAK", True),
    (BLOCKED, "/x%2ebak", True),
    (BLOCKED, "/adminx", False),
    (BLOCKED, "/x.bak2", False),
    # '#' and '\' are path bytes (Go's ParseRequestURI): no match, and forwarded escaped
    (BLOCKED, "/admin#x", False),
    (BLOCKED, "/admin\\", False),
    # Trailing dots and spaces: current Caddy trims them only on Windows (caddy#5613), so
    # none of these match on Linux. Caddy 2.6.2 trimmed them (it blocks all four).
    (BLOCKED, "/admin.", False),
    (BLOCKED, "/admin%20", False),
    (BLOCKED, "/admin%2e", False),
    (BLOCKED, "/x.bak.", False),
    # patterns with escapes compare the (cleaned) escaped path
    ({"path": ["/a%2fb"]}, "/a%2Fb", True),
    ({"path": ["/a%2fb"]}, "/a/b", False),
    ({"path": ["/a%2fb"]}, "/a%2fbc", False),  # caddy#7828 (2.6.2 matched: a prefix)
    ({"path": ["/a%2f*"]}, "/a%2Fb", True),
    ({"path": ["/a%2f*"]}, "/a%2Fb/c", False),
    ({"path": ["/a/%*/c"]}, "/a/x%2Fy/c", True),
    ({"path": ["/a/*/c"]}, "/a/x%2Fy/c", False),
    ({"path": ["/a%20b/c"]}, "/a%20b/%63", True),
    ({"path": ["/a%23b"]}, "/a#b", True),  # EscapedPath has %23 for the '#'
    ({"path": ["/a%5cb"]}, "/a\\b", True),
    ({"path": ["/a%2fb"]}, "/x/../a%2fb", True),  # cleaned first
    # Caddy's escape walk: a '*' at an escape starts after the escape's first two bytes,
    # so the decoded "a" of "%61" is not seen ("1" is)
    ({"path": ["/%2f*a"]}, "/%2Fa", True),
    ({"path": ["/%2f*a"]}, "/%2F%61", False),
    ({"path": ["/%2f*1"]}, "/%2F%61", True),
]


@pytest.mark.parametrize(("match_set", "target", "expected"), MATCH_CASES)
def test_path_matcher_on_requests(match_set: dict[str, Any], target: str, expected: bool) -> None:
    assert compile_matcher_set(match_set)(real_request(target)) is expected


def test_path_regexp_sees_the_decoded_cleaned_path() -> None:
    match = compile_matcher_set({"path_regexp": {"pattern": "^/admin(#.*)?$"}})
    assert match(real_request("/x/../admin#x"))
    assert not compile_matcher_set({"path_regexp": {"pattern": "%23"}})(real_request("/a#b"))
    assert compile_matcher_set({"path_regexp": {"pattern": "^/a b$"}})(real_request("/a%20b"))


@settings(max_examples=300, deadline=None)
@given(
    pattern=st.text(alphabet="/ab*%2fF.\\", max_size=10),
    tail=st.text(alphabet=string.ascii_lowercase[:3] + "/%2fF.#\\", max_size=14),
)
def test_escape_pattern_matching_never_raises(pattern: str, tail: str) -> None:
    try:
        req = real_request("/" + tail)
    except BadRequestTarget:
        return
    assert isinstance(compile_matcher_set({"path": [pattern]})(req), bool)


# ------------------------------------------------------------------------------------------
# host
# ------------------------------------------------------------------------------------------

HOST_CASES = [
    (["example.com"], "example.com", True),
    (["example.com"], "EXAMPLE.com", True),
    (["Example.COM"], "example.com", True),
    (["example.com"], "example.com:8080", True),
    (["example.com"], "www.example.com", False),
    (["*.example.com"], "a.example.com", True),
    (["*.example.com"], "A.Example.Com:443", True),
    (["*.example.com"], "a.b.example.com", False),
    (["*.example.com"], "example.com", False),
    (["*.*.example.com"], "a.b.example.com", True),
    (["example.*"], "example.org", True),
    (["a.*.c"], "a.b.c", True),
    (["a.*.c"], "a.b.d", False),
    (["::1"], "[::1]:443", True),
    (["::1"], "[::1]", True),
    (["127.0.0.1"], "127.0.0.1:80", True),
    (["bücher.de"], "xn--bcher-kva.de", True),
    (["a.com", "b.com"], "b.com", True),
    (["a.com", "*.b.com"], "x.b.com", True),
    (["a.com", "*.b.com"], "c.com", False),
    ([], "a.com", False),
]


@pytest.mark.parametrize(("hosts", "host", "expected"), HOST_CASES)
def test_host(hosts: list[str], host: str, expected: bool) -> None:
    assert m({"host": hosts})(req(host=host)) is expected


def test_host_many_entries() -> None:
    hosts = [f"site{i}.example.com" for i in range(500)] + ["*.wild.test"]
    matcher = m({"host": hosts})
    assert matcher(req(host="site499.example.com"))
    assert matcher(req(host="x.wild.test"))
    assert not matcher(req(host="site500.example.com"))


def test_host_repeated_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"host at index 0 is repeated at index 1: Example\.com"):
        m({"host": ["example.com", "Example.com"]})


def test_host_placeholder() -> None:
    matcher = m({"host": ["{http.vars.site}"]})
    assert matcher(req(host="Shop.test", vars={"site": "shop.test"}))
    assert not matcher(req(host="shop.test", vars={"site": "other.test"}))
    wild = m({"host": ["*.{env.PYPROXY_TEST_DOMAIN}"]})
    import os

    os.environ["PYPROXY_TEST_DOMAIN"] = "corp.test"
    try:
        assert wild(req(host="a.corp.test"))
        assert not wild(req(host="a.b.corp.test"))
    finally:
        del os.environ["PYPROXY_TEST_DOMAIN"]


# ------------------------------------------------------------------------------------------
# method, protocol, tls
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("methods", "method", "expected"),
    [
        (["GET"], "GET", True),
        (["get"], "GET", True),
        (["GET"], "get", False),  # request methods are case-sensitive
        (["POST", "PUT"], "PUT", True),
        (["POST", "PUT"], "GET", False),
    ],
)
def test_method(methods: list[str], method: str, expected: bool) -> None:
    assert m({"method": methods})(req(method=method)) is expected


PROTO_CASES = [
    ("http", "http", "HTTP/1.1", True),
    ("http", "https", "HTTP/1.1", False),
    ("https", "https", "HTTP/2.0", True),
    ("HTTPS", "https", "HTTP/2.0", True),
    ("http/1.1", "http", "HTTP/1.1", True),
    ("http/1.1", "http", "HTTP/1.0", False),
    ("http/1.0", "http", "HTTP/1.0", True),
    ("http/1.1+", "http", "HTTP/2.0", True),
    ("http/1.1+", "http", "HTTP/1.0", False),
    ("http/2", "https", "HTTP/2.0", True),
    ("http/2", "https", "HTTP/1.1", False),
    ("http/2+", "https", "HTTP/3.0", True),
    ("http/3", "https", "HTTP/2.0", False),
    ("bogus", "http", "HTTP/1.1", False),
]


@pytest.mark.parametrize(("proto", "scheme", "req_proto", "expected"), PROTO_CASES)
def test_protocol(proto: str, scheme: str, req_proto: str, expected: bool) -> None:
    assert m({"protocol": proto})(req(scheme=scheme, proto=req_proto)) is expected


def test_protocol_grpc() -> None:
    matcher = m({"protocol": "grpc"})
    assert matcher(req(headers=[("Content-Type", "application/grpc+proto")]))
    assert not matcher(req(headers=[("Content-Type", "application/json")]))
    assert not matcher(req())


def test_tls_matcher() -> None:
    assert m({"tls": {}})(req(scheme="https"))
    assert not m({"tls": {}})(req(scheme="http"))
    assert not m({"tls": {"handshake_complete": False}})(req(scheme="https"))
    with pytest.raises(ValueError):
        m({"tls": {"bogus": 1}})


# ------------------------------------------------------------------------------------------
# header, header_regexp
# ------------------------------------------------------------------------------------------

H = [("X-Foo", "bar"), ("Accept", "text/html"), ("Accept", "application/json")]
HEADER_CASES = [
    ({"X-Foo": ["bar"]}, H, True),
    ({"x-foo": ["bar"]}, H, True),  # names are case-insensitive
    ({"X-Foo": ["BAR"]}, H, False),  # values are not
    ({"X-Foo": ["baz", "bar"]}, H, True),
    ({"X-Foo": ["*"]}, H, True),
    ({"X-Foo": ["b*"]}, H, True),
    ({"X-Foo": ["*r"]}, H, True),
    ({"X-Foo": ["*a*"]}, H, True),
    ({"X-Foo": ["*z*"]}, H, False),
    ({"Accept": ["application/*"]}, H, True),  # any of several values
    ({"X-Missing": ["*"]}, H, False),
    ({"X-Missing": None}, H, True),  # null: must be absent
    ({"X-Foo": None}, H, False),
    ({"X-Foo": []}, H, True),  # empty list: must be present (Caddy)
    ({"X-Missing": []}, H, False),
    ({"X-Foo": ["bar"], "Accept": ["text/html"]}, H, True),  # fields AND'ed
    ({"X-Foo": ["bar"], "Accept": ["text/css"]}, H, False),
    ({"Host": ["example.com"]}, [], True),  # Host comes from the request line
    ({"Host": ["*.com"]}, [], True),
    ({"X-Empty": [""]}, [("X-Empty", "")], True),
    ({"X-Empty": None}, [("X-Empty", "")], False),
]


@pytest.mark.parametrize(("spec", "headers", "expected"), HEADER_CASES)
def test_header(spec: dict[str, Any], headers: list[tuple[str, str]], expected: bool) -> None:
    assert m({"header": spec})(req(headers=headers)) is expected


def test_header_placeholder_value() -> None:
    matcher = m({"header": {"X-Token": ["{http.vars.token}"]}})
    assert matcher(req(headers=[("X-Token", "s3cret")], vars={"token": "s3cret"}))
    assert not matcher(req(headers=[("X-Token", "nope")], vars={"token": "s3cret"}))


def test_header_regexp_captures() -> None:
    matcher = m({"header_regexp": {"Cookie": {"name": "sess", "pattern": r"id=(\w+)"}}})
    r = req(headers=[("Cookie", "a=b"), ("Cookie", "id=abc123; x=y")])
    assert matcher(r)
    assert r.vars["http.regexp.sess.1"] == "abc123"
    assert r.vars["http.regexp.sess.0"] == "id=abc123"
    assert r.vars["http.regexp.1"] == "abc123"
    assert not matcher(req(headers=[("Cookie", "nothing")]))
    assert not matcher(req())


def test_header_regexp_host() -> None:
    matcher = m({"header_regexp": {"Host": {"name": "h", "pattern": r"^(\w+)\.example"}}})
    r = req(host="shop.example.com")
    assert matcher(r)
    assert r.vars["http.regexp.h.1"] == "shop"


# ------------------------------------------------------------------------------------------
# path_regexp
# ------------------------------------------------------------------------------------------


def test_path_regexp_captures_named_and_numbered() -> None:
    matcher = m({"path_regexp": {"name": "api", "pattern": r"^/api/(?P<ver>v\d+)/(.*)$"}})
    r = req("/api/v2/users/7")
    assert matcher(r)
    assert r.vars["http.regexp.api.0"] == "/api/v2/users/7"
    assert r.vars["http.regexp.api.1"] == "v2"
    assert r.vars["http.regexp.api.2"] == "users/7"
    assert r.vars["http.regexp.api.ver"] == "v2"
    assert r.vars["http.regexp.ver"] == "v2"


def test_path_regexp_is_case_sensitive_on_cleaned_decoded_path() -> None:
    matcher = m({"path_regexp": {"pattern": "^/Foo/bar$"}})
    assert matcher(req("/Foo//x/../bar"))
    assert not matcher(req("/foo/bar"))
    assert m({"path_regexp": {"pattern": "^/a b$"}})(req("/a%20b"))


def test_path_regexp_go_syntax() -> None:
    r = req("/id/42")
    assert m({"path_regexp": {"name": "x", "pattern": r"^/id/(?<num>\d+)\z"}})(r)
    assert r.vars["http.regexp.x.num"] == "42"


def test_path_regexp_unmatched_group_is_empty() -> None:
    r = req("/a")
    assert m({"path_regexp": {"name": "o", "pattern": "^/a(b)?"}})(r)
    assert r.vars["http.regexp.o.1"] == ""


def test_path_regexp_errors() -> None:
    with pytest.raises(ValueError, match="compiling matcher regexp"):
        m({"path_regexp": {"pattern": "("}})
    with pytest.raises(ValueError, match="invalid regexp name"):
        m({"path_regexp": {"name": "-", "pattern": "x"}})
    with pytest.raises(ValueError, match="unknown field"):
        m({"path_regexp": {"pattern": "x", "flags": "i"}})


def test_compile_go_regexp_translation() -> None:
    assert compile_go_regexp(r"(?<n>a)\z").fullmatch("a")
    assert compile_go_regexp(r"(?<=a)b").search("ab")  # lookbehind untouched
    assert compile_go_regexp(r"\\z").search("\\z")  # escaped backslash then z


# ------------------------------------------------------------------------------------------
# query
# ------------------------------------------------------------------------------------------

QUERY_CASES = [
    ({"a": ["1"]}, "a=1&b=2", True),
    ({"a": ["1"]}, "a=2", False),
    ({"a": ["1", "2"]}, "a=2", True),
    ({"a": ["1"]}, "a=2&a=1", True),
    ({"a": ["*"]}, "a=", True),
    ({"a": ["*"]}, "a", True),
    ({"a": ["*"]}, "b=1", False),
    ({"a": [""]}, "a=", True),
    ({"q": ["a b"]}, "q=a+b", True),
    ({"q": ["a b"]}, "q=a%20b", True),
    ({"a b": ["1"]}, "a+b=1", True),
    ({"a": ["1"], "b": ["2"]}, "a=1&b=2", True),
    ({"a": ["1"], "b": ["2"]}, "a=1", False),
    ({"a": ["1"]}, "a=1&bad=%zz", False),  # unparsable query never matches
    ({"a": ["1"]}, "a=1&x;y=1", False),
    ({"a": ["1"]}, "", False),
    ({"a": []}, "a=1", False),
    ({}, "", True),  # empty matcher: no query at all
    ({}, "a=1", False),
    ({}, "&", True),
]


@pytest.mark.parametrize(("spec", "query", "expected"), QUERY_CASES)
def test_query(spec: dict[str, list[str]], query: str, expected: bool) -> None:
    assert m({"query": spec})(req("/?" + query if query else "/")) is expected


def test_query_placeholders() -> None:
    matcher = m({"query": {"{http.vars.k}": ["{http.vars.v}"]}})
    assert matcher(req("/?lang=en", vars={"k": "lang", "v": "en"}))
    assert not matcher(req("/?lang=de", vars={"k": "lang", "v": "en"}))


# ------------------------------------------------------------------------------------------
# remote_ip, client_ip
# ------------------------------------------------------------------------------------------

IP_CASES = [
    (["192.0.2.0/24"], "192.0.2.77", True),
    (["192.0.2.0/24"], "198.51.100.1", False),
    (["192.0.2.10"], "192.0.2.10", True),
    (["192.0.2.10"], "192.0.2.11", False),
    (["10.1.2.3/8"], "10.200.0.1", True),  # host bits in the prefix are ignored
    (["2001:db8::/32"], "2001:db8::1", True),
    (["2001:db8::/32"], "2001:db9::1", False),
    (["::1"], "::1", True),
    (["192.0.2.0/24"], "::ffff:192.0.2.5", True),  # dual-stack socket form
    (["192.0.2.0/24"], "2001:db8::1", False),
    (["2001:db8::/32"], "192.0.2.1", False),
    (["private_ranges"], "10.0.0.1", True),
    (["private_ranges"], "172.20.1.1", True),
    (["private_ranges"], "192.168.1.1", True),
    (["private_ranges"], "127.0.0.1", True),
    (["private_ranges"], "fd12::1", True),
    (["private_ranges"], "::1", True),
    (["private_ranges"], "8.8.8.8", False),
    (["fe80::/10%eth0"], "fe80::1%eth0", True),
    (["fe80::/10%eth0"], "fe80::1%eth1", False),
    (["fe80::/10"], "fe80::1%eth1", True),
    (["192.0.2.0/24"], "not-an-ip", False),
    ([], "192.0.2.1", False),
]


@pytest.mark.parametrize(("ranges", "ip", "expected"), IP_CASES)
def test_remote_ip(ranges: list[str], ip: str, expected: bool) -> None:
    assert m({"remote_ip": {"ranges": ranges}})(req(remote_ip=ip)) is expected


@pytest.mark.parametrize(("ranges", "ip", "expected"), IP_CASES)
def test_client_ip(ranges: list[str], ip: str, expected: bool) -> None:
    matcher = m({"client_ip": {"ranges": ranges}})
    assert matcher(req(client_ip=ip, remote_ip="203.0.113.99")) is expected


def test_remote_ip_ignores_client_ip() -> None:
    matcher = m({"remote_ip": {"ranges": ["10.0.0.0/8"]}})
    assert not matcher(req(remote_ip="203.0.113.1", client_ip="10.0.0.1"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"ranges": ["forwarded"]}, "'forwarded' option is no longer supported"),
        ({"forwarded": True}, "'forwarded' option is no longer supported"),
        ({"ranges": ["10.0.0.0/33"]}, "parsing CIDR expression '10.0.0.0/33'"),
        ({"ranges": ["10.0.0.300"]}, "invalid IP address: '10.0.0.300'"),
        ({"ranges": "10.0.0.1"}, "must be a list"),
        ({"bogus": []}, "unknown field"),
    ],
)
def test_remote_ip_errors(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        m({"remote_ip": spec})


def test_remote_ip_env_placeholder() -> None:
    import os

    os.environ["PYPROXY_TEST_NET"] = "198.51.100.0/24"
    try:
        matcher = m({"remote_ip": {"ranges": ["{env.PYPROXY_TEST_NET}"]}})
    finally:
        del os.environ["PYPROXY_TEST_NET"]
    assert matcher(req(remote_ip="198.51.100.9"))


# ------------------------------------------------------------------------------------------
# not, vars, sets, registry, errors
# ------------------------------------------------------------------------------------------


def test_not() -> None:
    matcher = m({"not": [{"path": ["/admin*"]}]})
    assert matcher(req("/public"))
    assert not matcher(req("/admin/x"))
    either = m({"not": [{"path": ["/a"]}, {"method": ["POST"]}]})
    assert either(req("/b"))
    assert not either(req("/a"))
    assert not either(req("/b", method="POST"))
    both = m({"not": [{"path": ["/a"], "method": ["POST"]}]})
    assert both(req("/a"))
    assert not both(req("/a", method="POST"))
    assert m({"not": []})(req())


def test_vars_matcher() -> None:
    matcher = m({"vars": {"role": ["admin", "root"]}})
    assert matcher(req(vars={"role": "root"}))
    assert not matcher(req(vars={"role": "user"}))
    assert not matcher(req())
    assert m({"vars": {"role": [""]}})(req())
    assert m({"vars": {"{http.request.method}": ["GET"]}})(req())
    assert m({"vars": {"client_ip": ["192.0.2.10"]}})(req())
    assert m({"vars": {"n": ["3"]}})(req(vars={"n": 3}))


def test_vars_regexp_matcher() -> None:
    r = req(vars={"ua": "curl/8.1"})
    assert m({"vars_regexp": {"ua": {"name": "c", "pattern": r"curl/(\d+)"}}})(r)
    assert r.vars["http.regexp.c.1"] == "8"


def test_sets_or_and() -> None:
    matcher = compile_matcher_sets([{"host": ["a.com"], "path": ["/x"]}, {"method": ["DELETE"]}])
    assert matcher(req("/x", host="a.com"))
    assert not matcher(req("/y", host="a.com"))
    assert not matcher(req("/x", host="b.com"))
    assert matcher(req("/y", host="b.com", method="DELETE"))


@pytest.mark.parametrize("match_json", [None, [], [{}]])
def test_empty_match_matches_everything(match_json: Any) -> None:
    assert compile_matcher_sets(match_json)(req("/anything"))


def test_three_matchers_in_a_set() -> None:
    matcher = m({"host": ["a.com"], "path": ["/x"], "method": ["GET"]})
    assert matcher(req("/x", host="a.com"))
    assert not matcher(req("/x", host="a.com", method="POST"))


def test_expression_not_supported() -> None:
    with pytest.raises(ValueError, match="matcher expression is not supported"):
        compile_matcher_sets([{"expression": "{method} == 'GET'"}])


def test_unknown_matcher_is_named() -> None:
    with pytest.raises(ValueError, match="unknown matcher: frobnicate"):
        compile_matcher_sets([{"frobnicate": ["x"]}])


def test_register_matcher() -> None:
    register_matcher("test_always_false", lambda spec: lambda r: False)
    assert not compile_matcher_sets([{"test_always_false": {}}])(req())


def test_bad_value_types() -> None:
    with pytest.raises(ValueError):
        m({"method": "GET"})
    with pytest.raises(ValueError):
        m({"header": {"X": "y"}})
    with pytest.raises(ValueError):
        m({"query": {"a": "1"}})
    with pytest.raises(ValueError):
        compile_matcher_sets([["path"]])  # type: ignore[list-item]


# ------------------------------------------------------------------------------------------
# response matcher
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actual", "configured", "expected"),
    [
        (200, 200, True),
        (204, 2, True),
        (302, 2, False),
        (599, 5, True),
        (404, 404, True),
        (404, 4, True),
        (200, 201, False),
    ],
)
def test_status_code_matches(actual: int, configured: int, expected: bool) -> None:
    assert status_code_matches(actual, configured) is expected


def test_response_matcher() -> None:
    matcher = compile_response_matcher(
        {"status_code": [2, 304], "headers": {"Content-Type": ["text/*"], "X-Skip": None}}
    )
    html = Headers([("Content-Type", "text/html")])
    assert matcher(200, html)
    assert matcher(304, html)
    assert not matcher(404, html)
    assert not matcher(200, Headers([("Content-Type", "image/png")]))
    assert not matcher(200, Headers([("Content-Type", "text/html"), ("X-Skip", "1")]))
    assert compile_response_matcher({})(500, Headers())
    assert compile_response_matcher(None)(500, Headers())
    assert compile_response_matcher({"headers": {"X": []}})(200, Headers([("x", "")]))
    # response header values are not templated
    assert compile_response_matcher({"headers": {"X": ["{a}"]}})(200, Headers([("X", "{a}")]))


def test_response_matcher_errors() -> None:
    with pytest.raises(ValueError):
        compile_response_matcher({"status": [200]})
    with pytest.raises(ValueError):
        compile_response_matcher({"status_code": ["200"]})
