"""External account binding credentials for ZeroSSL's ACME endpoint, generated from an email.

ZeroSSL's ACME CA requires an external account binding (RFC 8555 section 7.3.4). Caddy's
Caddyfile adapter makes ZeroSSL the fallback issuer after Let's Encrypt whenever an `email` is
set, without any EAB in the config, so current Caddy's `acme` issuer generates the credentials
when it registers the account (modules/caddytls/acmeissuer.go, generateZeroSSLEABCredentials):
a form POST of `email` to ZeroSSL's API `/acme/eab-credentials-email`, answered with
`{"success": true, "eab_kid": ..., "eab_hmac_key": ...}` or, often with HTTP 200,
`{"success": false, "error": {"code": N, "type": "..."}}`. Credentials given in the config
(`external_account`) always win; nothing here is stored (the registered account is).

`parse_eab_response` is the pure part; `generate_eab` does the request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import requests

# Caddy (certmagic.ZeroSSLProductionCA) recognises ZeroSSL's CA by this prefix.
ZEROSSL_ACME_PREFIX = "https://acme.zerossl.com/"
# zerossl.BaseURL + "/acme/eab-credentials-email".
ZEROSSL_EAB_ENDPOINT = "https://api.zerossl.com/acme/eab-credentials-email"
EAB_REQUEST_TIMEOUT_S = 30.0
# An answer is a few hundred bytes; refuse to parse anything absurd.
MAX_RESPONSE_BYTES = 64 * 1024


class EabError(Exception):
    """Credentials could not be generated; the message says why (Caddy's wording)."""


@dataclass(frozen=True, slots=True)
class GeneratedEab:
    key_id: str
    mac_key: str


def is_zerossl_ca(ca: str) -> bool:
    return ca.startswith(ZEROSSL_ACME_PREFIX)


def parse_eab_response(status: int, body: bytes) -> GeneratedEab:
    """The credentials in an answer of the EAB endpoint, or EabError saying what went wrong."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise EabError(f"decoding API response: {exc}") from None
    if not isinstance(doc, dict):
        raise EabError("decoding API response: not a JSON object")
    error = doc.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, int) and code != 0:
        # Checked first: ZeroSSL's API answers errors with HTTP 200.
        kind = error.get("type") if isinstance(error, dict) else ""
        raise EabError(f"failed getting EAB credentials: HTTP {status}: {kind} (code {code})")
    if status != 200:
        raise EabError(f"failed getting EAB credentials: HTTP {status}")
    key_id, mac_key = doc.get("eab_kid"), doc.get("eab_hmac_key")
    if not isinstance(key_id, str) or not key_id or not isinstance(mac_key, str) or not mac_key:
        raise EabError("failed getting EAB credentials: no eab_kid / eab_hmac_key in the answer")
    return GeneratedEab(key_id, mac_key)


def generate_eab(
    email: str,
    endpoint: str = ZEROSSL_EAB_ENDPOINT,
    *,
    user_agent: str,
    timeout_s: float = EAB_REQUEST_TIMEOUT_S,
) -> GeneratedEab:
    """Ask `endpoint` for credentials bound to `email` (blocking)."""
    if not email.strip():
        raise EabError("your email address is required to use ZeroSSL's ACME endpoint")
    try:
        resp = requests.post(
            endpoint,
            data={"email": email},
            headers={"User-Agent": user_agent},
            timeout=timeout_s,
            stream=True,
        )
        with resp:
            body = resp.raw.read(MAX_RESPONSE_BYTES + 1, decode_content=True)
    except requests.RequestException as exc:
        raise EabError(f"performing EAB credentials request: {exc}") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise EabError("decoding API response: too large")
    return parse_eab_response(resp.status_code, body)
