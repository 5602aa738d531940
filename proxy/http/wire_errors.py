"""The error a malformed request raises while its head or body is parsed (proxy/http/wire.py).

Kept apart from wire.py because that module is compiled with mypyc (proxy/native.py), which
cannot compile subclasses of builtin exceptions.
"""

from __future__ import annotations


class RequestError(Exception):
    """A request the server must refuse: `status` is the response status, `detail` the text Go's
    server adds after the reason phrase (e.g. "malformed Host header"), "" for none."""

    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(f"{status} {detail}".strip())
        self.status = status
        self.detail = detail
