"""Traffic shadowing: a copy of a route's requests to another upstream group.

The copy goes on its own connection (`Connection: close`) in a task of its own, after the
primary request has been sent, and its answer is read only as far as its head and then
dropped: the client never waits for it and never sees it. Copies under way are bounded
per route and worker (`max_in_flight`); past that, copies are dropped and counted, so a
slow or dead shadow group costs the primary nothing but the bounded tasks. Only requests
without a body are copied (a body would have to be held for the copy).
"""
from __future__ import annotations

import random

from fastproxy.cache.fetch import FetchError, fetch


class Shadow:
    """The shadow of one route in one worker: its group, share, bound and counters."""

    __slots__ = ("group", "percent", "max_in_flight", "in_flight", "sent", "dropped",
                 "failed", "loop")

    def __init__(self, group, percent: float, max_in_flight: int) -> None:
        self.group = group
        self.percent = percent
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.sent = self.dropped = self.failed = 0
        self.loop = None

    def copy(self, loop, head: bytes, key) -> None:
        """Send a copy of head (a forwarded request head) unless the share or bound says no."""
        if self.percent < 100.0 and random.random() * 100.0 >= self.percent:
            return
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
        head = head[:-2] + b"Connection: close\r\n\r\n"
        loop.create_task(self._send(pool, server, head))

    async def _send(self, pool, server, head: bytes) -> None:
        try:
            await fetch(pool.connect_host, server.port, head, ssl=pool.ssl,
                        server_hostname=server.host if pool.ssl is not None else None,
                        timeout=pool.connect_timeout + pool.read_timeout, max_body=0)
        except (FetchError, OSError, TimeoutError):
            self.failed += 1
        finally:
            self.in_flight -= 1
