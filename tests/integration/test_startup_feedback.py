"""Startup feedback once per node (pyproxy issue #15): the supervisor says each startup fact
once, however many workers there are; `PYPROXY_WORKERS` sets the worker count."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import PYPROXY, ROOT, ProxyProcess, wait_port
from enginekit import free_port

WAIT_S = 20.0


def caddyfile(http_port: int, https_port: int, plain_port: int, admin_port: int) -> str:
    return (
        "{\n"
        f"\tadmin 127.0.0.1:{admin_port}\n"
        "\tdefault_bind 127.0.0.1\n"
        f"\thttp_port {http_port}\n"
        f"\thttps_port {https_port}\n"
        "}\n"
        f'localhost:{https_port} {{\n\ttls internal\n\trespond "tls"\n}}\n'
        f'http://127.0.0.1:{plain_port} {{\n\trespond "plain"\n}}\n'
    )


def wait_log(proc: ProxyProcess, pattern: str) -> str:
    """The process log once `pattern` is in it (bounded wait on the log, not a sleep)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        text = proc.log
        if re.search(pattern, text, re.MULTILINE):
            return text
        assert proc.proc.poll() is None, f"pyproxy exited early:\n{text}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {pattern!r} in:\n{proc.log}")


def messages(log: str) -> list[str]:
    """The log's messages: pyproxy's own log is Caddy-shaped JSON lines off a terminal
    (proxy/logs.py); the node's summary comes from the default logger (no `logger` key)."""
    out = []
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("info", "warn", "error"):
            out.append(
                entry["msg"] if "logger" not in entry else f"{entry['logger']}: {entry['msg']}"
            )
    return out


def start_two_workers(
    run_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> tuple[ProxyProcess, list[str], tuple[int, int, int, int]]:
    ports = (free_port(), free_port(), free_port(), free_port())
    _, _, plain_port, admin_port = ports
    proc = run_proxy(
        caddyfile(*ports),
        plain_port,
        extra=["--workers", "2"],
        env_extra={"XDG_DATA_HOME": str(tmp_path / "data"), "PYPROXY_NATIVE": "0"},
    )
    wait_port("127.0.0.1", admin_port, proc=proc.proc)
    log = wait_log(proc, r"serving with \d+ worker")
    return proc, messages(log), ports


def test_startup_lines_appear_once_with_two_workers(
    run_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    proc, lines, (http_port, https_port, plain_port, admin_port) = start_two_workers(
        run_proxy, tmp_path
    )
    listeners = {re.sub(r" \(\w+\)", "", m) for m in lines if m.startswith("listener ")}
    # Server names are the adapter's business; the address, protocols and TLS are the facts.
    assert listeners == {
        f"listener 127.0.0.1:{plain_port}: h1, plain HTTP",
        f"listener 127.0.0.1:{https_port}: h1 h2, TLS",
        f"listener 127.0.0.1:{http_port}: h1, plain HTTP",  # the HTTP->HTTPS redirects
    }, lines
    expected = [
        "managed certificates: localhost",
        f"admin endpoint: 127.0.0.1:{admin_port}",
        "native build: off: disabled by PYPROXY_NATIVE",
        "serving with 2 worker(s)",
    ]
    for line in expected:
        assert lines.count(line) == 1, (line, lines)
    trust = [m for m in lines if "trust store" in m]
    assert len(trust) == 1, lines
    # Not one message twice: the second worker keeps the node's certificate news to itself.
    repeated = {m for m in lines if lines.count(m) > 1}
    assert not repeated, repeated
    assert not any("waiting for another instance holding the lock" in m for m in lines), lines
    assert proc.stop() == 0


@pytest.mark.parametrize(
    ("workers_flag", "expected"),
    [([], 3), (["--workers", "1"], 1)],
    ids=["PYPROXY_WORKERS sets the count", "--workers wins over PYPROXY_WORKERS"],
)
def test_pyproxy_workers_sets_the_worker_count(
    run_proxy: Callable[..., ProxyProcess],
    tmp_path: Path,
    workers_flag: list[str],
    expected: int,
) -> None:
    ports = (free_port(), free_port(), free_port(), free_port())
    proc = run_proxy(
        caddyfile(*ports),
        ports[2],
        extra=workers_flag,
        env_extra={
            "XDG_DATA_HOME": str(tmp_path / "data"),
            "PYPROXY_NATIVE": "0",
            "PYPROXY_WORKERS": "3",
        },
    )
    lines = messages(wait_log(proc, r"serving with \d+ worker"))
    assert f"serving with {expected} worker(s)" in lines, lines
    assert proc.stop() == 0


def test_bad_pyproxy_workers_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "Caddyfile"
    path.write_text(caddyfile(free_port(), free_port(), free_port(), free_port()))
    for bad in ("abc", "0", "-2", "1.5"):
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYPROXY_NATIVE="0", PYPROXY_WORKERS=bad)
        done = subprocess.run(
            [*PYPROXY, "run", "--config", str(path), "--adapter", "caddyfile"],
            env=env,
            capture_output=True,
            timeout=WAIT_S,
        )
        assert done.returncode == 1, (bad, done.stderr)
        assert (
            f"Error: PYPROXY_WORKERS: want a positive whole number of workers, got {bad!r}"
            in done.stderr.decode()
        ), done.stderr
