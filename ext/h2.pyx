# cython: language_level=3
"""HTTP/2 connection (RFC 9113), sans-IO, for both ends of the proxy.

`feed(data)` parses every complete frame and reports what happened by calling the
connection's own hook methods (`on_headers`, `on_data`, ...); a compiled subclass in the
relay overrides them at C speed, tests subclass in Python.  Frames to send accumulate in
one buffer the caller takes with `data_to_send()` and writes in one transport write.

Design choices (the reasons are in fastproxy/_h2.pyi with the API):
* No object per frame: the 9-byte header is read into a C array, control frames are
  handled from the input buffer, DATA payloads go to `on_data` as they arrive (a frame
  split across reads is delivered in pieces, END_STREAM with the last one), and only a
  non-DATA frame split across reads is copied, once.
* Receive windows follow the caller: credit returns only through
  `acknowledge_received`, so the bytes buffered for the peer are bounded by the
  windows.  `send_data` sends what the windows allow and returns how much; the caller
  keeps the rest and resumes at `on_window_open`.  The codec itself never queues DATA.
* Every header list is checked (fastproxy._h2msg) before a hook sees it: a malformed
  message is a stream error, never forwarded.  Every limit is an option; every kind of
  protocol error has a counter (`errors`, `error_totals()`).
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcmp, memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from fastproxy._hpack cimport Decoder, Encoder
from fastproxy._http cimport Request, Response
from fastproxy._h2msg cimport *
from fastproxy._h2frames cimport *

from fastproxy._hpack import HPACKError
from fastproxy._h2msg import ERROR_KINDS

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
cdef bytes _PREFACE = PREFACE

# Error codes (RFC 9113 7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
CONNECT_ERROR = 0xa
ENHANCE_YOUR_CALM = 0xb
INADEQUATE_SECURITY = 0xc
HTTP_1_1_REQUIRED = 0xd

cdef enum:
    F_SELF_DEP = 0x100        # internal: the HEADERS awaiting CONTINUATION depended on itself

    RS_PREFACE = 0
    RS_HEAD = 1
    RS_PAYLOAD = 2
    RS_PADLEN = 3
    RS_DATA = 4
    RS_PAD = 5

    ENCODER_TABLE_MAX = 4096   # our encoder's table, whatever larger size the peer allows

cdef long long _TOTALS[N_KINDS]
memset(_TOTALS, 0, sizeof(_TOTALS))


def error_totals():
    """Protocol errors of every kind counted by all connections of this process."""
    return {ERROR_KINDS[k]: _TOTALS[k] for k in range(1, N_KINDS) if _TOTALS[k]}


cdef inline uint32_t _be32(const uchar* p) noexcept:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline int _bput(bytearray out, const void* p, Py_ssize_t n) except -1:
    cdef Py_ssize_t at = PyByteArray_GET_SIZE(out)
    PyByteArray_Resize(out, at + n)
    memcpy(PyByteArray_AS_STRING(out) + at, p, n)
    return 0


cdef inline void _set32(uchar* h, uint32_t v) noexcept:
    h[0] = <uchar>(v >> 24)
    h[1] = <uchar>(v >> 16)
    h[2] = <uchar>(v >> 8)
    h[3] = <uchar>v


cdef double _now() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


@cython.freelist(64)
cdef class _Stream:
    pass


cdef class Connection(FrameWriter):
    """One HTTP/2 connection, server (client=False) or client (client=True) role."""

    def __cinit__(self, *args, **kwargs):
        # Containers exist even if a subclass forgets to call __init__ (no crash, only
        # a connection that has not sent its preface).
        self._streams = {}
        self._payload = bytearray()
        self._hblock = bytearray()
        self._decoder = Decoder(4096)

    def __init__(self, bint client=False, *, int max_concurrent_streams=128,
                 long long initial_window_size=65535, long long connection_window_size=1 << 20,
                 int max_frame_size=16384, Py_ssize_t max_header_list_size=65536,
                 Py_ssize_t max_header_block=-1, Py_ssize_t header_table_size=4096,
                 int max_control_frames=1000, int max_empty_frames=10,
                 double stream_rate=10000.0, double stream_burst=10000.0,
                 double reset_rate=100.0, double reset_burst=1000.0):
        if not 0 <= initial_window_size <= MAX_WINDOW:
            raise ValueError("initial_window_size must be 0..2^31-1")
        if not 65535 <= connection_window_size <= MAX_WINDOW:
            raise ValueError("connection_window_size must be 65535..2^31-1")
        if not 16384 <= max_frame_size <= 16777215:
            raise ValueError("max_frame_size must be 16384..16777215")
        if max_concurrent_streams < 0 or max_header_list_size < 0 or header_table_size < 0:
            raise ValueError("limits must not be negative")
        self.client = client
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_window_size = initial_window_size
        self.connection_window_size = connection_window_size
        self.max_frame_size = max_frame_size
        self.max_header_list_size = max_header_list_size
        # A header block (its frames' headers counted too, so empty CONTINUATIONs add
        # up) never needs to be larger than the decoded list it may produce.
        self.max_header_block = max_header_block if max_header_block >= 0 else max_header_list_size
        self.max_control_frames = max_control_frames
        self.max_empty_frames = max_empty_frames
        self.stream_rate, self.stream_burst = stream_rate, stream_burst
        self.reset_rate, self.reset_burst = reset_rate, reset_burst
        self._stream_tokens, self._reset_tokens = stream_burst, reset_burst
        self._stamp = _now()
        self.peer_initial_window_size = 65535
        self.peer_max_frame_size = 16384
        self.peer_max_concurrent_streams = MAX_WINDOW     # unlimited until the peer says
        self.peer_max_header_list_size = -1
        self.goaway_received = -1
        self.goaway_sent = -1
        self.send_window = 65535
        self._recv_window = connection_window_size
        self._local_initial = 65535                      # until our SETTINGS are acknowledged
        self._next_id = 1 if client else 2
        # The peer may use a 4096-octet table until it has seen our SETTINGS.
        self._decoder = Decoder(max(header_table_size, 4096))
        self._decoder_size = header_table_size
        self._rstate = RS_HEAD if client else RS_PREFACE
        memset(self._errors, 0, sizeof(self._errors))
        # Our preface: (client) the magic, then SETTINGS, then the connection window.
        cdef uchar s[6 * 6]
        cdef int ns = 0
        settings = [(3, max_concurrent_streams), (6, max_header_list_size)]
        if client:
            settings.insert(0, (2, 0))
        if initial_window_size != 65535:
            settings.append((4, initial_window_size))
        if max_frame_size != 16384:
            settings.append((5, max_frame_size))
        if header_table_size != 4096:
            settings.append((1, header_table_size))
        for ident, value in settings:
            s[ns * 6] = 0
            s[ns * 6 + 1] = ident
            _set32(s + ns * 6 + 2, value)
            ns += 1
        if client:
            self._put(PyBytes_AS_STRING(_PREFACE), 24)
        self._write_header(ns * 6, T_SETTINGS, 0, 0)
        self._put(s, ns * 6)
        if connection_window_size > 65535:
            self._write_u32_frame(T_WINDOW, 0, <uint32_t>(connection_window_size - 65535))

    # ------------------------------------------------------------------ hooks

    cpdef on_headers(self, int stream_id, list headers, bint end_stream):
        """A request (server role) or a final response (client role) arrived."""

    cpdef on_headers_too_large(self, int stream_id, bint end_stream):
        """A request's header list was over max_header_list_size (server role); the
        stream is open for an answer. By default it is reset (PROTOCOL_ERROR)."""
        self._stream_error(stream_id, E_PROTOCOL, K_OK, False)

    cpdef on_informational(self, int stream_id, list headers):
        """A 1xx response arrived (client role)."""

    cpdef on_trailers(self, int stream_id, list headers):
        """Trailers arrived; they end the peer's side of the stream."""

    cpdef on_data(self, int stream_id, bytes data, bint end_stream):
        """Body bytes arrived; give credit back with acknowledge_received once consumed."""

    cpdef on_reset(self, int stream_id, int error_code, bint remote):
        """The stream is gone: reset by the peer (remote) or by us for a protocol error."""

    cpdef on_window_open(self, int stream_id):
        """A stream that send_data left short may send again."""

    cpdef on_goaway(self, int last_stream_id, int error_code, bytes debug):
        """The peer is closing: our streams above last_stream_id were not processed."""

    cpdef on_settings(self):
        """The peer's SETTINGS were applied (peer_* attributes)."""

    cpdef on_ping_ack(self, bytes opaque):
        """Our PING came back."""

    cpdef on_connection_error(self, int error_code, str kind):
        """A connection error: GOAWAY is queued; send data_to_send() and close."""

    # ------------------------------------------------------------------ caller API

    @property
    def errors(self):
        """Protocol errors counted on this connection, by kind."""
        return {ERROR_KINDS[k]: self._errors[k] for k in range(1, N_KINDS) if self._errors[k]}

    @property
    def streams_available(self):
        """How many more requests send_request would accept now (client role)."""
        if self.dead or self.goaway_received >= 0:
            return 0
        return max(0, min(self.peer_max_concurrent_streams - self.active_local,
                          (MAX_WINDOW - self._next_id) // 2 + 1))

    cpdef feed(self, data):
        """Parse received bytes; hooks run for what they complete."""
        cdef Py_buffer view
        if self.dead:
            return None
        if self._in_feed:
            raise RuntimeError("feed() called from a hook")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        self._in_feed = True
        try:
            self._feed(<const uchar*>view.buf, view.len)
        finally:
            self._in_feed = False
            PyBuffer_Release(&view)
        return None

    cpdef int send_headers(self, int stream_id, object headers, bint end_stream=False) except -2:
        """Send a response (or 1xx, or trailers) on a stream; -1 if it cannot send."""
        cdef _Stream st = self._get(stream_id)
        if self.dead or st is None or not st.local_open:
            return -1
        self._write_headers_frames(stream_id, headers, end_stream)
        if end_stream:
            self._close_local(st)
        return 0

    cdef int send_forward_head(self, _Stream st, Response resp, bytes extra,
                               bint end_stream) except -2:
        """Send the HEADERS of the head the relay forwards (h2msg.h2_encode_forward),
        encoded straight from the parsed head, on a stream the caller holds; -1 if it
        cannot send."""
        if self.dead or st is None or not st.local_open:
            return -1
        PyByteArray_Resize(self._hscratch, 0)
        h2_encode_forward(self._encoder, self._hscratch, resp, extra)
        self._write_block_frames(st.id, end_stream)
        if end_stream:
            self._close_local(st)
        return 0

    cpdef int send_request(self, object headers, bint end_stream=False) except -2:
        """Open a stream with a request (client role); its id, or 0 if none may open now."""
        if not self.client:
            raise ValueError("send_request is for the client role")
        if type(headers) is not list:
            headers = list(headers)           # read twice below
        cdef bytes method = b""
        for name, value in headers:
            if name == b":method":
                method = value
                break
        cdef _Stream st = self._open_local(method)
        if st is None:
            return 0
        self._write_headers_frames(st.id, headers, end_stream)
        if end_stream:
            self._close_local(st)
        return st.id

    cdef int send_request_of(self, Request req, bytes scheme, bytes authority,
                             bint end_stream) except -2:
        """send_request(h2_request_fields(req, scheme, authority), end_stream), encoded
        straight from the parsed head (h2msg.h2_encode_request)."""
        if not self.client:
            raise ValueError("send_request is for the client role")
        cdef _Stream st = self._open_local(req.method)
        if st is None:
            return 0
        PyByteArray_Resize(self._hscratch, 0)
        h2_encode_request(self._encoder, self._hscratch, req, scheme, authority)
        self._write_block_frames(st.id, end_stream)
        if end_stream:
            self._close_local(st)
        return st.id

    cdef _Stream _open_local(self, bytes method):
        """A new stream of ours for a request with this method, or None if none may
        open now."""
        if self.dead or self.goaway_received >= 0 or self._next_id > MAX_WINDOW \
                or self.active_local >= self.peer_max_concurrent_streams:
            return None
        cdef int sid = self._next_id
        self._next_id += 2
        cdef _Stream st = _Stream.__new__(_Stream)
        st.id = sid
        st.remote_open = st.local_open = True
        st.send_window = self.peer_initial_window_size
        st.recv_window = self._local_initial
        st.content_length = -1
        st.head = method == b"HEAD"
        st.connect = method == b"CONNECT"
        st.key = sid
        self._streams[st.key] = st
        self.active_local += 1
        return st

    cpdef long long send_data(self, int stream_id, object data, bint end_stream=False) except -2:
        """Send what the windows allow of data; returns the bytes taken, -1 if closed.

        END_STREAM goes out only if all of data was taken.  When less was taken the
        caller keeps the rest and resumes at on_window_open(stream_id).
        """
        return self.send_data_to(self._get(stream_id), data, end_stream)

    cdef long long send_data_to(self, _Stream st, object data, bint end_stream) except -2:
        """send_data to a stream the caller holds (no lookup by id); -1 if closed."""
        if self.dead or st is None or not st.local_open:
            return -1
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        cdef long long n = view.len, allowed = n
        cdef bint end = end_stream
        try:
            if allowed > st.send_window:
                allowed = st.send_window
            if allowed > self.send_window:
                allowed = self.send_window
            if allowed < 0:
                allowed = 0
            if allowed < n:
                end = False
                st.blocked = True
            if allowed or end:
                self._write_data(st.id, <const uchar*>view.buf, allowed, end)
        finally:
            PyBuffer_Release(&view)
        st.send_window -= allowed
        self.send_window -= allowed
        if end:
            self._close_local(st)
        return allowed

    cpdef int reset_stream(self, int stream_id, int error_code=E_CANCEL) except -2:
        """Reset a stream (RST_STREAM); -1 if it is not open."""
        cdef _Stream st = self._get(stream_id)
        if self.dead or st is None:
            return -1
        self._stream_error(stream_id, error_code, K_OK, False)
        return 0

    cpdef int acknowledge_received(self, int stream_id, long long n) except -1:
        """The caller consumed n bytes of a stream's DATA: give the peer that credit."""
        if n > 0 and not self.dead:
            self._ack(self._get(stream_id), n)
        return 0

    cpdef int goaway(self, int error_code=E_NO, int last_stream_id=-1) except -1:
        """Send GOAWAY: streams the peer opens above last_stream_id (default: the
        last it opened) are ignored from now on."""
        if last_stream_id < 0:
            last_stream_id = self.last_peer_stream
        self._write_goaway(last_stream_id, error_code, b"")
        self.goaway_sent = last_stream_id
        return 0

    cpdef int ping(self, bytes opaque) except -1:
        """Send a PING with 8 bytes of opaque data (answered through on_ping_ack)."""
        if PyBytes_GET_SIZE(opaque) != 8:
            raise ValueError("PING data is 8 bytes")
        self._write_header(8, T_PING, 0, 0)
        self._put(PyBytes_AS_STRING(opaque), 8)
        return 0

    cpdef long long stream_send_window(self, int stream_id):
        """Bytes send_data would take now on a stream (-1 if it cannot send)."""
        cdef _Stream st = self._get(stream_id)
        if st is None or not st.local_open:
            return -1
        return max(0, min(st.send_window, self.send_window))

    # ------------------------------------------------------------------ reading

    cdef int _feed(self, const uchar* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t pos = 0, k, have
        cdef int st
        while pos < n and not self.dead:
            st = self._rstate
            if st == RS_HEAD:
                if self._hn == 0 and n - pos >= 9:
                    memcpy(self._hdr, p + pos, 9)
                    pos += 9
                else:
                    k = min(9 - self._hn, n - pos)
                    memcpy(self._hdr + self._hn, p + pos, k)
                    self._hn += k
                    pos += k
                    if self._hn < 9:
                        break
                    self._hn = 0
                self._frame_header()
                if self._rstate == RS_PAYLOAD and n - pos >= self._flen:
                    # The whole payload is here: handle it in place, no copy.
                    self._rstate = RS_HEAD
                    pos += self._flen
                    self._frame(p + pos - self._flen, self._flen)
            elif st == RS_PAYLOAD:
                have = PyByteArray_GET_SIZE(self._payload)
                k = min(<Py_ssize_t>self._flen - have, n - pos)
                _bput(self._payload, p + pos, k)
                pos += k
                if have + k == self._flen:
                    self._rstate = RS_HEAD
                    self._frame(<const uchar*>PyByteArray_AS_STRING(self._payload), self._flen)
                    PyByteArray_Resize(self._payload, 0)
            elif st == RS_DATA:
                k = min(<Py_ssize_t>self._dremain, n - pos)
                self._dremain -= k
                if self._dremain == 0:
                    self._rstate = RS_PAD if self._dpad else RS_HEAD
                pos += k
                self._data_chunk(p + pos - k, k)
            elif st == RS_PAD:
                k = min(<Py_ssize_t>self._dpad, n - pos)
                self._dpad -= k
                pos += k
                if self._dpad == 0:
                    self._rstate = RS_HEAD
            elif st == RS_PADLEN:
                self._hdr[9] = p[pos]
                pos += 1
                self._data_header()
            else:  # RS_PREFACE: the client's magic, RFC 9113 3.4
                k = min(24 - self._hn, n - pos)
                if memcmp(p + pos, PyBytes_AS_STRING(_PREFACE) + self._hn, k):
                    self._conn_error(E_PROTOCOL, K_BAD_PREFACE)
                    break
                self._hn += k
                pos += k
                if self._hn == 24:
                    self._hn = 0
                    self._rstate = RS_HEAD
        return 0

    cdef int _frame_header(self) except -1:
        cdef const uchar* h = self._hdr
        self._flen = (<uint32_t>h[0] << 16) | (<uint32_t>h[1] << 8) | h[2]
        self._ftype = h[3]
        self._fflags = h[4]
        self._fsid = _be32(h + 5) & 0x7fffffff
        cdef int t = self._ftype
        if self._flen > <uint32_t>self.max_frame_size:
            return self._conn_error(E_FRAME_SIZE, K_FRAME_SIZE)
        if not self._got_settings and (t != T_SETTINGS or self._fflags & F_ACK):
            return self._conn_error(E_PROTOCOL, K_BAD_PREFACE)
        if self._cont_sid and t != T_CONT:
            return self._conn_error(E_PROTOCOL, K_CONTINUATION)
        if t == T_DATA or t == T_HEADERS or t == T_CONT:
            # CVE-2019-9518: empty frames cost work and carry nothing.
            if self._flen == 0 and (t == T_CONT or not self._fflags & F_END_STREAM):
                self._empty_run += 1
                if self._empty_run > self.max_empty_frames:
                    return self._conn_error(E_CALM, K_EMPTY_FRAMES)
            elif self._flen:
                self._empty_run = 0
        if t == T_DATA:
            if self._fflags & F_PADDED:
                if self._flen == 0:
                    return self._conn_error(E_PROTOCOL, K_PADDING)
                self._rstate = RS_PADLEN
                return 0
            return self._data_header()
        if self._flen == 0:
            return self._frame(self._hdr, 0)
        self._rstate = RS_PAYLOAD
        return 0

    cdef int _data_header(self) except -1:
        cdef uint32_t sid = self._fsid
        cdef long long flen = self._flen
        cdef bint padded = (self._fflags & F_PADDED) != 0
        cdef long long padlen = self._hdr[9] if padded else 0
        cdef long long dlen = flen - padded - padlen
        cdef bint end = self._fflags & F_END_STREAM
        self._rstate = RS_HEAD
        if sid == 0:
            return self._conn_error(E_PROTOCOL, K_STREAM_ID)
        if dlen < 0:
            return self._conn_error(E_PROTOCOL, K_PADDING)
        if flen > self._recv_window:
            return self._conn_error(E_FLOW, K_FLOW_CONTROL)
        self._recv_window -= flen
        self._dsid = sid
        self._dremain = dlen
        self._dpad = padlen
        self._dend = end
        self._dstream = None
        self._rstate = RS_DATA if dlen else (RS_PAD if padlen else RS_HEAD)
        cdef _Stream st = self._get(sid)
        if st is None:
            if self._is_idle(sid):
                return self._conn_error(E_PROTOCOL, K_STREAM_ID)
            self._ack(None, flen)
            if not self._was_reset(sid) and not (self.goaway_sent >= 0 and sid > <uint32_t>self.goaway_sent):
                self._stream_error(sid, E_STREAM_CLOSED, K_STREAM_CLOSED, False)
            return 0
        if not st.remote_open:
            self._ack(None, flen)
            return self._stream_error(sid, E_STREAM_CLOSED, K_STREAM_CLOSED, True)
        if st.phase < 2:                      # DATA before the final response (8.1)
            self._ack(None, flen)
            return self._stream_error(sid, E_PROTOCOL, K_STATUS, True)
        if flen > st.recv_window:
            return self._conn_error(E_FLOW, K_FLOW_CONTROL)
        st.recv_window -= flen
        if padded:
            self._ack(st, 1 + padlen)         # padding never reaches the caller
        if st.content_length >= 0 and (st.received + dlen > st.content_length or
                                        (end and st.received + dlen != st.content_length)):
            self._ack(None, dlen)
            return self._stream_error(sid, E_PROTOCOL, K_CONTENT_LENGTH, True)
        self._dstream = st
        if dlen == 0 and end:
            self._close_remote(st)
            self.on_data(sid, b"", True)
        return 0

    cdef int _data_chunk(self, const uchar* p, Py_ssize_t k) except -1:
        cdef _Stream st = self._dstream
        if st is None or not st.remote_open:   # skipped, or reset meanwhile
            return self._ack(None, k)
        st.received += k
        cdef bint end = self._dend and self._dremain == 0
        if end:
            self._close_remote(st)
        self.on_data(self._dsid, PyBytes_FromStringAndSize(<const char*>p, k), end)
        return 0

    cdef int _frame(self, const uchar* p, Py_ssize_t n) except -1:
        cdef int t = self._ftype
        cdef uint32_t sid = self._fsid
        if t == T_HEADERS:
            return self._headers(p, n)
        if t == T_CONT:
            if not self._cont_sid or sid != self._cont_sid:
                return self._conn_error(E_PROTOCOL, K_CONTINUATION)
            self._block_bytes += 9 + n
            if self._block_bytes > self.max_header_block:
                return self._conn_error(E_CALM, K_HEADER_BLOCK)
            _bput(self._hblock, p, n)
            if self._fflags & F_END_HEADERS:
                self._cont_sid = 0
                self._block(sid, self._cont_flags & F_END_STREAM, self._cont_flags & F_SELF_DEP,
                            <const uchar*>PyByteArray_AS_STRING(self._hblock),
                            PyByteArray_GET_SIZE(self._hblock))
                PyByteArray_Resize(self._hblock, 0)
            return 0
        if t == T_DATA:
            return 0                          # never here: DATA is streamed
        if t == T_SETTINGS:
            return self._settings(p, n)
        if t == T_WINDOW:
            return self._window_update(p, n)
        if t == T_RST:
            return self._rst_stream(p, n)
        if t == T_PING:
            if sid:
                return self._conn_error(E_PROTOCOL, K_STREAM_ID)
            if n != 8:
                return self._conn_error(E_FRAME_SIZE, K_FRAME_SIZE)
            if self._fflags & F_ACK:
                self.on_ping_ack(PyBytes_FromStringAndSize(<const char*>p, 8))
                return 0
            self._write_header(8, T_PING, F_ACK, 0)
            self._put(p, 8)
            return self._control()
        if t == T_PRIORITY:
            if sid == 0:
                return self._conn_error(E_PROTOCOL, K_STREAM_ID)
            if n != 5:
                return self._stream_error(sid, E_FRAME_SIZE, K_FRAME_SIZE, True)
            if _be32(p) & 0x7fffffff == sid:
                return self._stream_error(sid, E_PROTOCOL, K_PRIORITY, True)
            return 0                          # priorities are advisory; we ignore them
        if t == T_GOAWAY:
            return self._goaway_frame(p, n)
        if t == T_PUSH:
            return self._conn_error(E_PROTOCOL, K_PUSH_PROMISE)
        return 0                              # unknown types are ignored (5.5)

    cdef int _headers(self, const uchar* p, Py_ssize_t n) except -1:
        cdef uint32_t sid = self._fsid
        cdef int flags = self._fflags
        cdef Py_ssize_t off = 0, padlen = 0
        cdef bint self_dep = False
        if sid == 0:
            return self._conn_error(E_PROTOCOL, K_STREAM_ID)
        if flags & F_PADDED:
            if n < 1:
                return self._conn_error(E_PROTOCOL, K_PADDING)
            padlen = p[0]
            off = 1
        if flags & F_PRIORITY:
            if n < off + 5:
                return self._conn_error(E_FRAME_SIZE, K_FRAME_SIZE)
            self_dep = (_be32(p + off) & 0x7fffffff) == sid
            off += 5
        if off + padlen > n:
            return self._conn_error(E_PROTOCOL, K_PADDING)
        if flags & F_END_HEADERS:
            return self._block(sid, flags & F_END_STREAM, self_dep, p + off, n - off - padlen)
        self._cont_sid = sid
        self._cont_flags = (flags & F_END_STREAM) | (F_SELF_DEP if self_dep else 0)
        self._block_bytes = 9 + n
        if self._block_bytes > self.max_header_block:
            return self._conn_error(E_CALM, K_HEADER_BLOCK)
        PyByteArray_Resize(self._hblock, 0)
        _bput(self._hblock, p + off, n - off - padlen)
        return 0

    cdef int _block(self, uint32_t sid, bint end_stream, bint self_dep,
                    const uchar* p, Py_ssize_t n) except -1:
        # Decode first, always: the dynamic table must follow the peer's encoder even
        # for blocks whose stream we refuse or ignore.
        cdef list headers
        try:
            headers = self._decoder.decode_c(p, n, self.max_header_list_size)
        except HPACKError:
            return self._conn_error(E_COMPRESSION, K_COMPRESSION)
        cdef _Stream st = self._get(sid)
        cdef bint peer_parity = (sid & 1) == (0 if self.client else 1)
        cdef MsgInfo info
        cdef int k
        if st is not None:
            if not st.remote_open:
                return self._stream_error(sid, E_STREAM_CLOSED, K_STREAM_CLOSED, True)
            if headers is None:
                return self._stream_error(sid, E_PROTOCOL, K_HEADER_LIST, True)
            if self_dep:
                return self._stream_error(sid, E_PROTOCOL, K_PRIORITY, True)
            return self._peer_headers(st, sid, headers, end_stream)
        if not peer_parity:
            # Our parity: a response on a stream we never opened or already closed.
            if not self.client or self._is_idle(sid):
                return self._conn_error(E_PROTOCOL, K_STREAM_ID)
            if self._was_reset(sid):
                return 0
            return self._conn_error(E_STREAM_CLOSED, K_STREAM_CLOSED)
        if self.client:
            return self._conn_error(E_PROTOCOL, K_STREAM_ID)   # server push is off
        if self.goaway_sent >= 0 and sid > <uint32_t>self.goaway_sent:
            self.last_peer_stream = max(self.last_peer_stream, sid)
            return 0                          # 6.8: ignored after our GOAWAY
        if sid <= <uint32_t>self.last_peer_stream:
            if self._was_reset(sid):
                return 0
            if self._was_skipped(sid):      # 5.1.1: a new stream below the last one
                return self._conn_error(E_PROTOCOL, K_STREAM_ID)
            return self._conn_error(E_STREAM_CLOSED, K_STREAM_CLOSED)
        # A new stream from the peer (server role).
        if sid > <uint32_t>self.last_peer_stream + 2:
            self._skipped[self._nskipped % 16][0] = <uint32_t>self.last_peer_stream + 1
            self._skipped[self._nskipped % 16][1] = sid - 1
            self._nskipped += 1
        self.last_peer_stream = sid
        if not self._take(&self._stream_tokens, self.stream_rate, self.stream_burst):
            return self._conn_error(E_CALM, K_STREAM_RATE)
        if self.active_peer >= self.max_concurrent_streams:
            return self._stream_error(sid, E_REFUSED, K_REFUSED, False)
        if headers is None:
            # Over our SETTINGS_MAX_HEADER_LIST_SIZE, but decoded in full (the table is
            # in step): a stream the hook may answer (431, RFC 9113 8.1 / 10.5.1) while
            # the connection carries on.
            self._count(K_HEADER_LIST)
            st = self._new_peer_stream(sid, end_stream)
            st.head = st.connect = False
            st.content_length = -1
            self.on_headers_too_large(sid, end_stream)
            return 0
        if self_dep:
            return self._stream_error(sid, E_PROTOCOL, K_PRIORITY, False)
        k = check_request(headers, &info)
        if not k and end_stream and info.content_length > 0:
            k = K_CONTENT_LENGTH
        if k:
            return self._stream_error(sid, E_PROTOCOL, k, False)
        st = self._new_peer_stream(sid, end_stream)
        st.connect = info.connect
        st.head = info.head
        st.content_length = info.content_length
        self.on_headers(sid, headers, end_stream)
        return 0

    cdef _Stream _new_peer_stream(self, uint32_t sid, bint end_stream):
        cdef _Stream st = _Stream.__new__(_Stream)
        st.id = sid
        st.peer_initiated = True
        st.remote_open = not end_stream
        st.local_open = True
        st.phase = 2
        st.send_window = self.peer_initial_window_size
        st.recv_window = self._local_initial
        st.key = sid
        self._streams[st.key] = st
        self._last = st                       # the hook and its replies look it up
        self.active_peer += 1
        return st

    cdef int _peer_headers(self, _Stream st, uint32_t sid, list headers, bint end_stream) except -1:
        cdef MsgInfo info
        cdef int k
        if st.phase == 2:                     # trailers (8.1)
            k = check_trailers(headers) if end_stream else K_TRAILERS
            if not k and st.content_length >= 0 and st.received != st.content_length:
                k = K_CONTENT_LENGTH
            if k:
                return self._stream_error(sid, E_PROTOCOL, k, True)
            self._close_remote(st)
            self.on_trailers(sid, headers)
            return 0
        k = check_response(headers, &info)
        if not k:
            if info.status < 200:
                if end_stream:
                    k = K_STATUS
            elif end_stream and info.content_length > 0 and not st.head \
                    and info.status != 204 and info.status != 304:
                k = K_CONTENT_LENGTH
        if k:
            return self._stream_error(sid, E_PROTOCOL, k, True)
        if info.status < 200:
            st.phase = 1
            self.on_informational(sid, headers)
            return 0
        st.phase = 2
        if st.head or info.status == 204 or info.status == 304:
            st.content_length = 0             # no content whatever the field says (8.1.1)
        elif st.connect:
            st.content_length = -1
        else:
            st.content_length = info.content_length
        if end_stream:
            self._close_remote(st)
        self.on_headers(sid, headers, end_stream)
        return 0

    cdef int _settings(self, const uchar* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t i
        cdef int ident
        cdef uint32_t value
        cdef long long delta
        cdef bint opened = False
        cdef _Stream st
        if self._fsid:
            return self._conn_error(E_PROTOCOL, K_STREAM_ID)
        if self._fflags & F_ACK:
            if n:
                return self._conn_error(E_FRAME_SIZE, K_FRAME_SIZE)
            if not self._settings_acked:
                # Our SETTINGS are in force from here (6.5.3).
                self._settings_acked = True
                delta = self.initial_window_size - self._local_initial
                self._local_initial = self.initial_window_size
                for st in self._streams.values():
                    st.recv_window += delta
                self._decoder.set_settings_max_size(self._decoder_size)
            return 0
        if n % 6:
            return self._conn_error(E_FRAME_SIZE, K_FRAME_SIZE)
        self._got_settings = True
        for i in range(0, n, 6):
            ident = (p[i] << 8) | p[i + 1]
            value = _be32(p + i + 2)
            if ident == 1:
                if min(value, <uint32_t>ENCODER_TABLE_MAX) != <uint32_t>self._encoder.max_size:
                    self._encoder.set_table_size(min(value, ENCODER_TABLE_MAX))
            elif ident == 2:
                if value > 1 or (self.client and value == 1):
                    return self._conn_error(E_PROTOCOL, K_SETTINGS)
            elif ident == 3:
                self.peer_max_concurrent_streams = value
            elif ident == 4:
                if value > MAX_WINDOW:
                    return self._conn_error(E_FLOW, K_SETTINGS)
                delta = <long long>value - self.peer_initial_window_size
                self.peer_initial_window_size = value
                # 6.9.2: the change applies to every stream's window, which may go negative.
                for st in self._streams.values():
                    st.send_window += delta
                    if st.send_window > MAX_WINDOW:
                        return self._conn_error(E_FLOW, K_FLOW_CONTROL)
                opened = opened or delta > 0
            elif ident == 5:
                if value < 16384 or value > 16777215:
                    return self._conn_error(E_PROTOCOL, K_SETTINGS)
                self.peer_max_frame_size = value
            elif ident == 6:
                self.peer_max_header_list_size = value
            elif ident == 8 or ident == 9:
                if value > 1:
                    return self._conn_error(E_PROTOCOL, K_SETTINGS)
        self._write_header(0, T_SETTINGS, F_ACK, 0)
        self._control()
        if self.dead:
            return 0
        if opened:
            self._windows_opened()
        self.on_settings()
        return 0

    cdef int _window_update(self, const uchar* p, Py_ssize_t n) except -1:
        cdef uint32_t sid = self._fsid
        if n != 4:
            return self._conn_error(E_FRAME_SIZE, K_FRAME_SIZE)
        cdef long long inc = _be32(p) & 0x7fffffff, was
        if sid == 0:
            if inc == 0:
                return self._conn_error(E_PROTOCOL, K_WINDOW_ZERO)
            was = self.send_window
            self.send_window += inc
            if self.send_window > MAX_WINDOW:
                return self._conn_error(E_FLOW, K_FLOW_CONTROL)
            if was <= 0 < self.send_window:
                self._windows_opened()
            return 0
        if self._is_idle(sid):
            return self._conn_error(E_PROTOCOL, K_STREAM_ID)
        cdef _Stream st = self._get(sid)
        if st is None:
            return 0                          # closed: allowed for a while (5.1)
        if inc == 0:
            return self._stream_error(sid, E_PROTOCOL, K_WINDOW_ZERO, True)
        st.send_window += inc
        if st.send_window > MAX_WINDOW:
            return self._stream_error(sid, E_FLOW, K_FLOW_CONTROL, True)
        if st.blocked and st.local_open and st.send_window > 0 and self.send_window > 0:
            st.blocked = False
            self.on_window_open(sid)
        return 0

    cdef int _windows_opened(self) except -1:
        cdef _Stream st
        for st in list(self._streams.values()):
            if self.dead or self.send_window <= 0:
                break
            if st.blocked and st.local_open and st.send_window > 0:
                st.blocked = False
                self.on_window_open(st.id)
        return 0

    cdef int _rst_stream(self, const uchar* p, Py_ssize_t n) except -1:
        cdef uint32_t sid = self._fsid
        if n != 4:
            return self._conn_error(E_FRAME_SIZE, K_FRAME_SIZE)
        if sid == 0 or self._is_idle(sid):
            return self._conn_error(E_PROTOCOL, K_STREAM_ID)
        cdef _Stream st = self._get(sid)
        if st is None:
            return 0
        # CVE-2023-44487: a client that resets streams as fast as it opens them keeps
        # under MAX_CONCURRENT_STREAMS while the work it started goes on.
        if not self.client and not self._take(&self._reset_tokens, self.reset_rate,
                                              self.reset_burst):
            return self._conn_error(E_CALM, K_RAPID_RESET)
        st.remote_open = st.local_open = False
        self._forget(st)
        self.on_reset(sid, _be32(p), True)
        return 0

    cdef int _goaway_frame(self, const uchar* p, Py_ssize_t n) except -1:
        if self._fsid:
            return self._conn_error(E_PROTOCOL, K_STREAM_ID)
        if n < 8:
            return self._conn_error(E_FRAME_SIZE, K_FRAME_SIZE)
        cdef int last = _be32(p) & 0x7fffffff
        cdef _Stream st
        if self.goaway_received < 0 or last < self.goaway_received:
            self.goaway_received = last
        # Our streams above `last` were never processed: the caller may retry them.
        for st in list(self._streams.values()):
            if not st.peer_initiated and st.id > last:
                st.remote_open = st.local_open = False
                self._forget(st)
        self.on_goaway(last, _be32(p + 4), PyBytes_FromStringAndSize(<const char*>p + 8, n - 8))
        return 0

    # ------------------------------------------------------------------ errors, limits

    cdef int _count(self, int kind) except -1:
        if kind:
            self._errors[kind] += 1
            _TOTALS[kind] += 1
        return 0

    cdef int _conn_error(self, int code, int kind) except -1:
        self._count(kind)
        if self.dead:
            return 0
        # The debug data names the rule, for the peer's logs (6.8).
        self._write_goaway(self.last_peer_stream, code, ERROR_KINDS[kind].encode())
        self.goaway_sent = self.last_peer_stream
        self.dead = True
        self.on_connection_error(code, ERROR_KINDS[kind])
        return 0

    cdef int _stream_error(self, uint32_t sid, int code, int kind, bint notify) except -1:
        self._count(kind)
        self._write_u32_frame(T_RST, sid, code)
        cdef _Stream st = self._get(sid)
        if st is not None:
            st.remote_open = st.local_open = False
            self._forget(st)
        self._remember_reset(sid)
        if kind:
            self._control()
        if notify and st is not None and not self.dead:
            self.on_reset(sid, code, False)
        return 0

    cdef int _control(self) except -1:
        # PING/SETTINGS floods: replies pile up when the caller stops taking them.
        self._ctrl_queued += 1
        if self._ctrl_queued > self.max_control_frames:
            self._conn_error(E_CALM, K_CONTROL_FLOOD)
        return 0

    cdef bint _take(self, double* tokens, double rate, double burst) noexcept:
        cdef double now = _now()
        cdef double dt = now - self._stamp
        self._stamp = now
        self._stream_tokens = min(self.stream_burst, self._stream_tokens + dt * self.stream_rate)
        self._reset_tokens = min(self.reset_burst, self._reset_tokens + dt * self.reset_rate)
        if tokens[0] < 1.0:
            return False
        tokens[0] -= 1.0
        return True

    # ------------------------------------------------------------------ streams

    cdef _Stream _get(self, uint32_t sid):
        if self._last is not None and self._last.id == <int>sid:
            return self._last
        cdef object st = self._streams.get(sid)
        if st is None:
            return None
        self._last = <_Stream>st
        return self._last

    cdef bint _is_idle(self, uint32_t sid) noexcept:
        if (sid & 1) == (0 if self.client else 1):
            return sid > <uint32_t>self.last_peer_stream
        return sid >= <uint32_t>self._next_id

    cdef bint _was_reset(self, uint32_t sid) noexcept:
        cdef int i
        for i in range(min(self._nresets, 256)):
            if self._resets[i] == <int>sid:
                return True
        return False

    cdef bint _was_skipped(self, uint32_t sid) noexcept:
        cdef int i
        for i in range(min(self._nskipped, 16)):
            if self._skipped[i][0] <= sid <= self._skipped[i][1]:
                return True
        return False

    cdef int _remember_reset(self, uint32_t sid) noexcept:
        self._resets[self._nresets % 256] = sid
        self._nresets += 1
        return 0

    cdef int _close_remote(self, _Stream st) except -1:
        st.remote_open = False
        if not st.local_open:
            self._forget(st)
        return 0

    cdef int _close_local(self, _Stream st) except -1:
        st.local_open = False
        if not st.remote_open:
            self._forget(st)
        return 0

    cdef int _forget(self, _Stream st) except -1:
        if self._streams.pop(st.key, None) is not None:
            if st.peer_initiated:
                self.active_peer -= 1
            else:
                self.active_local -= 1
        if self._last is st:
            self._last = None
        return 0

    cdef int _ack(self, _Stream st, long long n) except -1:
        self._unacked += n
        # Batch the credit: one WINDOW_UPDATE per half window consumed.
        if self._unacked >= self.connection_window_size // 2:
            self._write_u32_frame(T_WINDOW, 0, <uint32_t>self._unacked)
            self._recv_window += self._unacked
            self._unacked = 0
        if st is not None and st.remote_open:
            st.unacked += n
            if st.unacked >= self._local_initial // 2:
                self._write_u32_frame(T_WINDOW, st.id, <uint32_t>st.unacked)
                st.recv_window += st.unacked
                st.unacked = 0
        return 0
