"""Access-log entries of TLS requests carry Caddy's `request.tls` object.

Caddy (modules/caddyhttp/marshalers.go, LoggableTLSConnState) logs `resumed` (bool),
`version` and `cipher_suite` as the IANA uint16 codes Go's crypto/tls uses, `proto` (ALPN,
"" when none was negotiated) and `server_name` (SNI). A real `pyproxy run` on loopback serves
a site with a file access log; a Python client makes the request; the test reads the file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import trustme
from test_https_engine import dual_free_port, global_options, wait_serving, write_pair


def read_entries(path: Path, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            if len(lines) >= count:
                return [json.loads(ln) for ln in lines]
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {count} entries in {path}")


def raw_exchange(port: int, target: str) -> bytes:
    """One `GET target` on a fresh connection to a.test; the whole reply (head and body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    return reply


def tls_get(port: int, sni: str, cafile: Path, alpn: list[str] | None, version: Any) -> None:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.minimum_version = ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        tls.sendall(f"GET /x HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
        while tls.recv(65536):
            pass


def test_tls_request_entry_has_caddys_tls_object(run_proxy: Any, tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert, key = write_pair(tmp_path, ca.issue_cert("a.test"), "a")
    log_file = tmp_path / "access.log"
    http_port, https_port = dual_free_port(), dual_free_port()
    site = (
        f"a.test {{\n\ttls {cert} {key}\n\tlog {{\n\t\toutput file {log_file}\n\t}}\n"
        '\trespond "ok"\n}\n'
    )
    proc = run_proxy(global_options(tmp_path, http_port, https_port) + site, https_port)
    wait_serving(proc)

    tls_get(https_port, "a.test", ca_file, ["http/1.1"], ssl.TLSVersion.TLSv1_3)
    tls_get(https_port, "a.test", ca_file, None, ssl.TLSVersion.TLSv1_2)
    first, second = read_entries(log_file, 2)

    assert first["request"]["tls"] == {
        "resumed": False,
        "version": 0x0304,  # 772, TLS 1.3
        "cipher_suite": first["request"]["tls"]["cipher_suite"],
        "proto": "http/1.1",
        "server_name": "a.test",
        "ech_accepted": False,
    }
    # TLS 1.3 suites are 0x1301..0x1305 (RFC 8446 appendix B.4).
    assert 0x1301 <= first["request"]["tls"]["cipher_suite"] <= 0x1305
    tls12 = second["request"]["tls"]
    assert tls12["version"] == 0x0303  # 771, TLS 1.2
    assert tls12["proto"] == ""
    # An ECDHE suite: the defaults offer only forward-secret ones (0xC0xx or 0xCCA8/9).
    assert isinstance(tls12["cipher_suite"], int) and tls12["cipher_suite"] >> 8 in (0xC0, 0xCC)
    assert list(first["request"])[-1] == "tls"  # Caddy appends it after headers


def test_site_log_format_console_writes_zaps_console_layout(run_proxy: Any, tmp_path: Path) -> None:
    """`log { format console }` used to come out as JSON."""
    log_file = tmp_path / "console.log"
    http_port = dual_free_port()
    site = (
        f"http://a.test:{http_port} {{\n\tbind 127.0.0.1\n\tlog {{\n\t\toutput file {log_file}\n"
        '\t\tformat console {\n\t\t\ttime_format wall_milli\n\t\t}\n\t}\n\trespond "ok"\n}\n'
    )
    proc = run_proxy(f"{{\n\tadmin off\n\thttp_port {http_port}\n}}\n" + site, http_port)
    wait_serving(proc)
    with socket.create_connection(("127.0.0.1", http_port), timeout=5) as conn:
        conn.sendall(b"GET /c HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        while conn.recv(65536):
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (log_file.exists() and log_file.read_text()):
        time.sleep(0.05)
    line = log_file.read_text().splitlines()[0]
    ts, level, logger, msg, fields = line.split("\t")
    assert re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{3}", ts)
    # Caddy's console encoder colours the capital level by default (2.6.2 and current).
    assert (level, logger, msg) == (
        "\x1b[34mINFO\x1b[0m",
        "http.log.access.log0",
        "handled request",
    )
    parsed = json.loads(fields)
    assert parsed["request"]["uri"] == "/c"
    assert parsed["status"] == 200


def test_own_process_log_is_caddy_json_lines(run_proxy: Any, tmp_path: Path) -> None:
    """stderr is a file here (as under Docker): every line of pyproxy's own log is a JSON
    object shaped like Caddy's (level, ts, optional logger, msg)."""
    http_port = dual_free_port()
    site = f'http://a.test:{http_port} {{\n\tbind 127.0.0.1\n\trespond "ok"\n}}\n'
    proc = run_proxy(f"{{\n\tadmin off\n\thttp_port {http_port}\n}}\n" + site, http_port)
    wait_serving(proc)
    lines = [ln for ln in proc.log.splitlines() if ln.strip()]
    assert lines
    for ln in lines:
        entry = json.loads(ln)
        assert entry["level"] in ("debug", "info", "warn", "error")
        assert isinstance(entry["ts"], float)
        assert isinstance(entry["msg"], str)
    assert any("serving" in json.loads(ln)["msg"] for ln in lines)


def test_failed_proxied_request_logs_caddys_http_log_error(run_proxy: Any, tmp_path: Path) -> None:
    http_port, dead_port = dual_free_port(), dual_free_port()
    site = (
        f"http://a.test:{http_port} {{\n\tbind 127.0.0.1\n"
        f"\treverse_proxy 127.0.0.1:{dead_port}\n}}\n"
    )
    proc = run_proxy(f"{{\n\tadmin off\n\thttp_port {http_port}\n}}\n" + site, http_port)
    wait_serving(proc)
    assert raw_exchange(http_port, "/e?q=1").startswith(b"HTTP/1.1 502")

    def error_entries() -> list[dict[str, Any]]:
        entries = [json.loads(ln) for ln in proc.log.splitlines() if ln.strip()]
        return [e for e in entries if e.get("logger") == "http.log.error"]

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not error_entries():
        time.sleep(0.05)
    (entry,) = error_entries()
    assert entry["level"] == "error"
    assert entry["status"] == 502
    assert isinstance(entry["duration"], float)
    assert isinstance(entry["err_id"], str)
    request = entry["request"]
    assert (request["method"], request["host"], request["uri"]) == ("GET", "a.test", "/e?q=1")
    assert request["remote_ip"] == "127.0.0.1"
    assert request["proto"] == "HTTP/1.1"
    assert isinstance(request["remote_port"], str)
    assert "headers" in request


def test_site_with_its_own_log_names_its_error_logger_like_caddy(
    run_proxy: Any, tmp_path: Path
) -> None:
    # Caddy 2.6.2 (checked live) and current Caddy name both loggers after the site's log
    # (`http.log.access.log0`, `http.log.error.log0`); the error line goes to the default log,
    # since the site's log includes only its access logger.
    http_port, dead_port = dual_free_port(), dual_free_port()
    access_file = tmp_path / "access.log"
    site = (
        f"http://a.test:{http_port} {{\n\tbind 127.0.0.1\n"
        f"\tlog {{\n\t\toutput file {access_file}\n\t}}\n"
        f"\treverse_proxy 127.0.0.1:{dead_port}\n}}\n"
    )
    proc = run_proxy(f"{{\n\tadmin off\n\thttp_port {http_port}\n}}\n" + site, http_port)
    wait_serving(proc)
    assert raw_exchange(http_port, "/e").startswith(b"HTTP/1.1 502")

    def loggers_in(text: str) -> list[str]:
        return [json.loads(ln).get("logger", "") for ln in text.splitlines() if ln.strip()]

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "http.log.error.log0" not in loggers_in(proc.log):
        time.sleep(0.05)
    assert "http.log.error.log0" in loggers_in(proc.log)
    assert "http.log.error" not in loggers_in(proc.log)
    while time.monotonic() < deadline and not access_file.exists():
        time.sleep(0.05)
    assert loggers_in(access_file.read_text()) == ["http.log.access.log0"]


def _fetch(port: int) -> bytes:
    return raw_exchange(port, "/").partition(b"\r\n\r\n")[2]


def _descriptors_open_on(pid: int, path: Path) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                count += 1
        except OSError:
            continue  # closed meanwhile
    return count


def test_reloads_do_not_leak_access_log_files(run_proxy: Any, tmp_path: Path) -> None:
    http_port = dual_free_port()
    access_file = tmp_path / "access.log"

    def config(body: str) -> str:
        return (
            f"{{\n\tadmin off\n\thttp_port {http_port}\n}}\n"
            f"http://a.test:{http_port} {{\n\tbind 127.0.0.1\n"
            f"\tlog {{\n\t\toutput file {access_file}\n\t}}\n"
            f'\trespond "{body}"\n}}\n'
        )

    proc = run_proxy(config("v0"), http_port)
    wait_serving(proc)
    assert _fetch(http_port) == b"v0"
    children = Path(f"/proc/{proc.proc.pid}/task/{proc.proc.pid}/children").read_text()
    # The supervisor and its children (the worker, the fork server replacements come from).
    pids = [proc.proc.pid, *(int(p) for p in children.split())]

    def open_count() -> int:
        return sum(_descriptors_open_on(pid, access_file) for pid in pids)

    # Each config opens the file where its logs need it (the worker's access log, each
    # process's own-log handler, which `include`-filters every log).
    before = open_count()
    assert before >= 1
    for generation in range(1, 4):
        (tmp_path / "Caddyfile0").write_text(config(f"v{generation}"))
        proc.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _fetch(http_port) != f"v{generation}".encode():
            time.sleep(0.05)
        assert _fetch(http_port) == f"v{generation}".encode()
    # The old configs close their files once their connections are done: three reloads later
    # the same number is open.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and open_count() != before:
        time.sleep(0.05)
    assert open_count() == before, {pid: _descriptors_open_on(pid, access_file) for pid in pids}
