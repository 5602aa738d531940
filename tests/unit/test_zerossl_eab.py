"""acme_client.zerossl: ZeroSSL's EAB API answers, read as current Caddy reads them."""

from __future__ import annotations

import json

import pytest

from acme_client.zerossl import (
    EabError,
    GeneratedEab,
    generate_eab,
    is_zerossl_ca,
    parse_eab_response,
)


def test_credentials() -> None:
    body = json.dumps({"success": True, "eab_kid": "kid", "eab_hmac_key": "mac"}).encode()
    assert parse_eab_response(200, body) == GeneratedEab("kid", "mac")


@pytest.mark.parametrize(
    ("status", "doc", "message"),
    [
        # ZeroSSL reports errors with HTTP 200: the error object is checked first.
        (200, {"success": False, "error": {"code": 2800, "type": "invalid_email"}},
         "failed getting EAB credentials: HTTP 200: invalid_email (code 2800)"),
        (503, {"success": True, "eab_kid": "k", "eab_hmac_key": "m"},
         "failed getting EAB credentials: HTTP 503"),
        (200, {"success": True}, "no eab_kid / eab_hmac_key"),
        (200, [], "not a JSON object"),
    ],
)  # fmt: skip
def test_errors(status: int, doc: object, message: str) -> None:
    with pytest.raises(EabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_eab_response(status, json.dumps(doc).encode())


def test_not_json_and_no_email() -> None:
    with pytest.raises(EabError, match="decoding API response"):
        parse_eab_response(200, b"<html>")
    # Caddy's message; checked before any request is made.
    with pytest.raises(EabError, match="your email address is required"):
        generate_eab("  ", "http://127.0.0.1:9/never", user_agent="test")


def test_zerossl_ca_recognised_by_prefix() -> None:
    assert is_zerossl_ca("https://acme.zerossl.com/v2/DV90")
    assert not is_zerossl_ca("https://acme-v02.api.letsencrypt.org/directory")
