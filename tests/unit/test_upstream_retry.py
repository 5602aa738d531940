"""Retry decisions: limits, defaults and which failures may be retried for which methods."""

from __future__ import annotations

import re
from typing import Any

import pytest

from config.errors import ConfigError
from config.model import LoadBalancing, load_load_balancing
from proxy.upstream.retry import DEFAULT_TRY_INTERVAL_S, FailureKind, RetryPolicy

S = 1_000_000_000
LB = "apps.http.servers.srv0.routes[0].handle[0].load_balancing"


def retry(cfg: dict[str, Any] | None) -> RetryPolicy:
    """The policy of a handler whose `load_balancing` JSON is `cfg`, through the model."""
    return RetryPolicy.from_config(load_load_balancing(cfg, LB))


DIAL, NONE, SENT, MATCHED = (
    FailureKind.DIAL,
    FailureKind.NO_UPSTREAM,
    FailureKind.AFTER_SENT,
    FailureKind.RESPONSE_MATCHED,
)


def test_disabled_by_default() -> None:
    for cfg in (None, {}, {"selection_policy": {"policy": "first"}}):
        policy = retry(cfg)
        assert not policy.enabled
        decision = policy.decide(retries_done=0, elapsed_s=0.0, method="GET", failure=DIAL)
        assert not decision and decision.reason == "retries not enabled"


def test_try_interval_defaults() -> None:
    assert retry({"try_duration": 5 * S}).try_interval_s == DEFAULT_TRY_INTERVAL_S
    assert retry({"retries": 3}).try_interval_s == 0.0
    explicit = retry({"try_duration": "5s", "try_interval": "1s"})
    assert explicit.try_interval_s == 1.0 and explicit.try_duration_s == 5.0
    with pytest.raises(ConfigError, match=r"^" + re.escape(LB) + r"\.retries: must not be"):
        retry({"retries": -1})
    with pytest.raises(ConfigError, match=re.escape(LB) + r"\.try_interval: duration must not"):
        retry({"try_duration": "1s", "try_interval": "-1s"})


def test_try_interval_default_is_caddys_250ms_only_with_try_duration() -> None:
    # Caddy's Handler.Provision sets 250 ms when try_duration > 0 and try_interval == 0.
    assert load_load_balancing({"try_duration": "1s"}, LB).try_interval_s == 0.25
    assert load_load_balancing({"retries": 2}, LB).try_interval_s == 0.0
    assert load_load_balancing(None, LB) == LoadBalancing()


def test_try_duration_limit() -> None:
    policy = retry({"try_duration": 2 * S})
    ok = policy.decide(retries_done=50, elapsed_s=1.9, method="GET", failure=DIAL)
    assert ok and ok.wait_s == 0.25
    late = policy.decide(retries_done=0, elapsed_s=2.0, method="GET", failure=DIAL)
    assert not late and late.reason == "try_duration exceeded"


def test_retries_limit() -> None:
    policy = retry({"retries": 2})
    assert policy.decide(retries_done=0, elapsed_s=99.0, method="GET", failure=DIAL)
    assert policy.decide(retries_done=1, elapsed_s=99.0, method="GET", failure=DIAL)
    last = policy.decide(retries_done=2, elapsed_s=0.0, method="GET", failure=DIAL)
    assert not last and last.reason == "retries exhausted"
    assert last.wait_s == 0.0


def test_both_limits_first_reached_wins() -> None:
    policy = retry({"retries": 5, "try_duration": 1 * S})
    assert not policy.decide(retries_done=1, elapsed_s=1.5, method="GET", failure=DIAL)
    assert not policy.decide(retries_done=5, elapsed_s=0.1, method="GET", failure=DIAL)
    assert policy.decide(retries_done=4, elapsed_s=0.9, method="GET", failure=DIAL)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("failure", [DIAL, NONE, MATCHED])
def test_dial_no_upstream_and_matched_responses_retry_any_method(
    method: str, failure: FailureKind
) -> None:
    policy = retry({"retries": 1, "retry_match": [{"method": ["PUT"]}]})
    assert policy.decide(retries_done=0, elapsed_s=0.0, method=method, failure=failure)
    plain = retry({"retries": 1})
    assert plain.decide(retries_done=0, elapsed_s=0.0, method=method, failure=failure)


def test_after_sent_only_get_without_retry_match() -> None:
    policy = retry({"retries": 3})
    assert policy.decide(retries_done=0, elapsed_s=0.0, method="GET", failure=SENT)
    for method in ("POST", "PUT", "HEAD", "DELETE", "OPTIONS"):
        decision = policy.decide(retries_done=0, elapsed_s=0.0, method=method, failure=SENT)
        assert not decision and "not retried" in decision.reason


def test_after_sent_with_retry_match_uses_the_callable() -> None:
    policy = retry({"retries": 3, "retry_match": [{"method": ["POST"]}]})
    assert policy.has_retry_match
    calls: list[str] = []

    def matches_post(method: str) -> bool:
        calls.append(method)
        return method == "POST"

    post = policy.decide(
        retries_done=0, elapsed_s=0.0, method="POST", failure=SENT,
        retry_match=lambda: matches_post("POST"),
    )  # fmt: skip
    assert post
    # With retry_match configured, GET is no longer retried by default.
    get = policy.decide(
        retries_done=0, elapsed_s=0.0, method="GET", failure=SENT,
        retry_match=lambda: matches_post("GET"),
    )  # fmt: skip
    assert not get and get.reason == "retry_match did not match"
    assert calls == ["POST", "GET"]
    # The matcher is not consulted for dial errors or when limits are hit.
    assert policy.decide(
        retries_done=0, elapsed_s=0.0, method="GET", failure=DIAL, retry_match=lambda: False
    )
    assert not policy.decide(
        retries_done=3, elapsed_s=0.0, method="POST", failure=SENT, retry_match=lambda: True
    )
    with pytest.raises(ValueError, match="no matcher was supplied"):
        policy.decide(retries_done=0, elapsed_s=0.0, method="POST", failure=SENT)
