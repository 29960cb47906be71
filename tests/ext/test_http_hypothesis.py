"""Property tests: generated messages, random splits, pipelining, the oracle,
and mutated inputs that must be parsed or refused cleanly, never crash."""
from __future__ import annotations

import os
from typing import NamedTuple

from hypothesis import HealthCheck, given, settings, strategies as st

from fastproxy import _http as h
from oracle import oracle_request, ours_request

# FASTPROXY_HYPOTHESIS_EXAMPLES raises the count for a longer local or nightly run.
SETTINGS = settings(max_examples=int(os.environ.get("FASTPROXY_HYPOTHESIS_EXAMPLES", "150")),
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%/"
# Names with framing or hop-by-hop meaning are generated on purpose elsewhere.
SPECIAL = {b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade",
           b"keep-alive", b"te", b"trailer", b"proxy-connection", b"expect", b"cache-control"}

names = st.text(TCHAR, min_size=1, max_size=16).map(str.encode).filter(
    # "_" for "-" makes a framing look-alike, refused on purpose (test_http_rules covers it).
    lambda n: n.lower() not in SPECIAL and n.lower().replace(b"_", b"-") not in SPECIAL)
# field-vchar / obs-text, with spaces and tabs only inside (RFC 9110 5.5).
value_bytes = st.binary(max_size=40).map(
    lambda b: bytes(c if (0x21 <= c <= 0x7E or c >= 0x80 or c in (9, 32)) else 0x61 for c in b)
    .strip(b" \t"))
ows = st.sampled_from([b"", b" ", b"  ", b"\t", b" \t "])


class Msg(NamedTuple):
    raw: bytes
    method: bytes
    target: bytes
    version: int
    headers: list
    body: bytes
    trailers: list


@st.composite
def requests(draw, lf_only=False, oracle_safe=False):
    """A valid request and the reading any correct parser must produce.

    oracle_safe leaves out what RFC 9112 allows but llhttp refuses: BWS before a
    chunk extension (7.1.1) and OWS after "chunked"."""
    eol = b"\n" if lf_only else b"\r\n"
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"PROPFIND"]))
    target = b"/" + draw(st.text(PCHAR.replace("%", ""), max_size=30)).encode()
    if draw(st.booleans()):
        target += b"?" + draw(st.text(PCHAR.replace("%", "") + "?", max_size=20)).encode()
    version = draw(st.sampled_from([10, 11]))
    fields = draw(st.lists(st.tuples(names, value_bytes), max_size=12))
    headers = list(fields)
    if version == 11 or draw(st.booleans()):
        at = draw(st.integers(0, len(headers)))
        headers.insert(at, (draw(st.sampled_from([b"Host", b"host", b"HOST"])),
                            draw(st.sampled_from([b"example.com", b"a.b:8080", b"[::1]:1", b""]))))
    framing = draw(st.sampled_from(["none", "length", "chunked"] if version == 11 else ["none", "length"]))
    body = b""
    trailers = []
    payload = b""
    if framing == "length":
        body = draw(st.binary(max_size=200))
        headers.append((b"Content-Length", b"%d" % len(body)))
        payload = body
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", draw(st.sampled_from([b"chunked", b"Chunked", b"CHUNKED"]))))
        chunks = draw(st.lists(st.binary(min_size=1, max_size=60), max_size=5))
        body = b"".join(chunks)
        parts = []
        for c in chunks:
            size = b"%x" % len(c)
            if draw(st.booleans()):
                size = size.upper()
            exts = [b"", b";a", b";a=b", b';n="v \\" x"', b";x;y=1"]
            ext = draw(st.sampled_from(exts if oracle_safe else exts + [b' ; n = "v"', b"\t;t"]))
            parts.append(size + ext + b"\r\n" + c + b"\r\n")
        trailers = draw(st.lists(st.tuples(names, value_bytes), max_size=3))
        parts.append(b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n")
        payload = b"".join(parts)
    head = method + b" " + target + b" HTTP/1.%d" % (version % 10) + eol
    for n, v in headers:
        # llhttp refuses trailing OWS after "chunked" (RFC 9110 allows it); keep
        # the oracle comparable there.
        after = b"" if oracle_safe and n == b"Transfer-Encoding" else draw(ows)
        head += n + b":" + draw(ows) + v + after + eol
    head += eol
    return Msg(head + payload, method, target, version, headers, body, trailers)


def parse_all(stream: bytes, cuts: list[int]) -> list[tuple]:
    """Parse pipelined requests arriving in pieces; return their readings."""
    p = h.RequestParser()
    buf = bytearray()
    pos = 0
    got: list[list] = []
    state, need, dec, last = "head", 0, None, 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        buf += stream[last:cut]
        last = cut
        while pos < len(buf):
            if state == "head":
                r = p.feed(buf, pos)
                if r is None:
                    break
                pos += r.head_length
                got.append([r.method, r.target, r.version, r.headers(), b"", b""])
                if r.body == h.BODY_LENGTH:
                    state, need = "length", r.content_length
                elif r.body == h.BODY_CHUNKED:
                    state, dec = "chunked", h.ChunkedDecoder()
            elif state == "length":
                take = min(need, len(buf) - pos)
                got[-1][4] += bytes(buf[pos:pos + take])
                pos += take
                need -= take
                if need:
                    break
                state = "head"
            else:
                out: list = []
                n = dec.feed(buf, pos, out)
                got[-1][4] += b"".join(bytes(m) for m in out)
                for m in out:
                    m.release()
                pos += n
                if not dec.done:
                    break
                got[-1][5] = dec.trailers
                state = "head"
    assert state == "head" and pos == len(stream), "stream not fully consumed"
    return [tuple(g) for g in got]


def expected(m: Msg) -> tuple:
    trailers = b"".join(n + b": " + v + b"\r\n" for n, v in m.trailers)
    return (m.method, m.target, m.version, m.headers, m.body, trailers)


@SETTINGS
@given(requests(), st.data())
def test_generated_request_any_split(m, data):
    cuts = data.draw(st.lists(st.integers(1, max(1, len(m.raw) - 1)), max_size=6))
    assert parse_all(m.raw, cuts) == [expected(m)]


@SETTINGS
@given(requests(lf_only=True))
def test_generated_request_bare_lf_head(m):
    """The bare-LF decision (RFC 9112 2.2) holds for any message."""
    assert parse_all(m.raw, []) == [expected(m)]


@SETTINGS
@given(st.lists(requests(), min_size=1, max_size=4), st.data())
def test_pipelined_generated_requests(msgs, data):
    stream = b"".join(m.raw for m in msgs)
    cuts = data.draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=8))
    assert parse_all(stream, cuts) == [expected(m) for m in msgs]


@SETTINGS
@given(requests(oracle_safe=True))
def test_generated_request_matches_oracle(m):
    assert ours_request(m.raw) == oracle_request(m.raw)


def _outcome(parser_cls, raw, cuts):
    p = parser_cls()
    try:
        for cut in sorted(set(cuts)) + [len(raw)]:
            r = p.feed(raw[:cut])
            if r is not None:
                return ("ok", r.head_length, r.body, r.content_length, tuple(r.headers()))
        return ("incomplete",)
    except h.ParseError as exc:
        assert exc.status in (400, 413, 414, 431, 501, 502, 505)
        assert isinstance(exc.code, str) and exc.code
        return ("error", exc.status, exc.code)


@SETTINGS
@given(requests(oracle_safe=True), st.data())
def test_mutated_requests_parse_or_refuse_consistently(m, data):
    """Any byte changed, inserted or removed: a clean result or a ParseError,
    the same whole or split; and when httptools also accepts the message, both
    read the same framing (no smuggling gap between us and llhttp)."""
    raw = bytearray(m.raw)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw)))
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        byte = data.draw(st.sampled_from([0, 9, 10, 13, 32, 34, 44, 58, 59, 127, 255])
                         | st.integers(0, 255))
        if op == "set" and at < len(raw):
            raw[at] = byte
        elif op == "insert":
            raw.insert(at, byte)
        elif at < len(raw):
            del raw[at]
    raw = bytes(raw)
    whole = _outcome(h.RequestParser, raw, [])
    cuts = data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=4))
    split = _outcome(h.RequestParser, raw, cuts)
    assert split == whole
    if whole[0] == "ok":
        _roundtrip(h.RequestParser().feed(raw))
    if whole[0] == "ok" and whole[2] != h.BODY_CHUNKED:
        try:
            theirs = oracle_request(raw[:whole[1] + max(whole[3], 0)])
        except Exception:
            return  # llhttp refuses or reads it otherwise: we are the stricter one
        r = h.RequestParser().feed(raw)
        assert theirs["method"] == r.method and theirs["target"] == r.target
        assert theirs["headers"] == r.headers()


@SETTINGS
@given(st.binary(max_size=300), st.data())
def test_random_bytes_never_crash(raw, data):
    cuts = data.draw(st.lists(st.integers(1, max(1, len(raw))), max_size=3))
    for cls in (h.RequestParser, h.ResponseParser):
        assert _outcome(cls, raw, cuts) == _outcome(cls, raw, [])
    d = h.ChunkedDecoder()
    try:
        n = d.feed(raw)
        assert 0 <= n <= len(raw)
    except h.ParseError as exc:
        assert exc.status in (400, 431)


@SETTINGS
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=6), st.data())
def test_chunked_roundtrip(chunks, data):
    """Our encoder's framing decodes to the same data at any split."""
    body = b"".join(h.chunk_header(len(c)) + c + b"\r\n" for c in chunks) + h.LAST_CHUNK
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(body)), max_size=6))))
    d = h.ChunkedDecoder()
    out: list = []
    last = 0
    for cut in cuts + [len(body)]:
        assert d.feed(body[last:cut], 0, out) == cut - last
        last = cut
    assert d.done
    assert b"".join(bytes(m) for m in out) == b"".join(chunks)


def _roundtrip(r, cls=h.RequestParser):
    """forward_head output must be read back by our own parser the same way."""
    out = r.forward_head(extra=b"Via: 1.1 t\r\n")
    again = cls(max_head=1 << 20, max_fields=10000).feed(out)
    assert again is not None and again.head_length == len(out)
    kept = again.headers()[:-1]
    assert again.headers()[-1] == (b"Via", b"1.1 t")
    original = r.headers()
    assert all(f in original for f in kept)
    hop = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
           b"transfer-encoding", b"upgrade"} | set(r.connection)
    expect = [f for f in original if f[0].lower() not in hop or f[0].lower() in (b"host", b"content-length")]
    seen_cl = False
    deduped = []
    for f in expect:
        if f[0].lower() == b"content-length":
            if seen_cl:
                continue
            seen_cl = True
        deduped.append(f)
    assert kept == deduped


@SETTINGS
@given(requests(), st.lists(st.sampled_from([b"Connection: close", b"Connection: x-a, keep-alive",
                                              b"X-A: 1", b"Keep-Alive: 5", b"TE: trailers",
                                              b"Upgrade: h2c", b"Proxy-Connection: x"]), max_size=4))
def test_forward_head_roundtrip(m, hop_lines):
    head_end = m.raw.index(b"\r\n\r\n") + 2
    raw = m.raw[:head_end] + b"".join(l + b"\r\n" for l in hop_lines) + m.raw[head_end:]
    r = h.RequestParser().feed(raw)
    _roundtrip(r)
