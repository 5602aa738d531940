"""wait_for_lock, the wait loop FileLocker and RedisLocker share (certmagic's poll semantics),
on an injected clock: the waits it asks for are recorded, not slept."""

from __future__ import annotations

from collections.abc import Iterator

from acme_client.locks import LOCK_POLL_INTERVAL_S, RetryIn, wait_for_lock


class FakeTime:
    """A monotonic clock that advances only when the wait loop sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def attempts(*outcomes: bool | RetryIn) -> Iterator[bool | RetryIn]:
    yield from outcomes
    raise AssertionError("attempted more often than expected")


def wait(
    outcomes: Iterator[bool | RetryIn],
    clock: FakeTime,
    timeout_s: float | None,
    max_attempts: int | None = None,
    poll_s: float = LOCK_POLL_INTERVAL_S,
) -> bool:
    return wait_for_lock(
        lambda: next(outcomes),
        poll_s,
        timeout_s,
        max_attempts=max_attempts,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
    )


def test_a_free_lock_is_taken_without_waiting() -> None:
    clock = FakeTime()
    assert wait(attempts(True), clock, timeout_s=None) is True
    assert clock.sleeps == []


def test_a_held_lock_is_polled_every_poll_interval_until_free() -> None:
    clock = FakeTime()
    assert wait(attempts(False, False, True), clock, timeout_s=None) is True
    assert clock.sleeps == [LOCK_POLL_INTERVAL_S, LOCK_POLL_INTERVAL_S]


def test_an_attempt_may_ask_for_a_sooner_retry() -> None:
    # certmagic: an empty lock file is re-read after 250 ms; a removed (stale or released) one
    # is retried at once.
    clock = FakeTime()
    assert wait(attempts(RetryIn(0.25), RetryIn(0.0), False, True), clock, None) is True
    assert clock.sleeps == [0.25, LOCK_POLL_INTERVAL_S]


def test_the_timeout_clips_the_last_wait_and_gets_a_last_attempt() -> None:
    clock = FakeTime()
    assert wait(attempts(False, False, False, False), clock, timeout_s=2.5) is False
    assert clock.sleeps == [1.0, 1.0, 0.5]  # then the fourth attempt, at the deadline
    assert clock.now == 2.5


def test_a_lock_freed_at_the_deadline_is_taken() -> None:
    clock = FakeTime()
    assert wait(attempts(False, True), clock, timeout_s=0.3) is True
    assert clock.sleeps == [0.3]


def test_a_zero_timeout_is_one_attempt() -> None:
    clock = FakeTime()
    assert wait(attempts(False), clock, timeout_s=0.0) is False
    assert clock.sleeps == []


def test_max_attempts_gives_up_without_a_trailing_wait() -> None:
    clock = FakeTime()
    assert wait(attempts(False, False), clock, timeout_s=None, max_attempts=2) is False
    assert clock.sleeps == [LOCK_POLL_INTERVAL_S]


def test_retries_count_as_attempts() -> None:
    clock = FakeTime()
    assert wait(attempts(RetryIn(0.0), False), clock, None, max_attempts=2) is False
    assert clock.sleeps == []
