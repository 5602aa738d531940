"""Reloads do not leak Redis connections (pyproxy issue #17).

Each config generation opens Redis clients: the node's CertificateManager (through
NodeCertificates) and each worker's CertRuntime. A reload that replaces them — another issuer
list (a new manager), another `key_prefix` (another storage: every manager is replaced) — must
close the old ones, so the server's `CLIENT LIST` stays bounded however often the node reloads.
"""

from __future__ import annotations

import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from enginekit import read_response
from pebblekit import Pebble, free_port, requires_pebble
from rediskit import RedisServer, requires_redis, running_redis

pytestmark = [requires_pebble, requires_redis]

NAME = "reload.example.com"
RELOADS = 12
SETTLE_TIMEOUT_S = 30.0


def caddyfile(
    pebble: Pebble, redis: RedisServer, admin_port: int, https_port: int, generation: int
) -> str:
    # Odd generations: another account email (a new manager of the same storage); every
    # fourth: another key prefix (another storage, so NodeCertificates starts over).
    email = f"admin{generation % 2}@example.com"
    prefix = f"caddy{generation // 4 % 2}"
    return (
        "{\n"
        f"\tadmin 127.0.0.1:{admin_port}\n"
        f"\thttp_port {pebble.http_port}\n"
        f"\thttps_port {https_port}\n"
        "\tdefault_bind 127.0.0.1\n"
        f"\tacme_ca {pebble.directory_url}\n"
        f"\tacme_ca_root {pebble.ca_pem}\n"
        f"\temail {email}\n"
        "\tstorage redis {\n"
        f"\t\thost {redis.host}\n"
        f"\t\tport {redis.port}\n"
        f"\t\tkey_prefix {prefix}\n"
        "\t}\n"
        "}\n"
        f'{NAME} {{\n\trespond "generation {generation}"\n}}\n'
    )


def post_caddyfile(admin_port: int, text: str) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/load",
        data=text.encode(),
        headers={"Content-Type": "text/caddyfile"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"/load: {exc.code} {exc.read().decode()}") from exc


def node_clients(redis: RedisServer) -> int:
    """Connections to redis-server other than the test's own."""
    client = redis.client()
    try:
        clients = client.client_list()
        return sum(1 for c in clients if c.get("cmd") != "client|list")
    finally:
        client.close()


def served_body(https_port: int, root_pem: str) -> bytes:
    ctx = ssl.create_default_context(cadata=root_pem)
    with (
        socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=NAME) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
        _status, _headers, body = read_response(tls.makefile("rb"))
    return bytes(body)


def wait_served(https_port: int, root_pem: str, body: str, proc: Any) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        try:
            if served_body(https_port, root_pem) == body.encode():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{body!r} not served over HTTPS\n{proc.log[-6000:]}")
        time.sleep(0.1)  # polling the listener until it answers, bounded by the deadline


def test_reloads_keep_redis_client_count_bounded(run_proxy: Any, tmp_path: Path) -> None:
    with running_redis(tmp_path / "redis") as redis:
        https_port = free_port()
        # TLS-ALPN-01 (on by default) validated at the node's HTTPS port too.
        pebble = Pebble(
            tmp_path / "pebble", http_port=free_port(), tls_port=https_port, default_ipv6=""
        )
        pebble.start()
        try:
            admin_port = free_port()
            proc = run_proxy(caddyfile(pebble, redis, admin_port, https_port, 0), https_port)
            # The certificate obtained through Redis and served: the node's clients are open.
            root_pem = pebble.root_pem().decode()
            wait_served(https_port, root_pem, "generation 0", proc)
            baseline = node_clients(redis)
            assert baseline >= 1, "the node keeps no Redis connection: nothing is under test"
            for generation in range(1, RELOADS + 1):
                post_caddyfile(
                    admin_port, caddyfile(pebble, redis, admin_port, https_port, generation)
                )
                # Served by the new generation: its clients opened, the old one's replaced.
                wait_served(https_port, root_pem, f"generation {generation}", proc)
            # The last generation's clients, plus at most a couple still in use by a draining
            # generation or a storage poll: never one (or more) per reload.
            bound = baseline + 2
            deadline = time.monotonic() + SETTLE_TIMEOUT_S
            while (count := node_clients(redis)) > bound:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{count} Redis clients after {RELOADS} reloads (baseline {baseline})"
                        f"\n{proc.log[-6000:]}"
                    )
                time.sleep(0.2)  # polling the server's client list, bounded by the deadline
            assert proc.proc.poll() is None, proc.log
        finally:
            pebble.stop()
