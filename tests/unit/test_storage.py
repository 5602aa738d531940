"""acme_client.storage: certmagic's key rules, Caddy's layout, atomic writes and file modes."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from acme_client import storage as st
from acme_client.storage import CertificateResource, FileStorage, StorageError


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("Example.COM", "example.com"),
        ("*.example.com", "wildcard_.example.com"),
        ("example.com:8443", "example.com-8443"),
        ("::1", "--1"),
        ("  padded  ", "padded"),
        ("a b", "a_b"),
        ("a+b", "a_plus_b"),
        ("../../etc/passwd", "etcpasswd"),
        ("a...b", "a.b"),
        ("me@example.com", "me@example.com"),
        ("a,b/c\\d?e", "abcde"),
        ("bücher.de", "bcher.de"),
        ("x_y-z.0", "x_y-z.0"),
    ],
)
def test_safe_key_matches_certmagic(raw: str, safe: str) -> None:
    assert st.safe_key(raw) == safe


@pytest.mark.parametrize(
    ("url", "key"),
    [
        (
            "https://acme-v02.api.letsencrypt.org/directory",
            "acme-v02.api.letsencrypt.org-directory",
        ),
        (
            "https://acme-staging-v02.api.letsencrypt.org/directory",
            "acme-staging-v02.api.letsencrypt.org-directory",
        ),
        ("https://acme.zerossl.com/v2/DV90", "acme.zerossl.com-v2-DV90"),
        ("https://127.0.0.1:14000/dir", "127.0.0.1:14000-dir"),
        ("https://ca.example/", "ca.example"),
        ("local", "local"),
    ],
)
def test_issuer_key_from_ca_url(url: str, key: str) -> None:
    assert st.issuer_key_from_ca_url(url) == key


def test_issuer_key_with_port_becomes_safe_directory() -> None:
    key = st.issuer_key_from_ca_url("https://127.0.0.1:14000/dir")
    assert st.site_cert_key(key, "a.test") == "certificates/127.0.0.1-14000-dir/a.test/a.test.crt"


def test_caddy_layout_keys() -> None:
    le = st.issuer_key_from_ca_url("https://acme-v02.api.letsencrypt.org/directory")
    assert st.site_cert_key(le, "Example.com") == (
        "certificates/acme-v02.api.letsencrypt.org-directory/example.com/example.com.crt"
    )
    assert st.site_private_key_key("local", "*.Example.com") == (
        "certificates/local/wildcard_.example.com/wildcard_.example.com.key"
    )
    assert st.site_meta_key("local", "127.0.0.1") == "certificates/local/127.0.0.1/127.0.0.1.json"
    assert st.user_registration_key(le, "Admin@Example.com") == (
        "acme/acme-v02.api.letsencrypt.org-directory/users/admin@example.com/admin.json"
    )
    assert st.user_private_key_key(le, "") == (
        "acme/acme-v02.api.letsencrypt.org-directory/users/default/default.key"
    )
    assert st.user_private_key_key(le, "@weird") == (
        "acme/acme-v02.api.letsencrypt.org-directory/users/@weird/weird.key"
    )
    assert st.challenge_tokens_key(le, "Example.com") == (
        "acme/acme-v02.api.letsencrypt.org-directory/challenge_tokens/example.com.json"
    )
    assert st.lock_key("issue_cert_*.example.com") == "locks/issue_cert_wildcard_.example.com.lock"
    assert st.ca_root_cert_key() == "pki/authorities/local/root.crt"
    assert st.ca_root_key_key() == "pki/authorities/local/root.key"
    assert st.ca_intermediate_cert_key() == "pki/authorities/local/intermediate.crt"
    assert st.ca_intermediate_key_key() == "pki/authorities/local/intermediate.key"


def test_names_key_sorted_and_truncated() -> None:
    assert st.names_key(["b.test", "a.test"]) == "a.test,b.test"
    long = st.names_key([f"n{i:04d}.example.com" for i in range(200)])
    assert len(long) == 1024
    assert long.endswith("_trunc")


def test_normalize_name_punycode() -> None:
    assert st.normalize_name("bücher.example") == "xn--bcher-kva.example"
    assert st.normalize_name("*.example.com") == "*.example.com"


def test_default_root_follows_xdg_then_home() -> None:
    assert st.default_storage_root({"XDG_DATA_HOME": "/data", "HOME": "/root"}) == Path(
        "/data/caddy"
    )
    assert st.default_storage_root({"HOME": "/home/u"}) == Path("/home/u/.local/share/caddy")
    assert st.default_storage_root({"XDG_DATA_HOME": "", "HOME": "/h"}) == Path(
        "/h/.local/share/caddy"
    )
    assert st.default_storage_root({}) == Path("./caddy")
    assert st.default_storage_root({"HOME": "/Users/u"}, platform="darwin") == Path(
        "/Users/u/Library/Application Support/Caddy"
    )


def test_store_load_exists_stat_delete(tmp_path: Path) -> None:
    s = FileStorage(tmp_path / "data")
    key = "certificates/local/a.test/a.test.key"
    assert not s.exists(key)
    with pytest.raises(FileNotFoundError):
        s.load(key)
    s.store(key, b"secret")
    assert s.load(key) == b"secret"
    assert s.exists(key)
    path = tmp_path / "data" / "certificates" / "local" / "a.test" / "a.test.key"
    assert path.read_bytes() == b"secret"
    # certmagic's modes: 0600 files, 0700 directories (they hold private keys).
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "data" / "certificates").stat().st_mode) == 0o700
    info = s.stat(key)
    assert info.key == key and info.size == 6 and info.is_terminal
    assert not s.stat("certificates/local").is_terminal
    s.store(key, b"replaced")
    assert s.load(key) == b"replaced"
    s.delete(key)
    assert not s.exists(key)
    s.delete(key)  # missing is fine
    s.store("certificates/local/b.test/b.test.crt", b"x")
    s.delete("certificates/local")
    assert not s.exists("certificates/local")


def test_store_leaves_no_temp_files_and_mode_ignores_umask(tmp_path: Path) -> None:
    s = FileStorage(tmp_path)
    old = os.umask(0o000)
    try:
        s.store("a/b", b"1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b"]


def test_list_direct_and_recursive(tmp_path: Path) -> None:
    s = FileStorage(tmp_path)
    s.store("certificates/local/a.test/a.test.crt", b"1")
    s.store("certificates/local/a.test/a.test.key", b"2")
    s.store("certificates/local/b.test/b.test.crt", b"3")
    assert s.list("certificates/local") == [
        "certificates/local/a.test",
        "certificates/local/b.test",
    ]
    assert s.list("certificates", recursive=True) == [
        "certificates/local",
        "certificates/local/a.test",
        "certificates/local/a.test/a.test.crt",
        "certificates/local/a.test/a.test.key",
        "certificates/local/b.test",
        "certificates/local/b.test/b.test.crt",
    ]
    with pytest.raises(FileNotFoundError):
        s.list("nothing/here")


def test_keys_cannot_escape_root(tmp_path: Path) -> None:
    s = FileStorage(tmp_path / "root")
    for key in ("../outside", "a/../../outside", "/etc/passwd"):
        with pytest.raises(StorageError):
            s.store(key, b"x")
    assert not (tmp_path / "outside").exists()


def test_readers_never_see_partial_writes(tmp_path: Path) -> None:
    s = FileStorage(tmp_path)
    big_a = b"A" * 1_000_000
    big_b = b"B" * 1_000_000
    s.store("k", big_a)
    bad: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = s.load("k")
            if data not in (big_a, big_b):
                bad.append(len(data))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(40):
            s.store("k", big_b if i % 2 else big_a)
    finally:
        stop.set()
        t.join(10)
    assert bad == []


def test_store_all_rolls_back_on_failure(tmp_path: Path) -> None:
    s = FileStorage(tmp_path)
    (tmp_path / "blocker").write_bytes(b"a file where a directory must go")
    with pytest.raises(OSError):
        s.store_all([("ok/one", b"1"), ("blocker/two", b"2")])
    assert not s.exists("ok/one")


def test_certificate_resource_round_trip_like_certmagic(tmp_path: Path) -> None:
    s = FileStorage(tmp_path)
    issuer = st.issuer_key_from_ca_url("https://acme-v02.api.letsencrypt.org/directory")
    res = CertificateResource(
        sans=["www.example.com", "example.com"],
        certificate_pem=b"CHAIN",
        private_key_pem=b"KEY",
        issuer_key=issuer,
        issuer_data={"url": "https://acme/cert/1", "ca": "https://acme/dir"},
    )
    st.save_certificate_resource(s, res)
    base = tmp_path / "certificates" / issuer / "example.comwww.example.com"
    assert (base / "example.comwww.example.com.crt").read_bytes() == b"CHAIN"
    assert (base / "example.comwww.example.com.key").read_bytes() == b"KEY"
    meta_text = (base / "example.comwww.example.com.json").read_text()
    # Go's json.MarshalIndent(v, "", "\t") layout.
    assert meta_text.startswith('{\n\t"sans": [\n\t\t"www.example.com",\n\t\t"example.com"\n\t],')
    assert json.loads(meta_text)["issuer_data"]["ca"] == "https://acme/dir"
    back = st.load_certificate_resource(s, issuer, res.names_key())
    assert back.sans == ["www.example.com", "example.com"]
    assert back.certificate_pem == b"CHAIN" and back.private_key_pem == b"KEY"
    assert back.issuer_data == {"url": "https://acme/cert/1", "ca": "https://acme/dir"}
    assert st.list_issuer_keys(s) == [issuer]
    st.delete_certificate_resource(s, issuer, res.names_key())
    with pytest.raises(FileNotFoundError):
        st.load_certificate_resource(s, issuer, res.names_key())


def test_metadata_without_issuer_data_is_what_caddy_writes_for_local(tmp_path: Path) -> None:
    res = CertificateResource(
        sans=["localhost"], certificate_pem=b"", private_key_pem=b"", issuer_key="local"
    )
    # Byte for byte what Caddy 2.6.2 wrote to certificates/local/localhost/localhost.json.
    assert res.metadata_json() == b'{\n\t"sans": [\n\t\t"localhost"\n\t]\n}'


def test_corrupt_metadata_names_the_key(tmp_path: Path) -> None:
    s = FileStorage(tmp_path)
    s.store(st.site_private_key_key("local", "a.test"), b"k")
    s.store(st.site_cert_key("local", "a.test"), b"c")
    s.store(st.site_meta_key("local", "a.test"), b"{not json")
    with pytest.raises(StorageError, match=r"certificates/local/a.test/a.test.json: decoding"):
        st.load_certificate_resource(s, "local", "a.test")
