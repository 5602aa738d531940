"""Cross-process lock files in storage, compatible with certmagic's FileStorage locks.

This module owns `locks/<name>.lock`. Several pyproxy (or Caddy) instances sharing one storage
folder use it so only one of them obtains or renews a given certificate at a time:

- a lock is taken by creating the file with O_EXCL and writing `{"created": T, "updated": T}`;
- the holder rewrites `updated` every 5 s (a daemon thread per held lock);
- a lock whose `updated` (or `created`) is older than 10 s is stale: its holder died, so a
  waiter removes it and retries;
- waiters poll every second; an empty lock file (creator still writing, or crashed between
  create and write) is re-read every 250 ms up to 8 times before it counts as stale;
- `unlock` removes the file.

pyproxy adds one field, `"pyproxy": {"host", "pid", "node"}`, saying which process holds the
lock; certmagic decodes lock files into a struct of `created`/`updated` with encoding/json, which
ignores unknown fields, so Caddy still honours the lock (and only Caddy's own locks are ever
rewritten by Caddy). `node` is the holder's parent pid: every worker's parent is the node's
supervisor (it forks them, or is their subreaper), so a waiter can tell a sibling worker of its
own node from another instance and say so (pyproxy issue #15).

Timestamps are RFC 3339 like Go's time.Time JSON, so Caddy honours our locks and we honour its.
Staleness decisions use an injected clock; the waits themselves use real time.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from acme_client.storage import FileStorage, lock_key, make_dirs

# certmagic's constants (filestorage.go).
LOCK_FRESHNESS_INTERVAL_S = 5.0
LOCK_STALE_AFTER_S = 2 * LOCK_FRESHNESS_INTERVAL_S
LOCK_POLL_INTERVAL_S = 1.0
EMPTY_LOCKFILE_RETRY_S = 0.25
EMPTY_LOCKFILE_MAX_RETRIES = 8
# certmagic's TryLock makes two attempts before reporting "busy".
TRY_LOCK_ATTEMPTS = 2
# Lock files are small; never read more than this (certmagic limits to 2048 bytes too).
LOCKFILE_MAX_BYTES = 2048

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class LockError(Exception):
    """A lock could not be obtained or released; the message names the lock file."""


class LockTimeout(LockError):
    """The lock stayed held by someone else for the whole timeout."""


@dataclass(frozen=True, slots=True)
class RetryIn:
    """A lock attempt's answer "not yet, but try again after `seconds`" (0: at once), sooner
    than the poll interval: certmagic's short waits when a lock file is being written or has
    just been removed."""

    seconds: float


def wait_for_lock(
    try_lock: Callable[[], bool | RetryIn],
    poll_s: float,
    timeout_s: float | None,
    *,
    max_attempts: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> bool:
    """Attempt a lock until it is ours: True; False once `timeout_s` has passed (None: never)
    or after `max_attempts` attempts (None: no limit).

    certmagic's wait (filestorage.go Lock): between attempts it waits `poll_s` (its
    fileLockPollInterval, 1 s) while someone else holds the lock, or what the attempt asked
    for (`RetryIn`); a wait never runs past the deadline, and the deadline gets one last
    attempt. Used by FileLocker and RedisLocker alike; both take their locks from executor
    threads, so the waits block only that thread.
    """
    deadline = None if timeout_s is None else monotonic() + timeout_s
    attempts = 0
    while True:
        outcome = try_lock()
        if outcome is True:
            return True
        attempts += 1
        if max_attempts is not None and attempts >= max_attempts:
            return False
        delay = outcome.seconds if isinstance(outcome, RetryIn) else poll_s
        if deadline is not None:
            remaining = deadline - monotonic()
            if remaining <= 0:
                return False
            delay = min(delay, remaining)
        if delay > 0:
            sleep(delay)


@dataclass(frozen=True, slots=True)
class LockOwner:
    """Which process holds a lock: host name, pid, and its node (the parent's pid)."""

    host: str
    pid: int
    node: int

    @classmethod
    def current(cls) -> LockOwner:
        return cls(host=socket.gethostname(), pid=os.getpid(), node=os.getppid())

    def same_node(self, other: LockOwner) -> bool:
        # A sibling worker: same host, same supervisor. The process itself counts too.
        return self.host == other.host and (self.node == other.node or self.pid == other.pid)

    def to_json(self) -> dict[str, object]:
        return {"host": self.host, "pid": self.pid, "node": self.node}

    @classmethod
    def from_json(cls, doc: object) -> LockOwner | None:
        if not isinstance(doc, dict):
            return None
        host, pid, node = doc.get("host"), doc.get("pid"), doc.get("node")
        if not isinstance(host, str) or type(pid) is not int or type(node) is not int:
            return None
        return cls(host=host, pid=pid, node=node)


@dataclass(frozen=True, slots=True)
class LockMeta:
    created: datetime | None
    updated: datetime | None
    # Only pyproxy writes it; None for Caddy's locks (or ones we cannot read).
    owner: LockOwner | None = None

    def reference(self) -> datetime | None:
        # certmagic: staleness is judged on `updated`, falling back to `created` when zero.
        return self.updated or self.created


def _as_utc(moment: datetime) -> datetime:
    # Naive datetimes from an injected clock mean UTC (never local time).
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def format_go_time(moment: datetime) -> str:
    """RFC 3339 with fractional seconds and `Z`, which Go's time.Time UnmarshalJSON accepts."""
    moment = _as_utc(moment)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


_GO_ZERO_YEAR = 1


def parse_go_time(text: object) -> datetime | None:
    """Parse a Go time.Time JSON value; the zero time and bad values give None."""
    if not isinstance(text, str) or not text:
        return None
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    # Go writes up to 9 fractional digits; Python parses at most 6 reliably: cut the rest.
    if "." in s:
        head, _, rest = s.partition(".")
        digits = ""
        i = 0
        while i < len(rest) and rest[i].isdigit():
            digits += rest[i]
            i += 1
        s = head + ("." + digits[:6].ljust(6, "0") if digits else "") + rest[i:]
    try:
        moment = datetime.fromisoformat(s)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment.year <= _GO_ZERO_YEAR:
        return None
    return moment


def encode_lock_meta(created: datetime, updated: datetime, owner: LockOwner | None = None) -> bytes:
    # One JSON object plus newline, the way Go's json.Encoder writes it.
    doc: dict[str, object] = {
        "created": format_go_time(created),
        "updated": format_go_time(updated),
    }
    if owner is not None:
        doc["pyproxy"] = owner.to_json()
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode("ascii")


def decode_lock_meta(data: bytes) -> LockMeta:
    """Decode lock file contents; raises ValueError when they are not a JSON object."""
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("lock file is not a JSON object")
    return LockMeta(
        created=parse_go_time(doc.get("created")),
        updated=parse_go_time(doc.get("updated")),
        owner=LockOwner.from_json(doc.get("pyproxy")),
    )


def waiting_message(lock: str, holder: LockMeta | None, me: LockOwner) -> str:
    """What a process says while it waits for `lock`: a sibling worker of its own node is named
    as such (it is not "another instance"), anyone else as another instance, with host/pid when
    the lock file says (Caddy's locks do not)."""
    owner = holder.owner if holder is not None else None
    if owner is None:
        return f"{lock}: waiting for another instance holding the lock"
    if me.same_node(owner):
        return f"{lock}: waiting for worker {owner.pid} of this node, which holds the lock"
    return f"{lock}: waiting for another instance ({owner.host}/{owner.pid}), which holds the lock"


class Locker(Protocol):
    """certmagic's `Locker`: named cross-process locks that go stale when their holder dies.

    `FileLocker` (lock files, below) and `acme_client.redis_storage.RedisLocker` (keys with an
    expiry). A held lock is refreshed in the background until `unlock`; a holder that stops
    refreshing loses it after `LOCK_STALE_AFTER_S`. Only the holder releases a lock.
    """

    def lock(self, name: str, timeout_s: float | None = None) -> None: ...
    def try_lock(self, name: str) -> bool: ...
    def unlock(self, name: str) -> None: ...
    def unlock_all(self) -> None: ...
    def held(self, name: str) -> bool: ...
    def locked(
        self, name: str, timeout_s: float | None = None
    ) -> contextlib.AbstractContextManager[None]: ...
    def holder_of(self, name: str) -> LockMeta | None: ...


def _identity(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


class _Holder:
    """The refresh thread of one lock we hold."""

    __slots__ = ("created", "identity", "owner", "path", "stop", "thread")

    def __init__(
        self, path: Path, created: datetime, identity: tuple[int, int], owner: LockOwner
    ) -> None:
        self.path = path
        self.created = created
        self.owner = owner
        # (st_dev, st_ino) of the file we created: after a stall long enough for another
        # process to judge our lock stale and create its own, the name points to *their* file,
        # which we must neither refresh nor delete.
        self.identity = identity
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def owns(self, st: os.stat_result, content: bytes) -> bool:
        """Whether the lock file (its stat and content) is still the one we created.

        The inode alone is not enough (file systems reuse freed inode numbers at once), so the
        `created` time we wrote must match too. An empty read is a refresh in progress: ours.
        """
        if _identity(st) != self.identity:
            return False
        if not content.strip():
            return True
        try:
            return decode_lock_meta(content).created == self.created
        except ValueError:
            return False


class FileLocker:
    """certmagic-compatible lock files under `<storage root>/locks/`.

    One FileLocker per process is enough; it tracks the locks this process holds so that `unlock`
    stops their refresh threads before removing the file (otherwise a late refresh could rewrite
    a lock another process has just created under the same name).
    """

    def __init__(
        self,
        storage: FileStorage,
        *,
        clock: Clock = utc_now,
        freshness_interval_s: float = LOCK_FRESHNESS_INTERVAL_S,
        poll_interval_s: float = LOCK_POLL_INTERVAL_S,
        stale_after_s: float | None = None,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.freshness_interval_s = freshness_interval_s
        self.poll_interval_s = poll_interval_s
        self.stale_after_s = 2 * freshness_interval_s if stale_after_s is None else stale_after_s
        self._held: dict[str, _Holder] = {}
        self._mu = threading.Lock()

    def lock_path(self, name: str) -> Path:
        return self.storage.filename(lock_key(name))

    # --- acquiring ---------------------------------------------------------------------------

    def lock(self, name: str, timeout_s: float | None = None) -> None:
        """Block until the lock `name` is ours. LockTimeout after `timeout_s` seconds if given."""
        if not self._obtain(name, max_attempts=None, timeout_s=timeout_s):
            raise LockTimeout(f"{self.lock_path(name)}: timed out waiting for lock {name!r}")

    def try_lock(self, name: str) -> bool:
        """Take the lock if it is free (or stale) now; False when someone else holds it."""
        return self._obtain(name, max_attempts=TRY_LOCK_ATTEMPTS, timeout_s=None)

    def unlock(self, name: str) -> None:
        """Release a lock: stop refreshing it, then remove the file."""
        path = self.lock_path(name)
        with self._mu:
            holder = self._held.pop(name, None)
        if holder is not None:
            holder.stop.set()
            if holder.thread is not None and holder.thread is not threading.current_thread():
                holder.thread.join(timeout=5.0)
            try:
                with open(path, "rb") as f:
                    ours = holder.owns(os.fstat(f.fileno()), f.read(LOCKFILE_MAX_BYTES))
            except FileNotFoundError as exc:
                raise LockError(f"{path}: lock {name!r} was removed while held") from exc
            if not ours:
                raise LockError(f"{path}: lock {name!r} was taken over by another holder")
        try:
            path.unlink()
        except FileNotFoundError as exc:
            raise LockError(f"{path}: lock {name!r} is not held") from exc
        except OSError as exc:
            raise LockError(f"{path}: removing lock file: {exc}") from exc

    def unlock_all(self) -> None:
        """Release every lock this locker holds (certmagic's CleanUpOwnLocks, used at shutdown)."""
        with self._mu:
            names = list(self._held)
        for name in names:
            with contextlib.suppress(LockError):
                self.unlock(name)

    def held(self, name: str) -> bool:
        with self._mu:
            return name in self._held

    @contextlib.contextmanager
    def locked(self, name: str, timeout_s: float | None = None) -> Iterator[None]:
        self.lock(name, timeout_s)
        try:
            yield
        finally:
            self.unlock(name)

    def holder_of(self, name: str) -> LockMeta | None:
        """The lock file's contents, or None when it is absent, empty or unreadable."""
        try:
            with open(self.lock_path(name), "rb") as f:
                return decode_lock_meta(f.read(LOCKFILE_MAX_BYTES))
        except (OSError, ValueError):
            return None

    def is_stale(self, meta: LockMeta) -> bool:
        ref = meta.reference()
        if ref is None:
            return True  # both times zero: nobody is maintaining it
        return (_as_utc(self.clock()) - ref).total_seconds() > self.stale_after_s

    # --- internals ---------------------------------------------------------------------------

    def _obtain(self, name: str, max_attempts: int | None, timeout_s: float | None) -> bool:
        path = self.lock_path(name)
        empty_reads = 0

        def attempt() -> bool | RetryIn:
            nonlocal empty_reads
            if self._create(name, path):
                return True
            try:
                with open(path, "rb") as f:
                    data = f.read(LOCKFILE_MAX_BYTES)
            except FileNotFoundError:
                return RetryIn(0.0)  # released between our create and our read: again at once
            except OSError as exc:
                raise LockError(f"{path}: accessing lock file: {exc}") from exc

            stale = False
            if not data.strip():
                # The creator writes the JSON right after creating the file; give it a moment
                # before declaring the lock abandoned (certmagic: 8 x 250 ms).
                empty_reads += 1
                if empty_reads < EMPTY_LOCKFILE_MAX_RETRIES:
                    return RetryIn(EMPTY_LOCKFILE_RETRY_S)
                stale = True
            else:
                try:
                    stale = self.is_stale(decode_lock_meta(data))
                except ValueError:
                    # certmagic gives up with an error here, which would wedge every instance on
                    # a corrupt file forever; a file nobody can refresh is abandoned, so treat it
                    # like a stale one.
                    stale = True

            if stale:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise LockError(f"{path}: unable to delete stale lock file: {exc}") from exc
                return RetryIn(0.0)
            return False  # held by someone else: wait the poll interval

        return wait_for_lock(attempt, self.poll_interval_s, timeout_s, max_attempts=max_attempts)

    def _create(self, name: str, path: Path) -> bool:
        make_dirs(path.parent)
        try:
            # 0644 like certmagic: lock files hold no secret.
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise LockError(f"{path}: creating lock file: {exc}") from exc
        now = _as_utc(self.clock())
        owner = LockOwner.current()
        try:
            identity = _identity(os.fstat(fd))
            os.write(fd, encode_lock_meta(now, now, owner))
            os.fsync(fd)
        finally:
            os.close(fd)
        holder = _Holder(path, now, identity, owner)
        holder.thread = threading.Thread(
            target=self._keep_fresh, args=(holder,), name=f"lock-refresh:{name}", daemon=True
        )
        with self._mu:
            self._held[name] = holder
        holder.thread.start()
        return True

    def _keep_fresh(self, holder: _Holder) -> None:
        while not holder.stop.wait(self.freshness_interval_s):
            try:
                done = self._refresh(holder)
            except OSError:
                return  # storage went away; the lock will go stale and others will take over
            if done:
                return

    def _refresh(self, holder: _Holder) -> bool:
        """Rewrite `updated` in place. True when the lock file is gone (released elsewhere)."""
        try:
            fd = os.open(holder.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        try:
            if not holder.owns(os.fstat(fd), os.read(fd, LOCKFILE_MAX_BYTES)):
                return True  # not our lock any more
            # In place (truncate + write), like certmagic: a rename would briefly leave no file,
            # letting a waiter create its own lock in the gap.
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, encode_lock_meta(holder.created, self.clock(), holder.owner))
            os.fsync(fd)
        finally:
            os.close(fd)
        return False
