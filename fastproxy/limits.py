"""Per-client limits: open connections, and request rate by token bucket (429 + Retry-After).

`ConnectionLimiter` counts open connections per client; the server asks
`RateLimits.open_connection(ip)` on accept and calls `close_connection(ip)` when the
connection ends (a refused connection gets a 429 and is closed). Memory is one entry per
client with open connections.

`RequestRateLimiter` is a token bucket per key: `rate` tokens per second up to `burst`;
each request takes one. `check(key)` answers 0 (go ahead) or the Retry-After in whole
seconds (RFC 9110 10.2.3 delay-seconds, rounded up so a client that waits that long
finds a token; RFC 6585 4 for 429). Buckets are kept in least-recently-used order; a
bucket idle long enough to be full again is the same as no bucket, so it is dropped, and
at most `max_keys` buckets exist (the least recently used goes first), so memory stays
bounded whatever the number of clients. The clock is injectable for tests.

Keys: the client IP by default (IPv6 clients by their /64, since one host commonly owns a
whole /64 and could otherwise rotate addresses past any per-address limit; IPv4-mapped
peers by their IPv4 address), or a request header (`key = "header:X-Api-Key"`) in reverse
mode behind a trusted balancer. For `header:X-Forwarded-For` the last address is used: it
is the one the trusted hop appended, the earlier ones are the client's say-so. A request
without the header is keyed by its client. Connection limits are always per client
address (no header exists yet when a connection opens).

With a `backend`, the request-rate buckets live in Redis and every node of a fleet takes
from the same one (Envoy's global rate limiting does this with its Redis service): each
check is one atomic script (GCRA, on Redis's clock, so nodes' clocks do not matter). When
Redis does not answer within `backend_timeout`, or its breaker is open after failures in a
row, the check falls back to this node's local bucket: limits loosen to per-node, requests
never fail because of Redis.

Configuration (`RateLimitConfig.from_table` reads it from TOML; 0 disables a limit, the
default, because a reverse proxy behind a balancer sees every client as one address)::

    [forward.limits]
    max_connections = 64      # open connections per client IP
    rate = 20.0               # requests per second per key
    burst = 40                # requests allowed at once (default: the rate, at least 1)
    key = "client_ip"         # or "header:NAME"
    ipv6_prefix = 64          # IPv6 clients are counted per /64 (one host usually owns one)
    max_keys = 100000         # buckets kept at most
    # backend = "redis://10.0.0.5:6379/0"  # reverse listeners: fleet-wide buckets
    # backend_timeout = 0.05  # seconds per check, then the local bucket answers
"""
from __future__ import annotations

import asyncio
import ipaddress
import math
import re
import time
from dataclasses import dataclass
from typing import Callable, Hashable
from fastproxy._relay import STATE_CLOSED
from fastproxy.config.schema import dataclass_from_table

__all__ = ["RateLimitConfig", "ConnectionLimiter", "RequestRateLimiter", "RateLimits"]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 5.6.2 field-name


def _number(value, name: str, minimum: float = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum \
            or value != value or value == math.inf:
        raise ValueError(f"{name}: expected a number >= {minimum:g}, got {value!r}")


@dataclass(frozen=True)
class RateLimitConfig:
    """Per-client connection and request-rate limits; 0 disables each."""

    max_connections: int = 0
    rate: float = 0.0
    burst: int = 0
    key: str = "client_ip"
    ipv6_prefix: int = 64
    max_keys: int = 100_000
    backend: str = ""                 # "redis://host:port/db": fleet-wide buckets
    backend_timeout: float = 0.05

    def __post_init__(self) -> None:
        for name in ("max_connections", "burst"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
        _number(self.rate, "rate")
        if isinstance(self.max_keys, bool) or not isinstance(self.max_keys, int) \
                or self.max_keys < 1:
            raise ValueError(f"max_keys: expected an integer >= 1, got {self.max_keys!r}")
        if isinstance(self.ipv6_prefix, bool) or not isinstance(self.ipv6_prefix, int) \
                or not 1 <= self.ipv6_prefix <= 128:
            raise ValueError(f"ipv6_prefix: expected a prefix length 1-128, got {self.ipv6_prefix!r}")
        if self.backend:
            if not isinstance(self.backend, str) or \
                    not self.backend.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError(f'backend: expected "redis://HOST:PORT/DB", got {self.backend!r}')
            if not self.rate:
                raise ValueError("backend: needs rate (requests per second) to be set")
            try:
                import redis.asyncio  # noqa: F401
            except ImportError:
                raise ValueError("backend: needs the redis package "
                                 "(pip install 'fastproxy[redis]')") from None
        _number(self.backend_timeout, "backend_timeout")
        if not 0 < self.backend_timeout <= 10:
            raise ValueError(f"backend_timeout: expected seconds above 0 and at most 10, "
                             f"got {self.backend_timeout!r}")
        if self.burst and not self.rate:
            raise ValueError("burst: needs rate (requests per second) to be set")
        if not isinstance(self.key, str) or not (
                self.key == "client_ip" or
                self.key.startswith("header:") and _TOKEN.match(self.key[7:])):
            raise ValueError(f"key: expected \"client_ip\" or \"header:NAME\", got {self.key!r}")

    @property
    def effective_burst(self) -> int:
        """The bucket size: `burst`, or the rate rounded up (at least 1) when burst is 0."""
        return self.burst or max(1, math.ceil(self.rate))

    @classmethod
    def from_table(cls, raw) -> "RateLimitConfig":
        """Build from a TOML table; unknown keys and bad values raise ValueError naming the key."""
        return dataclass_from_table(cls, raw)


class ConnectionLimiter:
    """Open connections per key, refusing beyond `limit` (0: unlimited)."""

    __slots__ = ("limit", "_open")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[Hashable, int] = {}

    def open(self, key: Hashable) -> bool:
        """Count a new connection for key; False (and not counted) when over the limit."""
        n = self._open.get(key, 0)
        if self.limit and n >= self.limit:
            return False
        self._open[key] = n + 1
        return True

    def close(self, key: Hashable) -> None:
        """Forget one connection counted by open()."""
        n = self._open.get(key, 0)
        if n <= 1:
            self._open.pop(key, None)
        else:
            self._open[key] = n - 1

    def count(self, key: Hashable) -> int:
        """Connections currently open for key."""
        return self._open.get(key, 0)

    def __len__(self) -> int:
        return len(self._open)


class RequestRateLimiter:
    """Token buckets per key: `rate` requests/second sustained, `burst` at once."""

    __slots__ = ("rate", "burst", "max_keys", "_clock", "_buckets", "_full_after", "_calls")

    def __init__(self, rate: float, burst: int | None = None, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0:
            raise ValueError(f"rate: expected requests per second > 0, got {rate!r}")
        self.rate = float(rate)
        self.burst = float(burst or max(1, math.ceil(rate)))
        self.max_keys = max_keys
        self._clock = clock
        # key -> (tokens, last update); dict order is least recently used first.
        self._buckets: dict[Hashable, tuple[float, float]] = {}
        self._full_after = self.burst / self.rate  # idle seconds after which a bucket is full
        self._calls = 0

    def check(self, key: Hashable) -> int:
        """Take a token for key: 0 when the request may go, else the Retry-After seconds (>= 1)."""
        now = self._clock()
        buckets = self._buckets
        entry = buckets.pop(key, None)
        if entry is None:
            tokens = self.burst
        else:
            tokens = entry[0] + (now - entry[1]) * self.rate
            if tokens > self.burst:
                tokens = self.burst
        if tokens >= 0.999999999:  # tolerate float rounding: waiting Retry-After must admit
            tokens = max(0.0, tokens - 1.0)
            wait = 0
        else:
            wait = max(1, math.ceil((1.0 - tokens) / self.rate))
        buckets[key] = (tokens, now)
        self._calls += 1
        if self._calls & 63 == 0 or len(buckets) > self.max_keys:
            self._expire(now)
        return wait

    def _expire(self, now: float) -> None:
        buckets = self._buckets
        horizon = now - self._full_after
        # Oldest first: stop at the first bucket used recently enough to still matter.
        while buckets:
            key = next(iter(buckets))
            if buckets[key][1] > horizon:
                break
            del buckets[key]
        while len(buckets) > self.max_keys:
            del buckets[next(iter(buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


# GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp): the
# theoretical arrival time `tat` advances by one emission interval per request; a request
# is refused when it would put tat more than `burst` intervals ahead of now. Returns 0 or
# the milliseconds until a request would pass.
_GCRA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval = tonumber(ARGV[1])
local limit = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > limit then
  return new_tat - now - limit
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now))
return 0
"""


class GlobalRateLimiter:
    """Request-rate buckets in Redis, with the local buckets as the fallback."""

    def __init__(self, config: RateLimitConfig, local: RequestRateLimiter) -> None:
        from fastproxy.cache.shared import Breaker

        self.config = config
        self.local = local
        self.interval_ms = 1000.0 / config.rate
        self.burst = config.effective_burst
        self.breaker = Breaker(3, 5.0)
        self._script = None
        self.remote_checks = 0
        self.fallbacks = 0

    def script(self):
        # Created on first use, inside the worker's loop (the client's pool binds to it).
        if self._script is None:
            import redis.asyncio as aioredis
            t = self.config.backend_timeout
            client = aioredis.Redis.from_url(self.config.backend, socket_timeout=t,
                                             socket_connect_timeout=t, max_connections=256)
            self._script = client.register_script(_GCRA)
        return self._script

    async def check(self, key) -> int:
        """0 when the request may go, else the Retry-After seconds; never raises."""
        if self.breaker.allow():
            name = b"fastproxy:rate:" + (key if isinstance(key, bytes) else key.encode())
            try:
                wait_ms = await asyncio.wait_for(
                    self.script()(keys=[name], args=[self.interval_ms, self.burst]),
                    self.config.backend_timeout)
            except Exception:   # noqa: BLE001 - Redis down, slow or refusing: local limits
                self.breaker.failure()
            else:
                self.breaker.success()
                self.remote_checks += 1
                return max(1, math.ceil(int(wait_ms) / 1000)) if int(wait_ms) > 0 else 0
        self.fallbacks += 1
        return self.local.check(key)


class RateLimits:
    """The configured limits together, with the key a request is counted under."""

    def __init__(self, config: RateLimitConfig = RateLimitConfig(), *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.connections = ConnectionLimiter(config.max_connections)
        self.requests = RequestRateLimiter(config.rate, config.effective_burst,
                                           max_keys=config.max_keys, clock=clock) \
            if config.rate else None
        # Fleet-wide buckets (reverse listeners with a backend): checked with refuse_later().
        self.remote = GlobalRateLimiter(config, self.requests) \
            if config.backend and self.requests is not None else None
        self._tasks: set = set()
        header = config.key[7:].lower().encode() if config.key.startswith("header:") else None
        self._header = header
        self._last_hop = header == b"x-forwarded-for"
        self._client_keys: dict[str, str] = {}

    def client_key(self, client_ip: str) -> str:
        """The key for a peer address: IPv4 as is (unmapped), IPv6 as its configured prefix."""
        found = self._client_keys.get(client_ip)
        if found is None:
            found = client_ip
            if ":" in client_ip:
                ip = ipaddress.IPv6Address(client_ip.split("%", 1)[0])
                if ip.ipv4_mapped is not None:
                    found = str(ip.ipv4_mapped)
                else:
                    found = str(ipaddress.IPv6Network((ip, self.config.ipv6_prefix), strict=False))
            if len(self._client_keys) >= 8192:
                self._client_keys.clear()
            self._client_keys[client_ip] = found
        return found

    def open_connection(self, client_ip: str) -> bool:
        """Count a connection from a peer; False when it is over max_connections."""
        return self.connections.open(self.client_key(client_ip))

    def close_connection(self, client_ip: str) -> None:
        """Forget a connection counted by open_connection()."""
        self.connections.close(self.client_key(client_ip))

    def key(self, request, client_ip: str) -> Hashable:
        """The key a request is limited under: its client key, or the configured header's value."""
        if self._header is None:
            return self.client_key(client_ip)
        value = request.get(self._header)
        if not value:
            return self.client_key(client_ip)
        if self._last_hop:
            value = value.rpartition(b",")[2].strip()
            if not value:
                return self.client_key(client_ip)
        return value

    # -- the relay's hooks, shared by the reverse and forward handlers ----------------

    def connection_made(self, conn) -> None:
        """Count a new client connection; answer 429 and close it when over the limit."""
        if not self.open_connection(conn.client_ip):
            conn.log_extra = {"limit": "connections"}
            conn.reject(429, "too many connections from your address", b"Retry-After: 1\r\n")
            conn.client_port = -1  # not counted: connection_lost must not release it

    def connection_lost(self, conn) -> None:
        """Forget a connection counted by connection_made."""
        if conn.client_port != -1:
            self.close_connection(conn.client_ip)

    def refuse(self, conn, request) -> bool:
        """Answer 429 with Retry-After when the request is over the rate; True if answered."""
        wait = self.check_request(request, conn.client_ip)
        if not wait:
            return False
        conn.log_extra = {"limit": "rate"}
        conn.respond_error(429, "request rate limit reached", b"Retry-After: %d\r\n" % wait)
        return True

    def refuse_later(self, conn, request, admitted) -> None:
        """Check the fleet-wide bucket; then answer 429, or call admitted(conn, request)."""
        task = asyncio.get_running_loop().create_task(self._remote(conn, request, admitted))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remote(self, conn, request, admitted) -> None:
        assert self.remote is not None   # refuse_later runs only with a remote bucket
        wait = await self.remote.check(self.key(request, conn.client_ip))
        if conn.req is not request or conn.state == STATE_CLOSED:
            return    # the client left meanwhile
        if wait:
            conn.log_extra = {"limit": "rate"}
            conn.respond_error(429, "request rate limit reached", b"Retry-After: %d\r\n" % wait)
        else:
            admitted(conn, request)

    def check_request(self, request, client_ip: str) -> int:
        """0 when the request may go, else the Retry-After seconds for a 429."""
        if self.requests is None:
            return 0
        return self.requests.check(self.key(request, client_ip))
