"""Reference model of fastproxy._ringcache.RingCache: dicts and FIFO queues, no bytes.

It follows the same S3-FIFO rules over the same segment geometry, so for any
sequence of operations the compiled store and this model must agree on every
hit, every value and every counter. Property tests drive both side by side.
"""
from __future__ import annotations

import math
from collections import deque

import xxhash

HDR = 32
FREQ_MAX = 3
FREE, SMALL, MAIN = 0, 1, 2


def entry_size(klen: int, vlen: int) -> int:
    """Arena bytes of one entry (header, key, value, 8-byte padding)."""
    return (HDR + klen + vlen + 7) & ~7


class _E:
    __slots__ = ("key", "hash", "value", "expires", "freq", "dead", "size", "seg")

    def __init__(self, key, h, value, expires, freq):
        self.key, self.hash, self.value, self.expires, self.freq = key, h, value, expires, freq
        self.dead = False
        self.seg = -1
        self.size = entry_size(len(key), len(value))


class Model:
    """The store's algorithm restated over Python containers."""

    def __init__(self, capacity, segment_size=0, max_item_share=0.5, small_ratio=0.1,
                 max_entries=0, promote_threshold=1):
        if segment_size == 0:
            segment_size = max(4096, min(capacity // 100, 4 << 20))
        segment_size &= ~7
        self.seg_size = segment_size
        self.nseg = capacity // segment_size
        self.max_item = int(segment_size * max_item_share)
        self.small_target = max(1, int(self.nseg * small_ratio + 0.5))
        self.promote_threshold = promote_threshold
        self.max_entries = max_entries if max_entries > 0 else max(64, self.nseg * segment_size // 1024)
        self.small_entries = max(1, int(self.max_entries * small_ratio + 0.5))
        self.ghost_size = self.max_entries
        self.segs = [[] for _ in range(self.nseg)]
        self.used = [0] * self.nseg
        self.queue_of = [FREE] * self.nseg
        self.q = {FREE: deque(range(self.nseg)), SMALL: deque(), MAIN: deque()}
        self.write = {SMALL: None, MAIN: None}
        self.qcount = {SMALL: 0, MAIN: 0}
        self.index = {}          # key -> live entry
        self.ghost = {}          # hash -> seq
        self.ghost_ring = [0] * self.ghost_size
        self.ghost_seq = 0
        self.now = 0.0
        self.hits = self.misses = self.inserts = self.evictions = self.expirations = 0
        self.bypasses = self.relocations = self.ghost_hits = self.forced = 0

    # -- ghost
    def ghost_member(self, h):
        window = max(1, self.qcount[MAIN])
        return h in self.ghost and self.ghost_seq - self.ghost[h] < window

    def ghost_insert(self, h):
        self.ghost_seq += 1
        seq = self.ghost_seq
        pos = seq % self.ghost_size
        if seq > self.ghost_size:
            old = self.ghost_ring[pos]
            if self.ghost.get(old) == seq - self.ghost_size:
                del self.ghost[old]
        self.ghost_ring[pos] = h
        self.ghost[h] = seq

    # -- entries
    def _drop(self, e):
        e.dead = True
        del self.index[e.key]
        self.qcount[self.queue_of[e.seg]] -= 1

    def _place(self, e, seg):
        self.segs[seg].append(e)
        e.seg = seg

    def _new_segment(self, q):
        n, limit = 0, 4 * self.nseg + 8
        while len(self.q[FREE]) < 2:
            self._evict_one(n >= limit, False)
            n += 1
        s = self.q[FREE].popleft()
        self.used[s] = 0
        self.segs[s] = []
        self.queue_of[s] = q
        self.q[q].append(s)
        self.write[q] = s
        return s

    def _alloc(self, q, size):
        w = self.write[q]
        if w is None or self.used[w] + size > self.seg_size:
            w = self._new_segment(q)
        self.used[w] += size
        return w

    def _alloc_reloc(self, size):
        w = self.write[MAIN]
        if w is None or self.used[w] + size > self.seg_size:
            w = self.q[FREE].popleft()
            self.used[w] = 0
            self.segs[w] = []
            self.queue_of[w] = MAIN
            self.q[MAIN].append(w)
            self.write[MAIN] = w
        self.used[w] += size
        return w

    def _evict_one(self, force, by_count):
        if by_count:
            over = self.qcount[SMALL] > self.small_entries
        else:
            over = len(self.q[SMALL]) > self.small_target
        q = SMALL if self.q[SMALL] and (over or not self.q[MAIN]) else MAIN
        if not self.q[q]:
            q = MAIN if q == SMALL else SMALL
        victim = self.q[q].popleft()
        if self.write[q] == victim:
            self.write[q] = None
        if force:
            self.forced += 1
        for e in self.segs[victim]:
            if e.dead:
                continue
            expired = e.expires <= self.now
            if q == SMALL:
                keep = not force and not expired and e.freq >= self.promote_threshold
            else:
                keep = not force and not expired and e.freq > 0
            if keep:
                ne = _E(e.key, e.hash, e.value, e.expires, 0 if q == SMALL else e.freq - 1)
                w = self._alloc_reloc(e.size)
                e.dead = True
                self._place(ne, w)
                self.index[e.key] = ne
                self.qcount[q] -= 1
                self.qcount[MAIN] += 1
                self.relocations += 1
            else:
                if q == SMALL and not expired:
                    self.ghost_insert(e.hash)
                if expired:
                    self.expirations += 1
                else:
                    self.evictions += 1
                self._drop(e)
        self.segs[victim] = []
        self.used[victim] = 0
        self.queue_of[victim] = FREE
        self.q[FREE].append(victim)

    # -- public operations, same signatures as RingCache
    def get(self, key, now=0.0, h=None):
        e = self.index.get(key)
        if e is None:
            self.misses += 1
            return None
        if e.expires != math.inf and e.expires <= now:
            self._drop(e)
            self.expirations += 1
            self.misses += 1
            return None
        e.freq = min(FREQ_MAX, e.freq + 1)
        self.hits += 1
        return e.value

    def set(self, key, value, expires=math.inf, now=0.0, h=None):
        hv = xxhash.xxh3_64_intdigest(key) if h is None else h
        self.now = now
        old = self.index.get(key)
        size = entry_size(len(key), len(value))
        if size > self.max_item:
            if old is not None:
                self._drop(old)
            self.bypasses += 1
            return False
        freq = 0
        if old is not None:
            q = self.queue_of[old.seg]
            freq = old.freq
            self._drop(old)
        elif self.ghost_member(hv):
            del self.ghost[hv]
            self.ghost_hits += 1
            q = MAIN
        else:
            q = SMALL
        n, limit = 0, 4 * self.nseg + 8
        while len(self.index) >= self.max_entries:
            self._evict_one(n >= limit, True)
            n += 1
        w = self._alloc(q, size)
        e = _E(key, hv, bytes(value), expires, freq)
        self._place(e, w)
        self.index[key] = e
        self.qcount[self.queue_of[w]] += 1
        self.inserts += 1
        return True

    def delete(self, key, h=None):
        e = self.index.get(key)
        if e is None:
            return False
        self._drop(e)
        return True

    def delete_prefix(self, prefix):
        victims = [e for e in self.index.values() if e.key.startswith(prefix)]
        for e in victims:
            self._drop(e)
        return len(victims)

    def counters(self):
        """The counters RingCache.stats() must match."""
        return {
            "hits": self.hits, "misses": self.misses, "inserts": self.inserts,
            "evictions": self.evictions, "expirations": self.expirations,
            "bypasses": self.bypasses, "relocations": self.relocations,
            "ghost_hits": self.ghost_hits, "forced": self.forced,
            "entries": len(self.index),
            "bytes": sum(e.size for e in self.index.values()),
            "small_segments": len(self.q[SMALL]), "main_segments": len(self.q[MAIN]),
            "free_segments": len(self.q[FREE]),
            "small_entries": self.qcount[SMALL], "main_entries": self.qcount[MAIN],
        }
