"""`headers` handler (Caddyfile `header`, and reverse_proxy's `header_up`/`header_down`).

Request operations change the request before later handlers see it. Response operations are
applied right away to the pending response headers, or — when `deferred` or `require` is set —
when the response head is written (Caddy wraps the ResponseWriter the same way), so they also
see headers an upstream returned. The operations themselves (set/add/delete/replace with
placeholders) are compiled by `proxy.header_ops`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from config.model import HeadersHandler
from proxy.http.exchange import Exchange
from proxy.http.fields import status_in
from proxy.http.request import Request

HeaderList = list[tuple[str, str]]
ApplyOps = Callable[[HeaderList, Request], HeaderList]


def compile_ops(ops: Mapping[str, Any] | None) -> ApplyOps | None:
    """Compile a header-ops object into `apply(headers, req) -> headers` (None when empty)."""
    if not ops:
        return None
    clean = {k: v for k, v in ops.items() if k not in ("deferred", "require")}
    if not clean:
        return None
    try:
        from proxy.header_ops import compile_header_ops
    except ImportError:
        return _fallback_ops(clean)
    compiled = compile_header_ops(clean)
    return _adapt(compiled)


def _adapt(compiled: Any) -> ApplyOps:
    def apply(headers: HeaderList, req: Request) -> HeaderList:
        result = compiled.apply(headers, req)
        if result is None:
            return headers
        if isinstance(result, list):
            return result
        items = getattr(result, "items", None)
        if callable(items):
            return list(items())
        return list(result)

    return apply


def _fallback_ops(ops: Mapping[str, Any]) -> ApplyOps:
    # Minimal set/add/delete until proxy.header_ops is available (no placeholders/replace).
    sets = [(k, list(v)) for k, v in (ops.get("set") or {}).items()]
    adds = [(k, list(v)) for k, v in (ops.get("add") or {}).items()]
    dels = [d.lower() for d in ops.get("delete") or []]

    def apply(headers: HeaderList, req: Request) -> HeaderList:
        out = [(k, v) for k, v in headers if k.lower() not in dels]
        for k, vals in adds:
            out.extend((k, v) for v in vals)
        for k, vals in sets:
            lk = k.lower()
            out = [(a, b) for a, b in out if a.lower() != lk]
            out.extend((k, v) for v in vals)
        return out

    return apply


def apply_request_ops(apply: ApplyOps, req: Request) -> None:
    req.headers = apply(req.headers, req)
    host = req.header("Host")
    if host is not None:
        req.host = host


class Headers:
    __slots__ = ("deferred", "request", "require", "response")

    def __init__(self, cfg: HeadersHandler) -> None:
        self.request = compile_ops(cfg.request)
        resp = cfg.response or {}
        self.response = compile_ops(resp)
        self.deferred = bool(resp.get("deferred")) or resp.get("require") is not None
        self.require: Mapping[str, Any] | None = resp.get("require")

    def serve(self, ex: Exchange) -> bool:
        if self.request is not None:
            apply_request_ops(self.request, ex.req)
        resp = self.response
        if resp is not None:
            if self.deferred:
                ex.add_head_hook(self._on_head)
            else:
                ex.resp_headers = resp(ex.resp_headers, ex.req)
        return False

    def _on_head(self, ex: Exchange) -> None:
        if self.require is not None and not _response_matches(self.require, ex):
            return
        assert self.response is not None
        ex.resp_headers = self.response(ex.resp_headers, ex.req)


def _response_matches(require: Mapping[str, Any], ex: Exchange) -> bool:
    """Caddy's ResponseMatcher: status codes (2 = any 2xx) and header presence/values."""
    codes = require.get("status_code") or []
    if codes and not status_in(ex.status, [int(c) for c in codes]):
        return False
    for name, values in (require.get("headers") or {}).items():
        have = [v for k, v in ex.resp_headers if k.lower() == name.lower()]
        if values is None:
            if have:
                return False
            continue
        if not values:
            if not have:
                return False
            continue
        if not any(_value_match(h, w) for h in have for w in values):
            return False
    return True


def _value_match(have: str, want: str) -> bool:
    if want == "*":
        return True
    if want.startswith("*") and want.endswith("*") and len(want) > 1:
        return want[1:-1] in have
    if want.startswith("*"):
        return have.endswith(want[1:])
    if want.endswith("*"):
        return have.startswith(want[:-1])
    return have == want
