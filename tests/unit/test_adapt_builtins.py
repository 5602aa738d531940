"""Built-in handler directives: respond, redir, error, abort, rewrite, uri, root, vars, ...

Each test adapts a one-site Caddyfile on :80 (no host matcher, so routes are not wrapped)
and looks at the handler JSON the directive produced.
"""

from __future__ import annotations

from typing import Any

import pytest

from config.adapt import adapt_caddyfile
from config.adapt.builtins import weak_string
from config.errors import ConfigError


def routes(body: str) -> list[dict[str, Any]]:
    config, _ = adapt_caddyfile(":80 {\n" + body + "\n}\n", "Caddyfile")
    result: list[dict[str, Any]] = config["apps"]["http"]["servers"]["srv0"].get("routes", [])
    return result


def handler(body: str) -> dict[str, Any]:
    (route,) = routes(body)
    (h,) = route["handle"]
    result: dict[str, Any] = h
    return result


def test_weak_string() -> None:
    assert weak_string("404") == 404
    assert weak_string("true") is True
    assert weak_string("{http.code}") == "{http.code}"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('respond "hello"', {"body": "hello"}),
        ("respond 404", {"status_code": 404}),
        ('respond "gone" 410', {"body": "gone", "status_code": 410}),
        ("respond 1234", {"body": "1234"}),  # not three digits: a body
        ("respond 200 {\n\t\tbody ok\n\t\tclose\n\t}", {"status_code": 200, "body": "ok"}),
    ],
)
def test_respond(line: str, expected: dict[str, Any]) -> None:
    h = handler("\t" + line)
    assert h["handler"] == "static_response"
    for key, value in expected.items():
        assert h[key] == value


def test_respond_errors() -> None:
    with pytest.raises(ConfigError, match="body already specified"):
        routes('\trespond "a" {\n\t\tbody b\n\t}')
    with pytest.raises(ConfigError, match="unrecognized subdirective 'nope'"):
        routes("\trespond x {\n\t\tnope\n\t}")


@pytest.mark.parametrize(
    ("args", "code"),
    [("", 302), ("temporary", 302), ("permanent", 301), ("307", 307), ("401", 401)],
)
def test_redir_codes(args: str, code: int) -> None:
    h = handler(f"\tredir https://example.com{{uri}} {args}")
    assert h["status_code"] == code
    assert h["headers"] == {"Location": ["https://example.com{http.request.uri}"]}


def test_redir_html_is_a_200_page_with_escaped_target() -> None:
    # (a first argument starting with "/" would be taken as a path matcher)
    h = handler('\tredir "https://x/a?b=1&c=2" html')
    assert h["status_code"] == 200
    assert h["headers"] == {"Content-Type": ["text/html; charset=utf-8"]}
    assert 'window.location.replace("https://x/a?b=1&amp;c=2")' in h["body"]


@pytest.mark.parametrize("code", ["200", "402", "teapot"])
def test_redir_rejects_non_redirect_codes(code: str) -> None:
    with pytest.raises(ConfigError, match=r"(?i)redir code"):
        routes(f"\tredir https://x/ {code}")


def test_error_and_abort() -> None:
    assert handler('\terror "nope" 403') == {
        "handler": "error",
        "error": "nope",
        "status_code": 403,
    }
    assert handler("\terror 500") == {"handler": "error", "status_code": 500}
    assert handler("\tabort") == {"handler": "static_response", "abort": True}
    with pytest.raises(ConfigError, match="wrong argument count"):
        routes("\tabort now")


def test_matcher_token_becomes_route_match() -> None:
    (route,) = routes("\trespond /health 200")
    assert route["match"] == [{"path": ["/health"]}]


def test_rewrite_routes_get_their_own_group() -> None:
    (route,) = routes("\trewrite /old /new")
    assert route["group"].startswith("group")
    assert route["match"] == [{"path": ["/old"]}]
    assert route["handle"] == [{"handler": "rewrite", "uri": "/new"}]


def test_uri_operations() -> None:
    assert handler("\turi strip_prefix /api") == {
        "handler": "rewrite",
        "strip_path_prefix": "/api",
    }
    assert handler("\turi strip_suffix .html")["strip_path_suffix"] == ".html"
    assert handler("\turi replace a b 3")["uri_substring"] == [
        {"find": "a", "replace": "b", "limit": 3}
    ]
    assert handler("\turi path_regexp ^/x /y")["path_regexp"] == [{"find": "^/x", "replace": "/y"}]
    query = handler("\turi query {\n\t\t+a 1\n\t\t-b\n\t\tc>d\n\t\te 2\n\t}")["query"]
    assert query == {
        "add": [{"key": "a", "val": "1"}],
        "delete": ["b"],
        "rename": [{"key": "c", "val": "d"}],
        "set": [{"key": "e", "val": "2"}],
    }
    with pytest.raises(ConfigError, match="unrecognized URI manipulation 'bogus'"):
        routes("\turi bogus")


def test_root_and_vars() -> None:
    assert handler("\troot * /srv") == {"handler": "vars", "root": "/srv"}
    vars_handler = handler('\tvars {\n\t\tn 1\n\t\ts "1"\n\t\tb true\n\t}')
    assert vars_handler == {"handler": "vars", "n": 1, "s": "1", "b": True}


def test_log_skip_and_deprecated_skip_log() -> None:
    assert handler("\tlog_skip /health") == {"handler": "vars", "log_skip": True}
    _, warnings = adapt_caddyfile(":80 {\n\tskip_log\n}\n", "Caddyfile")
    assert any("deprecated" in w.message for w in warnings)


def test_handle_errors_builds_error_routes() -> None:
    config, _ = adapt_caddyfile(
        ":80 {\n\thandle_errors 404 5xx {\n\t\trespond oops\n\t}\n}\n", "Caddyfile"
    )
    errors = config["apps"]["http"]["servers"]["srv0"]["errors"]["routes"]
    (route,) = errors
    assert route["match"] == [
        {
            "expression": "{http.error.status_code} >= 500 && {http.error.status_code} <= 599"
            " || {http.error.status_code} in [404]"
        }
    ]


def test_bind_sets_listeners() -> None:
    config, _ = adapt_caddyfile(":8080 {\n\tbind 127.0.0.1 [::1]\n}\n", "Caddyfile")
    assert config["apps"]["http"]["servers"]["srv0"]["listen"] == [
        "127.0.0.1:8080",
        "[::1]:8080",
    ]
