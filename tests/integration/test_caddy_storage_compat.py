"""Storage written by real Caddy 2.6.2 is read by pyproxy, and the other way round.

Caddy runs on 127.0.0.1 with `local_certs` and `storage file_system <tmp>`, `admin off`, trust
store installation off. pyproxy's FileStorage + LocalCA + certificate lookup then load what it
wrote: the leaf must chain to the stored root, and LocalCA must adopt that root, not replace it.
The reverse direction checks that Caddy accepts a CA that pyproxy created.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.verification import PolicyBuilder, Store

from acme_client.certificates import LoadedCertificate, find_stored_certificate
from acme_client.local_ca import LocalCA
from acme_client.locks import FileLocker, encode_lock_meta
from acme_client.storage import (
    FileStorage,
    ca_intermediate_cert_key,
    ca_root_cert_key,
    lock_key,
)

CADDY = "/usr/bin/caddy"

pytestmark = pytest.mark.skipif(not os.path.exists(CADDY), reason="caddy is not installed")

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningCaddy:
    proc: subprocess.Popen[bytes]
    https_port: int
    storage_dir: Path
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT_S)


def start_caddy(
    workdir: Path, storage_dir: Path, names: list[str], *, wait_for_certs: bool = True
) -> RunningCaddy:
    http_port, https_port = free_port(), free_port()
    sites = ", ".join(f"https://{n}:{https_port}" for n in names)
    caddyfile = workdir / "Caddyfile"
    caddyfile.write_text(
        "{\n"
        "\tadmin off\n"
        "\tlocal_certs\n"
        "\tskip_install_trust\n"
        "\tdefault_bind 127.0.0.1\n"
        f"\tstorage file_system {storage_dir}\n"
        f"\thttp_port {http_port}\n"
        f"\thttps_port {https_port}\n"
        "\tauto_https disable_redirects\n"
        "\tservers {\n\t\tprotocols h1 h2\n\t}\n"
        "}\n"
        f'{sites} {{\n\trespond "hello from caddy"\n}}\n'
    )
    # Keep Caddy's autosave and any default data inside the test's folder.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "XDG_DATA_HOME": str(workdir / "xdg-data"),
        "XDG_CONFIG_HOME": str(workdir / "xdg-config"),
    }
    log = workdir / "caddy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [CADDY, "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
    running = RunningCaddy(proc, https_port, storage_dir, log)
    if not wait_for_certs:
        return running
    wait_for_certificates(running, names)
    return running


def wait_for_certificates(running: RunningCaddy, names: list[str]) -> None:
    proc, log, storage_dir = running.proc, running.log, running.storage_dir
    expected = [
        storage_dir / "certificates" / "local" / n / f"{n}.json" for n in names
    ]  # the metadata file is written last (key, cert, meta)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"caddy exited early:\n{log.read_text()[-3000:]}")
        if all(p.exists() for p in expected) and _accepts(running.https_port):
            return
        time.sleep(0.1)
    running.stop()
    raise AssertionError(f"caddy wrote no certificates in time:\n{log.read_text()[-3000:]}")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def fetch_served_chain(port: int, server_name: str, cafile: Path) -> bytes:
    """TLS handshake with Caddy, trusting only `cafile`; returns the served leaf (DER)."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode())
        body = b""
        while chunk := tls.recv(4096):
            body += chunk
        assert b"hello from caddy" in body
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def verify_to_root(root: x509.Certificate, cert: LoadedCertificate, name: str) -> None:
    subject: x509.DNSName | x509.IPAddress
    try:
        subject = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = (
        PolicyBuilder().store(Store([root])).time(datetime.now(UTC)).build_server_verifier(subject)
    )
    path = verifier.verify(cert.leaf, list(cert.chain[1:]))
    assert path[-1] == root


@pytest.fixture(scope="module")
def caddy_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, bytes]]:
    """A storage folder written by real Caddy, and the leaf DER it served for `localhost`."""
    workdir = tmp_path_factory.mktemp("caddy")
    storage_dir = workdir / "data"
    running = start_caddy(workdir, storage_dir, ["localhost", "127.0.0.1"])
    try:
        root_file = storage_dir / "pki" / "authorities" / "local" / "root.crt"
        served = fetch_served_chain(running.https_port, "localhost", root_file)
    finally:
        running.stop()
    assert running.proc.returncode is not None
    yield storage_dir, served


def test_caddy_leaf_found_and_chains_to_stored_root(caddy_storage: tuple[Path, bytes]) -> None:
    storage_dir, served = caddy_storage
    storage = FileStorage(storage_dir)
    root = x509.load_pem_x509_certificate(storage.load(ca_root_cert_key()))
    for name in ("localhost", "127.0.0.1"):
        found = find_stored_certificate(storage, name)
        assert found is not None, name
        assert found.issuer_key == "local"
        assert found.names == (name,)
        verify_to_root(root, found, name)
    localhost = find_stored_certificate(storage, "localhost")
    assert localhost is not None
    # What we load is exactly the certificate Caddy was serving.
    assert localhost.leaf == x509.load_der_x509_certificate(served)


def test_local_ca_adopts_caddys_root_and_intermediate(
    caddy_storage: tuple[Path, bytes], tmp_path: Path
) -> None:
    storage_dir = tmp_path / "copy"
    shutil.copytree(caddy_storage[0], storage_dir)
    pki = storage_dir / "pki" / "authorities" / "local"
    before = {p.name: p.read_bytes() for p in pki.iterdir()}
    storage = FileStorage(storage_dir)
    ca = LocalCA(storage)
    ca.provision()
    after = {p.name: p.read_bytes() for p in pki.iterdir()}
    assert after == before  # nothing regenerated
    assert ca.root_cert_path() == pki / "root.crt"
    assert ca.root_certificate == x509.load_pem_x509_certificate(before["root.crt"])
    assert ca.intermediate_chain[0] == x509.load_pem_x509_certificate(before["intermediate.crt"])
    # Caddy's still-fresh leaf is reused rather than re-issued.
    stored = find_stored_certificate(storage, "localhost")
    assert stored is not None
    got = ca.obtain(["localhost"])
    assert got.leaf.serial_number == stored.leaf.serial_number
    # A new name gets a leaf from Caddy's intermediate, trusted through Caddy's root.
    fresh = ca.obtain(["new.localhost"])
    assert fresh.chain[1] == ca.intermediate_chain[0]
    verify_to_root(ca.root_certificate, fresh, "new.localhost")


def test_caddy_adopts_a_ca_created_by_pyproxy(tmp_path: Path) -> None:
    storage_dir = tmp_path / "data"
    storage = FileStorage(storage_dir)
    ca = LocalCA(storage)
    ca.provision()
    root_fp = ca.root_certificate.fingerprint(hashes.SHA256())
    inter_pem = storage.load(ca_intermediate_cert_key())
    ours = ca.obtain(["127.0.0.1"])  # issued and stored by pyproxy before Caddy starts
    workdir = tmp_path / "caddy"
    workdir.mkdir()
    running = start_caddy(workdir, storage_dir, ["localhost", "127.0.0.1"])
    try:
        served = fetch_served_chain(running.https_port, "localhost", ca.root_cert_path())
        served_ip = fetch_served_chain(running.https_port, "127.0.0.1", ca.root_cert_path())
    finally:
        running.stop()
    root = x509.load_pem_x509_certificate(storage.load(ca_root_cert_key()))
    assert root.fingerprint(hashes.SHA256()) == root_fp  # Caddy kept our root
    assert storage.load(ca_intermediate_cert_key()) == inter_pem  # and our intermediate
    found = find_stored_certificate(storage, "localhost")
    assert found is not None
    assert found.leaf == x509.load_der_x509_certificate(served)
    assert ca.chains_to_root(found)
    verify_to_root(root, found, "localhost")
    # Caddy served the leaf pyproxy had stored instead of issuing its own.
    assert x509.load_der_x509_certificate(served_ip) == ours.leaf


def test_caddy_waits_for_a_lock_held_by_pyproxy(tmp_path: Path) -> None:
    """Our lock file blocks Caddy's issuance (certmagic's `issue_cert_<name>` lock) until freed."""
    storage_dir = tmp_path / "data"
    storage = FileStorage(storage_dir)
    LocalCA(storage).provision()
    locker = FileLocker(storage)
    locker.lock("issue_cert_localhost", timeout_s=5)
    workdir = tmp_path / "caddy"
    workdir.mkdir()
    running = start_caddy(workdir, storage_dir, ["localhost"], wait_for_certs=False)
    cert_file = storage_dir / "certificates" / "local" / "localhost" / "localhost.crt"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while b'"acquiring lock"' not in running.log.read_bytes():
            assert time.monotonic() < deadline, running.log.read_text()[-3000:]
            assert running.proc.poll() is None, running.log.read_text()[-3000:]
            time.sleep(0.1)
        # Longer than Caddy's 1 s poll; our holder keeps the lock fresh meanwhile.
        time.sleep(2.5)
        assert not cert_file.exists()
        assert b'"lock acquired"' not in running.log.read_bytes()
        released = time.monotonic()
        locker.unlock("issue_cert_localhost")
        wait_for_certificates(running, ["localhost"])
        assert time.monotonic() - released < 5
        log = running.log.read_bytes()
        assert b'"lock acquired"' in log
        assert b"decoding lockfile" not in log  # Caddy parsed our timestamps
    finally:
        locker.unlock_all()
        running.stop()


def test_caddy_treats_our_stale_lock_as_stale(tmp_path: Path) -> None:
    """A lock last refreshed 11 s ago (our encoding) is removed by Caddy, proving it reads our
    timestamps the same way we read its."""
    storage_dir = tmp_path / "data"
    storage = FileStorage(storage_dir)
    LocalCA(storage).provision()
    old = datetime.now(UTC) - timedelta(seconds=11)
    storage.store(lock_key("issue_cert_localhost"), encode_lock_meta(old, old))
    workdir = tmp_path / "caddy"
    workdir.mkdir()
    started = time.monotonic()
    running = start_caddy(workdir, storage_dir, ["localhost"])
    running.stop()
    assert time.monotonic() - started < 10
    log = running.log.read_bytes()
    assert b"is stale" in log, log[-3000:]
    assert not storage.exists(lock_key("issue_cert_localhost"))
