# cython: language_level=3, boundscheck=False, wraparound=False
"""HTTP/2 to upstream servers, compiled: the codec's client role and the stream links.

fastproxy.upstream.h2 (the docs of the behaviour, and the connection management:
H2Upstream, ALPN) connects each relay UpstreamConnection of an HTTP/2 server to a
`StreamLink`: the relay writes HTTP/1.1 requests to it, the link sends each as a
stream on a shared `H2Origin` and gives the relay the response as HTTP/1.1.

Why compiled: the link's per-request work (parse the relay's head, build the HTTP/2
header list, turn HEADERS/DATA back into HTTP/1.1) ran in the interpreter; here the
codec hooks are C overrides of fastproxy._h2.Connection's cpdef methods and the codec's
send methods are C calls.
"""
from fastproxy import _h2msg, _http

from fastproxy._h2 cimport Connection
from fastproxy._h2frames cimport E_CANCEL, E_REFUSED
from fastproxy._h2msg cimport h2_response_head, h2_trailer_fields
from fastproxy._http cimport ChunkedDecoder, Request, RequestParser
from cpython.bytes cimport PyBytes_GET_SIZE

STREAM_BUFFER = 65536        # request bytes a link holds before the client is paused
DEF C_STREAM_BUFFER = 65536

cdef enum:
    L_IDLE = 0       # no stream: the next request head starts one
    L_BODY = 1       # sending the request body
    L_WAIT = 2       # the request is sent; the response is coming
    L_QUEUED = 3     # the request waits for a stream (the server's concurrency limit)

cdef bytes CRLF = b"\r\n"
cdef bytes M_HEAD = b"HEAD"
cdef bytes N_STATUS = b":status"
cdef bytes N_CONTENT_LENGTH = b"content-length"
cdef tuple CONTENT_LENGTH_0 = (b"content-length", b"0")
cdef object ParseError = _http.ParseError
cdef object chunk_header = _http.chunk_header
cdef bytes LAST_CHUNK = _http.LAST_CHUNK
cdef object validate = _h2msg.validate
cdef int BODY_NONE = _http.BODY_NONE
cdef int BODY_LENGTH = _http.BODY_LENGTH


cdef class H2Origin(Connection):
    """One HTTP/2 connection to a server (an asyncio protocol), shared by many links."""

    cdef public object loop, transport
    cdef public bytes authority, scheme
    cdef readonly dict links         # by open stream
    cdef readonly set all_links      # idle ones too: told when we go
    cdef bint _flush_scheduled
    cdef public bint closed
    cdef object _flush_cb
    cdef list _heads                 # links holding a response head for the DATA after it
    cdef list waiting                # links whose request waits for a stream, in order

    def __init__(self, loop, bytes authority, int max_header_list_size,
                 bytes scheme=b"http"):
        super().__init__(True, max_header_list_size=max_header_list_size)
        self.loop = loop
        self.authority = authority
        self.scheme = scheme
        self.transport = None
        self.links = {}
        self.all_links = set()
        self._flush_scheduled = False
        self.closed = False
        self._flush_cb = self.flush
        self._heads = []
        self.waiting = []

    def connection_made(self, transport):
        self.transport = transport
        self.flush()

    def data_received(self, data):
        cdef StreamLink link
        try:
            self.feed(data)
            # Heads whose DATA did not come in this read go to the relays now.
            while self._heads:
                heads, self._heads = self._heads, []
                for link in heads:
                    link.give_head()
        except Exception as exc:
            self.loop.call_exception_handler({"message": "HTTP/2 upstream failed",
                                              "exception": exc, "protocol": self})
            self.transport.abort()
            return
        self.flush()

    def connection_lost(self, exc):
        self.closed = True
        self.transport = None
        self.links.clear()
        for link in list(self.all_links):
            (<StreamLink>link).lost(exc or ConnectionResetError("HTTP/2 upstream connection closed"))
        self.all_links.clear()

    def eof_received(self):
        return False

    def pause_writing(self):
        pass    # request DATA is bounded by the server's windows and the links' buffers

    def resume_writing(self):
        pass

    cpdef flush_soon(self):
        """Write the queued frames at the end of this loop turn, in one write."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_cb)

    cpdef flush(self):
        """Write the queued frames now."""
        self._flush_scheduled = False
        if self.waiting:
            self._start_waiting()
        data = self.data_to_send()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)
        if self.dead and transport is not None:
            transport.close()

    cdef int _start_waiting(self) except -1:
        """Requests that waited for a stream go, in order, as streams free up (an ended or
        reset stream, a larger SETTINGS_MAX_CONCURRENT_STREAMS: all reach us here)."""
        cdef StreamLink link
        while self.waiting and self.streams_available > 0:
            link = self.waiting.pop(0)
            if not link.closing:
                link.state = L_IDLE
                link._head()
        return 0

    @property
    def usable(self):
        """Open, no connection error, no GOAWAY: new streams may go here."""
        return not self.closed and not self.dead and self.goaway_received < 0

    # -- codec hooks ---------------------------------------------------------------

    cpdef on_headers(self, int stream_id, list headers, bint end_stream):
        cdef StreamLink link = self.links.get(stream_id)
        if link is not None:
            link.response(headers, end_stream)

    cpdef on_informational(self, int stream_id, list headers):
        # RFC 9110 15.2: a proxy forwards 1xx responses (103 Early Hints); the relay
        # passes them on as it does an HTTP/1.1 server's. They were dropped here.
        cdef StreamLink link = self.links.get(stream_id)
        if link is not None and not link.closing:
            link.up.data_received(h2_response_head(headers, False))

    cpdef on_data(self, int stream_id, bytes data, bint end_stream):
        cdef StreamLink link = self.links.get(stream_id)
        if link is None:
            if data:
                self.acknowledge_received(stream_id, len(data))
            return
        link.response_data(data, end_stream)

    cpdef on_trailers(self, int stream_id, list headers):
        cdef StreamLink link = self.links.get(stream_id)
        if link is not None:
            link.response_trailers(headers)

    cpdef on_reset(self, int stream_id, int error_code, bint remote):
        cdef StreamLink link = self.links.pop(stream_id, None)
        if link is not None:
            if remote and error_code == E_REFUSED and link.replay is not None \
                    and link.refusals < 3 and self.usable:
                # RFC 9113 8.7: refused before any processing, so safe to send again. A
                # request without a body waits for a stream of this connection (the
                # streams of new links may go out before the server's SETTINGS say how
                # many it takes, 3.4); one with a body is the relay's to retry or answer.
                link.refusals += 1
                link.sid = 0
                link.buf = link.replay
                link.state = L_QUEUED
                self.waiting.append(link)
                return
            link.lost(ConnectionResetError(f"HTTP/2 stream reset by the server ({error_code})"))

    cpdef on_goaway(self, int last_stream_id, int error_code, bytes debug):
        for sid in [s for s in self.links if s > last_stream_id]:
            (<StreamLink>self.links.pop(sid)).lost(
                ConnectionResetError("HTTP/2 server sent GOAWAY"))
        waiting, self.waiting = self.waiting, []
        for link in waiting:
            (<StreamLink>link).lost(ConnectionResetError("HTTP/2 server sent GOAWAY"))

    cpdef on_window_open(self, int stream_id):
        cdef StreamLink link = self.links.get(stream_id)
        if link is not None:
            link.send_body()

    cpdef on_connection_error(self, int error_code, str kind):
        self.flush_soon()


cdef class StreamLink:
    """The transport of one relay UpstreamConnection: HTTP/1.1 in, HTTP/2 streams out."""

    cdef readonly H2Origin origin
    cdef readonly object up
    cdef RequestParser parser
    cdef bytes buf
    cdef int state
    cdef int sid
    cdef long long left
    cdef ChunkedDecoder chunks
    cdef list out                  # request DATA the windows did not take yet
    cdef long long out_bytes
    cdef bint out_end
    cdef object trailers
    cdef bint blocked
    cdef bint closing
    cdef bint paused
    cdef list held
    cdef bint resp_chunked
    cdef bint head_request
    cdef bytes resp_head             # the response head, given with the first DATA
    cdef bytes replay                # a request without a body, until its response starts
    cdef int refusals                # REFUSED_STREAM answers to it so far

    def __init__(self, H2Origin origin, up, Py_ssize_t max_head, int max_fields):
        self.origin = origin
        self.up = up
        self.parser = RequestParser(max_head=max_head, max_fields=max_fields)
        self.buf = b""
        self.state = L_IDLE
        self.out = []
        self.held = []

    # -- what the relay calls -----------------------------------------------------------

    def get_extra_info(self, name, default=None):
        t = self.origin.transport
        return t.get_extra_info(name, default) if t is not None else default

    def is_closing(self):
        return self.closing

    def write(self, data):
        """Request bytes from the relay."""
        if self.closing:
            return
        data = bytes(data)
        if self.state == L_IDLE:
            self.buf = self.buf + data if self.buf else data
            self._head()
        elif self.state == L_BODY:
            self._body(data)
        else:
            # The relay saw the whole response (its content-length) before the server's
            # END_STREAM: the next request waits for the stream to end (_done). Or the
            # request waits for a stream (L_QUEUED): its body waits with it.
            self.buf = self.buf + data if self.buf else data
        self.origin.flush_soon()

    def writelines(self, buffers):
        for data in buffers:
            self.write(data)

    def close(self):
        """The relay is done with this connection: cancel a stream still open."""
        if self.closing:
            return
        self.closing = True
        origin = self.origin
        if self.sid and origin.links.pop(self.sid, None) is self:
            origin.reset_stream(self.sid, E_CANCEL)
            origin.flush_soon()
        origin.all_links.discard(self)
        origin.loop.call_soon(self.up.connection_lost, None)

    def abort(self):
        self.close()

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        if not self.paused:
            return
        self.paused = False
        held, self.held = self.held, []
        for data, end in held:
            self.response_data(data, end)

    # -- the request -------------------------------------------------------------------

    cdef int _head(self) except -1:
        cdef Request req
        cdef H2Origin origin = self.origin
        cdef int kind, sid
        try:
            req = self.parser.feed_c(self.buf, 0)
        except ParseError:
            self._fail(ConnectionResetError("request not understood by the HTTP/2 link"))
            return 0
        if req is None:
            return 0
        self.head_request = req.method == M_HEAD
        authority = req.host or origin.authority
        # `te: trailers` always: the relay passes every response's trailers on (as chunked
        # trailers, or HTTP/2 trailers to an HTTP/2 client) whatever the client said
        # (RFC 9113 8.2.2 allows it); gRPC servers refuse a request without it.
        kind = req.body
        sid = origin.send_request_of(req, origin.scheme, authority, kind == BODY_NONE)
        if sid <= 0:
            if origin.usable:
                # RFC 9113 5.1.2: the server's MAX_CONCURRENT_STREAMS are all open (links
                # were handed this connection before its SETTINGS said so). The request
                # and any body after it wait here for a stream; the relay's response
                # timeout bounds the wait.
                self.state = L_QUEUED
                origin.waiting.append(self)
            else:
                self._fail(ConnectionResetError("no HTTP/2 stream available"))
            return 0
        rest = self.buf[req.head_length:]
        self.sid = sid
        origin.links[sid] = self
        if kind == BODY_NONE:
            self.replay = self.buf
            self.buf = b""
            self.state = L_WAIT
            return 0
        self.buf = b""
        self.state = L_BODY
        if kind == BODY_LENGTH:
            self.left = req.content_length
            self.chunks = None
        else:
            self.chunks = ChunkedDecoder()
        if rest:
            self._body(rest)
        return 0

    cdef int _body(self, bytes data) except -1:
        cdef Py_ssize_t n
        if self.chunks is None:
            n = PyBytes_GET_SIZE(data)
            if n > self.left:
                n = self.left
            self.left -= n
            self._queue(data if n == PyBytes_GET_SIZE(data) else data[:n], self.left == 0)
            return 0
        cdef ChunkedDecoder dec = self.chunks
        cdef list out = []
        try:
            dec.feed_c(data, 0, out)
        except ParseError:
            self._fail(ConnectionResetError("bad chunked request body"))
            return 0
        body = b"".join(out)
        if not dec.done:
            self._queue(body, False)
            return 0
        fields = h2_trailer_fields(dec.kept_trailers())
        if fields and validate(fields, "trailers") is None:
            self.trailers = fields
        self._queue(body, True)
        return 0

    cdef int _queue(self, bytes data, bint end) except -1:
        if data:
            self.out.append(data)
            self.out_bytes += PyBytes_GET_SIZE(data)
        if end:
            self.out_end = True
            self.state = L_WAIT
        self.send_body()
        return 0

    cdef int send_body(self) except -1:
        """Send what the server's windows allow (again on on_window_open)."""
        cdef H2Origin origin = self.origin
        cdef list out = self.out
        cdef long long n
        cdef bint last, hold
        while out:
            data = out[0]
            last = len(out) == 1 and self.out_end and self.trailers is None
            n = origin.send_data(self.sid, data, last)
            if n < 0:
                out.clear()
                self.out_bytes = 0
                self.out_end = False
                return 0
            self.out_bytes -= n
            if n < len(data):
                out[0] = data[n:]
                break
            del out[0]
            if last:
                self.out_end = False
        if not out and self.out_end:
            self.out_end = False
            if self.trailers is not None:
                origin.send_headers(self.sid, self.trailers, True)
                self.trailers = None
            else:
                origin.send_data(self.sid, b"", True)
        hold = self.out_bytes > C_STREAM_BUFFER
        if hold != self.blocked:
            self.blocked = hold
            if hold:
                self.up.pause_writing()
            else:
                self.up.resume_writing()
        origin.flush_soon()
        return 0

    # -- the response ------------------------------------------------------------------

    cdef int response(self, list headers, bint end_stream) except -1:
        cdef bint body = not end_stream
        cdef bint has_length = False
        cdef bytes status = b""
        self.replay = None
        self.refusals = 0
        for field in headers:
            name = (<tuple>field)[0]
            if name == N_CONTENT_LENGTH:
                has_length = True
            elif name == N_STATUS:
                status = (<tuple>field)[1]
        self.resp_chunked = body and not self.head_request and not has_length
        if end_stream and not has_length and not self.head_request:
            if status[:1] != b"1" and status != b"204" and status != b"304":
                # HEADERS that end the stream (a gRPC trailers-only answer): without a
                # length the HTTP/1.1 relay would read this response until the close.
                headers = headers + [CONTENT_LENGTH_0]
        head = h2_response_head(headers, body)
        if end_stream:
            self.up.data_received(head)
            self._done()
        else:
            # The relay writes head and body to its client in one write when they come
            # in one data_received: the head waits for this read's DATA (H2Origin).
            self.resp_head = head
            self.origin._heads.append(self)
        return 0

    cdef int give_head(self) except -1:
        """Hand the relay a response head still held (its DATA was not in the read)."""
        head = self.resp_head
        if head is not None and not self.closing:
            self.resp_head = None
            self.up.data_received(head)
        return 0

    cdef int response_data(self, bytes data, bint end) except -1:
        if self.paused:
            self.held.append((data, end))
            return 0
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        head = self.resp_head
        if head is not None:
            self.resp_head = None
            if not n:
                self.up.data_received(head)
        if n:
            if self.resp_chunked:
                piece = chunk_header(n) + data + CRLF
                self.up.data_received(piece if head is None else head + piece)
            else:
                self.up.data_received(data if head is None else head + data)
            if self.sid:
                self.origin.acknowledge_received(self.sid, n)
                self.origin.flush_soon()
        if end:
            if self.resp_chunked:
                self.up.data_received(LAST_CHUNK)
            self._done()
        return 0

    cdef int response_trailers(self, list headers) except -1:
        self.give_head()
        if self.resp_chunked:
            lines = [b"0\r\n"]
            for n, v in headers:
                lines.append(n + b": " + v + CRLF)
            lines.append(CRLF)
            self.up.data_received(b"".join(lines))
        self._done()
        return 0

    cdef int _done(self) except -1:
        """The stream is over; the link is idle for the relay's next request."""
        self.origin.links.pop(self.sid, None)
        self.sid = 0
        self.state = L_IDLE
        if self.buf and not self.closing:
            self._head()
            self.origin.flush_soon()
        return 0

    cdef int lost(self, exc) except -1:
        """The stream or the connection went away."""
        self.sid = 0
        self.resp_head = None
        self.origin.all_links.discard(self)
        if not self.closing:
            self.closing = True
            self.up.connection_lost(exc)
        return 0

    cdef int _fail(self, exc) except -1:
        """The request cannot go (called from write): the relay learns it on the next
        loop turn, as from close(). Told inside its own write (connection_made writing
        the queued request), it took the loss for an idle connection's and then waited
        for a response for ever."""
        if self.sid:
            self.origin.links.pop(self.sid, None)
            self.origin.reset_stream(self.sid, E_CANCEL)
            self.sid = 0
        self.resp_head = None
        self.origin.all_links.discard(self)
        if not self.closing:
            self.closing = True
            self.origin.loop.call_soon(self.up.connection_lost, exc)
        return 0
