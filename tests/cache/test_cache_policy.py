"""RFC 9111 policy rules, one test (or a few) per rule, over the real store."""
import pytest

from fastproxy.cache import (
    GATEWAY_TIMEOUT, HIT, MISS, REVALIDATE, STALE, CacheConfig, HttpCache, cache_key)
from fastproxy.cache.directives import format_http_date

from cache_messages import request, response

T = 1_700_000_000.0          # response time of every stored response
DATE = format_http_date(T).decode()
KEY = b"http://origin.test/page"
BODY = b"<html>hello</html>"


def get(extra: str = "", method: str = "GET"):
    return request(f"{method} /page HTTP/1.1\nHost: origin.test\n{extra}".encode())


def resp(headers: str, status: str = "200 OK", body: bytes = BODY):
    return response(f"HTTP/1.1 {status}\nDate: {DATE}\nContent-Length: {len(body)}\n{headers}".encode())


def put(cache, headers, req=None, status="200 OK", body=BODY, key=KEY, rt=T, req_time=None):
    """Run storable + store like the relay; return the Decision."""
    req = req or get()
    r = resp(headers, status, body)
    d = cache.storable(req, r, rt)
    if d:
        assert cache.store(req, key, r, body, rt if req_time is None else req_time, rt, d)
    return d


def wire(lookup) -> bytes:
    return b"".join(bytes(b) for b in lookup.buffers)


def field(raw: bytes, name: bytes):
    head = raw.split(b"\r\n\r\n", 1)[0]
    values = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:]
              if line.split(b":", 1)[0].lower() == name]
    return values[0] if values else None


@pytest.fixture
def cache():
    return HttpCache(CacheConfig(size=4 << 20, max_object_size=256 << 10))


# ---------------------------------------------------------------- storing and hits

def test_fresh_hit_is_one_response_with_age_and_cache_status(cache):
    assert put(cache, "Cache-Control: max-age=60\nX-App: 1")
    hit = cache.lookup(get(), KEY, T + 5, extra=b"Via: 1.1 fastproxy\r\n")
    assert hit.kind == HIT and hit.ttl == 55
    raw = wire(hit)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\n" + BODY)
    assert field(raw, b"age") == b"5"
    assert field(raw, b"cache-status") == b"fastproxy; hit; ttl=55"
    assert field(raw, b"via") == b"1.1 fastproxy"
    assert field(raw, b"content-length") == str(len(BODY)).encode()
    assert field(raw, b"date") == DATE.encode()       # a cache never rewrites Date
    assert field(raw, b"x-app") == b"1"


def test_head_is_answered_from_the_get_entry_without_body(cache):
    put(cache, "Cache-Control: max-age=60")
    hit = cache.lookup(get(method="HEAD"), KEY, T + 1)
    raw = wire(hit)
    assert hit.kind == HIT and raw.endswith(b"\r\n\r\n")
    assert field(raw, b"content-length") == str(len(BODY)).encode()


def test_stored_head_drops_hop_by_hop_and_reframes_with_content_length(cache):
    r = response(b"HTTP/1.1 200 OK\nDate: " + DATE.encode() + b"\nTransfer-Encoding: chunked\n"
                 b"Connection: keep-alive, X-Hop\nKeep-Alive: timeout=5\nX-Hop: secret\n"
                 b"Age: 0\nCache-Control: max-age=60\nX-End: 1")
    req = get()
    d = cache.storable(req, r, T)
    assert cache.store(req, KEY, r, b"dechunked", T, T, d)
    raw = wire(cache.lookup(get(), KEY, T))
    for name in (b"transfer-encoding", b"connection", b"keep-alive", b"x-hop"):
        assert field(raw, name) is None, name
    assert field(raw, b"content-length") == b"9" and field(raw, b"x-end") == b"1"
    assert raw.count(b"Age:") == 1 and raw.endswith(b"dechunked")


def test_missing_date_is_added_when_stored(cache):
    r = response(b"HTTP/1.1 200 OK\nCache-Control: max-age=60\nContent-Length: 2")
    req = get()
    cache.store(req, KEY, r, b"ok", T, T)
    raw = wire(cache.lookup(get(), KEY, T + 1))
    assert field(raw, b"date") == DATE.encode()      # RFC 9110 6.6.1


@pytest.mark.parametrize("headers,detail", [
    ("Cache-Control: no-store, max-age=60", "no-store"),
    ("Cache-Control: private, max-age=60", "private"),
    ('Cache-Control: private="X A", max-age=60', "private"),   # not field names: unqualified
    ("Cache-Control: max-age=60\nSet-Cookie: sid=1", "set-cookie"),
    ("Cache-Control: max-age=60\nVary: *", "vary-star"),
    ("Cache-Control: max-age=60\nVary: Accept, *", "vary-star"),
])
def test_must_not_store(cache, headers, detail):
    d = put(cache, headers)
    assert not d and d.detail == detail
    assert cache.lookup(get(), KEY, T).kind == MISS


def test_request_no_store_is_not_stored(cache):
    d = put(cache, "Cache-Control: max-age=60", req=get("Cache-Control: no-store"))
    assert not d and d.detail == "request-no-store"


@pytest.mark.parametrize("allow", ["", "public", "s-maxage=60", "must-revalidate"])
def test_authorization_needs_explicit_shared_permission(cache, allow):
    cc = "max-age=60" + (", " + allow if allow else "")
    d = put(cache, "Cache-Control: " + cc, req=get("Authorization: Bearer x"))
    assert bool(d) == bool(allow)
    if not allow:
        assert d.detail == "authorization"


def test_set_cookie_stored_without_the_cookie_when_configured():
    cache = HttpCache(CacheConfig(size=4 << 20, max_object_size=256 << 10, store_set_cookie=True))
    assert put(cache, "Cache-Control: max-age=60\nSet-Cookie: sid=secret")
    raw = wire(cache.lookup(get(), KEY, T))
    assert b"secret" not in raw and field(raw, b"set-cookie") is None


@pytest.mark.parametrize("method", ["POST", "HEAD", "PUT"])
def test_only_get_responses_are_stored(cache, method):
    req = get(method=method)
    d = cache.storable(req, resp("Cache-Control: max-age=60"), T)
    assert not d and d.detail == "method"
    assert cache.lookup(req, KEY, T).fwd == ("method" if method != "HEAD" else "uri-miss")


@pytest.mark.parametrize("status,headers,stored", [
    ("200 OK", "", False),                                   # no freshness, no validator
    ("200 OK", "ETag: \"a\"", True),                         # validator: store, revalidate
    ("404 Not Found", "Cache-Control: max-age=30", True),
    ("500 Internal Server Error", "", False),
    ("500 Internal Server Error", "Cache-Control: max-age=30", True),
    ("302 Found", "Last-Modified: Tue, 14 Nov 2023 22:13:20 GMT", False),   # not heuristic
    ("302 Found", "Cache-Control: max-age=30", True),
    ("206 Partial Content", "Cache-Control: max-age=30\nContent-Range: bytes 0-1/10", False),
    ("304 Not Modified", "Cache-Control: max-age=30", False),
    ("299 Whatever", "Cache-Control: must-understand, no-store, max-age=30", False),
    ("200 OK", "Cache-Control: must-understand, no-store, max-age=30", True),
    ("200 OK", "Cache-Control: public", False),              # storable, but no freshness/validator
    ("203 Non-Authoritative Information", "Last-Modified: Mon, 13 Nov 2023 22:13:20 GMT", True),
])
def test_status_codes_and_explicit_freshness(cache, status, headers, stored):
    req = get()
    r = resp(headers, status)
    d = cache.storable(req, r, T)
    ok = bool(d) and cache.store(req, KEY, r, BODY, T, T, d)
    assert ok == stored


def test_too_large_bodies_are_not_stored():
    cache = HttpCache(CacheConfig(size=4 << 20, max_object_size=10))
    d = put(cache, "Cache-Control: max-age=60")
    assert not d and d.detail == "too-large"
    req = get()
    r = response(b"HTTP/1.1 200 OK\nCache-Control: max-age=60\nTransfer-Encoding: chunked")
    d = cache.storable(req, r, T)
    assert d and not cache.store(req, KEY, r, b"x" * 11, T, T, d)   # chunked: known late


# ---------------------------------------------------------------- freshness and Age

def test_age_uses_date_age_field_and_response_delay(cache):
    # Date 10 s before reception, Age: 5 from upstream, request sent 2 s before.
    date = format_http_date(T - 10).decode()
    r = response(f"HTTP/1.1 200 OK\nDate: {date}\nAge: 5\nCache-Control: max-age=100".encode())
    cache.store(get(), KEY, r, b"x", T - 2, T)
    hit = cache.lookup(get(), KEY, T + 3)
    # corrected_initial_age = max(apparent 10, 5 + delay 2) = 10; + resident 3
    assert field(wire(hit), b"age") == b"13" and hit.ttl == 87
    # A large upstream Age dominates the apparent age.
    r = response(f"HTTP/1.1 200 OK\nDate: {date}\nAge: 30\nCache-Control: max-age=100".encode())
    cache.store(get(), KEY, r, b"x", T - 2, T)
    assert field(wire(cache.lookup(get(), KEY, T + 3)), b"age") == b"35"


def test_clock_skew_never_makes_age_negative(cache):
    date = format_http_date(T + 100).decode()       # origin clock ahead of ours
    r = response(f"HTTP/1.1 200 OK\nDate: {date}\nCache-Control: max-age=10".encode())
    cache.store(get(), KEY, r, b"x", T, T)
    assert field(wire(cache.lookup(get(), KEY, T)), b"age") == b"0"


@pytest.mark.parametrize("headers,lifetime", [
    ("Cache-Control: max-age=60", 60),
    ("Cache-Control: max-age=60, s-maxage=10", 10),          # shared cache: s-maxage wins
    (f"Expires: {format_http_date(T + 30).decode()}", 30),
    (f"Cache-Control: max-age=5\nExpires: {format_http_date(T + 30).decode()}", 5),
    ("Expires: 0\nETag: \"v\"", 0),                          # invalid Expires = already stale
    ("Cache-Control: max-age=abc\nETag: \"v\"", 0),          # invalid delta: stale
    ('Cache-Control: max-age="20"', 20),                     # quoted form accepted
    ("Cache-Control: max-age=20, max-age=90", 20),           # first occurrence
    ("Cache-Control: max-age=99999999999", 2147483648),      # RFC 9111 1.2.2
])
def test_freshness_lifetime_precedence(cache, headers, lifetime):
    assert put(cache, headers)
    lk = cache.lookup(get(), KEY, T)
    assert lk.ttl == lifetime
    assert lk.kind == (HIT if lifetime > 0 else REVALIDATE)


def test_heuristic_freshness_from_last_modified():
    cache = HttpCache(CacheConfig(size=4 << 20, max_object_size=256 << 10, heuristic_fraction=0.1, heuristic_max=1e9))
    lm = format_http_date(T - 1000).decode()
    put(cache, f"Last-Modified: {lm}")
    assert cache.lookup(get(), KEY, T).ttl == 100            # 10% of Date - Last-Modified
    capped = HttpCache(CacheConfig(size=4 << 20, max_object_size=256 << 10, heuristic_max=50))
    put(capped, f"Last-Modified: {lm}")
    assert capped.lookup(get(), KEY, T).ttl == 50


def test_expiry_turns_a_hit_into_a_revalidation(cache):
    put(cache, 'Cache-Control: max-age=10\nETag: "v1"')
    assert cache.lookup(get(), KEY, T + 9).kind == HIT
    lk = cache.lookup(get(), KEY, T + 11)
    assert lk.kind == REVALIDATE and lk.fwd == "stale" and lk.ttl == -1
    assert lk.conditional == b'If-None-Match: "v1"\r\n'


def test_stale_entry_without_validator_is_a_miss_and_expires_from_the_store(cache):
    # Kept keep_stale (60 s) past its lifetime for a request's max-stale, then dropped.
    put(cache, "Cache-Control: max-age=10")
    assert cache.lookup(get(), KEY, T + 11).kind == MISS
    assert cache.lookup(get("Cache-Control: max-stale=5"), KEY, T + 11).kind == HIT
    assert cache.lookup(get("Cache-Control: max-stale"), KEY, T + 71).kind == MISS
    assert KEY not in cache.ring


# ---------------------------------------------------------------- request directives

def test_request_max_age_and_min_fresh(cache):
    put(cache, 'Cache-Control: max-age=60\nETag: "v"')
    assert cache.lookup(get("Cache-Control: max-age=10"), KEY, T + 5).kind == HIT
    lk = cache.lookup(get("Cache-Control: max-age=0"), KEY, T + 5)
    assert lk.kind == REVALIDATE and lk.fwd == "request"
    assert cache.lookup(get("Cache-Control: min-fresh=50"), KEY, T + 5).kind == HIT
    assert cache.lookup(get("Cache-Control: min-fresh=56"), KEY, T + 5).kind == REVALIDATE


@pytest.mark.parametrize("req_cc", ["Cache-Control: no-cache", "Pragma: no-cache"])
def test_request_no_cache_forces_validation(cache, req_cc):
    put(cache, 'Cache-Control: max-age=60\nLast-Modified: ' + format_http_date(T - 99).decode())
    lk = cache.lookup(get(req_cc), KEY, T + 1)
    assert lk.kind == REVALIDATE and lk.fwd == "request"
    assert lk.conditional.startswith(b"If-Modified-Since: ")


def test_pragma_is_ignored_when_cache_control_is_present(cache):
    put(cache, "Cache-Control: max-age=60")
    assert cache.lookup(get("Cache-Control: max-age=100\nPragma: no-cache"), KEY, T).kind == HIT


def test_max_stale_allows_stale_unless_the_response_forbids(cache):
    put(cache, 'Cache-Control: max-age=10\nETag: "v"')
    lk = cache.lookup(get("Cache-Control: max-stale=30"), KEY, T + 25)
    assert lk.kind == HIT and lk.ttl == -15
    assert field(wire(lk), b"cache-status") == b"fastproxy; hit; ttl=-15; detail=max-stale"
    assert cache.lookup(get("Cache-Control: max-stale=5"), KEY, T + 25).kind == REVALIDATE
    assert cache.lookup(get("Cache-Control: max-stale"), KEY, T + 1e6).kind == HIT
    for forbid in ("must-revalidate", "proxy-revalidate", "s-maxage=10", "no-cache"):
        put(cache, f'Cache-Control: max-age=10, {forbid}\nETag: "v"')
        assert cache.lookup(get("Cache-Control: max-stale"), KEY, T + 25).kind == REVALIDATE


def test_response_no_cache_always_validates(cache):
    put(cache, 'Cache-Control: no-cache, max-age=60\nETag: "v"')
    lk = cache.lookup(get(), KEY, T + 1)
    assert lk.kind == REVALIDATE and lk.fwd == "stale"


def test_only_if_cached(cache):
    lk = cache.lookup(get("Cache-Control: only-if-cached"), KEY, T)
    assert lk.kind == GATEWAY_TIMEOUT and wire(lk).startswith(b"HTTP/1.1 504 ")
    put(cache, 'Cache-Control: max-age=10\nETag: "v"')
    assert cache.lookup(get("Cache-Control: only-if-cached"), KEY, T + 1).kind == HIT
    assert cache.lookup(get("Cache-Control: only-if-cached"), KEY, T + 20).kind == GATEWAY_TIMEOUT


# ---------------------------------------------------------------- Vary

def test_vary_keeps_one_variant_per_normalised_request_value(cache):
    gz = get("Accept-Encoding: gzip, br")
    put(cache, "Cache-Control: max-age=60\nVary: Accept-Encoding", req=gz, body=b"gzipped")
    put(cache, "Cache-Control: max-age=60\nVary: accept-encoding", req=get(), body=b"plain")
    assert wire(cache.lookup(get("Accept-Encoding: BR,gzip"), KEY, T)).endswith(b"gzipped")
    assert wire(cache.lookup(get("Accept-Encoding: br\nAccept-Encoding: gzip"), KEY, T)).endswith(
        b"gzipped")
    assert wire(cache.lookup(get(), KEY, T)).endswith(b"plain")
    lk = cache.lookup(get("Accept-Encoding: identity"), KEY, T)
    assert lk.kind == MISS and lk.fwd == "vary-miss"
    assert cache.lookup(get("Accept-Encoding: "), KEY, T).fwd == "vary-miss"   # empty != absent


def test_vary_on_several_fields_and_a_change_of_vary(cache):
    en = get("Accept-Language: en\nAccept: text/html")
    put(cache, "Cache-Control: max-age=60\nVary: Accept, Accept-Language", req=en, body=b"en")
    assert cache.lookup(get("Accept: text/html\nAccept-Language: en"), KEY, T).kind == HIT
    assert cache.lookup(get("Accept: text/html\nAccept-Language: fr"), KEY, T).kind == MISS
    # The origin changes what it varies on: old variants are no longer reachable.
    put(cache, "Cache-Control: max-age=60\nVary: Accept", req=en, body=b"new")
    assert wire(cache.lookup(get("Accept: text/html\nAccept-Language: fr"), KEY, T)).endswith(b"new")
    # And a response without Vary replaces the variants outright.
    put(cache, "Cache-Control: max-age=60", req=en, body=b"single")
    assert wire(cache.lookup(get("Accept: x/y"), KEY, T)).endswith(b"single")


# ---------------------------------------------------------------- conditional requests

def test_client_conditionals_on_a_fresh_hit_get_304(cache):
    lm = format_http_date(T - 500).decode()
    put(cache, f'Cache-Control: max-age=60\nETag: "abc"\nLast-Modified: {lm}\nX-Other: 1')
    lk = cache.lookup(get('If-None-Match: "zzz", W/"abc"'), KEY, T + 1)
    raw = wire(lk)
    assert lk.client_304 and raw.startswith(b"HTTP/1.1 304 Not Modified\r\n")
    assert raw.endswith(b"\r\n\r\n") and field(raw, b"etag") == b'"abc"'
    assert field(raw, b"x-other") is None and field(raw, b"content-length") is None
    assert not cache.lookup(get('If-None-Match: "zzz"'), KEY, T + 1).client_304
    assert cache.lookup(get("If-None-Match: *"), KEY, T + 1).client_304
    assert cache.lookup(get(f"If-Modified-Since: {lm}"), KEY, T + 1).client_304
    earlier = format_http_date(T - 600).decode()
    assert not cache.lookup(get(f"If-Modified-Since: {earlier}"), KEY, T + 1).client_304
    # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2).
    assert not cache.lookup(get(f'If-None-Match: "zzz"\nIf-Modified-Since: {lm}'),
                            KEY, T + 1).client_304
    # Other preconditions go to the origin.
    assert cache.lookup(get('If-Match: "abc"'), KEY, T + 1).kind == MISS


def test_304_refreshes_stored_headers_and_freshness(cache):
    put(cache, 'Cache-Control: max-age=10\nETag: "v1"\nX-Version: old\nContent-Type: text/html')
    lk = cache.lookup(get(), KEY, T + 20)
    assert lk.kind == REVALIDATE
    date2 = format_http_date(T + 21).decode()
    r304 = response(f'HTTP/1.1 304 Not Modified\nDate: {date2}\nETag: "v1"\n'
                    f'Cache-Control: max-age=100\nX-Version: new\nContent-Length: 999\n'
                    f'Content-Type: text/plain\nConnection: close'.encode())
    out = cache.refresh(lk, get(), r304, T + 20.5, T + 21)
    raw = wire(out)
    assert out.kind == HIT and raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(BODY)
    assert field(raw, b"x-version") == b"new" and field(raw, b"date") == date2.encode()
    assert field(raw, b"content-length") == str(len(BODY)).encode()    # never from the 304
    assert field(raw, b"content-type") == b"text/plain"   # RFC 9111 3.2: updated too
    assert field(raw, b"connection") is None
    assert field(raw, b"cache-status") == b"fastproxy; fwd=stale; fwd-status=304; ttl=99"   # 0.5 s response delay
    later = cache.lookup(get(), KEY, T + 80)
    assert later.kind == HIT and field(wire(later), b"x-version") == b"new"
    assert field(wire(later), b"age") == b"59"


def test_client_validators_are_forwarded_instead_of_the_caches(cache):
    put(cache, 'Cache-Control: max-age=10\nETag: "mine"')
    lk = cache.lookup(get('If-None-Match: "theirs"'), KEY, T + 20)
    assert lk.kind == REVALIDATE and lk.conditional == b""
    r304 = response(f'HTTP/1.1 304 Not Modified\nDate: {DATE}\nETag: "theirs"'.encode())
    assert cache.refresh(lk, get('If-None-Match: "theirs"'), r304, T + 20, T + 20) is None
    lk = cache.lookup(get('If-None-Match: "mine"'), KEY, T + 20)
    r304 = response(f'HTTP/1.1 304 Not Modified\nDate: {DATE}\nETag: "mine"'.encode())
    out = cache.refresh(lk, get('If-None-Match: "mine"'), r304, T + 20, T + 20)
    assert out.client_304 and wire(out).startswith(b"HTTP/1.1 304 ")


def test_304_with_another_validator_does_not_select_the_entry(cache):
    put(cache, 'Cache-Control: max-age=10\nETag: "v1"')
    lk = cache.lookup(get(), KEY, T + 20)
    r304 = response(f'HTTP/1.1 304 Not Modified\nDate: {DATE}\nETag: "v2"'.encode())
    assert cache.refresh(lk, get(), r304, T + 20, T + 20) is None
    weak = response(f'HTTP/1.1 304 Not Modified\nDate: {DATE}\nETag: W/"v1"'.encode())
    assert cache.refresh(lk, get(), weak, T + 20, T + 20) is not None


# ---------------------------------------------------------------- stale-while-revalidate / stale-if-error

def test_stale_while_revalidate(cache):
    put(cache, 'Cache-Control: max-age=10, stale-while-revalidate=30\nETag: "v"')
    lk = cache.lookup(get(), KEY, T + 20)
    assert lk.kind == STALE and lk.conditional == b'If-None-Match: "v"\r\n'
    raw = wire(lk)
    assert raw.endswith(BODY)
    assert field(raw, b"cache-status") == b"fastproxy; hit; ttl=-10; detail=stale-while-revalidate"
    assert cache.lookup(get(), KEY, T + 41).kind == REVALIDATE


def test_default_stale_while_revalidate_from_config():
    cache = HttpCache(CacheConfig(size=4 << 20, max_object_size=256 << 10, default_stale_while_revalidate=60))
    put(cache, "Cache-Control: max-age=10")
    assert cache.lookup(get(), KEY, T + 30).kind == STALE


def test_stale_if_error(cache):
    put(cache, 'Cache-Control: max-age=10, stale-if-error=60')
    lk = cache.lookup(get(), KEY, T + 30)
    assert lk.kind == MISS and lk.stale_if_error
    served = cache.serve_stale(lk, get(), T + 30, fwd_status=503)
    raw = wire(served)
    assert raw.endswith(BODY)
    assert field(raw, b"cache-status") == (
        b"fastproxy; fwd=stale; fwd-status=503; ttl=-20; detail=stale-if-error")
    late = cache.lookup(get(), KEY, T + 71)
    assert late.kind == MISS and not late.stale_if_error
    assert cache.serve_stale(late, get(), T + 71) is None


def test_must_revalidate_disables_stale_serving(cache):
    put(cache, 'Cache-Control: max-age=10, must-revalidate, stale-if-error=60, '
               'stale-while-revalidate=60\nETag: "v"')
    lk = cache.lookup(get(), KEY, T + 20)
    assert lk.kind == REVALIDATE and not lk.stale_if_error
    assert cache.serve_stale(lk, get(), T + 20) is None


# ---------------------------------------------------------------- invalidation, purge, Cache-Status

def test_unsafe_methods_invalidate_target_and_same_origin_locations(cache):
    for path in ("/page", "/new", "/other"):
        put(cache, "Cache-Control: max-age=60", key=b"http://origin.test" + path.encode())
    put(cache, "Cache-Control: max-age=60", key=b"http://elsewhere.test/new")
    post = request(b"POST /page HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 0\r\n\r\n")
    assert cache.invalidate(post, 500, KEY) == 0               # error status: nothing
    n = cache.invalidate(post, 201, KEY, location=b"/new",
                         content_location=b"http://elsewhere.test/new")
    assert n == 2
    assert cache.lookup(get(), KEY, T).kind == MISS
    assert b"http://origin.test/new" not in cache.ring
    assert b"http://origin.test/other" in cache.ring
    assert b"http://elsewhere.test/new" in cache.ring          # other origin untouched
    assert cache.invalidate(get(), 200, b"http://origin.test/other") == 0   # safe method


def test_purge_and_purge_prefix_include_variants(cache):
    put(cache, "Cache-Control: max-age=60\nVary: Accept", req=get("Accept: a"))
    put(cache, "Cache-Control: max-age=60\nVary: Accept", req=get("Accept: b"))
    put(cache, "Cache-Control: max-age=60", key=b"http://origin.test/page2")
    put(cache, "Cache-Control: max-age=60", key=b"http://origin.test/api/1")
    assert cache.purge(KEY) == 3                               # stub + 2 variants
    assert cache.lookup(get("Accept: a"), KEY, T).kind == MISS
    assert cache.purge(KEY) == 0
    assert cache.purge_prefix(b"http://origin.test/") == 2
    assert len(cache.ring) == 0


def test_cache_status_for_forwarded_responses(cache):
    lk = cache.lookup(get(), KEY, T)
    assert cache.status_field(lk, fwd_status=200, stored=True) == (
        b"Cache-Status: fastproxy; fwd=uri-miss; fwd-status=200; stored\r\n")
    d = put(cache, "Cache-Control: private")
    assert cache.status_field(lk, d, fwd_status=200) == (
        b"Cache-Status: fastproxy; fwd=uri-miss; fwd-status=200; detail=private\r\n")
    post = cache.lookup(get(method="POST"), KEY, T)
    assert cache.status_field(post, collapsed=False) == b"Cache-Status: fastproxy; fwd=method\r\n"


def test_cache_key_normalisation():
    assert cache_key(b"HTTP", b"Origin.Test:80", b"/a?b") == b"http://origin.test/a?b"
    assert cache_key(b"https", b"x:443", b"/") == b"https://x/"
    assert cache_key(b"http", b"x:8080", b"/") == b"http://x:8080/"


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="cache.size"):
        CacheConfig(size=10)
    with pytest.raises(ValueError, match="cache.heuristic_fraction"):
        CacheConfig(heuristic_fraction=2)
    with pytest.raises(ValueError, match="cache.cache_name"):
        CacheConfig(cache_name="a b")


def test_max_object_size_must_fit_the_arena():
    with pytest.raises(ValueError, match="cache.max_object_size"):
        CacheConfig(size=4 << 20, max_object_size=4 << 20)


def test_large_bodies_are_served_from_pinned_views_that_survive_churn():
    cache = HttpCache(CacheConfig(size=8 << 20, max_object_size=512 << 10, zero_copy_min=64 << 10))
    big = bytes(range(256)) * 1024                      # 256 KiB
    put(cache, 'Cache-Control: max-age=10\nETag: "big"', body=big)
    hit = cache.lookup(get(), KEY, T + 1)
    assert hit.kind == HIT and isinstance(hit.buffers[2], memoryview)
    assert cache.ring.stats()["pinned_segments"] == 1
    for i in range(100):                                # 25 MiB through an 8 MiB arena
        put(cache, "Cache-Control: max-age=60", key=b"http://origin.test/churn/%d" % i,
            body=b"\xee" * (250 << 10))
    assert wire(hit).endswith(big)
    # Revalidation of a large entry rewrites it from the pinned copy.
    lk = cache.lookup(get(), KEY, T + 20)
    if lk.kind == REVALIDATE:                           # still stored (it was pinned)
        r304 = response(f'HTTP/1.1 304 Not Modified\nDate: {DATE}\nETag: "big"'.encode())
        assert wire(cache.refresh(lk, get(), r304, T + 20, T + 20)).endswith(big)
    del hit, lk
    assert cache.ring.stats()["pinned_segments"] == 0
