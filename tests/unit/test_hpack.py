"""proxy/http/hpack.py: RFC 7541 Appendix C, round trips against python-hyper's `hpack`, and
hostile field blocks."""

from __future__ import annotations

import tracemalloc

import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.http.hpack import (
    HUFFMAN_FLAGS,
    HUFFMAN_NEXT,
    Decoder,
    Encoder,
    HeaderListTooLarge,
    HPACKError,
    huffman_decode,
    huffman_encode,
)
from proxy.http.hpack_tables import HUFFMAN_CODES, HUFFMAN_LENGTHS, STATIC_TABLE

Fields = list[tuple[bytes, bytes]]


def unhex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def entries(decoder: Decoder) -> list[tuple[bytes, bytes, int]]:
    """The dynamic table as RFC 7541 Appendix C prints it: newest first, with entry sizes."""
    return [(n, v, len(n) + len(v) + 32) for n, v in decoder.entries]


# --- RFC 7541 Appendix C ------------------------------------------------------------------------

DATE1 = b"Mon, 21 Oct 2013 20:13:21 GMT"
DATE2 = b"Mon, 21 Oct 2013 20:13:22 GMT"
COOKIE = b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
LOCATION = b"https://www.example.com"

REQUESTS: list[Fields] = [  # C.3 and C.4
    [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (b":authority", b"www.example.com"),
    ],
    [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (b":authority", b"www.example.com"),
        (b"cache-control", b"no-cache"),
    ],
    [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":path", b"/index.html"),
        (b":authority", b"www.example.com"),
        (b"custom-key", b"custom-value"),
    ],
]
REQUEST_TABLES = [
    [(b":authority", b"www.example.com", 57)],
    [(b"cache-control", b"no-cache", 53), (b":authority", b"www.example.com", 57)],
    [
        (b"custom-key", b"custom-value", 54),
        (b"cache-control", b"no-cache", 53),
        (b":authority", b"www.example.com", 57),
    ],
]
REQUEST_TABLE_SIZES = [57, 110, 164]
C3_BLOCKS = [
    "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "8286 84be 5808 6e6f 2d63 6163 6865",
    "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
]
C4_BLOCKS = [
    "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
    "8286 84be 5886 a8eb 1064 9cbf",
    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
]

RESPONSES: list[Fields] = [  # C.5 and C.6, with a 256-octet table
    [
        (b":status", b"302"),
        (b"cache-control", b"private"),
        (b"date", DATE1),
        (b"location", LOCATION),
    ],
    [
        (b":status", b"307"),
        (b"cache-control", b"private"),
        (b"date", DATE1),
        (b"location", LOCATION),
    ],
    [
        (b":status", b"200"),
        (b"cache-control", b"private"),
        (b"date", DATE2),
        (b"location", LOCATION),
        (b"content-encoding", b"gzip"),
        (b"set-cookie", COOKIE),
    ],
]
RESPONSE_TABLES = [
    [
        (b"location", LOCATION, 63),
        (b"date", DATE1, 65),
        (b"cache-control", b"private", 52),
        (b":status", b"302", 42),
    ],
    [
        (b":status", b"307", 42),
        (b"location", LOCATION, 63),
        (b"date", DATE1, 65),
        (b"cache-control", b"private", 52),
    ],
    [(b"set-cookie", COOKIE, 98), (b"content-encoding", b"gzip", 52), (b"date", DATE2, 65)],
]
RESPONSE_TABLE_SIZES = [222, 222, 215]
C5_BLOCKS = [
    """4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032
    303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d""",
    "4803 3330 37c1 c0bf",
    """88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0
    5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 58
    5157 454f 4955 3b20 6d61 782d 6167 653d 3336 3030 3b20 7665 7273 696f 6e3d 31""",
]
C6_BLOCKS = [
    """4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b
    ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3""",
    "4883 640e ffc1 c0bf",
    """88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad
    94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160
    65c0 03ed 4ee5 b106 3d50 07""",
]


def test_appendix_c_vectors_agree_with_the_hpack_package() -> None:
    """The vectors below were typed in from the RFC; python-hyper's decoder reads them alike."""
    for blocks, lists, size in (
        (C3_BLOCKS, REQUESTS, 4096),
        (C4_BLOCKS, REQUESTS, 4096),
        (C5_BLOCKS, RESPONSES, 256),
        (C6_BLOCKS, RESPONSES, 256),
    ):
        theirs = hpack.Decoder()
        theirs.header_table_size = size
        for block, fields in zip(blocks, lists, strict=True):
            assert [tuple(f) for f in theirs.decode(unhex(block), raw=True)] == fields


@pytest.mark.parametrize(
    ("blocks", "lists", "tables", "sizes", "table_size"),
    [
        (C3_BLOCKS, REQUESTS, REQUEST_TABLES, REQUEST_TABLE_SIZES, 4096),
        (C4_BLOCKS, REQUESTS, REQUEST_TABLES, REQUEST_TABLE_SIZES, 4096),
        (C5_BLOCKS, RESPONSES, RESPONSE_TABLES, RESPONSE_TABLE_SIZES, 256),
        (C6_BLOCKS, RESPONSES, RESPONSE_TABLES, RESPONSE_TABLE_SIZES, 256),
    ],
    ids=["C.3", "C.4", "C.5", "C.6"],
)
def test_appendix_c_decoding_and_table_state(
    blocks: list[str],
    lists: list[Fields],
    tables: list[list[tuple[bytes, bytes, int]]],
    sizes: list[int],
    table_size: int,
) -> None:
    decoder = Decoder(max_table_size=table_size)
    for block, fields, table, size in zip(blocks, lists, tables, sizes, strict=True):
        assert decoder.decode(unhex(block)) == fields
        assert entries(decoder) == table
        assert decoder.table_size == size


@pytest.mark.parametrize(
    ("block", "fields", "table"),
    [
        (
            "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
            [(b"custom-key", b"custom-header")],
            [(b"custom-key", b"custom-header", 55)],
        ),
        ("040c 2f73 616d 706c 652f 7061 7468", [(b":path", b"/sample/path")], []),
        ("1008 7061 7373 776f 7264 0673 6563 7265 74", [(b"password", b"secret")], []),
        ("82", [(b":method", b"GET")], []),
    ],
    ids=["C.2.1", "C.2.2", "C.2.3", "C.2.4"],
)
def test_appendix_c2_single_representations(
    block: str, fields: Fields, table: list[tuple[bytes, bytes, int]]
) -> None:
    decoder = Decoder()
    assert decoder.decode(unhex(block)) == fields
    assert entries(decoder) == table


def test_encoder_reproduces_c4_requests_with_huffman() -> None:
    """Our choices (static name index, incremental indexing, Huffman when shorter) are C.4's."""
    encoder = Encoder()
    for fields, block in zip(REQUESTS, C4_BLOCKS, strict=True):
        assert encoder.encode(fields) == unhex(block)


def test_encoder_reproduces_c6_responses_after_its_size_update() -> None:
    """A 256-octet table is signalled first (§6.3: 001 prefix, 256 = 31 + 225), then C.6.1 byte
    for byte. C.6.2 differs in "307", whose Huffman coding (640eff) is no shorter than the raw
    string, which we then send raw like Go. C.6.3 differs on purpose: set-cookie is never
    indexed by our encoder."""
    encoder = Encoder()
    encoder.set_max_table_size(256)
    assert encoder.encode(RESPONSES[0]) == unhex("3fe101") + unhex(C6_BLOCKS[0])
    assert encoder.encode(RESPONSES[1]) == unhex("4803 3330 37c1 c0bf")  # C.5.2's bytes
    third = encoder.encode(RESPONSES[2])
    assert third.startswith(unhex("88c1 6196"))
    assert (b"set-cookie", COOKIE) not in encoder.entries
    theirs = hpack.Decoder()
    theirs.header_table_size = 256
    for block in (unhex(C6_BLOCKS[0]), unhex(C6_BLOCKS[1])):
        theirs.decode(block)
    decoded = list(theirs.decode(third, raw=True))
    assert [tuple(f) for f in decoded] == RESPONSES[2]
    assert isinstance(decoded[-1], hpack.NeverIndexedHeaderTuple)


# --- Huffman -----------------------------------------------------------------------------------


def test_huffman_table_is_the_rfc_code() -> None:
    """Appendix B spot checks, and a prefix-free code that fills the tree (Kraft sum 1)."""
    assert (HUFFMAN_CODES[ord("0")], HUFFMAN_LENGTHS[ord("0")]) == (0x0, 5)
    assert (HUFFMAN_CODES[ord("a")], HUFFMAN_LENGTHS[ord("a")]) == (0x3, 5)
    assert (HUFFMAN_CODES[256], HUFFMAN_LENGTHS[256]) == (0x3FFFFFFF, 30)
    assert sum(2 ** (30 - n) for n in HUFFMAN_LENGTHS) == 2**30
    assert len(HUFFMAN_NEXT) == len(HUFFMAN_FLAGS) == 256 * 16  # 256 states: a full tree
    assert len(STATIC_TABLE) == 61
    assert STATIC_TABLE[0] == (b":authority", b"") and STATIC_TABLE[60] == (
        b"www-authenticate",
        b"",
    )


@given(st.binary(max_size=300))
def test_huffman_round_trip_and_agreement_with_hpack(data: bytes) -> None:
    encoded = huffman_encode(data)
    assert encoded == hpack.huffman.HuffmanEncoder(
        hpack.huffman_constants.REQUEST_CODES, hpack.huffman_constants.REQUEST_CODES_LENGTH
    ).encode(data)
    assert huffman_decode(encoded, 0, len(encoded)) == data


def huffman_literal_block(encoded_name: bytes) -> bytes:
    """A literal without indexing whose new name is the given Huffman octets, value "v"."""
    assert len(encoded_name) < 127
    return bytes((0x00, 0x80 | len(encoded_name))) + encoded_name + b"\x01v"


@pytest.mark.parametrize(
    ("encoded", "reason"),
    [
        (b"\xff\xff\xff\xff", "EOS"),  # EOS (30 ones) inside the string, two bits of padding
        (b"\x1f\xff", "padding"),  # "a" (00011) then 11 bits of padding: longer than 7 bits
        (b"\x18", "padding"),  # "a" then padding 000: not the most significant bits of EOS
        (b"\xff", "padding"),  # 8 bits of padding and no symbol
        (b"\x1e", "padding"),  # "a" then padding 110: a symbol's prefix, not all ones
    ],
    ids=["eos", "padding-too-long", "padding-zeros", "padding-only", "padding-not-ones"],
)
def test_huffman_errors_of_section_5_2(encoded: bytes, reason: str) -> None:
    with pytest.raises(HPACKError, match=reason):
        Decoder().decode(huffman_literal_block(encoded))


def test_huffman_valid_padding_and_empty_string() -> None:
    assert Decoder().decode(huffman_literal_block(b"\x1f")) == [(b"a", b"v")]  # "a" + 111
    assert Decoder().decode(b"\x00\x80\x01v") == [(b"", b"v")]  # empty Huffman string


# --- hostile blocks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (b"\x80", "index 0"),
        (b"\xbe", "index 62 beyond"),  # the dynamic table is empty
        (b"\xff\x80\x01", "index 255 beyond"),
        (b"\x7e\x01v", "name index 62 beyond"),
        (b"\x3f\xe2\x1f", "4097 above the limit 4096"),
        (b"\x82\x20", "size update after the first field"),
        (b"\xff\xff\xff\xff\xff\x0f", "integer overflow"),  # 4294967422
        (b"\xff\x80\x80\x80\x80\x80\x00", "integer encoding too long"),  # a padded 127
        (b"\xff\x80", "truncated integer"),
        (b"\x40", "string expected"),
        (b"\x00\x03abc", "string expected"),
        (b"\x00\x03abc\x05ab", "string length beyond"),
        (b"\x00\x7f\xff\xff\xff\x0f", "string length beyond"),  # ~256 MiB claimed, none allocated
        (b"\x10\x01", "string length beyond"),
    ],
)
def test_hostile_blocks_are_compression_errors(block: bytes, reason: str) -> None:
    decoder = Decoder()
    with pytest.raises(HPACKError, match=reason):
        decoder.decode(block)
    with pytest.raises(HPACKError, match="earlier compression error"):
        decoder.decode(b"\x82")  # dead: RFC 9113 §4.3 ends the connection


def test_size_updates_are_accepted_only_at_the_start_and_evict() -> None:
    decoder = Decoder()
    decoder.decode(unhex(C3_BLOCKS[0]) + unhex(C3_BLOCKS[1])[4:])
    assert decoder.table_size == 110
    # Two updates at the start (§4.2): to 0 (empties the table), then to the full 4096.
    assert decoder.decode(b"\x20\x3f\xe1\x1f\x82") == [(b":method", b"GET")]
    assert decoder.entries == [] and decoder.table_size == 0
    assert decoder.table_size_limit == 4096


def test_entry_larger_than_the_table_empties_it() -> None:
    """§4.4: adding an entry larger than the maximum size empties the table, no error."""
    decoder = Decoder(max_table_size=100)
    decoder.decode(b"\x41\x03abc")  # :authority: abc (10 + 3 + 32 = 45)
    assert decoder.table_size == 45
    big = b"\x40\x01x\x7f\x00" + b"y" * 127  # x: 127 bytes, 160 octets > 100
    assert decoder.decode(big) == [(b"x", b"y" * 127)]
    assert decoder.entries == [] and decoder.table_size == 0


def test_names_are_returned_as_sent() -> None:
    block = Encoder().encode([(b"X-Mixed-Case", b"v")])
    assert Decoder().decode(block) == [(b"X-Mixed-Case", b"v")]


def test_bomb_stops_at_the_header_list_limit_with_little_memory() -> None:
    """One 4000-byte value inserted, then indexed 100000 times: 400 MB if it were expanded."""
    value = b"v" * 4000
    block = b"\x40\x01x\x7f\xa1\x1e" + value + b"\xbe" * 100_000  # length 4000 = 127 + 3873
    decoder = Decoder(max_header_list_size=65536)
    tracemalloc.start()
    try:
        with pytest.raises(HeaderListTooLarge, match="65536"):
            decoder.decode(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024  # the shared value is never copied; the list stops at 16 fields


def test_header_list_limit_is_settable_and_counts_32_per_field() -> None:
    decoder = Decoder()
    decoder.max_header_list_size = 2 * 32 + len(":method") * 2 + len("GET") + len("POST")
    assert decoder.decode(b"\x82\x83") == [(b":method", b"GET"), (b":method", b"POST")]
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(b"\x82\x83\x82")
    decoder = Decoder(max_header_list_size=40)
    with pytest.raises(HeaderListTooLarge):  # the field that crosses the limit is the last
        decoder.decode(b"\x00\x01x\x7f\x80\x80\x01" + b"y" * 16511)


# --- encoder policy ----------------------------------------------------------------------------


def test_sensitive_fields_are_never_indexed_and_cached() -> None:
    encoder = Encoder()
    fields = [(b"set-cookie", b"session=abc"), (b"authorization", b"Bearer x")]
    first = encoder.encode(fields)
    assert first[0] & 0xF0 == 0x10  # §6.2.3 never indexed, static name 55
    assert encoder.entries == []
    assert set(encoder.cache) == set(fields)
    assert encoder.encode(fields) == first
    theirs = hpack.Decoder()
    decoded = list(theirs.decode(first, raw=True))
    assert [tuple(f) for f in decoded] == fields
    assert all(isinstance(f, hpack.NeverIndexedHeaderTuple) for f in decoded)


def test_big_fields_are_not_indexed() -> None:
    encoder = Encoder()
    field = (b"x-big", b"z" * 1000)  # 5 + 1000 + 32 > 1024
    block = encoder.encode([field])
    assert block[0] == 0x00 and encoder.entries == []
    assert Decoder().decode(block) == [field]


def test_repeated_fields_become_one_byte() -> None:
    encoder = Encoder()
    fields = [(b":status", b"200"), (b"server", b"pyproxy"), (b"content-type", b"text/plain")]
    first = encoder.encode(fields)
    second = encoder.encode(fields)
    assert second == b"\x88\xbf\xbe"  # static 8; then the two inserted entries, newest first
    decoder = Decoder()
    assert decoder.decode(first) == fields and decoder.decode(second) == fields


def test_table_size_changes_signal_the_smallest_then_the_final() -> None:
    encoder = Encoder()
    encoder.encode([(b"server", b"pyproxy")])
    encoder.set_max_table_size(0)
    encoder.set_max_table_size(65536)  # the encoder never uses more than 4096
    block = encoder.encode([(b"server", b"pyproxy")])
    assert block.startswith(b"\x20\x3f\xe1\x1f")  # 0, then 4096 (§4.2)
    assert Encoder().encode([]) == b""
    encoder.set_max_table_size(4096)
    assert not encoder.encode([]).startswith(b"\x20")  # no change, nothing signalled


# --- round trips -------------------------------------------------------------------------------

COMMON_NAMES = [
    b":status",
    b":path",
    b":authority",
    b"content-type",
    b"content-length",
    b"set-cookie",
    b"cookie",
    b"date",
    b"server",
    b"x-request-id",
    b"accept-encoding",
]
names = st.one_of(
    st.sampled_from(COMMON_NAMES), st.binary(min_size=1, max_size=20).map(bytes.lower)
)
values = st.one_of(
    st.sampled_from([b"", b"200", b"gzip", b"text/html", b"/"]),
    st.binary(max_size=80),
    st.binary(min_size=900, max_size=1200),
)
header_lists = st.lists(st.tuples(names, values), max_size=12)
table_sizes = st.one_of(st.none(), st.integers(min_value=0, max_value=5000))
sequences = st.lists(st.tuples(table_sizes, header_lists), min_size=1, max_size=8)
ROUND_TRIP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@ROUND_TRIP
@given(sequences)
def test_round_trip_ours_to_ours(blocks: list[tuple[int | None, Fields]]) -> None:
    encoder = Encoder()
    decoder = Decoder(max_header_list_size=1 << 30)
    for size, fields in blocks:
        if size is not None:
            encoder.set_max_table_size(size)
        assert decoder.decode(encoder.encode(fields)) == fields
    assert decoder.entries[::-1] == encoder.entries  # the two tables agree
    assert decoder.entry_sizes == [len(n) + len(v) + 32 for n, v in decoder.entries]
    assert decoder.table_size == sum(decoder.entry_sizes) == encoder.table_size


@ROUND_TRIP
@given(sequences)
def test_round_trip_ours_to_hpack(blocks: list[tuple[int | None, Fields]]) -> None:
    encoder = Encoder()
    theirs = hpack.Decoder(max_header_list_size=1 << 30)
    for size, fields in blocks:
        if size is not None:
            encoder.set_max_table_size(size)
        assert [tuple(f) for f in theirs.decode(encoder.encode(fields), raw=True)] == fields


@ROUND_TRIP
@given(sequences, st.booleans())
def test_round_trip_hpack_to_ours(blocks: list[tuple[int | None, Fields]], huffman: bool) -> None:
    theirs = hpack.Encoder()
    decoder = Decoder(max_header_list_size=1 << 30)
    for size, fields in blocks:
        if size is not None:
            theirs.header_table_size = min(size, 4096)
        assert decoder.decode(theirs.encode(fields, huffman=huffman)) == fields


def test_dynamic_indexes_above_126_take_more_octets() -> None:
    """Index 127 and up no longer fit the 7-bit prefix (§5.1): 0xff then continuation octets."""
    encoder = Encoder()
    fields = [(b"x-n", str(i).encode()) for i in range(100)]
    first = encoder.encode(fields)
    again = encoder.encode(fields[:1])  # the oldest: index 61 + 100 = 161
    assert again == b"\xff\x22"  # 127 + 34
    decoder = Decoder()
    assert decoder.decode(first) == fields and decoder.decode(again) == fields[:1]
    theirs = hpack.Decoder()
    theirs.decode(first, raw=True)
    assert [tuple(f) for f in theirs.decode(again, raw=True)] == fields[:1]


@ROUND_TRIP
@given(st.integers(min_value=0, max_value=4096), sequences)
def test_round_trip_with_a_smaller_advertised_table(
    advertised: int, blocks: list[tuple[int | None, Fields]]
) -> None:
    """We advertise a smaller SETTINGS_HEADER_TABLE_SIZE; the peer's encoder honours it."""
    decoder = Decoder(max_table_size=advertised, max_header_list_size=1 << 30)
    encoder = Encoder()
    encoder.set_max_table_size(advertised)
    for size, fields in blocks:
        if size is not None:
            encoder.set_max_table_size(min(size, advertised))
        assert decoder.decode(encoder.encode(fields)) == fields
        assert decoder.table_size <= advertised
