"""HTTP caching (RFC 9111): the policy around the compiled ring-buffer store, and the cache step
of the data path (`layer`, with `fetch` for background revalidation). Imports the compiled
store, hit path and relay, config.schema and addresses (CIDR sets, client keys).
"""
from .coalesce import Coalescer
from .config import CacheConfig
from .keys import cache_key
from .policy import (
    GATEWAY_TIMEOUT,
    HIT,
    MISS,
    REVALIDATE,
    STALE,
    Decision,
    HttpCache,
    Lookup,
)

__all__ = [
    "CacheConfig", "Coalescer", "Decision", "HttpCache", "Lookup", "cache_key",
    "HIT", "STALE", "REVALIDATE", "MISS", "GATEWAY_TIMEOUT",
]
