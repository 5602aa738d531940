"""A worker that dies is replaced while the others serve (proxy.supervisor, proxy.respawn).

Real `pyproxy run` processes on loopback; the worker pids are the supervisor's children, read
from /proc, and which connections a worker holds comes from its descriptors and /proc/net/tcp.
Only processes these tests started are signalled: the supervisor and its workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import signal
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ProxyProcess, RawOrigin, ThreadedOrigin, wait_port
from enginekit import free_port

WAIT_S = 15.0
# What the brief asks of a respawn: a new worker serves within 2 s of the kill.
REPLACED_WITHIN_S = 2.0
CLIENTS = 20
LOAD_LIMIT_S = 60.0

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")


# ---- helpers ------------------------------------------------------------------------------------


def caddyfile(port: int, admin_port: int, origin_port: int) -> str:
    return (
        "{\n"
        f"\tadmin 127.0.0.1:{admin_port}\n"
        "\tmetrics\n"
        "}\n"
        f"http://127.0.0.1:{port} {{\n"
        f"\treverse_proxy 127.0.0.1:{origin_port}\n"
        "}\n"
    )


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> float:
    """Poll until `predicate()` holds; the monotonic time it first held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def children(parent: int, name: str) -> set[int]:
    """Live processes of `parent` named `name` (the workers and the fork server set theirs)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent and state != "Z" and comm == name:
            found.add(int(entry))
    return found


def workers(supervisor: int) -> set[int]:
    return children(supervisor, "pyproxy worker")


def fork_server(supervisor: int) -> int:
    (pid,) = children(supervisor, "pyproxy forksrv")
    return pid


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def connections_held(pid: int, port: int) -> int:
    """Established TCP connections on local `port` among `pid`'s descriptors."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with_target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if with_target.startswith("socket:["):
                inodes.add(with_target[8:-1])
    except OSError:
        return 0
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            local_port = int(cols[1].rsplit(":", 1)[1], 16)
            if local_port == port and cols[3] == "01" and cols[9] in inodes:
                held += 1
    return held


def admin_get(admin_port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}{path}", timeout=WAIT_S) as resp:
        return str(resp.read().decode())


def admin_post(admin_port: int, path: str, body: bytes) -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}{path}",
        data=body,
        headers={"Content-Type": "text/caddyfile"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=WAIT_S) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def restarts(admin_port: int) -> float:
    text = admin_get(admin_port, "/metrics")
    match = re.search(r"^pyproxy_worker_restarts_total (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


def requests_total(admin_port: int) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(admin_get(admin_port, "/metrics"))
    return sum(
        s.value for f in families for s in f.samples if s.name == "caddy_http_requests_total"
    )


def get(port: int, path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


class Load:
    """`CLIENTS` threads, each with one keep-alive connection making GETs until `stop()` (or
    LOAD_LIMIT_S). A failed request counts once and the client reconnects."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = [0] * CLIENTS
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)
        ]
        for t in self._threads:
            t.start()

    def _client(self, index: int) -> None:
        deadline = time.monotonic() + LOAD_LIMIT_S
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT_S)
        n = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            n += 1
            try:
                conn.request("GET", f"/load/{index}/{n}")
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise OSError(f"status {resp.status}")
                with self._lock:
                    self.ok[index] += 1
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failures.append(f"client {index}: {type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT_S)
        conn.close()

    @property
    def total_ok(self) -> int:
        with self._lock:
            return sum(self.ok)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(WAIT_S)
        assert not any(t.is_alive() for t in self._threads)


def start_proxy(
    run_proxy: Callable[..., ProxyProcess], text: str, port: int, admin_port: int, count: int
) -> tuple[ProxyProcess, set[int]]:
    proc = run_proxy(text, port, extra=["--workers", str(count)])
    wait_port("127.0.0.1", admin_port, proc=proc.proc)
    wait_for(lambda: "serving with" in proc.log, "the workers to serve")
    pids = workers(proc.proc.pid)
    assert len(pids) == count, pids
    return proc, pids


# ---- tests --------------------------------------------------------------------------------------


def test_killed_worker_is_replaced_under_load(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    port, admin_port = free_port(), free_port()
    proc, pids = start_proxy(
        run_proxy, caddyfile(port, admin_port, origin.port), port, admin_port, 2
    )
    supervisor = proc.proc.pid
    assert restarts(admin_port) == 0
    load = Load(port)
    try:
        # Every client has its connection and made requests before the kill (enough that
        # the dead worker's share of the request counter shows, see below).
        wait_for(lambda: min(load.ok) >= 30, "every client to be served")
        victim, survivor = sorted(pids)
        held = {pid: connections_held(pid, port) for pid in pids}
        assert sum(held.values()) == CLIENTS, held
        assert held[victim] >= 1, held  # else the kill tests nothing (2**-19 odds)
        assert load.failures == []
        counted_before = requests_total(admin_port)

        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        replacement: set[int] = set()

        def replaced() -> bool:
            replacement.update(workers(supervisor) - pids)
            return bool(replacement) and f"replaces worker {victim}" in proc.log

        wait_for(replaced, "a replacement worker")
        (new_pid,) = replacement
        # It serves: it accepted client connections (the clients of the dead worker reconnect
        # and some hash to its inherited socket), and they get answers.
        served_at = wait_for(
            lambda: connections_held(new_pid, port) >= 1, "the new worker to serve"
        )
        assert served_at - killed_at < REPLACED_WITHIN_S, proc.log
        ok_then = load.total_ok
        wait_for(lambda: load.total_ok >= ok_then + 200, "requests after the respawn")
    finally:
        load.stop()
    ok_after_respawn = load.total_ok - ok_then

    # Only requests on the dead worker's connections failed: at most one per connection.
    assert len(load.failures) <= held[victim], load.failures
    assert all(n >= 30 for n in load.ok)
    assert f"worker {victim} killed by SIGKILL" in proc.log
    assert re.search(
        rf"worker {victim} killed by SIGKILL after [\d.]+s; starting a replacement now", proc.log
    )
    assert restarts(admin_port) == 1
    # The dead worker's counts (as last scraped) stay in the total: it went on from where it
    # was, by at least what the other workers served since (a drop would read as a counter
    # reset to Prometheus).
    assert requests_total(admin_port) >= counted_before + ok_after_respawn
    assert workers(supervisor) == {survivor, new_pid}
    assert get(port) == 200
    assert "Address already in use" not in proc.log
    assert proc.stop() == 0


def test_reload_and_graceful_stop_are_not_crashes(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    port, admin_port = free_port(), free_port()
    text = caddyfile(port, admin_port, origin.port)
    proc, pids = start_proxy(run_proxy, text, port, admin_port, 2)
    supervisor = proc.proc.pid
    changed = text.replace("\treverse_proxy", "\theader X-Reloaded yes\n\treverse_proxy")
    assert admin_post(admin_port, "/load", changed.encode()) == 200
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    conn.request("GET", "/")
    assert conn.getresponse().getheader("X-Reloaded") == "yes"
    conn.close()
    # A reload switches configs inside the running workers: nobody exited, nothing replaced.
    assert workers(supervisor) == pids
    assert restarts(admin_port) == 0

    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(WAIT_S) == 0
    assert "shutdown complete" in proc.log
    assert "replacement" not in proc.log
    assert all(gone(pid) for pid in pids)


def test_crash_loop_backs_off(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    from proxy.respawn import RespawnPolicy

    port, admin_port = free_port(), free_port()
    proc, pids = start_proxy(
        run_proxy, caddyfile(port, admin_port, origin.port), port, admin_port, 2
    )
    supervisor = proc.proc.pid
    victim, survivor = sorted(pids)
    kills = 4
    # What the policy says for workers that each die right after they start (the first one
    # ran for well under its 10 s too).
    policy, streak, expected = RespawnPolicy(), 0, []
    for _ in range(kills):
        decision = policy.decide(started_at=0.0, exited_at=0.1, quick_exits=streak, stopping=False)
        expected.append(decision.delay_s)
        streak = decision.quick_exits
    assert expected[0] == 0.0 and expected[-1] > expected[1] > 0  # a growing backoff

    known = set(pids)
    gaps, previous = [], victim
    cpu_before, wall_before = cpu_seconds(supervisor), time.monotonic()
    for _ in range(kills):
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        new: set[int] = set()

        def appeared(new: set[int] = new) -> bool:
            new.update(workers(supervisor) - known)
            return bool(new)

        # A crash loop: each replacement dies as soon as it exists.
        appeared_at = wait_for(appeared, "the next replacement", timeout_s=WAIT_S + max(expected))
        gaps.append(appeared_at - killed_at)
        previous, (victim,) = victim, new
        known.add(victim)
    wall = time.monotonic() - wall_before
    cpu = cpu_seconds(supervisor) - cpu_before
    wait_for(lambda: f"worker {victim} replaces worker {previous}" in proc.log, "the last one")

    for gap, delay in zip(gaps, expected, strict=True):
        assert gap >= delay, (gaps, expected)
    logged = re.findall(r"starting a replacement (now|in [\d.]+s)", proc.log)
    assert logged == ["now" if d == 0 else f"in {d:.1f}s" for d in expected], proc.log
    # Waiting out the backoff costs the supervisor no CPU to speak of: it does not spin.
    assert cpu < wall / 2, (cpu, wall)
    assert restarts(admin_port) == kills
    # The other worker served all along; the last replacement serves beside it.
    assert survivor in workers(supervisor)
    assert workers(supervisor) == {survivor, victim}
    for _ in range(10):
        assert get(port) == 200
    assert "Address already in use" not in proc.log
    assert proc.stop() == 0


def test_supervisor_killed_takes_the_workers_down(
    run_proxy: Callable[..., ProxyProcess], raw_origin: Callable[..., RawOrigin]
) -> None:
    from proxy.worker import ORPHAN_GRACE_S

    requests: list[bytes] = []

    def script(_conn: int, _n: int, head: bytes) -> bytes | None:
        requests.append(head)
        return (
            None
            if head.startswith(b"GET /stall")
            else b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        )

    stalling = raw_origin(script)
    port, admin_port = free_port(), free_port()
    proc, pids = start_proxy(
        run_proxy, caddyfile(port, admin_port, stalling.port), port, admin_port, 2
    )
    forker = fork_server(proc.proc.pid)
    assert get(port) == 200
    # A request that never gets an answer would hold a graceful stop for ever (no
    # grace_period: no limit).
    outcome: dict[str, object] = {}

    def slow() -> None:
        # A patient client: it does not end the request itself before the test is over.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=ORPHAN_GRACE_S + 3 * WAIT_S)
        try:
            conn.request("GET", "/stall")
            outcome["status"] = conn.getresponse().status
        except (OSError, http.client.HTTPException) as exc:
            outcome["error"] = exc
        finally:
            conn.close()

    client = threading.Thread(target=slow, daemon=True)
    client.start()
    wait_for(lambda: any(r.startswith(b"GET /stall") for r in requests), "the request")
    proc.proc.kill()
    assert proc.proc.wait(WAIT_S) == -signal.SIGKILL
    # Each worker sees its control channel close and stops: the listeners at once (the port
    # is free for the restarted instance), the request in flight within ORPHAN_GRACE_S. The
    # fork server sees its socket close. Nothing lingers.
    wait_for(
        lambda: all(gone(pid) for pid in {*pids, forker}),
        "the workers to exit",
        timeout_s=ORPHAN_GRACE_S + 5.0,
    )
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT_S).close()
    client.join(WAIT_S)
    assert not client.is_alive()
    assert "error" in outcome  # cut off when the grace ran out
    assert "the supervisor is gone" in proc.log


def test_lone_worker_respawn_queues_connections_and_keeps_certificates(
    run_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    http_port, https_port, admin_port = free_port(), free_port(), free_port()
    text = (
        "{\n"
        f"\thttp_port {http_port}\n"
        f"\thttps_port {https_port}\n"
        f"\tstorage file_system {tmp_path / 'data'}\n"
        f"\tadmin 127.0.0.1:{admin_port}\n"
        "\tmetrics\n"
        "}\n"
        'internal.test {\n\tbind 127.0.0.1\n\ttls internal\n\trespond "secure"\n}\n'
    )
    proc, (worker,) = start_proxy(run_proxy, text, https_port, admin_port, 1)
    root = tmp_path / "data" / "pki" / "authorities" / "local" / "root.crt"
    ctx = ssl.create_default_context(cafile=str(root))

    def fetch() -> tuple[int, str]:
        with (
            socket.create_connection(("127.0.0.1", https_port), timeout=WAIT_S) as raw,
            ctx.wrap_socket(raw, server_hostname="internal.test") as tls,
        ):
            tls.sendall(b"GET / HTTP/1.1\r\nHost: internal.test\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return int(data.split()[1]), hashlib.sha256(der).hexdigest()

    status, before = fetch()
    assert status == 200
    os.kill(worker, signal.SIGKILL)
    # Right after the kill, with no worker at all: the supervisor holds the listening socket,
    # so the kernel queues this connection and the replacement answers it (a closed port
    # would refuse it).
    status, after = fetch()
    assert status == 200
    assert after == before  # the replacement serves the same certificate, from storage
    wait_for(lambda: f"replaces worker {worker}" in proc.log, "the replacement")
    assert restarts(admin_port) == 1
    assert proc.stop() == 0


def test_replacement_without_the_fork_server_is_a_new_interpreter(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    port, admin_port = free_port(), free_port()
    proc, pids = start_proxy(
        run_proxy, caddyfile(port, admin_port, origin.port), port, admin_port, 2
    )
    supervisor = proc.proc.pid
    os.kill(fork_server(supervisor), signal.SIGKILL)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: f"replaces worker {victim}" in proc.log, "the replacement")
    (new_pid,) = workers(supervisor) - pids
    assert b"spawned_worker_main" in Path(f"/proc/{new_pid}/cmdline").read_bytes()
    assert "fork server" in proc.log and "new interpreters" in proc.log
    for _ in range(10):
        assert get(port) == 200
    assert restarts(admin_port) == 1
    assert proc.stop() == 0


def test_stop_during_a_backoff_neither_respawns_nor_spins(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    port, admin_port = free_port(), free_port()
    text = caddyfile(port, admin_port, origin.port).replace(
        "\tmetrics\n", "\tmetrics\n\tgrace_period 10s\n"
    )
    proc, pids = start_proxy(run_proxy, text, port, admin_port, 2)
    supervisor = proc.proc.pid
    victim = min(pids)
    known = set(pids)
    # Quick exits in a row until the slot waits a 2 s backoff (0, 0.5, 1, then 2 s).
    for _ in range(3):
        os.kill(victim, signal.SIGKILL)
        new: set[int] = set()

        def appeared(new: set[int] = new) -> bool:
            new.update(workers(supervisor) - known)
            return bool(new)

        wait_for(appeared, "the next replacement")
        (victim,) = new
        known.add(victim)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: "starting a replacement in 2.0s" in proc.log, "the backoff")
    # A request in flight keeps the stop waiting (grace_period) on the other worker.
    result: dict[str, int] = {}
    slow = threading.Thread(target=lambda: result.update(status=get(port, "/slow?s=2")))
    slow.start()
    wait_for(lambda: any(r["path"].startswith("/slow") for r in origin.requests), "the request")
    cpu_before, stop_began = cpu_seconds(supervisor), time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    cpu_at_exit = cpu_before
    while proc.proc.poll() is None and time.monotonic() < stop_began + WAIT_S:
        with contextlib.suppress(OSError, IndexError):  # it may exit between the two
            cpu_at_exit = cpu_seconds(supervisor)
        time.sleep(0.05)
    assert proc.proc.wait(WAIT_S) == 0
    stop_s = time.monotonic() - stop_began
    slow.join(WAIT_S)
    assert result == {"status": 200}
    assert stop_s >= 1.0  # the stop did wait for the request
    # The slot that was waiting was not refilled, and the wait cost no CPU to speak of.
    assert f"replaces worker {victim}" not in proc.log
    assert cpu_at_exit - cpu_before < stop_s / 2, (cpu_at_exit - cpu_before, stop_s)


def test_replacement_gets_a_config_loaded_while_its_slot_was_empty(
    run_proxy: Callable[..., ProxyProcess], origin: ThreadedOrigin
) -> None:
    port, admin_port = free_port(), free_port()
    text = caddyfile(port, admin_port, origin.port)
    proc, pids = start_proxy(run_proxy, text, port, admin_port, 1)
    supervisor = proc.proc.pid
    (victim,) = pids
    known = set(pids)
    # Quick exits in a row until the lone slot waits a 1 s backoff, with no worker at all.
    for _ in range(2):
        os.kill(victim, signal.SIGKILL)
        new: set[int] = set()

        def appeared(new: set[int] = new) -> bool:
            new.update(workers(supervisor) - known)
            return bool(new)

        wait_for(appeared, "the next replacement")
        (victim,) = new
        known.add(victim)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: "starting a replacement in 1.0s" in proc.log, "the backoff")
    changed = text.replace("\treverse_proxy", "\theader X-Reloaded yes\n\treverse_proxy")
    assert admin_post(admin_port, "/load", changed.encode()) == 200
    wait_for(lambda: f"replaces worker {victim}" in proc.log, "the replacement")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    conn.request("GET", "/")
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("X-Reloaded")) == (200, "yes")
    conn.close()
    assert proc.stop() == 0
