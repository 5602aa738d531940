"""Header manipulation: the mutable `Headers` container and Caddy's header operations.

This module owns
  - `Headers`: the ordered, case-insensitive multi-map of header fields that the engine uses
    for request and response heads (names keep their spelling; lookups ignore case);
  - Caddy's `http.handlers.headers` semantics (`request` / `response` ops with `add`, `set`,
    `delete` incl. `*`, `X-*`, `*-Y`, `*x*`, `replace` with `search` / `search_regexp`,
    response `require` and `deferred`), compiled once into `HeaderOps` objects. The same JSON
    shape is used by reverse_proxy's `headers` field, so it compiles with the same function.

Order inside one ops object is Caddy's (headers.go ApplyTo): `delete "*"` first, then add,
then set, then the other deletes, then replace. Values go through the placeholder templates
with unknown placeholders kept (Caddy's ReplaceKnown), and CR/LF in produced values become
spaces, as Go's header writer does, so a request value can never inject a header line.

Pure: no sockets, no asyncio.

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any, Final

from proxy.matchers import ResponseMatcher, compile_go_regexp, compile_response_matcher
from proxy.placeholders import ResponseHeaderSource, Template, compile_template
from proxy.request_view import RequestView

__all__ = [
    "HeaderOps",
    "Headers",
    "HeadersHandler",
    "ResponseHeaderOps",
    "canonical_header_name",
    "compile_header_ops",
    "compile_headers_handler",
]


class Headers:
    """Ordered header fields with case-insensitive access.

    Stored as a list of (lowercase name, name, value) triples: order and duplicates are
    preserved for the wire, and the lowercase copy makes lookups a plain string compare.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str, str]] = [(n.lower(), n, v) for n, v in items]

    @classmethod
    def from_raw(cls, pairs: Iterable[tuple[bytes, bytes]]) -> Headers:
        """From raw byte pairs as the parser gives them (latin-1 keeps every byte)."""
        new = cls()
        decoded = [(rn.decode("latin-1"), rv.decode("latin-1")) for rn, rv in pairs]
        new._items = [(n.lower(), n, v) for n, v in decoded]
        return new

    # -- reading -----------------------------------------------------------------------------

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name`, or `default`."""
        key = name.lower()
        for lname, _, value in self._items:
            if lname == key:
                return value
        return default

    def getall(self, name: str) -> list[str]:
        """Every value of `name`, in order ([] when absent)."""
        key = name.lower()
        return [value for lname, _, value in self._items if lname == key]

    # RequestView-style names, so an engine request object can delegate to its Headers.
    # (Methods, not class-level aliases: mypyc compiles this class, see proxy/native.py.)
    def header(self, name: str, default: str | None = None) -> str | None:
        return self.get(name, default)

    def header_values(self, name: str) -> list[str]:
        return self.getall(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower()
        return any(lname == key for lname, _, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter([(name, value) for _, name, value in self._items])

    def items(self) -> list[tuple[str, str]]:
        return [(name, value) for _, name, value in self._items]

    def names(self) -> list[str]:
        """Distinct lowercase field names, in order of first appearance."""
        return list(dict.fromkeys([lname for lname, _, _ in self._items]))

    def copy(self) -> Headers:
        new = Headers()
        new._items = list(self._items)
        return new

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self.items() == other.items()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"

    def encode(self) -> bytes:
        """HTTP/1 header lines ("Name: value\\r\\n" each); latin-1, UTF-8 where needed."""
        out = []
        for _, name, value in self._items:
            line = f"{name}: {value}\r\n"
            try:
                out.append(line.encode("latin-1"))
            except UnicodeEncodeError:
                out.append(line.encode("utf-8"))
        return b"".join(out)

    # -- writing -----------------------------------------------------------------------------

    def add(self, name: str, value: str) -> None:
        """Append a field (keeps existing values of the same name)."""
        self._items.append((name.lower(), name, value))

    def set(self, name: str, value: str) -> None:
        """Make `value` the only value of `name` (at the position of its first occurrence)."""
        key = name.lower()
        items = self._items
        for i, (lname, _, _) in enumerate(items):
            if lname == key:
                items[i] = (key, name, value)
                j = i + 1
                while j < len(items):
                    if items[j][0] == key:
                        del items[j]
                    else:
                        j += 1
                return
        items.append((key, name, value))

    def setdefault(self, name: str, value: str) -> str:
        existing = self.get(name)
        if existing is not None:
            return existing
        self.add(name, value)
        return value

    def delete(self, name: str) -> int:
        """Remove every value of `name`; returns how many were removed."""
        key = name.lower()
        before = len(self._items)
        self._items = [item for item in self._items if item[0] != key]
        return before - len(self._items)

    def delete_where(self, predicate: Callable[[str], bool]) -> int:
        """Remove fields whose lowercase name satisfies `predicate`; returns the count."""
        before = len(self._items)
        self._items = [item for item in self._items if not predicate(item[0])]
        return before - len(self._items)

    def map_values(self, name_predicate: Callable[[str], bool], fn: Callable[[str], str]) -> None:
        """Replace each value of the fields selected by lowercase name with fn(value)."""
        items = self._items
        for i, (lname, name, value) in enumerate(items):
            if name_predicate(lname):
                items[i] = (lname, name, fn(value))

    def clear(self) -> None:
        self._items.clear()


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------

_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def canonical_header_name(name: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey: "x-foo-bar" → "X-Foo-Bar".

    Names with characters outside the token set are returned unchanged, as Go does.
    """
    if not name or any(c not in _TOKEN_CHARS for c in name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _sanitize(value: str) -> str:
    # Go's header writer turns CR and LF into spaces; doing it here keeps placeholder values
    # taken from the request (query, other headers) from splitting a header line.
    if "\r" in value or "\n" in value:
        return value.replace("\r", " ").replace("\n", " ")
    return value


_Text = str | Template


def _text(value: str) -> _Text:
    """A literal stays a str (fast); anything with braces becomes a ReplaceKnown template."""
    if "{" not in value and "}" not in value:
        return value
    return compile_template(value)


def _eval(text: _Text, req: RequestView, resp: ResponseHeaderSource | None) -> str:
    return text if isinstance(text, str) else text(req, resp)


def _expect(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"{what} must be a {kind.__name__}, not {type(value).__name__}")
    return value


def _name_predicate(pattern: str) -> Callable[[str], bool]:
    """Delete patterns on lowercase names: "*x*" contains, "*x" suffix, "x*" prefix, exact."""
    if len(pattern) >= 2 and pattern.startswith("*") and pattern.endswith("*"):
        sub = pattern[1:-1]
        return lambda name: sub in name
    if pattern.startswith("*"):
        suffix = pattern[1:]
        return lambda name: name.endswith(suffix)
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        return lambda name: name.startswith(prefix)
    return lambda name: name == pattern


# Go's Regexp.Expand: "$1", "${1}", "$name", "${name}", "$$"; anything else after '$' is
# literal. A piece is a literal str, or an int / name (in a 1-tuple) naming a group.
_Expansion = tuple[str | tuple[int | str], ...]
_NAME_CHARS: Final = re.compile(r"[A-Za-z0-9_]+")


@lru_cache(maxsize=512)
def _parse_expansion(template: str) -> _Expansion:
    pieces: list[str | tuple[int | str]] = []
    literal: list[str] = []
    i = 0
    n = len(template)
    while i < n:
        ch = template[i]
        if ch != "$":
            literal.append(ch)
            i += 1
            continue
        if template[i + 1 : i + 2] == "$":
            literal.append("$")
            i += 2
            continue
        name = ""
        end = i + 1
        if template[i + 1 : i + 2] == "{":
            close = template.find("}", i + 2)
            candidate = template[i + 2 : close] if close >= 0 else ""
            if candidate and _NAME_CHARS.fullmatch(candidate):
                name, end = candidate, close + 1
        else:
            m = _NAME_CHARS.match(template, i + 1)
            if m:
                name, end = m.group(0), m.end()
        if not name:
            literal.append("$")
            i += 1
            continue
        if literal:
            pieces.append("".join(literal))
            literal = []
        pieces.append((int(name),) if name.isdigit() else (name,))
        i = end
    if literal:
        pieces.append("".join(literal))
    return tuple(pieces)


def _expand(pieces: _Expansion, m: re.Match[str]) -> str:
    out = []
    for piece in pieces:
        if isinstance(piece, str):
            out.append(piece)
            continue
        ref = piece[0]
        if isinstance(ref, int):
            if ref <= m.re.groups:
                out.append(m.group(ref) or "")
        elif ref in m.re.groupindex:
            out.append(m.group(ref) or "")
    return "".join(out)


@lru_cache(maxsize=256)
def _dynamic_regex(pattern: str) -> re.Pattern[str] | None:
    # A search_regexp with placeholders compiles per distinct value; a bad one is skipped
    # (Caddy ignores the replacement when the evaluated regexp does not compile).
    try:
        return compile_go_regexp(pattern)
    except ValueError:
        return None


class _Replacement:
    __slots__ = ("regex", "regex_text", "replace", "search")

    def __init__(self, spec: Any, field: str) -> None:
        _expect(spec, dict, f"replacement for header field '{field}'")
        for key in spec:
            if key not in ("search", "search_regexp", "replace"):
                raise ValueError(f"replacement for header field '{field}': unknown field {key!r}")
        search = _expect(spec.get("search", ""), str, "search")
        search_regexp = _expect(spec.get("search_regexp", ""), str, "search_regexp")
        if search and search_regexp:
            raise ValueError(
                "cannot specify both a substring search and a regular expression search for "
                f"field '{field}'"
            )
        self.search: _Text = _text(search)
        self.replace: _Text = _text(_expect(spec.get("replace", ""), str, "replace"))
        self.regex: re.Pattern[str] | None = None
        self.regex_text: _Text | None = None
        if search_regexp:
            _, brace, after = search_regexp.partition("{")
            if brace and after.find("}") > 0:
                # Caddy compiles regexps with placeholders per request (containsPlaceholders).
                self.regex_text = compile_template(search_regexp)
            else:
                try:
                    self.regex = compile_go_regexp(search_regexp)
                except ValueError as exc:
                    raise ValueError(f"replacement for header field '{field}': {exc}") from exc

    def transformer(
        self, req: RequestView, resp: ResponseHeaderSource | None
    ) -> Callable[[str], str]:
        replace = _sanitize(_eval(self.replace, req, resp))
        regex = self.regex
        if regex is None and self.regex_text is not None:
            regex = _dynamic_regex(_eval(self.regex_text, req, resp))
            if regex is None:
                return lambda value: value
        if regex is not None:
            return _regex_transformer(regex, replace)
        search = _eval(self.search, req, resp)
        return lambda value: value.replace(search, replace)


def _regex_transformer(regex: re.Pattern[str], replace: str) -> Callable[[str], str]:
    pieces = _parse_expansion(replace)
    sub = regex.sub
    first = pieces[0] if pieces else ""
    if len(pieces) <= 1 and isinstance(first, str):
        constant: str = first
        # A function replacement keeps re.sub from interpreting backslashes in the text.
        return lambda value: sub(lambda m: constant, value)
    return lambda value: sub(lambda m: _expand(pieces, m), value)


# ------------------------------------------------------------------------------------------
# Compiled operations
# ------------------------------------------------------------------------------------------


class HeaderOps:
    """One compiled `{"add", "set", "delete", "replace"}` object."""

    __slots__ = ("_add", "_clear_all", "_delete", "_delete_dynamic", "_replace", "_set")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        _expect(spec, dict, "header ops")
        for key in spec:
            if key not in ("add", "set", "delete", "replace"):
                raise ValueError(f"header ops: unknown field {key!r}")
        self._add = self._fields(spec.get("add") or {}, "add")
        self._set = self._fields(spec.get("set") or {}, "set")
        deletes = _expect(spec.get("delete") or [], list, "delete")
        self._clear_all = False
        static_preds: list[Callable[[str], bool]] = []
        self._delete_dynamic: list[Template] = []
        for entry in deletes:
            _expect(entry, str, "delete entry")
            text = _text(entry)
            if not isinstance(text, str):
                self._delete_dynamic.append(text)
            elif entry == "*":
                self._clear_all = True
            else:
                static_preds.append(_name_predicate(entry.lower()))
        self._delete: Callable[[str], bool] | None = _any_of(static_preds)
        self._replace: list[tuple[_Text, list[_Replacement]]] = []
        for field, replacements in (_expect(spec.get("replace") or {}, dict, "replace")).items():
            reps = [_Replacement(r, field) for r in _expect(replacements, list, "replacements")]
            self._replace.append((_text(field), reps))

    @staticmethod
    def _fields(spec: Any, what: str) -> list[tuple[_Text, list[_Text]]]:
        _expect(spec, dict, what)
        fields = []
        for name, values in spec.items():
            _expect(values, list, f"{what} values for {name!r}")
            texts = [_text(_expect(v, str, f"{what} value")) for v in values]
            name_text = _text(name)
            if isinstance(name_text, str):
                name_text = canonical_header_name(name_text)
            # Literal values are sanitized once here; templated ones at apply time.
            fields.append((name_text, [_sanitize(t) if isinstance(t, str) else t for t in texts]))
        return fields

    @property
    def is_empty(self) -> bool:
        return not (
            self._add
            or self._set
            or self._clear_all
            or self._delete
            or self._delete_dynamic
            or self._replace
        )

    def apply(
        self,
        headers: Headers | list[tuple[str, str]],
        req: RequestView,
        resp: ResponseHeaderSource | None = None,
    ) -> Headers:
        """Apply the ops to `headers` in place and return it.

        A plain list of (name, value) pairs is accepted too: it is wrapped in a new Headers,
        which is returned (the list itself is not changed). `resp` is what
        `{http.response.header.*}` reads; pass the response headers for response ops
        (ResponseHeaderOps does), None for request ops.
        """
        if not isinstance(headers, Headers):
            headers = Headers(headers)
        dynamic_deletes: list[str] = []
        if self._delete_dynamic:
            dynamic_deletes = [tpl(req, resp).lower() for tpl in self._delete_dynamic]
        if self._clear_all or "*" in dynamic_deletes:
            headers.clear()
        for name_text, values in self._add:
            name = _field_name(name_text, req, resp)
            for value in values:
                headers.add(name, value if isinstance(value, str) else _sanitize(value(req, resp)))
        for name_text, values in self._set:
            name = _field_name(name_text, req, resp)
            joined = ",".join(v if isinstance(v, str) else _sanitize(v(req, resp)) for v in values)
            headers.set(name, joined)
        if self._delete is not None:
            headers.delete_where(self._delete)
        for pattern in dynamic_deletes:
            if pattern != "*":
                headers.delete_where(_name_predicate(pattern))
        for field_text, replacements in self._replace:
            selector = _field_selector(_eval(field_text, req, resp).lower())
            for replacement in replacements:
                headers.map_values(selector, replacement.transformer(req, resp))
        return headers


def _field_selector(field: str) -> Callable[[str], bool]:
    if field == "*":
        return lambda name: True
    return lambda name: name == field


def _field_name(text: _Text, req: RequestView, resp: ResponseHeaderSource | None) -> str:
    return text if isinstance(text, str) else canonical_header_name(text(req, resp))


def _any_of(preds: list[Callable[[str], bool]]) -> Callable[[str], bool] | None:
    if not preds:
        return None
    if len(preds) == 1:
        return preds[0]
    return lambda name: any(p(name) for p in preds)


class ResponseHeaderOps:
    """Response ops: `ops` applied only when `require` matches the response.

    When `deferred` is False and `require` is None, Caddy applies the ops right away to the
    response header map before the next handler runs (so e.g. a proxied upstream's values
    are added to them); otherwise they are applied when the status line is written. The
    engine decides the timing from `apply_on_write`; `apply` does the matching and ops.
    """

    __slots__ = ("apply_on_write", "deferred", "ops", "require")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        _expect(spec, dict, "response header ops")
        op_keys = {"add", "set", "delete", "replace"}
        for key in spec:
            if key not in op_keys | {"require", "deferred"}:
                raise ValueError(f"response header ops: unknown field {key!r}")
        ops_spec = {k: v for k, v in spec.items() if k in op_keys}
        self.ops: HeaderOps | None = HeaderOps(ops_spec) if ops_spec else None
        require = spec.get("require")
        self.require: ResponseMatcher | None = (
            compile_response_matcher(require) if require is not None else None
        )
        self.deferred: bool = bool(_expect(spec.get("deferred", False), bool, "deferred"))
        self.apply_on_write: bool = self.deferred or self.require is not None

    def apply(self, status: int, headers: Headers, req: RequestView) -> bool:
        """Apply to the response `headers` if `require` matches; returns whether it applied.

        Caddy skips 1xx informational statuses for the "written" decision but still runs
        the ops for them; the engine should call this for the final status.
        """
        if self.require is not None and not self.require(status, headers):
            return False
        if self.ops is not None:
            self.ops.apply(headers, req, headers)
        return True


class HeadersHandler:
    """A compiled `headers` handler (or reverse_proxy `headers` field)."""

    __slots__ = ("request", "response")

    def __init__(self, request: HeaderOps | None, response: ResponseHeaderOps | None) -> None:
        self.request = request
        self.response = response


def compile_header_ops(spec: Mapping[str, Any] | None) -> HeaderOps | None:
    """Compile one ops object (`add`/`set`/`delete`/`replace`); None or {} gives None."""
    if not spec:
        return None
    return HeaderOps(spec)


def compile_headers_handler(spec: Mapping[str, Any] | None) -> HeadersHandler:
    """Compile `{"request": {...}, "response": {...}}` (a `"handler"` key is ignored)."""
    if spec is None:
        return HeadersHandler(None, None)
    _expect(spec, dict, "headers handler")
    for key in spec:
        if key not in ("handler", "request", "response"):
            raise ValueError(f"headers handler: unknown field {key!r}")
    request_spec = spec.get("request")
    response_spec = spec.get("response")
    request = compile_header_ops(request_spec) if request_spec is not None else None
    response = ResponseHeaderOps(response_spec) if response_spec is not None else None
    return HeadersHandler(request, response)
