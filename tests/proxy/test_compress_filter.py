"""The compression filter on its own (start/feed/flush/finish), decoded with the real
decoders, and its configuration (`--compress`, `[compression]`, `compression = false`)."""
from __future__ import annotations

import gzip
import random
import subprocess
import sys
import zlib

import brotli
import pytest
import zstandard

from fastproxy.cli import build_parser, load_config
from fastproxy.config.compression import CompressionConfig
from fastproxy.config.load import ConfigError, from_dict
from fastproxy.proxy.compress import (
    Compression, compression_factory, negotiate, parse_accept_encoding,
)



def text(n: int, seed: int = 7) -> bytes:
    """Web-like text that compresses but is not one repeated string."""
    rnd = random.Random(seed)
    words = [b"proxy", b"cache", b"<div class='card'>", b"</div>", b"route", b"{\"id\": ",
             b"stream", b"header", b"\n"]
    out = bytearray()
    while len(out) < n:
        out += rnd.choice(words) + b"%d " % rnd.randint(0, 999)
    return bytes(out[:n])


def decode(coding: bytes, data: bytes) -> bytes:
    if coding == b"br":
        return brotli.decompress(data)
    if coding == b"zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if coding == b"gzip":
        return gzip.decompress(data)
    raise AssertionError(coding)


def factory(**table) -> Compression:
    return Compression(CompressionConfig.from_table(table))


def head(ctype=b"text/html; charset=utf-8", length=None, **extra):
    h = [(b"Content-Type", ctype), (b"Server", b"origin")]
    if length is not None:
        h.append((b"Content-Length", b"%d" % length))
    else:
        h.append((b"Transfer-Encoding", b"chunked"))
    for k, v in extra.items():
        h.append((k.replace("_", "-").encode(), v))
    return h


def fields(headers) -> dict:
    out: dict = {}
    for k, v in headers:
        out.setdefault(k.lower(), []).append(v)
    return out


def run(flt, body: bytes, piece: int = 10_000) -> bytes:
    out = [flt.feed(body[i:i + piece]) for i in range(0, len(body), piece)]
    return b"".join(out) + flt.finish()


# -- negotiation (RFC 9110 12.5.3) ---------------------------------------------------

OFFER = (b"br", b"zstd", b"gzip")


@pytest.mark.parametrize("field, want", [
    (None, None),                                    # nothing said: identity
    (b"", None),                                     # empty: identity only
    (b"gzip", b"gzip"),
    (b"gzip, deflate, br", b"br"),                   # tie: server preference
    (b"gzip, deflate, br, zstd", b"br"),
    (b"br;q=0.5, gzip", b"gzip"),                    # client preference wins
    (b"BR;Q=0.9, GZIP;q=0.8", b"br"),                # case-insensitive
    (b"gzip;q=0", None),
    (b"*", b"br"),
    (b"*;q=0", None),
    (b"*;q=0.5, br;q=0", b"zstd"),                   # * stands for codings not listed
    (b"gzip;q=0.5, identity", None),                 # identity rated above gzip
    (b"gzip;q=0.5, identity;q=0.4", b"gzip"),
    (b"x-gzip", b"gzip"),                            # RFC 9110 8.4.1.3
    (b"deflate, compress", None),                    # nothing we offer
    (b"br;q=2, gzip", b"gzip"),                      # malformed weight: member dropped
    (b"br;q=0.1234, gzip;q=0.1", b"gzip"),           # more than three decimals
    (b"br ; q=0.7 , gzip ; q=0.6", b"br"),
])
def test_negotiate(field, want):
    assert negotiate(parse_accept_encoding(field), OFFER) == want


def test_negotiate_follows_configured_preference():
    assert negotiate(parse_accept_encoding(b"gzip, br"), (b"gzip", b"br")) == b"gzip"
    assert negotiate(parse_accept_encoding(b"br"), (b"gzip",)) is None


# -- each encoding decodes to the original bytes ------------------------------------------

@pytest.mark.parametrize("coding", [b"br", b"zstd", b"gzip"])
@pytest.mark.parametrize("size", [256, 5000, 300_000])
def test_each_encoding_round_trips(coding, size):
    body = text(size)
    flt = factory()(b"GET", {b"accept-encoding": coding})
    out = flt.start(200, head(length=size, ETag=b'"abc"', Vary=b"Cookie",
                              Accept_Ranges=b"bytes"))
    f = fields(out)
    assert f[b"content-encoding"] == [coding]
    assert b"content-length" not in f and b"transfer-encoding" not in f
    assert b"accept-ranges" not in f
    assert f[b"etag"] == [b'W/"abc"']                # RFC 9110 8.8.3: weakened
    assert f[b"vary"] == [b"Cookie, Accept-Encoding"]
    assert f[b"server"] == [b"origin"]
    encoded = run(flt, body)
    assert decode(coding, encoded) == body
    if size >= 5000:
        assert len(encoded) < size / 2


def test_feed_of_more_than_a_slice_goes_in_slices():
    body = text(1 << 20)
    flt = factory()(b"GET", [(b"Accept-Encoding", b"gzip")])   # pairs work too
    flt.start(200, head())
    assert decode(b"gzip", flt.feed(body) + flt.finish()) == body


def test_weak_etag_stays_weak_and_vary_star_kept():
    flt = factory()(b"GET", {b"accept-encoding": b"br"})
    f = fields(flt.start(200, head(ETag=b'W/"x"', Vary=b"*")))
    assert f[b"etag"] == [b'W/"x"'] and f[b"vary"] == [b"*"]


def test_flush_makes_everything_fed_decodable():
    # At the origin's pause the client must be able to decode all it got so far.
    for coding in (b"br", b"zstd", b"gzip"):
        flt = factory()(b"GET", {b"accept-encoding": coding})
        flt.start(200, head())
        part1, part2 = text(3000, 1), text(3000, 2)
        got = flt.feed(part1) + flt.flush()
        if coding == b"br":
            d = brotli.Decompressor()
            assert d.process(got) == part1
        elif coding == b"zstd":
            d = zstandard.ZstdDecompressor().decompressobj()
            assert d.decompress(got) == part1
        else:
            d = zlib.decompressobj(31)
            assert d.decompress(got) == part1
        assert flt.flush() == b""                    # nothing new: no empty block
        rest = flt.feed(part2) + flt.finish()
        assert decode(coding, got + rest) == part1 + part2


def test_identity_client_gets_vary_and_the_bytes_as_they_are():
    flt = factory()(b"GET", {b"accept-encoding": b"identity"})
    out = flt.start(200, head(length=1000, ETag=b'"abc"'))
    f = fields(out)
    assert f[b"vary"] == [b"Accept-Encoding"]
    assert b"content-encoding" not in f and b"content-length" not in f
    assert f[b"etag"] == [b'"abc"']                  # same bytes: still strong
    body = text(1000)
    assert run(flt, body) == body
    # No Accept-Encoding at all: identity, also with Vary.
    flt = factory()(b"GET", {})
    assert fields(flt.start(200, head(length=1000)))[b"vary"] == [b"Accept-Encoding"]
    # Vary already names it: nothing to change, the response passes untouched.
    flt = factory()(b"GET", {})
    assert flt.start(200, head(length=1000, Vary=b"accept-encoding")) is None


@pytest.mark.parametrize("status, extra, ctype, length", [
    (200, {"Cache-Control": b"public, no-transform"}, b"text/html", 5000),
    (200, {"Content-Encoding": b"gzip"}, b"text/html", 5000),
    (200, {"Content-Encoding": b"br"}, b"application/json", 5000),
    (204, {}, b"text/html", None),
    (206, {"Content-Range": b"bytes 0-99/5000"}, b"text/html", 100),
    (200, {"Content-Range": b"bytes */5000"}, b"text/html", 5000),
    (200, {}, b"image/png", 5000),
    (200, {}, b"application/octet-stream", 5000),
    (200, {}, b"text/html", 255),                    # under the minimum
    (103, {}, b"text/html", None),
])
def test_never_compressed(status, extra, ctype, length):
    flt = factory()(b"GET", {b"accept-encoding": b"gzip, br"})
    h = head(ctype, length)
    h += [(k.encode(), v) for k, v in extra.items()]
    assert flt.start(status, h) is None


def test_a_304_gets_the_etag_and_vary_of_the_200_and_no_coding():
    # RFC 9110 15.4.5: the fields of the 200 it stands for, not an encoding of nothing.
    flt = factory()(b"GET", {b"accept-encoding": b"gzip, br"})
    f = fields(flt.start(304, head(b"text/html", None) + [(b"ETag", b'"abc"')]))
    assert f[b"etag"] == [b'W/"abc"'] and f[b"vary"] == [b"Accept-Encoding"]
    assert b"content-encoding" not in f and flt.body_unchanged


def test_missing_content_type_is_not_compressed():
    flt = factory()(b"GET", {b"accept-encoding": b"br"})
    assert flt.start(200, [(b"Content-Length", b"5000")]) is None


def test_request_no_transform_and_connect_get_no_filter():
    comp = factory()
    assert comp(b"GET", {b"accept-encoding": b"br", b"cache-control": b"no-transform"}) is None
    assert comp(b"CONNECT", {b"accept-encoding": b"br"}) is None


def test_types_match_exact_wildcard_and_suffix():
    comp = factory()
    for ctype in (b"text/plain", b"TEXT/CSS; charset=utf-8", b"application/json",
                  b"application/problem+json", b"application/atom+xml", b"image/svg+xml",
                  b"application/javascript", b"application/wasm"):
        assert comp(b"GET", {b"accept-encoding": b"br"}).start(200, head(ctype)) is not None, ctype
    assert comp.types(b"application/jsonx") is False
    comp = factory(types=["application/json"], min_size=0)
    assert comp(b"GET", {b"accept-encoding": b"br"}).start(200, head(b"text/html")) is None
    assert comp(b"GET", {b"accept-encoding": b"br"}).start(200, head(b"application/json",
                                                                     10)) is not None


def test_head_gets_the_get_head_and_no_body():
    comp = factory()
    get = comp(b"GET", {b"accept-encoding": b"br"}).start(200, head(length=5000, ETag=b'"e"'))
    flt = comp(b"HEAD", {b"accept-encoding": b"br"})
    assert flt.start(200, head(length=5000, ETag=b'"e"')) == get
    assert flt.feed(b"x" * 10) == b"" and flt.flush() == b"" and flt.finish() == b""


def test_error_pages_compress_too():
    flt = factory()(b"GET", {b"accept-encoding": b"zstd"})
    assert fields(flt.start(404, head(length=4000)))[b"content-encoding"] == [b"zstd"]


def test_levels_change_the_output():
    body = text(200_000)
    sizes = []
    for level in (1, 9):
        flt = factory(levels={"gzip": level})(b"GET", {b"accept-encoding": b"gzip"})
        flt.start(200, head())
        out = run(flt, body)
        assert gzip.decompress(out) == body
        sizes.append(len(out))
    assert sizes[1] < sizes[0]


def test_memory_is_bounded_for_100_mib():
    # A child process: its own peak RSS, not the test runner's.
    code = """
import resource, sys
from fastproxy.config.compression import CompressionConfig
from fastproxy.proxy.compress import Compression
comp = Compression(CompressionConfig.from_table({}))
import os
# Fresh bytes every chunk (a 32-letter alphabet: compressible, never a repeat the
# compressor's window could find), so every encoder does its full work.
table = bytes(b"abcdefghijklmnopqrstuvwxyz <>/=."[i % 32] for i in range(256))
for coding in (b"br", b"zstd", b"gzip"):
    flt = comp(b"GET", {b"accept-encoding": coding})
    flt.start(200, [(b"Content-Type", b"text/plain")])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sent = out = 0
    while sent < 100 << 20:
        chunk = os.urandom(65536).translate(table)
        out += len(flt.feed(chunk))
        sent += len(chunk)
        if sent % (1 << 20) < 65536:
            out += len(flt.flush())
    out += len(flt.finish())
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(coding.decode(), grew, out)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    for line in res.stdout.split("\n"):
        if line:
            name, grew_kib, out = line.split()
            assert int(grew_kib) < 20 * 1024, line
            assert 50 << 20 < int(out) < 100 << 20


# -- configuration -------------------------------------------------------------------

def doc(**top) -> dict:
    d = {"listeners": [{"listen": "127.0.0.1:0", "upstream": "a"},
                       {"listen": "127.0.0.1:1", "upstream": "a", "compression": False},
                       {"listen": "127.0.0.1:2", "mode": "forward"}],
         "upstreams": {"a": {"servers": ["http://127.0.0.1:9"]}}}
    d.update(top)
    return d


def test_config_table_and_per_listener_switch():
    cfg = from_dict(doc(compression={"encodings": ["gzip", "br"], "levels": {"br": 5},
                                     "min_size": "1KiB"}))
    assert cfg.compression.encodings == ("gzip", "br")
    assert cfg.compression.level("br") == 5 and cfg.compression.level("gzip") == 1
    assert cfg.compression.min_size == 1024
    on, off, fwd = (compression_factory(cfg, lc) for lc in cfg.listeners)
    assert isinstance(on, Compression) and off is None and fwd is None
    assert on.offered == (b"gzip", b"br")
    # No table: off everywhere; enabled = false: off.
    cfg = from_dict(doc())
    assert cfg.compression is None and compression_factory(cfg, cfg.listeners[0]) is None
    cfg = from_dict(doc(compression={"enabled": False}))
    assert compression_factory(cfg, cfg.listeners[0]) is None


@pytest.mark.parametrize("table, problem", [
    ({"encodings": ["deflate"]}, "compression.encodings: expected a list of distinct"),
    ({"encodings": []}, "compression.encodings: expected"),
    ({"levels": {"br": 12}}, "compression.levels.br: "),
    ({"levels": {"lzma": 1}}, "compression.levels.lzma: unknown encoding"),
    ({"min_size": "big"}, "compression.min_size: "),
    ({"types": ["html"]}, "compression.types: expected a list of media types"),
    ({"enabled": "yes"}, "compression.enabled: expected true or false"),
    ({"level": 3}, "compression.level: unknown key"),
])
def test_config_problems_name_the_key(table, problem):
    with pytest.raises(ConfigError) as info:
        from_dict(doc(compression=table))
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(problem), info.value.problems


def test_listener_switch_only_on_reverse_listeners():
    d = doc()
    d["listeners"][2]["compression"] = False
    with pytest.raises(ConfigError) as info:
        from_dict(d)
    assert info.value.problems == ["listeners[2].compression: not used by a forward listener"]
    d = doc()
    d["listeners"][1]["compression"] = "no"
    with pytest.raises(ConfigError) as info:
        from_dict(d)
    assert info.value.problems[0].startswith("listeners[1].compression: expected true or false")


def test_compress_flag():
    args = build_parser().parse_args(["serve", "--upstream", "http://127.0.0.1:9", "--compress"])
    cfg = load_config(args)
    assert cfg.compression is not None
    assert isinstance(compression_factory(cfg, cfg.listeners[0]), Compression)
    cfg = load_config(build_parser().parse_args(["serve", "--upstream", "http://127.0.0.1:9"]))
    assert compression_factory(cfg, cfg.listeners[0]) is None


def test_compress_flag_and_bad_table_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[listeners]]\nlisten = "127.0.0.1:0"\nupstream = "a"\n'
                   '[upstreams.a]\nservers = ["http://127.0.0.1:9"]\n'
                   '[compression]\nlevels = { zstd = 40 }\n')
    res = subprocess.run([sys.executable, "-m", "fastproxy", "check", "--config", str(bad),
                          "--compress"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("fastproxy: compression.levels.zstd: ")
    assert "Traceback" not in res.stderr


def test_cache_key_of_an_encoded_copy():
    from fastproxy.cache.keys import CODING, cache_key, variant_key
    base = cache_key(b"http", b"a.test", b"/x")

    def key(coding):
        return variant_key(base, 7, (CODING,), {}, coding)
    accept = [b"gzip, br", b"br;q=1, gzip;q=0.5", b"BR"]
    keys = {key(negotiate(parse_accept_encoding(a), OFFER)) for a in accept}
    assert keys == {key(b"br")}        # one stored copy for all three clients
    assert key(negotiate(parse_accept_encoding(b"identity"), OFFER)) == key(None)
    assert len({key(None), key(b"gzip"), key(b"zstd"), key(b"br")}) == 4
