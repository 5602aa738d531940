"""HTTP/1.1 request wire rules (RFC 9112), as pure functions: what a request head may look like,
and where its body ends.

Every framing decision the server makes is here, so that it can be read in one place and tested
from tables (tests/unit/test_wire.py, tests/unit/test_hostile_requests.py). The rules follow Go's
net/http server, which is what Caddy runs on, so that pyproxy accepts, rejects and frames a
request exactly where Caddy does; where we are stricter it is to the letter of RFC 9112 and
the deviation is named at the rule:

- request line `method SP target SP HTTP/x.y` with single spaces (Go's parseRequestLine); the
  method is any token (Go forwards methods it does not know); HTTP/1.y with y ≥ 1 is HTTP/1.1,
  another major version is 505, anything else (`RTSP/1.0`, HTTP/0.9's `GET /`) is 400;
- field lines `token ":" OWS value OWS CRLF`: no space before the colon, no control bytes in
  values (Go: "invalid header value"), no obs-fold (Go folds it; RFC 9112 §5.2 lets a server
  reject it, and we do: a folded line is read differently by different origins);
- lines end with CRLF; a bare CR or LF is 400 (Go accepts a bare LF, RFC 9112 §2.2 "MAY";
  rejecting it means no origin can split the head where we did not);
- exactly one Host field for HTTP/1.1, with only the bytes Go's httpguts.ValidHostHeader allows;
- body: Transfer-Encoding must be exactly one `chunked` (Go: 501 "Unsupported transfer
  encoding" for any other coding, so a coding is never lost); Content-Length must be digits,
  repeated only with the same value; Transfer-Encoding with Content-Length, or in an HTTP/1.0
  request, is 400 (RFC 9112 §6.1, §6.3: "ought to be handled as an error"; Go lets chunked win).

The whole head is at most `max_header_bytes` + 4096 bytes, like Go's server (its bufio slop),
and a larger one is 431 whatever part of it is long (Go has no 414).

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

import re
from typing import Final

from proxy.http.fields import HOP_BY_HOP_FIELDS, X_FORWARDED_FIELDS
from proxy.http.wire_errors import RequestError

# Go's http.DefaultMaxHeaderBytes (Caddy's default max_header_size) and the 4096 bytes of slack
# its server reads beyond it before answering 431 (net/http initialReadLimitSize).
DEFAULT_MAX_HEADER_BYTES: Final = 1 << 20
HEAD_SLACK_BYTES: Final = 4096
# Go's chunked reader bounds a chunk-size line (net/http/internal maxLineLength).
MAX_CHUNK_LINE_BYTES: Final = 4096

# RFC 9110 §5.6.2 token.
_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
TOKEN_RE: Final = re.compile(_TOKEN)
# The head of almost every request, whole: the rules above for a token method, a visible-ASCII
# target, HTTP/1.0 or 1.1 and valid field lines, in one C-level match.
_COMMON_HEAD_RE: Final = re.compile(
    _TOKEN + rb" [!-~]+ HTTP/1\.[01]\r\n(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*"
)
# A field line with its CRLF: token ":" then value bytes (no CTL but HTAB; obs-text allowed,
# RFC 9110 §5.5). Used for trailers and to explain a refusal.
_FIELD_LINES_RE: Final = re.compile(rb"(?:" + _TOKEN + rb":[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
_VALUE_RE: Final = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")
_VERSION_RE: Final = re.compile(rb"HTTP/([0-9])\.([0-9])")
_CTL_OR_SPACE: Final = re.compile(rb"[\x00-\x20\x7f]")
_DIGITS: Final = re.compile(rb"[0-9]+")
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")
# Bytes Go's httpguts.ValidHostHeader allows in Host; bytes.translate deletes them, and what is
# left is invalid.
_HOST_BYTES: Final = (
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!$%&'()*+,-.:;=[]_~"
)
_PRINTABLE_ASCII: Final = re.compile(rb"[\x20-\x7e]*")

# Fields the server or the proxy single out (the others stay one serialized block, forwarded as
# they are). Checked by length first: most field names miss on that.
SERVER_FIELDS: Final = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"expect", b"connection", b"upgrade"}
)
# Hop-by-hop (but Transfer-Encoding, which the server decodes) and X-Forwarded-*: their presence
# sends the proxy to its slow path (`RequestHead.odd`).
PROXY_FIELDS: Final = (HOP_BY_HOP_FIELDS - {b"transfer-encoding"}) | X_FORWARDED_FIELDS
SPECIAL_FIELDS: Final = SERVER_FIELDS | PROXY_FIELDS
# Field names seen so far (valid tokens) and their lowercase form: most requests repeat the
# same dozen names, so a lookup replaces the token check and the lowercasing. Bounded, so a
# client inventing names cannot grow it.
_FIELD_NAMES: Final[dict[bytes, bytes]] = {}
MAX_KNOWN_FIELD_NAMES: Final = 2048
_HOSTS: Final[dict[bytes, str]] = {}
MAX_KNOWN_HOSTS: Final = 1024
# Every byte a field line may hold but the line ends: all but the controls (HTAB is allowed;
# obs-text too, RFC 9110 §5.5).
_FIELD_BYTES: Final = bytes([b for b in range(256) if b == 9 or (32 <= b < 127) or b >= 128])

# `RequestHead.length` of a chunked body.
CHUNKED: Final = -1


class RequestHead:
    """A parsed, validated request head: what the server needs to route and frame it."""

    __slots__ = (
        "expect_continue",
        "host",
        "keep_alive",
        "length",
        "method",
        "minor",
        "odd",
        "raw",
        "special",
        "target",
        "upgrade",
    )

    def __init__(self, method: str, target: str, minor: int) -> None:
        self.method = method
        self.target = target
        self.minor = minor  # 1: HTTP/1.1 (or a later 1.y), 0: HTTP/1.0
        self.raw = b""  # the ordinary fields, serialized b"Name: value\r\n"...
        self.special: list[tuple[bytes, bytes]] = []  # SPECIAL_FIELDS, in order
        self.odd = False  # a PROXY_FIELDS field is present
        self.host: str | None = None
        # CHUNKED, the Content-Length, or None: no framing field, no body (RFC 9112 §6.3 rule 6)
        self.length: int | None = None
        self.keep_alive = True
        self.upgrade = False
        self.expect_continue = False


def parse_request_line(line: bytes) -> RequestHead:
    """`method SP request-target SP HTTP-version` (RFC 9112 §3), split like Go's server."""
    sp1 = line.find(b" ")
    sp2 = line.find(b" ", sp1 + 1) if sp1 > 0 else -1
    if sp2 < 0:
        raise RequestError(400)  # no method, or HTTP/0.9's "GET /": Go "malformed HTTP request"
    method = line[:sp1]
    target = line[sp1 + 1 : sp2]
    proto = line[sp2 + 1 :]
    if proto == b"HTTP/1.1":
        minor = 1
    elif proto == b"HTTP/1.0":
        minor = 0
    else:
        m = _VERSION_RE.fullmatch(proto)
        if m is None:
            raise RequestError(400)  # Go: "malformed HTTP version" (RTSP/1.0, HTTP/1.10, ...)
        if m.group(1) != b"1":
            # Go's http1ServerSupportsRequest: only HTTP/1.x over an HTTP/1 connection.
            raise RequestError(505, "unsupported protocol version")
        minor = 0 if m.group(2) == b"0" else 1
    if TOKEN_RE.fullmatch(method) is None:
        raise RequestError(400)  # Go: "invalid method"
    if not target or _CTL_OR_SPACE.search(target) is not None:
        raise RequestError(400)  # Go's url.ParseRequestURI: empty, or a control byte
    return RequestHead(method.decode("latin-1"), target.decode("latin-1"), minor)


def parse_request_head(buf: bytes, start: int, end: int) -> RequestHead:
    """Parse the head in buf[start:end] (the request line and field lines, without the empty
    line that ends the head) and decide its framing, or raise RequestError."""
    # The common head (HTTP/1.0 or 1.1, a visible-ASCII target, clean field lines) is checked
    # by one regex over the whole head; anything else takes the rule-by-rule path, which
    # accepts the rarer valid forms and names the rule a bad head breaks.
    return parse_head(buf, start, end, _COMMON_HEAD_RE.fullmatch(buf, start, end + 2) is not None)


def parse_head(buf: bytes, start: int, end: int, common: bool) -> RequestHead:
    """parse_request_head, told whether the head matched the common-head regex (the tests run
    both paths on the same heads: they must agree)."""
    eol = buf.find(b"\r\n", start, end)
    if eol < 0:
        eol = end
    line = buf[start:eol]
    if common:
        sp1 = line.find(b" ")
        sp2 = line.find(b" ", sp1 + 1)
        head = RequestHead(
            line[:sp1].decode("latin-1"),
            line[sp1 + 1 : sp2].decode("latin-1"),
            1 if line[-1] == 49 else 0,  # HTTP/1.1 or HTTP/1.0
        )
    else:
        if b"\n" in line or b"\r" in line:
            raise RequestError(400)  # a bare CR or LF in the request line
        head = parse_request_line(line)
    if eol >= end:
        _decide(head, None, None, None, None, None)
        return head
    block = buf[eol + 2 : end]  # the field lines, CRLF between them
    # Control bytes in one pass: once every allowed byte is deleted, only the CRLF pairs
    # between lines may be left. A bare CR or LF, or any other control byte, leaves more.
    if not common and len(block.translate(None, _FIELD_BYTES)) != 2 * block.count(b"\r\n"):
        raise _field_error(block + b"\r\n")
    raw: list[bytes] = []
    special = head.special
    hosts: list[bytes] | None = None
    lengths: list[bytes] | None = None
    codings: list[bytes] | None = None
    connection: list[bytes] | None = None
    upgrade: bytes | None = None
    expect: bytes | None = None
    for field_line in block.split(b"\r\n"):
        colon = field_line.find(b":")
        name = field_line[:colon]
        lname = _FIELD_NAMES.get(name)
        if lname is None:
            if not common and (colon <= 0 or TOKEN_RE.fullmatch(name) is None):
                # No colon, a space before it, obs-fold: Go's textproto "malformed MIME
                # header line", a plain 400.
                raise RequestError(400)
            lname = name.lower()
            if len(_FIELD_NAMES) < MAX_KNOWN_FIELD_NAMES:
                _FIELD_NAMES[name] = lname
        if lname not in SPECIAL_FIELDS:
            # Forwarded as the client wrote it: a valid line whose value has no control
            # bytes, so any parser reads the same field (only OWS may differ, RFC 9110 §5.5).
            raw.append(field_line)
            continue
        value = field_line[colon + 1 :].strip(b" \t")
        special.append((name, value))
        if lname in PROXY_FIELDS:
            head.odd = True
        if lname == b"host":
            hosts = [value] if hosts is None else [*hosts, value]
        elif lname == b"content-length":
            lengths = [value] if lengths is None else [*lengths, value]
        elif lname == b"transfer-encoding":
            codings = [value] if codings is None else [*codings, value]
        elif lname == b"connection":
            connection = [value] if connection is None else [*connection, value]
        elif lname == b"upgrade":
            upgrade = value if upgrade is None else upgrade
        elif lname == b"expect":
            expect = value if expect is None else expect
    if raw:
        raw.append(b"")  # the join then ends with CRLF too
        head.raw = b"\r\n".join(raw)
    _decide(head, hosts, lengths, codings, connection, upgrade)
    if expect is not None:
        # Go's server: "100-continue" is honoured (HTTP/1.1 with a body), any other
        # expectation is 417 (RFC 9110 §10.1.1).
        if expect.lower() != b"100-continue":
            raise RequestError(417)
        head.expect_continue = head.minor == 1 and bool(head.length)
    return head


def _field_error(block: bytes) -> RequestError:
    """Which rule a field block broke, in Go's words where Go has them."""
    for field_line in block.split(b"\r\n")[:-1]:
        colon = field_line.find(b":")
        if colon <= 0 or TOKEN_RE.fullmatch(field_line[:colon]) is None:
            # No colon, a space before it, obs-fold, a bare CR/LF: Go's textproto "malformed
            # MIME header line", answered with a plain 400.
            return RequestError(400)
        if _VALUE_RE.fullmatch(field_line[colon + 1 :]) is None:
            return RequestError(400, "invalid header value")
    return RequestError(400)


def decoded_host(host: bytes) -> str | None:
    """The Host value as text if it is valid (valid_host), else None; remembers the hosts it
    has seen (a site gets the same few on every request), bounded."""
    known = _HOSTS.get(host)
    if known is not None:
        return known
    if not valid_host(host):
        return None
    text = host.decode("latin-1")
    if len(_HOSTS) < MAX_KNOWN_HOSTS:
        _HOSTS[host] = text
    return text


def valid_host(host: bytes) -> bool:
    """Go's httpguts.ValidHostHeader: only these bytes (no space, `/`, `\\`, `@`, `"`...)."""
    return not host.translate(None, _HOST_BYTES)


def has_token(values: list[bytes] | None, token: bytes) -> bool:
    """A comma-separated field (Connection) names `token` (case-insensitive), RFC 9110 §5.6.1."""
    if values is None:
        return False
    for value in values:
        for item in value.split(b","):
            if item.strip(b" \t").lower() == token:
                return True
    return False


def body_length(lengths: list[bytes] | None, codings: list[bytes] | None, minor: int) -> int | None:
    """Where a request's body ends (RFC 9112 §6.3): CHUNKED, its Content-Length, or None when
    neither field is present (no body)."""
    if codings is not None:
        if minor == 0:
            # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            raise RequestError(400)
        if lengths is not None:
            # RFC 9112 §6.3 rule 3: both is a smuggling attempt; "ought to be handled as an
            # error" (Go drops Content-Length and reads chunked).
            raise RequestError(400)
        if len(codings) != 1 or codings[0].lower() != b"chunked":
            # Go (parseTransferEncoding): only a single "chunked" coding. Any other is 501, so
            # a coding like gzip is never silently dropped on the way to the origin.
            raise RequestError(501)
        return CHUNKED
    if lengths is None:
        return None
    first = lengths[0]
    for other in lengths:
        if other != first:
            raise RequestError(400)  # Go: "cannot contain multiple Content-Length headers"
    if _DIGITS.fullmatch(first) is None or len(first) > 18:
        raise RequestError(400)  # Go's strconv.ParseUint(cl, 10, 63): digits only, no sign
    return int(first)


def _decide(
    head: RequestHead,
    hosts: list[bytes] | None,
    lengths: list[bytes] | None,
    codings: list[bytes] | None,
    connection: list[bytes] | None,
    upgrade: bytes | None,
) -> None:
    if hosts is None:
        if head.minor == 1 and head.method != "CONNECT":
            raise RequestError(400, "missing required Host header")  # RFC 9112 §3.2
    elif len(hosts) > 1:
        raise RequestError(400, "too many Host headers")  # RFC 9112 §3.2
    else:
        host = decoded_host(hosts[0])
        if host is None:
            raise RequestError(400, "malformed Host header")
        head.host = host
    head.length = body_length(lengths, codings, head.minor)
    # Go's shouldClose: HTTP/1.1 stays open unless "close"; HTTP/1.0 only with "keep-alive".
    if head.minor == 1:
        head.keep_alive = not has_token(connection, b"close")
    else:
        head.keep_alive = has_token(connection, b"keep-alive") and not has_token(
            connection, b"close"
        )
    if upgrade and has_token(connection, b"upgrade"):
        if _PRINTABLE_ASCII.fullmatch(upgrade) is None:
            # Caddy's reverse proxy: "client tried to switch to invalid protocol".
            raise RequestError(400)
        head.upgrade = True


class ChunkedDecoder:
    """The chunked transfer coding of a request body (RFC 9112 §7.1), fed bytes as they come.

    Chunk extensions are skipped and trailer fields dropped (the proxy re-frames the body for
    the origin, so what the client wrote around the data never reaches it); every line is
    bounded, and any deviation from the grammar is a RequestError (400).
    """

    __slots__ = ("_line", "_max_trailer", "_trailer_bytes", "done", "left", "state")

    def __init__(self, max_trailer_bytes: int) -> None:
        self.state = 0  # 0: size line, 1: data, 2: CRLF after data, 3: trailer section
        self.left = 0
        self.done = False
        self._line = b""  # an unfinished line carried over to the next feed
        self._trailer_bytes = 0
        self._max_trailer = max_trailer_bytes

    def feed(self, data: bytes, pos: int, out: list[bytes]) -> int:
        """Decode from data[pos:], appending body pieces to `out`; return where the body
        ended (the next request starts there) or len(data) when it needs more."""
        n = len(data)
        while pos < n and not self.done:
            state = self.state
            if state == 1:
                take = min(self.left, n - pos)
                out.append(data[pos : pos + take] if take < n or pos else data)
                pos += take
                self.left -= take
                if not self.left:
                    self.state = 2
                continue
            carried = self._line
            if carried and carried[-1] == 13 and data[pos] == 10:
                # The CRLF was split across two reads.
                line = carried[:-1]
                self._line = b""
                pos += 1
            else:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    self._line = carried + data[pos:]
                    limit = MAX_CHUNK_LINE_BYTES if state != 3 else self._max_trailer
                    if len(self._line) > limit:
                        raise RequestError(400 if state != 3 else 431)
                    return n
                line = carried + data[pos:eol] if carried else data[pos:eol]
                self._line = b""
                pos = eol + 2
            # A bare CR or LF inside a line fails the checks below (hex, empty, field syntax).
            if state == 0:
                self._chunk_size(line)
            elif state == 2:
                if line:
                    raise RequestError(400)  # chunk data longer than its size
                self.state = 0
            else:
                self._trailer_line(line)
        return pos

    def _chunk_size(self, line: bytes) -> None:
        size, _semi, ext = line.partition(b";")
        size = size.rstrip(b" \t")  # BWS before a chunk extension (RFC 9112 §7.1.1)
        if _HEX.fullmatch(size) is None or len(line) > MAX_CHUNK_LINE_BYTES:
            raise RequestError(400)
        if _VALUE_RE.fullmatch(ext) is None:
            raise RequestError(400)
        self.left = int(size, 16)
        self.state = 1 if self.left else 3

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self.done = True
            return
        self._trailer_bytes += len(line) + 2
        if self._trailer_bytes > self._max_trailer:
            raise RequestError(431)
        if _FIELD_LINES_RE.fullmatch(line + b"\r\n") is None:
            raise RequestError(400)
