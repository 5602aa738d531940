"""A plain-data request implementing proxy.request_view.RequestView, for pure-module tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote


@dataclass
class FakeRequest:
    method: str = "GET"
    uri: str = "/"
    path: str = "/"
    raw_path: str = "/"
    query: str = ""
    host: str = "example.com"
    proto: str = "HTTP/1.1"
    scheme: str = "http"
    remote_ip: str = "192.0.2.10"
    remote_port: int = 50000
    client_ip: str = "192.0.2.10"
    vars: dict[str, Any] = field(default_factory=dict)
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def request_for(target: str = "/", **kw: Any) -> FakeRequest:
    """A request for `target` ("/path?query"), with uri/path/raw_path/query filled in."""
    raw, _, query = target.partition("?")
    return FakeRequest(uri=target, path=unquote(raw), raw_path=raw, query=query, **kw)
