# cython: language_level=3
"""The sending half of an HTTP/2 connection (RFC 9113 4.1, 6): frames written into one
growing buffer (a bytes object) that the caller takes whole with `data_to_send()`.

Kept apart from the receiving half (fastproxy._h2), as HAProxy's mux_h2 keeps its
muxer apart from its demuxer: this side never parses, that side never formats.
"""
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF
from libc.stdint cimport uint32_t
from libc.string cimport memcpy

from fastproxy._hpack cimport Encoder

cdef extern from "Python.h":
    PyObject* PyBytes_FromStringAndSize_raw "PyBytes_FromStringAndSize" (const char*, Py_ssize_t) except NULL
    int _PyBytes_Resize(PyObject** b, Py_ssize_t n) except -1
    char* PyBytes_AS_STRING_raw "PyBytes_AS_STRING" (PyObject*) noexcept

cdef extern from *:
    """
    #if defined(__GLIBC__)
    #include <malloc.h>
    static void fp_keep_heap(void) {
        mallopt(M_MMAP_THRESHOLD, 1 << 20);
        mallopt(M_TRIM_THRESHOLD, 8 << 20);
    }
    #else
    static void fp_keep_heap(void) {}
    #endif
    """
    void fp_keep_heap() noexcept

# A connection's flush takes a buffer of up to a few hundred KiB (32 streams of 4 KiB
# answers) and frees it after the write. With glibc's defaults the freed heap top is
# given back (brk) and the next flush faults its pages in again: 60,000 page faults
# per 100,000 requests at h2load -m 32, 4 KiB, 3 % of the worker's CPU. Once a process
# speaks HTTP/2, blocks under 1 MiB come from the heap and up to 8 MiB of free top stays.
cdef bint _heap_kept = False

# The frames are written straight into the bytes object data_to_send returns (no copy
# at the take). Its first size is the last take's (a connection's flushes are alike),
# within these bounds: a large burst does not make every later PING reply allocate big.
cdef Py_ssize_t MIN_CAPACITY = 4096
cdef Py_ssize_t MAX_HINT = 256 * 1024


cdef inline void _hdr9(uchar* h, Py_ssize_t length, int ftype, int flags, uint32_t sid) noexcept:
    h[0] = <uchar>(length >> 16)
    h[1] = <uchar>(length >> 8)
    h[2] = <uchar>length
    h[3] = <uchar>ftype
    h[4] = <uchar>flags
    h[5] = <uchar>(sid >> 24)
    h[6] = <uchar>(sid >> 16)
    h[7] = <uchar>(sid >> 8)
    h[8] = <uchar>sid


cdef inline void _set32(uchar* h, uint32_t v) noexcept:
    h[0] = <uchar>(v >> 24)
    h[1] = <uchar>(v >> 16)
    h[2] = <uchar>(v >> 8)
    h[3] = <uchar>v


cdef class FrameWriter:
    """Frames out: the buffer, the HPACK encoder, the peer's frame size."""

    def __cinit__(self, *args, **kwargs):
        global _heap_kept
        if not _heap_kept:
            _heap_kept = True
            fp_keep_heap()
        self._obytes = NULL
        self._obuf = NULL
        self._olen = self._ocap = 0
        self._ohint = MIN_CAPACITY
        self._encoder = Encoder(4096)
        self._hscratch = bytearray()
        self.peer_max_frame_size = 16384

    def __dealloc__(self):
        Py_XDECREF(self._obytes)
        self._obytes = NULL

    cpdef bytes data_to_send(self):
        """Take everything queued for the peer (b"" if nothing)."""
        self._ctrl_queued = 0
        cdef Py_ssize_t n = self._olen
        if not n:
            return b""
        # Shrunk in place to what was written; ownership passes to the caller.
        _PyBytes_Resize(&self._obytes, n)
        cdef bytes b = <bytes>self._obytes
        Py_XDECREF(self._obytes)          # `b` holds the reference now
        self._obytes = NULL
        self._obuf = NULL
        self._olen = self._ocap = 0
        self._ohint = n if n < MAX_HINT else MAX_HINT
        return b

    cdef int _put(self, const void* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t need = self._olen + n, cap
        if need > self._ocap:
            # Until the buffer is there again, nothing is queued (a MemoryError leaves
            # the writer empty, never pointing at freed memory).
            self._obuf = NULL
            self._olen = self._ocap = 0
            if self._obytes == NULL:
                cap = max(need, self._ohint + (self._ohint >> 2), MIN_CAPACITY)
                self._obytes = PyBytes_FromStringAndSize_raw(NULL, cap)
            else:
                cap = max(need, 2 * (need - n))
                _PyBytes_Resize(&self._obytes, cap)
            self._obuf = <uchar*>PyBytes_AS_STRING_raw(self._obytes)
            self._ocap = cap
            self._olen = need - n
        memcpy(self._obuf + self._olen, p, n)
        self._olen = need
        return 0

    cdef int _write_header(self, Py_ssize_t length, int ftype, int flags, uint32_t sid) except -1:
        cdef uchar h[9]
        _hdr9(h, length, ftype, flags, sid)
        return self._put(h, 9)

    cdef int _write_u32_frame(self, int ftype, uint32_t sid, uint32_t value) except -1:
        """RST_STREAM (error code) or WINDOW_UPDATE (increment): a 4-byte payload."""
        cdef uchar h[13]
        _hdr9(h, 4, ftype, 0, sid)
        _set32(h + 9, value)
        return self._put(h, 13)

    cdef int _write_goaway(self, uint32_t last, uint32_t code, bytes debug) except -1:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(debug)
        cdef uchar h[17]
        _hdr9(h, 8 + n, T_GOAWAY, 0, 0)
        _set32(h + 9, last)
        _set32(h + 13, code)
        self._put(h, 17)
        return self._put(PyBytes_AS_STRING(debug), n)

    cdef int _write_headers_frames(self, uint32_t sid, object headers, bint end_stream) except -1:
        PyByteArray_Resize(self._hscratch, 0)
        self._encoder.encode_c(self._hscratch, headers)
        return self._write_block_frames(sid, end_stream)

    cdef int _write_block_frames(self, uint32_t sid, bint end_stream) except -1:
        """The header block in _hscratch as HEADERS (and CONTINUATION) frames."""
        cdef bytearray block = self._hscratch
        cdef Py_ssize_t blen = PyByteArray_GET_SIZE(block), off = 0, chunk
        cdef const uchar* p = <const uchar*>PyByteArray_AS_STRING(block)
        cdef int flags = F_END_STREAM if end_stream else 0
        # Too big for one frame: HEADERS then CONTINUATION frames (6.10).
        while True:
            chunk = min(blen - off, <Py_ssize_t>self.peer_max_frame_size)
            self._write_header(chunk, T_HEADERS if off == 0 else T_CONT,
                               (flags if off == 0 else 0) | (F_END_HEADERS if off + chunk == blen else 0),
                               sid)
            self._put(p + off, chunk)
            off += chunk
            if off >= blen:
                return 0

    cdef int _write_data(self, uint32_t sid, const uchar* p, Py_ssize_t n, bint end) except -1:
        """DATA frames of at most the peer's frame size; END_STREAM on the last."""
        cdef Py_ssize_t off = 0, chunk
        while True:
            chunk = min(n - off, <Py_ssize_t>self.peer_max_frame_size)
            self._write_header(chunk, T_DATA, F_END_STREAM if end and off + chunk == n else 0, sid)
            self._put(p + off, chunk)
            off += chunk
            if off >= n:
                return 0
