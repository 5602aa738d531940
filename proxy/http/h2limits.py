"""Flood budgets of one HTTP/2 connection (RFC 9113 §10.5): pure counters and decisions.

The thresholds are Go's x/net/http2 server's (server.go), which Caddy runs:

* **Rapid reset** (CVE-2023-44487). Go runs at most `advMaxStreams` (250) handlers per
  connection; the handler of a stream the client reset still counts until it has finished.
  Streams opened beyond that wait unstarted; when more than 4 x 250 are waiting, the
  connection ends with GOAWAY(ENHANCE_YOUR_CALM), "too_many_early_resets"
  (`scheduleHandler` / `handlerDone`). Here a reset stream's handler is cancelled at once (its
  proxy call drops the upstream connection), and its work winds down on the event loop's next
  turn: it counts as running until then (`handler_done` is called from a `call_soon`).
* **Control-frame floods** (CVE-2019-9512 PING, -9515 SETTINGS, -9514 RST_STREAM). Go counts
  the SETTINGS/PING acknowledgements and RST_STREAM frames queued for writing and not yet
  written; above `maxQueuedControlFrames` (10000) the connection ends with
  GOAWAY(ENHANCE_YOUR_CALM). Here a frame is "written" once the transport has taken it below
  its high-water mark: the count runs while the transport is paused (a client that does not
  read) and is cleared when it resumes.
* **CONTINUATION flood** (CVE-2024-27316 / Go's CVE-2023-45288). Go stops reading a header
  block whose encoded fragments exceed twice the header list size it still accepts: a
  connection error (PROTOCOL_ERROR). Here the bound is on the block's encoded bytes, 2 x
  SETTINGS_MAX_HEADER_LIST_SIZE, checked as each CONTINUATION arrives (proxy/http/h2conn.py).

Nothing here reads a clock or touches a socket; `HTTP2Connection` (proxy/http/h2server.py)
and `H2ServerConnection` (proxy/http/h2conn.py) feed the events and act on the decisions.

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "EARLY_RESET_QUEUE_FACTOR",
    "HEADER_BLOCK_FACTOR",
    "MAX_QUEUED_CONTROL_FRAMES",
    "ConnectionBudget",
    "Verdict",
    "header_block_too_large",
]

MAX_QUEUED_CONTROL_FRAMES: Final = 10000  # Go: maxQueuedControlFrames
EARLY_RESET_QUEUE_FACTOR: Final = 4  # Go: len(unstartedHandlers) > 4*advMaxStreams
HEADER_BLOCK_FACTOR: Final = 2  # Go: len(frag) > 2*remainSize ends the connection


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one event: `start` a handler now, `queue` it, or `close` the
    connection with GOAWAY(ENHANCE_YOUR_CALM); `reason` names the budget (Go's countError)."""

    action: str  # "start", "queue", "ok" or "close"
    reason: str = ""

    @property
    def close(self) -> bool:
        return self.action == "close"


_START: Final = Verdict("start")
_QUEUE: Final = Verdict("queue")
_OK: Final = Verdict("ok")


class ConnectionBudget:
    """The per-connection counters. `max_handlers`: the SETTINGS_MAX_CONCURRENT_STREAMS we
    advertise (Go: advMaxStreams)."""

    __slots__ = ("control_queued", "handlers", "max_control", "max_handlers", "unstarted")

    def __init__(self, max_handlers: int, max_control: int = MAX_QUEUED_CONTROL_FRAMES) -> None:
        self.max_handlers = max_handlers
        self.max_control = max_control
        self.handlers = 0  # running, including those of streams reset but not yet wound down
        self.unstarted = 0  # streams waiting for a handler slot (reset ones included)
        self.control_queued = 0

    # -- handlers (rapid reset) ----------------------------------------------------------------

    def new_stream(self) -> Verdict:
        """A request arrived: start its handler, queue it, or end the connection."""
        if self.handlers < self.max_handlers:
            self.handlers += 1
            return _START
        if self.unstarted > EARLY_RESET_QUEUE_FACTOR * self.max_handlers:
            return Verdict("close", "too_many_early_resets")
        self.unstarted += 1
        return _QUEUE

    def handler_done(self) -> None:
        self.handlers -= 1

    def dequeue(self, started: bool) -> None:
        """A queued stream left the queue: its handler `started` now (taking a slot), or it
        was reset while it waited."""
        self.unstarted -= 1
        if started:
            self.handlers += 1

    @property
    def free_slots(self) -> int:
        return self.max_handlers - self.handlers

    # -- control frames ------------------------------------------------------------------------

    def control_frames_queued(self, n: int) -> Verdict:
        """`n` SETTINGS/PING acknowledgements or RST_STREAM frames were queued while the
        transport does not take writes."""
        self.control_queued += n
        if self.control_queued > self.max_control:
            return Verdict("close", "too_many_control_frames")
        return _OK

    def writes_drained(self) -> None:
        self.control_queued = 0


def header_block_too_large(encoded_bytes: int, max_header_list_size: int) -> bool:
    """Whether a header block still open (HEADERS + CONTINUATION without END_HEADERS) has
    grown past what could decode to an acceptable header list."""
    return encoded_bytes > HEADER_BLOCK_FACTOR * max_header_list_size
