"""`pyproxy trust` / `untrust` with `storage redis` (pyproxy issue #17): the cluster's local CA
lives in Redis, so its root is read (or created) there and exported into the trust stores.

The system store is a temporary folder passed through PYPROXY_TRUST_DIR, as in
tests/unit/test_trust_cli.py; the redis-server is a real one on loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from rediskit import RedisServer, requires_redis, running_redis

from acme_client.local_ca import LocalCA
from acme_client.storage import ca_root_cert_key
from proxy.trust_cli import system_trust_filename

pytestmark = [requires_redis]
ROOT = Path(__file__).resolve().parents[2]


def write_caddyfile(folder: Path, redis_host: str, redis_port: int, prefix: str = "caddy") -> Path:
    path = folder / "Caddyfile"
    path.write_text(
        "{\n\tadmin off\n\tstorage redis {\n"
        f"\t\thost {redis_host}\n\t\tport {redis_port}\n\t\tkey_prefix {prefix}\n"
        "\t}\n}\n"
        "internal.example.com {\n\ttls internal\n\trespond ok\n}\n"
    )
    return path


def pyproxy(home: Path, trust_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # No NSS databases in this HOME: only the system store (the folder) is under test.
    env = dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home / "data"),
               PYPROXY_TRUST_DIR=str(trust_dir), PYPROXY_NATIVE="0")  # fmt: skip
    env.pop("PYPROXY_PROG", None)
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def stored_root(redis: RedisServer, prefix: str = "caddy") -> x509.Certificate:
    storage = redis.storage(key_prefix=prefix)
    try:
        return x509.load_pem_x509_certificate(storage.load(ca_root_cert_key()))
    finally:
        storage.close()


def test_trust_exports_the_redis_root_and_untrust_removes_it(tmp_path: Path) -> None:
    home, trust_dir = tmp_path / "home", tmp_path / "ca-certificates"
    with running_redis(tmp_path / "redis") as redis:
        caddyfile = write_caddyfile(tmp_path, redis.host, redis.port)

        # No CA yet: `trust` creates it in Redis (as the first `tls internal` site would) and
        # prints the root itself, there being no file to name.
        shown = pyproxy(home, trust_dir, "trust", "--config", str(caddyfile))
        assert shown.returncode == 0, shown.stderr
        root = stored_root(redis)
        printed = x509.load_pem_x509_certificate(shown.stdout.encode())
        assert printed == root
        assert not (home / "data" / "caddy" / "pki").exists()  # nothing in the file storage

        # The CA every node loads from this Redis is that one.
        storage = redis.storage()
        try:
            ca = LocalCA(storage)
            ca.provision()
            assert ca.root_certificate == root
        finally:
            storage.close()

        installed = pyproxy(home, trust_dir, "trust", "--install", "--config", str(caddyfile))
        assert installed.returncode == 0, installed.stderr
        assert "installing root certificate (you might be prompted for password)" in (
            installed.stderr
        )
        assert "caddy/pki/authorities/local/root.crt" in installed.stderr  # the Redis key
        target = trust_dir / system_trust_filename(root)
        assert x509.load_pem_x509_certificate(target.read_bytes()) == root
        assert [p.name for p in trust_dir.iterdir()] == [target.name]  # no temporary left

        removed = pyproxy(home, trust_dir, "untrust", "--config", str(caddyfile))
        assert removed.returncode == 0, removed.stderr
        assert f"removed {target}" in removed.stderr
        assert not target.exists()
        assert stored_root(redis) == root  # untrust leaves the CA in storage


def test_untrust_without_a_root_in_redis_creates_none(tmp_path: Path) -> None:
    home, trust_dir = tmp_path / "home", tmp_path / "ca-certificates"
    with running_redis(tmp_path / "redis") as redis:
        caddyfile = write_caddyfile(tmp_path, redis.host, redis.port, prefix="empty")
        done = pyproxy(home, trust_dir, "untrust", "--config", str(caddyfile))
        assert done.returncode == 1
        assert "Error: accessing certificate file" in done.stderr
        assert "pki/authorities/local/root.crt: not found in redis://" in done.stderr
        assert done.stderr.rstrip().endswith("/empty"), done.stderr  # the key prefix asked
        with redis.client() as client:
            assert client.keys("*") == []


def test_trust_with_redis_down_is_an_error(tmp_path: Path) -> None:
    home, trust_dir = tmp_path / "home", tmp_path / "ca-certificates"
    with running_redis(tmp_path / "redis") as redis:
        host, port = redis.host, redis.port
    caddyfile = write_caddyfile(tmp_path, host, port)  # that server is gone now
    done = pyproxy(home, trust_dir, "trust", "--install", "--config", str(caddyfile))
    assert done.returncode == 1
    assert done.stderr.startswith("Error: local CA:"), done.stderr
    assert not trust_dir.exists()
