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
RFC 9113, is not offered; Go's h2c handler accepts it, Caddy's server too).
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
