"""Coarse per-worker deadlines.

A proxy arms and disarms a timeout several times per request (head read, upstream
response, body idle). A loop timer per arm costs an allocation and a heap
operation each time; instead every connection carries a `deadline` attribute
(loop time, or 0.0 for none) and one periodic sweep fires the expired ones, as
nginx and HAProxy do with their timer wheels. Arming a timeout is then a float
store. The sweep period is a fraction of the shortest configured timeout, so the
error on any timeout stays within 25% of it (and never above one second).
"""
from __future__ import annotations

import asyncio
import time


class Deadlines:
    """The set of objects with a `deadline` float and an `on_timeout()` method."""

    def __init__(self, loop: asyncio.AbstractEventLoop, shortest_timeout: float) -> None:
        self.loop = loop
        self.period = min(1.0, max(0.02, shortest_timeout / 4))
        self.members: set = set()
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Begin sweeping."""
        if self._handle is None:
            self._handle = self.loop.call_later(self.period, self._sweep)

    def stop(self) -> None:
        """Stop sweeping (members are left alone)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def add(self, obj) -> None:
        self.members.add(obj)

    def discard(self, obj) -> None:
        self.members.discard(obj)

    def _sweep(self) -> None:
        now = time.monotonic()  # the relay's deadlines use CLOCK_MONOTONIC too
        expired = [m for m in self.members if 0.0 < m.deadline <= now]
        for m in expired:
            m.deadline = 0.0
            try:
                m.on_timeout()
            except Exception as exc:  # one failing handler must not stop everyone's timeouts
                self.loop.call_exception_handler(
                    {"message": "timeout handler failed", "exception": exc, "protocol": m})
        self._handle = self.loop.call_later(self.period, self._sweep)
