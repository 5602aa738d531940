"""A loopback stand-in of ZeroSSL's certificate API, and a throwaway CA it issues from.

It implements what certmagic's ZeroSSLIssuer uses (caddyserver/zerossl endpoints.go):
`POST /certificates` (create with a CSR), `POST /certificates/<id>/challenges` (validate: the
stand-in fetches the validation file over loopback from the port it is given, with the
certificate's domain as Host), `GET /certificates/<id>` (status: `pending_validation` for
`pending_polls` polls after a successful validation, then `issued`),
`GET /certificates/<id>/download/return` and `POST /certificates/<id>/cancel`. Errors are
answered as ZeroSSL does: HTTP 200 with `{"success": false, "error": {...}}`. Listens on
127.0.0.1 only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALIDATION_FETCH_TIMEOUT_S = 10.0


class ThrowawayCA:
    """A self-signed root made for one test; signs leaves for CSRs."""

    def __init__(self, name: str = "ZeroSSL stand-in test root") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def sign(self, csr: x509.CertificateSigningRequest, names: list[str], days: int) -> str:
        now = dt.datetime.now(dt.UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return leaf.public_bytes(serialization.Encoding.PEM).decode("ascii")


@dataclass
class StandInCertificate:
    id: str
    csr: x509.CertificateSigningRequest
    domains: list[str]
    validity_days: int
    file_path: str
    content: list[str]
    status: str = "draft"
    polls_left: int = 0
    leaf_pem: str = ""
    validation_fetches: list[tuple[str, int, bytes]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        other = {
            d: {
                "file_validation_url_http": f"http://{d}{self.file_path}",
                "file_validation_url_https": f"https://{d}{self.file_path}",
                "file_validation_content": list(self.content),
                "cname_validation_p1": "",
                "cname_validation_p2": "",
            }
            for d in self.domains
        }
        return {
            "id": self.id,
            "type": "1",
            "common_name": self.domains[0],
            "additional_domains": ",".join(self.domains[1:]),
            "created": "2026-12-03 13:00:00",
            "expires": "2027-03-03 13:00:00",
            "status": self.status,
            "validation_type": None,
            "validation_emails": None,
            "replacement_for": "",
            "fingerprint_sha1": None,
            "brand_validation": None,
            "validation": {"email_validation": {}, "other_methods": other},
        }


class ZeroSSLStandIn:
    """See the module docstring. `validation_port`: where the domains' HTTP is (loopback)."""

    def __init__(
        self, ca: ThrowawayCA, api_key: str, validation_port: int, *, pending_polls: int = 1
    ) -> None:
        self.ca = ca
        self.api_key = api_key
        self.validation_port = validation_port
        self.pending_polls = pending_polls
        self.certificates: dict[str, StandInCertificate] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self.fail_validation = False
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ZeroSSLStandIn:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stand_in._handle(self, "GET")

            def do_POST(self) -> None:
                stand_in._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ZeroSSLStandIn:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- the API -------------------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(req.path)
        query = parse_qs(parts.query)
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append((method, parts.path))
        if query.get("access_key") != [self.api_key]:
            return self._reply(req, _error(101, "invalid_access_key"))
        segments = [s for s in parts.path.split("/") if s]
        if segments[:1] != ["certificates"]:
            return self._reply(req, _error(404, "not_found"), status=404)
        if method == "POST" and len(segments) == 1:
            return self._reply(req, self._create(json.loads(body or b"{}")))
        cert = self.certificates.get(segments[1]) if len(segments) > 1 else None
        if cert is None:
            return self._reply(req, _error(2803, "certificate_not_found"))
        action = "/".join(segments[2:])
        if method == "POST" and action == "challenges":
            return self._reply(req, self._challenges(cert, json.loads(body or b"{}")))
        if method == "GET" and action == "":
            return self._reply(req, self._status(cert))
        if method == "GET" and action == "download/return":
            if cert.status != "issued":
                return self._reply(req, _error(2832, "certificate_not_ready_to_download"))
            return self._reply(
                req, {"certificate.crt": cert.leaf_pem, "ca_bundle.crt": self.ca.pem}
            )
        if method == "POST" and action == "cancel":
            cert.status = "cancelled"
            return self._reply(req, {"success": 1})
        return self._reply(req, _error(404, "not_found"), status=404)

    def _create(self, payload: dict[str, Any]) -> dict[str, Any]:
        csr = x509.load_pem_x509_csr(str(payload.get("certificate_csr", "")).encode())
        domains = [d for d in str(payload.get("certificate_domains", "")).split(",") if d]
        cns = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if not domains or domains[:1] != cns[:1] or payload.get("strict_domains") != 1:
            return _error(2807, "invalid_certificate_domains")
        der = csr.public_bytes(serialization.Encoding.DER)
        name = hashlib.md5(der).hexdigest().upper()  # ZeroSSL names the file after the CSR's MD5
        cert = StandInCertificate(
            id=secrets.token_hex(16),
            csr=csr,
            domains=domains,
            validity_days=int(payload.get("certificate_validity_days") or 90),
            file_path=f"/.well-known/pki-validation/{name}.txt",
            content=[hashlib.sha256(der).hexdigest().upper(), "comodoca.com", secrets.token_hex(8)],
        )
        self.certificates[cert.id] = cert
        return cert.to_json()

    def _challenges(self, cert: StandInCertificate, payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("validation_method") != "HTTP_CSR_HASH":
            return _error(2820, "invalid_validation_method")
        details: dict[str, Any] = {}
        for domain in cert.domains:
            status, body = self._fetch(domain, cert.file_path)
            cert.validation_fetches.append((domain, status, body))
            if self.fail_validation or status != 200 or body.decode() != "\n".join(cert.content):
                details[domain] = {
                    f"http://{domain}{cert.file_path}": {
                        "file_found": int(status == 200),
                        "error": True,
                        "error_slug": "invalid_file_content",
                        "error_info": "File content does not match",
                    }
                }
        if details:
            return _error(0, "domain_control_validation_failed", details)
        cert.status = "pending_validation"
        cert.polls_left = self.pending_polls
        return cert.to_json()

    def _status(self, cert: StandInCertificate) -> dict[str, Any]:
        if cert.status == "pending_validation":
            if cert.polls_left > 0:
                cert.polls_left -= 1
            else:
                cert.leaf_pem = self.ca.sign(cert.csr, cert.domains, cert.validity_days)
                cert.status = "issued"
        return cert.to_json()

    def _fetch(self, domain: str, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.validation_port, timeout=VALIDATION_FETCH_TIMEOUT_S
        )
        try:
            conn.request("GET", path, headers={"Host": domain})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except OSError:
            return 0, b""
        finally:
            conn.close()

    @staticmethod
    def _reply(req: BaseHTTPRequestHandler, doc: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(doc).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)


def _error(code: int, kind: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "type": kind}
    if details:
        error["details"] = details
    return {"success": False, "error": error}
