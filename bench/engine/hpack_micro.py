#!/usr/bin/env python3
"""Micro-benchmark of the HPACK codec (proxy/http/hpack.py) against python-hyper's `hpack`.

Decodes typical request heads (h2load's and a browser's) and encodes a typical proxied response
head, in µs per call, best of several rounds: "cold" is the first block of a connection (a fresh
codec, every field a literal), "warm" the same head again on a connection that has seen it (the
steady state of a benchmark: mostly dynamic-table indexes).

    .venv/bin/python bench/engine/hpack_micro.py [--n 20000] [--rounds 5] [--compile]

Ours runs as imported: compiled when the native build (proxy/native.py) includes it, else
interpreted. `--compile` additionally compiles just the two HPACK modules with mypyc into a
temporary directory (main's build is left alone) and measures that copy too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import hpack  # noqa: E402

Fields = list[tuple[bytes, bytes]]

H2LOAD_REQUEST: Fields = [
    (b":method", b"GET"),
    (b":path", b"/"),
    (b":scheme", b"https"),
    (b":authority", b"127.0.0.1:8443"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]
BROWSER_REQUEST: Fields = [
    (b":method", b"GET"),
    (b":authority", b"www.example.org"),
    (b":scheme", b"https"),
    (b":path", b"/static/css/main.css?v=20261203"),
    (b"sec-ch-ua", b'"Chromium";v="131", "Not_A Brand";v="24"'),
    (b"sec-ch-ua-mobile", b"?0"),
    (b"sec-ch-ua-platform", b'"Linux"'),
    (
        b"user-agent",
        b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        b"Chrome/131.0.0.0 Safari/537.36",
    ),
    (b"accept", b"text/css,*/*;q=0.1"),
    (b"sec-fetch-site", b"same-origin"),
    (b"sec-fetch-mode", b"no-cors"),
    (b"sec-fetch-dest", b"style"),
    (b"referer", b"https://www.example.org/"),
    (b"accept-encoding", b"gzip, deflate, br, zstd"),
    (b"accept-language", b"en-GB,en-US;q=0.9,en;q=0.8"),
    (b"cookie", b"_ga=GA1.1.1234567890.1733200000; theme=dark"),
    (b"priority", b"u=0"),
]
RESPONSE: Fields = [
    (b":status", b"200"),
    (b"alt-svc", b'h3=":443"; ma=2592000'),
    (b"content-type", b"text/html; charset=utf-8"),
    (b"content-length", b"4096"),
    (b"date", b"Thu, 03 Dec 2026 17:00:00 GMT"),
    (b"etag", b'"d5e1a3f0"'),
    (b"last-modified", b"Wed, 02 Dec 2026 09:12:44 GMT"),
    (b"server", b"Caddy"),
    (b"vary", b"Accept-Encoding"),
]


def best_us(fn: Callable[[], object], n: int, rounds: int) -> float:
    """Best per-call time in µs over `rounds` runs of `n` calls (the least disturbed run)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / n / 1000)
    return best


def measure(n: int, rounds: int) -> dict[str, float]:
    """µs per call of each case, ours and theirs, in this interpreter as imported."""
    from proxy.http.hpack import Decoder, Encoder

    def decode_cold_ours(block: bytes) -> object:
        return Decoder().decode(block)

    def decode_cold_hpack(block: bytes) -> object:
        return hpack.Decoder().decode(block, raw=True)

    results: dict[str, float] = {}
    for label, request in (("h2load", H2LOAD_REQUEST), ("browser", BROWSER_REQUEST)):
        client = hpack.Encoder()
        cold = client.encode(request)
        warm = client.encode(request)  # only indexes: decoding it leaves the table unchanged
        results[f"decode {label} cold/ours"] = best_us(partial(decode_cold_ours, cold), n, rounds)
        results[f"decode {label} cold/hpack"] = best_us(partial(decode_cold_hpack, cold), n, rounds)
        ours = Decoder()
        ours.decode(cold)
        theirs = hpack.Decoder()
        theirs.decode(cold, raw=True)
        results[f"decode {label} warm/ours"] = best_us(partial(ours.decode, warm), n, rounds)
        results[f"decode {label} warm/hpack"] = best_us(
            partial(theirs.decode, warm, raw=True), n, rounds
        )
    results["encode response cold/ours"] = best_us(lambda: Encoder().encode(RESPONSE), n, rounds)
    results["encode response cold/hpack"] = best_us(
        lambda: hpack.Encoder().encode(RESPONSE), n, rounds
    )
    encoder = Encoder()
    encoder.encode(RESPONSE)
    their_encoder = hpack.Encoder()
    their_encoder.encode(RESPONSE)
    results["encode response warm/ours"] = best_us(lambda: encoder.encode(RESPONSE), n, rounds)
    results["encode response warm/hpack"] = best_us(
        lambda: their_encoder.encode(RESPONSE), n, rounds
    )
    return results


def compiled_results(n: int, rounds: int) -> dict[str, float]:
    """Compile the two modules with mypyc in a temporary copy and measure there."""
    with tempfile.TemporaryDirectory(prefix="hpack-micro-") as tmp_name:
        tmp = Path(tmp_name)
        http = tmp / "proxy" / "http"
        http.mkdir(parents=True)
        (tmp / "proxy" / "__init__.py").write_text("")
        (http / "__init__.py").write_text("")
        for name in ("hpack.py", "hpack_tables.py"):
            shutil.copy(ROOT / "proxy" / "http" / name, http / name)
        mypyc = Path(sys.executable).with_name("mypyc")
        subprocess.run(
            [str(mypyc), "proxy/http/hpack_tables.py", "proxy/http/hpack.py"],
            cwd=tmp,
            check=True,
            capture_output=True,
            timeout=600,
        )
        # Imported before the script runs (which puts the worktree first on sys.path), so the
        # compiled copy is the one in sys.modules; the child checks it is.
        code = (
            "import json, sys, runpy; sys.path.insert(0, sys.argv[1]); "
            "import proxy.http.hpack as h; assert h.__file__.endswith('.so'), h.__file__; "
            f"m = runpy.run_path({str(Path(__file__))!r}, run_name='hpack_micro'); "
            f"print(json.dumps(m['measure']({n}, {rounds})))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp)],
            cwd=tmp,
            env=dict(os.environ, PYPROXY_NATIVE="0"),
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        results: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
        return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="calls per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also measure a mypyc-compiled copy")
    args = ap.parse_args()
    import proxy.http.hpack as ours

    kind = "compiled" if str(ours.__file__).endswith(".so") else "interpreted"
    columns = {f"ours ({kind})": measure(args.n, args.rounds)}
    if args.compile:
        columns["ours (compiled)"] = compiled_results(args.n, args.rounds)
    cases = [k.removesuffix("/ours") for k in next(iter(columns.values())) if k.endswith("/ours")]
    head = f"{'µs per call':32}{'hpack':>9}" + "".join(f"{c:>22}{'ratio':>7}" for c in columns)
    print(head)
    for case in cases:
        theirs = next(iter(columns.values()))[f"{case}/hpack"]
        row = f"{case:32}{theirs:9.2f}"
        for results in columns.values():
            mine = results[f"{case}/ours"]
            row += f"{mine:22.2f}{theirs / mine:6.1f}x"
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
