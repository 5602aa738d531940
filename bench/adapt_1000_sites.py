"""Micro-benchmark: parse and adapt a generated 1,000-site Caddyfile (not a test).

Run: .venv/bin/python bench/adapt_1000_sites.py [--sites N] [--repeat R]
Prints the best wall-clock seconds of R runs for parse alone and for parse+adapt.
"""

from __future__ import annotations

import argparse
import time

from config.adapt import adapt_caddyfile
from config.caddyfile.parser import parse


def generate(sites: int) -> str:
    """A realistic mix: plain proxies, handle/handle_path blocks, tls, headers, logs."""
    parts = ["{\n\temail ops@example.com\n\tservers {\n\t\tprotocols h1 h2\n\t}\n}\n"]
    for i in range(sites):
        host = f"site{i}.example.com, www.site{i}.example.com"
        body = [f"\treverse_proxy backend{i % 16}:8080"]
        if i % 3 == 0:
            body.append("\theader X-Site " + str(i))
            body.append("\tencode gzip zstd")
        if i % 5 == 0:
            body.append(f"\thandle_path /api/* {{\n\t\treverse_proxy api{i % 4}:9000\n\t}}")
            body.append('\thandle {\n\t\trespond "fallback" 404\n\t}')
        if i % 7 == 0:
            body.append("\ttls internal")
        if i % 11 == 0:
            body.append(f"\tlog {{\n\t\toutput file /var/log/site{i}.log\n\t}}")
        parts.append(host + " {\n" + "\n".join(body) + "\n}\n")
    return "\n".join(parts)


def best_of(repeat: int, fn: object) -> float:
    assert callable(fn)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sites", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    text = generate(args.sites)
    parse_s = best_of(args.repeat, lambda: parse("Caddyfile", text))
    adapt_s = best_of(args.repeat, lambda: adapt_caddyfile(text, "Caddyfile"))
    config, _ = adapt_caddyfile(text, "Caddyfile")
    routes = sum(len(s.get("routes", [])) for s in config["apps"]["http"]["servers"].values())
    print(f"sites={args.sites} lines={text.count(chr(10))} routes={routes}")
    print(f"parse: {parse_s:.3f} s")
    print(f"parse+adapt: {adapt_s:.3f} s")


if __name__ == "__main__":
    main()
