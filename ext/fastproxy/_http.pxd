# Declarations of fastproxy._http (implementation in ext/http.pyx), so other
# compiled modules (the relay) can `from fastproxy._http cimport ...` and call the
# parser and read parsed fields as C, without a Python call per access.
#
# C entry points for cimporting modules (the Python API in _http.pyi wraps them):
#   RequestParser.feed_c(data, start) -> Request or None; RequestParser.clear_c() = reset()
#   ResponseParser.feed_c(data, start, head_request, connect_request) -> Response or None
#   ChunkedDecoder.feed_c(data, start, out) -> bytes consumed
#   _Message.forward_c(start_line or None, extra, drop, keep_upgrade) -> bytes
#   _Message.forward_fields(drop, keep_upgrade) -> [(lowercase name, value)], the same fields
# Readonly attributes below are plain struct reads on a typed object.
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING
from libc.stdint cimport uint8_t, uint32_t, uint64_t

ctypedef unsigned char uchar


# The request-target byte set (RFC 9112 3.2, RFC 3986 2), shared with HTTP/2's :path.
cdef bint target_chars(const uchar* p, Py_ssize_t n) noexcept


cdef struct Field:
    uint32_t name_off
    uint32_t name_len
    uint32_t value_off
    uint32_t value_len
    uint8_t kind
    uint8_t flags


cdef class _Message:
    cdef Field* _fields            # points into _fields_mem
    cdef bytes _fields_mem         # small-object allocation, freed with the message
    cdef int _nf
    cdef readonly bytes head
    cdef readonly Py_ssize_t head_length
    cdef readonly int version
    cdef readonly long long content_length
    cdef readonly int body
    cdef readonly bint chunked
    cdef readonly bint keep_alive
    cdef Py_ssize_t _sl_len
    cdef int _host_i
    cdef int _upgrade_i
    cdef int _cc_i
    cdef int _cc_n
    cdef int _conn_n
    cdef bint _conn_upgrade
    cdef bint _conn_close
    cdef bint _conn_keep_alive
    cdef bint _expect_continue
    cdef bint _expect_other        # an Expect member other than 100-continue (417)
    cdef object _connection

    cdef inline const uchar* _h(self):
        return <const uchar*>PyBytes_AS_STRING(self.head)

    cdef bint has_c(self, bytes name)
    cdef object get_c(self, bytes name)
    cdef object get_list_c(self, bytes name)
    cdef bytes _value(self, int i)
    cdef bytes _join(self, uint8_t kind, int first)
    cdef bytes forward_c(self, bytes start_line, bytes extra, tuple drop, bint keep_upgrade)
    cdef int _skips(self, uint8_t* skip, tuple drop, bint keep_upgrade) except -1
    cdef list forward_fields(self, tuple drop, bint keep_upgrade)
    cdef int _analyze(self, bint response) except -1


@cython.final
cdef class Request(_Message):
    cdef readonly bytes method
    cdef readonly int target_form
    cdef readonly bint expect_continue
    cdef Py_ssize_t _t_off
    cdef Py_ssize_t _t_len
    cdef object _target


@cython.final
cdef class Response(_Message):
    cdef readonly int status
    cdef Py_ssize_t _r_off
    cdef Py_ssize_t _r_len


cdef class _HeadParser:
    cdef readonly Py_ssize_t max_head
    cdef readonly int max_fields
    cdef Field* _fields
    cdef int _nf
    cdef Py_ssize_t _skip          # empty lines before the start line
    cdef Py_ssize_t _pos           # start of the first unfinished line (from start)
    cdef Py_ssize_t _scan          # how far that line was searched for LF
    cdef bint _have_line           # the start line is parsed
    cdef bint _response

    cdef int _alloc(self, Py_ssize_t max_head, int max_fields) except -1
    cdef void _clear(self) noexcept
    cdef int _start_line(self, const uchar* h, Py_ssize_t e) except -1
    cdef int _field_line(self, const uchar* p, Py_ssize_t ls, Py_ssize_t le) except -1
    cdef Py_ssize_t _scan_head(self, const uchar* p, Py_ssize_t n) except -2
    cdef int _partial_start_line(self, const uchar* h, Py_ssize_t n) except -1
    cdef Py_ssize_t _finish(self, Py_ssize_t end) except -2
    cdef int _fill(self, _Message m, const uchar* p, Py_ssize_t end, object data,
                   Py_ssize_t start) except -1


@cython.final
cdef class RequestParser(_HeadParser):
    cdef readonly Py_ssize_t max_line
    cdef Py_ssize_t _pv            # how far an unfinished request line was checked
    cdef Py_ssize_t _pt0           # where its target starts
    cdef int _pphase               # 0 method, 1 target, 2 version
    cdef bytes _method
    cdef int _version
    cdef int _form
    cdef Py_ssize_t _t_off
    cdef Py_ssize_t _t_len
    cdef Py_ssize_t _sl

    cdef int _target_form(self, const uchar* t, Py_ssize_t n) except -1
    cdef void clear_c(self) noexcept   # reset() without a Python call
    cdef Request feed_c(self, object data, Py_ssize_t start)


@cython.final
cdef class ResponseParser(_HeadParser):
    cdef int _version
    cdef int _status
    cdef Py_ssize_t _r_off
    cdef Py_ssize_t _r_len
    cdef Py_ssize_t _sl

    cdef Response feed_c(self, object data, Py_ssize_t start, bint head_request,
                         bint connect_request)


@cython.final
cdef class ChunkedDecoder:
    cdef readonly Py_ssize_t max_trailer
    cdef readonly Py_ssize_t max_ext
    cdef int _state
    cdef uint64_t _size
    cdef int _digits
    cdef Py_ssize_t _ext_len
    cdef Py_ssize_t _trailer_len
    cdef bytearray _trailers
    cdef bint _has_trailers
    cdef readonly Py_ssize_t passed   # of the last feed's bytes, those before the trailers
    cdef readonly long long content   # chunk-data bytes so far (the body, without framing)

    cpdef bytes kept_trailers(self)
    cdef Py_ssize_t feed_c(self, object data, Py_ssize_t start, list out) except -1
    cdef Py_ssize_t _feed(self, const uchar* p, Py_ssize_t n, object data, Py_ssize_t start,
                          list out) except -1
