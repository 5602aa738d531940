"""The admin listener of the running process: binds the config's `admin` address (through
proxy.listen, the one socket binder) and serves proxy.admin.api on it, following each loaded
config's `admin` object (`disabled`, `listen`, `enforce_origin`, `origins`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

from aiohttp import web

from proxy.admin.api import AdminState, admin_state, build_admin_app
from proxy.admin.autosave import autosave_path
from proxy.admin.controller import AdminController
from proxy.admin.origins import AccessPolicy, AdminAddress, admin_settings, parse_admin_listen
from proxy.listen import bind_tcp, bind_unix
from proxy.metrics import ProxyMetrics

log = logging.getLogger("pyproxy.admin")

# Caddy gives an old admin server 10 s to finish its requests when it is replaced or stopped.
ADMIN_SHUTDOWN_TIMEOUT_S = 10.0
# How long a replaced admin listener keeps running so the response to the request that replaced
# it (a /load) is written before the socket closes.
REPLACE_DELAY_S = 0.1


def bind_admin_sockets(addr: AdminAddress) -> list[socket.socket]:
    """Bound, listening sockets for the admin address, through proxy.listen's binder (raises
    its ListenError, which names the address).

    `localhost` gets 127.0.0.1 and, when the host has IPv6, ::1 on the same port: clients
    resolve localhost either way (Go's net.Listen would take 127.0.0.1 alone). A unix socket
    replaces only a stale socket file, never one a live server still answers on.
    """
    if addr.is_unix:
        return [bind_unix(addr.host, take_over=False)]
    if addr.host != "localhost":
        return bind_tcp(addr.network, addr.host, addr.port)
    socks = bind_tcp("tcp4", "127.0.0.1", addr.port)
    if addr.network != "tcp4":
        with contextlib.suppress(OSError):
            socks += bind_tcp("tcp6", "::1", int(socks[0].getsockname()[1]))
    return socks


class AdminServer:
    """The admin listener of the running process. It follows the `admin` object of each loaded
    config: a changed `listen` binds the new address first and then closes the old one; changed
    origins apply in place; `disabled` closes it."""

    def __init__(
        self,
        controller: AdminController,
        *,
        metrics: ProxyMetrics | None = None,
        persist: bool = True,
    ) -> None:
        self.controller = controller
        self.metrics = metrics
        self.persist = persist
        self.address: AdminAddress | None = None
        self.sockets: list[socket.socket] = []
        self._runner: web.AppRunner | None = None
        self._state: AdminState | None = None
        self._settings: tuple[bool, str, bool, list[str] | None] | None = None
        self._lock = asyncio.Lock()

    @property
    def serving(self) -> bool:
        return self._runner is not None

    @property
    def port(self) -> int:
        """The bound TCP port (useful with `listen: "127.0.0.1:0"`), 0 for unix sockets."""
        if not self.sockets or self.address is None or self.address.is_unix:
            return 0
        return int(self.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """A base URL a client on this machine can use (tcp listeners)."""
        assert self.address is not None
        host = self.address.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        bracketed = f"[{host}]" if ":" in host else host
        return f"http://{bracketed}:{self.port}"

    async def update(self, admin_config: Any) -> None:
        """Apply a (new) config's `admin` object. Raises ConfigError or OSError when a new
        listener cannot be bound; the old listener then stays."""
        async with self._lock:
            await self._apply(admin_config)

    async def _apply(self, admin_config: Any) -> None:
        settings = admin_settings(admin_config)
        if settings == self._settings and (self.serving or settings[0]):
            return
        disabled, listen, enforce_origin, origins = settings
        if disabled:
            log.warning("admin endpoint disabled")
            await self._close_runner(delay=True)
            self._settings = settings
            return
        addr = parse_admin_listen(listen)
        if self.serving and self._state is not None and addr == self.address:
            # Same socket: swap the request policy in place, no rebind.
            bound = self._bound_address()
            self._state.policy = AccessPolicy.for_listener(bound, enforce_origin, origins)
            self._settings = settings
            return
        socks = bind_admin_sockets(addr)
        try:
            bound = AdminAddress(
                addr.network,
                addr.host,
                0 if addr.is_unix else int(socks[0].getsockname()[1]),
            )
            # Port 0 resolves at bind time; the allowed Host values use the real port.
            app = build_admin_app(
                self.controller,
                listen=str(bound),
                enforce_origin=enforce_origin,
                origins=origins,
                metrics=self.metrics,
                persist_path=autosave_path() if self.persist else None,
            )
            state = admin_state(app)
            state.on_admin_change = self.update
            runner = web.AppRunner(
                app,
                access_log=None,
                handle_signals=False,
                shutdown_timeout=ADMIN_SHUTDOWN_TIMEOUT_S,
            )
            await runner.setup()
            for sock in socks:
                await web.SockSite(runner, sock).start()
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        await self._close_runner(delay=self.serving)
        self._runner, self._state, self.sockets = runner, state, socks
        self.address, self._settings = addr, settings
        log.info(
            "admin endpoint started: address=%s enforce_origin=%s origins=%s",
            bound,
            enforce_origin,
            [a.host if not a.scheme else f"{a.scheme}://{a.host}" for a in state.policy.allowed],
        )
        if not state.policy.enforce_host:
            log.warning("admin endpoint on open interface; host checking disabled: %s", bound)

    def _bound_address(self) -> AdminAddress:
        assert self.address is not None
        if self.address.is_unix:
            return self.address
        return AdminAddress(self.address.network, self.address.host, self.port)

    async def _close_runner(self, delay: bool) -> None:
        runner, socks, address = self._runner, self.sockets, self.address
        self._runner, self._state, self.sockets = None, None, []
        if runner is None:
            return

        async def shutdown() -> None:
            if delay:
                # The request that caused this change is still being answered on this runner.
                await asyncio.sleep(REPLACE_DELAY_S)
            await runner.cleanup()
            for sock in socks:
                sock.close()
            if address is not None and address.is_unix:
                with contextlib.suppress(OSError):
                    os.unlink(address.host)

        if delay:
            task = asyncio.ensure_future(shutdown())
            _PENDING.add(task)
            task.add_done_callback(_PENDING.discard)
        else:
            await shutdown()

    async def close(self) -> None:
        """Stop serving (waits up to ADMIN_SHUTDOWN_TIMEOUT_S for requests in progress)."""
        async with self._lock:
            await self._close_runner(delay=False)
            self._settings = None


_PENDING: set[asyncio.Task[None]] = set()


async def start_admin_server(
    controller: AdminController,
    admin_config: dict[str, Any] | None,
    *,
    metrics: ProxyMetrics | None = None,
    persist: bool = True,
) -> AdminServer:
    """Start the admin endpoint for a config's `admin` object (None: the default,
    `localhost:2019`). With `disabled: true` the returned server is not serving (a later
    `update` can start it). Raises ConfigError for a bad `listen`, OSError when it cannot bind —
    Caddy refuses to start in both cases."""
    server = AdminServer(controller, metrics=metrics, persist=persist)
    await server.update(admin_config)
    return server
