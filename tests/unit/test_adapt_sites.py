"""Site blocks → servers, routes and listeners (config/adapt/http_app.py and friends)."""

from __future__ import annotations

from typing import Any

import pytest

from config.adapt import adapt_caddyfile
from config.errors import ConfigError

SEED = (
    "v3a.ocaml.org, v3b.ocaml.org, v3.ocaml.org, ocaml.org, www.ocaml.org {\n"
    "\treverse_proxy www:8080\n"
    "}\n"
)
SEED_HOSTS = ["v3a.ocaml.org", "v3b.ocaml.org", "v3.ocaml.org", "ocaml.org", "www.ocaml.org"]


def adapt(text: str) -> dict[str, Any]:
    config, _ = adapt_caddyfile(text, "Caddyfile")
    return config


def servers(text: str) -> dict[str, Any]:
    result: dict[str, Any] = adapt(text)["apps"]["http"]["servers"]
    return result


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        adapt_caddyfile(text, "Caddyfile")
    return str(info.value)


def test_seed_deployment_is_one_https_server_with_a_host_matched_subroute() -> None:
    config = adapt(SEED)
    assert set(config) == {"apps"}  # no tls app: default issuers need no config
    assert set(config["apps"]) == {"http"}
    srv = config["apps"]["http"]["servers"]["srv0"]
    assert srv["listen"] == [":443"]
    (route,) = srv["routes"]
    assert route["match"] == [{"host": SEED_HOSTS}]  # key order kept
    assert route["terminal"] is True
    (subroute,) = route["handle"]
    assert subroute["handler"] == "subroute"
    (inner,) = subroute["routes"]
    (proxy,) = inner["handle"]
    assert proxy["handler"] == "reverse_proxy"
    assert proxy["upstreams"] == [{"dial": "www:8080"}]
    assert "tls_connection_policies" not in srv
    assert "automatic_https" not in srv


def test_lone_catch_all_site_is_not_wrapped() -> None:
    srv = servers(':8080 {\n\trespond "hi"\n}\n')["srv0"]
    assert srv["listen"] == [":8080"]
    assert srv["routes"] == [{"handle": [{"body": "hi", "handler": "static_response"}]}]


def test_sites_sorted_by_specificity_wildcards_and_catch_alls_last() -> None:
    text = (
        "*.example.com {\n\trespond w\n}\n"
        ":443 {\n\trespond c\n}\n"
        "a.example.com {\n\trespond a\n}\n"
        "longer.example.com {\n\trespond l\n}\n"
    )
    routes = servers(text)["srv0"]["routes"]
    hosts = [r.get("match", [{}])[0].get("host") for r in routes]
    assert hosts == [["longer.example.com"], ["a.example.com"], ["*.example.com"], None]


def test_one_server_per_listener_set_named_in_sorted_order() -> None:
    text = ":8080 {\n}\n:80 {\n}\nexample.com {\n}\n"
    srvs = servers(text)
    assert {name: s["listen"] for name, s in srvs.items()} == {
        "srv0": [":443"],
        "srv1": [":80"],
        "srv2": [":8080"],
    }


def test_blocks_sharing_all_listeners_share_a_server() -> None:
    text = "a.com {\n\tbind 127.0.0.1 ::1\n}\nb.com {\n\tbind 127.0.0.1 ::1\n}\n"
    srvs = servers(text)
    assert list(srvs) == ["srv0"]
    assert srvs["srv0"]["listen"] == ["127.0.0.1:443", "[::1]:443"]
    assert len(srvs["srv0"]["routes"]) == 2


def test_http_scheme_site_skips_automatic_https_on_a_mixed_server() -> None:
    srv = servers("http://foo:8447, http://127.0.0.1:8447 {\n\trespond x\n}\n")["srv0"]
    assert srv["listen"] == [":8447"]
    assert srv["automatic_https"] == {"skip": ["foo", "127.0.0.1"]}


def test_http_only_site_on_port_80_has_no_skip_list() -> None:
    srv = servers("http://example.com {\n\trespond x\n}\n")["srv0"]
    assert srv["listen"] == [":80"]
    assert "automatic_https" not in srv


def test_directive_order_is_fixed_not_textual() -> None:
    text = ":80 {\n\trespond x\n\tredir /a /b\n\theader X-A b\n}\n"
    handlers = [r["handle"][0]["handler"] for r in servers(text)["srv0"]["routes"]]
    # header < redir < respond in Caddy's order
    assert handlers == ["headers", "static_response", "static_response"]
    assert servers(text)["srv0"]["routes"][1]["handle"][0]["status_code"] == 302


def test_order_option_moves_a_directive() -> None:
    text = "{\n\torder respond first\n}\n:80 {\n\theader X-A b\n\trespond x\n}\n"
    handlers = [h["handler"] for r in servers(text)["srv0"]["routes"] for h in r["handle"]]
    assert handlers == ["static_response", "headers"]


def test_same_directive_sorted_by_path_specificity() -> None:
    text = ":80 {\n\trespond x\n\trespond /a* a\n\trespond /abc/* abc\n}\n"
    routes = servers(text)["srv0"]["routes"]
    assert [r.get("match", [{}])[0].get("path") for r in routes] == [["/abc/*"], ["/a*"], None]


def test_handle_blocks_share_a_group_and_handle_path_strips() -> None:
    text = (
        ":80 {\n\thandle_path /api/* {\n\t\trespond api\n\t}\n\thandle {\n\t\trespond x\n\t}\n}\n"
    )
    routes = servers(text)["srv0"]["routes"]
    assert routes[0]["group"] == routes[1]["group"]
    assert routes[0]["match"] == [{"path": ["/api/*"]}]
    strip = routes[0]["handle"][0]["routes"][0]["handle"][0]
    assert strip == {"handler": "rewrite", "strip_path_prefix": "/api"}


def test_route_keeps_literal_order() -> None:
    text = ":80 {\n\troute {\n\t\trespond x\n\t\theader X-A b\n\t}\n}\n"
    (route,) = servers(text)["srv0"]["routes"]
    inner = route["handle"][0]["routes"]
    assert [h["handler"] for r in inner for h in r["handle"]] == ["static_response", "headers"]


def test_adjacent_routes_with_same_matchers_are_merged() -> None:
    text = ":80 {\n\theader X-A b\n\theader X-B c\n}\n"
    (route,) = servers(text)["srv0"]["routes"]
    assert len(route["handle"]) == 2


def test_placeholder_shorthands_are_expanded() -> None:
    text = ':80 {\n\trespond "{host} {header.X-Y} {re.name.1} {query.q}"\n}\n'
    body = servers(text)["srv0"]["routes"][0]["handle"][0]["body"]
    assert body == (
        "{http.request.host} {http.request.header.X-Y} {http.regexp.name.1} "
        "{http.request.uri.query.q}"
    )


def test_log_directive_maps_hosts_and_skips_others() -> None:
    text = "a.example.com {\n\tlog\n}\nb.example.com {\n}\n"
    logs = servers(text)["srv0"]["logs"]
    assert logs["logger_names"] == {"a.example.com": [""]}
    assert logs["skip_hosts"] == ["b.example.com"]


def test_named_access_logs_are_excluded_from_default() -> None:
    text = "a.example.com {\n\tlog {\n\t\toutput file /tmp/a.log\n\t}\n}\n"
    config = adapt(text)
    logs = config["logging"]["logs"]
    assert logs["log0"]["include"] == ["http.log.access.log0"]
    assert logs["log0"]["writer"] == {"output": "file", "filename": "/tmp/a.log"}
    assert logs["default"] == {"exclude": ["http.log.access.log0"]}
    assert config["apps"]["http"]["servers"]["srv0"]["logs"]["logger_names"] == {
        "a.example.com": ["log0"]
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":70000\n", "port 70000 is out of range"),
        ("foo://example.com\n", "unsupported URL scheme foo://"),
        ("wss://example.com\n", "the scheme wss:// is only supported in browsers"),
        ("ws://example.com\n", "the scheme ws:// is only supported in browsers"),
        ("http://example.com:443\n", "scheme and port violate convention"),
        (":8080 {\n}\n:8080 {\n}\n", "ambiguous site definition: :8080"),
        ("handle\n\nrespond x\n", "Caddyfile:1: parsed 'handle' as a site address"),
        ("example.com {\n\tfrobnicate\n}\n", "Caddyfile:2: unrecognized directive: frobnicate"),
        ("example.com {\n\tfile_server\n}\n", "Caddyfile:2: directive 'file_server' is not"),
        (
            "example.com\nrespond x\nexample.org\n",
            "Caddyfile:3: unrecognized directive: example.org\nDid you mean to define a second",
        ),
        (
            ":80 {\n\thandle {\n\t\tbogus\n\t}\n}\n",
            "parsing caddyfile tokens for 'handle': unrecognized directive: bogus - are you sure",
        ),
        (":80 {\n\trespond a b c\n}\n", "parsing caddyfile tokens for 'respond': wrong argument"),
    ],
)
def test_errors_worded_like_caddy(text: str, expected: str) -> None:
    assert expected in error(text)


def test_http_and_https_cannot_share_a_server() -> None:
    message = error("http://a.com:8080 {\n}\nhttps://b.com:8080 {\n}\n")
    assert "cannot natively multiplex HTTP and HTTPS" in message


def test_empty_caddyfile_site_without_directives() -> None:
    srv = servers("example.com\n")["srv0"]
    assert srv["routes"] == [{"match": [{"host": ["example.com"]}], "terminal": True}]
