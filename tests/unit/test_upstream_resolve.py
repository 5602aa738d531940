"""Resolver: real getaddrinfo for localhost, TTL with an injected clock, invalidation.

Only ``localhost``, ``127.0.0.1`` and ``::1`` are looked up for real; failures are produced by an
injected getaddrinfo, never by asking DNS for a made-up name.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from proxy.upstream.resolve import ResolveError, Resolver, is_ip_literal


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class CountingGetaddrinfo:
    """Wraps the loop's real getaddrinfo and counts calls per host."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[str] = []
        self.delay_s = delay_s

    async def __call__(self, host: str, port: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        self.calls.append(host)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return await asyncio.get_running_loop().getaddrinfo(host, port, **kwargs)


@pytest.mark.parametrize(
    ("host", "literal"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("fe80::1%eth0", True),
        ("localhost", False),
        ("www", False),
        ("1.2.3", False),
    ],
)
def test_is_ip_literal(host: str, literal: bool) -> None:
    assert is_ip_literal(host) is literal


async def test_localhost_resolves_and_is_cached_for_ttl() -> None:
    clock = Clock()
    gai = CountingGetaddrinfo()
    resolver = Resolver(ttl_s=30.0, clock=clock, getaddrinfo=gai)
    first = await resolver.resolve("localhost")
    assert first and set(first) <= {"127.0.0.1", "::1"}
    assert len(first) == len(set(first))
    clock.t += 29.9
    assert await resolver.resolve("LOCALHOST") == first
    assert resolver.cached("localhost") == first
    assert gai.calls == ["localhost"]
    clock.t += 0.1  # TTL over: looked up again
    assert resolver.cached("localhost") is None
    assert await resolver.resolve("localhost") == first
    assert gai.calls == ["localhost", "localhost"]


async def test_ip_literals_bypass_resolution() -> None:
    gai = CountingGetaddrinfo()
    resolver = Resolver(getaddrinfo=gai)
    assert await resolver.resolve("127.0.0.1") == ["127.0.0.1"]
    assert await resolver.resolve("[::1]") == ["::1"]
    assert resolver.cached("::1") == ["::1"]
    assert gai.calls == []


async def test_family_filter() -> None:
    resolver = Resolver(family=socket.AF_INET)
    assert await resolver.resolve("localhost") == ["127.0.0.1"]


async def test_invalidate_forces_a_new_lookup() -> None:
    clock = Clock()
    gai = CountingGetaddrinfo()
    resolver = Resolver(clock=clock, getaddrinfo=gai)
    await resolver.resolve("localhost")
    resolver.invalidate("localhost")
    await resolver.resolve("localhost")
    resolver.invalidate()
    await resolver.resolve("localhost")
    assert gai.calls == ["localhost"] * 3


async def test_concurrent_lookups_share_one_call_and_survive_a_cancelled_waiter() -> None:
    gai = CountingGetaddrinfo(delay_s=0.05)
    resolver = Resolver(getaddrinfo=gai)
    waiters = [asyncio.create_task(resolver.resolve("localhost")) for _ in range(5)]
    await asyncio.sleep(0.01)
    waiters[0].cancel()
    results = await asyncio.gather(*waiters[1:])
    assert all(r == results[0] for r in results) and results[0]
    assert gai.calls == ["localhost"]
    with pytest.raises(asyncio.CancelledError):
        await waiters[0]


async def test_invalidate_during_lookup_does_not_store_the_old_answer() -> None:
    gai = CountingGetaddrinfo(delay_s=0.05)
    resolver = Resolver(getaddrinfo=gai)
    pending = asyncio.create_task(resolver.resolve("localhost"))
    await asyncio.sleep(0.01)
    resolver.invalidate("localhost")
    assert await pending  # the waiter still gets an answer
    assert resolver.cached("localhost") is None


async def test_failure_raises_and_is_not_cached() -> None:
    clock = Clock()
    fail = True

    async def flaky(host: str, port: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        if fail:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return await asyncio.get_running_loop().getaddrinfo(host, port, **kwargs)

    resolver = Resolver(clock=clock, getaddrinfo=flaky)
    with pytest.raises(ResolveError, match=r"^localhost: resolving upstream host: "):
        await resolver.resolve("localhost")
    fail = False
    assert await resolver.resolve("localhost")


async def test_stale_answer_served_within_grace_when_re_resolution_fails() -> None:
    clock = Clock()
    fail = False

    async def flaky(host: str, port: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        if fail:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return await asyncio.get_running_loop().getaddrinfo(host, port, **kwargs)

    resolver = Resolver(ttl_s=30.0, stale_grace_s=60.0, clock=clock, getaddrinfo=flaky)
    good = await resolver.resolve("localhost")
    fail = True
    clock.t += 45.0  # expired, within grace
    assert await resolver.resolve("localhost") == good
    clock.t += 50.0  # beyond ttl + grace
    with pytest.raises(ResolveError):
        await resolver.resolve("localhost")


def test_rejects_negative_ttl() -> None:
    with pytest.raises(ValueError):
        Resolver(ttl_s=-1)
