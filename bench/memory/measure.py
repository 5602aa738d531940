"""Memory of a running pyproxy node, per process (pyproxy issue #15).

Starts `pyproxy run --workers N` on loopback with a small Caddyfile (an HTTP site, a TLS site
with the local CA, a reverse proxy), waits for the admin endpoint and for the first answer on
each site, then reads /proc/<pid>/smaps_rollup of the supervisor, its fork server and every
worker:

- USS (unique set size) = Private_Clean + Private_Dirty: what the process alone holds, freed
  when it exits. This is the per-worker cost.
- PSS = its own pages plus its share of the pages it shares (copy-on-write after fork).
- RSS, for comparison with `ps`.

Writes bench/memory/results/<label>.json. Usage:

    PYPROXY_NATIVE=0 python -m bench.memory.measure --workers 4 --label after
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
START_TIMEOUT_S = 60.0
FIELDS = ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Shared_Clean", "Shared_Dirty")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def caddyfile(ports: dict[str, int]) -> str:
    return (
        "{\n"
        f"\tadmin 127.0.0.1:{ports['admin']}\n"
        "\tdefault_bind 127.0.0.1\n"
        f"\thttp_port {ports['http']}\n"
        f"\thttps_port {ports['https']}\n"
        "}\n"
        f'localhost:{ports["https"]} {{\n\ttls internal\n\trespond "tls"\n}}\n'
        f"http://127.0.0.1:{ports['plain']} {{\n"
        f"\thandle /proxy/* {{\n\t\treverse_proxy 127.0.0.1:{ports['admin']}\n\t}}\n"
        '\trespond "plain"\n}\n'
    )


def smaps_rollup(pid: int) -> dict[str, int]:
    """The fields of /proc/<pid>/smaps_rollup in kB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB" and parts[0].rstrip(":") in FIELDS:
            out[parts[0].rstrip(":")] = int(parts[1])
    return out


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.extend(int(c) for c in text)
    return out


def process_name(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"pyproxy exited with {proc.returncode} before serving")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"pyproxy did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S} s")


def touch_sites(ports: dict[str, int], workers: int) -> None:
    """A few requests per worker on each site, so every worker has served (bounded count)."""
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    for _ in range(4 * workers):
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['plain']}/", timeout=10) as r:
            r.read()
        # SNI localhost: the TLS site's certificate (the local CA's).
        host = f"localhost:{ports['https']}"
        request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        raw = socket.create_connection(("127.0.0.1", ports["https"]), timeout=10)
        with insecure.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(request)
            while tls.recv(65536):
                pass


def measure(workers: int, label: str, settle_s: float) -> dict[str, Any]:
    ports = {k: free_port() for k in ("admin", "http", "https", "plain")}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "Caddyfile"
        path.write_text(caddyfile(ports))
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            XDG_DATA_HOME=str(Path(tmp) / "data"),
            XDG_CONFIG_HOME=str(Path(tmp) / "config"),
        )
        log = open(Path(tmp) / "log", "wb")  # noqa: SIM115 (closed below)
        cmd = [
            sys.executable,
            "-m",
            "proxy",
            "run",
            "--config",
            str(path),
            "--workers",
            str(workers),
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_ready(ports["admin"], proc)
            touch_sites(ports, workers)
            # Let the startup work (certificate maintenance's first round) finish.
            time.sleep(settle_s)
            procs: list[dict[str, Any]] = [{"role": "supervisor", "pid": proc.pid}]
            for c in children(proc.pid):
                role = "fork server" if process_name(c) == "pyproxy forksrv" else "worker"
                procs.append({"role": role, "pid": c})
            for p in procs:
                p.update({k.lower(): v for k, v in smaps_rollup(p["pid"]).items()})
                p["uss"] = p["private_clean"] + p["private_dirty"]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    worker_uss = [p["uss"] for p in procs if p["role"] == "worker"]
    return {
        "label": label,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
        "native": os.environ.get("PYPROXY_NATIVE", ""),
        "python": sys.version.split()[0],
        "workers": workers,
        "unit": "kB",
        "processes": procs,
        "worker_uss_max": max(worker_uss),
        "worker_uss_mean": sum(worker_uss) // len(worker_uss),
        "total_pss": sum(p["pss"] for p in procs),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--label", default="run")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after the first requests")
    args = ap.parse_args()
    result = measure(args.workers, args.label, args.settle)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.label}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    mb = 1024
    for p in result["processes"]:
        print(
            f"{p['role']:12} pid {p['pid']:7}  USS {p['uss'] / mb:6.1f} MB"
            f"  PSS {p['pss'] / mb:6.1f} MB  RSS {p['rss'] / mb:6.1f} MB"
        )
    print(
        f"worker USS max {result['worker_uss_max'] / mb:.1f} MB;"
        f" total PSS {result['total_pss'] / mb:.1f} MB -> {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
