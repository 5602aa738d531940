"""Caddy placeholders (`{http.request.host}`, `{env.X}`, ...) compiled into fast callables.

This module owns the runtime placeholder language of Caddy's replacer: how a text with `{key}`
pieces is split, which keys are known and what they evaluate to for a request, how `\\{` / `\\}`
escape braces, and what happens to unknown keys (kept as is, or emptied; Caddy does both
depending on the caller: header values keep them, matchers empty them).

A template is compiled once, at config load, into a closure; evaluating it for a request does
no parsing. Text without braces compiles into a constant function.

Values that handlers produce while a request runs (regexp captures, the chosen upstream, error
details) live in `req.vars` under their full placeholder key, e.g.
`req.vars["http.regexp.api.1"]` or `req.vars["http.reverse_proxy.upstream.hostport"]`, exactly
like the "static" entries of Caddy's replacer: any key that is not computed from the request is
looked up there. Other conventions in `req.vars` (set by the engine):
  - `"tls"`: dict of TLS fields (`version`, `cipher_suite`, `proto`, `server_name`, `resumed`,
    ...), only on TLS connections; read by `{http.request.tls.FIELD}`.
  - `"_orig_method"`, `"_orig_uri"`, `"_orig_path"`, `"_orig_query"`: the request as first
    received, set before any rewrite changes it (absent means "not rewritten": the current
    values are used).
  - `"uuid"`: created on first use of `{http.request.uuid}`.
  - Caddy's own vars (`{http.vars.NAME}`) are plain keys; `client_ip` falls back to
    `req.client_ip`.
Purity: no sockets, no asyncio; the clock for `{time.now*}` is injectable.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from email.utils import formatdate
from functools import lru_cache
from ipaddress import ip_address, ip_network
from typing import Any, Protocol
from urllib.parse import quote_plus, unquote_to_bytes

from proxy.request_view import RequestView

__all__ = [
    "Clock",
    "ResponseHeaderSource",
    "Template",
    "compile_template",
    "has_placeholders",
    "parse_query",
    "parse_query_strict",
    "replace_global",
    "request_hostname",
    "request_hostname_lower",
    "split_host_port",
    "to_placeholder_string",
]

Clock = Callable[[], float]


class ResponseHeaderSource(Protocol):
    """What `{http.response.header.NAME}` reads (proxy.header_ops.Headers satisfies it)."""

    def getall(self, name: str) -> list[str]: ...


class Template(Protocol):
    """A compiled template: `tpl(req)` or `tpl(req, response_headers)` returns the text."""

    def __call__(self, req: RequestView, resp: ResponseHeaderSource | None = None, /) -> str: ...


# A getter returns the placeholder's value, or None when the key is unknown for this request
# (Caddy distinguishes "known but empty" from "unknown": only the latter is kept literally).
_Getter = Callable[[RequestView, "ResponseHeaderSource | None"], "str | None"]
# A getter whose key is always known (never returns None): used without a fallback wrapper.
_DirectGetter = Callable[[RequestView, "ResponseHeaderSource | None"], str]


def has_placeholders(text: str) -> bool:
    """True when `text` has a `{...}` pair, i.e. compiling it gives a non-constant template."""
    start = text.find("{")
    return start >= 0 and text.find("}", start + 1) > start


# --------------------------------------------------------------------------------------------
# Value formatting and small parsers shared with the matchers
# --------------------------------------------------------------------------------------------


def to_placeholder_string(value: Any) -> str:
    """Render a var the way Caddy's replacer does (None → "", bools lowercase, lists spaced)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # Go's FormatFloat(v, 'f', -1, 64): shortest repr, never exponent notation.
        text = repr(value)
        if "e" in text or "E" in text:
            text = format(value, "f").rstrip("0").rstrip(".") or "0"
        elif text.endswith(".0"):
            text = text[:-2]
        return text
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return "[" + " ".join(to_placeholder_string(v) for v in value) + "]"
    return str(value)


@lru_cache(maxsize=4096)
def split_host_port(hostport: str) -> tuple[str, str] | None:
    """Split "host:port" like Go's net.SplitHostPort; None when there is no port part.

    "[::1]:80" → ("::1", "80"); "example.com" → None; "[::1]" → None; "::1" → None.
    """
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or hostport[end + 1 : end + 2] != ":":
            return None
        return hostport[1:end], hostport[end + 2 :]
    colon = hostport.rfind(":")
    if colon < 0 or ":" in hostport[:colon]:
        return None
    return hostport[:colon], hostport[colon + 1 :]


@lru_cache(maxsize=4096)
def request_hostname_lower(hostport: str) -> str:
    """`request_hostname(hostport).lower()`, cached: a server sees few distinct Host values,
    and host matching runs on every request."""
    return request_hostname(hostport).lower()


def request_hostname(hostport: str) -> str:
    """The host part of a Host header: port removed, IPv6 brackets removed (for matching)."""
    if ":" not in hostport:
        return hostport
    split = split_host_port(hostport)
    if split is not None:
        return split[0]
    if hostport.startswith("[") and hostport.endswith("]"):
        return hostport[1:-1]
    return hostport


def _query_unescape(text: str) -> str | None:
    """Go's url.QueryUnescape: '+' is a space, bad %-escapes are an error (None)."""
    if "%" in text:
        i = text.find("%")
        while i >= 0:
            pair = text[i + 1 : i + 3]
            if len(pair) != 2 or not all(c in "0123456789abcdefABCDEF" for c in pair):
                return None
            i = text.find("%", i + 3)
        return unquote_to_bytes(text.replace("+", " ")).decode("utf-8", "replace")
    if "+" in text:
        return text.replace("+", " ")
    return text


@lru_cache(maxsize=2048)
def parse_query_strict(raw_query: str) -> tuple[dict[str, list[str]], bool]:
    """Parse a raw query like Go's url.ParseQuery: (values, ok).

    Pairs with a ';' in the key or a bad escape are skipped and make ok False (Go reports
    the first such error but still returns the good pairs). The result is shared through the
    cache: callers must not mutate it.
    """
    values: dict[str, list[str]] = {}
    ok = True
    if not raw_query:
        return values, ok
    for pair in raw_query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        if ";" in key:
            ok = False
            continue
        ukey = _query_unescape(key)
        uvalue = _query_unescape(value)
        if ukey is None or uvalue is None:
            ok = False
            continue
        values.setdefault(ukey, []).append(uvalue)
    return values, ok


def parse_query(raw_query: str) -> dict[str, list[str]]:
    """Lenient query parse (Go's URL.Query()): the good pairs; do not mutate the result."""
    return parse_query_strict(raw_query)[0]


def _cookie_value(req: RequestView, name: str) -> str | None:
    # Go's Request.Cookies(): every Cookie header, "; "-separated name=value pairs, optional
    # double quotes around the value; the placeholder compares names case-insensitively.
    lname = name.lower()
    for line in req.header_values("Cookie"):
        for part in line.split(";"):
            cname, eq, value = part.strip().partition("=")
            if not eq or cname.lower() != lname:
                continue
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            return value
    return None


def _go_time_string(now: float) -> str:
    # Go's time.Time.String() without the monotonic clock suffix.
    dt = datetime.fromtimestamp(now).astimezone()
    frac = f"{dt.microsecond:06d}".rstrip("0")
    offset = dt.strftime("%z")
    zone = dt.tzname() or offset
    stamp = dt.strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp}.{frac} {offset} {zone}" if frac else f"{stamp} {offset} {zone}"


def _go_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "i386": "386"}.get(
        machine, machine
    )


def _go_os() -> str:
    plat = sys.platform
    return "windows" if plat.startswith("win") else plat.rstrip("0123456789")


def _read_file_placeholder(filename: str) -> str:
    # Caddy reads the file on every evaluation (at most 1 MiB) and trims one trailing newline.
    try:
        with open(filename, "rb") as fh:
            body = fh.read(1024 * 1024)
    except OSError:
        return ""
    if body.endswith(b"\n"):
        body = body[:-1]
    if body.endswith(b"\r"):
        body = body[:-1]
    return body.decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------
# Key → getter
# --------------------------------------------------------------------------------------------


def _global_getter(key: str, clock: Clock) -> Callable[[], str] | None:
    """Getters for keys that do not depend on a request (Caddy's global provider)."""
    if key.startswith("env."):
        name = key[4:]
        return lambda: os.environ.get(name, "")
    if key.startswith("file."):
        filename = key[5:]
        return lambda: _read_file_placeholder(filename)
    if key == "system.hostname":
        # Hostname changes are rare enough that reading it once per template is fine.
        hostname = platform.node()
        return lambda: hostname
    if key == "system.slash":
        return lambda: os.sep
    if key == "system.os":
        osname = _go_os()
        return lambda: osname
    if key == "system.arch":
        arch = _go_arch()
        return lambda: arch
    if key == "system.wd":
        return os.getcwd
    if key == "time.now":
        return lambda: _go_time_string(clock())
    if key == "time.now.http":
        return lambda: formatdate(clock(), usegmt=True)
    if key == "time.now.common_log":
        return lambda: datetime.fromtimestamp(clock()).astimezone().strftime("%d/%b/%Y:%H:%M:%S %z")
    if key == "time.now.year":
        return lambda: str(datetime.fromtimestamp(clock()).year)
    if key == "time.now.unix":
        return lambda: str(int(clock()))
    if key == "time.now.unix_ms":
        return lambda: str(int(clock() * 1000))
    return None


def _path_dir(path: str) -> str:
    return path[: path.rfind("/") + 1]


def _path_file(path: str) -> str:
    return path[path.rfind("/") + 1 :]


def _path_base(path: str) -> str:
    # Go's path.Base: last element after trimming trailing slashes; "" → "."; "/" → "/".
    if not path:
        return "."
    trimmed = path.rstrip("/")
    if not trimmed:
        return "/"
    return trimmed[trimmed.rfind("/") + 1 :]


def _path_ext(path: str) -> str:
    # Go's path.Ext: from the last '.' of the final element (no trimming of trailing slashes).
    for i in range(len(path) - 1, -1, -1):
        ch = path[i]
        if ch == "/":
            break
        if ch == ".":
            return path[i:]
    return ""


def _host_only(req: RequestView, _resp: ResponseHeaderSource | None = None) -> str:
    split = split_host_port(req.host)
    return req.host if split is None else split[0]


def _url_host(req: RequestView, _resp: ResponseHeaderSource | None = None) -> str:
    """The host as it must appear in a URL: an IPv6 literal goes back into brackets.

    Caddy's HTTP->HTTPS redirect uses {http.request.host}, which yields `https://::1/` for
    `Host: [::1]:80` (an invalid URL); our automatic-HTTPS redirects use this instead.
    """
    host = _host_only(req)
    # A Host without a port keeps its brackets through _host_only (as Go's SplitHostPort fails).
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _port_only(req: RequestView, _resp: ResponseHeaderSource | None = None) -> str:
    split = split_host_port(req.host)
    if split is None:
        return ""
    port = split[1]
    # Go returns the integer when the port parses, so "080" renders as "80".
    return str(int(port)) if port.isdigit() else port


def _remote(req: RequestView, _resp: ResponseHeaderSource | None = None) -> str:
    ip = req.remote_ip
    return f"[{ip}]:{req.remote_port}" if ":" in ip else f"{ip}:{req.remote_port}"


def _orig(req: RequestView, var: str, current: str) -> str:
    value = req.vars.get(var)
    return current if value is None else to_placeholder_string(value)


def _orig_path(req: RequestView, _resp: ResponseHeaderSource | None = None) -> str:
    return _orig(req, "_orig_path", req.path)


def _orig_query(req: RequestView, _resp: ResponseHeaderSource | None = None) -> str:
    return _orig(req, "_orig_query", req.query)


def _uuid(req: RequestView, _resp: ResponseHeaderSource | None = None) -> str:
    value = req.vars.get("uuid")
    if value is None:
        value = str(uuid.uuid4())
        req.vars["uuid"] = value
    return to_placeholder_string(value)


def _prefixed(query: str) -> str:
    return "?" + query if query else ""


# Keys with a fixed meaning, evaluated from the request view alone; never unknown.
_SIMPLE: dict[str, _DirectGetter] = {
    "http.request.method": lambda r, _: r.method,
    "http.request.scheme": lambda r, _: r.scheme,
    "http.request.proto": lambda r, _: r.proto,
    "http.request.proto_name": lambda r, _: (
        "HTTP/2"
        if r.proto.startswith("HTTP/2")
        else ("HTTP/3" if r.proto.startswith("HTTP/3") else r.proto)
    ),
    "http.request.host": _host_only,
    "pyproxy.request.url_host": _url_host,
    "http.request.port": _port_only,
    "http.request.hostport": lambda r, _: r.host,
    "http.request.remote": _remote,
    "http.request.remote.host": lambda r, _: r.remote_ip,
    "http.request.remote.port": lambda r, _: str(r.remote_port),
    "http.request.uri": lambda r, _: r.uri,
    "http.request.uri_escaped": lambda r, _: quote_plus(r.uri, safe=""),
    "http.request.uri.path": lambda r, _: r.path,
    "http.request.uri.path_escaped": lambda r, _: quote_plus(r.path, safe=""),
    "http.request.uri.path.file": lambda r, _: _path_file(r.path),
    "http.request.uri.path.dir": lambda r, _: _path_dir(r.path),
    "http.request.uri.path.file.base": lambda r, _: _path_base(r.path).removesuffix(
        _path_ext(r.path)
    ),
    "http.request.uri.path.file.ext": lambda r, _: _path_ext(r.path),
    "http.request.uri.query": lambda r, _: r.query,
    "http.request.uri.query_escaped": lambda r, _: quote_plus(r.query, safe=""),
    "http.request.uri.prefixed_query": lambda r, _: _prefixed(r.query),
    "http.request.uuid": _uuid,
    "http.request.orig_method": lambda r, _: _orig(r, "_orig_method", r.method),
    "http.request.orig_uri": lambda r, _: _orig(r, "_orig_uri", r.uri),
    "http.request.orig_uri.path": _orig_path,
    "http.request.orig_uri.path.file": lambda r, _: _path_file(_orig_path(r, _)),
    "http.request.orig_uri.path.dir": lambda r, _: _path_dir(_orig_path(r, _)),
    "http.request.orig_uri.query": _orig_query,
    "http.request.orig_uri.prefixed_query": lambda r, _: _prefixed(_orig_query(r, _)),
}


def _vars_getter(key: str) -> _Getter:
    def get(req: RequestView, resp: ResponseHeaderSource | None) -> str | None:
        value = req.vars.get(key, _MISSING)
        return None if value is _MISSING else to_placeholder_string(value)

    return get


_MISSING: Any = object()


def _index_getter(prefix_len: int, key: str, split: Callable[[RequestView], list[str]]) -> _Getter:
    idx_text = key[prefix_len:]
    try:
        idx = int(idx_text)
    except ValueError:
        return _vars_getter(key)
    if idx < 0:
        return _vars_getter(key)

    def get(req: RequestView, resp: ResponseHeaderSource | None) -> str | None:
        parts = split(req)
        return parts[idx] if idx < len(parts) else ""

    return get


def _host_labels(req: RequestView) -> list[str]:
    # Labels counted from the right: labels.0 is the TLD. Caddy lowercases them.
    return [label.lower() for label in reversed(_host_only(req).split("."))]


def _path_segments(path: str) -> list[str]:
    parts = path.split("/")
    return parts[1:] if parts and parts[0] == "" else parts


def _remote_prefix_getter(key: str) -> _Getter:
    # {http.request.remote.host/24,64}: the client network, IPv4 bits, optional IPv6 bits.
    bits_both = key[key.index("/") + 1 :]
    v4_text, comma, v6_text = bits_both.partition(",")

    def get(req: RequestView, resp: ResponseHeaderSource | None) -> str:
        try:
            addr = ip_address(req.remote_ip)
        except ValueError:
            return req.remote_ip
        bits_text = v6_text if addr.version == 6 and comma else v4_text
        try:
            return str(ip_network(f"{addr}/{int(bits_text)}", strict=False))
        except ValueError:
            return ""

    return get


def _tls_getter(field: str) -> _Getter:
    field = field.lower()

    def get(req: RequestView, resp: ResponseHeaderSource | None) -> str | None:
        tls = req.vars.get("tls")
        if not isinstance(tls, dict) or field not in tls:
            return None
        return to_placeholder_string(tls[field])

    return get


def _resolve(key: str, clock: Clock) -> _Getter | None:
    """Map a placeholder key to its getter; None means "never known" (kept/emptied)."""
    if not key or "{" in key:
        return None
    simple = _SIMPLE.get(key)
    if simple is not None:
        return simple
    glob = _global_getter(key, clock)
    if glob is not None:
        return lambda req, resp: glob()
    if key.startswith("http.request."):
        return _request_prefixed(key)
    if key.startswith("http.vars."):
        name = key[len("http.vars.") :]

        def get_var(req: RequestView, resp: ResponseHeaderSource | None) -> str:
            value = req.vars.get(name)
            if value is None and name == "client_ip":
                return req.client_ip
            return to_placeholder_string(value)

        return get_var
    if key.startswith("http.response.header."):
        field = key[len("http.response.header.") :]

        def get_resp(req: RequestView, resp: ResponseHeaderSource | None) -> str | None:
            return None if resp is None else ",".join(resp.getall(field))

        return get_resp
    if key.startswith("re."):
        # The Caddyfile shorthand {re.NAME.N}; the adapter normally expands it, this keeps
        # templates written by hand working too.
        return _vars_getter("http.regexp." + key[3:])
    return _vars_getter(key)


def _request_prefixed(key: str) -> _Getter:
    if key.startswith("http.request.uri.query."):
        name = key[len("http.request.uri.query.") :]
        return lambda req, resp: ",".join(parse_query(req.query).get(name, ()))
    if key.startswith("http.request.header."):
        field = key[len("http.request.header.") :]
        return lambda req, resp: ",".join(req.header_values(field))
    if key.startswith("http.request.cookie."):
        name = key[len("http.request.cookie.") :]
        vars_fallback = _vars_getter(key)

        def get_cookie(req: RequestView, resp: ResponseHeaderSource | None) -> str | None:
            value = _cookie_value(req, name)
            # A missing cookie is an unknown placeholder in Caddy, not an empty one.
            return vars_fallback(req, resp) if value is None else value

        return get_cookie
    if key.startswith("http.request.tls."):
        return _tls_getter(key[len("http.request.tls.") :])
    if key.startswith("http.request.remote.host/"):
        return _remote_prefix_getter(key)
    if key.startswith("http.request.host.labels."):
        return _index_getter(len("http.request.host.labels."), key, _host_labels)
    if key.startswith("http.request.uri.path."):
        return _index_getter(len("http.request.uri.path."), key, lambda r: _path_segments(r.path))
    if key.startswith("http.request.orig_uri.path."):
        return _index_getter(
            len("http.request.orig_uri.path."), key, lambda r: _path_segments(_orig_path(r))
        )
    return _vars_getter(key)


# --------------------------------------------------------------------------------------------
# Parsing and compiling
# --------------------------------------------------------------------------------------------


def _parse(text: str, empty_unknown: bool) -> list[str | tuple[str]]:
    """Split a template into literal strings and 1-tuples holding placeholder keys.

    Rules (Caddy's replacer): a backslash before `{` or `}` makes it literal; a key runs from
    `{` to the next `}`; a `{` without a closing `}` is literal; so is a `{` whose key would
    contain another `{` (scanning resumes right after it, so `{a{host}` keeps `{a` and
    replaces `{host}`) — unless unknown keys are emptied, then `{a{host}` is dropped whole,
    as Caddy's ReplaceAll does.
    """
    parts: list[str | tuple[str]] = []
    buf: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n and text[i + 1] in "{}":
            buf.append(text[i + 1])
            i += 2
            continue
        if ch != "{":
            buf.append(ch)
            i += 1
            continue
        end = text.find("}", i + 1)
        if end < 0:
            buf.append(text[i:])
            break
        key = text[i + 1 : end]
        if not key or "{" in key:
            # Never a known key: emptied whole in empty_unknown mode; otherwise the '{' is
            # literal and scanning resumes right after it.
            if empty_unknown:
                i = end + 1
            else:
                buf.append("{")
                i += 1
            continue
        if buf:
            parts.append("".join(buf))
            buf = []
        parts.append((key,))
        i = end + 1
    if buf:
        parts.append("".join(buf))
    return parts


def compile_template(
    text: str, *, empty_unknown: bool = False, clock: Clock = time.time
) -> Template:
    """Compile `text` into `tpl(req, resp_headers=None) -> str`.

    empty_unknown=False keeps unknown placeholders literally (Caddy's ReplaceKnown: header
    values, response bodies); True replaces them with "" (ReplaceAll: matchers, rewrites).
    """
    if "{" not in text and "}" not in text:
        # Caddy's own fast path: without braces even backslashes stay untouched.
        return _constant(text)
    pieces: list[str | _Getter] = []
    literal: list[str] = []
    for part in _parse(text, empty_unknown):
        if isinstance(part, str):
            literal.append(part)
            continue
        key = part[0]
        getter = _resolve(key, clock)
        if getter is None:
            if not empty_unknown:
                literal.append("{" + key + "}")
            continue
        if literal:
            pieces.append("".join(literal))
            literal = []
        if key in _SIMPLE or key.startswith(_ALWAYS_KNOWN_PREFIXES):
            pieces.append(getter)
        else:
            pieces.append(_with_unknown(getter, "" if empty_unknown else "{" + key + "}"))
    if literal:
        pieces.append("".join(literal))
    if not pieces:
        return _constant("")
    if len(pieces) == 1:
        only = pieces[0]
        if isinstance(only, str):
            return _constant(only)
        return _single(only)
    return _joined(tuple(pieces))


# Prefixes whose getters never report "unknown" (see _resolve), so no fallback is needed.
_ALWAYS_KNOWN_PREFIXES = (
    "env.",
    "http.vars.",
    "http.request.header.",
    "http.request.uri.query.",
)


def _constant(text: str) -> Template:
    def const(req: RequestView, resp: ResponseHeaderSource | None = None, /) -> str:
        return text

    return const


def _with_unknown(getter: _Getter, fallback: str) -> _Getter:
    def get(req: RequestView, resp: ResponseHeaderSource | None) -> str:
        value = getter(req, resp)
        return fallback if value is None else value

    return get


def _single(getter: _Getter) -> Template:
    def one(req: RequestView, resp: ResponseHeaderSource | None = None, /) -> str:
        return getter(req, resp) or ""

    return one


def _joined(pieces: tuple[str | _Getter, ...]) -> Template:
    # Normalise to literal, getter, literal, getter, ..., literal so the common shapes
    # (one or two placeholders) run as straight-line concatenation without a loop.
    lits: list[str] = [""]
    getters: list[_DirectGetter] = []
    for piece in pieces:
        if isinstance(piece, str):
            lits[-1] += piece
        else:
            getters.append(piece)  # type: ignore[arg-type]
            lits.append("")
    if len(getters) == 1:
        a0, a1 = lits
        (g0,) = getters

        def joined1(req: RequestView, resp: ResponseHeaderSource | None = None, /) -> str:
            return a0 + g0(req, resp) + a1

        return joined1
    if len(getters) == 2:
        b0, b1, b2 = lits
        h0, h1 = getters

        def joined2(req: RequestView, resp: ResponseHeaderSource | None = None, /) -> str:
            return b0 + h0(req, resp) + b1 + h1(req, resp) + b2

        return joined2
    frozen = tuple(pieces)

    def joined(req: RequestView, resp: ResponseHeaderSource | None = None, /) -> str:
        return "".join([p if p.__class__ is str else p(req, resp) for p in frozen])  # type: ignore[misc, operator]

    return joined


class _NoRequest:
    """Stands in for a request when only global placeholders may be used (config load)."""

    method = uri = path = raw_path = query = host = proto = scheme = ""
    remote_ip = client_ip = ""
    remote_port = 0

    def __init__(self) -> None:
        self.vars: dict[str, Any] = {}

    def header(self, name: str) -> str | None:
        return None

    def header_values(self, name: str) -> list[str]:
        return []


def replace_global(text: str, *, empty_unknown: bool = True, clock: Clock = time.time) -> str:
    """Evaluate `text` with only request-independent placeholders (`{env.X}`, `{system.*}`,
    `{time.*}`), as Caddy does at provision time (e.g. remote_ip ranges)."""
    if "{" not in text and "}" not in text:
        return text
    return compile_template(text, empty_unknown=empty_unknown, clock=clock)(_NoRequest())
