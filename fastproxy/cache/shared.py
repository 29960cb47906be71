"""The shared second cache tier on Redis: a local miss looks there before the origin.

Configured by `[cache.shared]` (`SharedConfig`). Each worker talks to Redis through the
`redis` package's asyncio client (the maintained client, with its own connection pool and
RESP parser). Values are the cache's stored form (entry.py), so an entry read from Redis
goes into the local store as it is, keeping its response time and age: a hit served from
it is the same as one from the node that fetched it.

Redis is an optimisation, never a dependency of the answer:

* every operation has a short timeout (`timeout`); a failure or timeout counts toward a
  breaker that skips the tier for `retry` seconds after `failures` in a row, then lets one
  operation probe it;
* writes are fire-and-forget after the response went out, at most `max_writes` at a time
  (the rest are dropped and counted), and only for bodies up to `max_object_size`;
* reads are bounded the same way (`max_reads`); over the bound the tier is skipped.

A response with Vary is shared with its stub (entry.py): the stub goes to Redis only if
none is there (SET NX), and a node that imports a URL takes the stub with it, so the nodes
converge on one epoch per URL and find each other's variants under the same keys.
"""
from __future__ import annotations

import asyncio
import math
import struct
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import entry
from .keys import variant_key

_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class SharedConfig:
    """Where the shared tier lives and how much it may cost a request."""

    url: str = ""
    prefix: str = "fastproxy:"          # key prefix in Redis (one per fleet sharing a Redis)
    timeout: float = 0.1                # per operation, seconds
    max_object_size: int = 256 << 10    # larger bodies stay local
    max_writes: int = 64                # writes in flight per worker; more are dropped
    max_reads: int = 256                # reads in flight per worker; more skip the tier
    failures: int = 3                   # failures in a row that open the breaker
    retry: float = 5.0                  # seconds the open breaker skips the tier

    @classmethod
    def from_table(cls, raw: Any) -> "SharedConfig":
        """The [cache.shared] table; ValueError with "[cache.shared.]KEY: problem" lines."""
        from fastproxy.config.schema import parse_duration, parse_size

        if not isinstance(raw, dict):
            raise ValueError(f": expected a table, got {type(raw).__name__}")
        problems = []
        kwargs: dict[str, Any] = {}
        for name, value in raw.items():
            try:
                if name in ("url", "prefix"):
                    if not isinstance(value, str):
                        raise ValueError(f"expected a string, got {value!r}")
                    kwargs[name] = value
                elif name in ("timeout", "retry"):
                    kwargs[name] = parse_duration(value)
                    if not 0 < kwargs[name] <= 3600:
                        raise ValueError(f"expected a duration above 0 and at most 1h, got {value!r}")
                elif name == "max_object_size":
                    kwargs[name] = parse_size(value)
                    if not 0 < kwargs[name] <= 512 << 20:
                        raise ValueError(f"expected a size from 1 byte to 512MiB, got {value!r}")
                elif name in ("max_writes", "max_reads", "failures"):
                    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100000:
                        raise ValueError(f"expected an integer from 1 to 100000, got {value!r}")
                    kwargs[name] = value
                else:
                    raise ValueError("unknown key (expected one of failures, max_object_size, "
                                     "max_reads, max_writes, prefix, retry, timeout, url)")
            except ValueError as exc:
                problems.append(f".{name}: {exc}")
        if "url" not in kwargs and not problems:
            problems.append(".url: required (redis://HOST:PORT/DB)")
        elif "url" in kwargs:
            parts = urlsplit(kwargs["url"])
            if parts.scheme not in _SCHEMES or (parts.scheme != "unix" and not parts.hostname):
                problems.append(f".url: expected redis://HOST:PORT/DB, rediss://... or "
                                f"unix:///PATH, got {kwargs['url']!r}")
            else:
                try:
                    import redis.asyncio  # noqa: F401
                except ImportError:
                    problems.append(".url: the shared tier needs the redis package "
                                    "(pip install 'fastproxy[redis]')")
        if problems:
            raise ValueError("; ".join(problems))
        return cls(**kwargs)


class Breaker:
    """Consecutive-failure breaker: open for `retry` seconds, then one probe at a time."""

    def __init__(self, failures: int, retry: float, clock=time.monotonic) -> None:
        self.failures = failures
        self.retry = retry
        self.clock = clock
        self.count = 0
        self.open_until = 0.0
        self.opened = 0

    def allow(self) -> bool:
        """May an operation go to Redis now?"""
        if self.count < self.failures:
            return True
        now = self.clock()
        if now < self.open_until:
            return False
        self.open_until = now + self.retry     # this caller probes; the others wait again
        return True

    def success(self) -> None:
        self.count = 0

    def failure(self) -> None:
        self.count += 1
        if self.count == self.failures:
            self.opened += 1
            self.open_until = self.clock() + self.retry


class SharedTier:
    """One worker's client of the shared tier."""

    def __init__(self, config: SharedConfig, keep_stale: float = 0.0) -> None:
        self.config = config
        self.keep_stale = keep_stale
        self.prefix = config.prefix.encode()
        self.breaker = Breaker(config.failures, config.retry)
        self._client = None
        self.reads = 0
        self.writes = 0
        self.stats = {"shared_hits": 0, "shared_misses": 0, "shared_errors": 0,
                      "shared_skipped": 0, "shared_writes": 0, "shared_writes_dropped": 0}
        self.tasks: set[asyncio.Task] = set()

    def client(self):
        # Created on first use, inside the worker's loop (the pool binds to it).
        if self._client is None:
            import redis.asyncio as aioredis
            c = self.config
            self._client = aioredis.Redis.from_url(
                c.url, socket_timeout=c.timeout, socket_connect_timeout=c.timeout,
                max_connections=c.max_reads + c.max_writes, retry_on_timeout=False)
        return self._client

    async def fetch_into(self, ring, key: bytes, request, vary_miss: bool) -> bool:
        """Copy key's entry (its stub and request's variant, under Vary) from Redis into
        the local store; True when something was imported. `vary_miss`: a local stub exists
        and only the variant is missing."""
        now = time.time()
        stub = None
        if vary_miss:
            local = ring.get(key, now)
            if local is None or local[0] != entry.KIND_STUB:
                return False
            vkey = variant_key(key, *_epoch_names(local), request)
            value = await self.get(vkey)
        else:
            value = await self.get(key)
            vkey = key
            if value is not None and value[0] == entry.KIND_STUB:
                stub = value
                vkey = variant_key(key, *_epoch_names(stub), request)
                value = await self.get(vkey)
        if value is None or value[0] != entry.KIND_RESPONSE:
            return False
        now = time.time()
        try:
            st = entry.Stored(value)
            if stub is not None and ring.get(key, now) is None:
                ring.set(key, stub, now=now)
            return ring.set(vkey, value, now=now, expires=import_expiry(st, self.keep_stale))
        except (ValueError, IndexError, struct.error):
            return False      # not our stored form (another version wrote it)

    def share_from(self, ring, key: bytes, request, vary: bool) -> None:
        """Copy what was just stored under key (with its stub, under Vary) to Redis."""
        now = time.time()
        stub = None
        if vary:
            stub = ring.get(key, now)
            if stub is None or stub[0] != entry.KIND_STUB:
                return
            stub = bytes(stub)
            key, base = variant_key(key, *_epoch_names(stub), request), key
        value = ring.get(key, now)
        if value is not None and value[0] == entry.KIND_RESPONSE:
            self.put(key, bytes(value), now, (base, stub) if stub is not None else None)

    async def get(self, key: bytes) -> bytes | None:
        """The stored value for key, or None (absent, Redis down/slow/busy, or unusable)."""
        if self.reads >= self.config.max_reads or not self.breaker.allow():
            self.stats["shared_skipped"] += 1
            return None
        self.reads += 1
        try:
            value = await asyncio.wait_for(self.client().get(self.prefix + key),
                                           self.config.timeout)
        except Exception:   # noqa: BLE001 - any client or network failure skips the tier
            self.breaker.failure()
            self.stats["shared_errors"] += 1
            return None
        finally:
            self.reads -= 1
        self.breaker.success()
        if (not value or len(value) < entry.STUB.size
                or value[0] not in (entry.KIND_RESPONSE, entry.KIND_STUB)):
            self.stats["shared_misses"] += 1
            return None
        self.stats["shared_hits"] += 1
        return value

    def put(self, key: bytes, value: bytes, now: float, stub=None) -> None:
        """Write a stored value in the background, with its remaining usefulness as TTL;
        `stub`: (key, value) of its Vary stub, written unless Redis has one."""
        st = entry.Stored(value)
        if len(value) - st.body_start > self.config.max_object_size:
            return
        ttl = st.lifetime - st.age(now) + max(st.swr, st.sie, self.keep_stale)
        if ttl < 1:
            return
        if self.writes >= self.config.max_writes or not self.breaker.allow():
            self.stats["shared_writes_dropped"] += 1
            return
        self.writes += 1
        if stub is not None:
            stub = (self.prefix + stub[0], stub[1])
        task = asyncio.get_running_loop().create_task(
            self._put(self.prefix + key, value, math.ceil(ttl), stub))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _put(self, key: bytes, value: bytes, ttl: int, stub) -> None:
        try:
            client = self.client()
            if stub is not None:
                # The first stub stays (one epoch per URL for the fleet) and lives as
                # long as its longest-lived variant.
                if not await asyncio.wait_for(client.set(stub[0], stub[1], ex=ttl, nx=True),
                                              self.config.timeout):
                    await asyncio.wait_for(client.expire(stub[0], ttl, gt=True),
                                           self.config.timeout)
            await asyncio.wait_for(client.set(key, value, ex=ttl), self.config.timeout)
            self.breaker.success()
            self.stats["shared_writes"] += 1
        except Exception:   # noqa: BLE001 - see get()
            self.breaker.failure()
            self.stats["shared_errors"] += 1
        finally:
            self.writes -= 1

    def close(self) -> None:
        """Cancel writes in flight and drop the client (worker shutdown or reload)."""
        for task in list(self.tasks):
            task.cancel()
        client, self._client = self._client, None
        if client is not None:
            try:
                asyncio.get_running_loop().create_task(client.aclose())
            except RuntimeError:
                pass


def _epoch_names(stub) -> tuple[int, tuple[bytes, ...]]:
    names, epoch = entry.decode_stub(stub)
    return epoch, names


def import_expiry(st: entry.Stored, keep_stale: float) -> float:
    """The local store's expiry for an entry read from the shared tier (as store() sets it)."""
    if st.etag or st.last_modified:
        return math.inf
    return (st.response_time - st.corrected_initial_age + st.lifetime
            + max(st.swr, st.sie, keep_stale))
