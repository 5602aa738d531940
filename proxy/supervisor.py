"""The supervisor: the `pyproxy run` parent process.

It owns what there is one of: reading and validating configs, the admin API (proxy.admin), the
signals, `--watch`, metrics aggregation and replacing dead workers. It forks the workers
(proxy.worker) before it starts its own event loop (forking a process with a running loop is
unsafe; replacements come from proxy.forkserver) and then drives them over control channels
(proxy.control). It always forks, also for `--workers 1`, so there is one code path for
reloads.

A config change (startup, `POST /load`, `pyproxy reload`, SIGUSR1, `--watch`) is two-phase:
the config is adapted and validated here, every worker `prepare`s it beside the running one
(binding new addresses, building routes and pools, loading certificates), and only when all
succeeded are they told to `commit`; otherwise `abort`, the old config stays in service and
the error goes back to the caller (the admin API answers 400 `{"error": ...}`).

A worker that exits while the instance serves (the OOM killer, a crash in a C extension, a
`kill -9`) is replaced, like nginx's master does, while the other workers go on serving: the
slot's replacement starts at once, or after a growing delay when the slot's workers keep dying
soon after they start (proxy.respawn decides), gets the current config and inherits the dead
worker's listening sockets, which the supervisor keeps open meanwhile (proxy.control), so the
kernel queues the connections that arrive during the respawn. Each replacement is logged and
counted in `pyproxy_worker_restarts_total`. A worker exiting during a stop is not replaced. If
the supervisor itself is killed, every worker sees its control channel close and stops.

Signals (as Caddy): SIGINT/SIGTERM stop gracefully — wait `shutdown_delay`, close the
listeners, let in-flight requests finish within `grace_period` (default: no limit); a second
SIGINT/SIGTERM kills the workers. SIGUSR1 reloads the file given to `run`. SIGHUP is ignored,
like Caddy.

Exit codes (Caddy's): 0 stopped normally; 1 failed to start (bad config, a port or the admin
address could not be bound, a worker died before serving); 2 forced stop (second signal,
SIGQUIT); 3 a worker failed while stopping.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from config.errors import ConfigError
from config.model import Config
from proxy import native
from proxy.admin.config_paths import strip_meta_fields
from proxy.admin.controller import ReloadError
from proxy.admin.server import AdminServer, start_admin_server
from proxy.certs import CertSetup
from proxy.control import (
    MAX_FDS_PER_MESSAGE,
    Channel,
    ChannelClosed,
    ControlError,
    ListenerCopies,
    listener_share_pair,
)
from proxy.forkserver import ForkServer, ForkServerGone
from proxy.logs import apply_logging, check_log_writers
from proxy.metrics import ProxyMetrics, cumulative_part, merge_snapshots, render_snapshots
from proxy.node_certs import NodeCertificates, announce
from proxy.respawn import RespawnPolicy, describe_exit

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
# How long a replacement worker may take to prepare and commit the config before it is killed.
WORKER_START_TIMEOUT_S = 60.0
# Where `pyproxy trust --install` puts the local root (proxy.trust_cli.SYSTEM_CA_DIR).
SYSTEM_TRUST_DIR = Path("/usr/local/share/ca-certificates")
# Between a worker's control channel closing and its exit status being there (milliseconds).
REAP_POLL_S = 0.01
# The directory holding the `proxy` package: a replacement worker imports from it.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
SPAWNED_WORKER_CODE = "from proxy.worker import spawned_worker_main; spawned_worker_main()"
# A fork server request carries all of a worker's descriptors in one message.
FORK_SERVER_MAX_FDS = MAX_FDS_PER_MESSAGE + 2


def validate(config: dict[str, Any]) -> Config:
    """Everything about a config that can be checked without binding: certificates plan,
    manual certificate files, the typed model. Raises ConfigError."""
    return validated(config)[0]


def validated(config: dict[str, Any]) -> tuple[Config, CertSetup]:
    """`validate`, also giving the certificate setup (the node's ACME managers run from it)."""
    from config.model import load_model
    from proxy.certs import prepare_certificates
    from proxy.tls import TLSConfigError, check_tls_config

    setup = prepare_certificates(strip_meta_fields(config))
    model = load_model(setup.config)
    try:
        check_tls_config(setup.config)
    except TLSConfigError as exc:
        raise ConfigError(str(exc)) from exc
    return model, setup


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
    """One entry per name from every worker's `CertRuntime.status()` (local-CA and file
    certificates; ACME names are the node's, proxy.node_certs).

    Each worker signs its own local-CA leaves (coordinated through storage locks), so a worker
    that lost the lock race may still say `pending` while another holds a fresh certificate, and
    only the worker whose attempt failed knows the error. The merged entry is the one with the
    latest `not_after` (a valid certificate beats none), completed with the most recent error
    any worker saw and the highest failure count.
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


def _worker_error(w: WorkerHandle, exc: BaseException, timeout_s: float | None) -> str:
    if isinstance(exc, ChannelClosed):
        return f"worker {w.pid} exited"
    if isinstance(exc, TimeoutError):
        return f"worker {w.pid} did not answer within {timeout_s}s"
    return str(exc) or type(exc).__name__


class WorkerHandle:
    """One worker process as the supervisor sees it: its control channel, its end of the
    listener-sharing socket (proxy.control), and, once it is gone, its wait status."""

    def __init__(
        self,
        pid: int,
        sock: socket.socket,
        share: socket.socket,
        process: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.pid = pid
        self.sock = sock
        self.share = share
        # Set for a replacement (a new interpreter): its returncode is set when it is reaped,
        # so subprocess never waits for a pid the supervisor already reaped.
        self.process = process
        self.started_at = time.monotonic()
        self.channel: Channel | None = None
        self.connected = asyncio.Event()
        # In service: it committed a config (reloads, scrapes and listings go to these).
        self.ready = False
        self.exited = asyncio.Event()
        self.wait_status = 0
        # Its metrics snapshot of the latest scrape.
        self.last_metrics: dict[str, Any] = {}
        self.watcher: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        closed = self.channel is not None and self.channel.closed.is_set()
        return not self.exited.is_set() and not closed

    @property
    def serving(self) -> bool:
        return self.ready and self.alive

    async def request(self, op: str, timeout_s: float | None = None, **fields: Any) -> Any:
        await self.connected.wait()
        assert self.channel is not None
        return await self.channel.request(op, timeout_s, **fields)

    def kill(self) -> None:
        if not self.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


class WorkerSlot:
    """A place for one worker: the process in it now, the supervisor's copies of the listening
    sockets it serves (handed to its replacement), and its quick-exit streak (proxy.respawn)."""

    def __init__(self, index: int, worker: WorkerHandle) -> None:
        self.index = index
        self.worker = worker
        self.listeners = ListenerCopies()
        self.quick_exits = 0


def spawn_interpreter(spec: dict[str, Any], fds: list[int]) -> subprocess.Popen[bytes]:
    """Start a replacement worker as a new interpreter, the way without a fork server
    (proxy.forkserver): it gets only the descriptors passed to it, but pays the imports the
    forked workers inherit (about half a second of CPU)."""
    # The replacement imports this very source tree, wherever the supervisor was started from.
    path = [str(PROJECT_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    sys.stdout.flush()
    sys.stderr.flush()
    return subprocess.Popen(
        [sys.executable, "-c", SPAWNED_WORKER_CODE, json.dumps({**spec, "fds": fds})],
        pass_fds=fds,
        env=env,
    )


class Supervisor:
    """The running instance; implements proxy.admin.AdminController."""

    def __init__(
        self,
        args: argparse.Namespace,
        workers: list[WorkerHandle],
        config: dict[str, Any],
        fork_server: ForkServer | None = None,
        respawn_policy: RespawnPolicy | None = None,
    ) -> None:
        self.args = args
        self.fork_server = fork_server
        self.slots = [WorkerSlot(i, w) for i, w in enumerate(workers)]
        self.reuse_port = len(workers) > 1
        self.respawn_policy = respawn_policy or RespawnPolicy()
        self.config = config
        self.model: Config | None = None
        self.metrics = ProxyMetrics()
        self.metrics.expose_restarts()
        # The counters of exited workers as last scraped (proxy.metrics.cumulative_part).
        self.retired_metrics: dict[str, Any] = {}
        self.admin: AdminServer | None = None
        # The node's ACME managers: created once the start succeeded (no CA contact before).
        self.node_certs: NodeCertificates | None = None
        # The start finished (config applied, admin endpoint up); a SIGUSR1 before that waits.
        self._started = False
        self._reload_asked = False
        self.exit_code = EXIT_OK
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._signals = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.file_signature: tuple[int, int] | None = None

    @property
    def workers(self) -> list[WorkerHandle]:
        """The process in each slot now (running or not)."""
        return [slot.worker for slot in self.slots]

    def serving_workers(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.serving]

    # -- AdminController --------------------------------------------------------------------

    async def load(self, config: dict[str, Any], force: bool) -> None:
        async with self._lock:
            if not force and config == self.config:
                log.info("config is unchanged")
                return
            try:
                model, setup = validated(config)
                check_log_writers(model.logging)
                await self._apply(strip_meta_fields(config), self.serving_workers())
            except BaseException:
                self.metrics.record_reload(False)
                raise
            self.config, self.model = config, model
            apply_logging(model.logging)  # the process log follows the config in effect
            self.metrics.record_reload(True)
            log.info("config loaded")
            if self.node_certs is None and self.admin is not None:
                # Loaded through the admin API while the start was finishing (listeners and the
                # admin endpoint are bound): the managers start with this config.
                self.node_certs = NodeCertificates(self._certificate_stored)
            if self.node_certs is not None:
                await self.node_certs.apply(setup)

    async def current_config(self) -> dict[str, Any]:
        return self.config

    async def stop(self) -> None:
        self._stop.set()

    async def upstreams(self) -> list[dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for answer in await self._ask_serving("upstreams"):
            for up in answer.get("upstreams", []):
                cur = merged.setdefault(
                    up["address"], {"address": up["address"], "num_requests": 0, "fails": 0}
                )
                cur["num_requests"] += int(up.get("num_requests", 0))
                cur["fails"] += int(up.get("fails", 0))
        return list(merged.values())

    async def metrics_text(self) -> str:
        serving = self.serving_workers()
        answers = await asyncio.gather(
            *(w.request("metrics", WORKER_QUERY_TIMEOUT_S) for w in serving),
            return_exceptions=True,
        )
        snapshots = [self.metrics.snapshot(), self.retired_metrics]
        for w, answer in zip(serving, answers, strict=True):
            if isinstance(answer, ChannelClosed):
                continue  # it exited meanwhile; its last scraped counts are retired
            if isinstance(answer, BaseException):
                raise answer
            w.last_metrics = answer["snapshot"]
            snapshots.append(w.last_metrics)
        return render_snapshots(snapshots)

    async def certificates(self) -> list[dict[str, Any]]:
        answers = await self._ask_serving("certificates")
        local = merge_certificate_status([a.get("certificates", []) for a in answers])
        acme = self.node_certs.status() if self.node_certs is not None else []
        return sorted(local + acme, key=lambda e: str(e.get("name")))

    def _certificate_stored(self) -> None:
        """A node manager put a new certificate in storage: the workers load it now."""
        self._spawn(announce(self.serving_workers(), WORKER_QUERY_TIMEOUT_S))

    async def _ask_serving(self, op: str) -> list[Any]:
        """The answers of the workers in service. One that exits meanwhile (it is being
        replaced) is left out; any other error is the caller's."""
        answers = await asyncio.gather(
            *(w.request(op, WORKER_QUERY_TIMEOUT_S) for w in self.serving_workers()),
            return_exceptions=True,
        )
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, ChannelClosed):
                raise answer
        return [a for a in answers if not isinstance(a, BaseException)]

    # -- config changes -----------------------------------------------------------------------

    async def _apply(
        self, config: dict[str, Any], workers: list[WorkerHandle], timeout_s: float | None = None
    ) -> None:
        """Two-phase switch of `workers` to `config` (the caller holds the lock, or is the
        startup before any other task runs). `timeout_s` bounds each phase."""
        results = await asyncio.gather(
            *(w.request("prepare", timeout_s, config=config) for w in workers),
            return_exceptions=True,
        )
        errors = [
            _worker_error(w, r, timeout_s)
            for w, r in zip(workers, results, strict=True)
            if isinstance(r, BaseException)
        ]
        if errors:
            await asyncio.gather(*(w.request("abort") for w in workers), return_exceptions=True)
            raise ReloadError(errors[0])
        results = await asyncio.gather(
            *(w.request("commit", timeout_s) for w in workers), return_exceptions=True
        )
        for w, r in zip(workers, results, strict=True):
            if isinstance(r, BaseException):
                log.error("committing config in worker %d: %s", w.pid, r)
        # A commit shares newly bound listeners and withdraws dropped ones before it answers:
        # take those messages now, so a dropped address is closed when the reload returns.
        for slot in self.slots:
            if slot.worker in workers:
                self._receive_listeners(slot, slot.worker)

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

    def _on_reload_signal(self) -> None:
        if not self._started:
            log.info("received SIGUSR1 while starting: reloading once started")
            self._reload_asked = True
            return
        self._spawn(self.reload_from_file("SIGUSR1"))

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
            w.kill()

    # -- workers ----------------------------------------------------------------------------

    def _watch_worker(self, slot: WorkerSlot, w: WorkerHandle) -> None:
        w.watcher = asyncio.ensure_future(self._run_worker(slot, w))
        self._tasks.add(w.watcher)
        w.watcher.add_done_callback(self._tasks.discard)

    async def _run_worker(self, slot: WorkerSlot, w: WorkerHandle) -> None:
        """Talk to `w` until its end of the control channel closes, then reap it."""
        loop = asyncio.get_running_loop()
        w.share.setblocking(False)
        loop.add_reader(w.share.fileno(), self._receive_listeners, slot, w)
        w.channel = await Channel.open(w.sock)
        w.connected.set()
        await w.channel.serve()
        # The channel closes when the process exits (the kernel closes its descriptors just
        # before it becomes a zombie), so this waits a few milliseconds; a worker that closed
        # its channel and stays is broken and killed.
        deadline = time.monotonic() + WORKER_EXIT_TIMEOUT_S
        while True:
            try:
                pid, status = os.waitpid(w.pid, os.WNOHANG)
            except ChildProcessError:  # not ours to reap (cannot happen: nothing else waits)
                pid, status = w.pid, 0
            if pid:
                break
            if time.monotonic() > deadline:
                log.warning("worker %d closed its control channel but runs on; killing it", w.pid)
                w.kill()
                deadline = time.monotonic() + WORKER_EXIT_TIMEOUT_S
            await asyncio.sleep(REAP_POLL_S)
        if w.process is not None:
            w.process.returncode = os.waitstatus_to_exitcode(status)
        # What it shared before it died is still queued on the socket; take it, then close.
        self._receive_listeners(slot, w)
        self._close_share(w)
        self.retired_metrics = merge_snapshots(
            [self.retired_metrics, cumulative_part(w.last_metrics)]
        )
        w.wait_status = status
        w.exited.set()

    def _receive_listeners(self, slot: WorkerSlot, w: WorkerHandle) -> None:
        if w.share.fileno() < 0:
            return
        try:
            more = slot.listeners.receive(w.share)
        except ControlError as exc:
            log.error("worker %d: %s", w.pid, exc)
            return
        finally:
            if self._stop.is_set():
                # A commit racing the stop: no copy may keep a port open past the workers.
                slot.listeners.close()
        if not more:
            self._close_share(w)

    @staticmethod
    def _close_share(w: WorkerHandle) -> None:
        if w.share.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(w.share.fileno())
            w.share.close()

    async def _start_worker(
        self, listeners: ListenerCopies, reports_node: bool = False
    ) -> WorkerHandle:
        """A new worker process inheriting `listeners` (not yet talked to)."""
        spec = {
            "reuse_port": self.reuse_port,
            "reports_node": reports_node,
            "uvloop": not self.args.no_uvloop,
            "listeners": listeners.spec(),
        }
        parent_sock, child_sock = socket.socketpair()
        parent_share, child_share = listener_share_pair()
        fds = [child_sock.fileno(), child_share.fileno(), *listeners.fds()]
        try:
            pid, process = 0, None
            fork_server = self.fork_server
            if fork_server is not None and fork_server.open and len(fds) <= FORK_SERVER_MAX_FDS:
                try:
                    pid = await fork_server.spawn(spec, fds)
                except ForkServerGone as exc:
                    log.warning("%s: replacement workers start as new interpreters", exc)
            if not pid:
                process = spawn_interpreter(spec, fds)
                pid = process.pid
        except BaseException:
            parent_sock.close()
            parent_share.close()
            raise
        finally:
            # The worker has its copies.
            child_sock.close()
            child_share.close()
        return WorkerHandle(pid, parent_sock, parent_share, process)

    async def _keep_slot(self, slot: WorkerSlot) -> None:
        """Replace the slot's worker whenever it exits, until the instance stops."""
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            while True:
                w = slot.worker
                exited = asyncio.ensure_future(w.exited.wait())
                await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
                exited.cancel()
                if not w.exited.is_set():
                    return  # stopping: the stop collects the workers
                lived_s = time.monotonic() - w.started_at
                how = f"worker {w.pid} {describe_exit(w.wait_status)} after {lived_s:.1f}s"
                if not await self._replace(slot, how, w.started_at):
                    return
        finally:
            stopping.cancel()

    async def _replace(self, slot: WorkerSlot, how: str, started_at: float) -> bool:
        """Respawn decisions for `slot` until a replacement process runs in it (True; it may
        still fail to start, which is its exit), or the instance stops (False)."""
        old = slot.worker
        while True:
            decision = self.respawn_policy.decide(
                started_at=started_at,
                exited_at=time.monotonic(),
                quick_exits=slot.quick_exits,
                stopping=self._stop.is_set(),
            )
            if not decision:
                return False
            slot.quick_exits = decision.quick_exits
            when = f"in {decision.delay_s:.1f}s" if decision.delay_s else "now"
            log.error("%s; starting a replacement %s (%s)", how, when, decision.reason)
            if decision.delay_s:
                if any(other.worker.serving for other in self.slots if other is not slot):
                    # While this slot waits its backoff, its listening sockets would queue the
                    # connections the kernel hashes to them, for nobody: close them so the
                    # other workers get every new connection. The replacement binds anew
                    # (SO_REUSEPORT). A lone worker's sockets stay: queued beats refused.
                    slot.listeners.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), decision.delay_s)
            async with self._lock:  # after a reload in progress, and with its config
                if self._stop.is_set():
                    return False
                try:
                    w = await self._start_worker(slot.listeners, reports_node=slot.index == 0)
                except OSError as exc:
                    # No process: a zero-length life for the next decision.
                    log.error("starting a replacement for worker %d: %s", old.pid, exc)
                    how = f"starting a replacement for worker {old.pid} failed"
                    started_at = time.monotonic()
                    continue
                slot.worker = w
                self.metrics.record_worker_restart()
                self._watch_worker(slot, w)
                if self._stop.is_set():  # the stop began while it was forked: it may miss it
                    w.kill()
                    return False
                try:
                    await self._apply(strip_meta_fields(self.config), [w], WORKER_START_TIMEOUT_S)
                except (TimeoutError, ReloadError, ControlError, ConnectionError) as exc:
                    if self._stop.is_set():
                        return False
                    # Its exit is the slot's next (quick) exit: the backoff applies.
                    log.error("replacement worker %d did not start: %s; killing it", w.pid, exc)
                    w.kill()
                    return True
                w.ready = True
            log.info("worker %d replaces worker %d", w.pid, old.pid)
            return True

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        # First of all: the workers may already serve while the config is applied and the admin
        # endpoint starts, and a SIGTERM in that window must stop them gracefully rather than
        # kill the supervisor outright (its default action) and orphan them.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        # Likewise the others (their default actions terminate the process): a SIGUSR1 that
        # arrives before the start finished is carried out once it has.
        loop.add_signal_handler(signal.SIGUSR1, self._on_reload_signal)
        # Caddy: SIGHUP is "sometimes sent outside of the user's control" and ignored; SIGQUIT
        # quits at once.
        loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP ignored"))
        loop.add_signal_handler(signal.SIGQUIT, self._force)
        for slot in self.slots:
            self._watch_worker(slot, slot.worker)
        started_with = self.config
        try:
            self.model, setup = validated(self.config)
            check_log_writers(self.model.logging)
            # A worker that dies before this succeeded fails the start (exit 1), like Caddy.
            await self._apply(strip_meta_fields(self.config), self.workers)
        except (ConfigError, ReloadError) as exc:
            print(f"Error: {_error_text(exc)}", file=sys.stderr)
            self._stop.set()
            await self._stop_workers()
            return EXIT_FAILED_START
        apply_logging(self.model.logging)
        self.metrics.record_reload(True)
        for w in self.workers:
            w.ready = True
        try:
            self.admin = await start_admin_server(
                self, self.config.get("admin"), metrics=self.metrics
            )
        except (ConfigError, OSError) as exc:
            print(f"Error: starting admin endpoint: {_error_text(exc)}", file=sys.stderr)
            self._stop.set()
            await self._stop_workers()
            return EXIT_FAILED_START
        # Only now, with every listener and the admin endpoint bound, may a CA be contacted. Under
        # the config lock: a config loaded through the admin API meanwhile has started them.
        async with self._lock:
            if self.node_certs is None:
                if self.config is not started_with:  # replaced meanwhile (admin API)
                    setup = validated(self.config)[1]
                self.node_certs = NodeCertificates(self._certificate_stored)
                await self.node_certs.apply(setup)
        self._started = True
        if self._reload_asked:
            self._spawn(self.reload_from_file("SIGUSR1"))
        if self.args.watch:
            self._spawn(self._watch())
        for slot in self.slots:
            self._spawn(self._keep_slot(slot))
        self._report_startup()
        await self._stop.wait()
        log.info("shutting down")
        if self.node_certs is not None:
            # No new order once the stop began; an order in flight is abandoned (certmagic too).
            with contextlib.suppress(Exception):
                await self.node_certs.stop()
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

    def _report_startup(self) -> None:
        admin = ""
        if self.admin is not None and self.admin.serving and self.admin.address is not None:
            a = self.admin.address
            if a.is_unix:
                admin = f"unix/{a.host}"
            else:
                admin = f"[{a.host}]:{a.port}" if ":" in a.host else f"{a.host}:{a.port}"
        try:
            lines = startup_lines(
                strip_meta_fields(self.config),
                workers=len(self.workers),
                admin=admin,
                native_status=native.STATUS.describe(),
                trust_dir=SYSTEM_TRUST_DIR,
            )
        except ConfigError as exc:  # validated already; a summary never stops the start
            lines = [f"no listener summary: {exc}", f"serving with {len(self.workers)} worker(s)"]
        for line in lines:
            # Caddy warns about a root clients do not trust.
            level = logging.WARNING if line.startswith(ROOT_UNTRUSTED) else logging.INFO
            log.log(level, "%s", line)

    async def _until_forced(self) -> None:
        while self._signals < 2:
            await asyncio.sleep(0.05)

    async def _stop_workers(self) -> None:
        # The supervisor's copies of the listening sockets go first: a port closes when its
        # workers close theirs, and nothing is respawned any more (`_stop` is set).
        for slot in self.slots:
            slot.listeners.close()

        async def stop_one(w: WorkerHandle) -> None:
            if not w.alive:
                return  # exited before the stop (its slot was waiting for a replacement)
            with contextlib.suppress(ControlError, ConnectionError, asyncio.TimeoutError):
                await w.request("stop")
            try:
                await asyncio.wait_for(w.exited.wait(), WORKER_EXIT_TIMEOUT_S)
            except TimeoutError:
                w.kill()
                await w.exited.wait()
            if os.waitstatus_to_exitcode(w.wait_status) not in (0, -signal.SIGKILL):
                self.exit_code = self.exit_code or EXIT_FAILED_QUIT

        asked: set[WorkerHandle] = set()
        while todo := [w for w in self.workers if w not in asked]:
            # Again for a replacement that was being forked when the stop began.
            asked.update(todo)
            await asyncio.gather(*(stop_one(w) for w in todo))
        for w in self.workers:
            if w.channel is not None:
                w.channel.close()
        if self.fork_server is not None:
            self.fork_server.close()  # it exits at end of file
            await self._reap_fork_server(self.fork_server.pid)

    async def _reap_fork_server(self, pid: int) -> None:
        deadline = time.monotonic() + WORKER_EXIT_TIMEOUT_S
        while True:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + WORKER_EXIT_TIMEOUT_S
            await asyncio.sleep(REAP_POLL_S)


def run(args: argparse.Namespace, workers: int) -> int:
    """`pyproxy run` after argument parsing: validate, fork the workers, supervise."""
    from proxy.tls import shared_ticket_secret
    from proxy.upstream.shared_failures import create_shared_failures
    from proxy.worker import run_spawned_worker, worker_main

    signature = file_signature(args.config)
    try:
        config = read_config_file(args)
        validate(config)
    except (ConfigError, OSError) as exc:
        print(f"Error: loading config: {_error_text(exc)}", file=sys.stderr)
        return EXIT_FAILED_START
    # Made before any fork (the fork server's too), so every worker and every replacement
    # inherits it and derives the same TLS session ticket keys: a ticket from one worker
    # resumes on any other (proxy.tls.TicketKeys).
    shared_ticket_secret()
    # Likewise the passive-health failure table: a failure one worker saw marks the upstream
    # down for all of them, as in Caddy's single process (proxy.upstream.shared_failures).
    create_shared_failures()
    # Everything imported so far is shared with the workers copy-on-write. A collection in a
    # worker would write to every object it scans (its GC header), copying those pages into the
    # worker: frozen objects are never scanned, so the pages stay shared (gc.freeze docs:
    # "freeze before fork"). The supervisor's own later garbage is collected as usual.
    gc.collect()
    gc.freeze()
    # Then, while this process holds nothing a worker must not inherit (proxy.forkserver).
    fork_server = ForkServer.start(run_spawned_worker)
    handles: list[WorkerHandle] = []
    for index in range(workers):
        parent_sock, child_sock = socket.socketpair()
        parent_share, child_share = listener_share_pair()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            # Only its own ends: a worker holding another's channel would keep that channel
            # open after the supervisor died, and that worker would never notice.
            parent_sock.close()
            parent_share.close()
            if fork_server is not None:
                fork_server.sock.close()
            for h in handles:
                h.sock.close()
                h.share.close()
            code = 1
            try:
                code = worker_main(
                    child_sock,
                    reuse_port=workers > 1,
                    use_uvloop=not args.no_uvloop,
                    share=child_share,
                    # The first worker reports the node's certificate events; its siblings
                    # would repeat them (proxy.worker.SiblingQuiet).
                    reports_node=index == 0,
                )
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        child_sock.close()
        child_share.close()
        handles.append(WorkerHandle(pid, parent_sock, parent_share))
    supervisor = Supervisor(args, handles, config, fork_server)
    supervisor.file_signature = signature
    return asyncio.run(supervisor.main())


# ---- startup feedback ---------------------------------------------------------------------------
# Said once per node, by the supervisor: the workers serve the same config, so a per-worker line
# ("serving", "certificate in service") would only repeat itself N times (pyproxy issue #15).

WORKERS_ENV = "PYPROXY_WORKERS"
ROOT_UNTRUSTED = (
    "root certificate trust store installation disabled; unconfigured clients may show warnings"
)


def worker_count(cli_workers: int, environ: dict[str, str] | os._Environ[str], cores: int) -> int:
    """The number of workers: `--workers` when given (> 0), else `PYPROXY_WORKERS`, else one per
    usable core. A bad `PYPROXY_WORKERS` is a ConfigError naming the variable, never a silent
    fallback to the default."""
    if cli_workers > 0:
        return cli_workers
    text = environ.get(WORKERS_ENV, "").strip()
    if not text:
        return cores
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{WORKERS_ENV}: want a positive whole number of workers, got {text!r}")
    return value


def _address_text(addr: Any) -> str:
    host = addr.host if addr.host else ""
    if ":" in host:
        host = f"[{host}]"
    ports = (
        str(addr.port_start)
        if addr.port_start == addr.port_end
        else f"{addr.port_start}-{addr.port_end}"
    )
    prefix = "" if addr.network in ("tcp", "") else f"{addr.network}/"
    return f"{prefix}{host}:{ports}"


def _root_trust_line(internal: bool, trust_dir: Path) -> str | None:
    """Caddy's pki app logs whether it installed the local root; pyproxy never touches the
    system trust store at run time (that is `pyproxy trust --install`), so it says which state
    the store is in — Caddy's wording when the root is not there."""
    if not internal:
        return None
    # smallstep/truststore's file name (what `pyproxy trust --install` and `caddy trust` write),
    # or the name earlier pyproxy versions used.
    if any(trust_dir.glob("Truststore_Development_CA_*.crt")) or any(
        trust_dir.glob("pyproxy-*-root.crt")
    ):
        return "local CA root certificate is installed in the system trust store"
    return f"{ROOT_UNTRUSTED} (install it with `pyproxy trust --install`)"


def startup_lines(
    config: dict[str, Any], *, workers: int, admin: str, native_status: str, trust_dir: Path
) -> list[str]:
    """The node's startup summary: every listener with its protocols and whether it speaks TLS,
    the managed certificate names, the local root's trust state, the admin address, the worker
    count and the build. Pure: computed from the config the workers were given."""
    from config.auto_https import plan_automatic_https
    from config.model import load_model, served_protocols

    plan = plan_automatic_https(config, loaded_names=[], env=os.environ)
    model = load_model(plan.config)
    lines: list[str] = []
    for name, server in model.http.servers.items() if model.http else ():
        tls = name in plan.https_servers or bool(server.tls_connection_policies)
        # What is served, not what the config lists: h2 over TLS (ALPN), h2c on plain HTTP,
        # each when served_protocols has it (unset: h1 h2); never h3 (not implemented).
        served = served_protocols(server.protocols)
        protos = " ".join(p for p in served if p == "h1" or p == ("h2" if tls else "h2c"))
        for addr in server.listen:
            lines.append(
                f"listener {_address_text(addr)} ({name}): {protos}, "
                f"{'TLS' if tls else 'plain HTTP'}"
            )
    if plan.managed:
        lines.append("managed certificates: " + ", ".join(plan.managed_names))
    trust = _root_trust_line(bool(plan.internal_names), trust_dir)
    if trust is not None:
        lines.append(trust)
    lines.append(f"admin endpoint: {admin or 'off'}")
    lines.append(f"native build: {native_status}")
    lines.append(f"serving with {workers} worker(s)")
    return lines
