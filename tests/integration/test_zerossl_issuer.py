"""acme_client.zerossl_api's issuer against a loopback stand-in of ZeroSSL's API (zerosslkit).

The stand-in validates by fetching the file from a loopback HTTP responder that answers from
the shared storage with acme_client.http01.answer_pki_validation (what every pyproxy worker
runs), so these tests show the validation published to storage is what ZeroSSL is served.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from zerosslkit import ThrowawayCA, ZeroSSLStandIn

from acme_client.certificates import find_stored_certificate
from acme_client.http01 import answer_pki_validation, pki_validation_key
from acme_client.manager import CertificateManager
from acme_client.storage import FileStorage, site_meta_key
from acme_client.zerossl_api import ZeroSSLConfig, ZeroSSLError, ZeroSSLIssuer

API_KEY = "test-access-key-0123"
NAME = "a.example.com"
READY_TIMEOUT_S = 30.0


class ValidationResponder:
    """Plain HTTP on 127.0.0.1 answering `/.well-known/pki-validation/` from storage."""

    def __init__(self, storage: FileStorage) -> None:
        responder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_GET(self) -> None:
                host = (self.headers.get("Host") or "").split(":")[0]
                answer = answer_pki_validation(responder.storage, host, self.path)
                status, body = answer if answer is not None else (404, b"not ours")
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.storage = storage
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def storage(tmp_path: Path) -> FileStorage:
    return FileStorage(tmp_path / "data")


@pytest.fixture
def stand_in(storage: FileStorage) -> Iterator[ZeroSSLStandIn]:
    responder = ValidationResponder(storage)
    with ZeroSSLStandIn(ThrowawayCA(), API_KEY, responder.port, pending_polls=2) as api:
        yield api
    responder.stop()


def config_for(api: ZeroSSLStandIn, **overrides: Any) -> ZeroSSLConfig:
    settings: dict[str, Any] = {
        "api_key": API_KEY,
        "api_base_url": api.base_url,
        "poll_interval_s": 0.05,
        "issue_deadline_s": 20.0,
    }
    settings.update(overrides)
    return ZeroSSLConfig(**settings)


def test_obtains_a_certificate_through_create_validate_poll_download(
    stand_in: ZeroSSLStandIn, storage: FileStorage
) -> None:
    steps: list[str] = []
    orders: list[int] = []
    issuer = ZeroSSLIssuer(config_for(stand_in, validity_days=90), storage)
    issued = issuer.obtain([NAME], on_step=steps.append, on_order=lambda: orders.append(1))

    (cert_id,) = stand_in.certificates
    paths = [p.replace(cert_id, "ID") for _m, p in stand_in.requests]
    assert paths == [
        "/certificates",
        "/certificates/ID/challenges",
        "/certificates/ID",
        "/certificates/ID",
        "/certificates/ID",
        "/certificates/ID/download/return",
    ]
    made = stand_in.certificates[cert_id]
    # certmagic's CSR for ZeroSSL: the name as Common Name, no SAN repeating it.
    assert [a.value for a in made.csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [NAME]
    assert made.domains == [NAME] and made.validity_days == 90
    # ZeroSSL fetched the file pyproxy published, with the content lines joined by "\n".
    assert made.validation_fetches == [(NAME, 200, "\n".join(made.content).encode())]

    chain = x509.load_pem_x509_certificates(issued.certificate_pem)
    assert len(chain) == 2
    chain[0].verify_directly_issued_by(stand_in.ca.cert)  # raises unless signed by the CA
    assert chain[1] == stand_in.ca.cert
    assert issued.issuer_key == "zerossl" and issued.names == (NAME,)
    assert issued.issuer_data["id"] == cert_id and issued.issuer_data["status"] == "issued"
    assert b"PRIVATE KEY" in issued.private_key_pem
    assert orders == [1]
    assert steps[0] == "creating certificate (ZeroSSL API)" and steps[-1] == "certificate obtained"
    # The validation is removed from storage once done (certmagic: CleanUp).
    assert not storage.exists(pki_validation_key(NAME))


def test_failed_validation_cancels_the_certificate_and_removes_the_file(
    stand_in: ZeroSSLStandIn, storage: FileStorage
) -> None:
    stand_in.fail_validation = True
    issuer = ZeroSSLIssuer(config_for(stand_in), storage)
    with pytest.raises(ZeroSSLError) as err:
        issuer.obtain([NAME])
    text = str(err.value)
    assert "domain_control_validation_failed" in text, text
    assert "/challenges?access_key=redacted" in text and API_KEY not in text, text
    (made,) = stand_in.certificates.values()
    assert made.status == "cancelled"
    assert stand_in.requests[-1] == ("POST", f"/certificates/{made.id}/cancel")
    assert not storage.exists(pki_validation_key(NAME))


def test_a_refused_api_key_is_the_error_and_nothing_is_created(
    stand_in: ZeroSSLStandIn, storage: FileStorage
) -> None:
    issuer = ZeroSSLIssuer(config_for(stand_in, api_key="wrong"), storage)
    with pytest.raises(ZeroSSLError, match=r"HTTP 200: API error 101: invalid_access_key"):
        issuer.obtain([NAME])
    assert stand_in.certificates == {}
    assert [m for m, _p in stand_in.requests] == ["POST"]


def test_a_certificate_that_stops_pending_is_a_failure(
    stand_in: ZeroSSLStandIn, storage: FileStorage
) -> None:
    issuer = ZeroSSLIssuer(config_for(stand_in), storage)
    real_status = stand_in._status

    def revoked_while_pending(cert: Any) -> dict[str, Any]:
        cert.status = "revoked"
        return real_status(cert)

    stand_in._status = revoked_while_pending  # type: ignore[method-assign]
    with pytest.raises(ZeroSSLError, match="unexpected certificate status: revoked"):
        issuer.obtain([NAME])


async def test_the_manager_runs_the_zerossl_issuer_and_stores_under_its_key(
    stand_in: ZeroSSLStandIn, storage: FileStorage
) -> None:
    installed: list[str] = []
    manager = CertificateManager(
        storage,
        config_for(stand_in),
        on_certificate=lambda name, _c, _k: installed.append(name),
        staging_fallback=False,
    )
    try:
        await manager.start([NAME])
        assert await manager.wait_ready(NAME, READY_TIMEOUT_S)
    finally:
        await manager.stop()
    assert installed == [NAME]
    cert = find_stored_certificate(storage, NAME, ["zerossl"])
    assert cert is not None and cert.issuer_key == "zerossl"
    meta = json.loads(storage.load(site_meta_key("zerossl", NAME)))
    assert meta["sans"] == [NAME]
    assert meta["issuer_data"]["id"] in stand_in.certificates
    (status,) = manager.status()
    assert status.state == "valid" and status.orders == 1
    assert await manager.issuers[0].renewal_info_async(cert.certificate_pem) is None
