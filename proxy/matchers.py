"""Request and response matchers: Caddy's `match` JSON compiled into fast predicates.

This module owns the semantics of Caddy's `http.matchers.*` modules (host, path, path_regexp,
header, header_regexp, method, query, not, remote_ip, client_ip, protocol, tls, vars,
vars_regexp) and of the response matcher (`status_code` + `headers`) used by `headers`,
`encode`, `intercept` and friends. Everything is compiled once per config: hosts into a
lowercase set plus per-label wildcard patterns, paths into prefix/suffix/exact/regex tests,
IP ranges into integer masks; at request time only cheap string and integer work remains.

Route semantics (caddyhttp.RawMatcherSets): a route's `match` is a list of matcher sets that
are OR'ed; the matchers inside one set are AND'ed; no sets at all matches everything.

Regexp matchers record their captures into `req.vars` under the placeholder keys Caddy uses
(`http.regexp.NAME.1`, `http.regexp.1`, named groups too), so `{http.regexp.NAME.1}` in a
later template reads them (see proxy.placeholders).

Pure: no sockets, no asyncio.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from ipaddress import ip_address, ip_network
from typing import Any

# Caddy's `private_ranges` shorthand (internal.PrivateRangesCIDR), re-exported.
from config.go_values import PRIVATE_RANGES
from proxy.http.fields import status_code_matches
from proxy.http.target import clean_path, unescape_path
from proxy.placeholders import (
    ResponseHeaderSource,
    Template,
    compile_template,
    has_placeholders,
    parse_query,
    parse_query_strict,
    replace_global,
    request_hostname,
    request_hostname_lower,
    to_placeholder_string,
)
from proxy.request_view import RequestView

__all__ = [
    "PRIVATE_RANGES",
    "Matcher",
    "ResponseMatcher",
    "clean_path",
    "compile_go_regexp",
    "compile_matcher_set",
    "compile_matcher_sets",
    "compile_response_matcher",
    "register_matcher",
    "status_code_matches",
]

Matcher = Callable[[RequestView], bool]
ResponseMatcher = Callable[[int, ResponseHeaderSource], bool]
# A factory takes the matcher's JSON value and returns the compiled predicate.
MatcherFactory = Callable[[Any], Matcher]


def _always(req: RequestView) -> bool:
    return True


def _never(req: RequestView) -> bool:
    return False


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ValueError(f"{what} must be a {names}, not {type(value).__name__}")
    return value


def _string_list(value: Any, what: str) -> list[str]:
    _expect(value, list, what)
    for item in value:
        _expect(item, str, f"{what} item")
    return list(value)


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def _class_char(pat: str, i: int) -> tuple[str, int] | None:
    # One (possibly escaped) character of a [...] class; '-' and ']' must be escaped (Go).
    if i >= len(pat) or pat[i] in "-]":
        return None
    if pat[i] == "\\":
        i += 1
        if i >= len(pat):
            return None
    return pat[i], i + 1


def _glob_class(pat: str, i: int) -> tuple[str, int] | None:
    """Translate a Go path.Match character class starting after '['; None if malformed."""
    negate = i < len(pat) and pat[i] == "^"
    if negate:
        i += 1
    ranges: list[str] = []
    count = 0
    while True:
        if i < len(pat) and pat[i] == "]" and count:
            i += 1
            break
        got = _class_char(pat, i)
        if got is None:
            return None
        lo, i = got
        hi = lo
        if i < len(pat) and pat[i] == "-":
            got = _class_char(pat, i + 1)
            if got is None:
                return None
            hi, i = got
        count += 1
        if lo <= hi:  # Go silently never matches an inverted range; Python would reject it
            ranges.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
    if not ranges:
        return ("(?s:.)" if negate else "(?!)"), i
    return "[" + ("^" if negate else "") + "".join(ranges) + "]", i


@lru_cache(maxsize=1024)
def _glob_regex(pat: str) -> re.Pattern[str] | None:
    """Go's path.Match as a regex: '*' and '?' never cross '/'; None if malformed."""
    out: list[str] = []
    i = 0
    n = len(pat)
    while i < n:
        ch = pat[i]
        if ch == "*":
            out.append("[^/]*")
            i += 1
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "[":
            got = _glob_class(pat, i + 1)
            if got is None:
                return None
            out.append(got[0])
            i = got[1]
        elif ch == "\\":
            if i + 1 >= n:
                return None
            out.append(re.escape(pat[i + 1]))
            i += 2
        else:
            out.append(re.escape(ch))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def _match_escape_pattern(escaped_path: str, pattern: str) -> bool:
    """Caddy's MatchPath.matchPatternWithEscapeSequence (modules/caddyhttp/matchers.go).

    A pattern with `%` compares the request in escaped space where the pattern has an escape
    ("/a%2fb" matches "/a%2Fb" but not "/a/b") and decoded elsewhere. The lock-step walk
    below builds that mixed string, which path.Match then compares with the pattern (`%*`
    read as `*`). It mirrors Caddy's walk byte for byte, quirks included: a `*` spans up to
    the first path byte equal to the pattern byte after it, and, when the path byte at the
    `*` was an escape, starts after that escape's first two bytes. Since Caddy #7828 the
    path left over when the pattern ends is appended (decoded), so "/foo%2fbar" no longer
    matches "/foo%2fbarbaz" (Caddy 2.6.2 treated the pattern as a prefix there).
    """
    path = escaped_path.lower().encode("utf-8", "surrogateescape")
    pat = pattern.encode("utf-8")
    built = bytearray()
    i_pat = i_path = 0
    n_pat = len(pat)
    n_path = len(path)
    while i_pat < n_pat and i_path < n_path:
        path_ch = path[i_path : i_path + 1]
        escape_seq = b""
        if path_ch == b"%" and n_path >= i_path + 3:
            escape_seq = path[i_path : i_path + 3]
            decoded = unescape_path(escape_seq.decode("latin-1"))
            if decoded is None:
                return False  # Caddy: impossible for a valid EscapedPath()
            path_ch = decoded
            i_path += 2
        pat_ch = pat[i_pat]
        normalize = True
        wildcard = pat_ch == 0x2A  # '*'
        if pat_ch == 0x25:  # '%'
            if n_pat >= i_pat + 3 and pat[i_pat + 1] != 0x2A:
                # an escape in the pattern: take the path's escape (empty if it had none)
                built += escape_seq
                i_path += 1
                i_pat += 3
                continue
            i_pat += 1  # "%*": a wildcard over escaped text
            normalize = False
            wildcard = True
        if wildcard:
            remaining = path[i_path:]
            until = len(remaining)
            if i_pat < n_pat - 1:
                until = remaining.find(pat[i_pat + 1 : i_pat + 2])
                if until == -1:
                    return False
            if until > 0:
                span = remaining[:until]
                if normalize:
                    unescaped = unescape_path(span.decode("latin-1"))
                    if unescaped is None:
                        return False
                    span = unescaped
                built += span
                i_path += until
        else:
            built += path_ch
            i_path += 1
        i_pat += 1
    if i_path < n_path:
        rest = path[i_path:]
        unescaped = unescape_path(rest.decode("latin-1"))
        built += rest if unescaped is None else unescaped
    grx = _glob_regex(pattern.replace("%*", "*"))
    return grx is not None and grx.fullmatch(built.decode("utf-8", "replace").lower()) is not None


# A path test: (collapse_slashes, on_escaped_path, predicate on the cleaned lowercase path).
_PathTest = tuple[bool, bool, Callable[[str], bool]]


def _never_str(text: str) -> bool:
    return False


def _path_test(pattern: str) -> _PathTest:
    """Compile one lowercased path pattern (Caddy's MatchPath rules, in its order).

    The request side is URL.Path lowercased and cleaned (CleanPath, merging slashes unless
    the pattern has "//"), or for a pattern with `%` the cleaned URL.EscapedPath().

    Trailing dots and spaces are NOT trimmed: current Caddy only does that (and folds `\\`
    into `/`) when it runs on Windows (normalizeWindowsPath, since v2.7.0 / caddy#5613,
    per path component since caddy#7858), because only Windows filesystems ignore them.
    pyproxy runs on POSIX, where "/admin." is another file than "/admin". Caddy 2.6.2
    trimmed them from the end of every path on every OS (#2917), so 2.6.2 blocks
    "/admin." with `path /admin`; current Caddy on Linux, and pyproxy, do not.
    """
    collapse = "//" not in pattern
    if "%" in pattern:
        return collapse, True, lambda p: _match_escape_pattern(p, pattern)
    stars = pattern.count("*")
    if stars == 2 and pattern.startswith("*") and pattern.endswith("*"):
        sub = pattern[1:-1]
        return collapse, False, lambda p: sub in p
    if stars == 1 and pattern.startswith("*"):
        suffix = pattern[1:]
        return collapse, False, lambda p: p.endswith(suffix)
    if stars == 1 and pattern.endswith("*"):
        prefix = pattern[:-1]
        return collapse, False, lambda p: p.startswith(prefix)
    if not any(c in pattern for c in "*?[\\"):
        return collapse, False, lambda p: p == pattern
    grx = _glob_regex(pattern)
    if grx is None:
        return collapse, False, _never_str
    gfull = grx.fullmatch
    return collapse, False, lambda p: gfull(p) is not None


_path_test_cached = lru_cache(maxsize=1024)(_path_test)


@lru_cache(maxsize=4096)
def _clean_lower(path: str) -> str:
    # Cached: the same paths recur, and several path matchers may test one request.
    return clean_path(path.lower())


def _run_path_test(test: _PathTest, req: RequestView) -> bool:
    collapse, escaped, pred = test
    if escaped:
        # req.raw_path is URL.EscapedPath(), which Caddy cleans before the escape walk.
        return pred(clean_path(req.raw_path, collapse))
    return pred(clean_path(req.path.lower(), collapse))


def _compile_path(spec: Any) -> Matcher:
    patterns = _string_list(spec, "path matcher")
    static: list[_PathTest] = []
    dynamic: list[Template] = []
    for raw_pattern in patterns:
        if has_placeholders(raw_pattern):
            dynamic.append(compile_template(raw_pattern, empty_unknown=True))
            continue
        pattern = raw_pattern.lower()
        if pattern == "*":
            return _always
        static.append(_path_test(pattern))
    common = [t[2] for t in static if t[0] and not t[1]]
    others = [t for t in static if not (t[0] and not t[1])]

    if not dynamic and not others:
        if not common:
            return _never
        if len(common) == 1:
            only = common[0]
            return lambda req: only(_clean_lower(req.path))

        def match_common(req: RequestView) -> bool:
            path = _clean_lower(req.path)
            for pred in common:  # noqa: SIM110 (a loop beats any() over a generator here)
                if pred(path):
                    return True
            return False

        return match_common

    def match(req: RequestView) -> bool:
        if common:
            path = _clean_lower(req.path)
            for pred in common:
                if pred(path):
                    return True
        for test in others:
            if _run_path_test(test, req):
                return True
        for tpl in dynamic:
            # Caddy lowercases patterns; we lowercase after evaluation so placeholder keys
            # (and the values they produce) stay intact and still compare case-insensitively.
            pattern = tpl(req).lower()
            if pattern == "*" or _run_path_test(_path_test_cached(pattern), req):
                return True
        return False

    return match


# --------------------------------------------------------------------------------------------
# Host
# --------------------------------------------------------------------------------------------


def _ascii_host(host: str) -> str:
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"converting hostname '{host}' to ASCII: {exc}") from exc


def _wildcard_match(labels: tuple[str, ...], host: str) -> bool:
    parts = host.split(".")
    if len(parts) != len(labels):
        return False
    return all(want == "*" or want == got for want, got in zip(labels, parts, strict=True))


def _compile_host(spec: Any) -> Matcher:
    hosts = _string_list(spec, "host matcher")
    exact: set[str] = set()
    wildcards: list[tuple[str, ...]] = []
    dynamic: list[Template] = []
    seen: dict[str, int] = {}
    for i, host in enumerate(hosts):
        normalized = _ascii_host(host).lower()
        if normalized in seen:
            raise ValueError(f"host at index {seen[normalized]} is repeated at index {i}: {host}")
        seen[normalized] = i
        if "{" in normalized:
            dynamic.append(compile_template(_ascii_host(host), empty_unknown=True))
        elif "*" in normalized:
            wildcards.append(tuple(normalized.split(".")))
        else:
            exact.add(normalized)
    exact_set = frozenset(exact)
    wild = tuple(wildcards)

    if not wild and not dynamic:
        if len(exact_set) == 1:
            (single,) = exact_set
            return lambda req: request_hostname_lower(req.host) == single
        return lambda req: request_hostname_lower(req.host) in exact_set

    def match(req: RequestView) -> bool:
        host = request_hostname_lower(req.host)
        if host in exact_set:
            return True
        for labels in wild:
            if _wildcard_match(labels, host):
                return True
        for tpl in dynamic:
            pattern = tpl(req).lower()
            if "*" in pattern:
                if _wildcard_match(tuple(pattern.split(".")), host):
                    return True
            elif pattern == host:
                return True
        return False

    return match


# --------------------------------------------------------------------------------------------
# Method, protocol, tls
# --------------------------------------------------------------------------------------------


def _compile_method(spec: Any) -> Matcher:
    methods = frozenset(m.upper() for m in _string_list(spec, "method matcher"))
    if len(methods) == 1:
        (single,) = methods
        return lambda req: req.method == single
    return lambda req: req.method in methods


@lru_cache(maxsize=16)
def _proto_version(proto: str) -> tuple[int, int]:
    # "HTTP/1.1" → (1, 1); "HTTP/2.0" or "HTTP/2" → (2, 0).
    _, _, version = proto.partition("/")
    major, _, minor = version.partition(".")
    try:
        return int(major), int(minor or "0")
    except ValueError:
        return 0, 0


def _compile_protocol(spec: Any) -> Matcher:
    proto = _expect(spec, str, "protocol matcher").lower()
    if proto == "grpc":
        return lambda req: (req.header("Content-Type") or "").startswith("application/grpc")
    if proto == "https":
        return lambda req: req.scheme == "https"
    if proto == "http":
        return lambda req: req.scheme != "https"
    versions = {
        "http/1.0": lambda v: v == (1, 0),
        "http/1.0+": lambda v: v >= (1, 0),
        "http/1.1": lambda v: v == (1, 1),
        "http/1.1+": lambda v: v >= (1, 1),
        "http/2": lambda v: v[0] == 2,
        "http/2+": lambda v: v >= (2, 0),
        "http/3": lambda v: v[0] == 3,
        "http/3+": lambda v: v >= (3, 0),
    }
    check: Callable[[tuple[int, int]], bool] | None = versions.get(proto)
    if check is None:
        return _never  # Caddy accepts any string here and never matches an unknown one
    return lambda req: check(_proto_version(req.proto))


def _compile_tls(spec: Any) -> Matcher:
    _expect(spec, dict, "tls matcher")
    for key in spec:
        if key != "handshake_complete":
            raise ValueError(f"tls matcher: unknown field {key!r}")
    complete = spec.get("handshake_complete")
    if complete is False:
        return _never  # only TLS 1.3 early data is "incomplete"; we never accept 0-RTT
    return lambda req: req.scheme == "https"


# --------------------------------------------------------------------------------------------
# Headers and query
# --------------------------------------------------------------------------------------------


def _value_test(allowed: str) -> Callable[[str], bool]:
    """Caddy's header value rule: "*" any, "*x*" contains, "*x" suffix, "x*" prefix, else ==."""
    if allowed == "*":
        return lambda value: True
    if len(allowed) >= 2 and allowed[0] == "*" and allowed[-1] == "*":
        sub = allowed[1:-1]
        return lambda value: sub in value
    if allowed.startswith("*"):
        suffix = allowed[1:]
        return lambda value: value.endswith(suffix)
    if allowed.endswith("*"):
        prefix = allowed[:-1]
        return lambda value: value.startswith(prefix)
    return lambda value: value == allowed


_value_test_cached = lru_cache(maxsize=1024)(_value_test)

# Per field: (name, expectation, tests); expectation "absent" (JSON null), "present" (JSON [])
# or "values" (any actual value passes any test).
_FieldSpec = tuple[str, str, tuple[Callable[[RequestView, str], bool], ...]]


def _static_field_test(test: Callable[[str], bool]) -> Callable[[RequestView, str], bool]:
    def run(req: RequestView, actual: str) -> bool:
        return test(actual)

    return run


def _dynamic_field_test(tpl: Template) -> Callable[[RequestView, str], bool]:
    def run(req: RequestView, actual: str) -> bool:
        return _value_test_cached(tpl(req))(actual)

    return run


def _compile_field_specs(spec: Any, what: str, templated: bool) -> list[_FieldSpec]:
    _expect(spec, dict, what)
    fields: list[_FieldSpec] = []
    for name, allowed in spec.items():
        if allowed is None:
            fields.append((name, "absent", ()))
            continue
        values = _string_list(allowed, f"{what} values for {name!r}")
        if not values:
            # Caddy: an empty (non-null) list only requires the field to be present.
            fields.append((name, "present", ()))
            continue
        tests: list[Callable[[RequestView, str], bool]] = []
        for value in values:
            if templated and has_placeholders(value):
                tests.append(_dynamic_field_test(compile_template(value, empty_unknown=True)))
            else:
                tests.append(_static_field_test(_value_test(value)))
        fields.append((name, "values", tuple(tests)))
    return fields


def _field_passes(
    kind: str,
    tests: Iterable[Callable[[RequestView, str], bool]],
    actual: list[str],
    req: RequestView,
) -> bool:
    if kind == "absent":
        return not actual
    if kind == "present":
        return bool(actual)
    return any(test(req, value) for value in actual for test in tests)


def _request_field_values(req: RequestView, name: str) -> list[str]:
    # Go keeps Host out of the header map; Caddy's matchers read it from the request line.
    if name.lower() == "host" and req.host:
        return [req.host]
    return req.header_values(name)


def _compile_header(spec: Any) -> Matcher:
    fields = _compile_field_specs(spec, "header matcher", templated=True)

    def match(req: RequestView) -> bool:
        for name, kind, tests in fields:
            if not _field_passes(kind, tests, _request_field_values(req, name), req):
                return False
        return True

    return match


def _compile_query(spec: Any) -> Matcher:
    _expect(spec, dict, "query matcher")
    if not spec:
        # An empty query matcher matches requests without any query parameters.
        return lambda req: not parse_query(req.query)
    items: list[tuple[str | Template, list[str | Template]]] = []
    for key, values in spec.items():
        vals = _string_list(values, f"query matcher values for {key!r}")
        key_part: str | Template = (
            compile_template(key, empty_unknown=True) if has_placeholders(key) else key
        )
        val_parts: list[str | Template] = [
            compile_template(v, empty_unknown=True) if has_placeholders(v) else v for v in vals
        ]
        items.append((key_part, val_parts))

    def match(req: RequestView) -> bool:
        parsed, ok = parse_query_strict(req.query)
        if not ok:
            return False  # Caddy: an unparsable query never matches a non-empty matcher
        for key_part, val_parts in items:
            key = key_part if isinstance(key_part, str) else key_part(req)
            got = parsed.get(key)
            if got is None:
                return False
            for part in val_parts:
                want = part if isinstance(part, str) else part(req)
                if want == "*" or want in got:
                    break
            else:
                return False
        return True

    return match


# --------------------------------------------------------------------------------------------
# Regexp matchers
# --------------------------------------------------------------------------------------------

_NAMED_GROUP_GO = re.compile(r"\(\?<(?![=!])")
_END_OF_TEXT_GO = re.compile(r"(?<!\\)((?:\\\\)*)\\z")


def compile_go_regexp(pattern: str) -> re.Pattern[str]:
    """Compile an RE2 (Go) pattern with Python's re, translating the syntax that differs.

    Handled: `(?<name>...)` groups and `\\z`. Not handled: `\\Q...\\E`, flags in the middle
    of a pattern; those raise ValueError like any syntax error.
    """
    translated = _NAMED_GROUP_GO.sub("(?P<", pattern)
    translated = _END_OF_TEXT_GO.sub(r"\1\\Z", translated)
    try:
        return re.compile(translated)
    except re.error as exc:
        raise ValueError(f"compiling matcher regexp {pattern}: {exc}") from exc


class _RegexpMatcher:
    """A compiled MatchRegexp: search a value, record captures in req.vars on success."""

    __slots__ = ("_keys", "_search")

    def __init__(self, spec: Any, what: str) -> None:
        _expect(spec, dict, what)
        for key in spec:
            if key not in ("name", "pattern"):
                raise ValueError(f"{what}: unknown field {key!r}")
        name = _expect(spec.get("name", ""), str, f"{what} name")
        pattern = _expect(spec.get("pattern", ""), str, f"{what} pattern")
        if name and not re.search(r"\w", name):
            raise ValueError(f"invalid regexp name (must contain only word characters): {name}")
        compiled = compile_go_regexp(pattern)
        self._search = compiled.search
        # Precompute the var keys each group index is stored under.
        keys: list[tuple[int | str, tuple[str, ...]]] = []
        for i in range(compiled.groups + 1):
            suffix = f".{i}"
            keys.append((i, _capture_keys(name, suffix)))
        for group_name, index in compiled.groupindex.items():
            keys.append((index, _capture_keys(name, "." + group_name)))
        self._keys = tuple(keys)

    def __call__(self, value: str, req: RequestView) -> bool:
        m = self._search(value)
        if m is None:
            return False
        store = req.vars
        for group, keys in self._keys:
            captured = m.group(group) or ""
            for key in keys:
                store[key] = captured
        return True


def _capture_keys(name: str, suffix: str) -> tuple[str, ...]:
    if name:
        return (f"http.regexp.{name}{suffix}", f"http.regexp{suffix}")
    return (f"http.regexp{suffix}",)


def _compile_path_regexp(spec: Any) -> Matcher:
    rx = _RegexpMatcher(spec, "path_regexp matcher")
    # Matched against the cleaned, decoded path (case-sensitive, unlike `path`).
    return lambda req: rx(clean_path(req.path), req)


def _compile_header_regexp(spec: Any) -> Matcher:
    _expect(spec, dict, "header_regexp matcher")
    fields = [
        (name, _RegexpMatcher(rm, f"header_regexp matcher for {name!r}"))
        for name, rm in spec.items()
    ]

    def match(req: RequestView) -> bool:
        for name, rx in fields:
            if not any(rx(value, req) for value in _request_field_values(req, name)):
                return False
        return True

    return match


# --------------------------------------------------------------------------------------------
# Vars
# --------------------------------------------------------------------------------------------


def _var_getter(key: str) -> Callable[[RequestView], str]:
    # A key that is a single placeholder reads that placeholder; otherwise a var name.
    if key.startswith("{") and key.endswith("}") and key.count("{") == 1:
        tpl = compile_template(key, empty_unknown=True)
        return lambda req: tpl(req)

    def get(req: RequestView) -> str:
        value = req.vars.get(key)
        if value is None and key == "client_ip":
            return req.client_ip
        return to_placeholder_string(value)

    return get


def _compile_vars(spec: Any) -> Matcher:
    _expect(spec, dict, "vars matcher")
    items = []
    for key, values in spec.items():
        vals = _string_list(values, f"vars matcher values for {key!r}")
        tpls = [compile_template(v, empty_unknown=True) for v in vals]
        items.append((_var_getter(key), tpls))

    def match(req: RequestView) -> bool:
        for getter, tpls in items:
            actual = getter(req)
            if not any(tpl(req) == actual for tpl in tpls):
                return False
        return True

    return match


def _compile_vars_regexp(spec: Any) -> Matcher:
    _expect(spec, dict, "vars_regexp matcher")
    items = [
        (_var_getter(key), _RegexpMatcher(rm, f"vars_regexp matcher for {key!r}"))
        for key, rm in spec.items()
    ]

    def match(req: RequestView) -> bool:
        return all(rx(getter(req), req) for getter, rx in items)

    return match


# --------------------------------------------------------------------------------------------
# IP ranges
# --------------------------------------------------------------------------------------------

# (ip version, network as int, mask as int, zone or "")
_IPRange = tuple[int, int, int, str]


def _parse_ranges(spec: Any, what: str) -> tuple[_IPRange, ...]:
    _expect(spec, dict, what)
    for key in spec:
        if key == "forwarded":
            raise ValueError(
                "the 'forwarded' option is no longer supported; use the 'client_ip' matcher instead"
            )
        if key != "ranges":
            raise ValueError(f"{what}: unknown field {key!r}")
    texts = _string_list(spec.get("ranges", []), f"{what} ranges")
    ranges: list[_IPRange] = []
    for text in texts:
        if text == "forwarded":
            raise ValueError(
                "the 'forwarded' option is no longer supported; use the 'client_ip' matcher instead"
            )
        if text == "private_ranges":
            ranges.extend(_parse_range(r) for r in PRIVATE_RANGES)
            continue
        ranges.append(_parse_range(replace_global(text)))
    return tuple(ranges)


def _parse_range(text: str) -> _IPRange:
    zone = ""
    if "%" in text:
        text, zone = text.split("%")[:2]
    if "/" in text:
        try:
            net = ip_network(text, strict=False)
        except ValueError as exc:
            raise ValueError(f"parsing CIDR expression '{text}': {exc}") from exc
    else:
        try:
            net = ip_network(ip_address(text))
        except ValueError as exc:
            raise ValueError(f"invalid IP address: '{text}': {exc}") from exc
    return net.version, int(net.network_address), int(net.netmask), zone


@lru_cache(maxsize=4096)
def _parse_request_ip(text: str) -> tuple[int, int, str] | None:
    host = request_hostname(text)
    zone = ""
    if "%" in host:
        host, zone = host.split("%")[:2]
    try:
        addr = ip_address(host)
    except ValueError:
        return None
    if addr.version == 6:
        mapped = addr.ipv4_mapped
        if mapped is not None:
            # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; Go reports a.b.c.d,
            # and IPv4 ranges must match them.
            addr = mapped
    return addr.version, int(addr), zone


def _ip_in(ranges: tuple[_IPRange, ...], text: str) -> bool:
    parsed = _parse_request_ip(text)
    if parsed is None:
        return False
    version, value, zone = parsed
    for r_version, network, mask, r_zone in ranges:
        if r_version == version and value & mask == network and (not r_zone or r_zone == zone):
            return True
    return False


def _compile_remote_ip(spec: Any) -> Matcher:
    ranges = _parse_ranges(spec, "remote_ip matcher")
    return lambda req: _ip_in(ranges, req.remote_ip)


def _compile_client_ip(spec: Any) -> Matcher:
    ranges = _parse_ranges(spec, "client_ip matcher")
    return lambda req: _ip_in(ranges, req.client_ip)


# --------------------------------------------------------------------------------------------
# not, expression, registry, sets
# --------------------------------------------------------------------------------------------


def _compile_not(spec: Any) -> Matcher:
    sets = [compile_matcher_set(s) for s in _expect(spec, list, "not matcher")]
    if len(sets) == 1:
        only = sets[0]
        return lambda req: not only(req)
    return lambda req: not any(s(req) for s in sets)


def _compile_expression(spec: Any) -> Matcher:
    raise ValueError("matcher expression is not supported")


# name → (factory, cost); cheaper matchers run first inside a set so that a failing cheap
# test skips regexes and IP parsing.
_REGISTRY: dict[str, tuple[MatcherFactory, int]] = {
    "method": (_compile_method, 0),
    "protocol": (_compile_protocol, 0),
    "tls": (_compile_tls, 0),
    "host": (_compile_host, 1),
    "path": (_compile_path, 2),
    "query": (_compile_query, 3),
    "header": (_compile_header, 3),
    "vars": (_compile_vars, 3),
    "remote_ip": (_compile_remote_ip, 4),
    "client_ip": (_compile_client_ip, 4),
    "not": (_compile_not, 5),
    "path_regexp": (_compile_path_regexp, 6),
    "header_regexp": (_compile_header_regexp, 6),
    "vars_regexp": (_compile_vars_regexp, 6),
    "expression": (_compile_expression, 9),
}


def register_matcher(name: str, factory: MatcherFactory, cost: int = 5) -> None:
    """Add a matcher implemented elsewhere (e.g. `file`, which needs the filesystem)."""
    _REGISTRY[name] = (factory, cost)


def compile_matcher_set(set_json: Mapping[str, Any]) -> Matcher:
    """One matcher set: every matcher in it must match (an empty set matches everything)."""
    _expect(set_json, dict, "matcher set")
    compiled: list[tuple[int, Matcher]] = []
    for name, spec in set_json.items():
        entry = _REGISTRY.get(name)
        if entry is None:
            raise ValueError(f"unknown matcher: {name}")
        factory, cost = entry
        try:
            compiled.append((cost, factory(spec)))
        except ValueError as exc:
            message = str(exc)
            if message.startswith(name) or name == "expression" or name == "not":
                raise
            raise ValueError(f"{name} matcher: {message}") from exc
    compiled.sort(key=lambda item: item[0])
    matchers = tuple(m for _, m in compiled)
    if not matchers:
        return _always
    if len(matchers) == 1:
        return matchers[0]
    if len(matchers) == 2:
        first, second = matchers
        return lambda req: first(req) and second(req)

    def match_all(req: RequestView) -> bool:
        # A plain loop: measurably faster than all() over a generator for a handful of items.
        for matcher in matchers:  # noqa: SIM110
            if not matcher(req):
                return False
        return True

    return match_all


def compile_matcher_sets(match_json: list[dict[str, Any]] | None) -> Matcher:
    """A route's `match`: OR of matcher sets; None or [] matches every request."""
    if not match_json:
        return _always
    sets = tuple(compile_matcher_set(s) for s in _expect(match_json, list, "match"))
    if len(sets) == 1:
        return sets[0]

    def match_any(req: RequestView) -> bool:
        for matcher in sets:  # noqa: SIM110
            if matcher(req):
                return True
        return False

    return match_any


# --------------------------------------------------------------------------------------------
# Response matcher
# --------------------------------------------------------------------------------------------


def compile_response_matcher(spec: Mapping[str, Any] | None) -> ResponseMatcher:
    """`{"status_code": [...], "headers": {...}}` → `match(status, headers) -> bool`.

    Header values are not templated here (Caddy matches responses without a replacer).
    """
    if spec is None:
        return lambda status, headers: True
    _expect(spec, dict, "response matcher")
    for key in spec:
        if key not in ("status_code", "headers"):
            raise ValueError(f"response matcher: unknown field {key!r}")
    raw_codes = spec.get("status_code")
    codes: tuple[int, ...] | None = None
    if raw_codes is not None:
        _expect(raw_codes, list, "response matcher status_code")
        for code in raw_codes:
            if not isinstance(code, int) or isinstance(code, bool):
                raise ValueError(f"response matcher status_code must hold integers: {code!r}")
        codes = tuple(raw_codes)
    fields = _compile_field_specs(spec.get("headers") or {}, "response header matcher", False)

    def match(status: int, headers: ResponseHeaderSource) -> bool:
        if codes is not None and not any(status_code_matches(status, c) for c in codes):
            return False
        for name, kind, tests in fields:
            if not _field_passes(kind, tests, headers.getall(name), _NO_REQUEST):
                return False
        return True

    return match


class _NoRequestView:
    """Placeholder request for response header tests, which never read the request."""

    method = uri = path = raw_path = query = host = proto = scheme = ""
    remote_ip = client_ip = ""
    remote_port = 0
    vars: dict[str, Any] = {}

    def header(self, name: str) -> str | None:
        return None

    def header_values(self, name: str) -> list[str]:
        return []


_NO_REQUEST: RequestView = _NoRequestView()
