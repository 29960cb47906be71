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

Layout: one extension module built from files split by role, `include`d here:

    relay_errors.pxi     the answers the proxy writes itself (error_response, 100 Continue)
    relay_client.pxi     ListenerSettings, ClientConnection (HTTP/1.1 side of the exchange)
    relay_upstream.pxi   UpstreamConnection (response head, body relay, the filter hook)
    relay_pool.pxi       ConnectionPool (idle keep-alive connections per server)
    relay_fastpath.pxi   FastForward (the reverse handler's common request in C)
    relay_ids.pxi        RequestIds (each request's id: the log's $request_id, the upstream field)
    relay_tunnel.pxi     splice(), splice_held(), Tunnel, TunnelEnd, Holding, TunnelSetup
    relay_forward.pxi    RouteMemo, ForwardFast (the forward handler's common request in C)
    relay_accept.pxi     SockTransport (plain HTTP listeners' accept path); it includes
    relay_poller.pxi     Poller (the worker's epoll set) and the peer address text, and
    relay_acceptor.pxi   Acceptor (accept4 in a batch on a listening socket)
    relay_dial.pxi       plain-TCP upstream sockets as SockTransports in the same Poller
    relay_adopt.pxi      adopt(): a socket accepted elsewhere (PROXY header read) on that path
    relay_syscalls.pxi   the Linux socket and epoll declarations (first: fields use its types)

Why includes and not one module per role: the upstream side calls the client side's cdef
methods and C fields on every read (sent, observer, twrite, the sink below), and the
fast path reaches into both; across modules each of those becomes a vtable call through
an imported type plus a .pxd that must mirror every field. One module keeps them direct
C calls, so the split costs nothing at run time (the bench is the check).

The exchange (what a client-side connection offers the handlers and the upstream side;
ClientConnection implements it for HTTP/1.1, an HTTP/2 stream implements the same):

    request head    `req`: the parser's Request (method, target(), version, get(),
                    headers(), host, body framing), no dict per request
    body source     the connection streams request body bytes to `upstream` as they
                    arrive (`send_upstream`, `held`/`deferred` for buffering); reading
                    pauses and resumes per cause (`pause_reading(why)`/`resume_reading`)
    response sink   `send_head(head)`, `send_body(data)`, `send_flush()`, `send_end()`
                    (cdef, C calls); backpressure: the client transport's
                    pause_writing/resume_writing pause and resume the upstream read.
                    `respond()`, `respond_error()`, `abort()` finish an exchange the
                    handler answers itself; `exchange_done(keep)` ends one.
    body filter     `ListenerSettings.filter_factory(method, request, version)` (None: no
                    filter, no cost) is asked once per response head for a filter, or
                    None. A filter has start(status, fields) -> fields | None (None: step
                    aside, the response passes untouched), feed(data) -> bytes,
                    flush() -> bytes (the origin paused) and finish() -> bytes (end of
                    body). When one accepts, the relay unframes the origin body, feeds
                    it, frames the output itself (chunked to 1.1, close-delimited to 1.0;
                    the filter's Content-Length/Transfer-Encoding/Connection are dropped),
                    calls flush() after each upstream read that did not end the body,
                    and cuts the connection if the filter raises. A HEAD response is
                    offered to start() only, so its head is the one the GET would get
                    (RFC 9110 9.3.2); 1xx, 204 and 304 are never offered.

Request steps return explicit results, as Envoy filters do: each step (the hit path,
FastForward.forward, the handler's dispatch and its steps: rate limits, cache, forward)
returns STOP (answered, or carried on by the step: upstream, DNS, auth, a coalesced wait)
or CONTINUE (the next step decides). The relay runs hit path, FastForward, dispatch; a
dispatch that returns anything but STOP is a handler bug, answered with a 500.

The compiled fast paths are specialisations of this: FastForward is the handler step for
the common reverse request, the hit path (fastproxy._hitpath) answers fresh cache hits
before the handler; both keep their differential tests against the Python handler.

Framing between the sides (RFC 9112 section 6):

    upstream framing     HTTP/1.1 client            HTTP/1.0 client
    Content-Length       Content-Length             Content-Length
    chunked              chunked (validated, as is) de-chunked, close-delimited
    close-delimited      chunked                    close-delimited

Timeouts: every connection has a `deadline` (monotonic time, 0 = none) that the worker's
coarse sweep (`timers.Deadlines`) checks; arming a timeout is a float store.
"""
import asyncio
import os
import ssl as _ssl
import time
from functools import partial

from fastproxy import _http
from fastproxy._hashing cimport Core, Counted
from fastproxy._http cimport (ChunkedDecoder, Request, RequestParser, Response,
                              ResponseParser)

from cpython.set cimport PySet_Add, PySet_Discard
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_REALTIME
from fastproxy._hitpath cimport FreshHits


# The clocks as read once per batch of socket events (0: not read yet in this batch), while
# `_batching` is set (_batch_start to _batch_end: Poller.ready, Acceptor.ready). A clock
# read is a vDSO rdtsc of ~100 ns on this kind of VM, and a relayed request took five
# (its deadlines, t_sent, the pool's idle_since, t_start): 1-2% of a worker at c64. Read
# once per batch instead, as nginx and HAProxy read theirs once per event-loop turn: a
# deadline then counts from the batch's start (at most one batch early, against a sweep of
# whole seconds) and a duration from the batch its event came in (the event was there).
cdef bint _batching = False
cdef double _batch_mono = 0.0
cdef double _batch_wall = 0.0


cdef inline void _batch_start() noexcept nogil:
    """A batch of events begins (Poller.ready, Acceptor.ready): clocks not read yet."""
    global _batching, _batch_mono, _batch_wall
    _batch_mono = 0.0
    _batch_wall = 0.0
    _batching = True


cdef inline void _batch_end() noexcept nogil:
    global _batching
    _batching = False


cdef inline double _mono_clock() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline double _wall_clock() noexcept nogil:
    """time.time() without a Python call, read now (the end of a measured duration)."""
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline double _now() noexcept nogil:
    """Monotonic seconds, the clock of every deadline (timers.Deadlines reads the same
    clock through time.monotonic); cheaper than a call to loop.time(). Once per Poller
    batch (see above)."""
    global _batch_mono
    if _batching:
        if _batch_mono == 0.0:
            _batch_mono = _mono_clock()
        return _batch_mono
    return _mono_clock()


cdef inline double _wall() noexcept nogil:
    """time.time() without a Python call: the request's start for the access log. Once
    per Poller batch (see above)."""
    global _batch_wall
    if _batching:
        if _batch_wall == 0.0:
            _batch_wall = _wall_clock()
        return _batch_wall
    return _wall_clock()


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

# What a request step returns (the exchange, see above): STOP = this step answered the
# request or carries it on itself (upstream, a wait); CONTINUE = the next step decides.
cdef enum:
    X_CONTINUE = 0
    X_STOP = 1

# Python-visible names for the handlers.
CONTINUE = X_CONTINUE
STOP = X_STOP
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
cdef bytes H2_PREFACE_LINE = b"PRI * HTTP/2.0\r\n"
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
cdef class RequestIds
cdef class ListenerSettings
cdef class Admission
cdef class Recorder


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
cdef class SockTransport
cdef class Poller


include "relay_syscalls.pxi"
include "relay_errors.pxi"
include "relay_client.pxi"
include "relay_upstream.pxi"
include "relay_pool.pxi"
include "relay_ids.pxi"
include "relay_fastpath.pxi"
include "relay_hitwrite.pxi"
include "relay_tunnel.pxi"
include "relay_stats.pxi"
include "relay_forward.pxi"
include "relay_accept.pxi"
include "relay_dial.pxi"
include "relay_adopt.pxi"
