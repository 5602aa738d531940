"""TEMPORARY adapter: the HPACK API of proxy/http/hpack.py (RFC 7541), wrapping the `hpack`
package until branch h/hpack's own codec replaces this file. Nothing else belongs here."""

from __future__ import annotations

import hpack as _hpack

__all__ = ["Decoder", "Encoder", "HPACKError", "HeaderListTooLarge"]


class HPACKError(Exception):
    """A header block that does not decode: a connection error COMPRESSION_ERROR."""


class HeaderListTooLarge(HPACKError):
    """The decoded list's RFC 7541 §4.1 size passed max_header_list_size."""


class Decoder:
    def __init__(self, max_table_size: int = 4096, max_header_list_size: int = 65536) -> None:
        self._dec = _hpack.Decoder(max_header_list_size=max_header_list_size)
        self._dec.max_allowed_table_size = max_table_size
        self.max_header_list_size = max_header_list_size

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        self._dec.max_header_list_size = self.max_header_list_size
        try:
            return [(bytes(n), bytes(v)) for n, v in self._dec.decode(block, raw=True)]
        except _hpack.OversizedHeaderListError as exc:
            raise HeaderListTooLarge(str(exc)) from exc
        except (_hpack.HPACKError, ValueError, IndexError) as exc:
            raise HPACKError(str(exc)) from exc


class Encoder:
    def __init__(self) -> None:
        self._enc = _hpack.Encoder()

    def set_max_table_size(self, size: int) -> None:
        self._enc.header_table_size = size

    def encode(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        return bytes(self._enc.encode(headers))
