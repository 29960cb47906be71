# Declarations of fastproxy._h2 (implementation in ext/h2.pyx): the sans-IO HTTP/2
# connection.  A compiled subclass (the relay) overrides the cpdef hooks and calls the
# send methods as C.
from libc.stdint cimport uint8_t, uint32_t
from fastproxy._hpack cimport Decoder, Encoder
from fastproxy._h2msg cimport MsgInfo, N_KINDS
from fastproxy._h2frames cimport FrameWriter
from fastproxy._http cimport Request, Response

ctypedef unsigned char uchar


cdef class _Stream:
    cdef int id
    cdef bint remote_open           # the peer may still send (no END_STREAM or reset yet)
    cdef bint local_open            # we may still send
    cdef bint peer_initiated
    cdef bint blocked               # send_data accepted less than offered
    cdef bint head                  # client role: the request was HEAD (no response body)
    cdef bint connect
    cdef int phase                  # peer's header blocks: 0 none, 1 informational, 2 final
    cdef long long send_window
    cdef long long recv_window
    cdef long long unacked          # consumed by the caller, not yet given back
    cdef long long content_length   # expected DATA bytes, -1 unknown
    cdef long long received
    cdef object key                 # the id as the int object the connection's dict holds


cdef class Connection(FrameWriter):
    # options (readonly for the caller)
    cdef readonly bint client
    cdef readonly int max_concurrent_streams
    cdef readonly long long initial_window_size
    cdef readonly long long connection_window_size
    cdef readonly int max_frame_size
    cdef readonly Py_ssize_t max_header_list_size
    cdef readonly Py_ssize_t max_header_block
    cdef readonly int max_control_frames
    cdef readonly int max_empty_frames
    cdef readonly double stream_rate, stream_burst, reset_rate, reset_burst
    # peer settings
    cdef readonly long long peer_initial_window_size
    cdef readonly long long peer_max_concurrent_streams
    cdef readonly long long peer_max_header_list_size
    # connection state
    cdef readonly bint dead                 # a connection error happened: ignore input
    cdef readonly int goaway_received       # -1, or the peer's last stream id
    cdef readonly int goaway_sent           # -1, or our last stream id
    cdef readonly int last_peer_stream
    cdef readonly int active_local, active_peer
    cdef readonly long long send_window     # connection-level
    cdef long long _recv_window
    cdef long long _unacked
    cdef long long _local_initial           # stream receive window in force (SETTINGS acked or not)
    cdef bint _settings_acked
    cdef bint _got_settings
    cdef bint _in_feed
    cdef int _next_id
    cdef dict _streams
    cdef _Stream _last
    cdef Decoder _decoder
    cdef Py_ssize_t _decoder_size           # our SETTINGS_HEADER_TABLE_SIZE, applied once acked
    cdef int _empty_run
    cdef double _stream_tokens, _reset_tokens, _stamp
    cdef long long _errors[N_KINDS]
    cdef int _resets[256]                   # streams we reset lately: their frames are ignored
    cdef int _nresets
    # Peer stream ids skipped when a higher one opened (RFC 9113 5.1.1: never used, closed
    # implicitly), as [first, last] ranges: a HEADERS on one is a PROTOCOL_ERROR, on a
    # stream that was open and ended a STREAM_CLOSED. The last 16 gaps are kept.
    cdef uint32_t _skipped[16][2]
    cdef int _nskipped
    # frame reader
    cdef int _rstate
    cdef uchar _hdr[10]
    cdef int _hn
    cdef uint32_t _flen
    cdef int _ftype, _fflags
    cdef uint32_t _fsid
    cdef bytearray _payload
    cdef _Stream _dstream                   # DATA being delivered (None: skipping it)
    cdef uint32_t _dsid
    cdef long long _dremain, _dpad
    cdef bint _dend
    cdef uint32_t _cont_sid                 # header block awaiting CONTINUATION (0: none)
    cdef int _cont_flags
    cdef bytearray _hblock
    cdef Py_ssize_t _block_bytes

    # hooks
    cpdef on_headers(self, int stream_id, list headers, bint end_stream)
    cpdef on_headers_too_large(self, int stream_id, bint end_stream)
    cpdef on_informational(self, int stream_id, list headers)
    cpdef on_trailers(self, int stream_id, list headers)
    cpdef on_data(self, int stream_id, bytes data, bint end_stream)
    cpdef on_reset(self, int stream_id, int error_code, bint remote)
    cpdef on_window_open(self, int stream_id)
    cpdef on_goaway(self, int last_stream_id, int error_code, bytes debug)
    cpdef on_settings(self)
    cpdef on_ping_ack(self, bytes opaque)
    cpdef on_connection_error(self, int error_code, str kind)
    # caller API
    cpdef feed(self, data)
    cpdef int send_headers(self, int stream_id, object headers, bint end_stream=*) except -2
    cpdef int send_request(self, object headers, bint end_stream=*) except -2
    cdef int send_forward_head(self, _Stream st, Response resp, bytes extra, bint end_stream) except -2
    cdef long long send_data_to(self, _Stream st, object data, bint end_stream) except -2
    cdef int send_request_of(self, Request req, bytes scheme, bytes authority, bint end_stream) except -2
    cdef _Stream _open_local(self, bytes method)
    cpdef long long send_data(self, int stream_id, object data, bint end_stream=*) except -2
    cpdef int reset_stream(self, int stream_id, int error_code=*) except -2
    cpdef int acknowledge_received(self, int stream_id, long long n) except -1
    cpdef int goaway(self, int error_code=*, int last_stream_id=*) except -1
    cpdef int ping(self, bytes opaque) except -1
    cpdef long long stream_send_window(self, int stream_id)
    # internals
    cdef int _feed(self, const uchar* p, Py_ssize_t n) except -1
    cdef int _frame_header(self) except -1
    cdef int _data_header(self) except -1
    cdef int _data_chunk(self, const uchar* p, Py_ssize_t k) except -1
    cdef int _frame(self, const uchar* p, Py_ssize_t n) except -1
    cdef int _headers(self, const uchar* p, Py_ssize_t n) except -1
    cdef int _block(self, uint32_t sid, bint end_stream, bint self_dep,
                    const uchar* p, Py_ssize_t n) except -1
    cdef int _peer_headers(self, _Stream st, uint32_t sid, list headers, bint end_stream) except -1
    cdef _Stream _new_peer_stream(self, uint32_t sid, bint end_stream)
    cdef int _settings(self, const uchar* p, Py_ssize_t n) except -1
    cdef int _window_update(self, const uchar* p, Py_ssize_t n) except -1
    cdef int _rst_stream(self, const uchar* p, Py_ssize_t n) except -1
    cdef int _goaway_frame(self, const uchar* p, Py_ssize_t n) except -1
    cdef int _conn_error(self, int code, int kind) except -1
    cdef int _stream_error(self, uint32_t sid, int code, int kind, bint notify) except -1
    cdef int _count(self, int kind) except -1
    cdef int _control(self) except -1
    cdef int _ack(self, _Stream st, long long n) except -1
    cdef int _close_remote(self, _Stream st) except -1
    cdef int _close_local(self, _Stream st) except -1
    cdef int _forget(self, _Stream st) except -1
    cdef _Stream _get(self, uint32_t sid)
    cdef bint _was_reset(self, uint32_t sid) noexcept
    cdef bint _was_skipped(self, uint32_t sid) noexcept
    cdef int _remember_reset(self, uint32_t sid) noexcept
    cdef bint _is_idle(self, uint32_t sid) noexcept
    cdef bint _take(self, double* tokens, double rate, double burst) noexcept
    cdef int _windows_opened(self) except -1
