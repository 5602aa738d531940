"""RedisStorage on redis.asyncio (pyproxy issue #17): the per-process storage loop, `close`,
fork safety, lock refresh tasks and bounded calls, against a real redis-server on loopback.

Connections are counted with the server's `CLIENT LIST`, minus the test's own admin connection.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from rediskit import RedisServer, requires_redis, running_redis

from acme_client import redis_storage as redis_storage_module
from acme_client.locks import LockError
from acme_client.redis_storage import RedisLocker, RedisStorage, call_timeout_s
from acme_client.storage import StorageUnavailableError

pytestmark = requires_redis

WAIT_S = 10.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    # One server per test: some tests stop (SIGSTOP) or count connections on it.
    with running_redis(tmp_path / "redis") as running:
        yield running


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    client = server.client()
    yield client
    client.close()


def storage_client_ids(admin: redis.Redis) -> set[int]:
    """Ids of the server's connections other than `admin` itself."""
    own = admin.client_id()
    return {int(c["id"]) for c in admin.client_list() if int(c["id"]) != own}


def wait_for_client_ids(admin: redis.Redis, expected: set[int]) -> None:
    """The server notices a closed connection a moment after the client closed it."""
    deadline = time.monotonic() + WAIT_S
    while (ids := storage_client_ids(admin)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"client ids {ids}, expected {expected}")
        time.sleep(0.05)  # polling the server's client list, bounded by the deadline


def eval_calls(admin: redis.Redis) -> int:
    """How many EVALs (lock refreshes and releases) the server ran since its stats reset."""
    stats = admin.info("commandstats")
    entry = stats.get("cmdstat_eval")
    return int(entry["calls"]) if isinstance(entry, dict) else 0


def _locker(storage: RedisStorage) -> RedisLocker:
    return RedisLocker(storage, freshness_interval_s=0.25, poll_interval_s=0.05, stale_after_s=0.5)


def _waiter(storage: RedisStorage) -> RedisLocker:
    # Polls often but refreshes at certmagic's pace: no refresh of its own during a test.
    return RedisLocker(storage, poll_interval_s=0.05)


def wait_in_flight(storage: RedisStorage, count: int) -> None:
    """Until `count` calls of `storage` run on the storage loop."""
    deadline = time.monotonic() + WAIT_S
    while len(storage._tasks) != count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(storage._tasks)} calls in flight, expected {count}")
        time.sleep(0.01)  # polling the loop's task set, bounded by the deadline


# --- close ---------------------------------------------------------------------------------------


def test_a_closed_storage_refuses_every_call_without_reconnecting(
    server: RedisServer, admin: redis.Redis
) -> None:
    storage = server.storage()
    storage.store("a/b", b"1")
    assert len(storage_client_ids(admin)) == 1
    storage.close()
    wait_for_client_ids(admin, set())
    calls: list[Callable[[], object]] = [
        lambda: storage.load("a/b"),
        lambda: storage.store("a/c", b"2"),
        lambda: storage.exists("a/b"),
        lambda: storage.list("a"),
        lambda: storage.stat("a/b"),
        lambda: storage.delete("a/b"),
    ]
    for call in calls:
        with pytest.raises(
            StorageUnavailableError, match=r"^a(/\w)?: redis://.*: storage is closed$"
        ):
            call()
    with pytest.raises(LockError, match="storage is closed") as caught:
        storage.new_locker().try_lock("issue_cert_a.test")
    assert isinstance(caught.value.__cause__, StorageUnavailableError)
    storage.close()  # idempotent
    # Nothing was reopened: the calls were refused before reaching the network.
    assert storage_client_ids(admin) == set()
    assert admin.get("caddy/a/c") is None


def test_a_call_in_flight_when_the_storage_closes_fails_and_does_not_reconnect(
    server: RedisServer, admin: redis.Redis
) -> None:
    storage = server.storage(timeout_s=5)
    storage.store("a/b", b"1")
    assert server.proc is not None
    outcome: list[BaseException | bytes] = []

    def straggler() -> None:
        try:
            outcome.append(storage.load("a/b"))
        except BaseException as exc:
            outcome.append(exc)

    server.proc.send_signal(signal.SIGSTOP)  # the server takes the command but never answers
    try:
        thread = threading.Thread(target=straggler)
        thread.start()
        wait_in_flight(storage, 1)
        # The GET is sent and waits for an answer: close cancels it on the storage loop.
        storage.close()
        thread.join(WAIT_S)
        assert not thread.is_alive()
    finally:
        server.proc.send_signal(signal.SIGCONT)
    assert len(outcome) == 1 and isinstance(outcome[0], StorageUnavailableError), outcome
    assert "closed" in str(outcome[0])
    wait_for_client_ids(admin, set())


# --- the storage loop ----------------------------------------------------------------------------


def test_a_storage_method_called_on_the_storage_loop_is_refused(server: RedisServer) -> None:
    storage = server.storage()
    storage.store("a/b", b"1")
    storage_loop = redis_storage_module._storage_loop(create=False)
    assert storage_loop is not None

    async def call_sync_method_on_the_loop() -> bool:
        return storage.exists("a/b")  # would wait on the loop from the loop: a deadlock

    with pytest.raises(RuntimeError, match="storage loop itself"):
        storage_loop.run(call_sync_method_on_the_loop(), WAIT_S)
    assert storage.exists("a/b")  # the loop still serves
    storage.close()


def _child_uses_storage(storage: RedisStorage, to_parent: int, from_parent: int) -> None:
    """In the forked child: store a value, tell the parent, keep the connection until told."""
    code = 1
    try:
        storage.store("child/value", b"from the child")
        # Whatever the child drops of the parent's client is finalized now, on the child's
        # storage loop: it must leave the parent's connection alone.
        gc.collect()
        os.write(to_parent, b"stored\n")
        ready, _, _ = select.select([from_parent], [], [], WAIT_S)
        if ready:
            os.read(from_parent, 16)
        code = 0
    except BaseException as exc:
        os.write(to_parent, f"error {exc!r}\n".encode())
    finally:
        os._exit(code)


def test_a_forked_child_uses_a_connection_of_its_own(
    server: RedisServer, admin: redis.Redis
) -> None:
    storage = server.storage()
    storage.store("parent/value", b"from the parent")
    parent_ids = storage_client_ids(admin)
    assert len(parent_ids) == 1
    child_r, child_w = os.pipe()
    parent_r, parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(child_r)
        os.close(parent_w)
        _child_uses_storage(storage, child_w, parent_r)
    os.close(child_w)
    os.close(parent_r)
    try:
        ready, _, _ = select.select([child_r], [], [], WAIT_S)
        assert ready, "the child did not answer"
        assert os.read(child_r, 200) == b"stored\n"
        ids = storage_client_ids(admin)
        # The parent's connection plus a new one: the child never wrote to the parent's socket.
        assert parent_ids < ids and len(ids) == 2
        assert storage.load("child/value") == b"from the child"
        assert storage.load("parent/value") == b"from the parent"
        assert storage_client_ids(admin) == ids  # the parent still uses its own connection
    finally:
        os.write(parent_w, b"done")
        _, status = os.waitpid(pid, 0)
        os.close(child_r)
        os.close(parent_w)
    assert os.waitstatus_to_exitcode(status) == 0
    wait_for_client_ids(admin, parent_ids)
    storage.close()


# --- lock refresh --------------------------------------------------------------------------------


def test_a_lock_outlives_its_expiry_while_held_and_refreshes_stop_at_unlock(
    server: RedisServer, admin: redis.Redis
) -> None:
    storage, other = server.storage(), server.storage()
    holder, waiter = _locker(storage), _waiter(other)
    assert holder.try_lock("n")
    deadline = time.monotonic() + 1.5  # three times the expiry, refreshed every 0.25 s
    while time.monotonic() < deadline:
        assert not waiter.try_lock("n")
        time.sleep(0.05)  # sampling the lock over time, not synchronisation
    holder.unlock("n")
    assert admin.get("caddy/locks/n") is None
    admin.config_resetstat()
    time.sleep(1.0)  # four refresh intervals in which no refresh may happen
    assert eval_calls(admin) == 0
    storage.close()
    other.close()


def test_closing_the_storage_stops_the_refresh_and_the_lock_expires(
    server: RedisServer, admin: redis.Redis
) -> None:
    storage, other = server.storage(), server.storage()
    holder, waiter = _locker(storage), _waiter(other)
    assert holder.try_lock("n")
    admin.config_resetstat()
    storage.close()
    # Not released (the storage is closed) but no longer refreshed: it expires on its own.
    waiter.lock("n", timeout_s=WAIT_S)
    assert waiter.held("n")
    waiter.unlock("n")
    assert eval_calls(admin) == 1  # the waiter's release only, no refresh by the closed holder
    other.close()


# --- bounded calls -------------------------------------------------------------------------------


def test_a_server_that_stops_answering_fails_the_call_within_its_timeout(
    server: RedisServer,
) -> None:
    storage = server.storage(timeout_s=1)
    storage.store("a/b", b"1")
    budget_s = call_timeout_s(server.config(timeout_s=1))
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError, match=r"^a/b: redis://"):
            storage.load("a/b")
        elapsed = time.monotonic() - started
    finally:
        server.proc.send_signal(signal.SIGCONT)
    # Bounded by the storage's own timeout, not a hang (the margin is the backstop's second).
    assert elapsed < budget_s + 1.0
    assert storage.load("a/b") == b"1"  # and it recovers once the server answers again
    storage.close()


def test_a_server_that_is_gone_fails_the_call_and_a_restarted_one_serves(
    server: RedisServer,
) -> None:
    storage = server.storage(timeout_s=2)
    storage.store("a/b", b"1")
    server.stop()
    with pytest.raises(StorageUnavailableError, match=r"^a/b: redis://"):
        storage.load("a/b")
    server.start()  # same port, empty database
    assert not storage.exists("a/b")
    storage.close()


def test_storage_loop_is_one_per_process(server: RedisServer) -> None:
    one, two = server.storage(), server.storage(key_prefix="other")
    one.store("k", b"1")
    two.store("k", b"2")
    storage_loop = redis_storage_module._storage_loop(create=False)
    assert storage_loop is not None and storage_loop.pid == os.getpid()
    names = [t.name for t in threading.enumerate()]
    assert names.count("redis-storage-loop") == 1
    one.close()
    two.close()
