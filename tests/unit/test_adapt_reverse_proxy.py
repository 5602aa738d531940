"""The `reverse_proxy` directive → the `reverse_proxy` handler JSON (values: test_go_values)."""

from __future__ import annotations

from typing import Any

import pytest

import config.adapt.reverse_proxy  # noqa: F401  (registers the directives)
from config.adapt.helper import DIRECTIVES, Helper
from config.caddyfile.dispenser import Dispenser
from config.caddyfile.lexer import tokenize
from config.errors import ConfigError

SECOND_NS = 1_000_000_000


def proxy(text: str, helper_out: list[Helper] | None = None) -> dict[str, Any]:
    tokens = tokenize(text, "Caddyfile")
    helper = Helper(Dispenser(tokens))
    if helper_out is not None:
        helper_out.append(helper)
    (value,) = DIRECTIVES[tokens[0].text](helper)
    (handler,) = value.value["handle"]
    result: dict[str, Any] = handler
    return result


def dials(text: str) -> list[str]:
    return [u["dial"] for u in proxy(text)["upstreams"]]


# -- upstreams -------------------------------------------------------------------------------------


def test_upstream_forms() -> None:
    assert dials("reverse_proxy localhost:8080 example.com :9000 [::1]:81 ::1") == [
        "localhost:8080",
        "example.com:80",
        ":9000",
        "[::1]:81",
        "[::1]:80",
    ]


def test_http_scheme_upstreams_have_no_transport() -> None:
    handler = proxy("reverse_proxy http://a http://b:8080 http://[::1]")
    assert [u["dial"] for u in handler["upstreams"]] == ["a:80", "b:8080", "[::1]:80"]
    assert "transport" not in handler


def test_https_upstream_enables_tls_transport() -> None:
    handler = proxy("reverse_proxy https://example.com")
    assert handler["upstreams"] == [{"dial": "example.com:443"}]
    assert handler["transport"] == {"protocol": "http", "tls": {}}


def test_h2c_upstream_sets_versions() -> None:
    handler = proxy("reverse_proxy h2c://localhost:8080")
    assert handler["upstreams"] == [{"dial": "localhost:8080"}]
    assert handler["transport"] == {"protocol": "http", "versions": ["h2c", "2"]}


def test_port_ranges_expand() -> None:
    assert dials("reverse_proxy localhost:8001-8003") == [
        "localhost:8001",
        "localhost:8002",
        "localhost:8003",
    ]
    assert dials("reverse_proxy {http.request.host}:8001-8002") == [
        "{http.request.host}:8001",
        "{http.request.host}:8002",
    ]
    handler = proxy("reverse_proxy https://localhost:8001-8002")
    assert [u["dial"] for u in handler["upstreams"]] == ["localhost:8001", "localhost:8002"]
    assert handler["transport"]["tls"] == {}


def test_placeholder_and_unix_upstreams_are_kept() -> None:
    assert dials("reverse_proxy {upstream} localhost:{env.PORT} unix//run/app.sock") == [
        "{upstream}",
        "localhost:{env.PORT}",
        "unix//run/app.sock",
    ]


def test_unix_h2c_upstream() -> None:
    handler = proxy("reverse_proxy unix+h2c//run/grpc.sock")
    assert handler["upstreams"] == [{"dial": "unix//run/grpc.sock"}]
    assert handler["transport"]["versions"] == ["h2c", "2"]


def test_to_subdirective_adds_upstreams() -> None:
    assert dials("reverse_proxy a:1 {\n  to b:2 c:3\n}") == ["a:1", "b:2", "c:3"]
    with pytest.raises(ConfigError, match="wrong argument count"):
        proxy("reverse_proxy {\n  to\n}")


@pytest.mark.parametrize(
    ("upstream", "message"),
    [
        ("www:99999", 'invalid start port: strconv.ParseUint: parsing "99999": value out of range'),
        ("http://www:70000", '"70000": value out of range'),
        ("www:8003-8001", "end port must not be less than start port"),
        ("http://localhost/api", "only support scheme, host, and port components"),
        ("localhost:8080/api", "only support scheme, host, and port components"),
        ("http://localhost:443", "conflicting scheme (http://) and port (:443, the HTTPS port)"),
        ("https://localhost:80", "conflicting scheme (https://) and port (:80, the HTTP port)"),
        ("ws://localhost", "the scheme ws:// is only supported in browsers"),
        ("ftp://localhost", "unsupported URL scheme ftp://"),
        ("http://{host}:80", "placeholders are not allowed when an upstream address contains"),
        ("http://a:b", 'invalid port ":b" after host'),
    ],
)
def test_bad_upstreams(upstream: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        proxy(f"\nreverse_proxy {upstream}")
    text = str(info.value)
    assert text.startswith(f"parsing upstream '{upstream}': ")
    assert message in text
    assert text.endswith(", at Caddyfile:2")
    assert info.value.line == 2


def test_mixed_schemes_are_rejected() -> None:
    with pytest.raises(ConfigError, match="expecting 'https://' but got 'http://'"):
        proxy("reverse_proxy https://a http://b")


# -- subdirectives ---------------------------------------------------------------------------------


def test_buffers_and_streams() -> None:
    handler = proxy(
        "reverse_proxy https://localhost:54321 {\n"
        "  request_buffers unlimited\n"
        "  response_buffers 4KiB\n"
        "  stream_buffer_size 64KB\n"
        "  flush_interval -1\n"
        "  stream_timeout 1h\n"
        "  stream_close_delay 5m\n"
        "}"
    )
    assert handler["request_buffers"] == -1
    assert handler["response_buffers"] == 4096
    assert handler["stream_buffer_size"] == 64000
    assert handler["flush_interval"] == -1
    assert handler["stream_timeout"] == 3600 * SECOND_NS
    assert handler["stream_close_delay"] == 300 * SECOND_NS


def test_active_health_checks() -> None:
    handler = proxy(
        "reverse_proxy 127.0.0.1:65535 {\n"
        "  health_uri /health?ready=1\n"
        "  health_port 8081\n"
        "  health_interval 10s\n"
        "  health_timeout 2s\n"
        "  health_status 2xx\n"
        "  health_body ok\n"
        "  health_method HEAD\n"
        '  health_request_body "test body"\n'
        "  health_passes 2\n"
        "  health_fails 3\n"
        "  health_follow_redirects\n"
        "  health_headers {\n"
        "    Host example.com\n"
        "    X-Keys a b\n"
        "    X-Empty-Value\n"
        "    Same-Key 1\n"
        "    Same-Key 2\n"
        "  }\n"
        "}"
    )
    assert handler["health_checks"] == {
        "active": {
            "uri": "/health?ready=1",
            "port": 8081,
            "interval": 10 * SECOND_NS,
            "timeout": 2 * SECOND_NS,
            "expect_status": 2,
            "expect_body": "ok",
            "method": "HEAD",
            "body": "test body",
            "passes": 2,
            "fails": 3,
            "follow_redirects": True,
            "headers": {
                "Host": ["example.com"],
                "X-Keys": ["a", "b"],
                "X-Empty-Value": [""],
                "Same-Key": ["1", "2"],
            },
        }
    }


def test_health_upstream_and_port_conflict() -> None:
    handler = proxy("reverse_proxy a:1 {\n  health_upstream 10.0.0.1:9000\n}")
    assert handler["health_checks"]["active"] == {"upstream": "10.0.0.1:9000"}
    with pytest.raises(ConfigError, match="'health_port' subdirective is ignored"):
        proxy("reverse_proxy a:1 {\n  health_upstream 10.0.0.1:9000\n  health_port 80\n}")
    with pytest.raises(ConfigError, match="health_upstream is malformed"):
        proxy("reverse_proxy a:1 {\n  health_upstream nope\n}")


def test_health_path_is_deprecated_with_warning() -> None:
    helpers: list[Helper] = []
    handler = proxy("reverse_proxy a:1 {\n  health_path /ok\n}", helpers)
    assert handler["health_checks"]["active"] == {"path": "/ok"}
    assert any("deprecated" in w.message for w in helpers[0].warnings)


def test_passive_health_checks() -> None:
    handler = proxy(
        "reverse_proxy a:1 {\n"
        "  fail_duration 30s\n"
        "  max_fails 3\n"
        "  unhealthy_status 5xx 404\n"
        "  unhealthy_latency 2s\n"
        "  unhealthy_request_count 100\n"
        "}"
    )
    assert handler["health_checks"] == {
        "passive": {
            "fail_duration": 30 * SECOND_NS,
            "max_fails": 3,
            "unhealthy_status": [5, 404],
            "unhealthy_latency": 2 * SECOND_NS,
            "unhealthy_request_count": 100,
        }
    }


def test_bad_duration_wording() -> None:
    with pytest.raises(ConfigError) as info:
        proxy("reverse_proxy a:1 {\n  fail_duration soon\n}")
    assert str(info.value) == (
        "bad duration value 'soon': time: invalid duration \"soon\", at Caddyfile:2"
    )


@pytest.mark.parametrize(
    ("line", "policy"),
    [
        ("lb_policy random", {"policy": "random"}),
        ("lb_policy random_choose 3", {"policy": "random_choose", "choose": 3}),
        ("lb_policy round_robin", {"policy": "round_robin"}),
        (
            "lb_policy weighted_round_robin 3 1",
            {"policy": "weighted_round_robin", "weights": [3, 1]},
        ),
        ("lb_policy least_conn", {"policy": "least_conn"}),
        ("lb_policy first", {"policy": "first"}),
        ("lb_policy ip_hash", {"policy": "ip_hash"}),
        ("lb_policy client_ip_hash", {"policy": "client_ip_hash"}),
        ("lb_policy uri_hash", {"policy": "uri_hash"}),
        ("lb_policy query user", {"policy": "query", "key": "user"}),
        ("lb_policy header X-User", {"policy": "header", "field": "X-User"}),
        ("lb_policy cookie", {"policy": "cookie"}),
        ("lb_policy cookie lb s3cret", {"policy": "cookie", "name": "lb", "secret": "s3cret"}),
    ],
)
def test_selection_policies(line: str, policy: dict[str, Any]) -> None:
    handler = proxy(f"reverse_proxy a:1 b:2 {{\n  {line}\n}}")
    assert handler["load_balancing"] == {"selection_policy": policy}


def test_policy_fallback_and_cookie_max_age() -> None:
    handler = proxy(
        "reverse_proxy a:1 {\n"
        "  lb_policy cookie sticky {\n"
        "    fallback header X-User {\n"
        "      fallback first\n"
        "    }\n"
        "    max_age 1h\n"
        "  }\n"
        "}"
    )
    assert handler["load_balancing"]["selection_policy"] == {
        "policy": "cookie",
        "name": "sticky",
        "max_age": 3600 * SECOND_NS,
        "fallback": {"policy": "header", "field": "X-User", "fallback": {"policy": "first"}},
    }


def test_policy_errors() -> None:
    with pytest.raises(ConfigError, match=r"selection_policies\.fastest': module not registered"):
        proxy("reverse_proxy a:1 {\n  lb_policy fastest\n}")
    with pytest.raises(ConfigError, match="invalid weight value '-1'"):
        proxy("reverse_proxy a:1 {\n  lb_policy weighted_round_robin -1\n}")
    with pytest.raises(ConfigError, match="wrong argument count"):
        proxy("reverse_proxy a:1 {\n  lb_policy round_robin extra\n}")
    with pytest.raises(ConfigError, match="selection policy already specified"):
        proxy("reverse_proxy a:1 {\n  lb_policy first\n  lb_policy random\n}")


def test_retries() -> None:
    handler = proxy(
        "reverse_proxy a:1 {\n"
        "  lb_retries 3\n"
        "  lb_try_duration 5s\n"
        "  lb_try_interval 250ms\n"
        "  lb_retry_match {\n"
        "    method POST PUT\n"
        "  }\n"
        "  lb_retry_match path /idempotent/*\n"
        "}"
    )
    assert handler["load_balancing"] == {
        "retries": 3,
        "try_duration": 5 * SECOND_NS,
        "try_interval": 250_000_000,
        "retry_match": [{"method": ["POST", "PUT"]}, {"path": ["/idempotent/*"]}],
    }


def test_trusted_proxies() -> None:
    assert proxy("reverse_proxy a:1 {\n  trusted_proxies 127.0.0.1\n}")["trusted_proxies"] == [
        "127.0.0.1"
    ]
    ranges = proxy("reverse_proxy a:1 {\n  trusted_proxies private_ranges\n}")["trusted_proxies"]
    assert ranges == [
        "192.168.0.0/16",
        "172.16.0.0/12",
        "10.0.0.0/8",
        "127.0.0.1/8",
        "fd00::/8",
        "::1",
    ]


def test_header_up_and_down() -> None:
    helpers: list[Helper] = []
    handler = proxy(
        "reverse_proxy a:1 {\n"
        "  header_up Host {upstream_hostport}\n"
        "  header_up +x-trace 1\n"
        "  header_up -Cookie\n"
        "  header_up X-Forwarded-For {remote}\n"
        "  header_down -Server\n"
        "  header_down Location http:// https://\n"
        "}",
        helpers,
    )
    assert handler["headers"] == {
        "request": {
            "set": {"Host": ["{upstream_hostport}"], "X-Forwarded-For": ["{remote}"]},
            "add": {"X-Trace": ["1"]},
            "delete": ["Cookie"],
        },
        # header_down is not deferred (unlike the header directive's deletes)
        "response": {
            "delete": ["Server"],
            "replace": {"Location": [{"search_regexp": "http://", "replace": "https://"}]},
        },
    }
    assert any("Unnecessary header_up X-Forwarded-For" in w.message for w in helpers[0].warnings)


def test_header_up_errors() -> None:
    with pytest.raises(ConfigError, match="can only be used on response headers"):
        proxy("reverse_proxy a:1 {\n  header_up ?X a\n}")
    with pytest.raises(ConfigError, match="wrong argument count"):
        proxy("reverse_proxy a:1 {\n  header_up a b c d\n}")


def test_method_and_rewrite() -> None:
    handler = proxy("reverse_proxy a:1 {\n  method GET\n  rewrite /new?{query}\n}")
    assert handler["rewrite"] == {"method": "GET", "uri": "/new?{query}"}


def test_http_transport_options() -> None:
    handler = proxy(
        "reverse_proxy https://backend {\n"
        "  transport http {\n"
        "    read_buffer 8KiB\n"
        "    write_buffer 8KiB\n"
        "    max_response_header 1MB\n"
        "    dial_timeout 3s\n"
        "    dial_fallback_delay 300ms\n"
        "    response_header_timeout 30s\n"
        "    expect_continue_timeout 1s\n"
        "    resolvers 1.1.1.1 8.8.8.8\n"
        "    tls_insecure_skip_verify\n"
        "    tls_timeout 10s\n"
        "    tls_server_name internal.example\n"
        "    tls_trusted_ca_certs /etc/ca.pem\n"
        "    tls_client_auth /c.pem /k.pem\n"
        "    tls_renegotiation once\n"
        "    keepalive 2m\n"
        "    keepalive_interval 30s\n"
        "    keepalive_idle_conns 10\n"
        "    keepalive_idle_conns_per_host 2\n"
        "    versions 1.1 2\n"
        "    compression off\n"
        "    max_conns_per_host 64\n"
        "  }\n"
        "}"
    )
    assert handler["transport"] == {
        "protocol": "http",
        "read_buffer_size": 8192,
        "write_buffer_size": 8192,
        "max_response_header_size": 1_000_000,
        "dial_timeout": 3 * SECOND_NS,
        "dial_fallback_delay": 300_000_000,
        "response_header_timeout": 30 * SECOND_NS,
        "expect_continue_timeout": SECOND_NS,
        "resolver": {"addresses": ["1.1.1.1", "8.8.8.8"]},
        "tls": {
            "insecure_skip_verify": True,
            "handshake_timeout": 10 * SECOND_NS,
            "server_name": "internal.example",
            "root_ca_pem_files": ["/etc/ca.pem"],
            "client_certificate_file": "/c.pem",
            "client_certificate_key_file": "/k.pem",
            "renegotiation": "once",
        },
        "keep_alive": {
            "idle_timeout": 120 * SECOND_NS,
            "probe_interval": 30 * SECOND_NS,
            "max_idle_conns": 10,
            "max_idle_conns_per_host": 2,
        },
        "versions": ["1.1", "2"],
        "compression": False,
        "max_conns_per_host": 64,
    }


def test_keepalive_off_and_trust_pool() -> None:
    handler = proxy(
        "reverse_proxy a:1 {\n"
        "  transport http {\n"
        "    keepalive off\n"
        "    tls\n"
        "    tls_trust_pool file /ca1.pem {\n"
        "      pem_file /ca2.pem\n"
        "    }\n"
        "  }\n"
        "}"
    )
    assert handler["transport"] == {
        "protocol": "http",
        "keep_alive": {"enabled": False},
        "tls": {"ca": {"provider": "file", "pem_files": ["/ca1.pem", "/ca2.pem"]}},
    }


def test_empty_http_transport_is_omitted() -> None:
    handler = proxy("reverse_proxy a:1 {\n  transport http\n}")
    assert "transport" not in handler


def test_transport_errors() -> None:
    with pytest.raises(ConfigError, match="unrecognized subdirective frob, at Caddyfile:3"):
        proxy("reverse_proxy a:1 {\n  transport http {\n    frob\n  }\n}")
    with pytest.raises(ConfigError, match=r"transport\.quic': module not registered"):
        proxy("reverse_proxy a:1 {\n  transport quic\n}")
    with pytest.raises(ConfigError, match="transport already specified"):
        proxy("reverse_proxy a:1 {\n  transport http\n  transport http\n}")
    with pytest.raises(ConfigError, match=r"transport is configured for HTTP\+TLS"):
        proxy("reverse_proxy http://a {\n  transport http {\n    tls\n  }\n}")


def test_unknown_subdirective() -> None:
    with pytest.raises(ConfigError) as info:
        proxy("reverse_proxy a:1 {\n  lb_polcy first\n}")
    assert str(info.value) == "unrecognized subdirective lb_polcy, at Caddyfile:2"


def test_replace_status_with_named_response_matcher() -> None:
    handler = proxy(
        "reverse_proxy a:1 {\n"
        "  @bad status 500 503\n"
        "  replace_status @bad 502\n"
        "  replace_status 200\n"
        "}"
    )
    assert handler["handle_response"] == [
        {"match": {"status_code": [500, 503]}, "status_code": 502},
        {"status_code": 200},
    ]
    with pytest.raises(ConfigError, match="no named response matcher defined with name 'nope'"):
        proxy("reverse_proxy a:1 {\n  replace_status @nope 502\n}")


def test_dynamic_upstreams() -> None:
    handler = proxy(
        "reverse_proxy {\n  dynamic srv _api._tcp.example.com {\n    refresh 1m\n  }\n}"
    )
    assert handler["dynamic_upstreams"] == {
        "source": "srv",
        "name": "_api._tcp.example.com",
        "refresh": 60 * SECOND_NS,
    }
    assert "upstreams" not in handler
    handler = proxy("reverse_proxy {\n  dynamic a backend 8080\n}")
    assert handler["dynamic_upstreams"] == {"source": "a", "name": "backend", "port": "8080"}


def test_matcher_token_is_removed_before_upstreams() -> None:
    tokens = tokenize("reverse_proxy /api/* localhost:9000", "Caddyfile")
    (value,) = DIRECTIVES["reverse_proxy"](Helper(Dispenser(tokens)))
    assert value.value["match"] == [{"path": ["/api/*"]}]
    assert value.value["handle"][0]["upstreams"] == [{"dial": "localhost:9000"}]


def test_copy_response_directives() -> None:
    assert proxy("copy_response 404") == {"handler": "copy_response", "status_code": 404}
    assert proxy("copy_response_headers {\n  include Set-Cookie X-A\n}") == {
        "handler": "copy_response_headers",
        "include": ["Set-Cookie", "X-A"],
    }


def test_fastcgi_transport_is_kept_even_when_empty() -> None:
    handler = proxy("reverse_proxy localhost:9000 {\n  transport fastcgi\n}")
    assert handler["transport"] == {"protocol": "fastcgi"}
    handler = proxy(
        "reverse_proxy localhost:9000 {\n"
        "  transport fastcgi {\n"
        "    root /srv\n"
        "    split .php\n"
        "    env APP_ENV prod\n"
        "    read_timeout 1m\n"
        "    capture_stderr\n"
        "  }\n"
        "}"
    )
    assert handler["transport"] == {
        "protocol": "fastcgi",
        "root": "/srv",
        "split_path": [".php"],
        "env": {"APP_ENV": "prod"},
        "read_timeout": 60 * SECOND_NS,
        "capture_stderr": True,
    }
    with pytest.raises(ConfigError, match="transport module does not support TLS"):
        proxy("reverse_proxy https://a {\n  transport fastcgi\n}")


def test_handle_response_routes_through_the_whole_adapter() -> None:
    from config.adapt import adapt_caddyfile

    caddyfile = (
        ":80 {\n"
        "\treverse_proxy localhost:9000 {\n"
        "\t\thandle_response {\n"
        "\t\t\tcopy_response 404\n"
        "\t\t}\n"
        "\t\t@accel header X-Accel-Redirect *\n"
        "\t\thandle_response @accel {\n"
        '\t\t\trespond "redirected" 200\n'
        "\t\t}\n"
        "\t}\n"
        "}\n"
    )
    config, _ = adapt_caddyfile(caddyfile, "Caddyfile")
    (route,) = config["apps"]["http"]["servers"]["srv0"]["routes"]
    (handler,) = route["handle"]
    # handlers with a response matcher are tried first, whatever the written order
    first, second = handler["handle_response"]
    assert first["match"] == {"headers": {"X-Accel-Redirect": ["*"]}}
    assert first["routes"][0]["handle"][0]["handler"] == "static_response"
    assert "match" not in second
    assert second["routes"] == [{"handle": [{"handler": "copy_response", "status_code": 404}]}]


def test_handle_response_with_two_matchers_is_an_error() -> None:
    with pytest.raises(ConfigError, match="only a single response matcher name is allowed"):
        proxy("reverse_proxy a:1 {\n  handle_response @a @b {\n    respond 200\n  }\n}")
