"""What `pyproxy run` tells the operator about its certificates when a CA is unreachable.

One site uses Pebble, the other a CA URL on a closed loopback port. The good name is obtained
and served while the bad one fails; `GET /pyproxy/certificates` and `pyproxy certs` show the bad
name's last error with its cause and a next attempt in the future (certmagic's retry schedule
starts at 1 minute). Once the instance is stopped, `pyproxy certs` falls back to storage and
says so. With two workers the per-worker answers are merged into one entry per name.
"""

from __future__ import annotations

import json
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pebblekit import Pebble, free_port, pebble_global_options, requires_pebble
from test_acme_engine import https_get, wait_for_certificate
from test_acme_renewal_engine import admin_get, certs_cli
from test_admin_api import ADMIN_LOCAL, FakeEngine, make_config

from proxy.admin.server import start_admin_server
from proxy.supervisor import merge_certificate_status

GOOD = "good.example.com"
BAD = "bad.example.com"
ERROR_TIMEOUT_S = 60.0


def closed_port() -> int:
    # free_port binds and releases: nothing listens there afterwards.
    return free_port()


def wait_for_error(admin_port: int, name: str, proc: Any) -> dict[str, Any]:
    deadline = time.monotonic() + ERROR_TIMEOUT_S
    entry: dict[str, Any] = {}
    while time.monotonic() < deadline:
        assert proc.proc.poll() is None, proc.log[-6000:]
        entries = {e["name"]: e for e in admin_get(admin_port, "/pyproxy/certificates")}
        entry = entries.get(name, {})
        if entry.get("last_error") and entry.get("next_attempt"):
            return entry
        time.sleep(0.3)
    raise AssertionError(f"{name}: no error reported in time: {entry}\n{proc.log[-6000:]}")


def wait_all_workers_serve(port: int, root_pem: str, proc: Any) -> None:
    deadline = time.monotonic() + ERROR_TIMEOUT_S
    ok = 0
    while ok < 20:
        assert time.monotonic() < deadline, proc.log[-6000:]
        try:
            ok += https_get(port, GOOD, root_pem)[0] == 200
        except (OSError, ssl.SSLError):
            ok = 0
            time.sleep(0.3)


@requires_pebble
@pytest.mark.parametrize("workers", [1, 2])
def test_unreachable_ca_reported_while_other_names_serve(
    run_proxy: Any, tmp_path: Path, workers: int
) -> None:
    http_port, https_port, admin_port = free_port(), free_port(), free_port()
    dead_ca = f"https://127.0.0.1:{closed_port()}/dir"
    pebble = Pebble(tmp_path / "pebble", http_port=http_port, tls_port=https_port, default_ipv6="")
    pebble.start()
    try:
        root_pem = pebble.root_pem().decode()
        config_text = (
            pebble_global_options(
                pebble,
                http_port=http_port,
                https_port=https_port,
                admin=f"127.0.0.1:{admin_port}",
                storage=tmp_path / "data",
            )
            + f'{GOOD} {{\n\trespond "good"\n}}\n'
            + f'{BAD} {{\n\ttls {{\n\t\tca {dead_ca}\n\t}}\n\trespond "bad"\n}}\n'
        )
        proc = run_proxy(config_text, https_port, extra=["--workers", str(workers)])
        config = tmp_path / "Caddyfile0"
        wait_for_certificate(https_port, GOOD, root_pem, proc)

        entry = wait_for_error(admin_port, BAD, proc)
        assert "contacting CA" in entry["last_error"], entry
        assert "refused" in entry["last_error"].lower(), entry
        assert entry["state"] == "waiting_retry", entry
        assert entry["failures"] >= 1, entry
        assert entry["not_after"] is None, entry
        assert entry["issuer"].startswith("127.0.0.1"), entry
        assert datetime.fromisoformat(entry["next_attempt"]) > datetime.now(UTC), entry
        assert f"{BAD}: obtaining certificate: contacting CA" in proc.log

        entries = {e["name"]: e for e in admin_get(admin_port, "/pyproxy/certificates")}
        assert sorted(entries) == [BAD, GOOD]  # one entry per name, whatever the worker count
        good = entries[GOOD]
        assert good["state"] == "valid" and good["last_error"] is None, good
        assert good["not_after"] and good["next_renewal"], good

        # The good name keeps serving while the bad one waits for its retry. With two workers
        # the one that did not order picks the certificate up from storage a little later.
        wait_all_workers_serve(https_port, root_pem, proc)
        for _ in range(10):
            status, _h, body, _cert = https_get(https_port, GOOD, root_pem)
            assert (status, body) == (200, b"good")

        table = certs_cli(config)
        assert table.returncode == 0, table.stderr
        assert "source: running instance" in table.stdout, table.stdout
        bad_line = next(line for line in table.stdout.splitlines() if line.startswith(BAD))
        assert "waiting_retry" in bad_line and "contacting CA" in bad_line, table.stdout
        doc = json.loads(certs_cli(config, "--json").stdout)
        row = {r["name"]: r for r in doc["certificates"]}[BAD]
        assert row["next_attempt"] != "-" and "contacting CA" in row["last_error"], row

        assert proc.stop() == 0
        # No instance answers any more: storage only, and the output says so.
        offline = certs_cli(config)
        assert offline.returncode == 0, offline.stderr
        assert "source: storage only" in offline.stdout, offline.stdout
        assert "no running instance answered" in offline.stdout, offline.stdout
        lines = {line.split()[0]: line for line in offline.stdout.splitlines()[3:]}
        # The failure is in storage (acme_client.retry_record): the offline view shows the wait.
        assert "valid" in lines[GOOD] and "waiting_retry" in lines[BAD], offline.stdout
        assert "contacting CA" in lines[BAD], offline.stdout
    finally:
        pebble.stop()


# ---- the merge and the admin route, without Pebble -------------------------------------------


def test_merge_prefers_freshest_certificate_and_keeps_errors() -> None:
    lost_race = {"name": "a.test", "issuer": "ca", "state": "pending", "not_after": None}
    holder = {
        "name": "a.test",
        "issuer": "ca",
        "state": "valid",
        "not_after": "2026-01-02T00:00:00+00:00",
        "next_renewal": "2026-01-01T16:00:00+00:00",
        "last_error": None,
        "failures": 0,
    }
    failed_renewal = {
        **holder,
        "not_after": "2026-01-01T00:00:00+00:00",
        "state": "waiting_retry",
        "last_error": "renewing certificate: contacting CA: refused",
        "last_error_at": "2025-12-31T23:00:00+00:00",
        "next_attempt": "2025-12-31T23:01:00+00:00",
        "failures": 2,
    }
    only_b = {"name": "b.test", "state": "pending", "not_after": None}
    merged = merge_certificate_status([[lost_race, only_b], [holder], [failed_renewal]])
    assert [e["name"] for e in merged] == ["a.test", "b.test"]
    a = merged[0]
    assert a["not_after"] == holder["not_after"] and a["state"] == "valid"
    assert a["last_error"] == failed_renewal["last_error"]
    assert a["next_attempt"] == failed_renewal["next_attempt"]
    assert a["failures"] == 2
    assert merged[1] == only_b


class CertEngine(FakeEngine):
    async def certificates(self) -> list[dict[str, Any]]:
        return [{"name": "a.test", "state": "valid", "last_error": None}]


async def test_admin_route_needs_a_reporting_controller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    timeout = aiohttp.ClientTimeout(total=10)
    for engine, expected in ((CertEngine(make_config()), 200), (FakeEngine(make_config()), 404)):
        server = await start_admin_server(engine, ADMIN_LOCAL, persist=False)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as client:
                url = server.url + "/pyproxy/certificates"
                async with client.get(url) as resp:
                    assert resp.status == expected
                    if expected == 200:
                        assert json.loads(await resp.text()) == [
                            {"name": "a.test", "state": "valid", "last_error": None}
                        ]
                if expected == 200:
                    async with client.post(url) as resp:
                        assert resp.status == 405
        finally:
            await server.close()
