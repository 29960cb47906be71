"""The HTTP cache inside `fastproxy serve --cache`, over real loopback (RFC 9111, RFC 9211).

Every test runs the proxy as a subprocess in front of tests/origin.py, whose /c/NAME
paths shape cacheable responses from query parameters and count the requests that
reach the origin: a hit is a request the origin never saw.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import re
import subprocess
import sys
import time
from urllib.parse import quote, urlencode

import pytest

from conftest import PKG_PARENT
from wire import Conn, crlf


def u(name: str, **params) -> str:
    """A /c/NAME target with the origin's parameters."""
    return f"/c/{name}" + ("?" + urlencode(params, quote_via=quote) if params else "")


def get(proxy, target: str, method: str = "GET", headers: dict | None = None, body=None):
    """One request on a new connection: (response, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        # No Accept-Encoding unless the test gives one (Vary tests tell absent from present).
        c.putrequest(method, target, skip_accept_encoding=True,
                     skip_host="Host" in (headers or {}))
        for name, value in (headers or {}).items():
            c.putheader(name, value)
        if body is not None:
            c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        data = r.read()
        return r, data
    finally:
        c.close()


def status_of(r) -> str:
    return r.getheader("Cache-Status") or ""


def is_hit(r) -> bool:
    return re.match(r"fastproxy; hit\b", status_of(r)) is not None




def admin(port: int, method: str, target: str):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, target)
        r = c.getresponse()
        return r, r.read()
    finally:
        c.close()


@pytest.fixture
def cache_proxy(start_proxy, origin):
    """fastproxy reverse mode with a 16 MiB cache in front of the origin."""
    return start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                       "--upstream", origin.url, "--cache", "16MiB")


@pytest.fixture
def configured(start_proxy, origin, tmp_path):
    """Factory: fastproxy from a TOML file with a [cache] table (and more) of the test's."""
    def start(cache: str = "", extra: str = "", listener: str = "", listeners: int = 1):
        path = tmp_path / "fastproxy.toml"
        path.write_text(f"""
{extra}
[cache]
size = "16MiB"
{cache}

[upstreams.o]
servers = ["{origin.url}"]

[[listeners]]
listen = "127.0.0.1:0"
mode = "reverse"
upstream = "o"
{listener}
""")
        return start_proxy("serve", "--config", str(path), listeners=listeners)
    return start


# -- fresh hits -------------------------------------------------------------------


def test_fresh_response_is_stored_then_served_from_cache(cache_proxy, origin):
    t = u("fresh", cc="max-age=60")
    r1, b1 = get(cache_proxy, t)
    assert r1.status == 200 and b1 == b"/c/fresh #1\n"
    assert status_of(r1) == "fastproxy; fwd=uri-miss; fwd-status=200; stored"
    r2, b2 = get(cache_proxy, t)
    assert r2.status == 200 and b2 == b1
    assert re.fullmatch(r"fastproxy; hit; ttl=(59|60)", status_of(r2)), status_of(r2)
    assert r2.getheader("Age") in ("0", "1")
    assert r2.getheader("Content-Length") == str(len(b1))
    assert r2.getheader("Date") == r1.getheader("Date")      # a cache never rewrites Date
    assert r2.getheader("Via") == "1.1 fastproxy"
    assert origin.count(t) == 1


def test_age_counts_the_upstream_age_and_grows(cache_proxy, origin):
    t = u("age", cc="max-age=600", age="30")
    get(cache_proxy, t)
    r2, _ = get(cache_proxy, t)
    first = int(r2.getheader("Age"))
    assert 30 <= first <= 31
    time.sleep(1.1)
    r3, _ = get(cache_proxy, t)
    assert int(r3.getheader("Age")) >= first + 1
    assert origin.count(t) == 1


def test_expires_gives_freshness(cache_proxy, origin):
    t = u("expires", expires="60")
    get(cache_proxy, t)
    r2, _ = get(cache_proxy, t)
    assert is_hit(r2) and origin.count(t) == 1


def test_chunked_response_is_stored_dechunked(cache_proxy, origin):
    t = u("chunked", cc="max-age=60", chunked="1", size="5000")
    r1, b1 = get(cache_proxy, t)
    assert r1.getheader("Transfer-Encoding") == "chunked" and len(b1) == 5000
    r2, b2 = get(cache_proxy, t)
    assert is_hit(r2) and b2 == b1
    assert r2.getheader("Content-Length") == "5000" and r2.getheader("Transfer-Encoding") is None
    assert origin.count(t) == 1


def test_head_is_answered_from_the_get_entry(cache_proxy, origin):
    t = u("head", cc="max-age=60", size="3000")
    get(cache_proxy, t)
    r, body = get(cache_proxy, t, "HEAD")
    assert r.status == 200 and body == b"" and is_hit(r)
    assert r.getheader("Content-Length") == "3000"
    assert origin.count(t) == 1


def test_hits_keep_the_connection_and_pipeline(cache_proxy, origin):
    t = u("pipe", cc="max-age=60")
    get(cache_proxy, t)
    with Conn(cache_proxy.port) as c:
        host = f"127.0.0.1:{cache_proxy.port}"     # the Host http.client sent: same key
        c.send(crlf(f"GET {t} HTTP/1.1\nHost: {host}\n\n" * 3))
        bodies = [c.response().body for _ in range(3)]
    assert bodies == [b"/c/pipe #1\n"] * 3
    assert origin.count(t) == 1


def test_http10_client_gets_keep_alive_on_a_hit(cache_proxy, origin):
    t = u("h10", cc="max-age=60")
    get(cache_proxy, t)
    host = f"127.0.0.1:{cache_proxy.port}"
    with Conn(cache_proxy.port) as c:
        c.send(crlf(f"GET {t} HTTP/1.0\nHost: {host}\nConnection: keep-alive\n\n"))
        r = c.response()
        assert r.getheader("Connection") == "keep-alive" and r.body == b"/c/h10 #1\n"
        c.send(crlf(f"GET {t} HTTP/1.0\nHost: {host}\n\n"))
        r = c.response()
        assert r.getheader("Connection") == "close" and is_hit(r)
        assert c.closed_by_peer()


def test_host_is_part_of_the_key(cache_proxy, origin):
    t = u("vhost", cc="max-age=60")
    get(cache_proxy, t, headers={"Host": "a.example"})
    r, _ = get(cache_proxy, t, headers={"Host": "b.example"})
    assert not is_hit(r)
    r, _ = get(cache_proxy, t, headers={"Host": "A.EXAMPLE:80"})   # same origin, RFC 9110 4.2.3
    assert is_hit(r)
    assert origin.count(t) == 2


# -- must not store ---------------------------------------------------------------


@pytest.mark.parametrize("params, headers, detail", [
    ({"cc": "private, max-age=60"}, {}, "private"),
    ({"cc": "no-store"}, {}, "no-store"),
    ({"cc": "max-age=60", "cookie": "1"}, {}, "set-cookie"),
    ({"cc": "max-age=60", "vary": "*"}, {}, "vary-star"),
    ({"cc": "max-age=60"}, {"Authorization": "Basic dTpw"}, "authorization"),
    ({"cc": "max-age=60"}, {"Cache-Control": "no-store"}, "request-no-store"),
    ({}, {}, "no-freshness"),
    ({"cc": "max-age=60", "status": "206"}, {}, "status"),   # no range support: never stored
])
def test_responses_that_must_not_be_stored(cache_proxy, origin, params, headers, detail):
    t = u("nostore-" + detail, **params)
    for n in (1, 2):
        r, body = get(cache_proxy, t, headers=headers)
        assert body.endswith(b" #%d\n" % n), body
        assert f"detail={detail}" in status_of(r) and "stored" not in status_of(r)
    assert origin.count(t) == 2


def test_authorization_allowed_when_the_response_says_public(cache_proxy, origin):
    t = u("auth-public", cc="public, max-age=60")
    get(cache_proxy, t, headers={"Authorization": "Basic dTpw"})
    r, _ = get(cache_proxy, t, headers={"Authorization": "Basic dTpw"})
    assert is_hit(r) and origin.count(t) == 1


def test_set_cookie_stored_without_the_cookie_when_configured(configured, origin):
    proxy = configured("store_set_cookie = true")
    t = u("cookie", cc="max-age=60", cookie="1")
    r1, _ = get(proxy, t)
    assert r1.getheader("Set-Cookie") is not None     # the client that asked gets it
    r2, _ = get(proxy, t)
    assert is_hit(r2) and r2.getheader("Set-Cookie") is None
    assert origin.count(t) == 1


def test_cut_body_is_not_stored(cache_proxy, origin):
    t = u("cut", cc="max-age=60", size="20000", cut="1")
    for _ in range(2):
        with pytest.raises(http.client.IncompleteRead):
            get(cache_proxy, t)
    assert origin.count(t) == 2


def test_too_large_bodies_are_relayed_not_stored(configured, origin):
    proxy = configured('max_object_size = "64KiB"')
    for name, params in (("big-cl", {}), ("big-chunked", {"chunked": "1"})):
        t = u(name, cc="max-age=60", size="100000", **params)
        for _ in range(2):
            r, body = get(proxy, t)
            assert len(body) == 100000 and not is_hit(r)
        assert origin.count(t) == 2
    assert "detail=too-large" in status_of(get(proxy, u("big-cl", cc="max-age=60",
                                                        size="100000"))[0])


# -- Vary ---------------------------------------------------------------------------


def test_vary_keeps_variants_apart(cache_proxy, origin):
    t = u("vary", cc="max-age=60", vary="Accept-Encoding")
    get(cache_proxy, t, headers={"Accept-Encoding": "gzip, br"})
    r, _ = get(cache_proxy, t, headers={"Accept-Encoding": "br,GZIP"})   # normalised
    assert is_hit(r)
    r, body = get(cache_proxy, t, headers={"Accept-Encoding": "identity"})
    assert not is_hit(r) and "fwd=vary-miss" in status_of(r) and body.endswith(b"#2\n")
    r, body = get(cache_proxy, t)                                         # absent field
    assert not is_hit(r) and body.endswith(b"#3\n")
    for ae, n in (("gzip, br", b"#1\n"), ("identity", b"#2\n"), (None, b"#3\n")):
        r, body = get(cache_proxy, t, headers={"Accept-Encoding": ae} if ae else {})
        assert is_hit(r) and body.endswith(n)
    assert origin.count(t) == 3


# -- revalidation -----------------------------------------------------------------


def test_stale_entry_is_revalidated_with_if_none_match_and_refreshed_by_304(cache_proxy, origin):
    t = u("etag", cc="max-age=0", etag='"v1"')
    r1, b1 = get(cache_proxy, t)
    assert "stored" in status_of(r1)
    # The 304 carries a new Cache-Control, which the refreshed entry takes (RFC 9111 4.3.4).
    origin.override["/c/etag"] = {"cc": "max-age=60"}
    r2, b2 = get(cache_proxy, t)
    assert r2.status == 200 and b2 == b1
    assert origin.headers_of(t)["if-none-match"] == '"v1"'
    assert "fwd=stale; fwd-status=304" in status_of(r2)
    assert r2.getheader("Cache-Control") == "max-age=60"
    r3, b3 = get(cache_proxy, t)
    assert is_hit(r3) and b3 == b1
    assert origin.count(t) == 2


def test_revalidation_with_last_modified(cache_proxy, origin):
    t = u("lm", cc="max-age=0", lm="3600")
    r1, b1 = get(cache_proxy, t)
    r2, b2 = get(cache_proxy, t)
    assert b2 == b1 and "fwd-status=304" in status_of(r2)
    assert origin.headers_of(t)["if-modified-since"] == r1.getheader("Last-Modified")


def test_changed_resource_replaces_the_entry(cache_proxy, origin):
    t = u("changed", cc="max-age=0", etag='"v1"')
    get(cache_proxy, t)
    origin.override["/c/changed"] = {"etag": '"v2"', "cc": "max-age=60"}
    r2, b2 = get(cache_proxy, t)
    assert b2.endswith(b"#2\n") and r2.getheader("ETag") == '"v2"' and "stored" in status_of(r2)
    r3, b3 = get(cache_proxy, t)
    assert is_hit(r3) and b3 == b2


def test_304_for_another_validator_is_not_used_and_the_request_is_repeated(cache_proxy, origin):
    # RFC 9111 4.3.3: a 304 that selects no stored response cannot answer an
    # unconditional request: the proxy asks again without validators.
    t = u("stray304", cc="max-age=0", etag='"v1"')
    get(cache_proxy, t)
    origin.override["/c/stray304"] = {"etag": '"zz"', "force304": "1", "cc": "max-age=60"}
    r, body = get(cache_proxy, t)
    assert r.status == 200 and body == b"/c/stray304 #3\n" and r.getheader("ETag") == '"zz"'
    assert origin.count(t) == 3
    assert "if-none-match" not in origin.headers_of(t)
    assert is_hit(get(cache_proxy, t)[0])


def test_no_cache_response_is_validated_before_every_use(cache_proxy, origin):
    t = u("nocache", cc="no-cache", etag='"n"')
    get(cache_proxy, t)
    for _ in range(2):
        r, body = get(cache_proxy, t)
        assert body == b"/c/nocache #1\n" and "fwd-status=304" in status_of(r)
    assert origin.count(t) == 3


def test_request_max_age_zero_forces_revalidation(cache_proxy, origin):
    t = u("reqmaxage", cc="max-age=60", etag='"r"')
    get(cache_proxy, t)
    r, _ = get(cache_proxy, t, headers={"Cache-Control": "max-age=0"})
    assert "fwd=request; fwd-status=304" in status_of(r)
    assert origin.headers_of(t)["if-none-match"] == '"r"'


def test_client_conditional_is_answered_304_from_a_fresh_entry(cache_proxy, origin):
    t = u("cond", cc="max-age=60", etag='"c1"')
    get(cache_proxy, t)
    r, body = get(cache_proxy, t, headers={"If-None-Match": '"c1"'})
    assert r.status == 304 and body == b"" and r.getheader("ETag") == '"c1"' and is_hit(r)
    r, body = get(cache_proxy, t, headers={"If-None-Match": '"other"'})
    assert r.status == 200 and body == b"/c/cond #1\n"
    assert origin.count(t) == 1


def test_only_if_cached(cache_proxy, origin):
    t = u("oic", cc="max-age=60")
    r, _ = get(cache_proxy, t, headers={"Cache-Control": "only-if-cached"})
    assert r.status == 504 and "detail=only-if-cached" in status_of(r)
    assert origin.count(t) == 0
    get(cache_proxy, t)
    r, body = get(cache_proxy, t, headers={"Cache-Control": "only-if-cached"})
    assert r.status == 200 and body == b"/c/oic #1\n"
    assert origin.count(t) == 1


@pytest.mark.parametrize("method, body", [("GET", b"x=1"), ("HEAD", b"x=1"), ("POST", b"x=1"),
                                          ("DELETE", None)])
def test_only_if_cached_never_reaches_the_origin_for_requests_the_cache_cannot_answer(
        cache_proxy, origin, method, body):
    # RFC 9111 5.2.1.7: a request the cache passes by (a GET or HEAD with a body, another
    # method) still said "only what you have": 504, never the origin. Before, these went
    # upstream.
    t = u("oic-" + method.lower(), cc="max-age=60")
    r, _ = get(cache_proxy, t, method, {"Cache-Control": "max-age=0, only-if-cached"}, body)
    assert r.status == 504 and "detail=only-if-cached" in status_of(r)
    # The unread body cannot be told from a next request: the 504 says the connection closes.
    assert r.getheader("Connection") == ("close" if body else None)
    assert origin.count(t) == 0
    r, _ = get(cache_proxy, t, method, body=body)     # without the directive it is relayed
    assert r.status == 200 and origin.count(t) == 1


def test_only_if_cached_miss_on_http10_keep_alive_says_keep_alive(cache_proxy, origin):
    # The 504 carries the cache's connection lines like any answer it writes (before: none,
    # so an HTTP/1.0 keep-alive client saw its connection kept without being told).
    with Conn(cache_proxy.port) as c:
        c.send(b"GET /c/oic-10 HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n"
               b"Cache-Control: only-if-cached\r\n\r\n")
        r = c.response()
        assert r.status == 504 and r.getheader("Connection") == "keep-alive"
        c.send(b"GET /c/oic-10 HTTP/1.0\r\nHost: a\r\n\r\n")     # the kept connection works
        assert c.response().status == 200
    assert origin.count("/c/oic-10") == 1


# -- stale responses --------------------------------------------------------------


def test_stale_while_revalidate_serves_stale_and_refreshes_once(cache_proxy, origin):
    t = u("swr", cc="max-age=1, stale-while-revalidate=30", etag='"s"')
    get(cache_proxy, t)
    origin.override["/c/swr"] = {"etag": '"s2"'}       # changed: the refresh gets a 200
    time.sleep(1.3)
    statuses = []
    for _ in range(5):
        r, body = get(cache_proxy, t)
        statuses.append(status_of(r))
        assert body == b"/c/swr #1\n" or body == b"/c/swr #2\n"
    assert "detail=stale-while-revalidate" in statuses[0]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r, body = get(cache_proxy, t)
        if body == b"/c/swr #2\n":
            break
        time.sleep(0.05)
    assert body == b"/c/swr #2\n" and is_hit(r)
    assert origin.count(t) == 2                         # one background refresh, not five
    assert origin.headers_of(t)["if-none-match"] == '"s"'


def test_stale_if_error_serves_stale_when_the_origin_fails(cache_proxy, origin):
    t = u("sie", cc="max-age=1, stale-if-error=60")
    get(cache_proxy, t)
    time.sleep(1.2)
    origin.override["/c/sie"] = {"status": "503"}
    r, body = get(cache_proxy, t)
    assert r.status == 200 and body == b"/c/sie #1\n"
    assert "fwd-status=503" in status_of(r) and "detail=stale-if-error" in status_of(r)


def test_stale_if_error_serves_stale_when_the_origin_is_down(cache_proxy, origin):
    t = u("down", cc="max-age=1, stale-if-error=60")
    get(cache_proxy, t)
    time.sleep(1.2)
    origin.stop()
    r, body = get(cache_proxy, t)
    assert r.status == 200 and body == b"/c/down #1\n"
    assert "detail=stale-if-error" in status_of(r)


@pytest.mark.parametrize("cc, request_sie, served", [
    ("max-age=1", "60", True),                      # the request's own permission
    ("max-age=1", "0", False),                      # ... is not enough for 1 s stale
    ("max-age=1, must-revalidate", "60", False),    # never against must-revalidate
])
def test_stale_if_error_in_the_request_serves_stale_when_the_origin_fails(
        cache_proxy, origin, cc, request_sie, served):
    # RFC 5861 4: stale-if-error is a request directive too, scoped to that request. Before,
    # only the response's counted: the client's permission got the origin's 503.
    name = "rsie-" + request_sie + ("-mr" if "must" in cc else "")
    t = u(name, cc=cc, etag='"r"')
    get(cache_proxy, t)
    time.sleep(1.2)
    origin.override["/c/" + name] = {"status": "503"}
    r, body = get(cache_proxy, t, headers={"Cache-Control": "stale-if-error=" + request_sie})
    if served:
        assert r.status == 200 and body == f"/c/{name} #1\n".encode()
        assert "detail=stale-if-error" in status_of(r)
    else:
        assert r.status == 503
    r, _ = get(cache_proxy, t)         # without the directive: the origin's answer
    assert r.status == 503


def test_must_revalidate_forbids_stale_on_error(cache_proxy, origin):
    t = u("mr", cc="max-age=1, must-revalidate, stale-if-error=60")
    get(cache_proxy, t)
    time.sleep(1.2)
    origin.override["/c/mr"] = {"status": "503"}
    r, _ = get(cache_proxy, t)
    assert r.status == 503 and status_of(r).startswith("fastproxy; fwd=")


def test_upstream_error_without_stale_entry_has_cache_status(cache_proxy, origin):
    origin.stop()
    r, _ = get(cache_proxy, u("gone", cc="max-age=60"))
    assert r.status == 502 and status_of(r) == "fastproxy; fwd=uri-miss"


# -- coalescing ---------------------------------------------------------------------


async def _many(port: int, target: str, n: int) -> list[tuple[int, bytes, str]]:
    async def one():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 20)
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        cs = re.search(rb"\r\nCache-Status: ([^\r]*)", head)
        return status, body, cs.group(1).decode() if cs else ""
    return await asyncio.gather(*(one() for _ in range(n)))


def test_100_concurrent_misses_send_one_request_upstream(cache_proxy, origin):
    t = u("coalesce", cc="max-age=60", delay="0.5")
    results = asyncio.run(_many(cache_proxy.port, t, 100))
    assert all(s == 200 and b == b"/c/coalesce #1\n" for s, b, _ in results), results[:3]
    assert origin.count(t) == 1
    assert sum("stored" in cs for _, _, cs in results) == 1
    assert sum(cs.startswith("fastproxy; hit") for _, _, cs in results) == 99


def test_coalesced_requests_go_upstream_when_the_response_is_not_shareable(cache_proxy, origin):
    t = u("private-coalesce", cc="private", delay="0.3")
    results = asyncio.run(_many(cache_proxy.port, t, 20))
    assert all(s == 200 for s, _, _ in results)
    assert origin.count(t) == 20
    assert len({b for _, b, _ in results}) == 20        # each got its own response


# -- invalidation -----------------------------------------------------------------


def test_successful_unsafe_method_invalidates_the_target(cache_proxy, origin):
    t = u("inval", cc="max-age=60")
    get(cache_proxy, t)
    r, _ = get(cache_proxy, t, "POST", body=b"x")
    assert r.status == 200 and "fwd=method" in status_of(r)
    r, body = get(cache_proxy, t)
    assert not is_hit(r) and body.endswith(b"#3\n")


def test_failed_unsafe_method_does_not_invalidate(cache_proxy, origin):
    origin.override["/c/keep"] = {"cc": "max-age=60"}
    get(cache_proxy, "/c/keep")
    origin.override["/c/keep"] = {"cc": "max-age=60", "status": "500"}
    get(cache_proxy, "/c/keep", "DELETE")
    r, _ = get(cache_proxy, "/c/keep")
    assert is_hit(r)


def test_location_and_content_location_of_the_same_origin_are_invalidated(cache_proxy, origin):
    for name in ("loc", "cloc", "foreign"):
        origin.override[f"/c/{name}"] = {"cc": "max-age=60"}
        get(cache_proxy, f"/c/{name}")
    get(cache_proxy, u("form", location="/c/loc", content_location="cloc"), "POST", body=b"")
    get(cache_proxy, u("form2", location="http://elsewhere.example/c/foreign"), "PUT", body=b"")
    assert not is_hit(get(cache_proxy, "/c/loc")[0])
    assert not is_hit(get(cache_proxy, "/c/cloc")[0])
    assert is_hit(get(cache_proxy, "/c/foreign")[0])


# -- purge --------------------------------------------------------------------------


def test_purge_method_from_loopback(cache_proxy, origin):
    for name in ("p1", "p2", "q1"):
        origin.override[f"/c/{name}"] = {"cc": "max-age=60"}
        get(cache_proxy, f"/c/{name}")
    r, body = get(cache_proxy, "/c/p1", "PURGE")
    assert r.status == 200 and json.loads(body) == {"purged": 1}
    r, body = get(cache_proxy, "/c/p1", "PURGE")
    assert r.status == 404 and json.loads(body) == {"purged": 0}
    r, body = get(cache_proxy, "/c/p*", "PURGE")
    assert json.loads(body) == {"purged": 1}
    assert not is_hit(get(cache_proxy, "/c/p1")[0])
    assert not is_hit(get(cache_proxy, "/c/p2")[0])
    assert is_hit(get(cache_proxy, "/c/q1")[0])
    assert not any(m == b"PURGE" for m, _, _ in origin.requests)


def test_purge_method_refused_outside_the_allowed_networks(configured, origin):
    proxy = configured('purge_allow = ["10.0.0.0/8"]')
    origin.override["/c/x"] = {"cc": "max-age=60"}
    get(proxy, "/c/x")
    r, _ = get(proxy, "/c/x", "PURGE")
    assert r.status == 403
    assert is_hit(get(proxy, "/c/x")[0])


# -- admin interface ----------------------------------------------------------------


def test_admin_status_metrics_and_purge(start_proxy, origin):
    proxy = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0", "--upstream",
                        origin.url, "--cache", "16MiB", "--admin", "127.0.0.1:0", listeners=2)
    port = proxy.admin_port()
    for name in ("a1", "a2", "b1"):
        origin.override[f"/c/{name}"] = {"cc": "max-age=60"}
        get(proxy, f"/c/{name}")
    get(proxy, "/c/a1")
    r, body = admin(port, "GET", "/status")
    doc = json.loads(body)
    assert r.status == 200 and r.getheader("Content-Type") == "application/json"
    assert doc["cache"]["hits"] == 1 and doc["cache"]["stores"] == 3
    assert doc["requests"]["2xx"] == 4 and doc["uptime"] > 0
    server = doc["upstreams"]["default"][f"127.0.0.1:{origin.port}"]
    assert server["opened"] >= 1 and server["healthy"] == 1
    r, body = admin(port, "GET", "/metrics")
    text = body.decode()
    assert r.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    assert "fastproxy_cache_hits_total 1\n" in text
    assert "fastproxy_cache_misses_total 3\n" in text
    assert 'fastproxy_requests_total{class="2xx"} 4\n' in text
    assert re.search(r'fastproxy_upstream_connections\{group="default",server="127.0.0.1:\d+"\} 1',
                     text)
    base = f"http://127.0.0.1:{proxy.port}"
    r, body = admin(port, "POST", "/cache/purge?url=" + quote(base + "/c/a1", safe=""))
    assert r.status == 200 and json.loads(body)["purged"] == 1
    r, body = admin(port, "POST", "/cache/purge?prefix=" + quote(base + "/c/", safe=""))
    assert json.loads(body)["purged"] == 2
    assert not is_hit(get(proxy, "/c/b1")[0])
    # Bad input gets a clear answer.
    r, body = admin(port, "POST", "/cache/purge?url=/relative")
    assert r.status == 400 and "absolute" in json.loads(body)["error"]
    r, _ = admin(port, "GET", "/cache/purge?url=x")
    assert r.status == 405 and r.getheader("Allow") == "POST, OPTIONS"
    r, _ = admin(port, "GET", "/nope")
    assert r.status == 404


def test_two_workers_each_cache_and_admin_purge_reaches_both(start_proxy, origin):
    proxy = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0", "--upstream",
                        origin.url, "--cache", "16MiB", "--workers", "2",
                        "--admin", "127.0.0.1:0", listeners=4)
    port = proxy.admin_port()
    origin.override["/c/w"] = {"cc": "max-age=60"}
    for _ in range(40):
        get(proxy, "/c/w")
    stored = origin.count("/c/w")
    assert stored in (1, 2)          # at most one miss per worker
    doc = json.loads(admin(port, "GET", "/status")[1])
    assert doc["workers"] == 2 and doc["cache"]["stores"] == stored
    assert doc["cache"]["hits"] + doc["cache"]["misses"] == 40
    r, body = admin(port, "POST", "/cache/purge?url=" +
                    quote(f"http://127.0.0.1:{proxy.port}/c/w", safe=""))
    assert json.loads(body) == {"purged": stored, "url": f"http://127.0.0.1:{proxy.port}/c/w",
                                "workers": 2}
    assert "fastproxy_workers 2\n" in admin(port, "GET", "/metrics")[1].decode()


# -- configuration ------------------------------------------------------------------


def test_listener_can_turn_the_cache_off(configured, origin):
    proxy = configured(listener="cache = false")
    t = u("off", cc="max-age=60")
    get(proxy, t)
    r, _ = get(proxy, t)
    assert r.getheader("Cache-Status") is None and origin.count(t) == 2


def test_default_stale_settings_from_config(configured, origin):
    proxy = configured('default_stale_if_error = "60s"')
    t = u("defsie", cc="max-age=1")
    get(proxy, t)
    time.sleep(1.2)
    origin.override["/c/defsie"] = {"status": "500"}
    r, body = get(proxy, t)
    assert r.status == 200 and body == b"/c/defsie #1\n"


def test_bad_cache_keys_are_one_line_errors(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[cache]\nsize = "16MiB"\nbogus = 1\nmax_object_size = "big"\n'
                    'purge_allow = ["300.0.0.0/8"]\n'
                    '[upstreams.o]\nservers = ["http://127.0.0.1:9"]\n'
                    '[[listeners]]\nlisten = "127.0.0.1:0"\nupstream = "o"\ncache = "yes"\n')
    out = subprocess.run([sys.executable, "-m", "fastproxy", "check", "--config", str(path)],
                         capture_output=True, text=True, env={"PYTHONPATH": PKG_PARENT},
                         timeout=30)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert any(line.startswith("fastproxy: cache.bogus: unknown key") for line in lines), lines
    assert any(line.startswith("fastproxy: cache.max_object_size: expected a size")
               for line in lines), lines
    assert any(line.startswith("fastproxy: cache.purge_allow[0]:") for line in lines), lines
    assert any(line.startswith("fastproxy: listeners[0].cache: expected true or false")
               for line in lines), lines
    assert len(lines) == 4


def test_cache_flag_size_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fastproxy", "check", "--mode", "reverse",
                          "--upstream", "http://127.0.0.1:9", "--cache", "1KiB"],
                         capture_output=True, text=True, env={"PYTHONPATH": PKG_PARENT},
                         timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip() == "fastproxy: --cache 1KiB: 1024 is below the minimum of 16384 bytes"


# -- forward mode and listener namespaces -------------------------------------------


def _proxy_get(proxy, url: str, headers: dict | None = None):
    """GET url through a forward proxy (absolute-form target)."""
    c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        c.request("GET", url, headers=headers or {})
        r = c.getresponse()
        return r, r.read()
    finally:
        c.close()


def test_forward_proxy_caches_after_admission(run_proxy, origin, tmp_path):
    proxy = run_proxy({
        "cache": {"size": "16MiB"},
        "access_log": {"path": tmp_path / "access.log", "format": "json"},
        "listeners": [{"mode": "forward", "allow_private": True, "acl": {
            "default_action": "allow",
            "rules": [{"name": "no-secret", "action": "deny", "url": "/c/secret"}]}}]})
    url = f"{origin.url}/c/fwd?cc=max-age%3D60"
    r1, b1 = _proxy_get(proxy, url)
    assert r1.status == 200 and "stored" in status_of(r1)
    r2, b2 = _proxy_get(proxy, url)
    assert is_hit(r2) and b2 == b1 and origin.count("/c/fwd?cc=max-age%3D60") == 1
    # The ACL still runs before the cache: a denied URL is never answered from it.
    r, _ = _proxy_get(proxy, f"{origin.url}/c/secret?cc=max-age%3D60")
    assert r.status == 403
    deadline = time.monotonic() + 3
    lines = []
    while time.monotonic() < deadline and len(lines) < 3:
        path = tmp_path / "access.log"
        lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        time.sleep(0.05)
    assert [x.get("cache") for x in lines[:2]] == ["MISS", "HIT"]
    assert lines[0]["acl"] == "default"


def test_listeners_do_not_share_entries(run_proxy, origin):
    # Two reverse listeners, two origins, the same Host and path: a response stored for
    # one listener must never answer the other (namespaces), and an admin purge by URL
    # reaches both.
    other = __import__("origin").Origin().start()
    try:
        proxy = run_proxy({
            "admin": "127.0.0.1:0", "cache": {"size": "16MiB"},
            "upstreams": {"a": {"servers": [origin.url]}, "b": {"servers": [other.url]}},
            "listeners": [{"upstream": "a"}, {"upstream": "b"}]})
        a_port, b_port = proxy.ports[0], proxy.ports[1]
        for server in (origin, other):
            server.override["/c/shared"] = {"cc": "max-age=60"}
        hdr = {"Host": "site.example"}
        for port in (a_port, b_port, a_port, b_port):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", "/c/shared", headers=hdr)
            c.getresponse().read()
            c.close()
        assert origin.count("/c/shared") == 1 and other.count("/c/shared") == 1
        r, body = admin(proxy.admin_port(), "POST",
                        "/cache/purge?url=" + quote("http://site.example/c/shared", safe=""))
        assert json.loads(body)["purged"] == 2
    finally:
        other.stop()
