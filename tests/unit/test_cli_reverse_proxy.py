"""`pyproxy reverse-proxy`'s flags → the JSON config current Caddy's `cmdReverseProxy`
(modules/caddyhttp/reverseproxy/command.go) builds for them, and its errors."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.cli import build_parser
from proxy.quick_proxy import QuickProxyError, build_config
from proxy.supervisor import validate


def config_for(*flags: str) -> tuple[dict[str, Any], str, list[str]]:
    return build_config(build_parser().parse_args(["reverse-proxy", *flags]))


def server(config: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = config["apps"]["http"]["servers"]["proxy"]
    return result


def test_plain_http_port_without_host() -> None:
    config, from_text, dials = config_for("--from", ":8080", "--to", "127.0.0.1:9000")
    assert config == {
        "admin": {"disabled": True, "config": {"persist": False}},
        "apps": {
            "http": {
                "servers": {
                    "proxy": {
                        "listen": [":8080"],
                        "routes": [
                            {
                                "handle": [
                                    {
                                        "handler": "reverse_proxy",
                                        "transport": {"protocol": "http"},
                                        "upstreams": [{"dial": "127.0.0.1:9000"}],
                                    }
                                ]
                            }
                        ],
                        "automatic_https": {"disable": True},
                    }
                }
            }
        },
    }
    assert (from_text, dials) == ("http://:8080", ["127.0.0.1:9000"])
    validate(config)  # the runtime accepts what it builds


def test_default_from_is_https_localhost() -> None:
    config, from_text, _ = config_for("--to", "app:80")
    assert server(config)["listen"] == [":443"]
    assert server(config)["routes"][0]["match"] == [{"host": ["localhost"]}]
    assert "automatic_https" not in server(config)
    assert from_text == "https://localhost"


def test_host_on_port_80_is_http() -> None:
    config, _, _ = config_for("--from", "example.com:80", "--to", "app")
    assert server(config)["listen"] == [":80"]
    assert server(config)["automatic_https"] == {"disable": True}
    assert server(config)["routes"][0]["handle"][0]["upstreams"] == [{"dial": "app:80"}]


def test_all_flags() -> None:
    config, _, dials = config_for(
        "--from", "example.com", "--to", "https://a:8443", "--to", "b:9000-9001,c:7",
        "-H", "x-a: 1", "--header-down", "y: 2", "--change-host-header", "--insecure",
        "--internal-certs", "--disable-redirects", "--access-log", "--debug",
    )  # fmt: skip
    handler = server(config)["routes"][0]["handle"][0]
    assert handler["transport"] == {"protocol": "http", "tls": {"insecure_skip_verify": True}}
    assert handler["upstreams"] == [
        {"dial": "a:8443"}, {"dial": "b:9000"}, {"dial": "b:9001"}, {"dial": "c:7"}
    ]  # fmt: skip
    # Go's http.Header.Set canonicalises the names; --change-host-header sets Host.
    assert handler["headers"] == {
        "request": {"set": {"X-A": ["1"], "Host": ["{http.reverse_proxy.upstream.hostport}"]}},
        "response": {"set": {"Y": ["2"]}},
    }
    assert server(config)["automatic_https"] == {"disable_redirects": True}
    assert server(config)["logs"] == {}
    assert config["apps"]["tls"] == {
        "automation": {
            "policies": [{"subjects": ["example.com"], "issuers": [{"module": "internal"}]}]
        }
    }
    assert config["logging"] == {"logs": {"default": {"level": "DEBUG"}}}
    assert dials == ["a:8443", "b:9000-9001", "c:7"]


def test_https_upstream_verifies_without_insecure() -> None:
    config, _, _ = config_for("--from", ":8080", "--to", "https://a")
    handler = server(config)["routes"][0]["handle"][0]
    assert handler["transport"] == {"protocol": "http", "tls": {}}
    assert handler["upstreams"] == [{"dial": "a:443"}]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ((), "--to is required"),
        (("--from", "example.com/api", "--to", "a"), "paths are not allowed: example.com/api"),
        (("--to", "http://a/path"), "invalid upstream address http://a/path: "),
        (("--to", "a", "-H", "NoColon"), 'header-up 0: invalid format "NoColon"'),
        (("--to", "a", "-d", "ok: 1", "-d", "X:"), 'header-down 1: invalid format "X:"'),
    ],
)
def test_bad_flags(flags: tuple[str, ...], message: str) -> None:
    with pytest.raises(QuickProxyError) as info:
        config_for(*flags)
    assert str(info.value).startswith(message)
