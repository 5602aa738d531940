"""Caddy's local certificate authority (`tls internal`, `local_certs`, localhost names, IPs).

This module owns the CA that `pki/authorities/<id>/` in storage holds: a root (3600 days, like
Caddy's "10 years" of 30-day months) and an intermediate (7 days) with ECDSA P-256 keys, loaded
when present (including ones real Caddy wrote, so trust already given to Caddy's root carries
over) and created otherwise; the intermediate is replaced when its last 20 % begins (caddypki's
renewal window). Leaf certificates last 12 h, are stored under `certificates/local/<name>/`
exactly as Caddy stores them, and are re-issued once a third of their lifetime remains.

Certificates follow what Caddy 2.6.2 (smallstep templates) produces, checked against a real run:
root/intermediate subject CN "Caddy Local Authority - <year> ECC Root" / "... - ECC
Intermediate", path lengths 1 and 0; leaves with an empty subject, a critical SAN extension,
digitalSignature, serverAuth + clientAuth, random 128-bit serials, chain = leaf + intermediate.
It is built directly on `cryptography` (trustme, which the tests use as a foreign CA, always
stamps its own subject names on certificates, which Caddy's conventions do not allow).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from acme_client.certificates import (
    DEFAULT_RENEWAL_WINDOW_RATIO,
    CertificateError,
    LoadedCertificate,
    PrivateKey,
    load_resource,
    load_stored_certificate,
    normalize_host,
    parse_certificate_chain,
    parse_private_key,
    renewal_due,
)
from acme_client.locks import Locker
from acme_client.storage import (
    LOCAL_ISSUER_KEY,
    CertificateResource,
    FileStorage,
    Storage,
    ca_intermediate_cert_key,
    ca_intermediate_key_key,
    ca_root_cert_key,
    ca_root_key_key,
    names_key,
    save_certificate_resource,
)

log = logging.getLogger(__name__)

# caddypki defaults (modules/caddypki/ca.go, modules/caddytls/internalissuer.go).
DEFAULT_CA_NAME = "Caddy Local Authority"
ROOT_LIFETIME = timedelta(days=30 * 12 * 10)
INTERMEDIATE_LIFETIME = timedelta(days=7)
LEAF_LIFETIME = timedelta(hours=12)
# caddypki renews the intermediate once only 20 % of its lifetime is left.
CA_RENEWAL_WINDOW_RATIO = 0.2

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class LocalCAError(Exception):
    """The local CA could not be loaded or used; the message names the storage file."""


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def encode_private_key(key: PrivateKey) -> bytes:
    """PEM like certmagic's PEMEncodePrivateKey: "EC PRIVATE KEY" (SEC 1) for ECDSA keys."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        fmt = serialization.PrivateFormat.TraditionalOpenSSL
    else:
        fmt = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def encode_certificate(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _serial() -> int:
    # 128 random bits, positive, like smallstep's default serial numbers.
    return secrets.randbits(128) | 1


def _second(moment: datetime) -> datetime:
    # Caddy truncates validity to whole seconds (time.Now().Truncate(time.Second)).
    return moment.astimezone(UTC).replace(microsecond=0)


def _ca_certificate(
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: PrivateKey | None,
    not_before: datetime,
    lifetime: timedelta,
    path_length: int,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    signer: PrivateKey = key
    if issuer is not None:
        assert issuer_key is not None
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(_ec_public(issuer)),
            critical=False,
        )
        signer = issuer_key
    return builder.sign(_ec_signer(signer), hashes.SHA256())


def _ec_public(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise LocalCAError(f"{cert.subject.rfc4514_string()}: CA key is not ECDSA")
    return public


def _ec_signer(key: PrivateKey) -> ec.EllipticCurvePrivateKey:
    # Caddy's local CA is ECDSA-only; a foreign key type in storage is refused, not guessed at.
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise LocalCAError(f"unsupported CA key type {type(key).__name__} (ECDSA expected)")
    return key


def san_entries(names: Sequence[str]) -> list[x509.GeneralName]:
    """SAN entries for names: IP literals as IPAddress, everything else as a DNS name (IDNA)."""
    entries: list[x509.GeneralName] = []
    for raw in names:
        host = normalize_host(raw)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        labels = [
            label if label.isascii() else label.encode("idna").decode("ascii")
            for label in host.split(".")
        ]
        entries.append(x509.DNSName(".".join(labels)))
    return entries


class LocalCA:
    """Caddy's `local` CA over a Storage.

    Call `provision()` once (loads or creates root and intermediate), `maintain()` periodically
    (renews the intermediate), and `obtain(names)` to get a valid leaf (stored one when still
    fresh, else newly issued and stored). Thread-safe. Creating or renewing the CA and issuing
    hold storage locks (`locks/pki_<id>.lock`, certmagic's `locks/issue_cert_<name>.lock`), so
    several processes sharing storage (pyproxy or Caddy) do not race.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        ca_id: str = LOCAL_ISSUER_KEY,
        name: str = DEFAULT_CA_NAME,
        root_common_name: str | None = None,
        intermediate_common_name: str | None = None,
        intermediate_lifetime: timedelta = INTERMEDIATE_LIFETIME,
        leaf_lifetime: timedelta = LEAF_LIFETIME,
        clock: Clock = utc_now,
        locker: Locker | None = None,
        lock_timeout_s: float | None = 60.0,
    ) -> None:
        self.storage = storage
        self.ca_id = ca_id
        self.name = name
        self._root_cn = root_common_name
        self._intermediate_cn = intermediate_common_name or f"{name} - ECC Intermediate"
        self.intermediate_lifetime = intermediate_lifetime
        self.leaf_lifetime = leaf_lifetime
        self.clock = clock
        # Always lock: without it, processes sharing storage race to create the CA and can read
        # a root certificate whose key is not written yet (seen in practice, not theoretical).
        self.locker = locker if locker is not None else storage.new_locker()
        self.lock_timeout_s = lock_timeout_s
        self._mu = threading.RLock()
        self._root: x509.Certificate | None = None
        self._root_key: PrivateKey | None = None
        self._inter_chain: list[x509.Certificate] = []
        self._inter_key: PrivateKey | None = None

    # --- public properties -------------------------------------------------------------------

    @property
    def issuer_key(self) -> str:
        """The `certificates/<issuer_key>/` directory for leaves (Caddy: the CA id)."""
        return self.ca_id

    @property
    def root_certificate(self) -> x509.Certificate:
        with self._mu:
            if self._root is None:
                raise LocalCAError("local CA not provisioned")
            return self._root

    @property
    def intermediate_chain(self) -> list[x509.Certificate]:
        with self._mu:
            if not self._inter_chain:
                raise LocalCAError("local CA not provisioned")
            return list(self._inter_chain)

    def root_cert_path(self) -> Path:
        """The root certificate's file, for `pyproxy trust` and `curl --cacert`.

        Only a file-system storage has one; with another storage, export `root_cert_pem()`.
        """
        if not isinstance(self.storage, FileStorage):
            raise LocalCAError(f"{self.root_cert_label()}: the root certificate is not in a file")
        return self.storage.filename(ca_root_cert_key(self.ca_id))

    def root_cert_label(self) -> str:
        """Where the root certificate is stored, for messages."""
        return self.storage.label(ca_root_cert_key(self.ca_id))

    def root_cert_pem(self) -> bytes:
        return encode_certificate(self.root_certificate)

    # --- provisioning ------------------------------------------------------------------------

    def provision(self) -> None:
        """Load root and intermediate from storage, creating whichever is missing."""
        with self._mu, self._storage_lock(f"pki_{self.ca_id}"):
            root, root_key = self._load_or_create_root()
            self._root, self._root_key = root, root_key
            chain, inter_key = self._load_or_create_intermediate(root, root_key)
            self._inter_chain, self._inter_key = chain, inter_key
        self.maintain()

    def maintain(self) -> bool:
        """Renew the intermediate once it is in its last 20 %. True when it was renewed."""
        with self._mu:
            root = self.root_certificate
            now = self.clock()
            if renewal_due(root, now, CA_RENEWAL_WINDOW_RATIO):
                # Caddy does not renew roots either (it would break every client's trust).
                log.warning("%s: local CA root expires soon", self.root_cert_label())
            inter = self._inter_chain[0]
            if not renewal_due(inter, now, CA_RENEWAL_WINDOW_RATIO):
                return False
            with self._storage_lock(f"pki_{self.ca_id}"):
                # Another process sharing storage may have renewed it meanwhile.
                stored = self._try_load_intermediate(root)
                if stored is not None and not renewal_due(
                    stored[0][0], self.clock(), CA_RENEWAL_WINDOW_RATIO
                ):
                    self._inter_chain, self._inter_key = stored
                    return True
                assert self._root_key is not None
                self._inter_chain, self._inter_key = self._create_intermediate(root, self._root_key)
            log.info("local CA %s: renewed intermediate certificate", self.ca_id)
            return True

    def _storage_lock(self, lock_name: str) -> contextlib.AbstractContextManager[None]:
        return self.locker.locked(lock_name, self.lock_timeout_s)

    def _load_or_create_root(self) -> tuple[x509.Certificate, PrivateKey]:
        cert_key = ca_root_cert_key(self.ca_id)
        key_key = ca_root_key_key(self.ca_id)
        try:
            cert_pem = self.storage.load(cert_key)
        except FileNotFoundError:
            return self._create_root()
        except OSError as exc:
            raise LocalCAError(f"{self.storage.label(cert_key)}: loading root: {exc}") from exc
        try:
            cert = parse_certificate_chain(cert_pem, self.storage.label(cert_key))[0]
            key = parse_private_key(self.storage.load(key_key), self.storage.label(key_key))
        except FileNotFoundError as exc:
            raise LocalCAError(
                f"{self.storage.label(key_key)}: root certificate present but key missing"
            ) from exc
        except (CertificateError, OSError) as exc:
            raise LocalCAError(f"loading local CA root: {exc}") from exc
        return cert, key

    def _create_root(self) -> tuple[x509.Certificate, PrivateKey]:
        now = _second(self.clock())
        cn = self._root_cn or f"{self.name} - {now.year} ECC Root"
        key = _new_key()
        cert = _ca_certificate(cn, key, None, None, now, ROOT_LIFETIME, path_length=1)
        # Certificate before key, like caddypki, so a reader never sees a key without a cert.
        self.storage.store(ca_root_cert_key(self.ca_id), encode_certificate(cert))
        self.storage.store(ca_root_key_key(self.ca_id), encode_private_key(key))
        log.info("local CA %s: created root certificate %s", self.ca_id, self.root_cert_label())
        return cert, key

    def _try_load_intermediate(
        self, root: x509.Certificate
    ) -> tuple[list[x509.Certificate], PrivateKey] | None:
        """The stored intermediate if present and issued by `root`; None when absent."""
        cert_key = ca_intermediate_cert_key(self.ca_id)
        key_key = ca_intermediate_key_key(self.ca_id)
        try:
            cert_pem = self.storage.load(cert_key)
            key_pem = self.storage.load(key_key)
        except FileNotFoundError:
            return None
        try:
            chain = parse_certificate_chain(cert_pem, self.storage.label(cert_key))
            key = parse_private_key(key_pem, self.storage.label(key_key))
        except CertificateError as exc:
            raise LocalCAError(f"loading local CA intermediate: {exc}") from exc
        try:
            chain[0].verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            # A leftover from an older root (e.g. root.crt replaced by hand): unusable.
            log.warning("%s: not issued by the current root; replacing it", cert_key)
            return None
        return chain, key

    def _load_or_create_intermediate(
        self, root: x509.Certificate, root_key: PrivateKey
    ) -> tuple[list[x509.Certificate], PrivateKey]:
        stored = self._try_load_intermediate(root)
        if stored is not None:
            return stored
        return self._create_intermediate(root, root_key)

    def _create_intermediate(
        self, root: x509.Certificate, root_key: PrivateKey
    ) -> tuple[list[x509.Certificate], PrivateKey]:
        now = _second(self.clock())
        lifetime = self.intermediate_lifetime
        if now + lifetime > root.not_valid_after_utc:
            raise LocalCAError(
                f"{self.root_cert_label()}: intermediate lifetime must be less than the root's "
                f"remaining lifetime ({root.not_valid_after_utc - now})"
            )
        key = _new_key()
        cert = _ca_certificate(
            self._intermediate_cn, key, root, root_key, now, lifetime, path_length=0
        )
        self.storage.store(ca_intermediate_cert_key(self.ca_id), encode_certificate(cert))
        self.storage.store(ca_intermediate_key_key(self.ca_id), encode_private_key(key))
        return [cert], key

    # --- leaves ------------------------------------------------------------------------------

    def issue(self, names: Sequence[str]) -> CertificateResource:
        """A new leaf for `names` (not stored). Lifetime 12 h, clamped to the intermediate's."""
        if not names:
            raise LocalCAError("cannot issue a certificate without names")
        with self._mu:
            inter_chain = self.intermediate_chain
            inter_key = self._inter_key
            assert inter_key is not None
        issuer = inter_chain[0]
        now = _second(self.clock())
        not_after = min(now + self.leaf_lifetime, issuer.not_valid_after_utc)
        if not_after <= now:
            raise LocalCAError(f"{self.ca_id}: intermediate certificate has expired")
        key = _new_key()
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))  # Caddy's leaves carry their names only in the SAN
            .issuer_name(issuer.subject)
            .public_key(public)
            .serial_number(_serial())
            .not_valid_before(now)
            .not_valid_after(not_after)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(_ec_public(issuer)),
                critical=False,
            )
            # RFC 5280 §4.2.1.6: with an empty subject the SAN extension must be critical.
            .add_extension(x509.SubjectAlternativeName(san_entries(names)), critical=True)
            .sign(_ec_signer(inter_key), hashes.SHA256())
        )
        chain_pem = encode_certificate(cert) + b"".join(encode_certificate(c) for c in inter_chain)
        return CertificateResource(
            sans=sorted({normalize_host(n) for n in names}),
            certificate_pem=chain_pem,
            private_key_pem=encode_private_key(key),
            issuer_key=self.issuer_key,
        )

    def obtain(
        self, names: Sequence[str], *, renewal_ratio: float = DEFAULT_RENEWAL_WINDOW_RATIO
    ) -> LoadedCertificate:
        """A usable leaf for `names`: the stored one while fresh and chained to our root, else a
        newly issued one, stored under `certificates/<ca id>/<names key>/` like Caddy does."""
        sans = sorted({normalize_host(n) for n in names})
        key = names_key(sans)
        stored = self._fresh_stored(key, renewal_ratio)
        if stored is not None:
            return stored
        # certmagic's lock name for issuance; Caddy instances sharing storage honour it too.
        with self._storage_lock(f"issue_cert_{key}"):
            stored = self._fresh_stored(key, renewal_ratio)
            if stored is not None:
                return stored
            self.maintain()
            resource = self.issue(sans)
            save_certificate_resource(self.storage, resource)
        return load_resource(resource, self.storage)

    def _fresh_stored(self, key: str, renewal_ratio: float) -> LoadedCertificate | None:
        try:
            stored = load_stored_certificate(self.storage, self.issuer_key, key)
        except CertificateError as exc:
            log.warning("%s; issuing a new certificate", exc)
            return None
        if stored is None or renewal_due(stored.leaf, self.clock(), renewal_ratio):
            return None
        if not self.chains_to_root(stored):
            return None
        return stored

    def chains_to_root(self, cert: LoadedCertificate) -> bool:
        """Whether `cert`'s chain is signed up to this CA's root (signatures and issuer names)."""
        root = self.root_certificate
        chain = list(cert.chain)
        try:
            for child, parent in itertools.pairwise(chain):
                child.verify_directly_issued_by(parent)
            chain[-1].verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True
