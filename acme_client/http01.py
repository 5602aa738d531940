"""HTTP-01 challenge tokens in shared storage, and the lookup the HTTP engine answers with.

This module owns `acme/<issuer>/challenge_tokens/<domain>.json`. Like certmagic's
distributedSolver (solvers.go), the issuer publishes the challenge to storage *before* telling the
CA to validate, so whichever instance sharing that storage receives the CA's request can answer
it. The JSON document has the shape of acmez's `acme.Challenge` (type, url, status, token,
keyAuthorization, identifier), so Caddy and pyproxy can answer each other's challenges.

`answer_http01` is what the engine calls for `/.well-known/acme-challenge/<token>` requests on
every HTTP listener, before routing. It is synchronous (one small file read) and never raises for
missing or malformed data: an unknown challenge is simply not ours to answer.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any, Protocol

from acme_client.storage import PREFIX_ACME, challenge_tokens_key

# RFC 8555 section 8.3 (http-01) and RFC 8737 section 3 (tls-alpn-01): the `type` names.
HTTP01 = "http-01"
TLS_ALPN01 = "tls-alpn-01"
# RFC 8555 section 8.3.
CHALLENGE_PATH_PREFIX = "/.well-known/acme-challenge/"
# Challenge documents are tiny; refuse to parse anything absurd left in storage.
MAX_CHALLENGE_DOC_BYTES = 64 * 1024


class TokenStorage(Protocol):
    """The part of `FileStorage` this module needs."""

    def store(self, key: str, value: bytes) -> None: ...
    def load(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str, recursive: bool = False) -> list[str]: ...


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
        if len(data) > MAX_CHALLENGE_DOC_BYTES:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        if not isinstance(doc, dict):
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
