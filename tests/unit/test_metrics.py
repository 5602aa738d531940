"""Metrics registry, Caddy's metric set, exposition format and cross-worker merging
(proxy.metrics). Output is checked with prometheus_client's own parser."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import (
    DURATION_BUCKETS_S,
    SIZE_BUCKETS_BYTES,
    ProxyMetrics,
    Registry,
    _go_float,
    cumulative_part,
    merge_snapshots,
    render_snapshot,
    render_snapshots,
    sanitize_code,
    sanitize_method,
)


def parse(text: str) -> dict[str, Any]:
    """{family name: {"type": ..., "samples": {(sample name, labels...): value}}}."""
    out: dict[str, Any] = {}
    for fam in text_string_to_metric_families(text):
        samples = {}
        for s in fam.samples:
            key = (s.name, *sorted(s.labels.items()))
            samples[key] = s.value
        out[fam.name] = {"type": fam.type, "documentation": fam.documentation, "samples": samples}
    return out


def sample(parsed: dict[str, Any], family: str, name: str, **labels: str) -> float:
    value: float = parsed[family]["samples"][(name, *sorted(labels.items()))]
    return value


LABELS = {"server": "srv0", "handler": "reverse_proxy"}
STATUS_LABELS = {**LABELS, "code": "200", "method": "GET"}


def test_buckets_are_caddys() -> None:
    # prometheus.DefBuckets and prometheus.ExponentialBuckets(256, 4, 8).
    assert DURATION_BUCKETS_S == (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
    assert SIZE_BUCKETS_BYTES == (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)


def test_render_parses_with_caddys_names_labels_and_values() -> None:
    m = ProxyMetrics(process=False)
    h = m.handler("srv0", "reverse_proxy")
    for duration, nbytes, status in [(0.003, 100, 200), (0.2, 5000, 200), (3.0, 300, 502)]:
        h.start()
        h.finish("GET", status, duration, 120, nbytes, ttfb_s=duration / 2)
    h.start()  # still in flight
    h.start()
    h.finish("BREW", None, 0.5, 10, 0, error=True)
    m.upstream_health("127.0.0.1:8080").set(1)
    m.upstream_health("127.0.0.1:8081").set(0)
    m.record_reload(True, now=1700000000.5)

    parsed = parse(m.render())
    assert parsed["caddy_http_requests"]["type"] == "counter"
    assert sample(parsed, "caddy_http_requests", "caddy_http_requests_total", **LABELS) == 4
    assert (
        sample(parsed, "caddy_http_request_errors", "caddy_http_request_errors_total", **LABELS)
        == 1
    )
    assert parsed["caddy_http_requests_in_flight"]["type"] == "gauge"
    assert (
        sample(parsed, "caddy_http_requests_in_flight", "caddy_http_requests_in_flight", **LABELS)
        == 1
    )

    dur = "caddy_http_request_duration_seconds"
    assert parsed[dur]["type"] == "histogram"
    assert sample(parsed, dur, dur + "_count", **STATUS_LABELS) == 2
    assert sample(parsed, dur, dur + "_sum", **STATUS_LABELS) == pytest.approx(0.203)
    assert sample(parsed, dur, dur + "_bucket", le="0.005", **STATUS_LABELS) == 1
    assert sample(parsed, dur, dur + "_bucket", le="0.1", **STATUS_LABELS) == 1
    assert sample(parsed, dur, dur + "_bucket", le="0.25", **STATUS_LABELS) == 2
    assert sample(parsed, dur, dur + "_bucket", le="+Inf", **STATUS_LABELS) == 2
    bad = {**LABELS, "code": "502", "method": "GET"}
    assert sample(parsed, dur, dur + "_bucket", le="2.5", **bad) == 0
    assert sample(parsed, dur, dur + "_bucket", le="5", **bad) == 1

    size = "caddy_http_response_size_bytes"
    assert sample(parsed, size, size + "_bucket", le="256", **STATUS_LABELS) == 1
    assert sample(parsed, size, size + "_bucket", le="16384", **STATUS_LABELS) == 2
    assert sample(parsed, size, size + "_bucket", le="4.194304e+06", **STATUS_LABELS) == 2
    assert sample(parsed, size, size + "_sum", **STATUS_LABELS) == 5100
    req = "caddy_http_request_size_bytes"
    assert sample(parsed, req, req + "_count", **STATUS_LABELS) == 2
    ttfb = "caddy_http_response_duration_seconds"
    assert sample(parsed, ttfb, ttfb + "_sum", **STATUS_LABELS) == pytest.approx(0.1015)

    # The failed request with no status is counted, but observed in no histogram; an unknown
    # method is never a label value of its own.
    assert not any("OTHER" in str(k) for k in parsed[dur]["samples"])

    up = "caddy_reverse_proxy_upstreams_healthy"
    assert sample(parsed, up, up, upstream="127.0.0.1:8080") == 1
    assert sample(parsed, up, up, upstream="127.0.0.1:8081") == 0
    ok = "caddy_config_last_reload_successful"
    assert sample(parsed, ok, ok) == 1
    ts = "caddy_config_last_reload_success_timestamp_seconds"
    assert sample(parsed, ts, ts) == 1700000000.5


def test_text_format_details() -> None:
    m = ProxyMetrics(process=False)
    h = m.handler("srv0", "static_response")
    h.start()
    h.finish("get", 0, 0.001, 10, 10)  # lower-case method, status 0 → GET, 200 (Caddy's rules)
    text = m.render()
    assert "# HELP caddy_http_requests_total Counter of HTTP(S) requests made.\n" in text
    assert "# TYPE caddy_http_request_duration_seconds histogram\n" in text
    assert (
        'caddy_http_response_size_bytes_bucket{server="srv0",handler="static_response",'
        'code="200",method="GET",le="1.048576e+06"} 1\n'
    ) in text
    # Families without samples are left out, like Go's client; output ends with a newline.
    assert "caddy_reverse_proxy_upstreams_healthy" not in text
    assert "caddy_config_last_reload_successful" not in text
    assert text.endswith("\n")
    # Sorted by family name.
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert names == sorted(names)


def test_label_values_are_escaped() -> None:
    r = Registry()
    fam = r.counter("x_total", "help with \\ backslash\nand newline", ("l",))
    fam.labels('a"b\\c\nd').inc(2)
    text = r.render()
    assert 'x_total{l="a\\"b\\\\c\\nd"} 2' in text
    parsed = parse(text)
    assert parsed["x"]["samples"][("x_total", ("l", 'a"b\\c\nd'))] == 2


def test_label_children_are_cached_and_checked() -> None:
    r = Registry()
    fam = r.counter("y_total", "y", ("a", "b"))
    assert fam.labels("1", "2") is fam.labels("1", "2")
    with pytest.raises(ValueError, match="expected 2 label values"):
        fam.labels("1")
    with pytest.raises(ValueError, match="already registered"):
        r.counter("y_total", "again")


def test_handler_binds_status_children_once() -> None:
    m = ProxyMetrics(process=False)
    h = m.handler("srv0", "reverse_proxy")
    for _ in range(3):
        h.start()
        h.finish("POST", 201, 0.01, 1, 1)
    assert len(h._by_status) == 1
    assert m.request_duration.labels("srv0", "reverse_proxy", "201", "POST").count == 3


def test_sanitizers_match_caddy() -> None:
    assert sanitize_method("get") == "GET"
    assert sanitize_method("PATCH") == "PATCH"
    assert sanitize_method("Get") == "OTHER"
    assert sanitize_method("PROPFIND") == "OTHER"
    assert sanitize_code(0) == "200"
    assert sanitize_code(404) == "404"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (1, "1"),
        (0.005, "0.005"),
        (2.5, "2.5"),
        (262144, "262144"),
        (1048576, "1.048576e+06"),
        (1e6, "1e+06"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (123.456, "123.456"),
        (-2.5, "-2.5"),
        (float("inf"), "+Inf"),
        (float("nan"), "NaN"),
    ],
)
def test_numbers_are_formatted_like_go(value: float, text: str) -> None:
    assert _go_float(value) == text


def worker(requests: int, in_flight: int, healthy: bool, status: int = 200) -> dict[str, Any]:
    m = ProxyMetrics(process=False)
    h = m.handler("srv0", "reverse_proxy")
    for i in range(requests):
        h.start()
        h.finish("GET", status, 0.02 * (i + 1), 100, 1000)
    for _ in range(in_flight):
        h.start()
    m.upstream_health("10.0.0.1:80").set(1 if healthy else 0)
    return m.snapshot()


def test_merge_two_worker_snapshots() -> None:
    a = worker(requests=3, in_flight=2, healthy=True)
    b = worker(requests=2, in_flight=1, healthy=False, status=500)
    supervisor = ProxyMetrics(process=False)
    supervisor.record_reload(True, now=100.0)
    # Snapshots are plain data: they survive JSON and pickle (how workers send them).
    a = json.loads(json.dumps(a))
    b = pickle.loads(pickle.dumps(b))
    merged = merge_snapshots([a, b, supervisor.snapshot()])
    parsed = parse(render_snapshot(merged))

    assert sample(parsed, "caddy_http_requests", "caddy_http_requests_total", **LABELS) == 5
    assert (
        sample(parsed, "caddy_http_requests_in_flight", "caddy_http_requests_in_flight", **LABELS)
        == 3
    )
    dur = "caddy_http_request_duration_seconds"
    assert sample(parsed, dur, dur + "_count", **STATUS_LABELS) == 3
    assert sample(parsed, dur, dur + "_sum", **STATUS_LABELS) == pytest.approx(0.12)
    assert sample(parsed, dur, dur + "_bucket", le="0.05", **STATUS_LABELS) == 2
    err = {**LABELS, "code": "500", "method": "GET"}
    assert sample(parsed, dur, dur + "_count", **err) == 2
    assert sample(parsed, dur, dur + "_bucket", le="0.025", **err) == 1
    # Health is a flag: healthy only if every worker sees it healthy.
    up = "caddy_reverse_proxy_upstreams_healthy"
    assert sample(parsed, up, up, upstream="10.0.0.1:80") == 0
    ok = "caddy_config_last_reload_successful"
    assert sample(parsed, ok, ok) == 1
    # Merging does not change its inputs, and render_snapshots is merge + render.
    assert render_snapshots([a, b, supervisor.snapshot()]) == render_snapshot(merged)
    assert (
        parse(render_snapshot(a))["caddy_http_requests"]["samples"][
            ("caddy_http_requests_total", *sorted(LABELS.items()))
        ]
        == 3
    )


def test_a_dead_workers_counts_stay_in_the_totals() -> None:
    # Worker a is scraped with 3 requests, serves 4 more nobody sees, and dies; its
    # replacement c starts from zero. Adding a's last scraped counters keeps every summed
    # counter from going down; its in-flight gauge ends with it.
    a, b = worker(requests=3, in_flight=2, healthy=True), worker(4, 0, True)
    before = parse(render_snapshots([a, b]))
    retired = merge_snapshots([{}, cumulative_part(a)])
    c = worker(requests=1, in_flight=0, healthy=True)
    after = parse(render_snapshots([retired, b, c]))
    total = ("caddy_http_requests", "caddy_http_requests_total")
    assert sample(before, *total, **LABELS) == 7
    assert sample(after, *total, **LABELS) == 8
    dur = "caddy_http_request_duration_seconds"
    assert sample(after, dur, dur + "_count", **STATUS_LABELS) == 8
    in_flight = ("caddy_http_requests_in_flight", "caddy_http_requests_in_flight")
    assert sample(before, *in_flight, **LABELS) == 2
    assert sample(after, *in_flight, **LABELS) == 0
    assert set(cumulative_part(a)) == {
        name for name, fam in a.items() if fam["type"] in ("counter", "histogram")
    }
    # Several dead workers accumulate.
    retired = merge_snapshots([retired, cumulative_part(c)])
    assert sample(parse(render_snapshot(retired)), *total, **LABELS) == 4


def test_worker_restarts_counter() -> None:
    m = ProxyMetrics(process=False)
    assert "pyproxy_worker_restarts" not in parse(m.render())  # workers do not expose it
    m.expose_restarts()
    name = ("pyproxy_worker_restarts", "pyproxy_worker_restarts_total")
    assert sample(parse(m.render()), *name) == 0
    m.record_worker_restart()
    merged = parse(render_snapshots([m.snapshot(), worker(1, 0, True)]))
    assert sample(merged, *name) == 1
    assert merged["pyproxy_worker_restarts"]["type"] == "counter"


def test_merge_rejects_mismatched_families() -> None:
    r1, r2 = Registry(), Registry()
    r1.counter("z_total", "z", ("a",)).labels("1").inc()
    r2.gauge("z_total", "z", ("a",)).labels("1").set(1)
    with pytest.raises(ValueError, match="disagree"):
        merge_snapshots([r1.snapshot(), r2.snapshot()])


def test_process_metrics_and_reset() -> None:
    m = ProxyMetrics()
    m.handler("srv0", "x").start()
    parsed = parse(m.render())
    assert parsed["process_cpu_seconds"]["type"] == "counter"
    assert sample(parsed, "process_start_time_seconds", "process_start_time_seconds") > 1e9
    merged = parse(render_snapshots([m.snapshot(), m.snapshot()]))
    start = "process_start_time_seconds"
    assert sample(merged, start, start) == sample(parsed, start, start)
    m.registry.reset()
    after = parse(m.render())
    assert "caddy_http_requests_in_flight" not in after
