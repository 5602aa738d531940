"""`pyproxy run`: load the config, bind, serve until SIGINT/SIGTERM, then stop gracefully.

Lifecycle: load (adapt + model) → bind every listener (a bind failure is a startup error) →
build the runtime (routes, handlers, pools) → serve. With `--workers N > 1` the supervisor binds
one SO_REUSEPORT socket set per worker and forks; each worker has its own event loop and
upstream pools; the supervisor forwards SIGINT/SIGTERM and exits when all workers have.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any

from config.errors import ConfigError
from config.model import Config

log = logging.getLogger("pyproxy")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="config file (default ./Caddyfile)")
    parser.add_argument("--adapter", "-a", default=None, help="caddyfile or json (by file name)")
    parser.add_argument(
        "--workers",
        "-w",
        type=int,
        default=0,
        help="worker processes sharing the listeners via SO_REUSEPORT (default: one per core)",
    )
    parser.add_argument(
        "--envfile", default=None, help="KEY=VALUE file loaded into the environment"
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    parser.add_argument("--watch", action="store_true", help="(reserved) reload on config change")


def load_envfile(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[7:].lstrip()
            key, sep, value = line.partition("=")
            if not sep:
                raise ConfigError(f"{path}: malformed line (expected KEY=VALUE): {raw.strip()}")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            os.environ[key.strip()] = value


def load(args: argparse.Namespace) -> Config:
    from config.model import load_model
    from config.source import load_config

    config, warnings = load_config(args.config, args.adapter)
    for w in warnings:
        print(f"WARN {getattr(w, 'message', w)}", file=sys.stderr)
    return load_model(config)


def cmd_run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from proxy.listen import ListenError, open_listeners

    try:
        if args.envfile:
            load_envfile(args.envfile)
        model = load(args)
    except (ConfigError, OSError) as exc:
        print(f"Error: loading config: {exc}", file=sys.stderr)
        return 1
    workers = args.workers if args.workers > 0 else (os.cpu_count() or 1)
    http = model.http
    servers = dict(http.servers) if http is not None else {}
    try:
        socket_sets = [
            {
                name: open_listeners(srv.listen, reuse_port=workers > 1)
                for name, srv in servers.items()
            }
            for _ in range(workers)
        ]
    except ListenError as exc:
        print(f"Error: {exc.strerror}", file=sys.stderr)
        return 1
    if workers == 1:
        return _serve_worker(model, socket_sets[0], args)
    return _supervise(model, socket_sets, args)


def _supervise(
    model: Config, socket_sets: list[dict[str, list[socket.socket]]], args: argparse.Namespace
) -> int:
    pids: list[int] = []
    for i, socks in enumerate(socket_sets):
        pid = os.fork()
        if pid == 0:
            for j, other in enumerate(socket_sets):
                if j != i:
                    for lst in other.values():
                        for s in lst:
                            s.close()
            code = 1
            try:
                code = _serve_worker(model, socks, args)
            finally:
                os._exit(code)
        pids.append(pid)
    for socks in socket_sets:
        for lst in socks.values():
            for s in lst:
                s.close()

    def forward(signum: int, _frame: Any) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    code = 0
    remaining = set(pids)
    while remaining:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        remaining.discard(pid)
        rc = os.waitstatus_to_exitcode(status)
        if rc not in (0, -signal.SIGINT, -signal.SIGTERM):
            code = 1
            forward(signal.SIGTERM, None)
    return code


def _serve_worker(
    model: Config, socks: dict[str, list[socket.socket]], args: argparse.Namespace
) -> int:
    if not args.no_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    try:
        return asyncio.run(_serve(model, socks))
    except KeyboardInterrupt:
        return 0


# Seam for TLS termination: given a server's name and model, return the listener SSL context
# (None for plain HTTP). The certificate side (proxy.tls, automatic HTTPS) plugs in here.
TLSProvider = Callable[[str, Any], "ssl.SSLContext | None"]
tls_provider: TLSProvider | None = None


async def _serve(model: Config, socks: dict[str, list[socket.socket]]) -> int:
    from proxy.handlers import BuildContext
    from proxy.http.runtime import ServerRuntime
    from proxy.logs import AccessLog
    from proxy.upstream.pool import PoolManager
    from proxy.upstream.upstream import HostRegistry

    loop = asyncio.get_running_loop()
    pools = PoolManager(loop)
    registry = HostRegistry()
    access_log = AccessLog(model.logging)
    http = model.http
    runtimes: list[ServerRuntime] = []
    servers: list[asyncio.AbstractServer] = []
    hooks_start: list[Any] = []
    hooks_stop: list[Any] = []
    try:
        for name, srv in http.servers.items() if http is not None else []:
            ctx = BuildContext(
                loop,
                pools,
                registry,
                server_trusted=srv.trusted_proxies,
                access_logged=srv.logs is not None,
            )
            rt = ServerRuntime(srv, ctx, access_log)
            ssl_ctx = tls_provider(name, srv) if tls_provider is not None else None
            if srv.tls_connection_policies and ssl_ctx is None:
                log.warning("server %s: no TLS provider wired in; serving plain HTTP", name)
            scheme = "https" if ssl_ctx is not None else "http"
            hooks_start += ctx.on_start
            hooks_stop += ctx.on_stop
            runtimes.append(rt)
            for sock in socks.get(name, []):
                servers.append(
                    await loop.create_server(
                        functools.partial(rt.protocol_factory, scheme),
                        sock=sock,
                        backlog=1024,
                        ssl=ssl_ctx,
                    )
                )
            rt.start()
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    for hook in hooks_start:
        hook()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    addrs = [s.getsockname() for s in (x for lst in socks.values() for x in lst)]
    log.info("serving on %s", ", ".join(map(str, addrs)))
    await stop.wait()
    log.info("shutting down")
    for s in servers:
        s.close()
    grace = http.grace_period_s if http is not None else None
    await asyncio.gather(*(rt.shutdown(grace) for rt in runtimes))
    for hook in hooks_stop:
        res = hook()
        if asyncio.iscoroutine(res):
            with contextlib.suppress(Exception):
                await res
    pools.close()
    return 0
