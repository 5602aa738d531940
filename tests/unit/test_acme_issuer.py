"""Pure parts of the ACME issuer: ARI cert IDs, `replaces` on NewOrder, chains, Retry-After."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
import requests
import trustme
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from acme_client.issuer import (
    KEY_TYPES,
    ExternalAccountBinding,
    IssuerConfig,
    NewOrderWithReplaces,
    PreferredChains,
    _Network,
    _to_issuer_error,
    ari_cert_id,
    generate_private_key,
    issuer_config_from_caddy,
    parse_retry_after,
    private_key_pem,
    select_chain,
)
from acme_client.manager import lock_name_for, staging_ca_for, stored_status
from acme_client.storage import CertificateResource, FileStorage, save_certificate_resource


def test_ari_cert_id_rfc9773_example_shape() -> None:
    ca = trustme.CA()
    leaf = x509.load_pem_x509_certificate(ca.issue_cert("a.example").cert_chain_pems[0].bytes())
    cert_id = ari_cert_id(leaf)
    aki, serial = cert_id.split(".")
    assert "=" not in cert_id
    serial_bytes = base64.urlsafe_b64decode(serial + "=" * (-len(serial) % 4))
    assert int.from_bytes(serial_bytes, "big") == leaf.serial_number
    # DER INTEGER content: a leading zero byte whenever the top bit would be set
    assert serial_bytes[0] < 0x80
    assert len(aki) > 10


def test_new_order_with_replaces_serializes_field() -> None:
    ident = messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="a.example")
    body = NewOrderWithReplaces(identifiers=[ident], replaces="aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")
    doc = json.loads(json.dumps(body.to_partial_json(), default=lambda o: o.to_partial_json()))
    assert doc["replaces"] == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    assert doc["identifiers"] == [{"type": "dns", "value": "a.example"}]
    plain = NewOrderWithReplaces(identifiers=[ident])
    assert "replaces" not in plain.to_partial_json()


@pytest.mark.parametrize("key_type", [k for k in KEY_TYPES if not k.startswith("rsa4")])
def test_key_types_round_trip_as_pem(key_type: str) -> None:
    pem = private_key_pem(generate_private_key(key_type))
    assert pem.startswith(b"-----BEGIN ")
    if key_type.startswith("p"):
        assert pem.startswith(b"-----BEGIN EC PRIVATE KEY-----")  # SEC1, like certmagic


def test_unknown_key_type() -> None:
    with pytest.raises(ValueError, match="unsupported key_type"):
        generate_private_key("dsa")


def _chain(root_cn: str, extra: int = 0) -> str:
    """A one-certificate "chain" issued by `root_cn` (self-signed), padded to vary its size."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, root_cn)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if extra:
        sans = [x509.DNSName(f"n{i}.example") for i in range(extra)]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_select_chain_defaults_and_preferences() -> None:
    a, b = _chain("Root A", extra=20), _chain("Root B")
    assert select_chain([a, b], PreferredChains()) == a
    assert select_chain([a], PreferredChains(smallest=True)) == a
    assert select_chain([a, b], PreferredChains(smallest=True)) == b
    assert select_chain([a, b], PreferredChains(root_common_name=("Root B",))) == b
    assert select_chain([a, b], PreferredChains(any_common_name=("Root B",))) == b
    assert select_chain([a, b], PreferredChains(root_common_name=("nope",))) == a


def test_parse_retry_after() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert parse_retry_after("120", now) == now + dt.timedelta(seconds=120)
    assert parse_retry_after("Thu, 01 Jan 2026 01:00:00 GMT", now) == now + dt.timedelta(hours=1)
    assert parse_retry_after("garbage", now) is None
    assert parse_retry_after(None, now) is None


def test_staging_only_for_lets_encrypt_production() -> None:
    assert staging_ca_for("https://acme-v02.api.letsencrypt.org/directory") == (
        "https://acme-staging-v02.api.letsencrypt.org/directory"
    )
    assert staging_ca_for("https://acme.zerossl.com/v2/DV90") is None
    assert lock_name_for("example.com") == "issue_cert_example.com"


def test_issuer_config_from_caddy_json() -> None:
    doc = {
        "module": "acme",
        "ca": "https://127.0.0.1:14000/dir",
        "email": "ops@example.com",
        "external_account": {"key_id": "kid-1", "mac_key": "bWFj"},
        "trusted_roots_pem_files": ["/etc/pebble/ca.pem"],
        "preferred_chains": {"smallest": True, "root_common_name": ["ISRG Root X1"]},
        "profile": "shortlived",
    }
    config = issuer_config_from_caddy(doc, key_type="p384")
    assert config is not None
    assert config.ca == "https://127.0.0.1:14000/dir"
    assert config.issuer_key == "127.0.0.1:14000-dir"  # safe_key makes it a directory name
    assert config.email == "ops@example.com"
    assert config.eab == ExternalAccountBinding("kid-1", "bWFj")
    assert config.ca_root == "/etc/pebble/ca.pem"
    assert config.preferred_chains == PreferredChains(True, ("ISRG Root X1",), ())
    assert config.profile == "shortlived"
    assert config.key_type == "p384"
    default = issuer_config_from_caddy({"module": "acme"})
    assert default is not None
    assert default.ca == "https://acme-v02.api.letsencrypt.org/directory"
    assert default.issuer_key == "acme-v02.api.letsencrypt.org-directory"
    assert default.key_type == "p256"
    assert issuer_config_from_caddy({"module": "internal"}) is None


def test_stored_status_reads_storage_only(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    ca = trustme.CA()
    leaf = ca.issue_cert("a.example")
    config = IssuerConfig(ca="https://127.0.0.1:14000/dir")
    save_certificate_resource(
        storage,
        CertificateResource(
            sans=["a.example"],
            certificate_pem=b"".join(b.bytes() for b in leaf.cert_chain_pems),
            private_key_pem=leaf.private_key_pem.bytes(),
            issuer_key=config.issuer_key,
        ),
    )
    got = {s.name: s for s in stored_status(storage, ["A.example", "b.example"], [config])}
    assert got["a.example"].state == "valid"
    assert got["a.example"].issuer == "127.0.0.1:14000-dir"
    assert got["a.example"].not_after is not None and got["a.example"].next_renewal is not None
    assert got["a.example"].next_renewal < got["a.example"].not_after
    assert got["b.example"].state == "missing"
    assert got["b.example"].to_json()["not_after"] is None


def test_rate_limit_error_keeps_retry_after() -> None:
    resp = requests.Response()
    resp.status_code = 429
    resp.headers["Content-Type"] = "application/problem+json"
    resp.headers["Retry-After"] = "120"
    resp._content = json.dumps(
        {"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many certificates"}
    ).encode()
    with pytest.raises(messages.Error) as info:
        _Network._check_response(resp, content_type="application/json")
    before = dt.datetime.now(dt.UTC)
    err = _to_issuer_error(info.value)
    assert err.rate_limited and err.acme_code == "rateLimited"
    assert "too many certificates" in str(err)
    assert err.retry_after is not None
    assert before + dt.timedelta(seconds=119) <= err.retry_after
    assert err.retry_after <= before + dt.timedelta(seconds=125)
