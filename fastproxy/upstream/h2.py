"""HTTP/2 to upstream servers (`h2c://host:port`, or https by ALPN): the sidecar upgrade.

The relay's pools stay HTTP/1.1 state machines; a pool of an h2c server has an
`opener` that connects each of its UpstreamConnections to a `StreamLink` instead of a
socket. The relay writes an HTTP/1.1 request to the link; the link parses it (compiled
RequestParser, ChunkedDecoder), sends it as a stream on one multiplexed HTTP/2
connection to the server (`H2Origin`, fastproxy._h2 in the client role), and gives
the relay the response as HTTP/1.1 (`_h2msg.response_head`, chunked when the length is
unknown, trailers as chunked trailers). A kept-alive link sends its next request on a
new stream, so the relay's keep-alive, retries, timeouts and health accounting apply
unchanged while the server sees one connection carrying many streams.

Flow control: request DATA goes as the server's windows allow; the rest waits in the
link and the relay stops reading the client (pause_writing). Response DATA is credited
back to the server only as the relay takes it; while the relay's client is slow
(pause_reading) the link holds the stream's DATA, bounded by our window.

A stream refused by the server (REFUSED_STREAM, or above a GOAWAY's last stream) ends
the link with a connection error before any response byte: the relay retries it as it
would a stale keep-alive connection. `https://` servers of a group with
`protocol = "auto"` are offered ALPN h2: those that select it are spoken to as above
over TLS (`_Alpn` hands the connection over at the handshake), the others get the
relay's HTTP/1.1 connection.
"""
from __future__ import annotations

import asyncio
from typing import Any

from fastproxy import _h2, _h2msg, _http

_CRLF = b"\r\n"
STREAM_BUFFER = 65536        # request bytes a link holds before the client is paused
_IDLE, _BODY, _WAIT = range(3)


class H2Origin(_h2.Connection):
    """One HTTP/2 connection to a server (an asyncio protocol), shared by many links."""

    def __init__(self, loop, authority: bytes, max_header_list_size: int,
                 scheme: bytes = b"http") -> None:
        super().__init__(True, max_header_list_size=max_header_list_size)
        self.loop = loop
        self.authority = authority
        self.scheme = scheme
        self.transport: Any = None
        self.links: dict[int, StreamLink] = {}     # by open stream
        self.all_links: set[StreamLink] = set()    # idle ones too: told when we go
        self._flush_scheduled = False
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.flush()

    def data_received(self, data) -> None:
        try:
            self.feed(data)
        except Exception as exc:
            self.loop.call_exception_handler({"message": "HTTP/2 upstream failed",
                                              "exception": exc, "protocol": self})
            self.transport.abort()
            return
        self.flush()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.transport = None
        self.links.clear()
        for link in list(self.all_links):
            link.lost(exc or ConnectionResetError("HTTP/2 upstream connection closed"))
        self.all_links.clear()

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        pass    # request DATA is bounded by the server's windows and the links' buffers

    def resume_writing(self) -> None:
        pass

    def flush_soon(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        data = self.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        if self.dead and self.transport is not None:
            self.transport.close()

    @property
    def usable(self) -> bool:
        return not self.closed and not self.dead and self.goaway_received < 0

    # -- codec hooks ---------------------------------------------------------------

    def on_headers(self, stream_id, headers, end_stream) -> None:
        link = self.links.get(stream_id)
        if link is not None:
            link.response(headers, end_stream)

    def on_data(self, stream_id, data, end_stream) -> None:
        link = self.links.get(stream_id)
        if link is None:
            if data:
                self.acknowledge_received(stream_id, len(data))
            return
        link.response_data(bytes(data), end_stream)

    def on_trailers(self, stream_id, headers) -> None:
        link = self.links.get(stream_id)
        if link is not None:
            link.response_trailers(headers)

    def on_reset(self, stream_id, error_code, remote) -> None:
        link = self.links.pop(stream_id, None)
        if link is not None:
            link.lost(ConnectionResetError(f"HTTP/2 stream reset by the server ({error_code})"))

    def on_goaway(self, last_stream_id, error_code, debug) -> None:
        for sid in [s for s in self.links if s > last_stream_id]:
            self.links.pop(sid).lost(ConnectionResetError("HTTP/2 server sent GOAWAY"))

    def on_window_open(self, stream_id) -> None:
        link = self.links.get(stream_id)
        if link is not None:
            link.send_body()

    def on_connection_error(self, error_code, kind) -> None:
        self.flush_soon()


class StreamLink:
    """The transport of one relay UpstreamConnection: HTTP/1.1 in, HTTP/2 streams out."""

    def __init__(self, origin: H2Origin, up, max_head: int, max_fields: int) -> None:
        self.origin = origin
        self.up = up
        self.parser = _http.RequestParser(max_head=max_head, max_fields=max_fields)
        self.buf = b""
        self.state = _IDLE
        self.sid = 0
        self.left = 0
        self.chunks: _http.ChunkedDecoder | None = None
        self.out: list[bytes] = []     # request DATA the windows did not take yet
        self.out_bytes = 0
        self.out_end = False
        self.trailers: list | None = None
        self.blocked = False
        self.closing = False
        self.paused = False
        self.held: list[tuple[bytes, bool]] = []
        self.resp_chunked = False
        self.head_request = False

    # -- what the relay calls -----------------------------------------------------------

    def get_extra_info(self, name: str, default=None):
        t = self.origin.transport
        return t.get_extra_info(name, default) if t is not None else default

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data) -> None:
        """Request bytes from the relay."""
        if self.closing:
            return
        data = bytes(data)
        if self.state == _IDLE:
            self.buf += data
            self._head()
        elif self.state == _BODY:
            self._body(data)
        else:
            # The relay saw the whole response (its content-length) before the server's
            # END_STREAM: the next request waits for the stream to end (_done).
            self.buf += data
        self.origin.flush_soon()

    def writelines(self, buffers) -> None:
        for data in buffers:
            self.write(data)

    def close(self) -> None:
        """The relay is done with this connection: cancel a stream still open."""
        if self.closing:
            return
        self.closing = True
        if self.sid and self.origin.links.pop(self.sid, None) is self:
            self.origin.reset_stream(self.sid, _h2.CANCEL)
            self.origin.flush_soon()
        self.origin.all_links.discard(self)
        self.origin.loop.call_soon(self.up.connection_lost, None)

    abort = close

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        if not self.paused:
            return
        self.paused = False
        held, self.held = self.held, []
        for data, end in held:
            self.response_data(data, end)

    # -- the request -------------------------------------------------------------------

    def _head(self) -> None:
        try:
            req = self.parser.feed(self.buf)
        except _http.ParseError:
            self._fail(ConnectionResetError("request not understood by the HTTP/2 link"))
            return
        if req is None:
            return
        rest = self.buf[req.head_length:]
        self.buf = b""
        self.head_request = req.method == b"HEAD"
        authority = req.host or self.origin.authority
        headers = _h2msg.request_headers(req.method, self.origin.scheme, authority, req.target,
                                         req.headers())
        # The relay drops TE (hop-by-hop) but passes every response's trailers on (as
        # chunked trailers, or HTTP/2 trailers to an HTTP/2 client), so the link accepts
        # trailers whatever the client said (RFC 9113 8.2.2 allows `te: trailers`); gRPC
        # servers refuse a request without it.
        if not any(n == b"te" for n, _ in headers):
            headers.append((b"te", b"trailers"))
        kind = req.body
        sid = self.origin.send_request(headers, kind == _http.BODY_NONE)
        if sid <= 0:
            self._fail(ConnectionResetError("no HTTP/2 stream available"))
            return
        self.sid = sid
        self.origin.links[sid] = self
        if kind == _http.BODY_NONE:
            self.state = _WAIT
            return
        self.state = _BODY
        if kind == _http.BODY_LENGTH:
            self.left = req.content_length
            self.chunks = None
        else:
            self.chunks = _http.ChunkedDecoder()
        if rest:
            self._body(rest)

    def _body(self, data: bytes) -> None:
        if self.chunks is None:
            n = min(len(data), self.left)
            self.left -= n
            self._queue(data[:n], self.left == 0)
            return
        dec = self.chunks
        out: list = []
        try:
            dec.feed(data, 0, out)
        except _http.ParseError:
            self._fail(ConnectionResetError("bad chunked request body"))
            return
        body = b"".join(out)
        if not dec.done:
            self._queue(body, False)
            return
        fields = [(n.strip().lower(), v.strip()) for n, sep, v in
                  (line.partition(b":") for line in dec.kept_trailers().split(_CRLF)) if sep]
        if fields and _h2msg.validate(fields, "trailers") is None:
            self.trailers = fields
        self._queue(body, True)

    def _queue(self, data: bytes, end: bool) -> None:
        if data:
            self.out.append(data)
            self.out_bytes += len(data)
        if end:
            self.out_end = True
            self.state = _WAIT
        self.send_body()

    def send_body(self) -> None:
        """Send what the server's windows allow (again on on_window_open)."""
        origin = self.origin
        out = self.out
        while out:
            data = out[0]
            last = len(out) == 1 and self.out_end and self.trailers is None
            n = origin.send_data(self.sid, data, last)
            if n < 0:
                out.clear()
                self.out_bytes = 0
                self.out_end = False
                return
            self.out_bytes -= n
            if n < len(data):
                out[0] = data[n:]
                break
            out.pop(0)
            if last:
                self.out_end = False
        if not out and self.out_end:
            self.out_end = False
            if self.trailers is not None:
                origin.send_headers(self.sid, self.trailers, True)
                self.trailers = None
            else:
                origin.send_data(self.sid, b"", True)
        hold = self.out_bytes > STREAM_BUFFER
        if hold != self.blocked:
            self.blocked = hold
            if hold:
                self.up.pause_writing()
            else:
                self.up.resume_writing()
        origin.flush_soon()

    # -- the response ------------------------------------------------------------------

    def response(self, headers, end_stream: bool) -> None:
        body = not end_stream
        has_length = any(n == b"content-length" for n, _ in headers)
        self.resp_chunked = body and not self.head_request and not has_length
        if end_stream and not has_length and not self.head_request:
            status = next((v for n, v in headers if n == b":status"), b"")
            if status[:1] != b"1" and status not in (b"204", b"304"):
                # HEADERS that end the stream (a gRPC trailers-only answer): without a
                # length the HTTP/1.1 relay would read this response until the close.
                headers = [*headers, (b"content-length", b"0")]
        self.up.data_received(_h2msg.response_head(headers, body))
        if end_stream:
            self._done()

    def response_data(self, data: bytes, end: bool) -> None:
        if self.paused:
            self.held.append((data, end))
            return
        if data:
            if self.resp_chunked:
                self.up.data_received(_http.chunk_header(len(data)) + data + _CRLF)
            else:
                self.up.data_received(data)
            if self.sid:
                self.origin.acknowledge_received(self.sid, len(data))
                self.origin.flush_soon()
        if end:
            if self.resp_chunked:
                self.up.data_received(_http.LAST_CHUNK)
            self._done()

    def response_trailers(self, headers) -> None:
        if self.resp_chunked:
            lines = b"".join(n + b": " + v + _CRLF for n, v in headers)
            self.up.data_received(b"0\r\n" + lines + _CRLF)
        self._done()

    def _done(self) -> None:
        """The stream is over; the link is idle for the relay's next request."""
        self.origin.links.pop(self.sid, None)
        self.sid = 0
        self.state = _IDLE
        if self.buf and not self.closing:
            self._head()
            self.origin.flush_soon()

    def lost(self, exc: BaseException) -> None:
        """The stream or the connection went away."""
        self.sid = 0
        self.origin.all_links.discard(self)
        if not self.closing:
            self.closing = True
            self.up.connection_lost(exc)

    def _fail(self, exc: BaseException) -> None:
        if self.sid:
            self.origin.links.pop(self.sid, None)
            self.origin.reset_stream(self.sid, _h2.CANCEL)
            self.sid = 0
        self.lost(exc)


class _Alpn(asyncio.Protocol):
    """A new TLS connection until its handshake is done: hands it over by ALPN."""

    def __init__(self, owner: H2Upstream, up) -> None:
        self.owner = owner
        self.up = up
        self.origin: H2Origin | None = None

    def connection_made(self, transport) -> None:
        # Switched here, before the loop can deliver the server's first bytes.
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if chosen == "h2":
            self.origin = self.owner.adopt(transport)
        elif self.up is None:
            transport.close()      # wanted for HTTP/2 only (H2Upstream._connect)
        else:
            # http/1.1 (or no ALPN): the relay's connection speaks HTTP/1.1 over it.
            transport.set_protocol(self.up)
            self.up.connection_made(transport)


class H2Upstream:
    """The HTTP/2 connections to one server: h2c, or https that selected h2 by ALPN
    (`protocol = "auto"`, `ssl` given); a second connection opens when one is full."""

    def __init__(self, loop, server, max_head: int, max_fields: int, ssl=None) -> None:
        self.loop = loop
        self.server = server
        self.ssl = ssl
        self.speaks_h2 = False     # an https server said h2 once: share its connections
        self.authority = f"{server.host}:{server.port}".encode()
        self.max_head = max_head
        self.max_fields = max_fields
        self.conns: list[H2Origin] = []
        self._connecting: asyncio.Future | None = None

    async def open(self, up) -> None:
        """The pool's opener: connect `up` to a link on a connection with a free stream
        (an https server that did not select h2: `up` gets the TLS connection itself)."""
        if self.ssl is not None and not self.speaks_h2:
            _, alpn = await self.loop.create_connection(
                lambda: _Alpn(self, up), self.server.host, self.server.port,
                ssl=self.ssl, server_hostname=self.server.host)
            if alpn.origin is None:
                return
            origin = alpn.origin
        else:
            origin = await self._origin()
        link = StreamLink(origin, up, self.max_head, self.max_fields)
        origin.all_links.add(link)
        up.connection_made(link)

    async def _origin(self) -> H2Origin:
        self.conns = [c for c in self.conns if c.usable]
        for c in self.conns:
            if c.streams_available > 0:
                return c
        if self._connecting is None:
            self._connecting = self.loop.create_task(self._connect())
        task = self._connecting
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._connecting = None

    async def _connect(self) -> H2Origin:
        if self.ssl is not None:
            _, alpn = await self.loop.create_connection(
                lambda: _Alpn(self, None), self.server.host, self.server.port,
                ssl=self.ssl, server_hostname=self.server.host)
            if alpn.origin is None:
                raise ConnectionResetError(f"{self.server.name} no longer selects h2 (ALPN)")
            return alpn.origin
        _, origin = await self.loop.create_connection(
            lambda: H2Origin(self.loop, self.authority, self.max_head),
            self.server.host, self.server.port)
        self.conns.append(origin)
        return origin

    def adopt(self, transport) -> H2Origin:
        """An HTTP/2 connection of a TLS transport whose ALPN said h2."""
        origin = H2Origin(self.loop, self.authority, self.max_head, b"https")
        transport.set_protocol(origin)
        origin.connection_made(transport)
        self.conns.append(origin)
        self.speaks_h2 = True
        return origin

    def close(self) -> None:
        """Close every connection (the group is going away)."""
        for c in self.conns:
            if c.transport is not None:
                c.goaway(_h2.NO_ERROR)
                c.flush()
                c.transport.close()
        self.conns = []
