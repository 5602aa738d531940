"""Metrics: a small dependency-free registry with Caddy's metric names, labels and buckets.

This module owns
- the metric primitives (counter, gauge and histogram families with label children),
- `ProxyMetrics`, the set of families Caddy exports (`caddy_http_*`, `caddy_reverse_proxy_*`,
  `caddy_config_*`, `caddy_admin_*`) plus cheap `process_*` basics,
- plain-dict snapshots of a registry, merging snapshots from several worker processes, and
  rendering a snapshot in the Prometheus text exposition format (version 0.0.4).

Hot-path discipline: label values are bound once (`family.labels(...)` returns a cached child)
and recording is an attribute update or one `bisect` — no string formatting per request. The
registry is per process and not thread-safe: each worker records on its own event loop, and the
supervisor merges snapshots (sent over a pipe as plain data) to serve totals at `/metrics`.

Names, help texts, label sets and buckets follow Caddy (metrics.go, modules/caddyhttp/metrics.go,
modules/caddyhttp/reverseproxy/metrics.go). Numbers are printed like Go's
`strconv.FormatFloat(v, 'g', -1, 64)` so the output reads like Caddy's.
"""

from __future__ import annotations

import math
import os
import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

# prometheus.DefBuckets, used by Caddy for every duration histogram.
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# prometheus.ExponentialBuckets(256, 4, 8), used by Caddy for request and response sizes.
SIZE_BUCKETS_BYTES: tuple[float, ...] = tuple(float(256 * 4**i) for i in range(8))

# How a family's samples combine across worker processes. Counters and histograms always sum.
Merge = Literal["sum", "max", "min"]
Kind = Literal["counter", "gauge", "histogram"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# --- children: the objects the hot path touches --------------------------------------------


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class HistogramChild:
    """Per-bucket (non-cumulative) counts; the last slot is the +Inf bucket. The total count is
    the sum of the buckets, computed when read rather than kept on every observation."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are `le` (value <= bound): bisect_left finds the first bound >= value.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)


# --- families ------------------------------------------------------------------------------


class Family:
    """A named metric with a fixed label set; `labels(*values)` returns a cached child."""

    kind: Kind = "counter"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        *,
        merge: Merge = "sum",
    ) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self.merge: Merge = merge
        self.children: dict[tuple[str, ...], Any] = {}

    def _new_child(self) -> Any:
        raise NotImplementedError

    def labels(self, *values: str) -> Any:
        """The child for these label values (bind once, keep it, record on it)."""
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(
                    f"{self.name}: expected {len(self.labelnames)} label values, got {len(values)}"
                )
            child = self.children[values] = self._new_child()
        return child

    def remove(self, *values: str) -> None:
        self.children.pop(values, None)

    def clear(self) -> None:
        self.children.clear()

    def snapshot(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "help": self.help,
            "labels": list(self.labelnames),
            "merge": self.merge,
            "samples": [[list(k), c.value] for k, c in self.children.items()],
        }


class CounterFamily(Family):
    kind: Kind = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def labels(self, *values: str) -> CounterChild:
        child: CounterChild = super().labels(*values)
        return child


class GaugeFamily(Family):
    kind: Kind = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def labels(self, *values: str) -> GaugeChild:
        child: GaugeChild = super().labels(*values)
        return child


class HistogramFamily(Family):
    kind: Kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = DURATION_BUCKETS_S,
    ) -> None:
        super().__init__(name, help, labelnames)
        self.buckets = tuple(float(b) for b in buckets)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.buckets)

    def labels(self, *values: str) -> HistogramChild:
        child: HistogramChild = super().labels(*values)
        return child

    def snapshot(self) -> dict[str, Any]:
        return {
            "type": "histogram",
            "help": self.help,
            "labels": list(self.labelnames),
            "merge": "sum",
            "buckets": list(self.buckets),
            "samples": [
                [list(k), list(c.counts), c.sum, c.count] for k, c in self.children.items()
            ],
        }


class Registry:
    """The families of one process, plus collectors run just before each snapshot."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}
        self.collectors: list[Callable[[], None]] = []

    def register(self, family: Family) -> Family:
        if family.name in self.families:
            raise ValueError(f"metric {family.name} already registered")
        self.families[family.name] = family
        return family

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> CounterFamily:
        fam = CounterFamily(name, help, labelnames)
        self.register(fam)
        return fam

    def gauge(
        self, name: str, help: str, labelnames: Sequence[str] = (), *, merge: Merge = "sum"
    ) -> GaugeFamily:
        fam = GaugeFamily(name, help, labelnames, merge=merge)
        self.register(fam)
        return fam

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = DURATION_BUCKETS_S,
    ) -> HistogramFamily:
        fam = HistogramFamily(name, help, labelnames, buckets=buckets)
        self.register(fam)
        return fam

    def reset(self) -> None:
        """Drop every sample (a forked worker starts from zero, not from its parent's counts)."""
        for fam in self.families.values():
            fam.clear()

    def snapshot(self) -> dict[str, Any]:
        """Plain data (JSON- and pickle-safe) describing every family and sample."""
        for collect in self.collectors:
            collect()
        return {name: fam.snapshot() for name, fam in self.families.items()}

    def render(self) -> str:
        return render_snapshot(self.snapshot())


# --- snapshots: merge across processes, render ----------------------------------------------


def merge_snapshots(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Combine per-process snapshots into totals.

    Counters and histograms add up. Gauges combine by the family's `merge` rule: "sum" for
    things like requests in flight, "max" for timestamps, "min" for health flags (an upstream
    counts as healthy only when every worker sees it healthy).
    """
    out: dict[str, Any] = {}
    for snap in snapshots:
        for name, fam in snap.items():
            cur = out.get(name)
            if cur is None:
                cur = out[name] = {k: v for k, v in fam.items() if k != "samples"}
                cur["_by_key"] = {}
            elif cur["type"] != fam["type"] or cur["labels"] != fam["labels"]:
                raise ValueError(f"metric {name}: snapshots disagree on type or labels")
            by_key: dict[tuple[str, ...], list[Any]] = cur["_by_key"]
            if fam["type"] == "histogram":
                if cur["buckets"] != fam["buckets"]:
                    raise ValueError(f"metric {name}: snapshots disagree on buckets")
                for labels, counts, total, count in fam["samples"]:
                    key = tuple(labels)
                    prev = by_key.get(key)
                    if prev is None:
                        by_key[key] = [list(labels), list(counts), total, count]
                    else:
                        prev[1] = [a + b for a, b in zip(prev[1], counts, strict=True)]
                        prev[2] += total
                        prev[3] += count
            else:
                rule = "sum" if fam["type"] == "counter" else fam.get("merge", "sum")
                for labels, value in fam["samples"]:
                    key = tuple(labels)
                    prev = by_key.get(key)
                    if prev is None:
                        by_key[key] = [list(labels), value]
                    elif rule == "max":
                        prev[1] = max(prev[1], value)
                    elif rule == "min":
                        prev[1] = min(prev[1], value)
                    else:
                        prev[1] += value
    for fam in out.values():
        fam["samples"] = list(fam.pop("_by_key").values())
    return out


def cumulative_part(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The counters and histograms of a snapshot: what stays true of a process after it exited.

    The supervisor adds a dead worker's last scraped counts to every later total, so a summed
    counter never goes down when a worker is replaced (Prometheus would read the drop as a
    counter reset, and `rate()` would show a spike of the survivors' whole count). Its gauges
    (requests in flight, memory) end with it.
    """
    return {name: fam for name, fam in snapshot.items() if fam["type"] in ("counter", "histogram")}


def render_snapshots(snapshots: Iterable[dict[str, Any]]) -> str:
    return render_snapshot(merge_snapshots(snapshots))


def render_snapshot(snapshot: dict[str, Any]) -> str:
    """Prometheus text format: families sorted by name, samples by label values (like Go's
    client), families without samples left out."""
    lines: list[str] = []
    for name in sorted(snapshot):
        fam = snapshot[name]
        samples = sorted(fam["samples"], key=lambda s: s[0])
        if not samples:
            continue
        lines.append(f"# HELP {name} {_escape_help(fam['help'])}")
        lines.append(f"# TYPE {name} {fam['type']}")
        labelnames: list[str] = fam["labels"]
        if fam["type"] == "histogram":
            les = [*(_go_float(b) for b in fam["buckets"]), "+Inf"]
            for labels, counts, total, count in samples:
                base = _label_pairs(labelnames, labels)
                cumulative = 0
                for le, n in zip(les, counts, strict=True):
                    cumulative += n
                    pairs = [*base, f'le="{le}"']
                    lines.append(f"{name}_bucket{{{','.join(pairs)}}} {cumulative}")
                suffix = f"{{{','.join(base)}}}" if base else ""
                lines.append(f"{name}_sum{suffix} {_go_float(total)}")
                lines.append(f"{name}_count{suffix} {count}")
        else:
            for labels, value in samples:
                pairs = _label_pairs(labelnames, labels)
                suffix = f"{{{','.join(pairs)}}}" if pairs else ""
                lines.append(f"{name}{suffix} {_go_float(value)}")
    return "\n".join(lines) + "\n" if lines else ""


def _label_pairs(names: Sequence[str], values: Sequence[str]) -> list[str]:
    return [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _go_float(value: float) -> str:
    """Format like Go's strconv.FormatFloat(v, 'g', -1, 64), which client_golang prints: the
    shortest round-tripping digits, exponent form when the exponent is < -4 or >= 6 (so
    1048576 prints as "1.048576e+06", as in Caddy's `le` labels)."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    if value.is_integer() and abs(value) < 1e6:
        return str(int(value))  # the common case (counts), without the digit juggling below
    sign = "-" if value < 0 else ""
    # repr() gives the shortest round-tripping digits, as Go's shortest mode does.
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    all_digits = int_part + frac_part
    stripped = all_digits.lstrip("0")
    # `point`: where the decimal point sits relative to the first significant digit.
    point = len(int_part) - (len(all_digits) - len(stripped)) + int(exp_text or 0)
    digits = stripped.rstrip("0")
    exp = point - 1
    if exp < -4 or exp >= 6:
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mant}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{sign}{digits}{'0' * (point - len(digits))}"
    return f"{sign}{digits[:point]}.{digits[point:]}"


# --- Caddy's metric set ----------------------------------------------------------------------

# Caddy's SanitizeMethod: the standard methods (upper or lower case) keep their name, any other
# method is "OTHER" — which also bounds the label space a client can create.
_METHODS: dict[str, str] = {
    m: m.upper()
    for name in ("GET", "HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
    for m in (name, name.lower())
}


def sanitize_method(method: str) -> str:
    return _METHODS.get(method, "OTHER")


def sanitize_code(status: int) -> str:
    """Caddy's SanitizeCode: 0 (no status written) counts as 200."""
    return "200" if status in (0, 200) else str(status)


class HandlerMetrics:
    """The `caddy_http_*` children of one (server, handler) pair, bound once at provision time.

    Per request: `start()` when the handler is entered, `finish(...)` when it returns. The
    status-labelled histogram children are bound on first use of a (status, method) pair and
    cached, so steady-state recording does no formatting and no label hashing beyond one
    small-tuple dict lookup.
    """

    __slots__ = (
        "_by_status",
        "_handler",
        "_metrics",
        "_server",
        "errors",
        "in_flight",
        "requests",
    )

    def __init__(self, metrics: ProxyMetrics, server: str, handler: str) -> None:
        self._metrics = metrics
        self._server = server
        self._handler = handler
        self.in_flight = metrics.requests_in_flight.labels(server, handler)
        self.requests = metrics.requests.labels(server, handler)
        self.errors = metrics.request_errors.labels(server, handler)
        self._by_status: dict[
            tuple[int, str],
            tuple[HistogramChild, HistogramChild, HistogramChild, HistogramChild],
        ] = {}

    def start(self) -> None:
        self.in_flight.value += 1

    def finish(
        self,
        method: str,
        status: int | None,
        duration_s: float,
        request_bytes: int,
        response_bytes: int,
        ttfb_s: float | None = None,
        error: bool = False,
    ) -> None:
        """Record a finished request. `status` None means the handler failed before choosing a
        status (Caddy then counts the error but observes no histogram); `ttfb_s` None means no
        response header was written."""
        self.in_flight.value -= 1
        self.requests.value += 1
        if error:
            self.errors.value += 1
        if status is None:
            return
        kids = self._by_status.get((status, method))
        if kids is None:
            kids = self._bind(status, method)
        # HistogramChild.observe, inlined: this runs for every request.
        h = kids[0]
        h.counts[bisect_left(h.bounds, duration_s)] += 1
        h.sum += duration_s
        h = kids[2]
        h.counts[bisect_left(h.bounds, request_bytes)] += 1
        h.sum += request_bytes
        h = kids[3]
        h.counts[bisect_left(h.bounds, response_bytes)] += 1
        h.sum += response_bytes
        if ttfb_s is not None:
            h = kids[1]
            h.counts[bisect_left(h.bounds, ttfb_s)] += 1
            h.sum += ttfb_s

    def _bind(
        self, status: int, method: str
    ) -> tuple[HistogramChild, HistogramChild, HistogramChild, HistogramChild]:
        m = self._metrics
        labels = (self._server, self._handler, sanitize_code(status), sanitize_method(method))
        kids = (
            m.request_duration.labels(*labels),
            m.response_duration.labels(*labels),
            m.request_size.labels(*labels),
            m.response_size.labels(*labels),
        )
        # Cached under the raw method (saves sanitizing per request); odd methods from clients
        # share the OTHER children but are not cached, so the cache stays small.
        if method in _METHODS:
            self._by_status[(status, method)] = kids
        return kids


class ProxyMetrics:
    """Every metric family pyproxy exports, in one registry per process.

    Workers record `caddy_http_*` and `caddy_reverse_proxy_*`; the supervisor records
    `caddy_config_*`, `caddy_admin_*` and pyproxy's own `pyproxy_worker_restarts_total` (config
    children are created on the first `record_reload`, so a worker's snapshot never drags a
    merged reload flag to 0).
    """

    def __init__(self, registry: Registry | None = None, *, process: bool = True) -> None:
        r = self.registry = registry if registry is not None else Registry()
        basic = ("server", "handler")
        http = ("server", "handler", "code", "method")
        self.requests_in_flight = r.gauge(
            "caddy_http_requests_in_flight",
            "Number of requests currently handled by this server.",
            basic,
        )
        self.request_errors = r.counter(
            "caddy_http_request_errors_total",
            "Number of requests resulting in middleware errors.",
            basic,
        )
        self.requests = r.counter(
            "caddy_http_requests_total", "Counter of HTTP(S) requests made.", basic
        )
        self.request_duration = r.histogram(
            "caddy_http_request_duration_seconds",
            "Histogram of round-trip request durations.",
            http,
        )
        self.request_size = r.histogram(
            "caddy_http_request_size_bytes",
            "Total size of the request. Includes body",
            http,
            buckets=SIZE_BUCKETS_BYTES,
        )
        self.response_size = r.histogram(
            "caddy_http_response_size_bytes",
            "Size of the returned response.",
            http,
            buckets=SIZE_BUCKETS_BYTES,
        )
        self.response_duration = r.histogram(
            "caddy_http_response_duration_seconds",
            "Histogram of times to first byte in response bodies.",
            http,
        )
        self.upstreams_healthy = r.gauge(
            "caddy_reverse_proxy_upstreams_healthy",
            "Health status of reverse proxy upstreams.",
            ("upstream",),
            merge="min",
        )
        self.config_reload_successful = r.gauge(
            "caddy_config_last_reload_successful",
            "Whether the last configuration reload attempt was successful.",
            merge="min",
        )
        self.config_reload_success_time = r.gauge(
            "caddy_config_last_reload_success_timestamp_seconds",
            "Timestamp of the last successful configuration reload.",
            merge="max",
        )
        self.admin_requests = r.counter(
            "caddy_admin_http_requests_total",
            "Counter of requests made to the Admin API's HTTP endpoints.",
            ("handler", "path", "code", "method"),
        )
        self.admin_request_errors = r.counter(
            "caddy_admin_http_request_errors_total",
            "Number of requests resulting in middleware errors.",
            ("handler", "path", "method"),
        )
        # Not a Caddy metric (Caddy is one process): replacement workers started because one
        # exited unexpectedly (proxy.respawn). Its child exists only where `expose_restarts`
        # is called, the supervisor, so the merged total is the supervisor's count.
        self.worker_restarts = r.counter(
            "pyproxy_worker_restarts_total",
            "Number of worker processes started to replace one that exited unexpectedly.",
        )
        if process:
            ProcessCollector(r)

    def handler(self, server: str, handler: str) -> HandlerMetrics:
        """Bind the per-request children for a handler instance (call once, at provision)."""
        return HandlerMetrics(self, server, handler)

    def upstream_health(self, upstream: str) -> GaugeChild:
        """The `caddy_reverse_proxy_upstreams_healthy{upstream=<dial>}` child: set 1 or 0."""
        return self.upstreams_healthy.labels(upstream)

    def reset_upstreams(self) -> None:
        """Forget upstreams of a replaced config (Caddy resets the gauge on provision)."""
        self.upstreams_healthy.clear()

    def record_reload(self, success: bool, now: float | None = None) -> None:
        self.config_reload_successful.labels().set(1.0 if success else 0.0)
        if success:
            self.config_reload_success_time.labels().set(time.time() if now is None else now)

    def expose_restarts(self) -> None:
        """Show `pyproxy_worker_restarts_total` (0 until the first restart)."""
        self.worker_restarts.labels()

    def record_worker_restart(self) -> None:
        self.worker_restarts.labels().inc()

    def record_admin_request(self, path: str, method: str, status: int, error: bool) -> None:
        method = sanitize_method(method)
        self.admin_requests.labels("admin", path, sanitize_code(status), method).inc()
        if error:
            self.admin_request_errors.labels("admin", path, method).inc()

    def snapshot(self) -> dict[str, Any]:
        return self.registry.snapshot()

    def render(self) -> str:
        return self.registry.render()


# --- process_* basics ------------------------------------------------------------------------


class ProcessCollector:
    """`process_*` gauges (as client_golang's process collector names them), read from /proc
    at snapshot time only — nothing on the request path. Across workers CPU, memory and open
    fds add up; the start time is the earliest one."""

    def __init__(self, registry: Registry) -> None:
        self.cpu = registry.counter(
            "process_cpu_seconds_total", "Total user and system CPU time spent in seconds."
        )
        self.rss = registry.gauge("process_resident_memory_bytes", "Resident memory size in bytes.")
        self.vms = registry.gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.")
        self.fds = registry.gauge("process_open_fds", "Number of open file descriptors.")
        self.max_fds = registry.gauge(
            "process_max_fds", "Maximum number of open file descriptors.", merge="max"
        )
        self.start = registry.gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            merge="min",
        )
        self._start_time_s = _process_start_time_s()
        registry.collectors.append(self.collect)

    def collect(self) -> None:
        times = os.times()
        self.cpu.labels().value = times.user + times.system
        self.start.labels().value = self._start_time_s
        try:
            import resource

            self.max_fds.labels().value = float(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        except (ImportError, ValueError, OSError):
            pass
        if sys.platform.startswith("linux"):
            try:
                with open("/proc/self/statm", "rb") as f:
                    vm_pages, rss_pages = f.read().split()[:2]
                page = os.sysconf("SC_PAGE_SIZE")
                self.vms.labels().value = float(int(vm_pages) * page)
                self.rss.labels().value = float(int(rss_pages) * page)
                self.fds.labels().value = float(len(os.listdir("/proc/self/fd")))
            except (OSError, ValueError):
                pass


def _process_start_time_s() -> float:
    """Process start from /proc (boot time + start ticks); the module import time elsewhere."""
    try:
        with open("/proc/self/stat", "rb") as f:
            # Fields after the parenthesised command name; starttime is field 22 overall.
            fields = f.read().rsplit(b")", 1)[1].split()
        start_ticks = int(fields[19])
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
        return btime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return _IMPORT_TIME_S


_IMPORT_TIME_S = time.time()
