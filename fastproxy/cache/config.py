"""Settings of the HTTP cache; the configuration loader maps TOML onto `CacheConfig`."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from typing import Any

from fastproxy.config.schema import parse_networks

from .shared import SharedConfig

# RFC 9110 15.1: status codes heuristically cacheable by default. 206 is left
# out because the store keeps whole representations only (no range merging).
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})

# Status codes whose caching rules this cache implements (RFC 9111 3 and
# 5.2.2.3 must-understand). 206 and 304 are never stored as such.
UNDERSTOOD_STATUSES = HEURISTIC_STATUSES | frozenset(
    {302, 303, 307, 400, 401, 403, 406, 408, 409, 500, 502, 503, 504})


@dataclass(frozen=True)
class CacheConfig:
    """How big the cache is and which optional behaviours are on."""

    size: int = 64 << 20                 # arena bytes (fixed memory)
    max_object_size: int = 1 << 20       # larger bodies are relayed, not stored
    segment_size: int = 0                # 0: size / 100, clamped to 4 KiB..4 MiB
    max_entries: int = 0                 # 0: size / 1024 (index + ghost budget)
    store_set_cookie: bool = False       # store such responses with Set-Cookie removed
    heuristic_fraction: float = 0.1      # RFC 9111 4.2.2: of (Date - Last-Modified)
    heuristic_max: float = 86400.0       # cap on a heuristic lifetime, seconds
    default_stale_while_revalidate: float = 0.0
    default_stale_if_error: float = 0.0
    # Stale entries without validators are kept this long past their lifetime: only a
    # request's max-stale or stale-if-error can use them (RFC 9111 5.2.1.2, RFC 5861 4).
    keep_stale: float = 60.0
    cache_name: str = "fastproxy"        # the Cache-Status member name (RFC 9211 2)
    coalesce_timeout: float = 5.0        # waiters give up and go upstream after this
    zero_copy_min: int = 64 << 10        # values this large are served from pinned views
    prefault: bool = True                # touch the arena at start (fixed RSS, no page faults later)
    coalesce: bool = True                # concurrent misses for one URL share one upstream request
    # Clients allowed to send PURGE on the data path (CIDR); the admin interface is separate.
    purge_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # RFC 9213 targeted fields this cache obeys before Cache-Control, first present wins.
    targeted_fields: tuple[str, ...] = ("Fastproxy-Cache-Control", "CDN-Cache-Control")
    shared: SharedConfig | None = None   # [cache.shared]: the second tier on Redis
    heuristic_statuses: frozenset[int] = field(default=HEURISTIC_STATUSES)

    def __post_init__(self) -> None:
        problems = []
        if self.size < 4 * 4096:
            problems.append(f"cache.size: {self.size} is below the minimum of 16384 bytes")
        if self.max_object_size <= 0:
            problems.append("cache.max_object_size: must be positive")
        if self.segment_size and self.segment_size < 256:
            problems.append(f"cache.segment_size: {self.segment_size} is below the minimum "
                            "of 256 bytes (or 0: chosen from size)")
        if not (0.0 <= self.heuristic_fraction <= 1.0):
            problems.append("cache.heuristic_fraction: must be between 0 and 1")
        for name in ("heuristic_max", "default_stale_while_revalidate",
                     "default_stale_if_error", "keep_stale", "coalesce_timeout"):
            if getattr(self, name) < 0:
                problems.append(f"cache.{name}: must not be negative")
        if not self.cache_name or any(c in self.cache_name for c in ' ,;="\r\n'):
            problems.append("cache.cache_name: must be a non-empty token")
        for i, net in enumerate(self.purge_allow):
            try:
                ipaddress.ip_network(net)
            except (TypeError, ValueError) as exc:
                problems.append(f"cache.purge_allow[{i}]: {exc}")
        for i, name in enumerate(self.targeted_fields):
            if not name or any(c in name for c in ' ,;:="()\r\n\t') or not name.isascii():
                problems.append(f"cache.targeted_fields[{i}]: {name!r} is not a field name")
        if not problems and self.size // self.arena_segment_size() < 4:
            problems.append(
                f"cache.max_object_size: {self.max_object_size} needs segments of "
                f"{self.arena_segment_size()} bytes and cache.size {self.size} holds fewer than 4")
        if problems:
            raise ValueError("; ".join(problems))

    def arena_segment_size(self) -> int:
        """Segment size of the arena: the configured one, or size/100 (4 KiB..4 MiB)
        grown so that a max_object_size body plus its head fits in half a segment."""
        if self.segment_size:
            return self.segment_size
        seg = max(4096, min(self.size // 100, 4 << 20))
        return max(seg, 2 * (self.max_object_size + (64 << 10))) & ~7

    @classmethod
    def from_table(cls, raw: Any) -> "CacheConfig | None":
        """The [cache] TOML table as a CacheConfig (None when size is 0: no cache).

        Raises `fastproxy.config.load.ConfigError` with one "cache.KEY: problem" line each.
        """
        from fastproxy.config.schema import ConfigError, parse_duration, parse_size

        if not isinstance(raw, dict):
            raise ConfigError([f"cache: expected a table, got {type(raw).__name__}"])
        problems: list[str] = []
        kwargs: dict[str, Any] = {}
        for name, value in raw.items():
            conv = _CONVERTERS.get(name)
            if conv is None:
                problems.append(f"cache.{name}: unknown key (expected one of "
                                f"{', '.join(sorted(_CONVERTERS))})")
                continue
            try:
                kwargs[name] = conv(value, parse_size, parse_duration)
            except ValueError as exc:
                text = str(exc)
                problems.extend(f"cache.{name}{'' if t.startswith(('[', '.')) else ': '}{t}"
                                for t in text.split("; "))
        if problems:
            raise ConfigError(problems)
        if kwargs.get("size", 1) == 0:
            return None
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise ConfigError(str(exc).split("; ")) from None


def _bool(value, _size, _duration) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _size_within(low: int, high: int):
    def conv(value, size, _duration) -> int:
        n = size(value)
        if not low <= n <= high:
            from fastproxy.config.schema import show_size
            raise ValueError(f"expected a size from {show_size(low)} to {show_size(high)}, "
                             f"got {value!r}")
        return n
    return conv


# The arena is one allocation per worker; segments are at most 2 GiB in the ring
# (ext/ringcache.pyx) and a stored object takes at most half a segment.
MAX_CACHE_SIZE = 1 << 40
MAX_OBJECT_SIZE = 512 << 20
MAX_ENTRIES = 1 << 26
_size = _size_within(0, MAX_CACHE_SIZE)
_object_size = _size_within(1, MAX_OBJECT_SIZE)
_segment_size = _size_within(0, 1 << 30)
_any_size = _size_within(0, 1 << 30)


def _duration(value, _size, duration) -> float:
    return duration(value)


def _entries(value, _size, _duration) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ENTRIES:
        raise ValueError(f"expected an integer from 0 to {MAX_ENTRIES:,} (0: size / 1KiB), "
                         f"got {value!r}")
    return value


def _fraction(value, _size, _duration) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"expected a number between 0 and 1, got {value!r}")
    return float(value)


def _name(value, _size, _duration) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _cidrs(value, _size, _duration) -> tuple[str, ...]:
    return parse_networks(value)


def _field_names(value, _size, _duration) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'expected a list of field names like ["CDN-Cache-Control"], '
                         f"got {value!r}")
    return tuple(value)


_CONVERTERS = {
    "size": _size, "max_object_size": _object_size, "segment_size": _segment_size,
    "max_entries": _entries,
    "store_set_cookie": _bool, "heuristic_fraction": _fraction, "heuristic_max": _duration,
    "default_stale_while_revalidate": _duration, "default_stale_if_error": _duration,
    "keep_stale": _duration, "cache_name": _name, "coalesce_timeout": _duration,
    "zero_copy_min": _any_size, "prefault": _bool, "coalesce": _bool, "purge_allow": _cidrs,
    "targeted_fields": _field_names,
    "shared": lambda value, _size, _duration: SharedConfig.from_table(value),
}
assert set(_CONVERTERS) == {f.name for f in fields(CacheConfig)} - {"heuristic_statuses"}
