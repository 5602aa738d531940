"""Headers container and Caddy's header operations (proxy.header_ops)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from request_fakes import FakeRequest

from proxy.header_ops import (
    Headers,
    canonical_header_name,
    compile_header_ops,
    compile_headers_handler,
)


@dataclass
class Req(FakeRequest):
    uri: str = "/p?q=1"
    path: str = "/p"
    raw_path: str = "/p"
    query: str = "q=1"
    scheme: str = "https"


def apply(
    ops: dict[str, Any], items: list[tuple[str, str]], r: Req | None = None
) -> list[tuple[str, str]]:
    compiled = compile_header_ops(ops)
    assert compiled is not None
    headers = Headers(items)
    compiled.apply(headers, r or Req())
    return headers.items()


# ------------------------------------------------------------------------------------------
# Headers container
# ------------------------------------------------------------------------------------------


def test_headers_basic_access() -> None:
    h = Headers([("Content-Type", "text/html"), ("Set-Cookie", "a=1"), ("set-cookie", "b=2")])
    assert h.get("content-type") == "text/html"
    assert h.get("CONTENT-TYPE") == "text/html"
    assert h.get("x-missing") is None
    assert h.get("x-missing", "d") == "d"
    assert h.getall("Set-Cookie") == ["a=1", "b=2"]
    assert h.getall("nope") == []
    assert "SET-COOKIE" in h
    assert "nope" not in h
    assert 3 not in h
    assert len(h) == 3
    assert list(h) == h.items()
    assert h.names() == ["content-type", "set-cookie"]
    assert h.header("content-type") == "text/html"
    assert h.header_values("set-cookie") == ["a=1", "b=2"]


def test_headers_set_add_delete() -> None:
    h = Headers([("A", "1"), ("B", "2"), ("a", "3")])
    h.set("a", "9")
    assert h.items() == [("a", "9"), ("B", "2")]  # position of the first, duplicates gone
    h.set("C", "4")
    assert h.items()[-1] == ("C", "4")
    h.add("b", "5")
    assert h.getall("B") == ["2", "5"]
    assert h.delete("B") == 2
    assert h.delete("B") == 0
    assert h.setdefault("a", "x") == "9"
    assert h.setdefault("d", "x") == "x"
    assert h.delete_where(lambda n: n in ("a", "d")) == 2
    assert h.items() == [("C", "4")]
    h.clear()
    assert len(h) == 0


def test_headers_copy_eq_encode_from_raw() -> None:
    h = Headers.from_raw([(b"Host", b"a.com"), (b"X-Bin", b"\xe9")])
    assert h.get("host") == "a.com"
    assert h.get("x-bin") == "\xe9"
    c = h.copy()
    assert c == h
    c.add("X", "1")
    assert c != h
    assert h.encode() == b"Host: a.com\r\nX-Bin: \xe9\r\n"
    assert Headers([("X", "€")]).encode() == "X: €\r\n".encode()
    assert repr(Headers([("A", "1")])) == "Headers([('A', '1')])"


@given(st.lists(st.tuples(st.sampled_from(["A", "a", "B", "c-D"]), st.text(max_size=3))))
def test_headers_set_leaves_exactly_one(items: list[tuple[str, str]]) -> None:
    h = Headers(items)
    h.set("A", "v")
    assert h.getall("a") == ["v"]
    others = [(n, v) for n, v in items if n.lower() != "a"]
    assert [(n, v) for n, v in h.items() if n.lower() != "a"] == others


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("x-foo-bar", "X-Foo-Bar"),
        ("CONTENT-TYPE", "Content-Type"),
        ("www-authenticate", "Www-Authenticate"),
        ("x foo", "x foo"),
        ("", ""),
        ("a--b", "A--B"),
    ],
)
def test_canonical_header_name(name: str, expected: str) -> None:
    assert canonical_header_name(name) == expected


# ------------------------------------------------------------------------------------------
# ops
# ------------------------------------------------------------------------------------------


def test_add_keeps_existing() -> None:
    assert apply({"add": {"X-A": ["1", "2"]}}, [("x-a", "0")]) == [
        ("x-a", "0"),
        ("X-A", "1"),
        ("X-A", "2"),
    ]


def test_set_replaces_and_joins() -> None:
    assert apply({"set": {"x-a": ["1", "2"]}}, [("X-A", "0"), ("X-A", "00")]) == [("X-A", "1,2")]
    assert apply({"set": {"X-Empty": []}}, []) == [("X-Empty", "")]


DELETE_CASES = [
    (["X-A"], ["X-B", "Y-A", "XX-A"]),
    (["x-a"], ["X-B", "Y-A", "XX-A"]),
    (["X-*"], ["Y-A", "XX-A"]),
    (["*-A"], ["X-B"]),
    (["*x-*"], ["Y-A"]),
    (["Nope"], ["X-A", "X-B", "Y-A", "XX-A"]),
    (["*"], []),
]


@pytest.mark.parametrize(("deletes", "left"), DELETE_CASES)
def test_delete_patterns(deletes: list[str], left: list[str]) -> None:
    items = [("X-A", "1"), ("X-B", "2"), ("Y-A", "3"), ("XX-A", "4")]
    assert [n for n, _ in apply({"delete": deletes}, items)] == left


def test_order_delete_star_add_set_delete_replace() -> None:
    # Caddy: delete "*" first, then add, set, other deletes, replace.
    ops = {
        "delete": ["*", "X-Gone"],
        "add": {"X-Gone": ["added"], "X-Keep": ["a-value"]},
        "set": {"X-Set": ["s-value"]},
        "replace": {"*": [{"search": "value", "replace": "VALUE"}]},
    }
    assert apply(ops, [("Old", "1")]) == [("X-Keep", "a-VALUE"), ("X-Set", "s-VALUE")]


def test_set_then_delete_same_field_deletes() -> None:
    assert apply({"set": {"X": ["1"]}, "delete": ["X"]}, []) == []


REPLACE_CASES = [
    (
        {"Location": [{"search": "http://", "replace": "https://"}]},
        [("location", "http://a/http://")],
        [("location", "https://a/https://")],
    ),
    (
        {"X": [{"search_regexp": "(\\d+)", "replace": "<$1>"}]},
        [("X", "a1b22")],
        [("X", "a<1>b<22>")],
    ),
    ({"X": [{"search_regexp": "(?P<n>\\d)", "replace": "${n}$$"}]}, [("X", "7")], [("X", "7$")]),
    ({"X": [{"search_regexp": "a", "replace": "\\1"}]}, [("X", "a")], [("X", "\\1")]),
    ({"X": [{"search_regexp": "(a)", "replace": "$2$x$1"}]}, [("X", "a")], [("X", "a")]),
    ({"X": [{"search_regexp": "(a)", "replace": "$1x"}]}, [("X", "a")], [("X", "")]),
    ({"X": [{"search_regexp": "(a)", "replace": "${1}x"}]}, [("X", "a")], [("X", "ax")]),
    ({"X": [{"search_regexp": "(a)", "replace": "$"}]}, [("X", "a")], [("X", "$")]),
    (
        {"X": [{"search": "a", "replace": "b"}, {"search": "b", "replace": "c"}]},
        [("X", "a")],
        [("X", "c")],
    ),
    (
        {"*": [{"search": "o", "replace": "0"}]},
        [("A", "foo"), ("B", "bob")],
        [("A", "f00"), ("B", "b0b")],
    ),
    (
        {"X": [{"search": "a", "replace": "b"}]},
        [("Y", "a"), ("X", "a"), ("x", "aa")],
        [("Y", "a"), ("X", "b"), ("x", "bb")],
    ),
]


@pytest.mark.parametrize(("spec", "items", "expected"), REPLACE_CASES)
def test_replace(
    spec: dict[str, Any], items: list[tuple[str, str]], expected: list[tuple[str, str]]
) -> None:
    assert apply({"replace": spec}, items) == expected


def test_placeholders_in_names_and_values() -> None:
    r = Req(vars={"http.reverse_proxy.upstream.hostport": "10.0.0.1:80", "hname": "x-dyn"})
    ops = {
        "set": {
            "X-Upstream": ["{http.reverse_proxy.upstream.hostport}"],
            "X-Host": ["{http.request.host}"],
            "X-Unknown": ["{nope}"],  # unknown placeholders are kept in header values
            "{http.vars.hname}": ["yes"],
        },
        "add": {"X-Q": ["q={http.request.uri.query.q}"]},
    }
    assert dict(apply(ops, [], r)) == {
        "X-Upstream": "10.0.0.1:80",
        "X-Host": "example.com",
        "X-Unknown": "{nope}",
        "X-Dyn": "yes",
        "X-Q": "q=1",
    }


def test_placeholder_values_cannot_inject_lines() -> None:
    r = Req(query="x=a%0d%0aSet-Cookie:%20evil", uri="/?x=...")
    out = apply({"set": {"X-Echo": ["{http.request.uri.query.x}"]}}, [], r)
    assert out == [("X-Echo", "a  Set-Cookie: evil")]
    assert apply({"set": {"X": ["a\r\nb"]}}, []) == [("X", "a  b")]


def test_dynamic_delete_and_regexp() -> None:
    r = Req(vars={"drop": "X-*", "re": "s(e)cret"})
    ops = {
        "delete": ["{http.vars.drop}"],
        "replace": {"Y": [{"search_regexp": "{http.vars.re}", "replace": "<$1>"}]},
    }
    assert apply(ops, [("X-A", "1"), ("Y", "a secret")], r) == [("Y", "a <e>")]
    r_bad = Req(vars={"drop": "", "re": "("})
    assert apply(ops, [("Y", "(x")], r_bad) == [("Y", "(x")]  # bad regexp: skipped


def test_regexp_with_braces_is_a_literal_regexp() -> None:
    assert apply(
        {"replace": {"X": [{"search_regexp": "a{2}", "replace": "b"}]}}, [("X", "aaa")]
    ) == [("X", "ba")]


def test_apply_accepts_pair_list() -> None:
    compiled = compile_header_ops({"add": {"X": ["1"]}})
    assert compiled is not None
    pairs = [("A", "0")]
    out = compiled.apply(pairs, Req())
    assert isinstance(out, Headers)
    assert out.items() == [("A", "0"), ("X", "1")]
    assert pairs == [("A", "0")]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"replace": {"X": [{"search": "a", "search_regexp": "b"}]}},
            "cannot specify both a substring search and a regular expression search for field 'X'",
        ),
        ({"replace": {"X": [{"search_regexp": "("}]}}, "compiling matcher regexp"),
        ({"replace": {"X": [{"find": "a"}]}}, "unknown field"),
        ({"bogus": {}}, "unknown field"),
        ({"add": {"X": "1"}}, "must be a list"),
        ({"delete": "X"}, "must be a list"),
    ],
)
def test_errors(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_header_ops(spec)


def test_empty_ops() -> None:
    assert compile_header_ops(None) is None
    assert compile_header_ops({}) is None
    ops = compile_header_ops({"add": {}})
    assert ops is not None and ops.is_empty


# ------------------------------------------------------------------------------------------
# handler: request / response, require, deferred
# ------------------------------------------------------------------------------------------


def test_handler_request_and_immediate_response() -> None:
    handler = compile_headers_handler(
        {
            "handler": "headers",
            "request": {"set": {"X-Req": ["1"]}},
            "response": {"set": {"X-Resp": ["2"]}},
        }
    )
    assert handler.request is not None and handler.response is not None
    assert not handler.response.apply_on_write
    req_h = handler.request.apply(Headers(), Req())
    assert req_h.items() == [("X-Req", "1")]
    resp_h = Headers()
    assert handler.response.apply(200, resp_h, Req())
    assert resp_h.items() == [("X-Resp", "2")]


def test_handler_response_require_and_deferred() -> None:
    handler = compile_headers_handler(
        {
            "response": {
                "require": {"status_code": [2], "headers": {"Content-Type": ["text/*"]}},
                "set": {"Cache-Control": ["max-age=60"]},
            }
        }
    )
    resp = handler.response
    assert resp is not None and resp.apply_on_write and not resp.deferred
    ok = Headers([("Content-Type", "text/css")])
    assert resp.apply(200, ok, Req())
    assert ok.get("cache-control") == "max-age=60"
    img = Headers([("Content-Type", "image/png")])
    assert not resp.apply(200, img, Req())
    assert "cache-control" not in img
    err = Headers([("Content-Type", "text/html")])
    assert not resp.apply(500, err, Req())

    deferred = compile_headers_handler({"response": {"deferred": True, "delete": ["Server"]}})
    assert deferred.response is not None and deferred.response.apply_on_write
    h = Headers([("Server", "upstream"), ("X", "1")])
    deferred.response.apply(200, h, Req())
    assert h.items() == [("X", "1")]


def test_handler_response_placeholder_reads_response_headers() -> None:
    handler = compile_headers_handler(
        {
            "response": {
                "deferred": True,
                "set": {"X-Type-Copy": ["{http.response.header.Content-Type}"]},
            }
        }
    )
    assert handler.response is not None
    h = Headers([("Content-Type", "text/plain")])
    handler.response.apply(200, h, Req())
    assert h.get("x-type-copy") == "text/plain"


def test_handler_require_without_ops() -> None:
    handler = compile_headers_handler({"response": {"require": {"status_code": [200]}}})
    assert handler.response is not None and handler.response.ops is None
    assert handler.response.apply(200, Headers(), Req())


def test_handler_errors_and_empty() -> None:
    empty = compile_headers_handler(None)
    assert empty.request is None and empty.response is None
    with pytest.raises(ValueError, match="unknown field"):
        compile_headers_handler({"requests": {}})
    with pytest.raises(ValueError, match="unknown field"):
        compile_headers_handler({"response": {"deffered": True}})
    with pytest.raises(ValueError, match="must be a bool"):
        compile_headers_handler({"response": {"deferred": "yes"}})
