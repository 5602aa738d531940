"""Pure retry records: the ACME retry state of one name, as stored so it survives restarts.

certmagic keeps its retry state (failure count, first failure) in memory, so a restarted Caddy
contacts the CA at once after a failure. Let's Encrypt allows 5 failed validations per account,
hostname and hour; a crash loop or a quick restart must not spend them. pyproxy therefore stores
one record per name after every failed attempt (`acme_client.storage.retry_record_key`:
`pyproxy/acme_retry/<name>.json`, outside certmagic's `certificates/` tree), reads it before
every attempt (whichever process runs the manager) and deletes it on success. This is a
deliberate deviation from Caddy: a restart keeps the backoff (and the 30-day give-up clock).

This module owns the record <-> JSON mapping and the decisions ("may I contact the CA now",
"when next" after one more failure); no I/O, no clock of its own (callers pass `now`), like
`acme_client.schedule`, whose schedule it applies.

The JSON document (times are RFC 3339 with offset):

    {"name": "example.com", "failures": 2, "first_failure": "...", "next_attempt": "...",
     "last_error": "obtaining certificate: ...", "last_error_at": "...",
     "issuers": ["https://acme-v02.api.letsencrypt.org/directory"], "gave_up": false}

After certmagic's 30-day give-up the record says `gave_up`, keeps the failure count for the
operator, and the next attempt (one maintenance interval later) starts a fresh schedule.
A record only holds while the job's issuers are the ones it names (`RetryRecord.applies_to`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from acme_client.schedule import (
    DEFAULT_RENEW_INTERVAL_S,
    MAX_RETRY_DURATION_S,
    RETRY_INTERVALS_S,
    RetryState,
    next_retry,
)


class RetryRecordError(ValueError):
    """A stored retry record is not what `retry_record_json` writes; the message names the field."""


@dataclass(frozen=True, slots=True)
class RetryRecord:
    """Consecutive failed attempts for one name, and when the CA may be contacted again."""

    name: str
    failures: int
    first_failure: datetime | None  # None once the schedule gave up (it starts over)
    next_attempt: datetime
    last_error: str
    last_error_at: datetime
    issuers: tuple[str, ...]  # CA directory URLs tried in the last attempt, in order
    gave_up: bool = False

    @property
    def retry_state(self) -> RetryState:
        """Where the schedule continues: after a give-up it starts over (certmagic)."""
        if self.gave_up:
            return RetryState()
        return RetryState(self.failures, self.first_failure)

    def applies_to(self, issuers: Sequence[str]) -> bool:
        """Whether the backoff holds for a job trying `issuers` (CA directory URLs, in order).

        A record made against other CAs does not: the operator changed the issuers (fixed a CA
        URL, added a fallback), and the rate limits the backoff spares are per CA.
        """
        return self.issuers == tuple(issuers)

    def may_contact_ca(self, now: datetime) -> bool:
        return _aware(now) >= self.next_attempt

    def wait_s(self, now: datetime) -> float:
        """Seconds until the CA may be contacted again (0 when it may be now)."""
        return max(0.0, (self.next_attempt - _aware(now)).total_seconds())


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def record_failure(
    previous: RetryRecord | None,
    name: str,
    now: datetime,
    *,
    error: str,
    issuers: Sequence[str],
    rng: random.Random | None = None,
    retry_after: datetime | None = None,
    intervals: Sequence[float] = RETRY_INTERVALS_S,
    max_duration_s: float = MAX_RETRY_DURATION_S,
    give_up_wait_s: float = DEFAULT_RENEW_INTERVAL_S,
) -> RetryRecord:
    """The record after one more failed attempt at `now`.

    The failure count and first failure continue from `previous` (so the schedule, and its
    30-day limit, continue across restarts); the next attempt follows certmagic's schedule and
    is never before the CA's Retry-After. Past 30 days the record gives up: the next attempt is
    one maintenance interval (`give_up_wait_s`) later, with a fresh schedule.
    """
    now = _aware(now)
    state = (previous.retry_state if previous is not None else RetryState()).failed(now)
    when = next_retry(
        state,
        now,
        rng=rng,
        retry_after=retry_after,
        intervals=intervals,
        max_duration_s=max_duration_s,
    )
    gave_up = when is None
    if when is None:
        when = now + timedelta(seconds=give_up_wait_s)
        if retry_after is not None and _aware(retry_after) > when:
            when = _aware(retry_after)
    return RetryRecord(
        name=name,
        failures=state.failures,
        first_failure=None if gave_up else state.first_failure,
        next_attempt=when,
        last_error=error,
        last_error_at=now,
        issuers=tuple(issuers),
        gave_up=gave_up,
    )


def retry_record_json(record: RetryRecord) -> bytes:
    def iso(moment: datetime | None) -> str | None:
        return _aware(moment).isoformat() if moment is not None else None

    doc = {
        "name": record.name,
        "failures": record.failures,
        "first_failure": iso(record.first_failure),
        "next_attempt": iso(record.next_attempt),
        "last_error": record.last_error,
        "last_error_at": iso(record.last_error_at),
        "issuers": list(record.issuers),
        "gave_up": record.gave_up,
    }
    return json.dumps(doc, indent="\t").encode("utf-8")


def _time(doc: dict[str, Any], key: str, *, optional: bool = False) -> datetime | None:
    value = doc.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise RetryRecordError(f"{key}: expected an RFC 3339 time string, got {value!r}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise RetryRecordError(f"{key}: {exc}") from exc
    if moment.tzinfo is None:
        raise RetryRecordError(f"{key}: time without a UTC offset: {value!r}")
    return moment


def parse_retry_record(data: bytes) -> RetryRecord:
    """The record `retry_record_json` wrote; RetryRecordError naming the bad field otherwise."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RetryRecordError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise RetryRecordError("not a JSON object")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise RetryRecordError(f"name: expected a non-empty string, got {name!r}")
    failures = doc.get("failures")
    # bool is an int in Python; JSON true is not a count.
    if not isinstance(failures, int) or isinstance(failures, bool) or failures < 1:
        raise RetryRecordError(f"failures: expected a positive integer, got {failures!r}")
    last_error = doc.get("last_error")
    if not isinstance(last_error, str):
        raise RetryRecordError(f"last_error: expected a string, got {last_error!r}")
    issuers = doc.get("issuers")
    if not isinstance(issuers, list) or not all(isinstance(i, str) for i in issuers):
        raise RetryRecordError(f"issuers: expected a list of strings, got {issuers!r}")
    gave_up = doc.get("gave_up", False)
    if not isinstance(gave_up, bool):
        raise RetryRecordError(f"gave_up: expected true or false, got {gave_up!r}")
    first_failure = _time(doc, "first_failure", optional=True)
    if first_failure is None and not gave_up:
        raise RetryRecordError("first_failure: missing (only a given-up record has none)")
    next_attempt = _time(doc, "next_attempt")
    last_error_at = _time(doc, "last_error_at")
    assert next_attempt is not None and last_error_at is not None
    return RetryRecord(
        name=name,
        failures=failures,
        first_failure=first_failure,
        next_attempt=next_attempt,
        last_error=last_error,
        last_error_at=last_error_at,
        issuers=tuple(issuers),
        gave_up=gave_up,
    )
