"""Strictness of fastproxy._h2: malformed messages (RFC 9113 8.1-8.3) are stream errors
that never reach the caller, framing violations (4-6) are connection errors, and each
has its counter.  Test names carry the RFC 9113 section."""
import hpack
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
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    REQ,
    Recorder,
    data,
    frame,
    goaway_of,
    raw_server,
    rst,
    rst_of,
    settings,
    window_update,
)

from fastproxy import _h2, _h2msg

PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 1, 3, 5, 6, 9


def headers_frame(sid, hdrs, end_stream=True, enc=None, flags=0):
    return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0) | flags, sid,
                 (enc or hpack.Encoder()).encode(hdrs))


def send(ours, *frames):
    ours.feed(b"".join(frames))
    return ours.data_to_send()


POST = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"example.com"), (b":path", b"/")]

MALFORMED_REQUESTS = [
    ("8.2.1 uppercase name", REQ + [(b"X-Upper", b"v")], "field_name"),
    ("8.2.1 space in name", REQ + [(b"x a", b"v")], "field_name"),
    ("8.2.1 NUL in name", REQ + [(b"x\0a", b"v")], "field_name"),
    ("8.2.1 CR in value", REQ + [(b"x-a", b"a\rb")], "field_value"),
    ("8.2.1 LF in value", REQ + [(b"x-a", b"a\nGET / HTTP/1.1")], "field_value"),
    ("8.2.1 NUL in value", REQ + [(b"x-a", b"a\0b")], "field_value"),
    ("8.2.1 leading space in value", REQ + [(b"x-a", b" v")], "field_value"),
    ("8.2.1 trailing tab in value", REQ + [(b"x-a", b"v\t")], "field_value"),
    ("8.2.2 connection", REQ + [(b"connection", b"close")], "connection_field"),
    ("8.2.2 keep-alive", REQ + [(b"keep-alive", b"5")], "connection_field"),
    ("8.2.2 proxy-connection", REQ + [(b"proxy-connection", b"keep-alive")], "connection_field"),
    ("8.2.2 transfer-encoding", REQ + [(b"transfer-encoding", b"chunked")], "connection_field"),
    ("8.2.2 upgrade", REQ + [(b"upgrade", b"websocket")], "connection_field"),
    ("8.2.2 te other than trailers", REQ + [(b"te", b"gzip")], "te"),
    ("8.3 missing :method", REQ[1:], "pseudo_header"),
    ("8.3.1 missing :scheme", [REQ[0], REQ[2], REQ[3]], "pseudo_header"),
    ("8.3.1 missing :path", REQ[:3], "pseudo_header"),
    ("8.3.1 empty :path", REQ[:3] + [(b":path", b"")], "pseudo_header"),
    ("8.3.1 :path not starting with /", REQ[:3] + [(b":path", b"x")], "pseudo_header"),
    ("8.3.1 space in :path", REQ[:3] + [(b":path", b"/a b")], "pseudo_header"),
    ("8.3.1 fragment in :path", REQ[:3] + [(b":path", b"/a#b")], "pseudo_header"),
    ("8.3 repeated :path", REQ + [(b":path", b"/b")], "pseudo_header"),
    ("8.3 unknown pseudo-header", REQ + [(b":foo", b"x")], "pseudo_header"),
    ("8.3 response pseudo-header in a request", REQ + [(b":status", b"200")], "pseudo_header"),
    ("8.3 pseudo-header after a field", REQ[:3] + [(b"x-a", b"1"), REQ[3]], "pseudo_header"),
    ("8.5 CONNECT with :path", [(b":method", b"CONNECT"), (b":authority", b"h:443"), (b":path", b"/")],
     "pseudo_header"),
    ("8.5 CONNECT without :authority", [(b":method", b"CONNECT")], "pseudo_header"),
    ("8.5 extended CONNECT (:protocol) is not enabled", [(b":method", b"CONNECT"), (b":protocol", b"websocket"),
     (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"h")], "pseudo_header"),
    ("8.3.1 userinfo in :authority", REQ[:2] + [(b":authority", b"u@h"), REQ[3]], "pseudo_header"),
    ("8.3.1 no :authority nor host", REQ[:2] + [REQ[3]], "pseudo_header"),
    ("8.3.1 :authority and host differ", REQ + [(b"host", b"evil.example")], "authority_host"),
    ("8.3.1 two host fields", REQ[:2] + [REQ[3], (b"host", b"a"), (b"host", b"b")], "authority_host"),
    ("8.1.1 content-length not digits", REQ + [(b"content-length", b"1,1")], "content_length"),
    ("8.1.1 content-lengths differ", POST + [(b"content-length", b"1"), (b"content-length", b"2")],
     "content_length"),
    ("8.1.1 content-length but END_STREAM on HEADERS", POST + [(b"content-length", b"3")], "content_length"),
]


@pytest.mark.parametrize("hdrs,kind", [c[1:] for c in MALFORMED_REQUESTS], ids=[c[0] for c in MALFORMED_REQUESTS])
def test_rfc9113_malformed_request_is_a_stream_error_never_forwarded(hdrs, kind):
    ours = raw_server()
    out = send(ours, headers_frame(1, hdrs))
    assert rst_of(out) == {1: PROTOCOL_ERROR}
    assert ours.kinds("headers") == [] and ours.errors == {kind: 1}
    # The list alone shows every rule but the one about END_STREAM.
    alone = None if (b"content-length", b"3") in hdrs else kind
    assert not ours.dead and _h2msg.validate(hdrs) == alone
    # The connection goes on: the next request is served.
    send(ours, headers_frame(3, REQ))
    assert [e[1] for e in ours.kinds("headers")] == [3]


def test_rfc9113_8_2_2_te_trailers_and_cookie_crumbs_are_fine():
    ours = raw_server()
    hdrs = REQ + [(b"te", b"trailers"), (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"host", b"EXAMPLE.com")]
    assert rst_of(send(ours, headers_frame(1, hdrs))) == {}
    assert ours.kinds("headers") == [("headers", 1, hdrs, True)]


def test_rfc9113_8_5_connect_request_accepted():
    ours = raw_server()
    hdrs = [(b":method", b"CONNECT"), (b":authority", b"example.com:443")]
    send(ours, headers_frame(1, hdrs, end_stream=False), data(1, b"tunnel bytes"))
    assert ours.kinds("headers") == [("headers", 1, hdrs, False)]
    assert ours.kinds("data") == [("data", 1, b"tunnel bytes", False)]


@pytest.mark.parametrize("cl,chunks,why", [
    (b"5", [b"123456"], "more DATA than content-length"),
    (b"5", [b"12", b"34"], "END_STREAM before content-length bytes"),
    (b"0", [b"x"], "DATA on content-length 0"),
])
def test_rfc9113_8_1_1_content_length_mismatch_is_never_forwarded(cl, chunks, why):
    ours = raw_server()
    frames = [headers_frame(1, POST + [(b"content-length", cl)], end_stream=False)]
    frames += [data(1, c, end=i == len(chunks) - 1) for i, c in enumerate(chunks)]
    out = send(ours, *frames)
    assert rst_of(out) == {1: PROTOCOL_ERROR}
    got = b"".join(e[2] for e in ours.kinds("data"))
    assert len(got) <= int(cl) and not any(e[3] for e in ours.kinds("data"))   # no end of body
    assert ours.kinds("reset") == [("reset", 1, PROTOCOL_ERROR, False)]
    assert ours.errors == {"content_length": 1}


def test_rfc9113_8_1_1_content_length_checked_before_trailers():
    ours = raw_server()
    enc = hpack.Encoder()
    out = send(ours, headers_frame(1, POST + [(b"content-length", b"4")], False, enc), data(1, b"12"),
               headers_frame(3 - 2, [(b"x-t", b"1")], True, enc))
    assert rst_of(out) == {1: PROTOCOL_ERROR} and ours.kinds("trailers") == []


def test_rfc9113_8_1_trailers_must_end_the_stream():
    ours = raw_server()
    enc = hpack.Encoder()
    out = send(ours, headers_frame(1, POST, False, enc), data(1, b"x"),
               headers_frame(1, [(b"x-t", b"1")], False, enc))
    assert rst_of(out) == {1: PROTOCOL_ERROR} and ours.errors == {"trailers": 1}


def test_rfc9113_8_1_pseudo_header_in_trailers():
    ours = raw_server()
    enc = hpack.Encoder()
    out = send(ours, headers_frame(1, POST, False, enc), headers_frame(1, [(b":path", b"/x")], True, enc))
    assert rst_of(out) == {1: PROTOCOL_ERROR} and ours.errors == {"trailers": 1}


# --- responses (client role) --------------------------------------------------

def client_with_stream(method=b"GET"):
    ours = Recorder(True)
    ours.feed(settings() + settings(ack=True))
    sid = ours.send_request([(b":method", method)] + REQ[1:], end_stream=True)
    ours.data_to_send()
    ours.events.clear()
    return ours, sid


@pytest.mark.parametrize("hdrs,end,kind", [
    ([(b":status", b"101"), (b"upgrade", b"h2c")], False, "connection_field"),   # 8.6
    ([(b":status", b"101")], False, "status"),
    ([(b":status", b"103")], True, "status"),                                      # 8.1 1xx ending
    ([(b":status", b"2000")], True, "status"),
    ([(b":status", b"abc")], True, "status"),
    ([(b"x-a", b"b")], True, "pseudo_header"),                                     # 8.3.2 missing
    ([(b":status", b"200"), (b":status", b"200")], True, "pseudo_header"),
    ([(b":status", b"200"), (b":path", b"/")], True, "pseudo_header"),
    ([(b":status", b"200"), (b"Server", b"x")], True, "field_name"),
    ([(b":status", b"200"), (b"transfer-encoding", b"chunked")], True, "connection_field"),
    ([(b":status", b"200"), (b"content-length", b"3")], True, "content_length"),
])
def test_rfc9113_8_3_2_malformed_response_is_a_stream_error(hdrs, end, kind):
    ours, sid = client_with_stream()
    out = send(ours, headers_frame(sid, hdrs, end))
    assert rst_of(out) == {sid: PROTOCOL_ERROR}
    assert ours.kinds("headers") == [] and ours.kinds("reset") == [("reset", sid, PROTOCOL_ERROR, False)]
    assert ours.errors == {kind: 1}


def test_rfc9113_8_1_data_before_response_headers():
    ours, sid = client_with_stream()
    assert rst_of(send(ours, data(sid, b"x"))) == {sid: PROTOCOL_ERROR}


def test_rfc9110_head_and_304_responses_have_no_content_whatever_content_length_says():
    ours, sid = client_with_stream(b"HEAD")
    send(ours, headers_frame(sid, [(b":status", b"200"), (b"content-length", b"1234")]))
    assert ours.kinds("headers")[0][3] is True and ours.errors == {}
    ours, sid = client_with_stream()
    out = send(ours, headers_frame(sid, [(b":status", b"304"), (b"content-length", b"9")], False),
               data(sid, b"x", end=True))
    assert rst_of(out) == {sid: PROTOCOL_ERROR}


# --- framing: connection errors (RFC 9113 4-6) -----------------------------------

def conn_error_of(ours, out):
    assert ours.dead
    return goaway_of(out)


@pytest.mark.parametrize("wire,code,kind", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", PROTOCOL_ERROR, "bad_preface"),            # 3.4
    (_h2.PREFACE + frame(PING, 0, 0, b"12345678"), PROTOCOL_ERROR, "bad_preface"),   # 3.4 SETTINGS first
    (_h2.PREFACE + settings(ack=True), PROTOCOL_ERROR, "bad_preface"),
])
def test_rfc9113_3_4_connection_preface(wire, code, kind):
    ours = Recorder(False)
    ours.data_to_send()
    ours.feed(wire)
    assert conn_error_of(ours, ours.data_to_send()) == (0, code) and ours.errors == {kind: 1}


H1 = headers_frame(1, REQ, end_stream=False)

FRAMING = [
    ("4.2 frame over SETTINGS_MAX_FRAME_SIZE", [frame(DATA, 0, 1, b"x" * 16385)], FRAME_SIZE_ERROR, "frame_size"),
    ("6.1 DATA on stream 0", [frame(DATA, 0, 0, b"x")], PROTOCOL_ERROR, "stream_id"),
    ("6.1 DATA on an idle stream", [frame(DATA, 0, 5, b"x")], PROTOCOL_ERROR, "stream_id"),
    ("6.1 padding as long as the payload", [H1, frame(DATA, PADDED, 1, b"\x05abcd")], PROTOCOL_ERROR, "padding"),
    ("6.2 HEADERS on stream 0", [headers_frame(0, REQ)], PROTOCOL_ERROR, "stream_id"),
    ("5.1.1 even stream id from a client", [headers_frame(2, REQ)], PROTOCOL_ERROR, "stream_id"),
    ("6.2 HEADERS padding too long", [frame(HEADERS, END_HEADERS | PADDED, 1, b"\x09abc")], PROTOCOL_ERROR, "padding"),
    ("6.10 CONTINUATION without HEADERS", [frame(CONTINUATION, END_HEADERS, 1, b"\x82")], PROTOCOL_ERROR, "continuation"),
    ("6.10 other frame inside a header block", [frame(HEADERS, 0, 1, b"\x82"), frame(PING, 0, 0, b"12345678")],
     PROTOCOL_ERROR, "continuation"),
    ("6.10 CONTINUATION on another stream", [frame(HEADERS, 0, 1, b"\x82"), frame(CONTINUATION, END_HEADERS, 3, b"\x84")],
     PROTOCOL_ERROR, "continuation"),
    ("8.4 PUSH_PROMISE from a client", [frame(PUSH_PROMISE, END_HEADERS, 1, b"\0\0\0\x02\x82")], PROTOCOL_ERROR, "push_promise"),
    ("6.5 SETTINGS length not a multiple of 6", [frame(4, 0, 0, b"12345")], FRAME_SIZE_ERROR, "frame_size"),
    ("6.5 SETTINGS ACK with payload", [frame(4, 1, 0, b"\0\x03\0\0\0\x01")], FRAME_SIZE_ERROR, "frame_size"),
    ("6.5 SETTINGS on a stream", [frame(4, 0, 1, b"")], PROTOCOL_ERROR, "stream_id"),
    ("6.5.2 ENABLE_PUSH 2", [settings((2, 2))], PROTOCOL_ERROR, "settings"),
    ("6.5.2 MAX_FRAME_SIZE too small", [settings((5, 16383))], PROTOCOL_ERROR, "settings"),
    ("6.5.2 MAX_FRAME_SIZE too large", [settings((5, 1 << 24))], PROTOCOL_ERROR, "settings"),
    ("6.5.2 INITIAL_WINDOW_SIZE over 2^31-1", [settings((4, 1 << 31))], FLOW_CONTROL_ERROR, "settings"),
    ("6.7 PING of 7 bytes", [frame(PING, 0, 0, b"1234567")], FRAME_SIZE_ERROR, "frame_size"),
    ("6.7 PING on a stream", [frame(PING, 0, 1, b"12345678")], PROTOCOL_ERROR, "stream_id"),
    ("6.8 GOAWAY on a stream", [frame(GOAWAY, 0, 1, b"\0" * 8)], PROTOCOL_ERROR, "stream_id"),
    ("6.8 GOAWAY too short", [frame(GOAWAY, 0, 0, b"\0" * 7)], FRAME_SIZE_ERROR, "frame_size"),
    ("6.4 RST_STREAM on an idle stream", [rst(7)], PROTOCOL_ERROR, "stream_id"),
    ("6.4 RST_STREAM of 3 bytes", [H1, frame(3, 0, 1, b"\0\0\0")], FRAME_SIZE_ERROR, "frame_size"),
    ("6.9 WINDOW_UPDATE of 0 on the connection", [window_update(0, 0)], PROTOCOL_ERROR, "window_update_zero"),
    ("6.9 WINDOW_UPDATE on an idle stream", [window_update(9, 1)], PROTOCOL_ERROR, "stream_id"),
    ("6.9 WINDOW_UPDATE of 3 bytes", [frame(8, 0, 0, b"\0\0\1")], FRAME_SIZE_ERROR, "frame_size"),
    ("6.9.1 connection window overflow", [window_update(0, 0x7fffffff)], FLOW_CONTROL_ERROR, "flow_control"),
    ("4.3 undecodable header block", [frame(HEADERS, END_HEADERS, 1, b"\xbe")], COMPRESSION_ERROR, "compression"),
]


@pytest.mark.parametrize("frames,code,kind", [c[1:] for c in FRAMING], ids=[c[0] for c in FRAMING])
def test_rfc9113_framing_violation_is_a_connection_error(frames, code, kind):
    ours = raw_server()
    out = send(ours, *frames)
    _last, got = conn_error_of(ours, out)
    assert got == code and ours.errors.get(kind) == 1
    assert ours.kinds("connection_error")[0][1:] == (code, kind)
    ours.feed(headers_frame(11, REQ))          # ignored from now on
    assert ours.data_to_send() == b"" and not any(e[1] == 11 for e in ours.kinds("headers"))


@pytest.mark.parametrize("frames,code,kind", [
    ([H1, frame(PRIORITY, 0, 1, b"\0\0\0\x01\x10")], PROTOCOL_ERROR, "priority"),          # 5.3.1
    ([H1, frame(PRIORITY, 0, 1, b"\0\0\0\x03")], FRAME_SIZE_ERROR, "frame_size"),           # 6.3
    ([H1, window_update(1, 0)], PROTOCOL_ERROR, "window_update_zero"),                     # 6.9
    ([H1, window_update(1, 0x7fffffff)], FLOW_CONTROL_ERROR, "flow_control"),              # 6.9.1
    ([headers_frame(1, REQ, False), data(1, b"a", end=True), data(1, b"b")], STREAM_CLOSED, "stream_closed"),  # 5.1
    ([headers_frame(1, REQ), headers_frame(1, [(b"x-t", b"1")])], STREAM_CLOSED, "stream_closed"),  # 5.1 half-closed
])
def test_rfc9113_stream_errors(frames, code, kind):
    ours = raw_server()
    out = send(ours, *frames)
    assert rst_of(out) == {1: code} and not ours.dead and ours.errors == {kind: 1}


def test_rfc9113_5_1_headers_on_a_closed_stream_is_a_connection_error():
    ours = raw_server()
    send(ours, headers_frame(1, REQ))
    ours.send_headers(1, [(b":status", b"204")], end_stream=True)     # both sides ended
    out = send(ours, headers_frame(1, REQ))
    assert goaway_of(out)[1] == STREAM_CLOSED and ours.errors == {"stream_closed": 1}


@pytest.mark.parametrize("first,lower", [(5, 3), (3, 1), (9, 5), (101, 99)])
def test_rfc9113_5_1_1_a_new_stream_below_the_last_one_is_a_protocol_error(first, lower):
    # The lower id was never used: opening it now is an unexpected identifier (PROTOCOL_ERROR,
    # as h2spec 5.1.1 and the h2 package say), not a frame on a closed stream.
    ours = raw_server()
    send(ours, headers_frame(first, REQ))
    out = send(ours, headers_frame(lower, REQ))
    assert goaway_of(out)[1] == PROTOCOL_ERROR and ours.errors == {"stream_id": 1}


def test_rfc9113_5_1_1_a_reused_stream_id_among_skipped_ones_is_stream_closed():
    # 1 and 5 were used and ended, 3 was skipped: HEADERS on 5 again is STREAM_CLOSED.
    ours = raw_server()
    for sid in (1, 5, 7):
        send(ours, headers_frame(sid, REQ))
        ours.send_headers(sid, [(b":status", b"204")], end_stream=True)
    out = send(ours, headers_frame(5, REQ))
    assert goaway_of(out)[1] == STREAM_CLOSED and ours.errors == {"stream_closed": 1}


def test_rfc9113_5_3_1_headers_depending_on_itself():
    ours = raw_server()
    payload = b"\0\0\0\x01\x10" + hpack.Encoder().encode(REQ)
    out = send(ours, frame(HEADERS, END_HEADERS | END_STREAM | PRIORITY_FLAG, 1, payload))
    assert rst_of(out) == {1: PROTOCOL_ERROR} and ours.kinds("headers") == []


def test_rfc9113_5_5_unknown_frame_types_and_settings_are_ignored():
    ours = raw_server()
    out = send(ours, frame(0x42, 0xff, 0, b"whatever"), settings((0x99, 7)), headers_frame(1, REQ))
    assert not ours.dead and ours.kinds("headers") and ours.errors == {}
    assert b"\x00\x00\x00\x04\x01" in out      # SETTINGS ACK


def test_rfc9113_5_1_frames_after_we_reset_a_stream_are_ignored():
    ours = raw_server()
    send(ours, headers_frame(1, POST + [(b"content-length", b"1")], False), data(1, b"too long"))
    out = send(ours, data(1, b"more"), window_update(1, 10), rst(1),
               headers_frame(1, [(b"x-t", b"1")], True))
    assert out == b"" and not ours.dead


def test_rfc9113_6_8_streams_after_our_goaway_are_ignored():
    ours = raw_server()
    send(ours, headers_frame(1, REQ))
    ours.goaway()
    ours.data_to_send()
    enc = hpack.Encoder()
    send(ours, headers_frame(3, REQ + [(b"x-a", b"1")], enc=enc))
    assert [e[1] for e in ours.kinds("headers")] == [1]
    # Frames on the ignored stream are ignored too: no RST_STREAM, no connection error.
    out = send(ours, frame(HEADERS, END_HEADERS, 5, enc.encode(POST)), data(5, b"body"),
               headers_frame(5, [(b"x-t", b"1")], True, enc))
    assert out == b"" and not ours.dead and ours.errors == {}


def test_rfc9113_6_7_ping_answered_with_same_data():
    ours = raw_server()
    out = send(ours, frame(PING, 0, 0, b"abcdefgh"))
    assert out == frame(PING, 1, 0, b"abcdefgh")
    send(ours, frame(PING, 1, 0, b"12345678"))
    assert ours.kinds("ping_ack") == [("ping_ack", b"12345678")]


def test_error_totals_are_process_wide():
    before = _h2.error_totals().get("field_name", 0)
    ours = raw_server()
    send(ours, headers_frame(1, REQ + [(b"X-A", b"1")]))
    assert _h2.error_totals()["field_name"] == before + 1
