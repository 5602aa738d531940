"""`pyproxy run` with `cert_issuer zerossl <api_key>` obtains a certificate from ZeroSSL's API
(a loopback stand-in, tests/integration/zerosslkit.py) and serves it.

The stand-in validates by fetching `/.well-known/pki-validation/<file>.txt` from pyproxy's own
HTTP listener with the site's name as Host: a worker answers it from storage, where the node's
certificate manager published it. The API's base URL comes from PYPROXY_ZEROSSL_API (Caddy's
JSON has no field for it: a documented test seam); the API key is a `{env.*}` placeholder, which
Caddy evaluates when it provisions the issuer.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from enginekit import read_response
from pebblekit import free_port
from zerosslkit import ThrowawayCA, ZeroSSLStandIn

from acme_client.storage import FileStorage, site_cert_key

NAME = "a.example.com"
API_KEY = "zerossl-test-key-42"
CERT_TIMEOUT_S = 60.0
OBTAINED = f"{NAME}: certificate obtained successfully from http://127.0.0.1:"


def https_get(port: int, root_pem: str) -> tuple[int, bytes, x509.Certificate]:
    ctx = ssl.create_default_context(cadata=root_pem)  # the throwaway CA only
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=NAME) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
        status, _headers, body = read_response(tls.makefile("rb"))
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return status, body, x509.load_der_x509_certificate(der)


def wait_for_certificate(
    port: int, root_pem: str, proc: Any
) -> tuple[int, bytes, x509.Certificate]:
    deadline = time.monotonic() + CERT_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise AssertionError(f"pyproxy exited:\n{proc.log}")
        try:
            return https_get(port, root_pem)
        except (OSError, ssl.SSLError) as exc:
            last = exc
            time.sleep(0.3)
    raise AssertionError(f"no certificate in time ({last!r})\n{proc.log[-6000:]}")


def test_run_obtains_from_the_zerossl_api_and_serves_it(run_proxy: Any, tmp_path: Path) -> None:
    http_port, https_port = free_port(), free_port()
    storage_root = tmp_path / "data"
    caddyfile = (
        "{\n"
        f"\thttp_port {http_port}\n"
        f"\thttps_port {https_port}\n"
        "\tadmin off\n"
        f"\tstorage file_system {storage_root}\n"
        "\tcert_issuer zerossl {env.ZEROSSL_TEST_API_KEY}\n"
        "}\n"
        f'{NAME} {{\n\trespond "hello from zerossl"\n}}\n'
    )
    with ZeroSSLStandIn(ThrowawayCA(), API_KEY, http_port, pending_polls=0) as api:
        proc = run_proxy(
            caddyfile,
            https_port,
            extra=["--workers", "2"],
            env_extra={
                "PYPROXY_ZEROSSL_API": api.base_url,
                "ZEROSSL_TEST_API_KEY": API_KEY,
                "PYPROXY_NATIVE": "0",
            },
        )
        status, body, cert = wait_for_certificate(https_port, api.ca.pem, proc)
        assert status == 200 and body == b"hello from zerossl"
        assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [NAME]
        (made,) = api.certificates.values()
        assert made.status == "issued" and made.domains == [NAME]
        # Validated through pyproxy's HTTP listener: the file content, from storage.
        assert made.validation_fetches == [(NAME, 200, "\n".join(made.content).encode())]
        assert [p for m, p in api.requests if m == "POST"] == [
            "/certificates",
            f"/certificates/{made.id}/challenges",
        ]
        log = proc.log
        assert log.count(OBTAINED) == 1, log
        storage = FileStorage(storage_root)
        # Stored under certmagic's issuer key for it; the chain in service is the stored one.
        stored = x509.load_pem_x509_certificates(storage.load(site_cert_key("zerossl", NAME)))
        assert stored[0] == cert and stored[1] == api.ca.cert
        # certmagic's CleanUp: the validation left storage once the certificate was issued.
        assert storage.list("zerossl/challenge_tokens") == []
        assert proc.stop() == 0
