"""Keep-alive connections to one upstream server.

Idle connections wait in a LIFO list (the most recently used is the warmest and
the least likely to have been closed by the server). A connection goes back to the
pool only after a complete, well-framed response; one the server closed while idle
is dropped as soon as the close is seen, and `acquire` skips any that is closing.
"""
from __future__ import annotations

import ssl as _ssl

from fastproxy.backend import U_IDLE, UpstreamConnection


class ConnectionPool:
    """Idle keep-alive connections to one server, and the settings they share."""

    def __init__(self, rt, group_cfg, server) -> None:
        self.loop = rt.loop
        self.server = server
        self.deadlines = rt.deadlines
        self.timeouts = rt.timeouts
        self.via = rt.response_via
        self.max_head = rt.limits.max_header_size
        self.max_fields = rt.limits.max_header_fields
        self.keepalive = group_cfg.keepalive
        self.keepalive_timeout = group_cfg.keepalive_timeout
        self.keepalive_requests = group_cfg.keepalive_requests
        self.connect_timeout = group_cfg.connect_timeout or rt.timeouts.upstream_connect
        self.read_timeout = group_cfg.read_timeout or rt.timeouts.upstream_header
        self.ssl = _ssl.create_default_context() if server.scheme == "https" else None
        self.idle: list[UpstreamConnection] = []
        self.open = 0
        self.opened_total = 0
        self.closed = False
        self.on_failure = None  # set by the group: passive health (outlier detection)

    def acquire(self) -> UpstreamConnection:
        """A connection for one exchange: a live idle one, or a new one connecting."""
        idle = self.idle
        while idle:
            up = idle.pop()
            t = up.transport
            if t is not None and not t.is_closing():
                up.reused = True
                up.deadline = 0.0
                return up
            up.close()
        return self.connect_new()

    def connect_new(self) -> UpstreamConnection:
        """A new connection, bypassing idle ones (a retry after a stale keep-alive)."""
        up = UpstreamConnection(self, self.server)
        self.deadlines.add(up)
        up.connect()
        return up

    def release(self, up: UpstreamConnection) -> None:
        """Take a connection back after a complete exchange, or close it."""
        if (not self.closed and len(self.idle) < self.keepalive and up.requests < self.keepalive_requests
                and up.transport is not None and not up.transport.is_closing()):
            up.state = U_IDLE
            up.deadline = self.loop.time() + self.keepalive_timeout
            self.idle.append(up)
        else:
            up.close()

    def opened(self, up: UpstreamConnection) -> None:
        """A connection is established (counted once until forgotten)."""
        up.counted = True
        self.open += 1
        self.opened_total += 1
        self.server.conns = self.open

    def forget(self, up: UpstreamConnection) -> None:
        """The connection is closing: drop every reference the pool holds to it."""
        self.deadlines.discard(up)
        if up in self.idle:
            self.idle.remove(up)
        if up.counted:
            up.counted = False
            self.open -= 1
            self.server.conns = self.open

    def record_failure(self, up: UpstreamConnection, connect: bool) -> None:
        if self.on_failure is not None:
            self.on_failure(self.server, connect)

    def close(self) -> None:
        """Close every idle connection; connections still in use close when released."""
        self.closed = True
        for up in list(self.idle):
            up.close()
        self.idle.clear()
