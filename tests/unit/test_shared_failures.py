"""The passive-health failure table shared by worker processes (proxy.upstream.shared_failures)."""

from __future__ import annotations

import os

from proxy.upstream.shared_failures import RING, SharedFailureTable
from proxy.upstream.upstream import HostState


def test_a_failure_recorded_in_a_forked_process_counts_in_the_parent() -> None:
    table = SharedFailureTable(slots=8)
    pid = os.fork()
    if pid == 0:  # the "other worker"
        slot = table.slot("10.0.0.1:80")
        code = 0 if slot is not None else 1
        if slot is not None:
            HostState(slot).count_failure(100.0, 30.0)
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    state = HostState(table.slot("10.0.0.1:80"))
    assert state.fails(100.0) == 1
    assert state.fails(130.0) == 0  # expired after fail_duration, as Caddy's timer decrement
    assert HostState(table.slot("10.0.0.2:80")).fails(100.0) == 0


def test_own_count_stays_exact_beyond_the_shared_ring() -> None:
    state = HostState(SharedFailureTable(slots=1).slot("a:1"))
    for _ in range(RING + 5):
        state.count_failure(0.0, 10.0)
    assert state.fails(1.0) == RING + 5


def test_a_full_table_gives_no_slot_and_the_state_stays_per_process() -> None:
    table = SharedFailureTable(slots=1)
    assert table.slot("a:1") is not None
    assert table.slot("b:1") is None
    state = HostState(None)
    state.count_failure(0.0, 10.0)
    assert state.fails(1.0) == 1


def test_clear_forgets_every_workers_failures() -> None:
    table = SharedFailureTable(slots=2)
    state = HostState(table.slot("a:1"))
    state.count_failure(0.0, 10.0)
    state.clear_failures()
    assert HostState(table.slot("a:1")).fails(1.0) == 0
