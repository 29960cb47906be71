"""Request coalescing against a real loopback origin: 100 concurrent misses, one upstream request.

The client side here plays the relay's part (lookup, coalesce, fetch, store);
the origin is a real TCP server counting the requests it answers.
"""
import asyncio
import time

import pytest

from fastproxy.cache import HIT, CacheConfig, Coalescer, HttpCache

from cache_messages import request, response

BODY = b"coalesced body " * 100


async def start_origin(cache_control: bytes, delay: float = 0.05):
    """An HTTP/1.1 origin on 127.0.0.1:0 answering every request after `delay`."""
    hits = {"n": 0}

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                hits["n"] += 1
                await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: " + cache_control +
                             b"\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], hits


async def fetch(port: int, raw_request: bytes):
    """One exchange with the origin: (response head object, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw_request)
    head = await reader.readuntil(b"\r\n\r\n")
    resp = response(head)
    body = await reader.readexactly(resp.content_length)
    writer.close()
    return resp, body


async def client(cache, coalescer, port, key):
    """What the relay does for one GET: returns (how it was served, body bytes)."""
    raw = b"GET /item HTTP/1.1\r\nHost: origin.test\r\n\r\n"
    req = request(raw)
    lk = cache.lookup(req, key, time.time())
    if lk.kind == HIT:
        return "hit", b"".join(bytes(b) for b in lk.buffers).split(b"\r\n\r\n", 1)[1]
    leader, fut = coalescer.begin(key)
    if not leader:
        shared = await coalescer.wait(fut)
        if shared:
            lk = cache.lookup(req, key, time.time())
            if lk.kind == HIT:
                return "collapsed", b"".join(bytes(b) for b in lk.buffers).split(b"\r\n\r\n", 1)[1]
        resp, body = await fetch(port, raw)
        return "upstream", body
    stored = False
    try:
        t0 = time.time()
        resp, body = await fetch(port, raw)
        decision = cache.storable(req, resp, time.time())
        stored = bool(decision) and cache.store(req, key, resp, body, t0, time.time(), decision)
        return "leader", body
    finally:
        coalescer.finish(key, stored or None)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_100_concurrent_misses_make_one_upstream_request(loop):
    async def main():
        server, port, hits = await start_origin(b"max-age=60")
        cache = HttpCache(CacheConfig(size=8 << 20, max_object_size=64 << 10))
        co = Coalescer(timeout=5)
        key = b"http://origin.test/item"
        results = await asyncio.gather(*(client(cache, co, port, key) for _ in range(100)))
        server.close()
        await server.wait_closed()
        return hits["n"], results, co

    n, results, co = _run(loop, main())
    assert n == 1
    kinds = [k for k, _ in results]
    assert kinds.count("leader") == 1 and kinds.count("collapsed") == 99
    assert all(body == BODY for _, body in results)
    assert (co.leaders, co.followers, len(co)) == (1, 99, 0)


def test_unshareable_response_sends_every_waiter_upstream():
    async def main():
        server, port, hits = await start_origin(b"private, max-age=60")
        cache = HttpCache(CacheConfig(size=8 << 20, max_object_size=64 << 10))
        co = Coalescer(timeout=5)
        results = await asyncio.gather(
            *(client(cache, co, port, b"http://origin.test/item") for _ in range(20)))
        server.close()
        await server.wait_closed()
        return hits["n"], results

    n, results = _run("asyncio", main())
    assert n == 20
    assert sorted(k for k, _ in results) == ["leader"] + ["upstream"] * 19
    assert all(body == BODY for _, body in results)


def test_waiters_stop_waiting_for_a_slow_leader():
    async def main():
        server, port, hits = await start_origin(b"max-age=60", delay=0.6)
        cache = HttpCache(CacheConfig(size=8 << 20, max_object_size=64 << 10))
        co = Coalescer(timeout=0.1)
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(client(cache, co, port, b"http://origin.test/item") for _ in range(5)))
        server.close()
        await server.wait_closed()
        return hits["n"], results, co, time.monotonic() - t0

    n, results, co, elapsed = _run("asyncio", main())
    assert n == 5 and co.timeouts == 4
    assert elapsed < 1.5           # they went upstream in parallel after 0.1 s, not in series
    assert all(body == BODY for _, body in results)


def test_after_the_leader_finishes_the_key_is_free_again():
    async def main():
        co = Coalescer()
        leader, fut = co.begin(b"k")
        second, fut2 = co.begin(b"k")
        co.finish(b"k", "result")
        got = await co.wait(fut2)
        again, _ = co.begin(b"k")
        co.finish(b"k")
        return leader, second, got, again, fut2 is fut

    assert _run("asyncio", main()) == (True, False, "result", True, True)


def _run(loop, coro):
    if loop == "uvloop":
        import uvloop
        return uvloop.run(coro)
    return asyncio.run(coro)
