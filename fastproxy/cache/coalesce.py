"""Request coalescing: concurrent misses for one key send one request upstream.

The first caller of `begin(key)` is the leader and goes upstream; the others
get the leader's future and `wait()` on it. The leader calls `finish(key,
result)` exactly once (in a `finally`): with the shareable result (for example
the Lookup of what it stored), or with None when the response could not be
shared (not storable, an error), in which case each waiter goes upstream itself.
A waiter whose timeout expires does the same, so a stuck leader delays the
others by at most the timeout.
"""
from __future__ import annotations

import asyncio
from typing import Any


class Coalescer:
    """Per-key single-flight with a bounded wait for followers."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._inflight: dict[bytes, asyncio.Future] = {}
        self.leaders = 0
        self.followers = 0
        self.timeouts = 0

    def begin(self, key: bytes) -> tuple[bool, asyncio.Future]:
        """Return (True, future) for the leader of key, (False, leader's future) for others."""
        fut = self._inflight.get(key)
        if fut is not None and not fut.done():
            self.followers += 1
            return False, fut
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        self.leaders += 1
        return True, fut

    def pending(self, key: bytes) -> asyncio.Future | None:
        """The in-flight leader's future for key, without becoming a leader (HEAD follows GET)."""
        fut = self._inflight.get(key)
        if fut is not None and not fut.done():
            self.followers += 1
            return fut
        return None

    def finish(self, key: bytes, result: Any = None) -> None:
        """Leader: publish result (None = not shareable) and release the key."""
        fut = self._inflight.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    async def wait(self, fut: asyncio.Future) -> Any:
        """Follower: the leader's result, or None on timeout / when it is not shareable."""
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except asyncio.TimeoutError:
            self.timeouts += 1
            return None

    def __len__(self) -> int:
        return len(self._inflight)
