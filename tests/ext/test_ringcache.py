"""The compiled ring-buffer store: behaviour, agreement with the reference model, limits."""
import asyncio
import io
import math
import os
import random
import resource
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy._ringcache import Pinned, RingCache, entry_overhead

from ringcache_model import Model, entry_size

STAT_KEYS = ("hits", "misses", "inserts", "evictions", "expirations", "bypasses",
             "relocations", "ghost_hits", "forced", "entries", "bytes",
             "small_segments", "main_segments", "free_segments",
             "small_entries", "main_entries")


def agree(cache, model):
    """Assert that the store and the model hold the same counters and keys."""
    stats = cache.stats()
    assert {k: stats[k] for k in STAT_KEYS} == model.counters()
    assert sorted(cache.keys()) == sorted(model.index)
    cache._debug_check()


def test_roundtrip_parts_and_buffers():
    c = RingCache(1 << 20)
    assert c.set(b"k", b"v") is True
    assert c.get(b"k") == b"v"
    assert c.get(b"missing") is None
    assert c.set(b"k", [b"head\r\n\r\n", memoryview(b"body"), bytearray(b"!")])
    assert c.get(b"k") == b"head\r\n\r\nbody!"
    assert c.set(b"empty", b"") and c.get(b"empty") == b""
    assert len(c) == 2 and b"k" in c and b"nope" not in c and 42 not in c
    assert c.delete(b"k") is True and c.delete(b"k") is False
    assert c.get(b"k") is None
    s = c.stats()
    assert (s["hits"], s["inserts"], s["entries"]) == (3, 3, 1)
    assert entry_overhead(1, 1) == entry_size(1, 1) == 40


def test_constructor_rejects_bad_geometry():
    with pytest.raises(ValueError, match="fewer than 4 segments"):
        RingCache(3 * 4096, segment_size=4096)
    with pytest.raises(ValueError, match="segment_size"):
        RingCache(1 << 20, segment_size=100)
    with pytest.raises(ValueError, match="max_item_share"):
        RingCache(1 << 20, max_item_share=0)
    with pytest.raises(ValueError, match="small_ratio"):
        RingCache(1 << 20, small_ratio=1.5)
    with pytest.raises(ValueError, match="promote_threshold"):
        RingCache(1 << 20, promote_threshold=4)


def test_expiry_is_checked_against_now():
    c = RingCache(1 << 20)
    c.set(b"a", b"1", expires=100.0, now=50.0)
    assert c.get(b"a", now=99.9) == b"1"
    assert c.get(b"a", now=100.0) is None          # expires is exclusive
    assert b"a" not in c and c.stats()["expirations"] == 1
    c.set(b"b", b"2", expires=100.0, now=50.0)
    assert c.set_expires(b"b", 200.0) and c.get(b"b", now=150.0) == b"2"
    c.set(b"forever", b"3")
    assert c.get(b"forever", now=1e18) == b"3"


def test_large_entries_bypass_and_remove_the_old_value():
    c = RingCache(64 * 4096, segment_size=4096, max_item_share=0.25)
    assert c.set(b"big", b"x" * 100)
    assert c.set(b"big", b"x" * 1024) is False     # 1024 + header > 4096 / 4
    assert c.get(b"big") is None                   # never serve the superseded value
    assert c.stats()["bypasses"] == 1


def test_hash_collisions_never_answer_for_another_key():
    c = RingCache(1 << 20)
    m = Model(1 << 20)
    for cache in (c, m):
        cache.set(b"alpha", b"A", h=7)
        cache.set(b"beta", b"B", h=7)
        cache.set(b"gamma", b"C", h=7 + (c.stats()["max_entries"] * 8))  # same home slot
    assert c.get(b"alpha", h=7) == b"A" and c.get(b"beta", h=7) == b"B"
    assert c.get(b"delta", h=7) is None
    assert c.delete(b"alpha", h=7)
    assert c.get(b"beta", h=7) == b"B" and c.get(b"alpha", h=7) is None
    assert c.get(b"gamma", h=7 + (c.stats()["max_entries"] * 8)) == b"C"
    c._debug_check()
    # The same key under a different hash is simply a miss, not a wrong value.
    assert c.get(b"beta", h=8) is None


def test_collision_chains_survive_eviction():
    # Every key shares one hash: deletions and relocations must keep the
    # probe run intact for whoever remains.
    c = RingCache(16 * 1024, segment_size=1024)
    m = Model(16 * 1024, segment_size=1024)
    rng = random.Random(5)
    for step in range(3000):
        k = b"key%d" % rng.randrange(60)
        value = k * rng.randrange(1, 4)
        for cache in (c, m):
            if cache.get(k, now=step, h=1) is None:
                cache.set(k, value, now=step, h=1)
    agree(c, m)
    for k in m.index:
        assert c.get(k, h=1) == m.index[k].value


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 40), st.integers(0, 300),
                  st.sampled_from([math.inf, 5.0, 50.0])),
        st.tuples(st.just("get"), st.integers(0, 40), st.just(0), st.just(0.0)),
        st.tuples(st.just("get"), st.integers(0, 40), st.just(0), st.just(0.0)),
        st.tuples(st.just("delete"), st.integers(0, 40), st.just(0), st.just(0.0)),
        st.tuples(st.just("prefix"), st.integers(0, 4), st.just(0), st.just(0.0)),
    ),
    max_size=400,
)


# FASTPROXY_MODEL_EXAMPLES=5000 for a longer soak than the default run.
@settings(max_examples=int(os.environ.get("FASTPROXY_MODEL_EXAMPLES", "300")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, geometry=st.sampled_from([
    dict(capacity=8 * 1024, segment_size=1024),
    dict(capacity=6 * 512, segment_size=512, max_item_share=1.0),
    dict(capacity=20 * 1024, segment_size=1024, max_entries=12),
    dict(capacity=10 * 2048, segment_size=2048, promote_threshold=2, small_ratio=0.3),
    dict(capacity=12 * 1024, segment_size=1024, promote_threshold=0),
]))
def test_store_matches_reference_model(ops, geometry):
    c = RingCache(**geometry)
    m = Model(**geometry)
    now = 0.0
    for op, k, n, ttl in ops:
        now += 1.0
        key = b"/k%d" % k
        if op == "set":
            value = bytes([k % 251]) * n
            exp = now + ttl
            assert c.set(key, value, expires=exp, now=now) == m.set(key, value, expires=exp, now=now)
        elif op == "get":
            got = c.get(key, now=now)
            assert got == m.get(key, now=now)
            assert got is None or got == bytes([k % 251]) * len(got)
        elif op == "delete":
            assert c.delete(key) == m.delete(key)
        else:
            assert c.delete_prefix(b"/k%d" % k) == m.delete_prefix(b"/k%d" % k)
    agree(c, m)


def test_long_zipf_trace_matches_model_and_never_returns_a_wrong_value():
    rng = random.Random(1)
    nkeys = 3000
    weights = [1 / (i + 1) ** 0.9 for i in range(nkeys)]
    keys = rng.choices(range(nkeys), weights, k=60000)
    geometry = dict(capacity=64 * 2048, segment_size=2048)
    c, m = RingCache(**geometry), Model(**geometry)
    for step, k in enumerate(keys):
        key = b"http://h/%d" % k
        got = c.get(key, now=step)
        assert got == m.get(key, now=step)
        if got is None:
            value = (b"%d:" % k) * (1 + k % 7)
            c.set(key, value, now=step)
            m.set(key, value, now=step)
        else:
            assert got == (b"%d:" % k) * (1 + k % 7)
    agree(c, m)
    s = c.stats()
    assert s["evictions"] > 0 and s["relocations"] > 0 and s["ghost_hits"] > 0


def test_overwrite_replaces_and_keeps_popularity():
    c = RingCache(32 * 1024, segment_size=1024)
    m = Model(32 * 1024, segment_size=1024)
    for cache in (c, m):
        cache.set(b"hot", b"v1")
        cache.get(b"hot")
        cache.get(b"hot")
        cache.set(b"hot", b"v2")
    assert c.get(b"hot") == m.get(b"hot") == b"v2"
    agree(c, m)


def test_delete_prefix_keys_and_clear():
    c = RingCache(1 << 20)
    for i in range(50):
        c.set(b"http://a/x/%d" % i, b"1")
        c.set(b"http://a/y/%d" % i, b"2")
    assert c.delete_prefix(b"http://a/x/") == 50
    assert all(k.startswith(b"http://a/y/") for k in c.keys()) and len(c) == 50
    c.clear()
    assert len(c) == 0 and c.keys() == [] and c.get(b"http://a/y/1") is None
    c._debug_check()
    # The arena is reused after a clear.
    for i in range(5000):
        assert c.set(b"n%d" % i, b"z" * 200)
    c._debug_check()


def test_pinned_view_is_read_only_and_survives_overwrite_and_eviction():
    c = RingCache(8 * 1024, segment_size=1024)
    c.set(b"k", b"original")
    view = c.get_view(b"k")
    assert isinstance(view, Pinned) and len(view) == 8 and bytes(view) == b"original"
    mv = memoryview(view)
    assert mv.readonly and mv.tobytes() == b"original"
    with pytest.raises(TypeError, match="read-write"):
        io.BytesIO(b"overwrite").readinto(view)   # asks for a writable buffer
    with pytest.raises(TypeError):
        mv[0:1] = b"x"
    c.set(b"k", b"replaced")
    for i in range(2000):                          # many times the arena
        c.set(b"f%d" % i, b"y" * 100)
    assert mv.tobytes() == b"original"             # pinned segment never recycled
    assert c.get(b"k") is None or c.get(b"k") == b"replaced"
    assert c.stats()["pinned_segments"] == 1
    mv.release()
    del view
    assert c.stats()["pinned_segments"] == 0
    c._debug_check()


def test_all_segments_pinned_fails_cleanly():
    c = RingCache(4 * 1024, segment_size=1024, max_item_share=1.0)
    views = []
    for i in range(8):
        if c.set(b"p%d" % i, b"x" * 900):
            views.append(c.get_view(b"p%d" % i))
    assert c.set(b"one-more", b"x" * 900) is False
    assert c.stats()["alloc_failures"] >= 1
    for v in views:
        assert bytes(v) == b"x" * 900
    views.clear()
    assert c.set(b"one-more", b"x" * 900) is True
    c._debug_check()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_pinned_view_stays_valid_while_a_transport_holds_it(loop):
    """A slow reader keeps the view queued in the transport while the store churns.

    uvloop keeps a queued buffer by reference (the case pinning exists for);
    asyncio copies it. Both must deliver the original bytes.
    """
    if loop == "uvloop":
        import uvloop
        uvloop.run(_serve_pinned_view_to_a_slow_reader(keeps_reference=True))
    else:
        asyncio.run(_serve_pinned_view_to_a_slow_reader(keeps_reference=False))


async def _serve_pinned_view_to_a_slow_reader(keeps_reference):
    size = 900_000
    c = RingCache(16 * (2 << 20), segment_size=2 << 20)
    payload = bytes(random.Random(3).randbytes(size))
    c.set(b"big", payload)
    sent = asyncio.Event()

    async def serve(reader, writer):
        # Small kernel buffers so most of the payload must wait in the transport.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        view = c.get_view(b"big")
        writer.write(memoryview(view))     # far more than the socket buffers hold
        del view
        sent.set()
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    await asyncio.wait_for(sent.wait(), 5)
    if keeps_reference:
        assert c.stats()["pinned_segments"] == 1   # the transport still holds it
    # Overwrite the key and churn the whole arena several times over.
    c.set(b"big", b"\x00" * size)
    for i in range(200):
        c.set(b"churn%d" % i, b"\xff" * size)
    loop = asyncio.get_running_loop()
    got = bytearray()
    while len(got) < size:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
        if not chunk:
            break
        got += chunk
    sock.close()
    server.close()
    await server.wait_closed()
    assert bytes(got) == payload
    for _ in range(50):
        if c.stats()["pinned_segments"] == 0:
            break
        await asyncio.sleep(0.01)
    assert c.stats()["pinned_segments"] == 0


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@pytest.mark.slow
def test_memory_stays_bounded_after_a_million_distinct_keys():
    before = _rss_bytes()
    c = RingCache(32 << 20)
    budget = c.stats()["memory"]
    value = b"v" * 200
    for i in range(1_000_000):
        c.set(b"http://example.test/item/%d" % i, value)
    grown = _rss_bytes() - before
    s = c.stats()
    assert s["inserts"] == 1_000_000 and s["entries"] <= s["max_entries"]
    # Arena + index + ghost, plus a small constant for the interpreter.
    assert grown <= budget + (8 << 20), (grown, budget)
    c._debug_check()


def test_stored_bodies_keep_no_reference():
    """set/get/delete/eviction/bypass hand every buffer back (issue 10: each body leaked)."""
    import sys
    c = RingCache(64 << 10, segment_size=4096)
    bodies = [b"b" * n + b"%d" % i for i, n in enumerate((10, 300, 1000, 1500, 3000, 9000))]
    heads = [b"head %d\r\n" % i for i in range(len(bodies))]
    others = [bytearray(b"x" * 100), memoryview(b"y" * 200), b"z" * 50]
    watched = bodies + heads + others
    before = [sys.getrefcount(o) for o in watched]
    for o in others:
        c.set(b"other", o)
        c.set(b"others", [o, o])
    for i, (head, body) in enumerate(zip(heads, bodies)):
        c.set(b"list %d" % i, [head, body])           # the last part is the body
        c.set(b"tuple %d" % i, (head, b"-", body))
        c.set(b"one %d" % i, body)
        c.get(b"list %d" % i)
        c.get_view(b"tuple %d" % i)
    del head, body, o        # the loop variables' own references
    c.set(b"big", [heads[0], b"q" * 40000])             # over the item limit: bypassed
    for i in range(len(bodies)):
        c.delete(b"one %d" % i)
    for i in range(400):                                  # evicts everything above
        c.set(b"filler %d" % i, [heads[0], bodies[2]])
    assert c.stats()["evictions"] > 0 and c.stats()["bypasses"] >= 1
    assert [sys.getrefcount(o) for o in watched] == before
    c._debug_check()


@pytest.mark.slow
def test_memory_stays_bounded_after_a_million_stores_of_mixed_sizes():
    # Every store hands in a new head and body (as the cache layer does); the store
    # must keep none of them: RSS stays within arena + index + 16 MiB.
    import time
    before = _rss_bytes()
    c = RingCache(64 << 20)
    budget = c.stats()["memory"] + (16 << 20)
    sizes = [100, 700, 2000, 5000, 12000, 300, 40000, 1500]
    t_end = time.monotonic() + 120
    for i in range(1_000_000):
        size = sizes[i % len(sizes)]
        c.set(b"http://example.test/item/%d" % (i % 50_000),
              [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % size, b"v" * size])
        if i % 10_000 == 0:
            grown = _rss_bytes() - before
            assert grown <= budget, (i, grown, budget)    # fail fast, not after GiBs
            assert time.monotonic() < t_end, "a million stores took over 2 minutes"
    grown = _rss_bytes() - before
    s = c.stats()
    assert s["inserts"] == 1_000_000 and s["evictions"] > 0
    assert grown <= budget, (grown, budget)
    c._debug_check()


def test_prefault_makes_the_arena_resident_at_construction():
    # A zero fill after malloc was folded into calloc by the compiler: nothing touched.
    before = _rss_bytes()
    lazy = RingCache(48 << 20)
    lazy_grown = _rss_bytes() - before
    before = _rss_bytes()
    eager = RingCache(48 << 20, prefault=True)
    eager_grown = _rss_bytes() - before
    assert lazy_grown < (16 << 20), lazy_grown
    assert eager_grown >= (48 << 20), eager_grown
    assert eager.set(b"k", b"v") and eager.get(b"k") == b"v"
    del lazy, eager


def test_release_frees_the_memory_and_leaves_an_empty_store():
    before = _rss_bytes()
    c = RingCache(48 << 20, prefault=True)
    for i in range(1000):
        c.set(b"k%d" % i, b"v" * 3000)
    view = c.get_view(b"k999")
    assert _rss_bytes() - before >= (48 << 20)
    c.release()
    # A pinned view keeps the arena (a transport may still be writing from it).
    assert bytes(view) == b"v" * 3000 and _rss_bytes() - before >= (48 << 20)
    del view
    assert _rss_bytes() - before < (8 << 20)
    # Whatever still holds the store finds it empty and refusing.
    assert c.get(b"k1") is None and c.get_view(b"k1") is None and b"k1" not in c
    assert c.set(b"k1", [b"h", b"v" * 10]) is False and c.get(b"k1") is None
    assert c.delete(b"k2") is False and c.set_expires(b"k2", 1.0) is False
    assert c.keys() == [] and c.delete_prefix(b"k") == 0 and len(c) == 0
    c.clear()
    s = c.stats()
    assert (s["entries"], s["bytes"], s["capacity"], s["pinned_segments"]) == (0, 0, 0, 0)
    c.release()     # twice is harmless
