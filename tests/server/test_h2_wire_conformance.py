"""RFC 9113 framing and stream rules against a running proxy, over a real socket: the
cases of the h2spec suite (by section) that concern a server. Each case sends frames after
a valid preface and checks the proxy's answer on the wire: a GOAWAY with the right code
(connection errors), an RST_STREAM with the right code (stream errors), or the normal
answer. The codec-level tests (tests/ext/test_h2_strict.py) hold the same rules one layer
down; this file checks that the server built on the codec keeps them."""
from __future__ import annotations

import socket
import struct
import time

import pytest
from h2_helpers import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
    parse_frames,
)
from origin import Origin

from fastproxy import _hpack
from fastproxy.testing import Proxy

PROTOCOL, FLOW, STREAM_CLOSED, FRAME_SIZE, COMPRESSION = 1, 3, 5, 6, 9
EH_ES = END_HEADERS | END_STREAM


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    origin = Origin().start()
    proxy = Proxy(["serve", "--listen", "127.0.0.1:0", "--upstream", origin.url],
                  cwd=str(tmp_path_factory.mktemp("h2wire"))).wait_ready()
    yield proxy.port
    proxy.stop()
    origin.stop()


def block(method=b"GET", path=b"/size/1", extra=(), pseudo=None) -> bytes:
    """An HPACK block (fresh encoder: static table and literals only)."""
    fields = pseudo if pseudo is not None else [
        (b":method", method), (b":scheme", b"http"), (b":authority", b"x.test"), (b":path", path)]
    return _hpack.Encoder().encode(list(fields) + list(extra))


def literal(name: bytes, value: bytes) -> bytes:
    """A literal field without indexing and without Huffman (sizes and case kept)."""
    def length(n: int) -> bytes:
        if n < 127:
            return bytes([n])
        out, n = [127], n - 127
        while n >= 128:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        return bytes(out + [n])
    return b"\x00" + length(len(name)) + name + length(len(value)) + value


def get(sid=1, **kw) -> bytes:
    return frame(HEADERS, EH_ES, sid, block(**kw))


def post(sid=1, path=b"/echo", extra=()) -> bytes:
    return frame(HEADERS, END_HEADERS, sid, block(b"POST", path, extra))


def setting(ident: int, value: int) -> bytes:
    return frame(SETTINGS, 0, 0, struct.pack(">HI", ident, value))


PING8 = frame(PING, 0, 0, b"12345678")


def exchange(port: int, payload: bytes, until) -> list:
    """Frames the proxy sends after `payload`, read until `until(frames)` holds, the
    connection ends, or 3 s pass."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(SETTINGS, 1, 0))
        s.sendall(payload)
        buf = b""
        deadline = time.monotonic() + 3
        s.settimeout(0.1)
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                if until(_frames(buf)):
                    break
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
            if until(_frames(buf)):
                break
        return _frames(buf)
    finally:
        s.close()


def _frames(buf: bytes) -> list:
    # parse_frames wants whole frames; drop a partial tail.
    whole, pos = b"", 0
    while pos + 9 <= len(buf):
        n = int.from_bytes(buf[pos:pos + 3], "big")
        if pos + 9 + n > len(buf):
            break
        whole += buf[pos:pos + 9 + n]
        pos += 9 + n
    return parse_frames(whole)


def goaway_code(frames):
    return next((int.from_bytes(p[4:8], "big") for t, _, _, p in frames if t == GOAWAY), None)


def rst_code(frames, sid=1):
    return next((int.from_bytes(p[:4], "big") for t, _, s, p in frames
                 if t == RST_STREAM and s == sid), None)


def status(frames, sid=1):
    for t, flags, s, p in frames:
        if t == HEADERS and s == sid:
            return dict(_hpack.Decoder().decode(p)).get(b":status")
    return None


CONNECTION_ERRORS = [
    # (h2spec section, what is sent, the GOAWAY code)
    ("4.2 frame over MAX_FRAME_SIZE", post() + frame(DATA, 0, 1, b"x" * 16385), FRAME_SIZE),
    ("4.2 HEADERS over MAX_FRAME_SIZE",
     frame(HEADERS, EH_ES, 1, block() + literal(b"x-big", b"a" * 17000)), FRAME_SIZE),
    ("4.3 invalid header block", frame(HEADERS, EH_ES, 1, b"\x80"), COMPRESSION),
    ("4.3 PRIORITY inside a header block",
     frame(HEADERS, END_STREAM, 1, block()) + frame(PRIORITY, 0, 1, b"\0\0\0\0\x10"), PROTOCOL),
    ("4.3 HEADERS for another stream inside a header block",
     frame(HEADERS, END_STREAM, 1, block()) + get(3), PROTOCOL),
    ("5.1 DATA on an idle stream", frame(DATA, END_STREAM, 1, b"x"), PROTOCOL),
    ("5.1 RST_STREAM on an idle stream", frame(RST_STREAM, 0, 1, b"\0\0\0\x08"), PROTOCOL),
    ("5.1.1 even stream id", get(2), PROTOCOL),
    ("5.1.1 stream id below the last one", get(5) + get(3), PROTOCOL),
    ("5.5 unknown frame inside a header block",
     frame(HEADERS, END_STREAM, 1, block()) + frame(0x20, 0, 0) + frame(CONTINUATION, 4, 1),
     PROTOCOL),
    ("6.1 DATA on stream 0", frame(DATA, 0, 0, b"x"), PROTOCOL),
    ("6.1 DATA with a pad length past the payload",
     post() + frame(DATA, PADDED | END_STREAM, 1, b"\x05ab"), PROTOCOL),
    ("6.2 HEADERS on stream 0", frame(HEADERS, EH_ES, 0, block()), PROTOCOL),
    ("6.2 HEADERS with a pad length past the payload",
     frame(HEADERS, EH_ES | PADDED, 1, b"\xff" + block()), PROTOCOL),
    ("6.3 PRIORITY on stream 0", frame(PRIORITY, 0, 0, b"\0\0\0\0\x10"), PROTOCOL),
    ("6.4 RST_STREAM on stream 0", frame(RST_STREAM, 0, 0, b"\0\0\0\x08"), PROTOCOL),
    ("6.4 RST_STREAM of 3 octets", post() + frame(RST_STREAM, 0, 1, b"\0\0\x08"), FRAME_SIZE),
    ("6.5 SETTINGS ACK with a payload", frame(SETTINGS, 1, 0, struct.pack(">HI", 1, 4096)),
     FRAME_SIZE),
    ("6.5 SETTINGS on stream 1", frame(SETTINGS, 0, 1), PROTOCOL),
    ("6.5 SETTINGS of 3 octets", frame(SETTINGS, 0, 0, b"\0\x01\0"), FRAME_SIZE),
    ("6.5.2 ENABLE_PUSH 2", setting(2, 2), PROTOCOL),
    ("6.5.2 INITIAL_WINDOW_SIZE 2^31", setting(4, 2 ** 31), FLOW),
    ("6.5.2 MAX_FRAME_SIZE 16383", setting(5, 16383), PROTOCOL),
    ("6.5.2 MAX_FRAME_SIZE 2^24", setting(5, 2 ** 24), PROTOCOL),
    ("6.6 PUSH_PROMISE from a client", frame(PUSH_PROMISE, 4, 1, b"\0\0\0\x02" + block()),
     PROTOCOL),
    ("6.7 PING on stream 1", frame(PING, 0, 1, b"12345678"), PROTOCOL),
    ("6.7 PING of 7 octets", frame(PING, 0, 0, b"1234567"), FRAME_SIZE),
    ("6.8 GOAWAY on stream 1", frame(GOAWAY, 0, 1, b"\0" * 8), PROTOCOL),
    ("6.9 WINDOW_UPDATE 0 on the connection", frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\0"),
     PROTOCOL),
    ("6.9 WINDOW_UPDATE of 3 octets", frame(WINDOW_UPDATE, 0, 0, b"\0\0\x01"), FRAME_SIZE),
    ("6.9.1 connection window past 2^31-1",
     frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2 ** 31 - 1)), FLOW),
    ("6.10 CONTINUATION without HEADERS", frame(CONTINUATION, 4, 1, block()), PROTOCOL),
    ("6.10 another frame before CONTINUATION", frame(HEADERS, END_STREAM, 1, block()) + PING8,
     PROTOCOL),
    ("6.10 CONTINUATION on stream 0",
     frame(HEADERS, END_STREAM, 1, block()) + frame(CONTINUATION, 4, 0), PROTOCOL),
    ("6.10 CONTINUATION after END_HEADERS", post() + frame(CONTINUATION, 4, 1), PROTOCOL),
    ("HPACK table size update above the setting",
     frame(HEADERS, EH_ES, 1, b"\x3f\xe1\x7f" + block()), COMPRESSION),
    ("HPACK table size update after a field", frame(HEADERS, EH_ES, 1, block() + b"\x20"),
     COMPRESSION),
]


@pytest.mark.parametrize("payload,code", [c[1:] for c in CONNECTION_ERRORS],
                         ids=[c[0] for c in CONNECTION_ERRORS])
def test_connection_error(port, payload, code):
    frames = exchange(port, payload, lambda fs: goaway_code(fs) is not None)
    assert goaway_code(frames) == code, frames


STREAM_ERRORS = [
    ("5.1 HEADERS on a half-closed (remote) stream",
     get(path=b"/slow/1") + get(path=b"/slow/1"), STREAM_CLOSED),
    ("5.1 DATA on a half-closed (remote) stream",
     get(path=b"/slow/1") + frame(DATA, END_STREAM, 1, b"x"), STREAM_CLOSED),
    ("5.3.1 PRIORITY depending on itself", frame(PRIORITY, 0, 1, b"\0\0\0\x01\x10"), PROTOCOL),
    ("6.3 PRIORITY of 4 octets", frame(PRIORITY, 0, 1, b"\0\0\0\0"), FRAME_SIZE),
    ("6.9 WINDOW_UPDATE 0 on a stream", post() + frame(WINDOW_UPDATE, 0, 1, b"\0\0\0\0"),
     PROTOCOL),
    ("6.9.1 stream window past 2^31-1",
     post(path=b"/slow/1") + frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 2 ** 31 - 1)), FLOW),
    ("8.1 second HEADERS without END_STREAM",
     post() + frame(HEADERS, END_HEADERS, 1, _hpack.Encoder().encode([(b"x-t", b"1")])),
     PROTOCOL),
    ("8.1 pseudo-header in trailers", post() + frame(DATA, 0, 1, b"x") + frame(
        HEADERS, EH_ES, 1, _hpack.Encoder().encode([(b":path", b"/")])), PROTOCOL),
    ("8.1.1 content-length and DATA disagree",
     post(extra=[(b"content-length", b"3")]) + frame(DATA, END_STREAM, 1, b"x"), PROTOCOL),
    ("8.2.1 uppercase field name", frame(HEADERS, EH_ES, 1, block() + literal(b"X-A", b"v")),
     PROTOCOL),
    ("8.2.1 value with a leading space", get(extra=[(b"x-a", b" v")]), PROTOCOL),
    ("8.2.2 connection-specific field", get(extra=[(b"connection", b"keep-alive")]), PROTOCOL),
    ("8.2.2 te other than trailers", get(extra=[(b"te", b"gzip")]), PROTOCOL),
    ("8.3 pseudo-header after a regular field", frame(HEADERS, EH_ES, 1, block(pseudo=[
        (b":method", b"GET"), (b":scheme", b"http"), (b"x-a", b"1"), (b":path", b"/"),
        (b":authority", b"x")])), PROTOCOL),
    ("8.3 :path twice", get(extra=[(b":path", b"/x")]), PROTOCOL),
    ("8.3 :path empty", get(path=b""), PROTOCOL),
    ("8.3 :method missing", frame(HEADERS, EH_ES, 1, block(pseudo=[
        (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"x")])), PROTOCOL),
    ("8.3 unknown pseudo-header", get(extra=[(b":foo", b"x")]), PROTOCOL),
    ("8.3 :status in a request", get(extra=[(b":status", b"200")]), PROTOCOL),
    ("8.3.1 host and :authority disagree", get(extra=[(b"host", b"other.test")]), PROTOCOL),
    ("8.5 CONNECT with :path", frame(HEADERS, END_HEADERS, 1, block(pseudo=[
        (b":method", b"CONNECT"), (b":authority", b"x:443"), (b":path", b"/")])), PROTOCOL),
]


@pytest.mark.parametrize("payload,code", [c[1:] for c in STREAM_ERRORS],
                         ids=[c[0] for c in STREAM_ERRORS])
def test_stream_error(port, payload, code):
    frames = exchange(port, payload, lambda fs: rst_code(fs) is not None
                      or goaway_code(fs) is not None)
    assert rst_code(frames) == code and goaway_code(frames) is None, frames


@pytest.mark.parametrize("scheme, authority, host, served", [
    (b"http", b"x.test", b"X.Test", True),
    (b"http", b"x.test", b"x.test:80", True),
    (b"http", b"x.test:80", b"x.test", True),
    (b"http", b"x.test", b"x.test:", True),
    (b"https", b"x.test:443", b"x.test", True),
    (b"http", b"x.test", b"x.test:443", False),
    (b"https", b"x.test", b"x.test:80", False),
    (b"http", b"x.test", b"x.test:8080", False),
    (b"http", b"x.test:8", b"x.test:80", False),
])
def test_host_and_authority_compared_once_normalised(port, scheme, authority, host, served):
    # 8.3.1: a Host naming another entity than :authority is malformed, compared after
    # RFC 3986 6.2 normalisation: case, and an empty or the scheme's default port. A
    # client that wrote "Host: x.test:80" beside ":authority: x.test" was reset.
    pseudo = [(b":method", b"GET"), (b":scheme", scheme), (b":authority", authority),
              (b":path", b"/size/1")]
    frames = exchange(port, frame(HEADERS, EH_ES, 1, block(pseudo=pseudo, extra=[(b"host", host)])),
                      lambda fs: status(fs) is not None or rst_code(fs) is not None)
    if served:
        assert status(frames) == b"200", frames
    else:
        assert rst_code(frames) == PROTOCOL and status(frames) is None, frames


def test_what_must_be_ignored_or_answered(port):
    # 5.5 / 6.5.2: unknown frame types and settings are ignored; 6.7: PING is answered.
    frames = exchange(port, frame(0x20, 0, 0, b"abc") + setting(0xFF, 1) + PING8,
                      lambda fs: any(t == PING for t, *_ in fs))
    assert [(f, p) for t, f, _, p in frames if t == PING] == [(1, b"12345678")]
    assert goaway_code(frames) is None
    # 6.7: a PING with ACK gets nothing back.
    frames = exchange(port, frame(PING, 1, 0, b"12345678"), lambda fs: False)
    assert not any(t in (PING, GOAWAY) for t, *_ in frames), frames


def test_header_block_in_several_continuations_and_te_trailers(port):
    b = block(extra=[(b"te", b"trailers")])
    payload = (frame(HEADERS, END_STREAM, 1, b[:3]) + frame(CONTINUATION, 0, 1, b[3:6])
               + frame(CONTINUATION, 0, 1, b[6:9]) + frame(CONTINUATION, END_HEADERS, 1, b[9:]))
    frames = exchange(port, payload, lambda fs: status(fs) is not None)
    assert status(frames) == b"200"


def test_zero_initial_window_holds_data_until_a_window_update(port):
    # 6.9.2: with SETTINGS_INITIAL_WINDOW_SIZE 0 the response head comes, its body waits.
    frames = exchange(port, setting(4, 0) + get(path=b"/size/1000"),
                      lambda fs: status(fs) is not None)
    time.sleep(0.3)
    assert status(frames) == b"200"
    assert not any(t == DATA and s == 1 and p for t, _, s, p in frames)


def _big_request(sid: int, enc, end_stream: bool) -> bytes:
    """A GET whose header list is ~160 KB (over the 64 KiB limit), in HEADERS and
    CONTINUATION frames; `enc` keeps the connection's HPACK state."""
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x.test"),
              (b":path", b"/echo")] + [(b"x-big-%d" % i, b"%04d" % i * 250) for i in range(160)]
    b = enc.encode(fields)
    parts = [b[i:i + 16384] for i in range(0, len(b), 16384)]
    out = frame(HEADERS, END_STREAM if end_stream else 0, sid, parts[0])
    for k, part in enumerate(parts[1:], 1):
        out += frame(CONTINUATION, END_HEADERS if k == len(parts) - 1 else 0, sid, part)
    return out


@pytest.mark.parametrize("end_stream", [True, False], ids=["GET", "with body to come"])
def test_header_list_over_the_limit_is_a_431_on_its_stream(port, end_stream):
    # RFC 9113 8.1 / 10.5.1: a field block larger than we take is decoded in full (HPACK
    # state) and answered 431 on its stream; the connection serves the next stream.
    enc = _hpack.Encoder()
    payload = _big_request(1, enc, end_stream)
    if not end_stream:
        payload += frame(DATA, END_STREAM, 1, b"body")
    payload += frame(HEADERS, EH_ES, 3, enc.encode([
        (b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x.test"),
        (b":path", b"/size/5")]))
    frames = exchange(port, payload, lambda fs: any(
        t == DATA and s == 3 and f & END_STREAM for t, f, s, _ in fs))
    assert goaway_code(frames) is None, frames
    dec = _hpack.Decoder()       # one decoder for the connection: the answers index its table
    heads = {s: dict(dec.decode(p)) for t, _, s, p in frames if t == HEADERS}
    assert heads[1][b":status"] == b"431" and b"date" in heads[1]
    body = b"".join(p for t, _, s, p in frames if t == DATA and s == 1)
    assert body.startswith(b"431 Request Header Fields Too Large")
    assert any(t == DATA and s == 1 and f & END_STREAM for t, f, s, _ in frames)
    if not end_stream:
        assert rst_code(frames, 1) == 0    # NO_ERROR: the request body is not wanted
    assert heads[3][b":status"] == b"200"


def test_a_431_for_a_large_header_list_is_logged_and_counted(run_proxy, origin):
    # The stream's 431 goes through its relay as an HTTP/1.1 head over the limit would:
    # one access log line and the 4xx count, as for an HTTP/1.1 client.
    import json
    import urllib.request
    p = run_proxy({"listeners": [{"upstream": "app"}], "admin": "127.0.0.1:0",
                   "upstreams": {"app": {"servers": [origin.url]}},
                   "access_log": {"path": "-", "format": "json"}})
    frames = exchange(p.port, _big_request(1, _hpack.Encoder(), True),
                      lambda fs: any(t == DATA and f & END_STREAM for t, f, _, _ in fs))
    assert status(frames, 1) == b"431"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not p.stdout_lines:
        time.sleep(0.05)
    assert [json.loads(line)["status"] for line in p.stdout_lines] == [431]
    with urllib.request.urlopen(f"http://127.0.0.1:{p.admin_port()}/status") as r:
        assert json.load(r)["requests"]["4xx"] == 1
