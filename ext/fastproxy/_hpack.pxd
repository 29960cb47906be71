# Declarations of fastproxy._hpack (implementation in ext/hpack.pyx), so the HTTP/2
# connection (ext/h2.pyx) and later the relay can `from fastproxy._hpack cimport ...`
# and decode/encode header blocks without a Python call.
#
# C entry points:
#   Decoder.decode_c(p, n, max_list_size) -> list of (name, value) bytes tuples, or None
#       when the decoded list exceeds max_list_size (the block is still fully decoded so
#       the dynamic table stays in step with the peer's encoder); raises HPACKError.
#   Encoder.encode_c(out, headers) appends one header block to the bytearray `out`;
#   begin_block + field_at/field_raw per field build one without a list (the same bytes).
from libc.stdint cimport uint8_t, uint32_t

ctypedef unsigned char uchar


cdef class _Table:
    # Dynamic table (RFC 7541 2.3.2) as a ring of (name, value) tuples, newest at `_head`.
    cdef list _ring
    cdef Py_ssize_t* _esize          # entry sizes (name + value + 32), parallel to _ring
    cdef Py_ssize_t _cap             # ring slots: max_size // 32 + 1 always suffices
    cdef Py_ssize_t _head            # slot of the newest entry
    cdef Py_ssize_t _count
    cdef readonly Py_ssize_t size    # current size in RFC 7541 4.1 octets
    cdef readonly Py_ssize_t max_size

    cdef int _resize_ring(self, Py_ssize_t max_size) except -1
    cdef int set_max_size(self, Py_ssize_t max_size) except -1
    cdef int _evict_one(self) except -1
    cdef int add(self, tuple entry, Py_ssize_t esize) except -1   # 1 if stored
    cdef tuple get(self, Py_ssize_t i)     # 0 = newest


cdef enum:
    MEMO_FIELDS = 32                  # positions of a header block the codecs remember


cdef class Decoder(_Table):
    cdef readonly Py_ssize_t settings_max_size   # what we announced; updates may not exceed it
    # The last block's literal at each position: its bytes and the field they gave.
    cdef list _mraw, _mentry
    cdef uchar* _hbuf                            # Huffman output scratch
    cdef Py_ssize_t _hcap

    cdef list decode_c(self, const uchar* p, Py_ssize_t n, Py_ssize_t max_list_size)
    cdef bytes _string(self, const uchar* p, Py_ssize_t n, Py_ssize_t* pos)
    cdef tuple _index(self, Py_ssize_t idx)


cdef class Encoder(_Table):
    cdef dict _full                   # (name, value) -> insertion number
    cdef dict _names                  # name -> insertion number
    cdef Py_ssize_t _inserted         # insertions so far; newest entry has this number
    cdef Py_ssize_t _pending_min      # smallest size set since the last block, or -1
    cdef readonly Py_ssize_t huffman_min   # strings shorter than this are never Huffman-coded

    # The last block's field at each position and how it went out (_field's code).
    cdef list _mname, _mvalue
    cdef Py_ssize_t _mcode[MEMO_FIELDS]

    cdef int encode_c(self, bytearray out, object headers) except -1
    cdef int begin_block(self, bytearray out) except -1
    cdef bint _memo_emit(self, bytearray out, Py_ssize_t i) except -1
    cdef int field_at(self, bytearray out, Py_ssize_t i, bytes name, bytes value) except -1
    cdef int field_raw(self, bytearray out, Py_ssize_t i, const uchar* name, Py_ssize_t nlen,
                       const uchar* value, Py_ssize_t vlen) except -1
    cdef int _field_store(self, bytearray out, Py_ssize_t i, bytes name, bytes value) except -1
    cdef Py_ssize_t _field(self, bytearray out, bytes name, bytes value) except -1
    cdef int _evict_one(self) except -1
    cdef int _put_string(self, bytearray out, bytes s) except -1


cdef int huffman_encode_into(bytearray out, const uchar* s, Py_ssize_t n) except -1
cdef Py_ssize_t huffman_length(const uchar* s, Py_ssize_t n) noexcept
