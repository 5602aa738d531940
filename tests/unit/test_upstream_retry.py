"""Retry decisions: limits, defaults and which failures may be retried for which methods."""

from __future__ import annotations

import pytest

from proxy.upstream.retry import DEFAULT_TRY_INTERVAL_S, FailureKind, RetryPolicy

S = 1_000_000_000
DIAL, NONE, SENT, MATCHED = (
    FailureKind.DIAL,
    FailureKind.NO_UPSTREAM,
    FailureKind.AFTER_SENT,
    FailureKind.RESPONSE_MATCHED,
)


def test_disabled_by_default() -> None:
    for cfg in (None, {}, {"selection_policy": {"policy": "first"}}):
        policy = RetryPolicy.from_config(cfg)
        assert not policy.enabled
        decision = policy.decide(retries_done=0, elapsed_s=0.0, method="GET", failure=DIAL)
        assert not decision and decision.reason == "retries not enabled"


def test_try_interval_defaults() -> None:
    assert RetryPolicy.from_config({"try_duration": 5 * S}).try_interval_s == DEFAULT_TRY_INTERVAL_S
    assert RetryPolicy.from_config({"retries": 3}).try_interval_s == 0.0
    explicit = RetryPolicy.from_config({"try_duration": "5s", "try_interval": "1s"})
    assert explicit.try_interval_s == 1.0 and explicit.try_duration_s == 5.0
    with pytest.raises(ValueError, match="must be >= 0"):
        RetryPolicy.from_config({"retries": -1})


def test_try_duration_limit() -> None:
    policy = RetryPolicy.from_config({"try_duration": 2 * S})
    ok = policy.decide(retries_done=50, elapsed_s=1.9, method="GET", failure=DIAL)
    assert ok and ok.wait_s == 0.25
    late = policy.decide(retries_done=0, elapsed_s=2.0, method="GET", failure=DIAL)
    assert not late and late.reason == "try_duration exceeded"


def test_retries_limit() -> None:
    policy = RetryPolicy.from_config({"retries": 2})
    assert policy.decide(retries_done=0, elapsed_s=99.0, method="GET", failure=DIAL)
    assert policy.decide(retries_done=1, elapsed_s=99.0, method="GET", failure=DIAL)
    last = policy.decide(retries_done=2, elapsed_s=0.0, method="GET", failure=DIAL)
    assert not last and last.reason == "retries exhausted"
    assert last.wait_s == 0.0


def test_both_limits_first_reached_wins() -> None:
    policy = RetryPolicy.from_config({"retries": 5, "try_duration": 1 * S})
    assert not policy.decide(retries_done=1, elapsed_s=1.5, method="GET", failure=DIAL)
    assert not policy.decide(retries_done=5, elapsed_s=0.1, method="GET", failure=DIAL)
    assert policy.decide(retries_done=4, elapsed_s=0.9, method="GET", failure=DIAL)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("failure", [DIAL, NONE, MATCHED])
def test_dial_no_upstream_and_matched_responses_retry_any_method(
    method: str, failure: FailureKind
) -> None:
    policy = RetryPolicy.from_config({"retries": 1, "retry_match": [{"method": ["PUT"]}]})
    assert policy.decide(retries_done=0, elapsed_s=0.0, method=method, failure=failure)
    plain = RetryPolicy.from_config({"retries": 1})
    assert plain.decide(retries_done=0, elapsed_s=0.0, method=method, failure=failure)


def test_after_sent_only_get_without_retry_match() -> None:
    policy = RetryPolicy.from_config({"retries": 3})
    assert policy.decide(retries_done=0, elapsed_s=0.0, method="GET", failure=SENT)
    for method in ("POST", "PUT", "HEAD", "DELETE", "OPTIONS"):
        decision = policy.decide(retries_done=0, elapsed_s=0.0, method=method, failure=SENT)
        assert not decision and "not retried" in decision.reason


def test_after_sent_with_retry_match_uses_the_callable() -> None:
    policy = RetryPolicy.from_config({"retries": 3, "retry_match": [{"method": ["POST"]}]})
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
