"""Two-way byte tunnels: after a 101 (Upgrade), after a CONNECT 200, and in TCP mode.

Both transports get a `TunnelEnd` protocol (uvloop's `set_protocol`), so bytes go
from one socket to the other in the event loop's callbacks with no parsing and no
task switch. Backpressure: when one side's write buffer is full, the other side
stops reading. Half-close: an EOF from one side becomes a write_eof on the other,
and the tunnel ends when both directions are finished (RFC 9110 9.3.6 for CONNECT).
"""
from __future__ import annotations

import asyncio
from typing import Callable


class Tunnel:
    """The pair of ends, the shared idle deadline and the byte counts."""

    __slots__ = ("a", "b", "deadline", "idle", "deadlines", "loop", "on_close", "done")

    def __init__(self, idle: float, deadlines, on_close: Callable[[int, int], None] | None):
        self.idle = idle
        self.deadlines = deadlines
        self.loop = deadlines.loop
        self.on_close = on_close
        self.done = False
        self.deadline = self.loop.time() + idle if idle else 0.0
        self.a: TunnelEnd
        self.b: TunnelEnd

    def on_timeout(self) -> None:
        """No byte crossed the tunnel for `idle` seconds: close both ends."""
        self.a.transport.abort()
        self.b.transport.abort()

    def end(self) -> None:
        if self.done:
            return
        self.done = True
        self.deadline = 0.0
        self.deadlines.discard(self)
        if self.on_close is not None:
            self.on_close(self.a.count, self.b.count)


class TunnelEnd(asyncio.Protocol):
    """One side of a tunnel: what it reads, the other side writes."""

    __slots__ = ("tunnel", "transport", "peer", "count", "eof", "lost")

    def __init__(self, tunnel: Tunnel, transport) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer: TunnelEnd
        self.count = 0      # bytes read from this side (and written to the peer)
        self.eof = False
        self.lost = False

    def data_received(self, data) -> None:
        self.count += len(data)
        self.peer.transport.write(data)
        tunnel = self.tunnel
        if tunnel.idle:
            tunnel.deadline = tunnel.loop.time() + tunnel.idle

    def eof_received(self):
        self.eof = True
        peer_t = self.peer.transport
        if self.peer.eof or self.peer.lost:
            peer_t.close()
            return False
        if peer_t.can_write_eof():
            peer_t.write_eof()
            return True  # keep our write direction open (half-close)
        peer_t.close()   # TLS cannot half-close: finish both directions
        return False

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        t = self.peer.transport
        if not t.is_closing():
            t.resume_reading()

    def connection_lost(self, exc) -> None:
        self.lost = True
        peer = self.peer
        peer_t = peer.transport
        if exc is not None:
            peer_t.abort()   # a reset travels on as a reset
        elif not peer_t.is_closing() and not (self.eof and not peer.eof):
            # close() flushes what is buffered first. After our EOF alone the peer may
            # still be sending its remaining bytes (half-close), so leave it open.
            peer_t.close()
        if peer.lost:
            self.tunnel.end()


def splice(a, b, to_b: bytes, to_a: bytes, idle: float, deadlines,
           on_close: Callable[[int, int], None] | None = None) -> Tunnel:
    """Join transports a and b into a tunnel; to_b/to_a are bytes already read early."""
    tunnel = Tunnel(idle, deadlines, on_close)
    end_a = TunnelEnd(tunnel, a)
    end_b = TunnelEnd(tunnel, b)
    end_a.peer = end_b
    end_b.peer = end_a
    tunnel.a = end_a
    tunnel.b = end_b
    a.set_protocol(end_a)
    b.set_protocol(end_b)
    if to_b:
        end_a.count += len(to_b)
        b.write(to_b)
    if to_a:
        end_b.count += len(to_a)
        a.write(to_a)
    for t in (a, b):
        if not t.is_closing() and not t.is_reading():
            t.resume_reading()
    if idle:
        deadlines.add(tunnel)
    return tunnel
