"""One worker's cache: the store, what its listeners share, and its counters.

Every listener with a cache in a worker uses the same `WorkerCache` (each under its own
key namespace, cache/layer.py); a reload that changes the cache's settings retires it,
and its arena is freed when the last connection of the old generation ends.
"""
from __future__ import annotations

import asyncio
import ipaddress
import weakref

from fastproxy._hitpath import FreshHits
from fastproxy.addresses import CidrSet
from fastproxy.cache import CacheConfig, Coalescer, HttpCache
from fastproxy.cache.shared import SharedTier


class WorkerCache:
    """One worker's cache and what its listeners share: coalescing, refreshes, counters."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.http = HttpCache(config)
        self.coalescer = Coalescer(config.coalesce_timeout)
        self.purge_allow = CidrSet(ipaddress.ip_network(n) for n in config.purge_allow)
        self.refreshing: set[bytes] = set()
        self.tasks: set[asyncio.Task] = set()
        self.fast: list[FreshHits] = []     # the relay's fast paths over this cache
        self.namespaces: set[bytes] = set()  # key prefixes of the listeners using it
        # The listener settings (relay.ListenerSettings) whose connections use this cache,
        # weakly: a generation nobody uses any more is not kept alive for them.
        self.users: weakref.WeakSet = weakref.WeakSet()
        self.retired = False
        self.hits = 0             # answered from a fresh entry
        self.stale = 0            # answered from a stale entry (swr, max-stale, stale-if-error)
        self.misses = 0           # GET/HEAD sent upstream (coalesced waiters are not)
        self.revalidated = 0      # 304s that refreshed an entry
        self.stores = 0
        self.store_failures = 0   # storable, but the store refused it (too big, all pinned)
        self.collapsed = 0        # waited for another request's response and used it
        self.invalidations = 0    # entries removed after unsafe methods
        self.purges = 0           # entries removed by PURGE or the admin interface
        self.refreshes = 0        # background revalidations finished
        self.refresh_failures = 0
        self.peer_asked = 0       # misses sent to the fleet node owning the key
        self.peer_failed = 0      # ... whose owner failed (then fetched here)
        self.encoded = 0          # copies of stored responses encoded (one per coding)
        self.encoding: dict[bytes, asyncio.Future] = {}   # copies being made, by key
        self.shared = (SharedTier(config.shared, config.keep_stale)
                       if config.shared is not None else None)

    def stats(self) -> dict:
        """Counters of this worker's cache: the layer's and the store's."""
        ring = self.http.stats()
        return {
            "hits": self.hits + sum(f.hits for f in self.fast), "stale": self.stale, "misses": self.misses,
            # Of the hits, those the relay answered itself (hitpath.pyx).
            "compiled_hits": sum(f.hits for f in self.fast),
            "revalidated": self.revalidated, "stores": self.stores,
            "store_failures": self.store_failures, "collapsed": self.collapsed,
            "invalidations": self.invalidations, "purges": self.purges,
            "refreshes": self.refreshes, "refresh_failures": self.refresh_failures,
            "evictions": ring["evictions"], "expirations": ring["expirations"],
            "entries": ring["entries"], "bytes": ring["bytes"], "capacity": ring["capacity"],
            # Segments a transport still writes from (large hits queued for slow readers).
            "pinned_segments": ring["pinned_segments"],
            "peer_asked": self.peer_asked, "peer_failed": self.peer_failed,
            "encoded": self.encoded,
            **(self.shared.stats if self.shared is not None else {}),
        }

    def purge(self, url: bytes, namespaces=None) -> int:
        """Remove one URL (all its variants) in every listener's namespace (or those given)."""
        n = sum(self.http.purge(ns + url) for ns in (namespaces or self.namespaces))
        self.purges += n
        return n

    def purge_prefix(self, prefix: bytes, namespaces=None) -> int:
        """Remove every URL starting with prefix, in every namespace (or those given)."""
        n = sum(self.http.purge_prefix(ns + prefix) for ns in (namespaces or self.namespaces))
        self.purges += n
        return n

    def close(self) -> None:
        """Cancel background refreshes (worker shutdown)."""
        for task in list(self.tasks):
            task.cancel()
        if self.shared is not None:
            self.shared.close()

    def use(self, settings) -> None:
        """Connections accepted with these listener settings use this cache."""
        self.users.add(settings)

    def retire(self) -> None:
        """A reload replaced this cache: free its memory when its last connection ends.

        The generations that used it form reference cycles (runtime, handlers, settings),
        so without this its arena would wait for a full garbage collection.
        """
        if self.retired:
            return
        self.retired = True
        self.close()
        for settings in self.users:
            settings.on_idle = self._release_if_unused
        self._release_if_unused()

    def _release_if_unused(self) -> None:
        users = list(self.users)
        if any(settings.open for settings in users):
            return
        for settings in users:
            settings.on_idle = None
        self.users = weakref.WeakSet()
        self.fast.clear()
        self.http.ring.release()
