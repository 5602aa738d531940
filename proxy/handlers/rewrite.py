"""`rewrite` handler (Caddyfile `rewrite`, `uri`, `handle_path`'s prefix strip).

Follows current Caddy's Rewrite (modules/caddyhttp/rewrite/rewrite.go), which edits the URL's
escaped path and re-derives the decoded one (proxy.http.target has those rules):

- `uri`: the template is split into path, query and fragment at its own first `?` and `#`
  (before placeholders are replaced, so a value cannot add a query). In the path part,
  `{http.request.uri.path}` stands for the *escaped* path; the result is percent-decoded
  into the new path (kept literally if it is no valid encoding). A new path without `?`
  keeps the query; with `?` the query part replaces it (placeholders such as `{query}` see
  the old one), built like Caddy's buildQueryString: split at `=`/`&` first, placeholder
  values query-escaped (`{query}` in a key position excepted), empty keys dropped. The
  fragment is dropped: it is never forwarded.
- strip prefix / suffix: on the cleaned escaped path (dot segments resolved, slashes merged
  unless the prefix has "//"), case-insensitively, escapes in the prefix matching only the
  same escapes; so `handle_path /a/*` turns "/a//b", "/a/./b" and "/a/x/../b" into "/b".
- substring replacement: on the cleaned escaped path and on the raw query.
- path_regexp: on the escaped path.

The request as first received stays available to placeholders and logs via `_orig_*` vars.
"""

from __future__ import annotations

import re
from urllib.parse import quote_plus

from config.model import RewriteHandler
from proxy.http.exchange import Exchange
from proxy.http.request import Request
from proxy.http.target import (
    decode_path,
    escaped_path,
    regexp_replace_path,
    replace_in_path,
    strip_path_prefix,
    strip_path_suffix,
    unescape_path,
)
from proxy.placeholders import Template, _parse, compile_template

# Replaced by the request's escaped path, not its decoded one (rewrite.go
# escapePathPlaceholders): a decoded '?', '#' or '%' must not become a delimiter or escape.
_PATH_PLACEHOLDER = "{http.request.uri.path}"


def remember_original(req: Request) -> None:
    v = req.vars
    if "_orig_uri" not in v:
        v["_orig_method"] = req.method
        v["_orig_uri"] = req.uri
        v["_orig_path"] = req.path
        v["_orig_query"] = req.query


def _split_uri_template(uri: str) -> tuple[str | None, str | None]:
    """(path part, query part) of a `uri` template, None where absent (Caddy's bounds loop).

    Everything from the first `#` on is the fragment; a `?` before it starts the query.
    """
    path_end = uri.find("?")
    frag = uri.find("#")
    if frag >= 0 and (path_end < 0 or frag < path_end):
        return uri[:frag] or None, None
    if path_end < 0:
        return uri or None, None
    query = uri[path_end + 1 :]
    if frag >= 0:
        query = query[: frag - path_end - 1]
    return uri[:path_end] or None, query


def _template(text: str) -> Template:
    return compile_template(text, empty_unknown=True)


class _PathTemplate:
    """The path part of a `uri` template; pieces joined by the request's escaped path."""

    __slots__ = ("_pieces",)

    def __init__(self, text: str) -> None:
        self._pieces = [_template(piece) for piece in text.split(_PATH_PLACEHOLDER)]

    def __call__(self, req: Request) -> str:
        pieces = self._pieces
        if len(pieces) == 1:
            return pieces[0](req)
        return req.raw_path.join([piece(req) for piece in pieces])


_QUERY_PLACEHOLDER = "http.request.uri.query"


class _QueryTemplate:
    """The query part of a `uri` template, built like Caddy's buildQueryString.

    The template is split into keys and values at `=` and `&` (after a key's `=`, only `&`
    ends the value) before placeholders are replaced; each placeholder value is query-escaped
    (Go's url.QueryEscape: a space becomes `+`), except `{http.request.uri.query}` where a key
    is expected, which is escaped already. Empty keys are dropped with their `&`.
    """

    __slots__ = ("_components",)

    def __init__(self, text: str) -> None:
        # (is_key, pieces): a piece is literal text or a (template, escape the value) pair.
        self._components: list[tuple[bool, list[str | tuple[Template, bool]]]] = []
        wrote_val = True
        qs = text
        while qs:
            next_eq = qs.find("=") if wrote_val else -1
            next_amp = qs.find("&")
            amp_is_next = next_amp >= 0 and (next_eq < 0 or next_amp < next_eq)
            end = len(qs)
            if amp_is_next:
                end = next_amp
            elif next_eq >= 0:
                end = next_eq
            pieces: list[str | tuple[Template, bool]] = []
            for part in _parse(qs[:end], True):
                if isinstance(part, str):
                    pieces.append(part)
                else:
                    key = part[0]
                    escape = not (key == _QUERY_PLACEHOLDER and wrote_val)
                    pieces.append((_template("{" + key + "}"), escape))
            self._components.append((wrote_val, pieces))
            qs = qs[end + 1 :] if end < len(qs) else ""
            wrote_val = amp_is_next

    def __call__(self, req: Request) -> str:
        out: list[str] = []
        for is_key, pieces in self._components:
            comp = "".join(
                piece
                if isinstance(piece, str)
                else (quote_plus(piece[0](req), safe="") if piece[1] else piece[0](req))
                for piece in pieces
            )
            if is_key:
                if out and comp:
                    out.append("&")
            else:
                out.append("=")
            out.append(comp)
        return "".join(out)


class Rewrite:
    __slots__ = (
        "method",
        "path_regexp",
        "strip_prefix",
        "strip_suffix",
        "substrings",
        "uri_path",
        "uri_query",
        "uri_query_given",
    )

    def __init__(self, cfg: RewriteHandler) -> None:
        self.method = _template(cfg.method) if cfg.method else None
        path_part, query_part = _split_uri_template(cfg.uri)
        self.uri_path = _PathTemplate(path_part) if path_part is not None else None
        self.uri_query = _QueryTemplate(query_part) if query_part is not None else None
        self.uri_query_given = bool(query_part)  # Caddy tests the unreplaced query part
        self.strip_prefix = _template(cfg.strip_path_prefix) if cfg.strip_path_prefix else None
        self.strip_suffix = _template(cfg.strip_path_suffix) if cfg.strip_path_suffix else None
        # (find, replace, limit, merge slashes): Caddy decides the merging on the unreplaced find.
        self.substrings = [
            (_template(find), _template(replace), limit if limit > 0 else -1, "//" not in find)
            for find, replace, limit in cfg.uri_substring
            if find
        ]
        # Go's regexp replacement uses $1; Python's uses \1.
        self.path_regexp = [
            (re.compile(f), _template(re.sub(r"\$(\d+)", r"\\\1", r))) for f, r in cfg.path_regexp
        ]

    def serve(self, ex: Exchange) -> bool:
        req = ex.req
        remember_original(req)
        if self.method is not None:
            req.method = self.method(req).upper()
        escaped, query = req.raw_path, req.query
        if self.uri_path is not None or self.uri_query is not None:
            escaped, query = self._apply_uri(req)
        if self.strip_prefix is not None:
            escaped = strip_path_prefix(escaped, self.strip_prefix(req))
        if self.strip_suffix is not None:
            escaped = strip_path_suffix(escaped, self.strip_suffix(req))
        for find_tpl, replace_tpl, limit, merge in self.substrings:
            find, replace = find_tpl(req), replace_tpl(req)
            escaped = replace_in_path(escaped, find, replace, limit, merge)
            query = query.replace(find, replace, limit)
        for rx, replace_tpl in self.path_regexp:
            escaped = regexp_replace_path(escaped, rx, replace_tpl(req))
        if not escaped.startswith("/") and escaped != "*":
            # Deviation: Go would forward such a path ("b" after stripping "/a" from "/ab")
            # as a request-target no origin accepts; pyproxy keeps it origin-form.
            escaped = "/" + escaped
        _set_target(req, escaped, query)
        return False

    def _apply_uri(self, req: Request) -> tuple[str, str]:
        escaped, query = req.raw_path, req.query
        new_path = ""
        if self.uri_path is not None:
            new_path = self.uri_path(req)
        template_query = self.uri_query(req) if self.uri_query is not None else ""
        injected, sep, tail = new_path.partition("?")
        if sep:
            # A '?' that came from a placeholder value: Caddy takes it as the query only when
            # the template's own query part is empty, escaping braces so nothing in it is
            # expanded again (GHSA-j8px-rmrx-76h9), and only if the template has a '?'.
            new_path = injected
            if not self.uri_query_given:
                template_query = tail.replace("{", "%7B").replace("}", "%7D")
        if self.uri_path is not None:
            decoded = unescape_path(new_path)
            path = decoded if decoded is not None else new_path.encode("utf-8", "surrogateescape")
            escaped = escaped_path(path, "")
        if self.uri_query is not None:
            query = template_query
        return escaped, query


def _set_target(req: Request, escaped: str, query: str) -> None:
    """Store a new EscapedPath() and RawQuery; Caddy then sets RequestURI = URL.RequestURI()."""
    if escaped != req.raw_path:
        path = unescape_path(escaped)
        if path is None:  # every escaped path built above is a valid encoding
            raise ValueError(f"rewrite produced an invalid escaped path {escaped!r}")
        req.path = decode_path(path)
        req.raw_path = escaped
    req.query = query
    req.uri = escaped + ("?" + query if query else "")
