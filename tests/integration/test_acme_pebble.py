"""The ACME HTTP-01 certificate manager against a real Pebble CA (issue 5).

Each test starts its own Pebble + challtestsrv on loopback (see pebblekit.py) and an HTTP-01
responder that answers from the shared storage through `answer_http01`, the way the proxy's HTTP
listeners will. Pebble resolves every name to 127.0.0.1 / ::1 and validates over IPv6 first.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID
from pebblekit import (
    AcmeEnv,
    acme_env_fixture,  # noqa: F401  (provides the acme_env fixture)
    free_port,
    ipv6_loopback_available,
    requires_pebble,
    wait_until,
    worker_command,
)

from acme_client.certificates import find_stored_certificate, parse_pem_pair
from acme_client.issuer import AcmeIssuer, ExternalAccountBinding, PreferredChains, ari_cert_id
from acme_client.storage import (
    challenge_tokens_prefix,
    site_cert_key,
    site_meta_key,
    site_private_key_key,
    user_private_key_key,
    user_registration_key,
)

pytestmark = [requires_pebble]
requires_ipv6 = pytest.mark.skipif(not ipv6_loopback_available(), reason="no ::1 on this host")

NAMES = ["a.example.com", "b.example.com"]


def verify_chain(pem: bytes, name: str, root_pem: bytes) -> x509.Certificate:
    """Full path validation of the served chain up to Pebble's /roots/0."""
    chain = x509.load_pem_x509_certificates(pem)
    store = verification.Store(x509.load_pem_x509_certificates(root_pem))
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .time(dt.datetime.now(dt.UTC))
        .build_server_verifier(x509.DNSName(name))
    )
    verifier.verify(chain[0], chain[1:])
    return chain[0]


def serials(env: AcmeEnv, name: str) -> list[int]:
    return [
        x509.load_pem_x509_certificate(cert).serial_number
        for n, cert, _key in env.installed
        if n == name
    ]


@requires_ipv6
async def test_obtains_two_names_over_ipv6(acme_env: AcmeEnv) -> None:
    pebble, responder = await acme_env.start_ca(ipv6=True)
    mgr = acme_env.manager(acme_env.issuer_config(pebble))
    await mgr.start(NAMES)
    for name in NAMES:
        assert await mgr.wait_ready(name, 60), mgr.status()

    root = pebble.root_pem()
    issuer_key = mgr.issuers[0].issuer_key
    for name in NAMES:
        (cert_pem, key_pem) = next((c, k) for n, c, k in acme_env.installed if n == name)
        leaf = verify_chain(cert_pem, name, root)
        assert parse_pem_pair(cert_pem, key_pem, cert_label="c", key_label="k").names == (name,)
        assert leaf.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
        # Caddy's layout: certificates/<issuer>/<name>/<name>.crt|.key|.json
        storage = acme_env.storage
        assert storage.load(site_cert_key(issuer_key, name)) == cert_pem
        assert storage.load(site_private_key_key(issuer_key, name)) == key_pem
        meta = json.loads(storage.load(site_meta_key(issuer_key, name)))
        assert meta["sans"] == [name]
        assert meta["issuer_data"]["ca"] == pebble.directory_url
    # One order per name, one account, stored like certmagic.
    assert mgr.orders_placed() == 2
    assert mgr.accounts_registered() == 1
    assert acme_env.storage.exists(user_private_key_key(issuer_key, "admin@example.com"))
    assert acme_env.storage.exists(user_registration_key(issuer_key, "admin@example.com"))
    # Validation came over IPv6 (challtestsrv's default AAAA ::1), Host matched without port.
    assert responder.requests, "Pebble never contacted the responder"
    assert {peer for peer, _host, _path in responder.requests} == {"::1"}
    assert {host for _peer, host, _path in responder.requests} == set(NAMES)
    # Tokens are cleaned up after the order.
    assert acme_env.storage.list(challenge_tokens_prefix(issuer_key)) == []
    states = {s.name: s for s in mgr.status()}
    assert states["a.example.com"].state == "valid"
    assert states["a.example.com"].next_renewal is not None
    assert states["a.example.com"].last_error is None


async def test_obtains_over_ipv4_only(acme_env: AcmeEnv) -> None:
    pebble, responder = await acme_env.start_ca(ipv6=False)
    mgr = acme_env.manager(acme_env.issuer_config(pebble))
    await mgr.start(["v4.example.com"])
    assert await mgr.wait_ready("v4.example.com", 60), mgr.status()
    verify_chain(acme_env.installed[0][1], "v4.example.com", pebble.root_pem())
    assert {peer for peer, _h, _p in responder.requests} == {"127.0.0.1"}


async def test_restart_reuses_certificate_and_account(acme_env: AcmeEnv) -> None:
    pebble, _responder = await acme_env.start_ca(ipv6=ipv6_loopback_available())
    issuer = acme_env.issuer_config(pebble)
    first = acme_env.manager(issuer)
    await first.start(NAMES)
    for name in NAMES:
        assert await first.wait_ready(name, 60)
    await first.stop()
    before = {n: c for n, c, _k in acme_env.installed}

    acme_env.installed.clear()
    second = acme_env.manager(issuer)
    await second.start(NAMES)
    for name in NAMES:
        assert await second.wait_ready(name, 10)
    assert {n: c for n, c, _k in acme_env.installed} == before
    assert second.orders_placed() == 0
    assert second.accounts_registered() == 0
    # The stored account is used as is, even for the next order: no registration either.
    issuer_obj = second.issuers[0]
    assert isinstance(issuer_obj, AcmeIssuer)
    await asyncio.get_running_loop().run_in_executor(None, issuer_obj._client)
    assert issuer_obj.accounts_registered == 0


@pytest.mark.slow
async def test_renewal_swaps_certificate(acme_env: AcmeEnv) -> None:
    # 3-minute certificates; renew once 90 % of the lifetime remains (~18 s after issuance).
    pebble, _responder = await acme_env.start_ca(ipv6=ipv6_loopback_available(), validity_s=180)
    mgr = acme_env.manager(
        acme_env.issuer_config(pebble), renew_interval_s=1.0, renewal_window_ratio=0.9
    )
    await mgr.start(["renew.example.com"])
    assert await mgr.wait_ready("renew.example.com", 60)
    first = acme_env.installed[0][1]
    await wait_until(lambda: len(serials(acme_env, "renew.example.com")) >= 2, 60, "renewal")
    renewed = [c for n, c, _k in acme_env.installed if n == "renew.example.com"][1]
    assert renewed != first
    leaf = verify_chain(renewed, "renew.example.com", pebble.root_pem())
    old_leaf = x509.load_pem_x509_certificate(first)
    assert leaf.not_valid_before_utc >= old_leaf.not_valid_before_utc
    stored = find_stored_certificate(acme_env.storage, "renew.example.com")
    assert stored is not None
    assert stored.leaf.serial_number in serials(acme_env, "renew.example.com")[1:]
    assert mgr.status()[0].last_error is None


@pytest.mark.slow
async def test_two_processes_share_storage_obtain_once(acme_env: AcmeEnv) -> None:
    pebble, _responder = await acme_env.start_ca(ipv6=ipv6_loopback_available())
    issuer = acme_env.issuer_config(pebble)
    names = ["one.example.com", "two.example.com", "three.example.com"]
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root))
    cmd = worker_command(acme_env.storage.root, issuer, names)
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for _ in range(2)
    ]
    results: list[dict[str, Any]] = []
    for proc in procs:
        try:
            out, err = await asyncio.to_thread(proc.communicate, timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert all(r["ok"] for r in results), results
    # Each certificate was ordered exactly once across both processes, one account in total.
    assert sum(r["orders"] for r in results) == len(names), results
    assert sum(r["accounts"] for r in results) == 1, results
    assert results[0]["certs"] == results[1]["certs"]
    for name in names:
        stored = find_stored_certificate(acme_env.storage, name)
        assert stored is not None
        verify_chain(stored.certificate_pem, name, pebble.root_pem())


async def test_ca_unreachable_retries_on_schedule_then_recovers(
    acme_env: AcmeEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="acme_client")
    responder = await acme_env.new_responder(ipv6=ipv6_loopback_available())
    pebble = acme_env.new_pebble(
        http_port=responder.port,
        default_ipv6="::1" if ipv6_loopback_available() else "",
        start=False,  # ports and certificates only: nothing listens yet
    )
    mgr = acme_env.manager(
        acme_env.issuer_config(pebble),
        retry_intervals_s=(0.2, 0.4, 0.6),
        staging_fallback=False,
    )
    await mgr.start(["down.example.com"])
    await wait_until(lambda: mgr.status()[0].failures >= 3, 30, "three failed attempts")
    status = mgr.status()[0]
    assert status.state == "waiting_retry"
    assert status.last_error is not None
    assert status.last_error.startswith("obtaining certificate: contacting CA")
    assert status.next_attempt is not None
    assert any(
        r.getMessage().startswith("down.example.com: obtaining certificate: ")
        for r in caplog.records
    )
    assert acme_env.installed == []
    # The CA comes back: the next scheduled retry succeeds, nothing crashed meanwhile.
    pebble.start()
    assert await mgr.wait_ready("down.example.com", 60), mgr.status()
    assert mgr.status()[0].state == "valid"


async def test_challenge_failure_retries_and_keeps_valid_certificate(
    acme_env: AcmeEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="acme_client")
    pebble, responder = await acme_env.start_ca(ipv6=ipv6_loopback_available())
    issuer = acme_env.issuer_config(pebble)
    first = acme_env.manager(issuer)
    await first.start(["keep.example.com"])
    assert await first.wait_ready("keep.example.com", 60)
    await first.stop()
    original = acme_env.installed[0][1]

    # Nothing answers on Pebble's httpPort any more (as with a wrong port): renewals fail.
    await responder.stop()
    acme_env.installed.clear()
    second = acme_env.manager(
        issuer,
        renewal_window_ratio=1.0,  # due at once
        retry_intervals_s=(0.2,),
    )
    await second.start(["keep.example.com"])
    assert await second.wait_ready("keep.example.com", 10)
    await wait_until(lambda: second.status()[0].failures >= 2, 60, "two failed renewals")
    status = second.status()[0]
    assert status.last_error is not None and "renewing certificate:" in status.last_error
    assert "challenge failed" in status.last_error or "Connection refused" in status.last_error
    # The valid certificate stays in storage and in service.
    stored = find_stored_certificate(acme_env.storage, "keep.example.com")
    assert stored is not None and stored.certificate_pem == original
    assert [c for _n, c, _k in acme_env.installed] == [original]
    assert any("keep.example.com: renewing certificate: " in r.getMessage() for r in caplog.records)


async def test_new_name_challenge_fails_on_wrong_port(acme_env: AcmeEnv) -> None:
    responder = await acme_env.new_responder(ipv6=ipv6_loopback_available())
    wrong = free_port(also=("::1",) if ipv6_loopback_available() else ())
    pebble = acme_env.new_pebble(
        http_port=wrong, default_ipv6="::1" if ipv6_loopback_available() else ""
    )
    mgr = acme_env.manager(acme_env.issuer_config(pebble), retry_intervals_s=(0.2,))
    await mgr.start(["wrongport.example.com"])
    await wait_until(lambda: mgr.status()[0].failures >= 2, 60, "two failed orders")
    status = mgr.status()[0]
    assert status.last_error is not None
    assert status.last_error.startswith("obtaining certificate: challenge failed")
    assert responder.requests == []
    assert acme_env.installed == []
    assert mgr.orders_placed() >= 2


@pytest.mark.slow
async def test_bad_nonce_storm_still_succeeds(acme_env: AcmeEnv) -> None:
    pebble, _responder = await acme_env.start_ca(
        ipv6=ipv6_loopback_available(), nonce_reject_pct=60
    )
    mgr = acme_env.manager(acme_env.issuer_config(pebble), retry_intervals_s=(0.5,))
    await mgr.start(NAMES)
    for name in NAMES:
        assert await mgr.wait_ready(name, 90), mgr.status()
    for name, cert, _key in acme_env.installed:
        verify_chain(cert, name, pebble.root_pem())
    # The storm really happened, and our own retries (not the library's single one) absorbed it.
    acme_issuer = mgr.issuers[0]
    assert isinstance(acme_issuer, AcmeIssuer)
    assert acme_issuer.bad_nonce_retries >= 3


# --- ARI with a fake renewalInfo endpoint ---------------------------------------------------


class FakeAri:
    """Plain-HTTP directory = Pebble's directory + `renewalInfo`, and that endpoint.

    The first certificate's window is in the past (renew now); later ones get a future window.
    """

    def __init__(self, upstream_directory: bytes) -> None:
        self.upstream = json.loads(upstream_directory)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.queries: list[str] = []
        self.renew_now: set[str] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def directory_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dir"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            target = head.split(b" ", 2)[1].decode()
            now = dt.datetime.now(dt.UTC)
            if target == "/dir":
                doc = dict(self.upstream)
                doc["renewalInfo"] = f"http://127.0.0.1:{self.port}/renewal-info"
                body, extra = json.dumps(doc).encode(), b""
            elif target.startswith("/renewal-info/"):
                cert_id = target.rsplit("/", 1)[1]
                self.queries.append(cert_id)
                if cert_id in self.renew_now or len(set(self.queries)) == 1:
                    self.renew_now.add(cert_id)
                    start, end = now - dt.timedelta(hours=2), now - dt.timedelta(hours=1)
                else:
                    start, end = now + dt.timedelta(days=30), now + dt.timedelta(days=31)
                window = {"start": start.isoformat(), "end": end.isoformat()}
                body = json.dumps({"suggestedWindow": window}).encode()
                extra = b"Retry-After: 3600\r\n"
            else:
                body, extra = b"{}", b""
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + extra
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()


async def test_ari_window_triggers_renewal_with_replaces(acme_env: AcmeEnv) -> None:
    pebble, _responder = await acme_env.start_ca(ipv6=ipv6_loopback_available())
    fake = FakeAri(pebble.get(pebble.directory_url))
    await fake.start()
    try:
        config = replace(acme_env.issuer_config(pebble), ca=fake.directory_url)
        # Default ratio: without ARI this 90-day certificate would not renew for 60 days.
        mgr = acme_env.manager(config, renew_interval_s=1.0)
        await mgr.start(["ari.example.com"])
        await wait_until(lambda: len(serials(acme_env, "ari.example.com")) >= 2, 60, "renewal")
        first, second = [c for n, c, _k in acme_env.installed if n == "ari.example.com"][:2]
        first_id = ari_cert_id(x509.load_pem_x509_certificate(first))
        issuer = mgr.issuers[0]
        assert isinstance(issuer, AcmeIssuer)
        assert fake.queries[0] == first_id
        assert issuer.last_order_replaces == first_id
        assert mgr.orders_placed() == 2
        verify_chain(second, "ari.example.com", pebble.root_pem())
        # The replacement's ARI window is in the future: no third order.
        await asyncio.sleep(2.5)
        assert mgr.orders_placed() == 2
        status = mgr.status()[0]
        assert status.next_renewal is not None
        assert status.next_renewal > dt.datetime.now(dt.UTC) + dt.timedelta(days=29)
    finally:
        await fake.stop()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))


# --- account edge cases, EAB, preferred chains ----------------------------------------------


async def test_account_lookup_and_reregistration(acme_env: AcmeEnv) -> None:
    v6 = ipv6_loopback_available()
    pebble, _responder = await acme_env.start_ca(ipv6=v6)
    config = acme_env.issuer_config(pebble)
    first = acme_env.manager(config)
    await first.start(["acct1.example.com"])
    assert await first.wait_ready("acct1.example.com", 60)
    await first.stop()
    issuer_key = config.issuer_key
    reg_key = user_registration_key(issuer_key, config.email)
    location = json.loads(acme_env.storage.load(reg_key))["location"]

    # Registration lost, key kept: the CA answers "account exists"; we look it up, not fail.
    acme_env.storage.delete(reg_key)
    second = acme_env.manager(config)
    await second.start(["acct2.example.com"])
    assert await second.wait_ready("acct2.example.com", 60), second.status()
    await second.stop()
    assert second.accounts_registered() == 0
    assert json.loads(acme_env.storage.load(reg_key))["location"] == location

    # CA state wiped (Pebble restarted on the same ports): accountDoesNotExist -> register again.
    pebble.stop()
    pebble.start()
    third = acme_env.manager(config)
    await third.start(["acct3.example.com"])
    assert await third.wait_ready("acct3.example.com", 60), third.status()
    assert third.accounts_registered() == 1
    assert json.loads(acme_env.storage.load(reg_key))["location"] != location


async def test_external_account_binding(acme_env: AcmeEnv) -> None:
    mac = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
    pebble, _responder = await acme_env.start_ca(
        ipv6=ipv6_loopback_available(), eab_keys={"kid-1": mac}
    )
    without = acme_env.manager(
        acme_env.issuer_config(pebble, email="noeab@example.com"), retry_intervals_s=(30.0,)
    )
    await without.start(["noeab.example.com"])
    await wait_until(lambda: without.status()[0].failures >= 1, 30, "a refused registration")
    assert "externalAccountRequired" in (without.status()[0].last_error or "")
    await without.stop()

    eab = ExternalAccountBinding(key_id="kid-1", mac_key=mac)
    mgr = acme_env.manager(acme_env.issuer_config(pebble, eab=eab))
    await mgr.start(["eab.example.com"])
    assert await mgr.wait_ready("eab.example.com", 60), mgr.status()
    assert mgr.accounts_registered() == 1


async def test_preferred_chain_by_root_common_name(acme_env: AcmeEnv) -> None:
    pebble, _responder = await acme_env.start_ca(ipv6=ipv6_loopback_available(), alternate_roots=1)
    alt_root = x509.load_pem_x509_certificate(pebble.root_pem(1))
    cn = alt_root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(cn, str)
    prefs = PreferredChains(root_common_name=(cn,))
    mgr = acme_env.manager(acme_env.issuer_config(pebble, preferred_chains=prefs))
    await mgr.start(["chain.example.com"])
    assert await mgr.wait_ready("chain.example.com", 60), mgr.status()
    cert = acme_env.installed[0][1]
    verify_chain(cert, "chain.example.com", pebble.root_pem(1))
    with pytest.raises(verification.VerificationError):
        verify_chain(cert, "chain.example.com", pebble.root_pem(0))
