"""Feeding in pieces must agree with feeding whole (issue 2).

Every message of the shared tables, valid or refused, is fed whole, byte by
byte, and split in two at every position (sampled for the few very long ones);
the parsed result, or the error's (status, code), must be the same each time.
"""
import pytest

from fastproxy import _http as h
from http_cases import (BAD_CHUNKED, BAD_REQUESTS, BAD_RESPONSES, VALID_CHUNKED,
                        VALID_NOT_ORACLE, VALID_REQUESTS, VALID_RESPONSES,
                        VALID_RESPONSES_NOT_ORACLE)

PAD = b"xyz"  # a prefix before `start`, so offsets from `start` are exercised


def summary(m):
    """Everything observable about a parsed head, as plain values."""
    common = (m.head, m.head_length, m.version, m.content_length, m.body, m.chunked,
              m.keep_alive, m.host, m.upgrade, m.cache_control, m.connection,
              tuple(m.headers()), m.forward_head(extra=b"Via: 1.1 t\r\n", drop=(b"x-a",)))
    if isinstance(m, h.Request):
        return common + (m.method, m.target, m.target_form, m.expect_continue)
    return common + (m.status, m.reason)


def feed_cuts(make, data, cuts, **kw):
    """Feed PAD+data growing through `cuts`; return summary or ('error', status, code)."""
    parser = make()
    buf = bytearray(PAD)
    last = 0
    try:
        for cut in list(cuts) + [len(data)]:
            buf += data[last:cut]
            last = cut
            result = parser.feed(buf, len(PAD), **kw)
            if result is not None:
                # The head may end before the data does (a body follows).
                assert result.head_length <= cut
                return summary(result)
        return None
    except h.ParseError as exc:
        return ("error", type(exc).__name__, exc.status, exc.code)


def positions(n):
    """All split positions, sampled for long inputs to keep the run short."""
    return range(1, n) if n <= 3000 else range(1, n, max(1, n // 300))


def check_splits(make, data, **kw):
    whole = feed_cuts(make, data, [], **kw)
    assert whole is not None
    assert feed_cuts(make, data, range(1, len(data)), **kw) == whole
    for k in positions(len(data)):
        assert feed_cuts(make, data, [k], **kw) == whole, f"split at {k}"
    return whole


@pytest.mark.parametrize("raw", VALID_REQUESTS + VALID_NOT_ORACLE)
def test_valid_request_splits(raw):
    assert check_splits(h.RequestParser, raw)[0] != "error"


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda c: c.code)
def test_bad_request_splits(case):
    assert check_splits(h.RequestParser, case.raw)[2:] == (case.status, case.code)


@pytest.mark.parametrize("raw,flags", VALID_RESPONSES + VALID_RESPONSES_NOT_ORACLE)
def test_valid_response_splits(raw, flags):
    assert check_splits(h.ResponseParser, raw, **flags)[0] != "error"


@pytest.mark.parametrize("case", BAD_RESPONSES, ids=lambda c: c.code)
def test_bad_response_splits(case):
    assert check_splits(h.ResponseParser, case.raw)[2:] == (case.status, case.code)


# --- Chunked bodies ---------------------------------------------------------

NEXT = b"GET /next HTTP/1.1\r\n"


def decode_cuts(data, cuts):
    """Feed data in pieces (each piece its own buffer, as reads arrive); return
    (consumed, de-chunked data, trailers) or ('error', status, code)."""
    d = h.ChunkedDecoder()
    out = []
    consumed = 0
    last = 0
    try:
        for cut in list(cuts) + [len(data)]:
            piece = data[last:cut]
            last = cut
            n = d.feed(piece, 0, out)
            assert 0 <= n <= len(piece)
            consumed += n
            if d.done:
                break
            assert n == len(piece), "a decoder that is not done consumes everything"
        return (consumed, b"".join(bytes(m) for m in out), d.trailers, d.done)
    except h.ParseError as exc:
        return ("error", exc.status, exc.code)


@pytest.mark.parametrize("body,data,trailers", VALID_CHUNKED)
def test_valid_chunked_splits(body, data, trailers):
    stream = body + NEXT
    expect = (len(body), data, trailers, True)
    assert decode_cuts(stream, []) == expect
    assert decode_cuts(stream, range(1, len(stream))) == expect
    for k in range(1, len(stream)):
        assert decode_cuts(stream, [k]) == expect, f"split at {k}"
        assert decode_cuts(stream, [k // 2, k]) == expect, f"split at {k // 2}, {k}"


@pytest.mark.parametrize("case", BAD_CHUNKED, ids=lambda c: c.code)
def test_bad_chunked_splits(case):
    expect = ("error", case.status, case.code)
    assert decode_cuts(case.raw, []) == expect
    assert decode_cuts(case.raw, range(1, len(case.raw))) == expect
    for k in positions(len(case.raw)):
        assert decode_cuts(case.raw, [k]) == expect, f"split at {k}"


def test_chunked_start_offset_and_memoryview_slices():
    body = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    data = bytearray(b"HEAD" + body + NEXT)
    d = h.ChunkedDecoder()
    out = []
    n = d.feed(data, 4, out)
    assert n == len(body)
    assert [bytes(m) for m in out] == [b"abc", b"de"]
    for m in out:
        m.release()  # the views hold the bytearray's buffer; release before resizing
    data += b"more"


def test_pipelined_requests_any_split():
    """RFC 9112 9.3.2: several requests in one stream, cut anywhere."""
    msgs = [VALID_REQUESTS[0], VALID_REQUESTS[2], VALID_REQUESTS[3], VALID_REQUESTS[1]]
    stream = b"".join(msgs)
    whole = parse_stream(stream, [])
    assert [m[0] for m in whole] == [m.split(b" ")[0] for m in msgs]
    for k in range(1, len(stream), 7):
        assert parse_stream(stream, [k]) == whole
        assert parse_stream(stream, [k, min(len(stream), k + 13)]) == whole


def parse_stream(stream, cuts):
    """Parse pipelined requests with bodies from a stream arriving in pieces."""
    p = h.RequestParser()
    buf = bytearray()
    pos = 0
    got = []
    state = "head"
    need = 0
    dec = None
    out = []
    last = 0
    for cut in list(cuts) + [len(stream)]:
        buf += stream[last:cut]
        last = cut
        while True:
            if state == "head":
                r = p.feed(buf, pos)
                if r is None:
                    break
                pos += r.head_length
                got.append([r.method, r.target, b""])
                if r.body == h.BODY_LENGTH:
                    state, need = "length", r.content_length
                elif r.body == h.BODY_CHUNKED:
                    state, dec, out = "chunked", h.ChunkedDecoder(), []
            elif state == "length":
                take = min(need, len(buf) - pos)
                got[-1][2] += bytes(buf[pos:pos + take])
                pos += take
                need -= take
                if need:
                    break
                state = "head"
            else:
                n = dec.feed(buf, pos, out)
                got[-1][2] += b"".join(bytes(m) for m in out)
                for m in out:
                    m.release()
                out = []
                pos += n
                if not dec.done:
                    break
                state = "head"
            if pos == len(buf):
                break
    assert state == "head" and pos == len(stream)
    return [tuple(g) for g in got]
