"""Retry decisions of the reverse_proxy load balancer (Caddy's ``load_balancing`` JSON object).

This module owns one pure question: after an attempt failed, should the handler try again
(with the next upstream the selection policy picks), and how long should it wait first?

Caddy's rules (``tryAgain`` in its reverse proxy), followed here:

* Retries are off unless ``try_duration`` or ``retries`` is set. ``try_duration`` bounds the
  time since the handler started; ``retries`` bounds the number of retries; with both, the first
  limit reached stops.
* A **dial error** (no connection, so the upstream cannot have seen the request) and **no
  upstream available** are always retryable, whatever the method.
* A **response that matched** a ``retry_match`` expression was already judged retryable.
* Any other error happened after the request may have reached the upstream: without
  ``retry_match`` only ``GET`` is retried; with ``retry_match`` the request is retried when any
  matcher set matches (the engine supplies that test as a callable, since matchers are compiled
  elsewhere). Note Caddy retries only GET here, not every idempotent method.
* The wait is ``try_interval``; it defaults to 250 ms when ``try_duration`` is set (to avoid
  spinning the CPU against a dead local upstream) and to 0 otherwise. The model
  (``config.model.LoadBalancing``) has already applied that default.

Elapsed time is passed in; nothing here reads a clock or sleeps.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from config.model import DEFAULT_TRY_INTERVAL_S, LoadBalancing

__all__ = ["DEFAULT_TRY_INTERVAL_S", "FailureKind", "RetryDecision", "RetryPolicy"]


class FailureKind(enum.Enum):
    """Why the last attempt failed."""

    DIAL = "dial"  # could not connect (incl. resolve failure, connect timeout, TLS handshake)
    NO_UPSTREAM = "no_upstream"  # the selection policy found no available upstream
    AFTER_SENT = "after_sent"  # error once the request may have been sent (reset, timeout…)
    RESPONSE_MATCHED = "response_matched"  # the response matched a retry_match expression


@dataclass(frozen=True, slots=True)
class RetryDecision:
    retry: bool
    wait_s: float = 0.0
    reason: str = ""

    def __bool__(self) -> bool:
        return self.retry


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The retry settings of ``load_balancing``; build with ``from_config``."""

    try_duration_s: float = 0.0
    try_interval_s: float = 0.0
    retries: int = 0
    has_retry_match: bool = False

    @classmethod
    def from_config(cls, lb: LoadBalancing) -> RetryPolicy:
        """From the model's typed ``load_balancing`` (validated, defaults applied there)."""
        return cls(
            try_duration_s=lb.try_duration_s,
            try_interval_s=lb.try_interval_s,
            retries=lb.retries,
            has_retry_match=bool(lb.retry_match),
        )

    @property
    def enabled(self) -> bool:
        return self.try_duration_s > 0 or self.retries > 0

    def decide(
        self,
        *,
        retries_done: int,
        elapsed_s: float,
        method: str,
        failure: FailureKind,
        retry_match: Callable[[], bool] | None = None,
    ) -> RetryDecision:
        """Whether to try again after a failed attempt.

        ``retries_done``: retries already made (0 after the first attempt). ``elapsed_s``: time
        since the handler started proxying this request. ``retry_match``: evaluates the
        handler's ``retry_match`` matcher sets against the request (True when any set matches);
        required when the config has ``retry_match`` and ``failure`` is ``AFTER_SENT``.
        On ``retry=True`` the caller waits ``wait_s`` and then selects an upstream again.
        """
        if not self.enabled:
            return RetryDecision(False, reason="retries not enabled")
        if self.try_duration_s > 0 and elapsed_s >= self.try_duration_s:
            return RetryDecision(False, reason="try_duration exceeded")
        if self.retries > 0 and retries_done >= self.retries:
            return RetryDecision(False, reason="retries exhausted")
        if failure is FailureKind.AFTER_SENT:
            if not self.has_retry_match:
                if method != "GET":
                    return RetryDecision(False, reason=f"{method} not retried after sending")
            else:
                if retry_match is None:
                    raise ValueError("retry_match is configured but no matcher was supplied")
                if not retry_match():
                    return RetryDecision(False, reason="retry_match did not match")
        return RetryDecision(True, self.try_interval_s, reason=failure.value)
