"""proxy.certs (a worker's certificate runtime) and proxy.trust_cli, without sockets.

Handshakes go through ssl.MemoryBIO against the listener contexts `tls_provider` returns, so
the whole path config -> plan -> store -> SNI selection is exercised; ACME names are checked
against storage only (the CertificateManager itself is tested with Pebble elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from tlskit import memory_handshake

from acme_client.http01 import Http01Challenge, publish_http01
from acme_client.local_ca import LocalCA
from acme_client.storage import (
    CertificateResource,
    FileStorage,
    save_certificate_resource,
    site_cert_key,
    site_meta_key,
    site_private_key_key,
)
from config.errors import ConfigError
from proxy import libssl, trust_cli
from proxy.certs import (
    CertRuntime,
    certificate_status,
    prepare_certificates,
    split_host_port,
    storage_root_from_config,
)

ACME_CA = "https://acme.test/dir"
ACME_ISSUER_KEY = "acme.test-dir"


def handshake(ctx: ssl.SSLContext, sni: str | None, cafile: str | None = None) -> ssl.SSLObject:
    """A full TLS handshake in memory; returns the client side (raises on failure)."""
    client_ctx = ssl.create_default_context(cafile=cafile)
    if cafile is None:
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
    client, _server, server_done = memory_handshake(ctx, client_ctx, sni)
    assert server_done, "the server did not finish the handshake"
    return client


def served_names(client: ssl.SSLObject) -> list[str]:
    der = client.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def write_pair(directory: Path, leaf: trustme.LeafCert, stem: str) -> tuple[Path, Path]:
    cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


def https_config(
    storage: Path, routes_hosts: list[str], *, tls: dict[str, Any] | None = None
) -> dict[str, Any]:
    routes = [
        {"match": [{"host": [h]}], "handle": [{"handler": "static_response", "body": h}]}
        for h in routes_hosts
    ]
    apps: dict[str, Any] = {
        "http": {
            "http_port": 8080,
            "https_port": 8443,
            "servers": {"srv0": {"listen": [":8443"], "routes": routes}},
        }
    }
    if tls is not None:
        apps["tls"] = tls
    return {"storage": {"module": "file_system", "root": str(storage)}, "apps": apps}


ACME_TLS: dict[str, Any] = {
    "automation": {"policies": [{"issuers": [{"module": "acme", "ca": ACME_CA}]}]}
}


# ---- setup ------------------------------------------------------------------------------------


def test_storage_root_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert storage_root_from_config({}) == tmp_path / "xdg" / "caddy"
    cfg = {"storage": {"module": "file_system", "root": str(tmp_path / "s")}}
    assert storage_root_from_config(cfg) == tmp_path / "s"
    with pytest.raises(ConfigError, match="not supported"):
        storage_root_from_config({"storage": {"module": "consul"}})


def test_split_host_port() -> None:
    assert split_host_port("Example.com:8080") == "Example.com"
    assert split_host_port("[::1]:80") == "::1"
    assert split_host_port("::1") == "::1"
    assert split_host_port("a.test") == "a.test"


def test_loaded_names_are_not_managed(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = write_pair(tmp_path, ca.issue_cert("files.test"), "files")
    tls = {"certificates": {"load_files": [{"certificate": str(cert), "key": str(key)}]}}
    setup = prepare_certificates(https_config(tmp_path / "data", ["files.test", "a.test"], tls=tls))
    assert setup.plan.managed_names == ("a.test",)
    assert setup.plan.skipped_loaded == ("files.test",)
    assert [m.cert.names for m in setup.manual] == [("files.test",)]
    # The plan's config is what the engine serves: the HTTPS server got its policy and the
    # redirect server exists.
    servers = setup.config["apps"]["http"]["servers"]
    assert servers["srv0"]["tls_connection_policies"] == [{}]
    assert "remaining_auto_https_redirects" in servers


def test_unreadable_or_mismatched_files_name_the_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, _key = write_pair(tmp_path, ca.issue_cert("a.test"), "a")
    _cert2, key2 = write_pair(tmp_path, ca.issue_cert("b.test"), "b")
    missing = {"load_files": [{"certificate": str(tmp_path / "nope.pem"), "key": str(key2)}]}
    with pytest.raises(ConfigError, match=r"nope\.pem"):
        prepare_certificates(https_config(tmp_path, ["a.test"], tls={"certificates": missing}))
    mismatched = {"load_files": [{"certificate": str(cert), "key": str(key2)}]}
    with pytest.raises(ConfigError, match=r"b\.key|a\.pem"):
        prepare_certificates(https_config(tmp_path, ["a.test"], tls={"certificates": mismatched}))


# ---- the runtime ------------------------------------------------------------------------------


async def test_manual_and_internal_certificates_by_sni(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = write_pair(tmp_path, ca.issue_cert("files.test", "*.wild.test"), "files")
    tls = {"certificates": {"load_files": [{"certificate": str(cert), "key": str(key)}]}}
    config = https_config(tmp_path / "data", ["files.test", "localhost", "x.wild.test"], tls=tls)
    runtime = CertRuntime(prepare_certificates(config))
    await runtime.start()
    try:
        ctx = runtime.tls_provider("srv0")
        assert isinstance(ctx, ssl.SSLContext)
        assert runtime.tls_provider("remaining_auto_https_redirects") is None
        root = LocalCA(runtime.storage)
        root.provision()
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        assert served_names(handshake(ctx, "files.test", str(ca_file))) == [
            "files.test",
            "*.wild.test",
        ]
        assert "*.wild.test" in served_names(handshake(ctx, "x.wild.test", str(ca_file)))
        client = handshake(ctx, "localhost", str(root.root_cert_path()))
        assert served_names(client) == ["localhost"]
        with pytest.raises(ssl.SSLError, match="INTERNAL_ERROR"):
            handshake(ctx, "unknown.test")
        states = {s["name"]: s for s in runtime.status()}
        assert states["localhost"]["issuer"] == "local"
        assert states["localhost"]["state"] == "valid"
        assert states["files.test"]["issuer"] == "file"
    finally:
        await runtime.stop()


async def test_cert_file_swap_and_half_written_pair(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = write_pair(tmp_path, ca.issue_cert("swap.test"), "swap")
    tls = {"certificates": {"load_files": [{"certificate": str(cert), "key": str(key)}]}}
    runtime = CertRuntime(
        prepare_certificates(https_config(tmp_path / "d", ["swap.test"], tls=tls))
    )
    await runtime.start()
    try:
        ctx = runtime.tls_provider("srv0")
        assert ctx is not None
        first = runtime.store.get("swap.test")
        assert first is not None
        # Half a swap: a new certificate whose key is not written yet keeps the old pair.
        new_leaf = ca.issue_cert("swap.test", "new.swap.test")
        cert.write_bytes(b"".join(b.bytes() for b in new_leaf.cert_chain_pems))
        runtime.maintain_now()
        assert runtime.store.get("swap.test") is first
        handshake(ctx, "swap.test")
        key.write_bytes(new_leaf.private_key_pem.bytes())
        runtime.maintain_now()
        now = runtime.store.get("swap.test")
        assert now is not first and now is not None
        assert "new.swap.test" in served_names(handshake(ctx, "new.swap.test"))
    finally:
        await runtime.stop()


@pytest.mark.parametrize("rotation", ["rotating", "disable_rotation"])
async def test_session_ticket_keys_rotate_while_the_runtime_runs(
    tmp_path: Path, rotation: str
) -> None:
    lib = libssl.bridge()
    assert lib is not None, libssl.unavailable_reason()
    ca = trustme.CA()
    cert, key = write_pair(tmp_path, ca.issue_cert("tickets.test"), "tickets")
    tickets: dict[str, Any] = {"rotation_interval": "200ms"}
    if rotation == "disable_rotation":
        tickets["disable_rotation"] = True
    tls = {
        "certificates": {"load_files": [{"certificate": str(cert), "key": str(key)}]},
        "session_tickets": tickets,
    }
    runtime = CertRuntime(
        prepare_certificates(https_config(tmp_path / "d", ["tickets.test"], tls=tls))
    )
    await runtime.start()
    try:
        ctx = runtime.tls_provider("srv0")
        assert ctx is not None
        first = lib.ticket_keys(ctx)
        if rotation == "disable_rotation":
            assert runtime._ticket_rotation is None  # one key for the process's life
            return
        deadline = time.monotonic() + 10.0
        while lib.ticket_keys(ctx) == first and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert lib.ticket_keys(ctx) != first
    finally:
        await runtime.stop()
    assert runtime._ticket_rotation is None


async def test_stored_acme_certificates_served_and_polled(tmp_path: Path) -> None:
    ca = trustme.CA()
    storage = FileStorage(tmp_path / "data")

    def store(name: str) -> bytes:
        leaf = ca.issue_cert(name)
        pem = b"".join(b.bytes() for b in leaf.cert_chain_pems)
        save_certificate_resource(
            storage,
            CertificateResource(
                sans=[name],
                certificate_pem=pem,
                private_key_pem=leaf.private_key_pem.bytes(),
                issuer_key=ACME_ISSUER_KEY,
            ),
        )
        return pem

    first_pem = store("a.example.com")
    runtime = CertRuntime(
        prepare_certificates(https_config(tmp_path / "data", ["a.example.com"], tls=ACME_TLS))
    )
    # A worker's runtime never talks to a CA (the node's manager does, proxy.node_certs): its
    # start serves what storage holds (this test has no sockets; acme.test does not exist).
    await runtime.start()
    try:
        served = runtime.store.get("a.example.com")
        assert served is not None and served.certificate_pem == first_pem
        assert runtime.status() == []  # ACME names are the node's to report
        # The node's manager (or another node) renews; the supervisor says so: served now.
        time.sleep(0.01)  # a distinct mtime
        second_pem = store("a.example.com")
        await runtime.refresh_from_storage()
        served = runtime.store.get("a.example.com")
        assert served is not None and served.certificate_pem == second_pem
    finally:
        await runtime.stop()
    statuses = {s.name: s for s in certificate_status(runtime.setup)}
    assert statuses["a.example.com"].issuer == ACME_ISSUER_KEY
    assert statuses["a.example.com"].state == "valid"
    assert statuses["a.example.com"].next_renewal is not None


async def test_a_poll_during_a_store_picks_the_certificate_up_once_it_is_complete(
    tmp_path: Path,
) -> None:
    # The node's manager stores key, certificate, then metadata (certmagic's order). A worker
    # polling between the certificate and the metadata finds an incomplete resource; the poll
    # after the metadata lands must serve the certificate (it used to remember the certificate
    # file's signature and never look again: the name stayed without a certificate).
    ca = trustme.CA()
    storage = FileStorage(tmp_path / "data")
    name = "a.example.com"

    def resource() -> CertificateResource:
        leaf = ca.issue_cert(name)
        return CertificateResource(
            sans=[name],
            certificate_pem=b"".join(b.bytes() for b in leaf.cert_chain_pems),
            private_key_pem=leaf.private_key_pem.bytes(),
            issuer_key=ACME_ISSUER_KEY,
        )

    runtime = CertRuntime(
        prepare_certificates(https_config(tmp_path / "data", [name], tls=ACME_TLS))
    )
    await runtime.start()  # nothing stored yet: the first order is under way
    try:
        assert runtime.store.get(name) is None
        issued = resource()
        storage.store(site_private_key_key(ACME_ISSUER_KEY, name), issued.private_key_pem)
        storage.store(site_cert_key(ACME_ISSUER_KEY, name), issued.certificate_pem)
        await runtime.refresh_from_storage()  # mid-store: no metadata yet
        storage.store(site_meta_key(ACME_ISSUER_KEY, name), issued.metadata_json())
        await runtime.refresh_from_storage()
        served = runtime.store.get(name)
        assert served is not None and served.certificate_pem == issued.certificate_pem
    finally:
        await runtime.stop()


def test_answer_http01_from_storage(tmp_path: Path) -> None:
    runtime = CertRuntime(
        prepare_certificates(https_config(tmp_path / "data", ["a.example.com"], tls=ACME_TLS))
    )
    publish_http01(
        runtime.storage,
        ACME_ISSUER_KEY,
        Http01Challenge(domain="a.example.com", token="tok123", key_authorization="tok123.thumb"),
    )
    path = "/.well-known/acme-challenge/tok123"
    assert runtime.answer_http01("a.example.com:8080", path) == b"tok123.thumb"
    assert runtime.answer_http01("A.Example.com", path) == b"tok123.thumb"
    assert runtime.answer_http01("b.example.com", path) is None
    assert runtime.answer_http01("a.example.com", "/.well-known/acme-challenge/other") is None
    assert runtime.answer_http01("a.example.com", "/index.html") is None


# ---- CLI ----------------------------------------------------------------------------------------


def test_trust_untrust_and_certs_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # --install also writes to the NSS databases under HOME: never the real user's.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config_path = tmp_path / "caddy.json"
    # `admin` disabled: `certs` then reads storage without asking any admin API (no sockets).
    config_path.write_text(
        json.dumps({**https_config(tmp_path / "data", ["localhost"]), "admin": {"disabled": True}})
    )
    ca_dir = tmp_path / "trust"
    args = argparse.Namespace(
        config=str(config_path), adapter="json", ca="local", install=True, ca_dir=str(ca_dir)
    )
    assert trust_cli.trust_command(args) == 0
    root = tmp_path / "data" / "pki" / "authorities" / "local" / "root.crt"
    assert capsys.readouterr().out.strip() == str(root)
    serial = x509.load_pem_x509_certificate(root.read_bytes()).serial_number
    installed = ca_dir / f"Truststore_Development_CA_{serial}.crt"
    assert installed.read_bytes() == root.read_bytes()
    assert trust_cli.untrust_command(args) == 0
    assert not installed.exists()

    certs_args = argparse.Namespace(config=str(config_path), adapter="json", json=True)
    assert trust_cli.certs_command(certs_args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["certificates"][0]["name"] == "localhost"
    assert doc["certificates"][0]["issuer"] == "local"
    assert doc["certificates"][0]["state"] == "missing"


class _FakeRequest:
    def __init__(self, method: str, host: str, path: str) -> None:
        self.method, self.host, self.path = method, host, path


class _FakeExchange:
    def __init__(self, req: _FakeRequest) -> None:
        self.req = req
        self.response: tuple[int, list[tuple[str, str]] | None, bytes] | None = None

    def respond(self, status: int, headers: list[tuple[str, str]] | None, body: bytes) -> None:
        self.response = (status, headers, body)


def test_http01_answered_before_routes(tmp_path: Path) -> None:
    runtime = CertRuntime(
        prepare_certificates(https_config(tmp_path / "data", ["a.example.com"], tls=ACME_TLS))
    )
    publish_http01(
        runtime.storage,
        ACME_ISSUER_KEY,
        Http01Challenge(domain="a.example.com", token="t1", key_authorization="t1.k"),
    )
    routed: list[str] = []

    def dispatch(ex: _FakeExchange) -> None:  # what ServerRuntime.dispatch does with it
        if not runtime.intercept_http01(ex):
            routed.append(ex.req.path)

    ours = _FakeExchange(_FakeRequest("GET", "a.example.com:80", "/.well-known/acme-challenge/t1"))
    dispatch(ours)
    assert ours.response == (200, [("Content-Type", "text/plain")], b"t1.k")
    # Not ours (unknown token, other method, other path): the routes decide (Caddy does the same,
    # so a backend can answer its own challenges).
    for method, path in (
        ("GET", "/.well-known/acme-challenge/zz"),
        ("POST", "/.well-known/acme-challenge/t1"),
        ("GET", "/"),
    ):
        ex = _FakeExchange(_FakeRequest(method, "a.example.com", path))
        dispatch(ex)
        assert ex.response is None
    assert routed == ["/.well-known/acme-challenge/zz", "/.well-known/acme-challenge/t1", "/"]


class _FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def get_extra_info(self, name: str) -> object:
        return object() if name == "ssl_object" else None

    def abort(self) -> None:
        self.aborted = True


def test_gate_protocol_factory() -> None:
    import asyncio

    from proxy.certs import gate_protocol_factory

    class Inner(asyncio.Protocol):
        made = lost = 0

        def connection_made(self, transport: Any) -> None:
            Inner.made += 1

        def connection_lost(self, exc: Exception | None) -> None:
            Inner.lost += 1

    assert gate_protocol_factory(Inner, None) is Inner
    refused = gate_protocol_factory(Inner, lambda _obj: False)()
    transport = _FakeTransport()
    refused.connection_made(transport)  # type: ignore[arg-type]
    refused.connection_lost(None)
    assert transport.aborted and (Inner.made, Inner.lost) == (0, 0)
    allowed = gate_protocol_factory(Inner, lambda _obj: True)()
    allowed.connection_made(_FakeTransport())  # type: ignore[arg-type]
    allowed.connection_lost(None)
    assert (Inner.made, Inner.lost) == (1, 1)
