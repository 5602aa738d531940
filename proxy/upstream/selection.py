"""Load-balancing selection policies (Caddy's ``load_balancing.selection_policy`` JSON object).

This module owns the choice of one *available* upstream per request attempt. Every policy of
Caddy is here, with Caddy's JSON names and fields:

=========================  =========================================================
``random`` (default)       uniform among available upstreams
``random_choose``          ``choose`` (default 2, ≥ 2) random ones, then least busy
``round_robin``            next available in order
``weighted_round_robin``   ``weights`` (one per upstream; 0 = never)
``least_conn``             fewest in-flight requests, ties broken at random
``first``                  first available in config order
``ip_hash``                hash of the peer IP
``client_ip_hash``         hash of the client IP (after trusted_proxies)
``uri_hash``               hash of the request-target as received
``query``                  hash of all values of query ``key`` (``fallback`` when absent)
``header``                 hash of header ``field`` (``fallback`` when absent)
``cookie``                 sticky cookie ``name`` (default ``lb``) holding an HMAC-SHA256 of
                           the upstream's dial keyed with ``secret``; ``max_age``; ``fallback``
=========================  =========================================================

Hash policies use rendezvous (highest random weight) hashing over the available upstreams: the
upstream with the highest ``hash(dial + key)`` wins, so when one upstream goes down only the keys
that mapped to it move. (Caddy uses xxhash64; we use 64-bit BLAKE2b, so the *particular* upstream
chosen for a key differs from Caddy's, while the stability property is the same.)

Interface for the engine::

    policy = make_selection_policy(handler.load_balancing.selection_policy)
    upstream = policy.select(upstreams, request, now)   # None → no upstream available (503)
    cookie = policy.response_cookie(upstream, request)   # Set-Cookie value to add, or None

``now`` is the clock used for passive-health expiry (the same clock given to health.py).
``response_cookie`` returns a value only for the ``cookie`` policy, and only when the request did
not already carry the cookie for that upstream (Caddy sets it when it picks a new upstream).

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Sequence
from urllib.parse import parse_qsl

from config.model import SELECTION_POLICIES, SelectionPolicyConfig
from proxy.request_view import RequestView
from proxy.upstream.upstream import Upstream

__all__ = [
    "POLICIES",
    "ClientIPHashSelection",
    "CookieHashSelection",
    "FirstSelection",
    "HeaderHashSelection",
    "IPHashSelection",
    "LeastConnSelection",
    "QueryHashSelection",
    "RandomChoiceSelection",
    "RandomSelection",
    "RoundRobinSelection",
    "SelectionPolicy",
    "URIHashSelection",
    "WeightedRoundRobinSelection",
    "cookie_hash",
    "host_by_hashing",
    "make_selection_policy",
]


# -- helpers ---------------------------------------------------------------------------------


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def host_by_hashing(pool: Sequence[Upstream], key: str, now: float) -> Upstream | None:
    """Rendezvous hashing: the available upstream with the highest ``hash(dial + key)``."""
    best: Upstream | None = None
    best_hash = -1
    for upstream in pool:
        if not upstream.available(now):
            continue
        # Hash the server and the key together; hashing them separately loses the property.
        h = _hash64(upstream.dial + key)
        if h > best_hash:
            best_hash, best = h, upstream
    return best


def _random_available(pool: Sequence[Upstream], now: float, rng: random.Random) -> Upstream | None:
    available = [u for u in pool if u.available(now)]
    return rng.choice(available) if available else None


def _least_requests(candidates: Sequence[Upstream], rng: random.Random) -> Upstream | None:
    if not candidates:
        return None
    fewest = min(u.num_requests for u in candidates)
    best = [u for u in candidates if u.num_requests == fewest]
    return best[0] if len(best) == 1 else rng.choice(best)


def cookie_hash(secret: str, dial: str) -> str:
    """Hex HMAC-SHA256 of the dial address keyed with ``secret`` (the sticky cookie value)."""
    return hmac.new(secret.encode(), dial.encode(), hashlib.sha256).hexdigest()


def _same(expected: str, given: str) -> bool:
    # Constant-time compare on bytes: str compare_digest rejects non-ASCII client input.
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape"))


def _request_cookie(req: RequestView, name: str) -> str | None:
    """First value of cookie ``name`` in the request's Cookie headers (quotes stripped)."""
    for header in req.header_values("Cookie"):
        for part in header.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key.strip() == name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value
    return None


# -- base ------------------------------------------------------------------------------------


class SelectionPolicy:
    """Base class: ``select`` picks an available upstream or returns ``None``."""

    name = ""

    def select(self, pool: Sequence[Upstream], req: RequestView, now: float) -> Upstream | None:
        raise NotImplementedError

    def response_cookie(self, upstream: Upstream, req: RequestView) -> str | None:
        """``Set-Cookie`` value the response must carry after choosing ``upstream``, if any."""
        return None


class RandomSelection(SelectionPolicy):
    name = "random"

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def select(self, pool: Sequence[Upstream], req: RequestView, now: float) -> Upstream | None:
        return _random_available(pool, now, self.rng)


class RandomChoiceSelection(SelectionPolicy):
    """Pick ``choose`` available upstreams at random, then the one with the fewest requests."""

    name = "random_choose"

    def __init__(self, choose: int = 2, rng: random.Random | None = None) -> None:
        if choose < 2:
            raise ValueError("choose must be at least 2")
        self.choose = choose
        self.rng = rng or random.Random()

    def select(self, pool: Sequence[Upstream], req: RequestView, now: float) -> Upstream | None:
        available = [u for u in pool if u.available(now)]
        if len(available) > self.choose:
            available = self.rng.sample(available, self.choose)
        return _least_requests(available, self.rng)


class LeastConnSelection(SelectionPolicy):
    """Fewest in-flight *requests* (Caddy counts requests, not connections)."""

    name = "least_conn"

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def select(self, pool: Sequence[Upstream], req: RequestView, now: float) -> Upstream | None:
        return _least_requests([u for u in pool if u.available(now)], self.rng)


class RoundRobinSelection(SelectionPolicy):
    """Next upstream in config order, skipping unavailable ones.

    Like Caddy (2.6.2 and current), the counter is incremented before it is used, so the first
    request goes to the *second* upstream; with a dead upstream in the pool, which requests
    fail is then the same as in Caddy."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 1

    def select(self, pool: Sequence[Upstream], req: RequestView, now: float) -> Upstream | None:
        n = len(pool)
        for _ in range(n):
            upstream = pool[self._next % n]
            self._next = (self._next + 1) % n
            if upstream.available(now):
                return upstream
        return None


class WeightedRoundRobinSelection(SelectionPolicy):
    """Round robin where upstream *i* gets ``weights[i]`` turns per cycle.

    Weights are matched to upstreams by position; upstreams without a weight, or with weight 0,
    are never chosen (as in Caddy). Unavailable upstreams are left out of the cycle and the
    remaining ones keep their relative shares (Caddy shifts turns onto neighbours instead).
    """

    name = "weighted_round_robin"

    def __init__(self, weights: Sequence[int]) -> None:
        if any(w < 0 for w in weights):
            raise ValueError("weight of an upstream cannot be negative")
        if sum(weights) <= 0:
            raise ValueError(
                "weighted_round_robin requires at least one upstream with a positive weight"
            )
        self.weights = tuple(int(w) for w in weights)
        self._counter = 0

    def select(self, pool: Sequence[Upstream], req: RequestView, now: float) -> Upstream | None:
        candidates = [
            (u, w) for u, w in zip(pool, self.weights, strict=False) if w > 0 and u.available(now)
        ]
        if not candidates:
            return None
        total = sum(w for _, w in candidates)
        position = self._counter % total
        self._counter += 1
        for upstream, weight in candidates:
            if position < weight:
                return upstream
            position -= weight
        return candidates[-1][0]  # unreachable: position < total


class FirstSelection(SelectionPolicy):
    name = "first"

    def select(self, pool: Sequence[Upstream], req: RequestView, now: float) -> Upstream | None:
        for upstream in pool:
            if upstream.available(now):
                return upstream
        return None


class IPHashSelection(SelectionPolicy):
    """Hash of the immediate peer's IP (``remote_ip``)."""

    name = "ip_hash"

    def select(self, pool: Sequence[Upstream], req: RequestView, now: float) -> Upstream | None:
        return host_by_hashing(pool, req.remote_ip, now)


class ClientIPHashSelection(SelectionPolicy):
    """Hash of the client IP as determined by the server's trusted_proxies settings."""

    name = "client_ip_hash"

    def select(self, pool: Sequence[Upstream], req: RequestView, now: float) -> Upstream | None:
        return host_by_hashing(pool, req.client_ip or req.remote_ip, now)


class URIHashSelection(SelectionPolicy):
    """Hash of the request-target exactly as received (path and query)."""

    name = "uri_hash"

    def select(self, pool: Sequence[Upstream], req: RequestView, now: float) -> Upstream | None:
        return host_by_hashing(pool, req.uri, now)


class QueryHashSelection(SelectionPolicy):
    """Hash of every value of query parameter ``key`` joined with ``,``.

    Joining all values (not just the first) stops a client from steering the choice with a
    second ``key=`` the upstream would ignore. Missing or empty → ``fallback``.
    """

    name = "query"

    def __init__(self, key: str, fallback: SelectionPolicy | None = None) -> None:
        if not key:
            raise ValueError("query key is required")
        self.key = key
        self.fallback = fallback or RandomSelection()

    def select(self, pool: Sequence[Upstream], req: RequestView, now: float) -> Upstream | None:
        values = [v for k, v in parse_qsl(req.query, keep_blank_values=True) if k == self.key]
        joined = ",".join(values)
        if not joined:
            return self.fallback.select(pool, req, now)
        return host_by_hashing(pool, joined, now)


class HeaderHashSelection(SelectionPolicy):
    """Hash of request header ``field`` (``Host`` reads the request host). Absent → fallback."""

    name = "header"

    def __init__(self, field: str, fallback: SelectionPolicy | None = None) -> None:
        if not field:
            raise ValueError("header field is required")
        self.field = field
        self.fallback = fallback or RandomSelection()

    def select(self, pool: Sequence[Upstream], req: RequestView, now: float) -> Upstream | None:
        if self.field.lower() == "host" and req.host:
            return host_by_hashing(pool, req.host, now)
        value = req.header(self.field)
        if not value:
            return self.fallback.select(pool, req, now)
        return host_by_hashing(pool, value, now)


class CookieHashSelection(SelectionPolicy):
    """Sticky sessions: the upstream whose ``HMAC(secret, dial)`` equals the cookie value.

    Without a matching available upstream the ``fallback`` policy chooses, and
    ``response_cookie`` then returns the ``Set-Cookie`` value pinning the client to it.
    """

    name = "cookie"

    def __init__(
        self,
        name: str = "lb",
        secret: str = "",
        max_age_s: float = 0.0,
        fallback: SelectionPolicy | None = None,
    ) -> None:
        self.cookie_name = name or "lb"
        self.secret = secret
        self.max_age_s = max_age_s
        self.fallback = fallback or RandomSelection()

    def select(self, pool: Sequence[Upstream], req: RequestView, now: float) -> Upstream | None:
        value = _request_cookie(req, self.cookie_name)
        if value:
            for upstream in pool:
                if not upstream.available(now):
                    continue
                if _same(cookie_hash(self.secret, upstream.dial), value):
                    return upstream
        return self.fallback.select(pool, req, now)

    def response_cookie(self, upstream: Upstream, req: RequestView) -> str | None:
        expected = cookie_hash(self.secret, upstream.dial)
        current = _request_cookie(req, self.cookie_name)
        if current is not None and _same(expected, current):
            return None  # the client already sticks to this upstream
        parts = [f"{self.cookie_name}={expected}", "Path=/"]
        if self.max_age_s > 0:
            parts.append(f"Max-Age={int(self.max_age_s)}")
        parts.append("HttpOnly")
        # Secure (and SameSite=None so it survives cross-site use) when the client connection
        # is HTTPS, directly or per X-Forwarded-Proto from a trusted proxy (last value wins).
        if req.scheme == "https" or _forwarded_https(req):
            parts += ["Secure", "SameSite=None"]
        else:
            parts.append("SameSite=Lax")
        return "; ".join(parts)


def _forwarded_https(req: RequestView) -> bool:
    if req.vars.get("trusted_proxy") is not True:
        return False
    values = req.header_values("X-Forwarded-Proto")
    if not values:
        return False
    return values[-1].split(",")[-1].strip() == "https"


# -- factory ---------------------------------------------------------------------------------

# One list for the config model (validation) and this factory.
POLICIES = SELECTION_POLICIES


def make_selection_policy(
    cfg: SelectionPolicyConfig | None, rng: random.Random | None = None
) -> SelectionPolicy:
    """Build a policy from the model's typed ``selection_policy`` (``None`` gives ``random``).

    The model validated the fields (with their JSON paths); ``rng`` seeds random choices (tests).
    """
    if cfg is None:
        return RandomSelection(rng)
    name = cfg.policy

    def fallback() -> SelectionPolicy | None:
        return make_selection_policy(cfg.fallback, rng) if cfg.fallback is not None else None

    if name == "random":
        return RandomSelection(rng)
    if name == "random_choose":
        return RandomChoiceSelection(cfg.choose, rng)
    if name == "round_robin":
        return RoundRobinSelection()
    if name == "weighted_round_robin":
        return WeightedRoundRobinSelection(cfg.weights)
    if name == "least_conn":
        return LeastConnSelection(rng)
    if name == "first":
        return FirstSelection()
    if name == "ip_hash":
        return IPHashSelection()
    if name == "client_ip_hash":
        return ClientIPHashSelection()
    if name == "uri_hash":
        return URIHashSelection()
    if name == "query":
        return QueryHashSelection(cfg.key, fallback())
    if name == "header":
        return HeaderHashSelection(cfg.field_name, fallback())
    if name == "cookie":
        return CookieHashSelection(cfg.cookie_name, cfg.secret, cfg.max_age_s, fallback())
    raise ValueError(f"unknown selection policy {name!r} (known: {', '.join(POLICIES)})")
