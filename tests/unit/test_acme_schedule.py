"""Pure timing rules: certmagic's retry schedule and renewal windows (ratio, ARI, emergency)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from acme_client.schedule import (
    MAX_RETRY_DURATION_S,
    RETRY_INTERVALS_S,
    RetryState,
    expires_at,
    needs_renewal,
    next_check_delay_s,
    next_retry,
    renewal_time,
    retry_interval_s,
    select_ari_time,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
M, H, D = 60.0, 3600.0, 86400.0


class FakeClock:
    """An injected clock the tests move by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def test_retry_table_matches_certmagic() -> None:
    expected = (
        [1 * M, 2 * M, 2 * M, 5 * M]
        + [10 * M] * 3
        + [20 * M] * 4
        + [30 * M] * 6
        + [1 * H] * 3
        + [2 * H] * 2
        + [3 * H] * 2
        + [6 * H]
    )
    assert list(RETRY_INTERVALS_S) == expected
    # certmagic's comments: 10 min elapsed after 4 waits, 1 h after 7, 18 h at the end of the table
    assert sum(expected[:4]) == 10 * M
    assert sum(expected[:7]) == 40 * M
    assert sum(expected[:-1]) == 18 * H


def test_retry_interval_without_jitter_walks_the_table_then_repeats_6h() -> None:
    got = [retry_interval_s(n) for n in range(1, len(RETRY_INTERVALS_S) + 4)]
    assert got[: len(RETRY_INTERVALS_S)] == list(RETRY_INTERVALS_S)
    assert got[len(RETRY_INTERVALS_S) :] == [6 * H] * 3
    assert retry_interval_s(0) == 0.0


def test_retry_jitter_is_bounded_and_varies() -> None:
    rng = random.Random(42)
    values = [retry_interval_s(1, rng) for _ in range(200)]
    assert all(0.9 * M <= v <= 1.1 * M for v in values)
    assert len(set(values)) > 100


def test_full_schedule_with_injected_clock_gives_up_after_30_days() -> None:
    clock = FakeClock(T0)
    state = RetryState()
    waits: list[float] = []
    while True:
        state = state.failed(clock())
        when = next_retry(state, clock())
        if when is None:
            break
        waits.append((when - clock()).total_seconds())
        clock.advance(waits[-1])
        assert len(waits) < 1000
    assert waits[: len(RETRY_INTERVALS_S)] == list(RETRY_INTERVALS_S)
    assert set(waits[len(RETRY_INTERVALS_S) :]) == {6 * H}
    elapsed = (clock() - T0).total_seconds()
    assert MAX_RETRY_DURATION_S <= elapsed < MAX_RETRY_DURATION_S + 6 * H
    assert state.first_failure == T0


def test_retry_after_is_honoured_but_never_shortens() -> None:
    state = RetryState().failed(T0)
    later = T0 + timedelta(hours=3)
    assert next_retry(state, T0, retry_after=later) == later
    sooner = T0 + timedelta(seconds=5)
    assert next_retry(state, T0, retry_after=sooner) == T0 + timedelta(minutes=1)


def test_next_retry_without_failure_is_now() -> None:
    assert next_retry(RetryState(), T0) == T0


def test_naive_datetimes_are_utc() -> None:
    state = RetryState().failed(T0.replace(tzinfo=None))
    assert next_retry(state, T0.replace(tzinfo=None)) == T0 + timedelta(minutes=1)


def test_renewal_at_one_third_of_90_day_lifetime() -> None:
    nb, na = T0, T0 + timedelta(days=90)
    at = renewal_time(nb, na)
    assert abs((expires_at(na) - at).total_seconds() - 30 * D) < 2
    assert not needs_renewal(nb, na, T0 + timedelta(days=59))
    assert needs_renewal(nb, na, T0 + timedelta(days=60, seconds=1))


def test_renewal_ratio_is_configurable() -> None:
    nb, na = T0, T0 + timedelta(days=90)
    at = renewal_time(nb, na, ratio=0.5)
    assert abs((at - T0).total_seconds() - 45 * D) < 2


@pytest.mark.parametrize(
    ("lifetime", "interval_s"),
    [(timedelta(days=6), 600.0), (timedelta(days=45), 600.0), (timedelta(hours=12), 600.0)],
)
def test_short_lifetimes_renew_well_before_expiry(lifetime: timedelta, interval_s: float) -> None:
    nb, na = T0, T0 + lifetime
    at = renewal_time(nb, na, renew_interval_s=interval_s)
    remaining = (expires_at(na) - at).total_seconds()
    # at least a third of the lifetime left, and many check intervals to get it done
    assert remaining >= lifetime.total_seconds() / 3 - 1
    assert remaining >= 5 * interval_s


def test_six_day_certificate_checked_every_10_minutes() -> None:
    nb, na = T0, T0 + timedelta(days=6)
    clock = FakeClock(T0)
    checks = 0
    while not needs_renewal(nb, na, clock(), renew_interval_s=600):
        clock.advance(next_check_delay_s(renewal_time(nb, na), clock(), 600))
        checks += 1
        assert checks < 10_000
    assert clock() - T0 <= timedelta(days=4, seconds=1)
    assert expires_at(na) - clock() >= timedelta(days=2) - timedelta(seconds=1)


def test_emergency_when_expiry_is_within_five_check_intervals() -> None:
    # A very long check interval compared with the lifetime: the 5-interval rule wins.
    nb, na = T0, T0 + timedelta(hours=3)
    at = renewal_time(nb, na, ratio=0.01, renew_interval_s=30 * M)
    assert at == expires_at(na) - timedelta(minutes=150)


def test_emergency_ratio_one_fiftieth() -> None:
    nb, na = T0, T0 + timedelta(days=100)
    at = renewal_time(nb, na, ratio=0.001, renew_interval_s=60)
    assert abs((expires_at(na) - at).total_seconds() - 2 * D) < 2


def test_ari_selected_time_renews_early_minus_one_interval() -> None:
    nb, na = T0, T0 + timedelta(days=90)
    selected = T0 + timedelta(days=10)
    at = renewal_time(nb, na, ari_selected_time=selected, renew_interval_s=600)
    assert at == selected - timedelta(seconds=600)
    assert needs_renewal(nb, na, selected - timedelta(seconds=599), ari_selected_time=selected)


def test_ari_far_future_is_overridden_near_expiry() -> None:
    # A buggy ARI window after expiry must not cost uptime: ratio and emergency rules still apply.
    nb, na = T0, T0 + timedelta(days=90)
    selected = T0 + timedelta(days=200)
    with_ari = renewal_time(nb, na, ari_selected_time=selected)
    assert with_ari == renewal_time(nb, na)
    # With a tiny configured ratio, ARI's own emergency window (1/20 of the lifetime) applies.
    emergency = renewal_time(nb, na, ratio=0.001, ari_selected_time=selected, renew_interval_s=60)
    assert abs((expires_at(na) - emergency).total_seconds() - 4.5 * D) < 2


def test_select_ari_time_is_inside_window() -> None:
    rng = random.Random(3)
    start, end = T0, T0 + timedelta(hours=5)
    for _ in range(100):
        t = select_ari_time(start, end, rng)
        assert start <= t <= end
    assert select_ari_time(end, start, rng) == end  # inverted window: no randomness


def test_next_check_delay() -> None:
    assert next_check_delay_s(T0 + timedelta(hours=1), T0, 600) == 600
    assert next_check_delay_s(T0 + timedelta(seconds=30), T0, 600) == 30
    assert next_check_delay_s(T0 - timedelta(seconds=30), T0, 600) == 0
