"""Dial failures of upstream connections.

Kept apart from pool.py because the pool is compiled with mypyc (proxy/native.py), which cannot
compile subclasses of builtin exceptions.
"""


class DialError(OSError):
    """Could not connect (refused, unreachable, resolve failure, TLS handshake)."""


class DialTimeout(DialError, TimeoutError):
    """The dial did not complete within dial_timeout."""


class TLSHandshakeTimeout(DialTimeout):
    """The TCP connection was made but the TLS handshake exceeded tls.handshake_timeout.

    A timeout like Go's tlsHandshakeTimeoutError, so Caddy answers 504 (statusError).
    """
