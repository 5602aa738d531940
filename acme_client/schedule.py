"""Pure timing decisions for certificate management: retry schedule and renewal time.

This module owns *when* things happen, never *doing* them: no I/O, no asyncio, no clock of its
own (callers pass `now`; randomness comes from an injected `random.Random`).

- Retry schedule: certmagic's `retryIntervals` (async.go) — 1m, 2m, 2m, 5m, 10m x3, 20m x4,
  30m x6, 1h x3, 2h x2, 3h x2, then 6h repeated — for up to 30 days after the first failure.
  We add a little jitter so instances sharing storage (or many names failing together) do not
  hit the CA in lock step.
- Renewal: certmagic's `certNeedsRenewal` (certificates.go): an ARI-selected time (minus one
  check interval, so the next wake-up does not overshoot it), the configured
  `renewal_window_ratio` of the lifetime, and the emergency rules (1/20 of the lifetime when ARI
  is in use, 1/50 of the lifetime, or less than 5 check intervals before expiry). The earliest
  applicable moment wins, exactly as certmagic's checks short-circuit on the first that is true.
  The "5 check intervals" rule is what makes 6-day certificates safe with a 10-minute interval.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MINUTE_S = 60.0
HOUR_S = 3600.0

# certmagic async.go retryIntervals, in seconds.
RETRY_INTERVALS_S: tuple[float, ...] = (
    (1 * MINUTE_S, 2 * MINUTE_S, 2 * MINUTE_S, 5 * MINUTE_S)
    + (10 * MINUTE_S,) * 3
    + (20 * MINUTE_S,) * 4
    + (30 * MINUTE_S,) * 6
    + (1 * HOUR_S,) * 3
    + (2 * HOUR_S,) * 2
    + (3 * HOUR_S,) * 2
    + (6 * HOUR_S,)  # the last entry repeats until MAX_RETRY_DURATION_S
)
# certmagic maxRetryDuration: 30 days.
MAX_RETRY_DURATION_S = 30 * 24 * HOUR_S
# +/- this fraction of each interval; small enough to keep the schedule recognisable.
RETRY_JITTER_RATIO = 0.1

# certmagic DefaultRenewalWindowRatio and the default maintenance interval (RenewCheckInterval).
DEFAULT_RENEWAL_WINDOW_RATIO = 1.0 / 3.0
DEFAULT_RENEW_INTERVAL_S = 10 * MINUTE_S
# Emergency ratios from certNeedsRenewal.
ARI_EMERGENCY_RATIO = 1.0 / 20.0
EMERGENCY_RATIO = 1.0 / 50.0
EMERGENCY_CHECK_INTERVALS = 5


def _aware(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC (the `acme` library mixes naive and aware values)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def retry_interval_s(
    failures: int,
    rng: random.Random | None = None,
    intervals: Sequence[float] = RETRY_INTERVALS_S,
    jitter_ratio: float = RETRY_JITTER_RATIO,
) -> float:
    """Seconds to wait after the `failures`-th consecutive failure (1-based).

    The first failure waits intervals[0]; past the end of the table the last entry repeats.
    """
    if failures < 1:
        return 0.0
    base = intervals[min(failures, len(intervals)) - 1]
    if rng is None or jitter_ratio <= 0:
        return base
    return base * (1.0 + rng.uniform(-jitter_ratio, jitter_ratio))


@dataclass(frozen=True, slots=True)
class RetryState:
    """Consecutive failures of one certificate job since `first_failure` (None: no failure)."""

    failures: int = 0
    first_failure: datetime | None = None

    def failed(self, now: datetime) -> RetryState:
        return RetryState(self.failures + 1, self.first_failure or _aware(now))


def next_retry(
    state: RetryState,
    now: datetime,
    *,
    rng: random.Random | None = None,
    retry_after: datetime | None = None,
    intervals: Sequence[float] = RETRY_INTERVALS_S,
    max_duration_s: float = MAX_RETRY_DURATION_S,
) -> datetime | None:
    """When to try again after `state.failures` failures, or None once 30 days have passed.

    A CA's `Retry-After` (rate limits, maintenance) is honoured: never retry before it.
    """
    now = _aware(now)
    if state.failures < 1:
        return now
    start = state.first_failure or now
    if (now - _aware(start)).total_seconds() >= max_duration_s:
        return None
    when = now + timedelta(seconds=retry_interval_s(state.failures, rng, intervals))
    if retry_after is not None and _aware(retry_after) > when:
        when = _aware(retry_after)
    return when


def _window_start(not_before: datetime, not_after: datetime, ratio: float) -> datetime:
    lifetime = _aware(not_after) - _aware(not_before)
    return _aware(not_after) - lifetime * ratio


def expires_at(not_after: datetime) -> datetime:
    """certmagic's expiresAt: NotAfter is inclusive (valid through its last second)."""
    moment = _aware(not_after).replace(microsecond=0)
    return moment + timedelta(seconds=1)


def renewal_time(
    not_before: datetime,
    not_after: datetime,
    *,
    ratio: float = DEFAULT_RENEWAL_WINDOW_RATIO,
    renew_interval_s: float = DEFAULT_RENEW_INTERVAL_S,
    ari_selected_time: datetime | None = None,
) -> datetime:
    """The moment from which a certificate needs renewal (certmagic's certNeedsRenewal).

    `ari_selected_time` is the random time picked inside the CA's ARI suggested window (None when
    the CA offers no ARI). The earliest applicable rule wins.
    """
    if ratio <= 0:
        ratio = DEFAULT_RENEWAL_WINDOW_RATIO
    expiry = expires_at(not_after)
    candidates = [
        _window_start(not_before, expiry, ratio),
        _window_start(not_before, expiry, EMERGENCY_RATIO),
        expiry - timedelta(seconds=renew_interval_s * EMERGENCY_CHECK_INTERVALS),
    ]
    if ari_selected_time is not None:
        # Renew just before the selected time if the next check would come after it.
        candidates.append(_aware(ari_selected_time) - timedelta(seconds=renew_interval_s))
        # Never trust ARI alone near expiry: a bug at either end must not cost uptime.
        candidates.append(_window_start(not_before, expiry, ARI_EMERGENCY_RATIO))
    return min(candidates)


def needs_renewal(
    not_before: datetime,
    not_after: datetime,
    now: datetime,
    *,
    ratio: float = DEFAULT_RENEWAL_WINDOW_RATIO,
    renew_interval_s: float = DEFAULT_RENEW_INTERVAL_S,
    ari_selected_time: datetime | None = None,
) -> bool:
    due = renewal_time(
        not_before,
        not_after,
        ratio=ratio,
        renew_interval_s=renew_interval_s,
        ari_selected_time=ari_selected_time,
    )
    return _aware(now) >= due


def select_ari_time(start: datetime, end: datetime, rng: random.Random) -> datetime:
    """A uniformly random moment in the ARI suggested window (RFC 9773 section 4.2)."""
    start, end = _aware(start), _aware(end)
    if end <= start:
        return start
    span = (end - start).total_seconds()
    return start + timedelta(seconds=rng.uniform(0.0, span))


def next_check_delay_s(
    renew_at: datetime, now: datetime, renew_interval_s: float = DEFAULT_RENEW_INTERVAL_S
) -> float:
    """How long the maintenance loop sleeps: one check interval, or less if renewal is sooner."""
    until = (_aware(renew_at) - _aware(now)).total_seconds()
    return max(0.0, min(renew_interval_s, until))
