"""The suite's output: results.json, results.md and PNG charts (matplotlib) in one folder.

Every figure is the median over rounds with its spread (min, max, the values per round); each
ratio against nginx or Caddy is taken within a round and the median of those ratios reported
(bench/common.py median_ratio).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import median_ratio, spread
from bench.suite import CANDIDATES, DESCRIPTIONS, SCENARIOS, Outcome, Row

CHARTS = (
    "cpu_per_request.png",
    "latency_percentiles.png",
    "concurrency_sweep.png",
    "memory_per_connection.png",
)


def figures(rows: list[Row]) -> list[dict[str, Any]]:
    """One entry per (scenario, candidate, point): every metric's spread over rounds, and the
    request-per-CPU-second ratios against nginx and Caddy of the same round."""
    keys = list(dict.fromkeys((r.scenario, r.candidate, r.point) for r in rows))
    out: list[dict[str, Any]] = []
    for scenario, candidate, point in keys:
        mine = [
            r for r in rows if (r.scenario, r.candidate, r.point) == (scenario, candidate, point)
        ]
        metrics = {
            name: spread(r.metrics[name] for r in mine)
            for name in mine[0].metrics
            if all(name in r.metrics for r in mine)
        }
        entry: dict[str, Any] = {
            "scenario": scenario,
            "candidate": candidate,
            "point": point,
            "metrics": metrics,
        }
        mine_by_round = {r.round: r.metrics.get("req_per_cpu_s", 0.0) for r in mine}
        for peer in ("nginx", "caddy"):
            peer_by_round = {
                r.round: r.metrics.get("req_per_cpu_s", 0.0)
                for r in rows
                if (r.scenario, r.candidate, r.point) == (scenario, peer, point)
            }
            entry[f"per_cpu_vs_{peer}"] = median_ratio(mine_by_round, peer_by_round)
        out.append(entry)
    return out


def write_json(
    path: Path, meta: dict[str, Any], outcome: Outcome, figs: list[dict[str, Any]]
) -> None:
    doc = {
        **meta,
        "scenarios": {s: DESCRIPTIONS[s] for s in SCENARIOS},
        "figures": figs,
        "skipped": outcome.notes,
        "raw": [
            {
                "scenario": r.scenario,
                "candidate": r.candidate,
                "round": r.round,
                "point": r.point,
                **r.metrics,
            }
            for r in outcome.rows
        ],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")


def _med(fig: dict[str, Any], name: str) -> float | None:
    m = fig["metrics"].get(name)
    return None if m is None else float(m["median"])


def _fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _range(fig: dict[str, Any], name: str, digits: int = 1) -> str:
    m = fig["metrics"].get(name)
    if m is None:
        return "-"
    if len(m["rounds"]) == 1:
        return f"{m['median']:.{digits}f}"
    return f"{m['median']:.{digits}f} ({m['min']:.{digits}f}-{m['max']:.{digits}f})"


def write_markdown(
    path: Path, meta: dict[str, Any], outcome: Outcome, figs: list[dict[str, Any]]
) -> None:
    lines = [
        f"# pyproxy benchmark suite: {meta['mode']} mode, {meta['date']}, commit {meta['commit']}",
        "",
        f"{meta['machine']['cpu']}, {meta['machine']['cores']} cores, kernel "
        f"{meta['machine']['kernel']}, load average at start "
        f"{' '.join(meta['machine']['loadavg_at_start'])} (at the end "
        f"{' '.join(meta['loadavg_at_end'])}); {meta['rounds']} round(s), "
        f"{meta['duration_s']} s per measured run. Tools: "
        + "; ".join(v if k in v.lower() else f"{k} {v}" for k, v in meta["tools"].items())
        + f". pyproxy compiled build: {meta['native']}.",
        "",
        "Medians over rounds (min-max in brackets when there are several); `vs nginx` / `vs "
        "Caddy` are requests per CPU-second relative to that proxy in the same round.",
        "",
        "| scenario | candidate | req/s | CPU µs/req | p50 ms | p99 ms | p99.9 ms | failed "
        "| vs nginx | vs Caddy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def order(fig: dict[str, Any]) -> tuple[int, int, int]:
        return (
            SCENARIOS.index(fig["scenario"]),
            fig["point"] or 0,
            CANDIDATES.index(fig["candidate"]),
        )

    for fig in sorted(figs, key=order):
        if fig["scenario"] == "idle-memory":
            continue
        scenario = fig["scenario"] + (f" c={fig['point']}" if fig["point"] is not None else "")
        lines.append(
            f"| {scenario} | {fig['candidate']} | {_range(fig, 'rps', 0)} | "
            f"{_range(fig, 'cpu_us_per_req')} | {_fmt(_med(fig, 'p50_ms'), 2)} | "
            f"{_fmt(_med(fig, 'p99_ms'), 2)} | {_fmt(_med(fig, 'p999_ms'), 2)} | "
            f"{_fmt(_med(fig, 'failed'), 0)} | {_fmt(fig['per_cpu_vs_nginx'], 2, 'x')} | "
            f"{_fmt(fig['per_cpu_vs_caddy'], 2, 'x')} |"
        )
    idle = [f for f in figs if f["scenario"] == "idle-memory"]
    if idle:
        lines += [
            "",
            "Idle keepalive connections (one 4 KiB request each, then held open): PSS of the "
            "candidate's process tree.",
            "",
            "| candidate | connections | KiB per connection | PSS before MiB | PSS after MiB |",
            "|---|---:|---:|---:|---:|",
        ]
        for fig in idle:
            lines.append(
                f"| {fig['candidate']} | {_fmt(_med(fig, 'idle_conns'), 0)} | "
                f"{_range(fig, 'kib_per_conn')} | {_fmt(_med(fig, 'pss_before_mib'))} | "
                f"{_fmt(_med(fig, 'pss_after_mib'))} |"
            )
    if outcome.notes:
        lines += ["", "Skipped:", ""]
        lines += [f"- {n['candidate']} {n['scenario']}: {n['reason']}" for n in outcome.notes]
    lines += ["", "Charts: " + ", ".join(f"![{c}]({c})" for c in CHARTS), ""]
    path.write_text("\n".join(lines))


def write_charts(out: Path, figs: list[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    colors = dict(
        zip(CANDIDATES, ("#777777", "#2a9d8f", "#e9c46a", "#e76f51", "#f4a261"), strict=True)
    )
    written: list[Path] = []

    def log_or_empty(ax: Any) -> None:
        """Log scale when there is data; otherwise say so (a run of a subset of scenarios)."""
        if ax.has_data():
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "no data in this run", ha="center", transform=ax.transAxes)

    def grouped_bars(
        ax: Any, groups: list[str], series: dict[str, list[tuple[float, float, float] | None]]
    ) -> None:
        """Bars per group, one per series; error bars are the min..max over rounds."""
        width = 0.8 / max(1, len(series))
        for i, (name, values) in enumerate(series.items()):
            xs, ys, lo, hi = [], [], [], []
            for g, v in enumerate(values):
                if v is None:
                    continue
                xs.append(g + i * width - 0.4 + width / 2)
                ys.append(v[0])
                lo.append(v[0] - v[1])
                hi.append(v[2] - v[0])
            if not xs:
                continue  # no figure for this candidate: no (empty) artists either
            ax.bar(xs, ys, width, yerr=[lo, hi], label=name, color=colors.get(name), capsize=2)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=30, ha="right")
        if ax.has_data():
            ax.legend(fontsize=8)

    def value(fig: dict[str, Any] | None, name: str) -> tuple[float, float, float] | None:
        if fig is None or name not in fig["metrics"]:
            return None
        m = fig["metrics"][name]
        return float(m["median"]), float(m["min"]), float(m["max"])

    def find(scenario: str, candidate: str, point: int | None = None) -> dict[str, Any] | None:
        return next(
            (
                f
                for f in figs
                if (f["scenario"], f["candidate"], f["point"]) == (scenario, candidate, point)
            ),
            None,
        )

    present = [c for c in CANDIDATES if any(f["candidate"] == c for f in figs)]

    # 1. CPU µs per request by scenario (log scale: 1 MiB responses cost 100x a 4 KiB one).
    cpu_scenarios = [
        s
        for s in SCENARIOS
        if s not in ("sweep", "idle-memory", "reload")
        and any(f["scenario"] == s and "cpu_us_per_req" in f["metrics"] for f in figs)
    ]
    fig, ax = plt.subplots(figsize=(11, 5))
    grouped_bars(
        ax,
        cpu_scenarios,
        {c: [value(find(s, c), "cpu_us_per_req") for s in cpu_scenarios] for c in present},
    )
    log_or_empty(ax)
    ax.set_ylabel("CPU µs per request (candidate's processes), log scale")
    ax.set_title("CPU per request by scenario (lower is better)")
    fig.tight_layout()
    written.append(out / CHARTS[0])
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    # 2. Latency percentiles at the default load (HTTP/1.1 4 KiB, 50 connections).
    fig, ax = plt.subplots(figsize=(9, 5))
    pcts = ["p50_ms", "p90_ms", "p99_ms", "p999_ms"]
    grouped_bars(
        ax,
        ["p50", "p90", "p99", "p99.9"],
        {c: [value(find("http1-4k", c), p) for p in pcts] for c in present},
    )
    log_or_empty(ax)
    ax.set_ylabel("latency ms (wrk), log scale")
    ax.set_title("Latency percentiles, HTTP/1.1 4 KiB keepalive, 50 connections")
    fig.tight_layout()
    written.append(out / CHARTS[1])
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    # 3. The concurrency sweep: p50/p99/p99.9 latency and req/s against connections.
    fig, (ax_lat, ax_rps) = plt.subplots(1, 2, figsize=(12, 5))
    for c in present:
        pts = sorted(
            (f["point"], f) for f in figs if f["scenario"] == "sweep" and f["candidate"] == c
        )
        if not pts:
            continue
        xs = [p for p, _ in pts]
        for metric, style in (("p50_ms", "--"), ("p99_ms", "-"), ("p999_ms", ":")):
            ax_lat.plot(
                xs,
                [_med(f, metric) for _, f in pts],
                linestyle=style,
                marker="o" if metric == "p99_ms" else None,
                color=colors.get(c),
                label=c if metric == "p99_ms" else None,  # one legend entry per candidate
            )
        ax_rps.plot(xs, [_med(f, "rps") for _, f in pts], marker="o", color=colors.get(c), label=c)
    for ax in (ax_lat, ax_rps):
        if ax.has_data():
            ax.set_xscale("log")
        ax.set_xlabel("connections (wrk -t1)")
        if ax.has_data():
            ax.legend(fontsize=7)
    log_or_empty(ax_lat)
    ax_lat.set_ylabel("latency ms, log scale")
    ax_lat.set_title("Latency vs connections (4 KiB): p50 --, p99 -, p99.9 ..")
    ax_rps.set_ylabel("requests/s")
    ax_rps.set_title("Throughput vs connections (4 KiB)")
    fig.tight_layout()
    written.append(out / CHARTS[2])
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    # 4. Memory per idle connection.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    mem = [
        (c, v) for c in present if (v := value(find("idle-memory", c), "kib_per_conn")) is not None
    ]
    ax.bar(
        [c for c, _ in mem],
        [v[0] for _, v in mem],
        yerr=[[v[0] - v[1] for _, v in mem], [v[2] - v[0] for _, v in mem]],
        color=[colors.get(c) for c, _ in mem],
        capsize=3,
    )
    ax.set_ylabel("KiB per idle keepalive connection (PSS)")
    ax.set_title("Memory per idle connection (lower is better)")
    fig.tight_layout()
    written.append(out / CHARTS[3])
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written
