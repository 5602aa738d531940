"""Pure retry records (acme_client.retry_record): JSON round trip, strict parsing, and the
"may I contact the CA / when next" decisions on certmagic's schedule, with an injected `now`."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from acme_client.retry_record import (
    RetryRecord,
    RetryRecordError,
    parse_retry_record,
    record_failure,
    retry_record_json,
)
from acme_client.schedule import MAX_RETRY_DURATION_S, RETRY_INTERVALS_S, RetryState
from acme_client.storage import retry_record_key

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CA = "https://acme-v02.api.letsencrypt.org/directory"
ZEROSSL = "https://acme.zerossl.com/v2/DV90"


def first_failure(
    *,
    issuers: Sequence[str],
    rng: random.Random | None = None,
    retry_after: datetime | None = None,
    intervals: Sequence[float] = RETRY_INTERVALS_S,
) -> RetryRecord:
    return record_failure(
        None,
        "example.com",
        T0,
        error="obtaining certificate: boom",
        issuers=issuers,
        rng=rng,
        retry_after=retry_after,
        intervals=intervals,
    )


def test_first_failure_waits_the_first_interval() -> None:
    record = first_failure(issuers=[CA, ZEROSSL])
    assert record.failures == 1
    assert record.first_failure == T0
    assert record.next_attempt == T0 + timedelta(seconds=RETRY_INTERVALS_S[0])
    assert record.last_error == "obtaining certificate: boom"
    assert record.last_error_at == T0
    assert record.issuers == (CA, ZEROSSL)
    assert not record.gave_up


def test_may_contact_ca_only_from_next_attempt_on() -> None:
    record = first_failure(issuers=[CA])
    assert not record.may_contact_ca(T0)
    assert not record.may_contact_ca(record.next_attempt - timedelta(microseconds=1))
    assert record.may_contact_ca(record.next_attempt)
    assert record.wait_s(T0) == RETRY_INTERVALS_S[0]
    assert record.wait_s(record.next_attempt + timedelta(hours=1)) == 0.0


def test_count_and_first_failure_continue_from_the_previous_record() -> None:
    record = first_failure(issuers=[CA])
    now = T0
    for expected in range(2, 8):
        now = record.next_attempt
        record = record_failure(record, "example.com", now, error="again", issuers=[CA])
        assert record.failures == expected
        assert record.first_failure == T0
        assert record.next_attempt == now + timedelta(seconds=RETRY_INTERVALS_S[expected - 1])
    assert record.retry_state == RetryState(7, T0)


def test_custom_intervals_and_jitter_come_from_the_caller() -> None:
    record = first_failure(issuers=[CA], intervals=(5.0, 50.0))
    assert record.next_attempt == T0 + timedelta(seconds=5)
    second = record_failure(
        record, "example.com", T0, error="x", issuers=[CA], intervals=(5.0, 50.0)
    )
    assert second.next_attempt == T0 + timedelta(seconds=50)
    jittered = first_failure(issuers=[CA], rng=random.Random(7))
    wait = jittered.wait_s(T0)
    assert wait != RETRY_INTERVALS_S[0]
    assert RETRY_INTERVALS_S[0] * 0.9 <= wait <= RETRY_INTERVALS_S[0] * 1.1


def test_retry_after_is_never_undercut() -> None:
    later = T0 + timedelta(hours=3)
    record = first_failure(issuers=[CA], retry_after=later)
    assert record.next_attempt == later


def test_gives_up_after_thirty_days_counted_from_the_stored_first_failure() -> None:
    record = first_failure(issuers=[CA])
    day31 = T0 + timedelta(seconds=MAX_RETRY_DURATION_S + 1)
    gave_up = record_failure(
        record, "example.com", day31, error="still", issuers=[CA], give_up_wait_s=600.0
    )
    assert gave_up.gave_up
    assert gave_up.failures == 2  # kept for the operator
    assert gave_up.first_failure is None
    assert gave_up.next_attempt == day31 + timedelta(seconds=600)
    # The next maintenance round starts a fresh schedule.
    assert gave_up.retry_state == RetryState()
    fresh = record_failure(gave_up, "example.com", gave_up.next_attempt, error="e", issuers=[CA])
    assert (fresh.failures, fresh.first_failure, fresh.gave_up) == (
        1,
        gave_up.next_attempt,
        False,
    )


def test_json_round_trip() -> None:
    record = first_failure(issuers=[CA, ZEROSSL])
    assert parse_retry_record(retry_record_json(record)) == record
    doc = json.loads(retry_record_json(record))
    assert doc == {
        "name": "example.com",
        "failures": 1,
        "first_failure": "2026-01-01T00:00:00+00:00",
        "next_attempt": "2026-01-01T00:01:00+00:00",
        "last_error": "obtaining certificate: boom",
        "last_error_at": "2026-01-01T00:00:00+00:00",
        "issuers": [CA, ZEROSSL],
        "gave_up": False,
    }
    gave_up = record_failure(
        record,
        "example.com",
        T0 + timedelta(days=31),
        error="e",
        issuers=[CA],
    )
    assert parse_retry_record(retry_record_json(gave_up)) == gave_up


def test_times_with_other_offsets_compare_as_instants() -> None:
    doc = json.loads(retry_record_json(first_failure(issuers=[CA])))
    doc["next_attempt"] = "2026-01-01T01:01:00+01:00"  # the same instant as 00:01 UTC
    record = parse_retry_record(json.dumps(doc).encode())
    assert record.next_attempt == T0 + timedelta(minutes=1)
    assert not record.may_contact_ca(T0 + timedelta(seconds=59))
    assert record.may_contact_ca(T0 + timedelta(seconds=60))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"failures": "many"}, "failures: expected a positive integer"),
        ({"failures": True}, "failures: expected a positive integer"),
        ({"failures": 0}, "failures: expected a positive integer"),
        ({"name": ""}, "name: expected a non-empty string"),
        ({"next_attempt": 7}, "next_attempt: expected an RFC 3339 time string"),
        ({"next_attempt": "soon"}, "next_attempt: "),
        ({"next_attempt": "2026-01-01T00:01:00"}, "next_attempt: time without a UTC offset"),
        ({"last_error_at": None}, "last_error_at: expected an RFC 3339 time string"),
        ({"first_failure": None}, "first_failure: missing"),
        ({"issuers": CA}, "issuers: expected a list of strings"),
        ({"issuers": [1]}, "issuers: expected a list of strings"),
        ({"last_error": None}, "last_error: expected a string"),
        ({"gave_up": "no"}, "gave_up: expected true or false"),
    ],
)
def test_malformed_fields_are_named(change: dict[str, object], message: str) -> None:
    doc = json.loads(retry_record_json(first_failure(issuers=[CA])))
    doc.update(change)
    with pytest.raises(RetryRecordError) as info:
        parse_retry_record(json.dumps(doc).encode())
    assert str(info.value).startswith(message), info.value


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"failures": "many", "next_attempt": 7', "not JSON: "),
        (b"\xff\xfe", "not JSON: "),
        (b"[]", "not a JSON object"),
        (b"", "not JSON: "),
    ],
)
def test_malformed_documents_are_errors_not_crashes(data: bytes, message: str) -> None:
    with pytest.raises(RetryRecordError) as info:
        parse_retry_record(data)
    assert str(info.value).startswith(message), info.value


def test_record_key_is_outside_certmagics_trees() -> None:
    assert retry_record_key("Example.COM") == "pyproxy/acme_retry/example.com.json"
    assert retry_record_key("bücher.example") == "pyproxy/acme_retry/xn--bcher-kva.example.json"
    assert retry_record_key("*.example.com") == "pyproxy/acme_retry/wildcard_.example.com.json"
    # No traversal out of the prefix, whatever the name.
    assert retry_record_key("../../etc/passwd") == "pyproxy/acme_retry/etcpasswd.json"


def test_backoff_holds_only_for_the_issuers_it_was_made_against() -> None:
    record = first_failure(issuers=[CA, ZEROSSL])
    assert record.applies_to([CA, ZEROSSL])
    assert record.applies_to((CA, ZEROSSL))
    assert not record.applies_to([CA])  # a fallback removed
    assert not record.applies_to([ZEROSSL, CA])  # another order: another first CA
    assert not record.applies_to(["https://acme-staging-v02.api.letsencrypt.org/directory"])
