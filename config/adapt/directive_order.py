"""Directive order and route assembly: how a block's directives become one ordered subroute.

Caddyfile directives may be written in any order; the HTTP handlers they make run in a
fixed order (Caddy's `defaultDirectiveOrder`, adjustable with the `order` global option).
Within one directive, routes with more specific path matchers go first. Some directives
(`handle`, `rewrite`, `root`) are mutually exclusive and share a route group.

This module also parses a block of directives (the body of `handle`, `route`, ...) into
config values, since that is the other half of building a subroute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from config.adapt.helper import DIRECTIVES, ConfigValue, GroupCounter, Helper, JSONDict
from config.caddyfile.dispenser import Dispenser
from config.errors import ConfigError

DEFAULT_DIRECTIVE_ORDER: tuple[str, ...] = (
    "tracing",
    "map",
    "vars",
    "fs",
    "root",
    "log_append",
    "skip_log",
    "log_skip",
    "log_name",
    "header",
    "copy_response_headers",
    "request_body",
    "timeouts",
    "redir",
    "method",
    "rewrite",
    "uri",
    "try_files",
    "basicauth",
    "basic_auth",
    "forward_auth",
    "request_header",
    "encode",
    "push",
    "intercept",
    "templates",
    "invoke",
    "handle",
    "handle_path",
    "route",
    "abort",
    "error",
    "copy_response",
    "respond",
    "metrics",
    "reverse_proxy",
    "php_fastcgi",
    "file_server",
    "acme_server",
)

# Directives whose routes must not cascade: only the first matching one runs.
MUTUALLY_EXCLUSIVE = ("handle", "rewrite", "root")  # sorted: group numbers depend on it

T = TypeVar("T")


def current_order(options: dict[str, Any]) -> list[str]:
    """The directive order in effect (the `order` option stores the whole new list)."""
    order = options.get("order")
    if isinstance(order, list):
        return order
    return list(DEFAULT_DIRECTIVE_ORDER)


def reorder(order: list[str], directive: str, position: str, other: str | None) -> list[str]:
    """Move `directive` first/last or before/after `other` (the `order` option)."""
    new = [d for d in order if d != directive]
    if position == "first":
        return [directive, *new]
    if position == "last":
        return [*new, directive]
    assert other is not None
    index = new.index(other)
    if position == "after":
        index += 1
    new.insert(index, directive)
    return new


def normalize_directive_name(directive: str) -> str:
    """`handle_path` sorts (and groups) exactly like `handle`."""
    return "handle" if directive == "handle_path" else directive


def _single_path(route: JSONDict) -> str | None:
    match = route.get("match") or []
    if len(match) != 1:
        return None
    paths = match[0].get("path")
    if isinstance(paths, list) and len(paths) == 1:
        return str(paths[0])
    return None


def sort_routes(routes: list[ConfigValue], order: list[str]) -> None:
    """Stable sort by directive position, then by path matcher specificity."""
    positions = {d: i for i, d in enumerate(order)}

    def less(a: ConfigValue, b: ConfigValue) -> bool:
        if a.directive != b.directive:
            return positions.get(a.directive, 0) < positions.get(b.directive, 0)
        if not isinstance(a.value, dict) or not isinstance(b.value, dict):
            return False
        a_path, b_path = _single_path(a.value), _single_path(b.value)
        if a_path and b_path:
            a_trim, b_trim = a_path.removesuffix("*"), b_path.removesuffix("*")
            if a_trim == b_trim:
                by_path = len(a_path) < len(b_path)
            elif len(a_trim) == len(b_trim):
                by_path = a_trim < b_trim
            else:
                by_path = len(a_trim) > len(b_trim)
        else:
            by_path = bool(a.value.get("match")) and not b.value.get("match")
        # `vars` is the one directive where the least specific goes first, so
        # that more specific values overwrite it
        return not by_path if a.directive == "vars" else by_path

    go_stable_sort(routes, less)


def go_stable_sort(items: list[T], less: Callable[[T, T], bool]) -> None:
    """Go's sort.SliceStable, step for step (insertion sort in blocks of 20, then
    SymMerge), so that even Caddy's not-quite-consistent comparisons give Caddy's order."""
    n = len(items)

    def lt(i: int, j: int) -> bool:
        return less(items[i], items[j])

    def swap(i: int, j: int) -> None:
        items[i], items[j] = items[j], items[i]

    def insertion_sort(a: int, b: int) -> None:
        for i in range(a + 1, b):
            j = i
            while j > a and lt(j, j - 1):
                swap(j, j - 1)
                j -= 1

    def swap_range(a: int, b: int, count: int) -> None:
        for i in range(count):
            swap(a + i, b + i)

    def rotate(a: int, m: int, b: int) -> None:
        i, j = m - a, b - m
        while i != j:
            if i > j:
                swap_range(m - i, m, j)
                i -= j
            else:
                swap_range(m - i, m + j - i, i)
                j -= i
        swap_range(m - i, m, i)

    def sym_merge(a: int, m: int, b: int) -> None:
        if m - a == 1:
            i, j = m, b
            while i < j:
                h = (i + j) >> 1
                if lt(h, a):
                    i = h + 1
                else:
                    j = h
            for k in range(a, i - 1):
                swap(k, k + 1)
            return
        if b - m == 1:
            i, j = a, m
            while i < j:
                h = (i + j) >> 1
                if not lt(m, h):
                    i = h + 1
                else:
                    j = h
            for k in range(m, i, -1):
                swap(k, k - 1)
            return
        mid = (a + b) >> 1
        total = mid + m
        if m > mid:
            start, r = total - b, mid
        else:
            start, r = a, m
        p = total - 1
        while start < r:
            c = (start + r) >> 1
            if not lt(p - c, c):
                start = c + 1
            else:
                r = c
        end = total - start
        if start < m < end:
            rotate(start, m, end)
        if a < start < mid:
            sym_merge(a, start, mid)
        if mid < end < b:
            sym_merge(mid, end, b)

    block = 20
    a, b = 0, block
    while b <= n:
        insertion_sort(a, b)
        a, b = b, b + block
    insertion_sort(a, n)
    while block < n:
        a, b = 0, 2 * block
        while b <= n:
            sym_merge(a, a + block, b)
            a, b = b, b + 2 * block
        if a + block < n:
            sym_merge(a, a + block, n)
        block *= 2


def consolidate_routes(routes: list[JSONDict]) -> list[JSONDict]:
    """Merge adjacent routes with equal matchers, terminal flag and group."""
    out: list[JSONDict] = []
    for route in routes:
        if out:
            last = out[-1]
            if (
                last.get("match") == route.get("match")
                and bool(last.get("terminal")) == bool(route.get("terminal"))
                and last.get("group", "") == route.get("group", "")
            ):
                handlers = list(last.get("handle", [])) + list(route.get("handle", []))
                merged = dict(last)
                if handlers:
                    merged["handle"] = handlers
                out[-1] = merged
                continue
        out.append(dict(route))
    return out


def subroute_handler(routes: list[JSONDict]) -> JSONDict:
    handler: JSONDict = {"handler": "subroute"}
    if routes:
        handler["routes"] = routes
    return handler


def build_subroute(
    values: list[ConfigValue],
    group_counter: GroupCounter,
    needs_sorting: bool,
    order: list[str],
) -> list[JSONDict]:
    """Turn route config values into an ordered list of routes (a subroute's routes)."""
    if needs_sorting:
        for v in values:
            if v.directive not in order:
                raise ConfigError(
                    f"directive '{v.directive}' is not an ordered HTTP handler, so it cannot "
                    "be used here - try placing within a route block or using the order "
                    "global option"
                )
        sort_routes(values, order)

    groups: dict[str, str] = {}
    for directive in MUTUALLY_EXCLUSIVE:
        count = sum(1 for v in values if v.directive == directive)
        # rewrite always gets its own group (even alone), so that it is never
        # consolidated with neighbouring routes: a rewrite changes what later
        # matchers see (caddy#3108); this also consumes a group number per call
        if count > 1 or directive == "rewrite":
            groups[directive] = group_counter.next_group()

    routes: list[JSONDict] = []
    for v in values:
        value = v.value
        if v.directive in MUTUALLY_EXCLUSIVE and isinstance(value, dict):
            value = dict(value)
            group = groups.get(v.directive, "")
            if group:
                value["group"] = group
            else:
                value.pop("group", None)
        if isinstance(value, list):
            # a bare list of routes: keep them together and in order, unwrapped
            routes.extend(dict(r) for r in value)
        elif isinstance(value, dict):
            routes.append(value)
    return consolidate_routes(routes)


def define_matchers(d: Dispenser, matcher_defs: dict[str, JSONDict]) -> None:
    """Parse one `@name ...` matcher definition segment into `matcher_defs`."""
    try:
        from config.adapt.matchers import parse_matcher_definitions
    except ImportError:  # the matchers module is written separately
        tok = d.tokens[0]
        raise ConfigError(
            f"{tok.file}:{tok.line}: named matchers are not available", tok.file, tok.line
        ) from None
    parse_matcher_definitions(d, matcher_defs)


def parse_segment_as_config(h: Helper) -> list[ConfigValue]:
    """Parse the block of the directive `h` is on as a list of nested directives."""
    results: list[ConfigValue] = []
    d = h.dispenser
    while d.next():
        if d.next_arg():
            raise d.arg_err()
        segments = []
        nesting = d.nesting
        while d.next_block(nesting):
            segments.append(d.next_segment())

        matcher_defs = dict(h.matcher_defs)
        directive_segments = []
        for seg in segments:
            if seg[0].text.startswith("@"):
                define_matchers(Dispenser(seg), matcher_defs)
            else:
                directive_segments.append(seg)

        block_state = dict(h.block_state)
        for seg in directive_segments:
            name = seg[0].text
            parser = DIRECTIVES.get(name)
            if parser is None:
                raise d.err(
                    f"unrecognized directive: {name} - are you sure your Caddyfile structure "
                    "(nesting and braces) is correct?"
                )
            sub = h.with_dispenser(Dispenser(seg))
            sub.matcher_defs = matcher_defs
            sub.block_state = block_state
            try:
                values = parser(sub)
            except ConfigError as exc:
                raise d.err(f"parsing caddyfile tokens for '{name}': {exc.message}") from None
            name = normalize_directive_name(name)
            for value in values:
                value.directive = name
                results.append(value)
    return results


def parse_segment_as_subroute(h: Helper) -> JSONDict:
    """The block of the current directive as a `subroute` handler (what `handle` makes)."""
    values = parse_segment_as_config(h)
    routes = build_subroute(values, h.group_counter, True, current_order(h.options))
    return subroute_handler(routes)
