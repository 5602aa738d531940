"""`python -m bench`: the benchmark suite, pyproxy against nginx, Caddy and the direct limit.

    python -m bench --quick --out /tmp/bench-out       # about 3 minutes
    python -m bench --out bench/results/suite          # full: 3 rounds, about 20 minutes
    python -m bench --smoke --out DIR                  # every scenario once, about a minute
    python -m bench --quick --scenarios http1-4k,sweep --candidates nginx,pyproxy-interp

Installs nothing: it says which of nginx, caddy, wrk, h2load is missing and skips what needs it
(nginx and wrk are required: the origin and the load). Writes results.json, results.md and the
PNG charts to --out. See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
from pathlib import Path

from bench.common import ROOT
from bench.suite import (
    CANDIDATES,
    MODES,
    SCENARIOS,
    Bench,
    Outcome,
    find_tools,
    git_commit,
    machine_facts,
    native_status,
    tool_versions,
)


def parse_list(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(allowed)})")
    return chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    speed = ap.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="1 round, short runs (~3 min)")
    speed.add_argument("--smoke", action="store_true", help="every scenario once, 1 s runs")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "suite")
    ap.add_argument("--scenarios", default="", help=f"comma list of: {', '.join(SCENARIOS)}")
    ap.add_argument("--candidates", default="", help=f"comma list of: {', '.join(CANDIDATES)}")
    ap.add_argument("--idle-conns", type=int, default=0, help="idle-memory connections")
    args = ap.parse_args(argv)
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.idle_conns > 0:
        mode = dataclasses.replace(mode, idle_conns=args.idle_conns)
    scenarios = parse_list(args.scenarios, SCENARIOS, "scenario") or list(SCENARIOS)
    scenarios = [s for s in SCENARIOS if s in scenarios]  # the suite's order
    wanted = parse_list(args.candidates, CANDIDATES, "candidate") or list(CANDIDATES)
    outcome = Outcome()

    tools = find_tools()
    missing = [t for t, path in tools.items() if path is None]
    print(
        "tools: " + ", ".join(f"{t} {'MISSING' if p is None else p}" for t, p in tools.items()),
        flush=True,
    )
    for required in ("nginx", "wrk", "taskset"):
        if tools[required] is None:
            print(
                f"{required} is required (the origin is nginx, the load is wrk, pinning is "
                "taskset); install it (Debian: nginx, wrk, util-linux) and run again",
                file=sys.stderr,
            )
            return 2
    if missing:
        print(f"missing, their parts are skipped: {', '.join(missing)}", flush=True)
    native_ok, native_text = native_status()
    print(f"pyproxy compiled build: {native_text}", flush=True)
    candidates: list[str] = []
    for cand in wanted:
        if cand == "caddy" and tools["caddy"] is None:
            outcome.skip("*", cand, "caddy is missing")
        elif cand == "pyproxy" and not native_ok:
            outcome.skip("*", cand, f"compiled build {native_text}")
        else:
            candidates.append(cand)

    started = datetime.datetime.now(datetime.UTC)
    machine = machine_facts()  # before the run: its load average is the machine's, not ours
    bench = Bench(mode, tools, outcome)
    print(
        f"mode {mode.name}: {mode.rounds} round(s), {mode.duration_s} s runs, "
        f"budget {mode.budget_s:.0f} s; candidates {', '.join(candidates)}",
        flush=True,
    )
    bench.run(candidates, scenarios)

    from bench import report

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "mode": mode.name,
        "date": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.datetime.now(datetime.UTC) - started).total_seconds(), 1),
        "commit": git_commit(),
        "machine": machine,
        "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
        "tools": tool_versions(tools),
        "native": native_text,
        "rounds": mode.rounds,
        "duration_s": mode.duration_s,
        "warmup_s": mode.warmup_s,
        "sweep": list(mode.sweep),
        "idle_conns": mode.idle_conns,
        "reloads": mode.reloads,
        "candidates": candidates,
        "requested_scenarios": scenarios,
    }
    figs = report.figures(outcome.rows)
    report.write_json(args.out / "results.json", meta, outcome, figs)
    report.write_markdown(args.out / "results.md", meta, outcome, figs)
    charts = report.write_charts(args.out, figs)
    print(
        f"wrote {args.out / 'results.json'}, results.md and {len(charts)} charts "
        f"in {meta['seconds']:.0f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
