"""`Lookup`: what the cache can do for one request (policy.HttpCache.lookup's answer)."""
from __future__ import annotations

from . import entry


class Lookup:
    """What the cache can do for one request."""

    # Class-level defaults: the hit path sets only what differs.
    buffers: list = []                  # HIT / STALE / GATEWAY_TIMEOUT: write these (in order)
    status = 200                        # status code of the response in buffers
    conditional = b""                   # REVALIDATE / STALE: field lines to add upstream
    key = b""                           # store key of the entry found (refresh target)
    ttl = 0                             # seconds of freshness left (negative: stale)
    stale_if_error = False              # serve_stale() allowed if upstream fails
    stored: entry.Stored | None = None  # the entry (non-HIT kinds)
    client_304 = False                  # buffers are a 304 for the client's conditional
    coding: bytes | None = None         # vary-miss: the missing encoded copy's coding

    def __init__(self, kind: str, fwd: str = "", detail: str = "") -> None:
        self.kind = kind
        self.fwd = fwd                     # Cache-Status fwd= when going upstream
        self.detail = detail

    def __repr__(self) -> str:
        return f"Lookup({self.kind}, fwd={self.fwd!r}, detail={self.detail!r}, ttl={self.ttl})"
