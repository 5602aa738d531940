"""Handler compilation: model `Handler` objects → runtime handler objects with `serve(ex)`.

`BuildContext` carries what handlers share within one worker: the loop, upstream pools, the
upstream host registry (passive health and in-flight counts survive reloads), the server's
trusted proxies, and start/stop hooks (active health checkers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from config.errors import ConfigError
from config.model import (
    EncodeHandler,
    ErrorHandler,
    Handler,
    HeadersHandler,
    ReverseProxyHandler,
    RewriteHandler,
    StaticResponseHandler,
    SubrouteHandler,
)
from proxy.route import CompiledHandler
from proxy.upstream.pool import PoolManager
from proxy.upstream.upstream import HostRegistry


@dataclass
class BuildContext:
    loop: asyncio.AbstractEventLoop
    pools: PoolManager
    registry: HostRegistry
    server_trusted: tuple[str, ...] = ()
    access_logged: bool = False  # the server logs requests (handlers keep headers inspectable)
    on_start: list[Callable[[], Any]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[Any] | None]] = field(default_factory=list)


def build_handler(h: Handler, ctx: BuildContext) -> CompiledHandler:
    def build(sub: Handler) -> CompiledHandler:
        return build_handler(sub, ctx)

    try:
        if isinstance(h, ReverseProxyHandler):
            from proxy.handlers.reverse_proxy import ReverseProxy

            return ReverseProxy(h, ctx)
        if isinstance(h, StaticResponseHandler):
            from proxy.handlers.static_response import StaticResponse

            return StaticResponse(h)
        if isinstance(h, SubrouteHandler):
            from proxy.handlers.subroute import Subroute

            return Subroute(h, build)
        if isinstance(h, HeadersHandler):
            from proxy.handlers.headers import Headers

            return Headers(h)
        if isinstance(h, RewriteHandler):
            from proxy.handlers.rewrite import Rewrite

            return Rewrite(h)
        if isinstance(h, EncodeHandler):
            from proxy.handlers.encode import Encode

            return Encode(h)
        if isinstance(h, ErrorHandler):
            from proxy.handlers.error import StaticError

            return StaticError(h)
        if h.name == "vars":
            from proxy.handlers.vars import Vars

            return Vars(h)
    except ConfigError:
        raise
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{h.where}: {exc}") from exc
    raise ConfigError(f"{h.where}.handler: handler {h.name!r} is not supported by pyproxy yet")
