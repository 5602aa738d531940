"""`rewrite` handler (Caddyfile `rewrite`, `uri`, `handle_path`'s prefix strip).

Follows Caddy's Rewrite: a new `uri` without `?` keeps the query; with `?` it replaces it
(placeholders such as `{query}` see the old one). Prefix/suffix stripping is case-insensitive
on the path. The request as first received stays available to placeholders and logs via
`_orig_*` vars.
"""

from __future__ import annotations

import re

from config.model import RewriteHandler
from proxy.http.exchange import Exchange
from proxy.http.request import Request
from proxy.placeholders import compile_template


def remember_original(req: Request) -> None:
    v = req.vars
    if "_orig_uri" not in v:
        v["_orig_method"] = req.method
        v["_orig_uri"] = req.uri
        v["_orig_path"] = req.path
        v["_orig_query"] = req.query


class Rewrite:
    __slots__ = ("method", "path_regexp", "strip_prefix", "strip_suffix", "substrings", "uri")

    def __init__(self, cfg: RewriteHandler) -> None:
        self.method = compile_template(cfg.method, empty_unknown=True) if cfg.method else None
        self.uri = compile_template(cfg.uri, empty_unknown=True) if cfg.uri else None
        self.strip_prefix = cfg.strip_path_prefix
        if self.strip_prefix and not self.strip_prefix.startswith("/"):
            self.strip_prefix = "/" + self.strip_prefix
        self.strip_suffix = cfg.strip_path_suffix
        self.substrings = cfg.uri_substring
        self.path_regexp = [(re.compile(f), r) for f, r in cfg.path_regexp]

    def serve(self, ex: Exchange) -> bool:
        req = ex.req
        remember_original(req)
        if self.method is not None:
            req.method = self.method(req).upper()
        path, query = req.raw_path, req.query
        if self.uri is not None:
            new = self.uri(req)
            if "?" in new:
                new_path, _, query = new.partition("?")
                if new_path:
                    path = new_path
            elif new:
                path = new
        if self.strip_prefix and path.lower().startswith(self.strip_prefix.lower()):
            path = path[len(self.strip_prefix) :]
            if not path.startswith("/"):
                path = "/" + path
        if self.strip_suffix and path.lower().endswith(self.strip_suffix.lower()):
            path = path[: len(path) - len(self.strip_suffix)]
        for find, replace, limit in self.substrings:
            path = path.replace(find, replace, limit if limit > 0 else -1)
        for rx, replace in self.path_regexp:
            # Go's regexp replacement uses $1; Python's uses \1.
            path = rx.sub(re.sub(r"\$(\d+)", r"\\\1", replace), path)
        if not path.startswith("/") and path != "*":
            path = "/" + path
        req.set_uri(path + ("?" + query if query else ""))
        return False
