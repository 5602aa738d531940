"""acme_client.locks: certmagic-compatible lock files, within one process and across processes.

The cross-process tests start real Python processes that share one storage folder (no sockets).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from acme_client.locks import (
    LOCK_FRESHNESS_INTERVAL_S,
    LOCK_POLL_INTERVAL_S,
    LOCK_STALE_AFTER_S,
    FileLocker,
    LockError,
    LockTimeout,
    decode_lock_meta,
    encode_lock_meta,
    parse_go_time,
)
from acme_client.storage import FileStorage

ROOT = Path(__file__).resolve().parents[2]


def test_certmagic_constants() -> None:
    assert LOCK_FRESHNESS_INTERVAL_S == 5.0
    assert LOCK_STALE_AFTER_S == 10.0
    assert LOCK_POLL_INTERVAL_S == 1.0


def test_parse_go_time_formats() -> None:
    # What Go's time.Time MarshalJSON writes: RFC 3339 with up to 9 fractional digits, any zone.
    assert parse_go_time("2026-11-27T00:11:54.792123456+01:00") == datetime(
        2026, 11, 26, 23, 11, 54, 792123, tzinfo=UTC
    )
    assert parse_go_time("2026-11-27T00:11:54Z") == datetime(2026, 11, 27, 0, 11, 54, tzinfo=UTC)
    assert parse_go_time("2026-11-27T00:11:54.5Z") == datetime(
        2026, 11, 27, 0, 11, 54, 500000, tzinfo=UTC
    )
    assert parse_go_time("0001-01-01T00:00:00Z") is None  # Go's zero time
    assert parse_go_time("garbage") is None
    assert parse_go_time(None) is None


def test_lock_meta_round_trip() -> None:
    t = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    data = encode_lock_meta(t, t + timedelta(seconds=5))
    assert data.endswith(b"\n")
    doc = json.loads(data)
    assert doc == {
        "created": "2026-01-02T03:04:05.600000Z",
        "updated": "2026-01-02T03:04:10.600000Z",
    }
    meta = decode_lock_meta(data)
    assert meta.created == t and meta.updated == t + timedelta(seconds=5)
    # A Caddy lock whose `updated` is zero falls back to `created`.
    caddy = b'{"created":"2026-01-02T03:04:05.123456789Z","updated":"0001-01-01T00:00:00Z"}\n'
    assert decode_lock_meta(caddy).reference() == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def test_lock_file_layout_and_release(tmp_path: Path) -> None:
    locker = FileLocker(FileStorage(tmp_path))
    locker.lock("issue_cert_*.Example.com", timeout_s=1)
    path = tmp_path / "locks" / "issue_cert_wildcard_.example.com.lock"
    assert path.is_file()
    meta = decode_lock_meta(path.read_bytes())
    assert meta.created is not None and meta.updated == meta.created
    assert abs((datetime.now(UTC) - meta.created).total_seconds()) < 5
    assert locker.held("issue_cert_*.Example.com")
    locker.unlock("issue_cert_*.Example.com")
    assert not path.exists()
    with pytest.raises(LockError):
        locker.unlock("issue_cert_*.Example.com")


def test_second_locker_waits_and_times_out(tmp_path: Path) -> None:
    a = FileLocker(FileStorage(tmp_path))
    b = FileLocker(FileStorage(tmp_path), poll_interval_s=0.05)
    a.lock("x")
    try:
        assert b.try_lock("x") is False
        started = time.monotonic()
        with pytest.raises(LockTimeout, match=r"locks/x\.lock"):
            b.lock("x", timeout_s=0.3)
        assert 0.25 <= time.monotonic() - started < 2.0
    finally:
        a.unlock("x")
    assert b.try_lock("x") is True
    b.unlock("x")


def test_context_manager(tmp_path: Path) -> None:
    locker = FileLocker(FileStorage(tmp_path))
    with locker.locked("y", timeout_s=1):
        assert (tmp_path / "locks" / "y.lock").exists()
    assert not (tmp_path / "locks" / "y.lock").exists()


def test_stale_lock_is_removed_and_taken(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    path = tmp_path / "locks" / "z.lock"
    path.parent.mkdir()
    old = datetime.now(UTC) - timedelta(seconds=11)
    path.write_bytes(encode_lock_meta(old, old))
    locker = FileLocker(storage)
    started = time.monotonic()
    assert locker.try_lock("z") is True
    assert time.monotonic() - started < 0.5
    assert decode_lock_meta(path.read_bytes()).created != old
    locker.unlock("z")


def test_staleness_uses_the_injected_clock(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    holder = FileLocker(storage)
    holder.lock("c")
    try:
        now = datetime.now(UTC)
        early = FileLocker(storage, clock=lambda: now + timedelta(seconds=9), poll_interval_s=0.05)
        assert early.try_lock("c") is False
        late = FileLocker(storage, clock=lambda: now + timedelta(seconds=11))
        assert late.try_lock("c") is True
        late.unlock("c")
    finally:
        holder.unlock_all()


def test_holder_refreshes_updated(tmp_path: Path) -> None:
    locker = FileLocker(FileStorage(tmp_path), freshness_interval_s=0.1)
    locker.lock("r")
    path = tmp_path / "locks" / "r.lock"
    first = decode_lock_meta(path.read_bytes())
    deadline = time.monotonic() + 3
    meta = first
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            meta = decode_lock_meta(path.read_bytes())
        except ValueError:
            continue  # caught mid-rewrite
        if meta.updated and first.updated and meta.updated > first.updated:
            break
    locker.unlock("r")
    assert meta.created == first.created
    assert meta.updated is not None and first.updated is not None
    assert meta.updated > first.updated


def test_empty_lock_file_counts_as_stale_after_retries(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "e.lock"
    path.parent.mkdir()
    path.write_bytes(b"")
    locker = FileLocker(FileStorage(tmp_path))
    started = time.monotonic()
    locker.lock("e", timeout_s=10)
    elapsed = time.monotonic() - started
    # certmagic gives the creator 8 x 250 ms to fill it in (the last re-read is immediate).
    assert 1.5 <= elapsed < 5
    locker.unlock("e")


def test_corrupt_lock_file_does_not_wedge(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "bad.lock"
    path.parent.mkdir()
    path.write_bytes(b"\x00not json")
    locker = FileLocker(FileStorage(tmp_path))
    assert locker.try_lock("bad") is True
    locker.unlock("bad")


# --- two real processes -------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {root!r})
    from acme_client.locks import FileLocker
    from acme_client.storage import FileStorage

    storage_dir, log_path, rounds, hold, poll = sys.argv[1:6]
    locker = FileLocker(FileStorage(storage_dir), poll_interval_s=float(poll))
    pid = os.getpid()
    for _ in range(int(rounds)):
        locker.lock("issue_cert_shared.example", timeout_s=30)
        with open(log_path, "a") as f:
            f.write(f"start {{pid}} {{time.time()}}\\n")
        time.sleep(float(hold))
        with open(log_path, "a") as f:
            f.write(f"end {{pid}} {{time.time()}}\\n")
        locker.unlock("issue_cert_shared.example")
    """
).format(root=str(ROOT))


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WORKER, *args])


def _wait(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    for p in procs:
        try:
            assert p.wait(timeout=timeout_s) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)


def test_two_processes_never_hold_the_lock_together(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    args = (str(tmp_path / "data"), str(log), "4", "0.2", "0.05")
    procs = [_spawn(*args), _spawn(*args)]
    _wait(procs, 60)
    lines = [line.split() for line in log.read_text().splitlines()]
    assert len(lines) == 16
    assert {line[1] for line in lines} == {str(p.pid) for p in procs}
    # Strictly alternating start/end of the same process: no overlap of critical sections.
    for i in range(0, len(lines), 2):
        assert lines[i][0] == "start" and lines[i + 1][0] == "end"
        assert lines[i][1] == lines[i + 1][1]
        if i:
            assert float(lines[i][2]) >= float(lines[i - 1][2])
    assert not (tmp_path / "data" / "locks" / "issue_cert_shared.example.lock").exists()


def test_waiter_in_other_process_polls_every_second(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "data")
    mine = FileLocker(storage)
    mine.lock("issue_cert_shared.example")
    log = tmp_path / "log.txt"
    proc = _spawn(str(tmp_path / "data"), str(log), "1", "0", str(LOCK_POLL_INTERVAL_S))
    try:
        time.sleep(1.5)
        assert not log.exists()  # blocked behind our lock
        released = time.time()
        mine.unlock("issue_cert_shared.example")
        _wait([proc], 15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    got = float(log.read_text().split()[2])
    assert released <= got <= released + LOCK_POLL_INTERVAL_S + 1.0


def test_lock_of_killed_process_goes_stale(tmp_path: Path) -> None:
    storage_dir = tmp_path / "data"
    log = tmp_path / "log.txt"
    holder = _spawn(str(storage_dir), str(log), "1", "60", "0.05")
    lock_path = storage_dir / "locks" / "issue_cert_shared.example.lock"
    try:
        deadline = time.monotonic() + 15
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.exists(), "holder never got the lock"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(5)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(5)
    assert lock_path.exists()  # nobody cleaned up after the crash
    # Pretend 11 s passed (the clock is injected) rather than sleeping out the staleness window.
    later = FileLocker(
        FileStorage(storage_dir), clock=lambda: datetime.now(UTC) + timedelta(seconds=11)
    )
    started = time.monotonic()
    later.lock("issue_cert_shared.example", timeout_s=5)
    assert time.monotonic() - started < 1.0
    later.unlock("issue_cert_shared.example")


def test_live_holder_in_other_process_is_not_stale(tmp_path: Path) -> None:
    """A holder refreshing every 0.2 s stays valid well past its 0.4 s staleness window."""
    storage_dir = tmp_path / "data"
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from acme_client.locks import FileLocker
        from acme_client.storage import FileStorage
        locker = FileLocker(FileStorage({str(storage_dir)!r}), freshness_interval_s=0.2)
        locker.lock("held")
        print("locked", flush=True)
        time.sleep(2.0)
        locker.unlock("held")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"locked"
        waiter = FileLocker(
            FileStorage(storage_dir), freshness_interval_s=0.2, poll_interval_s=0.05
        )
        started = time.monotonic()
        waiter.lock("held", timeout_s=10)
        waited = time.monotonic() - started
        waiter.unlock("held")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert waited >= 1.5  # it waited for the release, not for staleness


def test_taken_over_lock_is_neither_refreshed_nor_deleted(tmp_path: Path) -> None:
    """After a stall, another holder replaced our (stale) lock: we must leave theirs alone."""
    storage = FileStorage(tmp_path)
    slow = FileLocker(storage, freshness_interval_s=0.1)
    slow.lock("t")
    path = tmp_path / "locks" / "t.lock"
    # Another process judged it stale and took over (simulated with a later injected clock).
    other = FileLocker(storage, clock=lambda: datetime.now(UTC) + timedelta(seconds=11))
    assert other.try_lock("t") is True
    theirs = path.read_bytes()
    time.sleep(0.4)  # several refresh periods of the slow holder
    assert path.read_bytes() == theirs
    with pytest.raises(LockError, match="taken over"):
        slow.unlock("t")
    assert path.read_bytes() == theirs
    other.unlock("t")
    assert not path.exists()
