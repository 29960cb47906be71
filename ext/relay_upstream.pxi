# Included by ext/relay.pyx (one extension module: see the note there).
# Upstream side: UpstreamConnection; writes to the client only through the sink.

# RFC 9110 8.6: no Content-Length in a 1xx or 204 (whatever the origin sent; HTTP/2
# clients reset such a stream).
cdef tuple NO_LENGTH = (b"content-length",)

cdef inline bint _failures(server) except -1:
    """True when the server has consecutive failures on record (a C read for ours)."""
    if isinstance(server, Counted):
        return (<Counted>server).failures != 0
    return bool(server.failures)


cdef class UpstreamConnection:
    """One connection to an upstream server, reused across exchanges."""

    cdef public ConnectionPool pool
    cdef public object server, loop, transport, buf, connect_task
    cdef public ResponseParser parser
    cdef public ChunkedDecoder chunks
    cdef public list pending
    cdef public ClientConnection client
    cdef public int state, mode
    cdef public double deadline, t_sent, idle_since
    cdef public long requests
    cdef public bint reused, got_bytes, reusable, paused, sent_continue, counted
    cdef public bint timed_out     # this exchange failed by a timeout (never "stale")
    cdef public long long left
    cdef public bytes via       # the response's Via line (names the protocol received)
    cdef double upstream_idle
    cdef object twrite
    cdef SockTransport sock     # the transport when it is ours (relay_dial.pxi): C calls

    def __init__(self, ConnectionPool pool, server):
        self.pool = pool
        self.server = server
        self.loop = pool.loop
        self.upstream_idle = pool.timeouts.upstream_idle
        self.via = pool.via
        self.transport = None
        self.sock = None
        self.pending = None
        self.client = None
        self.parser = ResponseParser(max_head=pool.max_head, max_fields=pool.max_fields)
        self.state = U_CONNECTING
        self.deadline = 0.0
        self.idle_since = 0.0
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
        if self.sock is not None:
            self.sock.send_parts(None, data, 0, -1)
        elif self.transport is not None:
            self.twrite(data)
        elif self.pending is None:
            self.pending = [data]
        else:
            self.pending.append(data)

    cpdef request_sent(self):
        """The whole request went out: the response head clock starts. While connecting
        the request is only queued: the connect timeout keeps running, and connection_made
        starts this clock once the queued request is written."""
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
            if pool.opener is not None:
                await pool.opener(self)
            elif pool.direct and pool.ssl is None:
                await _dial(self, pool)
            else:
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
        self.sock = transport if type(transport) is SockTransport else None
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

    cpdef data_received(self, data):
        cdef int state = self.state
        cdef Py_ssize_t n
        cdef long long left
        cdef ClientConnection client
        if state == U_BODY:
            if self.client.body_filter is not None:
                self._filtered(data, 0)
                return
            if self.mode == M_LENGTH:
                client = self.client
                n = len(data)
                left = self.left
                if n < left:
                    self.left = left - n
                    client.sent += n
                    client.send_data(data)
                    if client.observer is not None:
                        client.observer.response_body(data)
                    self.deadline = _now() + self.upstream_idle
                    return
                client.sent += left
                if n == left:
                    client.send_data(data)
                    if client.observer is not None:
                        client.observer.response_body(data)
                else:
                    # Bytes after the end of a Content-Length body: the upstream is
                    # confused about framing, so never reuse this connection.
                    piece = data[:left]
                    client.send_data(piece)
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
                self._failed(502, f"invalid response from {self.server.name}: {exc}", False)
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
                client.send_data(resp.forward_c(None, self.via, NO_LENGTH, False))
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
        if client.received_version == 20 and client.ls.filter_factory is None and \
                status != 204 and client.transport.relay_head(resp, extra, self.left if mode == M_LENGTH
                                            else (0 if mode == M_NONE else -1)):
            # An HTTP/2 stream takes the head as parsed (ext/h2server.pyx relay_head): the
            # same fields, no HTTP/1.1 head made for it to parse again; the body follows
            # in the framing above.
            head = None
        else:
            head = resp.forward_c(None if resp.version == 11 else
                                  b"HTTP/1.1 %d %s" % (status, resp.reason), extra,
                                  NO_LENGTH if status == 204 else (), False)
        if client.ls.filter_factory is not None and mode == M_NONE and client.head_request \
                and status != 204 and status != 304:
            # HEAD: the filter sees the head so it is the one the GET would get (RFC 9110
            # 9.3.2); no body follows, so the filter is dropped after start().
            try:
                head = self._filter_start(client, status, head, http11, False)
            except Exception as exc:
                self._broken(f"response filter failed: {exc!r}")
                return
        elif client.ls.filter_factory is not None and status == 304:
            # A 304 stands for the 200 (RFC 9110 15.4.5): its ETag and Vary as the filter
            # would send them (a weak ETag for an encoded 200); no body, framing kept.
            try:
                head = self._filter_start(client, status, head, http11, False)
            except Exception as exc:
                self._broken(f"response filter failed: {exc!r}")
                return
        if client.ls.filter_factory is not None and mode != M_NONE and not client.head_request:
            try:
                head = self._filter_start(client, status, head, http11, True)
            except Exception as exc:
                self._broken(f"response filter failed: {exc!r}")
                return
            if client.body_filter is not None:
                client.send_head(head)
                self.deadline = now + self.upstream_idle
                if pos < len(data) or (self.mode == M_LENGTH and self.left == 0):
                    self._filtered(data, pos)
                return
        rest = len(data) - pos
        if mode == M_LENGTH and rest >= self.left:
            n = <Py_ssize_t>self.left
            if rest > n:
                self.reusable = False
            client.sent += n
            if n:
                client.send_head_body(head, data, pos, n)
                if observer is not None:
                    observer.response_body(data[pos:pos + n])
            elif head is not None:
                client.send_head(head)
            self._finish()
            return
        if mode == M_NONE:
            if rest:
                self.reusable = False
            if head is not None:
                client.send_head(head)
            self._finish()
            return
        self.deadline = now + self.upstream_idle
        if rest and mode == M_LENGTH:
            # The head and the body bytes read with it go out in one write.
            self.left -= rest
            client.sent += rest
            client.send_head_body(head, data, pos, rest)
            if observer is not None:
                observer.response_body(_piece(data, pos, rest))
            return
        if head is not None:
            client.send_head(head)
        if rest:
            self._body(data, pos)

    cdef _body(self, data, Py_ssize_t pos):
        """Relay body bytes for the chunked and close-delimited modes."""
        cdef ClientConnection client = self.client
        cdef int mode = self.mode
        cdef Py_ssize_t n
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
                        client.send_data(piece)
            elif out:
                client.send_datav([bytes(p) for p in out])
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
                client.send_datav((chunk_header(n), piece, CRLF))
                client.sent += n
                if observer is not None:
                    observer.response_body(piece)
        elif mode == M_CLOSE_RAW:
            n = len(data) - pos
            piece = _piece(data, pos, n)
            client.send_data(piece)
            client.sent += n
            if observer is not None:
                observer.response_body(piece)

    cdef bytes _filter_start(self, ClientConnection client, int status, bytes head,
                             bint http11, bint body):
        """Offer the response to the listener's body filter (the contract: proxy/filters.py);
        return the head to send: as it was when the filter steps aside, else the filter's
        fields with the relay's own framing (chunked to 1.1, close-delimited to 1.0)."""
        cdef Request req = client.req
        f = client.ls.filter_factory(req.method, req, req.version)
        if f is None:
            return head
        lines = head.split(CRLF)
        fields = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b":")
                fields.append((name, value.strip()))
        chosen = f.start(status, fields)
        if chosen is None:
            return head
        out = [lines[0]]
        for name, value in chosen:
            low = name.lower()
            # Framing and connection handling stay the relay's, whatever the filter left.
            if low != b"content-length" and low != b"transfer-encoding" and low != b"connection":
                out.append(name + b": " + value)
        if getattr(f, "body_unchanged", False):
            # Only fields changed (compression's identity answer gains Vary): the body goes
            # as the relay framed it, Content-Length and all (wget sends identity).
            for name, value in fields:
                low = name.lower()
                if low == b"content-length" or low == b"transfer-encoding" or low == b"connection":
                    out.append(name + b": " + value)
            out.append(b"")
            out.append(b"")
            return CRLF.join(out)
        if http11:
            out.append(b"Transfer-Encoding: chunked")
        else:
            client.keep_alive = False
        if not client.keep_alive:
            out.append(b"Connection: close")
        elif not http11:
            out.append(b"Connection: keep-alive")
        out.append(b"")
        out.append(b"")
        if not body:
            return CRLF.join(out)
        # The body reaches the filter unframed: decode chunked input, frame in the sink.
        if self.mode == M_CHUNKED:
            self.mode = M_DECHUNK
        elif self.mode == M_CLOSE_CHUNK:
            self.mode = M_CLOSE_RAW
        client.body_filter = f
        client.filter_chunked = http11
        return CRLF.join(out)

    cdef _filtered(self, data, Py_ssize_t pos):
        """Body bytes of a filtered response: unframe, feed the filter, flush when drained.
        client.sent counts the filter's output (ClientConnection._framed), not this input."""
        cdef ClientConnection client = self.client
        cdef int mode = self.mode
        cdef Py_ssize_t n
        cdef bint done = False
        cdef bytes trailers = None
        observer = client.observer
        self.deadline = _now() + self.upstream_idle
        try:
            if mode == M_LENGTH:
                n = len(data) - pos
                if n > self.left:
                    n = <Py_ssize_t>self.left
                    self.reusable = False
                if n:
                    piece = _piece(data, pos, n)
                    self.left -= n
                    if observer is not None:
                        observer.response_body(piece)
                    client.send_body(piece)
                done = self.left == 0
            elif mode == M_DECHUNK:
                out = []
                try:
                    n = self.chunks.feed_c(data, pos, out)
                except ParseError as exc:
                    self._broken(f"bad chunked body from {self.server.name}: {exc.code}")
                    return
                for p in out:
                    piece = bytes(p)
                    if observer is not None:
                        observer.response_body(piece)
                    client.send_body(piece)
                if self.chunks.done:
                    if pos + n < len(data):
                        self.reusable = False
                    done = True
                    # The origin's trailers go on after the filtered body (RFC 9110 6.5).
                    trailers = self.chunks.kept_trailers()
            else:  # M_CLOSE_RAW: the end is the upstream's close (connection_lost)
                n = len(data) - pos
                if n:
                    piece = _piece(data, pos, n)
                    if observer is not None:
                        observer.response_body(piece)
                    client.send_body(piece)
            if done:
                client.send_end(trailers)
            else:
                client.send_flush()
        except Exception as exc:
            self._broken(f"response filter failed: {exc!r}")
            return
        if done:
            self._finish()

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
        client.send_head(resp.forward_head(
            None if resp.version == 11 else b"HTTP/1.1 101 Switching Protocols",
            self.via + CONNECTION_UPGRADE, (), True))
        to_client = bytes(data[pos:]) if pos < len(data) else b""
        to_upstream = client.take_buffered()
        pool = self.pool
        self.pool.forget(self)
        self.sock = None      # the transport is the tunnel's now
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
        client.send_datav(more)
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
                                                  _failures(self.pool.server)):
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

    cpdef connection_lost(self, exc):
        cdef int state = self.state
        cdef ClientConnection client
        self.state = U_CLOSED
        self.deadline = 0.0
        self.pool.forget(self)
        self.transport = None
        self.sock = None
        if state == U_BODY and self.client is not None:
            client = self.client
            if self.mode == M_CLOSE_CHUNK:
                client.send_data(LAST_CHUNK)
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
        if client.body_filter is not None:
            try:
                client.send_end()
            except Exception as exc:
                self._broken(f"response filter failed: {exc!r}")
                return
        self.client = None
        self.pool.release_server()
        client.exchange_done(client.keep_alive)

    cpdef eof_received(self):
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
            if self.paused:
                return  # the client is not reading (its client_send timer decides)
            self._broken(f"{self.server.name} stalled mid-body")
        elif state == U_IDLE and self.client is None:
            self.pool.idle_expired(self)
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
