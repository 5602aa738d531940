"""Certificate loading and inspection: PEM files and stored resources into `LoadedCertificate`.

This module owns turning bytes into a usable certificate: parsing a PEM chain and its private key
(`tls cert.pem key.pem`, or what storage holds), checking that they belong together, reading SANs
and validity, the renewal rule (renew when a third of the lifetime remains, certmagic's default),
and finding the stored certificate that serves a name (exact, then one-label wildcard).

Errors are `CertificateError("<file>: <what is wrong>")` so a startup failure names the file.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtensionOID

from acme_client.storage import (
    CertificateResource,
    Storage,
    StorageError,
    list_issuer_keys,
    load_certificate_resource,
    normalize_name,
    site_cert_key,
    site_private_key_key,
)

# certmagic's default RenewalWindowRatio: renew once only a third of the lifetime remains.
DEFAULT_RENEWAL_WINDOW_RATIO = 1.0 / 3.0

PrivateKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


class CertificateError(Exception):
    """A certificate or key could not be used; the message starts with the file or key name."""


@dataclass(frozen=True, slots=True)
class LoadedCertificate:
    """A parsed certificate chain (leaf first) with its private key and PEM bytes.

    `names` are the leaf's SANs (DNS names lowercased, IP addresses in canonical text form);
    `source` is the file or storage key it came from, for messages; `issuer_key` is the storage
    issuer directory for stored certificates ("" for files).
    """

    chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey
    certificate_pem: bytes
    private_key_pem: bytes
    names: tuple[str, ...]
    source: str
    issuer_key: str = ""

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_before(self) -> datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    def covers(self, name: str) -> bool:
        """Whether the certificate is valid for `name` (exact SAN, or `*.` one-label wildcard)."""
        return certificate_covers(self.names, name)

    def expired(self, now: datetime) -> bool:
        return now >= self.not_after

    def renewal_due(self, now: datetime, ratio: float = DEFAULT_RENEWAL_WINDOW_RATIO) -> bool:
        return renewal_due(self.leaf, now, ratio)


# --- small pure helpers ------------------------------------------------------------------------


def normalize_host(name: str) -> str:
    """Lowercase, no trailing dot; IP literals (with or without brackets) in canonical form."""
    name = name.strip().rstrip(".").lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    # Only what could be an IP literal goes to the parser: this runs in every TLS handshake
    # (SNI), and a failed parse costs an exception.
    if ":" in name or name.replace(".", "").isdigit():
        try:
            return str(ipaddress.ip_address(name))
        except ValueError:
            pass
    return name


def certificate_sans(cert: x509.Certificate) -> list[str]:
    """DNS names (lowercased) then IP addresses from the SAN extension, in certificate order.

    Like Go's crypto/tls, a certificate without SANs has no names: the subject CN is ignored.
    """
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return []
    san = ext.value
    assert isinstance(san, x509.SubjectAlternativeName)
    names = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def certificate_covers(sans: Iterable[str], name: str) -> bool:
    host = normalize_host(name)
    sans_set = {s.lower() for s in sans}
    if host in sans_set:
        return True
    wildcard = wildcard_for(host)
    return wildcard is not None and wildcard in sans_set


def wildcard_for(name: str) -> str | None:
    """`a.example.com` -> `*.example.com`; None for IPs and single-label names."""
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        pass
    _first, dot, rest = name.partition(".")
    if not dot or not rest:
        return None
    return "*." + rest


def renewal_due(
    cert: x509.Certificate, now: datetime, ratio: float = DEFAULT_RENEWAL_WINDOW_RATIO
) -> bool:
    """True once less than `ratio` of the certificate's lifetime remains (or it has expired)."""
    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    lifetime = not_after - not_before
    window_start = not_after - lifetime * ratio
    return _aware(now) >= window_start


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- parsing -----------------------------------------------------------------------------------


def parse_certificate_chain(data: bytes, label: str) -> list[x509.Certificate]:
    """Every CERTIFICATE block of a PEM bundle, leaf first; CertificateError naming `label`."""
    if b"-----BEGIN" not in data:
        raise CertificateError(f"{label}: no PEM data found (expected a PEM certificate)")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"{label}: no valid PEM certificate found: {exc}") from exc
    if not certs:
        raise CertificateError(f"{label}: no certificate found in PEM data")
    return certs


def parse_private_key(data: bytes, label: str) -> PrivateKey:
    """A PEM private key (EC, RSA, PKCS#8, Ed25519); CertificateError naming `label`."""
    if b"-----BEGIN" not in data or b"PRIVATE KEY-----" not in data:
        raise CertificateError(f"{label}: no PEM private key found")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # encrypted key
        raise CertificateError(f"{label}: encrypted private keys are not supported") from exc
    except ValueError as exc:
        raise CertificateError(f"{label}: invalid private key: {exc}") from exc
    if not isinstance(
        key,
        ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise CertificateError(f"{label}: unsupported private key type {type(key).__name__}")
    return key


def _public_bytes(key: object) -> bytes:
    assert isinstance(
        key,
        ec.EllipticCurvePublicKey
        | rsa.RSAPublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    )
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def parse_pem_pair(
    certificate_pem: bytes,
    private_key_pem: bytes,
    *,
    cert_label: str,
    key_label: str,
    issuer_key: str = "",
) -> LoadedCertificate:
    """Parse a chain and its key; the key must match the first certificate of the chain."""
    chain = parse_certificate_chain(certificate_pem, cert_label)
    key = parse_private_key(private_key_pem, key_label)
    try:
        leaf_public = _public_bytes(chain[0].public_key())
    except (AssertionError, ValueError) as exc:
        raise CertificateError(f"{cert_label}: unsupported public key type") from exc
    if _public_bytes(key.public_key()) != leaf_public:
        raise CertificateError(
            f"{key_label}: private key does not match the certificate in {cert_label}"
        )
    return LoadedCertificate(
        chain=tuple(chain),
        private_key=key,
        certificate_pem=certificate_pem,
        private_key_pem=private_key_pem,
        names=tuple(certificate_sans(chain[0])),
        source=cert_label,
        issuer_key=issuer_key,
    )


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CertificateError(f"{os.fspath(path)}: reading {what}: {reason}") from exc


def load_pem_files(
    cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]
) -> LoadedCertificate:
    """Load `tls cert.pem key.pem`: errors name the unreadable, non-PEM or mismatched file."""
    cert_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "private key")
    return parse_pem_pair(
        cert_pem, key_pem, cert_label=os.fspath(cert_path), key_label=os.fspath(key_path)
    )


def load_resource(
    resource: CertificateResource, storage: Storage | None = None
) -> LoadedCertificate:
    """Parse a stored certificate resource; errors name its files (in `storage` when given)."""
    name = normalize_name(resource.names_key())
    cert_key = site_cert_key(resource.issuer_key, name)
    key_key = site_private_key_key(resource.issuer_key, name)
    return parse_pem_pair(
        resource.certificate_pem,
        resource.private_key_pem,
        cert_label=storage.label(cert_key) if storage else cert_key,
        key_label=storage.label(key_key) if storage else key_key,
        issuer_key=resource.issuer_key,
    )


# --- lookup in storage -------------------------------------------------------------------------


def load_stored_certificate(
    storage: Storage, issuer_key: str, cert_names_key: str
) -> LoadedCertificate | None:
    """The stored certificate under `certificates/<issuer>/<names key>/`, or None when absent."""
    try:
        resource = load_certificate_resource(storage, issuer_key, cert_names_key)
    except FileNotFoundError:
        return None
    except StorageError as exc:
        raise CertificateError(str(exc)) from exc
    except OSError as exc:
        raise CertificateError(f"{storage.label('')}: loading {cert_names_key}: {exc}") from exc
    return load_resource(resource, storage)


def find_stored_certificate(
    storage: Storage, name: str, issuer_keys: Sequence[str] | None = None
) -> LoadedCertificate | None:
    """The stored certificate to serve `name`: exact name first, then `*.parent`.

    Looks under each issuer in `issuer_keys` (default: every issuer directory in storage). When
    several issuers hold one, the newest (latest not_before) wins, as in certmagic's
    loadCertResourceAnyIssuer. Stored certificates that do not actually cover the name are
    skipped.
    """
    host = normalize_host(name)
    issuers = list(issuer_keys) if issuer_keys is not None else list_issuer_keys(storage)
    candidates = [host]
    wildcard = wildcard_for(host)
    if wildcard is not None:
        candidates.append(wildcard)
    for candidate in candidates:
        found: list[LoadedCertificate] = []
        for issuer in issuers:
            loaded = load_stored_certificate(storage, issuer, candidate)
            if loaded is not None and loaded.covers(host):
                found.append(loaded)
        if found:
            return max(found, key=lambda c: c.not_before)
    return None
