"""The admin's per-request numbers, counted by the relay in C (ext/relay_stats.pxi).

The sketch is checked against the Space-Saving guarantees for any stream of URLs; over
real sockets, every way a request is answered (compiled cache hits small and large, the
Python cache path, relayed requests, proxy errors) is counted once, with its hits.
"""
from __future__ import annotations

import http.client
import json
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy.server.stats import BUCKETS, Histogram, Stats, TopUrls


@settings(max_examples=300, deadline=None)
@given(k=st.integers(1, 6),
       stream=st.lists(st.tuples(st.sampled_from("abcdefghij"), st.booleans()), max_size=80))
def test_the_sketch_keeps_the_space_saving_guarantees(k, stream):
    top = TopUrls(k, 200)
    for url, hit in stream:
        top.add("/" + url, hit)
    snap = top.snapshot()
    true = Counter("/" + u for u, _ in stream)
    true_hits = Counter("/" + u for u, h in stream if h)
    assert len(snap) == min(k, len(true))
    assert sum(v["requests"] for v in snap.values()) == len(stream)
    floor = min((v["requests"] for v in snap.values()), default=0)
    for url, v in snap.items():
        # Upper bounds, over by at most the smallest count kept; hits never over.
        assert true[url] <= v["requests"] <= true[url] + floor
        assert v["hits"] <= true_hits[url]
    for url, n in true.items():
        if n > len(stream) / k:
            assert url in snap            # every heavy hitter is kept
    if len(true) <= k:
        assert snap == {u: {"requests": n, "hits": true_hits[u]} for u, n in true.items()}


def test_urls_are_cut_and_histograms_bucket_like_bisect_left():
    top = TopUrls(4, 10)
    top.add("x" * 30, True)
    top.add(b"x" * 12, False)             # the same URL once cut
    assert top.snapshot() == {"x" * 10: {"requests": 2, "hits": 1}}
    h = Histogram()
    for s in (0.0, BUCKETS[0], BUCKETS[0] + 1e-9, BUCKETS[-1], BUCKETS[-1] * 2):
        h.observe(s)
    assert h.counts == [2, 1] + [0] * (len(BUCKETS) - 3) + [1, 1]
    snap = h.snapshot()
    assert snap["count"] == 5 and sum(snap["buckets"].values()) == 4
    assert list(snap["buckets"]) == [repr(b) for b in BUCKETS]
    assert Stats().snapshot() == {"listeners": {}, "groups": {}, "top_urls": {}}




def test_every_answer_is_counted_once_with_its_hits(start_proxy, origin):
    origin.override["/c/small"] = {"cc": "max-age=600", "size": "100"}
    origin.override["/c/large"] = {"cc": "max-age=600", "size": str(200 << 10)}
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", origin.url, "--cache", "64MiB", "--admin", "127.0.0.1:0",
                    listeners=2)
    admin = p.admin_port()
    c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    sent = Counter()

    def get(path, headers=None):
        c.request("GET", path, headers={"Host": "t", **(headers or {})})
        r = c.getresponse()
        r.read()
        sent[path] += 1
        return r

    for _ in range(5):
        get("/c/small")                                   # miss, then compiled hits
        get("/c/large")                                   # miss, then pinned hits
        get("/c/small", {"Cache-Control": "max-stale=5"})  # the Python cache path
        get("/echo")                                      # relayed (not cacheable)
    assert get("/size/10").status == 200
    c.close()
    ac = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    ac.request("GET", "/snapshot")
    snap = json.loads(ac.getresponse().read())
    ac.close()
    total = sum(sent.values())
    assert snap["latency"]["listeners"]["listener0"]["count"] == total
    # Upstream response times: the exchanges that went upstream (2 misses, 5 + 1 relayed).
    assert sum(h["count"] for h in snap["latency"]["groups"].values()) == 8
    top = snap["top_urls"]
    assert top["t/c/small"] == {"requests": 10, "hits": 9}
    assert top["t/c/large"] == {"requests": 5, "hits": 4}
    assert top["t/echo"] == {"requests": 5, "hits": 0}
    assert top["t/size/10"] == {"requests": 1, "hits": 0}


def test_a_cache_hit_latency_is_measured_to_its_answer(start_proxy, origin):
    # The relay reads its clocks once per batch of socket events; a compiled hit starts and
    # ends in one batch, so its latency must end on a fresh clock read, or every hit would
    # count 0 s (the histogram's sum would not move).
    origin.override["/c/hit"] = {"cc": "max-age=600", "size": "100"}
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", origin.url, "--cache", "16MiB", "--admin", "127.0.0.1:0",
                    listeners=2)
    admin = p.admin_port()

    def latency():
        ac = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
        ac.request("GET", "/snapshot")
        snap = json.loads(ac.getresponse().read())
        ac.close()
        return snap["latency"]["listeners"]["listener0"]

    c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    for n in range(21):
        c.request("GET", "/c/hit", headers={"Host": "t"})
        r = c.getresponse()
        r.read()
        assert r.status == 200
        if n == 0:
            before = latency()       # the miss (through the origin) is counted by now
    after = latency()
    c.close()
    assert after["count"] - before["count"] == 20, "a hit was not counted once"
    assert after["sum"] > before["sum"], "cache hits were counted with zero latency"
