"""The upstream side of the data path: send the request, relay the response back.

An `UpstreamConnection` is one connection to one upstream server, kept by a
`pool.ConnectionPool` between exchanges. During an exchange it is paired with a
`frontend.ClientConnection`: it writes the request bytes the client side hands it
(queued until the connection is up), parses the response head with the compiled
parser, rewrites the head once (hop-by-hop fields, Via, framing), and streams the
body to the client with backpressure, re-framing it when the two sides need
different framing (RFC 9112 section 6):

    upstream framing     HTTP/1.1 client            HTTP/1.0 client
    Content-Length       Content-Length             Content-Length
    chunked              chunked (validated, as is) de-chunked, close-delimited
    close-delimited      chunked                    close-delimited
"""
from __future__ import annotations

import asyncio

from fastproxy import _http
from fastproxy.tunnel import splice

ParseError = _http.ParseError
BODY_NONE = _http.BODY_NONE
BODY_LENGTH = _http.BODY_LENGTH
BODY_CHUNKED = _http.BODY_CHUNKED
BODY_CLOSE = _http.BODY_CLOSE
chunk_header = _http.chunk_header
LAST_CHUNK = _http.LAST_CHUNK

# Upstream connection states.
U_CONNECTING = 0
U_IDLE = 1          # in the pool
U_SENDING = 2       # request head (and maybe body) going out, no response yet
U_HEAD = 3          # request complete, waiting for the response head
U_BODY = 4          # relaying the response body
U_CLOSED = 5

# How the response body reaches the client.
M_NONE = 0
M_LENGTH = 1        # Content-Length: count and copy
M_CHUNKED = 2       # chunked in, chunked out: validate and copy
M_DECHUNK = 3       # chunked in, close-delimited out (HTTP/1.0 client)
M_CLOSE_CHUNK = 4   # close-delimited in, chunked out (HTTP/1.1 client)
M_CLOSE_RAW = 5     # close-delimited in and out

CRLF = b"\r\n"
CONNECTION_CLOSE = b"Connection: close\r\n"
CONNECTION_KEEP_ALIVE = b"Connection: keep-alive\r\n"
CONNECTION_UPGRADE = b"Connection: upgrade\r\n"
TE_CHUNKED = b"Transfer-Encoding: chunked\r\n"


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream server, reused across exchanges."""

    __slots__ = (
        "pool", "server", "loop", "transport", "pending", "client", "parser", "state",
        "deadline", "requests", "reused", "got_bytes", "mode", "left", "chunks", "buf",
        "reusable", "t_sent", "paused", "connect_task", "timeouts", "via", "sent_continue",
        "counted",
    )

    def __init__(self, pool, server) -> None:
        self.pool = pool
        self.server = server
        self.loop = pool.loop
        self.timeouts = pool.timeouts
        self.via = pool.via
        self.transport = None
        self.pending = None
        self.client = None
        self.parser = _http.ResponseParser(max_head=pool.max_head, max_fields=pool.max_fields)
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

    # -- exchange control (called by the client side) ---------------------------

    def begin(self, client, head: bytes) -> None:
        """Start an exchange for client: send the request head."""
        self.client = client
        self.requests += 1
        self.got_bytes = False
        self.reusable = True
        self.buf = None
        self.sent_continue = client.req.expect_continue
        self.pool.server.active += 1
        if self.state == U_IDLE:
            self.state = U_SENDING
        self.write(head)
        if client.write_paused:
            self.pause_reading()

    def write(self, data) -> None:
        """Send request bytes now, or queue them until the connection is up."""
        t = self.transport
        if t is not None:
            t.write(data)
        elif self.pending is None:
            self.pending = [data]
        else:
            self.pending.append(data)

    def request_sent(self) -> None:
        """The whole request went out (or is queued): the response head clock starts."""
        if self.state in (U_SENDING, U_CONNECTING):
            if self.state == U_SENDING:
                self.state = U_HEAD
            self.t_sent = self.loop.time()
            self.deadline = self.t_sent + self.pool.read_timeout

    def abandon(self) -> None:
        """The client side gave up on this exchange: the connection cannot be reused."""
        if self.client is not None:
            self.client = None
            self.pool.server.active -= 1
        self.close()

    def pause_reading(self) -> None:
        if not self.paused:
            self.paused = True
            if self.transport is not None:
                self.transport.pause_reading()
            self.deadline = 0.0  # a slow client is not an idle upstream

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            t = self.transport
            if t is not None and not t.is_closing():
                t.resume_reading()
            if self.state == U_BODY:
                self.deadline = self.loop.time() + self.timeouts.upstream_idle

    def pause_writing(self) -> None:
        # The upstream reads the request body slower than the client sends it.
        if self.client is not None:
            self.client.pause_reading(1)  # P_UPSTREAM_FULL

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_reading(1)

    # -- connecting -------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection in the background; failures reach the client side."""
        self.connect_task = self.loop.create_task(self._connect())
        self.deadline = self.loop.time() + self.pool.connect_timeout

    async def _connect(self) -> None:
        server = self.server
        try:
            await self.loop.create_connection(
                lambda: self, server.host, server.port, ssl=self.pool.ssl,
                server_hostname=server.host if self.pool.ssl else None)
        except asyncio.CancelledError:
            if self.client is not None:  # else: abandoned, nobody to tell
                self._failed(504, f"connect to {server.name} timed out", connect=True)
        except OSError as exc:
            self._failed(502, f"connect to {server.name} failed: "
                              f"{exc.strerror or exc.__class__.__name__}", connect=True)
        finally:
            self.connect_task = None

    def connection_made(self, transport) -> None:
        self.transport = transport
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
                self.t_sent = self.loop.time()
                self.deadline = self.t_sent + self.pool.read_timeout
            else:
                self.state = U_SENDING
            self.client.resume_reading(4)  # P_CONNECTING
            if self.paused:
                transport.pause_reading()

    # -- receiving the response -------------------------------------------------

    def data_received(self, data) -> None:
        state = self.state
        if state == U_BODY:
            mode = self.mode
            if mode == M_LENGTH:
                n = len(data)
                left = self.left
                client_t = self.client.transport
                if n < left:
                    self.left = left - n
                    self.client.sent += n
                    client_t.write(data)
                    self.deadline = self.loop.time() + self.timeouts.upstream_idle
                    return
                self.client.sent += left
                if n == left:
                    client_t.write(data)
                else:
                    # Bytes after the end of a Content-Length body: the upstream is
                    # confused about framing, so never reuse this connection.
                    client_t.write(data[:left])
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

    def _head(self, data) -> None:
        client = self.client
        pos = 0
        while True:
            try:
                resp = self.parser.feed(data, pos, client.head_request, False)
            except ParseError as exc:
                self._failed(502, f"invalid response from {self.server.name}: "
                                  f"{exc.code}: {exc}")
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
                client.transport.write(resp.forward_head(None, self.via))
            if pos >= len(data):
                return
        if status == 101:
            self._upgrade(resp, data, pos)
            return
        client.status = status
        client.resp_started = True
        loop_now = self.loop.time()
        client.upstream_time = loop_now - self.t_sent if self.t_sent else 0.0
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
            self.mode = M_LENGTH
            self.left = resp.content_length
        elif kind == BODY_NONE:
            self.mode = M_NONE
        elif kind == BODY_CHUNKED:
            if self.chunks is None:
                self.chunks = _http.ChunkedDecoder()
            else:
                self.chunks.reset()
            if http11:
                self.mode = M_CHUNKED
                extra += TE_CHUNKED
            else:
                self.mode = M_DECHUNK
                client.keep_alive = False
        else:  # BODY_CLOSE: the body ends when the upstream closes
            self.reusable = False
            if http11:
                self.mode = M_CLOSE_CHUNK
                extra += TE_CHUNKED
            else:
                self.mode = M_CLOSE_RAW
                client.keep_alive = False
        if not client.body_done or client.closing:
            client.keep_alive = False
        if not client.keep_alive:
            extra += CONNECTION_CLOSE
        elif not http11:
            extra += CONNECTION_KEEP_ALIVE
        head = resp.forward_head(None if resp.version == 11 else
                                 b"HTTP/1.1 %d %s" % (status, resp.reason), extra)
        client_t = client.transport
        mode = self.mode
        rest = len(data) - pos
        if mode == M_LENGTH and rest >= self.left:
            n = self.left
            if rest > n:
                self.reusable = False
            client.sent += n
            client_t.write(head + data[pos:pos + n] if n else head)
            self._finish()
            return
        if mode == M_NONE:
            if rest:
                self.reusable = False
            client_t.write(head)
            self._finish()
            return
        client_t.write(head)
        self.deadline = loop_now + self.timeouts.upstream_idle
        if rest:
            if mode == M_LENGTH:
                piece = data[pos:]
                self.left -= rest
                client.sent += rest
                client_t.write(bytes(piece) if type(piece) is not bytes else piece)
            else:
                self._body(data, pos)

    def _body(self, data, pos: int) -> None:
        """Relay body bytes for the chunked and close-delimited modes."""
        client = self.client
        client_t = client.transport
        mode = self.mode
        self.deadline = self.loop.time() + self.timeouts.upstream_idle
        if mode == M_CHUNKED or mode == M_DECHUNK:
            dec = self.chunks
            out = [] if mode == M_DECHUNK else None
            try:
                n = dec.feed(data, pos, out)
            except ParseError as exc:
                self._broken(f"bad chunked body from {self.server.name}: {exc.code}")
                return
            if mode == M_CHUNKED:
                if n:
                    client_t.write(data if (pos == 0 and n == len(data) and
                                            type(data) is bytes) else bytes(data[pos:pos + n]))
            elif out:
                client_t.writelines([bytes(p) for p in out] if type(data) is not bytes
                                    else out)
            client.sent += n
            if dec.done:
                if pos + n < len(data):
                    self.reusable = False
                self._finish()
        elif mode == M_CLOSE_CHUNK:
            n = len(data) - pos
            if n:
                piece = data[pos:] if pos else data
                client_t.writelines((chunk_header(n), piece, CRLF))
                client.sent += n
        elif mode == M_CLOSE_RAW:
            piece = data[pos:] if pos else data
            client_t.write(piece)
            client.sent += len(piece)
        elif mode == M_LENGTH:  # only reached via _head's remainder path
            n = min(len(data) - pos, self.left)
            client_t.write(bytes(data[pos:pos + n]))
            self.left -= n
            client.sent += n
            if self.left == 0:
                self._finish()

    def _upgrade(self, resp, data, pos: int) -> None:
        """101 Switching Protocols: forward it, then both connections become a tunnel."""
        client = self.client
        if client.req.upgrade is None:
            self._failed(502, f"{self.server.name} switched protocols unasked")
            return
        client.status = 101
        client.resp_started = True
        client.upstream_time = self.loop.time() - self.t_sent if self.t_sent else 0.0
        client.transport.write(resp.forward_head(
            None if resp.version == 11 else b"HTTP/1.1 101 Switching Protocols",
            self.via + CONNECTION_UPGRADE, (), True))
        leftover_up = bytes(data[pos:]) if pos < len(data) else b""
        leftover_client = bytes(client.buf) if client.buf else b""
        client.buf = None
        self.pool.server.active -= 1
        self.pool.forget(self)
        self.state = U_CLOSED
        self.deadline = 0.0
        self.client = None
        client.upstream = None
        client.state = 3  # S_TUNNEL
        client.rt.deadlines.discard(client)
        client.deadline = 0.0
        client._log()
        splice(client.transport, self.transport, leftover_client, leftover_up,
               client.rt.timeouts.tunnel_idle, client.rt.deadlines,
               on_close=client.tunnel_closed)

    # -- ending an exchange -----------------------------------------------------

    def _finish(self) -> None:
        """The response is complete: hand the connection back and let the client go on."""
        client = self.client
        self.client = None
        self.state = U_IDLE
        self.deadline = 0.0
        self.pool.server.active -= 1
        if self.paused:
            self.paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        if self.reusable and client.body_done:
            self.pool.release(self)
        else:
            self.close()
        client.exchange_done(client.keep_alive)

    def _broken(self, detail: str) -> None:
        """The response broke after it started: the client connection must be cut."""
        client = self.client
        self.client = None
        self.pool.server.active -= 1
        self.close()
        if client is not None:
            client.upstream = None
            client._abort(detail)

    def _failed(self, status: int, detail: str, connect: bool = False) -> None:
        """No usable response: let the client side retry elsewhere or answer 502/504."""
        client = self.client
        self.client = None
        replayable = connect or (self.reused and not self.got_bytes)
        pending = self.pending
        self.pending = None
        if client is not None:
            self.pool.server.active -= 1
            self.pool.record_failure(self, connect)
        self.close()
        if client is not None and client.upstream is self:
            client.upstream = None
            client.handler.upstream_failed(client, self, status, detail,
                                           replayable, pending if connect else None)

    def connection_lost(self, exc) -> None:
        state = self.state
        self.state = U_CLOSED
        self.deadline = 0.0
        self.pool.forget(self)
        self.transport = None
        if state == U_BODY and self.client is not None:
            if self.mode == M_CLOSE_CHUNK:
                client = self.client
                client.transport.write(LAST_CHUNK)
                self._finish_closed(client)
            elif self.mode == M_CLOSE_RAW:
                self._finish_closed(self.client)
            else:
                self._broken(f"{self.server.name} closed the connection mid-body")
        elif state in (U_SENDING, U_HEAD) and self.client is not None:
            if self.got_bytes:
                self._failed(502, f"{self.server.name} closed the connection "
                                  "before a complete response head")
            else:
                self._failed(502, f"{self.server.name} closed the connection "
                                  "without a response")

    def _finish_closed(self, client) -> None:
        self.client = None
        self.pool.server.active -= 1
        client.exchange_done(client.keep_alive)

    def eof_received(self):
        return False  # close our side too; connection_lost does the bookkeeping

    def on_timeout(self) -> None:
        """The current wait (connect, response head, body idle, pool idle) ran out."""
        state = self.state
        if state == U_CONNECTING:
            if self.connect_task is not None:
                self.connect_task.cancel()
        elif state in (U_SENDING, U_HEAD):
            self._failed(504, f"{self.server.name} did not answer within "
                              f"{self.pool.read_timeout:g}s")
        elif state == U_BODY:
            self._broken(f"{self.server.name} stalled mid-body")
        else:
            self.close()

    def close(self) -> None:
        """Close the connection (it is not returned to the pool)."""
        if self.state != U_CLOSED:
            self.state = U_CLOSED
        self.deadline = 0.0
        self.pool.forget(self)
        t = self.transport
        if t is not None:
            t.close()
        elif self.connect_task is not None:
            self.connect_task.cancel()
