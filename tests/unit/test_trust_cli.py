"""`pyproxy trust --install` / `pyproxy untrust`: the local root in NSS databases and the system
store, named as smallstep/truststore (so `caddy trust`) names it.

NSS databases are real ones made by `certutil -N` in a temporary HOME; the system store is a
temporary folder passed through PYPROXY_TRUST_DIR (update-ca-certificates runs only for the real
/usr/local/share/ca-certificates, which these tests never touch).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from acme_client.local_ca import LocalCA
from acme_client.storage import FileStorage
from proxy.trust_cli import TRUSTSTORE_PREFIX, nss_databases, system_trust_filename

CERTUTIL = shutil.which("certutil")
needs_certutil = pytest.mark.skipif(CERTUTIL is None, reason="certutil (libnss3-tools) absent")
ROOT = Path(__file__).resolve().parents[2]


def make_nss_db(folder: Path) -> None:
    assert CERTUTIL is not None
    folder.mkdir(parents=True)
    subprocess.run([CERTUTIL, "-N", "--empty-password", "-d", f"sql:{folder}"], check=True,
                   capture_output=True, timeout=60)  # fmt: skip


def nicknames(folder: Path) -> str:
    assert CERTUTIL is not None
    proc = subprocess.run([CERTUTIL, "-L", "-d", f"sql:{folder}"], check=True,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    return proc.stdout


def pyproxy(
    home: Path, trust_dir: Path, *args: str, path: str | None = None, prog: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home / "data"),
               PYPROXY_TRUST_DIR=str(trust_dir), PYPROXY_NATIVE="0")  # fmt: skip
    if path is not None:
        env["PATH"] = path
    if prog is not None:
        env["PYPROXY_PROG"] = prog  # what the image's `caddy` shim sets
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def root_of(home: Path) -> LocalCA:
    ca = LocalCA(FileStorage(home / "data" / "caddy"))
    ca.provision()
    return ca


@needs_certutil
def test_install_and_remove_in_nss_and_system_store(tmp_path: Path) -> None:
    home, trust_dir = tmp_path / "home", tmp_path / "ca-certificates"
    chromium = home / ".pki" / "nssdb"
    firefox = home / ".mozilla" / "firefox" / "abcd.default-release"
    make_nss_db(chromium)
    make_nss_db(firefox)

    done = pyproxy(home, trust_dir, "trust", "--install")
    assert done.returncode == 0, done.stderr
    ca = root_of(home)
    assert done.stdout.strip() == str(ca.root_cert_path())
    assert "installing root certificate (you might be prompted for password)" in done.stderr
    name = TRUSTSTORE_PREFIX + str(ca.root_certificate.serial_number)
    for db in (chromium, firefox):
        # certutil -L: "<nickname>   <trust flags>"; truststore trusts it for TLS servers only.
        line = next(ln for ln in nicknames(db).splitlines() if ln.startswith(name))
        assert line.split()[-1] == "C,,"
    installed = trust_dir / (name.replace(" ", "_") + ".crt")
    assert installed.read_bytes() == ca.root_cert_path().read_bytes()
    assert installed.stat().st_mode & 0o777 == 0o644

    # Installing twice is fine (certutil -A replaces; the file is rewritten).
    again = pyproxy(home, trust_dir, "trust", "--install")
    assert again.returncode == 0, again.stderr

    legacy = trust_dir / "pyproxy-local-root.crt"  # what older pyproxy versions installed
    legacy.write_bytes(installed.read_bytes())
    gone = pyproxy(home, trust_dir, "untrust")
    assert gone.returncode == 0, gone.stderr
    assert not installed.exists() and not legacy.exists()
    for db in (chromium, firefox):
        assert name not in nicknames(db)
    assert f"removed {installed}" in gone.stderr

    # Untrusting what is not installed succeeds, as truststore's `rm -f` does.
    twice = pyproxy(home, trust_dir, "untrust")
    assert twice.returncode == 0, twice.stderr
    assert "not installed" in twice.stderr


@needs_certutil
def test_untrust_by_cert_file_and_conflicting_flags(tmp_path: Path) -> None:
    home, trust_dir = tmp_path / "home", tmp_path / "ca-certificates"
    make_nss_db(home / ".pki" / "nssdb")
    assert pyproxy(home, trust_dir, "trust", "--install").returncode == 0
    ca = root_of(home)
    copy = tmp_path / "root.pem"
    shutil.copyfile(ca.root_cert_path(), copy)
    gone = pyproxy(home, trust_dir, "untrust", "--cert", str(copy))
    assert gone.returncode == 0, gone.stderr
    assert not (trust_dir / system_trust_filename(ca.root_certificate)).exists()
    assert TRUSTSTORE_PREFIX not in nicknames(home / ".pki" / "nssdb")

    clash = pyproxy(home, trust_dir, "untrust", "--cert", str(copy), "--ca", "other")
    assert clash.returncode == 1
    assert "conflicting command line arguments, cannot use --cert with other flags" in clash.stderr


def test_untrust_without_a_root_is_an_error(tmp_path: Path) -> None:
    gone = pyproxy(tmp_path / "home", tmp_path / "store", "untrust")
    assert gone.returncode == 1
    assert gone.stderr.startswith("Error: accessing certificate file:")


def test_without_certutil_the_system_store_is_still_installed(tmp_path: Path) -> None:
    home, trust_dir = tmp_path / "home", tmp_path / "ca-certificates"
    # A PATH holding nothing but the interpreter's folder: no certutil, no update-ca-certificates.
    bare = tmp_path / "bin"
    bare.mkdir()
    done = pyproxy(home, trust_dir, "trust", "--install", path=str(bare))
    assert done.returncode == 0, done.stderr
    assert 'warning: "certutil" is not available' in done.stderr
    ca = root_of(home)
    assert (trust_dir / system_trust_filename(ca.root_certificate)).exists()


def test_nss_databases_are_found_like_truststore(tmp_path: Path) -> None:
    (tmp_path / ".mozilla" / "firefox" / "old").mkdir(parents=True)
    (tmp_path / ".mozilla" / "firefox" / "old" / "cert8.db").write_bytes(b"")
    (tmp_path / ".mozilla" / "firefox" / "new").mkdir()
    (tmp_path / ".mozilla" / "firefox" / "new" / "cert9.db").write_bytes(b"")
    (tmp_path / ".mozilla" / "firefox" / "empty").mkdir()
    (tmp_path / ".mozilla" / "firefox" / "profiles.ini").write_text("")
    (tmp_path / ".pki" / "nssdb").mkdir(parents=True)
    (tmp_path / ".pki" / "nssdb" / "cert9.db").write_bytes(b"")
    assert nss_databases(tmp_path) == [
        f"sql:{tmp_path}/.mozilla/firefox/new",
        f"dbm:{tmp_path}/.mozilla/firefox/old",
        f"sql:{tmp_path}/.pki/nssdb",
    ]


@needs_certutil
def test_caddy_trust_through_the_shim_installs_without_a_flag(tmp_path: Path) -> None:
    home, trust_dir = tmp_path / "home", tmp_path / "ca-certificates"
    chromium = home / ".pki" / "nssdb"
    make_nss_db(chromium)
    done = pyproxy(home, trust_dir, "trust", prog="caddy")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # Caddy's `trust` prints no path
    name = TRUSTSTORE_PREFIX + str(root_of(home).root_certificate.serial_number)
    assert name in nicknames(chromium)
    assert (trust_dir / (name.replace(" ", "_") + ".crt")).exists()
    # Plain `pyproxy trust` still only prints the path (README: curl --cacert "$(pyproxy trust)").
    other_home = tmp_path / "other"
    make_nss_db(other_home / ".pki" / "nssdb")
    plain = pyproxy(other_home, tmp_path / "other-ca", "trust")
    assert plain.returncode == 0 and plain.stdout.strip().endswith(".crt")
    assert not (tmp_path / "other-ca").exists()
