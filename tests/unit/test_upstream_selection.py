"""Selection policies: every Caddy policy, availability rules, hashing stability, cookies."""

from __future__ import annotations

import collections
import hashlib
import hmac
import random
import re
from dataclasses import dataclass
from typing import Any

import pytest
from request_fakes import FakeRequest

from config.errors import ConfigError
from config.model import load_selection_policy
from proxy.upstream.selection import (
    POLICIES,
    CookieHashSelection,
    FirstSelection,
    RandomSelection,
    RoundRobinSelection,
    SelectionPolicy,
    cookie_hash,
    host_by_hashing,
    make_selection_policy,
)
from proxy.upstream.upstream import Upstream

NOW = 1000.0


@dataclass
class Req(FakeRequest):
    remote_ip: str = "192.0.2.1"
    remote_port: int = 40000
    client_ip: str = "192.0.2.1"


def pool(n: int = 3, **kwargs: Any) -> list[Upstream]:
    return [Upstream(f"10.0.0.{i + 1}:80", **kwargs) for i in range(n)]


LB_POLICY = "handle[0].load_balancing.selection_policy"


def make(cfg: dict[str, Any] | None, rng: random.Random | None = None) -> SelectionPolicy:
    """The policy a `selection_policy` JSON object builds, through the model's loader."""
    return make_selection_policy(load_selection_policy(cfg, LB_POLICY) if cfg else None, rng)


def mark_down(upstream: Upstream) -> None:
    upstream.set_active_healthy(False)


# -- factory ---------------------------------------------------------------------------------


def test_default_policy_is_random() -> None:
    assert isinstance(make(None), RandomSelection)
    assert isinstance(make({}), RandomSelection)
    assert isinstance(make({"policy": "random"}), RandomSelection)


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_builds_and_selects_an_available_upstream(name: str) -> None:
    cfg: dict[str, Any] = {"policy": name}
    if name == "weighted_round_robin":
        cfg["weights"] = [1, 1, 1]
    if name == "query":
        cfg["key"] = "k"
    if name == "header":
        cfg["field"] = "X-K"
    policy = make(cfg, random.Random(1))
    assert policy.name == name
    ups = pool(3)
    mark_down(ups[0])
    mark_down(ups[2])
    req = Req(query="k=1", headers=[("X-K", "v")])
    for _ in range(5):
        assert policy.select(ups, req, NOW) is ups[1]
    mark_down(ups[1])
    assert policy.select(ups, req, NOW) is None
    assert policy.select([], req, NOW) is None


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"policy": "nope"}, "unknown module: http.reverse_proxy.selection_policies.nope"),
        ({"policy": "cookie", "max_age": "-1s"}, "duration must not be negative"),
        ({"policy": "first", "key": "k"}, 'json: unknown field "key"'),
        ({"policy": "random_choose", "choose": 1}, "choose must be at least 2"),
        ({"policy": "weighted_round_robin", "weights": [0, 0]}, "positive weight"),
        ({"policy": "weighted_round_robin", "weights": [2, -1]}, "cannot be negative"),
        ({"policy": "query"}, "query key is required"),
        ({"policy": "header"}, "header field is required"),
        ({"policy": "query", "key": "k", "fallback": {"policy": "bad"}}, "unknown"),
    ],
)
def test_invalid_configs(cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(
        ConfigError, match=r"^" + re.escape(LB_POLICY) + r"(\.\w+|\[\d+\])*: .*" + message
    ):
        make(cfg)


# -- availability ----------------------------------------------------------------------------


def test_full_and_failing_upstreams_are_skipped() -> None:
    ups = [
        Upstream("a:1", max_requests=1),
        Upstream("b:1", max_fails=2),
        Upstream("c:1"),
    ]
    ups[0].inc()
    ups[1].record_failure(NOW - 1, 10.0)
    ups[1].record_failure(NOW - 1, 10.0)
    first = FirstSelection()
    assert first.select(ups, Req(), NOW) is ups[2]
    ups[0].dec()
    assert first.select(ups, Req(), NOW) is ups[0]
    # Failures expire fail_duration after they were recorded (at NOW + 9), making b available.
    ups[0].inc()
    assert first.select(ups, Req(), NOW + 8.9) is ups[2]
    assert first.select(ups, Req(), NOW + 9.0) is ups[1]


# -- simple policies -------------------------------------------------------------------------


def test_random_is_roughly_uniform_over_available() -> None:
    policy = make({"policy": "random"}, random.Random(7))
    ups = pool(4)
    mark_down(ups[3])
    counts = collections.Counter(policy.select(ups, Req(), NOW) for _ in range(3000))
    assert set(counts) == set(ups[:3])
    assert all(800 < c < 1200 for c in counts.values())


def test_round_robin_cycles_in_order_and_skips_unavailable() -> None:
    policy = RoundRobinSelection()
    ups = pool(3)
    # Caddy pre-increments its counter: the first pick is the second upstream.
    cycle = ups[1:] + ups[:1]
    assert [policy.select(ups, Req(), NOW) for _ in range(6)] == cycle + cycle
    mark_down(ups[1])
    picks = [policy.select(ups, Req(), NOW) for _ in range(4)]
    assert ups[1] not in picks
    assert picks.count(ups[0]) == 2 and picks.count(ups[2]) == 2


def test_weighted_round_robin_shares() -> None:
    policy = make({"policy": "weighted_round_robin", "weights": [3, 1, 0]})
    ups = pool(3)
    picks = [policy.select(ups, Req(), NOW) for _ in range(40)]
    counts = collections.Counter(picks)
    assert counts[ups[0]] == 30 and counts[ups[1]] == 10 and counts[ups[2]] == 0
    mark_down(ups[0])
    assert {policy.select(ups, Req(), NOW) for _ in range(10)} == {ups[1]}


def test_weighted_round_robin_upstreams_without_weight_are_never_chosen() -> None:
    policy = make({"policy": "weighted_round_robin", "weights": [2]})
    ups = pool(3)
    assert {policy.select(ups, Req(), NOW) for _ in range(10)} == {ups[0]}


def test_least_conn_picks_fewest_requests_and_breaks_ties_randomly() -> None:
    policy = make({"policy": "least_conn"}, random.Random(3))
    ups = pool(3)
    for _ in range(3):
        ups[0].inc()
    ups[1].inc()
    assert policy.select(ups, Req(), NOW) is ups[2]
    ups[2].inc()
    picks = {policy.select(ups, Req(), NOW) for _ in range(50)}
    assert picks == {ups[1], ups[2]}


def test_random_choose_prefers_least_loaded_of_the_sample() -> None:
    policy = make({"policy": "random_choose", "choose": 3}, random.Random(5))
    ups = pool(3)
    ups[0].inc()
    ups[2].inc()
    assert all(policy.select(ups, Req(), NOW) is ups[1] for _ in range(20))
    two = make({"policy": "random_choose"}, random.Random(5))
    ups4 = pool(4)
    for u in ups4[1:]:
        u.inc()
    # With choose=2, the idle upstream wins whenever it is sampled (about half the time).
    hits = sum(two.select(ups4, Req(), NOW) is ups4[0] for _ in range(1000))
    assert 350 < hits < 650


def test_first_in_config_order() -> None:
    ups = pool(3)
    policy = FirstSelection()
    assert policy.select(ups, Req(), NOW) is ups[0]
    mark_down(ups[0])
    assert policy.select(ups, Req(), NOW) is ups[1]


# -- hash policies ---------------------------------------------------------------------------


def test_rendezvous_hashing_moves_only_keys_of_the_removed_upstream() -> None:
    ups = pool(5)
    keys = [f"198.51.100.{i}" for i in range(200)]
    before = {k: host_by_hashing(ups, k, NOW) for k in keys}
    assert len(set(before.values())) == 5  # all upstreams get keys
    victim = ups[2]
    mark_down(victim)
    after = {k: host_by_hashing(ups, k, NOW) for k in keys}
    for key in keys:
        if before[key] is victim:
            assert after[key] is not victim and after[key] is not None
        else:
            assert after[key] is before[key]
    victim.set_active_healthy(True)
    assert {k: host_by_hashing(ups, k, NOW) for k in keys} == before


def test_ip_hash_uses_remote_ip_and_client_ip_hash_uses_client_ip() -> None:
    ups = pool(8)
    ip_policy = make({"policy": "ip_hash"})
    cip_policy = make({"policy": "client_ip_hash"})
    spread = {ip_policy.select(ups, Req(remote_ip=f"192.0.2.{i}"), NOW) for i in range(60)}
    assert len(spread) > 4
    req = Req(remote_ip="192.0.2.7", client_ip="203.0.113.9")
    assert ip_policy.select(ups, req, NOW) is host_by_hashing(ups, "192.0.2.7", NOW)
    assert cip_policy.select(ups, req, NOW) is host_by_hashing(ups, "203.0.113.9", NOW)
    # Same client, same upstream, regardless of port.
    again = Req(remote_ip="192.0.2.7", remote_port=1234, client_ip="203.0.113.9")
    assert ip_policy.select(ups, again, NOW) is ip_policy.select(ups, req, NOW)


def test_uri_hash_uses_request_target_as_received() -> None:
    ups = pool(8)
    policy = make({"policy": "uri_hash"})
    req = Req(uri="/a%20b?x=1", path="/a b")
    assert policy.select(ups, req, NOW) is host_by_hashing(ups, "/a%20b?x=1", NOW)
    assert len({policy.select(ups, Req(uri=f"/p{i}"), NOW) for i in range(60)}) > 4


def test_query_hash_joins_all_values_and_falls_back() -> None:
    ups = pool(8)
    policy = make({"policy": "query", "key": "user", "fallback": {"policy": "first"}})
    req = Req(query="user=alice&x=1&user=bob")
    assert policy.select(ups, req, NOW) is host_by_hashing(ups, "alice,bob", NOW)
    assert policy.select(ups, Req(query="user=a%20b"), NOW) is host_by_hashing(ups, "a b", NOW)
    assert policy.select(ups, Req(query="other=1"), NOW) is ups[0]
    assert policy.select(ups, Req(query="user="), NOW) is ups[0]


def test_header_hash_uses_field_host_and_fallback() -> None:
    ups = pool(8)
    policy = make({"policy": "header", "field": "X-User", "fallback": {"policy": "first"}})
    assert policy.select(ups, Req(headers=[("x-user", "u1")]), NOW) is host_by_hashing(
        ups, "u1", NOW
    )
    assert policy.select(ups, Req(), NOW) is ups[0]
    host_policy = make({"policy": "header", "field": "Host"})
    assert host_policy.select(ups, Req(host="a.example"), NOW) is host_by_hashing(
        ups, "a.example", NOW
    )


# -- cookie ----------------------------------------------------------------------------------


def test_cookie_hash_is_hmac_sha256_of_dial() -> None:
    expected = hmac.new(b"s3cret", b"10.0.0.1:80", hashlib.sha256).hexdigest()
    assert cookie_hash("s3cret", "10.0.0.1:80") == expected


def test_cookie_without_cookie_uses_fallback_and_sets_cookie() -> None:
    ups = pool(3)
    policy = make(
        {"policy": "cookie", "name": "sticky", "secret": "k", "fallback": {"policy": "first"}}
    )
    req = Req()
    chosen = policy.select(ups, req, NOW)
    assert chosen is ups[0]
    assert policy.response_cookie(chosen, req) == (
        f"sticky={cookie_hash('k', ups[0].dial)}; Path=/; HttpOnly; SameSite=Lax"
    )


def test_cookie_sticks_to_its_upstream_and_sets_nothing() -> None:
    ups = pool(3)
    policy = make({"policy": "cookie", "fallback": {"policy": "first"}})
    value = cookie_hash("", ups[2].dial)
    req = Req(headers=[("Cookie", f"a=1; lb={value}; b=2")])
    for _ in range(5):
        assert policy.select(ups, req, NOW) is ups[2]
    assert policy.response_cookie(ups[2], req) is None
    # Its upstream goes down: fallback chooses, a new cookie is set.
    mark_down(ups[2])
    chosen = policy.select(ups, req, NOW)
    assert chosen is ups[0]
    header = policy.response_cookie(chosen, req)
    assert header is not None and header.startswith(f"lb={cookie_hash('', ups[0].dial)};")


def test_cookie_forged_or_non_ascii_value_falls_back() -> None:
    ups = pool(2)
    policy = make({"policy": "cookie", "fallback": {"policy": "first"}})
    for bad in ("lb=deadbeef", "lb=ünïcode", 'lb=""'):
        req = Req(headers=[("Cookie", bad)])
        assert policy.select(ups, req, NOW) is ups[0]
        assert policy.response_cookie(ups[0], req) is not None


def test_cookie_secure_and_max_age() -> None:
    ups = pool(1)
    policy = make({"policy": "cookie", "max_age": 3_600_000_000_000})
    assert isinstance(policy, CookieHashSelection) and policy.max_age_s == 3600
    value = cookie_hash("", ups[0].dial)
    https = Req(scheme="https")
    assert policy.response_cookie(ups[0], https) == (
        f"lb={value}; Path=/; Max-Age=3600; HttpOnly; Secure; SameSite=None"
    )
    # X-Forwarded-Proto counts only from a trusted proxy.
    xfp = [("X-Forwarded-Proto", "http"), ("X-Forwarded-Proto", "https")]
    untrusted = Req(headers=xfp)
    trusted = Req(headers=xfp, vars={"trusted_proxy": True})
    assert "Secure" not in (policy.response_cookie(ups[0], untrusted) or "")
    assert "Secure" in (policy.response_cookie(ups[0], trusted) or "")


def test_cookie_max_age_string_duration() -> None:
    policy = make({"policy": "cookie", "max_age": "1h30m"})
    assert isinstance(policy, CookieHashSelection) and policy.max_age_s == 5400


def test_non_cookie_policies_set_no_cookie() -> None:
    ups = pool(2)
    policy: SelectionPolicy = make({"policy": "round_robin"})
    chosen = policy.select(ups, Req(), NOW)
    assert chosen is not None and policy.response_cookie(chosen, Req()) is None
