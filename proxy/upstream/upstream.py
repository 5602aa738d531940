"""Runtime state of reverse_proxy upstreams: what selection policies and health checks read.

This module owns:

* ``HostState`` — per *dial address* state shared by every handler that proxies to that address
  and kept across config reloads through a ``HostRegistry``: the number of in-flight requests and
  the passive-health failures that have not expired yet. Caddy keeps the same split: request
  counts and passive failures live on a global "host", because a backend that is overloaded or
  failing is so for every route that uses it.
* ``Upstream`` — one entry of a handler's ``upstreams`` JSON array (``{"dial": "host:port",
  "max_requests": N}``) plus the per-handler state: the active-health flag and its consecutive
  pass/fail counters (per handler, because two handlers may probe the same address with
  different URIs), and the passive policy's ``max_fails`` threshold.

Availability follows Caddy: an upstream is *healthy* unless the active checker marked it down or
it has ``max_fails`` or more unexpired passive failures; it is *available* when healthy and not
*full* (``max_requests`` in-flight requests or more). Time is always passed in (``now``, seconds on
any monotonic clock the caller chooses), so the decisions here are pure.

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Final

from config.errors import ConfigError
from config.model import DialAddress, PassiveHealthChecks, UpstreamConfig, parse_dial_address
from proxy.upstream.shared_failures import SharedFailures, shared_failures

__all__ = [
    "HostRegistry",
    "HostState",
    "Upstream",
    "dial_address",
]

DEFAULT_PORT: Final = 80


def dial_address(dial: str, default_port: int = DEFAULT_PORT) -> DialAddress:
    """The parsed address of a dial the model did not parse (dynamic upstreams, tests).

    The one parser is the model's (``parse_dial_address``); its ConfigError becomes a
    ValueError here, since at run time a bad dynamic dial skips that upstream. A dial that still
    holds placeholders has no fixed address: ``("tcp", "", 0)``.
    """
    if "{" in dial:
        return DialAddress("tcp", "", 0)
    try:
        return parse_dial_address(dial, "dial", default_port)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


class HostState:
    """State of one backend address, shared by all handlers and kept across reloads."""

    __slots__ = ("_fail_expiries", "_shared", "num_requests")

    def __init__(self, shared: SharedFailures | None = None) -> None:
        self.num_requests = 0
        # The same address's failures as recorded by every worker (proxy.upstream.shared_failures).
        self._shared = shared
        # Min-heap of expiry times, one per remembered failure. A heap (not a deque) because
        # handlers with different fail_duration values may record failures for the same host,
        # so expiries are not appended in order.
        self._fail_expiries: list[float] = []

    def count_failure(self, now: float, duration_s: float) -> None:
        """Remember one failure until ``now + duration_s``."""
        heapq.heappush(self._fail_expiries, now + duration_s)
        if self._shared is not None:
            self._shared.record(now + duration_s)

    def fails(self, now: float) -> int:
        """Number of failures not yet expired at ``now`` (expired ones are dropped)."""
        expiries = self._fail_expiries
        while expiries and expiries[0] <= now:
            heapq.heappop(expiries)
        if self._shared is not None:
            # Those of other workers too; the own count stays exact past the shared ring's size.
            return max(len(expiries), self._shared.count(now))
        return len(expiries)

    def clear_failures(self) -> None:
        self._fail_expiries.clear()
        if self._shared is not None:
            self._shared.clear()


class HostRegistry:
    """Dial address → ``HostState``; one per process so state survives config reloads."""

    __slots__ = ("_hosts",)

    def __init__(self) -> None:
        self._hosts: dict[str, HostState] = {}

    def get(self, dial: str) -> HostState:
        state = self._hosts.get(dial)
        if state is None:
            state = self._hosts[dial] = HostState(shared_failures(dial))
        return state

    def retain(self, dials: Iterable[str]) -> None:
        """Forget hosts not in ``dials`` (call after a reload with the new config's dials)."""
        keep = set(dials)
        for dial in [d for d in self._hosts if d not in keep]:
            del self._hosts[dial]

    def __contains__(self, dial: object) -> bool:
        return dial in self._hosts

    def __len__(self) -> int:
        return len(self._hosts)


class Upstream:
    """One configured upstream of one reverse_proxy handler.

    ``max_fails`` is the passive policy's threshold, or ``None`` when the handler has no passive
    health checks (then passive failures never make the upstream unhealthy, as in Caddy).
    """

    __slots__ = (
        "_active_unhealthy",
        "active_fails",
        "active_passes",
        "dial",
        "host",
        "max_fails",
        "max_requests",
        "network",
        "port",
        "state",
    )

    def __init__(
        self,
        dial: str,
        *,
        address: DialAddress | None = None,
        max_requests: int = 0,
        max_fails: int | None = None,
        state: HostState | None = None,
    ) -> None:
        self.dial = dial
        addr = address if address is not None else dial_address(dial)
        self.network, self.host, self.port = addr.network, addr.host, addr.port
        self.max_requests = max_requests
        self.max_fails = max_fails
        self.state = state if state is not None else HostState()
        self._active_unhealthy = False
        # Consecutive active-check results since the last state change (see health.py).
        self.active_passes = 0
        self.active_fails = 0

    @classmethod
    def from_config(
        cls,
        cfg: UpstreamConfig,
        *,
        passive: PassiveHealthChecks | None = None,
        registry: HostRegistry | None = None,
    ) -> Upstream:
        """Build from one typed ``upstreams`` entry of the model.

        ``passive`` is the handler's passive policy: it provides ``max_fails`` and, for
        upstreams without their own ``max_requests``, ``unhealthy_request_count`` as the limit
        (Caddy treats the two as the same knob).
        """
        max_requests = cfg.max_requests
        max_fails: int | None = None
        if passive is not None:
            max_fails = passive.max_fails
            if max_requests == 0:
                max_requests = passive.unhealthy_request_count
        state = registry.get(cfg.dial) if registry is not None else None
        return cls(
            cfg.dial,
            address=cfg.address,
            max_requests=max_requests,
            max_fails=max_fails,
            state=state,
        )

    def __repr__(self) -> str:
        return f"Upstream({self.dial!r})"

    def __str__(self) -> str:
        return self.dial

    # -- in-flight requests ------------------------------------------------------------------

    @property
    def num_requests(self) -> int:
        return self.state.num_requests

    def inc(self) -> None:
        """Count a request as in flight (call when it is sent to this upstream)."""
        self.state.num_requests += 1

    def dec(self) -> None:
        """Count a request as finished; never goes below zero."""
        if self.state.num_requests > 0:
            self.state.num_requests -= 1

    @contextmanager
    def track(self) -> Iterator[Upstream]:
        """``with upstream.track(): ...`` counts one in-flight request for the block."""
        self.inc()
        try:
            yield self
        finally:
            self.dec()

    # -- passive health ----------------------------------------------------------------------

    def record_failure(self, now: float, fail_duration_s: float) -> None:
        """Remember a failure for ``fail_duration_s`` (no-op when the duration is not positive)."""
        if fail_duration_s > 0:
            self.state.count_failure(now, fail_duration_s)

    def fails(self, now: float) -> int:
        return self.state.fails(now)

    # -- active health -----------------------------------------------------------------------

    @property
    def active_healthy(self) -> bool:
        return not self._active_unhealthy

    def set_active_healthy(self, healthy: bool) -> bool:
        """Set the active-check verdict; returns True when it changed."""
        if self._active_unhealthy == (not healthy):
            return False
        self._active_unhealthy = not healthy
        return True

    # -- verdicts ----------------------------------------------------------------------------

    def healthy(self, now: float) -> bool:
        """Not marked down by active checks and fewer than ``max_fails`` recent failures."""
        if self._active_unhealthy:
            return False
        return self.max_fails is None or self.state.fails(now) < self.max_fails

    def full(self) -> bool:
        """At or above ``max_requests`` in-flight requests (0 means unlimited)."""
        return self.max_requests > 0 and self.state.num_requests >= self.max_requests

    def available(self, now: float) -> bool:
        """May receive a request now: healthy and not full."""
        return self.healthy(now) and not self.full()
