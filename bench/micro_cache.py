"""Micro-benchmark of the cache: store get/set cost from Python, and hit ratios on Zipf traces.

Two tables:

1. ns per operation of fastproxy._ringcache.RingCache from Python, next to a
   pure-Python LRU (OrderedDict) doing the same job, plus the whole policy
   lookup of a fresh hit (HttpCache.lookup, what the relay pays per hit).
2. Hit ratio on one Zipf trace per alpha (0.7, 0.99, 1.2) with cache sizes of
   0.1%, 1% and 10% of the object count, for the ring store (S3-FIFO over
   segments, in its real byte arena), an object-level S3-FIFO (the algorithm
   without segments), LRU and FIFO, all on the same trace. The LRU and FIFO
   get as many objects as the arena's bytes hold.

    python -m bench.micro_cache [--quick]
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from collections import OrderedDict, deque
from pathlib import Path

import numpy as np

from fastproxy._ringcache import RingCache, entry_overhead

VALUE_SIZE = 200            # bytes per object in the hit-ratio runs (fixed size)


# ---------------------------------------------------------------- peers

class LRU:
    """Least-recently-used over an OrderedDict (the usual Python LRU)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.d: OrderedDict = OrderedDict()

    def get(self, key):
        v = self.d.get(key)
        if v is not None:
            self.d.move_to_end(key)
        return v

    def set(self, key, value):
        d = self.d
        d[key] = value
        d.move_to_end(key)
        if len(d) > self.capacity:
            d.popitem(last=False)


class FIFO:
    """First-in first-out: a hit changes nothing."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.d: dict = {}

    def get(self, key):
        return self.d.get(key)

    def set(self, key, value):
        d = self.d
        if key not in d and len(d) >= self.capacity:
            del d[next(iter(d))]
        d[key] = value


class S3FIFO:
    """Object-level S3-FIFO (Yang et al., SOSP 2023): small 10%, main, ghost; 2-bit counters."""

    def __init__(self, capacity: int, promote: int = 1) -> None:
        self.small_cap = max(1, capacity // 10)
        self.main_cap = capacity - self.small_cap
        self.small: deque = deque()
        self.main: deque = deque()
        self.freq: dict = {}
        self.where: dict = {}
        self.ghost: OrderedDict = OrderedDict()
        self.promote = promote

    def get(self, key):
        if key in self.freq:
            self.freq[key] = min(3, self.freq[key] + 1)
            return True
        return None

    def _evict_main(self):
        while self.main:
            k = self.main.popleft()
            if self.freq[k] > 0:
                self.freq[k] -= 1
                self.main.append(k)
            else:
                del self.freq[k]
                return

    def _evict_small(self):
        while self.small:
            k = self.small.popleft()
            if self.freq[k] >= self.promote:
                self.freq[k] = 0
                self.main.append(k)
                if len(self.main) > self.main_cap:
                    self._evict_main()
            else:
                del self.freq[k]
                self.ghost[k] = None
                if len(self.ghost) > self.main_cap:
                    self.ghost.popitem(last=False)
                return

    def set(self, key, value):
        if key in self.freq:
            return
        if len(self.small) + len(self.main) >= self.small_cap + self.main_cap:
            if len(self.small) >= self.small_cap or not self.main:
                self._evict_small()
            else:
                self._evict_main()
        self.freq[key] = 0
        if key in self.ghost:
            del self.ghost[key]
            self.main.append(key)
            if len(self.main) > self.main_cap:
                self._evict_main()
        else:
            self.small.append(key)


# ---------------------------------------------------------------- timing

def _ns_per_op(fn, n: int) -> float:
    gc.collect()
    gc.disable()
    try:
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter_ns()
            fn(n)
            best = min(best, (time.perf_counter_ns() - t0) / n)
        return best
    finally:
        gc.enable()


def op_rows(quick: bool) -> list[dict]:
    n = 20_000 if quick else 200_000
    nkeys = 1000
    keys = [b"http://origin.test/static/asset/%d.css" % i for i in range(nkeys)]
    rows = []
    for size in (100, 4096):
        value = b"v" * size
        ring = RingCache(64 << 20, prefault=True)     # as HttpCache builds it
        lru = LRU(10 * nkeys)
        for k in keys:
            ring.set(k, value)
            lru.set(k, value)
        sample = [keys[i % nkeys] for i in range(n)]

        def ring_get(m, g=ring.get, s=sample):
            for i in range(m):
                g(s[i])

        def lru_get(m, g=lru.get, s=sample):
            for i in range(m):
                g(s[i])

        def ring_view(m, g=ring.get_view, s=sample):
            for i in range(m):
                g(s[i])

        def ring_set(m, st=ring.set, s=sample, v=value):
            for i in range(m):
                st(s[i], v, now=0.0)

        def lru_set(m, st=lru.set, s=sample, v=value):
            for i in range(m):
                st(s[i], v)

        def loop_only(m, s=sample):
            for i in range(m):
                s[i]

        base = _ns_per_op(loop_only, n)
        for name, ours, peer in (
            (f"get hit {size} B (copy)", ring_get, lru_get),
            (f"get_view hit {size} B (pinned)", ring_view, lru_get),
            (f"set {size} B", ring_set, lru_set),
        ):
            o = _ns_per_op(ours, n) - base
            p = _ns_per_op(peer, n) - base
            rows.append({"name": name, "ours_ns": round(o), "peer": "python OrderedDict LRU",
                         "peer_ns": round(p), "ratio": round(p / o, 2) if o > 0 else None})

    ring = RingCache(64 << 20)
    miss_keys = [b"http://origin.test/missing/%d" % i for i in range(n)]

    def ring_miss(m, g=ring.get, s=miss_keys):
        for i in range(m):
            g(s[i])
    rows.append({"name": "get miss", "ours_ns": round(_ns_per_op(ring_miss, n)),
                 "peer": "", "peer_ns": None, "ratio": None})
    rows.append(_policy_row(n))
    return rows


def _policy_row(n: int) -> dict:
    from fastproxy.cache import HttpCache, CacheConfig
    from fastproxy.cache.directives import format_http_date
    # Parsed by the project's parser when it is built in (the tests' helper
    # falls back to a minimal reader of the same interface until then).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from cache_messages import request, response

    now = time.time()
    cache = HttpCache(CacheConfig(size=16 << 20))
    req = request(b"GET /a HTTP/1.1\nHost: origin.test\nAccept-Encoding: gzip\nUser-Agent: bench")
    body = b"x" * 4096
    resp = response(b"HTTP/1.1 200 OK\nDate: " + format_http_date(now) +
                    b"\nContent-Type: text/css\nCache-Control: max-age=3600\n"
                    b"ETag: \"abc\"\nContent-Length: 4096")
    cache.store(req, b"http://origin.test/a", resp, body, now, now)

    def lookups(m, lk=cache.lookup, r=req, k=b"http://origin.test/a", t=now + 1):
        for _ in range(m):
            lk(r, k, t)
    ns = _ns_per_op(lookups, n // 4)
    return {"name": "HttpCache.lookup fresh hit 4 KiB (policy + store)", "ours_ns": round(ns),
            "peer": "", "peer_ns": None, "ratio": None}


# ---------------------------------------------------------------- hit ratio

def zipf_trace(nobj: int, length: int, alpha: float, seed: int = 42) -> np.ndarray:
    """Object ids drawn with P(rank r) proportional to 1 / r^alpha, ranks shuffled onto ids."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, nobj + 1, dtype=np.float64) ** alpha
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(length), side="left")
    perm = rng.permutation(nobj)
    return perm[ranks]


def _run(cache, trace_keys, value) -> float:
    hits = 0
    get, put = cache.get, cache.set
    for k in trace_keys:
        if get(k) is None:
            put(k, value)
        else:
            hits += 1
    return hits / len(trace_keys)


def ratio_rows(quick: bool) -> list[dict]:
    nobj = 20_000 if quick else 100_000
    length = 200_000 if quick else 1_000_000
    value = b"x" * VALUE_SIZE
    rows = []
    for alpha in (0.7, 0.99, 1.2):
        ids = zipf_trace(nobj, length, alpha)
        names = [b"/obj/%d" % i for i in range(nobj)]
        trace = [names[i] for i in ids.tolist()]
        per_entry = entry_overhead(len(names[-1]), VALUE_SIZE)
        for share in (0.001, 0.01, 0.1):
            objects = max(4, int(nobj * share))
            capacity = objects * per_entry
            # The production geometry (capacity / 100 per segment) without the
            # 4 KiB floor, which would leave these small arenas a few segments.
            seg = max(256, (capacity // 100) & ~7)
            ring = RingCache(capacity, segment_size=seg, max_item_share=1.0,
                             max_entries=2 * objects)
            t0 = time.perf_counter()
            r_ring = _run(ring, trace, value)
            t_ring = time.perf_counter() - t0
            r_s3 = _run(S3FIFO(objects), trace, True)
            r_lru = _run(LRU(objects), trace, True)
            r_fifo = _run(FIFO(objects), trace, True)
            rows.append({
                "name": f"zipf a={alpha} size={share:.1%}",
                "ours_ns": round(t_ring / length * 1e9),
                "peer": "LRU", "peer_ns": None,
                "ratio": round(r_ring - r_lru, 4),
                "objects": objects, "segments": ring.stats()["segments"],
                "ring": round(r_ring, 4), "s3fifo_obj": round(r_s3, 4),
                "lru": round(r_lru, 4), "fifo": round(r_fifo, 4),
                "points_over_lru": round((r_ring - r_lru) * 100, 2),
            })
    return rows


def run(quick: bool = False) -> list[dict]:
    """All rows: per-operation costs, then hit ratios."""
    return op_rows(quick) + ratio_rows(quick)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (seconds, for CI)")
    args = ap.parse_args(argv)
    rows = run(args.quick)
    ops = [r for r in rows if "lru" not in r]
    hr = [r for r in rows if "lru" in r]
    print("| operation | ours ns | peer | peer ns | peer/ours |")
    print("|---|---:|---|---:|---:|")
    for r in ops:
        print(f"| {r['name']} | {r['ours_ns']} | {r['peer']} | {r['peer_ns'] or ''} "
              f"| {r['ratio'] or ''} |")
    print()
    print("| trace | objects in cache | ring (segments) | S3-FIFO objects | LRU | FIFO "
          "| ring - LRU (points) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in hr:
        print(f"| {r['name']} | {r['objects']} | {r['ring']:.4f} ({r['segments']}) "
              f"| {r['s3fifo_obj']:.4f} | {r['lru']:.4f} | {r['fifo']:.4f} "
              f"| {r['points_over_lru']:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
