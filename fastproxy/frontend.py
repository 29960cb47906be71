"""The client side of the data path: read a request, admit it, route it, write the response.

One `ClientConnection` (an asyncio.Protocol driven by uvloop callbacks) per accepted
socket. It parses request heads with the compiled parser, asks the listener's
handler (reverse or forward mode) where the request goes, streams the request body
to the upstream side (`backend.UpstreamConnection`) and receives the response from
it. Pipelined requests are answered strictly in order: while one exchange is in
flight, later bytes wait in a bounded buffer (reading pauses when it is full).

Timeouts use the worker's coarse deadline sweep (`timers.Deadlines`): each
connection has one `deadline` and the sweep calls `on_timeout`.
"""
from __future__ import annotations

import asyncio
import time

from fastproxy import _http
from fastproxy.errors import CONTINUE_100, error_response

ParseError = _http.ParseError
BODY_NONE = _http.BODY_NONE
BODY_LENGTH = _http.BODY_LENGTH
BODY_CHUNKED = _http.BODY_CHUNKED

# Connection states.
S_HEAD = 0      # waiting for (the rest of) a request head
S_BODY = 1      # request head sent on; streaming the request body
S_WAIT = 2      # request complete; waiting for the response to complete
S_TUNNEL = 3    # the connection became a byte tunnel (Upgrade / CONNECT)
S_CLOSED = 4

# Why reading from the client is paused (a bit each, so one cause cannot undo another).
P_UPSTREAM_FULL = 1    # the upstream's write buffer is above its high-water mark
P_BUFFER_FULL = 2      # too many pipelined bytes waiting
P_CONNECTING = 4       # the upstream is not connected yet and we hold its bytes

# Pipelined bytes we accept while an exchange is in flight, beyond one max head.
PIPELINE_SLACK = 65536
# RFC 9110 9.2.2: methods whose repetition has the same effect; safe to retry.
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))


class ClientConnection(asyncio.Protocol):
    """One client socket: requests in, responses out, in order."""

    __slots__ = (
        "rt", "loop", "transport", "parser", "buf", "state", "deadline", "client_ip",
        "client_port", "paused", "write_paused", "closing", "upstream", "req", "handler",
        "body_kind", "body_left", "chunks", "t_start", "status", "sent", "server",
        "keep_alive", "resp_started", "body_done", "replay", "tried", "retries",
        "head_request", "upstream_time", "detail", "received", "log_extra", "group",
        "hash_key", "client_ip_b",
    )

    def __init__(self, rt) -> None:
        self.rt = rt
        self.loop = rt.loop
        self.transport = None
        self.parser = _http.RequestParser(
            max_line=rt.limits.max_request_line,
            max_head=rt.limits.max_header_size,
            max_fields=rt.limits.max_header_fields,
        )
        self.handler = rt.handler
        self.buf = None
        self.state = S_HEAD
        self.deadline = 0.0
        self.paused = 0
        self.write_paused = False
        self.closing = False
        self.upstream = None
        self.req = None
        self.chunks = None
        self.group = None
        self.hash_key = 0
        self._reset_exchange()

    def _reset_exchange(self) -> None:
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
        self.upstream_time = -1.0
        self.detail = ""
        self.log_extra = None

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip, self.client_port = peer[0], peer[1]
        else:  # a UNIX socket or a socket that died before we asked
            self.client_ip, self.client_port = "-", 0
        self.client_ip_b = self.client_ip.encode()
        rt = self.rt
        rt.connections.add(self)
        rt.deadlines.add(self)
        self.deadline = self.loop.time() + rt.timeouts.client_header
        if rt.draining:
            self.closing = True

    def connection_lost(self, exc) -> None:
        self.state = S_CLOSED
        rt = self.rt
        rt.connections.discard(self)
        rt.deadlines.discard(self)
        self.deadline = 0.0
        up = self.upstream
        if up is not None:
            # The client went away mid-exchange: the upstream connection is in an
            # unknown state (part of a request or response unread), so it is not reused.
            self.upstream = None
            up.abandon()
        if self.req is not None and self.status == 0:
            self.status = 499  # nginx's code for "client closed the request"
            self.detail = "client closed connection"
            self._log()
        self.req = None

    def data_received(self, data) -> None:
        state = self.state
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
        if self.state in (S_WAIT, S_BODY) and self.req is not None:
            self.keep_alive = False
            return True
        return False

    def pause_writing(self) -> None:
        # The client reads slower than the upstream sends: stop reading the upstream.
        self.write_paused = True
        up = self.upstream
        if up is not None:
            up.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        up = self.upstream
        if up is not None:
            up.resume_reading()

    # -- reading requests -------------------------------------------------------

    def _on_input(self, data) -> None:
        """Parse a request head at the start of data and start its exchange."""
        try:
            req = self.parser.feed(data)
        except ParseError as exc:
            self.buf = None
            self._reject(exc.status, f"{exc.code}: {exc}")
            return
        if req is None:
            if self.buf is None:
                # First bytes of a new head: from now on the whole head must arrive
                # within client_header (slow-loris guard), however it trickles in.
                self.buf = bytearray(data)
                self.deadline = self.loop.time() + self.rt.timeouts.client_header
            return
        self.buf = None
        pos = req.head_length
        self._begin(req)
        state = self.state
        if state == S_BODY and pos < len(data):
            pos += self._feed_body(data, pos)
            state = self.state
        if pos < len(data) and state != S_CLOSED:
            self._stash(data, pos)

    def _stash(self, data, pos: int) -> None:
        """Keep bytes that arrived early (pipelined, or before an upstream connected)."""
        chunk = data[pos:] if pos else data
        if self.buf is None:
            self.buf = bytearray(chunk)
        else:
            self.buf += chunk
        if len(self.buf) > self.rt.limits.max_header_size + PIPELINE_SLACK:
            self.pause_reading(P_BUFFER_FULL)

    def _begin(self, req) -> None:
        """A complete head arrived: admit, route and start the exchange."""
        self.req = req
        self.t_start = time.time()
        self.head_request = req.method == b"HEAD"
        self.deadline = 0.0
        self.keep_alive = req.keep_alive and not self.closing
        kind = req.body
        self.body_kind = kind
        if kind == BODY_LENGTH:
            self.body_left = req.content_length
            if self.body_left == 0:
                self.body_kind = kind = BODY_NONE
        elif kind == BODY_CHUNKED:
            if self.chunks is None:
                self.chunks = _http.ChunkedDecoder()
            else:
                self.chunks.reset()
        self.body_done = kind == BODY_NONE
        max_body = self.rt.limits.max_body
        if max_body and kind == BODY_LENGTH and self.body_left > max_body:
            self._reject(413, f"request body of {self.body_left} bytes is over the "
                              f"{max_body}-byte limit")
            return
        if req.expect_continue:
            if kind == BODY_NONE or req.version < 11:
                pass  # nothing to wait for; RFC 9110 10.1.1 lets us ignore it
        elif req.get(b"expect") is not None:
            self._reject(417, "only 100-continue is supported in Expect")
            return
        self.state = S_BODY if kind != BODY_NONE else S_WAIT
        self.handler.dispatch(self, req)
        if req.expect_continue and kind != BODY_NONE and self.state == S_BODY \
                and req.version >= 11:
            # We answer 100 ourselves once the request is admitted and routed (as nginx
            # does) and drop Expect upstream, so an upstream that ignores Expect cannot
            # stall the client. RFC 9110 10.1.1.
            self.transport.write(CONTINUE_100)

    def _feed_body(self, data, pos: int) -> int:
        """Forward request body bytes from data[pos:]; return how many belong to it."""
        up = self.upstream
        kind = self.body_kind
        avail = len(data) - pos
        if kind == BODY_LENGTH:
            n = avail if avail < self.body_left else self.body_left
            if n:
                if pos == 0 and n == avail and type(data) is bytes:
                    piece = data
                else:
                    piece = bytes(data[pos:pos + n])
                self.body_left -= n
                self.received += n
                if up is not None:
                    up.write(piece)
            if self.body_left == 0:
                self._request_complete()
            elif self.rt.timeouts.client_body:
                self.deadline = self.loop.time() + self.rt.timeouts.client_body
            return n
        if kind == BODY_CHUNKED:
            dec = self.chunks
            try:
                n = dec.feed(data, pos)
            except ParseError as exc:
                self._body_error(exc.status, f"{exc.code}: {exc}")
                return avail
            if n:
                self.received += n
                max_body = self.rt.limits.max_body
                if max_body and self.received > max_body:
                    self._body_error(413, f"request body is over the {max_body}-byte limit")
                    return avail
                if up is not None:
                    up.write(bytes(data[pos:pos + n]) if (pos or n != avail or
                                                          type(data) is not bytes) else data)
            if dec.done:
                self._request_complete()
            elif self.rt.timeouts.client_body:
                self.deadline = self.loop.time() + self.rt.timeouts.client_body
            return n
        return 0

    def _request_complete(self) -> None:
        self.body_done = True
        self.deadline = 0.0
        if self.state == S_BODY:
            self.state = S_WAIT
        up = self.upstream
        if up is not None:
            up.request_sent()
        elif self.state == S_WAIT and self.status:
            # The response finished before the body did (an early answer); now both are done.
            self.exchange_done(self.keep_alive)

    def _body_error(self, status: int, detail: str) -> None:
        """The request body is malformed or too large: answer if we still can, then close."""
        self.keep_alive = False
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.abandon()
        if not self.resp_started:
            self._reject(status, detail)
        else:
            self._abort(detail)

    # -- writing responses ------------------------------------------------------

    def _reject(self, status: int, detail: str, extra: bytes = b"") -> None:
        """Answer with an error the proxy generates itself, then close."""
        self.status = status
        self.detail = detail
        if self.req is None:
            self.t_start = time.time()
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(error_response(status, detail, close=True, extra=extra,
                                   head_only=self.head_request))
            self.sent = 0
        self._log()
        self.req = None
        self._close()

    def respond_error(self, status: int, detail: str, extra: bytes = b"") -> None:
        """Answer an admitted request with an error; keep the connection when it is safe."""
        self.status = status
        self.detail = detail
        self.resp_started = True
        keep = self.keep_alive and self.body_done
        self.transport.write(error_response(status, detail, close=not keep, extra=extra,
                                            head_only=self.head_request))
        self.exchange_done(keep)

    def _abort(self, detail: str) -> None:
        """The response was already under way and cannot be completed: cut the connection."""
        self.detail = detail
        if self.status == 0:
            self.status = 502
        self._log()
        self.req = None
        if self.transport is not None:
            self.transport.abort()
        self.state = S_CLOSED

    def exchange_done(self, keep: bool) -> None:
        """The response is complete: log, then read the next request or close."""
        self.upstream = None
        if not self.body_done:
            # The upstream answered before the request body was complete (an early
            # 4xx, say). The rest of the body is still coming; we cannot tell it from
            # the next request without reading it, so close after this response.
            keep = False
        self._log()
        self._reset_exchange()
        if self.paused & P_UPSTREAM_FULL:
            self.resume_reading(P_UPSTREAM_FULL)
        if not keep or self.closing:
            self._close()
            return
        self.state = S_HEAD
        self.deadline = self.loop.time() + self.rt.timeouts.client_idle
        if self.buf:
            # Pipelined requests waited; carry on outside the upstream's callback.
            self.loop.call_soon(self._resume_pipeline)

    def _resume_pipeline(self) -> None:
        if self.state != S_HEAD or not self.buf:
            return
        buf = self.buf
        self.buf = None
        if self.paused & P_BUFFER_FULL:
            self.resume_reading(P_BUFFER_FULL)
        self.deadline = self.loop.time() + self.rt.timeouts.client_header
        self._on_input(bytes(buf))

    def _close(self) -> None:
        self.state = S_CLOSED
        self.deadline = 0.0
        t = self.transport
        if t is not None:
            t.close()

    def _log(self) -> None:
        log = self.rt.access_log
        if log is not None:
            log.write(self)

    # -- flow control -----------------------------------------------------------

    def pause_reading(self, why: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= why

    def resume_reading(self, why: int) -> None:
        was = self.paused
        self.paused = was & ~why
        if was and not self.paused and self.transport is not None \
                and not self.transport.is_closing():
            self.transport.resume_reading()

    # -- timeouts ---------------------------------------------------------------

    def on_timeout(self) -> None:
        """The deadline for the current phase passed."""
        state = self.state
        if state == S_HEAD:
            if self.buf:
                self._reject(408, "request head not received in time")
            else:
                self._close()  # idle keep-alive connection: close quietly
        elif state == S_BODY:
            self._body_error(408, "request body stalled")
        else:
            self._close()

    def tunnel_closed(self, up_bytes: int, down_bytes: int) -> None:
        """The Upgrade tunnel this connection became has ended."""
        self.state = S_CLOSED
        self.rt.connections.discard(self)

    def drain(self) -> None:
        """Graceful shutdown: finish the exchange in flight, then close."""
        self.closing = True
        if self.state == S_HEAD and not self.buf:
            self._close()
