#!/usr/bin/env python3
"""A bounded soak run of pyproxy under churn: does memory, do fds, do upstream connections
stay flat?

    /work/main/.venv/bin/python bench/soak/run.py --minutes 10 [--out bench/soak/results]

pyproxy (`python -m proxy run --workers 2`, this checkout's code) proxies to a loopback origin
(bench/soak/origin.py, its own process). For --minutes, while keepalive clients, slow clients
and new-connection clients load it, the config is reloaded through the admin API every
--reload-every seconds (two configs that differ only in a header value) and the origin is
killed (SIGKILL) and restarted on the same port every --origin-restart-every seconds. Every
--sample-every seconds the RSS/PSS/USS and open fds of the supervisor and of each worker, and
pyproxy's TCP connections to the origin, are sampled from /proc. At the end the load stops,
pyproxy's idle timeouts close what is left, a final sample is taken, and a JSON file and a
Markdown summary are written to --out (see bench/soak/README.md for what the verdicts mean).

Everything listens on 127.0.0.1; every loop is bounded in time and count; every process this
starts is stopped by its pid (also on Ctrl-C or an error).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# -- pyproxy's config under test --------------------------------------------------------------
# write_timeout: pyproxy drops a client that has stopped reading its response for this long
# (proxy/http/server.py pause_writing/check_timeout); the slow clients that pause longer than
# this must be dropped, those that pause shorter must not be.
WRITE_TIMEOUT_S = 10
# idle_timeout: a client keepalive connection idle this long is closed (Caddy's default is
# 5 min; shorter here so that the drain at the end is bounded).
IDLE_TIMEOUT_S = 15
# The upstream pool closes connections idle this long (Caddy's default is 2 min; shorter here
# for the same reason). The origin's own idle close (origin.py) is longer, so pyproxy is the
# side that closes them.
UPSTREAM_IDLE_S = 10

# -- load ------------------------------------------------------------------------------------
REQUEST_TIMEOUT_S = 10.0  # one /4k request, connect included
# After a failed request, so that a down origin (502s come back at once) is not a hot loop.
FAIL_BACKOFF_S = 0.05
MAX_REQUESTS_PER_CLIENT = 10_000_000  # a count bound on every request loop, besides the clock
BODY_4K = 4096
# Slow clients: GET a large body slowly produced by the origin, read it at a trickle, stop
# reading for a while, then read the rest. The body is larger than every buffer on the way
# (loopback socket buffers autotune to several MB) so pyproxy's writes to the client do block.
SLOW_BODY_KIB = 32 * 1024
SLOW_STREAM_QUERY = f"/stream?kib={SLOW_BODY_KIB}&chunk_kib=16&ms=2"
SLOW_TRICKLE_S = 4.0
SLOW_TRICKLE_READ = 8192
SLOW_TRICKLE_PAUSE_S = 0.05
SLOW_SHORT_PAUSE_S = WRITE_TIMEOUT_S / 2  # must survive
SLOW_LONG_PAUSE_S = WRITE_TIMEOUT_S * 2  # must be dropped
SLOW_READ_REST_TIMEOUT_S = 60.0
NEWCONN_PAUSE_S = 0.02  # between connections of one new-connection client (TIME_WAIT churn)
# A failed request is attributed to an event if its [start, end] overlaps the event's
# [start, end + grace]: the grace covers a pool's stale connections and clients that back off.
ATTRIBUTION_GRACE_S = 2.0

# -- verdicts --------------------------------------------------------------------------------
# See README.md: 0.5 MB/min is above the allocator noise a flat CPython process shows over
# minutes, and far below what leaking anything per request or per connection would give at
# the request rates this load produces (the summary states the bytes per request it implies).
RSS_SLOPE_LIMIT_MB_MIN = 0.5
FD_TOLERANCE = 2  # per process: lazily opened files (e.g. /dev/urandom) are not a leak
UPSTREAM_TOLERANCE = 2

MAX_MINUTES = 120.0
STARTUP_TIMEOUT_S = 30.0
ORIGIN_START_TIMEOUT_S = 15.0
DRAIN_MAX_S = UPSTREAM_IDLE_S + IDLE_TIMEOUT_S + 15.0
STOP_TIMEOUT_S = 15.0
TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def proxy_config(
    variant: str, proxy_port: int, admin_port: int, origin_port: int
) -> dict[str, Any]:
    """The config under test; the two variants differ only in two header values."""
    route = {
        "handle": [
            {
                "handler": "headers",
                "response": {"set": {"X-Soak-Config": [variant]}, "deferred": True},
            },
            {
                "handler": "reverse_proxy",
                "upstreams": [{"dial": f"127.0.0.1:{origin_port}"}],
                "headers": {"request": {"set": {"X-Test": [variant]}}},
                "transport": {
                    "protocol": "http",
                    "keep_alive": {"idle_timeout": f"{UPSTREAM_IDLE_S}s"},
                },
            },
        ]
    }
    server = {
        "listen": [f"127.0.0.1:{proxy_port}"],
        "routes": [route],
        "automatic_https": {"disable": True},
        "write_timeout": f"{WRITE_TIMEOUT_S}s",
        "idle_timeout": f"{IDLE_TIMEOUT_S}s",
    }
    return {
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "apps": {"http": {"servers": {"soak": server}}},
    }


# -- /proc sampling --------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                out += [int(c) for c in text.split()]
    return sorted(set(out))


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (after the parenthesised comm): tells pid reuse apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def kib_field(text: str, name: str) -> int | None:
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return None


@dataclass
class ProcSample:
    pid: int
    role: str
    rss_kib: int | None = None
    pss_kib: int | None = None
    uss_kib: int | None = None
    anon_kib: int | None = None
    threads: int | None = None
    fds: int | None = None


def sample_process(pid: int, role: str) -> tuple[ProcSample, set[int]]:
    s = ProcSample(pid=pid, role=role)
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/status").read_text()
        s.rss_kib = kib_field(status, "VmRSS")
        s.threads = kib_field(status, "Threads")
    with contextlib.suppress(OSError):
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        s.pss_kib = kib_field(rollup, "Pss")
        clean, dirty = kib_field(rollup, "Private_Clean"), kib_field(rollup, "Private_Dirty")
        if clean is not None and dirty is not None:
            s.uss_kib = clean + dirty
        # Anonymous memory is where a Python heap lives. USS and PSS also count the pages of
        # shared libraries, which become private or shared as other processes mapping the
        # same files (the origin, which is killed and restarted) come and go.
        s.anon_kib = kib_field(rollup, "Anonymous")
    with contextlib.suppress(OSError):
        fds = os.listdir(f"/proc/{pid}/fd")
        s.fds = len(fds)
        for fd in fds:
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return s, inodes


def tcp_sockets() -> tuple[dict[int, tuple[int, int, str]], int]:
    """{inode: (local port, remote port, state)} of the TCP sockets in this network namespace
    that have an inode (TIME_WAIT ones have none), and how many lines repeated an inode: the
    kernel writes these tables a page per read() while sockets come and go, so under churn a
    socket can be listed twice (or missed)."""
    out: dict[int, tuple[int, int, str]] = {}
    repeats = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f, None)
            for line in f:
                cols = line.split()
                if len(cols) < 10 or cols[9] == "0":
                    continue
                inode = int(cols[9])
                if inode in out:
                    repeats += 1
                local_port = int(cols[1].rpartition(":")[2], 16)
                remote_port = int(cols[2].rpartition(":")[2], 16)
                out[inode] = (local_port, remote_port, TCP_STATES.get(cols[3], cols[3]))
    return out, repeats


@dataclass
class Sample:
    t: float  # seconds since the load started (0 for the sample just before it)
    phase: str  # "idle-before-load", "load", "after-drain"
    processes: list[ProcSample]
    upstream: dict[str, int]  # pyproxy's sockets to the origin port, by TCP state
    upstream_by_pid: dict[int, int]  # the ESTABLISHED ones, by the process holding them
    inbound_established: int  # pyproxy's accepted client connections
    tcp_table_repeats: int = 0
    ok_total: int = 0
    failed_total: int = 0
    ok_interval: int = 0
    failed_interval: int = 0


def take_sample(sup_pid: int, proxy_port: int, origin_port: int, t: float, phase: str) -> Sample:
    procs: list[ProcSample] = []
    owner: dict[int, int] = {}  # socket inode -> pid
    children = [
        (c, "fork server" if process_name(c) == "pyproxy forksrv" else "worker")
        for c in children_of(sup_pid)
    ]
    for pid, role in [(sup_pid, "supervisor"), *children]:
        s, inodes = sample_process(pid, role)
        procs.append(s)
        for inode in inodes:
            owner.setdefault(inode, pid)
    upstream: Counter[str] = Counter()
    by_pid: Counter[int] = Counter()
    inbound = 0
    table, repeats = tcp_sockets()
    for inode, (local_port, remote_port, state) in table.items():
        holder = owner.get(inode)
        if holder is None:
            continue
        if remote_port == origin_port:
            upstream[state] += 1
            if state == "ESTABLISHED":
                by_pid[holder] += 1
        elif local_port == proxy_port and state == "ESTABLISHED":
            inbound += 1
    return Sample(t, phase, procs, dict(upstream), dict(by_pid), inbound, repeats)


# -- load ------------------------------------------------------------------------------------


@dataclass
class Failure:
    start: float
    end: float
    client: str
    reason: str
    events: list[str] = field(default_factory=list)


@dataclass
class Event:
    kind: str  # "reload" or "origin-restart"
    start: float
    end: float
    detail: dict[str, Any]


class Stats:
    def __init__(self) -> None:
        self.ok: Counter[str] = Counter()  # by client kind
        self.failures: list[Failure] = []
        self.variants: Counter[str] = Counter()  # X-Soak-Config values seen
        self.slow: Counter[str] = Counter()
        self.newconn: Counter[str] = Counter()

    @property
    def ok_total(self) -> int:
        return sum(self.ok.values())

    def fail(self, start: float, client: str, reason: str, now: float) -> None:
        self.failures.append(Failure(start, now, client, reason))


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], int]:
    """One HTTP/1.1 response; returns status, headers and the body length read."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    n = 0
    if "content-length" in headers:
        n = int(headers["content-length"])
        await reader.readexactly(n)
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            n += size
            if size == 0:
                break
    elif status not in (204, 304) and status >= 200:
        n = len(await reader.read())
    return status, headers, n


def close_writer(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()


def describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed before response" if not exc.partial else "truncated"
    return type(exc).__name__


class Load:
    def __init__(self, proxy_port: int, clock: Clock, stop_at: float) -> None:
        self.port = proxy_port
        self.clock = clock
        self.stop_at = stop_at
        self.stats = Stats()

    def running(self) -> bool:
        return self.clock.now() < self.stop_at

    async def keepalive_client(self) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        request = b"GET /4k HTTP/1.1\r\nHost: soak\r\n\r\n"
        try:
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                if not self.running():
                    return
                t0 = self.clock.now()
                try:
                    if conn is None:
                        conn = await asyncio.wait_for(
                            asyncio.open_connection("127.0.0.1", self.port), REQUEST_TIMEOUT_S
                        )
                    reader, writer = conn
                    writer.write(request)
                    status, headers, n = await asyncio.wait_for(
                        read_response(reader), REQUEST_TIMEOUT_S
                    )
                    if status != 200 or n != BODY_4K:
                        self.stats.fail(t0, "keepalive", f"status {status}", self.clock.now())
                        await asyncio.sleep(FAIL_BACKOFF_S)
                    else:
                        self.stats.ok["keepalive"] += 1
                        self.stats.variants[headers.get("x-soak-config", "(none)")] += 1
                    if headers.get("connection", "").lower() == "close":
                        writer.close()
                        conn = None
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                    self.stats.fail(t0, "keepalive", describe(exc), self.clock.now())
                    if conn is not None:
                        conn[1].close()
                    conn = None
                    await asyncio.sleep(FAIL_BACKOFF_S)
        finally:
            if conn is not None:
                conn[1].close()

    async def newconn_client(self) -> None:
        """Connect, send one request, close: alternately after reading the response, with
        `Connection: close`, and right after sending (abandoning the request mid-proxy)."""
        for i in range(MAX_REQUESTS_PER_CLIENT):
            if not self.running():
                return
            mode = ("read", "connection-close", "read", "abandon")[i % 4]
            extra = "Connection: close\r\n" if mode == "connection-close" else ""
            request = f"GET /4k HTTP/1.1\r\nHost: soak\r\n{extra}\r\n".encode()
            t0 = self.clock.now()
            writer: asyncio.StreamWriter | None = None
            try:
                reader, w = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), REQUEST_TIMEOUT_S
                )
                writer = w
                w.write(request)
                if mode == "abandon":
                    await w.drain()
                    self.stats.newconn["abandoned"] += 1
                else:
                    status, _, n = await asyncio.wait_for(read_response(reader), REQUEST_TIMEOUT_S)
                    if status != 200 or n != BODY_4K:
                        self.stats.fail(t0, "newconn", f"status {status}", self.clock.now())
                        await asyncio.sleep(FAIL_BACKOFF_S)
                    else:
                        self.stats.ok["newconn"] += 1
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                self.stats.fail(t0, "newconn", describe(exc), self.clock.now())
            finally:
                close_writer(writer)
            await asyncio.sleep(NEWCONN_PAUSE_S)

    async def slow_client(self, long_pause: bool) -> None:
        """Read a large body at a trickle, stop reading, then read the rest. A pause longer
        than write_timeout must get the connection dropped, a shorter one must not."""
        pause = SLOW_LONG_PAUSE_S if long_pause else SLOW_SHORT_PAUSE_S
        request = f"GET {SLOW_STREAM_QUERY} HTTP/1.1\r\nHost: soak\r\n\r\n".encode()
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            # Only start a cycle that can end before the load stops.
            if self.clock.now() + SLOW_TRICKLE_S + pause + 5 > self.stop_at:
                return
            t0 = self.clock.now()
            writer: asyncio.StreamWriter | None = None
            try:
                reader, w = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), REQUEST_TIMEOUT_S
                )
                writer = w
                w.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
                status = int(head.split(b" ", 2)[1])
                if status != 200:
                    self.stats.fail(t0, "slow", f"status {status}", self.clock.now())
                    await asyncio.sleep(1.0)
                    continue
                left = SLOW_BODY_KIB * 1024
                trickle_end = self.clock.now() + SLOW_TRICKLE_S
                while self.clock.now() < trickle_end and left > 0:
                    data = await asyncio.wait_for(
                        reader.read(min(SLOW_TRICKLE_READ, left)), REQUEST_TIMEOUT_S
                    )
                    if not data:
                        raise asyncio.IncompleteReadError(b"x", left)
                    left -= len(data)
                    await asyncio.sleep(SLOW_TRICKLE_PAUSE_S)
                await asyncio.sleep(pause)
                await asyncio.wait_for(reader.readexactly(left), SLOW_READ_REST_TIMEOUT_S)
            except (OSError, asyncio.IncompleteReadError) as exc:
                if long_pause:
                    self.stats.slow["long pause: dropped (expected)"] += 1
                else:
                    self.stats.slow["short pause: failed"] += 1
                    self.stats.fail(t0, "slow", describe(exc), self.clock.now())
                continue
            except (TimeoutError, ValueError) as exc:
                self.stats.slow[f"{'long' if long_pause else 'short'} pause: failed"] += 1
                self.stats.fail(t0, "slow", describe(exc), self.clock.now())
                continue
            finally:
                close_writer(writer)
            if long_pause:
                self.stats.slow["long pause: NOT dropped (unexpected)"] += 1
                self.stats.fail(t0, "slow", "not dropped by write_timeout", self.clock.now())
            else:
                self.stats.slow["short pause: completed"] += 1
                self.stats.ok["slow"] += 1


class Clock:
    def __init__(self) -> None:
        self.zero = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.zero


# -- processes -------------------------------------------------------------------------------


class Processes:
    """Everything this run starts, so that it can all be stopped by pid."""

    def __init__(self, tmp: Path, origin_port: int) -> None:
        self.tmp = tmp
        self.origin_port = origin_port
        self.origin: subprocess.Popen[bytes] | None = None
        self.origin_pids: list[int] = []
        self.proxy: subprocess.Popen[bytes] | None = None
        self.workers_seen: dict[int, int | None] = {}  # pid -> start time
        self.origin_log = open(tmp / "origin.log", "ab")  # noqa: SIM115 (closed in stop_all)
        self.proxy_log_path = tmp / "pyproxy.log"
        self.proxy_log = open(self.proxy_log_path, "ab")  # noqa: SIM115 (closed in stop_all)

    def start_origin(self) -> int:
        self.origin = subprocess.Popen(
            [sys.executable, str(HERE / "origin.py"), "--port", str(self.origin_port)],
            stdout=self.origin_log,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
            start_new_session=True,
        )
        self.origin_pids.append(self.origin.pid)
        deadline = time.monotonic() + ORIGIN_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.origin.poll() is not None:
                raise RuntimeError(
                    f"origin exited with {self.origin.returncode}; see {self.tmp / 'origin.log'}"
                )
            if port_open(self.origin_port):
                return self.origin.pid
            time.sleep(0.02)
        raise RuntimeError("origin did not start listening")

    def kill_origin(self) -> int | None:
        if self.origin is None:
            return None
        pid = self.origin.pid
        if self.origin.poll() is None:
            self.origin.send_signal(signal.SIGKILL)
        self.origin.wait(STOP_TIMEOUT_S)
        return pid

    def start_proxy(self, config_path: Path, admin_port: int, proxy_port: int) -> None:
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            XDG_CONFIG_HOME=str(self.tmp / "xdg-config"),
            CADDY_ADMIN=f"127.0.0.1:{admin_port}",
        )
        self.proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "proxy",
                "run",
                "--config",
                str(config_path),
                "--adapter",
                "json",
                "--workers",
                "2",
            ],
            stdout=self.proxy_log,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proxy.poll() is not None:
                raise RuntimeError(
                    f"pyproxy exited with {self.proxy.returncode}; see {self.proxy_log_path}"
                )
            if port_open(proxy_port) and port_open(admin_port) and len(self.workers()) == 2:
                return
            time.sleep(0.05)
        raise RuntimeError("pyproxy did not start listening")

    def workers(self) -> list[int]:
        assert self.proxy is not None
        # The supervisor's worker processes, not its fork server (proxy.forkserver).
        pids = [pid for pid in children_of(self.proxy.pid) if process_name(pid) == "pyproxy worker"]
        for pid in pids:
            self.workers_seen.setdefault(pid, start_time(pid))
        return pids

    def proxy_alive(self) -> bool:
        return self.proxy is not None and self.proxy.poll() is None

    def stop_all(self) -> list[str]:
        notes: list[str] = []
        if self.origin is not None and self.origin.poll() is None:
            self.origin.terminate()
            try:
                self.origin.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.origin.kill()
                self.origin.wait(5)
        if self.proxy is not None:
            with contextlib.suppress(OSError):
                self.workers()
            if self.proxy.poll() is None:
                self.proxy.terminate()
                try:
                    self.proxy.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    notes.append("pyproxy did not stop on SIGTERM; killed")
                    self.proxy.kill()
                    self.proxy.wait(5)
            notes.append(f"pyproxy exit code {self.proxy.returncode}")
            # Workers outliving their supervisor (they should not) are ours too: the same pid
            # with the same start time is the same process.
            for pid, started in self.workers_seen.items():
                if started is not None and start_time(pid) == started:
                    notes.append(f"worker {pid} outlived the supervisor; killed")
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        self.origin_log.close()
        self.proxy_log.close()
        return notes


def post_load(admin_port: int, config: dict[str, Any]) -> tuple[int, str]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/load",
        data=json.dumps(config).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, repr(exc)


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Settings:
    minutes: float
    warmup_s: float
    clients: int
    slow_clients: int
    newconn_clients: int
    reload_every_s: float
    origin_restart_every_s: float
    sample_every_s: float


async def sleep_until(clock: Clock, t: float) -> None:
    delay = t - clock.now()
    if delay > 0:
        await asyncio.sleep(delay)


async def soak(
    st: Settings, procs: Processes, ports: dict[str, int], samples: list[Sample]
) -> tuple[Load, list[Event], dict[str, Any]]:
    assert procs.proxy is not None
    sup = procs.proxy.pid
    configs = [proxy_config(v, ports["proxy"], ports["admin"], ports["origin"]) for v in ("a", "b")]
    clock = Clock()
    duration = st.minutes * 60
    load = Load(ports["proxy"], clock, duration)
    events: list[Event] = []
    info: dict[str, Any] = {}

    async def snapshot(phase: str) -> Sample:
        # The counters are read here, on the loop's thread; /proc is read in a thread so that
        # the clients are not held up.
        ok_total, failed_total = load.stats.ok_total, len(load.stats.failures)
        s = await asyncio.to_thread(
            take_sample, sup, ports["proxy"], ports["origin"], clock.now(), phase
        )
        s.ok_total, s.failed_total = ok_total, failed_total
        if samples:
            s.ok_interval = s.ok_total - samples[-1].ok_total
            s.failed_interval = s.failed_total - samples[-1].failed_total
        procs.workers()
        return s

    def show(s: Sample) -> None:
        mem = " ".join(
            f"{p.role[0]}{p.pid}:{(p.rss_kib or 0) / 1024:.1f}MB/{p.fds}fd" for p in s.processes
        )
        up = sum(s.upstream.values())
        per_pid = ",".join(f"{n}" for _, n in sorted(s.upstream_by_pid.items()))
        print(
            f"t={s.t:7.1f}s {s.phase:17} ok+{s.ok_interval:<6} fail+{s.failed_interval:<4} "
            f"{mem} upstream={per_pid or 0}/{up} inbound={s.inbound_established} "
            f"repeats={s.tcp_table_repeats}",
            flush=True,
        )

    idle = await snapshot("idle-before-load")
    idle.t = 0.0  # taken just before the load starts at t=0
    samples.append(idle)
    show(idle)
    clock.zero = time.monotonic()

    async def reloader() -> None:
        k = 0
        next_t = st.reload_every_s
        while next_t < duration:
            await sleep_until(clock, next_t)
            k += 1
            variant = k % 2
            t0 = clock.now()
            status, body = await asyncio.to_thread(post_load, ports["admin"], configs[variant])
            events.append(
                Event(
                    "reload",
                    t0,
                    clock.now(),
                    {"to": "ab"[variant], "status": status, "body": body[:200]},
                )
            )
            next_t += st.reload_every_s

    async def origin_restarter() -> None:
        next_t = st.origin_restart_every_s
        while next_t < duration:
            await sleep_until(clock, next_t)
            t0 = clock.now()
            old = await asyncio.to_thread(procs.kill_origin)
            new = await asyncio.to_thread(procs.start_origin)
            t1 = clock.now()
            events.append(
                Event(
                    "origin-restart",
                    t0,
                    t1,
                    {"killed_pid": old, "new_pid": new, "downtime_s": round(t1 - t0, 3)},
                )
            )
            next_t += st.origin_restart_every_s

    async def sampler() -> None:
        # Samples fall 0.3 intervals after a multiple of the interval: with the default
        # intervals (10, 20, 45 s) never at the moment of a reload or an origin kill, whose
        # transient connection counts would otherwise be taken for the steady state.
        next_t = st.sample_every_s * 0.3
        while next_t <= duration:
            await sleep_until(clock, next_t)
            if not procs.proxy_alive():
                raise RuntimeError("pyproxy's supervisor exited during the run")
            s = await snapshot("load")
            samples.append(s)
            show(s)
            next_t += st.sample_every_s

    tasks = [asyncio.create_task(load.keepalive_client()) for _ in range(st.clients)]
    tasks += [asyncio.create_task(load.newconn_client()) for _ in range(st.newconn_clients)]
    tasks += [
        asyncio.create_task(load.slow_client(long_pause=i % 2 == 1)) for i in range(st.slow_clients)
    ]
    tasks += [asyncio.create_task(t()) for t in (reloader, origin_restarter, sampler)]
    gathered = asyncio.gather(*tasks)
    try:
        # Every task ends by itself at `duration` (the slow clients' last cycle and a reload
        # or restart in progress may take a little longer): bounded by the margin.
        await asyncio.wait_for(gathered, duration + SLOW_LONG_PAUSE_S + 90)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if gathered.done() and not gathered.cancelled():
            gathered.exception()  # retrieved: it is the error being raised, or None

    # Drain: the clients have closed their connections; wait (bounded) until pyproxy's idle
    # timeouts have closed its upstream connections and the fd counts are back.
    idle_fds = {p.pid: p.fds for p in idle.processes}
    t_load_end = clock.now()
    drain_deadline = t_load_end + DRAIN_MAX_S
    while clock.now() < drain_deadline:
        s = await asyncio.to_thread(
            take_sample, sup, ports["proxy"], ports["origin"], clock.now(), "drain"
        )
        fds_back = True
        for p in s.processes:
            ref = idle_fds.get(p.pid)
            fds_back = fds_back and ref is not None and (p.fds or 0) <= ref + FD_TOLERANCE
        if not s.upstream and s.inbound_established == 0 and fds_back:
            break
        await asyncio.sleep(1.0)
    info["drain_s"] = round(clock.now() - t_load_end, 1)
    final = await snapshot("after-drain")
    samples.append(final)
    show(final)
    return load, events, info


# -- analysis --------------------------------------------------------------------------------


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return None
    sxy = sum((p[0] - mx) * (p[1] - my) for p in points)
    return sxy / sxx * 60.0


def slope_stderr_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Standard error of that slope (from the residuals): how much of it is sampling noise."""
    slope = slope_per_minute(points)
    if slope is None or len(points) < 3:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    b = slope / 60.0
    residuals = sum((p[1] - (my + b * (p[0] - mx))) ** 2 for p in points)
    sxx = sum((p[0] - mx) ** 2 for p in points)
    return float((residuals / (n - 2) / sxx) ** 0.5 * 60.0)


def attribute(failures: list[Failure], events: list[Event]) -> None:
    for f in failures:
        f.events = sorted(
            {e.kind for e in events if f.start <= e.end + ATTRIBUTION_GRACE_S and f.end >= e.start}
        )


def analyse(
    st: Settings, samples: list[Sample], load: Load, events: list[Event], info: dict[str, Any]
) -> dict[str, Any]:
    idle = samples[0]
    load_samples = [s for s in samples if s.phase == "load"]
    after_warmup = [s for s in load_samples if s.t >= st.warmup_s]
    if not after_warmup:
        raise RuntimeError("no sample after the warm-up: run longer or warm up shorter")
    baseline, end, final = after_warmup[0], load_samples[-1], samples[-1]

    def by_pid(s: Sample) -> dict[int, ProcSample]:
        return {p.pid: p for p in s.processes}

    pids = [p.pid for p in final.processes]
    worker_sets = {tuple(sorted(p.pid for p in s.processes if p.role == "worker")) for s in samples}
    processes: list[dict[str, Any]] = []
    for pid in pids:
        series: list[tuple[float, float]] = []
        anon_series: list[tuple[float, float]] = []
        for s in after_warmup:
            p = by_pid(s).get(pid)
            if p is not None and p.rss_kib is not None:
                series.append((s.t, p.rss_kib / 1024))
            if p is not None and p.anon_kib is not None:
                anon_series.append((s.t, p.anon_kib / 1024))
        row: dict[str, Any] = {"pid": pid, "role": by_pid(final)[pid].role}
        for name, ref in (("idle", idle), ("baseline", baseline), ("end", end), ("final", final)):
            q = by_pid(ref).get(pid)
            row[name] = asdict(q) if q else None
        row["rss_slope_mb_min"] = slope_per_minute(series)
        row["rss_slope_stderr_mb_min"] = slope_stderr_per_minute(series)
        row["anon_slope_mb_min"] = slope_per_minute(anon_series)
        processes.append(row)

    def up(s: Sample) -> int:
        return s.upstream.get("ESTABLISHED", 0)

    def up_all(s: Sample) -> int:
        return sum(s.upstream.values())

    attribute(load.stats.failures, events)
    by_event: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for f in load.stats.failures:
        by_event[" + ".join(f.events) or "no event"] += 1
        reasons[f"{f.client}: {f.reason}"] += 1
    unattributed = [asdict(f) for f in load.stats.failures if not f.events]

    slopes = [r["rss_slope_mb_min"] for r in processes if r["rss_slope_mb_min"] is not None]
    rss_flat = bool(slopes) and max(abs(x) for x in slopes) < RSS_SLOPE_LIMIT_MB_MIN

    def fds_ok(ref: Sample) -> bool:
        ref_fds = by_pid(ref)
        ok = True
        for r in processes:
            ref_p = ref_fds.get(r["pid"])
            # A worker that was not there in the reference sample has no reference count.
            if ref_p is None or ref_p.fds is None or r["final"] is None:
                ok = False
                continue
            ok = ok and r["final"]["fds"] <= ref_p.fds + FD_TOLERANCE
        return ok

    back_to_baseline = fds_ok(baseline) and up_all(final) <= up(baseline) + UPSTREAM_TOLERANCE
    back_to_idle = fds_ok(idle) and up_all(final) <= up_all(idle) + UPSTREAM_TOLERANCE
    minutes_after_warmup = (end.t - baseline.t) / 60 or 1.0
    requests_after_warmup = end.ok_total - baseline.ok_total
    rate_per_min = requests_after_warmup / minutes_after_warmup
    reloads = [e for e in events if e.kind == "reload"]
    restarts = [e for e in events if e.kind == "origin-restart"]
    return {
        "baseline_t": baseline.t,
        "end_t": end.t,
        "processes": processes,
        "worker_pid_sets": [list(w) for w in sorted(worker_sets)],
        "upstream": {
            "idle": idle.upstream,
            "baseline": baseline.upstream,
            "end": end.upstream,
            "final": final.upstream,
        },
        "inbound": {
            "idle": idle.inbound_established,
            "baseline": baseline.inbound_established,
            "end": end.inbound_established,
            "final": final.inbound_established,
        },
        "requests": {
            "ok": load.stats.ok_total,
            "ok_by_client": dict(load.stats.ok),
            "failed": len(load.stats.failures),
            "failed_by_event": dict(by_event),
            "failed_by_reason": dict(reasons),
            "unattributed_failures": unattributed[:50],
            "config_variant_seen": dict(load.stats.variants),
            "slow_clients": dict(load.stats.slow),
            "newconn": dict(load.stats.newconn),
            "ok_per_minute_after_warmup": round(rate_per_min),
        },
        "events": {
            "reloads": len(reloads),
            "reloads_not_200": [asdict(e) for e in reloads if e.detail["status"] != 200],
            "reload_seconds_max": round(max((e.end - e.start for e in reloads), default=0), 3),
            "origin_restarts": len(restarts),
            "origin_downtime_s_max": max((e.detail["downtime_s"] for e in restarts), default=0),
            "all": [asdict(e) for e in events],
        },
        "verdicts": {
            "rss_flat": rss_flat,
            "back_to_baseline": back_to_baseline,
            "back_to_idle_before_load": back_to_idle,
        },
        # What the slope limit means in leaked bytes per proxied request (per worker: the
        # workers share the requests about evenly).
        "slope_limit_bytes_per_request": round(
            RSS_SLOPE_LIMIT_MB_MIN * 1024 * 1024 / max(rate_per_min / 2, 1), 1
        ),
        "drain_s": info.get("drain_s"),
    }


def mb(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def proc_field(row: dict[str, Any], name: str, key: str) -> Any:
    p = row.get(name)
    return None if p is None else p.get(key)


def summary_markdown(
    st: Settings, result: dict[str, Any], meta: dict[str, Any], samples: list[Sample]
) -> str:
    a = result
    v = a["verdicts"]
    req = a["requests"]
    ev = a["events"]
    short = st.minutes < 10
    title = f"# pyproxy soak run: {st.minutes:g} minutes"
    if short:
        title += " (SHORT RUN: an example that the harness works, not the 10-minute soak)"
    out = [title, ""]
    out.append(f"- date (UTC): {meta['date']}, commit `{meta['commit']}`, host {meta['host']}")
    out.append(f"- command: `{meta['command']}`")
    out.append(
        f"- load average at start / end: {meta['loadavg_start']} / {meta['loadavg_end']} "
        "(the machine is shared)"
    )
    out.append(
        f"- load: {st.clients} keepalive clients (GET 4 KiB), {st.newconn_clients} "
        f"new-connection clients, {st.slow_clients} slow clients ({SLOW_BODY_KIB // 1024} MiB "
        f"body read at a trickle, then a pause of {SLOW_SHORT_PAUSE_S:g} s or "
        f"{SLOW_LONG_PAUSE_S:g} s); warm-up {st.warmup_s:g} s; samples every "
        f"{st.sample_every_s:g} s"
    )
    out.append(
        f"- events: {ev['reloads']} reloads via `POST /load` every {st.reload_every_s:g} s "
        f"(slowest {ev['reload_seconds_max']} s, not 200: {len(ev['reloads_not_200'])}); "
        f"{ev['origin_restarts']} origin kills (SIGKILL) + restarts every "
        f"{st.origin_restart_every_s:g} s (longest downtime {ev['origin_downtime_s_max']} s)"
    )
    out.append(
        f"- pyproxy: 2 workers; server `write_timeout` {WRITE_TIMEOUT_S}s, `idle_timeout` "
        f"{IDLE_TIMEOUT_S}s; upstream `keep_alive.idle_timeout` {UPSTREAM_IDLE_S}s"
    )
    out.append("")
    out.append("## Verdicts")
    out.append("")
    slopes = [r["rss_slope_mb_min"] for r in a["processes"] if r["rss_slope_mb_min"] is not None]
    worst = max((abs(x) for x in slopes), default=float("nan"))
    out.append(
        f"- **{'RSS flat' if v['rss_flat'] else 'RSS NOT flat'}**: largest |slope| "
        f"{worst:.3f} MB/min (limit {RSS_SLOPE_LIMIT_MB_MIN} MB/min per process, least squares "
        f"over the {len([s for s in samples if s.phase == 'load' and s.t >= st.warmup_s])} "
        f"samples after warm-up; at this run's rate the limit is "
        f"{a['slope_limit_bytes_per_request']} bytes leaked per request per worker)"
    )
    out.append(
        "- **"
        + (
            "fds and upstream connections back to baseline"
            if v["back_to_baseline"]
            else "fds or upstream connections NOT back to baseline"
        )
        + f"** (after drain vs the sample at t={a['baseline_t']:.0f} s; tolerance "
        f"{FD_TOLERANCE} fds per process, {UPSTREAM_TOLERANCE} connections)"
    )
    out.append(
        "- stricter: "
        + (
            "fds and upstream connections back to the idle figures before the load"
            if v["back_to_idle_before_load"]
            else "NOT back to the idle figures before the load"
        )
        + f" (drain took {a['drain_s']} s)"
    )
    if len(a["worker_pid_sets"]) > 1:
        out.append(f"- worker pids changed during the run: {a['worker_pid_sets']}")
    out.append("")
    out.append("## Memory and fds per process")
    out.append("")
    out.append(
        "| process | RSS MB idle | baseline | end of load | after drain "
        "| RSS slope MB/min ± std. error "
        "| anon MB baseline → end | anon slope | fds idle | baseline | end | after drain |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in a["processes"]:

        def f(name: str, key: str, r: dict[str, Any] = r) -> Any:
            return proc_field(r, name, key)

        slope = r["rss_slope_mb_min"]
        err = r["rss_slope_stderr_mb_min"]
        uslope = r["anon_slope_mb_min"]
        out.append(
            f"| {r['role']} {r['pid']} | {mb(f('idle', 'rss_kib'))} | "
            f"{mb(f('baseline', 'rss_kib'))} | {mb(f('end', 'rss_kib'))} | "
            f"{mb(f('final', 'rss_kib'))} | "
            f"{'-' if slope is None else f'{slope:+.3f}'}"
            f"{'' if err is None else f' ± {err:.3f}'} | "
            f"{mb(f('baseline', 'anon_kib'))} → {mb(f('end', 'anon_kib'))} | "
            f"{'-' if uslope is None else f'{uslope:+.3f}'} | "
            f"{f('idle', 'fds')} | {f('baseline', 'fds')} | {f('end', 'fds')} | "
            f"{f('final', 'fds')} |"
        )
    out.append("")
    out.append("## Connections (pyproxy's sockets, from /proc/net/tcp*)")
    out.append("")
    out.append("| | idle | baseline | end of load | after drain |")
    out.append("|---|---:|---:|---:|---:|")
    ups = a["upstream"]

    def states(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {n}" for k, n in sorted(d.items())) or "0"

    out.append(
        f"| to the origin | {states(ups['idle'])} | {states(ups['baseline'])} | "
        f"{states(ups['end'])} | {states(ups['final'])} |"
    )
    inb = a["inbound"]
    out.append(
        f"| from clients (established) | {inb['idle']} | {inb['baseline']} | {inb['end']} | "
        f"{inb['final']} |"
    )
    out.append("")
    out.append("## Requests")
    out.append("")
    by_client = ", ".join(f"{k} {n}" for k, n in sorted(req["ok_by_client"].items()))
    out.append(
        f"- ok: {req['ok']} ({by_client}); {req['ok_per_minute_after_warmup']}/min after warm-up"
    )
    out.append(f"- failed: {req['failed']}")
    out.append(
        "  - by event: "
        + (", ".join(f"{k} {n}" for k, n in sorted(req["failed_by_event"].items())) or "-")
    )
    out.append(
        "  - by reason: "
        + (", ".join(f"{k} {n}" for k, n in sorted(req["failed_by_reason"].items())) or "-")
    )
    out.append(f"  - outside any event: {req['failed_by_event'].get('no event', 0)}")
    if req["unattributed_failures"]:
        out.append("  - the first ones outside any event:")
        for fl in req["unattributed_failures"][:10]:
            out.append(
                f"    - t={fl['start']:.2f}-{fl['end']:.2f} s {fl['client']}: {fl['reason']}"
            )
    out.append(
        "- responses by config variant (`X-Soak-Config`): "
        + ", ".join(f"{k} {n}" for k, n in sorted(req["config_variant_seen"].items()))
    )
    out.append(
        "- slow clients: "
        + (", ".join(f"{k} {n}" for k, n in sorted(req["slow_clients"].items())) or "none")
    )
    out.append(
        "- new-connection clients: abandoned right after sending "
        f"{req['newconn'].get('abandoned', 0)}"
    )
    if ev["reloads_not_200"]:
        out.append(f"- reloads not answered 200: {ev['reloads_not_200']}")
    out.append("")
    out.append("## Samples")
    out.append("")
    pids = [r["pid"] for r in a["processes"]]
    out.append(
        "| t s | phase | ok since last | failed since last | "
        + " | ".join(f"RSS MB {p}" for p in pids)
        + " | "
        + " | ".join(f"fds {p}" for p in pids)
        + " | to origin: established (by worker) / all | from clients |"
    )
    out.append("|---:|---|" + "---:|" * (2 + 2 * len(pids) + 2))
    for s in samples:
        bp = {p.pid: p for p in s.processes}
        out.append(
            f"| {s.t:.0f} | {s.phase} | {s.ok_interval} | {s.failed_interval} | "
            + " | ".join(mb(bp[p].rss_kib) if p in bp else "-" for p in pids)
            + " | "
            + " | ".join(str(bp[p].fds) if p in bp else "-" for p in pids)
            + f" | {s.upstream.get('ESTABLISHED', 0)} "
            f"({' + '.join(str(n) for _, n in sorted(s.upstream_by_pid.items())) or '0'})"
            f" / {sum(s.upstream.values())} | {s.inbound_established} |"
        )
    out.append("")
    repeats = sum(s.tcp_table_repeats for s in samples)
    if repeats:
        out.append(
            f"/proc/net/tcp listed {repeats} sockets twice within one read over all samples "
            "(counted once: the kernel writes the table a page at a time while sockets change)."
        )
        out.append("")
    return "\n".join(out)


def git_commit() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def positive(text: str) -> float:
    x = float(text)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=positive, default=10.0, help=f"≤ {MAX_MINUTES:g}")
    ap.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds (default: min(60, a quarter of the run))",
    )
    ap.add_argument("--clients", type=int, default=20, help="keepalive clients")
    ap.add_argument("--slow-clients", type=int, default=4, help="half pause short, half long")
    ap.add_argument("--newconn-clients", type=int, default=2)
    ap.add_argument("--reload-every", type=positive, default=20.0, help="seconds")
    ap.add_argument("--origin-restart-every", type=positive, default=45.0, help="seconds")
    ap.add_argument("--sample-every", type=positive, default=10.0, help="seconds")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    if args.minutes > MAX_MINUTES:
        ap.error(f"--minutes: at most {MAX_MINUTES:g}")
    for name in ("clients", "slow_clients", "newconn_clients"):
        if not 0 <= getattr(args, name) <= 1000:
            ap.error(f"--{name.replace('_', '-')}: between 0 and 1000")
    warmup = args.warmup if args.warmup is not None else min(60.0, args.minutes * 15)
    if not 0 <= warmup < args.minutes * 60 - 3 * args.sample_every:
        ap.error("--warmup must leave at least three samples of the run after it")
    st = Settings(
        minutes=args.minutes,
        warmup_s=warmup,
        clients=args.clients,
        slow_clients=args.slow_clients,
        newconn_clients=args.newconn_clients,
        reload_every_s=args.reload_every,
        origin_restart_every_s=args.origin_restart_every,
        sample_every_s=args.sample_every,
    )
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "commit": git_commit(),
        "host": f"{platform.node()} ({os.cpu_count()} cpus, Python {platform.python_version()})",
        "command": " ".join(
            [Path(sys.executable).name, os.path.relpath(__file__, ROOT), *sys.argv[1:]]
        ),
        "loadavg_start": loadavg(),
    }
    ports = {"proxy": free_port(), "admin": free_port(), "origin": free_port()}
    tmp = Path(tempfile.mkdtemp(prefix="pyproxy-soak-"))
    procs = Processes(tmp, ports["origin"])
    samples: list[Sample] = []
    notes: list[str] = []
    outcome: tuple[Load, list[Event], dict[str, Any]] | None = None
    try:
        config_path = tmp / "config.json"
        config_path.write_text(
            json.dumps(proxy_config("a", ports["proxy"], ports["admin"], ports["origin"]))
        )
        procs.start_origin()
        procs.start_proxy(config_path, ports["admin"], ports["proxy"])
        print(
            f"pyproxy pid {procs.proxy.pid if procs.proxy else '?'} on :{ports['proxy']}, "
            f"admin :{ports['admin']}, origin pid {procs.origin_pids[0]} on :{ports['origin']}; "
            f"{st.minutes:g} min, warm-up {st.warmup_s:g} s; logs in {tmp}",
            flush=True,
        )
        # SIGTERM stops the run like Ctrl-C does, through the `finally` below.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        outcome = asyncio.run(soak(st, procs, ports, samples))
    except KeyboardInterrupt:
        notes.append("interrupted (Ctrl-C)")
        print("interrupted; stopping everything", file=sys.stderr)
    finally:
        notes += procs.stop_all()
    log_text = procs.proxy_log_path.read_text(errors="replace")
    tracebacks = log_text.count("Traceback")
    meta["loadavg_end"] = loadavg()
    if outcome is None:
        print(f"no result; pyproxy log: {procs.proxy_log_path}", file=sys.stderr)
        return 1
    load, events, info = outcome
    result = analyse(st, samples, load, events, info)
    result["pyproxy_log"] = {
        "tracebacks": tracebacks,
        "lines": log_text.count("\n"),
        "first_traceback": log_text[log_text.find("Traceback") :][:3000] if tracebacks else "",
    }
    result["notes"] = notes
    md = summary_markdown(st, result, meta, samples)
    md += (
        f"\npyproxy log: {result['pyproxy_log']['lines']} lines, "
        f"{tracebacks} tracebacks; {'; '.join(notes)}\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"soak-{st.minutes:g}min-{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%SZ}"
    doc = {
        "meta": meta,
        "settings": asdict(st),
        "constants": {
            "write_timeout_s": WRITE_TIMEOUT_S,
            "idle_timeout_s": IDLE_TIMEOUT_S,
            "upstream_idle_s": UPSTREAM_IDLE_S,
            "rss_slope_limit_mb_min": RSS_SLOPE_LIMIT_MB_MIN,
            "fd_tolerance": FD_TOLERANCE,
            "upstream_tolerance": UPSTREAM_TOLERANCE,
        },
        "result": result,
        "samples": [asdict(s) for s in samples],
    }
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(md)
    print()
    print(md)
    print(f"written: {args.out / stem}.json and .md; pyproxy and origin logs in {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
