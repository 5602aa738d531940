"""ACME through `pyproxy run` against a real Pebble: HTTP-01 answered by pyproxy's own listener.

Pebble (tests/integration/pebblekit.py) validates on pyproxy's `http_port`. In the IPv6 variant
challtestsrv is told to answer AAAA only (no A record), so validation can only succeed over
IPv6 through the dual-stack HTTP listener; the IPv4 variant has A records only. Then HTTPS
requests are proxied to an origin with a chain that verifies to Pebble's root; a restart serves
the stored certificates without ordering; two workers sharing storage order each certificate
once.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from enginekit import read_response
from pebblekit import (
    Pebble,
    free_port,
    ipv6_loopback_available,
    pebble_global_options,
    requires_pebble,
    start_pebble_for_proxy,
)

pytestmark = requires_pebble

NAMES = ("a.example.com", "b.example.com")
OBTAINED = "certificate obtained successfully"
CERT_TIMEOUT_S = 90.0


def caddyfile(tmp_path: Path, pebble: Pebble, http_port: int, https_port: int, dial: str) -> str:
    options = pebble_global_options(
        pebble, http_port=http_port, https_port=https_port, storage=tmp_path / "data"
    )
    return options + f"{', '.join(NAMES)} {{\n\treverse_proxy {dial}\n}}\n"


def https_get(
    port: int, name: str, root_pem: str, path: str = "/"
) -> tuple[int, dict[str, str], bytes, x509.Certificate]:
    ctx = ssl.create_default_context(cadata=root_pem)  # Pebble's root only
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        tls = ctx.wrap_socket(raw, server_hostname=name)
        with tls:
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode()
            )
            status, headers, body = read_response(tls.makefile("rb"))
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return status, headers, body, x509.load_der_x509_certificate(der)


def wait_for_certificate(port: int, name: str, root_pem: str, proc: Any) -> x509.Certificate:
    deadline = time.monotonic() + CERT_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise AssertionError(f"pyproxy exited:\n{proc.log}")
        try:
            return https_get(port, name, root_pem)[3]
        except (OSError, ssl.SSLError) as exc:
            last = exc
            time.sleep(0.3)
    raise AssertionError(f"{name}: no certificate in time ({last!r})\n{proc.log[-6000:]}")


@pytest.mark.parametrize("family", ["ipv6", "ipv4"])
def test_obtains_two_names_through_own_http_listener_then_restart_reuses(
    run_proxy: Any, origin: Any, tmp_path: Path, family: str
) -> None:
    if family == "ipv6" and not ipv6_loopback_available():
        pytest.skip("no ::1 on this host")
    http_port = free_port(also=("::1",) if ipv6_loopback_available() else ())
    https_port = free_port(also=("::1",) if ipv6_loopback_available() else ())
    pebble = start_pebble_for_proxy(tmp_path, http_port, https_port, v6=family == "ipv6")
    try:
        root_pem = pebble.root_pem().decode()
        config = caddyfile(tmp_path, pebble, http_port, https_port, f"127.0.0.1:{origin.port}")
        proc = run_proxy(config, https_port)
        first = {n: wait_for_certificate(https_port, n, root_pem, proc) for n in NAMES}
        for name, cert in first.items():
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert names.get_values_for_type(x509.DNSName) == [name]
            status, _headers, body, _cert = https_get(https_port, name, root_pem, "/via?x=1")
            assert status == 200
            doc = json.loads(body)
            headers = {k.lower(): v for k, v in doc["headers"]}
            assert doc["path"] == "/via?x=1"
            assert headers["x-forwarded-proto"] == "https"
            assert headers["host"] == name
        log = proc.log
        for name in NAMES:
            assert log.count(f"{name}: {OBTAINED}") == 1, log
        assert proc.stop() == 0

        # Restart on the same storage: the stored certificates serve at once, no new order.
        proc2 = run_proxy(config, https_port)
        for name in NAMES:
            status, _h, _b, cert = https_get(https_port, name, root_pem)
            assert status == 200
            assert cert.serial_number == first[name].serial_number
        time.sleep(2.0)  # give the manager time to (wrongly) order
        assert OBTAINED not in proc2.log
        assert "creating order" not in proc2.log
    finally:
        pebble.stop()


def test_two_workers_obtain_each_certificate_once(
    run_proxy: Any, origin: Any, tmp_path: Path
) -> None:
    http_port = free_port(also=("::1",) if ipv6_loopback_available() else ())
    https_port = free_port(also=("::1",) if ipv6_loopback_available() else ())
    pebble = start_pebble_for_proxy(tmp_path, http_port, https_port)
    try:
        root_pem = pebble.root_pem().decode()
        config = caddyfile(tmp_path, pebble, http_port, https_port, f"127.0.0.1:{origin.port}")
        proc = run_proxy(config, https_port, extra=["--workers", "2"])
        for name in NAMES:
            wait_for_certificate(https_port, name, root_pem, proc)
        # Every connection succeeds, whichever worker the kernel picks (the one that did not
        # order picked the certificate up from storage).
        deadline = time.monotonic() + 30
        ok = 0
        while ok < 20:
            assert time.monotonic() < deadline, proc.log[-6000:]
            try:
                for name in NAMES:
                    status, _h, _b, _c = https_get(https_port, name, root_pem)
                    assert status == 200
                ok += 1
            except (OSError, ssl.SSLError):
                ok = 0
                time.sleep(0.3)
        log = proc.log
        for name in NAMES:
            assert log.count(f"{name}: {OBTAINED}") == 1, log
    finally:
        pebble.stop()
