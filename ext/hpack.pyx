# cython: language_level=3
"""HPACK header compression for HTTP/2 (RFC 7541), compiled.

The Huffman decoder is nghttp2's design: a state table that consumes four bits at a
time, built once at import from the code lengths of RFC 7541 Appendix B (the code is
canonical, so the codes follow from the lengths; a test checks them against the `hpack`
package).  Decoded header lists are lists of (name, value) bytes tuples; static-table
entries and dynamic-table hits hand out the same tuple objects every time.

Limits: a decoded list larger than the caller's bound (RFC 9113 6.5.2 counting, name +
value + 32 per field) is still decoded to the end, so the dynamic table stays in step
with the peer, but the fields are dropped and None is returned (an HPACK bomb costs no
memory).  Integers are capped at 2^31 - 1, string lengths at the block's remaining bytes.
The surface is documented in `fastproxy/_hpack.pyi`.
"""

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset


class HPACKError(ValueError):
    """A header block that cannot be decoded: a COMPRESSION_ERROR (RFC 9113 4.3)."""


cdef object _HPACKError = HPACKError

DEFAULT_TABLE_SIZE = 4096

# RFC 7541 Appendix A.
STATIC_TABLE = (
    (b":authority", b""), (b":method", b"GET"), (b":method", b"POST"), (b":path", b"/"),
    (b":path", b"/index.html"), (b":scheme", b"http"), (b":scheme", b"https"),
    (b":status", b"200"), (b":status", b"204"), (b":status", b"206"), (b":status", b"304"),
    (b":status", b"400"), (b":status", b"404"), (b":status", b"500"),
    (b"accept-charset", b""), (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""), (b"accept-ranges", b""), (b"accept", b""),
    (b"access-control-allow-origin", b""), (b"age", b""), (b"allow", b""),
    (b"authorization", b""), (b"cache-control", b""), (b"content-disposition", b""),
    (b"content-encoding", b""), (b"content-language", b""), (b"content-length", b""),
    (b"content-location", b""), (b"content-range", b""), (b"content-type", b""),
    (b"cookie", b""), (b"date", b""), (b"etag", b""), (b"expect", b""), (b"expires", b""),
    (b"from", b""), (b"host", b""), (b"if-match", b""), (b"if-modified-since", b""),
    (b"if-none-match", b""), (b"if-range", b""), (b"if-unmodified-since", b""),
    (b"last-modified", b""), (b"link", b""), (b"location", b""), (b"max-forwards", b""),
    (b"proxy-authenticate", b""), (b"proxy-authorization", b""), (b"range", b""),
    (b"referer", b""), (b"refresh", b""), (b"retry-after", b""), (b"server", b""),
    (b"set-cookie", b""), (b"strict-transport-security", b""), (b"transfer-encoding", b""),
    (b"user-agent", b""), (b"vary", b""), (b"via", b""), (b"www-authenticate", b""),
)
cdef tuple _STATIC = STATIC_TABLE
cdef Py_ssize_t _NSTATIC = 61
cdef dict _STATIC_FULL = {}
cdef dict _STATIC_NAME = {}
for _i in range(len(STATIC_TABLE) - 1, -1, -1):     # the lowest index wins
    _STATIC_FULL[STATIC_TABLE[_i]] = _i + 1
    _STATIC_NAME[STATIC_TABLE[_i][0]] = _i + 1
# Every static entry with a value is a pseudo-header or accept-encoding (Appendix A), so
# any other field can be a full static match only with an empty value: the encoder skips
# the lookup (a tuple hash and a probe per field) for the rest.
assert all(not v or n[:1] == b":" or n == b"accept-encoding" for n, v in STATIC_TABLE)

# RFC 7541 Appendix B: code length in bits of each symbol 0..255 and EOS (256).
HUFFMAN_LENGTHS = (
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28,
    30, 28, 28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8,
    6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5,
    6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13,
    28, 20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24,
    23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22,
    24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, 26,
    26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27,
    24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24,
    24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
)

# ---------------------------------------------------------------------------
# Huffman tables, built once at import

cdef uint32_t HCODE[257]
cdef uint8_t HLEN[257]

cdef enum:
    F_EMIT = 1      # this nibble completed a symbol (in .sym)
    F_ACCEPT = 2    # stopping here is valid: at a symbol boundary or in <= 7 bits of EOS prefix
    F_FAIL = 4      # EOS decoded, or a path that leads nowhere

cdef struct HState:
    uint8_t next
    uint8_t flags
    uint8_t sym

cdef HState HDEC[256][16]


cdef void _build_huffman() noexcept:
    cdef int s, i, bit, node, depth, nxt
    cdef uint32_t code = 0
    cdef int prev = 0
    # Canonical code: sorted by (length, symbol), each code is the previous + 1, shifted.
    order = sorted(range(257), key=lambda x: (HUFFMAN_LENGTHS[x], x))
    for i, s in enumerate(order):
        if i:
            code = (code + 1) << (HUFFMAN_LENGTHS[s] - prev)
        prev = HUFFMAN_LENGTHS[s]
        HCODE[s] = code
        HLEN[s] = prev
    # Binary tree of internal nodes: child[node][bit] >= 0 is an internal node,
    # -1 - sym is a leaf, and -1000 a branch no code reaches.
    child = [[-1000, -1000]]
    ones = [True]        # on the all-ones path from the root (a prefix of EOS)
    dep = [0]
    for s in range(257):
        node = 0
        for i in range(HLEN[s] - 1, -1, -1):
            bit = (HCODE[s] >> i) & 1
            if i == 0:
                child[node][bit] = -1 - s
            else:
                if child[node][bit] == -1000:
                    child.append([-1000, -1000])
                    ones.append(ones[node] and bit == 1)
                    dep.append(dep[node] + 1)
                    child[node][bit] = len(child) - 1
                node = child[node][bit]
    assert len(child) == 256
    for s in range(256):
        for i in range(16):
            node = s
            flags = 0
            sym = 0
            for bit in ((i >> 3) & 1, (i >> 2) & 1, (i >> 1) & 1, i & 1):
                nxt = child[node][bit]
                if nxt == -1000 or nxt == -1 - 256:
                    flags = F_FAIL
                    node = 0
                    break
                if nxt < 0:
                    flags |= F_EMIT
                    sym = -1 - nxt
                    node = 0
                else:
                    node = nxt
            if not (flags & F_FAIL) and (node == 0 or (ones[node] and dep[node] <= 7)):
                flags |= F_ACCEPT
            HDEC[s][i].next = node
            HDEC[s][i].flags = flags
            HDEC[s][i].sym = sym


_build_huffman()


cdef Py_ssize_t huffman_length(const uchar* s, Py_ssize_t n) noexcept:
    """Bytes the Huffman coding of s takes."""
    cdef Py_ssize_t bits = 0, i
    for i in range(n):
        bits += HLEN[s[i]]
    return (bits + 7) >> 3


cdef int huffman_encode_into(bytearray out, const uchar* s, Py_ssize_t n) except -1:
    cdef Py_ssize_t start = PyByteArray_GET_SIZE(out)
    cdef Py_ssize_t need = huffman_length(s, n)
    PyByteArray_Resize(out, start + need)
    cdef uchar* o = <uchar*>PyByteArray_AS_STRING(out) + start
    cdef uint64_t acc = 0
    cdef int nbits = 0
    cdef Py_ssize_t i
    for i in range(n):
        acc = (acc << HLEN[s[i]]) | HCODE[s[i]]
        nbits += HLEN[s[i]]
        while nbits >= 8:
            nbits -= 8
            o[0] = <uchar>(acc >> nbits)
            o += 1
    if nbits:
        # Pad with the most significant bits of EOS (all ones), RFC 7541 5.2.
        o[0] = <uchar>((acc << (8 - nbits)) | (0xff >> nbits))
    return 0


def huffman_encode(data):
    """Huffman-code bytes (RFC 7541 5.2)."""
    cdef bytes b = bytes(data)
    cdef bytearray out = bytearray()
    huffman_encode_into(out, <const uchar*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
    return bytes(out)


cdef Py_ssize_t _huffman_decode(const uchar* p, Py_ssize_t n, uchar* out) except -1:
    cdef uint8_t state = 0
    cdef uint8_t flags = F_ACCEPT
    cdef Py_ssize_t i, k = 0
    cdef const HState* e
    for i in range(n):
        e = &HDEC[state][p[i] >> 4]
        if e.flags & F_FAIL:
            raise _HPACKError("invalid Huffman code")
        if e.flags & F_EMIT:
            out[k] = e.sym
            k += 1
        e = &HDEC[e.next][p[i] & 15]
        if e.flags & F_FAIL:
            raise _HPACKError("invalid Huffman code")
        if e.flags & F_EMIT:
            out[k] = e.sym
            k += 1
        state = e.next
        flags = e.flags
    if not (flags & F_ACCEPT):
        raise _HPACKError("invalid Huffman padding")
    return k


def huffman_decode(data):
    """Decode a Huffman-coded string (RFC 7541 5.2); raises HPACKError."""
    cdef bytes b = bytes(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef uchar* out = <uchar*>malloc(n * 8 // 5 + 1)
    if out == NULL:
        raise MemoryError()
    try:
        k = _huffman_decode(<const uchar*>PyBytes_AS_STRING(b), n, out)
        return PyBytes_FromStringAndSize(<char*>out, k)
    finally:
        free(out)


# ---------------------------------------------------------------------------
# Integers (RFC 7541 5.1)

cdef inline Py_ssize_t _int(const uchar* p, Py_ssize_t n, Py_ssize_t* pos, int prefix) except -1:
    cdef Py_ssize_t mask = (1 << prefix) - 1
    cdef Py_ssize_t v = p[pos[0]] & mask
    cdef int shift = 0
    cdef uchar b
    pos[0] += 1
    if v < mask:
        return v
    while True:
        if pos[0] >= n:
            raise _HPACKError("truncated integer")
        b = p[pos[0]]
        pos[0] += 1
        if shift > 28:          # a sixth continuation byte: over 2^31 whatever it holds
            raise _HPACKError("integer too large")
        v += <Py_ssize_t>(b & 0x7f) << shift
        shift += 7
        if v > 0x7fffffff:
            raise _HPACKError("integer too large")
        if not (b & 0x80):
            return v


cdef inline int _put_int(bytearray out, Py_ssize_t v, int prefix, uchar first) except -1:
    cdef Py_ssize_t mask = (1 << prefix) - 1
    if v < mask:
        out.append(first | v)
        return 0
    out.append(first | mask)
    v -= mask
    while v >= 128:
        out.append((v & 0x7f) | 0x80)
        v >>= 7
    out.append(v)
    return 0


# ---------------------------------------------------------------------------
# Dynamic table

cdef class _Table:
    def __cinit__(self, *args, **kwargs):
        self._ring = []
        self._esize = NULL
        self._cap = 0

    def __dealloc__(self):
        free(self._esize)

    cdef int _resize_ring(self, Py_ssize_t max_size) except -1:
        # Every entry takes at least 32 octets, so max_size // 32 + 1 slots never overflow.
        cdef Py_ssize_t cap = max_size // 32 + 1, i
        if cap <= self._cap:
            return 0
        cdef list ring = [None] * cap
        cdef Py_ssize_t* es = <Py_ssize_t*>malloc(cap * sizeof(Py_ssize_t))
        if es == NULL:
            raise MemoryError()
        # Keep the entries' order: newest at slot count - 1 after the copy.
        for i in range(self._count):
            ring[self._count - 1 - i] = self.get(i)
            es[self._count - 1 - i] = self._esize[(self._head - i) % self._cap]
        free(self._esize)
        self._esize = es
        self._ring = ring
        self._cap = cap
        self._head = self._count - 1 if self._count else 0
        return 0

    cdef int set_max_size(self, Py_ssize_t max_size) except -1:
        self._resize_ring(max_size)
        self.max_size = max_size
        while self.size > max_size:
            self._evict_one()
        return 0

    cdef int _evict_one(self) except -1:
        cdef Py_ssize_t tail = (self._head - self._count + 1) % self._cap
        if tail < 0:
            tail += self._cap
        self.size -= self._esize[tail]
        self._ring[tail] = None
        self._count -= 1
        return 0

    cdef int add(self, tuple entry, Py_ssize_t esize) except -1:
        # RFC 7541 4.4: evict until it fits; an entry larger than the table empties it.
        while self._count and self.size + esize > self.max_size:
            self._evict_one()
        if esize > self.max_size:
            return 0
        self._head = (self._head + 1) % self._cap
        self._ring[self._head] = entry
        self._esize[self._head] = esize
        self._count += 1
        self.size += esize
        return 1

    cdef tuple get(self, Py_ssize_t i):
        cdef Py_ssize_t slot = (self._head - i) % self._cap
        if slot < 0:
            slot += self._cap
        return <tuple>self._ring[slot]

    def entries(self):
        """Dynamic table entries, newest first (for tests and debugging)."""
        return [self.get(i) for i in range(self._count)]

    def __len__(self):
        return self._count


# ---------------------------------------------------------------------------
# Decoder

@cython.final
cdef class Decoder(_Table):
    """Decodes header blocks of one connection; keeps the peer encoder's dynamic table."""

    def __cinit__(self, *args, **kwargs):
        self._mraw = [b""] * MEMO_FIELDS
        self._mentry = [None] * MEMO_FIELDS

    def __init__(self, Py_ssize_t max_table_size=4096):
        self.settings_max_size = max_table_size
        self._hbuf = NULL
        self._hcap = 0
        self.set_max_size(max_table_size)

    def __dealloc__(self):
        free(self._hbuf)

    @property
    def table_size(self):
        """The size the peer's latest table size update set (RFC 7541 6.3)."""
        return self.max_size

    def set_settings_max_size(self, Py_ssize_t size):
        """Our SETTINGS_HEADER_TABLE_SIZE changed (acknowledged by the peer)."""
        self.settings_max_size = size
        if self.max_size > size:
            self.set_max_size(size)

    def decode(self, data, Py_ssize_t max_list_size=-1):
        """Decode one header block to [(name, value)]; None when over max_list_size."""
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self.decode_c(<const uchar*>view.buf, view.len,
                                 max_list_size if max_list_size >= 0 else 1 << 62)
        finally:
            PyBuffer_Release(&view)

    cdef bytes _string(self, const uchar* p, Py_ssize_t n, Py_ssize_t* pos):
        if pos[0] >= n:
            raise _HPACKError("truncated string")
        cdef bint huff = p[pos[0]] & 0x80
        cdef Py_ssize_t length = _int(p, n, pos, 7)
        cdef Py_ssize_t start = pos[0]
        if length > n - start:
            raise _HPACKError("string longer than the block")
        pos[0] = start + length
        if not huff:
            return PyBytes_FromStringAndSize(<const char*>p + start, length)
        cdef Py_ssize_t need = length * 8 // 5 + 1
        if need > self._hcap:
            free(self._hbuf)
            self._hbuf = <uchar*>malloc(need)
            if self._hbuf == NULL:
                self._hcap = 0
                raise MemoryError()
            self._hcap = need
        cdef Py_ssize_t k = _huffman_decode(p + start, length, self._hbuf)
        return PyBytes_FromStringAndSize(<char*>self._hbuf, k)

    cdef list decode_c(self, const uchar* p, Py_ssize_t n, Py_ssize_t max_list_size):
        cdef list out = []
        cdef Py_ssize_t pos = 0, idx, total = 0, size, i = 0, start, k
        cdef uchar b
        cdef bint fields_seen = False, keep = True
        cdef tuple entry
        cdef bytes name, value, raw
        while pos < n:
            b = p[pos]
            start = pos
            if i < MEMO_FIELDS and not b & 0x80 and b & 0xe0 != 0x20:
                # A literal whose bytes are those of the last block's field here decodes
                # to the same field (its name is not in the dynamic table): no Huffman
                # decoding, no new objects. Servers send their changing fields (date,
                # etag) as literals without indexing, block after block.
                raw = <bytes>self._mraw[i]
                k = PyBytes_GET_SIZE(raw)
                if k and k <= n - pos and memcmp(PyBytes_AS_STRING(raw), p + pos, k) == 0:
                    entry = <tuple>self._mentry[i]
                    pos += k
                    if b & 0x40:
                        self.add(entry, PyBytes_GET_SIZE(<bytes>entry[0])
                                 + PyBytes_GET_SIZE(<bytes>entry[1]) + 32)
                    i += 1
                    fields_seen = True
                    total += PyBytes_GET_SIZE(<bytes>entry[0]) + PyBytes_GET_SIZE(<bytes>entry[1]) + 32
                    if total > max_list_size:
                        keep = False
                        out = None
                    if keep:
                        out.append(entry)
                    continue
            if b & 0x80:                           # indexed field (6.1)
                idx = _int(p, n, &pos, 7)
                entry = self._index(idx)
            elif b & 0xe0 == 0x20:                 # dynamic table size update (6.3)
                if fields_seen:
                    raise _HPACKError("table size update after a field")
                size = _int(p, n, &pos, 5)
                if size > self.settings_max_size:
                    raise _HPACKError("table size update above SETTINGS_HEADER_TABLE_SIZE")
                self.set_max_size(size)
                continue
            else:
                # Literal: with incremental indexing (6.2.1, 6-bit index), without
                # indexing (6.2.2) or never indexed (6.2.3), both with a 4-bit index.
                idx = _int(p, n, &pos, 6 if b & 0x40 else 4)
                if idx:
                    name = <bytes>self._index(idx)[0]
                else:
                    name = self._string(p, n, &pos)
                value = self._string(p, n, &pos)
                entry = (name, value)
                if b & 0x40:
                    self.add(entry, PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 32)
                if i < MEMO_FIELDS:
                    # Remembered only when the name is not from the dynamic table (the
                    # bytes alone then say what the field is).
                    if idx <= _NSTATIC:
                        self._mraw[i] = PyBytes_FromStringAndSize(<const char*>p + start,
                                                                  pos - start)
                        self._mentry[i] = entry
                    else:
                        self._mraw[i] = b""
            i += 1
            fields_seen = True
            total += PyBytes_GET_SIZE(<bytes>entry[0]) + PyBytes_GET_SIZE(<bytes>entry[1]) + 32
            if total > max_list_size:
                keep = False
                out = None
            if keep:
                out.append(entry)
        return out

    cdef tuple _index(self, Py_ssize_t idx):
        if idx == 0:
            raise _HPACKError("index 0")
        if idx <= _NSTATIC:
            return <tuple>_STATIC[idx - 1]
        idx -= _NSTATIC + 1
        if idx >= self._count:
            raise _HPACKError("index beyond the dynamic table")
        return self.get(idx)


# ---------------------------------------------------------------------------
# Encoder

# Fields never put in the dynamic table, and sent as never-indexed literals so no
# intermediary indexes them either (RFC 7541 7.1.3): credentials, and short cookies
# that a compression-ratio attack could guess (nghttp2's rule: under 20 bytes).
cdef frozenset _SENSITIVE = frozenset((b"authorization", b"proxy-authorization"))


@cython.final
cdef class Encoder(_Table):
    """Encodes header lists for one connection, keeping our dynamic table."""

    def __cinit__(self, *args, **kwargs):
        self._mname = [None] * MEMO_FIELDS
        self._mvalue = [None] * MEMO_FIELDS
        memset(self._mcode, 0, sizeof(self._mcode))

    def __init__(self, Py_ssize_t max_table_size=4096, Py_ssize_t huffman_min=1):
        self._full = {}
        self._names = {}
        self._inserted = 0
        self._pending_min = -1
        self.huffman_min = huffman_min
        self.set_max_size(max_table_size)

    def set_table_size(self, Py_ssize_t size):
        """Change our table size (the peer's SETTINGS_HEADER_TABLE_SIZE, or less).

        The change is announced at the start of the next header block (RFC 7541 4.2).
        """
        self.set_max_size(size)
        if self._pending_min < 0 or size < self._pending_min:
            self._pending_min = size

    def encode(self, headers):
        """Encode an iterable of (name, value) bytes pairs to one header block."""
        cdef bytearray out = bytearray()
        self.encode_c(out, headers)
        return bytes(out)

    cdef int _evict_one(self) except -1:
        cdef Py_ssize_t number = self._inserted - self._count + 1
        cdef tuple entry = self.get(self._count - 1)
        if self._full.get(entry) == number:
            del self._full[entry]
        if self._names.get(entry[0]) == number:
            del self._names[entry[0]]
        _Table._evict_one(self)
        return 0

    cdef int encode_c(self, bytearray out, object headers) except -1:
        cdef Py_ssize_t i = 0
        self.begin_block(out)
        for name, value in headers:
            self.field_at(out, i, <bytes?>name, <bytes?>value)
            i += 1
        return 0

    cdef int begin_block(self, bytearray out) except -1:
        """Start a header block: a table size change not yet announced goes first."""
        if self._pending_min >= 0:
            # The smallest size reached since the last block first, then the current one.
            if self._pending_min < self.max_size:
                _put_int(out, self._pending_min, 5, 0x20)
            _put_int(out, self.max_size, 5, 0x20)
            self._pending_min = -1
        return 0

    cdef bint _memo_emit(self, bytearray out, Py_ssize_t i) except -1:
        """Emit position i's last representation again if it is still an index (the
        dynamic entry is still in the table): what _field would find by hashing."""
        cdef Py_ssize_t code = self._mcode[i]
        if code < -1:
            _put_int(out, -code - 1, 7, 0x80)
            return True
        if code > 0 and code > self._inserted - self._count:
            _put_int(out, _NSTATIC + self._inserted - code + 1, 7, 0x80)
            return True
        return False

    cdef int field_at(self, bytearray out, Py_ssize_t i, bytes name, bytes value) except -1:
        """Encode the i-th field of a block. A connection's header lists repeat (the
        same origin's responses, the same client's requests): when position i holds
        the same field as in the last block, its index is emitted without hashing."""
        cdef bytes mn, mv
        if i >= MEMO_FIELDS:
            self._field(out, name, value)
            return 0
        if self._mcode[i]:
            mn = <bytes>self._mname[i]
            mv = <bytes>self._mvalue[i]
            if (mn is name or mn == name) and (mv is value or mv == value) \
                    and self._memo_emit(out, i):
                return 0
        return self._field_store(out, i, name, value)

    cdef int field_raw(self, bytearray out, Py_ssize_t i, const uchar* name, Py_ssize_t nlen,
                       const uchar* value, Py_ssize_t vlen) except -1:
        """field_at for a field still in a parsed head: the name is lowercased here,
        and no bytes objects are made when position i holds the same field as in the
        last block."""
        cdef bytes mn, mv
        cdef const uchar* q
        cdef Py_ssize_t k
        cdef uchar c
        if i < MEMO_FIELDS and self._mcode[i]:
            mn = <bytes>self._mname[i]
            mv = <bytes>self._mvalue[i]
            if PyBytes_GET_SIZE(mn) == nlen and PyBytes_GET_SIZE(mv) == vlen \
                    and memcmp(PyBytes_AS_STRING(mv), value, vlen) == 0:
                q = <const uchar*>PyBytes_AS_STRING(mn)
                for k in range(nlen):
                    c = name[k]
                    if q[k] != (c + 32 if 65 <= c <= 90 else c):
                        break
                else:
                    if self._memo_emit(out, i):
                        return 0
        cdef bytes n = PyBytes_FromStringAndSize(NULL, nlen)
        cdef char* w = PyBytes_AS_STRING(n)
        for k in range(nlen):
            c = name[k]
            w[k] = <char>(c + 32 if 65 <= c <= 90 else c)
        cdef bytes v = PyBytes_FromStringAndSize(<const char*>value, vlen)
        if i < MEMO_FIELDS:
            return self._field_store(out, i, n, v)
        self._field(out, n, v)
        return 0

    cdef int _field_store(self, bytearray out, Py_ssize_t i, bytes name, bytes value) except -1:
        self._mcode[i] = self._field(out, name, value)
        self._mname[i] = name
        self._mvalue[i] = value
        return 0

    cdef Py_ssize_t _field(self, bytearray out, bytes name, bytes value) except -1:
        """Encode one field; returns how: -(static index) - 1 for a static-table index,
        the dynamic entry's insertion number when it is indexed (found, or added
        now), 0 for a literal that stays one."""
        cdef tuple key = (name, value)
        cdef Py_ssize_t nlen = PyBytes_GET_SIZE(name), vlen = PyBytes_GET_SIZE(value)
        cdef object hit
        if vlen == 0 or (nlen and PyBytes_AS_STRING(name)[0] == b":") or nlen == 15:
            hit = _STATIC_FULL.get(key)
            if hit is not None:
                _put_int(out, <Py_ssize_t>hit, 7, 0x80)
                return -<Py_ssize_t>hit - 1
        hit = self._full.get(key)
        if hit is not None:
            _put_int(out, _NSTATIC + self._inserted - <Py_ssize_t>hit + 1, 7, 0x80)
            return <Py_ssize_t>hit
        cdef Py_ssize_t esize = nlen + vlen + 32
        cdef bint never = name in _SENSITIVE or (vlen < 20 and name == b"cookie")
        # Index what fits in a quarter of the table; big or sensitive values go literal.
        cdef bint index = not never and esize * 4 <= self.max_size
        cdef int prefix = 6 if index else 4
        cdef uchar first = 0x40 if index else (0x10 if never else 0)
        cdef Py_ssize_t nidx = 0
        hit = _STATIC_NAME.get(name)
        if hit is not None:
            nidx = <Py_ssize_t>hit
        else:
            hit = self._names.get(name)
            if hit is not None:
                nidx = _NSTATIC + self._inserted - <Py_ssize_t>hit + 1
        _put_int(out, nidx, prefix, first)
        if not nidx:
            self._put_string(out, name)
        self._put_string(out, value)
        if index and self.add(key, esize):
            self._inserted += 1
            self._full[key] = self._inserted
            self._names[name] = self._inserted
            return self._inserted
        return 0

    cdef int _put_string(self, bytearray out, bytes s) except -1:
        cdef const uchar* p = <const uchar*>PyBytes_AS_STRING(s)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(s)
        cdef Py_ssize_t h
        if n >= self.huffman_min:
            h = huffman_length(p, n)
            if h < n:
                _put_int(out, h, 7, 0x80)
                huffman_encode_into(out, p, n)
                return 0
        _put_int(out, n, 7, 0)
        out.extend(s)
        return 0
