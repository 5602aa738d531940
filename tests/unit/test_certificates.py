"""acme_client.certificates: PEM loading with errors naming the file, SANs, renewal rule, and
picking the stored certificate for a name. Certificates come from trustme and our LocalCA."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from acme_client.certificates import (
    CertificateError,
    certificate_covers,
    find_stored_certificate,
    load_pem_files,
    normalize_host,
    renewal_due,
    wildcard_for,
)
from acme_client.local_ca import LocalCA
from acme_client.storage import (
    CertificateResource,
    FileStorage,
    issuer_key_from_ca_url,
    save_certificate_resource,
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_pair(tmp_path: Path, leaf: trustme.LeafCert) -> tuple[Path, Path]:
    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


def test_load_pem_files(tmp_path: Path, ca: trustme.CA) -> None:
    leaf = ca.issue_cert("Example.com", "*.example.com", "127.0.0.1", "::1")
    cert, key = write_pair(tmp_path, leaf)
    loaded = load_pem_files(cert, key)
    assert loaded.names == ("example.com", "*.example.com", "127.0.0.1", "::1")
    assert loaded.source == str(cert)
    assert len(loaded.chain) == 1
    assert loaded.not_before < datetime.now(UTC) < loaded.not_after
    assert loaded.covers("EXAMPLE.com.") and loaded.covers("www.example.com")
    assert not loaded.covers("a.b.example.com") and not loaded.covers("example.org")
    assert loaded.covers("[::1]") and loaded.covers("127.0.0.1")
    assert loaded.private_key_pem == key.read_bytes()


def test_chain_is_kept_in_order(tmp_path: Path, ca: trustme.CA) -> None:
    child = ca.create_child_ca()
    leaf = child.issue_cert("chain.test")
    cert, key = write_pair(tmp_path, leaf)
    loaded = load_pem_files(cert, key)
    assert len(loaded.chain) == 2
    loaded.chain[0].verify_directly_issued_by(loaded.chain[1])


def test_missing_file_names_it(tmp_path: Path, ca: trustme.CA) -> None:
    cert, key = write_pair(tmp_path, ca.issue_cert("a.test"))
    missing = tmp_path / "nope.pem"
    with pytest.raises(CertificateError) as err:
        load_pem_files(missing, key)
    assert str(err.value).startswith(f"{missing}: ")
    assert "No such file" in str(err.value)
    with pytest.raises(CertificateError, match=f"^{missing}: "):
        load_pem_files(cert, missing)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file_names_it(tmp_path: Path, ca: trustme.CA) -> None:
    cert, key = write_pair(tmp_path, ca.issue_cert("a.test"))
    key.chmod(0)
    with pytest.raises(CertificateError, match=f"^{key}: .*ermission"):
        load_pem_files(cert, key)


def test_directory_instead_of_file_names_it(tmp_path: Path, ca: trustme.CA) -> None:
    cert, _key = write_pair(tmp_path, ca.issue_cert("a.test"))
    with pytest.raises(CertificateError, match=f"^{tmp_path}: "):
        load_pem_files(cert, tmp_path)


def test_non_pem_names_the_file(tmp_path: Path, ca: trustme.CA) -> None:
    cert, key = write_pair(tmp_path, ca.issue_cert("a.test"))
    junk = tmp_path / "junk.pem"
    junk.write_text("hello, I am not a certificate\n")
    with pytest.raises(CertificateError, match=f"^{junk}: no PEM"):
        load_pem_files(junk, key)
    with pytest.raises(CertificateError, match=f"^{junk}: no PEM private key"):
        load_pem_files(cert, junk)
    # A key where the certificate belongs and the other way round.
    with pytest.raises(CertificateError, match=f"^{key}: "):
        load_pem_files(key, key)
    with pytest.raises(CertificateError, match=f"^{cert}: "):
        load_pem_files(cert, cert)
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError, match=f"^{broken}: "):
        load_pem_files(broken, key)


def test_mismatched_key_names_the_key_file(tmp_path: Path, ca: trustme.CA) -> None:
    cert, _ = write_pair(tmp_path, ca.issue_cert("a.test"))
    other_key = tmp_path / "other.key"
    other_key.write_bytes(ca.issue_cert("b.test").private_key_pem.bytes())
    with pytest.raises(CertificateError) as err:
        load_pem_files(cert, other_key)
    assert str(err.value) == f"{other_key}: private key does not match the certificate in {cert}"
    rsa_key = tmp_path / "rsa.key"
    rsa_key.write_bytes(
        rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(CertificateError, match=f"^{rsa_key}: private key does not match"):
        load_pem_files(cert, rsa_key)


def test_rsa_pair_loads(tmp_path: Path) -> None:
    rsa_ca = trustme.CA(key_type=trustme.KeyType.RSA)
    cert, key = write_pair(tmp_path, rsa_ca.issue_cert("rsa.test", key_type=trustme.KeyType.RSA))
    assert load_pem_files(cert, key).names == ("rsa.test",)


def test_renewal_due_at_one_third(ca: trustme.CA, tmp_path: Path) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    leaf = ca.issue_cert("r.test", not_before=start, not_after=start + timedelta(days=90))
    cert, key = write_pair(tmp_path, leaf)
    loaded = load_pem_files(cert, key)
    assert not renewal_due(loaded.leaf, start + timedelta(days=59))
    assert renewal_due(loaded.leaf, start + timedelta(days=60))
    assert not loaded.renewal_due(start + timedelta(days=30), ratio=0.5)
    assert loaded.renewal_due(start + timedelta(days=46), ratio=0.5)
    assert not loaded.expired(start + timedelta(days=89))
    assert loaded.expired(start + timedelta(days=90))
    assert renewal_due(loaded.leaf, datetime(2030, 3, 10))  # naive means UTC


def test_name_helpers() -> None:
    assert normalize_host("WWW.Example.COM.") == "www.example.com"
    assert normalize_host("[::1]") == "::1"
    assert normalize_host("0:0::1") == "::1"
    assert normalize_host("[2001:DB8::1]") == "2001:db8::1"
    assert normalize_host("::FFFF:1.2.3.4") == "::ffff:102:304"
    assert normalize_host("127.0.0.1.") == "127.0.0.1"
    # Not IP literals: kept as names (only IP-like text is handed to the parser).
    for name in ("1.2.3", "123", "01.2.3.4", "1.2.3.4.example", "a1b2::x"):
        assert normalize_host(name) == name.lower()
    assert wildcard_for("a.b.c") == "*.b.c"
    assert wildcard_for("localhost") is None
    assert wildcard_for("10.0.0.1") is None
    assert certificate_covers(["*.example.com"], "x.example.com")
    assert not certificate_covers(["*.example.com"], "example.com")


def _store_leaf(storage: FileStorage, issuer: str, leaf: trustme.LeafCert, sans: list[str]) -> None:
    save_certificate_resource(
        storage,
        CertificateResource(
            sans=sans,
            certificate_pem=b"".join(b.bytes() for b in leaf.cert_chain_pems),
            private_key_pem=leaf.private_key_pem.bytes(),
            issuer_key=issuer,
        ),
    )


def test_find_stored_exact_then_wildcard(tmp_path: Path, ca: trustme.CA) -> None:
    storage = FileStorage(tmp_path)
    le = issuer_key_from_ca_url("https://acme-v02.api.letsencrypt.org/directory")
    _store_leaf(storage, le, ca.issue_cert("*.example.com"), ["*.example.com"])
    _store_leaf(storage, le, ca.issue_cert("www.example.com"), ["www.example.com"])
    exact = find_stored_certificate(storage, "WWW.example.com")
    assert exact is not None and exact.names == ("www.example.com",)
    assert exact.issuer_key == le
    assert exact.source == str(
        tmp_path / "certificates" / le / "www.example.com" / "www.example.com.crt"
    )
    wild = find_stored_certificate(storage, "api.example.com")
    assert wild is not None and wild.names == ("*.example.com",)
    assert find_stored_certificate(storage, "a.b.example.com") is None
    assert find_stored_certificate(storage, "example.com") is None
    assert find_stored_certificate(storage, "api.example.com", issuer_keys=["local"]) is None
    assert find_stored_certificate(FileStorage(tmp_path / "empty"), "x.test") is None


def test_find_stored_prefers_newest_across_issuers(tmp_path: Path, ca: trustme.CA) -> None:
    storage = FileStorage(tmp_path)
    now = datetime.now(UTC)
    older = ca.issue_cert("n.test", not_before=now - timedelta(days=10))
    newer = ca.issue_cert("n.test", not_before=now - timedelta(days=1))
    _store_leaf(storage, "acme.one-directory", newer, ["n.test"])
    _store_leaf(storage, "acme.two-directory", older, ["n.test"])
    found = find_stored_certificate(storage, "n.test")
    assert found is not None and found.issuer_key == "acme.one-directory"


def test_find_stored_with_local_ca_and_ip(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    local = LocalCA(storage)
    local.provision()
    local.obtain(["::1"])
    local.obtain(["localhost"])
    found = find_stored_certificate(storage, "[::1]")
    assert found is not None and found.names == ("::1",) and found.issuer_key == "local"
    assert local.chains_to_root(found)


def test_corrupt_stored_certificate_names_the_file(tmp_path: Path, ca: trustme.CA) -> None:
    storage = FileStorage(tmp_path)
    _store_leaf(storage, "local", ca.issue_cert("c.test"), ["c.test"])
    other = ca.issue_cert("d.test").private_key_pem.bytes()
    storage.store("certificates/local/c.test/c.test.key", other)
    key_path = tmp_path / "certificates/local/c.test/c.test.key"
    with pytest.raises(CertificateError, match=f"^{key_path}: private key does not match"):
        find_stored_certificate(storage, "c.test")
