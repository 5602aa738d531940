"""Respawn decisions: immediate after a healthy run, exponential backoff for a crash loop."""

from __future__ import annotations

import os
import signal

import pytest

from proxy.respawn import (
    FIRST_BACKOFF_S,
    MAX_BACKOFF_S,
    STABLE_AFTER_S,
    RespawnPolicy,
    describe_exit,
)

POLICY = RespawnPolicy()


def quick_exit_delays(policy: RespawnPolicy, exits: int) -> list[float]:
    """The delays of `exits` workers in a row that each die 0.1 s after they start."""
    delays, streak, now = [], 0, 1000.0
    for _ in range(exits):
        decision = policy.decide(
            started_at=now, exited_at=now + 0.1, quick_exits=streak, stopping=False
        )
        assert decision.respawn
        delays.append(decision.delay_s)
        streak = decision.quick_exits
        now += 0.1 + decision.delay_s
    return delays


def test_a_healthy_worker_is_replaced_at_once() -> None:
    decision = POLICY.decide(started_at=0.0, exited_at=3600.0, quick_exits=0, stopping=False)
    assert decision and decision.delay_s == 0.0 and decision.quick_exits == 0
    assert decision.reason == "it had run 10s or more"


def test_a_healthy_run_ends_the_streak() -> None:
    # After a crash loop, a worker that ran for stable_after_s resets the backoff.
    decision = POLICY.decide(
        started_at=10.0, exited_at=10.0 + STABLE_AFTER_S, quick_exits=7, stopping=False
    )
    assert decision.delay_s == 0.0 and decision.quick_exits == 0


def test_first_quick_exit_is_respawned_at_once() -> None:
    decision = POLICY.decide(started_at=5.0, exited_at=5.2, quick_exits=0, stopping=False)
    assert decision and decision.delay_s == 0.0 and decision.quick_exits == 1
    assert decision.reason == "the first exit within 10s of starting"


def test_crash_loop_backs_off_exponentially_up_to_the_cap() -> None:
    delays = quick_exit_delays(POLICY, 12)
    assert delays[:6] == [0.0, FIRST_BACKOFF_S, 1.0, 2.0, 4.0, 8.0]
    assert delays[-1] == MAX_BACKOFF_S
    assert max(delays) == MAX_BACKOFF_S
    assert delays == sorted(delays)  # never shrinks while the loop goes on


def test_the_streak_is_reported_in_the_reason() -> None:
    decision = POLICY.decide(started_at=0.0, exited_at=0.5, quick_exits=2, stopping=False)
    assert decision.quick_exits == 3 and decision.delay_s == 2 * FIRST_BACKOFF_S
    assert decision.reason == "3 exits in a row within 10s of starting"


def test_a_huge_streak_stays_at_the_cap() -> None:
    decision = POLICY.decide(started_at=0.0, exited_at=0.0, quick_exits=10**6, stopping=False)
    assert decision.delay_s == MAX_BACKOFF_S


def test_custom_limits() -> None:
    policy = RespawnPolicy(stable_after_s=1.0, first_backoff_s=0.1, max_backoff_s=0.3)
    assert quick_exit_delays(policy, 5) == [0.0, 0.1, 0.2, 0.3, 0.3]
    assert policy.decide(started_at=0.0, exited_at=1.0, quick_exits=4, stopping=False).delay_s == 0


def test_nothing_is_respawned_while_stopping() -> None:
    for lived in (0.1, 3600.0):
        decision = POLICY.decide(started_at=0.0, exited_at=lived, quick_exits=3, stopping=True)
        assert not decision and decision.reason == "the instance is stopping"
        assert decision.quick_exits == 3


def test_clock_going_backwards_counts_as_a_quick_exit() -> None:
    decision = POLICY.decide(started_at=10.0, exited_at=9.0, quick_exits=1, stopping=False)
    assert decision.quick_exits == 2 and decision.delay_s == FIRST_BACKOFF_S


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="quick_exits"):
        POLICY.decide(started_at=0.0, exited_at=1.0, quick_exits=-1, stopping=False)
    with pytest.raises(ValueError, match="must be > 0"):
        RespawnPolicy(first_backoff_s=0.0)
    with pytest.raises(ValueError, match="max_backoff_s"):
        RespawnPolicy(first_backoff_s=2.0, max_backoff_s=1.0)


def test_describe_exit_from_real_wait_statuses() -> None:
    def status_of(code_or_signal: int, by_signal: bool) -> int:
        pid = os.fork()
        if pid == 0:
            if by_signal:
                os.kill(os.getpid(), code_or_signal)
            os._exit(code_or_signal)
        _, status = os.waitpid(pid, 0)
        return status

    assert describe_exit(status_of(signal.SIGKILL, True)) == "killed by SIGKILL"
    assert describe_exit(status_of(signal.SIGTERM, True)) == "killed by SIGTERM"
    assert describe_exit(status_of(70, False)) == "exited with code 70"
    assert describe_exit(status_of(0, False)) == "exited with code 0"
