"""What the benchmarks share: loopback ports, processes started and stopped by pid, the CPU of a
process tree, wrk's figures, the nginx origin, and ratios taken within a round.

Used by bench/engine/run.py, bench/engine/tls_run.py and the suite (`python -m bench`).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The origin of every benchmark: one nginx worker serving files from {d}/www with sendfile and
# long keepalive, pinned to core 0 with the load generator (the proxy under test gets core 1).
# worker_connections covers the idle-connections scenario (10,000 client connections).
NGINX_ORIGIN = """
worker_processes 1; daemon off; pid {d}/origin.pid; error_log {d}/origin-error.log;
worker_rlimit_nofile 40000;
events {{ worker_connections 16384; }}
http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
  keepalive_timeout 300s; default_type application/octet-stream;
  server {{ listen 127.0.0.1:{port}; root {d}/www; }} }}
"""


# The origin's HTTPS listener (HTTP/2 offered by ALPN) for the suite's "direct" candidate; the
# same files as the plain listener.
NGINX_ORIGIN_TLS_SERVER = """
  server {{ listen 127.0.0.1:{tls_port} ssl http2; server_name localhost; root {d}/www;
    ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3; }}
"""


def nginx_origin_conf(d: Path, port: int, tls: tuple[int, Path, Path] | None = None) -> str:
    """NGINX_ORIGIN for directory d, plus (tls_port, cert, key) an HTTPS server beside it."""
    conf = NGINX_ORIGIN.format(d=d, port=port).rstrip()
    if tls is None:
        return conf + "\n"
    tls_port, cert, key = tls
    server = NGINX_ORIGIN_TLS_SERVER.format(d=d, tls_port=tls_port, cert=cert, key=key)
    return conf[:-1] + server + "}\n"  # inside the http block, whose brace ends the text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(
    port: int, timeout_s: float = 10, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll until 127.0.0.1:port accepts (bounded), failing early if `proc` exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited ({proc.returncode}) before port {port}")
        if port_open(port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


def _proc_table() -> tuple[dict[int, list[int]], dict[int, float]]:
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rindex(")") + 2 :].split()
        children.setdefault(int(rest[1]), []).append(int(entry))
        cpu[int(entry)] = (int(rest[11]) + int(rest[12])) / CLK_TCK
    return children, cpu


def tree_pids(pid: int) -> list[int]:
    """pid and all its descendants."""
    children, _ = _proc_table()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_cpu_s(pid: int) -> float:
    """utime+stime (s) of pid and all its descendants."""
    children, cpu = _proc_table()
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo += children.get(p, [])
    return total


def tree_pss_kib(pid: int) -> int:
    """Proportional set size (kB) of pid and its descendants, from /proc/<pid>/smaps_rollup:
    shared pages are counted once over the tree, so the sum is the tree's real footprint."""
    total = 0
    for p in tree_pids(pid):
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
                break
    return total


def start(
    cmd: list[str], cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a server in its own session (so a Ctrl-C to the benchmark does not reach it)."""
    with open(cwd / "err.log", "ab") as err:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM by pid, SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# A wrk script whose `done` hook prints exact figures wrk's own summary rounds or omits:
# the request and error counts and the latency percentiles up to p99.9 (µs).
WRK_REPORT_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests %d\\n", summary.requests))
  io.write(string.format("BENCH duration_us %d\\n", summary.duration))
  io.write(string.format("BENCH errors %d %d %d %d %d\\n",
    e.connect, e.read, e.write, e.status, e.timeout))
  for _, p in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format("BENCH p%s %d\\n", tostring(p), latency:percentile(p)))
  end
end
"""


def parse_wrk_report(out: str) -> dict[str, float]:
    """The BENCH lines of WRK_REPORT_LUA: requests, rps, errors, p50/p90/p99/p999 in ms."""
    fields: dict[str, float] = {}
    for m in re.finditer(r"^BENCH (\S+) (.*)$", out, re.MULTILINE):
        name, values = m.group(1), [float(v) for v in m.group(2).split()]
        if name == "errors":
            for key, v in zip(
                ("connect", "read", "write", "status", "timeout"), values, strict=True
            ):
                fields[f"errors_{key}"] = v
        elif name.startswith("p"):
            key = name.replace(".", "")
            fields[f"{key}_ms"] = values[0] / 1000.0
        else:
            fields[name] = values[0]
    if "requests" not in fields:
        raise ValueError(f"no wrk report in output: {out[-500:]!r}")
    seconds = fields.pop("duration_us", 0.0) / 1e6
    fields["rps"] = fields["requests"] / seconds if seconds else 0.0
    fields["failed"] = sum(
        fields.get(f"errors_{k}", 0.0) for k in ("connect", "read", "write", "status", "timeout")
    )
    return fields


def median_ratio(
    values_by_round: Mapping[int, float], peer_by_round: Mapping[int, float]
) -> float | None:
    """The median over rounds of value / peer's value in the same round.

    Each ratio is taken against the peer measured in the same round (minutes apart at most),
    which is what makes ratios usable on a shared machine where the peer itself moves by a
    third from one minute to the next; then the median of those ratios is reported."""
    ratios = [
        v / peer_by_round[rnd] for rnd, v in values_by_round.items() if peer_by_round.get(rnd)
    ]
    return statistics.median(ratios) if ratios else None


def spread(values: Iterable[float]) -> dict[str, float | list[float]]:
    """Median, min, max and the values themselves (one per round)."""
    vals = list(values)
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "rounds": vals,
    }
