"""acme_client.zerossl_api's requests and answers, read as the caddyserver/zerossl client reads
them; the validation file in storage (acme_client.http01) and how the HTTP engine answers it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from acme_client.http01 import (
    PkiValidation,
    answer_pki_validation,
    pki_validation_key,
    publish_pki_validation,
    remove_pki_validation,
)
from acme_client.issuer import generate_private_key
from acme_client.storage import FileStorage
from acme_client.zerossl_api import (
    API_BASE_URL_ENV,
    BUNDLE_FIELDS,
    CERTIFICATE_FIELDS,
    ZEROSSL_API_BASE_URL,
    ZeroSSLConfig,
    ZeroSSLError,
    api_url,
    certificate_endpoint,
    chain_from_bundle,
    create_certificate_payload,
    csr_identifiers,
    decode_api_response,
    make_csr,
    parse_certificate_object,
    redact_url,
    zerossl_config_from_caddy,
)
from proxy.certs import CertRuntime, prepare_certificates

URL = "https://api.zerossl.com/certificates?access_key=secret"
FILE_PATH = "/.well-known/pki-validation/0A1B2C.txt"


def test_urls_carry_the_key_and_errors_redact_it() -> None:
    assert api_url("https://api.zerossl.com/", "certificates", "k&y") == (
        "https://api.zerossl.com/certificates?access_key=k%26y"
    )
    assert api_url("http://127.0.0.1:9", "/certificates/x/download/return", "k", {"a": "1"}) == (
        "http://127.0.0.1:9/certificates/x/download/return?a=1&access_key=k"
    )
    assert (
        redact_url(URL + "&a=1") == "https://api.zerossl.com/certificates?access_key=redacted&a=1"
    )
    assert certificate_endpoint("a/b c", "challenges") == "/certificates/a%2Fb%20c/challenges"


def test_csr_and_create_payload_follow_certmagic() -> None:
    # generateCSR(useCN=true): the name is the Common Name only; a name over 64 characters
    # cannot be a CN and goes to the SANs.
    key = generate_private_key("p256")
    csr = make_csr(key, ["a.example.com"])
    cns = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    assert cns == ["a.example.com"]
    with pytest.raises(x509.ExtensionNotFound):
        csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    long_name = "x" * 60 + ".example.com"
    assert csr_identifiers(make_csr(key, [long_name, "b.example.com"])) == [
        "b.example.com",
        long_name,
    ]
    payload = create_certificate_payload(csr, 0)
    assert payload == {
        "certificate_domains": "a.example.com",
        "certificate_csr": csr.public_bytes(serialization.Encoding.PEM).decode().strip(),
        "strict_domains": 1,
    }  # validity 0 is omitted (omitempty): ZeroSSL's default
    assert create_certificate_payload(csr, 365)["certificate_validity_days"] == 365
    assert csr_identifiers(make_csr(generate_private_key("ed25519"), ["e.example"])) == [
        "e.example"
    ]


def test_a_body_of_the_model_is_a_success_whatever_the_status() -> None:
    body = json.dumps({"id": "abc", "status": "draft", "validation": None}).encode()
    assert decode_api_response("POST", URL, 200, body, CERTIFICATE_FIELDS)["id"] == "abc"
    bundle = json.dumps({"certificate.crt": "c", "ca_bundle.crt": "b"}).encode()
    assert decode_api_response("GET", URL, 200, bundle, BUNDLE_FIELDS)["ca_bundle.crt"] == "b"


@pytest.mark.parametrize(
    ("status", "doc", "expected"),
    [
        # ZeroSSL answers errors with HTTP 200: fields outside the model mean an error payload.
        (
            200,
            {"success": False, "error": {"code": 2832, "type": "certificate_not_ready"}},
            "POST https://api.zerossl.com/certificates?access_key=redacted: HTTP 200:"
            " API error 2832: certificate_not_ready (details={})",
        ),
        (
            200,
            {"success": False, "error": {"code": 0, "type": "x", "details": {"a": {"u": {}}}}},
            "HTTP 200: API error 0: x (details={'a': {'u': {}}})",
        ),
        (500, {"unexpected": 1}, "HTTP 500: <missing error info>"),
    ],
)
def test_error_payloads(status: int, doc: dict[str, Any], expected: str) -> None:
    with pytest.raises(ZeroSSLError) as err:
        decode_api_response("POST", URL, status, json.dumps(doc).encode(), CERTIFICATE_FIELDS)
    assert str(err.value).endswith(expected), str(err.value)
    assert "secret" not in str(err.value)


def test_a_body_that_is_not_json_is_an_error_without_the_key() -> None:
    with pytest.raises(ZeroSSLError, match=r"access_key=redacted: HTTP 502: decoding JSON"):
        decode_api_response("GET", URL, 502, b"<html>bad gateway</html>", CERTIFICATE_FIELDS)
    with pytest.raises(ZeroSSLError, match="not an object"):
        decode_api_response("GET", URL, 200, b"[1]", CERTIFICATE_FIELDS)


def test_certificate_object_and_bundle() -> None:
    doc = {
        "id": "c1",
        "status": "draft",
        "validation": {
            "email_validation": {},
            "other_methods": {
                "a.example.com": {
                    "file_validation_url_http": "http://a.example.com" + FILE_PATH,
                    "file_validation_content": ["HASH", "comodoca.com", "u1"],
                }
            },
        },
    }
    cert = parse_certificate_object(doc)
    assert cert.id == "c1" and cert.status == "draft"
    validation = cert.validations["a.example.com"]
    assert validation.url == "http://a.example.com" + FILE_PATH
    assert validation.content == "HASH\ncomodoca.com\nu1"  # certmagic joins the lines by "\n"
    assert cert.raw == doc
    with pytest.raises(ZeroSSLError, match="without an id"):
        parse_certificate_object({"status": "draft"})

    leaf = "-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----"
    ca = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
    chain = chain_from_bundle({"certificate.crt": leaf, "ca_bundle.crt": ca})
    assert chain == f"{leaf}\n{ca.strip()}\n".encode()
    with pytest.raises(ZeroSSLError, match=r"no certificate\.crt"):
        chain_from_bundle({"certificate.crt": "", "ca_bundle.crt": ca})


def test_config_from_caddy_json() -> None:
    issuer = {
        "module": "zerossl",
        "api_key": "{env.KEY}",
        "validity_days": 90,
        "alternate_http_port": 8080,
        "listen_host": "127.0.0.1",
    }
    config = zerossl_config_from_caddy(
        issuer, key_type="rsa2048", env={}, replace=lambda s: s.replace("{env.KEY}", "k1")
    )
    assert config == ZeroSSLConfig(
        api_key="k1",
        validity_days=90,
        listen_host="127.0.0.1",
        alternate_http_port=8080,
        api_base_url=ZEROSSL_API_BASE_URL,
        key_type="rsa2048",
    )
    assert config.issuer_key == "zerossl" and config.ca == ZEROSSL_API_BASE_URL
    assert "k1" not in repr(config)  # the key stays out of log lines
    seam = zerossl_config_from_caddy(issuer, env={API_BASE_URL_ENV: "http://127.0.0.1:1"})
    assert seam is not None and seam.api_base_url == "http://127.0.0.1:1"
    assert zerossl_config_from_caddy({"module": "acme"}) is None


# ---- the validation file in storage -------------------------------------------------------


def test_validation_is_stored_like_certmagic_and_answered(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    validation = PkiValidation("a.example.com", "http://a.example.com" + FILE_PATH, "H\nc\nu")
    publish_pki_validation(storage, validation)
    # certmagic: distributedSolver with the issuer key `zerossl` as prefix; an acme.Challenge
    # with the URL in `url` and the content in `token` (what Caddy's answer reads).
    key = "zerossl/challenge_tokens/a.example.com.json"
    assert pki_validation_key("A.example.com") == key
    doc = json.loads(storage.load(key))
    assert doc["url"] == validation.url and doc["token"] == "H\nc\nu"
    assert doc["identifier"]["value"] == "a.example.com"

    assert answer_pki_validation(storage, "a.example.com", FILE_PATH) == (200, b"H\nc\nu")
    assert answer_pki_validation(storage, "A.EXAMPLE.com.", FILE_PATH) == (200, b"H\nc\nu")
    # A validation is stored for the host but this is not its file: 404 (answerHTTPValidation).
    assert answer_pki_validation(storage, "a.example.com", "/.well-known/pki-validation/x") == (
        404,
        b"",
    )
    # Nothing stored for the host, or not a validation path: not ours.
    assert answer_pki_validation(storage, "b.example.com", FILE_PATH) is None
    assert answer_pki_validation(storage, "a.example.com", "/index.html") is None
    storage.store(pki_validation_key("c.example.com"), b"{not json")
    assert answer_pki_validation(storage, "c.example.com", FILE_PATH) is None
    remove_pki_validation(storage, "a.example.com")
    assert answer_pki_validation(storage, "a.example.com", FILE_PATH) is None
    remove_pki_validation(storage, "a.example.com")  # missing is fine


class _Request:
    def __init__(self, method: str, host: str, path: str) -> None:
        self.method, self.host, self.path = method, host, path


class _Exchange:
    def __init__(self, req: _Request) -> None:
        self.req = req
        self.response: tuple[int, list[tuple[str, str]] | None, bytes] | None = None

    def respond(self, status: int, headers: list[tuple[str, str]] | None, body: bytes) -> None:
        self.response = (status, headers, body)


def test_the_engine_answers_validation_files_before_routes(tmp_path: Path) -> None:
    config = {
        "storage": {"module": "file_system", "root": str(tmp_path / "data")},
        "apps": {"http": {"servers": {"srv0": {"listen": [":8443"], "routes": []}}}},
    }
    runtime = CertRuntime(prepare_certificates(config))
    url = "http://a.example.com" + FILE_PATH
    publish_pki_validation(runtime.storage, PkiValidation("a.example.com", url, "content"))

    ours = _Exchange(_Request("GET", "a.example.com:80", FILE_PATH))
    assert runtime.intercept_http01(ours)
    assert ours.response == (200, [("Content-Type", "text/plain")], b"content")
    other_file = _Exchange(_Request("GET", "a.example.com", "/.well-known/pki-validation/x.txt"))
    assert runtime.intercept_http01(other_file)
    assert other_file.response == (404, [], b"")
    # Not ours: another host, another method: the routes decide.
    for method, host in (("GET", "b.example.com"), ("POST", "a.example.com")):
        ex = _Exchange(_Request(method, host, FILE_PATH))
        assert not runtime.intercept_http01(ex)
        assert ex.response is None
