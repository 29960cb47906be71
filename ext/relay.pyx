# cython: language_level=3, boundscheck=False, wraparound=False
"""The relay: client and upstream connections, the keep-alive pool, and byte tunnels.

This is the per-request state machine of the data path, compiled because a profile
of the pure-Python version showed its interpreter overhead (about 4 us of the 16 us
of CPU a relayed request cost) as the largest part the proxy controls; the rest is
the kernel's. Decisions stay in Python: the listener's handler (`reverse.py`,
`forward.py`) routes, admits and picks the upstream; this module moves bytes.

    ClientConnection     one accepted socket: parse request heads (fastproxy._http),
                         hand each request to the handler, stream its body on, answer
                         pipelined requests strictly in order.
    UpstreamConnection   one connection to a server: send the request, parse the
                         response head once, rewrite it (hop-by-hop, Via, framing) and
                         stream the body back with backpressure.
    ConnectionPool       idle keep-alive connections to one server (LIFO).
    splice()             turn two transports into a byte tunnel (Upgrade, CONNECT, TCP).

Framing between the sides (RFC 9112 section 6):

    upstream framing     HTTP/1.1 client            HTTP/1.0 client
    Content-Length       Content-Length             Content-Length
    chunked              chunked (validated, as is) de-chunked, close-delimited
    close-delimited      chunked                    close-delimited

Timeouts: every connection has a `deadline` (monotonic time, 0 = none) that the worker's
coarse sweep (`timers.Deadlines`) checks; arming a timeout is a float store.
"""
import asyncio
import ssl as _ssl
import time
from functools import partial

from fastproxy import _http
from fastproxy._hashing cimport Core
from fastproxy._http cimport (ChunkedDecoder, Request, RequestParser, Response,
                              ResponseParser)
from fastproxy.proxy.errors import CONTINUE_100, error_response

from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_REALTIME
from fastproxy._hitpath cimport FreshHits


cdef inline double _now() noexcept nogil:
    """Monotonic seconds, the clock of every deadline (timers.Deadlines reads the same
    clock through time.monotonic); cheaper than a call to loop.time()."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef long _date_second = -1
cdef bytes _date_field = b""


cdef bytes _date_line():
    """`Date: <IMF-fixdate>` for now, formatted once per second."""
    global _date_second, _date_field
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    if ts.tv_sec != _date_second:
        _date_second = ts.tv_sec
        _date_field = time.strftime("Date: %a, %d %b %Y %H:%M:%S GMT\r\n",
                                    time.gmtime(ts.tv_sec)).encode()
    return _date_field


cdef object ParseError = _http.ParseError
cdef object chunk_header = _http.chunk_header
cdef bytes LAST_CHUNK = _http.LAST_CHUNK
cdef object _time = time.time


cdef inline Py_ssize_t _body_bytes(bytes response):
    """Body bytes of a complete response the proxy wrote itself (head and body in one)."""
    cdef Py_ssize_t end = response.find(b"\r\n\r\n")
    return len(response) - end - 4 if end >= 0 else 0

cdef enum:
    BODY_NONE = 0
    BODY_LENGTH = 1
    BODY_CHUNKED = 2
    BODY_CLOSE = 3

# Client connection states.
cdef enum:
    S_HEAD = 0      # waiting for (the rest of) a request head
    S_BODY = 1      # request head sent on; streaming the request body
    S_WAIT = 2      # request complete; waiting for the response to complete
    S_TUNNEL = 3    # the connection became a byte tunnel (Upgrade / CONNECT)
    S_CLOSED = 4

# Why reading from the client is paused (a bit each, so one cause cannot undo another).
cdef enum:
    P_UPSTREAM_FULL = 1    # the upstream's write buffer is above its high-water mark
    P_BUFFER_FULL = 2      # too many pipelined bytes waiting
    P_CONNECTING = 4       # the upstream is not connected yet and we hold its bytes
    P_HANDLER = 8          # the handler is deciding asynchronously (DNS, auth, cache)
    P_CLIENT_FULL = 16     # the client's write buffer is above its high-water mark

# Upstream connection states.
cdef enum:
    U_CONNECTING = 0
    U_IDLE = 1          # in the pool
    U_SENDING = 2       # request going out, no response yet
    U_HEAD = 3          # request complete, waiting for the response head
    U_BODY = 4          # relaying the response body
    U_CLOSED = 5

# How the response body reaches the client.
cdef enum:
    M_NONE = 0
    M_LENGTH = 1        # Content-Length: count and copy
    M_CHUNKED = 2       # chunked in, chunked out: validate and copy
    M_DECHUNK = 3       # chunked in, close-delimited out (HTTP/1.0 client)
    M_CLOSE_CHUNK = 4   # close-delimited in, chunked out (HTTP/1.1 client)
    M_CLOSE_RAW = 5     # close-delimited in and out

# Python-visible names for the handlers.
STATE_HEAD = S_HEAD
STATE_BODY = S_BODY
STATE_WAIT = S_WAIT
STATE_TUNNEL = S_TUNNEL
STATE_CLOSED = S_CLOSED
PAUSE_CONNECTING = P_CONNECTING
PAUSE_HANDLER = P_HANDLER

# Pipelined bytes we accept while an exchange is in flight, beyond one max head.
DEF PIPELINE_SLACK = 65536
# RFC 9110 9.2.2: methods whose repetition has the same effect; safe to retry.
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))

cdef bytes CRLF = b"\r\n"
cdef bytes CONNECTION_CLOSE = b"Connection: close\r\n"
cdef bytes CONNECTION_KEEP_ALIVE = b"Connection: keep-alive\r\n"
cdef bytes CONNECTION_UPGRADE = b"Connection: upgrade\r\n"
cdef bytes TE_CHUNKED = b"Transfer-Encoding: chunked\r\n"
cdef bytes METHOD_HEAD = b"HEAD"
cdef bytes DATE = b"date"


def _tunnel_ended(ConnectionPool pool, long long up_bytes, long long down_bytes):
    pool.release_server()


cdef inline object _piece(object data, Py_ssize_t pos, Py_ssize_t n):
    """data[pos:pos+n] as an object a transport may keep: bytes, never a view of a
    buffer we will reuse (a bytearray that grows later)."""
    if pos == 0 and type(data) is bytes and n == len(<bytes>data):
        return data
    return bytes(data[pos:pos + n])


cdef inline object _chunked_out(ChunkedDecoder dec, object data, Py_ssize_t pos,
                                Py_ssize_t n):
    """What to pass on of the chunked bytes data[pos:pos+n] the decoder just consumed:
    all of them, unless trailer fields began (then the bytes before them, and once the
    body is done the trailer section without forbidden fields, RFC 9110 6.5.1)."""
    cdef Py_ssize_t k = dec.passed
    if k == n:
        return _piece(data, pos, n)
    piece = bytes(data[pos:pos + k])
    if dec.done:
        piece += dec.kept_trailers()
    return piece


cdef class UpstreamConnection
cdef class ConnectionPool
cdef class FastForward
cdef class ListenerSettings


cdef class Counters:
    """Exchange counters of one worker (the admin interface's /metrics reads them)."""

    cdef public long long requests, s1xx, s2xx, s3xx, s4xx, s5xx, other
    cdef public long long bytes_sent, bytes_received

    def __init__(self):
        self.requests = self.s1xx = self.s2xx = self.s3xx = self.s4xx = self.s5xx = 0
        self.other = self.bytes_sent = self.bytes_received = 0

    cdef inline void count(self, int status, long long sent, long long received) noexcept:
        self.requests += 1
        self.bytes_sent += sent
        self.bytes_received += received
        if status < 200:
            if status >= 100:
                self.s1xx += 1
            else:
                self.other += 1
        elif status < 300:
            self.s2xx += 1
        elif status < 400:
            self.s3xx += 1
        elif status < 500:
            self.s4xx += 1
        elif status < 600:
            self.s5xx += 1
        else:
            self.other += 1

    def by_class(self):
        """{"1xx": n, ..., "5xx": n} of the exchanges counted so far."""
        return {"1xx": self.s1xx, "2xx": self.s2xx, "3xx": self.s3xx, "4xx": self.s4xx,
                "5xx": self.s5xx}
cdef class Tunnel
cdef class TunnelEnd


# ---------------------------------------------------------------------------
# Client side


cdef class ListenerSettings:
    """What every connection of one listener copies at accept, gathered once.

    A connection per request (HTTP/1.0 clients, `Connection: close`) makes accept-time
    work count: a profile showed the constructor's attribute lookups (some of them failing
    getattr defaults) and a fresh parser allocation at several thousand instructions per
    connection. Here they are C fields, and parsers are recycled through a small free list.
    """

    cdef public object rt, loop, handler, counters, fast_hits, fast, access_log
    cdef public object connections, deadlines
    cdef public bint hooks
    cdef public long open           # connections accepted and not gone yet
    cdef public object on_idle      # called when `open` drops to 0 (caching.WorkerCache)
    cdef object __weakref__
    cdef Py_ssize_t max_line, max_head
    cdef int max_fields
    cdef long long max_body, stash_limit, buffer_limit
    cdef double client_header, client_idle, client_body
    cdef list parsers

    def __init__(self, rt):
        limits = rt.limits
        t = rt.timeouts
        handler = rt.handler
        self.rt = rt
        self.loop = rt.loop
        self.handler = handler
        self.counters = rt.counters
        self.fast_hits = rt.fast_hits
        self.fast = getattr(handler, "fast", None)
        self.access_log = rt.access_log
        self.connections = rt.connections
        self.deadlines = rt.deadlines
        # Handlers that count connections (per-client limits) say so.
        self.hooks = bool(getattr(handler, "connection_hooks", True))
        self.max_line = limits.max_request_line
        self.max_head = limits.max_header_size
        self.max_fields = limits.max_header_fields
        self.max_body = limits.max_body
        self.stash_limit = limits.max_header_size + PIPELINE_SLACK
        own = getattr(getattr(rt, "listener", None), "request_buffering", None)
        self.buffer_limit = limits.request_buffering if own is None else own
        self.client_header = t.client_header
        self.client_idle = t.client_idle
        self.client_body = t.client_body
        self.parsers = []
        self.open = 0
        self.on_idle = None

    cdef RequestParser take_parser(self):
        if self.parsers:
            return self.parsers.pop()
        return RequestParser(max_line=self.max_line, max_head=self.max_head,
                             max_fields=self.max_fields)

    cdef void give_back(self, RequestParser parser):
        if len(self.parsers) < 256:
            parser.reset()
            self.parsers.append(parser)


cdef class ClientConnection:
    """One client socket: requests in, responses out, in order."""

    cdef public object rt, loop, transport, buf, handler
    cdef public RequestParser parser
    cdef public Request req
    cdef public ChunkedDecoder chunks
    cdef public UpstreamConnection upstream
    cdef public Counters counters
    cdef public FreshHits fast_hits
    cdef public FastForward fast     # compiled common path of the handler, or None
    cdef public object server, replay, tried, group, log_extra, observer
    cdef public list held      # request body bytes read before an upstream connection
    cdef public long long held_bytes
    # Request buffering: (pool, head, pending, fresh) of a send_upstream that waits for
    # the body (or buffer_limit bytes of it) before taking an upstream connection.
    cdef public object deferred
    cdef bint buffering        # this request's body is being buffered
    cdef public int state, paused, body_kind, status, retries, client_port
    cdef public bint write_paused, closing, keep_alive, resp_started, body_done
    cdef public bint head_request
    cdef public bint upgrade_sent  # the handler forwarded an Upgrade offer (a 101 may come)
    cdef bint counted          # in ls.open
    cdef public double deadline, t_start, upstream_time
    cdef public long long body_left, sent, received
    cdef public str client_ip, detail
    cdef public bytes client_ip_b
    cdef public object hash_key
    cdef double client_header, client_idle, client_body
    cdef long long max_body, stash_limit, buffer_limit
    cdef public object twrite      # transport.write, bound once (a lookup saved per write)
    cdef object access_log
    cdef ListenerSettings ls

    def __init__(self, rt):
        cdef ListenerSettings ls = rt.relay
        self.rt = rt
        self.ls = ls
        self.loop = ls.loop
        self.transport = None
        self.parser = ls.take_parser()
        self.max_body = ls.max_body
        self.stash_limit = ls.stash_limit
        self.buffer_limit = ls.buffer_limit
        self.client_header = ls.client_header
        self.client_idle = ls.client_idle
        self.client_body = ls.client_body
        self.handler = ls.handler
        self.counters = ls.counters
        self.fast_hits = ls.fast_hits
        self.fast = ls.fast
        self.access_log = ls.access_log
        self.buf = None
        self.state = S_HEAD
        self.deadline = 0.0
        self.paused = 0
        self.write_paused = False
        self.closing = False
        self.upstream = None
        self.chunks = None
        self.group = None
        self.hash_key = 0
        self.observer = None
        self.held = None
        self.held_bytes = 0
        self.deferred = None
        self.buffering = False
        self._reset_exchange()

    cdef void _reset_exchange(self):
        self.req = None
        self.body_kind = BODY_NONE
        self.body_left = 0
        self.status = 0
        self.sent = 0
        self.received = 0
        self.server = None
        self.keep_alive = True
        self.resp_started = False
        self.body_done = True
        self.replay = None
        self.tried = None
        self.retries = 0
        self.head_request = False
        self.upgrade_sent = False
        self.upstream_time = -1.0
        self.detail = ""
        self.log_extra = None
        self.observer = None
        self.held = None
        self.held_bytes = 0
        self.deferred = None
        self.buffering = False

    # -- asyncio protocol -------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.twrite = transport.write
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = peer[0]
            self.client_port = peer[1]
        else:  # a UNIX socket, or a socket that died before we asked
            self.client_ip = "-"
            self.client_port = 0
        self.client_ip_b = self.client_ip.encode()
        cdef ListenerSettings ls = self.ls
        ls.connections.add(self)
        ls.deadlines.add(self)
        ls.open += 1
        self.counted = True
        self.deadline = _now() + self.client_header
        if self.rt.draining:
            self.closing = True
        if ls.hooks:
            self.handler.connection_made(self)

    def connection_lost(self, exc):
        self.state = S_CLOSED
        cdef ListenerSettings ls = self.ls
        ls.connections.discard(self)
        ls.deadlines.discard(self)
        self.deadline = 0.0
        cdef UpstreamConnection up = self.upstream
        if up is not None:
            # The client went away mid-exchange: the upstream connection is in an
            # unknown state (part of a request or response unread): not reused.
            self.upstream = None
            up.abandon()
        if self.req is not None and self.status == 0:
            self.status = 499  # nginx's code for "client closed the request"
            self.detail = "client closed connection"
            self.log()
        self.req = None
        self._observer_failed()
        if self.parser is not None:
            ls.give_back(self.parser)
            self.parser = None
        if ls.hooks:
            self.handler.connection_lost(self)
        self._gone()

    cdef _gone(self):
        """The connection is over: its listener generation has one fewer."""
        cdef ListenerSettings ls = self.ls
        if self.counted:
            self.counted = False
            ls.open -= 1
            if ls.open == 0 and ls.on_idle is not None:
                ls.on_idle()

    def data_received(self, data):
        cdef int state = self.state
        cdef Py_ssize_t n
        if state == S_HEAD:
            buf = self.buf
            if buf is None:
                self._on_input(data)
            else:
                buf += data
                self._on_input(buf)
        elif state == S_BODY:
            n = self._feed_body(data, 0)
            if n < len(data) and self.state != S_CLOSED:
                self._stash(data, n)
        elif state == S_WAIT:
            self._stash(data, 0)

    def eof_received(self):
        # A client that half-closes after its request still gets its response
        # (RFC 9112 9.6); close once the exchange in flight is done.
        if (self.state == S_WAIT or self.state == S_BODY) and self.req is not None:
            self.keep_alive = False
            return True
        return False

    def pause_writing(self):
        # The client reads slower than we write: stop reading the upstream, and start
        # no new request until it catches up, or the answers we write ourselves (cache
        # hits, TRACE, errors) pile up in memory as fast as pipelined requests come.
        # A request body still being read keeps flowing (its upstream may need it all
        # before the client reads again); exchange_done pauses after it.
        self.write_paused = True
        if self.upstream is not None:
            self.upstream.pause_reading()
        if self.state != S_BODY:
            self.pause_reading(P_CLIENT_FULL)

    def resume_writing(self):
        self.write_paused = False
        if self.upstream is not None:
            self.upstream.resume_reading()
        if self.paused & P_CLIENT_FULL:
            self.resume_reading(P_CLIENT_FULL)
            if self.state == S_HEAD and self.buf:
                # Pipelined requests waited for the client to read: carry on.
                self.loop.call_soon(self._resume_pipeline)

    # -- reading requests -------------------------------------------------------

    cdef _on_input(self, data):
        """Parse a request head at the start of data and start its exchange."""
        cdef Py_ssize_t pos
        cdef Request req
        try:
            req = self.parser.feed_c(data, 0)
        except ParseError as exc:
            self.buf = None
            self.reject(exc.status, f"{exc.code}: {exc}")
            return
        if req is None:
            if self.buf is None:
                # First bytes of a new head: from now on the whole head must arrive
                # within client_header (slow-loris guard), however it trickles in.
                self.buf = bytearray(data)
                self.deadline = _now() + self.client_header
            return
        self.buf = None
        pos = req.head_length
        self._begin(req)
        if self.state == S_BODY and pos < len(data):
            pos += self._feed_body(data, pos)
        if pos < len(data) and self.state != S_CLOSED:
            self._stash(data, pos)
            if self.state == S_HEAD and not self.write_paused:
                # The handler answered inside dispatch (a cache hit, an error) before
                # these pipelined bytes were kept: start on them now (or once the
                # client has read what we wrote: resume_writing).
                self.loop.call_soon(self._resume_pipeline)

    cdef _stash(self, data, Py_ssize_t pos):
        """Keep bytes that arrived early (pipelined, or while the upstream connects)."""
        chunk = data[pos:] if pos else data
        if self.buf is None:
            self.buf = bytearray(chunk)
        else:
            self.buf += chunk
        if len(self.buf) > self.stash_limit:
            self.pause_reading(P_BUFFER_FULL)

    cdef _begin(self, Request req):
        """A complete head arrived: check framing limits, then let the handler decide."""
        cdef int kind = req.body
        self.req = req
        self.t_start = _time()
        self.head_request = req.method is METHOD_HEAD or req.method == METHOD_HEAD
        self.deadline = 0.0
        self.keep_alive = req.keep_alive and not self.closing
        self.body_kind = kind
        if kind == BODY_LENGTH:
            self.body_left = req.content_length
        elif kind == BODY_CHUNKED:
            if self.chunks is None:
                self.chunks = ChunkedDecoder()
            else:
                self.chunks.reset()
        self.body_done = kind == BODY_NONE
        # nginx's proxy_request_buffering: the body (up to buffer_limit) is read before an
        # upstream connection is taken, so a slow upload pins none (send_upstream).
        self.buffering = kind != BODY_NONE and self.buffer_limit > 0
        if self.max_body and kind == BODY_LENGTH and self.body_left > self.max_body:
            self.reject(413, f"request body of {self.body_left} bytes is over the "
                             f"{self.max_body}-byte limit")
            return
        if req._expect_other:
            # RFC 9110 10.1.1 (a 100-continue in an HTTP/1.0 request is ignored instead).
            self.reject(417, "only 100-continue is supported in Expect")
            return
        self.state = S_BODY if kind != BODY_NONE else S_WAIT
        cdef FreshHits hits = self.fast_hits
        if hits is not None and kind == BODY_NONE:
            # A fresh cache hit is answered here, without a Python call (hitpath.pyx).
            out = hits.serve(req, self.keep_alive)
            if out is not None:
                self.log_extra = hits.log_hit
                self.respond(out, hits.status, hits.body_len)
                return
        cdef FastForward fast = self.fast
        if fast is None or not fast.forward(self, req):
            self.handler.dispatch(self, req)
        if (req.expect_continue and kind != BODY_NONE and self.state == S_BODY
                and req.version >= 11 and not self.resp_started):
            # We answer 100 ourselves once the request is admitted and routed (as nginx
            # does) and drop Expect upstream, so an upstream that ignores Expect cannot
            # stall the client. RFC 9110 10.1.1.
            self.twrite(CONTINUE_100)

    cdef Py_ssize_t _feed_body(self, data, Py_ssize_t pos) except -1:
        """Forward request body bytes from data[pos:]; return how many belong to it."""
        cdef UpstreamConnection up = self.upstream
        cdef int kind = self.body_kind
        cdef Py_ssize_t avail = len(data) - pos
        cdef Py_ssize_t n
        if kind == BODY_LENGTH:
            n = avail if avail < self.body_left else <Py_ssize_t>self.body_left
            if n:
                self.body_left -= n
                self.received += n
                if up is not None:
                    up.write(_piece(data, pos, n))
                else:
                    self._hold(_piece(data, pos, n))
            if self.body_left == 0:
                self._request_complete()
            elif self.client_body:
                self.deadline = _now() + self.client_body
            return n
        if kind == BODY_CHUNKED:
            dec = self.chunks
            try:
                n = dec.feed_c(data, pos, None)
            except ParseError as exc:
                self._body_error(exc.status, f"{exc.code}: {exc}")
                return avail
            if n:
                self.received += n
                if self.max_body and self.received > self.max_body:
                    self._body_error(413, f"request body is over the {self.max_body}-byte "
                                          "limit")
                    return avail
                piece = _chunked_out(dec, data, pos, n)
                if not piece:
                    pass
                elif up is not None:
                    up.write(piece)
                else:
                    self._hold(piece)
            if dec.done:
                self._request_complete()
            elif self.client_body:
                self.deadline = _now() + self.client_body
            return n
        return 0

    cdef _hold(self, piece):
        """Keep body bytes while no upstream connection is taken: the handler has not
        chosen one yet (DNS, ...; reading pauses), or the body is being buffered."""
        if self.held is None:
            self.held = [piece]
        else:
            self.held.append(piece)
        self.held_bytes += len(piece)
        if self.deferred is None:
            self.pause_reading(P_HANDLER)
        elif self.held_bytes >= self.buffer_limit:
            self._send_deferred()   # over the limit: the rest streams as it comes

    cdef _request_complete(self):
        self.body_done = True
        self.deadline = 0.0
        if self.state == S_BODY:
            self.state = S_WAIT
        if self.upstream is not None:
            self.upstream.request_sent()
        elif self.deferred is not None:
            self._send_deferred()
        elif self.state == S_WAIT and self.status and self.resp_started:
            # The response finished before the body did (an early answer); now both are done.
            self.exchange_done(self.keep_alive)

    cdef _body_error(self, int status, str detail):
        """The request body is malformed or too large: answer if we still can, then close."""
        self.keep_alive = False
        cdef UpstreamConnection up = self.upstream
        if up is not None:
            self.upstream = None
            up.abandon()
        if not self.resp_started:
            self.reject(status, detail)
        else:
            self.abort(detail)

    # -- writing responses ------------------------------------------------------

    cpdef reject(self, int status, str detail, bytes extra=b""):
        """Answer with an error the proxy generates itself, then close."""
        self.status = status
        self.detail = detail
        if self.req is None:
            self.t_start = _time()
        t = self.transport
        if t is not None and not t.is_closing():
            data = error_response(status, detail, True, extra, self.head_request)
            t.write(data)
            self.sent += _body_bytes(data)
        self.log()
        self.req = None
        self._observer_failed()
        self.close()

    cpdef respond_error(self, int status, str detail, bytes extra=b""):
        """Answer an admitted request with an error; keep the connection when it is safe."""
        self.status = status
        self.detail = detail
        self.resp_started = True
        keep = self.keep_alive and self.body_done
        data = error_response(status, detail, not keep, extra, self.head_request)
        self.twrite(data)
        self.sent += _body_bytes(data)     # the access log counts the proxy's own answers
        self.exchange_done(keep)

    cpdef respond(self, object buffers, int status, long long body_bytes, bint keep=True):
        """Write a complete response the handler built (a cache hit, a redirect, ...)."""
        self.status = status
        self.resp_started = True
        self.sent += body_bytes
        keep = keep and self.keep_alive and self.body_done
        if type(buffers) is bytes:
            self.twrite(buffers)
        else:
            self.transport.writelines(buffers)
        self.exchange_done(keep)

    cpdef abort(self, str detail):
        """The response was already under way and cannot be completed: cut the connection."""
        self.detail = detail
        if self.status == 0:
            self.status = 502
        self.log()
        self.req = None
        self._observer_failed()
        if self.transport is not None:
            self.transport.abort()
        self.state = S_CLOSED

    cdef _observer_failed(self):
        """The exchange ended without a complete response: tell the observer (no store)."""
        observer = self.observer
        if observer is not None:
            self.observer = None
            observer.exchange_failed(self)

    cpdef exchange_done(self, bint keep):
        """The response is complete: log, then read the next request or close."""
        self.upstream = None
        if not self.body_done:
            # The upstream answered before the request body was complete (an early
            # 4xx, say). The rest of the body is still coming; we cannot tell it from
            # the next request without reading it, so close after this response.
            keep = False
        observer = self.observer
        if observer is not None:
            self.observer = None
            observer.exchange_done(self)
        self.log()
        self._reset_exchange()
        if self.paused & (P_UPSTREAM_FULL | P_CONNECTING | P_HANDLER):
            self.resume_reading(P_UPSTREAM_FULL | P_CONNECTING | P_HANDLER)
        if not keep or self.closing:
            self.close()
            return
        self.state = S_HEAD
        self.deadline = _now() + self.client_idle
        if self.write_paused:
            # The client has not read what we wrote: no next request until it does
            # (pause_writing left reading on while a request body was coming).
            self.pause_reading(P_CLIENT_FULL)
        elif self.buf:
            # Pipelined requests waited; carry on outside the upstream's callback.
            self.loop.call_soon(self._resume_pipeline)

    def _resume_pipeline(self):
        if self.state != S_HEAD or not self.buf or self.write_paused:
            return
        buf = self.buf
        self.buf = None
        if self.paused & P_BUFFER_FULL:
            self.resume_reading(P_BUFFER_FULL)
        self.deadline = _now() + self.client_header
        self._on_input(bytes(buf))

    cpdef close(self):
        self.state = S_CLOSED
        self.deadline = 0.0
        t = self.transport
        if t is not None:
            t.close()

    cpdef log(self):
        cdef Counters c = self.counters
        if c is not None:
            c.count(self.status, self.sent, self.received)
        if self.access_log is not None:
            self.access_log.write(self)

    # -- flow control -----------------------------------------------------------

    cpdef pause_reading(self, int why):
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= why

    cpdef resume_reading(self, int why):
        cdef int was = self.paused
        self.paused = was & ~why
        if was and not self.paused and self.transport is not None \
                and not self.transport.is_closing():
            self.transport.resume_reading()

    # -- handing over ---------------------------------------------------------

    cpdef send_upstream(self, ConnectionPool pool, bytes head, list pending=None,
                        bint fresh=False):
        """Send head (and any queued body bytes) over a connection from pool; with request
        buffering, once the body (or buffer_limit bytes of it) is read (returns None)."""
        if self.buffering:
            if not self.body_done and self.held_bytes < self.buffer_limit:
                self.deferred = (pool, head, pending, fresh)
                if self.paused & P_HANDLER:
                    self.resume_reading(P_HANDLER)
                return None
            self.buffering = False
        cdef UpstreamConnection up = pool.connect_new() if fresh else pool.acquire()
        self.server = pool.server
        self.upstream = up
        up.begin(self, head)
        if pending:
            for piece in pending:
                up.write(piece)
        held = self.held
        if held is not None:
            self.held = None
            for piece in held:
                up.write(piece)
            self.resume_reading(P_HANDLER)
        if up.transport is None and self.state == S_BODY:
            # Hold the client's body until the upstream is connected.
            self.pause_reading(P_CONNECTING)
        if self.body_done:
            up.request_sent()
        return up

    cdef _send_deferred(self):
        """The buffered body is complete or over the limit: take the upstream connection
        now and send head and body in one write."""
        pool, head, pending, fresh = self.deferred
        self.deferred = None
        self.buffering = False
        held = self.held
        if held is not None:
            self.held = None
            head = head + b"".join(held)
        self.send_upstream(pool, head, pending, fresh)

    cpdef take_buffered(self):
        """Bytes read ahead of the current request (for a tunnel); clears them."""
        buf = self.buf
        self.buf = None
        return bytes(buf) if buf else b""

    def tunnel(self, transport, bytes to_upstream, bytes to_client, double idle,
                 on_close=None):
        """Make this connection and `transport` (or a Holding's) a byte tunnel (after a
        101 or a CONNECT 200)."""
        self.state = S_TUNNEL
        self.deadline = 0.0
        self.rt.deadlines.discard(self)
        if self.paused:
            self.paused = 0
        closed = partial(self._tunnel_closed, on_close)
        if isinstance(transport, Holding):
            return splice_held(self.transport, transport, to_upstream, idle,
                               self.rt.deadlines, closed)
        return splice(self.transport, transport, to_upstream, to_client, idle,
                      self.rt.deadlines, closed)

    def _tunnel_closed(self, on_close, long long up_bytes, long long down_bytes):
        self.state = S_CLOSED
        self.rt.connections.discard(self)
        if on_close is not None:
            on_close(up_bytes, down_bytes)
        self._gone()

    # -- timeouts ---------------------------------------------------------------

    cpdef on_timeout(self):
        """The deadline for the current phase passed."""
        cdef int state = self.state
        if state == S_HEAD:
            if self.buf:
                self.reject(408, "request head not received in time")
            else:
                self.close()  # idle keep-alive connection: close quietly
        elif state == S_BODY:
            self._body_error(408, "request body stalled")
        else:
            self.close()

    cpdef drain(self):
        """Graceful shutdown: finish the exchange in flight, then close."""
        self.closing = True
        if self.state == S_HEAD and not self.buf:
            self.close()


# ---------------------------------------------------------------------------
# Upstream side


cdef class UpstreamConnection:
    """One connection to an upstream server, reused across exchanges."""

    cdef public ConnectionPool pool
    cdef public object server, loop, transport, buf, connect_task
    cdef public ResponseParser parser
    cdef public ChunkedDecoder chunks
    cdef public list pending
    cdef public ClientConnection client
    cdef public int state, mode
    cdef public double deadline, t_sent
    cdef public long requests
    cdef public bint reused, got_bytes, reusable, paused, sent_continue, counted
    cdef public bint timed_out     # this exchange failed by a timeout (never "stale")
    cdef public long long left
    cdef bytes via
    cdef double upstream_idle
    cdef object twrite

    def __init__(self, ConnectionPool pool, server):
        self.pool = pool
        self.server = server
        self.loop = pool.loop
        self.upstream_idle = pool.timeouts.upstream_idle
        self.via = pool.via
        self.transport = None
        self.pending = None
        self.client = None
        self.parser = ResponseParser(max_head=pool.max_head, max_fields=pool.max_fields)
        self.state = U_CONNECTING
        self.deadline = 0.0
        self.requests = 0
        self.reused = False
        self.got_bytes = False
        self.mode = M_NONE
        self.left = 0
        self.chunks = None
        self.buf = None
        self.reusable = True
        self.t_sent = 0.0
        self.paused = False
        self.connect_task = None
        self.sent_continue = False
        self.counted = False
        self.timed_out = False

    # -- exchange control (called by the client side) ---------------------------

    cpdef begin(self, ClientConnection client, bytes head):
        """Start an exchange for client: send the request head."""
        self.client = client
        self.requests += 1
        self.got_bytes = False
        self.timed_out = False
        self.reusable = True
        self.buf = None
        self.sent_continue = client.req.expect_continue
        self.pool.acquire_server()
        if self.state == U_IDLE:
            self.state = U_SENDING
        self.write(head)
        if client.write_paused:
            self.pause_reading()

    cpdef write(self, data):
        """Send request bytes now, or queue them until the connection is up."""
        if self.transport is not None:
            self.twrite(data)
        elif self.pending is None:
            self.pending = [data]
        else:
            self.pending.append(data)

    cpdef request_sent(self):
        """The whole request went out (or is queued): the response head clock starts."""
        if self.state == U_SENDING or self.state == U_CONNECTING:
            if self.state == U_SENDING:
                self.state = U_HEAD
            self.t_sent = _now()
            self.deadline = self.t_sent + self.pool.read_timeout

    cpdef abandon(self):
        """The client side gave up on this exchange: the connection cannot be reused."""
        if self.client is not None:
            self.client = None
            self.pool.release_server()
        self.close()

    cpdef pause_reading(self):
        if not self.paused:
            self.paused = True
            if self.transport is not None:
                self.transport.pause_reading()
            self.deadline = 0.0  # a slow client is not an idle upstream

    cpdef resume_reading(self):
        if self.paused:
            self.paused = False
            t = self.transport
            if t is not None and not t.is_closing():
                t.resume_reading()
            if self.state == U_BODY:
                self.deadline = _now() + self.upstream_idle

    def pause_writing(self):
        # The upstream reads the request body slower than the client sends it.
        if self.client is not None:
            self.client.pause_reading(P_UPSTREAM_FULL)

    def resume_writing(self):
        if self.client is not None:
            self.client.resume_reading(P_UPSTREAM_FULL)

    # -- connecting -------------------------------------------------------------

    cpdef connect(self):
        """Open the connection in the background; failures reach the client side."""
        self.connect_task = self.loop.create_task(self._connect())
        self.deadline = _now() + self.pool.connect_timeout

    async def _connect(self):
        server = self.server
        pool = self.pool
        try:
            await self._open()
        finally:
            pool.pending_change(-1)

    async def _open(self):
        server = self.server
        pool = self.pool
        try:
            await self.loop.create_connection(
                lambda: self, pool.connect_host, server.port, ssl=pool.ssl,
                server_hostname=server.host if pool.ssl else None)
        except asyncio.CancelledError:
            # Our own cancel: the connect timeout, or the client left (abandon).
            self.connect_task = None
            if self.client is not None:
                self._failed(504, f"connect to {server.name} timed out", True)
        except OSError as exc:  # refused, unreachable, TLS handshake failure, ...
            self.connect_task = None
            if self.client is not None:
                self._failed(502, f"connect to {server.name} failed: "
                                  f"{exc.strerror or exc.__class__.__name__}", True)
            else:
                self.close()
        else:
            self.connect_task = None

    def connection_made(self, transport):
        self.transport = transport
        self.twrite = transport.write
        self.pool.opened(self)
        self.deadline = 0.0
        if self.state == U_CONNECTING:
            if self.client is None:
                # Nobody waits for it any more (the client left): keep it for the pool.
                self.state = U_IDLE
                self.pool.release(self)
                return
            pending = self.pending
            self.pending = None
            if pending:
                transport.writelines(pending)
            if self.client.body_done:
                self.state = U_HEAD
                self.t_sent = _now()
                self.deadline = self.t_sent + self.pool.read_timeout
            else:
                self.state = U_SENDING
            self.client.resume_reading(P_CONNECTING)
            if self.paused:
                transport.pause_reading()

    # -- receiving the response -------------------------------------------------

    def data_received(self, data):
        cdef int state = self.state
        cdef Py_ssize_t n
        cdef long long left
        cdef ClientConnection client
        if state == U_BODY:
            if self.mode == M_LENGTH:
                client = self.client
                n = len(data)
                left = self.left
                client_t = client.twrite
                if n < left:
                    self.left = left - n
                    client.sent += n
                    client_t(data)
                    if client.observer is not None:
                        client.observer.response_body(data)
                    self.deadline = _now() + self.upstream_idle
                    return
                client.sent += left
                if n == left:
                    client_t(data)
                    if client.observer is not None:
                        client.observer.response_body(data)
                else:
                    # Bytes after the end of a Content-Length body: the upstream is
                    # confused about framing, so never reuse this connection.
                    piece = data[:left]
                    client_t(piece)
                    if client.observer is not None:
                        client.observer.response_body(piece)
                    self.reusable = False
                self._finish()
                return
            self._body(data, 0)
        elif state == U_HEAD or state == U_SENDING:
            self.got_bytes = True
            buf = self.buf
            if buf is not None:
                buf += data
                data = buf
            self._head(data)
        elif state == U_IDLE:
            # An idle upstream has nothing to say (RFC 9112 9.3.1); it is broken.
            self.close()

    cdef _head(self, data):
        cdef ClientConnection client = self.client
        cdef Py_ssize_t pos = 0, rest, n
        cdef int status, kind, mode
        cdef bint http11
        cdef Response resp
        while True:
            try:
                resp = self.parser.feed_c(data, pos, client.head_request, False)
            except ParseError as exc:
                self._failed(502, f"invalid response from {self.server.name}: "
                                  f"{exc.code}: {exc}", False)
                return
            if resp is None:
                if pos:
                    # Re-based after interim responses: the parser's memory of how far
                    # it scanned refers to the old buffer.
                    self.parser.reset()
                    self.buf = bytearray(data[pos:])
                elif type(data) is not bytearray:
                    self.buf = bytearray(data)
                return
            self.buf = None
            status = resp.status
            pos += resp.head_length
            if status >= 200 or status == 101:
                break
            # RFC 9110 15.2: forward interim responses to HTTP/1.1 clients; the 100
            # we already sent ourselves for Expect is not repeated.
            if client.req.version >= 11 and not (status == 100 and self.sent_continue):
                client.twrite(resp.forward_c(None, self.via, (), False))
            if pos >= len(data):
                return
        if status == 101:
            self._upgrade(resp, data, pos)
            return
        client.status = status
        client.resp_started = True
        now = _now()
        client.upstream_time = now - self.t_sent if self.t_sent else 0.0
        if self.state == U_SENDING:
            # The upstream answered before the request body was complete.
            self.reusable = False
        self.state = U_BODY
        kind = resp.body
        http11 = client.req.version >= 11
        if not resp.keep_alive:
            self.reusable = False
        extra = self.via
        if kind == BODY_LENGTH:
            mode = M_LENGTH
            self.left = resp.content_length
        elif kind == BODY_NONE:
            mode = M_NONE
        elif kind == BODY_CHUNKED:
            if self.chunks is None:
                self.chunks = ChunkedDecoder()
            else:
                self.chunks.reset()
            if http11:
                mode = M_CHUNKED
                extra += TE_CHUNKED
            else:
                mode = M_DECHUNK
                client.keep_alive = False
        else:  # BODY_CLOSE: the body ends when the upstream closes
            self.reusable = False
            if http11:
                mode = M_CLOSE_CHUNK
                extra += TE_CHUNKED
            else:
                mode = M_CLOSE_RAW
                client.keep_alive = False
        self.mode = mode
        if not client.body_done or client.closing:
            client.keep_alive = False
        observer = client.observer
        if observer is not None:
            more = observer.response_head(client, resp)
            if more is not None and type(more) is not bytes:
                self._replaced(client, observer, more, mode != M_NONE or pos < len(data))
                return
            if more:
                extra += more
        if not resp.has_c(DATE):
            # RFC 9110 6.6.1: a recipient with a clock that forwards a response without
            # Date MUST add one (the time it was received).
            extra += _date_line()
        if not client.keep_alive:
            extra += CONNECTION_CLOSE
        elif not http11:
            extra += CONNECTION_KEEP_ALIVE
        head = resp.forward_c(None if resp.version == 11 else
                              b"HTTP/1.1 %d %s" % (status, resp.reason), extra, (), False)
        client_t = client.twrite
        rest = len(data) - pos
        if mode == M_LENGTH and rest >= self.left:
            n = <Py_ssize_t>self.left
            if rest > n:
                self.reusable = False
            client.sent += n
            if n:
                piece = data[pos:pos + n]
                client_t(head + piece)
                if observer is not None:
                    observer.response_body(piece)
            else:
                client_t(head)
            self._finish()
            return
        if mode == M_NONE:
            if rest:
                self.reusable = False
            client_t(head)
            self._finish()
            return
        client_t(head)
        self.deadline = now + self.upstream_idle
        if rest:
            if mode == M_LENGTH:
                piece = _piece(data, pos, rest)
                self.left -= rest
                client.sent += rest
                client_t(piece)
                if observer is not None:
                    observer.response_body(piece)
            else:
                self._body(data, pos)

    cdef _body(self, data, Py_ssize_t pos):
        """Relay body bytes for the chunked and close-delimited modes."""
        cdef ClientConnection client = self.client
        cdef int mode = self.mode
        cdef Py_ssize_t n
        client_t = client.transport
        observer = client.observer
        self.deadline = _now() + self.upstream_idle
        if mode == M_CHUNKED or mode == M_DECHUNK:
            dec = self.chunks
            out = [] if (mode == M_DECHUNK or observer is not None) else None
            try:
                n = dec.feed_c(data, pos, out)
            except ParseError as exc:
                self._broken(f"bad chunked body from {self.server.name}: {exc.code}")
                return
            if mode == M_CHUNKED:
                if n:
                    piece = _chunked_out(dec, data, pos, n)
                    if piece:
                        client_t.write(piece)
            elif out:
                client_t.writelines([bytes(p) for p in out])
            if observer is not None and out:
                for p in out:
                    observer.response_body(bytes(p))
            client.sent += n
            if dec.done:
                if pos + n < len(data):
                    self.reusable = False
                self._finish()
        elif mode == M_CLOSE_CHUNK:
            n = len(data) - pos
            if n:
                piece = _piece(data, pos, n)
                client_t.writelines((chunk_header(n), piece, CRLF))
                client.sent += n
                if observer is not None:
                    observer.response_body(piece)
        elif mode == M_CLOSE_RAW:
            n = len(data) - pos
            piece = _piece(data, pos, n)
            client_t.write(piece)
            client.sent += n
            if observer is not None:
                observer.response_body(piece)

    cdef _upgrade(self, resp, data, Py_ssize_t pos):
        """101 Switching Protocols: forward it, then both connections become a tunnel."""
        cdef ClientConnection client = self.client
        if not client.upgrade_sent:
            # No offer went upstream (none, or not one this listener tunnels): a 101 here
            # would open a tunnel the handler refused.
            self._failed(502, f"{self.server.name} switched protocols unasked", False)
            return
        client.status = 101
        client.resp_started = True
        client.upstream_time = _now() - self.t_sent if self.t_sent else 0.0
        client.transport.write(resp.forward_head(
            None if resp.version == 11 else b"HTTP/1.1 101 Switching Protocols",
            self.via + CONNECTION_UPGRADE, (), True))
        to_client = bytes(data[pos:]) if pos < len(data) else b""
        to_upstream = client.take_buffered()
        pool = self.pool
        self.pool.forget(self)
        self.state = U_CLOSED
        self.deadline = 0.0
        self.client = None
        client.upstream = None
        client.log()
        client.tunnel(self.transport, to_upstream, to_client, client.rt.timeouts.tunnel_idle,
                      partial(_tunnel_ended, pool))

    # -- ending an exchange -----------------------------------------------------

    cdef _replaced(self, ClientConnection client, observer, object more, bint has_body):
        """The observer answers instead of this response (a 304 that refreshed its cache
        entry, a stored response instead of an error), or, given False, asks for the
        request to be sent again (`observer.replay(client)`)."""
        if has_body:
            self.reusable = False   # its body is not read: the connection is unusable
        if more is False:
            self._release(client)
            client.upstream = None
            client.status = 0
            client.resp_started = False
            observer.replay(client)
            return
        client.transport.writelines(more)
        self._finish()

    cdef _finish(self):
        """The response is complete: hand the connection back and let the client go on."""
        cdef ClientConnection client = self.client
        self._release(client)
        client.exchange_done(client.keep_alive)

    cdef _release(self, ClientConnection client):
        """Detach from client; back to the pool when the exchange left it clean."""
        self.client = None
        self.state = U_IDLE
        self.deadline = 0.0
        self.pool.release_server()
        if self.paused:
            self.paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        if self.pool.on_response is not None and (client.status >= 500 or
                                                  self.pool.server.failures):
            # Passive health: a 5xx counts against the server; a good answer clears its
            # count (only worth a call when there is one to clear).
            self.pool.on_response(self.pool.server, client.status)
        if self.reusable and client.body_done:
            self.pool.release(self)
        else:
            self.close()

    cdef _broken(self, str detail):
        """The response broke after it started: the client connection must be cut."""
        cdef ClientConnection client = self.client
        self.client = None
        self.pool.release_server()
        self.close()
        if client is not None:
            client.upstream = None
            client.abort(detail)

    cdef _failed(self, int status, str detail, bint connect):
        """No usable response: let the handler retry elsewhere or answer 502/504."""
        cdef ClientConnection client = self.client
        self.client = None
        replayable = connect or not self.got_bytes
        pending = self.pending
        self.pending = None
        if client is not None:
            self.pool.release_server()
            self.pool.record_failure(self, connect)
        self.close()
        if client is not None and client.upstream is self:
            client.upstream = None
            client.handler.upstream_failed(client, self, status, detail, replayable,
                                           pending if connect else None)

    def connection_lost(self, exc):
        cdef int state = self.state
        cdef ClientConnection client
        self.state = U_CLOSED
        self.deadline = 0.0
        self.pool.forget(self)
        self.transport = None
        if state == U_BODY and self.client is not None:
            client = self.client
            if self.mode == M_CLOSE_CHUNK:
                client.transport.write(LAST_CHUNK)
                self._finish_closed(client)
            elif self.mode == M_CLOSE_RAW:
                self._finish_closed(client)
            else:
                self._broken(f"{self.server.name} closed the connection mid-body")
        elif (state == U_SENDING or state == U_HEAD) and self.client is not None:
            if self.got_bytes:
                self._failed(502, f"{self.server.name} closed the connection "
                                  "before a complete response head", False)
            else:
                self._failed(502, f"{self.server.name} closed the connection "
                                  "without a response", False)

    cdef _finish_closed(self, ClientConnection client):
        self.client = None
        self.pool.release_server()
        client.exchange_done(client.keep_alive)

    def eof_received(self):
        return False  # close our side too; connection_lost does the bookkeeping

    cpdef on_timeout(self):
        """The current wait (connect, response head, body idle, pool idle) ran out."""
        cdef int state = self.state
        if state == U_CONNECTING:
            if self.connect_task is not None:
                self.connect_task.cancel()
        elif state == U_SENDING or state == U_HEAD:
            # Not the stale keep-alive case (a close or reset): the server may be working
            # on the request, so only the retry policy may send it again (reverse.py).
            self.timed_out = True
            self._failed(504, f"{self.server.name} did not answer within "
                              f"{self.pool.read_timeout:g}s", False)
        elif state == U_BODY:
            self._broken(f"{self.server.name} stalled mid-body")
        else:
            self.close()

    cpdef close(self):
        """Close the connection (it is not returned to the pool)."""
        self.state = U_CLOSED
        self.deadline = 0.0
        self.pool.forget(self)
        t = self.transport
        if t is not None:
            t.close()
        elif self.connect_task is not None:
            self.connect_task.cancel()


# ---------------------------------------------------------------------------
# Keep-alive pool


cdef class ConnectionPool:
    """Idle keep-alive connections to one server, and the settings they share.

    Idle connections wait in a LIFO list (the most recently used is the warmest and the
    least likely to have been closed by the server). A connection goes back only after
    a complete, well-framed response; one the server closed while idle is dropped as
    soon as the close is seen, and `acquire` skips any that is closing.
    """

    cdef public object loop, server, deadlines, timeouts, ssl, on_failure, on_response
    cdef public Core balancer            # the group's balancer counts in-flight requests
    cdef public object group
    cdef public str connect_host
    cdef public bytes via
    cdef public Py_ssize_t max_head
    cdef public int max_fields, keepalive
    cdef public long keepalive_requests
    cdef public double keepalive_timeout, connect_timeout, read_timeout
    cdef public list idle
    cdef public long open, opened_total
    cdef public bint closed

    def __init__(self, rt, group_cfg, server, connect_host=None):
        self.loop = rt.loop
        self.server = server
        self.connect_host = connect_host or server.host
        self.deadlines = rt.deadlines
        self.timeouts = rt.timeouts
        self.via = rt.response_via
        self.max_head = rt.limits.max_header_size
        self.max_fields = rt.limits.max_header_fields
        self.keepalive = group_cfg.keepalive
        self.keepalive_timeout = group_cfg.keepalive_timeout
        self.keepalive_requests = group_cfg.keepalive_requests
        self.connect_timeout = group_cfg.connect_timeout or rt.timeouts.upstream_connect
        self.read_timeout = group_cfg.read_timeout or rt.timeouts.upstream_header
        self.ssl = _ssl.create_default_context() if server.scheme == "https" else None
        self.idle = []
        self.open = 0
        self.opened_total = 0
        self.closed = False
        self.balancer = None
        self.group = None        # the UpstreamGroup (pending count), set by the group
        self.on_failure = None   # passive health: fn(server, connect_failure)
        self.on_response = None  # passive health: fn(server, status)

    cpdef UpstreamConnection acquire(self):
        """A connection for one exchange: a live idle one, or a new one connecting."""
        cdef list idle = self.idle
        cdef UpstreamConnection up
        while idle:
            up = idle.pop()
            t = up.transport
            if t is not None and not t.is_closing():
                up.reused = True
                up.deadline = 0.0
                return up
            up.close()
        return self.connect_new()

    cpdef UpstreamConnection connect_new(self):
        """A new connection, bypassing idle ones (a retry after a stale keep-alive)."""
        cdef UpstreamConnection up = UpstreamConnection(self, self.server)
        self.deadlines.add(up)
        self.pending_change(1)
        up.connect()
        return up

    cdef void pending_change(self, int delta):
        """Requests waiting for a new connection (circuit breaker's pending limit)."""
        self.server.pending += delta
        if self.group is not None:
            self.group.pending += delta

    cpdef acquire_server(self):
        """One more request in flight to this server (the balancer keeps its totals)."""
        if self.balancer is not None:
            self.balancer.acquire(self.server)
        else:
            self.server.active += 1

    cpdef release_server(self):
        """One request to this server finished."""
        if self.balancer is not None:
            self.balancer.release(self.server)
        else:
            self.server.active -= 1

    cpdef release(self, UpstreamConnection up):
        """Take a connection back after a complete exchange, or close it."""
        t = up.transport
        if (not self.closed and len(self.idle) < self.keepalive
                and up.requests < self.keepalive_requests
                and t is not None and not t.is_closing()):
            up.state = U_IDLE
            up.deadline = _now() + self.keepalive_timeout
            self.idle.append(up)
        else:
            up.close()

    cpdef opened(self, UpstreamConnection up):
        """A connection is established (counted once until forgotten)."""
        up.counted = True
        self.open += 1
        self.opened_total += 1
        self.server.conns = self.open

    cpdef forget(self, UpstreamConnection up):
        """The connection is closing: drop every reference the pool holds to it."""
        self.deadlines.discard(up)
        if up in self.idle:
            self.idle.remove(up)
        if up.counted:
            up.counted = False
            self.open -= 1
            self.server.conns = self.open

    cpdef record_failure(self, UpstreamConnection up, bint connect):
        if self.on_failure is not None:
            self.on_failure(self.server, connect)

    cpdef close(self):
        """Close every idle connection; connections still in use close when released."""
        self.closed = True
        for up in list(self.idle):
            up.close()
        self.idle.clear()


# ---------------------------------------------------------------------------
# Reverse mode's common request, compiled


cdef tuple DROP_XF = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
cdef tuple DROP_XF_EXPECT = DROP_XF + (b"expect",)
cdef tuple DROP_EXPECT = (b"expect",)
cdef tuple NO_DROP = ()
cdef bytes XFF = b"x-forwarded-for"
cdef bytes MAX_FORWARDS = b"max-forwards"
cdef frozenset MAX_FORWARDS_METHODS = frozenset((b"TRACE", b"OPTIONS"))


cdef class FastForward:
    """`ReverseHandler.forward` for the common request, without Python bytecode.

    The profile of the reverse path showed the Python handler at about 45% of the
    instructions a relayed request costs. This class does what the handler does for an
    origin-form request with a Host, on a listener without cache or rate limits, in the
    `x-forwarded` (or no) forwarding mode with Host preserved: route, pick, check the
    breaker's request limits, build the forwarded head and send it. Anything else
    (absolute-form, Max-Forwards probes, HTTP/1.0 without Host, Upgrade offers, canary or
    prefix-strip routes, no eligible server, a full limit) returns False and the Python handler
    does it, so every decision keeps one readable definition in reverse.py; tests check
    both paths produce the same bytes.
    """

    cdef object handler, router, only
    cdef bytes via_11, via_10, xfp
    cdef bint xf
    # The single route's group, unpacked once (a generation's groups never change).
    cdef object group, key_fn
    cdef Core balancer
    cdef dict pools
    cdef long long max_requests, per_server_max_requests

    def __init__(self, handler):
        self.handler = handler
        self.router = handler.router
        self.only = handler.router.only
        self.via_11 = handler.via_11
        self.via_10 = handler.via_10
        self.xf = handler.xf
        self.xfp = b"\r\nX-Forwarded-Proto: " + handler.proto + CRLF
        self.group = None
        if self.only is not None:
            group = self.only.group
            self.group = group
            self.balancer = group.balancer
            self.key_fn = group.key_fn
            self.pools = group.pools
            self.max_requests = group.limits.max_requests
            self.per_server_max_requests = group.limits.per_server_max_requests

    cpdef bint forward(self, ClientConnection conn, Request req) except -1:
        """Send req upstream like the handler would; False to let the handler do it."""
        if req.target_form != 0:  # TARGET_ORIGIN
            return False
        if req._conn_upgrade and req._upgrade_i >= 0:
            return False    # an Upgrade offer: the handler's upgrade_plan decides
        if req.method in MAX_FORWARDS_METHODS and req.has_c(MAX_FORWARDS):
            return False
        host = req.get_c(b"host") if req._host_i >= 0 else None
        if host is None:
            return False
        cdef long long max_requests, per_server_max_requests
        cdef dict pools
        cdef Core balancer
        group = self.group
        if group is not None:
            balancer = self.balancer
            key_fn = self.key_fn
            pools = self.pools
            max_requests = self.max_requests
            per_server_max_requests = self.per_server_max_requests
        else:
            route = self.router.match(host, req.target)
            if route is None or route.canary is not None or route.strip:
                return False
            group = route.group
            balancer = group.balancer
            key_fn = group.key_fn
            pools = group.pools
            max_requests = group.limits.max_requests
            per_server_max_requests = group.limits.per_server_max_requests
        key = 0
        if key_fn is not None:
            key = key_fn(req, conn.client_ip)
        server = balancer.pick(key, ())
        if server is None:
            return False
        cdef ConnectionPool pool = pools[server]
        if max_requests and balancer.total_active >= max_requests:
            return False
        if per_server_max_requests and server.active >= per_server_max_requests:
            return False
        if not pool.idle and group.admit(server) is not None:
            return False
        # The forwarded head (same fields, same order as ReverseHandler._plan).
        cdef int version = req.version
        extra = self.via_11 if version == 11 else self.via_10
        cdef bint expect = req.expect_continue
        if self.xf:
            ip = conn.client_ip_b
            xff = req.get_c(XFF)
            extra = b"".join((extra, b"X-Forwarded-For: ",
                              ip if xff is None else xff + b", " + ip,
                              self.xfp, b"X-Forwarded-Host: ", host, CRLF))
            drop = DROP_XF_EXPECT if expect else DROP_XF
        else:
            drop = DROP_EXPECT if expect else NO_DROP
        if conn.body_kind == BODY_CHUNKED:
            extra += TE_CHUNKED
        start_line = None if version == 11 else req.method + b" " + req.target + b" HTTP/1.1"
        head = req.forward_c(start_line, extra, drop, False)
        group.requests_seen += 1
        conn.group = group
        conn.hash_key = key
        conn.replay = head
        conn.send_upstream(pool, head, None, False)
        return True


# ---------------------------------------------------------------------------
# Tunnels


cdef class Tunnel:
    """Two ends, the shared idle deadline and the byte counts.

    Both transports get a TunnelEnd protocol (`set_protocol`), so bytes go from one
    socket to the other in the loop's callbacks with no parsing. Backpressure: when one
    side's write buffer is full the other side stops reading. Half-close: an EOF from
    one side becomes write_eof on the other; the tunnel ends when both directions are
    finished (RFC 9110 9.3.6 for CONNECT).
    """

    cdef public TunnelEnd a, b
    cdef public double deadline, idle
    cdef public object deadlines, loop, on_close
    cdef public bint done

    def __init__(self, double idle, deadlines, on_close):
        self.idle = idle
        self.deadlines = deadlines
        self.loop = deadlines.loop
        self.on_close = on_close
        self.done = False
        self.deadline = _now() + idle if idle else 0.0

    cpdef on_timeout(self):
        """No byte crossed the tunnel for `idle` seconds: close both ends."""
        self.a.transport.abort()
        self.b.transport.abort()

    cdef end(self):
        if self.done:
            return
        self.done = True
        self.deadline = 0.0
        self.deadlines.discard(self)
        if self.on_close is not None:
            self.on_close(self.a.count, self.b.count)


cdef class TunnelEnd:
    """One side of a tunnel: what it reads, the other side writes."""

    cdef public Tunnel tunnel
    cdef public object transport
    cdef public TunnelEnd peer
    cdef public long long count   # bytes read from this side (and written to the peer)
    cdef public bint eof, lost

    def __init__(self, Tunnel tunnel, transport):
        self.tunnel = tunnel
        self.transport = transport
        self.count = 0
        self.eof = False
        self.lost = False

    def connection_made(self, transport):  # pragma: no cover - set_protocol only
        pass

    def data_received(self, data):
        cdef Tunnel tunnel = self.tunnel
        self.count += len(data)
        self.peer.transport.write(data)
        if tunnel.idle:
            tunnel.deadline = _now() + tunnel.idle

    def eof_received(self):
        self.eof = True
        peer_t = self.peer.transport
        if self.peer.eof or self.peer.lost or peer_t.is_closing():
            # Both directions are finished (or the peer is already going): close.
            if not peer_t.is_closing():
                peer_t.close()
            return False
        if peer_t.can_write_eof():
            peer_t.write_eof()
            return True  # keep our write direction open (half-close)
        peer_t.close()   # TLS cannot half-close: finish both directions
        return False

    def pause_writing(self):
        self.peer.transport.pause_reading()

    def resume_writing(self):
        t = self.peer.transport
        if not t.is_closing():
            t.resume_reading()

    def connection_lost(self, exc):
        self.lost = True
        peer = self.peer
        peer_t = peer.transport
        if exc is not None:
            peer_t.abort()   # a reset travels on as a reset
        elif not peer_t.is_closing() and not (self.eof and not peer.eof):
            # close() flushes what is buffered first. After our EOF alone the peer may
            # still be sending its remaining bytes (half-close), so leave it open.
            peer_t.close()
        if peer.lost:
            self.tunnel.end()


cdef class Holding:
    """The protocol of a freshly connected server socket until a tunnel takes it over.

    A server may speak first (a banner) or even close at once: reading pauses as soon as
    the connection is made, and whatever happened before the tunnel starts (bytes, EOF,
    loss) is kept and replayed by `splice_held`.
    """

    cdef public list early
    cdef public bint eof, lost
    cdef public object transport

    def __init__(self):
        self.early = []
        self.eof = False
        self.lost = False
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.pause_reading()

    def data_received(self, data):
        self.early.append(data)

    def eof_received(self):
        self.eof = True
        return True  # keep the socket: the tunnel decides

    def connection_lost(self, exc):
        self.lost = True


cpdef Tunnel splice_held(client, Holding held, bytes to_server, double idle, deadlines,
                         on_close=None):
    """Join a client transport and a held server connection into a tunnel."""
    cdef Tunnel tunnel = splice(client, held.transport, to_server, b"".join(held.early),
                                idle, deadlines, on_close)
    if held.lost:
        tunnel.b.connection_lost(None)
    elif held.eof:
        tunnel.b.eof_received()
    return tunnel


cpdef Tunnel splice(a, b, bytes to_b, bytes to_a, double idle, deadlines, on_close=None):
    """Join transports a and b into a tunnel; to_b/to_a are bytes already read early."""
    cdef Tunnel tunnel = Tunnel(idle, deadlines, on_close)
    cdef TunnelEnd end_a = TunnelEnd(tunnel, a)
    cdef TunnelEnd end_b = TunnelEnd(tunnel, b)
    end_a.peer = end_b
    end_b.peer = end_a
    tunnel.a = end_a
    tunnel.b = end_b
    a.set_protocol(end_a)
    b.set_protocol(end_b)
    if to_b:
        end_a.count += len(to_b)
        b.write(to_b)
    if to_a:
        end_b.count += len(to_a)
        a.write(to_a)
    for t in (a, b):
        if not t.is_closing() and not t.is_reading():
            t.resume_reading()
    if idle:
        deadlines.add(tunnel)
    return tunnel
