"""The request-target rules of Go's net/url as Caddy applies them. Pure: no I/O.

Caddy never looks at the request-target as text. Go's server parses it with
`url.ParseRequestURI` into `URL.Path` (percent-decoded) and `URL.RawPath` (the escaped form,
kept only when it differs from the default encoding), and everything after that works on
those two fields:

- matchers compare `URL.Path` (cleaned) and, for patterns with `%`, `URL.EscapedPath()`;
- `rewrite` / `uri` / `handle_path` edit `URL.EscapedPath()` and then both fields
  (modules/caddyhttp/rewrite/rewrite.go `changePath`);
- the reverse proxy forwards `URL.RequestURI()`, i.e. `EscapedPath()` + `?RawQuery`.

`EscapedPath()` returns RawPath only while RawPath is a *valid* encoding of Path
(`validEncoded`: no byte that must be escaped, such as `#`, `\\`, `"`, `<`, `{`, `|`, `^`, a
space or a non-ASCII byte); otherwise it escapes Path itself. So `GET /admin#x` is matched as
the path `/admin#x` and forwarded as `/admin%23x`, never as something an origin would read
as `/admin` with a fragment. A `%` not followed by two hex digits makes ParseRequestURI fail:
Go's server answers 400 ("invalid URL escape").

This module holds those rules as functions over strings, with Go's bytes represented as
follows: an *escaped* path is ASCII text (what goes on the wire); a decoded Path is `bytes`
(Go strings are bytes, and `%ff` is a valid escape of a byte that is no UTF-8); the text a
matcher or a placeholder sees is that Path decoded as UTF-8, each invalid byte becoming
U+FFFD (as Go's strings.ToLower does before every Caddy path comparison).

`parse_request_target` takes the request-target as the server read it, one character per
byte (Latin-1): the wire rules let any byte but controls and space through, as Go's server
does, so "/caf\xc3\xa9" is the UTF-8 path "/café" (forwarded as "/caf%C3%A9"). Text built
by a rewrite is a Go string from Python text instead, i.e. UTF-8 (`_to_bytes`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final, NamedTuple

from proxy.http.wire_errors import RequestError

__all__ = [
    "BadRequestTarget",
    "RequestTarget",
    "change_path",
    "clean_path",
    "decode_path",
    "escape_path",
    "escaped_path",
    "parse_request_target",
    "regexp_replace_path",
    "replace_in_path",
    "strip_path_prefix",
    "strip_path_suffix",
    "trim_path_prefix",
    "unescape_path",
    "valid_encoded",
]


class BadRequestTarget(RequestError):
    """The request-target is one Go's url.ParseRequestURI refuses: the server answers 400.

    A RequestError, so the server refuses the request like any other malformed one (Go's
    server sends a bare "400 Bad Request"; `reason` says why, for logs and tests).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(400)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class RequestTarget(NamedTuple):
    path: str  # URL.Path, decoded (as text: see the module docstring)
    escaped_path: str  # URL.EscapedPath(): what matchers with `%` and the upstream see
    query: str  # URL.RawQuery, as received


_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_DIGITS: Final = frozenset("0123456789")
_HEX_TEXT: Final = frozenset("0123456789abcdefABCDEF")
_UPPER_HEX: Final = "0123456789ABCDEF"
# Bytes that url.shouldEscape(c, encodePath) leaves alone: RFC 3986 unreserved plus the
# reserved characters Go allows in a path ("$&+,/:;=@"; '?' is the one it escapes).
_PATH_SAFE: Final = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~$&+,/:;=@"
)
# Bytes url.validEncoded accepts in an escaped path: the above, the RFC 3986 sub-delims Go's
# shouldEscape is stricter about, '[' ']' (left alone by browsers) and '%' (an escape).
_VALID_ENCODED: Final = _PATH_SAFE | frozenset(b"!'()*[]%")
# What Go's net/url treats as part of an authority (validUserinfo and shouldEscape for
# encodeHost): anything else there makes ParseRequestURI fail.
_USERINFO_SAFE: Final = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:~!$&'()*+,;=%@"
)
_HOST_SAFE: Final = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!$&'()*+,;=:[]<>\"%"
)
_SCHEME_FIRST: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SCHEME_REST: Final = _SCHEME_FIRST | frozenset("0123456789+-.")


def _to_bytes(text: str) -> bytes:
    # A Go string from Python text: UTF-8; lone surrogates stand for raw bytes (change_path).
    return text.encode("utf-8", "surrogateescape")


def decode_path(path: bytes) -> str:
    """The text of a decoded Path for matchers and placeholders (invalid UTF-8 → U+FFFD)."""
    return path.decode("utf-8", "replace")


def unescape_path(escaped: str) -> bytes | None:
    """Go's unescape(s, encodePath) (= PathUnescape): None where a `%` lacks two hex digits.

    `+` stays `+` in a path (only query components decode it to a space).
    """
    return _unescape_bytes(_to_bytes(escaped))


def _unescape_bytes(raw: bytes) -> bytes | None:
    if b"%" not in raw:
        return raw
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        b = raw[i]
        if b == 0x25:
            if i + 2 >= n or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
                return None
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(b)
            i += 1
    return bytes(out)


def escape_path(path: bytes) -> str:
    """Go's escape(p, encodePath): every byte shouldEscape names becomes %XX (upper hex)."""
    parts: list[str] = []
    for b in path:
        if b in _PATH_SAFE:
            parts.append(chr(b))
        else:
            parts.append("%" + _UPPER_HEX[b >> 4] + _UPPER_HEX[b & 15])
    return "".join(parts)


def valid_encoded(escaped: str) -> bool:
    """Go's validEncoded(s, encodePath): no byte in s would have to be escaped."""
    return _VALID_ENCODED.issuperset(_to_bytes(escaped))


def escaped_path(path: bytes, raw_path: str) -> str:
    """Go's URL.EscapedPath(): RawPath while it is a valid encoding of Path, else escape(Path)."""
    if raw_path and valid_encoded(raw_path) and unescape_path(raw_path) == path:
        return raw_path
    if path == b"*":
        return "*"  # Go: not escaped (golang.org/issue/11202)
    return escape_path(path)


def _set_path(raw: str) -> tuple[bytes, str]:
    # Go's URL.setPath followed by EscapedPath(): the decoded Path and its escaped form.
    # `raw` is wire text (one character per byte).
    try:
        raw_bytes = raw.encode("latin-1")
    except UnicodeEncodeError:
        raise BadRequestTarget(f"request-target path {raw!r} is not bytes") from None
    path = _unescape_bytes(raw_bytes)
    if path is None:
        raise BadRequestTarget(f"invalid URL escape in request-target path {raw!r}")
    # setPath keeps RawPath only when it differs from escape(Path); EscapedPath then keeps it
    # only when valid, so the escaped form is `raw` exactly when `raw` is validly encoded.
    if _VALID_ENCODED.issuperset(raw_bytes):
        return path, raw
    return path, escape_path(path)


def _split_scheme(target: str) -> tuple[str, str]:
    # Go's getScheme: [a-zA-Z][a-zA-Z0-9+-.]* followed by ':' is a scheme.
    for i, ch in enumerate(target):
        if ch in _SCHEME_FIRST:
            continue
        if ch in _SCHEME_REST:
            if i == 0:
                return "", target
            continue
        if ch == ":":
            if i == 0:
                raise BadRequestTarget("missing protocol scheme in request-target")
            return target[:i].lower(), target[i + 1 :]
        return "", target
    return "", target


_HOST_NO_ESCAPE: Final = _HOST_SAFE - frozenset(b"%")


def _check_escapes(part: str, what: str) -> None:
    # Go's unescape for userinfo, host and IPv6 zone: every '%' starts two hex digits; in a
    # host only non-ASCII bytes may be escaped, except %25 (RFC 6874); in a zone only bytes
    # a host may hold as they are, or a space.
    i = part.find("%")
    while i >= 0:
        pair = part[i + 1 : i + 3]
        if len(pair) != 2 or pair[0] not in _HEX_TEXT or pair[1] not in _HEX_TEXT:
            raise BadRequestTarget(f"invalid URL escape in request-target {what} {part!r}")
        value = int(pair, 16)
        if pair != "25" and (
            (what == "host" and value < 0x80)
            or (what == "zone" and value != 0x20 and value not in _HOST_NO_ESCAPE)
        ):
            raise BadRequestTarget(f"invalid URL escape in request-target {what} {part!r}")
        i = part.find("%", i + 3)


def _valid_port(colon_port: str) -> bool:
    # Go's validOptionalPort: "" or ':' followed by ASCII digits only (":" alone included).
    if not colon_port:
        return True
    if colon_port[0] != ":":
        return False
    return _DIGITS.issuperset(colon_port[1:])


def _check_authority(authority: str) -> None:
    """Go's parseAuthority / parseHost checks (the values are the server's business)."""
    at = authority.rfind("@")
    host = authority[at + 1 :]
    if at >= 0:
        userinfo = authority[:at]
        for b in _to_bytes(userinfo):
            if b not in _USERINFO_SAFE:
                raise BadRequestTarget(f"invalid userinfo in request-target {userinfo!r}")
        _check_escapes(userinfo, "userinfo")
    for b in _to_bytes(host):
        if b < 0x80 and b not in _HOST_SAFE:
            raise BadRequestTarget(f"invalid character {chr(b)!r} in request-target host")
    if host.startswith("["):
        close = host.rfind("]")
        if close < 0:
            raise BadRequestTarget("missing ']' in request-target host")
        if not _valid_port(host[close + 1 :]):
            raise BadRequestTarget(f"invalid port {host[close + 1 :]!r} in request-target")
        zone = host.find("%25", 0, close)
        if zone >= 0:
            _check_escapes(host[:zone], "host")
            _check_escapes(host[zone:close], "zone")
            _check_escapes(host[close:], "host")
            return
    else:
        colon = host.rfind(":")
        if colon >= 0 and not _valid_port(host[colon:]):
            raise BadRequestTarget(f"invalid port {host[colon:]!r} in request-target")
    _check_escapes(host, "host")


def parse_request_target(target: str, connect: bool = False) -> RequestTarget:
    """Go's url.ParseRequestURI (and net/http's CONNECT rule) for a request-target.

    Raises BadRequestTarget where Go's server answers 400. `connect`: the method is CONNECT,
    whose authority-form target Go parses as "http://" + target (net/http readRequest).
    The fragment is no delimiter here: ParseRequestURI keeps `#...` in the path (browsers never
    send one), so it is matched as part of the path and forwarded as %23.
    """
    if not target:
        raise BadRequestTarget("empty request-target")
    for ch in target:
        if ch < " " or ch == "\x7f":
            raise BadRequestTarget("invalid control character in request-target")
    if target == "*":
        return RequestTarget("*", "*", "")
    if connect and not target.startswith("/"):
        target = "http://" + target
    scheme, rest = _split_scheme(target)
    if rest.endswith("?") and rest.count("?") == 1:
        # Go's ForceQuery ("/a?"): an empty query, which pyproxy does not tell from none.
        rest, query = rest[:-1], ""
    else:
        rest, _sep, query = rest.partition("?")
    if not rest.startswith("/"):
        if scheme:
            # scheme:opaque (Go keeps it as URL.Opaque, with an empty Path, and would forward
            # the opaque part as the target). Deviation: refused, no handler could route it.
            raise BadRequestTarget(f"opaque request-target {target!r} is not supported")
        raise BadRequestTarget(f"invalid URI for request {target!r}")
    if scheme and rest.startswith("//"):
        # absolute-form (RFC 9112 §3.2.2): the authority is the server's (it sets Host).
        authority, slash, path_part = rest[2:].partition("/")
        _check_authority(authority)
        rest = slash + path_part
    path, escaped = _set_path(rest)
    return RequestTarget(decode_path(path), escaped, query)


# --------------------------------------------------------------------------------------------
# Cleaning and editing (caddyhttp.CleanPath, rewrite.go)
# --------------------------------------------------------------------------------------------


def clean_path(path: str, collapse_slashes: bool = True) -> str:
    """caddyhttp.CleanPath: Go's path.Clean that keeps a trailing slash.

    With collapse_slashes=False, empty segments ("//") are kept: they count as segments, so
    "/a//../b" is "/a/b" and "/a//b" stays as is (Caddy does this when a path pattern or a
    stripped prefix itself contains "//").
    """
    # Fast path: an absolute path without dot segments (and without "//" when collapsing)
    # is already clean; that is almost every request.
    if path.startswith("/") and "/." not in path and (not collapse_slashes or "//" not in path):
        return path
    if not path:
        return "."
    rooted = path.startswith("/")
    parts = path.split("/")
    last = len(parts) - 1
    out: list[str] = []
    for idx, seg in enumerate(parts):
        if not seg:
            # parts[0] is the root and parts[-1] the trailing slash; an empty segment in
            # between is a "//" that is kept as a segment of its own when not collapsing.
            if collapse_slashes or idx == 0 or idx == last:
                continue
        elif seg == ".":
            continue
        elif seg == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(seg)
    body = "/".join(out)
    result = "/" + body if rooted else (body or ".")
    if path.endswith("/") and (out or not rooted):
        result += "/"
    return result


def _fold_equal(path_byte: int, decoded: bool, prefix_byte: int) -> bool:
    """strings.EqualFold(ch, string(prefixCh)) as trimPathPrefix calls it, one byte each.

    Go's string(byte) is the rune U+00XX, so the prefix byte and an unescaped path byte are
    compared as Latin-1 characters under case folding. A byte decoded from an escape is a
    one-byte string instead, which for 0x80 and above is invalid UTF-8 (RuneError) and so
    equals no prefix character: a non-ASCII prefix ("/é") never strips the escaped form
    ("/%C3%A9") a browser sends. That is Caddy's behaviour (2.6.2 and current), kept here.
    """
    if decoded and path_byte >= 0x80:
        return False
    return chr(path_byte).lower() == chr(prefix_byte).lower()


def trim_path_prefix(escaped: str, prefix: str) -> str:
    """rewrite.go trimPathPrefix: strip `prefix` from an escaped path, case-insensitively.

    Both are walked in lock-step; where the path has an escape and the prefix does not, the
    path's escape is compared decoded ("/a%62" starts with "/ab"); where the prefix has an
    escape, the path must have the same escape ("%2f" in the prefix never matches "/").
    An escaped path that does not start with the prefix comes back unchanged.
    """
    path = _to_bytes(escaped)
    pre = _to_bytes(prefix)
    i_path = i_pre = 0
    while i_path < len(path) and i_pre < len(pre):
        pre_ch = pre[i_pre]
        ch = path[i_path]
        from_escape = False
        if ch == 0x25 and pre_ch != 0x25 and len(path) >= i_path + 3:
            decoded = unescape_path(path[i_path : i_path + 3].decode("latin-1"))
            if decoded is None:
                return escaped  # Caddy: impossible for a valid EscapedPath()
            ch = decoded[0]
            from_escape = True
            i_path += 2
        if not _fold_equal(ch, from_escape, pre_ch):
            return escaped
        i_path += 1
        i_pre += 1
    if i_pre >= len(pre):
        return path[i_path:].decode("utf-8", "surrogateescape")
    return escaped


def change_path(escaped: str, edit: Callable[[str], str]) -> str:
    """rewrite.go changePath: apply `edit` to the escaped path, then re-derive both fields.

    RawPath becomes edit(EscapedPath()); Path is its decoding, or edit(Path) where that
    decoding fails or is empty; RawPath is dropped where it equals the default escaping of
    the new Path. Returns the new EscapedPath(), which determines Path again.
    """
    old_path = unescape_path(escaped)
    if old_path is None:
        raise ValueError(f"not an escaped path: {escaped!r}")  # a caller's bug
    raw = edit(escaped)
    path = unescape_path(raw)
    if path is None or not path:
        path = _to_bytes(edit(old_path.decode("utf-8", "surrogateescape")))
    if raw == escaped_path(path, ""):
        raw = ""
    return escaped_path(path, raw)


def strip_path_prefix(escaped: str, prefix: str) -> str:
    """rewrite.go strip_path_prefix: clean the escaped path, then trim the prefix from it.

    Repeated slashes are merged unless the prefix itself contains "//" (caddyhttp.CleanPath),
    so "/a//b", "/a/./b" and "/a/x/../b" all lose the prefix "/a" and become "/b".
    """
    if not prefix.startswith("/"):
        prefix = "/" + prefix  # current Caddy; 2.6.2 trimmed a prefix without '/' as given
    merge = "//" not in prefix
    return change_path(escaped, lambda p: trim_path_prefix(clean_path(p, merge), prefix))


def strip_path_suffix(escaped: str, suffix: str) -> str:
    """rewrite.go strip_path_suffix: trimPathPrefix on the reversed (cleaned) path."""
    merge = "//" not in suffix
    reversed_suffix = suffix[::-1]
    return change_path(
        escaped, lambda p: trim_path_prefix(clean_path(p, merge)[::-1], reversed_suffix)[::-1]
    )


def replace_in_path(escaped: str, find: str, replace: str, limit: int, merge: bool) -> str:
    """rewrite.go substrReplacer on the path: strings.Replace on the cleaned escaped path.

    `limit` < 0 replaces every occurrence; `merge` is whether CleanPath merges slashes
    (Caddy: unless the configured find string contains "//").
    """
    return change_path(escaped, lambda p: clean_path(p, merge).replace(find, replace, limit))


def regexp_replace_path(escaped: str, rx: re.Pattern[str], replacement: str) -> str:
    """rewrite.go regexReplacer: ReplaceAllString on the escaped path (not cleaned)."""
    return change_path(escaped, lambda p: rx.sub(replacement, p))


def ascii_query(query: str) -> str:
    """The query with its non-ASCII bytes %-escaped, as the reverse proxy forwards it.

    Go forwards URL.RawQuery as received, raw bytes >= 0x80 included; RFC 3986 §3.4 allows
    none there and strict origins (h11, Python's http.server) refuse the request. A query
    parser decodes %XX to the same byte, so escaping only those bytes changes nothing an origin
    can see but whether it can read the request. A deviation from Caddy, for that reason.
    `query` holds one character per byte (Latin-1, as the server read it).
    """
    return "".join([c if c < "\x80" else f"%{ord(c):02X}" for c in query])
