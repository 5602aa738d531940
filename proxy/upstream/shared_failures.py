"""Passive-health failures shared by every worker process.

Caddy is one process: a failure one request records (``countFailure`` in reverseproxy.go) is
seen by the very next request, whichever connection it arrives on. pyproxy runs several
workers on one SO_REUSEPORT listener, so a failure kept only in the worker that saw it left the
other workers sending their next requests to the upstream that had just refused a dial
(``lb_policy first`` + ``fail_duration``: 502, 200, ..., 502 again from the other worker).

The supervisor therefore maps one anonymous shared memory table before any fork
(:func:`create_shared_failures`, like the TLS ticket secret), and every worker inherits it. Each
dial address owns a slot: an 8-byte key and a ring of ``RING`` failure expiry times
(CLOCK_MONOTONIC, which is one clock for all processes: ``loop.time()``). Writes are not
locked: two workers recording at the same instant may overwrite one entry, undercounting by
one, which is harmless next to the per-worker undercount this replaces. A worker keeps its own
exact count too (``HostState``), so ``max_fails`` above ``RING`` still works within one worker.
"""

from __future__ import annotations

import hashlib
import mmap
import struct

SLOTS = 2048  # distinct dial addresses; beyond that, addresses keep per-worker counts only
RING = 32  # remembered failures per address across workers
_KEY = struct.Struct("<Q")
_RING = struct.Struct(f"<{RING}d")
SLOT_BYTES = _KEY.size + _RING.size


class SharedFailures:
    """The failure ring of one dial address in the shared table."""

    __slots__ = ("_mem", "_offset")

    def __init__(self, mem: mmap.mmap, offset: int) -> None:
        self._mem = mem
        self._offset = offset + _KEY.size

    def record(self, expiry: float) -> None:
        """Remember one failure until ``expiry``, overwriting the entry that expires first."""
        entries = _RING.unpack_from(self._mem, self._offset)
        oldest = min(range(RING), key=entries.__getitem__)
        struct.pack_into("<d", self._mem, self._offset + 8 * oldest, expiry)

    def count(self, now: float) -> int:
        """Failures recorded by any worker that have not expired at ``now``."""
        return sum(1 for e in _RING.unpack_from(self._mem, self._offset) if e > now)

    def clear(self) -> None:
        _RING.pack_into(self._mem, self._offset, *([0.0] * RING))


class SharedFailureTable:
    """Open-addressed table of dial address → :class:`SharedFailures` in shared memory."""

    __slots__ = ("_mem",)

    def __init__(self, slots: int = SLOTS) -> None:
        # MAP_SHARED | MAP_ANONYMOUS: the same pages in every process forked after this.
        self._mem = mmap.mmap(-1, slots * SLOT_BYTES, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)

    @property
    def slots(self) -> int:
        return len(self._mem) // SLOT_BYTES

    def slot(self, dial: str) -> SharedFailures | None:
        """The slot of ``dial`` (claimed on first use), or None when the table is full."""
        # blake2b, not hash(): the key must be the same in every process, whatever the seed.
        key = _KEY.unpack(hashlib.blake2b(dial.encode(), digest_size=8).digest())[0] or 1
        slots = self.slots
        start = key % slots
        for probe in range(slots):
            offset = ((start + probe) % slots) * SLOT_BYTES
            (found,) = _KEY.unpack_from(self._mem, offset)
            if found == key:
                return SharedFailures(self._mem, offset)
            if found == 0:
                _KEY.pack_into(self._mem, offset, key)
                return SharedFailures(self._mem, offset)
        return None


_table: SharedFailureTable | None = None


def create_shared_failures() -> SharedFailureTable:
    """Map the table (once). Call in the supervisor before it forks anything."""
    global _table
    if _table is None:
        _table = SharedFailureTable()
    return _table


def shared_failures(dial: str) -> SharedFailures | None:
    """``dial``'s shared slot, or None when no table was created (one process, tests)."""
    return _table.slot(dial) if _table is not None else None
