"""The flood budgets of proxy/http/h2limits.py: Go's thresholds, as pure decisions."""

from __future__ import annotations

from proxy.http.h2limits import (
    MAX_QUEUED_CONTROL_FRAMES,
    ConnectionBudget,
    header_block_too_large,
)


def test_handlers_beyond_the_stream_limit_queue_then_the_queue_overflows() -> None:
    budget = ConnectionBudget(max_handlers=2)
    assert [budget.new_stream().action for _ in range(2)] == ["start", "start"]
    # Go queues up to 4 x advMaxStreams unstarted handlers, and ends past that.
    assert all(budget.new_stream().action == "queue" for _ in range(9))
    verdict = budget.new_stream()
    assert verdict.close and verdict.reason == "too_many_early_resets"


def test_a_finished_handler_frees_a_slot_for_a_queued_stream() -> None:
    budget = ConnectionBudget(max_handlers=1)
    assert budget.new_stream().action == "start"
    assert budget.new_stream().action == "queue"
    budget.handler_done()
    assert budget.free_slots == 1
    budget.dequeue(started=True)
    assert budget.free_slots == 0 and budget.unstarted == 0
    budget.handler_done()
    assert budget.new_stream().action == "start"


def test_a_reset_queued_stream_leaves_the_queue_without_a_slot() -> None:
    budget = ConnectionBudget(max_handlers=1)
    budget.new_stream()
    budget.new_stream()
    budget.dequeue(started=False)
    assert budget.unstarted == 0 and budget.free_slots == 0


def test_control_frames_budget_is_gos_and_resets_when_writes_drain() -> None:
    budget = ConnectionBudget(max_handlers=250)
    assert MAX_QUEUED_CONTROL_FRAMES == 10000
    assert not budget.control_frames_queued(MAX_QUEUED_CONTROL_FRAMES).close
    verdict = budget.control_frames_queued(1)
    assert verdict.close and verdict.reason == "too_many_control_frames"
    budget.writes_drained()
    assert not budget.control_frames_queued(1).close


def test_header_block_bound_is_twice_the_header_list_size() -> None:
    assert not header_block_too_large(2 * 4416, 4416)
    assert header_block_too_large(2 * 4416 + 1, 4416)
