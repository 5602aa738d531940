"""acme_client.local_ca: Caddy's local CA over real storage files, verified with cryptography
and with real TLS handshakes through ssl.MemoryBIO (no sockets)."""

from __future__ import annotations

import ipaddress
import ssl
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from acme_client.certificates import LoadedCertificate
from acme_client.local_ca import LocalCA, LocalCAError
from acme_client.storage import FileStorage, site_cert_key

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def verify_chain(ca: LocalCA, cert: LoadedCertificate, name: str, at: datetime) -> None:
    """Full RFC 5280 path validation to the CA's root for `name` at time `at`."""
    builder = PolicyBuilder().store(Store([ca.root_certificate])).time(at)
    subject: x509.DNSName | x509.IPAddress
    try:
        subject = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = builder.build_server_verifier(subject)
    chain = verifier.verify(cert.leaf, list(cert.chain[1:]))
    assert chain[-1] == ca.root_certificate


def tls_handshake(cert_file: Path, key_file: Path, cafile: Path, server_name: str) -> str:
    """Handshake a server using the stored files with a client trusting only `cafile`."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(cafile=str(cafile))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for key, obj in (("c", client), ("s", server)):
            if not done[key]:
                try:
                    obj.do_handshake()
                    done[key] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values())
    return str(client.version())


def test_provision_creates_caddy_style_root_and_intermediate(tmp_path: Path) -> None:
    clock = Clock()
    ca = LocalCA(FileStorage(tmp_path), clock=clock)
    ca.provision()
    pki = tmp_path / "pki" / "authorities" / "local"
    assert sorted(p.name for p in pki.iterdir()) == [
        "intermediate.crt",
        "intermediate.key",
        "root.crt",
        "root.key",
    ]
    for p in pki.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert (pki / "root.key").read_bytes().startswith(b"-----BEGIN EC PRIVATE KEY-----")
    root = ca.root_certificate
    inter = ca.intermediate_chain[0]
    year = clock.now.year
    assert root.subject.rfc4514_string() == f"CN=Caddy Local Authority - {year} ECC Root"
    assert inter.subject.rfc4514_string() == "CN=Caddy Local Authority - ECC Intermediate"
    assert inter.issuer == root.subject
    assert root.not_valid_after_utc - root.not_valid_before_utc == timedelta(days=3600)
    assert inter.not_valid_after_utc - inter.not_valid_before_utc == timedelta(days=7)
    for cert, pathlen in ((root, 1), (inter, 0)):
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca and bc.value.path_length == pathlen
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
        pub = cert.public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    inter.verify_directly_issued_by(root)
    assert ca.root_cert_path() == pki / "root.crt"
    assert ca.root_cert_pem() == (pki / "root.crt").read_bytes()


def test_second_instance_reuses_stored_ca(tmp_path: Path) -> None:
    first = LocalCA(FileStorage(tmp_path))
    first.provision()
    root_bytes = (tmp_path / "pki/authorities/local/root.crt").read_bytes()
    inter_bytes = (tmp_path / "pki/authorities/local/intermediate.crt").read_bytes()
    second = LocalCA(FileStorage(tmp_path))
    second.provision()
    assert second.root_certificate == first.root_certificate
    assert second.intermediate_chain == first.intermediate_chain
    assert (tmp_path / "pki/authorities/local/root.crt").read_bytes() == root_bytes
    assert (tmp_path / "pki/authorities/local/intermediate.crt").read_bytes() == inter_bytes


def test_leaf_follows_caddy_conventions_and_verifies(tmp_path: Path) -> None:
    clock = Clock()
    ca = LocalCA(FileStorage(tmp_path), clock=clock)
    ca.provision()
    leaf = ca.obtain(["LocalHost"])
    assert leaf.names == ("localhost",)
    cert = leaf.leaf
    assert cert.subject == x509.Name([])
    san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    assert san.critical
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(hours=12)
    assert cert.serial_number.bit_length() > 64
    assert len(leaf.chain) == 2 and leaf.chain[1] == ca.intermediate_chain[0]
    verify_chain(ca, leaf, "localhost", clock.now)
    base = tmp_path / "certificates" / "local" / "localhost"
    assert (base / "localhost.json").read_bytes() == b'{\n\t"sans": [\n\t\t"localhost"\n\t]\n}'
    assert (base / "localhost.key").read_bytes().startswith(b"-----BEGIN EC PRIVATE KEY-----")
    version = tls_handshake(
        base / "localhost.crt", base / "localhost.key", ca.root_cert_path(), "localhost"
    )
    assert version in ("TLSv1.2", "TLSv1.3")


def test_ip_and_wildcard_names(tmp_path: Path) -> None:
    clock = Clock()
    ca = LocalCA(FileStorage(tmp_path), clock=clock)
    ca.provision()
    ip4 = ca.obtain(["127.0.0.1"])
    ip6 = ca.obtain(["[::1]"])
    wild = ca.obtain(["*.localhost"])
    assert ip4.names == ("127.0.0.1",) and ip6.names == ("::1",)
    verify_chain(ca, ip4, "127.0.0.1", clock.now)
    verify_chain(ca, ip6, "::1", clock.now)
    verify_chain(ca, wild, "app.localhost", clock.now)
    assert (tmp_path / site_cert_key("local", "::1")).name == "--1.crt"
    assert (tmp_path / "certificates/local/wildcard_.localhost/wildcard_.localhost.crt").exists()
    ips = ip4.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ips.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_stored_leaf_reused_until_a_third_of_lifetime_remains(tmp_path: Path) -> None:
    clock = Clock()
    ca = LocalCA(FileStorage(tmp_path), clock=clock)
    ca.provision()
    first = ca.obtain(["a.localhost"])
    clock.now += timedelta(hours=7)
    assert ca.obtain(["a.localhost"]).leaf.serial_number == first.leaf.serial_number
    clock.now += timedelta(hours=1, minutes=1)  # 8 h 1 m of 12 h gone: < 1/3 left
    renewed = ca.obtain(["a.localhost"])
    assert renewed.leaf.serial_number != first.leaf.serial_number
    assert renewed.not_before >= first.not_before + timedelta(hours=8)
    # A fresh instance (a restart) finds the renewed one in storage.
    again = LocalCA(FileStorage(tmp_path), clock=clock)
    again.provision()
    assert again.obtain(["a.localhost"]).leaf.serial_number == renewed.leaf.serial_number


def test_intermediate_renewed_in_its_last_fifth(tmp_path: Path) -> None:
    clock = Clock()
    ca = LocalCA(FileStorage(tmp_path), clock=clock)
    ca.provision()
    old_inter = ca.intermediate_chain[0]
    clock.now += timedelta(days=5)
    assert ca.maintain() is False
    clock.now += timedelta(days=0.7)  # 5.7 of 7 days gone: inside the last 20 %
    assert ca.maintain() is True
    new_inter = ca.intermediate_chain[0]
    assert new_inter != old_inter
    assert new_inter.not_valid_before_utc >= clock.now.replace(microsecond=0)
    stored = (tmp_path / "pki/authorities/local/intermediate.crt").read_bytes()
    assert x509.load_pem_x509_certificate(stored) == new_inter
    leaf = ca.obtain(["b.localhost"])
    assert leaf.chain[1] == new_inter
    verify_chain(ca, leaf, "b.localhost", clock.now)
    # Another process reading the same storage picks up the renewed intermediate.
    other = LocalCA(FileStorage(tmp_path), clock=clock)
    other.provision()
    assert other.intermediate_chain[0] == new_inter


def test_leaf_lifetime_clamped_to_intermediate(tmp_path: Path) -> None:
    ca = LocalCA(FileStorage(tmp_path), intermediate_lifetime=timedelta(hours=5))
    ca.provision()
    leaf = ca.obtain(["c.localhost"])
    assert leaf.not_after == ca.intermediate_chain[0].not_valid_after_utc


def test_root_from_elsewhere_is_loaded_not_replaced(tmp_path: Path) -> None:
    """A root not made by us (here: by trustme) is used as is; a stale intermediate is replaced."""
    foreign = trustme.CA(key_type=trustme.KeyType.ECDSA)
    storage = FileStorage(tmp_path)
    storage.store("pki/authorities/local/root.crt", foreign.cert_pem.bytes())
    storage.store("pki/authorities/local/root.key", foreign.private_key_pem.bytes())
    other = trustme.CA(key_type=trustme.KeyType.ECDSA).create_child_ca()
    storage.store("pki/authorities/local/intermediate.crt", other.cert_pem.bytes())
    storage.store("pki/authorities/local/intermediate.key", other.private_key_pem.bytes())
    ca = LocalCA(storage)
    ca.provision()
    assert storage.load("pki/authorities/local/root.crt") == foreign.cert_pem.bytes()
    assert ca.intermediate_chain[0].issuer == ca.root_certificate.subject
    leaf = ca.obtain(["d.localhost"])
    verify_chain(ca, leaf, "d.localhost", datetime.now(UTC))
    # And trustme's own trust configuration accepts our leaf in a real handshake.
    base = tmp_path / "certificates/local/d.localhost"
    cafile = tmp_path / "foreign.pem"
    foreign.cert_pem.write_to_path(str(cafile))
    tls_handshake(base / "d.localhost.crt", base / "d.localhost.key", cafile, "d.localhost")


def test_leaf_from_another_root_is_reissued(tmp_path: Path) -> None:
    first = LocalCA(FileStorage(tmp_path / "one"))
    first.provision()
    leaf = first.obtain(["e.localhost"])
    second = LocalCA(FileStorage(tmp_path / "two"))
    second.provision()
    FileStorage(tmp_path / "two").store(site_cert_key("local", "e.localhost"), leaf.certificate_pem)
    FileStorage(tmp_path / "two").store(
        "certificates/local/e.localhost/e.localhost.key", leaf.private_key_pem
    )
    FileStorage(tmp_path / "two").store(
        "certificates/local/e.localhost/e.localhost.json", b'{"sans":["e.localhost"]}'
    )
    assert not second.chains_to_root(leaf)
    fresh = second.obtain(["e.localhost"])
    assert fresh.leaf != leaf.leaf and second.chains_to_root(fresh)


def test_root_without_key_is_an_error_naming_the_file(tmp_path: Path) -> None:
    ca = LocalCA(FileStorage(tmp_path))
    ca.provision()
    (tmp_path / "pki/authorities/local/root.key").unlink()
    with pytest.raises(LocalCAError, match=r"pki/authorities/local/root.key"):
        LocalCA(FileStorage(tmp_path)).provision()


def test_unprovisioned_and_empty_names(tmp_path: Path) -> None:
    ca = LocalCA(FileStorage(tmp_path))
    with pytest.raises(LocalCAError):
        ca.root_certificate  # noqa: B018
    ca.provision()
    with pytest.raises(LocalCAError):
        ca.issue([])


def test_concurrent_processes_agree_on_one_root(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from cryptography.hazmat.primitives import hashes
        from acme_client.local_ca import LocalCA
        from acme_client.locks import FileLocker
        from acme_client.storage import FileStorage
        storage = FileStorage(sys.argv[1])
        ca = LocalCA(storage, locker=FileLocker(storage, poll_interval_s=0.05))
        ca.provision()
        leaf = ca.obtain(["shared.localhost"])
        print(ca.root_certificate.fingerprint(hashes.SHA256()).hex(), leaf.leaf.serial_number)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        outputs.append(out.split())
    assert len({o[0] for o in outputs}) == 1  # one root, not three
    assert len({o[1] for o in outputs}) == 1  # one leaf issued, the others loaded it
    ca = LocalCA(FileStorage(tmp_path))
    ca.provision()
    assert ca.root_certificate.fingerprint(hashes.SHA256()).hex() == outputs[0][0]
    assert not list((tmp_path / "locks").iterdir())
    assert ca.root_certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)


def test_restart_after_everything_expired(tmp_path: Path) -> None:
    """Two weeks offline: the expired intermediate and leaf are replaced, the root is kept."""
    clock = Clock()
    ca = LocalCA(FileStorage(tmp_path), clock=clock)
    ca.provision()
    old_leaf = ca.obtain(["f.localhost"])
    old_inter = ca.intermediate_chain[0]
    clock.now += timedelta(days=14)
    later = LocalCA(FileStorage(tmp_path), clock=clock)
    later.provision()
    assert later.root_certificate == ca.root_certificate
    assert later.intermediate_chain[0] != old_inter
    assert later.intermediate_chain[0].not_valid_after_utc > clock.now
    leaf = later.obtain(["f.localhost"])
    assert leaf.leaf != old_leaf.leaf
    verify_chain(later, leaf, "f.localhost", clock.now)
