"""The Storage contract against FileStorage and RedisStorage (a real redis-server on loopback),
the Redis layout of caddy-storage-redis, and the Redis locks."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from rediskit import RedisServer, requires_redis, running_redis

from acme_client import redis_storage as redis_storage_module
from acme_client import storage as st
from acme_client.locks import LockError, LockTimeout
from acme_client.redis_storage import (
    COMPRESSION_FLATE,
    COMPRESSION_ZLIB,
    RedisLocker,
    RedisStorage,
)
from acme_client.storage import (
    CertificateResource,
    FileStorage,
    Storage,
    StorageError,
    StorageUnavailableError,
)

pytestmark = requires_redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_storage(redis_server: RedisServer) -> Iterator[RedisStorage]:
    client = redis_server.client()
    client.flushall()
    client.close()
    storage = redis_server.storage()
    yield storage
    storage.close()


@pytest.fixture(params=["file", "redis"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "file":
        return FileStorage(tmp_path / "data")
    result: Storage = request.getfixturevalue("redis_storage")
    return result


# --- the contract, both backends --------------------------------------------------------------


def test_store_load_exists_stat_delete(storage: Storage) -> None:
    key = "certificates/local/a.test/a.test.key"
    assert not storage.exists(key)
    with pytest.raises(FileNotFoundError):
        storage.load(key)
    with pytest.raises(FileNotFoundError):
        storage.stat(key)
    storage.store(key, b"secret")
    assert storage.load(key) == b"secret"
    assert storage.exists(key)
    info = storage.stat(key)
    assert info.key == key and info.size == 6 and info.is_terminal
    assert not storage.stat("certificates/local").is_terminal
    assert storage.exists("certificates/local")
    storage.store(key, b"replaced!")
    assert storage.load(key) == b"replaced!"
    assert storage.stat(key).size == 9
    storage.delete(key)
    assert not storage.exists(key)
    storage.delete(key)  # missing is fine
    storage.store("certificates/local/b.test/b.test.crt", b"x")
    storage.store("certificates/other/c.test/c.test.crt", b"y")
    storage.delete("certificates/local")
    assert not storage.exists("certificates/local")
    assert not storage.exists("certificates/local/b.test/b.test.crt")
    assert storage.list("certificates") == ["certificates/other"]


def test_empty_value_round_trips(storage: Storage) -> None:
    storage.store("a/empty", b"")
    assert storage.load("a/empty") == b""
    assert storage.stat("a/empty").size == 0


def test_list_direct_and_recursive(storage: Storage) -> None:
    storage.store("certificates/local/b.test/b.test.crt", b"3")
    storage.store("certificates/local/a.test/a.test.crt", b"1")
    storage.store("certificates/local/a.test/a.test.key", b"2")
    assert storage.list("certificates/local") == [
        "certificates/local/a.test",
        "certificates/local/b.test",
    ]
    assert storage.list("certificates", recursive=True) == [
        "certificates/local",
        "certificates/local/a.test",
        "certificates/local/a.test/a.test.crt",
        "certificates/local/a.test/a.test.key",
        "certificates/local/b.test",
        "certificates/local/b.test/b.test.crt",
    ]
    assert storage.list("certificates/local/b.test/b.test.crt") == []
    with pytest.raises(FileNotFoundError):
        storage.list("nothing/here")
    assert st.list_issuer_keys(storage) == ["local"]


def test_keys_cannot_escape(storage: Storage) -> None:
    for key in ("../outside", "a/../../outside", "/etc/passwd"):
        with pytest.raises(StorageError):
            storage.store(key, b"x")


def test_store_all_rolls_back_on_failure(storage: Storage) -> None:
    storage.store("blocker", b"a value where a directory must go")
    with pytest.raises(OSError):
        storage.store_all([("ok/one", b"1"), ("blocker/two", b"2")])
    assert not storage.exists("ok/one")


def test_modified_changes_when_rewritten(storage: Storage) -> None:
    storage.store("k/v", b"1")
    first = storage.stat("k/v")
    time.sleep(0.01)  # a later wall-clock time, not synchronisation
    storage.store("k/v", b"2")
    assert storage.stat("k/v").modified > first.modified


def test_certificate_resource_round_trip(storage: Storage) -> None:
    res = CertificateResource(
        sans=["b.test", "a.test"],
        certificate_pem=b"-----BEGIN CERTIFICATE-----\n",
        private_key_pem=b"-----BEGIN PRIVATE KEY-----\n",
        issuer_key="acme.example-directory",
        issuer_data={"url": "https://acme.example/cert/1"},
    )
    st.save_certificate_resource(storage, res)
    back = st.load_certificate_resource(storage, "acme.example-directory", "a.test,b.test")
    assert back.sans == ["b.test", "a.test"]
    assert back.certificate_pem == res.certificate_pem
    assert back.issuer_data == {"url": "https://acme.example/cert/1"}
    st.delete_certificate_resource(storage, "acme.example-directory", "a.test,b.test")
    with pytest.raises(FileNotFoundError):
        st.load_certificate_resource(storage, "acme.example-directory", "a.test,b.test")


def test_concurrent_readers_see_whole_values(storage: Storage) -> None:
    big_a, big_b = b"A" * 200_000, b"B" * 200_000
    storage.store("k", big_a)
    bad: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = storage.load("k")
            if data not in (big_a, big_b):
                bad.append(len(data))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(20):
            storage.store("k", big_b if i % 2 else big_a)
    finally:
        stop.set()
        t.join(10)
    assert bad == []


# --- caddy-storage-redis's layout -------------------------------------------------------------


def test_redis_layout_is_caddy_storage_redis(
    redis_server: RedisServer, redis_storage: RedisStorage
) -> None:
    redis_storage.store("certificates/local/a.test/a.test.crt", b"PEM")
    client = redis_server.client()
    doc = json.loads(client.get("caddy/certificates/local/a.test/a.test.crt") or b"")
    assert set(doc) == {"value", "modified", "size", "compression", "encryption"}
    assert base64.b64decode(doc["value"]) == b"PEM"
    assert doc["size"] == 3 and doc["compression"] == 0 and doc["encryption"] == 0
    assert client.zrange("caddy/certificates/local/a.test", 0, -1) == [b"a.test.crt"]
    assert client.zrange("caddy/certificates/local", 0, -1) == [b"a.test/"]
    assert client.zrange("caddy/certificates", 0, -1) == [b"local/"]
    assert client.zrange("caddy", 0, -1) == [b"certificates/"]
    redis_storage.delete("certificates/local/a.test/a.test.crt")
    # Emptied directories disappear from their parents, up to the top.
    assert client.keys("*") == []
    client.close()


def test_reads_what_the_go_module_writes(
    redis_server: RedisServer, redis_storage: RedisStorage
) -> None:
    # A value as caddy-storage-redis stores it: Go's RFC 3339 with nanoseconds and an offset,
    # zlib-compressed (flag 2), with its directory records.
    client = redis_server.client()
    payload = b"certificate bytes " * 20
    doc = {
        "value": base64.b64encode(zlib.compress(payload)).decode(),
        "modified": "2026-01-02T03:04:05.123456789+01:00",
        "size": len(payload),
        "compression": 2,
        "encryption": 0,
    }
    client.set("caddy/acme/ca/users/x/x.json", json.dumps(doc))
    for parent, member in (
        ("caddy/acme/ca/users/x", "x.json"),
        ("caddy/acme/ca/users", "x/"),
        ("caddy/acme/ca", "users/"),
        ("caddy/acme", "ca/"),
        ("caddy", "acme/"),
    ):
        client.zadd(parent, {member: 1767319445})
    client.close()
    assert redis_storage.load("acme/ca/users/x/x.json") == payload
    info = redis_storage.stat("acme/ca/users/x/x.json")
    assert info.size == len(payload)
    assert info.modified.isoformat() == "2026-01-02T03:04:05.123456+01:00"
    assert redis_storage.list("acme", recursive=True)[-1] == "acme/ca/users/x/x.json"


@pytest.mark.parametrize("compression", [COMPRESSION_FLATE, COMPRESSION_ZLIB])
def test_compression_and_encryption_round_trip(
    redis_server: RedisServer, redis_storage: RedisStorage, compression: int
) -> None:
    key32 = b"0123456789abcdef0123456789abcdef"
    writer = RedisStorage(
        dataclasses.replace(redis_server.config(), compression=compression, encryption_key=key32)
    )
    payload = b"-----BEGIN CERTIFICATE-----\n" + b"QUJD" * 500
    writer.store("certificates/x/x.crt", payload)
    client = redis_server.client()
    doc = json.loads(client.get("caddy/certificates/x/x.crt") or b"")
    client.close()
    assert doc["compression"] == compression and doc["encryption"] == 1
    assert doc["size"] == len(payload)
    sealed = base64.b64decode(doc["value"])
    assert len(sealed) < len(payload)  # compressed before sealing
    assert writer.load("certificates/x/x.crt") == payload
    # Without the key the value is refused, not returned sealed.
    with pytest.raises(StorageError, match="encrypted"):
        redis_storage.load("certificates/x/x.crt")
    writer.close()


def test_key_prefix_separates_tenants(redis_server: RedisServer) -> None:
    one = redis_server.storage(key_prefix="one")
    two = redis_server.storage(key_prefix="two/nested")
    one.store("a/b", b"1")
    assert not two.exists("a/b")
    two.store("a/b", b"2")
    assert one.load("a/b") == b"1" and two.load("a/b") == b"2"
    client = redis_server.client()
    assert client.exists("one/a/b") and client.exists("two/nested/a/b")
    client.close()
    one.close()
    two.close()


def test_unreachable_redis_is_storage_unavailable(tmp_path: Path) -> None:
    with running_redis(tmp_path / "gone") as server:
        storage = server.storage(timeout_s=2)
        storage.store("a/b", b"1")
        server.stop()
        with pytest.raises(StorageUnavailableError) as caught:
            storage.load("a/b")
        assert isinstance(caught.value, OSError)
        assert caught.value.args[0].startswith("a/b: ")
        with pytest.raises(StorageUnavailableError):
            storage.store("a/c", b"2")
        server.start()  # same port, empty database: the client reconnects by itself
        storage.store("a/c", b"2")
        assert storage.load("a/c") == b"2"
        storage.close()


# --- locks -------------------------------------------------------------------------------------


def stop_refreshing(locker: RedisLocker, name: str) -> None:
    """Make the holder of `name` hang: cancel its lock's refresh task, on the storage loop."""
    task = locker._held[name].refresh
    assert task is not None

    async def cancel() -> None:
        task.cancel()
        await asyncio.wait([task])

    storage_loop = redis_storage_module._storage_loop(create=False)
    assert storage_loop is not None
    storage_loop.run(cancel(), 5.0)


def _locker(storage: RedisStorage, stale_after_s: float = 10.0) -> RedisLocker:
    return RedisLocker(
        storage,
        freshness_interval_s=stale_after_s / 2,
        poll_interval_s=0.05,
        stale_after_s=stale_after_s,
    )


def test_lock_is_exclusive_and_only_the_owner_releases(
    redis_server: RedisServer, redis_storage: RedisStorage
) -> None:
    a = _locker(redis_storage)
    other = redis_server.storage()
    b = _locker(other)
    assert a.try_lock("issue_cert_a.test")
    assert a.held("issue_cert_a.test")
    assert not b.try_lock("issue_cert_a.test")
    with pytest.raises(LockTimeout):
        b.lock("issue_cert_a.test", timeout_s=0.3)
    with pytest.raises(LockError):
        b.unlock("issue_cert_a.test")  # b never held it: nothing is deleted
    client = redis_server.client()
    assert client.exists("caddy/locks/issue_cert_a.test")  # the module's lock key
    holder = b.holder_of("issue_cert_a.test")
    assert holder is not None and holder.owner is not None
    a.unlock("issue_cert_a.test")
    assert not client.exists("caddy/locks/issue_cert_a.test")
    assert b.try_lock("issue_cert_a.test")
    b.unlock("issue_cert_a.test")
    client.close()
    other.close()


def test_refresh_keeps_a_lock_past_its_expiry(
    redis_server: RedisServer, redis_storage: RedisStorage
) -> None:
    a = _locker(redis_storage, stale_after_s=1.0)
    b = _locker(redis_server.storage(), stale_after_s=1.0)
    assert a.try_lock("n")
    client = redis_server.client()
    deadline = time.monotonic() + 2.5  # over twice the expiry, refreshed every 0.5 s
    while time.monotonic() < deadline:
        assert not b.try_lock("n")
        time.sleep(0.1)  # sampling the lock over time, not synchronisation
    assert 0 < client.pttl("caddy/locks/n") <= 1000
    a.unlock("n")
    client.close()


def test_lock_expires_when_holder_stops_refreshing(
    redis_server: RedisServer, redis_storage: RedisStorage
) -> None:
    a = _locker(redis_storage, stale_after_s=1.0)
    assert a.try_lock("n")
    stop_refreshing(a, "n")  # the holder hangs: no more refreshes
    b = _locker(redis_server.storage(), stale_after_s=1.0)
    started = time.monotonic()
    b.lock("n", timeout_s=5.0)
    assert time.monotonic() - started > 0.3  # it had to wait for the expiry
    # The old holder cannot release (or refresh) what is now b's.
    with pytest.raises(LockError, match="taken over"):
        a.unlock("n")
    assert b.held("n")
    b.unlock("n")


_HOLDER_SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv[1])
from acme_client.redis_storage import RedisLocker, RedisStorage, RedisStorageConfig
storage = RedisStorage.from_config(RedisStorageConfig(host="127.0.0.1", port=int(sys.argv[2])))
locker = RedisLocker(storage, freshness_interval_s=0.5, stale_after_s=1.0)
assert locker.try_lock("issue_cert_dead.test")
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_is_taken_over_when_the_holder_dies(
    redis_server: RedisServer, redis_storage: RedisStorage
) -> None:
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER_SCRIPT, root, str(redis_server.port)],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"locked"
        b = _locker(redis_storage, stale_after_s=1.0)
        assert not b.try_lock("issue_cert_dead.test")
        holder = b.holder_of("issue_cert_dead.test")
        assert holder is not None and holder.owner is not None
        assert holder.owner.pid == proc.pid
        proc.kill()
        proc.wait(10)
        b.lock("issue_cert_dead.test", timeout_s=5.0)
        b.unlock("issue_cert_dead.test")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
