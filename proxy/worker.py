"""A worker process: serves the configured servers and switches configs without dropping a
connection.

The supervisor (proxy.supervisor) forks the workers and talks to each over a control channel
(proxy.control). A worker never reads config files and never decides anything about reloads: it
is told `prepare` (build config N beside config N-1), then `commit` or `abort`, and answers
`metrics`, `upstreams`, `certificates` and `stop`.

Zero-downtime switching, per worker:
- Listening sockets are bound by the worker, keyed by their `NetworkAddress`. An address in both
  the old and the new config keeps its kernel socket: the new config gets an asyncio server on a
  `dup()` of it, started before the old config's server (on another dup) is closed, so the
  socket is never closed and its accept queue is never dropped. New addresses are bound during
  `prepare` (a bind error aborts the reload); addresses no longer used are closed after the
  switch. Each listening socket in service is also shared with the supervisor (proxy.control),
  which keeps a copy open and hands it to this worker's replacement should it die: a respawned
  worker starts with those sockets as its listeners, so the kernel queues connections across
  the respawn and the replacement never binds (no gap, no `Address already in use`).
- Connections are handed over: an idle keep-alive connection of a server whose listeners and
  scheme are unchanged moves to the new runtime at once; a busy one moves when its response is
  done (ServerRuntime.successor). In-flight requests finish on the old routes and upstream
  pools, which are closed when the old runtimes have no busy connection left (or after
  `grace_period`).
- Upgraded (WebSocket) connections survive when the new config has an identical
  `reverse_proxy` handler; otherwise they are closed after that handler's `stream_close_delay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

from config.errors import ConfigError
from config.model import Config, NetworkAddress, Route
from proxy.control import (
    AddressKey,
    Channel,
    ControlError,
    parse_listener_spec,
    share_listeners,
    withdraw_listeners,
)
from proxy.forkserver import set_process_name
from proxy.logs import apply_logging
from proxy.metrics import ProxyMetrics

log = logging.getLogger("pyproxy.worker")

# After a replaced config's servers stop watching their sockets: time for connections they
# had already accepted to get their transports (see Generation.stop_accepting).
ACCEPT_SETTLE_S = 0.05
# How long a stop waits for the answer to reach the supervisor before the process exits.
STOP_ANSWER_TIMEOUT_S = 2.0
# When the supervisor is gone (killed), requests in flight get at most this long (or the
# configured grace_period when shorter) before the worker exits: an orphan must not linger
# for an unlimited grace period. 10 s is what `docker stop` gives a container.
ORPHAN_GRACE_S = 10.0


def address_key(addr: NetworkAddress) -> AddressKey:
    return (addr.network, addr.host, addr.port_start, addr.port_end)


def http_metrics_enabled(model: Config) -> bool:
    """Caddy (2.8+) records `caddy_http_*` only when the http app has a `metrics` object (the
    `metrics` global option / server option)."""
    http = model.raw.get("apps", {}).get("http", {}) if isinstance(model.raw, dict) else {}
    return isinstance(http, dict) and "metrics" in http


def reverse_proxy_handlers(routes: tuple[Route, ...]) -> Iterator[Any]:
    """Every `reverse_proxy` handler's raw JSON in `routes`, subroutes included."""
    for route in routes:
        for h in route.handle:
            if h.name == "reverse_proxy":
                yield h.raw
            for attr in ("routes", "errors"):  # subroute
                sub = getattr(h, attr, None)
                if sub:
                    yield from reverse_proxy_handlers(sub)


class Generation:
    """Everything one config builds in one worker: runtimes, asyncio servers (created not
    serving), upstream pools, certificate runtime and the handlers' start/stop hooks."""

    def __init__(self, model: Config, cert_setup: Any) -> None:
        self.model = model
        self.cert_setup = cert_setup
        self.runtimes: dict[str, Any] = {}
        self.schemes: dict[str, str] = {}
        self.servers: list[asyncio.Server] = []
        self.hooks_start: list[Any] = []
        self.hooks_stop: list[Any] = []
        self.certs: Any = None
        self.pools: Any = None
        self.access_log: Any = None
        http = model.http
        self.grace_s = http.grace_period_s if http is not None else None
        self.shutdown_delay_s = http.shutdown_delay_s if http is not None else 0.0

    def addresses(self) -> set[NetworkAddress]:
        http = self.model.http
        return {a for srv in (http.servers.values() if http else ()) for a in srv.listen}

    async def build(
        self,
        loop: asyncio.AbstractEventLoop,
        registry: Any,
        metrics: ProxyMetrics | None,
        sockets_for: Callable[[NetworkAddress], list[socket.socket]],
    ) -> None:
        from proxy.handlers import BuildContext
        from proxy.http.runtime import ServerRuntime
        from proxy.logs import AccessLog
        from proxy.upstream.pool import PoolManager

        model = self.model
        self.pools = pools = PoolManager(loop)
        self.access_log = access_log = AccessLog(model.logging)
        http = model.http
        provider = None
        if self.cert_setup is not None:
            from proxy.certs import CertRuntime

            self.certs = certs = CertRuntime(self.cert_setup)
            await certs.start()
            provider = certs.tls_provider
        else:
            certs = None
        for name, srv in http.servers.items() if http is not None else []:
            ctx = BuildContext(
                loop,
                pools,
                registry,
                server_trusted=srv.trusted_proxies,
                access_logged=srv.logs is not None,
            )
            rt = ServerRuntime(srv, ctx, access_log, metrics=metrics)
            ssl_ctx = provider(name, srv) if provider is not None else None
            if srv.tls_connection_policies and ssl_ctx is None:
                log.warning("server %s: no TLS provider wired in; serving plain HTTP", name)
            scheme = "https" if ssl_ctx is not None else "http"
            self.hooks_start += ctx.on_start
            self.hooks_stop += ctx.on_stop
            self.runtimes[name] = rt
            self.schemes[name] = scheme
            factory: Callable[[], asyncio.Protocol] = functools.partial(rt.protocol_factory, scheme)
            if certs is not None:
                from proxy.certs import gate_protocol_factory

                if ssl_ctx is None:  # HTTP-01 on every plain-HTTP listener, before any route
                    rt.intercept = certs.intercept_http01
                factory = gate_protocol_factory(factory, certs.handshake_check(name))
            for addr in srv.listen:
                for sock in sockets_for(addr):
                    # A dup per config: closing this config's asyncio server closes only the
                    # dup, never the listening socket shared with the next config.
                    self.servers.append(
                        await loop.create_server(
                            factory,
                            sock=sock.dup(),
                            backlog=1024,
                            ssl=ssl_ctx,
                            start_serving=False,
                        )
                    )

    async def start(self) -> None:
        for server in self.servers:
            await server.start_serving()
        for rt in self.runtimes.values():
            rt.start()
        for hook in self.hooks_start:
            hook()

    def close_servers(self) -> None:
        for server in self.servers:
            server.close()

    async def stop_accepting(self) -> None:
        """Close this config's asyncio servers without losing a connection they accepted.

        The stock asyncio loop creates a connection's transport in a task after `accept()`, and
        refuses to attach it to a server closed in between (the connection is then reset). So
        stop watching the sockets first, let those tasks run, then close. (uvloop creates the
        transport at accept time; removing a reader it does not know is a no-op.)
        """
        loop = asyncio.get_running_loop()
        for server in self.servers:
            for sock in server.sockets or ():
                with contextlib.suppress(Exception):
                    loop.remove_reader(sock.fileno())
        await asyncio.sleep(ACCEPT_SETTLE_S)
        self.close_servers()

    async def release(self) -> None:
        """Stop hooks, certificates and pools (after the runtimes are done with them)."""
        for hook in self.hooks_stop:
            with contextlib.suppress(Exception):
                res = hook()
                if asyncio.iscoroutine(res):
                    await res
        if self.certs is not None:
            with contextlib.suppress(Exception):
                await self.certs.stop()
        if self.pools is not None:
            self.pools.close()
        if self.access_log is not None:
            self.access_log.close()

    async def discard(self) -> None:
        """Undo a prepared generation that will never serve."""
        self.close_servers()
        await self.release()


class Worker:
    """`share`: this worker's end of the listener-sharing socket (None: not shared).
    `inherited`: the listening sockets of the worker this one replaces, by address; they are
    this worker's listeners from the start, so its first config reuses them instead of binding,
    and the first commit closes (and withdraws) those the config no longer has."""

    def __init__(
        self,
        reuse_port: bool,
        share: socket.socket | None = None,
        inherited: dict[NetworkAddress, list[socket.socket]] | None = None,
    ) -> None:
        from proxy.upstream.upstream import HostRegistry

        self.reuse_port = reuse_port
        self.share = share
        self.loop = asyncio.get_running_loop()
        # Upstream state (request counts, failures) outlives configs, as in Caddy.
        self.registry = HostRegistry()
        self.metrics = ProxyMetrics()
        self.listeners: dict[NetworkAddress, list[socket.socket]] = dict(inherited or {})
        self.current: Generation | None = None
        self._pending: tuple[Generation, dict[NetworkAddress, list[socket.socket]]] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self.stopped = asyncio.Event()

    # -- control messages ---------------------------------------------------------------------

    async def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        if op == "prepare":
            async with self._lock:
                try:
                    await self.prepare(msg["config"])
                except ConfigError as exc:
                    loc = exc.location
                    raise ConfigError(f"{loc}: {exc}" if loc and loc not in str(exc) else str(exc))
                except OSError as exc:
                    # ListenError's strerror names the address: "listening on HOST:PORT: ..."
                    raise RuntimeError(exc.strerror or str(exc)) from None
            return {}
        if op == "commit":
            async with self._lock:
                await self.commit()
            return {}
        if op == "abort":
            async with self._lock:
                await self.abort()
            return {}
        if op == "metrics":
            self._record_upstream_health()
            return {"snapshot": self.metrics.snapshot()}
        if op == "certificates":
            # The generation in service (a prepared one may not commit).
            certs = self.current.certs if self.current is not None else None
            return {"certificates": certs.status() if certs is not None else []}
        if op == "certificates_changed":
            # The node's manager stored a certificate (proxy.node_certs): serve it now, in the
            # config in service and in one prepared beside it.
            gens = [self.current, self._pending[0] if self._pending is not None else None]
            for gen in gens:
                if gen is not None and gen.certs is not None:
                    await gen.certs.refresh_from_storage()
            return {}
        if op == "upstreams":
            now = self.loop.time()
            hosts = self.registry._hosts
            return {
                "upstreams": [
                    {"address": dial, "num_requests": st.num_requests, "fails": st.fails(now)}
                    for dial, st in hosts.items()
                ]
            }
        if op == "stop":
            async with self._lock:
                await self.stop()
            return {}
        raise ValueError(f"unknown control operation {op!r}")

    def _record_upstream_health(self) -> None:
        # Healthy = no remembered failure (passive checks) — what `/reverse_proxy/upstreams`
        # reports as `fails`; set at scrape time instead of on every state change.
        now = self.loop.time()
        self.metrics.reset_upstreams()
        for dial, st in self.registry._hosts.items():
            self.metrics.upstream_health(dial).set(0.0 if st.fails(now) else 1.0)

    # -- reload -------------------------------------------------------------------------------

    async def prepare(self, config: dict[str, Any]) -> None:
        from config.model import load_model
        from proxy.certs import prepare_certificates
        from proxy.listen import open_listeners

        if self._pending is not None:
            await self.abort()
        cert_setup = prepare_certificates(config)
        model = load_model(cert_setup.config)
        gen = Generation(model, cert_setup)
        new_socks: dict[NetworkAddress, list[socket.socket]] = {}
        try:
            wanted = gen.addresses()
            v4_any_ports = {
                p for a in wanted if not a.is_unix and a.host == "0.0.0.0" for p in a.ports()
            }
            for addr in sorted(wanted, key=repr):
                if addr not in self.listeners:
                    new_socks[addr] = open_listeners(
                        [addr], reuse_port=self.reuse_port, v4_any_ports=v4_any_ports
                    )
            metrics = self.metrics if http_metrics_enabled(model) else None
            await gen.build(
                self.loop,
                self.registry,
                metrics,
                lambda a: self.listeners.get(a) or new_socks.get(a) or [],
            )
        except BaseException:
            await gen.discard()
            for socks in new_socks.values():
                for s in socks:
                    s.close()
            raise
        self._pending = (gen, new_socks)

    async def abort(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        gen, new_socks = pending
        await gen.discard()
        for socks in new_socks.values():
            for s in socks:
                s.close()

    async def commit(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            raise ConfigError("no prepared config to commit")
        gen, new_socks = pending
        self.listeners.update(new_socks)
        for addr, socks in new_socks.items():
            self._share(addr, socks)
        # Start the new servers before closing the old ones: both accept from the same kernel
        # sockets for a moment, so no connection finds the port closed.
        await gen.start()
        old, self.current = self.current, gen
        apply_logging(gen.model.logging)  # the process log follows the config in effect
        if old is not None:
            self._hand_over(old, gen)
            await old.stop_accepting()
            task = asyncio.ensure_future(self._retire(old, gen))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        wanted = gen.addresses()
        for addr in [a for a in self.listeners if a not in wanted]:
            self._share(addr, None)
            for s in self.listeners.pop(addr):
                s.close()
        # `/reverse_proxy/upstreams` and the health gauge list the new config's upstreams only
        # (Caddy drops hosts no handler references). Dynamic upstreams re-register on use.
        http = gen.model.http
        self.registry.retain(
            str(u.get("dial"))
            for srv in (http.servers.values() if http is not None else ())
            for h in reverse_proxy_handlers(srv.routes + srv.errors)
            for u in h.get("upstreams") or ()
            if isinstance(u, dict)
        )

    def _share(self, addr: NetworkAddress, socks: list[socket.socket] | None) -> None:
        """Tell the supervisor about listening sockets now in service (None: withdrawn)."""
        if self.share is None:
            return
        try:
            if socks is None:
                withdraw_listeners(self.share, address_key(addr))
            else:
                share_listeners(self.share, address_key(addr), socks)
        except OSError as exc:
            # The supervisor is gone (this worker stops when its control channel closes) or
            # out of descriptors: a replacement would then bind the address itself.
            log.warning("sharing listener %s with the supervisor: %s", addr, exc)

    @staticmethod
    def _hand_over(old: Generation, new: Generation) -> None:
        """Point each old runtime at the new runtime that shares the most listen addresses with
        it under the same scheme: its connections move there (an added or removed second
        address does not cut the connections of the first)."""
        for name, rt in old.runtimes.items():
            mine = set(rt.server.listen)
            best, best_shared = None, 0
            for new_name, new_rt in new.runtimes.items():
                if new.schemes[new_name] != old.schemes[name]:
                    continue
                shared = len(mine & set(new_rt.server.listen))
                if shared > best_shared:
                    best, best_shared = new_rt, shared
            rt.successor = best

    async def _retire(self, old: Generation, new: Generation | None) -> None:
        keep: list[Any] = []
        if new is not None and new.model.http is not None:
            for srv in new.model.http.servers.values():
                keep.extend(reverse_proxy_handlers(srv.routes + srv.errors))

        def keep_tunnel(handler: Any) -> bool:
            return handler is not None and handler.raw in keep

        try:
            await asyncio.gather(
                *(rt.retire(old.grace_s, keep_tunnel) for rt in old.runtimes.values())
            )
        finally:
            await old.release()

    async def stop(self, max_grace_s: float | None = None) -> None:
        """Graceful stop: close the listeners, let in-flight requests finish (grace period,
        at most `max_grace_s` when given)."""
        await self.abort()
        gen, self.current = self.current, None
        if gen is not None:
            if max_grace_s is not None:
                gen.grace_s = min(gen.grace_s or max_grace_s, max_grace_s)
            await gen.stop_accepting()
        for socks in self.listeners.values():
            for s in socks:
                s.close()
        self.listeners.clear()
        if gen is not None:
            for rt in gen.runtimes.values():
                rt.successor = None
            await self._retire(gen, None)
        if self._retiring:
            # Configs replaced by earlier reloads finish their requests too, within the bound.
            await asyncio.wait(set(self._retiring), timeout=max_grace_s)
        self.stopped.set()


async def _worker_main(
    sock: socket.socket,
    reuse_port: bool,
    share: socket.socket | None,
    inherited: dict[NetworkAddress, list[socket.socket]] | None,
) -> int:
    worker = Worker(reuse_port, share, inherited)
    channel = await Channel.open(sock, worker.handle)
    serving = asyncio.ensure_future(channel.serve())
    stopped = asyncio.ensure_future(worker.stopped.wait())
    await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not worker.stopped.is_set():
        # The supervisor is gone (crashed or killed): stop serving rather than run unmanaged.
        # The listeners close at once (the supervisor's copies died with it), so a restarted
        # instance can bind the ports; requests in flight get a bounded grace.
        log.warning("control channel closed (the supervisor is gone); stopping")
        await worker.stop(max_grace_s=ORPHAN_GRACE_S)
    else:
        # Let the answer to `stop` reach the supervisor.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(0.05), STOP_ANSWER_TIMEOUT_S)
    channel.close()
    serving.cancel()
    stopped.cancel()
    return 0


class SiblingQuiet(logging.Filter):
    """Installed in every worker but the first of a node: drops the lines below ERROR that state
    the node's shared state (marked `extra=acme_client.manager.NODE_STATE`: a certificate in
    service from storage, a lock held by "another instance"), which N workers would otherwise
    say N times (pyproxy issue #15). What a sibling did itself (an order, a challenge, a
    certificate obtained, a retry) is still logged: until certificates are managed once per
    node, whichever worker wins the storage lock does the work, and its log must say so."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not getattr(record, "node_state", False)


def quiet_sibling_logs() -> None:
    quiet = SiblingQuiet()
    for handler in logging.getLogger().handlers:
        handler.addFilter(quiet)


def worker_main(
    sock: socket.socket,
    reuse_port: bool,
    use_uvloop: bool,
    share: socket.socket | None = None,
    inherited: dict[NetworkAddress, list[socket.socket]] | None = None,
    reports_node: bool = True,
) -> int:
    """Entry point of a worker (forked at startup, or started by `spawned_worker_main`).
    Signals are the supervisor's business: a Ctrl-C reaches the whole process group, and the
    supervisor turns it into an orderly `stop`. `reports_node`: this worker logs the node's
    certificate events (the first worker); the others keep quiet about them."""
    if not reports_node:
        quiet_sibling_logs()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    set_process_name("pyproxy worker")
    if use_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    try:
        return asyncio.run(_worker_main(sock, reuse_port, share, inherited))
    except Exception:
        log.exception("worker %d failed", os.getpid())
        return 1


def run_spawned_worker(spec: dict[str, Any], fds: list[int]) -> int:
    """A replacement worker (forked by proxy.forkserver, or a new interpreter through
    `spawned_worker_main`). `spec`: `{"reuse_port", "uvloop", "listeners"}`; `fds`: its control
    channel, its listener-sharing socket, then the inherited listening sockets in the order of
    `spec["listeners"]` (proxy.control.ListenerCopies)."""
    if len(fds) < 2:
        raise ControlError(f"a worker needs at least 2 descriptors, got {len(fds)}")
    inherited = {
        NetworkAddress(*key): socks
        for key, socks in parse_listener_spec(spec["listeners"], fds[2:])
    }
    return worker_main(
        socket.socket(fileno=fds[0]),
        reuse_port=bool(spec["reuse_port"]),
        use_uvloop=bool(spec["uvloop"]),
        share=socket.socket(fileno=fds[1]),
        inherited=inherited,
        reports_node=bool(spec.get("reports_node", True)),
    )


def spawned_worker_main() -> None:
    """Entry point of a replacement worker started as a new interpreter (`python -c`) with
    `sys.argv[1]` = its spec as JSON, the descriptors (numbers unchanged) under `"fds"`."""
    import json
    import sys

    from proxy.app import configure_logging

    configure_logging()
    try:
        spec = json.loads(sys.argv[1])
        fds = [int(fd) for fd in spec["fds"]]
        code = run_spawned_worker(spec, fds)
    except (IndexError, KeyError, TypeError, ValueError, ControlError) as exc:
        print(f"Error: bad worker arguments: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code)
