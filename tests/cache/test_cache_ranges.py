"""Range requests answered from a stored complete response (RFC 9110 14), over a real proxy."""
from __future__ import annotations

import pytest

import test_cache_proxy
from test_cache_proxy import get, u

cache_proxy = test_cache_proxy.cache_proxy   # the cache tests' fixture

BODY_LEN = 100


@pytest.fixture
def stored(cache_proxy, origin):
    """A 100-byte response with validators, stored by one GET."""
    t = u("rng", cc="max-age=60", etag='"v1"', lm="3600", size=str(BODY_LEN))
    r, body = get(cache_proxy, t)
    assert r.status == 200 and len(body) == BODY_LEN
    return cache_proxy, t, body, r.getheader("Last-Modified")


@pytest.mark.parametrize("spec, first, last", [
    ("bytes=0-9", 0, 9), ("bytes=90-", 90, 99), ("bytes=-5", 95, 99),
    ("bytes=50-1000", 50, 99), ("BYTES = 3-3", 3, 3),
])
def test_a_range_is_cut_from_the_stored_response(stored, origin, spec, first, last):
    proxy, t, body, _ = stored
    r, part = get(proxy, t, headers={"Range": spec})
    assert r.status == 206, r.status
    assert part == body[first:last + 1]
    assert r.getheader("Content-Range") == f"bytes {first}-{last}/{BODY_LEN}"
    assert r.getheader("Content-Length") == str(last - first + 1)
    assert r.getheader("ETag") == '"v1"'
    assert origin.count(t) == 1


def test_an_unsatisfiable_range_is_416(stored, origin):
    proxy, t, _, _ = stored
    r, part = get(proxy, t, headers={"Range": "bytes=100-"})
    assert r.status == 416 and part == b""
    assert r.getheader("Content-Range") == f"bytes */{BODY_LEN}"


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "items=0-1", "bytes=9-2", "bytes=x"])
def test_ranges_it_does_not_serve_get_the_whole_200(stored, spec):
    proxy, t, body, _ = stored
    r, whole = get(proxy, t, headers={"Range": spec})
    assert r.status == 200 and whole == body


def test_if_range_keeps_the_range_only_for_the_same_representation(stored):
    proxy, t, body, lm = stored
    r, part = get(proxy, t, headers={"Range": "bytes=0-3", "If-Range": '"v1"'})
    assert r.status == 206 and part == body[:4]
    r, part = get(proxy, t, headers={"Range": "bytes=0-3", "If-Range": lm})
    assert r.status == 206 and part == body[:4]
    for other in ('"v2"', 'W/"v1"', "Mon, 01 Jan 2001 00:00:00 GMT"):
        r, whole = get(proxy, t, headers={"Range": "bytes=0-3", "If-Range": other})
        assert r.status == 200 and whole == body, other


def test_range_is_ignored_on_head(stored):
    # RFC 9110 14.2: GET is the only method with range handling.
    proxy, t, body, _ = stored
    r, part = get(proxy, t, method="HEAD", headers={"Range": "bytes=0-9"})
    assert r.status == 200 and part == b"" and r.getheader("Content-Length") == str(len(body))
