"""Two `pyproxy run` nodes sharing one redis-server (pyproxy issue #17).

Nodes A (127.0.0.2) and B (127.0.0.3) run the same Caddyfile with `storage redis`, both on the
same ports of their own address. The test holds the ACME account lock in Redis so that whichever
node wins the `issue_cert_<name>` lock stops before ordering; the name's A record is then pointed
at the *other* node, and the lock released. So the order is placed by one node and the
validation (HTTP-01 or TLS-ALPN-01, the orderer's pick) lands on the other, which answers it from
Redis. Exactly one order; both nodes serve the certificate. Then redis-server is stopped: both
nodes keep serving from memory.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from enginekit import read_response
from pebblekit import Pebble, free_port, requires_pebble
from rediskit import RedisServer, requires_redis, running_redis

from acme_client.locks import LockMeta
from acme_client.redis_storage import RedisLocker
from acme_client.storage import issuer_key_from_ca_url

pytestmark = [requires_pebble, requires_redis]

NAME = "shared.example.com"
NODE_A, NODE_B, NODE_C = "127.0.0.2", "127.0.0.3", "127.0.0.4"
OBTAINED = "certificate obtained successfully"
TIMEOUT_S = 90.0


def loopback_alias_usable(host: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


requires_aliases = pytest.mark.skipif(
    not all(loopback_alias_usable(ip) for ip in (NODE_A, NODE_B, NODE_C)),
    reason="127.0.0.2-4 cannot be bound here",
)


def node_caddyfile(
    pebble: Pebble,
    redis: RedisServer,
    bind: str,
    http_port: int,
    https_port: int,
    dial: str,
    extra: tuple[str, ...] = (),
) -> str:
    return (
        "{\n" + "".join(f"\t{line}\n" for line in extra) + f"\thttp_port {http_port}\n"
        f"\thttps_port {https_port}\n"
        "\tadmin off\n"
        f"\tdefault_bind {bind}\n"
        f"\tacme_ca {pebble.directory_url}\n"
        f"\tacme_ca_root {pebble.ca_pem}\n"
        "\temail admin@example.com\n"
        "\tstorage redis {\n"
        f"\t\thost {redis.host}\n"
        f"\t\tport {redis.port}\n"
        "\t\ttimeout 2\n"
        "\t}\n"
        "}\n"
        f"{NAME} {{\n\treverse_proxy {dial}\n}}\n"
    )


def set_a_record(pebble: Pebble, host: str, ip: str) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{pebble.challtest_mgmt_port}/add-a",
        data=json.dumps({"host": host, "addresses": [ip]}).encode(),
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def https_get_at(host: str, port: int, root_pem: str) -> tuple[int, x509.Certificate]:
    ctx = ssl.create_default_context(cadata=root_pem)
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=NAME) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
        status, _headers, _body = read_response(tls.makefile("rb"))
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return status, x509.load_der_x509_certificate(der)


def wait_until(predicate: Any, what: str, logs: Any, timeout_s: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = predicate()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{logs()[-8000:]}")
        time.sleep(0.1)  # polling a condition, bounded by the deadline


@requires_aliases
def test_two_nodes_share_one_order_and_serve_through_a_redis_outage(
    run_proxy: Any, origin: Any, tmp_path: Path
) -> None:
    http_port = free_port(NODE_A, also=(NODE_B,))
    https_port = free_port(NODE_A, also=(NODE_B,))
    with running_redis(tmp_path / "redis") as redis:
        # TLS-ALPN-01 validation goes to the nodes' HTTPS port: whichever challenge the ordering
        # node picks, the other node answers it from Redis.
        pebble = Pebble(
            tmp_path / "pebble", http_port=http_port, tls_port=https_port, default_ipv6=""
        )
        pebble.start()
        try:
            storage = redis.storage()
            gate = RedisLocker(storage, poll_interval_s=0.05)
            issuer_key = issuer_key_from_ca_url(pebble.directory_url)
            account_lock = f"register_acme_account_{issuer_key}_admin@example.com"
            assert gate.try_lock(account_lock)

            dial = f"127.0.0.1:{origin.port}"
            nodes = {
                ip: run_proxy(
                    node_caddyfile(pebble, redis, ip, http_port, https_port, dial),
                    https_port,
                    wait_hosts=(ip,),
                )
                for ip in (NODE_A, NODE_B)
            }

            def logs() -> str:
                return "\n".join(f"--- {ip}\n{p.log}" for ip, p in nodes.items())

            # The node that won the issue lock now waits for the account lock we hold.
            holder: LockMeta = wait_until(
                lambda: gate.holder_of(f"issue_cert_{NAME}"), "a node to take the issue lock", logs
            )
            assert holder.owner is not None
            by_pid = {p.proc.pid: ip for ip, p in nodes.items()}
            # A one-worker node is its own worker: the lock's pid is the node's process.
            orderer = by_pid.get(holder.owner.pid) or by_pid.get(holder.owner.node)
            assert orderer is not None, (holder, by_pid)
            other = NODE_B if orderer == NODE_A else NODE_A
            set_a_record(pebble, NAME, other)  # validation goes to the node without the order
            gate.unlock(account_lock)

            root_pem = pebble.root_pem().decode()
            serials = {}
            for ip in (orderer, other):
                status, cert = wait_until(
                    lambda ip=ip: https_get_at(ip, https_port, root_pem), f"{ip} to serve", logs
                )
                assert status == 200
                serials[ip] = cert.serial_number
            assert serials[NODE_A] == serials[NODE_B]
            assert pebble.new_orders() == 1, logs()
            assert nodes[orderer].log.count(f"{NAME}: {OBTAINED}") == 1
            assert OBTAINED not in nodes[other].log

            # Redis goes away: both nodes keep serving the certificate from memory, over
            # several of their storage polls (every 2 s).
            redis.stop()
            deadline = time.monotonic() + 5.0
            rounds = 0
            while time.monotonic() < deadline and rounds < 50:
                for ip in (NODE_A, NODE_B):
                    status, cert = https_get_at(ip, https_port, root_pem)
                    assert status == 200
                    assert cert.serial_number == serials[ip]
                rounds += 1
                time.sleep(0.2)  # spreading requests over the outage, not synchronisation
            for ip, proc in nodes.items():
                assert proc.proc.poll() is None, f"{ip} exited\n{logs()}"
            assert "storage unavailable" in logs()
        finally:
            pebble.stop()


def lock_holder_pid(gate: RedisLocker, lock: str) -> int | None:
    meta = gate.holder_of(lock)
    return meta.owner.pid if meta is not None and meta.owner is not None else None


@requires_aliases
def test_three_nodes_holder_killed_then_redis_restarted_and_renewed(
    run_proxy: Any, origin: Any, tmp_path: Path
) -> None:
    """The issue's scenario: the node holding the issue lock dies mid-obtain, another node
    finishes (one order, the validation answered by a third node), all serve; Redis restarts
    with an empty database: serving continues, and the renewal succeeds and reaches every node.
    """
    ips = (NODE_A, NODE_B, NODE_C)
    http_port = free_port(NODE_A, also=ips[1:])
    https_port = free_port(NODE_A, also=ips[1:])
    with running_redis(tmp_path / "redis") as redis:
        # 180-second certificates renewed at 80 % of their life, checked every 5 s.
        pebble = Pebble(
            tmp_path / "pebble",
            http_port=http_port,
            tls_port=https_port,
            default_ipv6="",
            validity_s=180,
        )
        pebble.start()
        try:
            gate = RedisLocker(redis.storage(), poll_interval_s=0.05)
            issuer_key = issuer_key_from_ca_url(pebble.directory_url)
            account_lock = f"register_acme_account_{issuer_key}_admin@example.com"
            issue_lock = f"issue_cert_{NAME}"
            assert gate.try_lock(account_lock)
            extra = ("renew_interval 5s", "renewal_window_ratio 0.8")
            dial = f"127.0.0.1:{origin.port}"
            nodes = {
                ip: run_proxy(
                    node_caddyfile(pebble, redis, ip, http_port, https_port, dial, extra),
                    https_port,
                    wait_hosts=(ip,),
                )
                for ip in ips
            }
            by_pid = {p.proc.pid: ip for ip, p in nodes.items()}

            def logs() -> str:
                return "\n".join(f"--- {ip}\n{p.log}" for ip, p in nodes.items())

            # The first lock holder stops at the account lock; kill it there.
            first_pid = wait_until(
                lambda: lock_holder_pid(gate, issue_lock), "a node to take the issue lock", logs
            )
            killed = by_pid[first_pid]
            nodes[killed].proc.kill()
            nodes[killed].proc.wait(10)
            # Its lock is no longer refreshed: it expires (10 s) and another node takes it.
            second_pid = wait_until(
                lambda: (pid := lock_holder_pid(gate, issue_lock)) not in (None, first_pid) and pid,
                "another node to take over the issue lock",
                logs,
                timeout_s=30,
            )
            orderer = by_pid[second_pid]
            live = [ip for ip in ips if ip != killed]
            answerer = next(ip for ip in live if ip != orderer)
            set_a_record(pebble, NAME, answerer)
            gate.unlock(account_lock)

            root_pem = pebble.root_pem().decode()
            first_serial = None
            for ip in live:
                status, cert = wait_until(
                    lambda ip=ip: https_get_at(ip, https_port, root_pem), f"{ip} to serve", logs
                )
                assert status == 200
                first_serial = first_serial or cert.serial_number
                assert cert.serial_number == first_serial
            assert pebble.new_orders() == 1, logs()
            assert nodes[orderer].log.count(f"{NAME}: {OBTAINED}") == 1
            assert OBTAINED not in nodes[answerer].log

            # Redis restarts empty (no persistence): the nodes keep serving from memory.
            redis.restart()
            for ip in live:
                status, cert = https_get_at(ip, https_port, root_pem)
                assert status == 200 and cert.serial_number == first_serial

            # The renewal (due ~144 s after issuance, sooner if Pebble's renewalInfo says so)
            # goes through the restarted Redis and reaches every live node.
            def renewed_everywhere() -> bool:
                return all(
                    https_get_at(ip, https_port, root_pem)[1].serial_number != first_serial
                    for ip in live
                )

            wait_until(renewed_everywhere, "the renewal on every node", logs, timeout_s=200)
            assert pebble.new_orders() == 2, logs()
        finally:
            pebble.stop()
