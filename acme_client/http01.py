"""HTTP-01 challenge tokens in shared storage, and the lookup the HTTP engine answers with.

This module owns `acme/<issuer>/challenge_tokens/<domain>.json`. Like certmagic's
distributedSolver (solvers.go), the issuer publishes the challenge to storage *before* telling the
CA to validate, so whichever instance sharing that storage receives the CA's request can answer
it. The JSON document has the shape of acmez's `acme.Challenge` (type, url, status, token,
keyAuthorization, identifier), so Caddy and pyproxy can answer each other's challenges.

`answer_http01` is what the engine calls for `/.well-known/acme-challenge/<token>` requests on
every HTTP listener, before routing. It is synchronous (one small file read) and never raises for
missing or malformed data: an unknown challenge is simply not ours to answer.

ZeroSSL's API issuer (acme_client.zerossl_api) validates a file at
`/.well-known/pki-validation/<file>.txt` instead. certmagic's ZeroSSLIssuer reuses the distributed
solver for it, so the same kind of document (an acme.Challenge with the validation URL in `url`
and the file content in `token`) is stored under `zerossl/challenge_tokens/<domain>.json` (the
issuer key `zerossl` itself is the prefix, without `acme/`); `answer_pki_validation` answers it.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from acme_client.storage import PREFIX_ACME, challenge_tokens_key, safe_key

# RFC 8555 section 8.3 (http-01) and RFC 8737 section 3 (tls-alpn-01): the `type` names.
HTTP01 = "http-01"
TLS_ALPN01 = "tls-alpn-01"
# RFC 8555 section 8.3.
CHALLENGE_PATH_PREFIX = "/.well-known/acme-challenge/"
# certmagic's zerosslHTTPValidationBasePath.
PKI_VALIDATION_PATH_PREFIX = "/.well-known/pki-validation/"
# certmagic's zerosslIssuerKey: the ZeroSSL API issuer's storage key.
ZEROSSL_ISSUER_KEY = "zerossl"
# Challenge documents are tiny; refuse to parse anything absurd left in storage.
MAX_CHALLENGE_DOC_BYTES = 64 * 1024


class TokenStorage(Protocol):
    """The part of `FileStorage` this module needs."""

    def store(self, key: str, value: bytes) -> None: ...
    def load(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str, recursive: bool = False) -> list[str]: ...


def stored_document(data: bytes) -> dict[str, Any] | None:
    """A challenge document read from storage as a JSON object; None when it is absurdly large
    or not a JSON object (left there by something else: not ours to answer)."""
    if len(data) > MAX_CHALLENGE_DOC_BYTES:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


@dataclass(frozen=True, slots=True)
class Http01Challenge:
    """One published HTTP-01 challenge."""

    domain: str
    token: str
    key_authorization: str
    url: str = ""
    status: str = "pending"
    # acmez's acme.Challenge `type`: certmagic's distributed solver stores tls-alpn-01
    # challenges under the same key with the same document (acme_client.tls_alpn).
    type: str = HTTP01

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "type": self.type,
            "url": self.url,
            "status": self.status,
            "token": self.token,
            "keyAuthorization": self.key_authorization,
            "identifier": {"type": "dns", "value": self.domain},
        }
        return json.dumps(doc).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Http01Challenge | None:
        """Parse a stored challenge; None when the document is not a usable HTTP-01 challenge."""
        doc = stored_document(data)
        if doc is None:
            return None
        token = doc.get("token")
        key_auth = doc.get("keyAuthorization")
        ident = doc.get("identifier")
        domain = ident.get("value") if isinstance(ident, dict) else None
        if not (isinstance(token, str) and token and isinstance(key_auth, str) and key_auth):
            return None
        return cls(
            domain=domain if isinstance(domain, str) else "",
            token=token,
            key_authorization=key_auth,
            url=str(doc.get("url") or ""),
            status=str(doc.get("status") or ""),
            type=str(doc.get("type") or HTTP01),
        )


def publish_http01(storage: TokenStorage, issuer_key: str, challenge: Http01Challenge) -> None:
    """Store the challenge so every instance sharing storage answers it (certmagic: Present)."""
    storage.store(challenge_tokens_key(issuer_key, challenge.domain), challenge.to_json())


def remove_http01(storage: TokenStorage, issuer_key: str, domain: str) -> None:
    """Remove the published challenge of `domain` (certmagic: CleanUp). Missing is fine."""
    storage.delete(challenge_tokens_key(issuer_key, domain))


def is_http01_path(path: str) -> bool:
    """Cheap test the engine runs on every plain-HTTP request before touching storage."""
    return path.startswith(CHALLENGE_PATH_PREFIX)


def normalize_challenge_host(host: str) -> str:
    """Host header value (port already stripped) as a domain: lowercase, no trailing dot."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def _issuer_keys(storage: TokenStorage) -> list[str]:
    try:
        keys = storage.list(PREFIX_ACME)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [k.rsplit("/", 1)[-1] for k in keys]


def answer_http01(
    storage: TokenStorage,
    host_without_port: str,
    path: str,
    issuer_keys: list[str] | None = None,
) -> bytes | None:
    """The key authorization to send for an HTTP-01 request, or None if it is not ours.

    `path` is the request path (query string removed). The stored challenge must be for this host
    and carry exactly the requested token. Looks under every issuer in storage unless
    `issuer_keys` is given (certmagic looks under the config's issuers; storage is shared
    anyway, and a token is an unguessable random string).
    """
    if not is_http01_path(path):
        return None
    token = path[len(CHALLENGE_PATH_PREFIX) :]
    if not token or "/" in token:
        return None
    host = normalize_challenge_host(host_without_port)
    if not host:
        return None
    for issuer in issuer_keys if issuer_keys is not None else _issuer_keys(storage):
        try:
            data = storage.load(challenge_tokens_key(issuer, host))
        except (OSError, ValueError):
            continue
        challenge = Http01Challenge.from_json(data)
        if challenge is None:
            continue
        # safe_key may map two hosts to one file: the stored identifier must be this host.
        if challenge.domain and normalize_challenge_host(challenge.domain) != host:
            continue
        if hmac.compare_digest(challenge.token.encode(), token.encode()):
            return challenge.key_authorization.encode("ascii", "replace")
    return None


# --- ZeroSSL API HTTP validation (certmagic zerosslissuer.go / httphandlers.go) -------------------


def pki_validation_key(domain: str) -> str:
    """`zerossl/challenge_tokens/<domain>.json`: certmagic's distributedSolver with the issuer
    key as its whole prefix (ZeroSSLIssuer.Issue and getDistributedValidationInfo)."""
    return f"{safe_key(ZEROSSL_ISSUER_KEY)}/challenge_tokens/{safe_key(domain)}.json"


@dataclass(frozen=True, slots=True)
class PkiValidation:
    """One ZeroSSL HTTP file validation: `content` is served at the path of `url`."""

    domain: str
    url: str
    content: str

    def to_json(self) -> bytes:
        # The acme.Challenge certmagic shims the validation into (Go marshals its
        # non-omitempty fields too, so Caddy reads this document as it reads its own).
        doc: dict[str, Any] = {
            "type": "",
            "url": self.url,
            "status": "",
            "token": self.content,
            "identifier": {"type": "", "value": self.domain},
        }
        return json.dumps(doc).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> PkiValidation | None:
        """Parse a stored validation; None when it is not one (no url or no content)."""
        doc = stored_document(data)
        if doc is None:
            return None
        url, content, ident = doc.get("url"), doc.get("token"), doc.get("identifier")
        domain = ident.get("value") if isinstance(ident, dict) else None
        if not (isinstance(url, str) and url and isinstance(content, str) and content):
            return None
        return cls(domain=domain if isinstance(domain, str) else "", url=url, content=content)


def publish_pki_validation(storage: TokenStorage, validation: PkiValidation) -> None:
    """Store the validation so every instance sharing storage serves the file (Present)."""
    storage.store(pki_validation_key(validation.domain), validation.to_json())


def remove_pki_validation(storage: TokenStorage, domain: str) -> None:
    """Remove the stored validation of `domain` (CleanUp). Missing is fine."""
    storage.delete(pki_validation_key(domain))


def is_pki_validation_path(path: str) -> bool:
    """certmagic's LooksLikeZeroSSLHTTPValidation (the GET method is the caller's test)."""
    return path.startswith(PKI_VALIDATION_PATH_PREFIX)


def answer_pki_validation(
    storage: TokenStorage, host_without_port: str, path: str
) -> tuple[int, bytes] | None:
    """The (status, body) to send for a ZeroSSL validation request, or None if not ours.

    As certmagic's answerHTTPValidation: with a validation stored for this host, the request
    path must be the path of its URL (200 with the file content) or it is answered 404; without
    one the request is not ours (the routes get it).
    """
    if not is_pki_validation_path(path):
        return None
    host = normalize_challenge_host(host_without_port)
    if not host:
        return None
    try:
        data = storage.load(pki_validation_key(host))
    except (OSError, ValueError):
        return None
    validation = PkiValidation.from_json(data)
    if validation is None:
        return None
    if validation.domain and normalize_challenge_host(validation.domain) != host:
        return None  # safe_key mapped another host to this file
    if urlsplit(validation.url).path != path:
        return 404, b""
    return 200, validation.content.encode("utf-8")
