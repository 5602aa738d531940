"""The benchmark suite behind `python -m bench` (pyproxy issue #16): every scenario against every
candidate in one run, pinned as bench/engine does, ratios within a round, medians over rounds.

Candidates: `direct` (the nginx origin itself: the limit), `nginx` (proxy_pass), `caddy`
(reverse_proxy), `pyproxy` (the compiled build, when current for this checkout) and
`pyproxy-interp` (the same source interpreted). The origin, the load generators and the
WebSocket echo origin run on core 0, the candidate on core 1 (the `-2w` scenario: cores 0-1).
CPU per request is utime+stime of the candidate's process tree over the measured window.

Every server listens on 127.0.0.1 and is stopped by its pid; every load run is bounded in time
(wrk -d, h2load -D, the WebSocket client's --seconds) and the whole run by the mode's budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    WRK_REPORT_LUA,
    free_port,
    nginx_origin_conf,
    parse_wrk_report,
    start,
    stop,
    tree_cpu_s,
    tree_pss_kib,
    wait_port,
)

CANDIDATES = ("direct", "nginx", "caddy", "pyproxy", "pyproxy-interp")

# In the order they run against one candidate (the reload last, the restart with 2 workers
# after it). A scenario's figure is one row per candidate (the sweep: one per point).
SCENARIOS = (
    "http1-4k",
    "http1-64k",
    "http1-1m",
    "https-keepalive",
    "https-handshakes",
    "h2-m1",
    "h2-m10",
    "websocket",
    "sweep",
    "idle-memory",
    "reload",
    "http1-4k-2w",
)

DESCRIPTIONS = {
    "http1-4k": "HTTP/1.1 keepalive, 4 KiB responses, wrk -c50",
    "http1-64k": "HTTP/1.1 keepalive, 64 KiB responses, wrk -c50",
    "http1-1m": "HTTP/1.1 keepalive, 1 MiB responses, wrk -c50",
    "https-keepalive": "HTTPS keepalive, 4 KiB, wrk -c50 (TLS record + proxy cost)",
    "https-handshakes": "HTTPS, Connection: close: one full TLS handshake per request",
    "h2-m1": "HTTP/2 over TLS, h2load -c10 -m1, 4 KiB",
    "h2-m10": "HTTP/2 over TLS, h2load -c10 -m10 (10 streams per connection), 4 KiB",
    "websocket": "WebSocket echo round trips, 64-byte messages, 10 connections",
    "sweep": "HTTP/1.1 4 KiB at 1..1,000 connections: latency percentiles (wrk)",
    "idle-memory": "memory (PSS of the process tree) per idle keepalive connection",
    "reload": "config reloads during wrk -c50 load: failed requests",
    "http1-4k-2w": "HTTP/1.1 4 KiB keepalive with 2 workers on both cores (shared with wrk)",
}

SIZES = {"http1-4k": "/4k.txt", "http1-64k": "/64k.bin", "http1-1m": "/1m.bin"}
WRK_CONNS = 50
H2_CONNS = 10
WS_CONNS = 10
LOAD_CPU = "0"
PROXY_CPU = "1"
BOTH_CPUS = "0,1"
START_TIMEOUT_S = 60.0
IDLE_OPEN_TIMEOUT_S = 120.0  # opening all the idle-memory connections, in total


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int
    duration_s: int  # each measured load run
    warmup_s: int  # a load run before it, not measured (0: none)
    sweep: tuple[int, ...]
    idle_conns: int
    reloads: int
    budget_s: float  # the whole run; what is left when it is spent is skipped with a note


MODES = {
    # For the test suite: every scenario once, shortest runs (about a minute on 2 cores).
    "smoke": Mode("smoke", 1, 1, 0, (1, 50), 200, 1, 240.0),
    "quick": Mode("quick", 1, 2, 1, (1, 100, 1000), 10_000, 3, 420.0),
    "full": Mode("full", 3, 3, 1, (1, 10, 100, 250, 500, 1000), 10_000, 8, 1800.0),
}


@dataclass
class Row:
    """One measurement: a scenario on a candidate in one round (the sweep: at one point)."""

    scenario: str
    candidate: str
    round: int
    point: int | None
    metrics: dict[str, float]


@dataclass
class Outcome:
    rows: list[Row] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)  # what was skipped and why

    def skip(self, scenario: str, candidate: str, reason: str) -> None:
        if not any(
            (n["scenario"], n["candidate"], n["reason"]) == (scenario, candidate, reason)
            for n in self.notes
        ):
            self.notes.append({"scenario": scenario, "candidate": candidate, "reason": reason})
            print(f"  skip {candidate} {scenario}: {reason}", flush=True)


def find_tools() -> dict[str, str | None]:
    """Where each tool is (None: missing). Nothing is installed."""
    found: dict[str, str | None] = {}
    for tool in ("nginx", "caddy", "wrk", "h2load", "taskset"):
        path = shutil.which(tool) or (
            f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None
        )
        found[tool] = path
    return found


def tool_versions(tools: dict[str, str | None]) -> dict[str, str]:
    commands = {
        "nginx": ["-v"],
        "caddy": ["version"],
        "wrk": ["-v"],
        "h2load": ["--version"],
    }
    out: dict[str, str] = {}
    for tool, args in commands.items():
        path = tools.get(tool)
        if not path:
            out[tool] = "missing"
            continue
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            p = subprocess.run([path, *args], capture_output=True, text=True, timeout=10)
            out[tool] = (p.stdout + p.stderr).strip().splitlines()[0] if p.stdout + p.stderr else ""
    out["python"] = sys.version.split()[0]
    return out


def machine_facts() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def git_commit() -> str:
    p = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return p.stdout.strip() + ("+dirty" if dirty else "")


def native_status() -> tuple[bool, str]:
    """Whether this checkout's compiled build is current (what `pyproxy` rows need)."""
    sys.path.insert(0, str(ROOT))
    from proxy.native import check_manifest

    status = check_manifest(environ={})  # the candidate runs with PYPROXY_NATIVE=1
    return status.active, status.describe()


def wait_answers(port: int, proc: subprocess.Popen[bytes], in_a_row: int = 5) -> None:
    """Until `in_a_row` successive GET /4k.txt through the candidate answer 200 (bounded): a
    listening socket is not yet a proxy whose workers have finished starting."""
    deadline = time.monotonic() + START_TIMEOUT_S
    good = 0
    while good < in_a_row:
        if time.monotonic() > deadline:
            raise TimeoutError(f"127.0.0.1:{port} did not answer 200 within {START_TIMEOUT_S} s")
        if proc.poll() is not None:
            raise RuntimeError(f"candidate exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/4k.txt", timeout=5) as resp:
                resp.read()
                good = good + 1 if resp.status == 200 else 0
        except OSError:
            good = 0
            time.sleep(0.1)


# -- candidates ---------------------------------------------------------------------------------

NGINX_PROXY = """
worker_processes {workers}; daemon off; pid {d}/nginx-proxy.pid; error_log {d}/nginx-proxy.log;
worker_rlimit_nofile 40000;
events {{ worker_connections 16384; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream origin {{ server 127.0.0.1:{origin}; keepalive 128; }}
  upstream ws {{ server 127.0.0.1:{ws}; }}
  server {{ listen 127.0.0.1:{port};
    location / {{ proxy_pass http://origin; proxy_http_version 1.1;
      proxy_set_header Connection ""; }}
    location /ws {{ proxy_pass http://ws; proxy_http_version 1.1; proxy_read_timeout 300s;
      proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade"; }} }}
  server {{ listen 127.0.0.1:{tls_port} ssl http2; server_name localhost;
    ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ proxy_pass http://origin; proxy_http_version 1.1;
      proxy_set_header Connection ""; }} }} }}
"""

# The same Caddyfile for Caddy and pyproxy. `protocols h1 h2`: pyproxy serves HTTP/2 only when
# asked (its default is HTTP/1.1; Caddy then leaves out HTTP/3). `bind 127.0.0.1` keeps both
# sites on loopback (a site address alone does not: Caddy listens on every interface for it).
# The header's generation number is what a reload changes (Caddy ignores a /load of an
# unchanged config).
CADDYFILE = """{{
\tadmin 127.0.0.1:{admin}
\tauto_https disable_redirects
\thttp_port {spare}
\thttps_port {tls_port}
\tstorage file_system {d}/storage-{name}
\tservers {{
\t\tprotocols h1 h2
\t}}
}}
http://127.0.0.1:{port} {{
\tbind 127.0.0.1
\theader X-Bench-Generation {generation}
\thandle /ws {{
\t\treverse_proxy 127.0.0.1:{ws}
\t}}
\thandle {{
\t\treverse_proxy 127.0.0.1:{origin}
\t}}
}}
https://localhost:{tls_port} {{
\tbind 127.0.0.1
\ttls {cert} {key}
\treverse_proxy 127.0.0.1:{origin}
}}
"""


@dataclass
class Server:
    """A running candidate: its ports, the pid whose tree CPU is counted, how it reloads."""

    name: str
    http_port: int
    tls_port: int
    cpu_pid: int
    ws_cpu_pid: int  # direct: the WebSocket echo origin, not the nginx origin
    ws_port: int
    proc: subprocess.Popen[bytes] | None = None
    reload: Callable[[], None] | None = None


class Bench:
    def __init__(self, mode: Mode, tools: dict[str, str | None], out: Outcome) -> None:
        self.mode = mode
        self.tools = tools
        self.out = out
        self.t0 = time.monotonic()
        self.deadline = self.t0 + mode.budget_s
        self.d = Path(tempfile.mkdtemp(prefix="pyproxy-suite-"))
        self.d.chmod(0o755)  # nginx workers run as nobody
        self.procs: list[subprocess.Popen[bytes]] = []
        self.lua = self.d / "report.lua"
        self.lua.write_text(WRK_REPORT_LUA)
        self.steps_done = 0
        self.steps_total = 0

    # -- infrastructure ---------------------------------------------------------------------

    def spawn(
        self, cmd: list[str], env: dict[str, str] | None = None, cpus: str = LOAD_CPU
    ) -> subprocess.Popen[bytes]:
        proc = start(["taskset", "-c", cpus, *cmd], self.d, env)
        self.procs.append(proc)
        return proc

    def halt(self, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is not None:
            stop(proc)
            if proc in self.procs:
                self.procs.remove(proc)

    def close(self) -> None:
        for proc in list(self.procs):
            self.halt(proc)
        shutil.rmtree(self.d, ignore_errors=True)

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def progress(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0
        print(
            f"[{self.steps_done:3}/{self.steps_total} {elapsed:5.0f}s, "
            f"budget left {max(0.0, self.time_left()):4.0f}s] {text}",
            flush=True,
        )

    def start_origins(self) -> None:
        import trustme

        (self.d / "www").mkdir()
        (self.d / "www" / "4k.txt").write_bytes(b"x" * 4096)
        (self.d / "www" / "64k.bin").write_bytes(os.urandom(64 * 1024))
        (self.d / "www" / "1m.bin").write_bytes(os.urandom(1024 * 1024))
        ca = trustme.CA()
        leaf = ca.issue_cert("localhost")
        self.cert, self.key = self.d / "cert.pem", self.d / "key.pem"
        leaf.private_key_pem.write_to_path(str(self.key))
        with open(self.cert, "wb") as f:
            for blob in leaf.cert_chain_pems:
                f.write(blob.bytes())
        self.origin_port, self.origin_tls_port = free_port(), free_port()
        conf = self.d / "origin.conf"
        conf.write_text(
            nginx_origin_conf(self.d, self.origin_port, (self.origin_tls_port, self.cert, self.key))
        )
        nginx = str(self.tools["nginx"])
        self.origin = self.spawn([nginx, "-c", str(conf), "-p", str(self.d)])
        self.ws_port = free_port()
        self.ws_origin = self.spawn(
            [sys.executable, "-m", "bench.wsload", "serve", "--port", str(self.ws_port)],
            dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        for port, proc in (
            (self.origin_port, self.origin),
            (self.origin_tls_port, self.origin),
            (self.ws_port, self.ws_origin),
        ):
            wait_port(port, START_TIMEOUT_S, proc)

    def start_candidate(self, name: str, workers: int) -> Server:
        cpus = PROXY_CPU if workers == 1 else BOTH_CPUS
        if name == "direct":
            return Server(
                name,
                self.origin_port,
                self.origin_tls_port,
                self.origin.pid,
                self.ws_origin.pid,
                self.ws_port,
            )
        port, tls_port = free_port(), free_port()
        if name == "nginx":
            conf = self.d / f"nginx-proxy-{workers}.conf"
            conf.write_text(
                NGINX_PROXY.format(
                    d=self.d,
                    workers=workers,
                    origin=self.origin_port,
                    ws=self.ws_port,
                    port=port,
                    tls_port=tls_port,
                    cert=self.cert,
                    key=self.key,
                )
            )
            proc = self.spawn(
                [str(self.tools["nginx"]), "-c", str(conf), "-p", str(self.d)], cpus=cpus
            )

            def reload_nginx() -> None:
                os.kill(proc.pid, signal.SIGHUP)  # re-read the config, replace the workers

            server = Server(name, port, tls_port, proc.pid, proc.pid, port, proc, reload_nginx)
        else:
            admin, spare = free_port(), free_port()
            generation = [0]

            def caddyfile() -> str:
                return CADDYFILE.format(
                    d=self.d,
                    name=name,
                    admin=admin,
                    spare=spare,
                    port=port,
                    tls_port=tls_port,
                    ws=self.ws_port,
                    origin=self.origin_port,
                    cert=self.cert,
                    key=self.key,
                    generation=generation[0],
                )

            cf = self.d / f"{name}-{workers}.Caddyfile"
            cf.write_text(caddyfile())
            env = dict(
                os.environ,
                HOME=str(self.d),
                XDG_DATA_HOME=str(self.d / f"xdg-{name}"),
                XDG_CONFIG_HOME=str(self.d / f"xdg-{name}"),
            )
            if name == "caddy":
                cmd = [
                    str(self.tools["caddy"]),
                    "run",
                    "--config",
                    str(cf),
                    "--adapter",
                    "caddyfile",
                ]
            else:
                env.update(PYTHONPATH=str(ROOT), PYPROXY_NATIVE="1" if name == "pyproxy" else "0")
                cmd = [sys.executable, "-m", "proxy", "run", "--config", str(cf)]
                cmd += ["--adapter", "caddyfile", "--workers", str(workers)]
            proc = self.spawn(cmd, env, cpus=cpus)

            def reload_admin() -> None:
                generation[0] += 1
                request = urllib.request.Request(
                    f"http://127.0.0.1:{admin}/load",
                    data=caddyfile().encode(),
                    headers={"Content-Type": "text/caddyfile"},
                    method="POST",
                )
                with urllib.request.urlopen(request, timeout=30) as resp:
                    resp.read()

            server = Server(name, port, tls_port, proc.pid, proc.pid, port, proc, reload_admin)
        try:
            for p in (port, tls_port):
                wait_port(p, START_TIMEOUT_S, proc)
            wait_answers(port, proc)
        except (TimeoutError, RuntimeError):
            self.halt(proc)
            raise
        return server

    # -- load generators --------------------------------------------------------------------

    def wrk(
        self, url: str, conns: int, seconds: int, extra: tuple[str, ...] = ()
    ) -> dict[str, float]:
        cmd = ["taskset", "-c", LOAD_CPU, str(self.tools["wrk"]), "-t1", f"-c{conns}"]
        cmd += [f"-d{seconds}s", "--timeout", "10s", "-s", str(self.lua), *extra, url]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
        return parse_wrk_report(p.stdout)

    def h2load(self, url: str, streams: int, seconds: int) -> dict[str, float]:
        cmd = ["taskset", "-c", LOAD_CPU, str(self.tools["h2load"]), "-t1", f"-c{H2_CONNS}"]
        cmd += [f"-m{streams}", f"-D{seconds}", url]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
        done = re.search(
            r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
            r"(\d+) failed, (\d+) errored",
            p.stdout,
        )
        rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", p.stdout)
        if not done or not rate:
            raise ValueError(f"no h2load summary: {p.stdout[-500:]!r}")
        return {
            "requests": float(done.group(2)),
            "rps": float(rate.group(1)),
            "failed": float(done.group(3)) + float(done.group(4)),
        }

    def ws_load(self, url: str, seconds: int) -> dict[str, float]:
        cmd = ["taskset", "-c", LOAD_CPU, sys.executable, "-m", "bench.wsload", "load"]
        cmd += ["--url", url, "--conns", str(WS_CONNS), "--seconds", str(seconds)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        p = subprocess.run(
            cmd, capture_output=True, text=True, timeout=seconds + 60, env=env, check=True
        )
        return dict(json.loads(p.stdout.strip().splitlines()[-1]))

    def measured(
        self, server: Server, run: Callable[[], dict[str, float]], pid: int | None = None
    ) -> dict[str, float]:
        """Run a load and add the candidate's CPU per request over it."""
        pid = server.cpu_pid if pid is None else pid
        cpu0 = tree_cpu_s(pid)
        r = run()
        cpu = tree_cpu_s(pid) - cpu0
        r["cpu_us_per_req"] = cpu / r["requests"] * 1e6 if r["requests"] else 0.0
        r["req_per_cpu_s"] = r["requests"] / cpu if cpu else 0.0
        return r

    # -- scenarios --------------------------------------------------------------------------

    def run_http(self, server: Server, path: str) -> dict[str, float]:
        url = f"http://127.0.0.1:{server.http_port}{path}"
        if self.mode.warmup_s:
            self.wrk(url, WRK_CONNS, self.mode.warmup_s)
        return self.measured(server, lambda: self.wrk(url, WRK_CONNS, self.mode.duration_s))

    def run_https(self, server: Server, close: bool) -> dict[str, float]:
        url = f"https://localhost:{server.tls_port}/4k.txt"
        extra = ("-H", "Connection: close") if close else ()
        if self.mode.warmup_s:
            self.wrk(url, WRK_CONNS, self.mode.warmup_s, extra)
        return self.measured(server, lambda: self.wrk(url, WRK_CONNS, self.mode.duration_s, extra))

    def alpn(self, server: Server) -> str | None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with (
            socket.create_connection(("127.0.0.1", server.tls_port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            return tls.selected_alpn_protocol()

    def run_h2(self, server: Server, streams: int) -> dict[str, float] | str:
        if not self.tools["h2load"]:
            return "h2load is missing (nghttp2-client)"
        proto = self.alpn(server)
        if proto != "h2":
            return f"no h2 (ALPN h2 offered, server chose {proto or 'nothing'})"
        url = f"https://localhost:{server.tls_port}/4k.txt"
        if self.mode.warmup_s:
            self.h2load(url, streams, self.mode.warmup_s)
        return self.measured(server, lambda: self.h2load(url, streams, self.mode.duration_s))

    def run_ws(self, server: Server) -> dict[str, float]:
        url = f"ws://127.0.0.1:{server.ws_port}/ws"
        return self.measured(
            server, lambda: self.ws_load(url, self.mode.duration_s), server.ws_cpu_pid
        )

    def run_sweep_point(self, server: Server, conns: int) -> dict[str, float]:
        url = f"http://127.0.0.1:{server.http_port}/4k.txt"
        return self.measured(server, lambda: self.wrk(url, conns, self.mode.duration_s))

    def run_idle(self, server: Server) -> dict[str, float]:
        n = self.mode.idle_conns
        before = tree_pss_kib(server.cpu_pid)
        opened, failed, after = asyncio.run(self._hold_idle(server.http_port, n, server.cpu_pid))
        return {
            "requests": float(opened),
            "failed": float(failed),
            "idle_conns": float(opened),
            "pss_before_mib": before / 1024,
            "pss_after_mib": after / 1024,
            "kib_per_conn": (after - before) / opened if opened else 0.0,
        }

    async def _hold_idle(self, port: int, n: int, pid: int) -> tuple[int, int, int]:
        """Open n connections, one 4 KiB request on each, keep them idle; the tree's PSS then."""
        gate = asyncio.Semaphore(100)
        writers: list[asyncio.StreamWriter] = []

        async def one() -> None:
            async with gate:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 10
                )
                writers.append(writer)
                writer.write(b"GET /4k.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if not m or not head.startswith(b"HTTP/1.1 200"):
                    raise ValueError(head[:100])
                await asyncio.wait_for(reader.readexactly(int(m.group(1))), 10)

        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(one() for _ in range(n)), return_exceptions=True),
                IDLE_OPEN_TIMEOUT_S,
            )
            failed = sum(isinstance(r, BaseException) for r in results)
            return n - failed, failed, tree_pss_kib(pid)
        finally:
            for w in writers:
                w.close()

    def run_reload(self, server: Server) -> dict[str, float] | str:
        if server.reload is None:
            return "nothing to reload (no proxy in front of the origin)"
        url = f"http://127.0.0.1:{server.http_port}/4k.txt"
        seconds = max(2, self.mode.duration_s * 2)
        cmd = ["taskset", "-c", LOAD_CPU, str(self.tools["wrk"]), "-t1", f"-c{WRK_CONNS}"]
        cmd += [f"-d{seconds}s", "--timeout", "10s", "-s", str(self.lua), url]
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reload_errors = 0
        try:
            # The reloads are spread over the middle of the load (none in its first or last
            # 20 %), so that every one of them happens under load.
            t_start = time.monotonic()
            for i in range(self.mode.reloads):
                at = t_start + seconds * (0.2 + 0.6 * (i + 0.5) / self.mode.reloads)
                time.sleep(max(0.0, at - time.monotonic()))
                try:
                    server.reload()
                except OSError as exc:
                    reload_errors += 1
                    print(f"  reload failed: {exc}", flush=True)
            stdout, _ = load.communicate(timeout=seconds + 60)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
        r = parse_wrk_report(stdout)
        r["reloads"] = float(self.mode.reloads)
        r["reload_errors"] = float(reload_errors)
        return r

    # -- the run ----------------------------------------------------------------------------

    def plan(
        self, candidates: list[str], scenarios: list[str]
    ) -> Iterator[tuple[int, str, str, int | None]]:
        for rnd in range(self.mode.rounds):
            for cand in candidates:
                for sc in scenarios:
                    if sc == "sweep":
                        for conns in self.mode.sweep:
                            yield rnd, cand, sc, conns
                    else:
                        yield rnd, cand, sc, None

    def run(self, candidates: list[str], scenarios: list[str]) -> None:
        steps = list(self.plan(candidates, scenarios))
        self.steps_total = len(steps)
        self.start_origins()
        server: Server | None = None
        current: tuple[int, str, int] | None = None
        try:
            for rnd, cand, sc, point in steps:
                self.steps_done += 1
                if self.time_left() <= 0:
                    self.out.skip(sc, cand, f"time budget of {self.mode.budget_s:.0f} s spent")
                    continue
                workers = 2 if sc == "http1-4k-2w" else 1
                if sc == "http1-4k-2w" and cand == "direct":
                    self.out.skip(sc, cand, "the origin has one worker in every scenario")
                    continue
                if current != (rnd, cand, workers):
                    if server is not None:
                        self.halt(server.proc)
                    server, current = None, None
                    try:
                        server = self.start_candidate(cand, workers)
                        current = (rnd, cand, workers)
                    except (TimeoutError, RuntimeError, OSError) as exc:
                        self.out.skip(sc, cand, f"did not start: {exc}")
                        continue
                label = f"round {rnd + 1}/{self.mode.rounds} {cand:14} {sc}" + (
                    f" c={point}" if point is not None else ""
                )
                assert server is not None
                try:
                    result = self.run_step(server, sc, point)
                except (subprocess.SubprocessError, ValueError, OSError) as exc:
                    self.out.skip(sc, cand, f"failed: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                if isinstance(result, str):
                    self.out.skip(sc, cand, result)
                    continue
                self.out.rows.append(Row(sc, cand, rnd, point, result))
                self.progress(f"{label}: {summary(sc, result)}")
        finally:
            if server is not None:
                self.halt(server.proc)
            self.close()

    def run_step(self, server: Server, sc: str, point: int | None) -> dict[str, float] | str:
        if sc in SIZES:
            return self.run_http(server, SIZES[sc])
        if sc == "http1-4k-2w":
            return self.run_http(server, SIZES["http1-4k"])
        if sc in ("https-keepalive", "https-handshakes"):
            return self.run_https(server, close=sc == "https-handshakes")
        if sc in ("h2-m1", "h2-m10"):
            return self.run_h2(server, 1 if sc == "h2-m1" else 10)
        if sc == "websocket":
            return self.run_ws(server)
        if sc == "sweep":
            assert point is not None
            return self.run_sweep_point(server, point)
        if sc == "idle-memory":
            return self.run_idle(server)
        if sc == "reload":
            return self.run_reload(server)
        raise ValueError(f"unknown scenario {sc}")


def summary(scenario: str, r: dict[str, float]) -> str:
    if scenario == "idle-memory":
        return (
            f"{r['idle_conns']:.0f} idle connections, {r['kib_per_conn']:.1f} KiB each "
            f"(PSS {r['pss_before_mib']:.1f} -> {r['pss_after_mib']:.1f} MiB), "
            f"failed {r['failed']:.0f}"
        )
    text = (
        f"{r['rps']:9.0f} req/s  CPU {r['cpu_us_per_req']:7.1f} µs/req"
        if "cpu_us_per_req" in r
        else f"{r['rps']:9.0f} req/s"
    )
    if "p99_ms" in r:
        text += f"  p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f}"
        if "p999_ms" in r:
            text += f" p99.9 {r['p999_ms']:.2f} ms"
    if scenario == "reload":
        text += f"  {r['reloads']:.0f} reloads"
    return text + f"  failed {r.get('failed', 0):.0f}"
