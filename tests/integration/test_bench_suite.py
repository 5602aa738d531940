"""`python -m bench --quick` (pyproxy issue #16) runs every scenario against every candidate once
and writes its results folder. Asserts only that every scenario produced a figure, that nothing
was skipped for a failure, and that the files exist: never a speed (benchmarks are not tests).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("nginx", "caddy", "wrk", "h2load", "taskset")
# The quick mode's own budget is 420 s; on 2 idle cores it takes a good three minutes.
RUN_TIMEOUT_S = 540


def which(tool: str) -> str | None:
    return shutil.which(tool) or (
        f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None
    )


missing = [t for t in TOOLS if which(t) is None]
needs_tools = pytest.mark.skipif(
    bool(missing), reason=f"the bench suite needs {', '.join(missing)}"
)

# What a skip note may say when nothing went wrong: a scenario that does not apply (direct has
# nothing to reload, one origin worker), a compiled build that is not current for this checkout.
EXPECTED_SKIPS = ("nothing to reload", "one worker", "compiled build")


def test_wrk_report_gives_counts_rate_failures_and_percentiles() -> None:
    from bench.common import parse_wrk_report

    out = (
        "Running 2s test @ http://127.0.0.1:1/4k.txt\n"
        "BENCH requests 20000\nBENCH duration_us 2000000\nBENCH errors 1 2 3 4 5\n"
        "BENCH p50 850\nBENCH p90 1200\nBENCH p99 4000\nBENCH p99.9 12500\n"
    )
    r = parse_wrk_report(out)
    assert r["requests"] == 20000 and r["rps"] == 10000
    assert r["failed"] == 15 and r["errors_status"] == 4
    assert (r["p50_ms"], r["p99_ms"], r["p999_ms"]) == (0.85, 4.0, 12.5)
    with pytest.raises(ValueError, match="no wrk report"):
        parse_wrk_report("wrk: connection refused\n")


def test_ratios_are_taken_within_a_round_then_the_median() -> None:
    from bench.common import median_ratio

    # nginx moved between rounds; the candidate moved with it: 0.5x in every round, whereas
    # the ratio of the medians (100/150) would say 0.67x.
    candidate = {0: 50.0, 1: 100.0, 2: 150.0}
    nginx = {0: 100.0, 1: 150.0, 2: 300.0}
    assert median_ratio(candidate, nginx) == 0.5
    assert median_ratio(candidate, {}) is None  # no peer in any round: no ratio
    assert median_ratio({0: 1.0, 1: 3.0}, {0: 0.0, 1: 1.0}) == 3.0  # a round without the peer


@needs_tools
def test_quick_run_writes_every_scenario_and_the_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    doc = json.loads((out / "results.json").read_text())
    from bench.report import CHARTS
    from bench.suite import SCENARIOS

    unexpected = [
        n for n in doc["skipped"] if not any(text in n["reason"] for text in EXPECTED_SKIPS)
    ]
    assert unexpected == [], unexpected
    produced = {(f["scenario"], f["candidate"]) for f in doc["figures"]}
    skipped = {(n["scenario"], n["candidate"]) for n in doc["skipped"]}
    assert {"direct", "nginx", "caddy", "pyproxy-interp"} <= set(doc["candidates"])
    for scenario in SCENARIOS:
        assert any(s == scenario for s, _ in produced), f"no figure for {scenario}"
        for candidate in doc["candidates"]:
            assert (scenario, candidate) in produced | skipped, (scenario, candidate)
    # Every figure carries its spread over rounds; the sweep has one figure per point.
    assert all(
        {"median", "min", "max", "rounds"} <= set(m)
        for f in doc["figures"]
        for m in f["metrics"].values()
    )
    sweep_points = {f["point"] for f in doc["figures"] if f["scenario"] == "sweep"}
    assert sweep_points == set(doc["sweep"])
    assert doc["commit"] and doc["machine"]["cores"] and doc["tools"]["wrk"] != "missing"

    for chart in CHARTS:
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", chart
    table = (out / "results.md").read_text()
    for scenario in SCENARIOS:
        if scenario != "idle-memory":  # its own table, by candidate
            assert f"| {scenario}" in table, scenario
    assert "KiB per connection" in table
