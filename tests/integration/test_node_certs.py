"""proxy.node_certs.NodeCertificates (the supervisor's ACME managers) against a real Pebble.

A config's ACME names are ordered once; a reload that adds a name keeps the manager (and the
jobs of the names it already had: no second order for them), orders only the new name, and
announces each stored certificate (`on_stored`) so the supervisor can tell the workers; a reload
to another issuer stops the old manager.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pebblekit import (
    AcmeEnv,
    Pebble,
    acme_env_fixture,  # noqa: F401  (provides the acme_env fixture)
    ipv6_loopback_available,
    requires_pebble,
)

from proxy.certs import prepare_certificates
from proxy.node_certs import NodeCertificates

pytestmark = requires_pebble

WAIT_S = 60.0


def acme_config(storage: Path, pebble: Pebble, names: list[str]) -> dict[str, Any]:
    issuer = {
        "module": "acme",
        "ca": pebble.directory_url,
        "email": "admin@example.com",
        "trusted_roots_pem_files": [str(pebble.ca_pem)],
        # The test's responder answers HTTP-01 only (with TLS-ALPN-01 on, acmez may try it first
        # and order again after it fails, which would blur the order count under test).
        "challenges": {"tls-alpn": {"disabled": True}},
    }
    return {
        "storage": {"module": "file_system", "root": str(storage)},
        "apps": {
            "http": {
                "servers": {
                    "srv0": {
                        "listen": [":0"],
                        "routes": [{"match": [{"host": names}], "terminal": True}],
                    }
                }
            },
            "tls": {"automation": {"policies": [{"issuers": [issuer]}]}},
        },
    }


async def test_reload_keeps_the_manager_and_orders_only_new_names(
    acme_env: AcmeEnv, tmp_path: Path
) -> None:
    pebble, _responder = await acme_env.start_ca(ipv6=ipv6_loopback_available())
    stored = asyncio.Event()
    announced: list[int] = []

    def on_stored() -> None:
        announced.append(1)
        stored.set()

    node = NodeCertificates(on_stored)
    storage = tmp_path / "data"  # the responder answers from this storage
    try:
        await node.apply(prepare_certificates(acme_config(storage, pebble, ["a.example.com"])))
        await asyncio.wait_for(stored.wait(), WAIT_S)
        [manager] = [m for _g, m in node._managers.values()]
        assert manager.names() == ["a.example.com"]

        stored.clear()
        names = ["a.example.com", "b.example.com"]
        await node.apply(prepare_certificates(acme_config(storage, pebble, names)))
        assert [m for _g, m in node._managers.values()] == [manager]  # kept, not replaced
        await asyncio.wait_for(stored.wait(), WAIT_S)
        assert manager.names() == names
        assert pebble.new_orders() == 2, pebble.ca_requests()  # a once, b once
        assert len(announced) == 2
        states = {e["name"]: e["state"] for e in node.status()}
        assert states == {"a.example.com": "valid", "b.example.com": "valid"}

        # Another issuer (here: another email, so another account) is another manager.
        other = acme_config(storage, pebble, ["a.example.com"])
        other["apps"]["tls"]["automation"]["policies"][0]["issuers"][0]["email"] = "x@example.com"
        await node.apply(prepare_certificates(other))
        [replacement] = [m for _g, m in node._managers.values()]
        assert replacement is not manager
        assert [e["name"] for e in node.status()] == ["a.example.com"]
    finally:
        await node.stop()
    assert node.status() == []
