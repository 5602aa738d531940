"""TLS termination (proxy/tls.py): real handshakes on loopback, per-SNI certificates, hot swap.

A minimal asyncio TLS echo server (asyncio.start_server with the selector's context) stands in
for the engine's listeners; clients are Python's ssl (verifying against a trustme CA) and
`openssl s_client -servername`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from enginekit import free_port

from acme_client.certificates import CertificateError
from config.adapt import adapt_caddyfile
from config.auto_https import plan_automatic_https
from proxy import libssl
from proxy.cli import main as cli_main
from proxy.tls import (
    DEFAULT_CIPHERS,
    CertificateStore,
    ConnectionPolicy,
    SessionTickets,
    SNISelector,
    TicketKeys,
    TicketSecret,
    TLSConfigError,
    parse_connection_policies,
    selector_for_server,
)

HAVE_OPENSSL = shutil.which("openssl") is not None
TIMEOUT_S = 10.0


# ---- helpers ----------------------------------------------------------------------------------


def pem_pair(ca: trustme.CA, *names: str) -> tuple[bytes, bytes]:
    leaf = ca.issue_cert(*names)
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    return chain, leaf.private_key_pem.bytes()


def client_context(ca: trustme.CA, **kwargs: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(ctx)
    for key, value in kwargs.items():
        setattr(ctx, key, value)
    return ctx


def peer_sans(der: bytes) -> list[str]:
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1024):
            writer.write(b"pong:" + data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def reply_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One answer, then the server ends the connection cleanly (close_notify), as the engine
    does after a response: OpenSSL drops a session from its cache when a connection ends
    uncleanly, which would hide whether the cache would have resumed it."""
    writer.write(b"pong:" + await reader.read(16))
    await writer.drain()
    writer.close()


class Server:
    def __init__(self, server: asyncio.Server) -> None:
        self.server = server
        self.port: int = server.sockets[0].getsockname()[1]


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    started: list[asyncio.Server] = []

    async def start(ctx: ssl.SSLContext, host: str = "127.0.0.1", handler: Any = None) -> Server:
        server = await asyncio.start_server(handler or echo, host, 0, ssl=ctx)
        started.append(server)
        return Server(server)

    yield start
    for server in started:
        server.close()
        await server.wait_closed()


async def handshake(
    port: int,
    ctx: ssl.SSLContext,
    server_hostname: str | None,
    host: str = "127.0.0.1",
) -> tuple[list[str], str | None, str | None]:
    """Connect, exchange one message; return (peer SANs, TLS version, ALPN protocol)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ctx, server_hostname=server_hostname),
        TIMEOUT_S,
    )
    try:
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(9), TIMEOUT_S) == b"pong:ping"
        ssl_obj = writer.get_extra_info("ssl_object")
        der = ssl_obj.getpeercert(binary_form=True)
        return peer_sans(der), ssl_obj.version(), ssl_obj.selected_alpn_protocol()
    finally:
        writer.close()


async def s_client(port: int, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    return proc.returncode or 0, out.decode(errors="replace")


def s_client_leaf_sans(output: str) -> list[str]:
    match = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", output, re.S)
    assert match, output
    cert = x509.load_pem_x509_certificate(match.group(0).encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def store(ca: trustme.CA) -> CertificateStore:
    store = CertificateStore()
    for names in (("a.example.test",), ("b.example.test",), ("*.wild.example.test",)):
        store.add_pem(*pem_pair(ca, *names))
    return store


# ---- several names on one port ----------------------------------------------------------------


async def test_each_name_gets_its_own_certificate(
    ca: trustme.CA, store: CertificateStore, start_server: StartServer
) -> None:
    srv = await start_server(SNISelector(store).server_context())
    ctx = client_context(ca)
    for name in ("a.example.test", "b.example.test", "x.wild.example.test"):
        sans, version, _alpn = await handshake(srv.port, ctx, name)
        assert sans == ([name] if "wild" not in name else ["*.wild.example.test"])
        assert version in ("TLSv1.2", "TLSv1.3")
    # SNI is case-insensitive (RFC 6066 §3 host names)
    sans, _, _ = await handshake(srv.port, ctx, "A.Example.TEST")
    assert sans == ["a.example.test"]


@pytest.mark.skipif(not HAVE_OPENSSL, reason="openssl not installed")
async def test_openssl_s_client_sees_the_right_certificate(
    ca: trustme.CA, store: CertificateStore, start_server: StartServer, tmp_path: Path
) -> None:
    srv = await start_server(SNISelector(store).server_context())
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    for name in ("a.example.test", "b.example.test"):
        code, out = await s_client(
            srv.port, "-servername", name, "-CAfile", str(ca_file), "-verify_return_error"
        )
        assert code == 0, out
        assert "Verify return code: 0 (ok)" in out
        assert s_client_leaf_sans(out) == [name]


async def test_wildcard_covers_one_label_only(
    ca: trustme.CA, store: CertificateStore, start_server: StartServer
) -> None:
    srv = await start_server(SNISelector(store).server_context())
    ctx = client_context(ca, check_hostname=False)
    sans, _, _ = await handshake(srv.port, ctx, "deep.wild.example.test")
    assert sans == ["*.wild.example.test"]
    with pytest.raises(ssl.SSLError, match=r"INTERNAL_ERROR|internal error"):
        await handshake(srv.port, ctx, "two.deep.wild.example.test")
    with pytest.raises(ssl.SSLError, match=r"INTERNAL_ERROR|internal error"):
        await handshake(srv.port, ctx, "wild.example.test")


# ---- unknown SNI, default_sni, fallback_sni ---------------------------------------------------


async def test_unknown_sni_fails_with_alert_80(
    ca: trustme.CA, store: CertificateStore, start_server: StartServer
) -> None:
    srv = await start_server(SNISelector(store).server_context())
    ctx = client_context(ca, check_hostname=False)
    with pytest.raises(ssl.SSLError) as info:
        await handshake(srv.port, ctx, "unknown.example.test")
    assert info.value.reason == "TLSV1_ALERT_INTERNAL_ERROR"
    with pytest.raises(ssl.SSLError) as info:
        await handshake(srv.port, ctx, None)  # no SNI and no default_sni
    assert info.value.reason == "TLSV1_ALERT_INTERNAL_ERROR"
    # the listener keeps serving known names afterwards
    assert (await handshake(srv.port, client_context(ca), "a.example.test"))[0] == [
        "a.example.test"
    ]


def test_unknown_sni_alert_under_uvloop(ca: trustme.CA, store: CertificateStore) -> None:
    """uvloop's own SSL transport must deliver the alert too (not a bare reset)."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        server = await asyncio.start_server(
            echo, "127.0.0.1", 0, ssl=SNISelector(store).server_context()
        )
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ssl.SSLError) as info:
                await handshake(port, client_context(ca, check_hostname=False), "nope.test")
            assert info.value.reason == "TLSV1_ALERT_INTERNAL_ERROR"
            sans, _, _ = await handshake(port, client_context(ca), "a.example.test")
            assert sans == ["a.example.test"]
        finally:
            server.close()
            await server.wait_closed()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


@pytest.mark.skipif(not HAVE_OPENSSL, reason="openssl not installed")
async def test_unknown_sni_alert_seen_by_openssl(
    store: CertificateStore, start_server: StartServer
) -> None:
    srv = await start_server(SNISelector(store).server_context())
    code, out = await s_client(srv.port, "-servername", "nope.example.test")
    assert code != 0
    assert "alert internal error" in out and "alert number 80" in out, out


async def test_default_sni_serves_clients_without_sni(
    ca: trustme.CA, store: CertificateStore, start_server: StartServer
) -> None:
    selector = SNISelector(store, [{"default_sni": "b.example.test"}])
    srv = await start_server(selector.server_context())
    ctx = client_context(ca, check_hostname=False)
    assert (await handshake(srv.port, ctx, None))[0] == ["b.example.test"]
    # default_sni applies only to an empty SNI: an unknown name still fails
    with pytest.raises(ssl.SSLError, match="INTERNAL_ERROR"):
        await handshake(srv.port, ctx, "unknown.example.test")


async def test_fallback_sni_serves_unknown_names(
    ca: trustme.CA, store: CertificateStore, start_server: StartServer
) -> None:
    selector = SNISelector(store, [{"fallback_sni": "a.example.test"}])
    srv = await start_server(selector.server_context())
    ctx = client_context(ca, check_hostname=False)
    assert (await handshake(srv.port, ctx, "cdn-sent.example.test"))[0] == ["a.example.test"]
    assert (await handshake(srv.port, ctx, None))[0] == ["a.example.test"]
    assert (await handshake(srv.port, ctx, "b.example.test"))[0] == ["b.example.test"]


async def test_ip_certificate_for_clients_without_sni(
    ca: trustme.CA, start_server: StartServer
) -> None:
    store = CertificateStore()
    assert store.add_pem(*pem_pair(ca, "127.0.0.1")) == ("127.0.0.1",)
    store.add_pem(*pem_pair(ca, "named.example.test"))
    srv = await start_server(SNISelector(store).server_context(local_ip="127.0.0.1"))
    # Python sends no SNI for an IP but verifies the IP SAN
    sans, _, _ = await handshake(srv.port, client_context(ca), "127.0.0.1")
    assert sans == ["127.0.0.1"]
    # a wildcard listener does not know its local address: the only IP certificate is served
    wildcard = await start_server(SNISelector(store).server_context())
    assert (await handshake(wildcard.port, client_context(ca), "127.0.0.1"))[0] == ["127.0.0.1"]
    # ...but with two IP certificates it would be a guess, so the handshake fails like Caddy's
    store.add_pem(*pem_pair(ca, "127.0.0.2"))
    with pytest.raises(ssl.SSLError, match="INTERNAL_ERROR"):
        await handshake(wildcard.port, client_context(ca), "127.0.0.1")
    assert (await handshake(srv.port, client_context(ca), "127.0.0.1"))[0] == ["127.0.0.1"]


async def test_ipv6_loopback_listener(
    ca: trustme.CA, store: CertificateStore, start_server: StartServer
) -> None:
    try:
        srv = await start_server(SNISelector(store).server_context(), host="::1")
    except OSError:
        pytest.skip("::1 cannot be bound here")
    sans, _, _ = await handshake(srv.port, client_context(ca), "b.example.test", host="::1")
    assert sans == ["b.example.test"]


# ---- policies ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_tls_1_1_refused_by_default(
    ca: trustme.CA, store: CertificateStore, start_server: StartServer
) -> None:
    srv = await start_server(SNISelector(store).server_context())
    old = client_context(ca)
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 clients refuse TLS 1.1 otherwise
    with pytest.raises(ssl.SSLError) as info:
        await handshake(srv.port, old, "a.example.test")
    assert info.value.reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL")
    tls12 = client_context(ca)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert (await handshake(srv.port, tls12, "a.example.test"))[1] == "TLSv1.2"
    assert (await handshake(srv.port, client_context(ca), "a.example.test"))[1] == "TLSv1.3"


async def test_protocol_min_tls13_refuses_tls12(
    ca: trustme.CA, store: CertificateStore, start_server: StartServer
) -> None:
    selector = SNISelector(store, [{"protocol_min": "tls1.3"}])
    srv = await start_server(selector.server_context())
    tls12 = client_context(ca)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        await handshake(srv.port, tls12, "a.example.test")
    assert (await handshake(srv.port, client_context(ca), "a.example.test"))[1] == "TLSv1.3"


async def test_alpn_offers_http11_only_to_a_selector_of_an_http11_server(
    ca: trustme.CA, store: CertificateStore, start_server: StartServer
) -> None:
    # a selector built without the server's protocols (SNISelector's defaults) is an HTTP/1.1
    # server's: a policy listing h2 cannot make it offer a protocol the server does not serve
    selector = SNISelector(store, [{"alpn": ["h2", "http/1.1"]}])
    srv = await start_server(selector.server_context())
    ctx = client_context(ca)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    assert (await handshake(srv.port, ctx, "a.example.test"))[2] == "http/1.1"


async def test_cipher_suites_restrict_tls12(
    ca: trustme.CA, store: CertificateStore, start_server: StartServer
) -> None:
    # trustme issues ECDSA keys, so an ECDSA suite; listing one suite pins TLS 1.2 to it
    policy = {"cipher_suites": ["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"]}
    srv = await start_server(SNISelector(store, [policy]).server_context())
    ctx = client_context(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", srv.port, ssl=ctx, server_hostname="a.example.test"
    )
    try:
        cipher = writer.get_extra_info("cipher")
        assert cipher[0] == "ECDHE-ECDSA-CHACHA20-POLY1305"
    finally:
        writer.close()


# ---- curves (key-exchange groups) -------------------------------------------------------------


async def negotiated_group(
    port: int, name: str, version: str, groups: str, *extra: str
) -> str | None:
    """The group `openssl s_client` reports for a handshake offering only `groups` (in that
    order; the first gets the TLS 1.3 key share), or None when the handshake failed."""
    code, out = await s_client(port, "-servername", name, version, "-groups", groups, *extra)
    match = re.search(r"Server Temp Key: (?:ECDH, )?([\w-]+),", out)
    if code != 0 or match is None or "Cipher is (NONE)" in out:
        return None
    return match.group(1)


requires_openssl = pytest.mark.skipif(not HAVE_OPENSSL, reason="openssl not installed")
# Caddy's curve name -> (what `openssl s_client -groups` takes, what it reports).
GROUP_NAMES = {
    "x25519": ("X25519", "X25519"),
    "secp256r1": ("P-256", "prime256v1"),
    "secp384r1": ("P-384", "secp384r1"),
    "secp521r1": ("P-521", "secp521r1"),
}


@requires_openssl
@pytest.mark.parametrize("curve", list(GROUP_NAMES))
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
async def test_each_caddy_curve_alone_is_the_one_negotiated(
    store: CertificateStore, start_server: StartServer, curve: str, version: str
) -> None:
    # Python 3.11.2's set_ecdh_curve could not set X25519 at all ([EC: UNKNOWN_GROUP]).
    srv = await start_server(SNISelector(store, [{"curves": [curve]}]).server_context())
    offered = [name for name, _ in GROUP_NAMES.values()]
    got = await negotiated_group(srv.port, "a.example.test", version, ":".join(offered))
    assert got == GROUP_NAMES[curve][1]
    # Without the policy's curve there is no key exchange. (TLS 1.2 with trustme's ECDSA P-256
    # certificate also needs P-256 among the client's groups, RFC 8422 §5.1: it is there
    # unless P-256 is the curve left out.)
    others = ":".join(name for name in offered if name != GROUP_NAMES[curve][0])
    assert await negotiated_group(srv.port, "a.example.test", version, others) is None


@requires_openssl
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
async def test_a_curve_list_allows_exactly_its_curves(
    store: CertificateStore, start_server: StartServer, version: str
) -> None:
    # Before: only the first curve was applied (with a warning), so x25519 was refused.
    srv = await start_server(
        SNISelector(store, [{"curves": ["secp384r1", "x25519"]}]).server_context()
    )
    # P-256 is listed for TLS 1.2 only as the ECDSA certificate's curve (see above).
    cert_curve = ":P-256" if version == "-tls1_2" else ""
    for offered, expected in (("X25519", "X25519"), ("P-384", "secp384r1"), ("P-521", None)):
        got = await negotiated_group(srv.port, "a.example.test", version, offered + cert_curve)
        assert got == expected, offered
    assert await negotiated_group(srv.port, "a.example.test", version, "P-256") is None


@requires_openssl
async def test_default_curves_are_caddys(
    store: CertificateStore, start_server: StartServer
) -> None:
    """No `curves`: Caddy's defaults (X25519, P-256; X25519MLKEM768 where libssl has it), not
    OpenSSL's longer list: Caddy 2.6.2 refuses a client offering only P-384, P-521 or X448."""
    srv = await start_server(SNISelector(store).server_context())
    for groups, expected in (("X25519", "X25519"), ("P-256", "prime256v1")):
        assert await negotiated_group(srv.port, "a.example.test", "-tls1_3", groups) == expected
    for groups in ("P-384", "P-521", "X448"):
        assert await negotiated_group(srv.port, "a.example.test", "-tls1_3", groups) is None


def test_x25519mlkem768_needs_a_libssl_that_has_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if ssl.OPENSSL_VERSION_INFO >= (3, 5):
        policy = ConnectionPolicy.from_json({"curves": ["x25519mlkem768", "x25519"]})
        assert policy.curves == ("X25519MLKEM768", "X25519")
        return
    with pytest.raises(TLSConfigError, match=r"^p\.curves: curve x25519mlkem768 is not avail"):
        ConnectionPolicy.from_json({"curves": ["x25519", "x25519mlkem768"]}, "p")
    # `pyproxy validate` (and so `run`) refuses it, naming the JSON path.
    server = {"listen": [":8443"], "tls_connection_policies": [{"curves": ["x25519mlkem768"]}]}
    config = tmp_path / "caddy.json"
    config.write_text(json.dumps({"apps": {"http": {"servers": {"s": server}}}}))
    assert cli_main(["validate", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "apps.http.servers.s.tls_connection_policies[0].curves: curve x25519mlkem768" in err
    assert "OpenSSL 3.5 or later" in err


async def test_sni_matched_policies_and_drop(
    ca: trustme.CA, store: CertificateStore, start_server: StartServer
) -> None:
    policies: list[dict[str, Any]] = [
        {"match": {"sni": ["b.example.test"]}, "drop": True},
        {"match": {"sni": ["*.wild.example.test"]}, "protocol_min": "tls1.3"},
        {},
    ]
    srv = await start_server(SNISelector(store, policies).server_context())
    ctx = client_context(ca)
    assert (await handshake(srv.port, ctx, "a.example.test"))[0] == ["a.example.test"]
    with pytest.raises(ssl.SSLError, match="INTERNAL_ERROR"):
        await handshake(srv.port, ctx, "b.example.test")
    assert (await handshake(srv.port, ctx, "x.wild.example.test"))[0] == ["*.wild.example.test"]


def test_policy_parsing() -> None:
    (default,) = parse_connection_policies(None)
    assert default.protocol_min == ssl.TLSVersion.TLSv1_2
    assert default.protocol_max == ssl.TLSVersion.TLSv1_3
    assert default.alpn == ("http/1.1",) and default.ciphers == DEFAULT_CIPHERS
    policy = ConnectionPolicy.from_json(
        {
            "match": {"sni": ["Example.COM"]},
            "protocol_min": "tls1.2",
            "protocol_max": "tls1.2",
            "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"],
            "curves": ["x25519", "secp256r1"],
            "default_sni": "Example.com",
        }
    )
    assert policy.sni == ("example.com",) and policy.default_sni == "example.com"
    assert policy.ciphers == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert policy.curves == ("X25519", "prime256v1")
    assert policy.matches("example.com") and not policy.matches("other.com")
    for bad, message in (
        ({"protocol_min": "tls1.3", "protocol_max": "tls1.2"}, "greater than"),
        ({"protocol_min": "ssl3"}, "unsupported protocol"),
        ({"cipher_suites": ["TLS_BOGUS"]}, "unsupported cipher suite"),
        ({"curves": ["x448"]}, "unsupported curve"),
        # Refused rather than ignored: without them the policy would let in clients it was
        # meant to keep out (or apply to connections it was not meant for).
        (
            {"client_authentication": {"trusted_ca_certs": ["MIIB"], "mode": "require"}},
            r"client_authentication: client certificate authentication is not supported",
        ),
        ({"match": {"remote_ip": {"ranges": ["10.0.0.0/8"]}}}, r"match.remote_ip: handshake"),
    ):
        with pytest.raises(TLSConfigError, match=message):
            ConnectionPolicy.from_json(bad)


def test_validate_refuses_client_authentication_it_cannot_enforce(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `pyproxy validate` checks the TLS policies like `run` does, before anything binds.
    server = {
        "listen": [":8443"],
        "tls_connection_policies": [
            {"match": {"sni": ["a.example.com"]}, "client_authentication": {"mode": "request"}},
            {},
        ],
    }
    config = tmp_path / "caddy.json"
    config.write_text(json.dumps({"apps": {"http": {"servers": {"s": server}}}}))
    assert cli_main(["validate", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "apps.http.servers.s.tls_connection_policies[0].client_authentication" in err
    server["tls_connection_policies"] = [{"match": {"sni": ["a.example.com"]}}, {}]
    config.write_text(json.dumps({"apps": {"http": {"servers": {"s": server}}}}))
    assert cli_main(["validate", "--config", str(config)]) == 0


# ---- certificate errors -----------------------------------------------------------------------


def test_mismatched_key_is_rejected_and_old_certificate_stays(
    ca: trustme.CA, store: CertificateStore
) -> None:
    before = store.get("a.example.test")
    cert_pem, _ = pem_pair(ca, "a.example.test")
    _, other_key = pem_pair(ca, "a.example.test")
    with pytest.raises(CertificateError, match="does not match"):
        store.replace("a.example.test", cert_pem, other_key)
    assert store.get("a.example.test") is before


def test_files_and_remove(ca: trustme.CA, tmp_path: Path) -> None:
    cert_pem, key_pem = pem_pair(ca, "files.example.test", "alt.example.test")
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "k.pem").write_bytes(key_pem)
    store = CertificateStore()
    assert store.add_files(tmp_path / "c.pem", tmp_path / "k.pem") == (
        "files.example.test",
        "alt.example.test",
    )
    assert store.covers("alt.example.test")
    assert store.remove("alt.example.test") and not store.covers("alt.example.test")
    assert not store.remove("alt.example.test")
    with pytest.raises(CertificateError, match=r"missing\.pem"):
        store.add_files(tmp_path / "missing.pem", tmp_path / "k.pem")


# ---- hot swap ---------------------------------------------------------------------------------


async def test_hot_swap_under_continuous_handshakes(
    ca: trustme.CA, store: CertificateStore, start_server: StartServer
) -> None:
    """Handshakes run continuously while another thread swaps the certificate: none fails,
    both certificates are seen, and a connection opened before the swaps keeps working."""
    name = "a.example.test"
    pairs = [pem_pair(ca, name) for _ in range(2)]
    serials = set()
    for cert_pem, _ in pairs:
        serials.add(x509.load_pem_x509_certificate(cert_pem).serial_number)
    original = store.get(name)
    assert original is not None
    srv = await start_server(SNISelector(store).server_context())
    ctx = client_context(ca)

    reader, writer = await asyncio.open_connection(
        "127.0.0.1", srv.port, ssl=ctx, server_hostname=name
    )
    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal swaps
        while not stop.is_set():
            store.replace(name, *pairs[swaps % 2])
            swaps += 1
            time.sleep(0.002)

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    seen: set[int] = set()
    failures: list[BaseException] = []

    async def client(n: int) -> None:
        for _ in range(n):
            try:
                r, w = await asyncio.open_connection(
                    "127.0.0.1", srv.port, ssl=ctx, server_hostname=name
                )
                w.write(b"x")
                assert await asyncio.wait_for(r.readexactly(6), TIMEOUT_S) == b"pong:x"
                der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
                seen.add(x509.load_der_x509_certificate(der).serial_number)
                w.close()
            except Exception as exc:
                failures.append(exc)

    try:
        await asyncio.wait_for(asyncio.gather(*(client(50) for _ in range(4))), 120)
    finally:
        stop.set()
        thread.join(TIMEOUT_S)
    assert failures == []
    assert swaps > 10
    assert seen <= serials | {original.leaf.serial_number}
    assert serials <= seen, "both swapped certificates were served"
    # the connection made before any swap still works
    writer.write(b"late")
    assert await asyncio.wait_for(reader.readexactly(9), TIMEOUT_S) == b"pong:late"
    writer.close()


# ---- session resumption -----------------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_session_resumption(
    ca: trustme.CA,
    store: CertificateStore,
    start_server: StartServer,
    version: ssl.TLSVersion,
) -> None:
    srv = await start_server(SNISelector(store).server_context())
    ctx = client_context(ca)
    ctx.maximum_version = version

    def connect(session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool]:
        with (
            socket.create_connection(("127.0.0.1", srv.port), TIMEOUT_S) as raw,
            ctx.wrap_socket(raw, server_hostname="b.example.test", session=session) as tls,
        ):
            tls.sendall(b"hi")
            assert tls.recv(16) == b"pong:hi"  # TLS 1.3 tickets arrive after the handshake
            return tls.session, bool(tls.session_reused)

    session, reused = await asyncio.to_thread(connect, None)
    assert not reused and session is not None
    _, reused = await asyncio.to_thread(connect, session)
    assert reused


def resume_once(
    port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None, name: str = "b.example.test"
) -> tuple[ssl.SSLSession | None, bool]:
    """One connection (offering `session`); returns its session and whether it was resumed."""
    with (
        socket.create_connection(("127.0.0.1", port), TIMEOUT_S) as raw,
        ctx.wrap_socket(raw, server_hostname=name, session=session) as tls,
    ):
        tls.sendall(b"hi")
        assert tls.recv(16) == b"pong:hi"  # TLS 1.3 tickets arrive after the handshake
        return tls.session, bool(tls.session_reused)


async def test_tls12_session_ids_are_not_resumed_like_go(
    ca: trustme.CA, store: CertificateStore, start_server: StartServer
) -> None:
    """Go's server resumes by tickets only. OpenSSL's session-ID cache would be one per worker
    process (and would keep resuming with `session_tickets.disabled`): it is off."""
    srv = await start_server(SNISelector(store).server_context(), handler=reply_and_close)
    ctx = client_context(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_TICKET  # a client that only knows session IDs
    session, reused = await asyncio.to_thread(resume_once, srv.port, ctx, None)
    assert session is not None and not reused and not session.has_ticket
    _, reused = await asyncio.to_thread(resume_once, srv.port, ctx, session)
    assert not reused


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_stores_with_one_secret_resume_each_others_tickets(
    ca: trustme.CA, start_server: StartServer, version: ssl.TLSVersion
) -> None:
    """What lets every worker resume every other's tickets: listener contexts built from the
    same secret (inherited over fork) carry the same key, whichever store, config or process
    built them; another secret's tickets are not accepted."""
    pair = pem_pair(ca, "b.example.test")
    stores = [CertificateStore() for _ in range(3)]
    stores[2].ticket_keys = TicketKeys(SessionTickets(), TicketSecret(os.urandom(32), 0.0))
    ports = []
    for one in stores:
        one.add_pem(*pair)
        ports.append((await start_server(SNISelector(one).server_context())).port)
    ctx = client_context(ca)
    ctx.minimum_version = ctx.maximum_version = version
    session, reused = await asyncio.to_thread(resume_once, ports[0], ctx, None)
    assert session is not None and session.has_ticket and not reused
    assert (await asyncio.to_thread(resume_once, ports[1], ctx, session))[1]
    assert not (await asyncio.to_thread(resume_once, ports[2], ctx, session))[1]


async def test_ticket_key_rotation(
    ca: trustme.CA, store: CertificateStore, start_server: StartServer
) -> None:
    lib = libssl.bridge()
    assert lib is not None, libssl.unavailable_reason()
    keys = TicketKeys(SessionTickets(rotation_interval_s=3600.0), TicketSecret(b"s" * 32, 0.0))
    store.ticket_keys = keys
    listener = SNISelector(store).server_context()
    srv = await start_server(listener)
    ctx = client_context(ca)
    before = lib.ticket_keys(listener)
    assert before == keys.key(keys.epoch(), 80)
    session, _ = await asyncio.to_thread(resume_once, srv.port, ctx, None)
    assert keys.rotate(now=keys.epoch() * 3600.0 + 10.0) == 0  # same epoch: nothing to do
    assert keys.rotate(now=(keys.epoch() + 1) * 3600.0 + 10.0) == 1
    assert lib.ticket_keys(listener) != before
    # One key per context (OpenSSL): a ticket from before the rotation gets a full handshake
    # (Caddy would still accept it with its max_keys=4), a new one resumes.
    new_session, reused = await asyncio.to_thread(resume_once, srv.port, ctx, session)
    assert not reused
    assert (await asyncio.to_thread(resume_once, srv.port, ctx, new_session))[1]
    # disable_rotation: one key for the life of the process.
    fixed = TicketKeys(SessionTickets(rotate=False), keys.secret)
    assert fixed.epoch(now=10**9) == 0 and fixed.seconds_until_rotation() is None


async def test_rotation_task_rekeys_listener_contexts(store: CertificateStore) -> None:
    lib = libssl.bridge()
    assert lib is not None, libssl.unavailable_reason()
    keys = TicketKeys(
        SessionTickets(rotation_interval_s=0.2), TicketSecret(os.urandom(32), time.monotonic())
    )
    store.ticket_keys = keys
    listener = SNISelector(store).server_context()
    first = lib.ticket_keys(listener)
    task = asyncio.create_task(keys.rotate_forever())
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while lib.ticket_keys(listener) == first and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert lib.ticket_keys(listener) == keys.key(keys.epoch(), 80) != first
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_record_io_goes_straight_to_the_c_object(ca: trustme.CA, store: CertificateStore) -> None:
    # The server context's SSLObjects skip ssl.py's forwarding wrappers for read/write/pending,
    # and still carry a whole exchange (what the loops' TLS transports do per record).
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = SNISelector(store).server_context().wrap_bio(server_in, server_out, server_side=True)
    c_object = server._sslobj  # type: ignore[attr-defined]
    for name in ("read", "write", "pending"):
        assert getattr(getattr(server, name), "__self__", None) is c_object, name
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context(ca).wrap_bio(client_in, client_out, server_hostname="b.example.test")
    for _ in range(10):  # the handshake, in memory
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        server_in.write(client_out.read())
        client_in.write(server_out.read())
    client.write(b"ping")
    server_in.write(client_out.read())
    buf = bytearray(16)
    count: Any = server.read(16, buf)  # with a buffer, the count read (typeshed says bytes)
    assert count == 4 and bytes(buf[:4]) == b"ping"
    assert server.pending() == 0
    assert server.write(b"pong") == 4
    client_in.write(server_out.read())
    assert client.read(16) == b"pong"


async def test_one_tls13_ticket_per_handshake_like_go(
    ca: trustme.CA, store: CertificateStore, start_server: StartServer
) -> None:
    # Go's server (Caddy) sends one NewSessionTicket; OpenSSL's default of two doubles the
    # ticket work of every handshake for nothing a client uses.
    srv = await start_server(SNISelector(store).server_context())
    ctx = client_context(ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    tickets: list[int] = []

    def on_message(
        conn: Any, direction: str, version: Any, content_type: Any, msg_type: Any, data: Any
    ) -> None:
        if direction == "read" and msg_type == ssl._TLSMessageType.NEWSESSION_TICKET:  # type: ignore[attr-defined]
            tickets.append(len(data))

    ctx._msg_callback = on_message  # type: ignore[attr-defined]

    def connect() -> None:
        with (
            socket.create_connection(("127.0.0.1", srv.port), TIMEOUT_S) as raw,
            ctx.wrap_socket(raw, server_hostname="b.example.test") as tls,
        ):
            for _ in range(3):  # every read processes whatever post-handshake messages came
                tls.sendall(b"hi")
                assert tls.recv(16) == b"pong:hi"

    await asyncio.to_thread(connect)
    assert len(tickets) == 1


# ---- policies from the Caddyfile adapter ------------------------------------------------------


async def test_adapter_policies_and_per_site_protocols(
    ca: trustme.CA, store: CertificateStore
) -> None:
    """`tls { protocols tls1.3 }` on one site: the listener admits TLS 1.2 for the others, and
    handshake_allowed() tells the engine to close a TLS 1.2 connection to that site."""
    caddyfile = (
        "a.example.test {\n\trespond a\n}\n"
        "b.example.test {\n\ttls {\n\t\tprotocols tls1.3\n\t\tcurves x25519\n\t}\n"
        "\trespond b\n}\n"
    )
    config, _ = adapt_caddyfile(caddyfile, "Caddyfile")
    plan = plan_automatic_https(config)
    (srv_name,) = plan.https_servers
    server_json = plan.config["apps"]["http"]["servers"][srv_name]
    selector = selector_for_server(store, server_json, srv_name)
    assert selector is not None and len(selector.policies) == 2

    async def judge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        allowed = selector.handshake_allowed(writer.get_extra_info("ssl_object"))
        writer.write(b"ok" if allowed else b"no")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(judge, "127.0.0.1", 0, ssl=selector.server_context())
    port = server.sockets[0].getsockname()[1]

    async def verdict(name: str, max_version: ssl.TLSVersion) -> bytes:
        ctx = client_context(ca)
        ctx.maximum_version = max_version
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname=name
        )
        try:
            return await asyncio.wait_for(reader.read(2), TIMEOUT_S)
        finally:
            writer.close()

    try:
        assert await verdict("a.example.test", ssl.TLSVersion.TLSv1_2) == b"ok"
        assert await verdict("b.example.test", ssl.TLSVersion.TLSv1_3) == b"ok"
        assert await verdict("b.example.test", ssl.TLSVersion.TLSv1_2) == b"no"
    finally:
        server.close()
        await server.wait_closed()


def _adapted_selector(store: CertificateStore, caddyfile: str) -> SNISelector:
    config, _ = adapt_caddyfile(caddyfile, "Caddyfile")
    plan = plan_automatic_https(config)
    (srv_name,) = plan.https_servers
    selector = selector_for_server(store, plan.config["apps"]["http"]["servers"][srv_name])
    assert selector is not None
    return selector


@requires_openssl
async def test_sites_with_different_curves_share_a_listener(
    store: CertificateStore, start_server: StartServer
) -> None:
    """One site `curves x25519`, the other Caddy's defaults (X25519, P-256). Before, the
    listener carried the first policy's curves for every site, so a.example.test refused
    P-256. Now the listener offers the common X25519 and the SNI callback sets the chosen
    policy's curves on the connection."""
    selector = _adapted_selector(
        store,
        "a.example.test {\n\trespond a\n}\n"
        "b.example.test {\n\ttls {\n\t\tcurves x25519\n\t}\n\trespond b\n}\n",
    )
    srv = await start_server(selector.server_context())
    # TLS 1.2 picks the group after SNI: exactly each site's curves.
    assert await negotiated_group(srv.port, "a.example.test", "-tls1_2", "P-256") == "prime256v1"
    assert await negotiated_group(srv.port, "b.example.test", "-tls1_2", "P-256") is None
    assert await negotiated_group(srv.port, "b.example.test", "-tls1_2", "X25519:P-256") == (
        "X25519"
    )
    # TLS 1.3: an X25519 key share is fine for both; a P-256 share gets a HelloRetryRequest
    # for the site's preferred curve the client supports.
    for name in ("a.example.test", "b.example.test"):
        assert await negotiated_group(srv.port, name, "-tls1_3", "X25519") == "X25519"
        assert await negotiated_group(srv.port, name, "-tls1_3", "P-256:X25519") == "X25519"
    assert await negotiated_group(srv.port, "b.example.test", "-tls1_3", "P-256") is None
    # The documented cost (see check_listener_policies): a TLS 1.3 client supporting P-256
    # only, with its P-256 share, cannot be asked to retry with the curve it already sent, so
    # it fails where Caddy would accept its share.
    assert await negotiated_group(srv.port, "a.example.test", "-tls1_3", "P-256") is None


def test_sites_without_a_common_curve_cannot_share_a_listener(store: CertificateStore) -> None:
    caddyfile = (
        "a.example.test {\n\trespond a\n}\n"
        "b.example.test {\n\ttls {\n\t\tcurves secp384r1\n\t}\n\trespond b\n}\n"
    )
    with pytest.raises(
        TLSConfigError,
        match=r"tls_connection_policies\[1\]\.curves: \[x25519, secp256r1\] have no curve in "
        r"common with .*tls_connection_policies\[0\]'s \[secp384r1\]",
    ):
        _adapted_selector(store, caddyfile)


async def test_sites_with_different_cipher_suites_share_a_listener(
    ca: trustme.CA, store: CertificateStore, start_server: StartServer
) -> None:
    """Before, the listener's cipher list was the first policy's for every site."""
    policies: list[dict[str, Any]] = [
        {
            "match": {"sni": ["a.example.test"]},
            "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"],
        },
        {"cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"]},
    ]
    srv = await start_server(SNISelector(store, policies).server_context())
    ctx = client_context(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    for name, expected in (
        ("a.example.test", "ECDHE-ECDSA-AES128-GCM-SHA256"),
        ("b.example.test", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ):
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", srv.port, ssl=ctx, server_hostname=name
        )
        try:
            assert writer.get_extra_info("cipher")[0] == expected
        finally:
            writer.close()


def test_plain_http_server_has_no_selector(store: CertificateStore) -> None:
    assert selector_for_server(store, {"listen": [":80"]}) is None


# ---- the redirect plan served by the engine ---------------------------------------------------


def _curl_head(url: str, host: str) -> str:
    cmd = ["curl", "-s", "-g", "-D", "-", "-o", "/dev/null", "-H", f"Host: {host}", url]
    out = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT_S, check=False)
    return out.stdout.decode(errors="replace")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_redirect_plan_served_by_engine_on_every_bind_address(
    run_proxy: Callable[..., Any],
) -> None:
    """The planned redirect server (plain Caddy JSON) runs in the engine as is: 308 with the
    right Location and `Connection: close` on 127.0.0.1 *and* ::1 (Caddy 2.6.2 served only one)."""
    http_port, https_port = free_port(), free_port()
    caddyfile = (
        f"{{\n\thttp_port {http_port}\n\thttps_port {https_port}\n}}\n"
        "example.test {\n\tbind 127.0.0.1 ::1\n\trespond hi\n}\n"
    )
    config, _ = adapt_caddyfile(caddyfile, "Caddyfile")
    plan = plan_automatic_https(config)
    servers = plan.config["apps"]["http"]["servers"]
    # Only the redirect server: TLS listeners are wired into the engine separately.
    for name in plan.https_servers:
        del servers[name]
    assert list(servers) == ["remaining_auto_https_redirects"]
    hosts = ["127.0.0.1"]
    if socket.has_ipv6:
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
            hosts.append("::1")
        except OSError:
            servers["remaining_auto_https_redirects"]["listen"] = [f"127.0.0.1:{http_port}"]
    run_proxy(plan.config, http_port, wait_hosts=tuple(hosts))
    for ip in hosts:
        url_host = f"[{ip}]" if ":" in ip else ip
        head = _curl_head(f"http://{url_host}:{http_port}/a/b?c=d", "example.test")
        assert head.startswith("HTTP/1.1 308"), head
        assert "location: https://example.test/a/b?c=d\r\n" in head.lower(), head
        assert "connection: close\r\n" in head.lower(), head
        # an unknown Host still gets the catch-all redirect
        other = _curl_head(f"http://{url_host}:{http_port}/", "other.test")
        assert "location: https://other.test/\r\n" in other.lower(), other


async def test_session_tickets_disabled_by_tls_app(
    ca: trustme.CA, start_server: StartServer
) -> None:
    store = CertificateStore.from_tls_app({"session_tickets": {"disabled": True}})
    store.add_pem(*pem_pair(ca, "b.example.test"))
    srv = await start_server(SNISelector(store).server_context(), handler=reply_and_close)
    ctx = client_context(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2

    def connect() -> bool:
        with (
            socket.create_connection(("127.0.0.1", srv.port), TIMEOUT_S) as raw,
            ctx.wrap_socket(raw, server_hostname="b.example.test") as tls,
        ):
            tls.sendall(b"hi")
            assert tls.recv(16) == b"pong:hi"
            session = tls.session
            return session is not None and session.has_ticket

    assert not await asyncio.to_thread(connect)
    assert CertificateStore.from_tls_app(None).session_tickets
    assert store.ticket_keys is None
    # No resumption at all, as Caddy (Go has no session-ID cache): before, OpenSSL's cache
    # still resumed TLS 1.2 sessions by ID.
    session, _ = await asyncio.to_thread(resume_once, srv.port, ctx, None)
    assert not (await asyncio.to_thread(resume_once, srv.port, ctx, session))[1]


def test_loading_without_memfd_uses_a_private_temp_dir(
    ca: trustme.CA, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    store = CertificateStore()
    assert store.add_pem(*pem_pair(ca, "tmp.example.test")) == ("tmp.example.test",)
    assert list(tmp_path.iterdir()) == []  # key material removed right after loading
