"""Choosing the HTTP protocol of a TLS connection from its ALPN result (RFC 7301).

A server whose `protocols` are unset (Caddy's default, less h3) or list h2 offers ["h2",
"http/1.1"] (proxy/tls.py). The listener's
protocol factory then makes an `ALPNDispatch`, which waits for the handshake (asyncio calls
`connection_made` once it is done), reads the negotiated protocol and hands the transport to an
`HTTP2Connection` for "h2", an `HTTP1Connection` otherwise (http/1.1, or a client that sent no
ALPN: Go's server serves HTTP/1.1 then too). The transport is re-pointed at the chosen protocol
(`set_protocol`), so after connection_made nothing runs through this class.

On a plain-HTTP listener of a server whose `protocols` list h2c, `PrefaceSniff` does the same
from the first bytes: HTTP/2 with prior knowledge (RFC 9113 §3.3) when they are the client
connection preface, HTTP/1.1 otherwise (the `Upgrade: h2c` dance of RFC 7540 §3.2, dropped by
RFC 9113, is not offered; Go's h2c handler accepts it, Caddy's server too). A first line that
is neither the preface nor an HTTP request line is an invalid preface and closes the connection
(`first_line_verdict`).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from proxy.http.h2server import HTTP2Connection
from proxy.http.server import HTTP1Connection

# RFC 9113 §3.4: the client connection preface.
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def negotiated_protocol(transport: Any) -> str:
    ssl_obj = transport.get_extra_info("ssl_object")
    if ssl_obj is None:
        return ""
    return str(ssl_obj.selected_alpn_protocol() or "")


class ALPNDispatch(asyncio.Protocol):
    __slots__ = ("_inner", "runtime", "scheme")

    def __init__(self, runtime: Any, scheme: str = "https") -> None:
        self.runtime = runtime
        self.scheme = scheme
        self._inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        inner: asyncio.Protocol
        if negotiated_protocol(transport) == "h2":
            inner = HTTP2Connection(self.runtime, self.scheme)
        else:
            inner = HTTP1Connection(self.runtime, self.scheme)
        self._inner = inner
        transport.set_protocol(inner)
        inner.connection_made(transport)

    # Only reached if the transport delivers before set_protocol took effect (it does not in
    # asyncio's or uvloop's SSL transports); kept so that nothing is ever lost.
    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        return None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


# What the first line of a plain connection on an h2c listener says (`first_line_verdict`).
WAIT: Final = 0  # no line end yet: read on
HTTP1: Final = 1  # an HTTP/1.x request line, or too long to tell: HTTP/1.1 answers it
NOT_HTTP: Final = 2  # neither the preface nor an HTTP request line

# How much of a first line is read before HTTP/1.1 takes over (its own limits then apply).
FIRST_LINE_SNIFF_BYTES: Final = 8192


def first_line_verdict(buf: bytes) -> int:
    """Tell an invalid HTTP/2 connection preface from an HTTP/1.1 request, on a listener that
    speaks both. RFC 9113 §3.4: an invalid preface is a connection error (PROTOCOL_ERROR; the
    GOAWAY may be omitted). On a shared listener any bytes that are not the preface could be
    HTTP/1.1, so only a first line whose last token is no `HTTP/` version (RFC 9112 §3: method
    SP target SP HTTP-version) is taken as a broken preface and closed; every request line
    that names an HTTP version (even a bad one) gets HTTP/1.1's answer, as without h2c.
    Go's net/http answers 400 here instead (h2spec http2/3.5, which Caddy fails)."""
    if len(buf) >= FIRST_LINE_SNIFF_BYTES:
        return HTTP1
    # An empty first line is no request line either: HTTP/1.1 here refuses one too (400;
    # RFC 9112 §2.2 lets a server skip it, Go does not).
    end = buf.find(b"\n")
    if end < 0:
        return WAIT
    line = buf[:end].rstrip(b"\r")
    version = line.rsplit(b" ", 1)[-1] if b" " in line else b""
    return HTTP1 if version.startswith(b"HTTP/") else NOT_HTTP


class PrefaceSniff(asyncio.Protocol):
    """A plain-HTTP connection until its first bytes tell HTTP/2 (the preface) from HTTP/1.1.
    Until then it sits in the runtime's connections like an idle HTTP/1.1 connection: the idle
    timeout closes a client that sends nothing, a graceful stop closes it at once."""

    __slots__ = ("_buf", "_deadline", "_inner", "runtime", "scheme", "transport")

    def __init__(self, runtime: Any, scheme: str = "http") -> None:
        self.runtime = runtime
        self.scheme = scheme
        self.transport: Any = None
        self._inner: asyncio.Protocol | None = None
        self._buf = b""
        self._deadline = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.runtime.successor is not None:
            self.runtime = self.runtime.latest()
        idle = self.runtime.timeouts.idle_s
        self._deadline = self.runtime.now + idle if idle else 0.0
        self.runtime.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
            return
        buf = self._buf + data
        if len(buf) < len(PREFACE) and PREFACE.startswith(buf):
            self._buf = buf  # could still be the preface
            return
        if not buf.startswith(PREFACE):
            verdict = first_line_verdict(buf)
            if verdict == WAIT:
                if not self._buf:
                    # The head has begun: HTTP/1.1's header deadline, not the idle one.
                    limit = self.runtime.timeouts.read_header_s
                    if limit:
                        self._deadline = self.runtime.now + limit
                self._buf = buf
                return
            if verdict == NOT_HTTP:
                self.close()
                return
        self._buf = b""
        self.runtime.connections.discard(self)
        inner: asyncio.Protocol
        if buf.startswith(PREFACE):
            inner = HTTP2Connection(self.runtime, self.scheme)
        else:
            inner = HTTP1Connection(self.runtime, self.scheme)
        self._inner = inner
        self.transport.set_protocol(inner)
        inner.connection_made(self.transport)
        inner.data_received(buf)

    def connection_lost(self, exc: Exception | None) -> None:
        self.runtime.connections.discard(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        return None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    # -- what the runtime asks of a connection (before the protocol is known) -------------------

    @property
    def busy(self) -> bool:
        return False

    @property
    def tunnel(self) -> Any:
        return None

    def check_timeout(self, now: float) -> None:
        if self._deadline and now > self._deadline:
            self.close()

    def shutdown(self) -> None:
        self.close()

    def close(self) -> None:
        self.runtime.connections.discard(self)
        if self.transport is not None:
            self.transport.close()

    def adopt(self, runtime: Any) -> None:
        self.runtime.connections.discard(self)
        self.runtime = runtime
        runtime.connections.add(self)
        if not runtime.accepting:
            self.close()
