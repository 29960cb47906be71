"""HTTP/2 from clients (RFC 9113): each stream drives the HTTP/1.1 exchange path.

A client connection that starts with the HTTP/2 preface (prior knowledge on a plain
port) or negotiates `h2` by ALPN on a TLS listener gets an `H2Server`: the compiled
codec (fastproxy._h2) parses frames; every request stream gets its own relay
ClientConnection, so routing, the reverse and forward handlers, the cache, rate
limits, the access log and metrics run unchanged. The stream hands that connection
an HTTP/1.1 head built by fastproxy._h2msg.request_head from a header list the codec
has already checked (RFC 9113 8.1-8.3: nothing ambiguous reaches HTTP/1.1) and the
DATA (re-chunked when no content-length was given); what the relay writes back is an
HTTP/1.1 response, parsed by the compiled ResponseParser and sent as HEADERS, DATA
and trailers on the stream.

Flow control, both ways. In: a stream's DATA is acknowledged (the peer gets its
window back) only once its relay took it; when the relay stops reading (its upstream
is slow, the body is being buffered), the stream holds what arrives, bounded by the
window we advertised. Out: DATA goes as the windows allow; what they do not allow
waits per stream, and past `STREAM_BUFFER` bytes the stream's relay stops reading its
upstream (pause_writing), as for a slow HTTP/1.1 client; the socket's own backpressure
pauses every stream. A peer that keeps windows shut while we hold data, or a
connection without streams, is closed after the client idle timeout.

This is a specialisation of the exchange path, meant to move onto the protocol-neutral
exchange sink when the relay has one (then the HTTP/1.1 round trip goes away).
CONNECT (RFC 9113 8.5, forward listeners): the relay's tunnel takes the stream as its
client side (set_protocol), so DATA frames carry the tunnel's bytes both ways.
"""
from __future__ import annotations

import time
from typing import Any

from fastproxy import _h2, _h2msg, _http
from fastproxy._relay import ClientConnection

STREAM_BUFFER = 65536        # response bytes held per stream before its upstream pauses
CONNECTION_BUFFER = 1 << 20  # ... and per connection, before every stream holding some pauses
_RESPONSE_DONE, _HEAD, _LENGTH, _CHUNKED, _CLOSE = range(5)
_CRLF = b"\r\n"


def _trailer_fields(raw: bytes) -> list[tuple[bytes, bytes]]:
    """HTTP/2 trailers from HTTP/1.1 trailer lines (already checked by the decoder)."""
    fields = []
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if sep and name:
            fields.append((name.strip().lower(), value.strip()))
    return fields


class StreamTransport:
    """The transport a stream's relay writes its HTTP/1.1 response to."""

    http_version = "HTTP/2.0"     # what the access log shows

    def __init__(self, conn: H2Server, stream_id: int, head_request: bool) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.head_request = head_request
        # The stream's relay ClientConnection; after a CONNECT's 2xx, the tunnel's end.
        self.protocol: Any = None
        self.connect = False           # a CONNECT stream (RFC 9113 8.5): DATA is the tunnel
        self.tunneling = False
        self.client_eof = False        # END_STREAM from the client, for the tunnel
        self.closing = False
        self.state = _HEAD
        self.buf = b""
        self.left = 0
        self.chunks: _http.ChunkedDecoder | None = None
        self.out: list[bytes] = []     # DATA the windows did not take yet
        self.out_bytes = 0
        self.out_end = False           # END_STREAM goes with the last of `out`
        self.blocked = False           # the relay was told to stop (pause_writing)
        self.paused = False            # the relay stopped reading the request body
        self.held: list[tuple[bytes, bool]] = []   # request DATA kept while paused
        self.chunked_request = False
        self.request_ended = False
        self.trailers: list | None = None   # response trailers, sent after `out`

    # -- what the relay calls ---------------------------------------------------------

    def get_extra_info(self, name: str, default=None):
        """Connection facts (peername, TLS) come from the client's socket."""
        transport = self.conn.transport
        return transport.get_extra_info(name, default) if transport is not None else default

    def write(self, data) -> None:
        """Response bytes from the relay: HTTP/1.1 in, HEADERS/DATA/trailers out."""
        if self.closing or self.state == _RESPONSE_DONE:
            return
        if self.state == _HEAD:
            self.buf = self.buf + bytes(data) if self.buf else bytes(data)
            self._head()
        elif self.state == _LENGTH:
            self._body_length(data, 0)
        elif self.state == _CHUNKED:
            self._body_chunked(data, 0)
        else:
            self._send(bytes(data), False)
        self.conn.flush_soon()

    def writelines(self, buffers) -> None:
        for data in buffers:
            self.write(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        """The relay is done with the stream: end it, or reset it if the response is short."""
        self._end(False)

    def abort(self) -> None:
        self._end(True)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        if not self.paused:
            return
        self.paused = False
        held, self.held = self.held, []
        for data, end in held:
            self.conn.request_data(self, data, end)
            if self.paused:
                break

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def set_protocol(self, protocol) -> None:
        """A CONNECT's tunnel takes the stream over (relay.splice)."""
        self.protocol = protocol
        self.tunneling = True
        if self.client_eof:
            self.conn.loop.call_soon(protocol.eof_received)

    def get_protocol(self):
        return self.protocol

    def is_reading(self) -> bool:
        return not self.paused

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """The tunnel's server finished sending: END_STREAM, the client may still send."""
        if self.state == _CLOSE and not self.closing:
            self.out_end = True
            self._flush_out()

    def get_write_buffer_size(self) -> int:
        return self.out_bytes

    # -- the response ----------------------------------------------------------------

    def _head(self) -> None:
        parser = self.conn.response_parser
        while self.state == _HEAD and self.buf:
            try:
                resp = parser.feed(self.buf, 0, self.head_request, self.connect)
            except _http.ParseError:
                self._reset(_h2.INTERNAL_ERROR)
                return
            if resp is None:
                return
            rest = self.buf[resp.head_length:]
            self.buf = b""
            status = resp.status
            headers = _h2msg.response_headers(status, resp.headers())
            if status < 200:
                if status != 101:
                    self.conn.send_headers(self.stream_id, headers, False)
                self.buf = rest
                continue
            kind = resp.body
            if self.connect and status < 300:
                # RFC 9113 8.5: the 2xx opens the tunnel; DATA both ways from now on.
                self.conn.send_headers(self.stream_id, headers, False)
                self.state = _CLOSE
                if rest:
                    self._send(rest, False)
                return
            if kind == _http.BODY_NONE:
                self.conn.send_headers(self.stream_id, headers, True)
                self.state = _RESPONSE_DONE
                self.conn.stream_finished(self)
                return
            self.conn.send_headers(self.stream_id, headers, False)
            if kind == _http.BODY_LENGTH:
                self.state = _LENGTH
                self.left = resp.content_length
                if rest:
                    self._body_length(rest, 0)
            elif kind == _http.BODY_CHUNKED:
                self.state = _CHUNKED
                self.chunks = _http.ChunkedDecoder()
                if rest:
                    self._body_chunked(rest, 0)
            else:
                self.state = _CLOSE
                if rest:
                    self._send(rest, False)

    def _body_length(self, data, pos: int) -> None:
        n = min(len(data) - pos, self.left)
        self.left -= n
        piece = bytes(data[pos:pos + n]) if pos or n < len(data) else bytes(data)
        self._send(piece, self.left == 0)
        if self.left == 0:
            self.state = _RESPONSE_DONE
            self.conn.stream_finished(self)

    def _body_chunked(self, data, pos: int) -> None:
        dec = self.chunks
        assert dec is not None
        out: list = []
        try:
            dec.feed(data, pos, out)
        except _http.ParseError:
            self._reset(_h2.INTERNAL_ERROR)
            return
        body = b"".join(out)
        if not dec.done:
            if body:
                self._send(body, False)
            return
        fields = _trailer_fields(dec.kept_trailers())
        if fields and _h2msg.validate(fields, "trailers") is None:
            if body:
                self._send(body, False)
            self.out_end = True
            self.trailers = fields
        else:
            self._send(body, True)
        self.state = _RESPONSE_DONE
        self.conn.stream_finished(self)
        self._flush_out()

    def _send(self, data: bytes, end: bool) -> None:
        if data:
            self.out.append(data)
            self.out_bytes += len(data)
            self.conn.buffered += len(data)
        if end:
            self.out_end = True
        self._flush_out()
        self.conn.check_buffered(self)

    def _flush_out(self) -> None:
        """Send what the windows allow; the rest waits for on_window_open."""
        conn = self.conn
        sid = self.stream_id
        out = self.out
        while out:
            data = out[0]
            last = len(out) == 1 and self.out_end and self.trailers is None
            n = conn.send_data(sid, data, last)
            if n < 0:
                self._discard()
                return
            self.out_bytes -= n
            conn.buffered -= n
            if n < len(data):
                out[0] = data[n:]
                conn.stall(self)
                return
            out.pop(0)
            if last:
                self.out_end = False
        if self.out_end:
            self.out_end = False
            if self.trailers is not None:
                conn.send_headers(sid, self.trailers, True)
                self.trailers = None
            else:
                conn.send_data(sid, b"", True)
        conn.check_buffered(self)
        conn.flush_soon()

    def _discard(self) -> None:
        """The stream cannot send any more: drop what it held."""
        self.conn.buffered -= self.out_bytes
        self.out.clear()
        self.out_bytes = 0
        self.out_end = False

    def hold_upstream(self, hold: bool) -> None:
        """Stop (or restart) the relay reading its upstream for this stream."""
        if hold != self.blocked and self.protocol is not None:
            self.blocked = hold
            if hold:
                self.protocol.pause_writing()
            else:
                self.protocol.resume_writing()

    def _end(self, abort: bool) -> None:
        if self.closing:
            return
        self.closing = True
        if self.state == _CLOSE and not abort:
            self.out_end = True
            self.state = _RESPONSE_DONE
            self._flush_out()
        elif self.state != _RESPONSE_DONE:
            self._reset(_h2.INTERNAL_ERROR if self.state != _HEAD or abort else _h2.CANCEL)
        self.conn.stream_closed(self)

    def _reset(self, code: int) -> None:
        self.state = _RESPONSE_DONE
        self._discard()
        self.conn.reset_stream(self.stream_id, code)
        self.conn.flush_soon()
        self.conn.stream_finished(self)


class H2Server(_h2.Connection):
    """A client's HTTP/2 connection (an asyncio protocol): one relay exchange per stream."""

    def __init__(self, lrt) -> None:
        limits = lrt.limits
        super().__init__(False, max_header_list_size=limits.max_header_size,
                         max_concurrent_streams=128)
        self.rt = lrt
        self.loop = lrt.loop
        self.transport = None
        self.streams: dict[int, StreamTransport] = {}
        self.response_parser = _http.ResponseParser(max_head=limits.max_header_size,
                                                    max_fields=limits.max_header_fields)
        self.forward = lrt.listener.mode == "forward"
        self.idle = lrt.timeouts.client_idle
        self.deadline = 0.0
        self.closing = False
        self.write_paused = False
        self.stalled: set[StreamTransport] = set()
        self.buffered = 0      # response bytes all streams hold for the client's windows
        self.over = False      # buffered went past CONNECTION_BUFFER: every upstream waits
        self._flush_scheduled = False

    # -- the socket --------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.rt.connections.add(self)
        self.rt.deadlines.add(self)
        self.deadline = time.monotonic() + self.idle
        if self.rt.draining:
            self.drain()

    def data_received(self, data) -> None:
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

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.rt.connections.discard(self)
        self.rt.deadlines.discard(self)
        for stream in list(self.streams.values()):
            self._drop(stream)

    def pause_writing(self) -> None:
        # The client does not read what we write: read no more from it either, or its
        # PINGs, SETTINGS and resets would queue replies without bound (the codec's
        # control-frame limit counts only what one data_received queues). A client that
        # stays so is closed after the idle timeout.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()
        self.deadline = time.monotonic() + self.idle
        for stream in self.streams.values():
            stream.hold_upstream(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        self.deadline = 0.0 if self.streams and not self.stalled else \
            time.monotonic() + self.idle
        for stream in list(self.streams.values()):
            self.check_buffered(stream)

    def flush_soon(self) -> None:
        """Write the queued frames at the end of this loop turn, in one write."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the queued frames now."""
        self._flush_scheduled = False
        data = self.data_to_send()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)
        if transport is not None and (self.dead or (self.closing and not self.streams)):
            transport.close()

    # -- timeouts and shutdown ---------------------------------------------------------

    def on_timeout(self) -> None:
        """No stream for client_idle, or a peer that keeps its windows shut: close."""
        if self.streams and not self.stalled and not self.write_paused:
            self.deadline = time.monotonic() + self.idle
            return
        self.goaway(_h2.NO_ERROR if not self.stalled else _h2.ENHANCE_YOUR_CALM)
        self.closing = True
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def drain(self) -> None:
        """Graceful stop: GOAWAY, finish the streams in flight, then close."""
        if not self.closing:
            self.closing = True
            self.goaway(_h2.NO_ERROR)
            self.flush()

    # -- codec hooks -------------------------------------------------------------------

    def on_headers(self, stream_id, headers, end_stream) -> None:
        if self.closing:
            self.reset_stream(stream_id, _h2.REFUSED_STREAM)
            return
        method = b""
        for name, value in headers:
            if name == b":method":
                method = value
                break
        stream = StreamTransport(self, stream_id, method == b"HEAD")
        stream.connect = method == b"CONNECT"
        head = _h2msg.request_head(headers, not end_stream and not stream.connect, self.forward)
        stream.chunked_request = not end_stream and not stream.connect and not any(
            name == b"content-length" for name, _ in headers)
        stream.request_ended = end_stream
        relay = ClientConnection(self.rt)
        if not end_stream and any(n == b"content-type" and v.startswith(b"application/grpc")
                                  for n, v in headers):
            # A gRPC call's messages answer each other (streaming RPCs): buffering the
            # body before the upstream is taken would hold a bidirectional call forever.
            relay.buffer_limit = 0
        stream.protocol = relay
        self.streams[stream_id] = stream
        self.deadline = 0.0
        relay.connection_made(stream)
        if self.write_paused:
            stream.hold_upstream(True)
        relay.data_received(head)

    def on_data(self, stream_id, data, end_stream) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.protocol is None:
            if data:
                self.acknowledge_received(stream_id, len(data))
            return
        if stream.paused:
            stream.held.append((bytes(data), end_stream))
            return
        self.request_data(stream, data, end_stream)

    def request_data(self, stream: StreamTransport, data, end_stream: bool) -> None:
        """Give request body bytes to the stream's relay and return their credit."""
        relay = stream.protocol
        if relay is None:
            return
        n = len(data)
        if stream.connect:
            if n:
                relay.data_received(bytes(data))
            if end_stream:
                stream.client_eof = True
                if stream.tunneling and not stream.closing:
                    relay.eof_received()
        elif stream.chunked_request:
            piece = [_http.chunk_header(n), bytes(data), _CRLF] if n else []
            if end_stream:
                piece.append(_http.LAST_CHUNK)
            if piece:
                relay.data_received(b"".join(piece))
        elif n:
            relay.data_received(bytes(data))
        if end_stream:
            stream.request_ended = True
        if n:
            self.acknowledge_received(stream.stream_id, n)
            self.flush_soon()     # outside data_received (a resume), nobody else writes

    def on_trailers(self, stream_id, headers) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.protocol is None:
            return
        stream.request_ended = True
        if stream.chunked_request:
            lines = b"".join(name + b": " + value + _CRLF for name, value in headers)
            data = b"0\r\n" + lines + _CRLF
            if stream.paused:
                stream.held.append((data, False))
                stream.chunked_request = False
            else:
                stream.protocol.data_received(data)
        # A request framed by content-length cannot carry trailers in HTTP/1.1: dropped.

    def on_reset(self, stream_id, error_code, remote) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.state = _RESPONSE_DONE
            stream._discard()
            self._drop(stream)

    def on_window_open(self, stream_id) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            self.stalled.discard(stream)
            stream._flush_out()
            if stream.state == _RESPONSE_DONE and not stream.out:
                self.loop.call_soon(self._release, stream)
            # Progress: streams still waiting get a fresh client_idle from now.
            if self.stalled or not self.streams:
                self.deadline = time.monotonic() + self.idle
            elif not self.write_paused:
                self.deadline = 0.0

    def on_connection_error(self, error_code, kind) -> None:
        self.flush_soon()

    # -- streams ---------------------------------------------------------------------

    def check_buffered(self, stream: StreamTransport) -> None:
        """Hold a stream's upstream while it holds too much, or holds some while the
        connection does (a stream with nothing held still gets its response started,
        so one unread download cannot block the other streams' answers)."""
        if self.buffered > CONNECTION_BUFFER and not self.over:
            self.over = True
            for other in self.streams.values():
                if other.out_bytes:
                    other.hold_upstream(True)
        elif self.over and self.buffered <= CONNECTION_BUFFER // 2:
            self.over = False
            for other in list(self.streams.values()):
                if other is not stream:
                    other.hold_upstream(other.out_bytes > STREAM_BUFFER // 2
                                        or self.write_paused)
        limit = STREAM_BUFFER // 2 if stream.blocked else STREAM_BUFFER
        stream.hold_upstream(stream.out_bytes > limit or self.write_paused
                             or (self.over and stream.out_bytes > 0))

    def stall(self, stream: StreamTransport) -> None:
        """A stream's DATA waits for the peer's window: bounded by the idle timeout."""
        if not self.stalled:
            self.deadline = time.monotonic() + self.idle
        self.stalled.add(stream)

    def stream_finished(self, stream: StreamTransport) -> None:
        """The response is complete (or reset): let the relay go once it is done."""
        if not stream.out:
            self.loop.call_soon(self._release, stream)

    def _release(self, stream: StreamTransport) -> None:
        if stream.out:       # DATA still waits for a window: kept until it goes
            return
        self._drop(stream)

    def stream_closed(self, stream: StreamTransport) -> None:
        """The relay closed its side."""
        if not stream.out:
            self.loop.call_soon(self._release, stream)

    def _drop(self, stream: StreamTransport) -> None:
        if self.streams.get(stream.stream_id) is not stream:
            return
        del self.streams[stream.stream_id]
        self.stalled.discard(stream)
        stream._discard()
        if self.over:
            for other in list(self.streams.values()):
                self.check_buffered(other)
        protocol, stream.protocol = stream.protocol, None
        stream.closing = True
        if stream.state != _RESPONSE_DONE:
            self.reset_stream(stream.stream_id, _h2.CANCEL)
        if protocol is not None:
            protocol.connection_lost(None)
        if not self.streams:
            self.deadline = time.monotonic() + self.idle
            if self.closing:
                self.flush_soon()


def switch(relay: ClientConnection, data: bytes) -> None:
    """The HTTP/2 preface arrived on an HTTP/1.1 connection: hand the socket over."""
    transport = relay.transport
    lrt = relay.rt
    relay.detach()
    conn = H2Server(lrt)
    transport.set_protocol(conn)
    conn.connection_made(transport)
    conn.data_received(data)


class AlpnSwitch:
    """TLS listener protocol until the handshake: picks HTTP/2 or HTTP/1.1 by ALPN."""

    def __init__(self, holder) -> None:
        self.holder = holder

    def connection_made(self, transport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        lrt = self.holder.current
        h2 = ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"
        proto: H2Server | ClientConnection = H2Server(lrt) if h2 else ClientConnection(lrt)
        transport.set_protocol(proto)
        proto.connection_made(transport)

    def connection_lost(self, exc) -> None:
        pass
