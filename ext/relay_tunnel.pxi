# Included by ext/relay.pyx (one extension module: see the note there).
# Tunnels and holding: splice(), splice_held(), Tunnel, TunnelEnd, Holding; CONNECT setup
# (TunnelSetup).

# The proxy's own 2xx carries a Date (RFC 9110 6.6.1) and no Content-Length or
# Transfer-Encoding (9.3.6).
cdef bytes CONNECT_OK = b"HTTP/1.1 200 Connection Established\r\n"

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



cdef class TunnelPeer:
    """What the access log prints as the upstream of a tunnel (`name`)."""

    cdef public str name

    def __init__(self, str name):
        self.name = name


cdef class TunnelSetup:
    """CONNECT after admission (RFC 9110 9.3.6): connect to the allowed addresses in order,
    answer 200, then splice the two sockets; a 502/504 naming the last failure otherwise.

    One connect task per address and the worker's deadline sweep for the connect timeout
    (no coroutine of our own, no wait_for), since a tunnel per connection makes setup cost
    count. The access log line is written when the tunnel ends, with the bytes both ways
    (the client's upload as received, the download as sent).
    """

    cdef ClientConnection conn
    cdef Request req
    cdef str host, addr, last
    cdef long port
    cdef tuple addrs
    cdef Py_ssize_t next
    cdef int status
    cdef double timeout, idle
    cdef object task, loop, deadlines
    cdef public double deadline

    def __init__(self, ClientConnection conn, Request req, str host, long port, tuple addrs,
                 double timeout, double idle):
        self.conn = conn
        self.req = req
        self.host = host
        self.port = port
        self.addrs = addrs
        self.next = 0
        self.timeout = timeout
        self.idle = idle
        self.loop = conn.loop
        self.deadlines = conn.ls.deadlines
        self.deadline = 0.0
        self.task = None
        self.last = "no address"
        self.status = 502

    cpdef start(self):
        """Connect to the first address (then the next on failure)."""
        cdef Py_ssize_t i = self.next
        if i >= len(self.addrs):
            if self.conn.state != S_CLOSED and self.conn.req is self.req:
                self.conn.respond_error(self.status, self.last)
            return
        self.next = i + 1
        self.addr = self.addrs[i]
        self.task = self.loop.create_task(
            self.loop.create_connection(Holding, self.addr, self.port))
        self.task.add_done_callback(self._connected)
        if self.timeout:
            self.deadline = _now() + self.timeout
            self.deadlines.add(self)

    cpdef on_timeout(self):
        """The connect took longer than upstream_connect: give up on this address."""
        if self.task is not None:
            self.task.cancel()

    def _connected(self, task):
        self.task = None
        if self.deadline:
            self.deadline = 0.0
        self.deadlines.discard(self)
        cdef ClientConnection conn = self.conn
        if task.cancelled():
            self.last, self.status = f"{self._where()} timed out", 504
        else:
            exc = task.exception()
            if exc is None:
                transport, held = task.result()
                if conn.state == S_CLOSED or conn.req is not self.req:
                    transport.close()
                    return
                self._established(held)
                return
            # OSError: refused, unreachable, ...; anything else is answered the same way.
            reason = getattr(exc, "strerror", None) or exc.__class__.__name__
            self.last, self.status = f"{self._where()} failed: {reason}", 502
        if conn.state == S_CLOSED or conn.req is not self.req:
            return
        self.start()

    cdef str _where(self):
        return f"connect to {self.host}:{self.port} ({self.addr})"

    cdef _established(self, Holding held):
        cdef ClientConnection conn = self.conn
        addr = self.addr
        conn.status = 200
        conn.resp_started = True
        conn.server = TunnelPeer(f"{self.host}:{self.port}" if ":" not in addr
                                 else f"[{addr}]:{self.port}")
        conn.twrite(CONNECT_OK + _date_line() + CRLF)
        early = conn.take_buffered()
        conn.tunnel(held, early, b"", self.idle, self._closed)

    def _closed(self, long long up, long long down):
        cdef ClientConnection conn = self.conn
        conn.req = self.req
        conn.received = up
        conn.sent = down
        conn.upstream_time = -1.0
        conn.log()
        conn.req = None
