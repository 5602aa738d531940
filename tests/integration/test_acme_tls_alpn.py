"""TLS-ALPN-01 (RFC 8737) through `pyproxy run` against a real Pebble (issue #12, item 5).

Pebble validates TLS-ALPN-01 on pyproxy's HTTPS port (pebblekit `tls_port`) and HTTP-01 on its
HTTP port. With `disable_http_challenge` the certificate can only come over TLS-ALPN-01: the
HTTPS listener answers the CA's `acme-tls/1` hello with the challenge certificate published in
storage. Over IPv6, challtestsrv answers AAAA only (no A records), over IPv4 A only, so the
validation can only reach pyproxy over that family. Meanwhile a normal HTTPS client keeps
connecting and must never be handed the challenge certificate. With `disable_tlsalpn_challenge`
(and TLS-ALPN-01 reachable) Pebble only ever validates http-01.
"""

from __future__ import annotations

import random
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from pebblekit import (
    AcmeEnv,
    Pebble,
    acme_env_fixture,  # noqa: F401  (provides the acme_env fixture)
    free_port,
    ipv6_loopback_available,
    requires_pebble,
    start_pebble_for_proxy,
)

from acme_client.http01 import HTTP01, TLS_ALPN01
from acme_client.issuer import AcmeIssuer, ChallengeMemory, IssuerConfig, IssuerError
from acme_client.storage import FileStorage, issuer_key_from_ca_url
from acme_client.tls_alpn import ACME_IDENTIFIER_OID, publish_tls_alpn01, tls_alpn01_challenge

pytestmark = requires_pebble

NAME = "alpn.example.com"
OBTAINED = "certificate obtained successfully"
CERT_TIMEOUT_S = 90.0
EMAIL = "admin@example.com"


def caddyfile(tmp_path: Path, pebble: Pebble, http_port: int, https_port: int, disable: str) -> str:
    return (
        "{\n"
        f"\thttp_port {http_port}\n"
        f"\thttps_port {https_port}\n"
        "\tadmin off\n"
        f"\tstorage file_system {tmp_path / 'data'}\n"
        "}\n"
        f"{NAME} {{\n"
        "\ttls {\n"
        "\t\tissuer acme {\n"
        f"\t\t\tdir {pebble.directory_url}\n"
        f"\t\t\ttrusted_roots {pebble.ca_pem}\n"
        f"\t\t\temail {EMAIL}\n"
        f"\t\t\t{disable}\n"
        "\t\t}\n"
        "\t}\n"
        '\trespond "hello over tls"\n'
        "}\n"
    )


def handshake_certificate(port: int, alpn: list[str] | None) -> x509.Certificate | None:
    """Whatever certificate the server hands a client with this ALPN list (None: refused)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=NAME) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return x509.load_der_x509_certificate(der) if der else None


def challenge_connection_gets_no_http(port: int) -> bool:
    """Handshake as the CA would, then send a request: True when the server only closes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["acme-tls/1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None and is_challenge_certificate(x509.load_der_x509_certificate(der))
        assert tls.selected_alpn_protocol() == "acme-tls/1"
        try:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
            data = tls.recv(4096)
        except (ConnectionError, ssl.SSLError):
            return True  # reset / alert: closed
        return data == b""  # EOF; a timeout (a server still reading) fails the test


def is_challenge_certificate(cert: x509.Certificate) -> bool:
    return any(ext.oid == ACME_IDENTIFIER_OID for ext in cert.extensions)


class NormalClients:
    """Browsers during the challenge: handshake in a loop (bounded), record what they got."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.got: list[x509.Certificate] = []
        self.attempts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + CERT_TIMEOUT_S
        while not self._stop.is_set() and time.monotonic() < deadline and self.attempts < 5000:
            self.attempts += 1
            for alpn in (["h2", "http/1.1"], None):
                cert = handshake_certificate(self.port, alpn)
                if cert is not None:
                    self.got.append(cert)
            self._stop.wait(0.02)

    def __enter__(self) -> NormalClients:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def wait_for_certificate(port: int, root_pem: str, proc: Any) -> x509.Certificate:
    deadline = time.monotonic() + CERT_TIMEOUT_S
    ctx = ssl.create_default_context(cadata=root_pem)  # Pebble's root only
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise AssertionError(f"pyproxy exited:\n{proc.log}")
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                ctx.wrap_socket(raw, server_hostname=NAME) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                return x509.load_der_x509_certificate(der)
        except (OSError, ssl.SSLError) as exc:
            last = exc
            time.sleep(0.3)
    raise AssertionError(f"no certificate in time ({last!r})\n{proc.log[-6000:]}")


def validated_challenge_types(pebble: Pebble, storage_root: Path) -> list[str]:
    """The types of the challenges Pebble validated for pyproxy's account (its listed orders).

    Pebble's request log names no challenge (`POST /chalZ/ -> calling handler()`), so this asks
    Pebble itself as pyproxy's account (key and registration from its storage): the account's
    orders (RFC 8555 §7.1.2.1), their authorizations, and each challenge that left `pending`.
    """
    issuer = AcmeIssuer(
        IssuerConfig(ca=pebble.directory_url, ca_root=str(pebble.ca_pem), email=EMAIL),
        FileStorage(storage_root),
    )
    try:
        acme = issuer._client()
        assert acme.net.account is not None
        account_uri = acme.net.account.uri
        orders_url = acme._post_as_get(account_uri).json()["orders"]
        types = []
        for order_url in acme._post_as_get(orders_url).json()["orders"]:
            for authz_url in acme._post_as_get(order_url).json()["authorizations"]:
                authz = acme._post_as_get(authz_url).json()
                types += [c["type"] for c in authz["challenges"] if c["status"] != "pending"]
        return types
    finally:
        issuer.close()


@pytest.mark.parametrize("family", ["ipv6", "ipv4"])
def test_obtains_over_tls_alpn_with_the_http_challenge_disabled(
    run_proxy: Any, tmp_path: Path, family: str
) -> None:
    if family == "ipv6" and not ipv6_loopback_available():
        pytest.skip("no ::1 on this host")
    also = ("::1",) if ipv6_loopback_available() else ()
    http_port = free_port(also=also)
    https_port = free_port(also=also)
    pebble = start_pebble_for_proxy(tmp_path, http_port, https_port, v6=family == "ipv6")
    try:
        root_pem = pebble.root_pem().decode()
        config = caddyfile(tmp_path, pebble, http_port, https_port, "disable_http_challenge")
        with NormalClients(https_port) as clients:
            proc = run_proxy(config, https_port)
            cert = wait_for_certificate(https_port, root_pem, proc)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [NAME]
        assert not is_challenge_certificate(cert)
        # The normal clients ran through the whole challenge and never saw its certificate.
        assert clients.attempts > 0
        assert not any(is_challenge_certificate(c) for c in clients.got), proc.log[-4000:]
        log = proc.log
        assert log.count(f"{NAME}: {OBTAINED}") == 1, log
        assert "served the tls-alpn-01 challenge certificate" in log, log
        assert validated_challenge_types(pebble, tmp_path / "data") == ["tls-alpn-01"]
        # Cleaned up after validation (certmagic CleanUp): nothing left to answer.
        tokens = list((tmp_path / "data").glob("acme/*/challenge_tokens/*.json"))
        assert tokens == []
        # A CA-style hello now fails: no challenge pending (certmagic fails it too).
        assert handshake_certificate(https_port, ["acme-tls/1"]) is None
        # A challenge published by another instance sharing the storage is answered too, and
        # the connection ends with the handshake: an HTTP request over it gets no response.
        storage = FileStorage(tmp_path / "data")
        issuer_key = issuer_key_from_ca_url(pebble.directory_url)
        publish_tls_alpn01(storage, issuer_key, tls_alpn01_challenge(NAME, "t" * 43, "t.k"))
        assert challenge_connection_gets_no_http(https_port)
        assert proc.stop() == 0
    finally:
        pebble.stop()


def test_with_tls_alpn_disabled_only_http01_is_used(run_proxy: Any, tmp_path: Path) -> None:
    v6 = ipv6_loopback_available()
    also = ("::1",) if v6 else ()
    http_port = free_port(also=also)
    https_port = free_port(also=also)
    # TLS-ALPN-01 would reach pyproxy too: only the config keeps it from being used.
    pebble = start_pebble_for_proxy(tmp_path, http_port, https_port, v6=False)
    try:
        root_pem = pebble.root_pem().decode()
        config = caddyfile(tmp_path, pebble, http_port, https_port, "disable_tlsalpn_challenge")
        proc = run_proxy(config, https_port)
        wait_for_certificate(https_port, root_pem, proc)
        assert pebble.new_orders() == 1
        assert validated_challenge_types(pebble, tmp_path / "data") == ["http-01"]
        assert "served the tls-alpn-01 challenge certificate" not in proc.log
        assert proc.stop() == 0
    finally:
        pebble.stop()


async def test_a_failed_tls_alpn_challenge_is_retried_over_http01(acme_env: AcmeEnv) -> None:
    # acmez: a challenge failing with a connection problem gets a new order that tries the
    # other enabled type. Pebble's tlsPort is a free port nothing listens on.
    pebble, _responder = await acme_env.start_ca(ipv6=False)
    memory = ChallengeMemory(random.Random(0))
    memory.order([HTTP01, TLS_ALPN01])
    memory.record(HTTP01, False)  # so TLS-ALPN-01 is tried first
    issuer = AcmeIssuer(
        acme_env.issuer_config(pebble, challenge_types=(HTTP01, TLS_ALPN01)),
        acme_env.storage,
        challenge_memory=memory,
    )
    steps: list[str] = []
    try:
        issued = await issuer.obtain_async([NAME], on_step=steps.append)
    finally:
        issuer.close()
    assert issued.names == (NAME,)
    assert issuer.orders_placed == 2
    assert f"answering tls-alpn-01 challenge for {NAME}" in steps
    assert f"answering http-01 challenge for {NAME}" in steps
    assert pebble.new_orders() == 2 and pebble.challenge_answers() == 2
    # Pebble lists the account's orders that are not invalid: the second one, by HTTP-01.
    assert validated_challenge_types(pebble, acme_env.storage.root) == [HTTP01]
    # Remembered process-wide: HTTP-01 (1 of 2) now goes before TLS-ALPN-01 (0 of 1).
    preferred = memory.order([HTTP01, TLS_ALPN01])
    assert preferred.index(HTTP01) < preferred.index(TLS_ALPN01)


async def test_no_retry_when_the_only_enabled_type_failed(acme_env: AcmeEnv) -> None:
    pebble, _responder = await acme_env.start_ca(ipv6=False)
    issuer = AcmeIssuer(
        acme_env.issuer_config(pebble, challenge_types=(TLS_ALPN01,)), acme_env.storage
    )
    try:
        with pytest.raises(IssuerError, match="challenge failed"):
            await issuer.obtain_async([NAME])
    finally:
        issuer.close()
    assert issuer.orders_placed == 1
