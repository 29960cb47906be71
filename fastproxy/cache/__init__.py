"""HTTP caching (RFC 9111) for fastproxy: the policy around the compiled ring-buffer store."""
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
