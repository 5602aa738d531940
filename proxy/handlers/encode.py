"""`encode` handler: gzip/zstd response compression with Accept-Encoding negotiation.

Follows Caddy's encode module: the encoding is the client's most wanted one among those
configured (q-values, ties broken by `prefer`); the response is compressed only when it has no
Content-Encoding, no `Cache-Control: no-transform`, a status with content, a Content-Type in
Caddy's default list (or the configured `match`), and a known length ≥ `minimum_length` (unknown
lengths are compressed and flushed per chunk, so SSE keeps flowing). Content-Length and
Accept-Ranges are dropped, `Vary: Accept-Encoding` added, strong ETags get `-<enc>` appended.
Compression is streaming: each body chunk is compressed as it passes (RFC 9110 §8.4).
"""

from __future__ import annotations

import functools
import zlib
from typing import Any

from config.model import EncodeHandler
from proxy.http.exchange import Exchange
from proxy.http.fields import bodiless_status, status_in

zstandard: Any
try:
    import zstandard
except ImportError:  # zstd is optional: without the module only gzip is offered
    zstandard = None

# Caddy's default response matcher (encode.go Provision): compressible content types.
DEFAULT_TYPES = (
    "application/atom+xml*",
    "application/eot*",
    "application/font*",
    "application/geo+json*",
    "application/graphql+json*",
    "application/graphql-response+json*",
    "application/javascript*",
    "application/json*",
    "application/ld+json*",
    "application/manifest+json*",
    "application/opentype*",
    "application/otf*",
    "application/rss+xml*",
    "application/truetype*",
    "application/ttf*",
    "application/vnd.api+json*",
    "application/vnd.ms-fontobject*",
    "application/wasm*",
    "application/x-httpd-cgi*",
    "application/x-javascript*",
    "application/x-opentype*",
    "application/x-otf*",
    "application/x-perl*",
    "application/x-protobuf*",
    "application/x-ttf*",
    "application/xhtml+xml*",
    "application/xml*",
    "font/ttf*",
    "font/otf*",
    "image/svg+xml*",
    "image/vnd.microsoft.icon*",
    "image/x-icon*",
    "multipart/bag*",
    "multipart/mixed*",
    "text/*",
)


def _type_matches(ctype: str, patterns: tuple[str, ...]) -> bool:
    ctype = ctype.strip().lower()
    for p in patterns:
        p = p.lower()
        if p.endswith("*"):
            if ctype.startswith(p[:-1]):
                return True
        elif ctype == p:
            return True
    return False


def accepted_encodings(header: str, prefer: tuple[str, ...]) -> list[str]:
    """Encodings the client accepts, most wanted first (q desc, then `prefer` order)."""
    items: list[tuple[float, int, str]] = []
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        name = name.strip().lower()
        if not name:
            continue
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        if q <= 0:
            continue
        rank = prefer.index(name) if name in prefer else len(prefer)
        items.append((-q, rank, name))
    items.sort()
    return [name for _, _, name in items]


class _Gzip:
    __slots__ = ("flush_each", "z")

    def __init__(self, level: int, flush_each: bool) -> None:
        self.z = zlib.compressobj(level, zlib.DEFLATED, 31)
        self.flush_each = flush_each

    def write(self, data: bytes) -> bytes:
        out = self.z.compress(data)
        if self.flush_each:
            out += self.z.flush(zlib.Z_SYNC_FLUSH)
        return out

    def finish(self) -> bytes:
        return self.z.flush(zlib.Z_FINISH)


class _Zstd:
    __slots__ = ("c", "flush_each")

    def __init__(self, level: int, flush_each: bool) -> None:
        assert zstandard is not None
        self.c = zstandard.ZstdCompressor(level=level).compressobj()
        self.flush_each = flush_each

    def write(self, data: bytes) -> bytes:
        out: bytes = self.c.compress(data)
        if self.flush_each:
            out += self.c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return out

    def finish(self) -> bytes:
        out: bytes = self.c.flush()
        return out


class Encode:
    __slots__ = ("encodings", "levels", "min_length", "prefer", "status_codes", "types")

    def __init__(self, cfg: EncodeHandler) -> None:
        self.encodings = tuple(
            e for e in cfg.encodings if e == "gzip" or (e == "zstd" and zstandard is not None)
        )
        encs: dict[str, Any] = dict(cfg.raw.get("encodings") or {})
        self.levels = {
            "gzip": int((encs.get("gzip") or {}).get("level") or 6),
            "zstd": {"fastest": 1, "default": 3, "better": 7, "best": 11}.get(
                str((encs.get("zstd") or {}).get("level") or "default"), 3
            ),
        }
        self.prefer = cfg.prefer
        self.min_length = cfg.minimum_length or 512
        match = cfg.match or {}
        hdrs = match.get("headers") or {}
        ctypes = next((v for k, v in hdrs.items() if k.lower() == "content-type"), None)
        self.types = tuple(ctypes) if ctypes is not None else (DEFAULT_TYPES if not match else ())
        self.status_codes = tuple(int(s) for s in match.get("status_code") or ())

    def serve(self, ex: Exchange) -> bool:
        req = ex.req
        if "no-transform" in (req.header("Cache-Control") or ""):
            return False
        if req.header("Sec-WebSocket-Key") is not None:
            return False
        ae = req.header("Accept-Encoding")
        if not ae:
            return False
        for name in accepted_encodings(ae, self.prefer):
            if name in self.encodings:
                ex.add_head_hook(functools.partial(self._on_head, name=name))
                break
        return False

    def _on_head(self, ex: Exchange, *, name: str) -> None:
        status = ex.status
        if bodiless_status(status):
            return
        if self.status_codes and not status_in(status, self.status_codes):
            return
        hdrs = ex.resp_headers
        ctype = ""
        for k, v in hdrs:
            lk = k.lower()
            if lk == "content-encoding" and v:
                return
            if lk == "cache-control" and "no-transform" in v:
                return
            if lk == "content-type" and not ctype:
                ctype = v
        if self.types and not _type_matches(ctype, self.types):
            return
        length = ex.resp_length
        if length is not None and length < self.min_length:
            return
        sse = ctype.lower().startswith("text/event-stream")
        flush_each = length is None or sse
        new: list[tuple[str, str]] = []
        vary_done = False
        for k, v in hdrs:
            lk = k.lower()
            if lk in ("content-length", "accept-ranges"):
                continue
            if lk == "vary" and "accept-encoding" in v.lower():
                vary_done = True
            if lk == "etag" and not v.startswith("W/") and v.endswith('"'):
                v = f'{v[:-1]}-{name}"'
            new.append((k, v))
        new.append(("Content-Encoding", name))
        if not vary_done:
            new.append(("Vary", "Accept-Encoding"))
        ex.resp_headers = new
        ex.resp_length = None
        level = self.levels[name]
        ex.body_filter = _Gzip(level, flush_each) if name == "gzip" else _Zstd(level, flush_each)
