"""HPACK (RFC 7541) in fastproxy._hpack: the RFC's own examples, the `hpack` package as
the oracle both ways, hypothesis round trips, and every decoding error and limit."""
import hpack
import pytest
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy import _hpack as H


def hx(s: str) -> bytes:
    return bytes.fromhex(s.replace("\n", " "))


GET_HTTP = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
            (b":authority", b"www.example.com")]
REQ2 = GET_HTTP + [(b"cache-control", b"no-cache")]
REQ3 = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"),
        (b":authority", b"www.example.com"), (b"custom-key", b"custom-value")]
RES1 = [(b":status", b"302"), (b"cache-control", b"private"),
        (b"date", b"Mon, 21 Oct 2013 20:13:21 GMT"), (b"location", b"https://www.example.com")]
RES2 = [(b":status", b"307")] + RES1[1:]
RES3 = [(b":status", b"200"), (b"cache-control", b"private"),
        (b"date", b"Mon, 21 Oct 2013 20:13:22 GMT"), (b"location", b"https://www.example.com"),
        (b"content-encoding", b"gzip"),
        (b"set-cookie", b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")]

# RFC 7541 Appendix C.3-C.6: (table size, [(block, headers, table size after)]).
C3 = (4096, [("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d", GET_HTTP, 57),
             ("8286 84be 5808 6e6f 2d63 6163 6865", REQ2, 110),
             ("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65", REQ3, 164)])
C4 = (4096, [("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", GET_HTTP, 57),
             ("8286 84be 5886 a8eb 1064 9cbf", REQ2, 110),
             ("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf", REQ3, 164)])
C5 = (256, [("""4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d""", RES1, 222),
            ("4803 3330 37c1 c0bf", RES2, 222),
            ("""88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31""", RES3, 215)])
C6 = (256, [("""4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3""", RES1, 222),
            ("4883 640e ffc1 c0bf", RES2, 222),
            ("""88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
9587 3160 65c0 03ed 4ee5 b106 3d50 07""", RES3, 215)])


@pytest.mark.parametrize("case", [C3, C4, C5, C6], ids=["C.3", "C.4", "C.5", "C.6"])
def test_rfc7541_appendix_c_sequences(case):
    """RFC 7541 C.3-C.6: three blocks on one connection, dynamic table and evictions."""
    size, blocks = case
    d = H.Decoder(size)
    for block, headers, table_size in blocks:
        assert d.decode(hx(block)) == headers
        assert d.size == table_size
    if size == 256:   # C.5.3 / C.6.3: what is left after the evictions
        assert d.entries() == [RES3[5], RES3[4], RES3[2]]
    else:             # C.3.3 / C.4.3
        assert d.entries() == [REQ3[4], REQ2[4], GET_HTTP[3]]


@pytest.mark.parametrize("block,headers,size", [
    ("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
     [(b"custom-key", b"custom-header")], 55),                       # C.2.1 with indexing
    ("040c 2f73 616d 706c 652f 7061 7468", [(b":path", b"/sample/path")], 0),  # C.2.2 without
    ("1008 7061 7373 776f 7264 0673 6563 7265 74", [(b"password", b"secret")], 0),  # C.2.3 never
    ("82", [(b":method", b"GET")], 0),                                # C.2.4 indexed
])
def test_rfc7541_c2_field_representations(block, headers, size):
    d = H.Decoder()
    assert d.decode(hx(block)) == headers
    assert d.size == size


def test_huffman_codes_match_appendix_b():
    """The canonical codes built from the lengths are the RFC 7541 Appendix B table."""
    assert list(H.HUFFMAN_LENGTHS) == list(REQUEST_CODES_LENGTH)
    enc = hpack.huffman.HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
    for sym in range(256):
        assert H.huffman_encode(bytes([sym])) == enc.encode(bytes([sym]))
    assert H.huffman_encode(b"www.example.com") == hx("f1e3 c2e5 f23a 6ba0 ab90 f4ff")


@given(st.binary(max_size=200))
def test_huffman_round_trip_and_oracle(s):
    coded = H.huffman_encode(s)
    assert coded == hpack.huffman.HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(s)
    assert H.huffman_decode(coded) == s
    assert hpack.huffman_table.decode_huffman(coded) == s


@pytest.mark.parametrize("bad,why", [
    (b"\xff\xff\xff\xff", "EOS inside the string (RFC 7541 5.2)"),
    (b"\x00", "padding longer than 7 bits / not ones"),
    (hx("f1e3 c2e5 f23a 6ba0 ab90 f4ff") + b"\xff", "8 bits of padding (RFC 7541 5.2)"),
    (b"\xfe", "padding that is not a prefix of EOS"),
])
def test_huffman_invalid_rfc7541_5_2(bad, why):
    with pytest.raises(H.HPACKError):
        H.huffman_decode(bad)


header_lists = st.lists(st.tuples(
    st.sampled_from([b"accept", b"cookie", b"authorization", b"x-a", b"x-b", b"user-agent",
                     b":path", b"content-length", b"set-cookie", b"date"]) | st.binary(min_size=1, max_size=20),
    st.sampled_from([b"", b"gzip, deflate", b"/", b"v"]) | st.binary(max_size=300)), max_size=30)


@settings(max_examples=200)
@given(st.lists(header_lists, min_size=1, max_size=6), st.sampled_from([0, 64, 256, 4096]))
def test_ours_encode_hpack_decodes(blocks, table):
    """Differential: what our encoder writes, hpack reads back the same (C -> oracle)."""
    enc, dec, ours = H.Encoder(table), hpack.Decoder(), H.Decoder(4096)
    dec.max_allowed_table_size = 4096
    first = True
    for hl in blocks:
        if first:
            enc.set_table_size(table)      # announced in the first block
            first = False
        block = enc.encode(hl)
        assert dec.decode(block, raw=True) == hl
        assert ours.decode(block) == hl
        assert ours.entries() == enc.entries()


@settings(max_examples=200)
@given(st.lists(header_lists, min_size=1, max_size=6), st.booleans())
def test_hpack_encodes_ours_decodes(blocks, huffman):
    """Differential: what hpack writes (with indexing), ours reads the same (oracle -> C)."""
    enc, ours = hpack.Encoder(), H.Decoder()
    for hl in blocks:
        block = enc.encode(hl, huffman=huffman)
        assert ours.decode(block) == hl


def test_never_indexed_for_credentials_rfc7541_7_1_3():
    enc = H.Encoder()
    block = enc.encode([(b"authorization", b"Bearer abc"), (b"cookie", b"sid=1"),
                        (b"cookie", b"a-long-cookie-value-of-more-than-20")])
    # 0x1X: literal never indexed; authorization has static index 23, cookie 32.
    assert block[0] == 0x1f and block[1] == 23 - 15
    assert [e[0] for e in enc.entries()] == [b"cookie"]
    assert enc.entries()[0][1].startswith(b"a-long")


def test_table_size_update_announced_smallest_first_rfc7541_4_2():
    enc = H.Encoder(4096)
    enc.set_table_size(0)
    enc.set_table_size(1024)
    block = enc.encode([(b"x", b"y")])
    d = H.Decoder(4096)
    assert d.decode(block) == [(b"x", b"y")]
    assert block[0] == 0x20 and block[1:4] == bytes([0x3f, 0xe1, 0x07])   # 0, then 1024
    assert d.table_size == 1024


@pytest.mark.parametrize("block,why", [
    (b"\x80", "index 0 (RFC 7541 6.1)"),
    (b"\xbe", "index beyond the tables (2.3.3)"),
    (b"\x3f\xe2\x1f", "table size update above SETTINGS_HEADER_TABLE_SIZE (6.3)"),
    (b"\x82\x20", "table size update after a field (4.2)"),
    (b"\x40\x05ab", "string longer than the block (5.2)"),
    (b"\xff\xff\xff\xff\xff\xff\x01", "integer overflow (5.1)"),
    (b"\x00\x01a\x7f" + b"\x80" * 64 + b"\x01" + b"v" * 128, "integer with 64 zero groups (5.1)"),
    (b"\xff\x80", "truncated integer (5.1)"),
    (b"\x40\x81\xff", "bad Huffman string (5.2)"),
    (b"\x00", "truncated literal"),
])
def test_decoding_errors_are_compression_errors(block, why):
    with pytest.raises(H.HPACKError):
        H.Decoder().decode(block)


def test_hpack_bomb_bounded_but_table_kept_in_step():
    """An entry of 4000 bytes referenced 100 times decodes to None past the list limit,
    and the next block still decodes (the table followed the encoder)."""
    enc = hpack.Encoder()
    big = [(b"x-bomb", b"a" * 4000)]
    first = enc.encode(big)                 # inserts the entry
    bomb = enc.encode(big * 100)            # 100 one-byte references
    d = H.Decoder()
    assert d.decode(first, 65536) == big
    assert len(bomb) < 200
    assert d.decode(bomb, 65536) is None
    assert d.decode(enc.encode([(b"after", b"ok")] + big), 65536) == [(b"after", b"ok")] + big


def test_entry_larger_than_table_empties_it_rfc7541_4_4():
    d = H.Decoder(100)
    d.decode(b"\x40\x01a\x01b")             # a: b (34 octets)
    assert len(d) == 1
    d.decode(b"\x40\x01c\x7f\x10" + b"v" * 143)   # 1 + 143 + 32 > 100
    assert len(d) == 0 and d.size == 0


def test_full_static_entries_are_one_byte_indexes_rfc7541_appendix_a():
    # The encoder looks a field up in the static table only when it can be a full entry
    # there (a pseudo-header, accept-encoding, or an empty value): these must still be
    # found, each an indexed field (6.1) of one byte.
    enc = H.Encoder()
    fields = [(b":status", b"200"), (b":status", b"404"), (b":method", b"POST"),
              (b":path", b"/index.html"), (b"accept-encoding", b"gzip, deflate"),
              (b"age", b""), (b"www-authenticate", b"")]
    assert enc.encode(fields) == bytes([0x88, 0x8d, 0x83, 0x85, 0x90, 0x95, 0xbd])


RESPONSE_HEAD = [(b":status", b"200"), (b"server", b"nginx"), (b"date", b"Mon, 08 Jan 2024 10:00:00 GMT"),
                 (b"content-type", b"application/octet-stream"), (b"content-length", b"4096"),
                 (b"etag", b'"6597c5a0-1000"'), (b"accept-ranges", b"bytes"),
                 (b"authorization", b"kept literal"), (b"via", b"2 fastproxy")]


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, len(RESPONSE_HEAD) - 1), st.binary(max_size=60),
                          st.sampled_from([None, 0, 64, 200, 4096])), min_size=1, max_size=12))
def test_repeated_lists_decode_the_same_rfc7541(edits):
    """A connection's lists repeat with a field changed now and then (the encoder
    remembers each position's last field and emits its index without hashing): every
    block still decodes to the list (hpack and ours), through evictions and table size
    changes that drop the remembered entries."""
    enc, dec, ours = H.Encoder(4096), hpack.Decoder(), H.Decoder(4096)
    dec.max_allowed_table_size = 4096
    hl = list(RESPONSE_HEAD)
    for at, value, size in edits:
        if size is not None:
            enc.set_table_size(size)
        for _ in range(2):                      # the second time: the remembered path
            block = enc.encode(hl)
            assert dec.decode(block, raw=True) == hl
            assert ours.decode(block) == hl
            assert ours.entries() == enc.entries()
        hl[at] = (hl[at][0], value)


def test_a_repeated_list_is_all_indexes_rfc7541_6_1():
    """The same list again on a table big enough: one index byte per field, except the
    never-indexed credential (RFC 7541 7.1.3), which is a literal every time."""
    enc = H.Encoder(4096)
    first = enc.encode(RESPONSE_HEAD)
    again = enc.encode(RESPONSE_HEAD)
    cred = len(first) - len(H.Encoder(4096).encode(
        [f for f in RESPONSE_HEAD if f[0] != b"authorization"]))
    assert len(again) == len(RESPONSE_HEAD) - 1 + cred
    assert H.Decoder(4096).decode(first + again) == RESPONSE_HEAD * 2


def _literal(first: int, prefix: int, name_index: int, name: bytes, value: bytes, huff: bool) -> bytes:
    """One literal field representation (RFC 7541 6.2), written by hand."""
    def integer(v: int, bits: int, flags: int) -> bytes:
        mask = (1 << bits) - 1
        if v < mask:
            return bytes([flags | v])
        out, v = [flags | mask], v - mask
        while v >= 128:
            out.append((v & 0x7f) | 0x80)
            v >>= 7
        return bytes(out + [v])

    def string(s: bytes) -> bytes:
        if huff:
            h = H.huffman_encode(s)
            return integer(len(h), 7, 0x80) + h
        return integer(len(s), 7, 0) + s

    rep = integer(name_index, prefix, first)
    return rep + (b"" if name_index else string(name)) + string(value)


NAMES = [(b"date", 33), (b"etag", 34), (b"x-trace", 0), (b"content-length", 28)]


@settings(max_examples=200)
@given(st.lists(st.lists(st.tuples(st.integers(0, len(NAMES) - 1), st.sampled_from([b"a", b"Mon", b""]) | st.binary(max_size=40),
                                   st.sampled_from([(0x00, 4), (0x10, 4), (0x40, 6)]),
                                   st.booleans(), st.booleans()), max_size=6),
                min_size=1, max_size=8))
def test_repeated_literals_decode_as_hpack_does_rfc7541_6_2(blocks):
    """Servers repeat literals block after block (nginx sends date and etag without
    indexing); the decoder remembers each position's literal bytes and its field. The
    same bytes again, or changed, with indexing or not, by static name index or a
    literal name: every block decodes as hpack decodes it, tables in step."""
    ours, oracle = H.Decoder(4096), hpack.Decoder()
    for block in blocks:
        for _ in range(2):
            data = b"".join(_literal(first, prefix, idx if by_index else 0, name, value, huff)
                            for n, value, (first, prefix), by_index, huff in block
                            for name, idx in [NAMES[n]])
            assert ours.decode(data) == oracle.decode(data, raw=True)
            assert [tuple(e) for e in ours.entries()] == \
                [tuple(e) for e in oracle.header_table.dynamic_entries]
