# Included by ext/relay.pyx (one extension module: see the note there).
# Client side: ListenerSettings and ClientConnection (HTTP/1.1), the exchange's request head, body source and response sink.

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
    cdef Admission admission        # the gate's compiled half, or None (no gate)
    cdef public object h2_switch    # (conn, data) -> None: takes over on the HTTP/2 preface
    cdef public bint hooks
    cdef public bint draining       # the worker drains (ListenerRuntime.draining)
    cdef public long open           # connections accepted and not gone yet
    cdef public object on_idle      # called when `open` drops to 0 (caching.WorkerCache)
    # Response-body filter factory (the contract: fastproxy/proxy/filters.py), None = bodies pass as read.
    cdef public object filter_factory
    # The same listener's settings of the generation a reload made after this one (None
    # while this is the newest): open connections move to it at their next request.
    cdef public ListenerSettings successor
    cdef object __weakref__
    cdef Py_ssize_t max_line, max_head
    cdef int max_fields
    cdef long long max_body, stash_limit, buffer_limit
    cdef double client_header, client_idle, client_body, client_send
    cdef list parsers
    # The generation's Deadlines members as a C-level set: with a connection per request
    # Deadlines.add/discard were two interpreted calls per connection.
    cdef set deadline_set

    def __init__(self, rt, gen, long long buffer_limit):
        # rt: the listener's runtime (connections keep it as `rt`); gen: its configuration
        # generation (loop, limits, timeouts, logs, counters); buffer_limit: this
        # listener's request buffering, resolved by the caller (server/worker.py).
        limits = gen.limits
        t = gen.timeouts
        handler = rt.handler
        self.rt = rt
        self.loop = gen.loop
        self.handler = handler
        self.counters = gen.counters
        self.fast_hits = rt.fast_hits
        self.fast = getattr(handler, "fast", None)
        # The listener's recorder (latency, top URLs, then the generation's access log).
        self.access_log = rt.access_log
        self.connections = rt.connections
        self.admission = getattr(rt.connections, "admission", None)
        self.deadlines = gen.deadlines
        self.deadline_set = gen.deadlines.members
        # Handlers that count connections (per-client limits) say so.
        self.hooks = bool(getattr(handler, "connection_hooks", True))
        self.h2_switch = getattr(rt, "h2_switch", None)
        self.max_line = limits.max_request_line
        self.max_head = limits.max_header_size
        self.max_fields = limits.max_header_fields
        self.max_body = limits.max_body
        self.stash_limit = limits.max_header_size + PIPELINE_SLACK
        self.buffer_limit = buffer_limit
        self.client_header = t.client_header
        self.client_idle = t.client_idle
        self.client_body = t.client_body
        self.client_send = t.client_send
        self.parsers = []
        self.draining = False
        self.open = 0
        self.on_idle = None
        self.filter_factory = None
        self.successor = None

    cdef RequestParser take_parser(self):
        if self.parsers:
            return self.parsers.pop()
        return RequestParser(max_line=self.max_line, max_head=self.max_head,
                             max_fields=self.max_fields)

    cdef void give_back(self, RequestParser parser):
        if len(self.parsers) < 256:
            parser.clear_c()
            self.parsers.append(parser)


cdef class Accepting:
    """The protocol factory of a plain HTTP/1.1 listener: a ClientConnection on the
    holder's current runtime (`holder.current`, swapped on reload). Compiled because
    with a connection per request the Python lambda it replaces was a frame per accept."""

    cdef object holder

    def __init__(self, holder):
        self.holder = holder

    def __call__(self):
        return ClientConnection(self.holder.current)


cdef class Admission:
    """The per-connection half of listeners.AcceptGate (max_connections), compiled.

    With a connection per request the gate's factory closure and its ConnectionSet.discard
    override were two interpreted frames per connection. Here the count and the check are
    C; the gate (Python) is called only at the limit (`over`: pause, hold the connection)
    and, on a close, only while it is paused or holds waiting connections (`alert`).

    `pending` counts connections whose protocol was made at accept but which are not in
    `connections` yet (see AcceptGate); it is cleared once per loop turn. `limit` is the
    current max_connections, set by the gate (at start and on reload): a getter called
    per accept was ~800 instructions of a ~31k-instruction connection.
    """

    cdef public object connections   # the gate's ConnectionSet (a set)
    cdef public long pending
    cdef public long limit
    cdef public bint alert           # the gate is paused or holds waiting connections
    cdef bint scheduled
    cdef object gate, call_soon, reset_cb

    def __init__(self, gate, connections, long limit, loop):
        self.gate = gate
        self.connections = connections
        self.limit = limit
        self.call_soon = loop.call_soon
        self.reset_cb = self.reset
        self.pending = 0
        self.alert = False
        self.scheduled = False

    def reset(self):
        """Once per loop turn: connections made this turn are in the set by now."""
        self.scheduled = False
        self.pending = 0

    def factory(self, make):
        """A protocol factory for loop.create_server: make() within the limit."""
        if type(make) is Accepting:
            return GatedAccepting(self, make)
        return Gated(self, make)

    cdef object admit(self, make):
        cdef Py_ssize_t count
        cdef long limit
        if not self.scheduled:
            self.scheduled = True
            self.call_soon(self.reset_cb)
        count = len(self.connections) + self.pending
        limit = self.limit
        if count >= limit:
            return self.gate.over(make)
        self.pending += 1
        if count + 1 >= limit:   # this one is the last: the next ones wait in the backlog
            self.gate.pause()
        return None

    cdef inline void discard(self, conn) except *:
        if PySet_Discard(self.connections, conn) == 1 and self.alert:
            self.gate.below_limit()


cdef class Gated:
    """A gated protocol factory (any protocol)."""

    cdef Admission adm
    cdef object make

    def __init__(self, Admission adm, make):
        self.adm = adm
        self.make = make

    def __call__(self):
        held = self.adm.admit(self.make)
        return self.make() if held is None else held


cdef class GatedAccepting:
    """A gated Accepting: the plain HTTP/1.1 listener's factory, no call in between."""

    cdef Admission adm
    cdef Accepting make
    cdef object holder

    def __init__(self, Admission adm, Accepting make):
        self.adm = adm
        self.make = make
        self.holder = make.holder

    def __call__(self):
        held = self.adm.admit(self.make)
        return ClientConnection(self.holder.current) if held is None else held


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
    # Called with each piece of the request body as it is forwarded (framing as sent
    # upstream), then with None once the body is complete; None = no copy (shadowing).
    cdef public object body_tap
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
    cdef bint started          # a request head was parsed on this connection
    # The client half-closed with pipelined requests still to answer: they are answered,
    # then the connection closes (eof_last: the request being begun is the last one).
    cdef bint client_eof, eof_last
    cdef public double deadline, t_start, upstream_time
    cdef public long long body_left, sent, received
    cdef public str client_ip, detail
    cdef public bytes client_ip_b
    cdef public object hash_key
    cdef double client_header, client_idle, client_body, client_send
    cdef long long max_body, stash_limit
    cdef public long long buffer_limit    # public: server/h2.py streams gRPC bodies (0)
    cdef public object twrite      # transport.write, bound once (a lookup saved per write)
    # Cache hits are written straight to this plain TCP socket when the transport holds
    # nothing (relay_hitwrite.pxi): -2 not known yet, -1 not a plain uvloop TCP transport.
    cdef int direct_fd
    cdef object t_pending          # transport.get_write_buffer_size, bound with direct_fd
    # The version requests arrived in when the head is a translation (20: an HTTP/2
    # stream hands its relay HTTP/1.1 heads); 0: as parsed. Via says it (RFC 9110 7.6.3).
    cdef public int received_version
    cdef object access_log
    cdef ListenerSettings ls
    cdef public object body_filter  # this response's body filter, or None
    cdef bint filter_chunked        # the filtered body goes out chunked (else close-delimited)

    def __init__(self, rt):
        self._init(rt)

    cdef int _init(self, rt) except -1:
        """__init__'s body: the compiled accept path (relay_accept.pxi) makes connections
        with __new__ and this, without the constructor call's argument handling."""
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
        self.client_send = ls.client_send
        self.handler = ls.handler
        self.counters = ls.counters
        self.fast_hits = ls.fast_hits
        self.fast = ls.fast
        self.direct_fd = -2
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
        return 0

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
        self.body_filter = None
        self.body_tap = None

    # -- the response sink (the exchange, see ext/relay.pyx) ----------------------

    cdef int send_head(self, bytes head) except -1:
        """The response head (with any body bytes that follow it), serialised for this client."""
        t = self.transport
        if type(t) is SockTransport:
            (<SockTransport>t).send_parts(None, head, 0, -1)
        else:
            self.twrite(head)
        return 0

    cdef int send_head_body(self, bytes head, data, Py_ssize_t pos, Py_ssize_t n) except -1:
        """head (None: no head) and the body bytes data[pos:pos + n] in this client's
        framing, in one write: on the compiled accept path's sockets one writev with no
        copy of the body (a profile of 4 KiB responses showed the slice and the join
        as the largest user-space copies of a relayed request)."""
        t = self.transport
        if type(t) is SockTransport:
            (<SockTransport>t).send_parts(head, data, pos, n)
        elif head is None:
            self.twrite(_piece(data, pos, n))
        else:
            self.twrite(head + data[pos:pos + n])
        return 0

    cdef int send_data(self, data) except -1:
        """Body bytes already in this client's framing (the HTTP/1.1 pass-through
        specialisation: Content-Length copy, validated chunked copy, 1xx heads)."""
        t = self.transport
        if type(t) is SockTransport:
            (<SockTransport>t).send_parts(None, data, 0, -1)
        else:
            self.twrite(data)
        return 0

    cdef int send_datav(self, parts) except -1:
        """send_data for several pieces in one transport call."""
        self.transport.writelines(parts)
        return 0

    cdef int send_body(self, data) except -1:
        """Response body bytes (identity, unframed) when a filter is active; the filter's
        exceptions propagate (the caller cuts the connection)."""
        self._framed(self.body_filter.feed(data))
        return 0

    cdef int send_flush(self) except -1:
        """The origin has nothing more readable right now: let pending output through."""
        self._framed(self.body_filter.flush())
        return 0

    cdef int send_end(self, bytes trailers=None) except -1:
        """The body is complete: the filter's tail and the closing frame, with the
        origin's trailer section (kept_trailers(): fields, then CRLF) when it had one."""
        f = self.body_filter
        if f is not None:
            self.body_filter = None
            self._framed(f.finish())
            if self.filter_chunked:
                self.twrite(LAST_CHUNK if trailers is None else b"0\r\n" + trailers)
        return 0

    cdef _framed(self, out):
        if out:
            self.sent += len(out)   # what the client gets (compressed), not the origin's size
            if self.filter_chunked:
                self.transport.writelines((chunk_header(len(out)), out, CRLF))
            else:
                self.twrite(out)

    # -- asyncio protocol -------------------------------------------------------

    def connection_made(self, transport):
        peer = transport.get_extra_info("peername")
        if peer:
            ip = peer[0]
            self.made(transport, ip, ip.encode(), peer[1])
        else:  # a UNIX socket, or a socket that died before we asked
            self.made(transport, "-", b"-", 0)

    cdef int made(self, transport, str ip, bytes ip_b, int port) except -1:
        """connection_made with the peer address given (the compiled accept path has it
        from accept4, as text and bytes, without a tuple or a method call)."""
        self.transport = transport
        self.twrite = transport.write
        self.client_ip = ip
        self.client_ip_b = ip_b
        self.client_port = port
        cdef ListenerSettings ls = self.ls
        if self.received_version != 20:
            # An HTTP/2 stream's relay is not a client connection: its Server is the one
            # counted against max_connections (and drained).
            conns = ls.connections
            if ls.admission is not None or type(conns) is set:
                # The gate's ConnectionSet keeps set.add: no method lookup and call.
                PySet_Add(conns, self)
            else:
                conns.add(self)
        ls.deadline_set.add(self)
        ls.open += 1
        self.counted = True
        self.deadline = _now() + self.client_header
        if ls.draining:
            self.closing = True
        if ls.hooks:
            self.handler.connection_made(self)
        return 0

    cpdef connection_lost(self, exc):
        self.state = S_CLOSED
        cdef ListenerSettings ls = self.ls
        if ls.admission is not None:
            ls.admission.discard(self)
        else:
            ls.connections.discard(self)
        ls.deadline_set.discard(self)
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

    cpdef detach(self):
        """Give the socket to another protocol (HTTP/2): forget it here, log nothing."""
        cdef ListenerSettings ls = self.ls
        self.state = S_CLOSED
        if ls.admission is not None:
            ls.admission.discard(self)
        else:
            ls.connections.discard(self)
        ls.deadline_set.discard(self)
        self.deadline = 0.0
        self.transport = None
        self.twrite = None
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

    cpdef data_received(self, data):
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

    cpdef eof_received(self):
        # A client that half-closes after its request still gets its response
        # (RFC 9112 9.6), and so do the complete requests it pipelined before the FIN;
        # close once the last of them is answered.
        if (self.state == S_BODY and self.req is not None and not self.buf
                and not self.resp_started):
            # The body is cut short: no byte can complete it now (RFC 9112 8). Close,
            # as connection_lost then logs 499 and frees the upstream; held open, the
            # connection would wait for the body timeout and hold up a drain.
            return False
        if (self.state == S_WAIT or self.state == S_BODY) and self.req is not None:
            if self.buf:
                self.client_eof = True
            else:
                self.keep_alive = False
            return True
        if self.state == S_HEAD and self.buf and self.started:
            # Between two pipelined requests (the next one starts on the next turn).
            self.client_eof = True
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
        if self.state == S_WAIT:
            # The upstream's idle timer stops with its reading; this one says how long
            # the client may leave the response unread (nginx's send_timeout).
            self.deadline = _now() + self.client_send

    def resume_writing(self):
        self.write_paused = False
        if self.state == S_WAIT:
            self.deadline = 0.0
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
            if (exc.status == 505 and self.ls.h2_switch is not None and not self.started
                    and data[:16] == H2_PREFACE_LINE):
                # HTTP/2 with prior knowledge (RFC 9113 3.3) on this HTTP/1.1 port.
                self.ls.h2_switch(self, bytes(data))
                return
            self.reject(exc.status, str(exc))
            return
        if req is None:
            if self.client_eof:
                # The client has half-closed: the rest of this head will never come.
                self.buf = None
                self.close()
                return
            if self.buf is None:
                # First bytes of a new head: from now on the whole head must arrive
                # within client_header (slow-loris guard), however it trickles in.
                self.buf = bytearray(data)
                self.deadline = _now() + self.client_header
            return
        self.buf = None
        pos = req.head_length
        if self.client_eof:
            # No more bytes after this head: its response is the last (Connection: close).
            self.eof_last = req.body == BODY_NONE and pos >= len(data)
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
        self.started = True
        if self.received_version:
            req.version = self.received_version
        self.req = req
        self.t_start = _wall()
        self.head_request = req.method is METHOD_HEAD or req.method == METHOD_HEAD
        self.deadline = 0.0
        self.keep_alive = req.keep_alive and not self.closing and not self.eof_last
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
                self.status = hits.status
                self.resp_started = True
                self.sent += hits.body_len
                if not write_hit(self, out):
                    if type(out) is bytes:
                        self.twrite(out)
                    else:
                        self.transport.writelines(out)
                self.exchange_done(self.keep_alive and self.body_done)
                return
        cdef FastForward fast = self.fast
        if fast is None or fast.forward(self, req) == X_CONTINUE:
            if self.handler.dispatch(self, req) != X_STOP and self.req is req \
                    and not self.resp_started and self.upstream is None:
                self.respond_error(500, "no request step answered")
        if (req.expect_continue and kind != BODY_NONE and self.state == S_BODY
                and req.version >= 11 and not self.resp_started):
            # We answer 100 ourselves once the request is admitted and routed (as nginx
            # does) and drop Expect upstream, so an upstream that ignores Expect cannot
            # stall the client. RFC 9110 10.1.1.
            self.twrite(_CONTINUE_100)

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
                piece = _piece(data, pos, n)
                if self.body_tap is not None:
                    self.body_tap(piece)
                if up is not None:
                    up.write(piece)
                else:
                    self._hold(piece)
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
                self._body_error(exc.status, str(exc))
                return avail
            if n:
                self.received += n
                # The limit is on the body (RFC 9112 7.1's chunk-data), not its framing.
                if self.max_body and dec.content > self.max_body:
                    self._body_error(413, f"request body is over the {self.max_body}-byte "
                                          "limit")
                    return avail
                piece = _chunked_out(dec, data, pos, n)
                if piece and self.body_tap is not None:
                    self.body_tap(piece)
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
        # A client that stopped reading while it still sent its body: see pause_writing.
        self.deadline = _now() + self.client_send if self.write_paused else 0.0
        tap = self.body_tap
        if tap is not None:
            self.body_tap = None
            tap(None)
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
            self.t_start = _wall()
        t = self.transport
        if t is not None and not t.is_closing():
            data = error_response(status, detail, True, extra, self.head_request)
            t.write(data)
            self.sent += _body_bytes(data)     # the access log counts the proxy's own answers
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
        if self.client_eof and not self.buf:
            keep = False    # the half-closed client's last pipelined request is answered
        if keep and self.ls.successor is not None:
            self._follow()  # a reload came during this exchange: the next request is the new one's
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
            if type(t) is SockTransport:
                (<SockTransport>t).close()      # the compiled accept path's: no lookup
            else:
                t.close()

    cpdef log(self):
        cdef Counters c = self.counters
        if c is not None:
            c.count(self.status, self.sent, self.received)
        al = self.access_log
        if al is not None:
            if type(al) is Recorder:
                (<Recorder>al).record(self)     # the admin's counters, in C (relay_stats.pxi)
            else:
                al.write(self)

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
        cdef UpstreamConnection up
        if state == S_WAIT and self.write_paused:
            # The client stopped reading the response: its fault, not the upstream's.
            up = self.upstream
            if up is not None:
                self.upstream = None
                up.abandon()
            self.abort(f"client stalled: did not read the response for {self.client_send:g}s")
        elif state == S_HEAD:
            if self.buf:
                self.reject(408, "request head not received in time")
            elif self.write_paused and self.transport is not None:
                self.transport.abort()  # close() would wait for a flush that never comes
                self.state = S_CLOSED
            else:
                self.close()  # idle keep-alive connection: close quietly
        elif state == S_BODY:
            self._body_error(408, "request body stalled")
        else:
            self.close()

    def follow(self):
        """A reload: an idle connection moves to the listener's newest generation now; one
        with an exchange in flight finishes it on its own and moves after (exchange_done)."""
        if self.ls.successor is None:
            return
        if self.state == S_HEAD:
            self._follow()
            if self.closing and not self.buf:
                self.close()
        elif self._newest() is None:
            self.closing = True     # the response in flight says Connection: close

    cdef ListenerSettings _newest(self):
        """The listener's newest settings, or None when this connection cannot move there:
        per-client connection counts live in each generation's handler, and the new one
        may refuse the connection with a 429 no request asked for. Such a connection
        closes after its exchange instead (idle: now), as nginx's old workers do."""
        cdef ListenerSettings ls = self.ls
        while ls.successor is not None:
            ls = ls.successor
        if self.ls.hooks or ls.hooks:
            return None
        return ls

    cdef int _follow(self) except -1:
        """Take the newest generation's settings (handler, limits, timeouts, log, cache
        fast path) for the next request, as nginx's new workers serve every new request."""
        cdef ListenerSettings old = self.ls
        cdef ListenerSettings ls
        if self.received_version == 20:
            return 0        # an HTTP/2 stream's relay: its connection drains (GOAWAY)
        ls = self._newest()
        if ls is None:
            self.closing = True
            return 0
        old.deadline_set.discard(self)
        if self.state != S_CLOSED:
            ls.deadline_set.add(self)
        if self.parser is not None:
            old.give_back(self.parser)
            self.parser = ls.take_parser()
        self.rt = ls.rt
        self.ls = ls
        self.max_body = ls.max_body
        self.stash_limit = ls.stash_limit
        self.buffer_limit = ls.buffer_limit
        self.client_header = ls.client_header
        self.client_idle = ls.client_idle
        self.client_body = ls.client_body
        self.client_send = ls.client_send
        self.handler = ls.handler
        self.counters = ls.counters
        self.fast_hits = ls.fast_hits
        self.fast = ls.fast
        self.access_log = ls.access_log
        if ls.draining:
            self.closing = True
        if self.counted:
            ls.open += 1
            old.open -= 1
            if old.open == 0 and old.on_idle is not None:
                old.on_idle()
        return 0

    cpdef drain(self):
        """Graceful shutdown: finish the exchange in flight, then close."""
        self.closing = True
        if self.state == S_HEAD and not self.buf:
            self.close()
