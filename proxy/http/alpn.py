"""Choosing the HTTP protocol of a TLS connection from its ALPN result (RFC 7301).

A server whose `protocols` list h2 offers ["h2", "http/1.1"] (proxy/tls.py). The listener's
protocol factory then makes an `ALPNDispatch`, which waits for the handshake (asyncio calls
`connection_made` once it is done), reads the negotiated protocol and hands the transport to an
`HTTP2Connection` for "h2", an `HTTP1Connection` otherwise (http/1.1, or a client that sent no
ALPN: Go's server serves HTTP/1.1 then too). The transport is re-pointed at the chosen protocol
(`set_protocol`), so after connection_made nothing runs through this class.
"""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.http.h2server import HTTP2Connection
from proxy.http.server import HTTP1Connection


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
