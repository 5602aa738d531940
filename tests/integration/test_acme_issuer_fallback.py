"""Issuer fallback against real Pebbles (pyproxy issue #12): a policy's `issuers` are tried in
order for each attempt, like certmagic's `obtainCert` (Caddy's default with `email` set is Let's
Encrypt, then ZeroSSL). The first CA here refuses the account (it requires External Account
Binding and the issuer has none), so the second must issue."""

from __future__ import annotations

import logging

import pytest
from pebblekit import (
    AcmeEnv,
    acme_env_fixture,  # noqa: F401  (provides the acme_env fixture)
    ipv6_loopback_available,
    requires_pebble,
)

from acme_client.certificates import parse_pem_pair

pytestmark = [requires_pebble]

NAME = "fallback.example.com"
EAB_MAC = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


async def test_second_issuer_issues_when_the_first_refuses_the_account(
    acme_env: AcmeEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="acme_client")
    good, responder = await acme_env.start_ca(ipv6=ipv6_loopback_available())
    refusing = acme_env.new_pebble(
        http_port=responder.port,
        default_ipv6="::1" if ipv6_loopback_available() else "",
        eab_keys={"kid-1": EAB_MAC},
    )
    first, second = acme_env.issuer_config(refusing), acme_env.issuer_config(good)
    assert first.issuer_key != second.issuer_key
    mgr = acme_env.manager([first, second], retry_intervals_s=(30.0,))
    await mgr.start([NAME])
    assert await mgr.wait_ready(NAME, 60), mgr.status()

    # Issued by the second CA: its chain, its storage key, and the status says so.
    [status] = mgr.status()
    assert status.state == "valid", status
    assert status.issuer == second.issuer_key, status
    assert status.failures == 0 and status.last_error is None, status
    [(installed_name, cert_pem, key_pem)] = acme_env.installed
    assert installed_name == NAME
    assert parse_pem_pair(cert_pem, key_pem, cert_label="cert", key_label="key").names == (NAME,)
    assert good.intermediate_pem().strip() in cert_pem
    assert refusing.intermediate_pem().strip() not in cert_pem

    # Exactly one failed attempt against the first CA is logged, naming it and its error.
    refusals = [
        r.getMessage()
        for r in caplog.records
        if refusing.directory_url in r.getMessage() and "externalAccountRequired" in r.getMessage()
    ]
    assert len(refusals) == 1, [r.getMessage() for r in caplog.records]
    assert refusals[0].startswith(
        f"{NAME}: could not get certificate from {refusing.directory_url}"
    )
    assert any(
        r.getMessage() == f"{NAME}: certificate obtained successfully from {good.directory_url}"
        for r in caplog.records
    )
