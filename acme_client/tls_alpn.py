"""TLS-ALPN-01 (RFC 8737): the challenge in shared storage, and its challenge certificate.

Like HTTP-01 (acme_client.http01), the issuer publishes the challenge to storage before telling
the CA to validate, so whichever instance sharing the storage receives the CA's handshake can
answer it. certmagic's distributed solver stores the same acmez `acme.Challenge` document for
both types, under the same key `acme/<issuer>/challenge_tokens/<identifier>.json` (solvers.go
`challengeKey`: the identifier value; for an IP identifier the reverse-DNS name, which is the SNI
a CA sends for it, RFC 8738 section 6). Only one challenge per identifier is solved at a time.

The validating CA connects to port 443 with SNI = the name and ALPN offering exactly
`acme-tls/1` (RFC 8737 section 3), and expects a self-signed certificate whose only SAN is the
name and which carries the critical id-pe-acmeIdentifier extension (1.3.6.1.5.5.7.1.31) holding
the DER OCTET STRING of SHA-256(key authorization). The TLS side (proxy.tls) asks
`find_tls_alpn01` and builds its context from `challenge_certificate`.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from acme_client.http01 import (
    TLS_ALPN01,
    Http01Challenge,
    TokenStorage,
    _issuer_keys,
    normalize_challenge_host,
)
from acme_client.storage import challenge_tokens_key

# RFC 8737 section 6.2 (ALPN protocol ID) and section 6.1 (id-pe-acmeIdentifier).
ACME_TLS_1 = "acme-tls/1"
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
# The challenge certificate is only looked at during validation; a day covers any clock skew.
CHALLENGE_CERT_VALIDITY = dt.timedelta(days=1)
# Challenge certificates kept per (name, key authorization): a CA validates from several
# perspectives (Let's Encrypt: 5 handshakes), each must not cost a key generation.
CHALLENGE_CERT_CACHE_SIZE = 64


@dataclass(frozen=True, slots=True)
class ChallengeCertificate:
    """The PEM pair served for one TLS-ALPN-01 challenge."""

    name: str
    certificate_pem: bytes
    private_key_pem: bytes


def challenge_storage_name(identifier: str) -> str:
    """certmagic's challengeKey: the identifier, or for an IP address its reverse-DNS name."""
    try:
        address = ipaddress.ip_address(identifier)
    except ValueError:
        return normalize_challenge_host(identifier)
    return address.reverse_pointer


def tls_alpn01_challenge(
    domain: str, token: str, key_authorization: str, url: str = ""
) -> Http01Challenge:
    """The stored document of a tls-alpn-01 challenge (acmez's acme.Challenge shape)."""
    return Http01Challenge(
        domain=domain, token=token, key_authorization=key_authorization, url=url, type=TLS_ALPN01
    )


def publish_tls_alpn01(storage: TokenStorage, issuer_key: str, challenge: Http01Challenge) -> None:
    """Store the challenge so every instance sharing storage answers it (certmagic: Present)."""
    key = challenge_tokens_key(issuer_key, challenge_storage_name(challenge.domain))
    storage.store(key, challenge.to_json())


def remove_tls_alpn01(storage: TokenStorage, issuer_key: str, domain: str) -> None:
    """Remove the published challenge of `domain` (certmagic: CleanUp). Missing is fine."""
    storage.delete(challenge_tokens_key(issuer_key, challenge_storage_name(domain)))


def find_tls_alpn01(
    storage: TokenStorage, server_name: str, issuer_keys: list[str] | None = None
) -> Http01Challenge | None:
    """The stored challenge to answer a handshake for `server_name` (the SNI), or None.

    Like certmagic's getACMEChallengeInfo, the first issuer holding a document for the name
    wins and the document's type is not checked (one challenge per identifier at a time). The
    stored identifier must be this name, since safe_key may map two names to one file.
    """
    name = normalize_challenge_host(server_name)
    if not name:
        return None
    for issuer in issuer_keys if issuer_keys is not None else _issuer_keys(storage):
        try:
            data = storage.load(challenge_tokens_key(issuer, name))
        except (OSError, ValueError):
            continue
        challenge = Http01Challenge.from_json(data)
        if challenge is None:
            continue
        if challenge.domain and challenge_storage_name(challenge.domain) != name:
            continue
        return challenge
    return None


def acme_identifier_value(key_authorization: str) -> bytes:
    """The extnValue of id-pe-acmeIdentifier: DER OCTET STRING of SHA-256(key authorization).

    RFC 8737 section 3: `Authorization ::= OCTET STRING (SIZE (32))`; DER of a 32-byte OCTET
    STRING is tag 0x04, length 0x20, then the digest.
    """
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return b"\x04\x20" + digest


def _san(name: str) -> x509.GeneralName:
    # RFC 8738 section 6: an IP identifier's certificate names the address as iPAddress.
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


@functools.lru_cache(maxsize=CHALLENGE_CERT_CACHE_SIZE)
def challenge_certificate(name: str, key_authorization: str) -> ChallengeCertificate:
    """The self-signed RFC 8737 section 3 certificate for `name` (cached per name + key auth).

    `name` is the identifier being validated (a DNS name, or an IP address). The key is a fresh
    P-256 key (acmez's TLSALPN01ChallengeCert uses P-256 too).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACME challenge")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + CHALLENGE_CERT_VALIDITY)
        .add_extension(x509.SubjectAlternativeName([_san(name)]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(
                ACME_IDENTIFIER_OID, acme_identifier_value(key_authorization)
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return ChallengeCertificate(
        name=name,
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
        private_key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
