"""Traffic shadowing: a copy of a route's requests to another upstream group.

The copy goes on its own connection (`Connection: close`) in a task of its own, after the
primary request has been sent, and its answer is read only as far as its head and then
dropped: the client never waits for it and never sees it. Copies under way are bounded
per route and worker (`max_in_flight`); past that, copies are dropped and counted, so a
slow or dead shadow group costs the primary nothing but the bounded tasks.

A request with a body is copied with its body: the relay hands each piece it forwards
upstream to a `_BodyCopy` as well (`conn.body_tap`, a list append per piece), and the copy
leaves once the body is complete. A body over `max_body` is not copied (counted as
`too_large`): a declared Content-Length over it is never collected, a chunked body is
dropped as soon as it passes it, so a copy holds at most `max_body` bytes. The body's
framing is the forwarded one (the head says Content-Length or chunked, and the pieces
are the bytes sent upstream), so the copy is byte for byte the request the primary got.
"""
from __future__ import annotations

import random

from fastproxy import _http
from fastproxy.cache.fetch import FetchError, fetch


class Shadow:
    """The shadow of one route in one worker: its group, share, bounds and counters."""

    __slots__ = ("group", "percent", "max_in_flight", "max_body", "in_flight", "sent",
                 "dropped", "failed", "too_large", "loop")

    def __init__(self, group, percent: float, max_in_flight: int,
                 max_body: int = 64 * 1024) -> None:
        self.group = group
        self.percent = percent
        self.max_in_flight = max_in_flight
        self.max_body = max_body
        self.in_flight = 0
        self.sent = self.dropped = self.failed = self.too_large = 0
        self.loop = None

    def copy(self, loop, head: bytes, key, conn=None) -> None:
        """Send a copy of head (a forwarded request head), and of conn's request body when
        it has one, unless the share, a bound or the body's size says no."""
        if self.percent < 100.0 and random.random() * 100.0 >= self.percent:
            return
        kind = conn.body_kind if conn is not None else _http.BODY_NONE
        if kind == _http.BODY_NONE:
            self._send_copy(loop, head, b"", key)
            return
        req = conn.req
        if (kind == _http.BODY_LENGTH and req.content_length > self.max_body) or \
                (kind != _http.BODY_LENGTH and kind != _http.BODY_CHUNKED):
            self.too_large += 1
            return
        # Every exchange runs on a relay ClientConnection (an HTTP/2 stream too).
        conn.body_tap = _BodyCopy(self, loop, head, key)

    def _send_copy(self, loop, head: bytes, body: bytes, key) -> None:
        if self.in_flight >= self.max_in_flight:
            self.dropped += 1
            return
        group = self.group
        server = group.pick(key)
        if server is None:
            self.dropped += 1
            return
        pool = group.pools[server]
        self.in_flight += 1
        self.sent += 1
        # The forwarded head has no Connection field (hop-by-hop fields are dropped).
        loop.create_task(self._send(pool, server, head[:-2] + b"Connection: close\r\n\r\n"
                                    + body))

    async def _send(self, pool, server, message: bytes) -> None:
        try:
            await fetch(pool.connect_host, server.port, message, ssl=pool.ssl,
                        server_hostname=server.host if pool.ssl is not None else None,
                        timeout=pool.connect_timeout + pool.read_timeout, max_body=0)
        except (FetchError, OSError, TimeoutError):
            self.failed += 1
        finally:
            self.in_flight -= 1


class _BodyCopy:
    """Collects the body of one shadowed request (the relay's body tap), then sends it."""

    __slots__ = ("shadow", "loop", "head", "key", "parts", "size")

    def __init__(self, shadow: Shadow, loop, head: bytes, key) -> None:
        self.shadow = shadow
        self.loop = loop
        self.head = head
        self.key = key
        self.parts: list | None = []
        self.size = 0

    def __call__(self, piece) -> None:
        """A piece of the body as forwarded upstream, or None at its end."""
        parts = self.parts
        if parts is None:
            return
        if piece is None:
            self.parts = None
            self.shadow._send_copy(self.loop, self.head, b"".join(parts), self.key)
            return
        self.size += len(piece)
        if self.size > self.shadow.max_body:
            self.parts = None
            self.shadow.too_large += 1
            return
        parts.append(piece)
