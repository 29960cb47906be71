"""Fresh cache hits answered in C before the request reaches Python (from ext/hitpath.pyx).

The relay calls the C entry point itself; `__call__` is the same check for tests.
"""
from fastproxy._http import Request
from fastproxy._ringcache import RingCache

class FreshHits:
    hits: int          # requests answered
    status: int        # status code of the last answer
    body_len: int      # body bytes of the last answer
    log_hit: object    # access-log fields of a hit
    negotiate: object  # compression.coding_for (None: no encoded copies answered here)
    def __init__(self, ring: RingCache, ns: bytes, scheme: bytes, name: bytes, via: bytes,
                 log_hit: object, copy_max: int, negotiate: object = None) -> None: ...
    def __call__(self, req: Request, keep: bool = True) -> bytes | list | None:
        """The complete response for req when it is a fresh hit (bytes, or [head bytes,
        memoryview of the pinned body] above copy_max), else None."""
