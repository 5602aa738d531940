"""HTTPS through `pyproxy run` end to end: SNI certificate selection, redirects, hot swap, local CA.

Real `pyproxy run` processes on loopback (non-privileged `http_port`/`https_port`, storage in
the test's tmp dir), real clients: Python's ssl, `openssl s_client` and curl.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from enginekit import free_port, read_response

ROOT = Path(__file__).resolve().parents[2]
PYPROXY = [sys.executable, "-m", "proxy"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))

requires_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")
requires_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="no curl")


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def dual_free_port() -> int:
    """A port free on 127.0.0.1 and (when present) ::1: the listeners are dual-stack."""
    for _ in range(50):
        port = free_port()
        if not ipv6_available():
            return port
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free dual-stack port")


def write_pair(directory: Path, leaf: trustme.LeafCert, stem: str) -> tuple[Path, Path]:
    cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


def global_options(tmp_path: Path, http_port: int, https_port: int) -> str:
    return (
        "{\n"
        f"\thttp_port {http_port}\n"
        f"\thttps_port {https_port}\n"
        f"\tstorage file_system {tmp_path / 'data'}\n"
        "\tadmin off\n"
        "}\n"
    )


def https_request(
    port: int,
    sni: str,
    path: str = "/",
    *,
    cafile: str | None = None,
    host: str = "127.0.0.1",
    timeout_s: float = 5.0,
) -> tuple[int, dict[str, str], bytes, x509.Certificate]:
    ctx = ssl.create_default_context(cafile=cafile)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as raw:
        raw.settimeout(timeout_s)
        raw.connect((host, port))
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
            status, headers, body = read_response(tls.makefile("rb"))
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return status, headers, body, x509.load_der_x509_certificate(der)


def sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n) for n in ext.get_values_for_type(x509.DNSName)]


def wait_until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_serving(proc: Any, timeout_s: float = 20.0) -> None:
    """The sockets accept (into the backlog) as soon as they are bound; this waits until the
    worker has its certificates and serves."""
    wait_until(
        lambda: "serving on" in proc.log or "serving with" in proc.log,
        timeout_s,
        "pyproxy to serve",
    )


# ---- several names on one port ----------------------------------------------------------------


@requires_openssl
def test_several_names_on_one_port_each_get_their_certificate(
    run_proxy: Any, tmp_path: Path
) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    pairs = {
        "a.test": write_pair(tmp_path, ca.issue_cert("a.test"), "a"),
        "b.test": write_pair(tmp_path, ca.issue_cert("b.test"), "b"),
        "*.wild.test": write_pair(tmp_path, ca.issue_cert("*.wild.test"), "wild"),
    }
    http_port, https_port = dual_free_port(), dual_free_port()
    sites = "".join(
        f'{name} {{\n\ttls {cert} {key}\n\trespond "site {name} {{host}}"\n}}\n'
        for name, (cert, key) in pairs.items()
    )
    run_proxy(global_options(tmp_path, http_port, https_port) + sites, https_port)

    # Python ssl, verifying against the CA.
    for sni, expected in (
        ("a.test", "a.test"),
        ("b.test", "b.test"),
        ("x.wild.test", "*.wild.test"),
    ):
        status, _h, body, cert = https_request(https_port, sni, cafile=str(ca_file))
        assert status == 200
        assert sans(cert) == [expected]
        assert body == f"site {expected} {sni}".encode()

    # openssl s_client -servername, verifying too.
    for sni in ("a.test", "b.test", "deep.wild.test"):
        out = subprocess.run(
            [
                "openssl", "s_client", "-connect", f"127.0.0.1:{https_port}",
                "-servername", sni, "-CAfile", str(ca_file), "-verify_return_error",
                "-verify_hostname", sni,
            ],
            input=b"", capture_output=True, timeout=15, check=False,
        )  # fmt: skip
        text = out.stdout.decode(errors="replace")
        assert out.returncode == 0, text + out.stderr.decode(errors="replace")
        assert "Verify return code: 0 (ok)" in text
        pem = text[text.index("-----BEGIN CERTIFICATE-----") :]
        pem = pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
        served = x509.load_pem_x509_certificate(pem.encode())
        assert sans(served) == ["*.wild.test" if sni.endswith("wild.test") else sni]

    # Unknown SNI: the handshake fails with alert 80 (internal_error), like Caddy.
    with pytest.raises(ssl.SSLError, match="INTERNAL_ERROR"):
        https_request(https_port, "unknown.test", cafile=str(ca_file))
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{https_port}", "-servername", "nope.test"],
        input=b"", capture_output=True, timeout=15, check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "alert internal error" in (out.stdout + out.stderr).decode(errors="replace")


# ---- HTTP -> HTTPS redirects ---------------------------------------------------------------------


def raw_http(host: str, port: int, request: bytes) -> tuple[int, dict[str, str]]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.settimeout(5)
        s.connect((host, port))
        s.sendall(request)
        status, headers, _body = read_response(s.makefile("rb"))
    return status, headers


def test_redirects_to_https_on_ipv4_and_ipv6(run_proxy: Any, tmp_path: Path) -> None:
    http_port, https_port, other_port = dual_free_port(), dual_free_port(), dual_free_port()
    v6 = ipv6_available()
    binds = "127.0.0.1 ::1" if v6 else "127.0.0.1"
    caddyfile = global_options(tmp_path, http_port, https_port) + (
        # Several bind addresses: Caddy 2.6.2 redirected on only one of them.
        f'a.test {{\n\tbind {binds}\n\ttls internal\n\trespond "a"\n}}\n'
        f'b.test:{other_port} {{\n\tbind {binds}\n\ttls internal\n\trespond "b"\n}}\n'
    )
    hosts = ("127.0.0.1", "::1") if v6 else ("127.0.0.1",)
    run_proxy(caddyfile, http_port, wait_hosts=hosts)
    for host in hosts:
        status, headers = raw_http(
            host, http_port, b"GET /p/q?x=1&y=2 HTTP/1.1\r\nHost: a.test\r\n\r\n"
        )
        assert status == 308, host
        # https_port is the port clients reach by default: no port in Location (Caddy's rule).
        assert headers["location"] == "https://a.test/p/q?x=1&y=2"
        assert headers["connection"] == "close"
        status, headers = raw_http(
            host, http_port, f"GET /r HTTP/1.1\r\nHost: b.test:{http_port}\r\n\r\n".encode()
        )
        assert status == 308
        assert headers["location"] == f"https://b.test:{other_port}/r"  # non-default port kept
        # HEAD and POST redirect too, with the same status (308 keeps the method).
        status, headers = raw_http(
            host, http_port, b"POST /form HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n"
        )
        assert (status, headers["location"]) == (308, "https://a.test/form")
    if v6:
        # The catch-all redirect keeps an IPv6 literal host in brackets (Caddy writes
        # `https://::1/r`, an invalid URL).
        status, headers = raw_http(
            "::1", http_port, f"GET /r HTTP/1.1\r\nHost: [::1]:{http_port}\r\n\r\n".encode()
        )
        assert (status, headers["location"]) == (308, "https://[::1]/r")


# ---- hot swap under load ------------------------------------------------------------------------


def test_hot_swap_of_certificate_files_under_continuous_requests(
    run_proxy: Any, tmp_path: Path
) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert_path, key_path = write_pair(tmp_path, ca.issue_cert("swap.test"), "swap")
    http_port, https_port = dual_free_port(), dual_free_port()
    caddyfile = global_options(tmp_path, http_port, https_port) + (
        f'swap.test {{\n\ttls {cert_path} {key_path}\n\trespond "ok"\n}}\n'
    )
    run_proxy(caddyfile, https_port)
    ctx = ssl.create_default_context(cafile=str(ca_file))

    stop = threading.Event()
    failures: list[str] = []
    serials: list[int] = []
    counts = {"new": 0, "keepalive": 0}

    def new_connections() -> None:
        while not stop.is_set():
            try:
                status, _h, body, cert = https_request(https_port, "swap.test", cafile=str(ca_file))
                if status != 200 or body != b"ok":
                    failures.append(f"new connection: {status} {body!r}")
                serials.append(cert.serial_number)
                counts["new"] += 1
            except Exception as exc:
                failures.append(f"new connection: {exc!r}")

    def keepalive() -> None:
        # One connection for the whole test: a swap must not disturb it.
        try:
            raw = socket.create_connection(("127.0.0.1", https_port), timeout=5)
            with ctx.wrap_socket(raw, server_hostname="swap.test") as tls:
                f = tls.makefile("rb")
                while not stop.is_set():
                    tls.sendall(b"GET /k HTTP/1.1\r\nHost: swap.test\r\n\r\n")
                    status, _h, body = read_response(f)
                    if status != 200 or body != b"ok":
                        failures.append(f"keepalive: {status} {body!r}")
                    counts["keepalive"] += 1
        except Exception as exc:
            failures.append(f"keepalive: {exc!r}")

    threads = [threading.Thread(target=new_connections), threading.Thread(target=keepalive)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        first_serial = serials[-1]
        new_leaf = ca.issue_cert("swap.test")
        # Like `cp new.pem cert.pem; cp new.key key.pem`: certificate first, key a moment later,
        # each file rewritten in place (readers can see it half written).
        cert_path.write_bytes(b"".join(b.bytes() for b in new_leaf.cert_chain_pems))
        time.sleep(0.5)
        key_path.write_bytes(new_leaf.private_key_pem.bytes())
        wait_until(lambda: serials and serials[-1] != first_serial, 20, "the new certificate")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert failures == []
    assert counts["new"] > 10 and counts["keepalive"] > 10
    assert serials[-1] != first_serial


# ---- tls internal / localhost ------------------------------------------------------------------


@requires_curl
def test_localhost_with_local_ca_end_to_end_with_curl(
    run_proxy: Any, origin: Any, tmp_path: Path
) -> None:
    http_port, https_port = dual_free_port(), dual_free_port()
    caddyfile = global_options(tmp_path, http_port, https_port) + (
        f"localhost {{\n\treverse_proxy 127.0.0.1:{origin.port}\n}}\n"
        f'internal.test {{\n\ttls internal\n\trespond "internal {{scheme}}"\n}}\n'
    )
    # Two workers share the storage: one local CA, both serve its leaves.
    wait_serving(run_proxy(caddyfile, https_port, extra=["--workers", "2"]))
    root = tmp_path / "data" / "pki" / "authorities" / "local" / "root.crt"
    addresses = ["127.0.0.1"] + (["[::1]"] if ipv6_available() else [])
    for addr in addresses:
        for _ in range(4):  # several connections: both workers answer
            out = subprocess.run(
                [
                    "curl", "-sS", "--max-time", "10", "--cacert", str(root),
                    "--resolve", f"localhost:{https_port}:{addr.strip('[]')}",
                    f"https://localhost:{https_port}/hello?x=1",
                ],
                capture_output=True, timeout=20, check=False,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr.decode(errors="replace")
            doc = json.loads(out.stdout)
            headers = {k.lower(): v for k, v in doc["headers"]}
            assert doc["path"] == "/hello?x=1"
            assert headers["x-forwarded-proto"] == "https"
    out = subprocess.run(
        [
            "curl", "-sS", "--max-time", "10", "--cacert", str(root),
            "--resolve", f"internal.test:{https_port}:127.0.0.1",
            f"https://internal.test:{https_port}/",
        ],
        capture_output=True, timeout=20, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert out.stdout == b"internal https"

    # `pyproxy trust` points at the same root; `pyproxy certs` lists both names as valid.
    config = tmp_path / "Caddyfile0"
    trust = subprocess.run(
        [*PYPROXY, "trust", "--config", str(config)],
        capture_output=True, timeout=30, check=True, env=ENV,
    )  # fmt: skip
    assert trust.stdout.decode().strip() == str(root)
    certs = subprocess.run(
        [*PYPROXY, "certs", "--config", str(config), "--json"],
        capture_output=True, timeout=30, check=True, env=ENV,
    )  # fmt: skip
    rows = {r["name"]: r for r in json.loads(certs.stdout)["certificates"]}
    assert rows["localhost"]["issuer"] == "local" and rows["localhost"]["state"] == "valid"
    assert rows["internal.test"]["state"] == "valid"


# ---- per-site protocol range --------------------------------------------------------------------


def test_site_requiring_tls13_closes_tls12_connections(run_proxy: Any, tmp_path: Path) -> None:
    """OpenSSL fixes the version before SNI is seen, so the listener admits TLS 1.2 for every
    site; a connection to a `protocols tls1.3` site that negotiated 1.2 is closed unserved."""
    http_port, https_port = dual_free_port(), dual_free_port()
    caddyfile = global_options(tmp_path, http_port, https_port) + (
        'strict.test {\n\ttls internal {\n\t\tprotocols tls1.3\n\t}\n\trespond "strict"\n}\n'
        'lax.test {\n\ttls internal\n\trespond "lax"\n}\n'
    )
    wait_serving(run_proxy(caddyfile, https_port))
    root = tmp_path / "data" / "pki" / "authorities" / "local" / "root.crt"

    def get(name: str, max_version: ssl.TLSVersion) -> bytes:
        ctx = ssl.create_default_context(cafile=str(root))
        ctx.maximum_version = max_version
        with (
            socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=name) as tls,
        ):
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            return read_response(tls.makefile("rb"))[2]

    assert get("strict.test", ssl.TLSVersion.TLSv1_3) == b"strict"
    assert get("lax.test", ssl.TLSVersion.TLSv1_2) == b"lax"
    with pytest.raises((EOFError, ConnectionError, ssl.SSLError)):
        get("strict.test", ssl.TLSVersion.TLSv1_2)


# ---- session resumption across workers -------------------------------------------------------

requires_proc = pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="finding the serving worker needs Linux /proc"
)


def child_pids(parent: int) -> set[int]:
    """The worker processes of the supervisor `parent` (not its fork server: proxy.forkserver)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                comm = (entry / "comm").read_text().strip()
            except OSError:  # the process went away
                continue
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent and comm == "pyproxy worker":
                children.add(int(entry.name))
    return children


def serving_process(candidates: set[int], server_port: int, client_port: int) -> int | None:
    """Which of `candidates` holds the accepted socket of the TCP connection from loopback
    `client_port` to `server_port` (/proc/net/tcp{,6} give its inode, /proc/PID/fd the owner)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in list(fh)[1:]:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                if (
                    state == "01"  # ESTABLISHED
                    and int(local.rsplit(":", 1)[1], 16) == server_port
                    and int(remote.rsplit(":", 1)[1], 16) == client_port
                ):
                    inode = fields[9]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in candidates:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
    return None


RESUMING_CONNECTIONS = 20


@requires_proc
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
@pytest.mark.parametrize("tickets", ["enabled", "disabled"])
def test_sessions_resume_on_every_worker(
    run_proxy: Any, tmp_path: Path, version: ssl.TLSVersion, tickets: str
) -> None:
    """With `--workers 2`, SO_REUSEPORT spreads a client's reconnects over both workers. Each
    worker used to have its own ticket key, so about half of them could not resume. The
    workers now derive one key from a secret made before the fork (proxy.tls.TicketKeys), and
    `session_tickets.disabled` still means no tickets and no resumption at all."""
    from config.adapt import adapt_caddyfile

    ca = trustme.CA()
    cert, key = write_pair(tmp_path, ca.issue_cert("resume.test"), "resume")
    http_port, https_port = free_port(), free_port()
    caddyfile = global_options(tmp_path, http_port, https_port) + (
        f'resume.test {{\n\ttls {cert} {key}\n\trespond "resumed?"\n}}\n'
    )
    config, _ = adapt_caddyfile(caddyfile, "Caddyfile")
    if tickets == "disabled":  # JSON only: the Caddyfile has no session ticket option
        config["apps"]["tls"]["session_tickets"] = {"disabled": True}
    proxy = run_proxy(config, https_port, extra=["--workers", "2"])
    wait_serving(proxy)
    workers = child_pids(proxy.proc.pid)
    assert len(workers) == 2, workers
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.minimum_version = ctx.maximum_version = version

    def connect(session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool, int | None]:
        with (
            socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="resume.test", session=session) as tls,
        ):
            worker = serving_process(workers, https_port, tls.getsockname()[1])
            tls.sendall(b"GET / HTTP/1.1\r\nHost: resume.test\r\nConnection: close\r\n\r\n")
            # Reading the response also reads the TLS 1.3 ticket sent after the handshake.
            assert read_response(tls.makefile("rb"))[2] == b"resumed?"
            return tls.session, bool(tls.session_reused), worker

    first, reused, first_worker = connect(None)
    assert first is not None and not reused
    outcomes = [connect(first) for _ in range(RESUMING_CONNECTIONS)]
    served_by = {first_worker} | {worker for _, _, worker in outcomes}
    assert None not in served_by and served_by <= workers
    # Both workers served some of the 21 connections (all on one: probability 2 * 2**-21).
    assert len(served_by) == 2
    if tickets == "enabled":
        assert first.has_ticket
        assert [reused for _, reused, _ in outcomes] == [True] * RESUMING_CONNECTIONS
    else:
        assert not first.has_ticket
        assert [reused for _, reused, _ in outcomes] == [False] * RESUMING_CONNECTIONS


# ---- storage written by real Caddy ------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/usr/bin/caddy"), reason="caddy is not installed")
def test_serves_certificates_real_caddy_stored_without_reissuing(
    run_proxy: Any, tmp_path: Path
) -> None:
    from test_caddy_storage_compat import fetch_served_chain, start_caddy

    caddy_dir = tmp_path / "caddy"
    caddy_dir.mkdir()
    storage_dir = tmp_path / "data"  # the folder global_options() points pyproxy at
    caddy = start_caddy(caddy_dir, storage_dir, ["localhost"])
    root = storage_dir / "pki" / "authorities" / "local" / "root.crt"
    try:
        caddy_leaf = fetch_served_chain(caddy.https_port, "localhost", root)
    finally:
        caddy.stop()
    root_before = root.read_bytes()

    http_port, https_port = dual_free_port(), dual_free_port()
    caddyfile = global_options(tmp_path, http_port, https_port) + (
        'localhost {\n\trespond "pyproxy"\n}\n'
    )
    wait_serving(run_proxy(caddyfile, https_port))
    status, _h, body, cert = https_request(https_port, "localhost", cafile=str(root))
    assert (status, body) == (200, b"pyproxy")
    # The very leaf Caddy issued and served, under Caddy's root: nothing re-issued.
    assert cert == x509.load_der_x509_certificate(caddy_leaf)
    assert root.read_bytes() == root_before
