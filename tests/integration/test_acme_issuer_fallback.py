"""Issuer fallback against real Pebbles (pyproxy issue #12): a policy's `issuers` are tried in
order for each attempt, like certmagic's `obtainCert` (Caddy's default with `email` set is Let's
Encrypt, then ZeroSSL). The first CA here refuses the account (it requires External Account
Binding and the issuer has none), so the second must issue. Then ZeroSSL's case: an EAB-requiring
CA and credentials generated from the email (a loopback stand-in for ZeroSSL's API)."""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import json
import logging
import threading
import time
import urllib.parse
from typing import Any

import pytest
from pebblekit import (
    AcmeEnv,
    acme_env_fixture,  # noqa: F401  (provides the acme_env fixture)
    ipv6_loopback_available,
    requires_pebble,
)

from acme_client.certificates import parse_pem_pair
from acme_client.issuer import issuer_config_from_caddy
from acme_client.zerossl import ZEROSSL_EAB_ENDPOINT

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


class StandInEabApi:
    """A loopback stand-in for ZeroSSL's `/acme/eab-credentials-email` (the real API is on the
    internet): answers every POST with `answer` and records the form bodies it got."""

    def __init__(self, answer: dict[str, Any]) -> None:
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                api.requests.append((self.path, urllib.parse.parse_qs(self.rfile.read(length))))
                body = json.dumps(answer).encode()
                self.send_response(200)  # ZeroSSL answers errors with 200 too
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.requests: list[tuple[str, dict[bytes, list[bytes]]]] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/acme/eab-credentials-email"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.mark.parametrize("api_answer", ["credentials", "error"])
async def test_eab_credentials_generated_from_the_email_like_zerossl(
    acme_env: AcmeEnv, api_answer: str
) -> None:
    """ZeroSSL's CA needs EAB; Caddy generates it from the email at registration (the
    adapter's LE-then-ZeroSSL fallback has no EAB in the config). A CA requiring EAB issues
    to an issuer whose credentials come from the API; an API error is the attempt's error."""
    _good, responder = await acme_env.start_ca(ipv6=ipv6_loopback_available())
    eab_ca = acme_env.new_pebble(
        http_port=responder.port,
        default_ipv6="::1" if ipv6_loopback_available() else "",
        eab_keys={"kid-1": EAB_MAC},
    )
    answer: dict[str, Any] = (
        {"success": True, "eab_kid": "kid-1", "eab_hmac_key": EAB_MAC}
        if api_answer == "credentials"
        else {"success": False, "error": {"code": 2800, "type": "invalid_email"}}
    )
    api = StandInEabApi(answer)
    try:
        issuer = dataclasses.replace(acme_env.issuer_config(eab_ca), eab_endpoint=api.url)
        mgr = acme_env.manager(issuer, retry_intervals_s=(30.0,))
        await mgr.start([NAME])
        if api_answer == "credentials":
            assert await mgr.wait_ready(NAME, 60), mgr.status()
            [(_name, cert_pem, _key)] = acme_env.installed
            assert eab_ca.intermediate_pem().strip() in cert_pem
            assert mgr.accounts_registered() == 1
        else:
            deadline = time.monotonic() + 60
            while mgr.status()[0].state != "waiting_retry":
                assert time.monotonic() < deadline, mgr.status()
                await asyncio.sleep(0.1)
            error = mgr.status()[0].last_error or ""
            assert "failed getting EAB credentials: HTTP 200: invalid_email (code 2800)" in error
            assert eab_ca.ca_requests().count("POST /sign-me-up") == 0  # never registered
        assert api.requests == [("/acme/eab-credentials-email", {b"email": [b"admin@example.com"]})]
    finally:
        api.close()


def test_zerossl_ca_without_eab_generates_it_and_explicit_eab_wins() -> None:
    zerossl = {"module": "acme", "ca": "https://acme.zerossl.com/v2/DV90", "email": "a@b.example"}
    config = issuer_config_from_caddy(zerossl)
    assert config is not None and config.eab_endpoint == ZEROSSL_EAB_ENDPOINT
    explicit = {**zerossl, "external_account": {"key_id": "k", "mac_key": EAB_MAC}}
    config = issuer_config_from_caddy(explicit)
    assert config is not None and config.eab_endpoint is None and config.eab is not None
    lets_encrypt = issuer_config_from_caddy({"module": "acme", "email": "a@b.example"})
    assert lets_encrypt is not None and lets_encrypt.eab_endpoint is None
