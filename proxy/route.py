"""Compiled routes: Caddy's route list semantics over compiled handlers.

A route runs when any of its matcher sets matches (sets OR-ed, matchers in a set AND-ed, done by
`proxy.matchers`). Its handlers run in order; a handler that produces the response ends the
chain. `terminal` stops evaluating later routes of the same list; among routes sharing a
`group`, only the first matching one runs (Caddy's RouteList.Compile). A list that falls through
returns False, so a `subroute` continues with the handlers after it, as in Caddy.

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from config.model import Route
from proxy.http.exchange import Exchange
from proxy.request_view import RequestView

Matcher = Callable[[RequestView], bool]


class CompiledHandler(Protocol):
    def serve(self, ex: Exchange) -> bool:
        """Handle; True when this handler took over the response (the chain stops)."""
        ...


def compile_match(match: Sequence[dict[str, Any]]) -> Matcher | None:
    """None means "always matches" (no matcher sets)."""
    if not match:
        return None
    from proxy.matchers import compile_matcher_sets

    fn: Matcher = compile_matcher_sets(list(match))
    return fn


class CompiledRoute:
    __slots__ = ("group", "handlers", "match", "terminal")

    def __init__(
        self,
        match: Matcher | None,
        handlers: tuple[CompiledHandler, ...],
        group: str,
        terminal: bool,
    ) -> None:
        self.match = match
        self.handlers = handlers
        self.group = group
        self.terminal = terminal


class RouteList:
    __slots__ = ("has_groups", "routes")

    def __init__(self, routes: Sequence[Route], build_handler: Callable[[Any], CompiledHandler]):
        self.routes = tuple(
            CompiledRoute(
                compile_match(r.match),
                tuple(build_handler(h) for h in r.handle),
                r.group,
                r.terminal,
            )
            for r in routes
        )
        self.has_groups = any(r.group for r in self.routes)

    def serve(self, ex: Exchange) -> bool:
        req = ex.req
        groups: set[str] | None = None
        for route in self.routes:
            if route.group and groups is not None and route.group in groups:
                continue
            m = route.match
            if m is not None and not m(req):
                continue
            if route.group:
                if groups is None:
                    groups = set()
                groups.add(route.group)
            for h in route.handlers:
                if h.serve(ex):
                    return True
            if route.terminal:
                return False
        return False

    def __bool__(self) -> bool:
        return bool(self.routes)
