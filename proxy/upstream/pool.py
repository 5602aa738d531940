"""Keepalive connection pools to upstreams.

One `ConnectionPool` per (dial address, TLS settings) and per worker process. Idle connections
are reused most-recently-idle first (LIFO: the warmest socket, the least likely to have been
closed by the upstream's own idle timer), at most `max_idle` are kept, and a sweeper closes
those idle longer than `idle_timeout` (Caddy: 2 min, 32 per host). Dialing resolves names
through the shared re-resolving `Resolver` so a service whose IP changes keeps working.

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import ssl
from collections import deque
from typing import Any, Final

from proxy.http.client import UpstreamConnection
from proxy.listen import set_tcp_keepalive
from proxy.upstream.errors import DialError, DialTimeout, TLSHandshakeTimeout
from proxy.upstream.resolve import Resolver, is_ip_literal

log = logging.getLogger("pyproxy.upstream")

SWEEP_INTERVAL_S: Final = 1.0
IDLE_BURST_FACTOR: Final = 4
_limit_ids = itertools.count(1)


class IdleLimit:
    """Go's Transport.MaxIdleConns (Caddy's keep_alive.max_idle_conns): at most `max_idle`
    idle connections across every host of one transport. Putting one more idle closes the
    least recently used idle connection of any of its pools first (Go: tryPutIdleConn evicts
    idleLRU's oldest)."""

    __slots__ = ("key", "max_idle", "pools")

    def __init__(self, max_idle: int) -> None:
        self.max_idle = max_idle
        self.pools: list[ConnectionPool] = []
        self.key = next(_limit_ids)  # part of the pool key: pools under a limit are its own

    def make_room(self) -> None:
        """Close the oldest idle connections until one more fits."""
        pools = self.pools
        total = 0
        for pool in pools:
            total += len(pool.idle)
        while total >= self.max_idle:
            oldest: ConnectionPool | None = None
            for pool in pools:
                if pool.idle and (
                    oldest is None or pool.idle[0].idle_since < oldest.idle[0].idle_since
                ):
                    oldest = pool
            if oldest is None:
                return
            oldest.idle.pop(0).close()
            total -= 1


class ConnectionPool:
    __slots__ = (
        "active",
        "clock",
        "dial_timeout_s",
        "dialing",
        "handshake_timeout_s",
        "host",
        "idle",
        "idle_limit",
        "idle_timeout_s",
        "keepalive_probe_interval_s",
        "loop",
        "max_conns",
        "max_idle",
        "port",
        "read_timeout_s",
        "resolver",
        "server_hostname",
        "ssl",
        "waiters",
        "write_timeout_s",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        *,
        resolver: Resolver,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        dial_timeout_s: float = 3.0,
        handshake_timeout_s: float | None = None,
        idle_timeout_s: float = 120.0,
        max_idle: int = 32,
        max_conns: int = 0,
        read_timeout_s: float = 0.0,
        write_timeout_s: float = 0.0,
        keepalive_probe_interval_s: float = 30.0,
        idle_limit: IdleLimit | None = None,
        clock: Any = None,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.resolver = resolver
        self.ssl = ssl_context
        self.server_hostname = server_hostname
        self.dial_timeout_s = dial_timeout_s
        # Caddy's transport tls.handshake_timeout (Go's TLSHandshakeTimeout): the TLS handshake
        # has its own limit, apart from dial_timeout, which bounds only the TCP connect.
        self.handshake_timeout_s = handshake_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_idle = max_idle
        self.max_conns = max_conns
        # Caddy's transport read_timeout / write_timeout (0: none): deadlines each connection of
        # this pool enforces on its own reads and writes (UpstreamConnection).
        self.read_timeout_s = read_timeout_s
        self.write_timeout_s = write_timeout_s
        # Caddy's transport keep_alive.probe_interval: TCP keep-alive probes on every connection
        # this pool dials (current Caddy: Go's KeepAliveConfig{Enable: > 0, Interval: it}, the
        # first probe after Go's default 15 s idle, 9 probes); negative turns probes off.
        self.keepalive_probe_interval_s = keepalive_probe_interval_s
        self.idle: list[UpstreamConnection] = []
        self.idle_limit = idle_limit
        if idle_limit is not None:
            idle_limit.pools.append(self)
        self.active = 0  # open connections (idle or carrying a request)
        self.dialing = 0
        # Requests waiting for a connection while max_conns are open (Go's MaxConnsPerHost):
        # each gets a released connection, or None meaning "a slot is free, dial".
        self.waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self.clock: Any = clock if clock is not None else _LoopClock(loop)

    def acquire_idle(self) -> UpstreamConnection | None:
        """The most recently idle usable connection, or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.usable:
                return conn
        return None

    async def obtain(self) -> UpstreamConnection:
        """A connection when none was idle: dial one, or wait while `max_conns` are open."""
        while self.max_conns > 0 and self.active + self.dialing >= self.max_conns:
            fut: asyncio.Future[UpstreamConnection | None] = self.loop.create_future()
            self.waiters.append(fut)
            try:
                conn = await fut
            except asyncio.CancelledError:
                # Handed a connection just as we were cancelled: don't leak it.
                if fut.done() and not fut.cancelled() and (got := fut.result()) is not None:
                    self.release(got)
                raise
            if conn is not None:
                if conn.usable:
                    return conn
                self.forget(conn)
        self.dialing += 1
        try:
            return await self.connect()
        finally:
            self.dialing -= 1
            self._wake(None)

    def _wake(self, conn: UpstreamConnection | None) -> bool:
        while self.waiters:
            w = self.waiters.popleft()
            if not w.done():
                w.set_result(conn)
                return True
        return False

    async def connect(self) -> UpstreamConnection:
        """Dial a new connection (raises DialError / DialTimeout)."""
        host = self.host
        try:
            if is_ip_literal(host):
                addrs = [host.strip("[]")]
            else:
                addrs = self.resolver.cached(host) or await self.resolver.resolve(host)
        except OSError as exc:
            raise DialError(f"dial {host}:{self.port}: {exc}") from exc
        last: BaseException | None = None
        deadline = self.loop.time() + self.dial_timeout_s
        for addr in addrs:
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                break
            try:
                if self.ssl is not None:
                    proto = await self._connect_tls(addr, remaining)
                else:
                    async with asyncio.timeout(remaining):
                        _, proto = await self.loop.create_connection(
                            lambda: UpstreamConnection(self), addr, self.port
                        )
            except TLSHandshakeTimeout:
                raise
            except TimeoutError as exc:
                last = exc
                continue
            except (OSError, ssl.SSLError) as exc:
                last = exc
                continue
            sock = proto.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # Go ignores an error setting keep-alive on a dialed connection (newTCPConn).
                with contextlib.suppress(OSError):
                    set_tcp_keepalive(sock, self.keepalive_probe_interval_s)
            self.active += 1
            proto.counted = True
            return proto
        if not is_ip_literal(host):
            self.resolver.invalidate(host)
        if isinstance(last, TimeoutError) or last is None:
            raise DialTimeout(f"dial tcp {host}:{self.port}: i/o timeout")
        raise DialError(f"dial tcp {host}:{self.port}: {last}") from last

    async def _connect_tls(self, addr: str, dial_timeout_s: float) -> UpstreamConnection:
        """TCP connect within the dial timeout, then the TLS handshake within its own limit.

        Go's transport (Caddy) dials with the dialer's timeout and then handshakes under
        TLSHandshakeTimeout; unset, Caddy sets no handshake limit. asyncio always bounds the
        handshake (60 s by default), which is what an unset handshake_timeout gets here.
        """
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            async with asyncio.timeout(dial_timeout_s):
                await self.loop.sock_connect(sock, (addr, self.port))
        except BaseException:
            sock.close()
            raise
        limit = self.handshake_timeout_s
        try:
            async with asyncio.timeout(limit if limit and limit > 0 else None):
                _, proto = await self.loop.create_connection(
                    lambda: UpstreamConnection(self),
                    sock=sock,
                    ssl=self.ssl,
                    server_hostname=self.server_hostname or self.host,
                    # Longer than our own limit, so that limit decides (asyncio's abort is a
                    # ConnectionAbortedError, not a timeout).
                    ssl_handshake_timeout=max(60.0, (limit or 0.0) + 1.0),
                )
        except TimeoutError as exc:
            sock.close()
            raise TLSHandshakeTimeout("net/http: TLS handshake timeout") from exc
        return proto

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection after a complete exchange; keep it if there is room."""
        if not conn.usable:
            return
        if self.waiters and self._wake(conn):
            return  # handed straight to a request waiting for a connection
        # An event loop releases connections in bursts (many responses in one iteration), so a
        # strict max_idle would close and redial connections the very next requests need.
        # Allow a bounded overshoot here; the sweeper trims the pool back to max_idle.
        if len(self.idle) >= self.max_idle * IDLE_BURST_FACTOR or self.idle_timeout_s <= 0:
            conn.close()
            return
        if self.idle_limit is not None:
            self.idle_limit.make_room()
        conn.idle_since = self.clock.now
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """Called when a connection closed."""
        if conn.counted:
            conn.counted = False
            if self.active > 0:
                self.active -= 1
            if self.waiters:
                self._wake(None)  # a slot is free: a waiter may dial
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def sweep(self, now: float) -> None:
        # Oldest idle connections are at the front (LIFO reuse pops from the back).
        idle = self.idle
        cutoff = now - self.idle_timeout_s
        while idle and idle[0].idle_since < cutoff:
            idle.pop(0).close()
        # Keep at most max_idle connections idle across sweeps (the least recently used go).
        while len(idle) > self.max_idle and idle[0].idle_since < now - SWEEP_INTERVAL_S:
            idle.pop(0).close()

    def close_all(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


class _LoopClock:
    __slots__ = ("loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    @property
    def now(self) -> float:
        return self.loop.time()


class PoolManager:
    """All pools of one worker, with the idle sweeper.

    `now` is a coarse clock (updated every SWEEP_INTERVAL_S) for idle bookkeeping and passive
    health expiry, so the per-request path reads no clock.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, resolver: Resolver | None = None) -> None:
        self.loop = loop
        self.now = loop.time()
        self.resolver = resolver or Resolver()
        self.pools: dict[tuple[Any, ...], ConnectionPool] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def get(self, key: tuple[Any, ...], **kwargs: Any) -> ConnectionPool:
        pool = self.pools.get(key)
        if pool is None:
            host, port = key[0], key[1]
            pool = ConnectionPool(
                self.loop, host, port, resolver=self.resolver, clock=self, **kwargs
            )
            self.pools[key] = pool
            if self._sweeper is None:
                self.now = self.loop.time()
                self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)
        return pool

    def _sweep(self) -> None:
        now = self.now = self.loop.time()
        for pool in self.pools.values():
            pool.sweep(now)
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self.pools.values():
            pool.close_all()
