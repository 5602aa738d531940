"""`error` handler: raise an HTTP error so the server's (or subroute's) errors routes run.

Caddy's StaticError: the message and status may hold placeholders; the status defaults to 500.
"""

from __future__ import annotations

from config.model import ErrorHandler
from proxy.http.exchange import Exchange, HandlerError
from proxy.placeholders import compile_template


class StaticError:
    __slots__ = ("message", "status")

    def __init__(self, cfg: ErrorHandler) -> None:
        self.message = compile_template(cfg.error, empty_unknown=True)
        self.status = (
            compile_template(cfg.status_code, empty_unknown=True) if cfg.status_code else None
        )

    def serve(self, ex: Exchange) -> bool:
        status = 500
        if self.status is not None:
            text = self.status(ex.req)
            try:
                status = int(text)
            except ValueError:
                status = 500
        ex.fail(HandlerError(status, self.message(ex.req)))
        return True
