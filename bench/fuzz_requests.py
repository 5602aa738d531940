#!/usr/bin/env python3
"""The long differential fuzz run: N generated HTTP/1.1 connections through running pyproxy
processes, each checked against an independent origin (h11) with the invariants of
tests/integration/hostilekit.py:

- no crash (every pyproxy process alive, no traceback in its log);
- no hang past the timeouts (every expected response arrives within --timeout);
- no request executed at the origin whose response the client did not get;
- no disagreement: the origin read exactly the requests (method, body, order) pyproxy parsed,
  the refusal has the status pyproxy's rules give, and the origin could parse what pyproxy
  forwarded.

    .venv/bin/python bench/fuzz_requests.py --n 100000 --lanes 4 [--seed 1]

Each lane is one pyproxy (1 worker) and one origin, fed one connection at a time so the origin's
records belong to that connection. Everything listens on 127.0.0.1; the run is bounded by --n
and --max-minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from hostilekit import RecordingOrigin, check_one, random_connection  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Lane:
    def __init__(self, tmp: Path, index: int) -> None:
        self.origin = RecordingOrigin()
        self.port = free_port()
        route = {
            "handle": [
                {
                    "handler": "reverse_proxy",
                    "upstreams": [{"dial": f"127.0.0.1:{self.origin.port}"}],
                }
            ]
        }
        server = {"listen": [f"127.0.0.1:{self.port}"], "routes": [route]}
        cfg = {"admin": {"disabled": True}, "apps": {"http": {"servers": {"fuzz": server}}}}
        path = tmp / f"lane{index}.json"
        path.write_text(json.dumps(cfg))
        self.log_path = tmp / f"lane{index}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CONFIG_HOME=str(tmp / "xdg"))
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--config", str(path), "--workers", "1"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env=env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"lane {index} did not start")

    def stop(self) -> tuple[bool, str]:
        alive = self.proc.poll() is None
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()
        self.origin.stop()
        return alive, self.log_path.read_text(errors="replace")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="connections to generate")
    ap.add_argument("--lanes", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=5.0, help="per connection, seconds")
    ap.add_argument("--max-minutes", type=float, default=90.0)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pyproxy-fuzz-"))
    lanes = [Lane(tmp, i) for i in range(args.lanes)]
    counts: Counter[str] = Counter()
    failures: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + args.max_minutes * 60
    started = time.monotonic()

    def run_lane(i: int) -> None:
        rng = random.Random(args.seed * 1000 + i)
        share = args.n // args.lanes + (1 if i < args.n % args.lanes else 0)
        for _ in range(share):
            if time.monotonic() > stop_at:
                return
            data = random_connection(rng)
            verdict = check_one(lanes[i].port, lanes[i].origin, data, args.timeout)
            with lock:
                counts["inputs"] += 1
                if verdict.ok:
                    counts["ok"] += 1
                else:
                    kind = re.sub(r"[0-9]+", "N", verdict.reason.split(":")[0])[:60]
                    counts[f"fail:{kind}"] += 1
                    if len(failures) < 20:
                        failures.append((verdict.reason, data))
            if counts["inputs"] % 5000 == 0 and i == 0:
                rate = counts["inputs"] / (time.monotonic() - started)
                print(f"  {counts['inputs']} inputs, {rate:.0f}/s, {dict(counts)}", flush=True)

    threads = [threading.Thread(target=run_lane, args=(i,)) for i in range(args.lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    executed = sum(lane.origin.count() for lane in lanes)
    crashes = 0
    for lane in lanes:
        alive, log = lane.stop()
        if not alive or "Traceback" in log:
            crashes += 1
            print(log[-3000:])
    elapsed = time.monotonic() - started
    result = {
        "inputs": counts["inputs"],
        "ok": counts["ok"],
        "failures": {k[5:]: v for k, v in counts.items() if k.startswith("fail:")},
        "crashed_processes": crashes,
        "requests_executed_at_origin": executed,
        "seconds": round(elapsed, 1),
        "seed": args.seed,
        "lanes": args.lanes,
        "date": time.strftime("%Y-%m-%d"),
        "commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
    }
    print(json.dumps(result, indent=2))
    for reason, data in failures:
        print(f"FAIL {reason}\n  {data!r}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if counts["ok"] == counts["inputs"] and not crashes else 1


if __name__ == "__main__":
    raise SystemExit(main())
