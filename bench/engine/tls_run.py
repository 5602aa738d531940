#!/usr/bin/env python3
"""HTTPS benchmark: pyproxy vs nginx vs Caddy terminating TLS in front of one nginx origin.

Two loads per candidate, both 4 KiB responses over TLS (a trustme certificate for `localhost`):
- keepalive: wrk keeps its connections, so this measures TLS record + proxy cost per request;
- handshakes: every request sends `Connection: close`, so each one is a new TCP connection and
  a full TLS handshake (wrk does not resume sessions): requests/s here is handshakes/s.

Pinning as in run.py (wrk and origin on core 0, the proxy on core 1); CPU per request is the
proxy's process-tree utime+stime. All servers listen on 127.0.0.1 and are stopped by pid.

    .venv/bin/python bench/engine/tls_run.py [--duration 5] [--only pyproxy,python-floor]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.common import NGINX_ORIGIN, ROOT, free_port, start, stop, tree_cpu_s, wait_port

NGINX_TLS_PROXY = """
worker_processes 1; daemon off; pid {d}/tls-proxy.pid; error_log {d}/tls-proxy-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream origin {{ server 127.0.0.1:{origin}; keepalive 128; }}
  server {{ listen 127.0.0.1:{port} ssl; server_name localhost;
    ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ proxy_pass http://origin; proxy_http_version 1.1;
      proxy_set_header Connection ""; }} }} }}
"""

# The same Caddyfile for Caddy and pyproxy: one HTTPS site with a certificate from files.
CADDYFILE_TLS = """{{
\tadmin off
\tauto_https disable_redirects
\tstorage file_system {d}/storage-{name}
}}
https://localhost:{port} {{
\tbind 127.0.0.1
\ttls {cert} {key}
\treverse_proxy 127.0.0.1:{origin}
}}
"""


def wrk_tls(url: str, duration: int, conns: int, close: bool) -> dict[str, float]:
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, timeout=duration + 30, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)] if p99 else 0.0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p99_ms": p99_ms,
        "requests": rps * duration,
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument(
        "--only", default="", help="comma list of candidates: nginx,caddy,pyproxy,python-floor"
    )
    args = ap.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    for tool in (nginx, "wrk", "taskset"):
        if not shutil.which(tool):
            print(f"missing {tool}", file=sys.stderr)
            return 1
    d = Path(tempfile.mkdtemp(prefix="pyproxy-tls-bench-"))
    d.chmod(0o755)  # nginx workers run as nobody
    (d / "www").mkdir()
    (d / "www" / "4k.txt").write_bytes(b"x" * 4096)
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    cert, key = d / "cert.pem", d / "key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    with open(cert, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    origin_port = free_port()
    (d / "origin.conf").write_text(NGINX_ORIGIN.format(d=d, port=origin_port))
    origin = start(["taskset", "-c", "0", nginx, "-c", str(d / "origin.conf"), "-p", str(d)], d)
    procs = [origin]
    py = str(ROOT / ".venv" / "bin" / "python")
    if not Path(py).exists():
        py = sys.executable
    env = dict(os.environ, XDG_DATA_HOME=str(d / "xdg"), XDG_CONFIG_HOME=str(d / "xdg"))

    def caddyfile(name: str, port: int) -> Path:
        path = d / f"{name}.Caddyfile"
        path.write_text(
            CADDYFILE_TLS.format(d=d, name=name, port=port, cert=cert, key=key, origin=origin_port)
        )
        return path

    def cand_nginx(port: int) -> subprocess.Popen[bytes]:
        conf = d / "tls-proxy.conf"
        conf.write_text(
            NGINX_TLS_PROXY.format(d=d, port=port, origin=origin_port, cert=cert, key=key)
        )
        return start(["taskset", "-c", "1", nginx, "-c", str(conf), "-p", str(d)], d)

    def cand_caddy(port: int) -> subprocess.Popen[bytes]:
        cf = caddyfile("caddy", port)
        cmd = ["taskset", "-c", "1", "caddy", "run", "--config", str(cf), "--adapter", "caddyfile"]
        return start(cmd, d, env)

    def cand_pyproxy(port: int) -> subprocess.Popen[bytes]:
        cf = caddyfile("pyproxy", port)
        cmd = ["taskset", "-c", "1", py, "-m", "proxy", "run", "--config", str(cf)]
        return start([*cmd, "--adapter", "caddyfile", "--workers", "1"], d, env)

    def cand_floor(port: int) -> subprocess.Popen[bytes]:
        floor = str(Path(__file__).with_name("tls_floor.py"))
        return start(["taskset", "-c", "1", py, floor, str(port), str(cert), str(key)], d)

    candidates = {
        "nginx": cand_nginx,
        "caddy": cand_caddy,
        "pyproxy": cand_pyproxy,
        "python-floor": cand_floor,
    }
    only = set(filter(None, args.only.split(","))) or set(candidates)
    results: list[tuple[str, str, dict[str, float]]] = []
    try:
        wait_port(origin_port)
        for name, make in candidates.items():
            if name not in only or (name == "caddy" and not shutil.which("caddy")):
                continue
            port = free_port()
            proc = make(port)
            procs.append(proc)
            try:
                wait_port(port, timeout_s=30)
                url = f"https://localhost:{port}/4k.txt"
                for mode, close in (("keepalive", False), ("handshakes", True)):
                    wrk_tls(url, args.warmup, args.conns, close)
                    cpu0 = tree_cpu_s(proc.pid)
                    r = wrk_tls(url, args.duration, args.conns, close)
                    cpu = tree_cpu_s(proc.pid) - cpu0
                    r["cpu_us_per_req"] = cpu / r["requests"] * 1e6 if r["requests"] else 0.0
                    r["req_per_cpu_s"] = r["requests"] / cpu if cpu else 0.0
                    results.append((name, mode, r))
                    print(
                        f"{name:12} {mode:10} {r['rps']:>9.0f} req/s  p99 {r['p99_ms']:.2f} ms  "
                        f"CPU {r['cpu_us_per_req']:.1f} µs/req  non2xx {r['non2xx']:.0f}",
                        flush=True,
                    )
            finally:
                stop(proc)
                procs.remove(proc)
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(d, ignore_errors=True)

    def per_cpu(target: str, mode: str) -> float:
        return next((r["req_per_cpu_s"] for n, m, r in results if (n, m) == (target, mode)), 0.0)

    print("\n| target | load | req/s | p99 ms | CPU µs/req | req/CPU-s vs nginx | vs caddy |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, mode, r in results:
        ng, cd = per_cpu("nginx", mode), per_cpu("caddy", mode)
        rel_n = r["req_per_cpu_s"] / ng if ng else 0.0
        rel_c = r["req_per_cpu_s"] / cd if cd else 0.0
        print(
            f"| {name} | {mode} | {r['rps']:.0f} | {r['p99_ms']:.2f} | "
            f"{r['cpu_us_per_req']:.1f} | {rel_n:.2f}x | {rel_c:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
