"""The `header` / `request_header` directives and the shared header-op syntax."""

from __future__ import annotations

from typing import Any

import pytest

import config.adapt.headers  # noqa: F401  (registers the directives)
from config.adapt.headers import caddyfile_header_op
from config.adapt.helper import DIRECTIVES, Helper
from config.caddyfile.dispenser import Dispenser
from config.caddyfile.lexer import tokenize
from config.errors import ConfigError


def routes(text: str, matcher_defs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    tokens = tokenize(text, "Caddyfile")
    helper = Helper(Dispenser(tokens), matcher_defs=matcher_defs or {})
    return [v.value for v in DIRECTIVES[tokens[0].text](helper)]


def response(text: str) -> dict[str, Any]:
    (route,) = routes(text)
    (handler,) = route["handle"]
    assert handler["handler"] == "headers"
    result: dict[str, Any] = handler["response"]
    return result


def test_set_add_delete_default() -> None:
    assert response('header Denis "Ritchie"') == {"set": {"Denis": ["Ritchie"]}}
    assert response("header +edsger Dijkstra") == {"add": {"Edsger": ["Dijkstra"]}}
    # deletes are deferred so they also remove headers added later by the proxy
    assert response("header -Wolfram") == {"delete": ["Wolfram"], "deferred": True}
    assert response('header ?John "von Neumann"') == {
        "require": {"headers": {"John": None}},
        "set": {"John": ["von Neumann"]},
    }


def test_deferred_set_and_replace() -> None:
    assert response("header >Set Defer") == {"set": {"Set": ["Defer"]}, "deferred": True}
    assert response("header >Replace Deferred Replacement") == {
        "replace": {"Replace": [{"search_regexp": "Deferred", "replace": "Replacement"}]},
        "deferred": True,
    }


def test_replace_keeps_placeholders_and_field_spelling() -> None:
    r = response('header Test-Dynamic ":{http.request.local.port}" "DYNAMIC-WORKS"')
    assert r == {
        "replace": {
            "Test-Dynamic": [
                {"search_regexp": ":{http.request.local.port}", "replace": "DYNAMIC-WORKS"}
            ]
        }
    }


def test_block_splits_default_ops_into_second_handler() -> None:
    text = 'header {\n  Grace: "Hopper"\n  +Ray "Solomonoff"\n  ?Tim "Berners-Lee"\n  defer\n}'
    first, second = routes(text)
    assert first["handle"][0]["response"] == {
        "set": {"Grace": ["Hopper"]},
        "add": {"Ray": ["Solomonoff"]},
        "deferred": True,
    }
    assert second["handle"][0]["response"] == {
        "require": {"headers": {"Tim": None}},
        "set": {"Tim": ["Berners-Lee"]},
    }


def test_match_block_and_single_line_match() -> None:
    r = response("header {\n +Link Foo\n +Link Bar\n match status 200\n}")
    assert r == {"add": {"Link": ["Foo", "Bar"]}, "require": {"status_code": [200]}}
    r = response("header {\n X a\n match {\n  status 2xx\n  header Content-Type text/*\n }\n}")
    assert r["require"] == {"status_code": [2], "headers": {"Content-Type": ["text/*"]}}


def test_named_matcher_goes_into_the_route() -> None:
    defs = {"@images": {"path": ["/images/*"]}}
    (route,) = routes('header @images Cache-Control "public"', defs)
    assert route["match"] == [{"path": ["/images/*"]}]
    assert route["handle"][0]["response"] == {"set": {"Cache-Control": ["public"]}}


def test_path_matcher_token() -> None:
    (route,) = routes("header /api/* X-Api 1")
    assert route["match"] == [{"path": ["/api/*"]}]


def test_empty_header_directive_produces_nothing() -> None:
    assert routes("header") == []


def test_args_and_block_together_is_an_error() -> None:
    with pytest.raises(ConfigError, match="cannot specify headers in both arguments and block"):
        routes("header X a {\n Y b\n}")


def test_request_header() -> None:
    (route,) = routes("request_header -Authorization")
    assert route["handle"] == [{"handler": "headers", "request": {"delete": ["Authorization"]}}]
    (route,) = routes("request_header x-a b")
    assert route["handle"][0]["request"] == {"set": {"X-A": ["b"]}}


def test_default_op_is_response_only() -> None:
    with pytest.raises(ConfigError, match=r"modifier \('\?'\) can only be used on response"):
        routes("request_header ?X a")
    ops: dict[str, Any] = {}
    with pytest.raises(ValueError, match="'\\?'"):
        caddyfile_header_op(ops, "?X", "a", None)


def test_caddyfile_header_op_does_not_defer() -> None:
    ops: dict[str, Any] = {}
    caddyfile_header_op(ops, "-Server", "", None)
    caddyfile_header_op(ops, ">X-A", "1", None)
    assert ops == {"delete": ["Server"], "set": {"X-A": ["1"]}}
