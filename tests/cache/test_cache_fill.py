"""Filling the cache on a HEAD or Range miss (issue 16), and stale-if-error for a connection
the origin closes before answering, over real loopback.

A HEAD miss goes upstream as a GET (the client still gets a HEAD answer); a Range miss
fetches the whole response without Range, stores it and answers the range from it, as
Varnish and nginx's proxy_cache do. tests/origin.py records every request's method and
fields, so the tests see what the origin was asked.
"""
from __future__ import annotations

import time

import test_cache_proxy
from wire import Conn
from test_cache_proxy import get, is_hit, status_of, u

cache_proxy = test_cache_proxy.cache_proxy


def asked(origin, target) -> list[tuple[str, dict]]:
    """(method, lowercased fields) of each request for target that reached the origin."""
    return [(m.decode(), {k.decode().lower(): v.decode() for k, v in h})
            for m, t, h in origin.requests if t.decode("latin-1") == target]


def test_a_head_miss_is_fetched_as_a_get_and_fills_the_cache(cache_proxy, origin):
    t = u("fh1", cc="max-age=60", etag='"h1"', size="5000")
    r, body = get(cache_proxy, t, "HEAD")
    assert r.status == 200 and body == b""
    assert r.getheader("Content-Length") == "5000" and r.getheader("ETag") == '"h1"'
    assert "stored" in status_of(r) and not is_hit(r), status_of(r)
    assert [m for m, _ in asked(origin, t)] == ["GET"]
    r, body = get(cache_proxy, t)
    assert is_hit(r) and len(body) == 5000 and body.startswith(b"/c/fh1 #1")
    r, body = get(cache_proxy, t, "HEAD")
    assert is_hit(r) and body == b"" and r.getheader("Content-Length") == "5000"
    assert origin.count(t) == 1


def test_a_head_miss_that_may_not_be_stored_is_answered_from_the_get(cache_proxy, origin):
    t = u("fh2", cc="no-store", size="300")
    for _ in range(2):
        r, body = get(cache_proxy, t, "HEAD")
        assert r.status == 200 and body == b"" and r.getheader("Content-Length") == "300"
        assert r.getheader("Cache-Control") == "no-store"
    assert [m for m, _ in asked(origin, t)] == ["GET", "GET"]
    # The connection stays usable after a HEAD answered this way.
    with Conn(cache_proxy.port) as c:
        for method in ("HEAD", "GET"):
            c.send(f"{method} {t} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            r = c.response(method)
            data = r.body
            assert r.status == 200 and len(data) == (0 if method == "HEAD" else 300)


def test_a_head_miss_for_an_object_too_large_to_store(cache_proxy, origin):
    t = u("fh3", cc="max-age=60", size=str(3 << 20))      # over max_object_size (1 MiB)
    r, body = get(cache_proxy, t, "HEAD")
    assert r.status == 200 and body == b"" and r.getheader("Content-Length") == str(3 << 20)
    assert [m for m, _ in asked(origin, t)] == ["GET"]
    r, body = get(cache_proxy, t)
    assert r.status == 200 and len(body) == 3 << 20 and not is_hit(r)


def test_a_range_miss_fetches_the_whole_response_and_answers_the_range(cache_proxy, origin):
    t = u("fr1", cc="max-age=60", etag='"r1"', size="1000")
    r, part = get(cache_proxy, t, headers={"Range": "bytes=10-19"})
    assert r.status == 206 and r.getheader("Content-Range") == "bytes 10-19/1000"
    whole = b"/c/fr1 #1\n" + b"." * 990
    assert part == whole[10:20]
    (method, fields), = asked(origin, t)
    assert method == "GET" and "range" not in fields and "if-range" not in fields
    r, part = get(cache_proxy, t, headers={"Range": "bytes=-5"})
    assert r.status == 206 and is_hit(r) and part == whole[-5:]
    r, body = get(cache_proxy, t)
    assert is_hit(r) and body == whole
    assert origin.count(t) == 1


def test_a_range_miss_with_a_stale_if_range_gets_the_whole_response(cache_proxy, origin):
    t = u("fr2", cc="max-age=60", etag='"new"', size="100")
    r, body = get(cache_proxy, t, headers={"Range": "bytes=0-9", "If-Range": '"old"'})
    assert r.status == 200 and len(body) == 100
    assert "range" not in asked(origin, t)[0][1]
    assert is_hit(get(cache_proxy, t)[0])


def test_a_range_miss_that_may_not_be_stored_is_cut_from_the_fetched_response(cache_proxy,
                                                                               origin):
    t = u("fr3", cc="private", size="100")
    r, part = get(cache_proxy, t, headers={"Range": "bytes=0-3"})
    assert r.status == 206 and part == b"/c/f" and r.getheader("Content-Length") == "4"
    assert r.getheader("Cache-Control") == "private"


def test_a_range_miss_for_an_object_too_large_to_store_goes_upstream_as_sent(cache_proxy,
                                                                              origin):
    t = u("fr4", cc="max-age=60", size=str(3 << 20))
    r, body = get(cache_proxy, t, headers={"Range": "bytes=0-9"})
    # The fill stops at the head (too large); the request then goes upstream with its
    # Range (this origin ignores ranges: its 200 is relayed).
    assert r.status == 200 and len(body) == 3 << 20
    requests = asked(origin, t)
    assert requests[-1][1].get("range") == "bytes=0-9"
    assert "range" not in requests[0][1]


def test_stale_if_error_on_a_closed_connection_respects_must_revalidate(cache_proxy, origin):
    # The cache-tests `stale-close` cases, within the hardening rules: no stale reuse
    # under must-revalidate or no-cache, whatever stale-if-error says.
    for name, cc in (("sc1", "max-age=1, stale-if-error=60, must-revalidate"),
                     ("sc2", "max-age=1, stale-if-error=60, no-cache"),
                     ("sc3", "max-age=1, stale-if-error=60")):
        t = u(name, cc=cc, etag='"x"')
        assert get(cache_proxy, t)[0].status == 200
    time.sleep(1.3)
    for name in ("sc1", "sc2", "sc3"):
        origin.override[f"/c/{name}"] = {"drop": "1"}
    assert get(cache_proxy, u("sc1", cc="max-age=1, stale-if-error=60, must-revalidate",
                              etag='"x"'))[0].status == 502
    assert get(cache_proxy, u("sc2", cc="max-age=1, stale-if-error=60, no-cache",
                              etag='"x"'))[0].status == 502
    r, body = get(cache_proxy, u("sc3", cc="max-age=1, stale-if-error=60", etag='"x"'))
    assert r.status == 200 and body.startswith(b"/c/sc3 #1")
    assert "stale-if-error" in status_of(r)


def test_a_range_on_a_stale_entry_is_cut_from_the_revalidated_response(cache_proxy, origin):
    t = u("fr5", cc="max-age=1, stale-if-error=60", etag='"r5"', size="100")
    r, whole = get(cache_proxy, t)
    time.sleep(1.3)
    r, part = get(cache_proxy, t, headers={"Range": "bytes=0-9"})
    assert r.status == 206 and part == whole[:10], (r.status, status_of(r))
    assert "fwd-status=304" in status_of(r)
    # The same when the origin is gone and stale-if-error answers.
    time.sleep(1.3)
    origin.override["/c/fr5"] = {"drop": "1"}
    r, part = get(cache_proxy, t, headers={"Range": "bytes=90-"})
    assert r.status == 206 and part == whole[90:] and "stale-if-error" in status_of(r)
