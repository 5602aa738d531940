"""HTTP field and status facts shared by the HTTP/1.1 and HTTP/2 servers, the upstream client
and the reverse proxy: which fields are hop-by-hop, what a status line reads, which statuses
carry no body, how a response is framed, how a configured status (class) matches.

proxy/http/wire.py holds the request side (parsing and framing a request head); this module
holds the rules both directions and both protocols share, each a constant or a pure function,
tested from tables in tests/unit/test_wire_fields.py. The encodings stay with their protocol:
the HTTP/1.1 server writes bytes, the HTTP/2 server a field list, from the same decisions.

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

from typing import Final

from proxy.http.status_text import GO_STATUS_TEXT

# -- field sets --------------------------------------------------------------------------------

# Caddy's hopHeaders (reverseproxy.go), lowercase: removed from what the proxy forwards both
# ways. The one list for the server, the upstream client and the reverse proxy.
HOP_BY_HOP_FIELDS: Final = frozenset(
    {
        b"alt-svc",
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# The same, as text, for the header lists the proxy's slow paths build.
HOP_BY_HOP_NAMES: Final = frozenset([name.decode("latin-1") for name in HOP_BY_HOP_FIELDS])
X_FORWARDED_FIELDS: Final = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
)
X_FORWARDED_NAMES: Final = frozenset([name.decode("latin-1") for name in X_FORWARDED_FIELDS])
# Connection tokens that name no other field (RFC 9110 §7.6.1).
PLAIN_CONNECTION_TOKENS: Final = frozenset({b"keep-alive", b"close", b"upgrade"})
PLAIN_CONNECTION_NAMES: Final = frozenset([t.decode("latin-1") for t in PLAIN_CONNECTION_TOKENS])
# RFC 9113 §8.2.2: connection-specific fields never appear in HTTP/2, so the HTTP/2 server
# drops them from a response written for HTTP/1.1 (Go's http2 server drops Connection and
# Transfer-Encoding; the others of the RFC's list are dropped too, as a peer must treat them
# as malformed). Not the hop-by-hop list: TE, Trailer, Alt-Svc... stay end-to-end here.
H2_CONNECTION_SPECIFIC_FIELDS: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
# Caddy's server sets `Server: Caddy` before any handler runs (so `header -Server` removes it).
SERVER_FIELD: Final = ("Server", "Caddy")
SERVER_FIELD_LINE: Final = b"Server: Caddy\r\n"

# -- status lines ------------------------------------------------------------------------------

# Caddy's reason phrases are Go's http.StatusText, plus the 499 Caddy logs for a client that
# went away (a line nobody reads, but written the way Caddy would if it wrote one).
_REASONS: Final = dict(GO_STATUS_TEXT)
_REASONS[499] = "Client Closed Request"
_STATUS_LINES: Final = {code: f"HTTP/1.1 {code} {phrase}\r\n" for code, phrase in _REASONS.items()}
_STATUS_LINES_B: Final = {code: line.encode("latin-1") for code, line in _STATUS_LINES.items()}
# RFC 9110 §10.1.1: the interim answer to `Expect: 100-continue`.
CONTINUE_HEAD: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


def reason_phrase(status: int) -> str:
    """The reason phrase pyproxy writes for `status`: Go's text, "" for a code Go does not know."""
    return _REASONS.get(status, "")


def status_line(status: int) -> str:
    """`HTTP/1.1 <status> <reason>\\r\\n` as Go's server writes it: a code without a text gets
    "status code <n>" (net/http writeStatusLine)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} status code {status}\r\n"
    return line


def status_line_bytes(status: int) -> bytes:
    """status_line, encoded (the known codes are encoded once, at import)."""
    line = _STATUS_LINES_B.get(status)
    if line is None:
        line = status_line(status).encode("latin-1")
    return line


# -- status classes ----------------------------------------------------------------------------


def status_code_matches(actual: int, configured: int) -> bool:
    """Caddy's caddyhttp.StatusCodeMatches: the exact code, or a class when the configured
    value is below 100 (`5` matches 500-599, `404` only 404)."""
    if actual == configured:
        return True
    return 0 < configured < 100 and configured * 100 <= actual < (configured + 1) * 100


def status_in(actual: int, configured: list[int] | tuple[int, ...]) -> bool:
    """Any of the configured codes or classes matches (an empty list matches nothing)."""
    return any(status_code_matches(actual, code) for code in configured)


def bodiless_status(status: int) -> bool:
    """1xx, 204 and 304 responses never carry content (RFC 9110 §6.4.1, RFC 9112 §6.3 rule 1)."""
    return status < 200 or status == 204 or status == 304


# -- response framing --------------------------------------------------------------------------

# The protocol a response goes out on (`response_framing`).
HTTP_10: Final = 10
HTTP_11: Final = 11
HTTP_2: Final = 20

# How the body of a response is delimited (`ResponseFraming.delimit`).
NO_BODY: Final = 0  # HEAD, 1xx, 204, 304: no body bytes follow the head
BY_LENGTH: Final = 1  # Content-Length (HTTP/2: END_STREAM after that many bytes)
BY_CHUNKS: Final = 2  # HTTP/1.1, length unknown: Transfer-Encoding: chunked
BY_CLOSE: Final = 3  # HTTP/1.0, length unknown: the body ends when the connection closes
BY_STREAM_END: Final = 4  # HTTP/2, length unknown: END_STREAM ends it


class ResponseFraming:
    """What a response head says about its body: the Content-Length field to write (None: none)
    and how the body ends."""

    __slots__ = ("content_length", "delimit")

    def __init__(self, content_length: int | None, delimit: int) -> None:
        self.content_length = content_length
        self.delimit = delimit

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ResponseFraming)
            and other.content_length == self.content_length
            and other.delimit == self.delimit
        )

    def __repr__(self) -> str:
        return f"ResponseFraming({self.content_length!r}, {self.delimit!r})"


def response_framing(
    status: int, length: int | None, head_request: bool, protocol: int
) -> ResponseFraming:
    """Frame a response of `status` whose body is `length` bytes (None: not known yet) to a
    request over `protocol` (HTTP_11, HTTP_10 or HTTP_2), the way Go's server does.

    - 1xx, 204, 304: no body and no Content-Length (RFC 9110 §8.6: a server must not send one
      in 1xx/204; for 304 Go does not either);
    - HEAD: no body; a known non-zero length is still announced (RFC 9110 §9.3.2), a zero one is
      not (Go cannot tell "0" from "nothing written yet" for HEAD and writes none);
    - a known length is Content-Length; an unknown one is chunked on HTTP/1.1, ends with the
      connection on HTTP/1.0 (RFC 9112 §6.3 rule 8), ends with END_STREAM on HTTP/2.
    """
    if bodiless_status(status):
        return ResponseFraming(None, NO_BODY)
    if head_request:
        return ResponseFraming(length if length else None, NO_BODY)
    if length is not None:
        return ResponseFraming(length, BY_LENGTH)
    if protocol == HTTP_11:
        return ResponseFraming(None, BY_CHUNKS)
    if protocol == HTTP_10:
        return ResponseFraming(None, BY_CLOSE)
    return ResponseFraming(None, BY_STREAM_END)


def h2_response_fields(
    fields: list[tuple[bytes, bytes]], date: bytes, content_length: int | None
) -> list[tuple[bytes, bytes]]:
    """The fields of an HTTP/2 response head after `:status`, from the lowercase fields a
    handler or upstream gave: connection-specific fields and Content-Length dropped (the
    framing is ours, `content_length` from response_framing), Date added when absent (RFC 9110
    §6.6.1: an origin with a clock sends one; Go's server adds it)."""
    out: list[tuple[bytes, bytes]] = []
    has_date = False
    for field in fields:
        name = field[0]
        if name in H2_CONNECTION_SPECIFIC_FIELDS or name == b"content-length":
            continue
        if name == b"date":
            has_date = True
        out.append(field)
    if not has_date:
        out.append((b"date", date))
    if content_length is not None:
        out.append((b"content-length", str(content_length).encode()))
    return out
