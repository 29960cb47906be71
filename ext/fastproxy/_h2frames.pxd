# Declarations of fastproxy._h2frames (implementation in ext/h2frames.pyx): the frame
# constants of RFC 9113 and the sending half of an HTTP/2 connection, which
# fastproxy._h2.Connection extends with the receiving half.
from cpython.object cimport PyObject
from libc.stdint cimport uint32_t
from fastproxy._hpack cimport Encoder

ctypedef unsigned char uchar

cdef enum:
    # error codes (RFC 9113 7)
    E_NO = 0x0
    E_PROTOCOL = 0x1
    E_INTERNAL = 0x2
    E_FLOW = 0x3
    E_STREAM_CLOSED = 0x5
    E_FRAME_SIZE = 0x6
    E_REFUSED = 0x7
    E_CANCEL = 0x8
    E_COMPRESSION = 0x9
    E_CALM = 0xb
    # frame types (6)
    T_DATA = 0
    T_HEADERS = 1
    T_PRIORITY = 2
    T_RST = 3
    T_SETTINGS = 4
    T_PUSH = 5
    T_PING = 6
    T_GOAWAY = 7
    T_WINDOW = 8
    T_CONT = 9
    # flags
    F_END_STREAM = 0x1
    F_ACK = 0x1
    F_END_HEADERS = 0x4
    F_PADDED = 0x8
    F_PRIORITY = 0x20
    MAX_WINDOW = 0x7fffffff


cdef class FrameWriter:
    cdef PyObject* _obytes                  # the bytes object data_to_send hands over (owned)
    cdef uchar* _obuf                       # its buffer: frames not yet taken
    cdef Py_ssize_t _olen, _ocap
    cdef Py_ssize_t _ohint                  # the size of the last take: the next buffer's start
    cdef Encoder _encoder
    cdef bytearray _hscratch                # one encoded header block
    cdef readonly int peer_max_frame_size
    cdef int _ctrl_queued                   # control replies queued since the last take

    cpdef bytes data_to_send(self)
    cdef int _put(self, const void* p, Py_ssize_t n) except -1
    cdef int _write_header(self, Py_ssize_t length, int ftype, int flags, uint32_t sid) except -1
    cdef int _write_u32_frame(self, int ftype, uint32_t sid, uint32_t value) except -1
    cdef int _write_goaway(self, uint32_t last, uint32_t code, bytes debug) except -1
    cdef int _write_headers_frames(self, uint32_t sid, object headers, bint end_stream) except -1
    cdef int _write_block_frames(self, uint32_t sid, bint end_stream) except -1
    cdef int _write_data(self, uint32_t sid, const uchar* p, Py_ssize_t n, bint end) except -1
