"""`subroute` handler: a nested route list; falling through continues the parent chain.

Its own `errors` routes, when present, handle errors raised inside it (Caddy's Subroute).

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from config.model import SubrouteHandler
from proxy.http.exchange import Exchange
from proxy.route import CompiledHandler, RouteList


class Subroute:
    __slots__ = ("errors", "routes")

    def __init__(self, cfg: SubrouteHandler, build: Callable[[Any], CompiledHandler]) -> None:
        self.routes = RouteList(cfg.routes, build)
        self.errors = RouteList(cfg.errors, build) if cfg.errors else None

    def serve(self, ex: Exchange) -> bool:
        if self.errors is not None:
            prev = ex.error_routes
            ex.error_routes = self.errors
            handled = self.routes.serve(ex)
            if not handled:
                ex.error_routes = prev
            return handled
        return self.routes.serve(ex)
