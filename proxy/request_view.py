"""The shared request view: what pure modules (matchers, placeholders, header ops,
load-balancing selection) may read from a request.

The engine's request object implements this Protocol structurally; pure modules type
against it and accept any object with these attributes, so they never depend on the
HTTP server's concrete classes.
"""

from __future__ import annotations

from typing import Any, Protocol


class RequestView(Protocol):
    method: str  # "GET"
    uri: str  # request-target as received, e.g. "/a%20b?x=1"
    path: str  # percent-decoded path, e.g. "/a b"
    raw_path: str  # path as received (escaped), e.g. "/a%20b"
    query: str  # raw query string without "?", "" if none
    host: str  # Host header (or :authority) as received, may include ":port"
    proto: str  # "HTTP/1.0", "HTTP/1.1", "HTTP/2.0"
    scheme: str  # "http" or "https"
    remote_ip: str  # peer IP (no brackets)
    remote_port: int
    client_ip: str  # peer IP, or from client_ip_headers when the peer is a trusted proxy
    vars: dict[str, Any]  # per-request variables (regexp captures, handler outputs)

    def header(self, name: str) -> str | None: ...  # first value, case-insensitive

    def header_values(self, name: str) -> list[str]: ...  # all values, case-insensitive
