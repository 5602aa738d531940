"""Renewal through `pyproxy run` against a real Pebble issuing short-lived certificates.

Pebble issues 180-second certificates; `renew_interval 5s` and `renewal_window_ratio 0.8` make
pyproxy renew about 36 s after issuance (or when Pebble's renewalInfo says so). A client thread
opens a new TLS connection per request the whole time: every request must succeed, the serial
it sees must change (the renewed certificate is swapped into every running worker), and the CA
sees one order for the renewal although four workers serve. The admin API and `pyproxy certs`
then report the name with issuer, expiry and next renewal.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pebblekit import Pebble, free_port, pebble_global_options, requires_pebble
from test_acme_engine import https_get, wait_for_certificate

pytestmark = requires_pebble

ROOT = Path(__file__).resolve().parents[2]
NAME = "renew.example.com"
VALIDITY_S = 180
# Renewal is due ~36 s after issuance; allow for Pebble's ARI window and order time.
RENEWAL_TIMEOUT_S = 150.0
# After the new serial shows up, keep going a little to see it stays served.
REQUESTS_AFTER_SWAP = 10
MAX_REQUESTS = 3000
REQUEST_PAUSE_S = 0.1


def admin_get(port: int, path: str) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Origin": f"http://127.0.0.1:{port}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def certs_cli(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "certs", "--config", str(config), *extra],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip


class Client(threading.Thread):
    """New TLS connection per request until told to stop or a bound is hit."""

    def __init__(self, port: int, root_pem: str, first_serial: int) -> None:
        super().__init__(daemon=True)
        self.port, self.root_pem, self.first_serial = port, root_pem, first_serial
        self.serials: list[int] = []
        self.failures: list[str] = []
        self.after_swap = 0
        self.stop = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set() and len(self.serials) < MAX_REQUESTS:
                try:
                    status, _h, body, cert = https_get(self.port, NAME, self.root_pem)
                    if status != 200 or body != b"renewed ok":
                        self.failures.append(f"status {status} body {body[:100]!r}")
                    self.serials.append(cert.serial_number)
                    if cert.serial_number != self.first_serial:
                        self.after_swap += 1
                        if self.after_swap >= REQUESTS_AFTER_SWAP:
                            return
                except (OSError, ssl.SSLError, ValueError) as exc:
                    self.failures.append(repr(exc))
                time.sleep(REQUEST_PAUSE_S)
        finally:
            self.done.set()


def test_certificate_renewed_and_swapped_in_while_requests_keep_succeeding(
    run_proxy: Any, tmp_path: Path
) -> None:
    http_port, https_port, admin_port = free_port(), free_port(), free_port()
    # IPv4 validation only (no AAAA records): renewal, not the address family, is under test.
    pebble = Pebble(
        tmp_path / "pebble",
        http_port=http_port,
        tls_port=https_port,  # TLS-ALPN-01 too, as Caddy enables both: any order validates
        default_ipv6="",
        validity_s=VALIDITY_S,
    )
    pebble.start()
    try:
        root_pem = pebble.root_pem().decode()
        config_text = pebble_global_options(
            pebble,
            http_port=http_port,
            https_port=https_port,
            admin=f"127.0.0.1:{admin_port}",
            storage=tmp_path / "data",
            extra=("renew_interval 5s", "renewal_window_ratio 0.8"),
        ) + (f'{NAME} {{\n\trespond "renewed ok"\n}}\n')
        # Four workers: the node still places one order per obtain and per renewal.
        proc = run_proxy(config_text, https_port, extra=["--workers", "4"])
        config = tmp_path / "Caddyfile0"  # where run_proxy wrote it
        first = wait_for_certificate(https_port, NAME, root_pem, proc)
        assert first.not_valid_after_utc - first.not_valid_before_utc <= timedelta(
            seconds=VALIDITY_S + 60
        )

        client = Client(https_port, root_pem, first.serial_number)
        client.start()
        finished = client.done.wait(RENEWAL_TIMEOUT_S)
        client.stop.set()
        client.join(10)
        assert finished, f"no renewal within {RENEWAL_TIMEOUT_S} s\n{proc.log[-6000:]}"
        # The first certificate and its renewal: two orders at the CA for the whole node (the
        # next renewal is due a good 30 s later).
        assert pebble.new_orders() == 2, pebble.ca_requests()
        assert client.failures == [], (client.failures[:5], proc.log[-6000:])
        assert client.after_swap >= REQUESTS_AFTER_SWAP
        # Once swapped, every later connection sees a renewed certificate (no flapping back).
        swap = next(i for i, s in enumerate(client.serials) if s != first.serial_number)
        assert first.serial_number not in client.serials[swap:]
        _status, _h, _b, renewed = https_get(https_port, NAME, root_pem)
        assert renewed.serial_number != first.serial_number
        assert renewed.not_valid_after_utc > first.not_valid_after_utc
        # Two orders of the same name: the first certificate and its renewal, both in service.
        assert proc.log.count(f"{NAME}: certificate obtained successfully") >= 2, proc.log

        # The admin API reports the certificate in service and when it will be renewed.
        entries = {e["name"]: e for e in admin_get(admin_port, "/pyproxy/certificates")}
        entry = entries[NAME]
        assert entry["state"] in ("valid", "renewing"), entry
        assert entry["issuer"], entry
        not_after = datetime.fromisoformat(entry["not_after"])
        assert not_after >= renewed.not_valid_after_utc - timedelta(seconds=1), entry
        assert datetime.fromisoformat(entry["next_renewal"]) < not_after, entry
        assert entry["last_error"] is None, entry

        # `pyproxy certs` asks the running instance (the address comes from the config).
        out = certs_cli(config, "--json")
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert doc["source"].startswith("running instance"), doc
        row = {r["name"]: r for r in doc["certificates"]}[NAME]
        assert row["issuer"] == entry["issuer"]
        assert row["expires"] != "-" and row["next_renewal"] != "-", row
        table = certs_cli(config)
        assert table.returncode == 0, table.stderr
        assert NAME in table.stdout and "NEXT_RENEWAL" in table.stdout, table.stdout
        assert proc.stop() == 0
    finally:
        pebble.stop()
