"""The life of a `pyproxy run` process: signals, `pyproxy stop`, `--watch`, graceful stop, and
the admin API's `/metrics` and `/reverse_proxy/upstreams` served from real workers."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import ROOT, ProxyProcess, ThreadedOrigin, wait_port
from enginekit import free_port

WAIT_S = 10.0


def caddyfile(port: int, admin_port: int, origin_port: int, body: str) -> str:
    return (
        "{\n"
        f"\tadmin 127.0.0.1:{admin_port}\n"
        "\tmetrics\n"
        "}\n"
        f"http://127.0.0.1:{port} {{\n"
        f"\thandle /proxy/* {{\n\t\treverse_proxy 127.0.0.1:{origin_port}\n\t}}\n"
        f"\thandle /slow {{\n\t\treverse_proxy 127.0.0.1:{origin_port}\n\t}}\n"
        f'\thandle {{\n\t\trespond "{body}"\n\t}}\n'
        "}\n"
    )


def get(port: int, path: str = "/") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def admin(admin_port: int, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}{path}",
        data=body,
        headers={"Content-Type": "application/json"} if body is not None else {},
        method="POST" if body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(req, timeout=WAIT_S) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start(
    run_proxy: Callable[..., ProxyProcess],
    text: str,
    port: int,
    admin_port: int,
    extra: list[str] | None = None,
) -> ProxyProcess:
    proc = run_proxy(text, port, extra=extra)
    wait_port("127.0.0.1", admin_port, proc=proc.proc)
    return proc


def config_path(proc: ProxyProcess) -> Path:
    args = proc.proc.args
    assert isinstance(args, list)
    return Path(str(args[args.index("--config") + 1]))


def test_sigusr1_reloads_from_the_file(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    port, admin_port = free_port(), free_port()
    proc = start(run_proxy, caddyfile(port, admin_port, origin.port, "one"), port, admin_port)
    assert get(port) == (200, b"one")
    path = config_path(proc)
    path.write_text(caddyfile(port, admin_port, origin.port, "two"))
    proc.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: get(port) == (200, b"two"), "the SIGUSR1 reload")
    # A broken file is refused; the running config stays.
    path.write_text("http://127.0.0.1:1 {\n\tfrobnicate\n}\n")
    proc.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: "reload failed" in proc.log, "the failed reload to be logged")
    assert "frobnicate" in proc.log
    assert get(port) == (200, b"two")
    assert proc.proc.poll() is None


def test_watch_reloads_when_the_file_changes(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    port, admin_port = free_port(), free_port()
    proc = start(
        run_proxy,
        caddyfile(port, admin_port, origin.port, "before"),
        port,
        admin_port,
        extra=["--workers", "1", "--watch"],
    )
    assert get(port) == (200, b"before")
    config_path(proc).write_text(caddyfile(port, admin_port, origin.port, "after-watch"))
    wait_for(lambda: get(port) == (200, b"after-watch"), "the --watch reload")


def test_pyproxy_stop(run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin) -> None:
    port, admin_port = free_port(), free_port()
    proc = start(run_proxy, caddyfile(port, admin_port, origin.port, "x"), port, admin_port)
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "stop", "--address", f"127.0.0.1:{admin_port}"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert proc.proc.wait(WAIT_S) == 0
    assert "shutdown complete" in proc.log


def test_sigterm_lets_in_flight_requests_finish(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    port, admin_port = free_port(), free_port()
    proc = start(
        run_proxy,
        caddyfile(port, admin_port, origin.port, "x").replace(
            "\tmetrics\n", "\tmetrics\n\tgrace_period 10s\n"
        ),
        port,
        admin_port,
    )
    result: dict[str, Any] = {}

    def slow() -> None:
        result["r"] = get(port, "/slow?s=1.5")

    t = threading.Thread(target=slow)
    t.start()
    wait_for(lambda: any(r["path"].startswith("/slow") for r in origin.requests), "the request")
    proc.proc.send_signal(signal.SIGTERM)
    t.join(WAIT_S)
    # The request in flight when SIGTERM arrived was answered in full.
    assert result["r"] == (200, b"late")
    assert proc.proc.wait(WAIT_S) == 0


def test_metrics_summed_across_two_workers(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    port, admin_port = free_port(), free_port()
    start(
        run_proxy,
        caddyfile(port, admin_port, origin.port, "m"),
        port,
        admin_port,
        extra=["--workers", "2"],
    )
    n_static, n_proxy = 60, 40
    for _ in range(n_static):
        assert get(port) == (200, b"m")
    for i in range(n_proxy):
        status, body = get(port, f"/proxy/{i}")
        assert status == 200
        assert json.loads(body)["path"] == f"/proxy/{i}"

    def scrape() -> dict[str, Any]:
        status, body = admin(admin_port, "/metrics")
        assert status == 200
        return {f.name: f for f in text_string_to_metric_families(body.decode())}

    families = scrape()
    # prometheus_client strips the `_total` suffix from counter family names.
    requests = families["caddy_http_requests"]
    total = sum(s.value for s in requests.samples if s.name == "caddy_http_requests_total")
    assert total == n_static + n_proxy
    durations = families["caddy_http_request_duration_seconds"]
    count = sum(
        s.value for s in durations.samples if s.name == "caddy_http_request_duration_seconds_count"
    )
    assert count == n_static + n_proxy
    assert "caddy_http_requests_in_flight" in families
    assert "caddy_http_response_size_bytes" in families
    healthy = families["caddy_reverse_proxy_upstreams_healthy"]
    assert [(s.labels, s.value) for s in healthy.samples] == [
        ({"upstream": f"127.0.0.1:{origin.port}"}, 1.0)
    ]
    reload_ok = families["caddy_config_last_reload_successful"]
    assert [s.value for s in reload_ok.samples] == [1.0]

    # Both workers answered: process metrics add up two workers and the supervisor.
    status, body = admin(admin_port, "/reverse_proxy/upstreams")
    assert status == 200
    ups = json.loads(body)
    assert [u["address"] for u in ups] == [f"127.0.0.1:{origin.port}"]
    assert ups[0]["fails"] == 0

    # A failed reload flips the gauge to 0 and keeps the config.
    bad = {"apps": {"http": {"servers": {"s": {"listen": ["127.0.0.1:99999"]}}}}}
    status, body = admin(admin_port, "/load", json.dumps(bad).encode())
    assert status == 400, body
    assert "error" in json.loads(body)
    reload_ok = scrape()["caddy_config_last_reload_successful"]
    assert [s.value for s in reload_ok.samples] == [0.0]
    assert get(port) == (200, b"m")


def _slow_request_in_flight(port: int, origin: ThreadedOrigin, seconds: float) -> threading.Thread:
    def slow() -> None:
        try:
            get(port, f"/slow?s={seconds}")
        except OSError:
            pass  # cut off by the stop: what these tests are about

    t = threading.Thread(target=slow, daemon=True)
    t.start()
    wait_for(lambda: any(r["path"].startswith("/slow") for r in origin.requests), "the request")
    return t


def test_grace_period_bounds_the_stop(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    port, admin_port = free_port(), free_port()
    text = caddyfile(port, admin_port, origin.port, "x").replace(
        "\tmetrics\n", "\tmetrics\n\tgrace_period 500ms\n"
    )
    proc = start(run_proxy, text, port, admin_port)
    t = _slow_request_in_flight(port, origin, 8)
    began = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(WAIT_S) == 0
    assert time.monotonic() - began < 5  # the 8 s request did not hold the stop
    t.join(WAIT_S)


def test_second_signal_forces_exit_code_2(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    port, admin_port = free_port(), free_port()
    proc = start(run_proxy, caddyfile(port, admin_port, origin.port, "x"), port, admin_port)
    t = _slow_request_in_flight(port, origin, 8)
    proc.proc.send_signal(signal.SIGINT)
    wait_for(lambda: "shutting down" in proc.log, "the graceful stop to begin")
    proc.proc.send_signal(signal.SIGINT)
    assert proc.proc.wait(WAIT_S) == 2
    t.join(WAIT_S)


def test_sigterm_as_soon_as_the_site_answers_is_a_graceful_stop(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    # The workers serve before the supervisor has started its admin endpoint: a SIGTERM in that
    # window once killed the supervisor outright (the default action) and left the workers to
    # find their control channel closed. It must be the same graceful stop as any other.
    port, admin_port = free_port(), free_port()
    proc = run_proxy(caddyfile(port, admin_port, origin.port, "early"), port)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(WAIT_S) == 0
    assert "supervisor is gone" not in proc.log
    assert "shutdown complete" in proc.log


def test_sigusr1_as_soon_as_the_site_answers_reloads_once_started(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    # The same window for SIGUSR1 (its default action terminates the process): it once killed
    # the supervisor when it came before the start had finished. It must reload, after the
    # start, from the file as it is then.
    port, admin_port = free_port(), free_port()
    proc = run_proxy(caddyfile(port, admin_port, origin.port, "early"), port)
    config_path(proc).write_text(caddyfile(port, admin_port, origin.port, "reloaded"))
    proc.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: get(port) == (200, b"reloaded"), "the SIGUSR1 reload")
    assert proc.proc.poll() is None
    assert proc.stop() == 0
