"""Per-request numbers for the admin interface: latency histograms and the top URLs.

A Recorder stands where the relay expects the access log (it calls `write(conn)` once per
finished exchange), counts, then hands the exchange on to the real log if there is one.
Everything here is bounded: fixed histogram buckets, and a Space-Saving sketch of TOP_K
URLs (Metwally et al. 2005), so a crawler sending a million distinct URLs costs a fixed
amount of memory; the counts it shows are upper bounds, exact for URLs that stay in it.
"""
from __future__ import annotations

import time
from bisect import bisect_left

# Prometheus' default latency buckets, seconds (le="+Inf" is the count).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TOP_K = 32
URL_MAX = 200           # characters of a URL kept in the sketch


class Histogram:
    """Cumulative-at-render latency histogram (counts per bucket, sum, count)."""

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1

    def snapshot(self) -> dict:
        """Buckets (not cumulative: sums over workers add up), sum and count."""
        return {"buckets": {repr(b): n for b, n in zip(BUCKETS, self.counts)},
                "sum": self.total, "count": self.count}


class TopUrls:
    """Space-Saving: at most TOP_K URLs with request and cache-hit counts."""

    def __init__(self, k: int = TOP_K) -> None:
        self.k = k
        self.counts: dict[str, list] = {}     # url -> [requests, hits]

    def add(self, url: str, hit: bool) -> None:
        """Count one request for url."""
        entry = self.counts.get(url)
        if entry is None:
            if len(self.counts) >= self.k:
                # Replace the least counted URL; the newcomer inherits its count (the
                # sketch's over-estimate), not its hits.
                victim = min(self.counts, key=lambda u: self.counts[u][0])
                floor = self.counts.pop(victim)[0]
                entry = self.counts[url] = [floor, 0]
            else:
                entry = self.counts[url] = [0, 0]
        entry[0] += 1
        if hit:
            entry[1] += 1

    def snapshot(self) -> dict:
        """{url: {"requests": n, "hits": h}}."""
        return {u: {"requests": n, "hits": h} for u, (n, h) in self.counts.items()}


class Stats:
    """One worker's histograms and sketch (kept across reloads)."""

    def __init__(self) -> None:
        self.listeners: dict[str, Histogram] = {}
        self.groups: dict[str, Histogram] = {}
        self.top = TopUrls()

    def snapshot(self) -> dict:
        """Numbers for the admin snapshot."""
        return {"listeners": {k: h.snapshot() for k, h in self.listeners.items()},
                "groups": {k: h.snapshot() for k, h in self.groups.items()},
                "top_urls": self.top.snapshot()}


class Recorder:
    """The relay's access log of one listener: counts each exchange, then logs it."""

    def __init__(self, stats: Stats, listener: str, log) -> None:
        self.stats = stats
        self.hist = stats.listeners.setdefault(listener, Histogram())
        self.log = log

    def write(self, conn) -> None:
        """One finished exchange."""
        if self.log is not None:
            self.log.write(conn)     # first: a counting bug must not cost the log line
        self.hist.observe(time.time() - conn.t_start)
        # A reverse exchange's group is an UpstreamGroup; a forward one's is the origin's
        # (scheme, host, port), which has no group to count under.
        name = getattr(conn.group, "name", None)
        if name is not None and conn.upstream_time >= 0:
            h = self.stats.groups.get(name)
            if h is None:
                h = self.stats.groups[name] = Histogram()
            h.observe(conn.upstream_time)
        req = conn.req
        if req is not None:
            host = req.get(b"host") or b""
            target = req.target
            url = (target if target[:1] != b"/" else host + target)[:URL_MAX]
            extra = conn.log_extra
            self.stats.top.add(url.decode("latin-1"),
                               extra is not None and extra.get("cache") == "HIT")

    def write_record(self, record: dict) -> None:
        """A non-HTTP event: only the log wants it."""
        if self.log is not None:
            self.log.write_record(record)
