"""Destination names: canonical host form and asynchronous DNS with a small TTL cache.

`normalize_host` turns the host of a request target into the one canonical string that
the ACL matches and the resolver looks up, so `EXAMPLE.com.`, `example.com` and the
numeric spellings of an IPv4 address (`2130706433`, `0x7f.1`) cannot slip past a host
rule. `Resolver.resolve` looks names up with `loop.getaddrinfo` (off the event loop, in
the loop's thread pool), caches answers and failures for a short fixed time, coalesces
concurrent lookups of one name, and answers literal addresses without a lookup.

The cache TTL is fixed rather than taken from DNS (getaddrinfo does not expose it); this
is safe because the ACL checks the address actually connected, not the name (see acl.py).

Configuration (`ResolverConfig.from_table` reads it from TOML)::

    [forward.resolver]
    positive_ttl = "30s"    # how long an answer is reused (a duration or seconds)
    negative_ttl = "5s"     # how long a failure is reused (spares the DNS server a retry storm)
    timeout = "5s"          # a lookup slower than this fails with 504
    max_entries = 4096      # cache bound; the oldest entries go first
    family = "any"          # "any", "ipv4" or "ipv6"
"""
from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import time
from dataclasses import dataclass
from typing import Callable, cast
from fastproxy.config.schema import dataclass_from_table

__all__ = [
    "HostError", "ResolveError", "ResolverConfig", "Resolver", "normalize_host", "is_ip_literal",
]


class HostError(ValueError):
    """A request target's host is malformed; the proxy answers 400 with the message."""

    status = 400


class ResolveError(Exception):
    """A name could not be resolved; `.reason` is one line for the 502/504 body."""

    def __init__(self, host: str, reason: str, status: int = 502) -> None:
        super().__init__(f"cannot resolve {host}: {reason}")
        self.host = host
        self.reason = reason
        self.status = status


# ---------------------------------------------------------------------------------------
# Host normalisation
# ---------------------------------------------------------------------------------------

# Letters, digits, hyphen, and underscore (found in real service names, e.g. SRV-style
# labels); RFC 3986 reg-name allows more (sub-delims, pct-encoding) but no DNS name uses
# them, and a proxy that passed them on would hand getaddrinfo strings it interprets
# differently from our rules.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdef")

# Canonical hosts already seen (bounded): most traffic goes to a few hosts, so the
# per-request cost of normalisation is usually one dict lookup.
_seen: dict = {}
_SEEN_MAX = 4096


def _ipv4_part(part: str, host: str) -> int:
    """Parse one dotted part the way WHATWG URL and inet_aton do: 0x hex, 0 octal, decimal."""
    if part[:2] == "0x":
        digits = part[2:]
        if digits and not set(digits) <= _HEX:
            raise HostError(f"malformed IPv4 address in host {host!r}")
        return int(digits, 16) if digits else 0
    if not part or not set(part) <= _DIGITS:
        raise HostError(f"malformed IPv4 address in host {host!r}")
    if len(part) > 1 and part[0] == "0":
        if not set(part) <= frozenset("01234567"):
            raise HostError(f"malformed IPv4 address in host {host!r}")
        return int(part, 8)
    return int(part)


def _numeric_ipv4(name: str, host: str) -> str:
    """Canonical dotted quad of a host whose last label is a number (WHATWG IPv4 parser).

    Browsers and glibc's inet_aton read `2130706433`, `127.1` and `0x7f.0.0.1` as
    127.0.0.1; rules are written in dotted quads, so the proxy must see them that way too.
    """
    parts = name.split(".")
    if len(parts) > 4:
        raise HostError(f"malformed IPv4 address in host {host!r}")
    nums = [_ipv4_part(p, host) for p in parts]
    for n in nums[:-1]:
        if n > 255:
            raise HostError(f"malformed IPv4 address in host {host!r}")
    if nums[-1] >= 256 ** (5 - len(nums)):
        raise HostError(f"malformed IPv4 address in host {host!r}")
    value = nums[-1]
    for i, n in enumerate(nums[:-1]):
        value += n << (8 * (3 - i))
    return str(ipaddress.IPv4Address(value))


def _normalize(host: str, original) -> str:
    if host.startswith("["):
        if not host.endswith("]"):
            raise HostError(f"unterminated IPv6 literal in host {original!r}")
        host = host[1:-1]
        if "%" in host:
            # RFC 9844 removed zone identifiers from URIs; they name a local interface.
            raise HostError(f"IPv6 zone identifier not allowed in host {original!r}")
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise HostError(f"malformed IPv6 literal in host {original!r}") from None
    if ":" in host:
        if "%" in host:
            raise HostError(f"IPv6 zone identifier not allowed in host {original!r}")
        # CONNECT authorities split by the parser lose their brackets; accept a bare IPv6.
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise HostError(f"malformed host {original!r}") from None
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]  # the root label: `example.com.` is `example.com`
    if not host:
        raise HostError("empty host")
    if len(host) > 253:
        raise HostError(f"host longer than 253 characters: {original!r}")
    if not set(host) <= _NAME_CHARS:
        raise HostError(f"invalid character in host {original!r}")
    labels = host.split(".")
    for label in labels:
        if not label:
            raise HostError(f"empty label in host {original!r}")
        if len(label) > 63:
            raise HostError(f"label longer than 63 characters in host {original!r}")
    last = labels[-1]
    # A top-level label is never all-numeric (RFC 3696 section 2), so a name ending in a
    # number is an IPv4 address in one of its historic spellings.
    if set(last) <= _DIGITS or (last[:2] == "0x" and set(last[2:]) <= _HEX):
        return _numeric_ipv4(host, original)
    return host


def normalize_host(host: str | bytes) -> str:
    """Return the canonical form of a target host (lowercase, no root dot, canonical IP); raise HostError."""
    if not isinstance(host, (str, bytes)):
        host = bytes(host)  # bytearray / memoryview: unhashable, and they may change
    cached = _seen.get(host)
    if cached is not None:
        return cached
    if isinstance(host, bytes):
        try:
            text = host.decode("ascii")
        except UnicodeDecodeError:
            # RFC 3986 3.2.2: a URI host is ASCII (IDNs travel as A-labels, xn--...).
            raise HostError(f"non-ASCII host {host!r}") from None
    else:
        text = host
        if not text.isascii():
            raise HostError(f"non-ASCII host {host!r}")
    result = _normalize(text, host)
    if len(_seen) >= _SEEN_MAX:
        _seen.clear()
    _seen[host] = result
    return result


def is_ip_literal(host: str) -> bool:
    """True when a normalised host is an IP address rather than a name."""
    return ":" in host or (host[-1:].isdigit() and host.replace(".", "").isdigit())


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------

_FAMILIES = {"any": socket.AF_UNSPEC, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


@dataclass(frozen=True)
class ResolverConfig:
    """Knobs of the DNS cache; invalid values raise ValueError naming the field."""

    positive_ttl: float = 30.0
    negative_ttl: float = 5.0
    timeout: float = 5.0
    max_entries: int = 4096
    family: str = "any"

    def __post_init__(self) -> None:
        for name in ("positive_ttl", "negative_ttl"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name}: expected a number of seconds >= 0, got {value!r}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) \
                or not self.timeout > 0:
            raise ValueError(f"timeout: expected a number of seconds > 0, got {self.timeout!r}")
        if isinstance(self.max_entries, bool) or not isinstance(self.max_entries, int) \
                or self.max_entries < 1:
            raise ValueError(f"max_entries: expected an integer >= 1, got {self.max_entries!r}")
        if self.family not in _FAMILIES:
            raise ValueError(f"family: expected one of any, ipv4, ipv6, got {self.family!r}")

    @classmethod
    def from_table(cls, raw) -> "ResolverConfig":
        """Build from a TOML table; unknown keys and bad values raise ValueError naming the key."""
        return dataclass_from_table(cls, raw, ('positive_ttl', 'negative_ttl', 'timeout'))


# ---------------------------------------------------------------------------------------
# Resolver
# ---------------------------------------------------------------------------------------

# getaddrinfo error codes -> the reason a client reads in the 502 body.
_GAI_REASONS = {
    getattr(socket, "EAI_NONAME", -2): "name not found",
    getattr(socket, "EAI_AGAIN", -3): "temporary DNS failure, try again",
    getattr(socket, "EAI_FAIL", -4): "DNS server failure",
    getattr(socket, "EAI_NODATA", -5): "no address for this name",
    getattr(socket, "EAI_ADDRFAMILY", -9): "no address of the configured family",
    getattr(socket, "EAI_FAMILY", -6): "address family not supported",
    getattr(socket, "EAI_MEMORY", -10): "resolver out of memory",
}


class Resolver:
    """Asynchronous name -> addresses lookups with a TTL cache and coalescing of concurrent lookups."""

    def __init__(self, config: ResolverConfig = ResolverConfig(), *,
                 clock: Callable[[], float] = time.monotonic,
                 getaddrinfo: Callable | None = None) -> None:
        self.config = config
        self._clock = clock
        # The system lookup by default; a delegating wrapper lets tests count real lookups.
        self._getaddrinfo = getaddrinfo
        self._family = _FAMILIES[config.family]
        # host -> (expires_at, addresses tuple or ResolveError)
        self._cache: dict[str, tuple[float, object]] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self.lookups = 0  # real getaddrinfo calls started (for metrics and tests)

    def cached(self, host: str) -> tuple[str, ...] | None:
        """Addresses for a normalised host without awaiting, or None when a lookup is needed.

        Raises the cached ResolveError for a name that recently failed.
        """
        if is_ip_literal(host):
            return self._literal(host)
        entry = self._cache.get(host)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._cache[host]
            return None
        result = entry[1]
        if isinstance(result, ResolveError):
            raise result
        return cast("tuple[str, ...]", result)

    def expires(self, host: str) -> float:
        """When the answer `cached(host)` gives stops being valid (this resolver's clock):
        never for an IP literal, the past when nothing is cached."""
        if is_ip_literal(host):
            return math.inf
        entry = self._cache.get(host)
        return entry[0] if entry is not None else 0.0

    async def resolve(self, host: str) -> tuple[str, ...]:
        """Addresses (canonical strings, in getaddrinfo's preference order) for a normalised host."""
        found = self.cached(host)
        if found is not None:
            return found
        task = self._inflight.get(host)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._lookup(host))
            self._inflight[host] = task
            task.add_done_callback(lambda _t: self._inflight.pop(host, None))
        # shield: one cancelled waiter must not cancel the lookup the others share.
        return await asyncio.shield(task)

    def _literal(self, host: str) -> tuple[str, ...]:
        version = 6 if ":" in host else 4
        if self._family == socket.AF_INET and version == 6 or \
                self._family == socket.AF_INET6 and version == 4:
            raise ResolveError(host, "address family disabled by configuration")
        return (host,)

    async def _lookup(self, host: str) -> tuple[str, ...]:
        loop = asyncio.get_running_loop()
        gai = self._getaddrinfo or loop.getaddrinfo
        self.lookups += 1
        try:
            infos = await asyncio.wait_for(
                gai(host, None, family=self._family, type=socket.SOCK_STREAM,
                    proto=socket.IPPROTO_TCP),
                self.config.timeout)
        except asyncio.TimeoutError:
            # RFC 9110 15.6.5: no timely answer from a server needed for the request.
            err = ResolveError(host, f"DNS lookup timed out after {self.config.timeout:g}s", 504)
            self._store(host, err, self.config.negative_ttl)
            raise err from None
        except socket.gaierror as exc:
            reason = _GAI_REASONS.get(exc.errno, exc.strerror or "lookup failed")
            err = ResolveError(host, reason)
            self._store(host, err, self.config.negative_ttl)
            raise err from None
        except (OSError, UnicodeError) as exc:
            err = ResolveError(host, f"lookup failed: {exc}")
            self._store(host, err, self.config.negative_ttl)
            raise err from None
        addresses: list[str] = []
        for family, _type, _proto, _canon, sockaddr in infos:
            addr = sockaddr[0]
            if family == socket.AF_INET6 and sockaddr[3]:
                continue  # scoped (link-local) answers name a local interface, never a destination
            if addr not in addresses:
                addresses.append(addr)
        if not addresses:
            err = ResolveError(host, "no usable address for this name")
            self._store(host, err, self.config.negative_ttl)
            raise err
        result = tuple(addresses)
        self._store(host, result, self.config.positive_ttl)
        return result

    def _store(self, host: str, value: object, ttl: float) -> None:
        if ttl <= 0:
            return
        cache = self._cache
        cache.pop(host, None)
        if len(cache) >= self.config.max_entries:
            now = self._clock()
            for key in [k for k, (exp, _v) in cache.items() if exp <= now]:
                del cache[key]
            while len(cache) >= self.config.max_entries:
                del cache[next(iter(cache))]  # insertion order: the oldest answer goes
        cache[host] = (self._clock() + ttl, value)

    def clear(self) -> None:
        """Forget every cached answer (on configuration reload)."""
        self._cache.clear()
