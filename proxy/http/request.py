"""The engine's request object (implements `proxy.request_view.RequestView`) and its body pipe.

A `Request` is created by the HTTP/1.1 server protocol when a request head is complete. Its
body arrives later, chunk by chunk; a handler that wants it attaches a `BodySink` with
`attach_body()`. Until then chunks are queued (bounded by the server pausing reads).

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

import re
from typing import Any, Final, Protocol

from proxy.http.target import parse_request_target


class BodySink(Protocol):
    def on_body(self, data: bytes) -> None: ...
    def on_body_end(self) -> None: ...


_NO_FIELDS: Final[list[tuple[bytes, bytes]]] = []

# An origin-form path that Go's url.ParseRequestURI leaves as it is: no '%' escape and no
# byte that URL.EscapedPath() would escape ('#', '\\', '"', '<', '>', '^', '`', '{', '|',
# '}', controls, non-ASCII). Its Path, its EscapedPath() and the received text are one string.
_PLAIN_PATH: Final = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/\[\]]*")


class Request:
    __slots__ = (
        "_body_queue",
        "_conn",
        "_headers",
        "_odd",
        "_raw",
        "_special",
        "body_done",
        "body_received",
        "body_sink",
        "chunked",
        "client_ip",
        "content_length",
        "expect_continue",
        "host",
        "keep_alive",
        "method",
        "orig_method",
        "orig_uri",
        "path",
        "proto",
        "query",
        "raw_path",
        "remote_ip",
        "remote_port",
        "scheme",
        "start_time",
        "upgrade",
        "uri",
        "vars",
    )

    def __init__(
        self,
        method: str,
        uri: str,
        proto: str,
        headers: list[tuple[str, str]] | None,
        remote_ip: str,
        remote_port: int,
        scheme: str,
    ) -> None:
        self.method = method
        self.orig_method = method
        self.orig_uri = uri
        self.proto = proto
        # Header fields as the server parsed them, kept as bytes until something reads
        # `headers`: `_raw` is the serialized block of ordinary fields (b"Name: value\r\n"...),
        # `_special` the fields the server or the proxy single out (Host, framing, hop-by-hop,
        # X-Forwarded-*); `_odd` says some of those need the proxy's attention. The proxy's fast
        # path forwards `_raw` as it is while `headers` has never been decoded.
        self._headers: list[tuple[str, str]] | None = headers
        self._raw: bytes | None = None
        self._special: list[tuple[bytes, bytes]] = _NO_FIELDS  # shared, never mutated
        self._odd = False
        self.remote_ip = remote_ip
        self.remote_port = remote_port
        self.client_ip = remote_ip
        self.scheme = scheme
        self.vars: dict[str, Any] = {}
        self.host = ""
        self.keep_alive = True
        self.expect_continue = False
        self.content_length: int | None = None
        self.chunked = False
        self.upgrade = False
        self.body_sink: BodySink | None = None
        self._body_queue: list[bytes] | None = None
        self.body_done = False
        self.body_received = 0
        self.start_time = 0.0
        self._conn: Any = None
        self.set_uri(uri)

    # -- RequestView -------------------------------------------------------------------------

    @property
    def headers(self) -> list[tuple[str, str]]:
        h = self._headers
        if h is None:
            h = self._headers = self._decode_headers()
        return h

    @headers.setter
    def headers(self, value: list[tuple[str, str]]) -> None:
        self._headers = value
        self._raw = None  # no longer what the client sent: the proxy serializes `headers`

    def _decode_headers(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        raw = self._raw
        if raw:
            for line in raw.decode("latin-1").split("\r\n"):
                if line:
                    k, _sep, v = line.partition(":")
                    out.append((k, v[1:]))
        for k_b, v_b in self._special:
            out.append((k_b.decode("latin-1"), v_b.decode("latin-1")))
        return out

    def set_uri(self, uri: str) -> None:
        """Set the request-target and derive path/raw_path/query (Go's url.ParseRequestURI).

        `path` is URL.Path (decoded), `raw_path` URL.EscapedPath() (what matchers with `%`
        compare and the reverse proxy forwards), `query` URL.RawQuery. Raises
        proxy.http.target.BadRequestTarget where Go's server answers 400 (a bad %-escape).
        `uri` is the request-target as the server read it, one character per byte (Latin-1),
        and stays as received (Caddy's {http.request.uri}).
        """
        self.uri = uri
        raw, _sep, query = uri.partition("?")
        if _PLAIN_PATH.fullmatch(raw) is not None:
            # Almost every request: nothing to decode or escape.
            self.raw_path = raw
            self.path = raw
            self.query = query
            return
        target = parse_request_target(uri, self.method == "CONNECT")
        self.path = target.path
        self.raw_path = target.escaped_path
        self.query = target.query

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def set_header(self, name: str, value: str | None) -> None:
        lname = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != lname]
        if value is not None:
            self.headers.append((name, value))

    # -- body pipe ---------------------------------------------------------------------------

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def feed_body(self, data: bytes) -> None:
        self.body_received += len(data)
        sink = self.body_sink
        if sink is not None:
            sink.on_body(data)
        elif self._body_queue is None:
            self._body_queue = [data]
        else:
            self._body_queue.append(data)

    def end_body(self) -> None:
        self.body_done = True
        if self.body_sink is not None:
            self.body_sink.on_body_end()

    def queued_body_bytes(self) -> int:
        return sum(map(len, self._body_queue)) if self._body_queue else 0

    def attach_body(self, sink: BodySink) -> None:
        """Start receiving the body; queued chunks are delivered first."""
        self.body_sink = sink
        if self._conn is not None:
            self._conn.body_wanted(self)
        queue, self._body_queue = self._body_queue, None
        if queue:
            for chunk in queue:
                sink.on_body(chunk)
        if self.body_done:
            sink.on_body_end()

    def detach_body(self) -> None:
        """Stop delivering body chunks (they are discarded from now on)."""
        self.body_sink = _DISCARD
        self._body_queue = None

    def pause_body(self) -> None:
        if self._conn is not None:
            self._conn.pause_body()

    def resume_body(self) -> None:
        if self._conn is not None:
            self._conn.resume_body()


class _Discard:
    __slots__ = ()

    def on_body(self, data: bytes) -> None:
        pass

    def on_body_end(self) -> None:
        pass


_DISCARD: Final = _Discard()
