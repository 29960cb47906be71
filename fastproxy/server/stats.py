"""Per-request numbers for the admin interface: latency histograms and the top URLs.

The relay counts them itself (fastproxy._relay's Recorder, Histogram and TopUrls, in
ext/relay_stats.pxi): a Recorder stands where the relay expects the access log, counts
each finished exchange in C, then hands it on to the real log if there is one. It costs
a few array stores per request instead of a Python call (which cost ~10% of a relayed
request and ~20% of a cache hit per CPU-second). Everything is bounded: fixed histogram
buckets, and a Space-Saving sketch of TOP_K URLs (Metwally et al. 2005), so a crawler
sending a million distinct URLs costs a fixed amount of memory; the counts it shows are
upper bounds, exact for URLs that stay in it.
"""
from __future__ import annotations

from fastproxy._relay import BUCKETS, Histogram, Recorder, TopUrls

__all__ = ["BUCKETS", "TOP_K", "URL_MAX", "Histogram", "Recorder", "Stats", "TopUrls"]

TOP_K = 32
URL_MAX = 200           # characters of a URL kept in the sketch


class Stats:
    """One worker's histograms and sketch (kept across reloads)."""

    def __init__(self) -> None:
        self.listeners: dict[str, Histogram] = {}
        self.groups: dict[str, Histogram] = {}
        self.top = TopUrls(TOP_K, URL_MAX)

    def snapshot(self) -> dict:
        """Numbers for the admin snapshot."""
        return {"listeners": {k: h.snapshot() for k, h in self.listeners.items()},
                "groups": {k: h.snapshot() for k, h in self.groups.items()},
                "top_urls": self.top.snapshot()}
