"""`static_response` handler (Caddyfile `respond`, `redir`, `abort`): a fixed response.

Follows Caddy's StaticResponse: headers replace same-named ones, placeholders in headers and
status are replaced (unknown → empty), in the body only known ones are; a body without a
Content-Type gets `application/json` when it is valid JSON, else `text/plain; charset=utf-8`;
`close` adds `Connection: close`; `abort` drops the connection without a response. Inside an
error route, the default status is the error's.
"""

from __future__ import annotations

import json

from config.model import StaticResponseHandler
from proxy.http.exchange import Exchange, HandlerError
from proxy.http.fields import status_line_bytes
from proxy.placeholders import compile_template


def _content_type_for(body: str) -> str:
    content = body.strip()
    if len(content) > 2 and (
        (content[0] == "{" and content[-1] == "}") or (content[0] == "[" and content[-1] == "]")
    ):
        try:
            json.loads(content)
        except ValueError:
            pass
        else:
            return "application/json"
    return "text/plain; charset=utf-8"


class StaticResponse:
    __slots__ = ("abort", "body", "close", "const_body", "headers", "status")

    def __init__(self, cfg: StaticResponseHandler) -> None:
        self.abort = cfg.abort
        self.close = cfg.close
        self.status = (
            compile_template(cfg.status_code, empty_unknown=True) if cfg.status_code else None
        )
        self.headers = [
            (
                compile_template(name, empty_unknown=True),
                [compile_template(v, empty_unknown=True) for v in values],
            )
            for name, values in cfg.headers
        ]
        self.body = compile_template(cfg.body) if cfg.body else None
        # Precomputed body bytes when it holds no placeholder (the common `respond "OK"`).
        self.const_body = cfg.body.encode() if cfg.body and "{" not in cfg.body else None

    def serve(self, ex: Exchange) -> bool:
        if self.abort:
            ex.abort()
            return True
        req = ex.req
        hdrs = ex.resp_headers
        if self.close:
            req.keep_alive = False
        for name_t, value_ts in self.headers:
            name = name_t(req)
            lname = name.lower()
            hdrs[:] = [(k, v) for k, v in hdrs if k.lower() != lname]
            hdrs.extend((name, vt(req)) for vt in value_ts)
        if self.const_body is not None:
            body = self.const_body
            text = None
        elif self.body is not None:
            text = self.body(req)
            body = text.encode()
        else:
            body, text = b"", ""
        if body and not any(k.lower() == "content-type" for k, _ in hdrs):
            hdrs.append(
                ("Content-Type", _content_type_for(text if text is not None else body.decode()))
            )
        status = 200
        err = req.vars.get("_handler_error")
        if isinstance(err, HandlerError) and err.status:
            status = err.status
        if self.status is not None:
            code = self.status(req)
            try:
                status = int(code)
            except ValueError:
                ex.fail(HandlerError(500, f"invalid status code {code!r}"))
                return True
        if status == 103:
            # Early Hints: an informational response, then the chain continues (Caddy).
            lines = "".join(f"{k}: {v}\r\n" for k, v in hdrs if k != "Server")
            ex.conn.write(status_line_bytes(103) + f"{lines}\r\n".encode("latin-1"))
            return False
        ex.respond(status, None, body)
        return True
