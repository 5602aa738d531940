"""The supervisor: the `pyproxy run` parent process.

It owns what there is one of: reading and validating configs, the admin API (proxy.admin), the
signals, `--watch`, and metrics aggregation. It forks the workers (proxy.worker) before it
starts its own event loop (forking a process with a running loop is unsafe) and then drives
them over control channels (proxy.control). It always forks, also for `--workers 1`, so there
is one code path for reloads.

A config change (startup, `POST /load`, `pyproxy reload`, SIGUSR1, `--watch`) is two-phase:
the config is adapted and validated here, every worker `prepare`s it beside the running one
(binding new addresses, building routes and pools, loading certificates), and only when all
succeeded are they told to `commit`; otherwise `abort`, the old config stays in service and
the error goes back to the caller (the admin API answers 400 `{"error": ...}`).

Signals (as Caddy): SIGINT/SIGTERM stop gracefully — wait `shutdown_delay`, close the
listeners, let in-flight requests finish within `grace_period` (default: no limit); a second
SIGINT/SIGTERM kills the workers. SIGUSR1 reloads the file given to `run`. SIGHUP is ignored,
like Caddy.

Exit codes (Caddy's): 0 stopped normally; 1 failed to start (bad config, a port or the admin
address could not be bound) or a worker died; 2 forced stop (second signal, SIGQUIT); 3 a
worker failed while stopping.
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
import sys
import time
from typing import Any

from config.errors import ConfigError
from config.model import Config
from proxy import native
from proxy.admin import AdminServer, ReloadError, start_admin_server, strip_meta_fields
from proxy.control import Channel, ControlError
from proxy.metrics import ProxyMetrics, render_snapshots

log = logging.getLogger("pyproxy")

EXIT_OK = 0
EXIT_FAILED_START = 1
EXIT_FORCED = 2
EXIT_FAILED_QUIT = 3
WATCH_INTERVAL_S = 1.0
# How long a scrape or an upstream listing waits for a worker's answer.
WORKER_QUERY_TIMEOUT_S = 5.0
# After `stop` was answered, how long a worker may take to exit before it is killed.
WORKER_EXIT_TIMEOUT_S = 10.0


def validate(config: dict[str, Any]) -> Config:
    """Everything about a config that can be checked without binding: certificates plan,
    manual certificate files, the typed model. Raises ConfigError."""
    from config.model import load_model
    from proxy.certs import prepare_certificates
    from proxy.tls import TLSConfigError, check_tls_config

    setup = prepare_certificates(strip_meta_fields(config))
    model = load_model(setup.config)
    try:
        check_tls_config(setup.config)
    except TLSConfigError as exc:
        raise ConfigError(str(exc)) from exc
    return model


def file_signature(path: str | None) -> tuple[int, int] | None:
    """What `--watch` compares: modification time and size of the config file."""
    try:
        st = os.stat(path or "Caddyfile")
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def read_config_file(args: argparse.Namespace) -> dict[str, Any]:
    from config.source import load_config

    config, warnings = load_config(args.config, args.adapter)
    for w in warnings:
        print(f"WARN {getattr(w, 'message', w)}", file=sys.stderr)
    return dict(config)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ConfigError) and exc.location and exc.location not in str(exc):
        return f"{exc.location}: {exc}"
    if isinstance(exc, OSError) and exc.strerror and not str(exc).startswith("["):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _stamp(value: Any) -> str:
    # ISO-8601 UTC strings of one format compare in time order; missing sorts first.
    return value if isinstance(value, str) else ""


def merge_certificate_status(per_worker: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One entry per name from every worker's `CertRuntime.status()`.

    Each worker runs its own manager for the same names (they coordinate through storage
    locks), so a worker that lost the lock race may still say `pending` while another holds a
    fresh certificate, and only the worker whose order failed knows the error. The merged entry
    is the one with the latest `not_after` (a valid certificate beats none), completed with the
    most recent error any worker saw and the highest failure count.
    """
    by_name: dict[str, list[dict[str, Any]]] = {}
    for entries in per_worker:
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                by_name.setdefault(entry["name"], []).append(entry)
    merged: list[dict[str, Any]] = []
    for name in sorted(by_name):
        entries = by_name[name]
        freshest = max(
            entries, key=lambda e: (_stamp(e.get("not_after")), e.get("state") == "valid")
        )
        best: dict[str, Any] = dict(freshest)
        failed = [e for e in entries if e.get("last_error")]
        if failed and not best.get("last_error"):
            latest = max(failed, key=lambda e: _stamp(e.get("last_error_at")))
            best["last_error"] = latest["last_error"]
            best["last_error_at"] = latest.get("last_error_at")
            best["next_attempt"] = latest.get("next_attempt")
            if not best.get("not_after"):
                best["state"] = latest.get("state", best.get("state"))
        failures = [int(e.get("failures") or 0) for e in entries]
        if "failures" in best or any(failures):
            best["failures"] = max(failures)
        merged.append(best)
    return merged


class WorkerHandle:
    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.channel: Channel | None = None
        self.serving: asyncio.Task[None] | None = None

    async def request(self, op: str, timeout_s: float | None = None, **fields: Any) -> Any:
        assert self.channel is not None
        return await self.channel.request(op, timeout_s, **fields)


class Supervisor:
    """The running instance; implements proxy.admin.AdminController."""

    def __init__(
        self, args: argparse.Namespace, workers: list[WorkerHandle], config: dict[str, Any]
    ) -> None:
        self.args = args
        self.workers = workers
        self.config = config
        self.model: Config | None = None
        self.metrics = ProxyMetrics()
        self.admin: AdminServer | None = None
        self.exit_code = EXIT_OK
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._signals = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.file_signature: tuple[int, int] | None = None

    # -- AdminController --------------------------------------------------------------------

    async def load(self, config: dict[str, Any], force: bool) -> None:
        async with self._lock:
            if not force and config == self.config:
                log.info("config is unchanged")
                return
            try:
                model = validate(config)
                await self._apply(strip_meta_fields(config))
            except BaseException:
                self.metrics.record_reload(False)
                raise
            self.config, self.model = config, model
            self.metrics.record_reload(True)
            log.info("config loaded")

    async def current_config(self) -> dict[str, Any]:
        return self.config

    async def stop(self) -> None:
        self._stop.set()

    async def upstreams(self) -> list[dict[str, Any]]:
        answers = await asyncio.gather(
            *(w.request("upstreams", WORKER_QUERY_TIMEOUT_S) for w in self.workers)
        )
        merged: dict[str, dict[str, Any]] = {}
        for answer in answers:
            for up in answer.get("upstreams", []):
                cur = merged.setdefault(
                    up["address"], {"address": up["address"], "num_requests": 0, "fails": 0}
                )
                cur["num_requests"] += int(up.get("num_requests", 0))
                cur["fails"] += int(up.get("fails", 0))
        return list(merged.values())

    async def metrics_text(self) -> str:
        answers = await asyncio.gather(
            *(w.request("metrics", WORKER_QUERY_TIMEOUT_S) for w in self.workers)
        )
        return render_snapshots([self.metrics.snapshot(), *(a["snapshot"] for a in answers)])

    async def certificates(self) -> list[dict[str, Any]]:
        answers = await asyncio.gather(
            *(w.request("certificates", WORKER_QUERY_TIMEOUT_S) for w in self.workers)
        )
        return merge_certificate_status([a.get("certificates", []) for a in answers])

    # -- config changes -----------------------------------------------------------------------

    async def _apply(self, config: dict[str, Any]) -> None:
        results = await asyncio.gather(
            *(w.request("prepare", config=config) for w in self.workers), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await asyncio.gather(
                *(w.request("abort") for w in self.workers), return_exceptions=True
            )
            raise ReloadError(str(errors[0]))
        results = await asyncio.gather(
            *(w.request("commit") for w in self.workers), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException):
                log.error("committing config in a worker: %s", r)

    async def reload_from_file(self, why: str) -> None:
        log.info("%s: reloading config from %s", why, self.args.config or "Caddyfile")
        try:
            config = await asyncio.to_thread(read_config_file, self.args)
            previous_admin = self.config.get("admin")
            await self.load(config, force=False)
        except (ConfigError, ReloadError, OSError) as exc:
            self.metrics.record_reload(False)
            log.error("%s: reload failed; old config stays: %s", why, _error_text(exc))
            return
        if self.admin is not None and config.get("admin") != previous_admin:
            try:
                await self.admin.update(config.get("admin"))
            except (ConfigError, OSError) as exc:
                log.error("admin endpoint: %s", _error_text(exc))

    async def _watch(self) -> None:
        # The baseline was taken before the file was first read (see `run`), so a change made
        # while the instance was starting is not missed.
        last = self.file_signature
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            sig = file_signature(self.args.config)
            if sig is not None and sig != last:
                last = sig
                await self.reload_from_file("config file changed")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- lifecycle ------------------------------------------------------------------------------

    def _on_stop_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            self._stop.set()
            return
        log.warning("received %s again: forcing shutdown", signal.Signals(signum).name)
        self._force()

    def _force(self) -> None:
        self._signals = max(self._signals, 2)
        self.exit_code = EXIT_FORCED
        self._stop.set()
        for w in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)

    def _on_worker_gone(self, w: WorkerHandle, _task: Any = None) -> None:
        if not self._stop.is_set():
            log.error("worker %d exited unexpectedly; stopping", w.pid)
            self.exit_code = EXIT_FAILED_START
            self._stop.set()

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for w in self.workers:
            w.channel = await Channel.open(w.sock)
            w.serving = asyncio.ensure_future(w.channel.serve())
            w.serving.add_done_callback(functools.partial(self._on_worker_gone, w))
        try:
            self.model = validate(self.config)
            await self._apply(strip_meta_fields(self.config))
        except (ConfigError, ReloadError) as exc:
            print(f"Error: {_error_text(exc)}", file=sys.stderr)
            self._stop.set()
            await self._stop_workers()
            return EXIT_FAILED_START
        self.metrics.record_reload(True)
        try:
            self.admin = await start_admin_server(
                self, self.config.get("admin"), metrics=self.metrics
            )
        except (ConfigError, OSError) as exc:
            print(f"Error: starting admin endpoint: {_error_text(exc)}", file=sys.stderr)
            self._stop.set()
            await self._stop_workers()
            return EXIT_FAILED_START
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(
            signal.SIGUSR1, lambda: self._spawn(self.reload_from_file("SIGUSR1"))
        )
        # Caddy: SIGHUP is "sometimes sent outside of the user's control" and ignored; SIGQUIT
        # quits at once.
        loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP ignored"))
        loop.add_signal_handler(signal.SIGQUIT, self._force)
        if self.args.watch:
            self._spawn(self._watch())
        log.info("serving with %d worker(s)", len(self.workers))
        await self._stop.wait()
        log.info("shutting down")
        if self.admin is not None:
            with contextlib.suppress(Exception):
                await self.admin.close()
        delay = self.model.http.shutdown_delay_s if self.model and self.model.http else 0.0
        if delay and self.exit_code == EXIT_OK:
            # Caddy keeps serving for `shutdown_delay` before the grace period starts, so load
            # balancers see the instance go unhealthy first.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._until_forced(), delay)
        await self._stop_workers()
        for task in list(self._tasks):
            task.cancel()
        log.info("shutdown complete")
        return self.exit_code

    async def _until_forced(self) -> None:
        while self._signals < 2:
            await asyncio.sleep(0.05)

    async def _stop_workers(self) -> None:
        async def stop_one(w: WorkerHandle) -> None:
            if w.channel is not None and not w.channel.closed.is_set():
                with contextlib.suppress(ControlError, ConnectionError, asyncio.TimeoutError):
                    await w.request("stop")
            deadline = time.monotonic() + WORKER_EXIT_TIMEOUT_S
            while True:
                try:
                    pid, status = os.waitpid(w.pid, os.WNOHANG)
                except ChildProcessError:
                    return
                if pid:
                    if os.waitstatus_to_exitcode(status) not in (0, -signal.SIGKILL):
                        self.exit_code = self.exit_code or EXIT_FAILED_QUIT
                    return
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.pid, signal.SIGKILL)
                    deadline = time.monotonic() + WORKER_EXIT_TIMEOUT_S
                await asyncio.sleep(0.02)

        await asyncio.gather(*(stop_one(w) for w in self.workers))
        for w in self.workers:
            if w.channel is not None:
                w.channel.close()


def run(args: argparse.Namespace, workers: int) -> int:
    """`pyproxy run` after argument parsing: validate, fork the workers, supervise."""
    from proxy.tls import shared_ticket_secret
    from proxy.worker import worker_main

    # Said before any worker exists: which build serves (proxy/native.py).
    log.info("native build: %s", native.STATUS.describe())
    signature = file_signature(args.config)
    try:
        config = read_config_file(args)
        validate(config)
    except (ConfigError, OSError) as exc:
        print(f"Error: loading config: {_error_text(exc)}", file=sys.stderr)
        return EXIT_FAILED_START
    # Made before the fork, so every worker inherits it and derives the same TLS session ticket
    # keys: a ticket from one worker resumes on any other (proxy.tls.TicketKeys).
    shared_ticket_secret()
    handles: list[WorkerHandle] = []
    for _ in range(workers):
        parent_sock, child_sock = socket.socketpair()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            parent_sock.close()
            for h in handles:
                h.sock.close()
            code = 1
            try:
                code = worker_main(
                    child_sock, reuse_port=workers > 1, use_uvloop=not args.no_uvloop
                )
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        child_sock.close()
        handles.append(WorkerHandle(pid, parent_sock))
    supervisor = Supervisor(args, handles, config)
    supervisor.file_signature = signature
    return asyncio.run(supervisor.main())
