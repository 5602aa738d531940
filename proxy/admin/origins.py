"""The admin listener's address and request policy: parsing `listen` (`[network/]host:port` or
`unix//path`, the CADDY_ADMIN default), the `admin` object's listener settings, and Caddy's
Host/Origin protections (admin.go's allowedOrigins and checkHost/checkOrigin).

Pure: checks read request headers from a mapping; no sockets, no HTTP server.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from config.errors import ConfigError
from proxy.admin.errors import APIError

DEFAULT_ADMIN_LISTEN = "localhost:2019"


@dataclass(frozen=True, slots=True)
class AdminAddress:
    """A parsed admin `listen` value: `[network/]host:port` or `unix//path`."""

    network: str  # tcp, tcp4, tcp6 or unix
    host: str  # the socket path for unix
    port: int

    @property
    def is_unix(self) -> bool:
        return self.network == "unix"

    def is_wildcard(self) -> bool:
        if self.is_unix:
            return False
        if self.host == "":
            return True
        try:
            return ipaddress.ip_address(self.host).is_unspecified
        except ValueError:
            return False

    def is_loopback(self) -> bool:
        if self.is_unix or self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def join_host_port(self) -> str:
        """Go's net.JoinHostPort: brackets around IPv6 literals."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        if self.is_unix:
            return f"unix/{self.host}"
        prefix = "" if self.network == "tcp" else f"{self.network}/"
        return prefix + self.join_host_port()


def default_admin_listen() -> str:
    """Like Caddy, the CADDY_ADMIN environment variable replaces the built-in default."""
    return os.environ.get("CADDY_ADMIN", DEFAULT_ADMIN_LISTEN)


def parse_admin_listen(listen: str | None) -> AdminAddress:
    text = (listen or "").strip() or default_admin_listen()
    network = "tcp"
    head, sep, rest = text.partition("/")
    if sep and head.lower() in ("tcp", "tcp4", "tcp6", "unix"):
        network, text = head.lower(), rest
    if network == "unix":
        if not text:
            raise ConfigError(f"admin: parsing listener address: missing socket path: {listen}")
        return AdminAddress("unix", text, 0)
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ConfigError(f"admin: parsing listener address: missing port in address {text}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if "-" in port_text:
        raise ConfigError(
            f"admin: must be exactly one listener address; cannot listen on: {listen}"
        )
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"admin: parsing listener address: invalid port: {port_text}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"admin: parsing listener address: port out of range: {port}")
    return AdminAddress(network, host, port)


@dataclass(frozen=True, slots=True)
class AllowedOrigin:
    scheme: str  # "" matches any scheme
    host: str  # host[:port], compared exactly


def allowed_origins(addr: AdminAddress, origins: list[str] | None) -> list[AllowedOrigin]:
    """Caddy's allowedOrigins: the configured `origins`, plus — when `origins` is not set — the
    listen address (for loopback: localhost, ::1 and 127.0.0.1 at the listen port). An empty
    `origins` list allows nothing, on purpose."""
    wanted: list[str] = list(dict.fromkeys(origins or []))
    if origins is None and not addr.is_unix:
        if addr.is_loopback():
            port = addr.port
            wanted += [f"localhost:{port}", f"[::1]:{port}", f"127.0.0.1:{port}"]
        else:
            wanted.append(addr.join_host_port())
    out: list[AllowedOrigin] = []
    for text in dict.fromkeys(wanted):
        if "://" in text:
            try:
                parts = urlsplit(text)
            except ValueError:
                continue
            out.append(AllowedOrigin(parts.scheme, parts.netloc.rpartition("@")[2]))
        else:
            out.append(AllowedOrigin("", text))
    return out


@dataclass(slots=True)
class AccessPolicy:
    """The request checks of one admin listener (mutable so a reload can swap them in place)."""

    enforce_host: bool
    enforce_origin: bool
    allowed: list[AllowedOrigin]

    @classmethod
    def for_listener(
        cls, addr: AdminAddress, enforce_origin: bool, origins: list[str] | None
    ) -> AccessPolicy:
        # Caddy skips the Host check on wildcard interfaces (any name may reach them) and on
        # unix sockets (browsers cannot reach those; file permissions guard them).
        return cls(
            enforce_host=not addr.is_wildcard() and not addr.is_unix,
            enforce_origin=enforce_origin,
            allowed=allowed_origins(addr, origins),
        )

    def check(self, headers: Mapping[str, str]) -> str | None:
        """Raise APIError when a request with these headers must be refused; return the origin
        to echo in Access-Control-Allow-Origin, or None when no origin check applied.

        `headers` must look names up case-insensitively, as HTTP field names are (RFC 9110
        §5.1): the server passes aiohttp's CIMultiDictProxy."""
        if "websocket" in headers.get("Upgrade", ""):
            raise APIError(400, "WebSocket connections aren't allowed.")
        if "no-cors" in headers.get("Sec-Fetch-Mode", ""):
            raise APIError(400, "Disabling same-origin restrictions is not allowed.")
        if headers.get("Origin") == "null":
            raise APIError(400, "Buggy browser is sending null Origin header.")
        if self.enforce_host:
            host = headers.get("Host", "")
            if not any(host == a.host for a in self.allowed):
                raise APIError(403, f"host not allowed: {host}")
        if self.enforce_origin or "Origin" in headers or "Sec-Fetch-Mode" in headers:
            raw = headers.get("Origin") or headers.get("Referer") or ""
            try:
                parts = urlsplit(raw)
            except ValueError:
                raise APIError(403, "required Origin header is missing or invalid") from None
            host = parts.netloc.rpartition("@")[2]
            allowed = any(
                (not a.scheme or a.scheme == parts.scheme) and a.host == host for a in self.allowed
            )
            if not allowed:
                raise APIError(403, f"client is not allowed to access from origin '{raw}'")
            return urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        return None


# --- the `admin` object -----------------------------------------------------------------------


def admin_settings(admin_config: Any) -> tuple[bool, str, bool, list[str] | None]:
    """(disabled, listen, enforce_origin, origins) from the config's `admin` object."""
    admin = admin_config if isinstance(admin_config, Mapping) else {}
    origins = admin.get("origins")
    return (
        bool(admin.get("disabled")),
        str(admin.get("listen") or ""),
        bool(admin.get("enforce_origin")),
        [str(o) for o in origins] if isinstance(origins, list) else None,
    )
