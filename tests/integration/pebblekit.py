"""Test helpers: a real Pebble ACME CA + challtestsrv DNS on loopback, and an HTTP-01 responder.

Owns starting/stopping `pebble` and `pebble-challtestsrv` (Debian's `pebble` package) on free
loopback ports with a config this module writes (the package ships no test certificates, so a
throwaway CA and a localhost certificate are generated here), and a tiny asyncio HTTP server
that answers `/.well-known/acme-challenge/` from shared storage through `answer_http01` on
127.0.0.1 and ::1 (the proxy's HTTP listener will replace it). Processes are stopped by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if __name__ == "__main__":  # run as a worker process: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from acme_client.http01 import HTTP01, answer_http01
from acme_client.issuer import IssuerConfig
from acme_client.manager import CertificateManager
from acme_client.storage import FileStorage, Storage

PEBBLE_BIN = shutil.which("pebble")
CHALLTESTSRV_BIN = shutil.which("pebble-challtestsrv")
STARTUP_TIMEOUT_S = 15.0

requires_pebble = pytest.mark.skipif(
    PEBBLE_BIN is None or CHALLTESTSRV_BIN is None,
    reason="pebble / pebble-challtestsrv not installed (apt-get install pebble)",
)


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1", *, also: tuple[str, ...] = ()) -> int:
    """A port free for TCP (and UDP) on `host` and on every address in `also`."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        ok = True
        for addr in (host, *also):
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                try:
                    with socket.socket(fam, kind) as probe:
                        probe.bind((addr, port))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no free port found")


def make_tls_certs(out: Path) -> tuple[Path, Path, Path]:
    """Throwaway CA + localhost certificate for Pebble's HTTPS listeners. Returns ca, cert, key."""
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pyproxy test pebble WFE CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = out / "ca.pem", out / "cert.pem", out / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@dataclass
class Pebble:
    """A running Pebble + challtestsrv pair."""

    workdir: Path
    http_port: int
    # Where Pebble connects for TLS-ALPN-01 (the CA's "port 443"): pyproxy's HTTPS port in
    # tests that solve it; 0 = a free loopback port nothing listens on (the challenge fails).
    tls_port: int = 0
    validity_s: int = 7776000
    nonce_reject_pct: int = 0
    authz_reuse_pct: int = 0
    default_ipv6: str = "::1"
    eab_keys: dict[str, str] = field(default_factory=dict)  # kid -> base64url MAC key
    alternate_roots: int = 0
    wfe_port: int = 0
    mgmt_port: int = 0
    dns_port: int = 0
    challtest_mgmt_port: int = 0
    ca_pem: Path = field(default_factory=Path)
    _requests_from: int = 0
    pids: list[int] = field(default_factory=list)
    _cert: Path = field(default_factory=Path)
    _key: Path = field(default_factory=Path)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.wfe_port}/dir"

    @property
    def mgmt_url(self) -> str:
        return f"https://127.0.0.1:{self.mgmt_port}"

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_pem))

    def get(self, url: str, timeout_s: float = 5.0) -> bytes:
        with urllib.request.urlopen(url, context=self._ssl_context(), timeout=timeout_s) as r:
            data: bytes = r.read()
            return data

    def root_pem(self, index: int = 0) -> bytes:
        return self.get(f"{self.mgmt_url}/roots/{index}")

    def intermediate_pem(self) -> bytes:
        return self.get(f"{self.mgmt_url}/intermediates/0")

    def prepare(self) -> None:
        """Certificates and ports, so a client can be configured before the CA runs."""
        if self.wfe_port:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca_pem, self._cert, self._key = make_tls_certs(self.workdir / "certs")
        self.wfe_port = free_port()
        self.mgmt_port = free_port()
        self.dns_port = free_port()
        self.challtest_mgmt_port = free_port()

    def start(self) -> None:
        assert PEBBLE_BIN and CHALLTESTSRV_BIN
        self.prepare()
        cert, key = self._cert, self._key
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.wfe_port}",
                "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
                "certificate": str(cert),
                "privateKey": str(key),
                "httpPort": self.http_port,
                "tlsPort": self.tls_port or free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": bool(self.eab_keys),
                "externalAccountMACKeys": self.eab_keys,
                "certificateValidityPeriod": self.validity_s,
            }
        }
        config_path = self.workdir / "pebble-config.json"
        config_path.write_text(json.dumps(config))
        dns_log = open(self.workdir / "challtestsrv.log", "wb")  # noqa: SIM115
        dns = subprocess.Popen(
            [
                CHALLTESTSRV_BIN,
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-dns01",
                f"127.0.0.1:{self.dns_port}",
                "-management",
                f"127.0.0.1:{self.challtest_mgmt_port}",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                self.default_ipv6,
            ],
            stdout=dns_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        dns_log.close()
        self._procs.append(dns)
        self.pids.append(dns.pid)
        env = dict(os.environ)
        env.update(
            PEBBLE_VA_NOSLEEP="1",
            PEBBLE_WFE_NONCEREJECT=str(self.nonce_reject_pct),
            PEBBLE_AUTHZREUSE=str(self.authz_reuse_pct),
            PEBBLE_ALTERNATE_ROOTS=str(self.alternate_roots),
        )
        pebble_log = open(self.workdir / "pebble.log", "wb")  # noqa: SIM115
        ca = subprocess.Popen(
            [
                PEBBLE_BIN,
                "-config",
                str(config_path),
                "-dnsserver",
                f"127.0.0.1:{self.dns_port}",
                "-strict=false",
            ],
            stdout=pebble_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        pebble_log.close()
        self._procs.append(ca)
        self.pids.append(ca.pid)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if ca.poll() is not None or dns.poll() is not None:
                break
            try:
                self.get(self.directory_url, timeout_s=1.0)
                self.get(f"{self.mgmt_url}/roots/0", timeout_s=1.0)
                # What clients asked from here on (the probes above are not theirs).
                self._requests_from = (self.workdir / "pebble.log").stat().st_size
                return
            except OSError as exc:
                last = exc
                time.sleep(0.1)
        logs = self.logs()
        self.stop()
        raise RuntimeError(f"pebble did not start: {last}\n{logs}")

    def ca_requests(self) -> list[str]:
        """Every ACME request clients made since the CA was ready, as `METHOD /path`, in order.

        Pebble's WFE logs each request it handles (`POST /order-plz -> calling handler()`), so
        tests count what was sent to the CA without a proxy in front of it.
        """
        with open(self.workdir / "pebble.log", "rb") as f:
            f.seek(self._requests_from)
            text = f.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            head, sep, _ = line.partition(" -> calling handler()")
            if sep:
                out.append(" ".join(head.split()[3:]))
        return out

    def new_orders(self) -> int:
        """How many orders clients created (RFC 8555 section 7.4: POST to `newOrder`)."""
        return sum(1 for r in self.ca_requests() if r == "POST /order-plz")

    def challenge_answers(self) -> int:
        """How many times clients told the CA a challenge is ready (RFC 8555 section 7.5.1)."""
        return sum(1 for r in self.ca_requests() if r.startswith("POST /chalZ/"))

    def logs(self) -> str:
        out = []
        for name in ("pebble.log", "challtestsrv.log"):
            p = self.workdir / name
            if p.exists():
                out.append(f"--- {name}\n" + p.read_text(errors="replace")[-4000:])
        return "\n".join(out)

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._procs.clear()


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `predicate` on the event loop until it holds; AssertionError naming `what` after
    `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def start_pebble_for_proxy(
    tmp_path: Path, http_port: int, https_port: int, *, v6: bool | None = None
) -> Pebble:
    """Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `https_port` (both enabled
    by default, as in Caddy): over IPv6 only (no A records) when `v6`, else over IPv4 only (no
    AAAA records). Default: IPv6 where ::1 exists."""
    v6 = ipv6_loopback_available() if v6 is None else v6
    pebble = Pebble(
        tmp_path / "pebble",
        http_port=http_port,
        tls_port=https_port,
        default_ipv6="::1" if v6 else "",
    )
    pebble.start()
    if v6:
        # No A records at all: Pebble can only reach pyproxy over IPv6.
        req = urllib.request.Request(
            f"http://127.0.0.1:{pebble.challtest_mgmt_port}/set-default-ipv4",
            data=json.dumps({"ip": ""}).encode(),
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
    return pebble


def pebble_global_options(
    pebble: Pebble,
    *,
    http_port: int,
    https_port: int,
    storage: Path,
    admin: str = "off",
    extra: tuple[str, ...] = (),
) -> str:
    """The Caddyfile global options block that points pyproxy's ACME at this Pebble."""
    lines = [
        f"http_port {http_port}",
        f"https_port {https_port}",
        f"admin {admin}",
        f"storage file_system {storage}",
        f"acme_ca {pebble.directory_url}",
        f"acme_ca_root {pebble.ca_pem}",
        "email admin@example.com",
        *extra,
    ]
    return "{\n" + "".join(f"\t{line}\n" for line in lines) + "}\n"


class Http01Responder:
    """Answers HTTP-01 from shared storage on 127.0.0.1 and (when available) ::1."""

    def __init__(self, storage: Storage, port: int, *, ipv6: bool = True) -> None:
        self.storage = storage
        self.port = port
        self.ipv6 = ipv6
        self.servers: list[asyncio.Server] = []
        self.requests: list[tuple[str, str, str]] = []  # (peer address, host, path)

    async def start(self) -> None:
        hosts = ["127.0.0.1"] + (["::1"] if self.ipv6 else [])
        for host in hosts:
            self.servers.append(await asyncio.start_server(self._handle, host, self.port))

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()
        self.servers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            _method, target, _version = lines[0].split(" ", 2)
            host = ""
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "host":
                    host = value.strip()
            # Pebble sends Host: name:port; strip the port (and IPv6 brackets keep theirs).
            if host.startswith("["):
                host = host.split("]", 1)[0] + "]"
            else:
                host = host.rsplit(":", 1)[0] if ":" in host else host
            path = target.split("?", 1)[0]
            peer = writer.get_extra_info("peername")
            self.requests.append((str(peer[0]) if peer else "", host, path))
            body = await asyncio.to_thread(answer_http01, self.storage, host, path)
            if body is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()


# --- fixtures -------------------------------------------------------------------------------------


class AcmeEnv:
    """Per-test Pebble instances, HTTP-01 responders, storages and managers, all torn down."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.storage = FileStorage(tmp_path / "data")
        self.pebbles: list[Pebble] = []
        self.responders: list[Http01Responder] = []
        self.managers: list[CertificateManager] = []
        self.installed: list[tuple[str, bytes, bytes]] = []

    def new_pebble(
        self,
        *,
        http_port: int,
        default_ipv6: str = "::1",
        validity_s: int = 7776000,
        nonce_reject_pct: int = 0,
        start: bool = True,
        **kw: Any,
    ) -> Pebble:
        pebble = Pebble(
            self.tmp_path / f"pebble{len(self.pebbles)}",
            http_port=http_port,
            validity_s=validity_s,
            nonce_reject_pct=nonce_reject_pct,
            default_ipv6=default_ipv6,
            **kw,
        )
        self.pebbles.append(pebble)
        if start:
            pebble.start()
        else:
            pebble.prepare()
        return pebble

    async def new_responder(
        self, *, ipv6: bool = True, port: int | None = None, storage: Storage | None = None
    ) -> Http01Responder:
        if port is None:
            port = free_port(also=("::1",) if ipv6 else ())
        responder = Http01Responder(storage or self.storage, port, ipv6=ipv6)
        await responder.start()
        self.responders.append(responder)
        return responder

    async def start_ca(
        self,
        *,
        ipv6: bool = True,
        validity_s: int = 7776000,
        nonce_reject_pct: int = 0,
        storage: Storage | None = None,
        **kw: Any,
    ) -> tuple[Pebble, Http01Responder]:
        """A responder (v4 + v6, or v4 only; answering from `storage`, by default the test's
        file storage) and a Pebble validating against it."""
        responder = await self.new_responder(ipv6=ipv6, storage=storage)
        pebble = self.new_pebble(
            http_port=responder.port,
            default_ipv6="::1" if ipv6 else "",
            validity_s=validity_s,
            nonce_reject_pct=nonce_reject_pct,
            **kw,
        )
        return pebble, responder

    def issuer_config(self, pebble: Pebble, **kw: Any) -> IssuerConfig:
        kw.setdefault("email", "admin@example.com")
        # The responders answer HTTP-01 only; with TLS-ALPN-01 enabled too, the issuer would
        # try it first half of the time (acmez's random first order) and order again.
        kw.setdefault("challenge_types", (HTTP01,))
        return IssuerConfig(ca=pebble.directory_url, ca_root=str(pebble.ca_pem), **kw)

    def manager(
        self,
        issuer: IssuerConfig | Sequence[IssuerConfig],
        storage: Storage | None = None,
        **kw: Any,
    ) -> CertificateManager:
        def record(name: str, cert_pem: bytes, key_pem: bytes) -> None:
            self.installed.append((name, cert_pem, key_pem))

        kw.setdefault("on_certificate", record)
        kw.setdefault("rng", random.Random(1))
        mgr = CertificateManager(storage or self.storage, issuer, **kw)
        self.managers.append(mgr)
        return mgr

    async def close(self) -> None:
        for mgr in self.managers:
            with contextlib.suppress(RuntimeError):
                await mgr.stop()
        for responder in self.responders:
            await responder.stop()
        for pebble in self.pebbles:
            pebble.stop()


@pytest.fixture(name="acme_env")
async def acme_env_fixture(tmp_path: Path) -> AsyncIterator[AcmeEnv]:
    """Import `acme_env_fixture` into a test module to use the `acme_env` fixture."""
    env = AcmeEnv(tmp_path)
    try:
        yield env
    finally:
        await env.close()


# --- a manager in its own process (for the shared-storage test) -------------------------------


def worker_command(storage: Path, issuer: IssuerConfig, names: list[str]) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        str(storage),
        issuer.ca,
        issuer.ca_root or "",
        *names,
    ]


async def _worker(storage_dir: str, ca: str, ca_root: str, names: list[str]) -> dict[str, Any]:
    storage = FileStorage(storage_dir)
    mgr = CertificateManager(
        storage,
        IssuerConfig(
            ca=ca, ca_root=ca_root or None, email="admin@example.com", challenge_types=(HTTP01,)
        ),
        lock_poll_interval_s=0.2,
        retry_intervals_s=(1.0,),
    )
    await mgr.start(names)
    try:
        ok = all([await mgr.wait_ready(n, 90) for n in names])
        certs = {s.name: s.not_after.isoformat() if s.not_after else None for s in mgr.status()}
        return {
            "ok": ok,
            "orders": mgr.orders_placed(),
            "accounts": mgr.accounts_registered(),
            "certs": certs,
        }
    finally:
        await mgr.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    result = asyncio.run(_worker(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
    print(json.dumps(result), flush=True)
