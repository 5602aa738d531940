"""TLS-ALPN-01 (RFC 8737): the challenge certificate, its storage, and the SNI-time switch.

Handshakes run in memory (ssl.MemoryBIO) against the listener context `SNISelector` builds, so
the ClientHello callback of proxy.libssl, the SNI callback and the context switch are the real
ones; the clients are Python ssl clients offering the ALPN lists a CA or a browser sends.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from tlskit import memory_handshake

from acme_client.http01 import (
    Http01Challenge,
    answer_http01,
    publish_http01,
)
from acme_client.storage import FileStorage
from acme_client.tls_alpn import (
    ACME_IDENTIFIER_OID,
    ChallengeCertificate,
    challenge_certificate,
    find_tls_alpn01,
    publish_tls_alpn01,
    remove_tls_alpn01,
    tls_alpn01_challenge,
)
from proxy import libssl
from proxy.tls import CertificateStore, SNISelector, challenge_context

ISSUER = "acme.test-dir"
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEYAUTH = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
NAME = "a.example.com"


# ---- the challenge certificate ----------------------------------------------------------------


def test_challenge_certificate_has_rfc8737_contents() -> None:
    pair = challenge_certificate(NAME, KEYAUTH)
    cert = x509.load_pem_x509_certificate(pair.certificate_pem)
    # Self-signed: issuer = subject, and its own key verifies its signature.
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == [NAME]
    assert len(list(san.value)) == 1
    ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    # DER OCTET STRING (tag 4, length 32) of SHA-256 of the key authorization.
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(KEYAUTH.encode()).digest()
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_challenge_certificate_for_an_ip_identifier_names_the_address() -> None:
    cert = x509.load_pem_x509_certificate(
        challenge_certificate("192.0.2.7", KEYAUTH).certificate_pem
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.7")]
    assert san.get_values_for_type(x509.DNSName) == []


def test_challenge_certificate_is_cached_per_name_and_key_authorization() -> None:
    first = challenge_certificate(NAME, KEYAUTH)
    assert challenge_certificate(NAME, KEYAUTH) is first
    assert challenge_certificate(NAME, KEYAUTH + "x") is not first
    assert challenge_certificate("b.example.com", KEYAUTH) is not first
    assert challenge_context(first) is challenge_context(first)


# ---- storage ------------------------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> FileStorage:
    return FileStorage(tmp_path)


def test_published_under_certmagics_key_with_acmez_shape(storage: FileStorage) -> None:
    publish_tls_alpn01(storage, ISSUER, tls_alpn01_challenge(NAME, TOKEN, KEYAUTH, "https://c"))
    path = storage.root / "acme" / ISSUER / "challenge_tokens" / f"{NAME}.json"
    assert json.loads(path.read_bytes()) == {
        "type": "tls-alpn-01",
        "url": "https://c",
        "status": "pending",
        "token": TOKEN,
        "keyAuthorization": KEYAUTH,
        "identifier": {"type": "dns", "value": NAME},
    }
    found = find_tls_alpn01(storage, NAME.upper() + ".")
    assert found is not None and found.key_authorization == KEYAUTH
    assert find_tls_alpn01(storage, "other.example.com") is None
    remove_tls_alpn01(storage, ISSUER, NAME)
    assert find_tls_alpn01(storage, NAME) is None


def test_ip_identifier_is_stored_under_its_reverse_name(storage: FileStorage) -> None:
    # certmagic's challengeKey; the CA's SNI for an IP identifier is that name (RFC 8738 §6).
    publish_tls_alpn01(storage, ISSUER, tls_alpn01_challenge("192.0.2.7", TOKEN, KEYAUTH))
    found = find_tls_alpn01(storage, "7.2.0.192.in-addr.arpa")
    assert found is not None and found.domain == "192.0.2.7"


def test_a_caddy_http01_document_is_found_like_certmagic_does(storage: FileStorage) -> None:
    # certmagic does not check the stored type either way (one challenge per name at a time).
    publish_http01(storage, ISSUER, Http01Challenge(NAME, TOKEN, KEYAUTH))
    assert find_tls_alpn01(storage, NAME) is not None
    publish_tls_alpn01(storage, ISSUER, tls_alpn01_challenge(NAME, TOKEN, KEYAUTH))
    assert Http01Challenge.from_json(b'{"token": "t", "keyAuthorization": "k"}') is not None
    assert answer_http01(storage, NAME, "/.well-known/acme-challenge/" + TOKEN) is not None


# ---- the handshake ------------------------------------------------------------------------------


def handshake(
    ctx: ssl.SSLContext,
    sni: str,
    alpn: list[str] | None,
    *,
    tls_max: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
) -> tuple[ssl.SSLObject, ssl.SSLObject, bool]:
    """A TLS handshake in memory: (client, server, whether the server side completed).

    The client must complete (else AssertionError; ssl.SSLError on a refused handshake).
    """
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client_ctx.maximum_version = tls_max
    if alpn is not None:
        client_ctx.set_alpn_protocols(alpn)
    return memory_handshake(ctx, client_ctx, sni)


def served_certificate(client: ssl.SSLObject) -> x509.Certificate:
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def is_challenge_certificate(cert: x509.Certificate) -> bool:
    return any(ext.oid == ACME_IDENTIFIER_OID for ext in cert.extensions)


@pytest.fixture
def selector(storage: FileStorage) -> SNISelector:
    if libssl.bridge() is None:
        pytest.skip(f"libssl bridge unavailable: {libssl.unavailable_reason()}")
    ca = trustme.CA()
    leaf = ca.issue_cert(NAME)
    store = CertificateStore()
    store.add_pem(leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes())

    def lookup(server_name: str) -> ChallengeCertificate | None:
        challenge = find_tls_alpn01(storage, server_name)
        if challenge is None:
            return None
        return challenge_certificate(challenge.domain, challenge.key_authorization)

    return SNISelector(store, [{}], acme_challenge=lookup)


@pytest.mark.parametrize("tls_max", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_a_ca_hello_gets_the_challenge_certificate_and_acme_tls(
    selector: SNISelector, storage: FileStorage, tls_max: ssl.TLSVersion
) -> None:
    publish_tls_alpn01(storage, ISSUER, tls_alpn01_challenge(NAME, TOKEN, KEYAUTH))
    client, server, server_done = handshake(
        selector.server_context(), NAME, ["acme-tls/1"], tls_max=tls_max
    )
    # The CA completed (with TLS 1.2 that needs the server's last flight to be flushed).
    assert client.version() == ("TLSv1.3" if tls_max == ssl.TLSVersion.TLSv1_3 else "TLSv1.2")
    cert = served_certificate(client)
    assert is_challenge_certificate(cert)
    assert client.selected_alpn_protocol() == "acme-tls/1"
    ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID).value
    assert isinstance(ext, x509.UnrecognizedExtension)
    assert ext.value[2:] == hashlib.sha256(KEYAUTH.encode()).digest()
    # The server side never reports the handshake done, so no HTTP protocol ever sees this
    # connection; the next step (the CA's close or any data) ends it.
    assert not server_done
    with pytest.raises(ssl.SSLError, match="tls-alpn-01 challenge answered"):
        server.do_handshake()
    assert not selector.handshake_allowed(server)


@pytest.mark.parametrize(
    "alpn", [None, ["http/1.1"], ["h2", "http/1.1"], ["acme-tls/1", "http/1.1"]]
)
def test_other_hellos_get_the_normal_certificate_while_a_challenge_is_pending(
    selector: SNISelector, storage: FileStorage, alpn: list[str] | None
) -> None:
    publish_tls_alpn01(storage, ISSUER, tls_alpn01_challenge(NAME, TOKEN, KEYAUTH))
    client, server, server_done = handshake(selector.server_context(), NAME, alpn)
    assert server_done
    cert = served_certificate(client)
    assert not is_challenge_certificate(cert)
    assert cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName) == [NAME]
    assert client.selected_alpn_protocol() in (None, "http/1.1")
    assert selector.handshake_allowed(server)


def test_alternating_hellos_on_one_listener_context_each_get_theirs(
    selector: SNISelector, storage: FileStorage
) -> None:
    # The flag lives on each connection: a CA hello never leaks into the next browser hello.
    publish_tls_alpn01(storage, ISSUER, tls_alpn01_challenge(NAME, TOKEN, KEYAUTH))
    ctx = selector.server_context()
    for _ in range(3):
        ca_client, _, _ = handshake(ctx, NAME, ["acme-tls/1"])
        assert is_challenge_certificate(served_certificate(ca_client))
        browser, _, _ = handshake(ctx, NAME, ["http/1.1"])
        assert not is_challenge_certificate(served_certificate(browser))


def test_a_ca_hello_without_a_pending_challenge_fails_like_certmagic(
    selector: SNISelector,
) -> None:
    with pytest.raises(ssl.SSLError, match="INTERNAL_ERROR"):
        handshake(selector.server_context(), NAME, ["acme-tls/1"])


def test_without_the_bridge_no_challenge_is_served(
    storage: FileStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(libssl, "_bridge", None)
    monkeypatch.setattr(libssl, "_unavailable", "test: no bridge")
    calls: list[Any] = []
    sel = SNISelector(CertificateStore(), [{}], acme_challenge=calls.append)
    assert sel.acme_challenge is None
