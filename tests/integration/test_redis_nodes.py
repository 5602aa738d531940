"""Two `pyproxy run` nodes sharing one redis-server (pyproxy issue #17).

Nodes A (127.0.0.2) and B (127.0.0.3) run the same Caddyfile with `storage redis`, both on the
same ports of their own address. The test holds the ACME account lock in Redis so that whichever
node wins the `issue_cert_<name>` lock stops before ordering; the name's A record is then pointed
at the *other* node, and the lock released. So the order is placed by one node and the
validation (HTTP-01 or TLS-ALPN-01, the orderer's pick) lands on the other, which answers it from
Redis. Exactly one order; both nodes serve the certificate. Then redis-server is stopped: both
nodes keep serving from memory.

The three-node tests follow the issue's scenario: the lock holder killed before its order (a
lock takeover, still one order), and `test_issue_scenario_...`: node A orders while the A record
names node B (one order, three nodes serve), then the renewing node killed after its order was
created (a second renewal order by the successor), then a Redis restart and the next renewal.
"""

from __future__ import annotations

import json
import signal
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
    """`host`'s only A record is `ip`: challtestsrv's add-a appends to the host's list, so the
    old address is cleared first (else the CA may still pick a node the test has killed)."""
    for path, doc in (("clear-a", {"host": host}), ("add-a", {"host": host, "addresses": [ip]})):
        req = urllib.request.Request(
            f"http://127.0.0.1:{pebble.challtest_mgmt_port}/{path}",
            data=json.dumps(doc).encode(),
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


def pause(proc: Any) -> None:
    """SIGSTOP a one-worker node: its listeners still complete TCP handshakes (the kernel's
    backlog), but nothing answers until `resume` — a validation sent to it waits."""
    proc.proc.send_signal(signal.SIGSTOP)


def resume(proc: Any) -> None:
    if proc.proc.poll() is None:
        proc.proc.send_signal(signal.SIGCONT)


@requires_aliases
def test_issue_scenario_one_order_three_nodes_then_renewer_killed_after_its_order(
    run_proxy: Any, origin: Any, tmp_path: Path
) -> None:
    """Issue #17's scenario, step by step, three nodes on one Redis:

    1. node A places the order while the name's A record points at node B: the certificate is
       issued with exactly one order and all three nodes serve it;
    2. at the renewal, the node holding the `issue_cert_<name>` lock is killed AFTER its order
       was created and the CA told to validate (node C, where the A record now points, is paused
       so the validation waits): another node finishes the renewal with a second renewal order
       (acmez/certmagic never resume an order: the dead node's order — its authorization
       validated by C from Redis — stays unfinalized at the CA), and the live nodes serve it;
    3. Redis restarts empty: serving continues, and the next renewal succeeds.
    """
    ips = (NODE_A, NODE_B, NODE_C)
    http_port = free_port(NODE_A, also=ips[1:])
    https_port = free_port(NODE_A, also=ips[1:])
    with running_redis(tmp_path / "redis") as redis:
        # TLS-ALPN-01 is enabled by default: Pebble's "port 443" is the nodes' HTTPS port, so
        # either challenge type the orderer picks goes to the node the A record names.
        # 180-second certificates renewed at 80 % of their life left (~36 s), checked every 5 s.
        pebble = Pebble(
            tmp_path / "pebble",
            http_port=http_port,
            tls_port=https_port,
            default_ipv6="",
            validity_s=180,
        )
        pebble.start()
        nodes: dict[str, Any] = {}
        try:
            gate = RedisLocker(redis.storage(), poll_interval_s=0.05)
            issuer_key = issuer_key_from_ca_url(pebble.directory_url)
            account_lock = f"register_acme_account_{issuer_key}_admin@example.com"
            issue_lock = f"issue_cert_{NAME}"
            assert gate.try_lock(account_lock)
            extra = ("renew_interval 5s", "renewal_window_ratio 0.8")
            dial = f"127.0.0.1:{origin.port}"

            def start(ip: str) -> Any:
                config = node_caddyfile(pebble, redis, ip, http_port, https_port, dial, extra)
                nodes[ip] = run_proxy(config, https_port, wait_hosts=(ip,))
                return nodes[ip]

            def logs() -> str:
                return "\n".join(f"--- {ip}\n{p.log}" for ip, p in nodes.items()) + pebble.logs()

            # 1. Node A starts first and takes the issue lock (then waits for the account lock
            # the test holds); B and C start after, so A is the one placing the order.
            node_a = start(NODE_A)
            wait_until(
                lambda: lock_holder_pid(gate, issue_lock) == node_a.proc.pid,
                "node A to take the issue lock",
                logs,
            )
            start(NODE_B)
            start(NODE_C)
            by_pid = {p.proc.pid: ip for ip, p in nodes.items()}
            set_a_record(pebble, NAME, NODE_B)
            gate.unlock(account_lock)

            root_pem = pebble.root_pem().decode()
            first_serial = None
            for ip in ips:
                status, cert = wait_until(
                    lambda ip=ip: https_get_at(ip, https_port, root_pem), f"{ip} to serve", logs
                )
                assert status == 200
                first_serial = first_serial or cert.serial_number
                assert cert.serial_number == first_serial
            assert pebble.new_orders() == 1, logs()
            assert node_a.log.count(f"{NAME}: {OBTAINED}") == 1
            assert OBTAINED not in nodes[NODE_B].log + nodes[NODE_C].log

            # 2. The A record now names C, and C is paused: the renewal is ordered by A or B
            # (a paused node takes no lock), and the CA's validation waits at C.
            set_a_record(pebble, NAME, NODE_C)
            answers_before = pebble.challenge_answers()
            pause(nodes[NODE_C])
            try:
                wait_until(
                    lambda: pebble.challenge_answers() > answers_before,
                    "the renewing node to tell the CA its challenge is ready",
                    logs,
                    timeout_s=120,
                )
                renewer = by_pid[lock_holder_pid(gate, issue_lock) or 0]
                assert renewer in (NODE_A, NODE_B)
                assert pebble.new_orders() == 2, logs()
                nodes[renewer].proc.kill()
                nodes[renewer].proc.wait(10)
            finally:
                resume(nodes[NODE_C])
            live = [ip for ip in ips if ip != renewer]

            # Its lock expires (not refreshed, 10 s) and a live node renews with a new order.
            def renewed_on_live_nodes() -> bool:
                return all(
                    https_get_at(ip, https_port, root_pem)[1].serial_number != first_serial
                    for ip in live
                )

            wait_until(renewed_on_live_nodes, "the renewal on the live nodes", logs, timeout_s=60)
            second_serial = https_get_at(live[0], https_port, root_pem)[1].serial_number
            assert https_get_at(live[1], https_port, root_pem)[1].serial_number == second_serial
            # The first certificate, the dead node's abandoned renewal order, the successor's.
            assert pebble.new_orders() == 3, logs()

            # 3. Redis restarts empty (no persistence): the live nodes keep serving.
            redis.restart()
            for ip in live:
                status, cert = https_get_at(ip, https_port, root_pem)
                assert status == 200 and cert.serial_number == second_serial

            def renewed_again() -> bool:
                return all(
                    https_get_at(ip, https_port, root_pem)[1].serial_number != second_serial
                    for ip in live
                )

            wait_until(renewed_again, "the next renewal after the restart", logs, timeout_s=120)
            assert pebble.new_orders() == 4, logs()
            for ip in live:
                assert nodes[ip].proc.poll() is None, f"{ip} exited\n{logs()}"
        finally:
            for p in nodes.values():
                resume(p)
            pebble.stop()
