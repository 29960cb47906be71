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

H2Origin and StreamLink are compiled (fastproxy._h2link): they only move bytes;
which connection a link uses and when one opens is decided here.
"""
from __future__ import annotations

import asyncio

from fastproxy import _h2
from fastproxy._h2link import STREAM_BUFFER, H2Origin, StreamLink

__all__ = ["STREAM_BUFFER", "H2Origin", "H2Upstream", "StreamLink"]


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
        if up.via:
            # RFC 9110 7.6.3: the response's Via names the protocol it was received in.
            up.via = up.via.replace(b"Via: 1.1 ", b"Via: 2 ", 1)
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
