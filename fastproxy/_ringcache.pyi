"""Fixed-size ring-buffer object store with S3-FIFO eviction (compiled from ext/ringcache.pyx).

Keys are bytes, hashed with xxh3-64 (or the caller's `h`, which must then be
given consistently); the full key is compared on every hit. Times are the
caller's clock (the HTTP policy uses wall-clock seconds); `now=None` reads the
wall clock.
"""
from collections.abc import Sequence

_Buffer = bytes | bytearray | memoryview

def entry_overhead(key_len: int, value_len: int) -> int:
    """Arena bytes one entry with these key and value lengths occupies."""

class Pinned:
    """Read-only buffer over a stored value; its segment is not evicted while it is alive."""
    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes: ...
    def __buffer__(self, flags: int) -> memoryview: ...

class RingCache:
    hits: int
    misses: int
    inserts: int
    evictions: int
    expirations: int
    bypasses: int
    relocations: int
    ghost_hits: int
    forced: int
    alloc_failures: int
    def __init__(
        self,
        capacity: int,
        segment_size: int = 0,         # 0: capacity / 100, clamped to 4 KiB..4 MiB
        max_item_share: float = 0.5,   # entries above this share of a segment bypass
        small_ratio: float = 0.1,      # share of segments (and entries) for the small FIFO
        max_entries: int = 0,          # 0: capacity / 1024; sizes the index and ghost
        promote_threshold: int = 1,    # reads needed in the small FIFO to move to main
        prefault: bool = False,        # touch every arena page at construction
    ) -> None: ...
    def get(self, key: bytes, now: float | None = None, h: int | None = None) -> bytes | None:
        """Copy of the value, or None (absent or expired)."""
    def get_view(self, key: bytes, now: float | None = None, h: int | None = None) -> Pinned | None:
        """Zero-copy view of the value pinning its segment, or None."""
    def set(
        self,
        key: bytes,
        value: _Buffer | Sequence[_Buffer],
        expires: float = ...,
        now: float | None = None,
        h: int | None = None,
    ) -> bool:
        """Store value (or the concatenation of a list/tuple of buffers); False if it bypassed."""
    def delete(self, key: bytes, h: int | None = None) -> bool: ...
    def set_expires(self, key: bytes, expires: float, h: int | None = None) -> bool: ...
    def delete_prefix(self, prefix: bytes) -> int: ...
    def keys(self) -> list[bytes]: ...
    def clear(self) -> None: ...
    def release(self) -> None:
        """Free the arena (once no Pinned view reads it), index and ghost; empty for good."""
    def stats(self) -> dict[str, int]: ...
    def _debug_check(self) -> bool: ...
    def __contains__(self, key: object) -> bool: ...
    def __len__(self) -> int: ...
