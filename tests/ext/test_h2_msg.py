"""HTTP/2 <-> HTTP/1.1 mappings of fastproxy._h2msg, checked by parsing what they produce
with our own HTTP/1.1 parser (the proxy's next step) and by h2 reading what they give
an HTTP/2 peer; plus a hypothesis fuzz of raw frame sequences: feeding them whole or
split anywhere gives the same events, output and errors."""
import hpack
from h2_helpers import PREFACE, Recorder, frame, h2_client, h2_server, reduce_h2
from h2_helpers import settings as settings_frame
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy import _h2msg, _http

REQ = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"api.example:8443"),
       (b":path", b"/v1/items?x=1"), (b"content-type", b"application/json"), (b"cookie", b"a=1"),
       (b"accept", b"*/*"), (b"cookie", b"b=2"), (b"te", b"trailers")]


def test_request_head_parses_as_the_same_request_rfc9113_8_3_1():
    head = _h2msg.request_head(REQ, body=True)
    r = _http.RequestParser().feed(head)
    assert r is not None and r.head_length == len(head)
    assert (r.method, r.target, r.host) == (b"POST", b"/v1/items?x=1", b"api.example:8443")
    assert r.chunked and r.body == _http.BODY_CHUNKED          # no content-length: chunked
    hdrs = dict(r.headers())
    assert hdrs[b"cookie"] == b"a=1; b=2"                       # 8.2.3 crumbs joined
    assert hdrs[b"content-type"] == b"application/json"


def test_request_head_with_content_length_and_without_body():
    r = _http.RequestParser().feed(_h2msg.request_head(REQ + [(b"content-length", b"7")], body=True))
    assert not r.chunked and r.content_length == 7
    r = _http.RequestParser().feed(_h2msg.request_head([(b":method", b"GET")] + REQ[1:4], body=False))
    assert r.body == _http.BODY_NONE and not r.chunked


def test_request_head_absolute_form_and_connect():
    r = _http.RequestParser().feed(_h2msg.request_head(REQ[:4], body=False, absolute=True))
    assert r.target == b"https://api.example:8443/v1/items?x=1" and r.target_form == _http.TARGET_ABSOLUTE
    r = _http.RequestParser().feed(_h2msg.request_head([(b":method", b"CONNECT"),
                                                        (b":authority", b"db.example:443")], body=True))
    assert (r.method, r.target, r.target_form) == (b"CONNECT", b"db.example:443", _http.TARGET_AUTHORITY)


def test_request_head_host_field_when_no_authority():
    r = _http.RequestParser().feed(_h2msg.request_head(
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h.example")], body=False))
    assert r.host == b"h.example" and [n for n, _ in r.headers()].count(b"host") == 1


RESPONSE_1 = (b"HTTP/1.1 200 OK\r\nServer: origin\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
              b"Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n"
              b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nUpgrade: h2c\r\nProxy-Connection: x\r\n\r\n")


def test_response_headers_from_http1_drop_connection_specific_rfc9113_8_2_2():
    r = _http.ResponseParser().feed(RESPONSE_1)
    hl = _h2msg.response_headers(r.status, r.headers())
    assert hl == [(b":status", b"200"), (b"server", b"origin"), (b"content-type", b"text/plain"),
                  (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]
    assert _h2msg.validate(hl, "response") is None


def test_response_headers_read_by_h2_client():
    client = h2_client(normalize_inbound_headers=False)
    ours = Recorder(False)
    client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")],
                        end_stream=True)
    ours.feed(client.data_to_send())
    client.receive_data(ours.data_to_send())
    r = _http.ResponseParser().feed(RESPONSE_1)
    hl = _h2msg.response_headers(r.status, r.headers())
    ours.send_headers(1, hl, end_stream=True)
    assert reduce_h2(client.receive_data(ours.data_to_send())) == {1: [("headers", hl), ("end",)]}


def test_request_headers_for_an_h2_upstream_read_by_h2_server():
    r = _http.RequestParser().feed(b"POST /rpc HTTP/1.1\r\nHost: svc:50051\r\nTE: trailers\r\n"
                                   b"Connection: TE, keep-alive\r\nContent-Length: 3\r\nX-A: 1\r\n\r\n")
    hl = _h2msg.request_headers(r.method, b"http", None, r.target, r.headers())
    # te: trailers survives (gRPC needs it, RFC 9113 8.2.2); Connection and keep-alive go.
    assert hl == [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"svc:50051"),
                  (b":path", b"/rpc"), (b"te", b"trailers"), (b"content-length", b"3"), (b"x-a", b"1")]
    ours = Recorder(True)
    server = h2_server(normalize_inbound_headers=False)
    server.receive_data(ours.data_to_send())
    ours.feed(server.data_to_send())
    ours.send_request(hl, end_stream=False)
    ours.send_data(1, b"abc", end_stream=True)
    got = reduce_h2(server.receive_data(ours.data_to_send()))
    assert got == {1: [("headers", hl), ("data", b"abc"), ("end",)]}


def test_response_head_parses_as_the_same_response():
    hl = [(b":status", b"404"), (b"content-type", b"text/html"), (b"set-cookie", b"a=1")]
    r = _http.ResponseParser().feed(_h2msg.response_head(hl, body=True))
    assert (r.status, r.reason, r.chunked) == (404, b"Not Found", True)
    r = _http.ResponseParser().feed(_h2msg.response_head(hl + [(b"content-length", b"9")], body=True))
    assert (r.chunked, r.content_length) == (False, 9)
    r = _http.ResponseParser().feed(_h2msg.response_head([(b":status", b"304")], body=False))
    assert r.status == 304 and r.body == _http.BODY_NONE


# --- raw frame fuzz: any bytes, any split --------------------------------------

frames = st.lists(st.one_of(
    st.builds(lambda t, f, s, p: frame(t, f, s, p), st.integers(0, 10), st.integers(0, 255),
              st.sampled_from([0, 1, 2, 3, 5, 7, 0x7fffffff]), st.binary(max_size=40)),
    st.builds(lambda s, end: frame(1, 4 | (1 if end else 0), s, hpack.Encoder().encode(
        [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")])),
              st.sampled_from([1, 3, 5]), st.booleans()),
), max_size=12)


def run_raw(wire, cuts):
    ours = Recorder(False, auto_ack=False)
    ours.feed(PREFACE + settings_frame())
    last = 0
    for c in list(cuts) + [len(wire)]:
        ours.feed(wire[last:c])
        last = c
    return ours


@settings(max_examples=300, deadline=None)
@given(frames, st.lists(st.integers(0, 600), max_size=8))
def test_raw_frames_split_anywhere_same_outcome(fs, cuts):
    wire = b"".join(fs)
    whole = run_raw(wire, [])
    split = run_raw(wire, sorted(c % (len(wire) + 1) for c in cuts))
    from h2_helpers import reduce_ours
    assert reduce_ours(split.events) == reduce_ours(whole.events)
    assert [e for e in split.events if e[0] != "data"] == [e for e in whole.events if e[0] != "data"]
    assert split.data_to_send() == whole.data_to_send()
    assert (split.dead, split.errors) == (whole.dead, whole.errors)


def _request_head_reference(headers, body, absolute=False):
    """request_head as it was written before it was compiled into one copy (list of
    pieces, one join): the oracle for the compiled builder."""
    method = scheme = path = b""
    authority = None
    cookies = None
    lines = []
    has_cl = False
    for name, value in headers:
        if name.startswith(b":"):
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":scheme":
                scheme = value
        elif name == b"cookie":
            cookies = (cookies or []) + [value]
        elif name == b"host":
            if authority is None:
                authority = value
        else:
            has_cl = has_cl or name == b"content-length"
            lines += (name, b": ", value, b"\r\n")
    if method == b"CONNECT":
        target = authority
    elif absolute:
        target = scheme + b"://" + authority + (b"" if path == b"*" else path)
    else:
        target = path
    head = [method, b" ", target, b" HTTP/1.1\r\n"]
    if authority is not None:
        head += (b"host: ", authority, b"\r\n")
    head += lines
    if cookies is not None:
        head += (b"cookie: ", b"; ".join(cookies), b"\r\n")
    if body and not has_cl and method != b"CONNECT":
        head.append(b"transfer-encoding: chunked\r\n")
    head.append(b"\r\n")
    return b"".join(head)


_names = st.sampled_from([b"cookie", b"host", b"content-length", b"accept", b"x-a",
                          b"user-agent", b"te", b""])
_values = st.binary(max_size=40)


@settings(max_examples=400, deadline=None)
@given(method=st.sampled_from([b"GET", b"POST", b"HEAD", b"CONNECT", b""]),
       authority=st.one_of(st.none(), st.binary(min_size=1, max_size=30)),
       path=st.one_of(st.just(b"*"), st.binary(max_size=30)), scheme=st.sampled_from([b"http", b"https"]),
       fields=st.lists(st.tuples(_names, _values), max_size=12),
       body=st.booleans(), absolute=st.booleans())
def test_compiled_request_head_is_the_reference_byte_for_byte(method, authority, path, scheme,
                                                              fields, body, absolute):
    headers = [(b":method", method), (b":scheme", scheme), (b":path", path)]
    if authority is not None:
        headers.append((b":authority", authority))
    headers += fields
    try:
        want = _request_head_reference(headers, body, absolute)
    except TypeError:
        # No authority anywhere for a target that needs one: refused, not a bad head.
        try:
            _h2msg.request_head(headers, body, absolute)
        except TypeError:
            return
        raise AssertionError("request_head made a head without an authority")
    assert _h2msg.request_head(headers, body, absolute) == want


_NAMES = st.sampled_from([b"Accept", b"accept", b"Connection", b"Keep-Alive", b"TE", b"te", b"Host",
                          b"Transfer-Encoding", b"Proxy-Connection", b"Upgrade", b"Cookie",
                          b"X-Forwarded-For", b"Via", b"X-A-Rather-Long-Header-Name-Here", b"User-Agent"])
_VALUES = st.sampled_from([b"trailers", b"close", b"x-a, te", b"gzip", b"", b"1.2.3.4", b"a=b"])


@settings(max_examples=150)
@given(st.lists(st.lists(st.tuples(_NAMES, _VALUES), max_size=8), min_size=1, max_size=5))
def test_upstream_request_block_is_the_request_fields_rfc9113_8_2(heads):
    """The upstream link encodes a parsed request straight into HPACK (no header list
    for the usual head): block after block on one encoder, it decodes to the list
    h2_request_fields makes (connection-specific fields, te and host dropped, names
    lowercased, `te: trailers` added; a head with Connection takes the list path)."""
    from fastproxy import _hpack, _http
    enc, dec = _hpack.Encoder(4096), _hpack.Decoder(4096)
    parser = _http.RequestParser()
    for fields in heads:
        lines = b"".join(n + b": " + v + b"\r\n" for n, v in fields if v)
        parser.reset()
        try:
            req = parser.feed(b"GET /p?q=1 HTTP/1.1\r\nHost: h.example\r\n" + lines + b"\r\n")
        except _http.ParseError:
            continue                    # a head the relay would have refused
        for _ in range(2):
            block, expected = _h2msg.request_block(enc, req, b"http", b"h.example:80")
            assert dec.decode(block) == expected
