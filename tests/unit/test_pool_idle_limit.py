"""keep_alive.max_idle_conns (Go's Transport.MaxIdleConns): the idle connections of all the
pools of one transport are capped together; one more idle closes the least recently used,
whichever host it belongs to. Real loopback origins, real connections."""

from __future__ import annotations

import asyncio

from proxy.upstream.pool import ConnectionPool, IdleLimit
from proxy.upstream.resolve import Resolver

IO_TIMEOUT_S = 5.0


class Clock:
    """The pools' coarse idle clock, set by the test (idle order is what is checked)."""

    now = 0.0


class Origin:
    """A loopback server that records when the proxy side closes each connection."""

    def __init__(self) -> None:
        self.closed: asyncio.Queue[int] = asyncio.Queue()
        self.accepted = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Origin:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            index = self.accepted
            self.accepted += 1
            await reader.read()  # EOF: the pool closed this connection
            self.closed.put_nowait(index)
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_one_more_idle_connection_closes_the_oldest_of_any_host() -> None:
    loop = asyncio.get_running_loop()
    a, b = await Origin().start(), await Origin().start()
    clock = Clock()
    limit = IdleLimit(2)
    resolver = Resolver()
    pool_a = ConnectionPool(
        loop, "127.0.0.1", a.port, resolver=resolver, idle_limit=limit, clock=clock
    )
    pool_b = ConnectionPool(
        loop, "127.0.0.1", b.port, resolver=resolver, idle_limit=limit, clock=clock
    )
    try:
        first_a, second_a, first_b = (
            await pool_a.connect(),
            await pool_a.connect(),
            await pool_b.connect(),
        )
        clock.now = 1.0
        pool_a.release(first_a)
        clock.now = 2.0
        pool_a.release(second_a)
        assert a.closed.empty()
        clock.now = 3.0
        pool_b.release(first_b)  # a third idle connection: A's least recently used goes
        assert await asyncio.wait_for(a.closed.get(), IO_TIMEOUT_S) == 0
        assert pool_a.idle == [second_a]
        assert pool_b.idle == [first_b]
        assert first_a.closed and not second_a.closed and not first_b.closed
    finally:
        pool_a.close_all()
        pool_b.close_all()
        await a.stop()
        await b.stop()


async def test_pools_without_a_limit_keep_their_own_per_host_cap() -> None:
    loop = asyncio.get_running_loop()
    a = await Origin().start()
    pool = ConnectionPool(loop, "127.0.0.1", a.port, resolver=Resolver(), clock=Clock())
    try:
        conns = [await pool.connect() for _ in range(3)]
        for conn in conns:
            pool.release(conn)
        assert pool.idle == conns
    finally:
        pool.close_all()
        await a.stop()
