"""Name resolution for upstream hosts, with a short-lived cache.

This module owns turning an upstream host name into IP addresses for the dialer. Names are
re-resolved after ``ttl_s`` (30 s by default) because in container deployments a service name
such as ``www`` gets a new IP on every redeploy; resolving once at startup would pin the proxy to
a dead address. The engine calls ``invalidate(host)`` after a dial failure so the next attempt
resolves afresh instead of waiting for the TTL. IP literals never touch the resolver.

Concurrent lookups of the same name share one ``getaddrinfo`` call. Failed lookups are not
cached; with ``stale_grace_s > 0`` an expired answer is still served for that long when a
re-resolution fails (DNS hiccups during a redeploy), like Caddy's SRV ``grace_period``.
The clock is injected; the cache itself performs no I/O.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_TTL_S", "ResolveError", "Resolver", "is_ip_literal"]

DEFAULT_TTL_S = 30.0

GetAddrInfo = Callable[..., Awaitable[list[tuple[Any, ...]]]]


class ResolveError(OSError):
    """A host name could not be resolved; the message starts with the host."""


def is_ip_literal(host: str) -> bool:
    """True for ``127.0.0.1``, ``::1``, ``[::1]`` and ``fe80::1%eth0``."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


@dataclass(slots=True)
class _Entry:
    addresses: list[str]
    expires: float
    stale_until: float


class Resolver:
    """Resolve host names to addresses, caching each answer for ``ttl_s`` seconds.

    ``family`` restricts the answer (``socket.AF_INET`` / ``AF_INET6``; default both).
    ``getaddrinfo`` defaults to the running loop's; it is injectable for tests and alternative
    resolvers and is called as ``getaddrinfo(host, None, family=..., type=SOCK_STREAM)``.
    """

    def __init__(
        self,
        ttl_s: float = DEFAULT_TTL_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        family: int = socket.AF_UNSPEC,
        stale_grace_s: float = 0.0,
        getaddrinfo: GetAddrInfo | None = None,
    ) -> None:
        if ttl_s < 0 or stale_grace_s < 0:
            raise ValueError("resolver durations must not be negative")
        self.ttl_s = ttl_s
        self.stale_grace_s = stale_grace_s
        self.family = family
        self._clock = clock
        self._getaddrinfo = getaddrinfo
        self._cache: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task[list[str]]] = {}
        # Bumped by invalidate(); a lookup that started before an invalidation must not store
        # its (possibly stale) answer afterwards.
        self._generation: dict[str, int] = {}

    def cached(self, host: str) -> list[str] | None:
        """The fresh cached addresses of ``host`` (or the literal itself), without I/O."""
        if is_ip_literal(host):
            return [host.strip("[]")]
        entry = self._cache.get(host.lower())
        if entry is not None and self._clock() < entry.expires:
            return list(entry.addresses)
        return None

    async def resolve(self, host: str) -> list[str]:
        """Addresses of ``host`` in resolver order (deduplicated). Raises ``ResolveError``."""
        if is_ip_literal(host):
            return [host.strip("[]")]
        key = host.lower()
        entry = self._cache.get(key)
        if entry is not None and self._clock() < entry.expires:
            return list(entry.addresses)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._lookup(key))
            self._inflight[key] = task
            task.add_done_callback(self._forget_inflight(key))
        # Shield: one waiter being cancelled must not cancel the lookup the others share.
        return list(await asyncio.shield(task))

    def _forget_inflight(self, key: str) -> Callable[[asyncio.Task[list[str]]], None]:
        def done(task: asyncio.Task[list[str]]) -> None:
            if self._inflight.get(key) is task:
                del self._inflight[key]
            if not task.cancelled():
                # Retrieve the exception so a lookup nobody awaits any more is not reported
                # as "exception was never retrieved".
                task.exception()

        return done

    async def _lookup(self, key: str) -> list[str]:
        generation = self._generation.get(key, 0)
        getaddrinfo = self._getaddrinfo or asyncio.get_running_loop().getaddrinfo
        try:
            infos = await getaddrinfo(key, None, family=self.family, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            stale = self._cache.get(key)
            if stale is not None and self._clock() < stale.stale_until:
                return list(stale.addresses)
            raise ResolveError(f"{key}: resolving upstream host: {exc}") from exc
        addresses: list[str] = []
        for info in infos:
            address = str(info[4][0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise ResolveError(f"{key}: resolving upstream host: no addresses")
        if self._generation.get(key, 0) == generation:
            now = self._clock()
            self._cache[key] = _Entry(
                addresses, now + self.ttl_s, now + self.ttl_s + self.stale_grace_s
            )
        return addresses

    def invalidate(self, host: str | None = None) -> None:
        """Forget ``host`` (all hosts when ``None``) so the next ``resolve`` looks it up."""
        if host is None:
            for key in list(self._cache) + list(self._inflight):
                self._generation[key] = self._generation.get(key, 0) + 1
            self._cache.clear()
            return
        key = host.lower()
        self._cache.pop(key, None)
        self._generation[key] = self._generation.get(key, 0) + 1
