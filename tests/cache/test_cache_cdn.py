"""Targeted cache-control fields (RFC 9213): CDN-Cache-Control and Fastproxy-Cache-Control.

The proxy runs as a subprocess in front of tests/origin.py (cdn= and fcc= set the targeted
fields, cc= Cache-Control); a hit is a request the origin never saw.
"""
from __future__ import annotations

import subprocess
import time
import sys

import pytest

from fastproxy.cache.targeted import parse_dictionary, parse_targeted
import test_cache_proxy
from test_cache_proxy import get, is_hit, status_of, u

# The fixtures of the cache tests, shared.
cache_proxy = test_cache_proxy.cache_proxy
configured = test_cache_proxy.configured


def twice(proxy, target):
    r1, _ = get(proxy, target)
    r2, _ = get(proxy, target)
    return r1, r2


def test_cdn_cache_control_overrides_cache_control(cache_proxy, origin):
    t = u("cdn1", cc="no-store", cdn="max-age=60")
    r1, r2 = twice(cache_proxy, t)
    assert "stored" in status_of(r1)
    assert is_hit(r2) and origin.count(t) == 1
    # The fields go downstream as they came: they are for every cache on the way.
    assert r2.getheader("CDN-Cache-Control") == "max-age=60"
    assert r2.getheader("Cache-Control") == "no-store"


def test_cdn_no_store_wins_over_a_permissive_cache_control(cache_proxy, origin):
    t = u("cdn2", cc="max-age=60", cdn="no-store")
    r1, r2 = twice(cache_proxy, t)
    assert not is_hit(r2) and origin.count(t) == 2


def test_cdn_max_age_zero_makes_it_stale(cache_proxy, origin):
    t = u("cdn3", cc="max-age=3600", cdn="max-age=0", etag='"v"')
    r1, r2 = twice(cache_proxy, t)
    assert not is_hit(r2) and origin.count(t) == 2


def test_expires_is_ignored_under_a_targeted_field(cache_proxy, origin):
    # RFC 9213 2.1: Cache-Control and Expires are both ignored.
    t = u("cdn4", expires="3600", cdn="must-revalidate")
    twice(cache_proxy, t)
    assert origin.count(t) == 2


@pytest.mark.parametrize("bad", ['max-age=60, "x"', "Max-Age=60", "max-age=60,", "max-age=6 0"])
def test_an_invalid_field_is_ignored_and_cache_control_decides(cache_proxy, origin, bad):
    t = u("cdn5", cc="max-age=60", cdn=bad)
    r1, r2 = twice(cache_proxy, t)
    assert is_hit(r2) and origin.count(t) == 1
    t = u("cdn6", cc="no-store", cdn=bad)
    twice(cache_proxy, t)
    assert origin.count(t) == 2


def test_a_value_of_the_wrong_type_drops_the_directive(cache_proxy, origin):
    # max-age="60" is an sf-string, max-age=1.5 a decimal: ignored, so no freshness at all
    # (Cache-Control's max-age does not count: the targeted field is in charge).
    for name, cdn in (("cdn7", 'max-age="60"'), ("cdn8", "max-age=1.5")):
        t = u(name, cc="max-age=60", cdn=cdn)
        twice(cache_proxy, t)
        assert origin.count(t) == 2, cdn


def test_own_field_comes_before_cdn_cache_control(cache_proxy, origin):
    t = u("cdn9", cdn="no-store", fcc="max-age=60")
    r1, r2 = twice(cache_proxy, t)
    assert is_hit(r2) and origin.count(t) == 1
    t = u("cdn10", cdn="max-age=60", fcc="private")
    twice(cache_proxy, t)
    assert origin.count(t) == 2


def test_targeted_fields_are_configurable(configured, origin):
    proxy = configured(cache='targeted_fields = ["Fastproxy-Cache-Control"]')
    t = u("cdn11", cc="no-store", cdn="max-age=60")
    twice(proxy, t)
    assert origin.count(t) == 2      # CDN-Cache-Control is not on this cache's list
    t = u("cdn12", cc="no-store", fcc="max-age=60")
    twice(proxy, t)
    assert origin.count(t) == 1


def test_a_bad_targeted_fields_setting_is_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[cache]\nsize = "16MiB"\ntargeted_fields = ["CDN Cache"]\n')
    out = subprocess.run([sys.executable, "-m", "fastproxy", "check", "--config", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out
    assert "cache.targeted_fields[0]" in out.stderr and "Traceback" not in out.stderr


def test_revalidation_keeps_obeying_the_targeted_field(cache_proxy, origin):
    # A 304 refreshes the entry with the targeted field's lifetime, not Cache-Control's.
    t = u("cdn13", cc="no-store", cdn="max-age=0", etag='"e"')
    get(cache_proxy, t)
    origin.override["/c/cdn13"] = {"cdn": "max-age=60", "cc": "no-store", "etag": '"e"'}
    r2, _ = get(cache_proxy, t)
    assert "fwd-status=304" in status_of(r2), status_of(r2)
    r3, _ = get(cache_proxy, t)
    assert is_hit(r3) and origin.count(t) == 2


# -- the RFC 8941 dictionary grammar -------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (b"max-age=60", {b"max-age": b"60"}),
    (b"no-store, max-age=5;x=1", {b"no-store": None, b"max-age": b"5"}),
    (b'private="a, b"', {b"private": b"a, b"}),
    (b"max-age=1, max-age=2", {b"max-age": b"2"}),           # last wins (RFC 8941 3.2)
    (b"no-cache=?0, public=?1", {b"public": None}),
    (b"max-age=-1", {}),
])
def test_targeted_values(value, expected):
    cc = parse_targeted(value)
    assert cc is not None and dict(cc) == expected and cc.targeted


@pytest.mark.parametrize("value", [b"", b" ", b"a=", b"a,", b",a", b"a=(1 2", b'a="x',
                                   b"A=1", b"a=1 b", b"a=?2", b"a;=1"])
def test_values_that_are_not_dictionaries(value):
    assert parse_dictionary(value) is None


# -- stale-if-error when the origin closes without answering -----------------------------


def test_stale_if_error_covers_a_connection_closed_before_the_response(cache_proxy, origin):
    t = u("sie-close", cc="max-age=1, stale-if-error=60")
    r1, b1 = get(cache_proxy, t)
    assert r1.status == 200
    time.sleep(2.1)
    origin.override["/c/sie-close"] = {"drop": "1"}
    r2, b2 = get(cache_proxy, t)
    assert r2.status == 200 and b2 == b1, (r2.status, status_of(r2))
    assert "stale-if-error" in status_of(r2)
    # Without the permission, the client gets the proxy's 502.
    t = u("sie-close2", cc="max-age=1")
    get(cache_proxy, t)
    time.sleep(2.1)
    origin.override["/c/sie-close2"] = {"drop": "1"}
    r3, _ = get(cache_proxy, t)
    assert r3.status == 502
