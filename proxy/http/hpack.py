"""HPACK, HTTP/2's header compression (RFC 7541): a lean decoder and encoder for the h2 server.

Pure (no I/O, no asyncio) and compiled with mypyc (proxy/native.py), so it is written for that
compiler: precise types, tuples of bytes as fields, module-level tables built once at import and
no closures on the per-call path.

Decoder (`Decoder.decode`, one call per complete field block):
- static and dynamic table with eviction (§4.3, §4.4), every representation of §6.1 to §6.3;
- integers (§5.1) above 2**32 - 1, or with more than 5 continuation bytes, are errors;
- Huffman strings (§5.2, Appendix B) through a 4-bit state table: EOS inside a string, padding of
  8 bits or more, and padding that is not the most significant bits of EOS (all ones) are errors;
- a dynamic table size update is allowed only before the block's first field and never above
  the `max_table_size` we advertised in SETTINGS_HEADER_TABLE_SIZE (§4.2, §6.3);
- HPACK bombs: decoding stops with HeaderListTooLarge as soon as the running header list size
  (§4.1: name + value + 32 per field) exceeds `max_header_list_size`, before the next field is
  built, and no string is allocated before its length is checked against the block's remaining
  bytes (a Huffman string decodes to at most 8/5 of its encoded length).
Any HPACKError leaves the dynamic table in an unknown state relative to the peer's encoder, so
RFC 9113 §4.3 makes it a connection error (COMPRESSION_ERROR): the decoder is dead afterwards and
every further `decode` raises HPACKError again.

Encoder (`Encoder.encode`, one call per field block, in the order the blocks are sent):
- a (name, value) of the static table is one byte; one in the dynamic table is its index;
- otherwise a literal, with the name's static or dynamic index when there is one;
- what goes into the dynamic table (literal with incremental indexing, §6.2.1): every field
  except the sensitive ones and the big ones. Sensitive (`cookie`, `set-cookie`, `authorization`,
  `proxy-authorization`) are sent as never-indexed literals (§6.2.3, §7.1.3): a per-user secret
  in a table that later fields are compressed against is what CRIME-style probing attacks, and
  never-indexed also forbids intermediaries to index it. Big (entry size above 1 KiB, or above
  the table itself) are literals without indexing (§6.2.2): one would evict a quarter of a
  4 KiB table of the small fields that repeat. Go's hpack indexes everything not sensitive
  that fits the table; we add the 1 KiB cap;
- Huffman coding when it is strictly shorter than the raw string (Go's choice);
- the table is never larger than 4096 octets whatever the peer allows (Go's
  SetMaxDynamicTableSizeLimit default): a change by `set_max_table_size` is signalled at the
  start of the next block, the smallest size first when it changed more than once (§4.2);
- fields whose encoding does not depend on the dynamic table (never-indexed literals with a
  static or literal name) are cached as their encoded bytes, up to a byte budget, per encoder
  (so per connection: one client's secrets never sit in a cache another connection hits).
The decoder caches nothing: after the first block of a connection, a repeated head is mostly
one-octet indexes, already cheaper to decode than a cache key would be to hash.
Names are encoded as given: the caller sends lowercase names (RFC 9113 §8.2.1).

Compiled with mypyc (proxy/native.py).
"""

from __future__ import annotations

from typing import Any, Final, cast

from proxy.http.hpack_tables import HUFFMAN_CODES, HUFFMAN_LENGTHS, STATIC_TABLE


# These two are compiled too (mypyc compiles subclasses of Exception; the compiled test run of
# tests/unit/test_hpack.py catches them from interpreted code): the h2 layer imports them here.
class HPACKError(Exception):
    """A field block that cannot be decoded: connection error COMPRESSION_ERROR (RFC 9113 §4.3)."""


class HeaderListTooLarge(HPACKError):
    """The decoded field list exceeds max_header_list_size (RFC 7541 §4.1 sizes)."""


STATIC_COUNT: Final = 61  # RFC 7541 Appendix A
ENTRY_OVERHEAD: Final = 32  # RFC 7541 §4.1
DEFAULT_TABLE_SIZE: Final = 4096  # RFC 9113 §6.5.2 SETTINGS_HEADER_TABLE_SIZE initial value
MAX_INTEGER: Final = 2**32 - 1  # larger integers are never legitimate in a field block
MAX_CONTINUATION_BYTES: Final = 5  # 7 bits each: enough for MAX_INTEGER after any prefix
INDEX_LIMIT: Final = 1024  # entries bigger than this are not inserted by the encoder
ENCODER_TABLE_LIMIT: Final = 4096  # the encoder's own cap on the dynamic table
CACHE_BUDGET: Final = 16384  # bytes of encoded fields an encoder caches
NEVER_INDEXED_NAMES: Final = frozenset(
    (b"cookie", b"set-cookie", b"authorization", b"proxy-authorization")
)

# --- Huffman decoding: a 4-bit state machine over the code tree of Appendix B ----------------
# The tree of the 257 codes has 256 internal nodes; each is a state (0: the root). For each
# state and nibble (index state * 16 + nibble) three byte tables say: the next state, the symbol
# that ended (if any), and flags: EMIT (a symbol ended), FAIL (EOS was decoded, §5.2), ACCEPT
# (stopping here is a valid end of string: at the root, or at most 7 bits down the all-ones path
# of EOS, §5.2). No code is shorter than 5 bits, so a nibble ends at most one symbol. Bytes
# rather than lists: mypyc reads a bytes item as a machine int, with no object to unbox.
_EMIT: Final = 1
_FAIL: Final = 2
_ACCEPT: Final = 4


def _build_huffman_decode_tables() -> tuple[bytes, bytes, bytes]:
    children: list[list[int]] = [[-1, -1]]  # per node: child per bit; >= 0 node, < -1 leaf
    for sym in range(257):
        code = HUFFMAN_CODES[sym]
        length = HUFFMAN_LENGTHS[sym]
        node = 0
        for shift in range(length - 1, 0, -1):
            bit = (code >> shift) & 1
            nxt = children[node][bit]
            if nxt == -1:
                nxt = len(children)
                children.append([-1, -1])
                children[node][bit] = nxt
            node = nxt
        children[node][code & 1] = -2 - sym
    accepting = [False] * len(children)
    node = 0
    for _ in range(8):  # the root and the first 7 nodes of the all-ones (EOS) path
        accepting[node] = True
        node = children[node][1]
    next_states = bytearray()
    symbols = bytearray()
    flags = bytearray()
    for state in range(len(children)):
        for nibble in range(16):
            node = state
            symbol = 0
            flag = 0
            for shift in (3, 2, 1, 0):
                nxt = children[node][(nibble >> shift) & 1]
                if nxt < -1:
                    if nxt == -2 - 256:
                        flag |= _FAIL
                    else:
                        symbol = -2 - nxt
                        flag |= _EMIT
                    node = 0
                else:
                    node = nxt
            if accepting[node]:
                flag |= _ACCEPT
            next_states.append(node)
            symbols.append(symbol)
            flags.append(flag)
    return bytes(next_states), bytes(symbols), bytes(flags)


_DECODE_TABLES: Final = _build_huffman_decode_tables()
HUFFMAN_NEXT: Final[bytes] = _DECODE_TABLES[0]
HUFFMAN_SYMBOL: Final[bytes] = _DECODE_TABLES[1]
HUFFMAN_FLAGS: Final[bytes] = _DECODE_TABLES[2]
HUFFMAN_LENGTH_BYTES: Final[bytes] = bytes(HUFFMAN_LENGTHS)  # all codes are 5..30 bits


def huffman_decode(data: bytes, start: int, end: int) -> bytes:
    """The Huffman-coded string data[start:end] (RFC 7541 §5.2); HPACKError when malformed."""
    next_states = HUFFMAN_NEXT
    symbols = HUFFMAN_SYMBOL
    flags = HUFFMAN_FLAGS
    out: list[int] = []  # list.append is native to mypyc; bytearray.append is a method call
    state = 0
    flag = _ACCEPT
    for i in range(start, end):
        byte = data[i]
        k = (state << 4) | (byte >> 4)
        flag = flags[k]
        if flag & (_EMIT | _FAIL):
            if flag & _FAIL:
                raise HPACKError("Huffman string contains EOS")
            out.append(symbols[k])
        k = (next_states[k] << 4) | (byte & 0x0F)
        flag = flags[k]
        if flag & (_EMIT | _FAIL):
            if flag & _FAIL:
                raise HPACKError("Huffman string contains EOS")
            out.append(symbols[k])
        state = next_states[k]
    if not flag & _ACCEPT:
        raise HPACKError("Huffman string has invalid padding")
    return bytes(out)


def huffman_encoded_length(s: bytes) -> int:
    """Octets of the Huffman coding of s (RFC 7541 §5.2: padded to a whole octet)."""
    lengths = HUFFMAN_LENGTH_BYTES
    bits = 0
    for byte in s:
        bits += lengths[byte]
    return (bits + 7) >> 3


def huffman_encode(s: bytes) -> bytes:
    """The Huffman coding of s, padded with the most significant bits of EOS (ones)."""
    codes = HUFFMAN_CODES
    out: list[int] = []
    lengths = HUFFMAN_LENGTHS
    acc = 0
    bits = 0
    for byte in s:
        length = lengths[byte]
        acc = (acc << length) | codes[byte]
        bits += length
        while bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
        acc &= (1 << bits) - 1  # keeps acc below 2**37: a machine int for mypyc
    if bits:
        out.append(((acc << (8 - bits)) | (0xFF >> bits)) & 0xFF)
    return bytes(out)


def decode_integer(block: bytes, pos: int, prefix_max: int) -> tuple[int, int]:
    """The integer whose prefix is in block[pos] (RFC 7541 §5.1) and the position after it.

    `prefix_max` is 2**N - 1 for an N-bit prefix. Rejects values above MAX_INTEGER and more than
    MAX_CONTINUATION_BYTES continuation octets (a padded encoding of a small number included)."""
    value = block[pos] & prefix_max
    pos += 1
    if value < prefix_max:
        return value, pos
    n = len(block)
    shift = 0
    while True:
        if pos >= n:
            raise HPACKError("truncated integer")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift >= 7 * MAX_CONTINUATION_BYTES:
            raise HPACKError("integer encoding too long")
    if value > MAX_INTEGER:
        raise HPACKError("integer overflow")
    return value, pos


def decode_string(block: bytes, pos: int) -> tuple[bytes, int]:
    """The string literal at block[pos] (RFC 7541 §5.2) and the position after it."""
    if pos >= len(block):
        raise HPACKError("truncated field: string expected")
    huffman = block[pos] & 0x80
    length, pos = decode_integer(block, pos, 0x7F)
    end = pos + length
    if end > len(block):  # checked before anything is allocated
        raise HPACKError("string length beyond the end of the block")
    if huffman:
        return huffman_decode(block, pos, end), end
    return block[pos:end], end


def encode_integer(out: bytearray, flags: int, prefix_max: int, value: int) -> None:
    """Append value with an N-bit prefix (prefix_max = 2**N - 1) after `flags` (RFC 7541 §5.1)."""
    if value < prefix_max:
        out.append(flags | value)
        return
    out.append(flags | prefix_max)
    value -= prefix_max
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def encode_string(out: bytearray, s: bytes) -> None:
    """Append a string literal, Huffman-coded when that is strictly shorter (RFC 7541 §5.2)."""
    huffman_length = huffman_encoded_length(s)
    if huffman_length < len(s):
        encode_integer(out, 0x80, 0x7F, huffman_length)
        out += huffman_encode(s)
    else:
        encode_integer(out, 0, 0x7F, len(s))
        out += s


def _static_full_index() -> dict[tuple[bytes, bytes], int]:
    found: dict[tuple[bytes, bytes], int] = {}
    for i, field in enumerate(STATIC_TABLE):
        if field not in found:  # (name, b"") entries match fields with an empty value too
            found[field] = -(i + 1)  # negative: a static index in Encoder.field_index
    return found


def _static_name_index() -> dict[bytes, int]:
    found: dict[bytes, int] = {}
    for i, field in enumerate(STATIC_TABLE):
        if field[0] not in found:
            found[field[0]] = i + 1
    return found


STATIC_FIELD_INDEX: Final[dict[tuple[bytes, bytes], int]] = _static_full_index()
STATIC_NAME_INDEX: Final[dict[bytes, int]] = _static_name_index()
STATIC_SIZES: Final[list[int]] = [len(n) + len(v) + ENTRY_OVERHEAD for n, v in STATIC_TABLE]
INDEXED_FIELD: Final[list[bytes]] = [bytes((0x80 | i,)) for i in range(0x7F)]  # §6.1, 1 octet


class Decoder:
    """Decodes the field blocks of one connection's peer, in order. Dead after any HPACKError."""

    def __init__(
        self, max_table_size: int = DEFAULT_TABLE_SIZE, max_header_list_size: int = 65536
    ) -> None:
        # The SETTINGS_HEADER_TABLE_SIZE we advertise: the encoder may not go above it (§4.2).
        self.max_table_size = max_table_size
        self.max_header_list_size = max_header_list_size
        self.table_size_limit = max_table_size  # the current maximum, as last signalled (§6.3)
        self.table_size = 0
        self.entries: list[tuple[bytes, bytes]] = []  # newest first: dynamic index 62 is [0]
        self.entry_sizes: list[int] = []  # entries[i]'s §4.1 size
        self.dead = False

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        if self.dead:
            raise HPACKError("decoder unusable after an earlier compression error")
        self.dead = True  # until the block decoded completely
        static = STATIC_TABLE
        entries = self.entries
        # The indexed path moves fields as Any with their sizes from a parallel list: typed as
        # tuple[bytes, bytes], mypyc would unpack each into a struct and build a new tuple.
        static_fields = cast("tuple[Any, ...]", STATIC_TABLE)
        static_sizes = STATIC_SIZES
        entry_fields = cast("list[Any]", entries)
        entry_sizes = self.entry_sizes
        limit = self.max_header_list_size
        headers: list[Any] = []
        list_size = 0
        n = len(block)
        pos = 0
        while pos < n:
            byte = block[pos]
            if byte & 0x80:  # §6.1 indexed field
                if byte != 0xFF:
                    index = byte & 0x7F
                    pos += 1
                else:
                    index, pos = decode_integer(block, pos, 0x7F)
                if index == 0:
                    raise HPACKError("index 0 is not a field")
                if index <= STATIC_COUNT:
                    item = static_fields[index - 1]
                    list_size += static_sizes[index - 1]
                elif index - STATIC_COUNT <= len(entry_fields):
                    item = entry_fields[index - STATIC_COUNT - 1]
                    list_size += entry_sizes[index - STATIC_COUNT - 1]
                else:
                    raise HPACKError(f"index {index} beyond the tables")
                if list_size > limit:
                    raise HeaderListTooLarge(f"header list larger than {limit} octets")
                headers.append(item)
                continue
            if byte & 0x40:  # §6.2.1 literal with incremental indexing
                index, pos = decode_integer(block, pos, 0x3F)
                indexing = True
            elif byte & 0x20:  # §6.3 dynamic table size update
                if headers:
                    raise HPACKError("dynamic table size update after the first field")
                size, pos = decode_integer(block, pos, 0x1F)
                if size > self.max_table_size:
                    raise HPACKError(
                        f"dynamic table size {size} above the limit {self.max_table_size}"
                    )
                self.table_size_limit = size
                self._evict(size)
                continue
            else:  # §6.2.2 without indexing (0000), §6.2.3 never indexed (0001)
                index, pos = decode_integer(block, pos, 0x0F)
                indexing = False
            if index == 0:
                name, pos = decode_string(block, pos)
            elif index <= STATIC_COUNT:
                name = static[index - 1][0]
            elif index - STATIC_COUNT <= len(entries):
                name = entries[index - STATIC_COUNT - 1][0]
            else:
                raise HPACKError(f"name index {index} beyond the tables")
            list_size += len(name) + ENTRY_OVERHEAD
            if list_size > limit:
                raise HeaderListTooLarge(f"header list larger than {limit} octets")
            value, pos = decode_string(block, pos)
            list_size += len(value)
            if list_size > limit:
                raise HeaderListTooLarge(f"header list larger than {limit} octets")
            field = (name, value)
            if indexing:
                self._insert(field)
            headers.append(field)
        self.dead = False
        return cast("list[tuple[bytes, bytes]]", headers)

    def _evict(self, limit: int) -> None:
        entries = self.entries
        while self.table_size > limit:
            entries.pop()
            self.table_size -= self.entry_sizes.pop()

    def _insert(self, field: tuple[bytes, bytes]) -> None:
        size = len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
        if size > self.table_size_limit:  # §4.4: an entry larger than the table empties it
            self.entries.clear()
            self.entry_sizes.clear()
            self.table_size = 0
            return
        self._evict(self.table_size_limit - size)
        self.entries.insert(0, field)
        self.entry_sizes.insert(0, size)
        self.table_size += size


class Encoder:
    """Encodes the field blocks one connection sends, in order."""

    def __init__(self) -> None:
        self.table_size_limit = DEFAULT_TABLE_SIZE  # the size the peer's decoder assumes
        self.table_size = 0
        self.entries: list[tuple[bytes, bytes]] = []  # oldest first
        self.inserted = 0  # entries ever inserted: the sequence number of the next one
        # One lookup per field: -index for a static field, else its newest dynamic entry's
        # number (a static field is never inserted, so the two kinds of key never collide).
        self.field_index: dict[tuple[bytes, bytes], int] = dict(STATIC_FIELD_INDEX)
        self.name_seq: dict[bytes, int] = {}  # name -> its newest entry's number
        self.pending_min = -1  # smallest size since the last block, -1 when nothing to signal
        self.cache: dict[tuple[bytes, bytes], bytes] = {}
        self.cache_bytes = 0

    def set_max_table_size(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE; the table uses at most ENCODER_TABLE_LIMIT."""
        size = min(size, ENCODER_TABLE_LIMIT)
        if size == self.table_size_limit:
            return
        self.table_size_limit = size
        if self.pending_min < 0 or size < self.pending_min:
            self.pending_min = size
        self._evict(size)

    def encode(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        # The block is joined from parts: the common fields are ready-made bytes objects.
        parts: list[bytes] = []
        if self.pending_min >= 0:  # §4.2: the smallest size of the interval, then the final one
            update = bytearray()
            encode_integer(update, 0x20, 0x1F, self.pending_min)
            if self.pending_min != self.table_size_limit:
                encode_integer(update, 0x20, 0x1F, self.table_size_limit)
            parts.append(bytes(update))
            self.pending_min = -1
        indexed = INDEXED_FIELD
        field_index = self.field_index
        cache = self.cache
        # As Any, each field stays the caller's tuple object: typed tuple[bytes, bytes], mypyc
        # would unpack it into a struct and build a new tuple for each dict lookup below.
        for field in cast("list[Any]", headers):
            seq = field_index.get(field)
            if seq is not None:
                index = -seq if seq < 0 else STATIC_COUNT + self.inserted - seq
                if index < 0x7F:
                    parts.append(indexed[index])
                else:
                    big = bytearray()
                    encode_integer(big, 0x80, 0x7F, index)
                    parts.append(bytes(big))
                continue
            encoded = cache.get(field)
            if encoded is not None:
                parts.append(encoded)
                continue
            parts.append(self._encode_literal(field))
        return b"".join(parts)

    def _encode_literal(self, field: tuple[bytes, bytes]) -> bytes:
        out = bytearray()
        name = field[0]
        value = field[1]
        name_index = STATIC_NAME_INDEX.get(name, 0)
        static_name = name_index != 0
        if not static_name:
            seq = self.name_seq.get(name)
            if seq is not None:
                name_index = STATIC_COUNT + self.inserted - seq
        if name in NEVER_INDEXED_NAMES:
            self._encode_fields(out, 0x10, 0x0F, name_index, name, value)
            encoded = bytes(out)
            if (static_name or name_index == 0) and len(encoded) <= CACHE_BUDGET // 4:
                self._remember(field, encoded)
            return encoded
        size = len(name) + len(value) + ENTRY_OVERHEAD
        if size > INDEX_LIMIT or size > self.table_size_limit:
            self._encode_fields(out, 0x00, 0x0F, name_index, name, value)
            return bytes(out)
        self._encode_fields(out, 0x40, 0x3F, name_index, name, value)
        self._insert(field, size)
        return bytes(out)

    def _encode_fields(
        self,
        out: bytearray,
        flags: int,
        prefix_max: int,
        name_index: int,
        name: bytes,
        value: bytes,
    ) -> None:
        encode_integer(out, flags, prefix_max, name_index)
        if name_index == 0:
            encode_string(out, name)
        encode_string(out, value)

    def _remember(self, field: tuple[bytes, bytes], encoded: bytes) -> None:
        if self.cache_bytes + len(encoded) > CACHE_BUDGET:
            self.cache.clear()  # simplest bounded policy: the fields that repeat come back
            self.cache_bytes = 0
        self.cache[field] = encoded
        self.cache_bytes += len(encoded)

    def _insert(self, field: tuple[bytes, bytes], size: int) -> None:
        self._evict(self.table_size_limit - size)
        self.entries.append(field)
        self.field_index[field] = self.inserted
        self.name_seq[field[0]] = self.inserted
        self.inserted += 1
        self.table_size += size

    def _evict(self, limit: int) -> None:
        entries = self.entries
        evicted = 0
        first_seq = self.inserted - len(entries)
        while self.table_size > limit:
            old = entries[evicted]
            seq = first_seq + evicted
            evicted += 1
            self.table_size -= len(old[0]) + len(old[1]) + ENTRY_OVERHEAD
            # A newer entry of the same field or name keeps its own (newer) number.
            if self.field_index.get(old) == seq:
                del self.field_index[old]
            if self.name_seq.get(old[0]) == seq:
                del self.name_seq[old[0]]
        if evicted:
            del entries[:evicted]
