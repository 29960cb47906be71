"""The cache fails safe on fields it cannot read, and never serves stale where RFC 9111 forbids.

Over real loopback: the proxy (reverse mode, --cache) as a subprocess in front of
tests/origin.py, whose /c/NAME paths shape the responses and count what reaches the
origin. Each case here was found by an outside probe of the landed proxy (hardening issue).
"""
from __future__ import annotations

import time

import pytest
from test_cache_proxy import get, is_hit, status_of, u


@pytest.fixture
def cache_proxy(start_proxy, origin):
    """fastproxy reverse mode with a 16 MiB cache in front of the origin."""
    return start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                       "--upstream", origin.url, "--cache", "16MiB")


# -- Cache-Control that does not parse cleanly is never shared --------------------------

@pytest.mark.parametrize("cc", [
    "private; max-age=600",        # ";" is not a list separator
    "no-store; no-cache",
    "private max-age=600",         # a missing comma
    'max-age=60, private"',        # a stray quote after the directive
    "max-age=60, private=",        # "=" without an argument
    "public, max-age = 60",        # whitespace around "=" (not in the grammar)
    "max-age=60, priv\u00e9",     # a byte outside token
])
def test_unparseable_response_cache_control_is_not_stored(cache_proxy, origin, cc):
    # With a Last-Modified a response without explicit freshness is heuristically
    # cacheable; reading past the typo would share a private response with the next user.
    t = u("typo", cc=cc, lm="86400")
    for n in (1, 2):
        r, body = get(cache_proxy, t)
        assert r.status == 200 and body == b"/c/typo #%d\n" % n, (cc, body, status_of(r))
        assert "stored" not in status_of(r) and not is_hit(r)
        assert "detail=malformed-cache-control" in status_of(r), status_of(r)
    assert origin.count(t) == 2


def test_well_formed_cache_control_with_empty_members_is_still_stored(cache_proxy, origin):
    # RFC 9110 5.6.1.2: empty list members are allowed; the fail-safe rule must not
    # refuse what the grammar accepts.
    t = u("clean", cc=' , max-age=60 ,, ext="a, \\"b\\""', lm="86400")
    r1, b1 = get(cache_proxy, t)
    assert "stored" in status_of(r1), status_of(r1)
    r2, b2 = get(cache_proxy, t)
    assert is_hit(r2) and b2 == b1 and origin.count(t) == 1


def test_malformed_request_cache_control_is_not_read_as_no_directives(cache_proxy, origin):
    # A client's "no-cache; max-age=0" used to lose its directives and get an unvalidated
    # hit; a malformed request field now counts as no-cache (and no-store).
    t = u("reqtypo", cc="max-age=600", etag='"t"')
    get(cache_proxy, t)
    assert is_hit(get(cache_proxy, t)[0])
    r, body = get(cache_proxy, t, headers={"Cache-Control": "no-cache; max-age=0"})
    assert body == b"/c/reqtypo #1\n" and "fwd-status=304" in status_of(r), status_of(r)
    assert origin.headers_of(t)["if-none-match"] == '"t"'
    assert origin.count(t) == 2


def test_malformed_request_cache_control_does_not_store(cache_proxy, origin):
    t = u("reqtypo-store", cc="max-age=600")
    r, _ = get(cache_proxy, t, headers={"Cache-Control": "no-store;"})
    assert "stored" not in status_of(r) and "detail=request-no-store" in status_of(r)
    r, body = get(cache_proxy, t)
    assert body == b"/c/reqtypo-store #2\n" and origin.count(t) == 2


def test_malformed_request_max_stale_does_not_allow_stale(cache_proxy, origin):
    t = u("reqtypo-stale", cc="max-age=1", etag='"s"')
    get(cache_proxy, t)
    time.sleep(1.2)
    r, _ = get(cache_proxy, t, headers={"Cache-Control": "max-stale, no-transform;"})
    assert "detail=max-stale" not in status_of(r) and "fwd-status=304" in status_of(r)
    assert origin.count(t) == 2


# -- Age --------------------------------------------------------------------------------

def test_age_list_uses_its_first_member(cache_proxy, origin):
    # RFC 9111 5.1: a list-valued Age is read as its first member: 7200 > max-age, stale.
    t = u("agelist", cc="max-age=3600", age="7200, 0")
    get(cache_proxy, t)
    r, body = get(cache_proxy, t)
    assert not is_hit(r) and body == b"/c/agelist #2\n", status_of(r)
    assert origin.count(t) == 2


def test_invalid_age_is_ignored(cache_proxy, origin):
    t = u("agebad", cc="max-age=3600", age="soon")
    get(cache_proxy, t)
    r, _ = get(cache_proxy, t)
    assert is_hit(r) and int(r.getheader("Age")) <= 1


# -- stale responses ---------------------------------------------------------------------

def test_no_cache_response_is_not_served_on_error(cache_proxy, origin):
    # RFC 9111 5.2.2.4 / 4.2.4: no-cache forbids use without successful validation, and
    # the entry being fresh (negative staleness) must not open stale-if-error either.
    t = u("nc-err", cc="max-age=3600, no-cache", etag='"e"')
    get(cache_proxy, t)
    origin.override["/c/nc-err"] = {"status": "503"}
    r, body = get(cache_proxy, t)
    assert r.status == 503 and body != b"/c/nc-err #1\n", status_of(r)
    assert "stale-if-error" not in status_of(r)


def test_no_cache_response_is_not_served_when_the_origin_is_down(cache_proxy, origin):
    t = u("nc-down", cc="max-age=3600, no-cache, stale-if-error=600", etag='"e"')
    get(cache_proxy, t)
    origin.stop()
    r, _ = get(cache_proxy, t)
    assert r.status == 502 and "stale-if-error" not in status_of(r)


def test_fresh_entry_refused_by_the_request_is_served_on_error_only_with_permission(
        cache_proxy, origin):
    # Without stale-if-error nothing allows answering with the copy the client refused.
    t = u("refused", cc="max-age=3600", etag='"f"')
    get(cache_proxy, t)
    origin.override["/c/refused"] = {"status": "503"}
    r, _ = get(cache_proxy, t, headers={"Cache-Control": "max-age=0"})
    assert r.status == 503, status_of(r)


def test_stale_while_revalidate_is_not_used_when_the_request_sets_max_age(cache_proxy, origin):
    # RFC 9111 5.2.1.1: with max-age and no max-stale the client does not want a stale
    # response, so stale-while-revalidate must not answer it.
    t = u("swr-maxage", cc="max-age=1, stale-while-revalidate=60", etag='"w"')
    get(cache_proxy, t)
    time.sleep(1.2)
    r, _ = get(cache_proxy, t, headers={"Cache-Control": "max-age=30"})
    assert "stale-while-revalidate" not in status_of(r) and "fwd-status=304" in status_of(r)
    # Without request directives the same entry is served stale (the extension works).
    time.sleep(1.2)
    r, _ = get(cache_proxy, t)
    assert "detail=stale-while-revalidate" in status_of(r), status_of(r)


def test_stale_while_revalidate_is_not_used_when_the_request_sets_min_fresh(cache_proxy, origin):
    t = u("swr-minfresh", cc="max-age=1, stale-while-revalidate=60", etag='"m"')
    get(cache_proxy, t)
    time.sleep(1.2)
    r, _ = get(cache_proxy, t, headers={"Cache-Control": "min-fresh=1"})
    assert "stale-while-revalidate" not in status_of(r) and "fwd-status=304" in status_of(r)


@pytest.mark.parametrize("cc", ["max-age=1, s-maxage=1, stale-while-revalidate=60",
                                "max-age=1, proxy-revalidate, stale-while-revalidate=60",
                                "max-age=1, no-cache, stale-while-revalidate=60"])
def test_stale_while_revalidate_yields_to_revalidation_directives(cache_proxy, origin, cc):
    # RFC 9111 4.2.4, 5.2.2.4, 5.2.2.8, 5.2.2.10: no stale reuse at all.
    plain, lenient = u("swr-strict", cc=cc, etag='"p"'), u("swr-strict2", cc=cc, etag='"p"')
    get(cache_proxy, plain)
    get(cache_proxy, lenient)
    time.sleep(1.2)
    for t, headers in ((plain, {}), (lenient, {"Cache-Control": "max-stale=600"})):
        r, _ = get(cache_proxy, t, headers=headers)
        assert "fwd-status=304" in status_of(r), (cc, headers, status_of(r))


@pytest.mark.parametrize("cc", ["private, max-age=600", "no-store", "max-age=600; private"])
def test_a_304_that_forbids_sharing_drops_the_entry(cache_proxy, origin, cc):
    # RFC 9111 4.3.4: the 304's fields update the stored response; once they say private
    # or no-store (or cannot be read) it may no longer be stored, so it is not served again.
    t = u("now-private", cc="max-age=0", etag='"g"')
    get(cache_proxy, t)
    origin.override["/c/now-private"] = {"cc": cc}
    r, body = get(cache_proxy, t)        # the 304 is not used: asked again in full
    assert r.status == 200 and body == b"/c/now-private #3\n", (body, status_of(r))
    r, body = get(cache_proxy, t)
    assert not is_hit(r) and body == b"/c/now-private #4\n", status_of(r)
