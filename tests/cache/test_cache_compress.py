"""The cache of a compressing listener (issue 13): one stored copy per negotiated coding.

The proxy runs `serve --cache --compress --admin` in front of tests/origin.py, whose /c/
bodies say how many times the URL was asked for. Clients send different Accept-Encoding
fields; every answer must decode to the origin's bytes, hits must be encoded (not the
identity bytes with the coding dropped), and the admin's `encoded` counter says how many
times a stored body was compressed: once per coding, never per hit.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import threading
import time

import brotli
import pytest
import zstandard

from test_cache_proxy import admin, get, is_hit, status_of, u

TEXT = "text/html; charset=utf-8"


def decode(coding: str | None, data: bytes) -> bytes:
    if coding is None:
        return data
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return brotli.decompress(data)
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    raise AssertionError(f"unexpected coding {coding!r}")


def at_the_start_of_a_second() -> None:
    """Wait for a new second: Date has whole seconds, so a max-age=1 response stored now
    is fresh only until this second ends (RFC 9111 4.2.3 counts the apparent age)."""
    while time.time() % 1 > 0.05:
        time.sleep(0.01)


@pytest.fixture
def cproxy(start_proxy, origin):
    """fastproxy reverse mode, 16 MiB cache, compression on, an admin listener."""
    return start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                       "--upstream", origin.url, "--cache", "16MiB", "--compress",
                       "--admin", "127.0.0.1:0", listeners=2)


def stats(proxy) -> dict:
    r, body = admin(proxy.admin_port(), "GET", "/status")
    assert r.status == 200
    return json.loads(body)["cache"]


def fetch(proxy, target, ae=None, **kw):
    headers = dict(kw.pop("headers", {}))
    if ae is not None:
        headers["Accept-Encoding"] = ae
    r, body = get(proxy, target, headers=headers, **kw)
    return r, body, r.getheader("Content-Encoding")


def test_each_coding_is_encoded_once_and_hits_are_encoded(cproxy, origin):
    t = u("ce1", cc="max-age=60", etag='"v1"', ctype=TEXT, size="6000")
    r, body, ce = fetch(cproxy, t, "gzip")
    assert r.status == 200 and ce == "gzip" and "stored" in status_of(r)
    original = decode("gzip", body)
    assert original.startswith(b"/c/ce1 #1") and len(original) == 6000
    clients = [("br", "br"), ("gzip, deflate, br", "br"), ("br;q=1, gzip;q=0.5", "br"),
               ("gzip", "gzip"), ("gzip;q=1, br;q=0.1", "gzip"), ("zstd", "zstd"),
               (None, None), ("identity", None), ("gzip;q=0, br;q=0, zstd;q=0", None)]
    for rounds in range(3):
        for ae, want in clients:
            r, body, ce = fetch(cproxy, t, ae)
            assert r.status == 200 and is_hit(r), (ae, status_of(r))
            assert ce == want, (ae, ce)
            assert decode(ce, body) == original, ae
            assert "Accept-Encoding" in r.getheader("Vary", ""), ae
            # RFC 9110 8.8.3: the encoded copies carry the weak form of the ETag.
            assert r.getheader("ETag") == ('"v1"' if want is None else 'W/"v1"'), ae
            if want is not None:
                assert int(r.getheader("Content-Length")) == len(body) < 6000
        s = stats(cproxy)
        # One compression per coding (br, gzip, zstd), made at the first hit in it:
        # none for the later hits.
        assert s["encoded"] == 3, s
    assert origin.count(t) == 1
    assert s["hits"] == 3 * len(clients) and s["misses"] == 1


def test_two_clients_at_once_get_their_own_coding(cproxy, origin):
    t = u("ce2", cc="max-age=60", ctype="application/json", size="20000")
    results: dict = {}

    def client(ae):
        out = []
        for _ in range(10):
            r, body, ce = fetch(cproxy, t, ae)
            out.append((r.status, ce, decode(ce, body)))
        results[ae] = out

    threads = [threading.Thread(target=client, args=(ae,)) for ae in ("br", "gzip")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    bodies = {b for out in results.values() for _, _, b in out}
    assert len(bodies) == 1 and len(bodies.pop()) == 20000
    assert {ce for _, ce, _ in results["br"]} == {"br"}
    assert {ce for _, ce, _ in results["gzip"]} == {"gzip"}
    assert origin.count(t) == 1
    assert stats(cproxy)["encoded"] <= 2


def test_conditional_head_and_range_requests_on_an_encoded_copy(cproxy, origin):
    t = u("ce3", cc="max-age=60", etag='"v3"', ctype=TEXT, size="4000")
    fetch(cproxy, t, "gzip")
    r, whole, ce = fetch(cproxy, t, "gzip")
    assert is_hit(r) and ce == "gzip"
    # The weak ETag of the gzip copy matches it (If-None-Match compares weakly).
    r, body, _ = fetch(cproxy, t, "gzip", headers={"If-None-Match": 'W/"v3"'})
    assert r.status == 304 and body == b"" and r.getheader("ETag") == 'W/"v3"', status_of(r)
    assert is_hit(r)
    # HEAD: the head the GET gets, no body.
    r, body, ce = fetch(cproxy, t, "gzip", method="HEAD")
    assert r.status == 200 and body == b"" and ce == "gzip"
    assert r.getheader("Content-Length") == str(len(whole))
    # A range addresses the selected representation: the gzip bytes.
    r, part, ce = fetch(cproxy, t, "gzip", headers={"Range": "bytes=0-9"})
    assert r.status == 206 and ce == "gzip" and part == whole[:10]
    assert r.getheader("Content-Range") == f"bytes 0-9/{len(whole)}"
    # If-Range needs a strong validator: the weak one gets the whole copy.
    r, body, _ = fetch(cproxy, t, "gzip", headers={"Range": "bytes=0-9", "If-Range": 'W/"v3"'})
    assert r.status == 200 and body == whole
    assert origin.count(t) == 1


def test_a_stale_encoded_copy_is_revalidated_with_its_weak_etag(cproxy, origin):
    t = u("ce4", cc="max-age=1", etag='"v4"', ctype=TEXT, size="3000")
    at_the_start_of_a_second()
    fetch(cproxy, t, "br")
    r, first, _ = fetch(cproxy, t, "br")
    assert is_hit(r)
    time.sleep(1.3)
    origin.override["/c/ce4"] = {"cc": "max-age=60"}    # the hit after the 304 is fresh
    r, body, ce = fetch(cproxy, t, "br")
    assert r.status == 200 and ce == "br" and body == first
    assert "fwd-status=304" in status_of(r), status_of(r)
    assert origin.headers_of(t)["if-none-match"] == 'W/"v4"'
    assert r.getheader("ETag") == 'W/"v4"'          # the 304's strong tag is not taken
    r, body, ce = fetch(cproxy, t, "br")
    assert is_hit(r) and ce == "br" and r.getheader("ETag") == 'W/"v4"'
    assert origin.count(t) == 2 and stats(cproxy)["encoded"] == 1


def test_a_new_response_replaces_the_encoded_copies(cproxy, origin):
    t = u("ce5", cc="max-age=1", ctype=TEXT, size="3000")
    at_the_start_of_a_second()
    for ae in ("gzip", "gzip", "br"):
        fetch(cproxy, t, ae)
    time.sleep(1.3)
    origin.override["/c/ce5"] = {"cc": "max-age=60"}    # #2 stays fresh for the hit below
    r, body, ce = fetch(cproxy, t, "br")          # stale: the origin sends #2
    assert decode(ce, body).startswith(b"/c/ce5 #2")
    r, body, ce = fetch(cproxy, t, "gzip")        # the old gzip copy is gone
    assert is_hit(r) and ce == "gzip" and decode(ce, body).startswith(b"/c/ce5 #2")
    assert origin.count(t) == 2


def test_a_large_body_is_encoded_once_off_the_hot_path(cproxy, origin):
    # Above ENCODE_INLINE (256 KiB), below the default max_object_size (1 MiB).
    t = u("ce6", cc="max-age=60", ctype=TEXT, size=str(900_000))
    _, body, ce = fetch(cproxy, t)
    assert ce is None and len(body) == 900_000
    results = []

    def client():
        r, data, ce = fetch(cproxy, t, "gzip")
        results.append((r.status, ce, decode(ce, data) == body))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert results == [(200, "gzip", True)] * 4
    assert stats(cproxy)["encoded"] == 1 and origin.count(t) == 1


def test_what_is_not_compressed_is_stored_as_before(cproxy, origin):
    # No Content-Type (not in the list): one entry, identity for everyone, no Vary added.
    t = u("ce7", cc="max-age=60", size="3000")
    fetch(cproxy, t, "gzip")
    r, body, ce = fetch(cproxy, t, "br")
    assert is_hit(r) and ce is None and len(body) == 3000 and r.getheader("Vary") is None
    # A request that says no-transform gets the identity variant.
    t = u("ce8", cc="max-age=60", ctype=TEXT, size="3000")
    fetch(cproxy, t, "gzip")
    r, body, ce = fetch(cproxy, t, "gzip", headers={"Cache-Control": "no-transform"})
    assert is_hit(r) and ce is None and len(body) == 3000
    assert stats(cproxy)["encoded"] == 0


def test_a_304_with_its_own_vary_keeps_accept_encoding_in_the_answers(cproxy, origin):
    # The origin varies on Accept-Language; the listener adds Accept-Encoding. A 304 that
    # repeats the origin's Vary must not drop the listener's part of it.
    t = u("ce9", cc="max-age=1", etag='"v9"', ctype=TEXT, size="3000", vary="Accept-Language")
    for ae in (None, "br", "br"):
        fetch(cproxy, t, ae)
    # Date has whole seconds, so a max-age=1 copy is fresh for anywhere in (0, 1] s from
    # its arrival: the fetches above may have revalidated or refetched (only the copies
    # they leave matter). Both copies are past their second after 1.3 s; the 304s carry
    # a minute, so the hits that follow them do not race the clock either.
    time.sleep(1.3)
    origin.override["/c/ce9"] = {"cc": "max-age=60"}
    asked = origin.count(t)
    for ae, want in ((None, None), ("br", "br")):
        r, body, ce = fetch(cproxy, t, ae)
        assert "fwd-status=304" in status_of(r) and ce == want, status_of(r)
        vary = [m.strip().lower() for m in r.getheader("Vary").split(",")]
        assert "accept-encoding" in vary and "accept-language" in vary, vary
        r, body, ce = fetch(cproxy, t, ae)
        assert is_hit(r) and "accept-encoding" in r.getheader("Vary").lower()
    assert origin.count(t) == asked + 2


def _raw(port: int, lines: list[str]) -> bytes:
    """One request on a new connection; the whole answer (the proxy closes after it)."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines + ["Connection: close", "", ""])).encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def _comparable(raw: bytes) -> tuple:
    # Age and the ttl of Cache-Status tick with the clock between the two proxies; Date
    # is the origin's per fetch.
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = [re.sub(rb"(Age: |; ttl=)\d+", rb"\1N", ln) for ln in head.split(b"\r\n")
             if not ln.lower().startswith(b"date:")]
    return lines, body


def test_encoded_hits_are_compiled_and_the_same_as_the_python_way(start_proxy, origin):
    args = ("serve", "--mode", "reverse", "--listen", "127.0.0.1:0", "--upstream", origin.url,
            "--cache", "16MiB", "--compress", "--admin", "127.0.0.1:0")
    fast = start_proxy(*args, listeners=2)
    os.environ["FASTPROXY_NO_FASTPATH"] = "1"
    try:
        slow = start_proxy(*args, listeners=2)
    finally:
        del os.environ["FASTPROXY_NO_FASTPATH"]
    answers: dict = {}
    for proxy in (fast, slow):
        origin.counts.clear()   # the body names the fetch count: the same for both proxies
        seen = answers[proxy.port] = []
        for size in ("3000", "300000"):     # copied, and written from a pinned arena view
            t = u(f"cmp{size}", cc="max-age=60", etag='"v9"', ctype=TEXT, size=size)
            for method in ("GET", "HEAD"):
                for ae in (None, "gzip", "br", "gzip, br", "zstd;q=0.5, gzip;q=0.1",
                           "identity", "br;q=0", "*"):
                    lines = [f"{method} {t} HTTP/1.1", "Host: a.example"]
                    if ae is not None:
                        lines.append(f"Accept-Encoding: {ae}")
                    # The first may be the miss (streamed, its framing timing's) or make
                    # the copy; the second is a hit on what is stored.
                    first = _raw(proxy.port, lines)
                    seen.append((first.split(b"\r\n", 1)[0], _comparable(_raw(proxy.port, lines))))
    assert answers[fast.port] == answers[slow.port]
    # Every hit the fast proxy gave after the copies were made was answered by the relay
    # itself; none by the other, whose fast path is off.
    sf, ss = stats(fast), stats(slow)
    assert sf["hits"] == ss["hits"] > 0 and ss["compiled_hits"] == 0
    assert sf["compiled_hits"] >= sf["hits"] - 2 * sf["encoded"], sf


def test_accept_encoding_on_several_lines_is_one_list_on_hits(cproxy, origin):
    # RFC 9110 5.3, 12.5.3: "Accept-Encoding: *" then "Accept-Encoding: br;q=0" is one list
    # that refuses br. The compiled hit path remembered the coding per first line, so after
    # a hit for "*" alone (br) this client got br too.
    t = u("ce-split", cc="max-age=60", ctype=TEXT, size="6000")

    def ask(*ae):
        raw = _raw(cproxy.port, [f"GET {t} HTTP/1.1", "Host: a.example"]
                   + [f"Accept-Encoding: {v}" for v in ae])
        head, _, body = raw.partition(b"\r\n\r\n")
        fields = dict(ln.lower().split(b": ", 1) for ln in head.split(b"\r\n")[1:])
        return fields, body

    fields, _ = ask("gzip")                       # the miss, stored as identity
    assert b"stored" in fields[b"cache-status"]
    for _ in range(2):                            # the br copy, then a compiled hit on it
        fields, body = ask("*")
        assert fields.get(b"content-encoding") == b"br"
        original = decode("br", body)
    for _ in range(2):
        fields, body = ask("*", "br;q=0")
        assert fields[b"cache-status"].startswith(b"fastproxy; hit"), fields
        assert fields.get(b"content-encoding") == b"zstd", fields
        assert decode("zstd", body) == original
    assert origin.count(t) == 1
