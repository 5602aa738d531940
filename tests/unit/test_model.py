"""config.model: Caddy JSON → typed model, with errors that name the JSON path."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from config.errors import ConfigError
from config.model import (
    DEFAULT_IDLE_TIMEOUT_S,
    ActiveHealthChecks,
    DialAddress,
    LoadBalancing,
    NetworkAddress,
    PassiveHealthChecks,
    ReverseProxyHandler,
    SelectionPolicyConfig,
    StaticResponseHandler,
    SubrouteHandler,
    load_model,
    parse_duration,
    parse_network_address,
)

SEED: dict[str, Any] = {
    "apps": {
        "http": {
            "servers": {
                "srv0": {
                    "listen": [":8080"],
                    "routes": [
                        {
                            "match": [{"host": ["a.test", "b.test"]}],
                            "handle": [
                                {
                                    "handler": "subroute",
                                    "routes": [
                                        {
                                            "handle": [
                                                {
                                                    "handler": "reverse_proxy",
                                                    "upstreams": [
                                                        {"dial": "127.0.0.1:9000"},
                                                        {"dial": "www:8080"},
                                                    ],
                                                    "transport": {
                                                        "protocol": "http",
                                                        "dial_timeout": 2000000000,
                                                        "keep_alive": {"idle_timeout": "30s"},
                                                    },
                                                    "load_balancing": {
                                                        "selection_policy": {
                                                            "policy": "round_robin"
                                                        },
                                                        "try_duration": "5s",
                                                    },
                                                }
                                            ]
                                        }
                                    ],
                                }
                            ],
                            "terminal": True,
                        }
                    ],
                    "idle_timeout": "10s",
                    "logs": {"logger_names": {"a.test:8080": ""}},
                }
            }
        }
    },
}


def test_seed_config_loads_typed() -> None:
    m = load_model(SEED)
    assert m.http is not None
    srv = m.http.servers["srv0"]
    assert srv.listen == (NetworkAddress("tcp", "", 8080, 8080),)
    assert srv.timeouts.idle_s == 10.0
    assert srv.timeouts.read_header_s == 60.0
    assert srv.max_header_bytes == 1 << 20  # Go's DefaultMaxHeaderBytes, as in Caddy
    route = srv.routes[0]
    assert route.terminal and route.match == ({"host": ["a.test", "b.test"]},)
    sub = route.handle[0]
    assert isinstance(sub, SubrouteHandler)
    rp = sub.routes[0].handle[0]
    assert isinstance(rp, ReverseProxyHandler)
    assert [u.dial for u in rp.upstreams] == ["127.0.0.1:9000", "www:8080"]
    assert (rp.upstreams[1].host, rp.upstreams[1].port) == ("www", 8080)
    assert rp.transport.dial_timeout_s == 2.0
    assert rp.transport.keepalive_idle_s == 30.0
    assert rp.transport.max_idle_conns_per_host == 32
    assert rp.load_balancing.try_duration_s == 5.0
    assert rp.load_balancing.try_interval_s == 0.25  # Caddy: 250 ms with try_duration
    assert srv.logs is not None


def test_defaults() -> None:
    m = load_model({"apps": {"http": {"servers": {"s": {"listen": [":80"]}}}}})
    assert m.http is not None
    srv = m.http.servers["s"]
    assert srv.timeouts.idle_s == DEFAULT_IDLE_TIMEOUT_S
    assert srv.routes == ()
    assert m.http.http_port == 80 and m.http.https_port == 443
    assert load_model({}).http is None


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(SEED)
    node: Any = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return cfg


RP = ["apps", "http", "servers", "srv0", "routes", 0, "handle", 0, "routes", 0, "handle", 0]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            [*RP, "upstreams", 1, "dial"],
            "127.0.0.1:99999",
            "apps.http.servers.srv0.routes[0].handle[0].routes[0].handle[0].upstreams[1].dial: "
            "port 99999 is out of range",
        ),
        (
            [*RP, "handler"],
            "frobnicate",
            "apps.http.servers.srv0.routes[0].handle[0].routes[0].handle[0].handler: "
            "unknown module: http.handlers.frobnicate",
        ),
        ([*RP, "upstreams", 0, "dial"], "http://x:80", "must not contain a scheme"),
        (
            [*RP, "transport", "dial_timeout"],
            "3 parsecs",
            "transport.dial_timeout: invalid duration",
        ),
        (
            [*RP, "load_balancing", "selection_policy", "policy"],
            "fastest",
            "unknown module: http.reverse_proxy.selection_policies.fastest",
        ),
        (
            [*RP, "load_balancing", "selection_policy"],
            {"policy": "cookie", "fallback": {"policy": "query"}},
            "handle[0].load_balancing.selection_policy.fallback.key: query key is required",
        ),
        (
            [*RP, "load_balancing", "try_interval"],
            "-1s",
            "handle[0].load_balancing.try_interval: duration must not be negative",
        ),
        (
            [*RP, "health_checks"],
            {"passive": {"unhealthy_status": [500, "teapot"]}},
            "handle[0].health_checks.passive.unhealthy_status[1]: invalid status code 'teapot'",
        ),
        (
            [*RP, "health_checks"],
            {"active": {"uri": "/h", "upstream": "h:1-3"}},
            "handle[0].health_checks.active.upstream: upstream dial address must not be a port",
        ),
        (
            ["apps", "http", "servers", "srv0", "listen", 0],
            ":70000",
            "apps.http.servers.srv0.listen[0]: port 70000 is out of range",
        ),
        (
            ["apps", "http", "servers", "srv0", "idle_timeout"],
            True,
            "apps.http.servers.srv0.idle_timeout: expected a duration",
        ),
        (
            ["apps", "http", "servers", "srv0", "routes", 0, "match"],
            [{"hots": ["a"]}],
            "routes[0].match[0].hots: unknown module: http.matchers.hots",
        ),
        (
            ["apps", "http", "servers", "srv0", "routes", 0, "terminal"],
            "yes",
            "routes[0].terminal: expected true or false",
        ),
        (
            ["apps", "http", "servers", "srv0", "routes"],
            {"a": 1},
            "apps.http.servers.srv0.routes: expected an array, got object",
        ),
        (
            ["apps", "http", "servers", "srv0", "trusted_proxies"],
            {"source": "static", "ranges": ["10.0.0.0/33"]},
            "invalid IP address or CIDR range",
        ),
    ],
)
def test_errors_name_the_json_path(path: list[Any], value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_model(_with(path, value))
    assert message in str(exc.value)


def test_same_address_in_two_servers_is_an_error() -> None:
    cfg = {"apps": {"http": {"servers": {"a": {"listen": [":80"]}, "b": {"listen": [":80"]}}}}}
    with pytest.raises(ConfigError, match="listening on the same address"):
        load_model(cfg)


def test_static_response_status_placeholder_and_int() -> None:
    h = {"handler": "static_response", "status_code": 404, "body": "x"}
    m = load_model(
        {
            "apps": {
                "http": {
                    "servers": {
                        "s": {
                            "listen": [":1"],
                            "routes": [{"handle": [h, {**h, "status_code": "{http.vars.code}"}]}],
                        }
                    }
                }
            }
        }
    )
    assert m.http is not None
    first, second = m.http.servers["s"].routes[0].handle
    assert isinstance(first, StaticResponseHandler) and first.status_code == "404"
    assert isinstance(second, StaticResponseHandler) and second.status_code == "{http.vars.code}"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(1500000000, 1.5), ("1m30s", 90.0), ("250ms", 0.25), ("2d", 172800.0), ("0", 0.0)],
)
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":443", NetworkAddress("tcp", "", 443, 443)),
        ("127.0.0.1:8080", NetworkAddress("tcp", "127.0.0.1", 8080, 8080)),
        ("[::1]:80", NetworkAddress("tcp", "::1", 80, 80)),
        ("tcp4/0.0.0.0:80", NetworkAddress("tcp4", "0.0.0.0", 80, 80)),
        (":8000-8003", NetworkAddress("tcp", "", 8000, 8003)),
        ("unix//run/x.sock", NetworkAddress("unix", "/run/x.sock", 0, 0)),
    ],
)
def test_parse_network_address(text: str, expected: NetworkAddress) -> None:
    assert parse_network_address(text, "x") == expected


def test_upstream_facts_are_typed_once() -> None:
    rp_json = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": "a:1"}, {"dial": "unix//run/b.sock", "max_requests": 4}],
        "load_balancing": {
            "selection_policy": {
                "policy": "header",
                "field": "X-Key",
                "fallback": {"policy": "first"},
            },
            "retries": 2,
            "retry_match": [{"method": ["PUT"]}],
        },
        "health_checks": {
            "passive": {"fail_duration": "30s", "max_fails": 3, "unhealthy_status": ["5xx"]},
            "active": {"uri": "/health", "interval": "10s"},
        },
    }
    model = load_model(_with(RP, rp_json))
    assert model.http is not None
    sub = model.http.servers["srv0"].routes[0].handle[0]
    assert isinstance(sub, SubrouteHandler)
    handler = sub.routes[0].handle[0]
    assert isinstance(handler, ReverseProxyHandler)
    assert [u.address for u in handler.upstreams] == [
        DialAddress("tcp", "a", 1),
        DialAddress("unix", "/run/b.sock", 0),
    ]
    lb = handler.load_balancing
    assert lb == LoadBalancing(
        selection_policy=SelectionPolicyConfig(
            policy="header", field_name="X-Key", fallback=SelectionPolicyConfig(policy="first")
        ),
        retries=2,
        try_duration_s=0.0,
        try_interval_s=0.0,  # Caddy's 250 ms default needs try_duration
        retry_match=({"method": ["PUT"]},),
    )
    assert handler.health_checks.passive == PassiveHealthChecks(
        fail_duration_s=30.0, max_fails=3, unhealthy_status=(5,)
    )
    active = handler.health_checks.active
    assert isinstance(active, ActiveHealthChecks)
    assert (active.target, active.interval_s, active.timeout_s) == ("/health", 10.0, 5.0)
