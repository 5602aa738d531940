"""The runtime of one configured server (`apps.http.servers.NAME`) in one worker.

Owns what every connection of that server shares: compiled routes and error routes, limits and
timeouts, trusted proxies / client IP resolution, access logging, the set of live connections
with the timeout sweeper, and graceful shutdown.

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from config.model import Server, served_protocols
from proxy.handlers import BuildContext, build_handler
from proxy.http.exchange import Exchange, HandlerError
from proxy.http.server import HTTP1Connection
from proxy.http.status_text import status_text
from proxy.logs import (
    AccessLog,
    access_entry,
    log_handler_error,
    mapped_logger_name,
    site_logger_name,
)
from proxy.metrics import HandlerMetrics, ProxyMetrics
from proxy.route import RouteList

log = logging.getLogger("pyproxy.server")

SWEEP_INTERVAL_S: Final = 1.0


class ServerRuntime:
    def __init__(
        self,
        server: Server,
        ctx: BuildContext,
        access_log: AccessLog | None,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        self.server = server
        self.loop = ctx.loop
        self.timeouts = server.timeouts
        self.max_header_bytes = server.max_header_bytes
        protocols = served_protocols(server.protocols)  # unset: h1 h2
        self.serve_h2 = "h2" in protocols  # over TLS, chosen by ALPN
        self.serve_h2c = "h2c" in protocols  # over plain HTTP, with prior knowledge
        self.accepting = True
        # HTTP1Connection and, on servers that serve h2 or h2c, HTTP2Connection
        # (proxy/http/h2server.py).
        self.connections: set[Any] = set()
        # After a reload: the runtime serving the same listeners under the new config. A
        # connection moves there when it is between requests (see HTTP1Connection.adopt).
        self.successor: ServerRuntime | None = None
        # Answers some requests before any route (HTTP-01 challenges on plain-HTTP servers):
        # True when it did. Set by the worker.
        self.intercept: Callable[[Exchange], bool] | None = None

        def build(h: Any) -> Any:
            handler = build_handler(h, ctx)
            if metrics is not None:
                # Counted once per request, under the first top-level handler it enters (for a
                # Caddyfile site that is the site's `subroute`, a series Caddy exports too).
                handler = _Instrumented(handler, metrics.handler(server.name, h.name))
            return handler

        self.routes = RouteList(server.routes, build)
        self.errors = RouteList(server.errors, build) if server.errors else None
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in server.trusted_proxies]
        self.client_ip_headers = server.client_ip_headers
        self.access_log = access_log if server.logs is not None else None
        self._sweeper: asyncio.TimerHandle | None = None
        self.now = self.loop.time()  # coarse clock for connection deadlines

    # -- connections -------------------------------------------------------------------------

    def protocol_factory(self, scheme: str = "http") -> asyncio.Protocol:
        if scheme == "https" and self.serve_h2:
            # The protocol is known after the TLS handshake (ALPN): see proxy/http/alpn.py.
            from proxy.http.alpn import ALPNDispatch

            return ALPNDispatch(self, scheme)
        if scheme == "http" and self.serve_h2c:
            # The protocol is known from the first bytes (the HTTP/2 preface or not).
            from proxy.http.alpn import PrefaceSniff

            return PrefaceSniff(self, scheme)
        return HTTP1Connection(self, scheme)

    def start(self) -> None:
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def _sweep(self) -> None:
        now = self.now = self.loop.time()
        for conn in list(self.connections):
            conn.check_timeout(now)
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def latest(self) -> ServerRuntime:
        rt = self
        while rt.successor is not None:
            rt = rt.successor
        return rt

    async def retire(
        self, grace_s: float | None, keep_tunnel: Callable[[Any], bool] | None = None
    ) -> None:
        """Leave service after a reload. Connections move to `successor` when there is one
        (idle ones now, busy ones after their response); in-flight requests finish here, up
        to `grace_s`. Upgraded connections whose `reverse_proxy` handler is unchanged in the
        new config (`keep_tunnel`) stay open; others close after `stream_close_delay`."""
        self.accepting = False
        succ = self.successor
        for conn in list(self.connections):
            tunnel = conn.tunnel
            if tunnel is not None:
                handler = getattr(tunnel, "handler", None)
                if keep_tunnel is not None and keep_tunnel(handler):
                    if succ is not None:
                        conn.adopt(succ.latest())
                    continue
                delay = float(getattr(handler, "stream_close_delay_s", 0.0) or 0.0)
                if delay > 0:
                    self.loop.call_later(delay, conn.close)
                    self.connections.discard(conn)
                else:
                    conn.close()
            elif succ is not None and not conn.busy:
                conn.adopt(succ.latest())
            elif succ is None:
                conn.shutdown()
        deadline = self.loop.time() + (grace_s if grace_s else 1e9)
        while (
            any(c.busy for c in self.connections if c.tunnel is None)
            and self.loop.time() < deadline
        ):
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.tunnel is None or succ is None:
                conn.close()
        if self._sweeper is not None:
            self._sweeper.cancel()

    # -- requests ----------------------------------------------------------------------------

    def dispatch(self, ex: Exchange) -> None:
        intercept = self.intercept
        if intercept is not None and intercept(ex):
            return
        req = ex.req
        if self.trusted:
            self._resolve_client_ip(req)
        if not self.routes.serve(ex) and not ex.done and not ex.head_sent:
            # Caddy: a request no route handled gets an empty 200, written on the server's own
            # ResponseWriter, so the wrappers of deferred `header` ops and `encode` never see it.
            ex.head_hooks = None
            ex.respond(200, None)

    def _resolve_client_ip(self, req: Any) -> None:
        try:
            peer = ipaddress.ip_address(req.remote_ip)
        except ValueError:
            return
        if not any(peer in n for n in self.trusted):
            req.vars["_trusted_proxy"] = False
            return
        req.vars["_trusted_proxy"] = True
        for name in self.client_ip_headers:
            values = req.header_values(name)
            if not values:
                continue
            ips: list[str] = [p.strip() for v in values for p in v.split(",") if p.strip()]
            if not ips:
                continue
            if self.server.trusted_proxies_strict:
                # Right to left, the first address that is not a trusted proxy.
                for cand in reversed(ips):
                    try:
                        a = ipaddress.ip_address(cand)
                    except ValueError:
                        break
                    if not any(a in n for n in self.trusted):
                        req.client_ip = cand
                        return
                return
            cand = ips[0]
            try:
                ipaddress.ip_address(cand)
            except ValueError:
                continue
            req.client_ip = cand
            return

    def handle_error(self, ex: Exchange, err: HandlerError) -> None:
        req = ex.req
        v = req.vars
        v["_handler_error"] = err
        logs = self.server.logs
        suffix = site_logger_name(logs, req.host) if logs is not None else ""
        log_handler_error(ex, err.status, err.message, err.err_id, suffix)
        v["http.error"] = f"{err.status} {err.message}" if err.message else str(err.status)
        v["http.error.status_code"] = err.status
        v["http.error.status_text"] = status_text(err.status)  # Go's http.StatusText
        v["http.error.message"] = err.message
        v["http.error.id"] = err.err_id
        routes = ex.error_routes or self.errors
        # Caddy runs the error routes on the same ResponseWriter, so the header map keeps what
        # non-deferred `header` ops (and the Server header) put there. Deferred ops live in a
        # wrapper of that writer which the error chain does not use: they are dropped.
        ex.head_hooks = None
        ex.body_filter = None
        ex.status = err.status
        if routes is not None:
            ex.error_routes = None
            try:
                handled = routes.serve(ex)
            except Exception:
                log.exception("error route failed")
                handled = False
            if handled or ex.done or ex.head_sent:
                return
        ex.respond(err.status, None)

    def log_exchange(self, ex: Exchange, client_gone: bool = False) -> None:
        hm = ex.req.vars.pop("_metrics", None)
        if hm is not None:
            req = ex.req
            status = 499 if client_gone and not ex.head_sent else ex.status
            hm.finish(
                req.method,
                status,
                time.monotonic() - req.start_time,
                req.body_received,
                ex.bytes_written,
                None,
                "_handler_error" in req.vars,
            )
        al = self.access_log
        if al is None:
            return
        logs = self.server.logs
        assert logs is not None
        req = ex.req
        host = req.host.rsplit(":", 1)[0] if not req.host.endswith("]") else req.host
        mapped = mapped_logger_name(logs.logger_names, req.host)
        if mapped is None and logs.skip_unmapped_hosts:
            return
        if host in logs.skip_hosts:
            return
        name = mapped if mapped else logs.default_logger_name
        logger = f"http.log.access.{name}" if name else "http.log.access"
        status = ex.status
        if client_gone and not ex.head_sent:
            status = 499
        duration = time.monotonic() - req.start_time
        al.write(logger, access_entry(ex, duration, status, logger))


class _Instrumented:
    """A top-level handler that starts the request's `caddy_http_*` record; `log_exchange`
    finishes it when the exchange is over, however it ends."""

    __slots__ = ("hm", "inner")

    def __init__(self, inner: Any, hm: HandlerMetrics) -> None:
        self.inner = inner
        self.hm = hm

    def serve(self, ex: Exchange) -> bool:
        v = ex.req.vars
        if "_metrics" not in v:
            v["_metrics"] = self.hm
            self.hm.start()
        handled: bool = self.inner.serve(ex)
        return handled
