"""Upstream state, passive health, active-check config and thresholds (pure, no sockets)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.upstream.health import (
    ActiveHealthConfig,
    PassiveHealth,
    apply_check_result,
    parse_status_codes,
    status_matches,
)
from proxy.upstream.upstream import (
    HostRegistry,
    HostState,
    Upstream,
    duration_seconds,
    parse_dial,
    upstreams_from_handler,
)

S = 1_000_000_000  # nanoseconds per second, as in Caddy JSON


# -- dial and durations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dial", "expected"),
    [
        ("127.0.0.1:9001", ("tcp", "127.0.0.1", 9001)),
        ("www:8080", ("tcp", "www", 8080)),
        ("[::1]:443", ("tcp", "::1", 443)),
        ("localhost", ("tcp", "localhost", 80)),
        ("[::1]", ("tcp", "::1", 80)),
        ("tcp6/[::1]:81", ("tcp6", "::1", 81)),
        ("unix//run/app.sock", ("unix", "/run/app.sock", 0)),
        ("{http.request.host}:80", ("tcp", "", 0)),
    ],
)
def test_parse_dial(dial: str, expected: tuple[str, str, int]) -> None:
    assert parse_dial(dial) == expected


@pytest.mark.parametrize("dial", ["host:0", "host:70000", "host:80-81", "[::1:80", "host:x"])
def test_parse_dial_rejects(dial: str) -> None:
    with pytest.raises(ValueError, match="invalid dial address"):
        parse_dial(dial)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, 0.0),
        (30 * S, 30.0),
        (250_000_000, 0.25),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("2d", 172800.0),
        ("0", 0.0),
        ("10us", 1e-5),
    ],
)
def test_duration_seconds(value: object, seconds: float) -> None:
    assert duration_seconds(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "10", "5 s", "1x", True, [1]])
def test_duration_seconds_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"try_duration: (invalid duration|expected a duration)"):
        duration_seconds(value, "try_duration")


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
    a = Upstream.from_config({"dial": "www:80"}, registry=registry)
    b = Upstream.from_config({"dial": "www:80"}, registry=registry)
    a.inc()
    a.record_failure(0.0, 30.0)
    assert b.num_requests == 1 and b.fails(1.0) == 1
    # Active state is per handler.
    a.set_active_healthy(False)
    assert b.active_healthy
    registry.retain(["other:80"])
    assert "www:80" not in registry and len(registry) == 0


def test_upstream_from_config_validation_and_passive_defaults() -> None:
    with pytest.raises(ValueError, match="dial address is required"):
        Upstream.from_config({})
    with pytest.raises(ValueError, match="max_requests"):
        Upstream.from_config({"dial": "a:1", "max_requests": -1})
    passive = PassiveHealth.from_config({"fail_duration": 30 * S, "unhealthy_request_count": 7})
    own = Upstream.from_config({"dial": "a:1", "max_requests": 3}, passive=passive)
    default = Upstream.from_config({"dial": "b:1"}, passive=passive)
    assert own.max_requests == 3 and default.max_requests == 7
    assert default.max_fails == 1


def test_upstreams_from_handler() -> None:
    handler: dict[str, Any] = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": "a:1"}, {"dial": "b:2", "max_requests": 5}],
        "health_checks": {"passive": {"fail_duration": 10 * S, "max_fails": 3}},
    }
    ups = upstreams_from_handler(handler)
    assert [u.dial for u in ups] == ["a:1", "b:2"]
    assert [u.max_fails for u in ups] == [3, 3] and ups[1].max_requests == 5
    bare = upstreams_from_handler({"upstreams": [{"dial": "a:1"}]})
    assert bare[0].max_fails is None


# -- status codes ----------------------------------------------------------------------------


def test_status_matches_classes() -> None:
    assert status_matches(502, 5) and status_matches(599, 5) and not status_matches(600, 5)
    assert status_matches(404, 404) and not status_matches(403, 404)
    assert not status_matches(200, 5)


def test_parse_status_codes() -> None:
    assert parse_status_codes([500, "5xx", "503", 5, 4], "f") == (500, 5, 503, 4)
    assert parse_status_codes(None, "f") == ()
    for bad in ("abc", 42, 1000, True, "9xx "):
        with pytest.raises(ValueError, match="invalid status code"):
            parse_status_codes([bad], "unhealthy_status")


# -- passive ---------------------------------------------------------------------------------


def test_passive_defaults() -> None:
    assert PassiveHealth.from_config(None) is None
    p = PassiveHealth.from_config({})
    assert p is not None and not p.enabled and p.max_fails == 1
    assert p == PassiveHealth()


def test_passive_records_status_and_latency_strikes() -> None:
    p = PassiveHealth.from_config(
        {
            "fail_duration": 30 * S,
            "max_fails": 2,
            "unhealthy_status": ["5xx", 429],
            "unhealthy_latency": "2s",
        }
    )
    assert p is not None and p.enabled
    up = Upstream.from_config({"dial": "a:1"}, passive=p)
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
    p = PassiveHealth.from_config({"fail_duration": "10s"})
    assert p is not None
    up = Upstream.from_config({"dial": "a:1"}, passive=p)
    assert p.record_error(up, now=5.0) is True
    assert not up.healthy(5.0) and up.healthy(15.0)
    off = PassiveHealth.from_config({"unhealthy_status": [500]})
    assert off is not None
    up2 = Upstream.from_config({"dial": "b:1"}, passive=off)
    assert off.record_error(up2, now=0.0) is False
    assert off.record_response(up2, 500, 0.0, now=0.0) == 0
    assert up2.healthy(0.0)


def test_passive_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="max_fails"):
        PassiveHealth.from_config({"max_fails": -2})
    with pytest.raises(ValueError, match="invalid duration"):
        PassiveHealth.from_config({"fail_duration": "soon"})


# -- active config ---------------------------------------------------------------------------


def test_active_config_defaults_and_enabling() -> None:
    assert ActiveHealthConfig.from_config(None) is None
    assert ActiveHealthConfig.from_config({"interval": 5 * S}) is None  # not enabled
    cfg = ActiveHealthConfig.from_config({"uri": "/health?full=1"})
    assert cfg is not None
    assert cfg.interval_s == 30.0 and cfg.timeout_s == 5.0
    assert cfg.passes == 1 and cfg.fails == 1 and cfg.method == "GET"
    assert cfg.target == "/health?full=1"
    port_only = ActiveHealthConfig.from_config({"port": 8081})
    assert port_only is not None and port_only.target == "/" and port_only.port == 8081
    legacy = ActiveHealthConfig.from_config({"path": "healthz"})
    assert legacy is not None and legacy.target == "/healthz"


def test_active_config_fields() -> None:
    cfg = ActiveHealthConfig.from_config(
        {
            "uri": "/h",
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
        }
    )
    assert cfg is not None
    assert (cfg.interval_s, cfg.timeout_s, cfg.passes, cfg.fails) == (10.0, 2.0, 3, 2)
    assert cfg.expect_status == 2 and cfg.method == "HEAD" and cfg.follow_redirects
    assert cfg.expect_body is not None and cfg.expect_body.search(b"all fine")
    assert dict(cfg.headers) == {"X-A": ("1", "2"), "Host": ("svc.internal",)}
    with pytest.raises(ValueError, match="expect_body: compiling regular expression"):
        ActiveHealthConfig.from_config({"uri": "/", "expect_body": "("})


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
