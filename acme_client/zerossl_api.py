"""The `zerossl` issuer as current Caddy runs it: ZeroSSL's own REST API, not ACME.

Current Caddy's `tls.issuance.zerossl` (modules/caddytls/zerosslissuer.go) wraps certmagic's
ZeroSSLIssuer (zerosslissuer.go), which uses the caddyserver/zerossl client. One issuance:

1. `POST /certificates` with the CSR (`certificate_domains`, `certificate_csr`,
   `certificate_validity_days`, `strict_domains=1`); the answer is a certificate object with,
   per identifier, the HTTP validation file's URL and content lines;
2. the validation is published to storage (`zerossl/challenge_tokens/<domain>.json`,
   acme_client.http01) so whichever worker or node receives ZeroSSL's request for
   `/.well-known/pki-validation/<file>.txt` answers it (certmagic's distributed solver);
3. `POST /certificates/<id>/challenges` with `validation_method=HTTP_CSR_HASH`;
4. while the status is `pending_validation`, `GET /certificates/<id>` every 5 s until `issued`;
5. `GET /certificates/<id>/download/return`: `certificate.crt` + `ca_bundle.crt` is the chain.

A failure after step 1 cancels the certificate (`POST /certificates/<id>/cancel`) as certmagic
does, and the stored validation is always removed. Every request carries the key as the
`access_key` query parameter (redacted in errors). ZeroSSL's API reports errors with HTTP 200
and a `{"success": false, "error": {...}}` body; the Go client recognises a success by decoding
the body strictly into its model, and so does `decode_api_response` (any field the model lacks
means an error payload). Certmagic asks ZeroSSL with a CSR whose Common Name is the name (its
API wants a CN distinct from the SANs), so the CSR here has the CN and no SAN for one name.

Issuer key `zerossl` (certmagic's zerosslIssuerKey): certificates are stored under
`certificates/zerossl/<name>/`, with the certificate object as `issuer_data`. No ARI, no
revocation (not needed by pyproxy), no CNAME validation (pyproxy has no DNS providers; the
config is refused).

The API base URL is ZeroSSL's `https://api.zerossl.com`. Caddy has no JSON field for it; the
environment variable PYPROXY_ZEROSSL_API overrides it, a documented test seam (the integration
test points it at a loopback stand-in of the API).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from acme_client.http01 import (
    ZEROSSL_ISSUER_KEY,
    PkiValidation,
    TokenStorage,
    publish_pki_validation,
    remove_pki_validation,
)
from acme_client.issuer import (
    DEFAULT_KEY_TYPE,
    USER_AGENT,
    IssuedCertificate,
    IssuerError,
    PrivateKey,
    RenewalInfo,
    generate_private_key,
    private_key_pem,
)

log = logging.getLogger("acme_client.zerossl_api")

# zerossl.BaseURL.
ZEROSSL_API_BASE_URL = "https://api.zerossl.com"
# The test seam: Caddy's JSON has no field for the API's base URL.
API_BASE_URL_ENV = "PYPROXY_ZEROSSL_API"
# certmagic's defaultPollInterval.
DEFAULT_POLL_INTERVAL_S = 5.0
# The Go client's http.Client timeout (2 minutes).
REQUEST_TIMEOUT_S = 120.0
# certmagic polls until its context ends; pyproxy bounds one issuance (ZeroSSL's validation can
# take minutes) so that a stuck certificate becomes a failure the retry schedule handles.
ISSUE_DEADLINE_S = 600.0
# The Go client reads at most 2 MiB of an answer.
MAX_RESPONSE_BYTES = 2 * 1024 * 1024
# certmagic's generateCSR puts the name into the Common Name only when it fits (64 characters).
MAX_COMMON_NAME = 64
# zerossl.HTTPVerification.
HTTP_VERIFICATION = "HTTP_CSR_HASH"
ACCESS_KEY_PARAM = "access_key"

# The fields of the Go client's models: an answer with any other field is an error payload.
CERTIFICATE_FIELDS = frozenset(
    {
        "id",
        "type",
        "common_name",
        "additional_domains",
        "created",
        "expires",
        "status",
        "validation_type",
        "validation_emails",
        "replacement_for",
        "fingerprint_sha1",
        "brand_validation",
        "validation",
    }
)
BUNDLE_FIELDS = frozenset({"certificate.crt", "ca_bundle.crt"})
SUCCESS_FIELDS = frozenset({"success"})


class ZeroSSLError(IssuerError):
    """A ZeroSSL API request failed; the message says which and why (the key redacted)."""


@dataclass(frozen=True, slots=True)
class ZeroSSLConfig:
    """An `{"module": "zerossl", ...}` issuer: Caddy's ZeroSSLIssuer fields plus the policy's
    key type. `listen_host` / `alternate_http_port` are kept for the record: pyproxy answers
    the validation on its own listeners (config/tls_app_fields.py checks they name one)."""

    api_key: str = field(repr=False)
    validity_days: int = 0
    listen_host: str = ""
    alternate_http_port: int = 0
    api_base_url: str = ZEROSSL_API_BASE_URL
    key_type: str = DEFAULT_KEY_TYPE
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    request_timeout_s: float = REQUEST_TIMEOUT_S
    issue_deadline_s: float = ISSUE_DEADLINE_S

    @property
    def issuer_key(self) -> str:
        return ZEROSSL_ISSUER_KEY

    @property
    def ca(self) -> str:
        """What log lines and retry records name as the CA (an ACME issuer's directory URL)."""
        return self.api_base_url


def zerossl_config_from_caddy(
    issuer: Mapping[str, Any],
    *,
    key_type: str | None = None,
    env: Mapping[str, str] | None = None,
    replace: Callable[[str], str] = str,
) -> ZeroSSLConfig | None:
    """An issuers[] entry of module `zerossl` as a ZeroSSLConfig (None for other modules).

    `replace` evaluates global placeholders (`{env.X}`) in `api_key`, as Caddy's Provision does;
    `env` gives PYPROXY_ZEROSSL_API (the test seam for the API's base URL).
    """
    if issuer.get("module") != "zerossl":
        return None
    base = (env or {}).get(API_BASE_URL_ENV) or ZEROSSL_API_BASE_URL

    def integer(key: str) -> int:
        value = issuer.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return ZeroSSLConfig(
        api_key=replace(str(issuer.get("api_key") or "")),
        validity_days=integer("validity_days"),
        listen_host=str(issuer.get("listen_host") or ""),
        alternate_http_port=integer("alternate_http_port"),
        api_base_url=base,
        key_type=key_type or DEFAULT_KEY_TYPE,
    )


# --- the API's requests and answers (pure) -----------------------------------------------------


def api_url(
    base_url: str, endpoint: str, api_key: str, query: Mapping[str, str] | None = None
) -> str:
    """The Go client's url(): base without trailing '/', endpoint with a leading one, the
    query with `access_key` added."""
    if not endpoint.startswith("/"):
        endpoint = "/" + endpoint
    params = dict(query or {})
    params[ACCESS_KEY_PARAM] = api_key
    return f"{base_url.rstrip('/')}{endpoint}?{urlencode(sorted(params.items()))}"


def redact_url(url: str) -> str:
    """`url` with the access key replaced by `redacted` (the Go client's error wording)."""
    parts = urlsplit(url)
    query = [
        (k, "redacted" if k == ACCESS_KEY_PARAM else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query)))


def certificate_endpoint(certificate_id: str, action: str = "") -> str:
    path = f"/certificates/{quote(certificate_id, safe='')}"
    return f"{path}/{action}" if action else path


def csr_identifiers(csr: x509.CertificateSigningRequest) -> list[str]:
    """The zerossl client's identifiersFromCSR: the Common Name first, then the DNS SANs."""
    out = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)][:1]
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return out
    out.extend(sans.get_values_for_type(x509.DNSName))
    out.extend(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))
    return out


def create_certificate_payload(
    csr: x509.CertificateSigningRequest, validity_days: int
) -> dict[str, Any]:
    """The body of `POST /certificates` (CreateCertificate; `omitempty` drops a 0 validity)."""
    csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode("ascii").strip()
    payload: dict[str, Any] = {
        "certificate_domains": ",".join(csr_identifiers(csr)),
        "certificate_csr": csr_pem,
        "strict_domains": 1,
    }
    if validity_days:
        payload["certificate_validity_days"] = validity_days
    return payload


def api_error_text(doc: Mapping[str, Any]) -> str:
    """The Go client's APIError.Error()."""
    info = doc.get("error")
    info = info if isinstance(info, Mapping) else {}
    code, kind, details = info.get("code") or 0, info.get("type") or "", info.get("details")
    if not code and not kind and not details:
        return "<missing error info>"
    return f"API error {code}: {kind} (details={details or {}})"


def decode_api_response(
    method: str, url: str, status: int, body: bytes, fields: frozenset[str]
) -> dict[str, Any]:
    """The answer as a JSON object of the expected model, or ZeroSSLError.

    The API does not use HTTP status codes for errors (the Go client ignores them): a body that
    decodes into the model with no unknown field is a success; anything else is read as an
    error payload (`success`, `error{code, type, details}`).
    """
    where = f"{method} {redact_url(url)}"
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ZeroSSLError(
            f"{where}: HTTP {status}: decoding JSON response failed: {exc}"
        ) from None
    if isinstance(doc, dict) and set(doc) <= fields:
        return doc
    if not isinstance(doc, dict):
        raise ZeroSSLError(f"{where}: HTTP {status}: decoding JSON response failed: not an object")
    raise ZeroSSLError(f"{where}: HTTP {status}: {api_error_text(doc)}")


@dataclass(frozen=True, slots=True)
class FileValidation:
    """One identifier's HTTP validation (ValidationObject): serve `content` at `url`."""

    url: str
    content: str


@dataclass(frozen=True, slots=True)
class CertificateObject:
    """What pyproxy reads of ZeroSSL's certificate object; `raw` is kept as issuer_data."""

    id: str
    status: str
    validations: Mapping[str, FileValidation]
    raw: Mapping[str, Any]


def parse_certificate_object(doc: Mapping[str, Any]) -> CertificateObject:
    cert_id, status = doc.get("id"), doc.get("status")
    if not isinstance(cert_id, str) or not cert_id:
        raise ZeroSSLError("certificate object without an id")
    validations: dict[str, FileValidation] = {}
    validation = doc.get("validation")
    others = validation.get("other_methods") if isinstance(validation, Mapping) else None
    for ident, obj in others.items() if isinstance(others, Mapping) else ():
        if not isinstance(obj, Mapping):
            continue
        url = obj.get("file_validation_url_http")
        lines = obj.get("file_validation_content")
        if isinstance(url, str) and isinstance(lines, list):
            # certmagic serves the content lines joined by "\n".
            validations[str(ident)] = FileValidation(url, "\n".join(str(x) for x in lines))
    return CertificateObject(cert_id, str(status or ""), validations, dict(doc))


def chain_from_bundle(doc: Mapping[str, Any]) -> bytes:
    """`certificate.crt` then `ca_bundle.crt`: the chain certmagic stores (leaf first)."""
    leaf, bundle = doc.get("certificate.crt"), doc.get("ca_bundle.crt")
    if not isinstance(leaf, str) or "-----BEGIN CERTIFICATE-----" not in leaf:
        raise ZeroSSLError("downloaded bundle has no certificate.crt")
    parts = [leaf.strip()]
    if isinstance(bundle, str) and bundle.strip():
        parts.append(bundle.strip())
    return ("\n".join(parts) + "\n").encode("ascii")


def make_csr(key: PrivateKey, names: Sequence[str]) -> x509.CertificateSigningRequest:
    """certmagic's generateCSR(key, names, useCN=true): the first name that fits becomes the
    Common Name (and is not repeated as a SAN: ZeroSSL's API wants them distinct)."""
    common_name: str | None = None
    sans: list[str] = []
    for name in names:
        ascii_name = name.encode("idna").decode("ascii") if not name.isascii() else name
        if common_name is None and len(ascii_name) <= MAX_COMMON_NAME:
            common_name = ascii_name
        else:
            sans.append(ascii_name)
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False
        )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


# --- the client ----------------------------------------------------------------------------


class ZeroSSLClient:
    """The requests pyproxy makes of ZeroSSL's API (blocking)."""

    def __init__(self, config: ZeroSSLConfig, session: requests.Session | None = None) -> None:
        self.config = config
        self.session = session or requests.Session()

    def _request(
        self,
        method: str,
        endpoint: str,
        fields: frozenset[str],
        payload: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        url = api_url(self.config.api_base_url, endpoint, self.config.api_key)
        headers = {"User-Agent": USER_AGENT}
        try:
            resp = self.session.request(
                method,
                url,
                json=dict(payload) if payload is not None else None,
                headers=headers,
                timeout=self.config.request_timeout_s,
                stream=True,
            )
            with resp:
                body = resp.raw.read(MAX_RESPONSE_BYTES + 1, decode_content=True)
        except requests.RequestException as exc:
            raise ZeroSSLError(f"{method} {redact_url(url)}: {_describe(exc)}") from None
        if len(body) > MAX_RESPONSE_BYTES:
            raise ZeroSSLError(f"{method} {redact_url(url)}: response larger than 2 MiB")
        return decode_api_response(method, url, resp.status_code, body, fields)

    def create_certificate(self, csr: x509.CertificateSigningRequest) -> CertificateObject:
        payload = create_certificate_payload(csr, self.config.validity_days)
        doc = self._request("POST", "/certificates", CERTIFICATE_FIELDS, payload)
        return parse_certificate_object(doc)

    def verify_identifiers(self, certificate_id: str) -> CertificateObject:
        endpoint = certificate_endpoint(certificate_id, "challenges")
        payload = {"validation_method": HTTP_VERIFICATION}
        return parse_certificate_object(
            self._request("POST", endpoint, CERTIFICATE_FIELDS, payload)
        )

    def get_certificate(self, certificate_id: str) -> CertificateObject:
        endpoint = certificate_endpoint(certificate_id)
        return parse_certificate_object(self._request("GET", endpoint, CERTIFICATE_FIELDS))

    def download_certificate(self, certificate_id: str) -> bytes:
        endpoint = certificate_endpoint(certificate_id, "download/return")
        return chain_from_bundle(self._request("GET", endpoint, BUNDLE_FIELDS))

    def cancel_certificate(self, certificate_id: str) -> None:
        endpoint = certificate_endpoint(certificate_id, "cancel")
        doc = self._request("POST", endpoint, SUCCESS_FIELDS)
        if doc.get("success") not in (True, 1, "1", "true"):
            raise ZeroSSLError(f"cancelling certificate {certificate_id}: got {doc}")


def _describe(exc: requests.RequestException) -> str:
    # requests' messages repeat the URL, access key included: name the failure kind only.
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return type(exc).__name__


# --- the issuer ----------------------------------------------------------------------------


class ZeroSSLIssuer:
    """certmagic's ZeroSSLIssuer with the surface acme_client.manager uses of an AcmeIssuer."""

    def __init__(
        self,
        config: ZeroSSLConfig,
        storage: TokenStorage,
        *,
        executor: concurrent.futures.ThreadPoolExecutor | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.storage = storage
        self._executor = executor
        self._client = ZeroSSLClient(config, session)
        self._sleep = sleep
        self._monotonic = monotonic
        # No ACME account: the API key is the account.
        self.accounts_registered = 0
        self.orders_placed = 0

    @property
    def issuer_key(self) -> str:
        return self.config.issuer_key

    async def obtain_async(
        self,
        names: Sequence[str],
        *,
        replaces: bytes | None = None,
        on_step: Callable[[str], None] | None = None,
        on_order: Callable[[], None] | None = None,
    ) -> IssuedCertificate:
        # `replaces` is ARI's; the zerossl client sets no replacement_for_certificate either.
        del replaces
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, lambda: self.obtain(names, on_step=on_step, on_order=on_order)
        )

    async def renewal_info_async(self, cert_pem: bytes) -> RenewalInfo | None:
        """ZeroSSL's API has no ARI: renewal follows the certificate's lifetime."""
        del cert_pem
        return None

    def obtain(
        self,
        names: Sequence[str],
        *,
        on_step: Callable[[str], None] | None = None,
        on_order: Callable[[], None] | None = None,
    ) -> IssuedCertificate:
        """One issuance (the module docstring's steps); raises ZeroSSLError / IssuerError."""
        step = on_step or (lambda _s: None)
        if not names:
            raise IssuerError("no identifiers to obtain a certificate for")
        if not self.config.api_key:
            raise ZeroSSLError("the ZeroSSL API key (api_key) is empty")
        key = generate_private_key(self.config.key_type)
        csr = make_csr(key, names)
        identifiers = csr_identifiers(csr)
        step("creating certificate (ZeroSSL API)")
        cert = self._client.create_certificate(csr)
        self.orders_placed += 1
        if on_order is not None:
            on_order()
        step(f"created certificate {cert.id}")
        try:
            issued = self._validate_and_download(cert, identifiers[0], step)
        except Exception:
            self._cancel(cert.id, names[0])
            raise
        step("certificate obtained")
        return IssuedCertificate(
            names=tuple(names),
            certificate_pem=issued[0],
            private_key_pem=private_key_pem(key),
            issuer_key=self.issuer_key,
            issuer_data=dict(issued[1].raw),
        )

    def _validate_and_download(
        self, cert: CertificateObject, identifier: str, step: Callable[[str], None]
    ) -> tuple[bytes, CertificateObject]:
        validation = cert.validations.get(identifier)
        if validation is None:
            raise ZeroSSLError(f"no HTTP validation details for {identifier} in the answer")
        stored = PkiValidation(domain=identifier, url=validation.url, content=validation.content)
        try:
            publish_pki_validation(self.storage, stored)
        except OSError as exc:
            raise ZeroSSLError(f"presenting validation file for verification: {exc}") from exc
        try:
            step("validating identifiers")
            cert = self._client.verify_identifiers(cert.id)
            if cert.status == "pending_validation":
                step("validations initiated; waiting for certificate to be issued")
                cert = self._wait_until_issued(cert)
            elif cert.status != "issued":
                raise ZeroSSLError(f"unexpected certificate status: {cert.status}")
            step("downloading certificate bundle")
            chain = self._client.download_certificate(cert.id)
        finally:
            try:
                remove_pki_validation(self.storage, identifier)
            except OSError as exc:
                log.warning("%s: removing the validation file: %s", identifier, exc)
        return chain, cert

    def _wait_until_issued(self, cert: CertificateObject) -> CertificateObject:
        deadline = self._monotonic() + self.config.issue_deadline_s
        while True:
            if self._monotonic() + self.config.poll_interval_s > deadline:
                raise ZeroSSLError(
                    f"waiting for certificate to be issued: still {cert.status} after"
                    f" {self.config.issue_deadline_s:.0f} s"
                )
            self._sleep(self.config.poll_interval_s)
            cert = self._client.get_certificate(cert.id)
            if cert.status == "issued":
                return cert
            if cert.status != "pending_validation":
                raise ZeroSSLError(
                    f"waiting for certificate to be issued: unexpected certificate status:"
                    f" {cert.status}"
                )

    def _cancel(self, certificate_id: str, name: str) -> None:
        try:
            self._client.cancel_certificate(certificate_id)
        except IssuerError as exc:
            log.error("%s: unable to cancel certificate %s: %s", name, certificate_id, exc)
        else:
            log.info("%s: canceled certificate %s", name, certificate_id)
