"""Access logs in Caddy's JSON shape.

A server with `logs` emits one entry per request: logger `http.log.access[.NAME]` (NAME from
`logger_names` for the request host, else `default_logger_name`), msg `handled request`,
level `info` (`error` for status ≥ 500), with `request{remote_ip, remote_port, client_ip, proto,
method, host, uri, headers}`, `bytes_read`, `user_id`, `duration` (s), `size`, `status`,
`resp_headers`; TLS requests add `request.tls` (see `tls_object`). Credentials are redacted like
Caddy does. Where an entry goes follows the top-level `logging.logs` config
(include/exclude by logger name, writer stdout/stderr/file).
"""

from __future__ import annotations

import functools
import json
import os
import ssl
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

REDACTED = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


def _headers_dict(headers: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in headers:
        if k.lower() == "host":
            continue  # Go keeps Host out of the header map; Caddy logs it as request.host
        name = "-".join(p[:1].upper() + p[1:].lower() for p in k.split("-"))
        if name.lower() in REDACTED:
            v = "REDACTED"
        out.setdefault(name, []).append(v)
    return out


# Go's tls.VersionTLS* constants (RFC 8446 §4.2.1 / RFC 5246 appendix E): what Caddy logs.
_TLS_VERSION_CODES: Mapping[str, int] = {
    "TLSv1": 0x0301,
    "TLSv1.1": 0x0302,
    "TLSv1.2": 0x0303,
    "TLSv1.3": 0x0304,
}


@functools.cache
def _cipher_codes() -> dict[str, int]:
    """OpenSSL cipher name -> IANA TLS cipher suite number (the uint16 Go's
    ConnectionState.CipherSuite holds). OpenSSL's own table says it: each cipher's `id` is
    0x0300_0000 | the two code bytes (RFC 8446 appendix B.4, RFC 5246 appendix A.5)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    return {str(c["name"]): int(c["id"]) & 0xFFFF for c in ctx.get_ciphers()}


def tls_object(tls: Mapping[str, Any]) -> dict[str, Any]:
    """Caddy's `request.tls` (caddyhttp.LoggableTLSConnState) from the connection's TLS vars
    (proxy/http/server.py: version and cipher as OpenSSL names, the way placeholders want
    them). `ech_accepted` is always false: Python's ssl has no Encrypted Client Hello; current
    Caddy logs the field, 2.6.2 does not."""
    out: dict[str, Any] = {
        "resumed": bool(tls.get("resumed")),
        "version": _TLS_VERSION_CODES.get(str(tls.get("version") or ""), 0),
        "cipher_suite": _cipher_codes().get(str(tls.get("cipher_suite") or ""), 0),
        "proto": str(tls.get("proto") or ""),
        "server_name": str(tls.get("server_name") or ""),
        "ech_accepted": False,
    }
    return out


class _Sink:
    __slots__ = ("exclude", "include", "level", "stream")

    def __init__(self, stream: TextIO, include: list[str], exclude: list[str], level: str) -> None:
        self.stream = stream
        self.include = include
        self.exclude = exclude
        self.level = level

    def wants(self, logger: str, is_default: bool) -> bool:
        def covered(names: list[str]) -> bool:
            return any(logger == n or logger.startswith(n + ".") for n in names)

        if self.exclude and covered(self.exclude):
            return False
        if self.include:
            return covered(self.include)
        return is_default


class AccessLog:
    """Routes access entries to the configured writers."""

    def __init__(self, logging_cfg: Mapping[str, Any]) -> None:
        self.sinks: list[_Sink] = []
        logs = dict(logging_cfg.get("logs") or {})
        default_seen = False
        for name, log in logs.items():
            writer = dict(log.get("writer") or {})
            stream = _open_writer(writer)
            if stream is None:
                if name == "default":
                    default_seen = True
                continue
            sink = _Sink(
                stream,
                list(log.get("include") or []),
                list(log.get("exclude") or []),
                str(log.get("level") or "INFO"),
            )
            if name == "default":
                default_seen = True
                sink.include = []
            self.sinks.append(sink)
            sink.level = sink.level.upper()
            # Non-default logs only take what they include.
            if name != "default" and not sink.include:
                sink.include = ["__none__"]
        if not default_seen:
            self.sinks.append(_Sink(sys.stderr, [], [], "INFO"))

    def write(self, logger: str, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":"), default=str) + "\n"
        for sink in self.sinks:
            if sink.wants(logger, True):
                try:
                    sink.stream.write(line)
                    sink.stream.flush()
                except (OSError, ValueError):
                    pass


def _open_writer(writer: Mapping[str, Any]) -> TextIO | None:
    output = writer.get("output") or "stderr"
    if output == "stdout":
        return sys.stdout
    if output == "stderr":
        return sys.stderr
    if output == "discard":
        return None
    if output == "file":
        filename = str(writer.get("filename"))
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        return open(filename, "a", encoding="utf-8", buffering=1)
    return sys.stderr


def access_entry(ex: Any, duration_s: float, status: int, logger: str) -> dict[str, Any]:
    req = ex.req
    request: dict[str, Any] = {
        "remote_ip": req.remote_ip,
        "remote_port": str(req.remote_port),
        "client_ip": req.client_ip,
        "proto": req.proto,
        "method": req.vars.get("_orig_method", req.method),
        "host": req.host,
        "uri": req.vars.get("_orig_uri", req.uri),
        "headers": _headers_dict(req.headers),
    }
    tls = req.vars.get("tls")
    if tls is not None:
        request["tls"] = tls_object(tls)
    return {
        "level": "error" if status >= 500 else "info",
        "ts": time.time(),
        "logger": logger,
        "msg": "handled request",
        "request": request,
        "bytes_read": req.body_received,
        "user_id": "",
        "duration": duration_s,
        "size": ex.bytes_written,
        "status": status,
        "resp_headers": _headers_dict(ex.resp_headers),
    }
