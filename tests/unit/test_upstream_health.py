"""Upstream state, passive health, active-check config and thresholds (pure, no sockets)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from config.errors import ConfigError
from config.model import (
    DialAddress,
    PassiveHealthChecks,
    UpstreamConfig,
    load_active_health,
    load_model,
    load_passive_health,
    parse_dial_address,
)
from proxy.upstream.health import PassiveHealth, apply_check_result, status_matches
from proxy.upstream.upstream import HostRegistry, HostState, Upstream, dial_address

S = 1_000_000_000  # nanoseconds per second, as in Caddy JSON
PASSIVE = "handle[0].health_checks.passive"
ACTIVE = "handle[0].health_checks.active"


def upstream_config(dial: str, max_requests: int = 0) -> UpstreamConfig:
    return UpstreamConfig(dial, max_requests, parse_dial_address(dial, "dial"))


def passive(cfg: dict[str, Any]) -> PassiveHealth:
    return PassiveHealth(load_passive_health(cfg, PASSIVE))


# -- dial addresses (parsed once, by the model) ---------------------------------------------


@pytest.mark.parametrize(
    ("dial", "expected"),
    [
        ("127.0.0.1:9001", DialAddress("tcp", "127.0.0.1", 9001)),
        ("www:8080", DialAddress("tcp", "www", 8080)),
        ("[::1]:443", DialAddress("tcp", "::1", 443)),
        ("localhost", DialAddress("tcp", "localhost", 80)),
        ("[::1]", DialAddress("tcp", "::1", 80)),
        ("tcp6/[::1]:81", DialAddress("tcp6", "::1", 81)),
        ("unix//run/app.sock", DialAddress("unix", "/run/app.sock", 0)),
    ],
)
def test_parse_dial_address(dial: str, expected: DialAddress) -> None:
    assert parse_dial_address(dial, "dial") == expected
    assert dial_address(dial) == expected  # the runtime's entry point is the same parser


def test_dial_address_default_port_and_placeholders() -> None:
    assert parse_dial_address("backend", "dial", 443) == DialAddress("tcp", "backend", 443)
    assert dial_address("{http.request.host}:80") == DialAddress("tcp", "", 0)
    assert DialAddress("tcp", "::1", 80).hostport == "[::1]:80"


@pytest.mark.parametrize(
    ("dial", "message"),
    [
        ("host:0", "port 0 cannot be dialled"),
        ("host:70000", "port 70000 is out of range"),
        ("host:80-81", "must not be a port range"),
        ("[::1:80", "missing ']'"),
        ("host:x", "invalid port 'x'"),
        ("http://host:80", "must not contain a scheme"),
        ("fd/3", "network 'fd' cannot be dialled"),
    ],
)
def test_parse_dial_address_rejects(dial: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^upstreams\[0\]\.dial: .*" + re.escape(message)):
        parse_dial_address(dial, "upstreams[0].dial")
    with pytest.raises(ValueError, match=re.escape(message)):
        dial_address(dial)


def test_model_parses_upstream_dials_once() -> None:
    def handler(transport: dict[str, Any] | None = None) -> Any:
        rp: dict[str, Any] = {
            "handler": "reverse_proxy",
            "upstreams": [{"dial": "app"}, {"dial": "{http.request.host}:81"}],
        }
        if transport is not None:
            rp["transport"] = transport
        server = {"listen": [":1"], "routes": [{"handle": [rp]}]}
        model = load_model({"apps": {"http": {"servers": {"s": server}}}})
        assert model.http is not None
        return model.http.servers["s"].routes[0].handle[0]

    plain = handler()
    assert [u.address for u in plain.upstreams] == [DialAddress("tcp", "app", 80), None]
    tls = handler({"protocol": "http", "tls": {}})
    assert tls.upstreams[0].address == DialAddress("tcp", "app", 443)


# -- upstream state --------------------------------------------------------------------------


def test_host_state_failures_expire_individually() -> None:
    state = HostState()
    state.count_failure(10.0, 5.0)  # until 15
    state.count_failure(11.0, 1.0)  # until 12 (shorter duration from another handler)
    state.count_failure(12.0, 5.0)  # until 17
    assert state.fails(11.5) == 3
    assert state.fails(12.0) == 2
    assert state.fails(15.0) == 1
    assert state.fails(17.0) == 0


def test_in_flight_counter_and_max_requests() -> None:
    up = Upstream("127.0.0.1:9001", max_requests=2)
    assert up.available(0) and not up.full()
    with up.track():
        up.inc()
        assert up.num_requests == 2 and up.full() and not up.available(0)
        assert up.healthy(0)  # full is not unhealthy
        up.dec()
    assert up.num_requests == 0 and up.available(0)
    up.dec()  # never negative
    assert up.num_requests == 0


def test_passive_failures_make_unhealthy_only_with_a_policy() -> None:
    without = Upstream("a:1")
    with_policy = Upstream("a:1", max_fails=2)
    for up in (without, with_policy):
        up.record_failure(0.0, 10.0)
    assert with_policy.healthy(1.0)
    with_policy.record_failure(1.0, 10.0)
    assert not with_policy.healthy(2.0) and not with_policy.available(2.0)
    assert with_policy.healthy(10.0)  # first failure expired: 1 < 2
    without.record_failure(0.0, 10.0)
    assert without.fails(1.0) == 2 and without.healthy(1.0)
    # A non-positive duration records nothing.
    with_policy.record_failure(20.0, 0.0)
    assert with_policy.fails(20.0) == 0


def test_active_flag() -> None:
    up = Upstream("a:1")
    assert up.active_healthy
    assert up.set_active_healthy(False) is True
    assert up.set_active_healthy(False) is False
    assert not up.healthy(0) and not up.available(0)
    assert up.set_active_healthy(True) is True and up.healthy(0)


def test_registry_shares_host_state_between_handlers_and_reloads() -> None:
    registry = HostRegistry()
    a = Upstream.from_config(upstream_config("www:80"), registry=registry)
    b = Upstream.from_config(upstream_config("www:80"), registry=registry)
    a.inc()
    a.record_failure(0.0, 30.0)
    assert b.num_requests == 1 and b.fails(1.0) == 1
    # Active state is per handler.
    a.set_active_healthy(False)
    assert b.active_healthy
    registry.retain(["other:80"])
    assert "www:80" not in registry and len(registry) == 0


def test_upstream_from_config_takes_passive_defaults() -> None:
    policy = load_passive_health({"fail_duration": 30 * S, "unhealthy_request_count": 7}, PASSIVE)
    own = Upstream.from_config(upstream_config("a:1", 3), passive=policy)
    default = Upstream.from_config(upstream_config("b:1"), passive=policy)
    assert own.max_requests == 3 and default.max_requests == 7
    assert default.max_fails == 1
    bare = Upstream.from_config(upstream_config("a:1"))
    assert bare.max_fails is None and (bare.host, bare.port) == ("a", 1)


# -- status codes ----------------------------------------------------------------------------


def test_status_matches_classes() -> None:
    assert status_matches(502, 5) and status_matches(599, 5) and not status_matches(600, 5)
    assert status_matches(404, 404) and not status_matches(403, 404)
    assert not status_matches(200, 5)


@pytest.mark.parametrize("bad", ["abc", 42, 1000, True, "9xx "])
def test_health_status_codes_are_checked_by_the_model(bad: object) -> None:
    assert load_passive_health(
        {"unhealthy_status": [500, "5xx", "503", 5, 4]}, PASSIVE
    ).unhealthy_status == (500, 5, 503, 4)
    with pytest.raises(ConfigError, match=re.escape(f"{PASSIVE}.unhealthy_status[0]: invalid")):
        load_passive_health({"unhealthy_status": [bad]}, PASSIVE)


# -- passive ---------------------------------------------------------------------------------


def test_passive_defaults() -> None:
    cfg = load_passive_health({}, PASSIVE)
    assert cfg == PassiveHealthChecks() and cfg.max_fails == 1
    assert not PassiveHealth(cfg).enabled


def test_passive_records_status_and_latency_strikes() -> None:
    cfg = load_passive_health(
        {
            "fail_duration": 30 * S,
            "max_fails": 2,
            "unhealthy_status": ["5xx", 429],
            "unhealthy_latency": "2s",
        },
        PASSIVE,
    )
    p = PassiveHealth(cfg)
    assert p.enabled
    up = Upstream.from_config(upstream_config("a:1"), passive=cfg)
    assert p.record_response(up, 200, 0.1, now=0.0) == 0
    assert p.record_response(up, 503, 0.1, now=0.0) == 1
    assert up.healthy(0.0)
    assert p.record_response(up, 429, 0.1, now=1.0) == 1
    assert not up.healthy(1.0)
    assert up.healthy(30.0)  # first strike expired at 30
    assert p.record_response(up, 500, 2.0, now=40.0) == 2  # bad status and slow
    assert p.record_response(up, 200, 1.99, now=40.0) == 0
    assert up.fails(40.0) == 2


def test_passive_errors_and_disabled_policy() -> None:
    p = passive({"fail_duration": "10s"})
    up = Upstream.from_config(upstream_config("a:1"), passive=p.config)
    assert p.record_error(up, now=5.0) is True
    assert not up.healthy(5.0) and up.healthy(15.0)
    off = passive({"unhealthy_status": [500]})
    up2 = Upstream.from_config(upstream_config("b:1"), passive=off.config)
    assert off.record_error(up2, now=0.0) is False
    assert off.record_response(up2, 500, 0.0, now=0.0) == 0
    assert up2.healthy(0.0)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"max_fails": -2}, ".max_fails: must be >= 1"),
        ({"fail_duration": "soon"}, ".fail_duration: invalid duration 'soon'"),
        ({"fail_duration": -1}, ".fail_duration: duration must not be negative"),
        ({"unhealthy_request_count": -1}, ".unhealthy_request_count: must not be negative"),
        ({"fail_duraton": "1s"}, ': json: unknown field "fail_duraton"'),
    ],
)
def test_passive_rejects_bad_values_naming_the_path(cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_passive_health(cfg, PASSIVE)
    assert str(info.value).startswith(PASSIVE + message)


# -- active config ---------------------------------------------------------------------------


def test_active_config_defaults_and_enabling() -> None:
    assert load_active_health(None, ACTIVE) is None
    assert load_active_health({"interval": 5 * S}, ACTIVE) is None  # not enabled
    cfg = load_active_health({"uri": "/health?full=1"}, ACTIVE)
    assert cfg is not None
    assert cfg.interval_s == 30.0 and cfg.timeout_s == 5.0
    assert cfg.passes == 1 and cfg.fails == 1 and cfg.method == "GET"
    assert cfg.target == "/health?full=1"
    port_only = load_active_health({"port": 8081}, ACTIVE)
    assert port_only is not None and port_only.target == "/" and port_only.port == 8081
    legacy = load_active_health({"path": "healthz"}, ACTIVE)
    assert legacy is not None and legacy.target == "/healthz"


def test_active_config_fields() -> None:
    cfg = load_active_health(
        {
            "uri": "/h",
            "upstream": "health.internal:9000",
            "interval": "10s",
            "timeout": 2 * S,
            "passes": 3,
            "fails": 2,
            "expect_status": "2xx",
            "expect_body": "ok|fine",
            "headers": {"X-A": ["1", "2"], "Host": ["svc.internal"]},
            "method": "head",
            "body": "ping",
            "follow_redirects": True,
            "max_size": 1024,
        },
        ACTIVE,
    )
    assert cfg is not None
    assert (cfg.interval_s, cfg.timeout_s, cfg.passes, cfg.fails) == (10.0, 2.0, 3, 2)
    assert cfg.expect_status == 2 and cfg.method == "HEAD" and cfg.follow_redirects
    assert cfg.expect_body is not None and cfg.expect_body.search(b"all fine")
    assert dict(cfg.headers) == {"X-A": ("1", "2"), "Host": ("svc.internal",)}
    assert cfg.upstream_address == DialAddress("tcp", "health.internal", 9000)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"uri": "/", "expect_body": "("}, ".expect_body: compiling regular expression"),
        ({"uri": "/", "interval": "-1s"}, ".interval: duration must not be negative"),
        ({"uri": "/", "upstream": "h:1-2"}, ".upstream: upstream dial address must not be a"),
        ({"port": 70000}, ".port: invalid port 70000"),
        ({"uri": "/", "expect_status": "abc"}, ".expect_status: invalid status code 'abc'"),
        ({"uri": "/", "intervl": "1s"}, ': json: unknown field "intervl"'),
    ],
)
def test_active_rejects_bad_values_naming_the_path(cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_active_health(cfg, ACTIVE)
    assert str(info.value).startswith(ACTIVE + message)


# -- active thresholds -----------------------------------------------------------------------


def run(up: Upstream, results: str, passes: int, fails: int) -> list[bool | None]:
    return [apply_check_result(up, r == "+", passes=passes, fails=fails) for r in results]


def test_thresholds_of_one_flip_immediately() -> None:
    up = Upstream("a:1")
    assert run(up, "+-+", 1, 1) == [None, False, True]


def test_fails_must_be_consecutive() -> None:
    up = Upstream("a:1")
    assert run(up, "--+--", 2, 3) == [None, None, None, None, None]
    assert up.active_healthy
    assert run(up, "-", 2, 3) == [False]
    assert not up.active_healthy


def test_passes_must_be_consecutive() -> None:
    up = Upstream("a:1")
    up.set_active_healthy(False)
    assert run(up, "+-+", 2, 1) == [None, None, None]
    assert run(up, "+", 2, 1) == [True]
    assert up.active_healthy and up.active_passes == 0 and up.active_fails == 0
