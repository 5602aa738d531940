"""When to start a replacement for a worker process that exited unexpectedly.

This module owns one pure question: a worker of the supervisor (proxy.supervisor) has exited
while the instance was serving; should a replacement start, and after how long?

The rules (nginx's master respawns a dead worker at once, always; systemd's `Restart=` adds a
delay so a unit that cannot start does not spin):

* While the instance is stopping (a graceful stop, a forced stop) nothing is respawned: a worker
  exiting then is doing what it was told.
* A worker that ran for `stable_after_s` or longer before it exited was healthy: whatever killed
  it (the OOM killer, a crash in a C extension, a stray `kill -9`) is not a startup problem, so
  the replacement starts at once and the quick-exit streak starts over.
* A worker that exited sooner is a *quick exit*. The first one in a row is still respawned at
  once (one unlucky crash right after a respawn or a start is no loop yet). From the second in
  a row on the replacement waits `first_backoff_s`, doubling with each further quick exit, up
  to `max_backoff_s`: a worker that dies at once every time (a broken extension, a missing
  file, no memory) costs a start every `max_backoff_s` instead of a spinning CPU, while the
  other workers keep serving.

The streak is per worker slot: it is the caller's state, passed in and handed back in the
decision. Times are passed in; nothing here reads a clock or sleeps.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

__all__ = ["RespawnDecision", "RespawnPolicy", "describe_exit"]

# A worker that ran this long was healthy: 10 s is systemd's default StartLimitIntervalSec, the
# window in which it counts a unit's restarts as coming too fast.
STABLE_AFTER_S = 10.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True, slots=True)
class RespawnDecision:
    respawn: bool
    delay_s: float
    # The quick-exit streak after this exit: the caller keeps it for the slot's next decision.
    quick_exits: int
    reason: str

    def __bool__(self) -> bool:
        return self.respawn


@dataclass(frozen=True, slots=True)
class RespawnPolicy:
    stable_after_s: float = STABLE_AFTER_S
    first_backoff_s: float = FIRST_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S

    def __post_init__(self) -> None:
        if self.stable_after_s <= 0 or self.first_backoff_s <= 0:
            raise ValueError("respawn policy: stable_after_s and first_backoff_s must be > 0")
        if self.max_backoff_s < self.first_backoff_s:
            raise ValueError("respawn policy: max_backoff_s must be >= first_backoff_s")

    def decide(
        self, *, started_at: float, exited_at: float, quick_exits: int, stopping: bool
    ) -> RespawnDecision:
        """Whether and when to replace a worker that started at `started_at` and was seen to
        exit at `exited_at` (same monotonic clock). `quick_exits`: the slot's streak before
        this exit (0 for a slot whose last worker was healthy)."""
        if quick_exits < 0:
            raise ValueError("quick_exits must be >= 0")
        if stopping:
            return RespawnDecision(False, 0.0, quick_exits, "the instance is stopping")
        lived_s = max(0.0, exited_at - started_at)
        if lived_s >= self.stable_after_s:
            return RespawnDecision(True, 0.0, 0, f"it had run {self.stable_after_s:g}s or more")
        streak = quick_exits + 1
        quick = f"within {self.stable_after_s:g}s of starting"
        if streak == 1:
            return RespawnDecision(True, 0.0, streak, f"the first exit {quick}")
        # 2**(streak - 2) overflows a float only for absurd streaks; stop doubling at the cap.
        delay = self.first_backoff_s
        for _ in range(streak - 2):
            delay *= 2
            if delay >= self.max_backoff_s:
                break
        delay = min(delay, self.max_backoff_s)
        return RespawnDecision(True, delay, streak, f"{streak} exits in a row {quick}")


def describe_exit(wait_status: int) -> str:
    """How a process ended, from its `os.waitpid` status: `killed by SIGKILL`, `exited with
    code 70`."""
    code = os.waitstatus_to_exitcode(wait_status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}"
