"""ACME retry state that survives a restart, against real Pebbles (pyproxy issue #12, item 2).

After a failed attempt the manager stores a retry record per name
(`pyproxy/acme_retry/<name>.json`, see acme_client.retry_record); a new CertificateManager on
the same storage (a restarted process, or the supervisor taking over from a worker) waits for
the stored next attempt instead of contacting the CA at once, and continues the schedule from
the stored failure count. Let's Encrypt allows 5 failed validations per account, hostname and
hour, so a crash loop must not turn into a validation loop.

Pebble's request log (`Pebble.ca_requests()`, `Pebble.new_orders()`) shows what reached the CA.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest
from pebblekit import (
    AcmeEnv,
    acme_env_fixture,  # noqa: F401  (provides the acme_env fixture)
    free_port,
    ipv6_loopback_available,
    requires_pebble,
    wait_until,
)

from acme_client.retry_record import parse_retry_record
from acme_client.storage import retry_record_key

pytestmark = [requires_pebble]

NAME = "retry.example.com"
EAB_MAC = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
WAIT_S = 60.0


def v6() -> str:
    return "::1" if ipv6_loopback_available() else ""


def nothing_listening_port() -> int:
    # Pebble validates HTTP-01 against this port, where nothing answers: validation fails.
    return free_port(also=("::1",) if ipv6_loopback_available() else ())


async def test_restart_waits_for_stored_next_attempt_then_retries_once(
    acme_env: AcmeEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="acme_client")
    pebble = acme_env.new_pebble(http_port=nothing_listening_port(), default_ipv6=v6())
    issuer = acme_env.issuer_config(pebble)

    # First process: one failed validation, then it "crashes" (stops) while waiting to retry.
    first = acme_env.manager(issuer, retry_intervals_s=(4.0, 600.0), staging_fallback=False)
    await first.start([NAME])
    await wait_until(
        lambda: first.status()[0].state == "waiting_retry", WAIT_S, "the first failure"
    )
    failed = first.status()[0]
    await first.stop()
    assert failed.failures == 1 and failed.next_attempt is not None, failed
    assert failed.last_error is not None and "challenge failed" in failed.last_error, failed
    assert pebble.new_orders() == 1

    record = parse_retry_record(acme_env.storage.load(retry_record_key(NAME)))
    assert record.failures == 1
    assert record.next_attempt == failed.next_attempt
    assert record.last_error == failed.last_error
    assert record.issuers == (pebble.directory_url,)
    assert record.first_failure is not None and record.first_failure <= record.next_attempt
    requests_before = len(pebble.ca_requests())

    # The restarted process: the stored backoff holds, nothing is sent to the CA until then.
    second = acme_env.manager(issuer, retry_intervals_s=(4.0, 600.0), staging_fallback=False)
    started = datetime.now(UTC)
    await second.start([NAME])
    await wait_until(
        lambda: second.status()[0].state == "waiting_retry", WAIT_S, "waiting_retry from storage"
    )
    waiting = second.status()[0]
    assert started < record.next_attempt, "the test was too slow to see the backoff"
    assert waiting.next_attempt == record.next_attempt, waiting
    assert waiting.failures == 1 and waiting.last_error == record.last_error, waiting
    assert len(pebble.ca_requests()) == requests_before, pebble.ca_requests()[requests_before:]

    # When the time comes it retries exactly once: the count continues from the record (2nd
    # failure -> the schedule's 2nd interval, 600 s), so the next attempt is far away.
    await wait_until(lambda: second.status()[0].failures >= 2, WAIT_S, "the retry")
    await wait_until(
        lambda: second.status()[0].state == "waiting_retry", WAIT_S, "waiting after the retry"
    )
    retried = second.status()[0]
    assert retried.failures == 2, retried
    assert pebble.new_orders() == 2
    assert retried.next_attempt is not None
    assert (retried.next_attempt - datetime.now(UTC)).total_seconds() > 400, retried
    creating = [r.created for r in caplog.records if r.getMessage() == f"{NAME}: creating order"]
    assert len(creating) == 2, creating
    assert creating[1] >= record.next_attempt.timestamp()
    stored = parse_retry_record(acme_env.storage.load(retry_record_key(NAME)))
    assert stored.failures == 2 and stored.first_failure == record.first_failure
    assert stored.next_attempt == retried.next_attempt


async def test_success_deletes_the_record_and_a_malformed_record_is_ignored(
    acme_env: AcmeEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="acme_client")
    pebble, _responder = await acme_env.start_ca(ipv6=ipv6_loopback_available())
    acme_env.storage.store(retry_record_key(NAME), b'{"failures": "many", "next_attempt": 7')
    mgr = acme_env.manager(acme_env.issuer_config(pebble))
    await mgr.start([NAME])
    assert await mgr.wait_ready(NAME, WAIT_S), mgr.status()
    assert mgr.status()[0].state == "valid"
    assert not acme_env.storage.exists(retry_record_key(NAME))
    warnings = [r.getMessage() for r in caplog.records if "retry record" in r.getMessage().lower()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{NAME}: ignoring unreadable retry record "), warnings


async def test_stored_certificate_serves_at_once_while_renewal_backs_off(
    acme_env: AcmeEnv,
) -> None:
    pebble, responder = await acme_env.start_ca(ipv6=ipv6_loopback_available())
    issuer = acme_env.issuer_config(pebble)
    first = acme_env.manager(issuer)
    await first.start([NAME])
    assert await first.wait_ready(NAME, WAIT_S)
    await first.stop()
    original = acme_env.installed[-1][1]

    # Renewal is due at once and fails (no responder): a retry record is written.
    await responder.stop()
    renewing = acme_env.manager(
        issuer, renewal_window_ratio=1.0, retry_intervals_s=(600.0,), staging_fallback=False
    )
    await renewing.start([NAME])
    await wait_until(
        lambda: renewing.status()[0].state == "waiting_retry", WAIT_S, "a failed renewal"
    )
    await renewing.stop()
    assert acme_env.storage.exists(retry_record_key(NAME))
    requests_before = len(pebble.ca_requests())

    acme_env.installed.clear()
    restarted = acme_env.manager(
        issuer, renewal_window_ratio=1.0, retry_intervals_s=(600.0,), staging_fallback=False
    )
    await restarted.start([NAME])
    assert await restarted.wait_ready(NAME, 10)
    assert [c for _n, c, _k in acme_env.installed] == [original]
    await wait_until(
        lambda: restarted.status()[0].state == "waiting_retry", WAIT_S, "the stored backoff"
    )
    status = restarted.status()[0]
    assert status.failures == 1 and status.not_after is not None, status
    assert status.last_error is not None and status.last_error.startswith("renewing certificate:")
    # The directory and ARI (unauthenticated GETs for the renewal time) may be asked; nothing
    # that needs the account: every order, authorization and challenge step is a POST
    # (RFC 8555 section 6.3).
    sent = pebble.ca_requests()[requests_before:]
    assert pebble.new_orders() == 2  # the first order and the failed renewal
    assert not [r for r in sent if r.startswith("POST ")], sent


async def test_a_record_made_against_other_issuers_does_not_hold(
    acme_env: AcmeEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="acme_client")
    failing = acme_env.new_pebble(http_port=nothing_listening_port(), default_ipv6=v6())
    first = acme_env.manager(
        acme_env.issuer_config(failing), retry_intervals_s=(600.0,), staging_fallback=False
    )
    await first.start([NAME])
    await wait_until(lambda: first.status()[0].state == "waiting_retry", WAIT_S, "a failure")
    await first.stop()

    # The operator points the site at another CA: no reason to wait 10 minutes for it.
    good, _responder = await acme_env.start_ca(ipv6=ipv6_loopback_available())
    second = acme_env.manager(acme_env.issuer_config(good), retry_intervals_s=(600.0,))
    await second.start([NAME])
    assert await second.wait_ready(NAME, WAIT_S), second.status()
    assert good.new_orders() == 1 and failing.new_orders() == 1
    assert not acme_env.storage.exists(retry_record_key(NAME))
    assert any(
        r.getMessage()
        == f"{NAME}: the issuers changed since the last failure ({failing.directory_url}); "
        "not waiting for it"
        for r in caplog.records
    )


async def test_an_order_counts_only_once_the_ca_accepted_it(acme_env: AcmeEnv) -> None:
    good, responder = await acme_env.start_ca(ipv6=ipv6_loopback_available())
    # The first CA refuses the account (EAB required): no order is ever created there.
    refusing = acme_env.new_pebble(
        http_port=responder.port, default_ipv6=v6(), eab_keys={"kid-1": EAB_MAC}
    )
    mgr = acme_env.manager(
        [acme_env.issuer_config(refusing), acme_env.issuer_config(good)],
        retry_intervals_s=(30.0,),
    )
    await mgr.start([NAME])
    assert await mgr.wait_ready(NAME, WAIT_S), mgr.status()
    assert refusing.new_orders() == 0
    assert good.new_orders() == 1
    assert mgr.orders_placed() == 1
    assert mgr.status()[0].orders == 1
    assert json.loads(json.dumps(mgr.status()[0].to_json()))["orders"] == 1
