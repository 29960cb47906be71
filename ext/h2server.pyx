# cython: language_level=3, boundscheck=False, wraparound=False
"""HTTP/2 from clients (RFC 9113), compiled: the codec's server role and its streams.

fastproxy.server.h2 (the docs of the behaviour) builds a `Server` per client
connection. Each request stream gets a `Stream`, the transport of its own relay
ClientConnection, so routing, handlers, cache, limits, log and metrics run unchanged:
the stream hands the relay an HTTP/1.1 head (fastproxy._h2msg.request_head, from a
header list the codec has already checked) and the DATA. An upstream's response head
comes back parsed (relay_head); the body and the answers the proxy writes itself come
as HTTP/1.1 bytes, parsed by the compiled ResponseParser; all go out as HEADERS, DATA
and trailers.

Why compiled: a profile of the Python version (py-spy --native, h2load -m 32) showed
the interpreter running the stream transport, the codec hooks and the per-stream
callbacks as the largest part of a request's CPU. Here the hooks are C overrides of
fastproxy._h2.Connection's cpdef methods, the codec's send methods are C calls, every
connection writes its frames once per event-loop turn, and finished streams are let go
in that same flush (no callback per stream).
"""
import time

from fastproxy import _h2msg, _http
from fastproxy._relay import STATE_HEAD, ClientConnection

from fastproxy._h2 cimport Connection, _Stream
from fastproxy._h2frames cimport E_CANCEL, E_INTERNAL, E_NO, E_REFUSED, E_CALM
from fastproxy._h2msg cimport (h2_request_head, h2_response_fields,
                               h2_trailer_fields)
from fastproxy._http cimport ChunkedDecoder, Response, ResponseParser
from cpython.bytes cimport PyBytes_GET_SIZE

STREAM_BUFFER = 65536        # response bytes held per stream before its upstream pauses
CONNECTION_BUFFER = 1 << 20  # ... and per connection, before every stream holding some pauses
DEF C_STREAM_BUFFER = 65536
DEF C_CONNECTION_BUFFER = 1048576
DEF IDLE_RELAYS = 32
DRAIN_PING = b"drain\x00\x00\x00"   # the opaque data of the graceful stop's PING
DRAIN_ROUND_TRIP = 1.0      # seconds the first GOAWAY's PING may take (Go's server: 1 s)         # finished streams' relays kept per connection for the next ones

cdef enum:
    R_DONE = 0       # the response is complete (or reset)
    R_HEAD = 1       # waiting for (the rest of) the response head
    R_LENGTH = 2     # a Content-Length body
    R_CHUNKED = 3    # a chunked body: de-chunked into DATA, trailers into HEADERS
    R_CLOSE = 4      # the body ends when the relay closes (or a CONNECT tunnel)

cdef bytes CRLF = b"\r\n"
cdef bytes N_CONTENT_TYPE = b"content-type"
cdef bytes GRPC = b"application/grpc"
cdef object ParseError = _http.ParseError
cdef object chunk_header = _http.chunk_header
cdef bytes LAST_CHUNK = _http.LAST_CHUNK
cdef object validate = _h2msg.validate
cdef int BODY_NONE = _http.BODY_NONE
cdef int BODY_LENGTH = _http.BODY_LENGTH
cdef int BODY_CHUNKED = _http.BODY_CHUNKED
cdef object _monotonic = time.monotonic


cdef class Stream:
    """The transport a stream's relay writes its HTTP/1.1 response to."""

    cdef readonly Server conn
    cdef readonly int stream_id
    cdef _Stream cst               # the codec's stream: sends need no lookup by id
    cdef bint head_request
    cdef public object protocol    # the relay ClientConnection; after a CONNECT's 2xx, the tunnel's end
    cdef bint connect              # a CONNECT stream (RFC 9113 8.5): DATA is the tunnel
    cdef bint tunneling
    cdef bint client_eof           # END_STREAM from the client, for the tunnel
    cdef bint closing
    cdef int state
    cdef object buf
    cdef long long left
    cdef ChunkedDecoder chunks
    cdef list out                  # DATA the windows did not take yet
    cdef long long out_bytes
    cdef bint out_end              # END_STREAM goes with the last of `out`
    cdef bint blocked              # the relay was told to stop (pause_writing)
    cdef bint paused               # the relay stopped reading the request body
    cdef list held                 # request DATA kept while paused
    cdef bint chunked_request
    cdef bint request_ended
    cdef object trailers           # response trailers, sent after `out`
    cdef bint released             # queued for release (once)
    cdef object kept               # finished and idle: its relay, kept for a next stream
    cdef bint own_limit            # its relay's request buffering was set for a gRPC call

    @property
    def http_version(self):
        """What the access log shows."""
        return "HTTP/2.0"

    # -- what the relay calls ---------------------------------------------------------

    def get_extra_info(self, name, default=None):
        """Connection facts (peername, TLS) come from the client's socket."""
        conn = self.conn
        if name == "peername" and conn.peername is not None:
            return conn.peername
        transport = conn.transport
        return transport.get_extra_info(name, default) if transport is not None else default

    def write(self, data):
        """Response bytes from the relay: HTTP/1.1 in, HEADERS/DATA/trailers out."""
        cdef int state = self.state
        if self.closing or state == R_DONE:
            return
        if state == R_HEAD:
            self.buf = self.buf + bytes(data) if self.buf else bytes(data)
            self._head()
        elif state == R_LENGTH:
            self._body_length(data)
        elif state == R_CHUNKED:
            self._body_chunked(data)
        else:
            self._send(data, False)
        self.conn.flush_soon()

    def relay_head(self, Response resp, bytes extra, long long length):
        """The relay's response head, handed over parsed instead of written: the fields
        it would forward to an HTTP/1.1 client (encoded straight from `resp`:
        h2_encode_forward) go out as HEADERS,
        and what the relay writes next is the body in its framing (`length` > 0: that
        many bytes; 0: none, the stream ends here; -1: chunked). False: the stream
        cannot take it now (a CONNECT, bytes of a head already written, a closed
        stream): the relay writes the head instead."""
        if self.closing or self.state != R_HEAD or self.buf or self.connect:
            return False
        cdef Server conn = self.conn
        if length == 0:
            conn.send_forward_head(self.cst, resp, extra, True)
            self.state = R_DONE
            conn.stream_finished(self)
        else:
            conn.send_forward_head(self.cst, resp, extra, False)
            if length > 0:
                self.state = R_LENGTH
                self.left = length
            else:
                self.state = R_CHUNKED
                self.chunks = ChunkedDecoder()
        conn.flush_soon()
        return True

    def writelines(self, buffers):
        for data in buffers:
            self.write(data)

    def is_closing(self):
        return self.closing

    def close(self):
        """The relay is done with the stream: end it, or reset it if the response is short."""
        self._end(False)

    def abort(self):
        self._end(True)

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        if not self.paused:
            return
        self.paused = False
        held, self.held = self.held, None
        if held:
            for data, end in held:
                self.conn.request_data(self, data, end)
                if self.paused:
                    break

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def set_protocol(self, protocol):
        """A CONNECT's tunnel takes the stream over (relay.splice)."""
        self.protocol = protocol
        self.tunneling = True
        if self.client_eof:
            self.conn.loop.call_soon(protocol.eof_received)

    def get_protocol(self):
        return self.protocol

    def is_reading(self):
        return not self.paused

    def can_write_eof(self):
        return True

    def write_eof(self):
        """The tunnel's server finished sending: END_STREAM, the client may still send."""
        if self.state == R_CLOSE and not self.closing:
            self.out_end = True
            self._flush_out()

    def get_write_buffer_size(self):
        return self.out_bytes

    # -- the response ----------------------------------------------------------------

    cdef int _head(self) except -1:
        cdef Server conn = self.conn
        cdef ResponseParser parser = conn.response_parser
        cdef Response resp
        cdef int status, kind
        while self.state == R_HEAD and self.buf:
            try:
                resp = parser.feed_c(self.buf, 0, self.head_request, self.connect)
            except ParseError:
                self._reset(E_INTERNAL)
                return 0
            if resp is None:
                return 0
            rest = self.buf[resp.head_length:]
            self.buf = None
            status = resp.status
            headers = h2_response_fields(resp)
            if status < 200:
                if status != 101:
                    conn.send_headers(self.stream_id, headers, False)
                self.buf = rest
                continue
            kind = resp.body
            if self.connect and status < 300:
                # RFC 9113 8.5: the 2xx opens the tunnel; DATA both ways from now on.
                conn.send_headers(self.stream_id, headers, False)
                self.state = R_CLOSE
                if rest:
                    self._send(rest, False)
                return 0
            if kind == BODY_NONE:
                conn.send_headers(self.stream_id, headers, True)
                self.state = R_DONE
                conn.stream_finished(self)
                return 0
            conn.send_headers(self.stream_id, headers, False)
            if kind == BODY_LENGTH:
                self.state = R_LENGTH
                self.left = resp.content_length
                if rest:
                    self._body_length(rest)
            elif kind == BODY_CHUNKED:
                self.state = R_CHUNKED
                self.chunks = ChunkedDecoder()
                if rest:
                    self._body_chunked(rest)
            else:
                self.state = R_CLOSE
                if rest:
                    self._send(rest, False)
        return 0

    cdef int _body_length(self, data) except -1:
        cdef Py_ssize_t size = len(data)
        cdef long long n = size if size < self.left else self.left
        self.left -= n
        self._send(data if n == size else data[:n], self.left == 0)
        if self.left == 0:
            self.state = R_DONE
            self.conn.stream_finished(self)
        return 0

    cdef int _body_chunked(self, data) except -1:
        cdef ChunkedDecoder dec = self.chunks
        cdef list out = []
        try:
            dec.feed_c(data, 0, out)
        except ParseError:
            self._reset(E_INTERNAL)
            return 0
        body = b"".join(out)
        if not dec.done:
            if body:
                self._send(body, False)
            return 0
        fields = h2_trailer_fields(dec.kept_trailers())
        if fields and validate(fields, "trailers") is None:
            if body:
                self._send(body, False)
            self.out_end = True
            self.trailers = fields
        else:
            self._send(body, True)
        self.state = R_DONE
        self.conn.stream_finished(self)
        self._flush_out()
        return 0

    cdef int _send(self, object data, bint end) except -1:
        """Body bytes for DATA: any bytes-like object (a relay may hand a view of its
        read); what waits for a window is kept as bytes of its own."""
        cdef Py_ssize_t n = len(data)
        cdef Server conn
        cdef long long took
        if not self.out and not self.out_end and self.trailers is None:
            # Nothing waits before it: straight to the codec, kept only if the windows
            # do not take it all (as _flush_out would do with a queue of one).
            conn = self.conn
            took = conn.send_data_to(self.cst, data, end)
            if took < 0:
                self._discard()
                return 0
            if took < n:
                rest = bytes(data[took:])
                if self.out is None:
                    self.out = [rest]
                else:
                    self.out.append(rest)
                self.out_bytes += n - took
                conn.buffered += n - took
                self.out_end = end
                conn.stall(self)
                conn.check_buffered(self)
            elif self.blocked or conn.over or conn.write_paused:
                conn.check_buffered(self)
            conn.flush_soon()
            return 0
        if type(data) is not bytes:
            data = bytes(data)
        if n:
            if self.out is None:
                self.out = [data]
            else:
                self.out.append(data)
            self.out_bytes += n
            self.conn.buffered += n
        if end:
            self.out_end = True
        self._flush_out()
        self.conn.check_buffered(self)
        return 0

    cdef int _flush_out(self) except -1:
        """Send what the windows allow; the rest waits for on_window_open."""
        cdef Server conn = self.conn
        cdef int sid = self.stream_id
        cdef list out = self.out
        cdef long long n
        cdef bint last
        while out:
            data = out[0]
            last = len(out) == 1 and self.out_end and self.trailers is None
            n = conn.send_data_to(self.cst, data, last)
            if n < 0:
                self._discard()
                return 0
            self.out_bytes -= n
            conn.buffered -= n
            if n < len(data):
                out[0] = data[n:]
                conn.stall(self)
                return 0
            del out[0]
            if last:
                self.out_end = False
        if self.out_end:
            self.out_end = False
            if self.trailers is not None:
                conn.send_headers(sid, self.trailers, True)
                self.trailers = None
            else:
                conn.send_data_to(self.cst, b"", True)
        if self.blocked or conn.over:
            conn.check_buffered(self)
        conn.flush_soon()
        return 0

    cdef int _discard(self) except -1:
        """The stream cannot send any more: drop what it held."""
        self.conn.buffered -= self.out_bytes
        if self.out:
            self.out.clear()
        self.out_bytes = 0
        self.out_end = False
        return 0

    cdef int hold_upstream(self, bint hold) except -1:
        """Stop (or restart) the relay reading its upstream for this stream."""
        if hold != self.blocked and self.protocol is not None:
            self.blocked = hold
            if hold:
                self.protocol.pause_writing()
            else:
                self.protocol.resume_writing()
        return 0

    cdef int _end(self, bint abort) except -1:
        if self.closing:
            return 0
        self.closing = True
        if self.state == R_CLOSE and not abort:
            self.out_end = True
            self.state = R_DONE
            self._flush_out()
        elif self.state != R_DONE:
            self._reset(E_INTERNAL if self.state != R_HEAD or abort else E_CANCEL)
        self.conn.stream_finished(self)
        return 0

    cdef int _reset(self, int code) except -1:
        self.state = R_DONE
        self._discard()
        self.conn.reset_stream(self.stream_id, code)
        self.conn.flush_soon()
        self.conn.stream_finished(self)
        return 0


cdef class Server(Connection):
    """A client's HTTP/2 connection (an asyncio protocol): one relay exchange per stream."""

    cdef public object rt, loop, transport, peername
    cdef readonly dict streams
    cdef readonly ResponseParser response_parser
    cdef bint forward
    cdef public double idle, deadline
    cdef public bint closing, write_paused
    cdef readonly set stalled
    cdef public long long buffered   # response bytes all streams hold for the client's windows
    cdef public bint over            # buffered went past CONNECTION_BUFFER: every upstream waits
    cdef bint _flush_scheduled
    cdef list _finished              # streams whose relay may be let go at the next flush
    cdef object _flush_cb
    cdef list _idle                  # finished streams with their relays, kept for new streams
    cdef bint _reuse                 # no per-connection hooks: a relay may serve many streams
    cdef object _buffer_limit        # a new relay's request buffering (gRPC streams set 0)
    cdef object _drain_timer         # the first GOAWAY's round trip, bounded (drain)

    def __init__(self, lrt):
        limits = lrt.limits
        # The wire block may be several times the list we take (a 431 needs the block
        # decoded in full); past that it is a CONTINUATION flood (GOAWAY).
        super().__init__(False, max_header_list_size=limits.max_header_size,
                         max_header_block=max(4 * limits.max_header_size, 1 << 19),
                         max_concurrent_streams=128)
        self.rt = lrt
        self.loop = lrt.loop
        self.transport = None
        self.peername = None
        self.streams = {}
        self.response_parser = ResponseParser(max_head=limits.max_header_size,
                                              max_fields=limits.max_header_fields)
        self.forward = lrt.listener.mode == "forward"
        self.idle = lrt.timeouts.client_idle
        self.deadline = 0.0
        self.closing = False
        self.write_paused = False
        self.stalled = set()
        self.buffered = 0
        self.over = False
        self._flush_scheduled = False
        self._finished = []
        self._flush_cb = self.flush
        self._idle = []
        # Per-client connection limits count relays (relay hooks): an idle one kept here
        # would hold a slot, so with them on every stream gets a fresh relay.
        self._reuse = not lrt.relay.hooks
        self._buffer_limit = None
        self._drain_timer = None

    # -- the socket --------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.peername = transport.get_extra_info("peername")
        self.rt.connections.add(self)
        self.rt.deadlines.add(self)
        self.deadline = _monotonic() + self.idle
        if self.rt.draining:
            self.drain()

    def data_received(self, data):
        try:
            self.feed(data)
        except Exception as exc:
            # A hook failed mid-frame: the codec's state is unknown, so is the peer's.
            self.loop.call_exception_handler({"message": "HTTP/2 connection failed",
                                              "exception": exc, "protocol": self})
            if self.transport is not None:
                self.transport.abort()
            return
        self.flush()

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.transport = None
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        self.rt.connections.discard(self)
        self.rt.deadlines.discard(self)
        for stream in list(self.streams.values()):
            self._drop(stream)
        self._release_idle()

    def pause_writing(self):
        # The client does not read what we write: read no more from it either, or its
        # PINGs, SETTINGS and resets would queue replies without bound (the codec's
        # control-frame limit counts only what one data_received queues). A client that
        # stays so is closed after the idle timeout.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()
        self.deadline = _monotonic() + self.idle
        for stream in self.streams.values():
            (<Stream>stream).hold_upstream(True)

    def resume_writing(self):
        self.write_paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        self.deadline = 0.0 if self.streams and not self.stalled else \
            _monotonic() + self.idle
        for stream in list(self.streams.values()):
            self.check_buffered(stream)

    cpdef flush_soon(self):
        """Write the queued frames at the end of this loop turn, in one write."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_cb)

    cpdef flush(self):
        """Let finished streams go, then write the queued frames now, in one write."""
        cdef Stream stream
        self._flush_scheduled = False
        while self._finished:
            finished, self._finished = self._finished, []
            for stream in finished:
                stream.released = False
                if not stream.out:   # DATA still waiting for a window keeps it
                    self._drop(stream)
        data = self.data_to_send()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)
        if transport is not None and (self.dead or (self.closing and not self.streams)):
            transport.close()

    # -- timeouts and shutdown ---------------------------------------------------------

    def on_timeout(self):
        """No stream for client_idle, or a peer that keeps its windows shut: close."""
        if self.streams and not self.stalled and not self.write_paused:
            self.deadline = _monotonic() + self.idle
            return
        self.goaway(E_NO if not self.stalled else E_CALM)
        self.closing = True
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def drain(self):
        """Graceful stop (RFC 9113 6.8): GOAWAY in two steps, finish the streams, close.

        The first GOAWAY names no stream (2^31-1) and goes with a PING: a stream the
        client opened before it saw the GOAWAY is still on its way, and a GOAWAY naming
        the last stream we had seen would drop it unprocessed (the client may retry it,
        but it cannot tell that from a lost one for non-idempotent requests). The PING's
        answer comes after every such stream; then the final GOAWAY names the last one.
        """
        if self.closing or self._drain_timer is not None:
            return
        self.goaway(E_NO, 0x7fffffff)
        self.ping(DRAIN_PING)
        # A client that never answers PINGs gets the final GOAWAY after this bound.
        self._drain_timer = self.loop.call_later(DRAIN_ROUND_TRIP, self._drain_final)
        self._release_idle()
        self.flush()

    def _drain_final(self):
        """The second GOAWAY: streams the client opens from now on are not processed."""
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if not self.closing and not self.dead:
            self.closing = True
            self.goaway(E_NO)
            self.flush()

    cpdef on_ping_ack(self, bytes opaque):
        if opaque == DRAIN_PING and self._drain_timer is not None:
            self._drain_final()

    # -- codec hooks -------------------------------------------------------------------

    cpdef on_headers(self, int stream_id, list headers, bint end_stream):
        cdef Stream stream
        cdef _Stream st
        cdef bint head_request, connect, has_length, grpc = False
        cdef tuple field
        if self.closing:
            self.reset_stream(stream_id, E_REFUSED)
            return
        # The codec has read the method and content-length already (check_request).
        st = self._get(stream_id)
        if st is None:
            return
        head_request, connect, has_length = st.head, st.connect, st.content_length >= 0
        if not end_stream:
            for field in headers:
                if (<bytes>field[0]) == N_CONTENT_TYPE and (<bytes>field[1]).startswith(GRPC):
                    grpc = True
        stream = self._idle_stream() if self._idle else None
        fresh = stream is None
        if fresh:
            stream = Stream.__new__(Stream)
            stream.conn = self
            relay = ClientConnection(self.rt)
            relay.received_version = 20
            if self._buffer_limit is None:
                self._buffer_limit = relay.buffer_limit
        else:
            # A kept pair: the relay's transport is this stream already (no new Stream,
            # no new bound write method); the stream starts again from a clean state.
            relay, stream.kept = stream.kept, None
            stream.tunneling = stream.client_eof = stream.closing = False
            stream.blocked = stream.paused = stream.out_end = stream.released = False
            stream.buf = stream.chunks = stream.held = stream.trailers = None
            stream.left = stream.out_bytes = 0
            if stream.own_limit:
                stream.own_limit = False
                relay.buffer_limit = self._buffer_limit
        stream.stream_id = stream_id
        stream.cst = st
        stream.head_request = head_request
        stream.connect = connect
        stream.state = R_HEAD
        head = h2_request_head(headers, not end_stream and not stream.connect, self.forward)
        stream.chunked_request = not end_stream and not stream.connect and not has_length
        stream.request_ended = end_stream
        if not end_stream and grpc:
            # A gRPC call's messages answer each other (streaming RPCs): buffering the
            # body before the upstream is taken would hold a bidirectional call forever.
            relay.buffer_limit = 0
            stream.own_limit = True
        stream.protocol = relay
        self.streams[st.key] = stream       # the codec's int object: none made per request
        self.deadline = 0.0
        if fresh:
            relay.connection_made(stream)
        if self.write_paused:
            stream.hold_upstream(True)
        relay.data_received(head)

    cpdef on_headers_too_large(self, int stream_id, bint end_stream):
        # 431 on the stream (RFC 9113 8.1, 10.5.1): the block was decoded, so the
        # connection goes on. The stream's relay gets a head over max_header_size, so
        # the answer, the access log line and the counters are an HTTP/1.1 client's.
        cdef Py_ssize_t size = self.rt.limits.max_header_size
        cdef _Stream st
        self.on_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"http"),
                                    (b":authority", b"-"), (b":path", b"/"),
                                    (b"x-header-list-too-large", b"x" * size)], end_stream)
        st = self._get(stream_id)
        if st is not None and st.remote_open and not st.local_open:
            self.reset_stream(stream_id, E_NO)   # answered: the request body is not wanted

    cpdef on_data(self, int stream_id, bytes data, bint end_stream):
        cdef Stream stream = self.streams.get(stream_id)
        if stream is None or stream.protocol is None:
            if data:
                self.acknowledge_received(stream_id, len(data))
            return
        if stream.paused:
            if stream.held is None:
                stream.held = []
            stream.held.append((data, end_stream))
            return
        self.request_data(stream, data, end_stream)

    cdef int request_data(self, Stream stream, data, bint end_stream) except -1:
        """Give request body bytes to the stream's relay and return their credit."""
        relay = stream.protocol
        if relay is None:
            return 0
        cdef Py_ssize_t n = len(data)
        if stream.connect:
            if n:
                relay.data_received(bytes(data))
            if end_stream:
                stream.client_eof = True
                if stream.tunneling and not stream.closing:
                    relay.eof_received()
        elif stream.chunked_request:
            piece = [chunk_header(n), bytes(data), CRLF] if n else []
            if end_stream:
                piece.append(LAST_CHUNK)
            if piece:
                relay.data_received(b"".join(piece))
        elif n:
            relay.data_received(bytes(data))
        if end_stream:
            stream.request_ended = True
        if n:
            self.acknowledge_received(stream.stream_id, n)
            self.flush_soon()     # outside data_received (a resume), nobody else writes
        return 0

    cpdef on_trailers(self, int stream_id, list headers):
        cdef Stream stream = self.streams.get(stream_id)
        if stream is None or stream.protocol is None:
            return
        stream.request_ended = True
        if stream.chunked_request:
            lines = [b"0\r\n"]
            for name, value in headers:
                lines.append(name + b": " + value + CRLF)
            lines.append(CRLF)
            data = b"".join(lines)
            if stream.paused:
                if stream.held is None:
                    stream.held = []
                stream.held.append((data, False))
                stream.chunked_request = False
            else:
                stream.protocol.data_received(data)
        # A request framed by content-length cannot carry trailers in HTTP/1.1: dropped.

    cpdef on_reset(self, int stream_id, int error_code, bint remote):
        cdef Stream stream = self.streams.get(stream_id)
        if stream is not None:
            stream.state = R_DONE
            stream._discard()
            self._drop(stream)

    cpdef on_window_open(self, int stream_id):
        cdef Stream stream = self.streams.get(stream_id)
        if stream is not None:
            self.stalled.discard(stream)
            stream._flush_out()
            if stream.state == R_DONE and not stream.out:
                self.stream_finished(stream)
            # Progress: streams still waiting get a fresh client_idle from now.
            if self.stalled or not self.streams:
                self.deadline = _monotonic() + self.idle
            elif not self.write_paused:
                self.deadline = 0.0

    cpdef on_connection_error(self, int error_code, str kind):
        self.flush_soon()

    # -- streams ---------------------------------------------------------------------

    cdef int check_buffered(self, Stream stream) except -1:
        """Hold a stream's upstream while it holds too much, or holds some while the
        connection does (a stream with nothing held still gets its response started,
        so one unread download cannot block the other streams' answers)."""
        cdef Stream other
        if self.buffered > C_CONNECTION_BUFFER and not self.over:
            self.over = True
            for other in self.streams.values():
                if other.out_bytes:
                    other.hold_upstream(True)
        elif self.over and self.buffered <= C_CONNECTION_BUFFER // 2:
            self.over = False
            for other in list(self.streams.values()):
                if other is not stream:
                    other.hold_upstream(other.out_bytes > C_STREAM_BUFFER // 2
                                        or self.write_paused)
        cdef long long limit = C_STREAM_BUFFER // 2 if stream.blocked else C_STREAM_BUFFER
        stream.hold_upstream(stream.out_bytes > limit or self.write_paused
                             or (self.over and stream.out_bytes > 0))
        return 0

    cdef int stall(self, Stream stream) except -1:
        """A stream's DATA waits for the peer's window: bounded by the idle timeout."""
        if not self.stalled:
            self.deadline = _monotonic() + self.idle
        self.stalled.add(stream)
        return 0

    cdef int stream_finished(self, Stream stream) except -1:
        """The response is complete, reset, or the relay closed its side: let the relay
        go at the next flush (not inside the relay's own call) once no DATA waits."""
        if not stream.out and not stream.released:
            stream.released = True
            self._finished.append(stream)
            self.flush_soon()
        return 0

    cdef Stream _idle_stream(self):
        """A kept stream whose relay still waits for a request head, or None."""
        cdef Stream stream
        while self._idle:
            stream = self._idle.pop()
            relay = stream.kept
            # Kept only when clean (_relay_done); nothing drives an idle relay but a
            # worker drain or a close, which these two show.
            if relay.state == STATE_HEAD and not relay.closing:
                return stream
            stream.kept = None
            relay.connection_lost(None)
        return None

    cdef int _relay_done(self, Stream stream, relay, bint complete) except -1:
        """A stream is over: keep it with its relay for the next stream when its
        exchange ended as a kept-alive HTTP/1.1 one would (waiting for the next head,
        nothing held), else end the relay. Kept relays have no deadline; they end with
        the connection."""
        if (complete and self._reuse and not self.closing and self.transport is not None
                and len(self._idle) < IDLE_RELAYS and relay.state == STATE_HEAD
                and relay.req is None and relay.upstream is None and relay.buf is None
                and not relay.paused and not relay.write_paused and not relay.closing
                and relay.transport is stream):
            relay.deadline = 0.0
            stream.kept = relay
            self._idle.append(stream)
        else:
            relay.connection_lost(None)
        return 0

    cdef int _release_idle(self) except -1:
        cdef Stream stream
        idle, self._idle = self._idle, []
        for stream in idle:
            relay, stream.kept = stream.kept, None
            relay.connection_lost(None)
        return 0

    cdef int _drop(self, Stream stream) except -1:
        cdef Stream other
        key = stream.cst.key
        if self.streams.get(key) is not stream:
            return 0
        del self.streams[key]
        self.stalled.discard(stream)
        stream._discard()
        if self.over:
            for other in list(self.streams.values()):
                self.check_buffered(other)
        protocol, stream.protocol = stream.protocol, None
        stream.closing = True
        if stream.state != R_DONE:
            self.reset_stream(stream.stream_id, E_CANCEL)
        if protocol is not None:
            self._relay_done(stream, protocol, stream.state == R_DONE and not stream.tunneling)
        if not self.streams:
            self.deadline = _monotonic() + self.idle
            if self.closing:
                self.flush_soon()
        return 0
