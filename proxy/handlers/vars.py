"""`vars` handler: set request variables (`{http.vars.NAME}`), then continue."""

from __future__ import annotations

from typing import Any

from config.model import Handler
from proxy.http.exchange import Exchange
from proxy.placeholders import compile_template


class Vars:
    __slots__ = ("items",)

    def __init__(self, cfg: Handler) -> None:
        self.items: list[tuple[str, Any]] = []
        for k, v in cfg.raw.items():
            if k == "handler":
                continue
            self.items.append((k, compile_template(v) if isinstance(v, str) else v))

    def serve(self, ex: Exchange) -> bool:
        req = ex.req
        for k, v in self.items:
            req.vars[k] = v(req) if callable(v) else v
        return False
