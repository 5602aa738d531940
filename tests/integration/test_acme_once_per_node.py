"""ACME once per node, however many workers serve (pyproxy issue #12), against a real Pebble.

The supervisor alone talks to the CA (proxy.node_certs); the workers serve what it stores and
answer its challenges from storage. Counted at the CA (Pebble logs every request it handles,
pebblekit.Pebble.ca_requests):

- four workers, a name whose validation fails (its A record points at 127.0.0.2, where nothing
  listens: the instance binds 127.0.0.1 only — the seed's "DNS points elsewhere" trap) and a
  good name: one attempt per name for the whole node. With HTTP-01 and TLS-ALPN-01 both enabled
  (Caddy's default) an attempt is one order for the good name and, for the failing one, one
  order per challenge type (acmez orders again with the other type after a connection failure),
  one error line, one retry line; after a restart right after the failure, no new order until
  the stored backoff has passed, then exactly one more attempt;
- an instance whose admin address is taken exits with status 1 without a single request to the
  CA (listeners and admin endpoint are bound before any ACME work starts, like Caddy).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conftest import PYPROXY, ROOT
from pebblekit import Pebble, free_port, pebble_global_options, requires_pebble
from test_acme_engine import https_get, wait_for_certificate

pytestmark = requires_pebble

GOOD = "good.example.com"
BAD = "bad.example.com"
# Where BAD's A record points: loopback, but not the address the instance listens on.
ELSEWHERE = "127.0.0.2"
WAIT_S = 60.0
# A failing attempt with HTTP-01 and TLS-ALPN-01 enabled: one order per challenge type.
ATTEMPT_ORDERS = 2
# certmagic's first retry interval is 1 minute (+/- pyproxy's 10 % jitter), then 2 minutes.
FIRST_RETRY_BOUND_S = 66.0 + 30.0


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def point_name_elsewhere(pebble: Pebble, name: str, address: str) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{pebble.challtest_mgmt_port}/add-a",
        data=json.dumps({"host": name, "addresses": [address]}).encode(),
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def admin_certificates(admin_port: int) -> dict[str, dict[str, Any]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/pyproxy/certificates",
        headers={"Origin": f"http://127.0.0.1:{admin_port}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return {e["name"]: e for e in json.loads(resp.read())}


def admin_state(admin_port: int, name: str) -> str | None:
    """`name`'s state, None while the admin endpoint is not up yet (it binds after the ports)."""
    try:
        return admin_certificates(admin_port).get(name, {}).get("state")
    except OSError:
        return None


def caddyfile(pebble: Pebble, tmp_path: Path, http_port: int, https_port: int, admin: int) -> str:
    options = pebble_global_options(
        pebble,
        http_port=http_port,
        https_port=https_port,
        admin=f"127.0.0.1:{admin}",
        storage=tmp_path / "data",
        extra=("default_bind 127.0.0.1",),
    )
    return options + "".join(f'{name} {{\n\trespond "{name}"\n}}\n' for name in (GOOD, BAD))


def test_four_workers_one_order_per_name_and_retry_cycle_across_a_restart(
    run_proxy: Any, tmp_path: Path
) -> None:
    http_port, https_port, admin_port = free_port(), free_port(), free_port()
    pebble = Pebble(tmp_path / "pebble", http_port=http_port, tls_port=https_port, default_ipv6="")
    pebble.start()
    try:
        point_name_elsewhere(pebble, BAD, ELSEWHERE)
        root_pem = pebble.root_pem().decode()
        config = caddyfile(pebble, tmp_path, http_port, https_port, admin_port)
        proc = run_proxy(config, https_port, extra=["--workers", "4"])
        wait_for_certificate(https_port, GOOD, root_pem, proc)
        wait_until(lambda: f"{BAD}: will retry in" in proc.log, WAIT_S, "the failed validation")
        log = proc.log
        assert log.count(f"{GOOD}: certificate obtained successfully") == 1, log
        assert log.count(f"{BAD}: obtaining certificate: ") == 1, log
        assert log.count(f"{BAD}: will retry in") == 1, log
        # One attempt per name for the whole node: GOOD one order, BAD one per challenge type
        # (four workers each ordering would be 4 and 8); one challenge answered per order.
        assert pebble.new_orders() == 1 + ATTEMPT_ORDERS, pebble.ca_requests()
        assert pebble.challenge_answers() == 1 + ATTEMPT_ORDERS, pebble.ca_requests()
        # Whichever worker a connection reaches serves GOOD's certificate.
        for _ in range(8):
            assert https_get(https_port, GOOD, root_pem)[0] == 200
        entry = admin_certificates(admin_port)[BAD]
        assert entry["state"] == "waiting_retry", entry
        assert entry["failures"] == 1, entry
        next_attempt = datetime.fromisoformat(entry["next_attempt"])
        assert proc.stop() == 0

        # A restart right after the failure: the backoff is read from storage, not reset.
        orders_before = pebble.new_orders()
        proc2 = run_proxy(config, https_port, extra=["--workers", "4"])
        wait_until(
            lambda: admin_state(admin_port, BAD) == "waiting_retry",
            WAIT_S,
            "the restarted node to report the stored backoff",
        )
        entry = admin_certificates(admin_port)[BAD]
        assert datetime.fromisoformat(entry["next_attempt"]) == next_attempt, entry
        assert entry["failures"] == 1, entry
        assert pebble.new_orders() == orders_before, pebble.ca_requests()
        assert datetime.now(UTC) < next_attempt  # the check above ran inside the backoff
        # When the backoff has passed: exactly one more order and one more failed validation.
        wait_until(
            lambda: f"{BAD}: will retry in" in proc2.log,
            FIRST_RETRY_BOUND_S,
            "the second attempt",
        )
        assert pebble.new_orders() == orders_before + ATTEMPT_ORDERS, pebble.ca_requests()
        assert pebble.challenge_answers() == 1 + 2 * ATTEMPT_ORDERS, pebble.ca_requests()
        assert proc2.log.count(f"{BAD}: will retry in") == 1, proc2.log
        assert admin_certificates(admin_port)[BAD]["failures"] == 2
        # GOOD's stored certificate served after the restart without a new order.
        assert f"{GOOD}: creating order" not in proc2.log, proc2.log
    finally:
        pebble.stop()


def test_no_ca_contact_when_the_admin_address_is_taken(tmp_path: Path) -> None:
    http_port, https_port = free_port(), free_port()
    pebble = Pebble(tmp_path / "pebble", http_port=http_port, default_ipv6="")
    pebble.start()
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            admin_port = taken.getsockname()[1]
            config = tmp_path / "Caddyfile"
            config.write_text(caddyfile(pebble, tmp_path, http_port, https_port, admin_port))
            done = subprocess.run(
                [*PYPROXY, "run", "--config", str(config), "--workers", "2"],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=ROOT,
                check=False,
            )
        assert done.returncode == 1, done.stderr
        assert "admin" in done.stderr and "address already in use" in done.stderr.lower()
        assert pebble.ca_requests() == [], pebble.ca_requests()
        assert not (tmp_path / "data" / "acme").exists()  # no account, no challenge published
    finally:
        pebble.stop()
