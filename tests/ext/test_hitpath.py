"""The compiled fresh-hit path (fastproxy._hitpath) against the Python policy it shortcuts.

For every request the fast path answers, `CacheLayer.key` + `HttpCache.lookup` must give a
HIT with the same bytes (Age and ttl may differ by the clock tick between the two calls);
for a plain request on a fresh non-Vary entry, small or large, it must answer (else it is
useless); a large body is answered from a pinned view of the arena, not a copy.
"""
from __future__ import annotations

import re
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy.cache import HIT, CacheConfig
from fastproxy.cache.directives import format_http_date
from fastproxy.cache.layer import CacheLayer, WorkerCache
from fastproxy.config.load import Limits, Timeouts

from cache_messages import request, response

VIA = b"Via: 1.1 fastproxy\r\n"
MAX_VALUE = 2048
NOW = time.time()
DATE_T = float(int(NOW) - 100)

# name -> (response fields, body); stored under http://a.example/NAME
ENTRIES = {
    "fresh": ("Cache-Control: max-age=3600\nETag: \"e1\"\nX-App: 1", b"hello"),
    "fresh-empty": ("Cache-Control: public, max-age=3600", b""),
    "stale": ("Cache-Control: max-age=10\nETag: \"s\"", b"old"),
    "no-cache": ("Cache-Control: no-cache\nETag: \"n\"", b"validate me"),
    "vary": ("Cache-Control: max-age=3600\nVary: Accept-Encoding", b"variant"),
    "big": ("Cache-Control: max-age=3600", b"x" * (MAX_VALUE + 10)),
    "notfound": ("Cache-Control: max-age=3600", b"gone"),
}
STATUS = {"notfound": "404 Not Found"}


def _setup():
    wc = WorkerCache(CacheConfig(size=4 << 20, max_object_size=64 << 10, prefault=False,
                                 zero_copy_min=MAX_VALUE + 1))
    layer = CacheLayer(wc, None, b"http", VIA, None, Timeouts(), Limits())
    fast = layer.fresh_hits()
    for name, (fields, body) in ENTRIES.items():
        req = request(f"GET /{name} HTTP/1.1\nHost: a.example\nAccept-Encoding: gzip".encode())
        resp = response(f"HTTP/1.1 {STATUS.get(name, '200 OK')}\n"
                        f"Date: {format_http_date(DATE_T).decode()}\n"
                        f"Content-Length: {len(body)}\n{fields}".encode())
        rt = DATE_T + 0.25
        d = wc.http.storable(req, resp, rt)
        assert d and wc.http.store(req, layer.key(req), resp, body, rt, rt, d), name
    return wc, layer, fast


WC, LAYER, FAST = _setup()
TICKS = re.compile(rb"(Age: |; ttl=)(\d+)")


def _numbers(raw: bytes) -> list[int]:
    return [int(m.group(2)) for m in TICKS.finditer(raw)]


def _python(req, keep: bool):
    extra = LAYER.x_close if not keep else (LAYER.x_keep if req.version == 11 else LAYER.x_keep10)
    return WC.http.lookup(req, LAYER.key(req), time.time(), extra)


FIELDS = st.sampled_from([
    "Accept-Encoding: gzip", "Accept-Encoding: br", "User-Agent: t", "X-Any: 1",
    'If-None-Match: "e1"', "If-Modified-Since: Thu, 01 Jan 2026 00:00:00 GMT",
    'If-Match: "e1"', "IF-UNMODIFIED-SINCE: Thu, 01 Jan 2026 00:00:00 GMT", "If-Range: x",
    "Pragma: no-cache", "pragma: x", "Cache-Control: max-age=0", "Cache-Control: max-stale",
    "Authorization: Basic dTpw", "Cookie: a=b",
])


@settings(max_examples=400, deadline=None)
@given(method=st.sampled_from(["GET", "HEAD", "POST", "PURGE"]),
       name=st.sampled_from(sorted(ENTRIES) + ["absent"]),
       query=st.sampled_from(["", "?q=1"]),
       host=st.sampled_from(["a.example", "A.EXAMPLE", "a.example:80", "a.Example:80",
                             "a.example:8080", "b.example", None]),
       version=st.sampled_from(["1.1", "1.0"]),
       fields=st.lists(FIELDS, max_size=3, unique=True),
       keep=st.booleans(),
       absolute=st.booleans())
def test_fast_path_answers_exactly_what_the_policy_would(method, name, query, host, version,
                                                         fields, keep, absolute):
    target = f"/{name}{query}"
    if absolute:
        target = f"http://{host or 'a.example'}{target}"
    lines = [f"{method} {target} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    elif version == "1.1":
        lines.append("Host: a.example")
        host = "a.example"
    lines += fields
    req = request("\n".join(lines).encode())
    fast = _joined(FAST(req, keep))
    py = _python(req, keep)
    if fast is not None:
        assert py.kind is HIT
        expected = b"".join(bytes(b) for b in py.buffers)
        assert TICKS.sub(rb"\1N", fast) == TICKS.sub(rb"\1N", expected)
        a, b = _numbers(fast), _numbers(expected)
        assert len(a) == len(b) == 2 and all(abs(x - y) <= 1 for x, y in zip(a, b))
        assert FAST.status == py.status
        assert FAST.body_len == (0 if method == "HEAD" else len(ENTRIES[name][1]))
    plain = (method in ("GET", "HEAD") and not absolute and query == ""
             and name in ("fresh", "fresh-empty", "notfound", "big")
             and (host or "").lower().removesuffix(":80") == "a.example"
             and not any(f.split(":")[0].lower() in ("if-none-match", "if-modified-since",
                                                     "if-match", "if-unmodified-since",
                                                     "if-range", "pragma", "cache-control")
                         for f in fields))
    if plain:
        assert fast is not None, (lines, py)


def _joined(out):
    if out is None or type(out) is bytes:
        return out
    return b"".join(bytes(b) for b in out)


def test_a_large_body_is_written_from_a_pinned_view_released_with_it():
    ring = WC.http.ring
    pins = ring.stats()["pinned_segments"]
    out = FAST(request(b"GET /big HTTP/1.1\nHost: a.example"), True)
    assert type(out) is list and len(out) == 2 and type(out[0]) is bytes
    head, body = out
    assert isinstance(body, memoryview) and body.readonly
    assert head.endswith(b"\r\n\r\n") and b"Content-Length: %d\r\n" % (MAX_VALUE + 10) in head
    assert bytes(body) == ENTRIES["big"][1] and FAST.body_len == MAX_VALUE + 10
    # The segment stays pinned (not evicted, not rewritten) while the view lives.
    assert ring.stats()["pinned_segments"] == pins + 1
    del out, body
    assert ring.stats()["pinned_segments"] == pins
    # HEAD needs no body: one bytes object, nothing pinned.
    out = FAST(request(b"HEAD /big HTTP/1.1\nHost: a.example"), True)
    assert type(out) is bytes and out.endswith(b"\r\n\r\n")
    assert ring.stats()["pinned_segments"] == pins


def test_fast_path_counts_hits_and_keeps_the_connection_fields():
    before = FAST.hits
    req = request(b"GET /fresh HTTP/1.0\nHost: a.example\nConnection: keep-alive")
    out = FAST(req, True)
    assert b"\r\nConnection: keep-alive\r\n" in out and out.endswith(b"\r\n\r\nhello")
    out = FAST(request(b"GET /fresh HTTP/1.1\nHost: a.example"), False)
    assert b"\r\nConnection: close\r\n" in out
    out = FAST(request(b"GET /notfound HTTP/1.1\nHost: a.example"), True)
    assert out.startswith(b"HTTP/1.1 404 Not Found\r\n") and FAST.status == 404
    assert FAST.hits == before + 3
    assert WC.stats()["hits"] >= 3


def test_a_retired_cache_answers_nothing_and_stores_nothing():
    # A reload retired the cache while something still holds it: every lookup, compiled
    # or not, misses, and a store is refused (WorkerCache.retire -> RingCache.release).
    wc, layer, fast = _setup()
    req = request(b"GET /fresh HTTP/1.1\nHost: a.example")
    assert fast(req) is not None
    wc.retire()
    assert fast(req) is None and wc.fast == []
    assert wc.http.lookup(req, layer.key(req), time.time()).kind is not HIT
    assert wc.http.ring.stats()["capacity"] == 0 and len(wc.http.ring) == 0
    resp = response(f"HTTP/1.1 200 OK\nDate: {format_http_date(DATE_T).decode()}\n"
                    "Content-Length: 2\nCache-Control: max-age=60".encode())
    d = wc.http.storable(req, resp, DATE_T)
    assert d and not wc.http.store(req, layer.key(req), resp, b"hi", DATE_T, DATE_T, d)
    assert fast(req) is None


# -- encoded copies (issue 13's `:coding` Vary stub) -----------------------------------
# A compressing listener stores a text response as the identity variant of a stub naming
# keys.CODING and one copy per negotiated coding; the compiled path must answer a hit on
# any stored copy exactly as the policy does, and leave missing copies to Python.

def _coded_setup():
    from fastproxy.cache import entry
    from fastproxy.cache.encoded import identity_for, store_encoded
    from fastproxy.config.compression import CompressionConfig
    from fastproxy.proxy.compress import Compression

    wc = WorkerCache(CacheConfig(size=4 << 20, max_object_size=256 << 10, prefault=False,
                                 zero_copy_min=MAX_VALUE + 1))
    layer = CacheLayer(wc, None, b"http", VIA, None, Timeouts(), Limits())
    fast = layer.fresh_hits()
    comp = Compression(CompressionConfig.from_table({}))
    layer.compress_with(comp)    # after fresh_hits, as the worker does
    bodies = {"small": b"<p>hello hello hello</p>" * 20, "large": b"<p>text</p>" * 2000}
    for name, body in bodies.items():
        req = request(f"GET /{name} HTTP/1.1\nHost: a.example".encode())
        resp = response(f"HTTP/1.1 200 OK\nDate: {format_http_date(DATE_T).decode()}\n"
                        f"Content-Length: {len(body)}\nContent-Type: text/html\n"
                        "Cache-Control: max-age=3600\nETag: \"t1\"".encode())
        rt = DATE_T + 0.25
        d = wc.http.storable(req, resp, rt)
        assert wc.http.store(req, layer.key(req), resp, body, rt, rt, d,
                             codings=layer.codings_for(resp)), name
        # Copies in gzip and br (not zstd: its hits must go the Python way, to make one).
        for coding in (b"gzip", b"br"):
            found = identity_for(wc.http, req, layer.key(req), time.time(), coding)
            assert found is not None
            st, ckey = found
            _, fields = entry.parse_head(st.head)
            assert store_encoded(wc.http, st, ckey, comp.head_for(st.status, fields, coding),
                                 comp.encode(coding, st.body), time.time())
    return wc, layer, fast, comp


CWC, CLAYER, CFAST, CCOMP = _coded_setup()


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(["GET", "HEAD"]),
       name=st.sampled_from(["small", "large", "absent"]),
       ae=st.sampled_from([None, "gzip", "br", "br, gzip", "gzip;q=0.5, br;q=0.9", "zstd",
                           "identity", "*", "gzip;q=0", "GZIP", "deflate", ""]),
       fields=st.lists(st.sampled_from(["User-Agent: t", 'If-None-Match: W/"t1"',
                                        "Cache-Control: no-transform", "Range: bytes=0-3"]),
                       max_size=2, unique=True),
       keep=st.booleans())
def test_hits_on_encoded_copies_answer_exactly_what_the_policy_would(method, name, ae,
                                                                     fields, keep):
    lines = [f"{method} /{name} HTTP/1.1", "Host: a.example"]
    if ae is not None:
        lines.append(f"Accept-Encoding: {ae}")
    req = request("\n".join(lines + fields).encode())
    fast = _joined(CFAST(req, keep))
    extra = CLAYER.x_close if not keep else CLAYER.x_keep
    py = CWC.http.lookup(req, CLAYER.key(req), time.time(), extra, None, CLAYER.negotiate)
    coding = CCOMP.coding_for(req)
    if fast is not None:
        assert py.kind is HIT
        expected = b"".join(bytes(b) for b in py.buffers)
        assert TICKS.sub(rb"\1N", fast) == TICKS.sub(rb"\1N", expected)
        assert CFAST.status == py.status
    if name != "absent" and not fields and coding in (None, b"gzip", b"br"):
        # A stored copy, a plain request: answered here, in the negotiated coding.
        assert fast is not None, (lines, py.kind)
        ce = re.search(rb"\r\nContent-Encoding: ([^\r]*)\r\n", fast)
        assert (ce.group(1) if ce else None) == coding
        assert b"\r\nVary: Accept-Encoding\r\n" in fast
    if coding == b"zstd" or name == "absent":
        assert fast is None     # no copy yet: Python makes it (or the miss goes upstream)


def test_encoded_hits_count_the_stub_and_the_copy_as_the_store_would():
    ring = CWC.http.ring
    before, hits = ring.stats()["hits"], CFAST.hits
    out = CFAST(request(b"GET /small HTTP/1.1\nHost: a.example\nAccept-Encoding: gzip"), True)
    assert out is not None and b"Content-Encoding: gzip\r\n" in out
    assert ring.stats()["hits"] == before + 2 and CFAST.hits == hits + 1
    # A miss in the copy's coding counts nothing here (the Python way counts it).
    assert CFAST(request(b"GET /small HTTP/1.1\nHost: a.example\nAccept-Encoding: zstd"),
                 True) is None
    assert ring.stats()["hits"] == before + 2 and CFAST.hits == hits + 1
