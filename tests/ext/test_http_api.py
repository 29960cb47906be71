"""The parser's public API on valid messages (RFC 9112 sections 2-7)."""
import pytest

from fastproxy import _http as h

BROWSER_GET = (
    b"GET /index.html?q=1 HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Connection: keep-alive\r\n"
    b"Cache-Control: max-age=0\r\n"
    b"\r\n"
)


def test_request_fields():
    r = h.RequestParser().feed(BROWSER_GET)
    assert r.method == b"GET"
    assert r.target == b"/index.html?q=1"
    assert r.target_form == h.TARGET_ORIGIN
    assert r.version == 11
    assert r.head == BROWSER_GET and r.head is BROWSER_GET
    assert r.head_length == len(BROWSER_GET)
    assert r.host == b"www.example.com"
    assert r.content_length == -1
    assert r.body == h.BODY_NONE and not r.chunked
    assert r.keep_alive
    assert r.connection == (b"keep-alive",)
    assert r.cache_control == b"max-age=0"
    assert r.upgrade is None
    assert not r.expect_continue
    assert r.headers()[0] == (b"Host", b"www.example.com")
    assert len(r.headers()) == 7
    assert r.get(b"accept-encoding") == b"gzip, deflate, br"
    assert r.get(b"ACCEPT-ENCODING") == b"gzip, deflate, br"
    assert r.get(b"x-missing", b"d") == b"d"


def test_common_methods_are_shared_objects():
    p = h.RequestParser()
    a = p.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    b = p.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert a.method is b.method
    c = p.feed(b"PROPFIND / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert c.method == b"PROPFIND"


def test_pipelined_requests_in_one_buffer():
    """RFC 9112 9.3.2: a server may receive several requests back to back."""
    one = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    two = b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n"
    buf = one + two
    p = h.RequestParser()
    r1 = p.feed(buf)
    assert r1.body == h.BODY_LENGTH and r1.content_length == 5
    assert buf[r1.head_length:r1.head_length + 5] == b"hello"
    r2 = p.feed(buf, r1.head_length + 5)
    assert r2.target == b"/b"
    assert r2.head_length == len(two)
    assert r2.head == two


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_buffer_types(kind):
    r = h.RequestParser().feed(kind(BROWSER_GET))
    assert r.target == b"/index.html?q=1"
    assert r.head == BROWSER_GET


def test_incomplete_then_complete_with_same_start():
    p = h.RequestParser()
    buf = bytearray(b"xx")
    for i in range(len(BROWSER_GET)):
        assert p.feed(buf, 2) is None
        buf += BROWSER_GET[i:i + 1]
    r = p.feed(buf, 2)
    assert r.head == BROWSER_GET and r.head_length == len(BROWSER_GET)


@pytest.mark.parametrize(
    "target,form",
    [
        (b"/", h.TARGET_ORIGIN),
        (b"http://example.com/x", h.TARGET_ABSOLUTE),
        (b"*", h.TARGET_ASTERISK),
    ],
)
def test_target_forms(target, form):
    """RFC 9112 3.2: origin, absolute and asterisk forms."""
    method = b"OPTIONS" if target == b"*" else b"GET"
    r = h.RequestParser().feed(method + b" " + target + b" HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert r.target_form == form and r.target == target


def test_connect_authority_form():
    """RFC 9112 3.2.3 / RFC 9110 9.3.6: CONNECT host:port."""
    r = h.RequestParser().feed(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert r.method is h.RequestParser().feed(
        b"CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n").method
    assert r.target_form == h.TARGET_AUTHORITY
    assert h.split_authority(r.target) == (b"example.com", 443)
    assert h.split_authority(b"[::1]:8443") == (b"::1", 8443)


def test_keep_alive_rules():
    """RFC 9112 9.3: 1.1 persists unless close; 1.0 only with keep-alive."""
    p = h.RequestParser()
    assert p.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive
    assert not p.feed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive
    assert not p.feed(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert p.feed(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive


def test_upgrade_and_expect():
    r = h.RequestParser().feed(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Expect: 100-continue\r\n\r\n")
    assert r.upgrade == b"websocket"
    assert r.expect_continue
    assert r.connection == (b"upgrade",)
    # Upgrade without the Connection token is not an upgrade (RFC 9110 7.8).
    r = h.RequestParser().feed(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
    assert r.upgrade is None


def test_forward_head_drops_hop_by_hop():
    """RFC 9110 7.6.1: hop-by-hop fields and those named by Connection go."""
    raw = (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
           b"Keep-Alive: 5\r\nProxy-Connection: x\r\nTE: trailers\r\nTrailer: X\r\n"
           b"Upgrade: h2c\r\nContent-Length: 3\r\nContent-Length: 3\r\nX-Keep:  v \r\n\r\n")
    r = h.RequestParser().feed(raw)
    assert r.forward_head(extra=b"Via: 1.1 fastproxy\r\n") == (
        b"GET / HTTP/1.1\r\nHost: a\r\nTrailer: X\r\nContent-Length: 3\r\nX-Keep: v\r\n"
        b"Via: 1.1 fastproxy\r\n\r\n")   # Trailer is end-to-end (RFC 9110 6.6.2)
    assert r.forward_head(b"GET /x HTTP/1.1", drop=(b"x-keep",), keep_upgrade=True) == (
        b"GET /x HTTP/1.1\r\nHost: a\r\nTrailer: X\r\nUpgrade: h2c\r\nContent-Length: 3\r\n\r\n")


def test_connection_cannot_strip_framing():
    r = h.RequestParser().feed(
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length, host\r\nContent-Length: 2\r\n\r\n")
    assert r.forward_head() == b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n"


def test_response_basic():
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: public\r\n\r\nhi"
    r = h.ResponseParser().feed(raw)
    assert (r.version, r.status, r.reason) == (11, 200, b"OK")
    assert r.body == h.BODY_LENGTH and r.content_length == 2
    assert r.head_length == len(raw) - 2
    assert r.cache_control == b"public"
    assert r.keep_alive
    assert r.forward_head(b"HTTP/1.1 200 Fine", extra=b"Via: 1.1 x\r\n") == (
        b"HTTP/1.1 200 Fine\r\nContent-Length: 2\r\nCache-Control: public\r\nVia: 1.1 x\r\n\r\n")


@pytest.mark.parametrize(
    "status,flags,body",
    [
        (200, {}, h.BODY_CLOSE),
        (200, {"head_request": True}, h.BODY_NONE),
        (100, {}, h.BODY_NONE),
        (204, {}, h.BODY_NONE),
        (304, {}, h.BODY_NONE),
        (200, {"connect_request": True}, h.BODY_NONE),
        (407, {"connect_request": True}, h.BODY_CLOSE),
    ],
)
def test_response_no_body_rules(status, flags, body):
    """RFC 9112 6.3 (1, 2, 8)."""
    r = h.ResponseParser().feed(b"HTTP/1.1 %d X\r\nServer: t\r\n\r\n" % status, **flags)
    assert r.body == body
    if body == h.BODY_CLOSE:
        assert not r.keep_alive


def test_response_without_reason():
    r = h.ResponseParser().feed(b"HTTP/1.1 204\r\n\r\n")
    assert r.status == 204 and r.reason == b""


def test_chunked_decoder_whole_and_dechunked():
    body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
    data = b"junk" + body + b"NEXT"
    d = h.ChunkedDecoder()
    out = []
    n = d.feed(data, 4, out)
    assert n == len(body) and d.done
    assert b"".join(bytes(m) for m in out) == b"hello world"
    assert all(isinstance(m, memoryview) for m in out)
    assert d.trailers == b"X-Trailer: yes\r\n"
    assert d.feed(data, 4 + n) == 0


def test_chunk_header():
    assert h.chunk_header(1) == b"1\r\n"
    assert h.chunk_header(0x1234abc) == b"1234abc\r\n"
    assert h.LAST_CHUNK == b"0\r\n\r\n"


def test_split_absolute():
    assert h.split_absolute(b"http://Example.com/a?b") == (b"http", b"example.com", 80, b"/a?b")
    assert h.split_absolute(b"HTTPS://h:8443") == (b"https", b"h", 8443, b"/")
    assert h.split_absolute(b"http://h?x=1") == (b"http", b"h", 80, b"/?x=1")
    assert h.split_absolute(b"http://[2001:db8::1]:81/") == (b"http", b"2001:db8::1", 81, b"/")


def test_forward_head_roundtrip_reparses():
    """What forward_head emits is a head our own strict parser reads back the same,
    minus what was dropped (RFC 9110 7.6.1)."""
    raw = (b"POST /f HTTP/1.1\r\nHost: a\r\nConnection: X-Drop, close\r\nX-Drop: 1\r\n"
           b"X-Keep:\t1 2 \r\nX-Empty:\r\nTransfer-Encoding: chunked\r\n\r\n")
    r = h.RequestParser().feed(raw)
    out = r.forward_head(extra=b"Transfer-Encoding: chunked\r\nVia: 1.1 p\r\n")
    again = h.RequestParser().feed(out)
    assert again.head_length == len(out)
    assert again.headers() == [(b"Host", b"a"), (b"X-Keep", b"1 2"), (b"X-Empty", b""),
                               (b"Transfer-Encoding", b"chunked"), (b"Via", b"1.1 p")]
    assert again.body == h.BODY_CHUNKED and again.keep_alive


def test_forward_head_argument_types():
    r = h.RequestParser().feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(TypeError):
        r.forward_head(extra="Via: x\r\n")
    with pytest.raises(TypeError):
        r.forward_head(drop=("host",))
    with pytest.raises(TypeError):
        r.forward_head(start_line="GET / HTTP/1.1")
    with pytest.raises(TypeError):
        r.get("host")
    assert r.forward_head(drop=(b"host",)) == b"GET / HTTP/1.1\r\n\r\n"
    assert r.forward_head(drop=(b"HOST",)) == b"GET / HTTP/1.1\r\n\r\n"


def test_forward_head_many_fields():
    """Over 128 fields the skip mask moves from the stack to the heap."""
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(300)) + b"\r\n"
    r = h.RequestParser(max_fields=400).feed(raw)
    out = r.forward_head(drop=(b"x-7",))
    assert out.count(b"\r\n") == 1 + 300 + 1
    assert b"X-7:" not in out and b"X-299: 299\r\n" in out


def test_get_all_and_repeated_fields():
    r = h.RequestParser().feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nx: 2\r\nY: 3\r\nX:  3 \r\n\r\n")
    assert r.get_all(b"x") == [b"1", b"2", b"3"]
    assert r.get(b"x") == b"1"
    assert r.get_all(b"z") == []


def test_reset_forgets_partial_head():
    p = h.RequestParser()
    assert p.feed(b"GET /a HTTP/1.1\r\nHo") is None
    p.reset()
    r = p.feed(b"PUT /b HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n")
    assert (r.method, r.target, r.host) == (b"PUT", b"/b", b"b")


def test_interim_then_final_response_in_one_buffer():
    """RFC 9110 15.2: 1xx responses come before the final one, possibly together."""
    data = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    p = h.ResponseParser()
    pos = 0
    statuses = []
    while True:
        r = p.feed(data, pos)
        pos += r.head_length
        statuses.append((r.status, r.body))
        if r.status >= 200:
            break
    assert statuses == [(100, h.BODY_NONE), (103, h.BODY_NONE), (200, h.BODY_LENGTH)]
    assert data[pos:] == b"ok"


def test_switching_protocols():
    r = h.ResponseParser().feed(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                                b"Upgrade: websocket\r\n\r\n")
    assert r.body == h.BODY_NONE and r.upgrade == b"websocket"
    assert r.forward_head(keep_upgrade=True, extra=b"Connection: upgrade\r\n") == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")


def test_parser_init_twice_and_bad_limits():
    p = h.RequestParser()
    p.__init__(max_fields=2)
    assert p.max_fields == 2
    with pytest.raises(ValueError):
        h.ResponseParser(max_head=10)
    with pytest.raises(ValueError):
        h.RequestParser(max_line=1)
    with pytest.raises(ValueError):
        h.RequestParser().feed(b"GET", 5)


def test_messages_outlive_buffers():
    """A message keeps its own head: the caller's buffer may be reused at once."""
    p = h.RequestParser()
    buf = bytearray(b"xxGET /keep HTTP/1.1\r\nHost: k\r\nX-V: 1\r\n\r\n")
    r = p.feed(buf, 2)
    buf[:] = b"\0" * len(buf)
    assert r.target == b"/keep" and r.get(b"x-v") == b"1" and r.host == b"k"


def test_forward_head_matches_field_model():
    """forward_head copies runs of "Name: value" CRLF lines as blocks and rewrites the
    others; either way each kept field comes out as Name ":" [SP value] CRLF, in order.
    Differential against that model over many spacings, line ends and drop lists."""
    import random
    rnd = random.Random(9112)
    names = [b"A", b"Bb", b"X-Long-Name", b"ETag", b"Content-Length", b"Cache-Control"]
    for _ in range(3000):
        lines = []
        for _ in range(rnd.randint(0, 9)):
            name = rnd.choice(names)
            value = b"7" if name == b"Content-Length" else rnd.choice(
                [b"", b"v", b"a b", b'"x"', b"0123456789abcdef"])
            lines.append(name + rnd.choice([b": ", b":", b":  ", b":\t", b": \t"]) + value
                         + rnd.choice([b"", b"", b" ", b"\t"]) + rnd.choice([b"\r\n", b"\r\n", b"\n"]))
        raw = b"HTTP/1.1 200 OK\r\n" + b"".join(lines) + b"\r\n"
        drop = tuple(rnd.sample([b"a", b"bb", b"x-long-name", b"etag"], rnd.randint(0, 2)))
        resp = h.ResponseParser().feed(raw)
        want = b"HTTP/1.1 200 OK\r\n"
        seen_cl = False
        for name, value in resp.headers():
            if name.lower() in drop or (name == b"Content-Length" and seen_cl):
                continue
            seen_cl = seen_cl or name == b"Content-Length"
            want += name + b":" + (b" " + value if value else b"") + b"\r\n"
        want += b"Via: 1.1 t\r\n\r\n"
        assert resp.forward_head(None, b"Via: 1.1 t\r\n", drop) == want, raw
