"""HTTP/2 from clients (RFC 9113): each stream drives the HTTP/1.1 exchange path.

A client connection that starts with the HTTP/2 preface (prior knowledge on a plain
port) or negotiates `h2` by ALPN on a TLS listener (ext/tls.pyx picks it after the
handshake) gets an `H2Server`: the compiled
codec (fastproxy._h2) parses frames; every request stream gets its own relay
ClientConnection, so routing, the reverse and forward handlers, the cache, rate
limits, the access log and metrics run unchanged. The stream hands that connection
an HTTP/1.1 head built by fastproxy._h2msg.request_head from a header list the codec
has already checked (RFC 9113 8.1-8.3: nothing ambiguous reaches HTTP/1.1) and the
DATA (re-chunked when no content-length was given). An upstream's response head comes
back parsed (Stream.relay_head: the fields the relay forwards to HTTP/1.1 clients, as
HEADERS); the body, and every answer the proxy writes itself (errors, cache hits, 1xx,
filtered responses), come as HTTP/1.1 bytes, parsed by the compiled ResponseParser;
all of it goes out as HEADERS, DATA and trailers on the stream.

Flow control, both ways. In: a stream's DATA is acknowledged (the peer gets its
window back) only once its relay took it; when the relay stops reading (its upstream
is slow, the body is being buffered), the stream holds what arrives, bounded by the
window we advertised. Out: DATA goes as the windows allow; what they do not allow
waits per stream, and past `STREAM_BUFFER` bytes the stream's relay stops reading its
upstream (pause_writing), as for a slow HTTP/1.1 client; the socket's own backpressure
pauses every stream. A peer that keeps windows shut while we hold data, or a
connection without streams, is closed after the client idle timeout.

This is a specialisation of the exchange path (the request side is still an HTTP/1.1
head inside the process). The
streams and the connection are compiled (fastproxy._h2server): frames for a client go
out in one write per event-loop turn, and finished streams are let go in that flush.
CONNECT (RFC 9113 8.5, forward listeners): the relay's tunnel takes the stream as its
client side (set_protocol), so DATA frames carry the tunnel's bytes both ways.
"""
from __future__ import annotations

from fastproxy._h2server import CONNECTION_BUFFER, STREAM_BUFFER, Server, Stream
from fastproxy._relay import ClientConnection

__all__ = ["CONNECTION_BUFFER", "STREAM_BUFFER", "H2Server", "Stream", "switch"]

# The connection and its streams are compiled (ext/h2server.pyx): they only move bytes
# between the codec and the relays; every decision about a request is the relay's.
H2Server = Server


def switch(relay: ClientConnection, data: bytes) -> None:
    """The HTTP/2 preface arrived on an HTTP/1.1 connection: hand the socket over."""
    transport = relay.transport
    lrt = relay.rt
    relay.detach()
    conn = H2Server(lrt)
    transport.set_protocol(conn)
    conn.connection_made(transport)
    conn.data_received(data)
