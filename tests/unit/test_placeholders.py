"""Placeholder templates (proxy.placeholders): Caddy's replacer keys, escapes, unknown keys."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from request_fakes import FakeRequest, request_for

from proxy.header_ops import Headers
from proxy.placeholders import (
    compile_template,
    has_placeholders,
    parse_query,
    parse_query_strict,
    replace_global,
    split_host_port,
    to_placeholder_string,
)

Req = FakeRequest


req = request_for


def render(text: str, r: Req | None = None, **kw: Any) -> str:
    return compile_template(text, **kw)(r if r is not None else req())


R = req(
    "/docs/a%20b/index.html?lang=en&tag=x&tag=y&q=a+b",
    method="POST",
    host="Shop.Example.com:8443",
    proto="HTTP/2.0",
    scheme="https",
    remote_ip="2001:db8::7",
    remote_port=4431,
    client_ip="198.51.100.4",
    headers=[
        ("User-Agent", "curl/8"),
        ("Accept", "a"),
        ("Accept", "b"),
        ("Cookie", 'sid=abc; Theme="dark"'),
    ],
    vars={
        "http.regexp.api.1": "v2",
        "http.reverse_proxy.upstream.hostport": "10.0.0.5:8080",
        "http.error.status_code": 502,
        "role": "admin",
        "flag": True,
        "tls": {"version": "tls1.3", "server_name": "shop.example.com"},
    },
)

CASES = [
    ("{http.request.method}", "POST"),
    ("{http.request.scheme}", "https"),
    ("{http.request.proto}", "HTTP/2.0"),
    ("{http.request.proto_name}", "HTTP/2"),
    ("{http.request.host}", "Shop.Example.com"),
    ("{http.request.hostport}", "Shop.Example.com:8443"),
    ("{http.request.port}", "8443"),
    ("{http.request.host.labels.0}", "com"),
    ("{http.request.host.labels.2}", "shop"),
    ("{http.request.host.labels.9}", ""),
    ("{http.request.uri}", "/docs/a%20b/index.html?lang=en&tag=x&tag=y&q=a+b"),
    ("{http.request.uri.path}", "/docs/a b/index.html"),
    ("{http.request.uri.path.dir}", "/docs/a b/"),
    ("{http.request.uri.path.file}", "index.html"),
    ("{http.request.uri.path.file.base}", "index"),
    ("{http.request.uri.path.file.ext}", ".html"),
    ("{http.request.uri.path.0}", "docs"),
    ("{http.request.uri.path.1}", "a b"),
    ("{http.request.uri.path.7}", ""),
    ("{http.request.uri.path_escaped}", "%2Fdocs%2Fa+b%2Findex.html"),
    ("{http.request.uri.query}", "lang=en&tag=x&tag=y&q=a+b"),
    ("{http.request.uri.prefixed_query}", "?lang=en&tag=x&tag=y&q=a+b"),
    ("{http.request.uri.query.lang}", "en"),
    ("{http.request.uri.query.tag}", "x,y"),
    ("{http.request.uri.query.q}", "a b"),
    ("{http.request.uri.query.missing}", ""),
    ("{http.request.header.user-agent}", "curl/8"),
    ("{http.request.header.Accept}", "a,b"),
    ("{http.request.header.X-None}", ""),
    ("{http.request.cookie.sid}", "abc"),
    ("{http.request.cookie.theme}", "dark"),
    ("{http.request.cookie.none}", "{http.request.cookie.none}"),  # missing cookie: unknown
    ("{http.request.remote}", "[2001:db8::7]:4431"),
    ("{http.request.remote.host}", "2001:db8::7"),
    ("{http.request.remote.port}", "4431"),
    ("{http.request.remote.host/24,32}", "2001:db8::/32"),
    ("{http.request.tls.version}", "tls1.3"),
    ("{http.request.tls.server_name}", "shop.example.com"),
    ("{http.request.tls.cipher_suite}", "{http.request.tls.cipher_suite}"),
    ("{http.request.orig_uri}", "/docs/a%20b/index.html?lang=en&tag=x&tag=y&q=a+b"),
    ("{http.request.orig_method}", "POST"),
    ("{http.regexp.api.1}", "v2"),
    ("{re.api.1}", "v2"),
    ("{http.regexp.other.1}", "{http.regexp.other.1}"),
    ("{http.reverse_proxy.upstream.hostport}", "10.0.0.5:8080"),
    ("{http.error.status_code}", "502"),
    ("{http.vars.role}", "admin"),
    ("{http.vars.flag}", "true"),
    ("{http.vars.nothing}", ""),  # vars are always known
    ("{http.vars.client_ip}", "198.51.100.4"),
    ("{system.slash}", "/"),
    ("prefix-{http.request.method}-{http.vars.role}-suffix", "prefix-POST-admin-suffix"),
    ("{http.request.method}{http.vars.role}{nope}{http.request.scheme}.", "POSTadmin{nope}https."),
    ("<{nope}|{http.request.method}>", "<{nope}|POST>"),
    ("{unknown.key}", "{unknown.key}"),
    ("a {unknown} b", "a {unknown} b"),
    ("{}", "{}"),
    ("{a{http.request.method}", "{aPOST"),
    ("{unclosed", "{unclosed"),
    ("}", "}"),
    ("\\{http.request.method\\}", "{http.request.method}"),
    ("\\{{http.request.method}\\}", "{POST}"),
    ("C:\\path", "C:\\path"),  # no braces: backslashes untouched
    ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_keep_unknown(text: str, expected: str) -> None:
    assert render(text, R) == expected


EMPTY_CASES = [
    ("{unknown.key}", ""),
    ("a{unknown}b", "ab"),
    ("{http.request.cookie.none}", ""),
    ("{http.request.method}", "POST"),
    ("{}", ""),
    ("x{a{http.request.method}y", "xy"),
    ("{http.request.method}{nope}{http.vars.role}{nope2}", "POSTadmin"),
]


@pytest.mark.parametrize(("text", "expected"), EMPTY_CASES)
def test_empty_unknown(text: str, expected: str) -> None:
    assert render(text, R, empty_unknown=True) == expected


def test_constant_template_is_constant() -> None:
    tpl = compile_template("plain text")
    assert tpl(req()) == "plain text"
    assert tpl(R) == "plain text"
    assert not has_placeholders("plain text")
    assert has_placeholders("a {b} c")
    assert not has_placeholders("a } {")


def test_host_without_port_and_ipv6() -> None:
    assert render("{http.request.host}", req(host="[::1]:8080")) == "::1"
    assert render("{http.request.port}", req(host="[::1]:8080")) == "8080"
    assert render("{http.request.host}", req(host="example.com")) == "example.com"
    assert render("{http.request.port}", req(host="example.com")) == ""
    assert render("{http.request.remote}", req(remote_ip="192.0.2.1", remote_port=9)) == (
        "192.0.2.1:9"
    )
    assert render("{http.request.remote.host/24}", req(remote_ip="192.0.2.77")) == ("192.0.2.0/24")


def test_orig_vars_after_rewrite() -> None:
    r = req(
        "/new?b=2",
        vars={
            "_orig_uri": "/old?a=1",
            "_orig_path": "/old/x.txt",
            "_orig_query": "a=1",
            "_orig_method": "GET",
        },
    )
    assert render("{http.request.orig_uri}", r) == "/old?a=1"
    assert render("{http.request.orig_uri.path}", r) == "/old/x.txt"
    assert render("{http.request.orig_uri.path.file}", r) == "x.txt"
    assert render("{http.request.orig_uri.path.dir}", r) == "/old/"
    assert render("{http.request.orig_uri.prefixed_query}", r) == "?a=1"
    assert render("{http.request.uri}", r) == "/new?b=2"


def test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYPROXY_TPL_TEST", "hello")
    tpl = compile_template("x-{env.PYPROXY_TPL_TEST}-y")
    assert tpl(req()) == "x-hello-y"
    monkeypatch.setenv("PYPROXY_TPL_TEST", "again")
    assert tpl(req()) == "x-again-y"  # read at evaluation time, like Caddy
    assert render("{env.PYPROXY_SURELY_UNSET_VAR}") == ""
    assert replace_global("{env.PYPROXY_TPL_TEST}/{http.request.host}") == "again/"


def test_time_with_injected_clock() -> None:
    clock = lambda: 1_700_000_000.25  # noqa: E731
    assert render("{time.now.unix}", clock=clock) == "1700000000"
    assert render("{time.now.unix_ms}", clock=clock) == "1700000000250"
    assert render("{time.now.http}", clock=clock) == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert re.fullmatch(
        r"\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}",
        render("{time.now.common_log}", clock=clock),
    )
    assert re.match(r"2023-11-1\d \d{2}:\d{2}:\d{2}\.25 ", render("{time.now}", clock=clock))
    assert render("{time.now.year}", clock=clock) in ("2023", "2024")


def test_system_placeholders() -> None:
    assert render("{system.hostname}")
    assert render("{system.os}") == "linux" or render("{system.os}")
    assert render("{system.wd}") == os.getcwd()
    assert render("{system.arch}")


def test_file_placeholder(tmp_path: Any) -> None:
    f = tmp_path / "token.txt"
    f.write_text("s3cret\r\n")
    assert render(f"{{file.{f}}}") == "s3cret"
    assert render(f"{{file.{tmp_path}/missing}}") == ""


def test_uuid_is_stable_per_request() -> None:
    r = req()
    tpl = compile_template("{http.request.uuid}")
    first = tpl(r)
    assert re.fullmatch(r"[0-9a-f-]{36}", first)
    assert tpl(r) == first
    assert tpl(req()) != first


def test_response_header_placeholder() -> None:
    tpl = compile_template("{http.response.header.Content-Type}")
    assert tpl(req(), Headers([("content-type", "text/html")])) == "text/html"
    assert tpl(req()) == "{http.response.header.Content-Type}"


def test_tls_absent_on_plain_http() -> None:
    assert render("{http.request.tls.version}", req()) == "{http.request.tls.version}"
    assert render("{http.request.tls.version}", req(), empty_unknown=True) == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        ("s", "s"),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (2.5, "2.5"),
        (2.0, "2"),
        (1e21, "1000000000000000000000"),
        (b"b", "b"),
        (["a", 1], "[a 1]"),
    ],
)
def test_to_placeholder_string(value: Any, expected: str) -> None:
    assert to_placeholder_string(value) == expected


@pytest.mark.parametrize(
    ("hostport", "expected"),
    [
        ("a.com:80", ("a.com", "80")),
        ("a.com", None),
        ("[::1]:443", ("::1", "443")),
        ("[::1]", None),
        ("::1", None),
        ("a.com:", ("a.com", "")),
    ],
)
def test_split_host_port(hostport: str, expected: tuple[str, str] | None) -> None:
    assert split_host_port(hostport) == expected


def test_parse_query() -> None:
    assert parse_query("a=1&a=2&b=&c") == {"a": ["1", "2"], "b": [""], "c": [""]}
    assert parse_query_strict("a=%zz&b=1") == ({"b": ["1"]}, False)
    assert parse_query_strict("x;y=1") == ({}, False)
    assert parse_query_strict("") == ({}, True)
    assert parse_query("k=%E2%82%AC") == {"k": ["€"]}


@given(st.text(max_size=40))
def test_templates_never_raise(text: str) -> None:
    result = compile_template(text)(R)
    assert isinstance(result, str)
    if "{" not in text and "}" not in text:
        assert result == text


def test_url_host_brackets_ipv6_literals() -> None:
    assert render("{pyproxy.request.url_host}", req(host="[::1]:8080")) == "[::1]"
    assert render("{pyproxy.request.url_host}", req(host="[2001:db8::1]")) == "[2001:db8::1]"
    assert render("{pyproxy.request.url_host}", req(host="example.com:80")) == "example.com"
