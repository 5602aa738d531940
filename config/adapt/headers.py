"""The `header` and `request_header` directives, and the header-operation syntax they share.

The operation syntax (Caddy's `headers/caddyfile.go`) is also used by `reverse_proxy`'s
`header_up` / `header_down`, through `caddyfile_header_op`:

    Field value          set (replace every value)
    +Field value         add
    -Field               delete (deferred for responses, so it also hits later headers)
    ?Field value         set only if absent (response only: a `require` on the field)
    >Field value         set, deferred until the response is written
    Field search repl    regexp replace (`>Field search repl` deferred)

The result is the `headers` handler JSON: `{"handler": "headers", "response": {...}}`
(or `"request"`), with Go's omitempty behaviour and header-name canonicalization where
Go's `http.Header.Set/Add` would apply it.
"""

from __future__ import annotations

from typing import Any

from config.adapt.helper import ConfigValue, Helper, register_directive
from config.adapt.matchers import header_add, header_set, parse_named_response_matcher

JSONDict = dict[str, Any]


class HeaderOpError(ValueError):
    """A header operation that is not allowed where it was used."""


def apply_header_op(
    ops: JSONDict, is_response: bool, field: str, value: str, replacement: str | None
) -> None:
    """Apply one Caddyfile header operation to a HeaderOps dict.

    For response operations `ops` is the whole response-ops dict, which in Caddy's JSON
    carries the header ops and `require` / `deferred` side by side.
    """
    if field.startswith("+"):
        header_add(ops.setdefault("add", {}), field[1:], value)
    elif field.startswith("-"):
        ops.setdefault("delete", []).append(field[1:])
        if is_response:
            ops["deferred"] = True
    elif field.startswith("?"):
        if not is_response:
            raise HeaderOpError(
                f"{field}: the default header modifier ('?') can only be used on response "
                "headers; for conditional manipulation of request headers, use matchers"
            )
        name = field[1:]
        require = ops.setdefault("require", {})
        # Go writes this map directly, so the name is not canonicalized; null = "absent".
        require.setdefault("headers", {})[name] = None
        header_set(ops.setdefault("set", {}), name, value)
    elif replacement is not None:
        if field.startswith(">") and is_response:
            ops["deferred"] = True
        name = field.lstrip("+-?>")
        rule: JSONDict = {}
        if value:
            rule["search_regexp"] = value
        if replacement:
            rule["replace"] = replacement
        ops.setdefault("replace", {}).setdefault(name, []).append(rule)
    elif field.startswith(">"):
        header_set(ops.setdefault("set", {}), field[1:], value)
        if is_response:
            ops["deferred"] = True
    else:
        header_set(ops.setdefault("set", {}), field, value)


def caddyfile_header_op(ops: JSONDict, field: str, value: str, replacement: str | None) -> None:
    """A header operation outside a response context (request ops, `header_down`)."""
    apply_header_op(ops, False, field, value, replacement)


def _op_args(h: Helper) -> tuple[str, str | None]:
    value = h.val() if h.next_arg() else ""
    replacement = h.val() if h.next_arg() else None
    return value, replacement


def parse_header(h: Helper) -> list[ConfigValue]:
    """`header [<matcher>] [[+|-|?|>]<field> [<value>|<find>] [<replace>]] { ... }`.

    Block lines starting with `?` go to a second handler: its `require` (field absent)
    must not constrain the other lines.
    """
    h.next()
    matcher_set = h.extract_matcher_set()
    h.next()

    response: JSONDict = {}
    response_with_require: JSONDict = {}

    has_args = False
    if h.next_arg():
        has_args = True
        field = h.val()
        value, replacement = _op_args(h)
        try:
            apply_header_op(response, True, field, value, replacement)
        except HeaderOpError as exc:
            raise h.err(str(exc)) from None
        if response.get("delete"):
            response["deferred"] = True

    while h.next_block(0):
        field = h.val()
        if field == "defer":
            response["deferred"] = True
            continue
        if field == "match":
            response_matchers: dict[str, JSONDict] = {}
            parse_named_response_matcher(h.new_from_next_segment(), response_matchers)
            response["require"] = response_matchers["match"]
            continue
        if has_args:
            raise h.err("cannot specify headers in both arguments and block")
        # People often write "Field:" out of habit; Caddy accepts that.
        field = field.removesuffix(":")
        value, replacement = _op_args(h)
        target = response_with_require if field.startswith("?") else response
        try:
            apply_header_op(target, True, field, value, replacement)
        except HeaderOpError as exc:
            raise h.err(str(exc)) from None

    values: list[ConfigValue] = []
    for ops in (response, response_with_require):
        if ops:
            values.extend(h.new_route(matcher_set, {"handler": "headers", "response": ops}))
    return values


def parse_request_header(h: Helper) -> list[ConfigValue]:
    """`request_header [<matcher>] [+|-]<field> [<value>|<find>] [<replace>]`."""
    h.next()
    matcher_set = h.extract_matcher_set()
    h.next()

    if not h.next_arg():
        raise h.arg_err()
    field = h.val().removesuffix(":")
    value = h.val() if h.next_arg() else ""
    replacement: str | None = None
    if h.next_arg():
        replacement = h.val()
        if h.next_arg():
            raise h.arg_err()

    request: JSONDict = {}
    try:
        caddyfile_header_op(request, field, value, replacement)
    except HeaderOpError as exc:
        raise h.err(str(exc)) from None
    return h.new_route(matcher_set, {"handler": "headers", "request": request})


register_directive("header", parse_header)
register_directive("request_header", parse_request_header)
