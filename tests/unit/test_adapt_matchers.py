"""Named matcher definitions and response matchers → Caddy's matcher JSON."""

from __future__ import annotations

from typing import Any

import pytest

from config.adapt.matchers import (
    canonical_header_key,
    go_atoi,
    parse_matcher_definitions,
    parse_named_response_matcher,
    parse_nested_matcher_set,
)
from config.caddyfile.dispenser import Dispenser
from config.caddyfile.lexer import tokenize
from config.errors import ConfigError


def define(text: str, existing: dict[str, Any] | None = None) -> dict[str, Any]:
    matchers: dict[str, Any] = dict(existing or {})
    parse_matcher_definitions(Dispenser(tokenize(text, "Caddyfile")), matchers)
    return matchers


def test_single_line_path_matcher() -> None:
    assert define("@static path /css/* /js/*") == {"@static": {"path": ["/css/*", "/js/*"]}}


def test_block_merges_same_type_and_keeps_different_types() -> None:
    m = define("@api {\n  path /api/*\n  path /v2/*\n  method GET POST\n  host example.com\n}")[
        "@api"
    ]
    assert m["path"] == ["/api/*", "/v2/*"]
    assert m["method"] == ["GET", "POST"]
    assert m["host"] == ["example.com"]


def test_header_matcher_canonicalizes_names_and_supports_absence() -> None:
    m = define("@h {\n header x-api-key secret\n header x-api-key other\n header !X-bar\n}")
    # Add() canonicalizes; the "!" form writes the map directly, keeping the spelling.
    assert m["@h"]["header"] == {"X-Api-Key": ["secret", "other"], "X-bar": None}


def test_query_matcher_groups_values_by_key() -> None:
    m = define("@q query a=1 b=2 a=3 empty=")
    assert m["@q"]["query"] == {"a": ["1", "3"], "b": ["2"], "empty": [""]}


def test_query_matcher_without_equals_is_an_error() -> None:
    with pytest.raises(ConfigError, match="must be in param=val format, at Caddyfile:1"):
        define("@q query abc")


def test_path_regexp_is_named_after_the_definition() -> None:
    assert define("@match path_regexp ^/foo(.*)$") == {
        "@match": {"path_regexp": {"name": "match", "pattern": "^/foo(.*)$"}}
    }
    explicit = define("@m path_regexp myname ^/x")["@m"]["path_regexp"]
    assert explicit == {"name": "myname", "pattern": "^/x"}


def test_path_regexp_twice_is_an_error() -> None:
    with pytest.raises(ConfigError, match="regular expression can only be used once"):
        define("@m {\n path_regexp ^/a\n path_regexp ^/b\n}")


def test_header_regexp_forms_and_duplicate_field() -> None:
    m = define("@m {\n header_regexp X-Id ^[0-9]+$\n header_regexp sess Cookie ^s=(.*)$\n}")
    assert m["@m"]["header_regexp"] == {
        "X-Id": {"name": "m", "pattern": "^[0-9]+$"},
        "Cookie": {"name": "sess", "pattern": "^s=(.*)$"},
    }
    with pytest.raises(ConfigError, match="only be used once per named matcher"):
        define("@m {\n header_regexp X-Id a\n header_regexp X-Id b\n}")


def test_not_lines_become_separate_negated_sets() -> None:
    m = define(
        "@m {\n  not path /admin/*\n  not {\n    path_regexp ^/x\n    host a.example\n  }\n}"
    )["@m"]
    assert m["not"] == [
        {"path": ["/admin/*"]},
        # nested sets have no matcher name, so the regexp stays unnamed
        {"path_regexp": {"pattern": "^/x"}, "host": ["a.example"]},
    ]


def test_remote_ip_and_client_ip_private_ranges() -> None:
    m = define("@m {\n remote_ip 1.2.3.4 private_ranges\n client_ip 10.0.0.0/8\n}")["@m"]
    assert m["remote_ip"]["ranges"][0] == "1.2.3.4"
    assert "192.168.0.0/16" in m["remote_ip"]["ranges"]
    assert "::1" in m["remote_ip"]["ranges"]
    assert m["client_ip"] == {"ranges": ["10.0.0.0/8"]}


def test_remote_ip_forwarded_is_rejected() -> None:
    with pytest.raises(ConfigError, match="use the 'client_ip' matcher instead"):
        define("@m remote_ip forwarded 1.2.3.4")


def test_protocol_tls_vars_file() -> None:
    m = define(
        "@m {\n protocol https\n tls early_data\n vars {foo} a b\n"
        " file {\n  try_files {path} /index.html\n  root /srv\n }\n}"
    )["@m"]
    assert m["protocol"] == "https"
    assert m["tls"] == {"handshake_complete": False}
    assert m["vars"] == {"{foo}": ["a", "b"]}
    assert m["file"] == {"root": "/srv", "try_files": ["{path}", "/index.html"]}


def test_protocol_needs_exactly_one_argument() -> None:
    with pytest.raises(ConfigError, match="expected exactly one protocol, at Caddyfile:1"):
        define("@m protocol")


def test_quoted_argument_is_expression_shorthand() -> None:
    m = define('@api `{method} == "GET"`')
    assert m == {"@api": {"expression": {"expr": '{method} == "GET"', "name": "api"}}}


def test_expression_with_several_arguments_is_joined_raw() -> None:
    m = define('@e expression {path} == "/x"')
    assert m["@e"]["expression"] == '{path} == "/x"'


def test_unknown_matcher_module_error_has_location() -> None:
    with pytest.raises(ConfigError) as info:
        define("@m {\n path /a\n frobnicate x\n}")
    assert "getting matcher module 'frobnicate'" in str(info.value)
    assert str(info.value).endswith("at Caddyfile:3")
    assert info.value.line == 3


def test_duplicate_definition_is_an_error() -> None:
    with pytest.raises(ConfigError, match="matcher is defined more than once: @a"):
        define("@a path /b", existing={"@a": {"path": ["/a"]}})


def test_block_in_list_matcher_is_rejected() -> None:
    with pytest.raises(ConfigError, match="malformed path matcher: blocks are not supported"):
        define("@m {\n path /a {\n  x\n }\n}")


def test_nested_matcher_set_for_retry_match() -> None:
    d = Dispenser(tokenize("lb_retry_match {\n method POST\n path /x\n}", "Caddyfile"))
    d.next()
    assert parse_nested_matcher_set(d) == {"method": ["POST"], "path": ["/x"]}


def test_response_matcher_block_and_single_line() -> None:
    found: dict[str, Any] = {}
    text = "match {\n status 2xx 404\n header Content-Type text/*\n header !Cache-Control\n}"
    parse_named_response_matcher(Dispenser(tokenize(text, "Caddyfile")), found)
    assert found["match"] == {
        "status_code": [2, 404],
        "headers": {"Content-Type": ["text/*"], "Cache-Control": None},
    }
    found = {}
    parse_named_response_matcher(Dispenser(tokenize("@err status 5xx", "Caddyfile")), found)
    assert found == {"@err": {"status_code": [5]}}


def test_response_matcher_bad_status_and_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="bad status value 'abc'"):
        parse_named_response_matcher(Dispenser(tokenize("m status abc", "Caddyfile")), {})
    with pytest.raises(ConfigError, match="unrecognized response matcher path"):
        parse_named_response_matcher(Dispenser(tokenize("m path /x", "Caddyfile")), {})


def test_canonical_header_key_matches_go() -> None:
    assert canonical_header_key("x-forwarded-for") == "X-Forwarded-For"
    assert canonical_header_key("CONTENT-type") == "Content-Type"
    # names with characters outside the token set are left alone, as Go does
    assert canonical_header_key("{http.x}") == "{http.x}"
    assert canonical_header_key("bad header") == "bad header"


def test_go_atoi() -> None:
    assert go_atoi("-12") == -12
    assert go_atoi("+7") == 7
    for bad in ("", "1.5", " 1", "0x10", "1_000"):
        with pytest.raises(ValueError, match="invalid syntax"):
            go_atoi(bad)
    with pytest.raises(ValueError, match="value out of range"):
        go_atoi("99999999999999999999")
