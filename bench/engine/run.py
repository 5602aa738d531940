#!/usr/bin/env python3
"""Engine benchmark: pyproxy vs nginx proxy_pass vs Caddy vs direct, per shared/bench/README.md.

Starts an nginx origin serving 4k.txt and 1m.bin on loopback, then each candidate proxy in front
of it, and drives them with wrk (HTTP/1.1 keepalive). Origin and wrk are pinned to core 0, the
proxy under test to core 1 (2 workers: cores 0-1, sharing with the load generator). CPU per
request = utime+stime of the proxy's process tree over the measured run.

    .venv/bin/python bench/engine/run.py [--duration 5] [--warmup 1] [--only pyproxy,nginx]

All servers listen on 127.0.0.1 and are stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.common import (
    NGINX_ORIGIN,
    ROOT,
    free_port,
    start,
    stop,
    tree_cpu_s,
    wait_port,
)

__all__ = ["NGINX_ORIGIN", "ROOT", "free_port", "start", "stop", "tree_cpu_s", "wait_port"]


def wrk(url: str, duration: int, conns: int, cpu: str) -> dict[str, float]:
    out = subprocess.run(
        ["taskset", "-c", cpu, "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    tr = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    unit = {"B": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3}
    mbs = float(tr.group(1)) * unit.get(tr.group(2), 1.0) if tr else 0.0

    def lat(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return 0.0
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "mbs": mbs,
        "p50_ms": lat("50"),
        "p99_ms": lat("99"),
        "non2xx": float(errors.group(1)) if errors else 0.0,
        "requests": rps * duration,
        "sock_errors": 1.0 if sock_err else 0.0,
    }


NGINX_PROXY = """
worker_processes {workers}; daemon off; pid {d}/proxy.pid; error_log {d}/proxy-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream origin {{ server 127.0.0.1:{origin}; keepalive 128; }}
  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://origin;
    proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
"""

CADDYFILE = """{{
\tadmin off
\tauto_https off
\tstorage file_system {d}/caddy-storage
}}
http://127.0.0.1:{port} {{
\treverse_proxy 127.0.0.1:{origin}
}}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--only", default="", help="comma list of candidates")
    ap.add_argument("--rounds", type=int, default=1, help="repeat all candidates, report medians")
    ap.add_argument(
        "--sizes", type=lambda v: v.split(","), default=["4k", "1m"], help="4k,1m (default both)"
    )
    ap.add_argument("--json", default="", help="also write results here")
    args = ap.parse_args()
    for tool in ("nginx", "wrk", "taskset"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(f"missing {tool}", file=sys.stderr)
            return 1
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    sys.path.insert(0, str(ROOT))
    from proxy.native import check_manifest

    # "pyproxy" rows use the compiled build when it is current; "pyproxy-interp" never does.
    print(f"pyproxy native build: {check_manifest().describe()}", flush=True)
    d = Path(tempfile.mkdtemp(prefix="pyproxy-bench-"))
    d.chmod(0o755)  # nginx workers run as nobody
    (d / "www").mkdir()
    (d / "www" / "4k.txt").write_bytes(b"x" * 4096)
    (d / "www" / "1m.bin").write_bytes(os.urandom(1024 * 1024))
    origin_port = free_port()
    (d / "origin.conf").write_text(NGINX_ORIGIN.format(d=d, port=origin_port))
    origin = start(["taskset", "-c", "0", nginx, "-c", str(d / "origin.conf"), "-p", str(d)], d)
    procs = [origin]
    results: list[dict[str, object]] = []
    try:
        wait_port(origin_port)
        py = str(ROOT / ".venv" / "bin" / "python")
        if not Path(py).exists():
            py = sys.executable

        def cand_direct() -> tuple[subprocess.Popen[bytes] | None, int]:
            return None, origin_port

        def cand_nginx(workers: int, cpu: str) -> tuple[subprocess.Popen[bytes], int]:
            port = free_port()
            conf = d / f"proxy{workers}.conf"
            conf.write_text(NGINX_PROXY.format(d=d, port=port, origin=origin_port, workers=workers))
            return start(["taskset", "-c", cpu, nginx, "-c", str(conf), "-p", str(d)], d), port

        def cand_caddy() -> tuple[subprocess.Popen[bytes], int]:
            port = free_port()
            cf = d / "Caddyfile"
            cf.write_text(CADDYFILE.format(d=d, port=port, origin=origin_port))
            env = dict(
                os.environ,
                XDG_DATA_HOME=str(d / "xdg"),
                XDG_CONFIG_HOME=str(d / "xdg"),
                HOME=str(d),
            )
            return start(
                [
                    "taskset",
                    "-c",
                    "1",
                    "caddy",
                    "run",
                    "--config",
                    str(cf),
                    "--adapter",
                    "caddyfile",
                ],
                d,
                env,
            ), port

        def cand_pyproxy(
            workers: int, cpu: str, uvloop: bool = True, native: bool = True
        ) -> tuple[subprocess.Popen[bytes], int]:
            port = free_port()
            cfg = d / f"pyproxy{workers}.json"
            cfg.write_text(
                json.dumps(
                    {
                        "apps": {
                            "http": {
                                "servers": {
                                    "srv0": {
                                        "listen": [f"127.0.0.1:{port}"],
                                        "routes": [
                                            {
                                                "handle": [
                                                    {
                                                        "handler": "reverse_proxy",
                                                        "upstreams": [
                                                            {"dial": f"127.0.0.1:{origin_port}"}
                                                        ],
                                                    }
                                                ]
                                            }
                                        ],
                                    }
                                }
                            }
                        }
                    }
                )
            )
            extra = [] if uvloop else ["--no-uvloop"]
            return start(
                [
                    "taskset",
                    "-c",
                    cpu,
                    py,
                    "-m",
                    "proxy",
                    "run",
                    "--config",
                    str(cfg),
                    "--workers",
                    str(workers),
                    *extra,
                ],
                d,
                dict(os.environ, PYTHONPATH=str(ROOT), PYPROXY_NATIVE="1" if native else "0"),
            ), port

        candidates = [
            ("direct", cand_direct, "0"),
            ("nginx", lambda: cand_nginx(1, "1"), "0"),
            ("caddy", cand_caddy, "0"),
            ("pyproxy", lambda: cand_pyproxy(1, "1"), "0"),
            ("pyproxy-interp", lambda: cand_pyproxy(1, "1", native=False), "0"),
            ("pyproxy-asyncio", lambda: cand_pyproxy(1, "1", uvloop=False), "0"),
            ("nginx-2w", lambda: cand_nginx(2, "0,1"), "0,1"),
            ("pyproxy-2w", lambda: cand_pyproxy(2, "0,1"), "0,1"),
        ]
        only = set(filter(None, args.only.split(",")))
        sizes = [(f"/{label}.{'txt' if label == '4k' else 'bin'}", label) for label in args.sizes]
        rounds = [
            (rnd, c) for rnd in range(args.rounds) for c in candidates if not only or c[0] in only
        ]
        for rnd, (name, make, wrk_cpu) in rounds:
            proc, port = make()
            if proc is not None:
                procs.append(proc)
            try:
                wait_port(port)
                for path, label in sizes:
                    url = f"http://127.0.0.1:{port}{path}"
                    wrk(url, args.warmup, args.conns, wrk_cpu)
                    pid = proc.pid if proc is not None else origin.pid
                    cpu0 = tree_cpu_s(pid)
                    r: dict[str, float] = wrk(url, args.duration, args.conns, wrk_cpu)
                    cpu = tree_cpu_s(pid) - cpu0
                    r["cpu_us_per_req"] = cpu / r["requests"] * 1e6 if r["requests"] else 0.0
                    r["req_per_cpu_s"] = r["requests"] / cpu if cpu else 0.0
                    results.append({"target": name, "size": label, "round": rnd, **r})
                    print(
                        f"[{rnd + 1}] {name:16} {label:3} {r['rps']:>10.0f} req/s  "
                        f"{r['mbs']:>8.1f} MB/s  "
                        f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                        f"CPU {r['cpu_us_per_req']:.1f} µs/req  non2xx {r['non2xx']:.0f}",
                        flush=True,
                    )
            finally:
                if proc is not None:
                    stop(proc)
                    procs.remove(proc)
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(d, ignore_errors=True)

    def per_cpu(target: str, size: str, rnd: int) -> float:
        return next(
            (
                float(r["req_per_cpu_s"])  # type: ignore[arg-type]
                for r in results
                if (r["target"], r["size"], r["round"]) == (target, size, rnd)
            ),
            0.0,
        )

    # Medians over rounds; each ratio is taken against nginx/Caddy of the same round (measured
    # minutes apart at most), then the median of those ratios is reported.
    print(
        f"\nmedians over {args.rounds} round(s)\n"
        "| target | size | req/s | MB/s | p50 ms | p99 ms | CPU µs/req | req/CPU-s vs nginx |"
        " vs caddy |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    keys = list(dict.fromkeys((str(r["target"]), str(r["size"])) for r in results))
    for target, size in keys:
        rows = [r for r in results if (r["target"], r["size"]) == (target, size)]

        def med(field: str, rows: list[dict[str, object]] = rows) -> float:
            return statistics.median(float(r[field]) for r in rows)  # type: ignore[arg-type]

        def ratio(peer: str, rows: list[dict[str, object]] = rows, size: str = size) -> float:
            values = [
                float(r["req_per_cpu_s"]) / per_cpu(peer, size, int(r["round"]))  # type: ignore[arg-type, call-overload]
                for r in rows
                if per_cpu(peer, size, int(r["round"]))  # type: ignore[call-overload]
            ]
            return statistics.median(values) if values else 0.0

        print(
            f"| {target} | {size} | {med('rps'):.0f} | {med('mbs'):.1f} | "
            f"{med('p50_ms'):.2f} | {med('p99_ms'):.2f} | {med('cpu_us_per_req'):.1f} | "
            f"{ratio('nginx'):.2f}x | {ratio('caddy'):.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
