"""Lock files say which process holds them, and a waiter names a sibling worker of its own node
as such instead of "another instance" (pyproxy issue #15).

The cross-process test starts two real Python processes from this one: siblings, like two
workers of a supervisor (their parent), sharing a storage folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

from acme_client.locks import (
    FileLocker,
    LockMeta,
    LockOwner,
    decode_lock_meta,
    encode_lock_meta,
    waiting_message,
)
from acme_client.storage import FileStorage

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


def test_owner_round_trips_and_certmagic_fields_stay() -> None:
    owner = LockOwner(host="node-a", pid=4242, node=7)
    data = encode_lock_meta(T0, T0, owner)
    doc = json.loads(data)
    # certmagic's lockMeta fields are unchanged; ours is one extra key encoding/json ignores.
    assert set(doc) == {"created", "updated", "pyproxy"}
    assert doc["pyproxy"] == {"host": "node-a", "pid": 4242, "node": 7}
    assert decode_lock_meta(data) == LockMeta(created=T0, updated=T0, owner=owner)


def test_caddy_lock_without_owner_and_bad_owner_decode_to_none() -> None:
    caddy = b'{"created":"2026-12-03T12:00:00.123456789Z","updated":"2026-12-03T12:00:01Z"}\n'
    assert decode_lock_meta(caddy).owner is None
    bad = b'{"created":"2026-12-03T12:00:00Z","pyproxy":{"host":"x","pid":"1","node":2}}'
    assert decode_lock_meta(bad).owner is None


def test_message_names_a_sibling_worker_or_another_instance() -> None:
    me = LockOwner(host="node-a", pid=100, node=1)
    sibling = LockMeta(T0, T0, LockOwner(host="node-a", pid=101, node=1))
    other_host = LockMeta(T0, T0, LockOwner(host="node-b", pid=101, node=1))
    other_node = LockMeta(T0, T0, LockOwner(host="node-a", pid=300, node=299))
    assert waiting_message("issue_cert_x", sibling, me) == (
        "issue_cert_x: waiting for worker 101 of this node, which holds the lock"
    )
    assert waiting_message("issue_cert_x", other_host, me) == (
        "issue_cert_x: waiting for another instance (node-b/101), which holds the lock"
    )
    assert waiting_message("issue_cert_x", other_node, me) == (
        "issue_cert_x: waiting for another instance (node-a/300), which holds the lock"
    )
    # Caddy's lock (no owner) or an unreadable one: the old words.
    assert waiting_message("issue_cert_x", LockMeta(T0, T0), me) == (
        "issue_cert_x: waiting for another instance holding the lock"
    )
    assert waiting_message("issue_cert_x", None, me) == (
        "issue_cert_x: waiting for another instance holding the lock"
    )


def test_lock_file_names_this_process_and_keeps_it_on_refresh(tmp_path: Path) -> None:
    locker = FileLocker(FileStorage(tmp_path), freshness_interval_s=0.05)
    assert locker.try_lock("issue_cert_a")
    try:
        meta = locker.holder_of("issue_cert_a")
        assert meta is not None
        assert meta.owner == LockOwner(socket.gethostname(), os.getpid(), os.getppid())
        # The refresh thread rewrites `updated`; wait (bounded) until it has, owner intact.
        path = locker.lock_path("issue_cert_a")
        deadline = datetime.now(UTC).timestamp() + 10
        while True:
            data = path.read_bytes()  # empty for a moment while the refresh rewrites it
            if data and decode_lock_meta(data).updated != meta.updated:
                break
            assert datetime.now(UTC).timestamp() < deadline, "lock never refreshed"
            os.sched_yield()
        assert decode_lock_meta(data).owner == meta.owner
    finally:
        locker.unlock("issue_cert_a")
    assert locker.holder_of("issue_cert_a") is None


HOLD = textwrap.dedent(
    """
    import sys
    from acme_client.locks import FileLocker
    from acme_client.storage import FileStorage
    locker = FileLocker(FileStorage(sys.argv[1]))
    assert locker.try_lock("issue_cert_b")
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin
    locker.unlock("issue_cert_b")
    """
)
ASK = textwrap.dedent(
    """
    import sys
    from acme_client.locks import FileLocker, LockOwner, waiting_message
    from acme_client.storage import FileStorage
    locker = FileLocker(FileStorage(sys.argv[1]))
    assert not locker.try_lock("issue_cert_b")
    print(waiting_message("issue_cert_b", locker.holder_of("issue_cert_b"), LockOwner.current()))
    """
)


def test_sibling_processes_say_worker_of_this_node(tmp_path: Path) -> None:
    env = dict(os.environ, PYPROXY_NATIVE="0")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        asked = subprocess.run([sys.executable, "-c", ASK, str(tmp_path)], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert asked.returncode == 0, asked.stderr
        assert asked.stdout.strip() == (
            f"issue_cert_b: waiting for worker {holder.pid} of this node, which holds the lock"
        )
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0
