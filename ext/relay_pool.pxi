# Included by ext/relay.pyx (one extension module: see the note there).
# The keep-alive pool: idle upstream connections to one server and their shared settings.

# ---------------------------------------------------------------------------
# Keep-alive pool


cdef class ConnectionPool:
    """Idle keep-alive connections to one server, and the settings they share.

    Idle connections wait in a LIFO list (the most recently used is the warmest and the
    least likely to have been closed by the server). A connection goes back only after
    a complete, well-framed response; one the server closed while idle is dropped as
    soon as the close is seen, and `acquire` skips any that is closing.

    `keepalive` idle connections are kept for `keepalive_timeout`; the surplus a burst
    leaves (HTTP/2 clients multiplex hundreds of requests) is kept `purge_delay` more
    and then closed by the deadline sweep, as HAProxy's pool-purge-delay does: a second
    burst within the delay reuses the connections instead of opening new ones.
    """

    cdef public object loop, server, deadlines, timeouts, ssl, on_failure, on_response
    # async fn(up) that connects up to a virtual transport instead of a socket (an HTTP/2
    # stream to an h2c server: fastproxy.upstream.h2), raising OSError on failure; or None.
    cdef public object opener
    cdef public Core balancer            # the group's balancer counts in-flight requests
    cdef public object group
    cdef public str connect_host
    cdef public bytes via
    cdef public Py_ssize_t max_head
    cdef public int max_fields, keepalive
    cdef public long keepalive_requests
    cdef public double keepalive_timeout, connect_timeout, read_timeout, purge_delay
    cdef public list idle
    cdef public long open, opened_total
    cdef public bint closed
    # connect_host is a numeric address and FASTPROXY_UVLOOP_UPSTREAM is unset: plain-TCP
    # connections are dialled into the worker's Poller (relay_dial.pxi), not uvloop's.
    cdef public bint direct
    cdef sockaddr_storage dial_addr
    cdef socklen_t dial_len

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
        # keepalive = 0 keeps meaning "no reuse" (nginx without keepalive): no delay either.
        self.purge_delay = min(group_cfg.pool_purge_delay, self.keepalive_timeout) \
            if self.keepalive > 0 else 0.0
        self.connect_timeout = group_cfg.connect_timeout or rt.timeouts.upstream_connect
        self.read_timeout = group_cfg.read_timeout or rt.timeouts.upstream_header
        self.ssl = _ssl.create_default_context() if server.scheme == "https" else None
        self.idle = []
        self.open = 0
        self.opened_total = 0
        self.closed = False
        self.balancer = None
        self.opener = None
        self.group = None        # the UpstreamGroup (pending count), set by the group
        self.on_failure = None   # passive health: fn(server, connect_failure)
        self.on_response = None  # passive health: fn(server, status)
        self.direct = not _os.environ.get("FASTPROXY_UVLOOP_UPSTREAM") and \
            _dial_address(self.connect_host, server.port, &self.dial_addr, &self.dial_len)

    cpdef UpstreamConnection acquire(self):
        """A connection for one exchange: a live idle one, or a new one connecting."""
        cdef list idle = self.idle
        cdef UpstreamConnection up
        while idle:
            up = idle.pop()
            t = up.transport
            if t is not None and not (
                    (<SockTransport>t).closing if type(t) is SockTransport else t.is_closing()):
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
        cdef Py_ssize_t n = len(self.idle)
        if (not self.closed and (n < self.keepalive or self.purge_delay > 0.0)
                and up.requests < self.keepalive_requests
                and t is not None and not (
                    (<SockTransport>t).closing if type(t) is SockTransport else t.is_closing())):
            up.state = U_IDLE
            up.idle_since = _now()
            # Every idle connection is looked at again after the purge delay (idle_expired);
            # with no delay only those within `keepalive` are kept at all.
            up.deadline = up.idle_since + (self.purge_delay if self.purge_delay > 0.0
                                           else self.keepalive_timeout)
            self.idle.append(up)
        else:
            up.close()

    cdef void idle_expired(self, UpstreamConnection up):
        """An idle connection's deadline passed: close it if surplus or past its lifetime."""
        cdef double end = up.idle_since + self.keepalive_timeout
        if len(self.idle) > self.keepalive or end <= _now() or self.closed:
            up.close()
        else:
            up.deadline = end

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
