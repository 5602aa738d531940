"""Request and response matchers: Caddyfile syntax → the matcher JSON Caddy produces.

This module owns
- named matcher definitions (`@name path /a /b`, `@name { ... }`, `@name "cel expr"`),
  the `parse_matcher_definitions` entry point the adapter core calls per `@` segment;
- nested matcher sets (`not { ... }`, `lb_retry_match { ... }`): `parse_nested_matcher_set`;
- named response matchers (`match { status 2xx; header ... }` in `header` and `encode`,
  `@name status 500` inside `reverse_proxy`): `parse_named_response_matcher`;
- one Caddyfile unmarshaler per request matcher module (`MATCHER_PARSERS`), following
  the `UnmarshalCaddyfile` of Caddy's `http.matchers.*` modules, including their quirks
  (same-type lines are merged into one matcher; regexp matchers are auto-named after the
  matcher definition).

Values are plain JSON (dicts, lists, str, int, None); like Go's `omitempty`, empty
fields are left out, and a list matcher with no values is `None` (Go marshals a nil
slice as `null`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from config.caddyfile.dispenser import Dispenser
from config.caddyfile.token import Token
from config.go_values import PRIVATE_RANGES

JSONDict = dict[str, Any]

# The Dispenser context key that carries the matcher definition's name (without "@"),
# which regexp and expression matchers use as their default name (Caddy's MatcherNameCtxKey).
MATCHER_NAME_CTX = "matcher_name"

MatcherParser = Callable[[Dispenser], Any]


# -- small Go-compatible value parsers used by several directive modules -----------------------


class GoNumError(ValueError):
    """A number did not parse; the text is worded like Go's strconv errors."""


def go_quote(text: str) -> str:
    """Roughly Go's `%q`: a double-quoted string with `"` and `\\` escaped."""
    return json.dumps(text, ensure_ascii=False)


_INT64_MAX = (1 << 63) - 1


def go_atoi(text: str) -> int:
    """Go's `strconv.Atoi`: optional sign and ASCII digits only, within int64."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not all("0" <= c <= "9" for c in digits):
        raise GoNumError(f"strconv.Atoi: parsing {go_quote(text)}: invalid syntax")
    value = int(text)
    if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        raise GoNumError(f"strconv.Atoi: parsing {go_quote(text)}: value out of range")
    return value


def parse_status_codes(d: Dispenser, args: list[str]) -> list[int]:
    """Status code arguments: `404`, or a class like `5xx` (which becomes `5`)."""
    codes = []
    for arg in args:
        text = arg[:1] if len(arg) == 3 and arg.endswith("xx") else arg
        try:
            codes.append(go_atoi(text))
        except GoNumError as exc:
            raise d.err(f"bad status value '{text}': {exc}") from None
    return codes


# Go's textproto token characters: a header field name is canonicalized only when every
# byte is one of these (otherwise Go leaves the name unchanged).
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


def canonical_header_key(name: str) -> str:
    """Go's `textproto.CanonicalMIMEHeaderKey`: `x-foo-bar` → `X-Foo-Bar`.

    `http.Header.Set/Add` apply it, so Caddy's JSON shows canonical names wherever the
    Go code went through those methods (but not where it wrote the map directly).
    """
    if not name or any(c not in _TOKEN_CHARS for c in name):
        return name
    out = []
    upper = True
    for c in name:
        out.append(c.upper() if upper else c.lower())
        upper = c == "-"
    return "".join(out)


def header_add(headers: dict[str, list[str] | None], field: str, value: str) -> None:
    """`http.Header.Add`: append under the canonical key."""
    key = canonical_header_key(field)
    existing = headers.get(key)
    headers[key] = [*existing, value] if existing else [value]


def header_set(headers: dict[str, list[str] | None], field: str, value: str) -> None:
    """`http.Header.Set`: replace under the canonical key."""
    headers[canonical_header_key(field)] = [value]


# -- matcher definitions ------------------------------------------------------------------------


def parse_matcher_definitions(d: Dispenser, matchers: dict[str, JSONDict]) -> None:
    """Parse one `@name ...` segment of a site block into `matchers["@name"]`.

    Lines of the same matcher type are merged into one matcher (two `path` lines make one
    path list); different types must all match. A single quoted argument is shorthand for
    an `expression` matcher.
    """
    if d.cursor < 0:
        d.next()
    definition_name = d.val()
    if definition_name in matchers:
        raise d.err(f"matcher is defined more than once: {definition_name}")
    matcher_set: JSONDict = {}
    matchers[definition_name] = matcher_set
    name = definition_name[1:]

    if d.next_arg():
        tok = d.token()
        if tok.was_quoted:
            matcher_set["expression"] = _make_matcher(
                "expression", [_expression_token(tok), tok], name, tok
            )
            return
        d.prev()

    tokens_by_matcher, first_tokens = _collect_segments(d)
    for matcher_name, tokens in tokens_by_matcher.items():
        matcher_set[matcher_name] = _make_matcher(
            matcher_name, tokens, name, first_tokens[matcher_name]
        )


def parse_nested_matcher_set(d: Dispenser) -> JSONDict:
    """A matcher set given as the arguments or block of the current token.

    Used for `not path /a`, `not { ... }` and `lb_retry_match { ... }`. Quoted tokens are
    expression matchers. Nested matchers get no name (so regexps are unnamed).
    """
    nesting = d.nesting
    tokens_by_matcher: dict[str, list[Token]] = {}
    first_tokens: dict[str, Token] = {}
    while d.next_arg() or d.next_block(nesting):
        tok = d.token()
        if tok.was_quoted:
            tokens_by_matcher.setdefault("expression", []).extend([_expression_token(tok), tok])
            first_tokens.setdefault("expression", tok)
            continue
        first_tokens.setdefault(tok.text, tok)
        tokens_by_matcher.setdefault(tok.text, []).extend(d.next_segment())
    return {
        matcher_name: _make_matcher(matcher_name, tokens, "", first_tokens[matcher_name])
        for matcher_name, tokens in tokens_by_matcher.items()
    }


def _collect_segments(d: Dispenser) -> tuple[dict[str, list[Token]], dict[str, Token]]:
    tokens_by_matcher: dict[str, list[Token]] = {}
    first_tokens: dict[str, Token] = {}
    nesting = d.nesting
    while d.next_arg() or d.next_block(nesting):
        tok = d.token()
        first_tokens.setdefault(tok.text, tok)
        tokens_by_matcher.setdefault(tok.text, []).extend(d.next_segment())
    return tokens_by_matcher, first_tokens


def _expression_token(tok: Token) -> Token:
    return dataclasses.replace(tok, text="expression", was_quoted="", heredoc_marker="")


def _make_matcher(matcher_name: str, tokens: list[Token], definition: str, at: Token) -> Any:
    parser = MATCHER_PARSERS.get(matcher_name)
    if parser is None:
        where = Dispenser([at])
        where.next()
        raise where.err(
            f"getting matcher module '{matcher_name}': "
            f"module not registered: http.matchers.{matcher_name}"
        )
    sub = Dispenser(list(tokens))
    sub.context[MATCHER_NAME_CTX] = definition
    return parser(sub)


def _matcher_name(d: Dispenser) -> str:
    value = d.context.get(MATCHER_NAME_CTX, "")
    return value if isinstance(value, str) else ""


# -- the matcher modules' Caddyfile unmarshalers -------------------------------------------------


def _string_list_parser(kind: str) -> MatcherParser:
    def parse(d: Dispenser) -> list[str] | None:
        values: list[str] = []
        while d.next():
            values.extend(d.remaining_args())
            if d.next_block(0):
                raise d.err(f"malformed {kind} matcher: blocks are not supported")
        return values or None

    return parse


def _parse_query(d: Dispenser) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    while d.next():
        for arg in d.remaining_args():
            if arg == "":
                continue
            key, sep, value = arg.partition("=")
            if not sep:
                # Caddy names the last argument of the line here, not the bad one.
                raise d.err(
                    f"malformed query matcher token: {d.val()}; must be in param=val format"
                )
            query.setdefault(key, []).append(value)
        if d.next_block(0):
            raise d.err("malformed query matcher: blocks are not supported")
    return query


def parse_header_matcher(
    d: Dispenser, into: dict[str, list[str] | None] | None = None
) -> dict[str, list[str] | None]:
    """The `header` matcher: `Field value` (value may use `*`), or `!Field` for absence."""
    headers: dict[str, list[str] | None] = {} if into is None else into
    while d.next():
        if not d.next_arg():
            raise d.err("malformed header matcher: expected field")
        field = d.val()
        if field.startswith("!"):
            if len(field) == 1:
                raise d.err("malformed header matcher: must have field name following ! character")
            headers[field[1:]] = None
            if d.next_arg():
                raise d.err(
                    "malformed header matcher: null matching headers cannot have a field value"
                )
        else:
            if not d.next_arg():
                raise d.err("malformed header matcher: expected both field and value")
            header_add(headers, field, d.val())
        if d.next_block(0):
            raise d.err("malformed header matcher: blocks are not supported")
    return headers


def _regexp(name: str, pattern: str) -> JSONDict:
    out: JSONDict = {}
    if name:
        out["name"] = name
    out["pattern"] = pattern
    return out


def _field_regexp_parser(kind: str, once_per_field: bool) -> MatcherParser:
    """header_regexp / vars_regexp: `[name] field pattern`, keyed by field."""

    def parse(d: Dispenser) -> dict[str, JSONDict]:
        result: dict[str, JSONDict] = {}
        while d.next():
            first_two = d.args(2)
            if first_two is None:
                raise d.arg_err()
            third = d.args(1)
            if third is not None:
                name, field, pattern = first_two[0], first_two[1], third[0]
            else:
                name, field, pattern = "", first_two[0], first_two[1]
            if not name:
                name = _matcher_name(d)
            if once_per_field and field in result:
                raise d.err(
                    f"{kind} matcher can only be used once per named matcher, "
                    f"per header field: {field}"
                )
            result[field] = _regexp(name, pattern)
            if d.next_block(0):
                raise d.err(f"malformed {kind} matcher: blocks are not supported")
        return result

    return parse


def _parse_path_regexp(d: Dispenser) -> JSONDict:
    name = ""
    pattern = ""
    while d.next():
        if pattern:
            raise d.err("regular expression can only be used once per named matcher")
        args = d.remaining_args()
        if len(args) == 1:
            pattern = args[0]
        elif len(args) == 2:
            name, pattern = args
        else:
            raise d.arg_err()
        if not name:
            name = _matcher_name(d)
        if d.next_block(0):
            raise d.err("malformed path_regexp matcher: blocks are not supported")
    return _regexp(name, pattern)


def _parse_protocol(d: Dispenser) -> str:
    proto = ""
    while d.next():
        if not d.next_arg():
            raise d.err("expected exactly one protocol")
        proto = d.val()
    return proto


def _parse_tls(d: Dispenser) -> JSONDict:
    out: JSONDict = {}
    while d.next():
        if d.next_arg():
            if d.val() != "early_data":
                raise d.err(f"unrecognized option '{d.val()}'")
            out["handshake_complete"] = False
        if d.next_arg():
            raise d.arg_err()
        if d.next_block(0):
            raise d.err("malformed tls matcher: blocks are not supported yet")
    return out


def _parse_not(d: Dispenser) -> list[JSONDict]:
    # Every `not` line (merged from several lines) is its own negated set: `not` matches
    # when none of them matches.
    sets = []
    while d.next():
        sets.append(parse_nested_matcher_set(d))
    return sets


def _ip_ranges_parser(kind: str) -> MatcherParser:
    def parse(d: Dispenser) -> JSONDict:
        ranges: list[str] = []
        while d.next():
            while d.next_arg():
                if kind == "remote_ip" and d.val() == "forwarded":
                    raise d.err(
                        "the 'forwarded' option is no longer supported; "
                        "use the 'client_ip' matcher instead"
                    )
                if d.val() == "private_ranges":
                    ranges.extend(PRIVATE_RANGES)
                    continue
                ranges.append(d.val())
            if d.next_block(0):
                raise d.err(f"malformed {kind} matcher: blocks are not supported")
        return {"ranges": ranges} if ranges else {}

    return parse


def _parse_vars(d: Dispenser) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    while d.next():
        if not d.next_arg():
            raise d.err("malformed vars matcher: expected field name")
        field = d.val()
        values = d.remaining_args()
        if not values:
            raise d.err("malformed vars matcher: expected at least one value to match against")
        result.setdefault(field, []).extend(values)
        if d.next_block(0):
            raise d.err("malformed vars matcher: blocks are not supported")
    return result


def _parse_expression(d: Dispenser) -> Any:
    # Only the first `expression` line counts (Caddy reads one); several arguments are
    # joined with their quotes kept, and such an expression gets no name.
    d.next()
    if d.count_remaining_args() > 1:
        return " ".join(d.remaining_args_raw())
    if not d.next_arg():
        raise d.arg_err()
    expr = d.val()
    name = _matcher_name(d)
    if not name:
        return expr
    return {"expr": expr, "name": name}


def _parse_file(d: Dispenser) -> JSONDict:
    out: JSONDict = {}
    try_files: list[str] = []
    while d.next():
        try_files.extend(d.remaining_args())
        while d.next_block(0):
            option = d.val()
            if option == "root":
                if not d.next_arg():
                    raise d.arg_err()
                out["root"] = d.val()
            elif option == "try_files":
                try_files.extend(d.remaining_args())
                if not try_files:
                    raise d.arg_err()
            elif option == "try_policy":
                if not d.next_arg():
                    raise d.arg_err()
                out["try_policy"] = d.val()
            elif option == "split_path":
                split = d.remaining_args()
                if not split:
                    raise d.arg_err()
                out["split_path"] = split
            else:
                raise d.err(f"unrecognized subdirective: {option}")
    if try_files:
        out["try_files"] = try_files
    return out


def _parse_url_pattern(d: Dispenser) -> JSONDict:
    out: JSONDict = {}
    while d.next():
        if not d.next_arg():
            raise d.err("expected exactly one URL pattern")
        out["pattern"] = d.val()
        while d.next_block(0):
            option = d.val()
            if option == "base_url":
                if not d.next_arg():
                    raise d.arg_err()
                out["base_url"] = d.val()
            elif option == "ignore_case":
                if d.next_arg():
                    raise d.arg_err()
                out["ignore_case"] = True
            else:
                raise d.err(f"unrecognized url_pattern option '{option}'")
    return {k: v for k, v in out.items() if v}


MATCHER_PARSERS: dict[str, MatcherParser] = {
    "client_ip": _ip_ranges_parser("client_ip"),
    "expression": _parse_expression,
    "file": _parse_file,
    "header": parse_header_matcher,
    "header_regexp": _field_regexp_parser("header_regexp", once_per_field=True),
    "host": _string_list_parser("host"),
    "method": _string_list_parser("method"),
    "not": _parse_not,
    "path": _string_list_parser("path"),
    "path_regexp": _parse_path_regexp,
    "protocol": _parse_protocol,
    "query": _parse_query,
    "remote_ip": _ip_ranges_parser("remote_ip"),
    "tls": _parse_tls,
    "url_pattern": _parse_url_pattern,
    "vars": _parse_vars,
    "vars_regexp": _field_regexp_parser("vars_regexp", once_per_field=False),
}


# -- response matchers --------------------------------------------------------------------------


def parse_named_response_matcher(d: Dispenser, matchers: dict[str, JSONDict]) -> None:
    """A response matcher segment: `NAME status ...` / `NAME { status ...; header F V }`.

    `d` is a Dispenser over just that segment; the first token is the name (`match` in
    `header`/`encode` blocks, `@name` in `reverse_proxy`). Result: `{"status_code": [...],
    "headers": {...}}` under `matchers[NAME]`.
    """
    d.next()
    definition_name = d.val()
    if definition_name in matchers:
        raise d.err(f"matcher is defined more than once: {definition_name}")
    status_codes: list[int] | None = None
    headers: dict[str, list[str] | None] | None = None
    nesting = d.nesting
    while d.next_arg() or d.next_block(nesting):
        kind = d.val()
        if kind == "header":
            headers = parse_header_matcher(d.new_from_next_segment(), headers or {})
        elif kind == "status":
            if status_codes is None:
                status_codes = []
            args = d.remaining_args()
            if not args:
                raise d.arg_err()
            status_codes.extend(parse_status_codes(d, args))
        else:
            raise d.err(f"unrecognized response matcher {kind}")
    matcher: JSONDict = {}
    if status_codes:
        matcher["status_code"] = status_codes
    if headers:
        matcher["headers"] = headers
    matchers[definition_name] = matcher
