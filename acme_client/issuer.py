"""The ACME issuer: account and order flow against one CA, with certbot's `acme` package.

This module owns talking to an ACME server (RFC 8555) for HTTP-01 and TLS-ALPN-01 certificates:

- the account: an ECDSA P-256 key and registration per CA + email, stored in Caddy's layout
  (`acme/<issuer>/users/<email>/<user>.key|.json`) and reused; an existing key found by the CA
  (409/200 "account exists") is looked up instead of failing; `accountDoesNotExist` (CA state
  wiped) drops the stored registration and registers again; External Account Binding;
- the order: a fresh certificate key (`key_type`), a CSR, authorizations that are already valid
  are skipped, the challenge chosen among the enabled types as acmez does (`ChallengeMemory`,
  `choose_challenge`), published to storage (`acme_client.http01`, `acme_client.tls_alpn`)
  before it is answered, polling with a deadline, preferred chains, and removal of the
  challenge; an order whose challenge failed in a way another type may avoid (a connection
  refused on port 80, say) is placed again with the untried types, up to 3 orders (acmez);
- ARI (`renewalInfo`): the suggested renewal time, and the `replaces` field on renewal orders
  (a small `NewOrder` extension; the library's `new_order` cannot send it);
- errors: `badNonce` is retried per request far more than the library's single retry (CAs under
  load, and Pebble's PEBBLE_WFE_NONCEREJECT, reject many nonces); `Retry-After` of a refused
  request is kept on the raised `IssuerError`.

Everything here is blocking (the library uses `requests` and sleeps); `AcmeIssuer` runs it in its
own ThreadPoolExecutor (never the loop's default one) through `obtain_async`/`renewal_info_async`,
with a network timeout per request and a deadline per order so shutdown stays bounded.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import datetime as dt
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtensionOID, NameOID
from josepy.json_util import field as jose_field
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from acme_client.http01 import (
    HTTP01,
    TLS_ALPN01,
    Http01Challenge,
    publish_http01,
    remove_http01,
)
from acme_client.locks import Locker, LockError
from acme_client.schedule import select_ari_time
from acme_client.storage import (
    Storage,
    issuer_key_from_ca_url,
    user_private_key_key,
    user_registration_key,
)
from acme_client.tls_alpn import publish_tls_alpn01, remove_tls_alpn01, tls_alpn01_challenge
from acme_client.zerossl import ZEROSSL_EAB_ENDPOINT, EabError, generate_eab, is_zerossl_ca

log = logging.getLogger("acme_client.issuer")

LE_PRODUCTION_CA = "https://acme-v02.api.letsencrypt.org/directory"
LE_STAGING_CA = "https://acme-staging-v02.api.letsencrypt.org/directory"
DEFAULT_CA = LE_PRODUCTION_CA

USER_AGENT = "pyproxy (+acme_client; certmagic-compatible)"
# Per HTTP request to the CA.
NETWORK_TIMEOUT_S = 30
# Whole order (authorizations + finalization); Let's Encrypt validates in seconds.
ORDER_DEADLINE_S = 180.0
# Waiting for another instance registering the same account.
ACCOUNT_LOCK_TIMEOUT_S = 120.0
# Our per-request badNonce retries (the library itself retries once).
BAD_NONCE_ATTEMPTS = 25
# When ARI gives no Retry-After, ask again after this long (RFC 9773 suggests ~6 h).
ARI_DEFAULT_RETRY_S = 6 * 3600.0

KEY_TYPES = ("p256", "p384", "rsa2048", "rsa4096", "ed25519")
# The challenge types pyproxy solves, as Caddy enables them by default (certmagic acmeclient.go).
CHALLENGE_TYPES = (HTTP01, TLS_ALPN01)
# acmez Client.ObtainCertificate: at most this many orders per certificate, 1 s apart, each
# retry leaving out the challenge types that failed for an identifier.
MAX_ORDER_ATTEMPTS = 3
ORDER_RETRY_DELAY_S = 1.0
# acmez pollAuthorization: problems another challenge type might not hit (RFC 8555 §6.7).
RETRYABLE_CHALLENGE_PROBLEMS = frozenset(
    ("connection", "dns", "serverInternal", "unauthorized", "tls")
)
DEFAULT_KEY_TYPE = "p256"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class IssuerError(Exception):
    """Obtaining a certificate failed. `retry_after` is the CA's Retry-After, if any."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: dt.datetime | None = None,
        rate_limited: bool = False,
        acme_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited
        self.acme_code = acme_code


@dataclass(frozen=True, slots=True)
class ExternalAccountBinding:
    key_id: str
    mac_key: str  # base64url, as CAs hand it out


@dataclass(frozen=True, slots=True)
class PreferredChains:
    """Caddy's `preferred_chains`: smallest, or by root / any issuer common name."""

    smallest: bool = False
    root_common_name: tuple[str, ...] = ()
    any_common_name: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.smallest or bool(self.root_common_name) or bool(self.any_common_name)


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """What the Caddyfile's `acme_ca`, `email`, `acme_ca_root`, `acme_eab`, ... configure."""

    ca: str = DEFAULT_CA
    email: str = ""
    ca_root: str | None = None  # PEM file to trust for the CA's HTTPS (tests, private CAs)
    eab: ExternalAccountBinding | None = None
    preferred_chains: PreferredChains = field(default_factory=PreferredChains)
    key_type: str = DEFAULT_KEY_TYPE
    profile: str | None = None
    network_timeout_s: float = NETWORK_TIMEOUT_S
    order_deadline_s: float = ORDER_DEADLINE_S
    # Where to generate EAB credentials from `email` when none are configured (ZeroSSL's API
    # for ZeroSSL's CA, as current Caddy; acme_client.zerossl). None: register without.
    eab_endpoint: str | None = None
    # The enabled challenge types (`challenges.http.disabled`, `challenges.tls-alpn.disabled`).
    challenge_types: tuple[str, ...] = CHALLENGE_TYPES

    @property
    def issuer_key(self) -> str:
        return issuer_key_from_ca_url(self.ca)

    def with_ca(self, ca: str) -> IssuerConfig:
        return IssuerConfig(
            ca=ca,
            email=self.email,
            ca_root=self.ca_root,
            eab=self.eab,
            preferred_chains=self.preferred_chains,
            key_type=self.key_type,
            profile=self.profile,
            network_timeout_s=self.network_timeout_s,
            order_deadline_s=self.order_deadline_s,
            eab_endpoint=self.eab_endpoint,
            challenge_types=self.challenge_types,
        )


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    names: tuple[str, ...]
    certificate_pem: bytes  # full chain, leaf first
    private_key_pem: bytes
    issuer_key: str
    issuer_data: dict[str, Any]  # what certmagic keeps in the resource's issuer_data


@dataclass(frozen=True, slots=True)
class RenewalInfo:
    """ARI for one certificate: the selected renewal time and when to ask again."""

    selected_time: dt.datetime | None
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    retry_after: dt.datetime


class NewOrderWithReplaces(messages.NewOrder):
    """RFC 9773 (ARI) section 5: `replaces` names the certificate a renewal order replaces."""

    replaces: str | None = jose_field("replaces", omitempty=True)


# --- small pure helpers -----------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def ari_cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 section 4.1 certificate identifier: base64url(AKI keyIdentifier).base64url(serial).

    The serial is the DER INTEGER content bytes (with a leading zero when the top bit is set).
    """
    aki = cert.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    if aki.key_identifier is None:
        raise ValueError("certificate has no authority key identifier")
    serial = cert.serial_number
    serial_bytes = serial.to_bytes((serial.bit_length() + 8) // 8, "big")
    return f"{_b64url(aki.key_identifier)}.{_b64url(serial_bytes)}"


def _utc(moment: dt.datetime) -> dt.datetime:
    """The library returns naive local-time datetimes in places: make everything aware UTC."""
    if moment.tzinfo is None:
        return moment.astimezone(dt.UTC)  # naive = local time, as datetime.now() produced it
    return moment.astimezone(dt.UTC)


def generate_private_key(key_type: str) -> PrivateKey:
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "rsa4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported key_type {key_type!r} (expected one of {', '.join(KEY_TYPES)})")


def private_key_pem(key: PrivateKey) -> bytes:
    """PEM like certmagic's encodePrivateKey: SEC1 for EC, PKCS#1 for RSA, PKCS#8 for Ed25519."""
    fmt = (
        serialization.PrivateFormat.PKCS8
        if isinstance(key, ed25519.Ed25519PrivateKey)
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def split_pem_chain(fullchain_pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(fullchain_pem.encode("ascii"))


def _issuer_cn(cert: x509.Certificate) -> str:
    attrs = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = attrs[0].value if attrs else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def select_chain(chains: Sequence[str], prefs: PreferredChains) -> str:
    """certmagic's selectPreferredChain: smallest, then root CN (top issuer), then any issuer CN.

    The first chain (the CA's default) is used when nothing matches.
    """
    if not chains:
        raise ValueError("no certificate chains")
    if len(chains) == 1 or not prefs.enabled:
        return chains[0]
    parsed = [split_pem_chain(c) for c in chains]
    if prefs.smallest:
        best = min(range(len(chains)), key=lambda i: len(chains[i]))
        return chains[best]
    for want in prefs.root_common_name:
        for i, certs in enumerate(parsed):
            if certs and _issuer_cn(certs[-1]) == want:
                return chains[i]
    for want in prefs.any_common_name:
        for i, certs in enumerate(parsed):
            if any(_issuer_cn(c) == want for c in certs):
                return chains[i]
    return chains[0]


class ChallengeMemory:
    """acmez's process-wide memory of challenge types (client.go `preferredChallenges`).

    The types are kept in the order they are tried: the first authorization seen puts the types
    it offers in random order (acmez shuffles on the first fill, so no type is favoured before
    anything is known); after each validation a stable sort puts the types with the best
    success ratio first (a type not yet tried counts as 1.0). So with port 80 blocked, HTTP-01
    fails once and TLS-ALPN-01 is tried first from then on. Thread-safe.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._mu = threading.Lock()
        self._history: list[tuple[str, int, int]] = []  # (type, successes, total)

    def order(self, offered: Sequence[str]) -> tuple[str, ...]:
        """Remember the offered types; the known types, most preferred first."""
        with self._mu:
            was_empty = not self._history
            known = {t for t, _, _ in self._history}
            for chall_type in offered:
                if chall_type not in known:
                    self._history.append((chall_type, 0, 0))
                    known.add(chall_type)
            if was_empty:
                self._rng.shuffle(self._history)
            return tuple(t for t, _, _ in self._history)

    def record(self, chall_type: str, succeeded: bool) -> None:
        with self._mu:
            for i, (name, ok, total) in enumerate(self._history):
                if name == chall_type:
                    self._history[i] = (name, ok + int(succeeded), total + 1)
            self._history.sort(key=lambda h: -(h[1] / h[2] if h[2] else 1.0))


# Shared by every issuer of the process, as acmez's package-level memory is.
CHALLENGE_MEMORY = ChallengeMemory()


def choose_challenge(
    offered: Sequence[str],
    enabled: Sequence[str],
    preferred: Sequence[str],
    failed: Sequence[str] = (),
) -> str | None:
    """acmez nextChallenge: the first preferred type that is offered, enabled and has not
    failed for this identifier yet; None when none is left."""
    remaining = [t for t in offered if t not in failed]
    for chall_type in preferred:
        if chall_type in remaining and chall_type in enabled:
            return chall_type
    return None


def parse_retry_after(value: str | None, now: dt.datetime) -> dt.datetime | None:
    """RFC 9110 Retry-After: delay-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return now + dt.timedelta(seconds=int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return _utc(when)


def _challenge_type(challb: messages.ChallengeBody) -> str:
    """The challenge's `type`; types the library does not model are UnrecognizedChallenge."""
    chall = challb.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        return str(chall.jobj.get("type") or "")
    return str(chall.typ)


def _challenge_token(challb: messages.ChallengeBody) -> str:
    chall = challb.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        return str(chall.jobj.get("token") or "")
    return str(chall.encode("token"))


class _EmptyChallengeResponse(challenges.ChallengeResponse):
    """RFC 8555 §7.5.1: the client answers a challenge with an empty JSON object."""

    typ = TLS_ALPN01

    def __bool__(self) -> bool:
        # The library sends a falsy object as an empty payload (a POST-as-GET, which only
        # fetches the challenge); a fieldless josepy object has length 0, so say it is there.
        return True


# --- the network layer --------------------------------------------------------------------------


class _Network(client.ClientNetwork):
    """ClientNetwork with our own badNonce retries and Retry-After kept on ACME errors."""

    bad_nonce_attempts = BAD_NONCE_ATTEMPTS
    on_bad_nonce: Callable[[], None] | None = None

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        for attempt in range(1, self.bad_nonce_attempts + 1):
            try:
                # _post_once gets its own copy of kwargs, so retries see the original ones.
                return self._post_once(*args, **kwargs)
            except messages.Error as exc:
                if exc.code != "badNonce" or attempt == self.bad_nonce_attempts:
                    raise
                if self.on_bad_nonce is not None:
                    self.on_bad_nonce()
                log.debug("badNonce (attempt %d), retrying with a fresh nonce", attempt)
        raise AssertionError("unreachable")

    @classmethod
    def _check_response(
        cls, response: requests.Response, content_type: str | None = None
    ) -> requests.Response:
        try:
            return super()._check_response(response, content_type=content_type)
        except messages.Error as exc:
            # The library drops the response; keep what scheduling needs.
            setattr(exc, "retry_after_header", response.headers.get("Retry-After"))  # noqa: B010
            setattr(exc, "http_status", response.status_code)  # noqa: B010
            raise


def _describe(exc: BaseException) -> str:
    if isinstance(exc, errors.ValidationError):
        parts = []
        for authzr in exc.failed_authzrs:
            for chall in authzr.body.challenges:
                if chall.error is not None:
                    parts.append(f"{authzr.body.identifier.value}: {chall.error}")
        return "challenge failed: " + "; ".join(parts) if parts else "challenge failed"
    if isinstance(exc, errors.TimeoutError):
        return "timed out waiting for the CA"
    if isinstance(exc, requests.exceptions.RequestException):
        return f"contacting CA: {exc}"
    text = str(exc)
    return text or type(exc).__name__


def _to_issuer_error(exc: BaseException, prefix: str = "") -> IssuerError:
    now = dt.datetime.now(dt.UTC)
    retry_after = None
    code = None
    if isinstance(exc, messages.Error):
        code = exc.code
        retry_after = parse_retry_after(getattr(exc, "retry_after_header", None), now)
    message = prefix + _describe(exc)
    return IssuerError(
        message, retry_after=retry_after, rate_limited=code == "rateLimited", acme_code=code
    )


# --- the issuer ---------------------------------------------------------------------------------


class AcmeIssuer:
    """One ACME CA + account. Thread-safe: the account is set up once under a lock.

    `storage` is the shared Storage (files or Redis).
    """

    def __init__(
        self,
        config: IssuerConfig,
        storage: Storage,
        *,
        executor: concurrent.futures.ThreadPoolExecutor | None = None,
        rng: random.Random | None = None,
        locker: Locker | None = None,
        challenge_memory: ChallengeMemory | None = None,
    ) -> None:
        if config.key_type not in KEY_TYPES:
            raise ValueError(f"unsupported key_type {config.key_type!r}")
        self.config = config
        self.storage = storage
        self.locker = locker or storage.new_locker()
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix=f"acme-{config.issuer_key}"
        )
        self._rng = rng or random.Random()
        self._challenge_memory = challenge_memory or CHALLENGE_MEMORY
        self._mu = threading.Lock()
        self._account_key: JWKEC | None = None
        self._account: messages.RegistrationResource | None = None
        self._directory: messages.Directory | None = None
        # Observability for status and tests.
        self.accounts_registered = 0
        self.orders_placed = 0
        self.bad_nonce_retries = 0
        self.last_order_replaces: str | None = None

    @property
    def issuer_key(self) -> str:
        return self.config.issuer_key

    def close(self) -> None:
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # --- async front ------------------------------------------------------------------------

    async def obtain_async(
        self,
        names: Sequence[str],
        *,
        replaces: bytes | None = None,
        on_step: Callable[[str], None] | None = None,
        on_order: Callable[[], None] | None = None,
    ) -> IssuedCertificate:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor,
            lambda: self.obtain(names, replaces=replaces, on_step=on_step, on_order=on_order),
        )

    async def renewal_info_async(self, cert_pem: bytes) -> RenewalInfo | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.renewal_info, cert_pem)

    # --- account ------------------------------------------------------------------------------

    def _network(self, key: JWK | None) -> _Network:
        verify: bool | str = self.config.ca_root or True
        net = _Network(
            key,
            alg=ES256,
            verify_ssl=verify,  # type: ignore[arg-type]  # the library accepts a CA path too
            user_agent=USER_AGENT,
            timeout=int(self.config.network_timeout_s),
        )
        net.on_bad_nonce = self._count_bad_nonce
        return net

    def _count_bad_nonce(self) -> None:
        self.bad_nonce_retries += 1

    def _load_account_key(self) -> JWKEC | None:
        key_id = user_private_key_key(self.issuer_key, self.config.email)
        try:
            pem = self.storage.load(key_id)
        except FileNotFoundError:
            return None
        loaded = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(
            loaded.curve, ec.SECP256R1
        ):
            # certmagic defaults to P-256 for accounts; ours must be ES256-signable.
            raise IssuerError(f"{key_id}: account key is not an ECDSA P-256 key")
        return JWKEC(key=loaded)

    def _create_account_key(self) -> JWKEC:
        new_key = ec.generate_private_key(ec.SECP256R1())
        key_id = user_private_key_key(self.issuer_key, self.config.email)
        self.storage.store(key_id, private_key_pem(new_key))
        return JWKEC(key=new_key)

    def _account_lock_name(self) -> str:
        # certmagic's accountRegLockKey, made per-CA since our lock namespace is shared.
        name = f"register_acme_account_{self.issuer_key}"
        return f"{name}_{self.config.email}" if self.config.email else name

    def _directory_for(self, net: _Network) -> messages.Directory:
        if self._directory is None:
            self._directory = client.ClientV2.get_directory(self.config.ca, net)
        return self._directory

    def _setup_account(self) -> None:
        """Load the stored account, or register one under a storage lock (once per cluster)."""
        self._account_key = self._load_account_key()
        self._account = self._load_account() if self._account_key is not None else None
        if self._account_key is not None and self._account is not None:
            return
        try:
            with self.locker.locked(self._account_lock_name(), ACCOUNT_LOCK_TIMEOUT_S):
                # Another instance may have registered while we waited: load again first.
                self._account_key = self._load_account_key() or self._create_account_key()
                self._account = self._load_account()
                if self._account is None:
                    net = self._network(self._account_key)
                    self._account = self._register(client.ClientV2(self._directory_for(net), net))
        except LockError as exc:
            raise IssuerError(f"locking account registration: {exc}") from exc

    def _client(self) -> client.ClientV2:
        """A fresh ClientV2 with the account set up (registered or looked up) once per issuer."""
        with self._mu:
            if self._account_key is None or self._account is None:
                self._setup_account()
            assert self._account_key is not None
            net = self._network(self._account_key)
            acme = client.ClientV2(self._directory_for(net), net)
            net.account = self._account
            return acme

    def _load_account(self) -> messages.RegistrationResource | None:
        reg_key = user_registration_key(self.issuer_key, self.config.email)
        try:
            doc = json.loads(self.storage.load(reg_key))
        except FileNotFoundError:
            return None
        except ValueError:
            log.warning("%s: unreadable account registration, looking it up again", reg_key)
            return None
        location = doc.get("location") if isinstance(doc, dict) else None
        if not isinstance(location, str) or not location:
            return None
        body = messages.Registration(
            contact=tuple(doc.get("contact") or ()),
            status=doc.get("status") or "valid",
        )
        return messages.RegistrationResource(body=body, uri=location)

    def _store_account(self, regr: messages.RegistrationResource) -> None:
        # certmagic stores acmez's acme.Account as JSON.
        doc = {
            "status": regr.body.status or "valid",
            "contact": list(regr.body.contact or ()),
            "termsOfServiceAgreed": True,
            "orders": "",
            "location": regr.uri,
        }
        reg_key = user_registration_key(self.issuer_key, self.config.email)
        self.storage.store(reg_key, json.dumps(doc, indent="\t").encode("utf-8"))

    def _register(self, acme: client.ClientV2) -> messages.RegistrationResource:
        assert self._account_key is not None
        eab = None
        credentials = self.config.eab
        if credentials is None and self.config.eab_endpoint is not None:
            try:
                generated = generate_eab(
                    self.config.email, self.config.eab_endpoint, user_agent=USER_AGENT
                )
            except EabError as exc:
                raise IssuerError(f"registering account with {self.config.ca}: {exc}") from None
            log.info("%s: generated EAB credentials (key_id %s)", self.config.ca, generated.key_id)
            credentials = ExternalAccountBinding(generated.key_id, generated.mac_key)
        if credentials is not None:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=self._account_key.public_key(),
                kid=credentials.key_id,
                hmac_key=credentials.mac_key,
                directory=acme.directory,
            )
        new_reg = messages.NewRegistration.from_data(
            email=self.config.email or None,
            terms_of_service_agreed=True,
            external_account_binding=eab,
        )
        try:
            regr = acme.new_account(new_reg)
            self.accounts_registered += 1
            log.info("%s: registered ACME account %s", self.config.ca, regr.uri)
        except errors.ConflictError as exc:
            # The CA knows this key already (registration file lost): use that account.
            location = exc.location
            regr = messages.RegistrationResource(body=messages.Registration(), uri=location)
            acme.net.account = regr
            log.info("%s: found existing ACME account %s", self.config.ca, location)
        self._store_account(regr)
        return regr

    def _forget_account(self) -> None:
        with self._mu:
            self._account = None
        self.storage.delete(user_registration_key(self.issuer_key, self.config.email))

    def _with_account(self, op: Callable[[client.ClientV2], Any]) -> Any:
        """Run `op`; on accountDoesNotExist, register again once and retry."""
        acme = self._client()
        try:
            return op(acme)
        except messages.Error as exc:
            if exc.code != "accountDoesNotExist":
                raise
            log.warning("%s: account no longer exists at the CA; registering again", self.config.ca)
            self._forget_account()
            return op(self._client())

    # --- ARI ------------------------------------------------------------------------------------

    def directory_has_ari(self) -> bool:
        self._client()
        assert self._directory is not None
        try:
            self._directory["renewalInfo"]
        except KeyError:
            return False
        return True

    def renewal_info(self, cert_pem: bytes) -> RenewalInfo | None:
        """ARI for `cert_pem`, or None when the CA has no renewalInfo. Blocking."""
        try:
            if not self.directory_has_ari():
                return None
            assert self._directory is not None
            cert = x509.load_pem_x509_certificate(cert_pem)
            url = self._directory["renewalInfo"].rstrip("/") + "/" + ari_cert_id(cert)
            net = self._network(None)
            resp = net.get(url, content_type="application/json")
            info = messages.RenewalInfo.from_json(resp.json())
        except (errors.Error, requests.exceptions.RequestException, ValueError, KeyError) as exc:
            raise _to_issuer_error(exc, "fetching renewal info: ") from exc
        now = dt.datetime.now(dt.UTC)
        start = _utc(info.suggested_window.start)
        end = _utc(info.suggested_window.end)
        retry = parse_retry_after(resp.headers.get("Retry-After"), now) or (
            now + dt.timedelta(seconds=ARI_DEFAULT_RETRY_S)
        )
        return RenewalInfo(
            selected_time=select_ari_time(start, end, self._rng),
            window_start=start,
            window_end=end,
            retry_after=retry,
        )

    # --- ordering -------------------------------------------------------------------------------

    def _new_order(
        self, acme: client.ClientV2, csr_pem: bytes, replaces: str | None
    ) -> messages.OrderResource:
        """ClientV2.new_order plus `replaces` (and `profile` when configured)."""
        if replaces is None:
            return acme.new_order(csr_pem, profile=self.config.profile)
        csr = x509.load_pem_x509_csr(csr_pem)
        dns_names, ip_addrs = crypto_util.get_identifiers_from_x509(csr.subject, csr.extensions)
        identifiers = [
            messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n) for n in dns_names
        ]
        identifiers += [
            messages.Identifier(typ=messages.IDENTIFIER_IP, value=str(ip)) for ip in ip_addrs
        ]
        order = NewOrderWithReplaces(
            identifiers=identifiers, profile=self.config.profile or "", replaces=replaces
        )
        response = acme._post(acme.directory["newOrder"], order)
        body = messages.Order.from_json(response.json())
        authorizations = [
            acme._authzr_from_response(acme._post_as_get(url), uri=url)
            for url in body.authorizations
        ]
        return messages.OrderResource(
            body=body,
            uri=response.headers.get("Location"),
            authorizations=authorizations,
            csr_pem=csr_pem,
        )

    def _may_retry(
        self,
        exc: errors.ValidationError,
        failed: Mapping[str, list[str]],
        offered: Mapping[str, list[str]],
    ) -> bool:
        """acmez: retry an order whose failed challenges hit a problem another type might not,
        when every failed identifier still has an offered, enabled type that has not failed.

        `offered` is what the pending authorization offered: an invalid one may list only the
        challenge that failed (Pebble does)."""
        for authzr in exc.failed_authzrs:
            domain = authzr.body.identifier.value
            codes = [c.error.code for c in authzr.body.challenges if c.error is not None]
            if not codes or any(code not in RETRYABLE_CHALLENGE_PROBLEMS for code in codes):
                return False
            types = offered.get(domain, [])
            left = choose_challenge(
                types, self.config.challenge_types, types, failed.get(domain, ())
            )
            if left is None:
                return False
        return True

    def _validate_and_finalize(
        self,
        acme: client.ClientV2,
        order: messages.OrderResource,
        deadline: float,
        failed: dict[str, list[str]],
        offered: dict[str, list[str]],
        step: Callable[[str], None],
    ) -> messages.OrderResource:
        """Solve one challenge per pending authorization, poll, finalize; always clean up."""
        assert self._account_key is not None
        published: list[tuple[str, str]] = []  # (identifier, challenge type)
        try:
            for authzr in order.authorizations:
                domain = authzr.body.identifier.value
                if authzr.body.status == messages.STATUS_VALID:
                    step(f"authorization for {domain} already valid")
                    continue
                types = [_challenge_type(c) for c in authzr.body.challenges]
                offered[domain] = types
                chall_type = choose_challenge(
                    types,
                    self.config.challenge_types,
                    self._challenge_memory.order(types),
                    failed.get(domain, ()),
                )
                if chall_type is None:
                    raise IssuerError(
                        f"{domain}: no enabled challenge type left (enabled:"
                        f" {', '.join(self.config.challenge_types)}; offered: {', '.join(types)};"
                        f" failed: {', '.join(failed.get(domain, ())) or 'none'})"
                    )
                challb = next(c for c in authzr.body.challenges if _challenge_type(c) == chall_type)
                response, key_authorization = self._respond(challb, chall_type)
                token = _challenge_token(challb)
                if chall_type == TLS_ALPN01:
                    publish_tls_alpn01(
                        self.storage,
                        self.issuer_key,
                        tls_alpn01_challenge(domain, token, key_authorization, challb.uri),
                    )
                else:
                    publish_http01(
                        self.storage,
                        self.issuer_key,
                        Http01Challenge(domain, token, key_authorization, challb.uri),
                    )
                published.append((domain, chall_type))
                step(f"answering {chall_type} challenge for {domain}")
                acme.answer_challenge(challb, response)
            # The library compares against naive local time.
            remaining = max(1.0, deadline - time.monotonic())
            lib_deadline = dt.datetime.now() + dt.timedelta(seconds=remaining)
            step("waiting for validation")
            try:
                order = acme.poll_authorizations(order, lib_deadline)
            except errors.ValidationError as exc:
                bad = {a.body.identifier.value for a in exc.failed_authzrs}
                for domain, chall_type in published:
                    self._challenge_memory.record(chall_type, domain not in bad)
                    if domain in bad:
                        failed.setdefault(domain, []).append(chall_type)
                raise
            for _domain, chall_type in published:
                self._challenge_memory.record(chall_type, True)
            step("finalizing order")
            return acme.finalize_order(
                order,
                lib_deadline,
                fetch_alternative_chains=self.config.preferred_chains.enabled,
            )
        finally:
            for domain, chall_type in published:
                try:
                    if chall_type == TLS_ALPN01:
                        remove_tls_alpn01(self.storage, self.issuer_key, domain)
                    else:
                        remove_http01(self.storage, self.issuer_key, domain)
                except OSError as exc:
                    log.warning("%s: removing the %s challenge: %s", domain, chall_type, exc)

    def _respond(
        self, challb: messages.ChallengeBody, chall_type: str
    ) -> tuple[challenges.ChallengeResponse, str]:
        """The response to POST (RFC 8555 §7.5.1: an empty object) and the key authorization."""
        assert self._account_key is not None
        if chall_type == HTTP01 and isinstance(challb.chall, challenges.HTTP01):
            response, validation = challb.response_and_validation(self._account_key)
            return response, validation
        # acme 5 has no TLS-ALPN-01 classes: RFC 8555 §8.1 key authorization by hand.
        thumbprint = _b64url(self._account_key.thumbprint())
        return _EmptyChallengeResponse(), f"{_challenge_token(challb)}.{thumbprint}"

    def obtain(
        self,
        names: Sequence[str],
        *,
        replaces: bytes | None = None,
        on_step: Callable[[str], None] | None = None,
        on_order: Callable[[], None] | None = None,
    ) -> IssuedCertificate:
        """Order a certificate for `names` (HTTP-01 / TLS-ALPN-01). Blocking; raises IssuerError.

        `replaces` is the certificate being renewed (PEM); it is named in the order when the CA
        supports ARI. `on_order` is called once the CA has accepted the newOrder.
        """
        step = on_step or (lambda _msg: None)
        try:
            return self._obtain(list(names), replaces, step, on_order)
        except IssuerError:
            raise
        except (errors.Error, requests.exceptions.RequestException, ValueError, OSError) as exc:
            raise _to_issuer_error(exc) from exc

    def _obtain(
        self,
        names: list[str],
        replaces_pem: bytes | None,
        step: Callable[[str], None],
        on_order: Callable[[], None] | None = None,
    ) -> IssuedCertificate:
        cert_key = generate_private_key(self.config.key_type)
        key_pem = private_key_pem(cert_key)
        # make_csr wants PKCS#8 input.
        pkcs8 = cert_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        csr_pem = crypto_util.make_csr(pkcs8, names)
        replaces_id: str | None = None
        if replaces_pem is not None and self.directory_has_ari():
            try:
                replaces_id = ari_cert_id(x509.load_pem_x509_certificate(replaces_pem))
            except ValueError:
                replaces_id = None

        def place(acme: client.ClientV2) -> tuple[client.ClientV2, messages.OrderResource]:
            nonlocal replaces_id
            self.orders_placed += 1
            self.last_order_replaces = replaces_id
            try:
                return acme, self._new_order(acme, csr_pem, replaces_id)
            except messages.Error as exc:
                # A CA may refuse `replaces` (already replaced, unknown cert: 409): RFC 9773
                # says to order again without it.
                if replaces_id is None or exc.code in ("rateLimited", "accountDoesNotExist"):
                    raise
                log.info("%s: order with replaces refused (%s); retrying without", names[0], exc)
                replaces_id = None
                self.last_order_replaces = None
                return acme, self._new_order(acme, csr_pem, None)

        deadline = time.monotonic() + self.config.order_deadline_s
        # Per identifier, the challenge types that failed in this obtain (acmez keeps them per
        # ObtainCertificate call): a new order tries the others.
        failed: dict[str, list[str]] = {}
        offered: dict[str, list[str]] = {}  # per identifier, as its pending authz offered them
        for attempt in range(1, MAX_ORDER_ATTEMPTS + 1):
            step("creating order")
            acme, order = self._with_account(place)
            if on_order is not None:
                on_order()  # the CA accepted it: an order, whatever happens next
            try:
                order = self._validate_and_finalize(acme, order, deadline, failed, offered, step)
                break
            except errors.ValidationError as exc:
                if attempt == MAX_ORDER_ATTEMPTS or not self._may_retry(exc, failed, offered):
                    raise
                log.info(
                    "%s: %s; ordering again with another challenge type (attempt %d of %d)",
                    names[0],
                    _describe(exc),
                    attempt + 1,
                    MAX_ORDER_ATTEMPTS,
                )
                step("challenge failed; ordering again with another challenge type")
                time.sleep(ORDER_RETRY_DELAY_S)
        chains = [order.fullchain_pem, *(order.alternative_fullchains_pem or ())]
        chosen = select_chain(chains, self.config.preferred_chains)
        account_uri = self._account.uri if self._account is not None else ""
        issuer_data: dict[str, Any] = {
            "url": order.body.certificate or "",
            "ca": self.config.ca,
            "account": account_uri,
        }
        step("certificate obtained")
        return IssuedCertificate(
            names=tuple(names),
            certificate_pem=chosen.encode("ascii"),
            private_key_pem=key_pem,
            issuer_key=self.issuer_key,
            issuer_data=issuer_data,
        )


# --- Caddy JSON -> IssuerConfig ---------------------------------------------------------------


def issuer_config_from_caddy(
    issuer: Mapping[str, Any], *, key_type: str | None = None
) -> IssuerConfig | None:
    """An `apps.tls.automation.policies[].issuers[]` entry as an IssuerConfig (None if not ACME).

    Reads `ca` (default Let's Encrypt production), `email`, `external_account{key_id, mac_key}`,
    `trusted_roots_pem_files` (the first file is used to verify the CA; `acme_ca_root`),
    `preferred_chains{smallest, root_common_name, any_common_name}`, `profile` and
    `challenges.{http,tls-alpn}.disabled` (`enabled_challenge_types`). `key_type` is the
    policy's `key_type` (Caddy keeps it on the automation policy, not the issuer). ZeroSSL's
    CA without `external_account` gets its credentials generated from `email` at registration.
    """
    if issuer.get("module") != "acme":
        return None
    eab_doc = issuer.get("external_account")
    eab = None
    if isinstance(eab_doc, Mapping) and eab_doc.get("key_id") and eab_doc.get("mac_key"):
        eab = ExternalAccountBinding(str(eab_doc["key_id"]), str(eab_doc["mac_key"]))
    roots = issuer.get("trusted_roots_pem_files") or []
    chains_doc = issuer.get("preferred_chains")
    chains = PreferredChains()
    if isinstance(chains_doc, Mapping):
        chains = PreferredChains(
            smallest=bool(chains_doc.get("smallest")),
            root_common_name=tuple(str(x) for x in chains_doc.get("root_common_name") or ()),
            any_common_name=tuple(str(x) for x in chains_doc.get("any_common_name") or ()),
        )
    ca = str(issuer.get("ca") or DEFAULT_CA)
    return IssuerConfig(
        ca=ca,
        email=str(issuer.get("email") or ""),
        ca_root=str(roots[0]) if roots else None,
        eab=eab,
        preferred_chains=chains,
        key_type=key_type or DEFAULT_KEY_TYPE,
        profile=str(issuer["profile"]) if issuer.get("profile") else None,
        eab_endpoint=ZEROSSL_EAB_ENDPOINT if eab is None and is_zerossl_ca(ca) else None,
        challenge_types=enabled_challenge_types(issuer),
    )


class IssuerConfigError(ValueError):
    """An ACME issuer's JSON asks for something the issuer cannot do; the message has the path."""


def enabled_challenge_types(issuer: Mapping[str, Any]) -> tuple[str, ...]:
    """The challenge types an `acme` issuer entry leaves enabled (certmagic's default: both)."""
    challenges_doc = issuer.get("challenges")
    doc = challenges_doc if isinstance(challenges_doc, Mapping) else {}

    def disabled(kind: str) -> bool:
        sub = doc.get(kind)
        return isinstance(sub, Mapping) and bool(sub.get("disabled"))

    types = []
    if not disabled("http"):
        types.append(HTTP01)
    if not disabled("tls-alpn"):
        types.append(TLS_ALPN01)
    return tuple(types)


def check_issuer_challenges(
    issuer: Mapping[str, Any], where: str, *, tls_alpn_servable: bool = True
) -> None:
    """Refuse an `acme` issuer that would be left with no challenge type it can solve.

    Caddy provisions such an issuer and fails every order ("no solvers available for remaining
    challenges"); pyproxy refuses it when loading the config, naming the path. pyproxy solves no
    DNS-01, so `challenges.dns` is refused too. `tls_alpn_servable` is
    False where this process cannot see a ClientHello's ALPN list (proxy.libssl unavailable):
    then only HTTP-01 is solved, and a config that allows only TLS-ALPN-01 cannot be honoured.
    """
    if issuer.get("module") != "acme":
        return
    challenges_doc = issuer.get("challenges")
    if isinstance(challenges_doc, Mapping) and "dns" in challenges_doc:
        # certmagic would then solve DNS-01 only; solving HTTP-01 instead is not that.
        raise IssuerConfigError(f"{where}.challenges.dns: the DNS challenge is not supported")
    types = enabled_challenge_types(issuer)
    if not types:
        raise IssuerConfigError(
            f"{where}.challenges: both the http and the tls-alpn challenge are disabled, so no"
            " certificate can be obtained (pyproxy solves no dns challenge)"
        )
    if types == (TLS_ALPN01,) and not tls_alpn_servable:
        raise IssuerConfigError(
            f"{where}.challenges.http.disabled: only the tls-alpn challenge is left, and this"
            " Python cannot answer it (its ssl module shows no ClientHello ALPN list)"
        )
