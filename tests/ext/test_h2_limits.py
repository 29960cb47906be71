"""Flow control (RFC 9113 5.2, 6.9) and the abuse limits of fastproxy._h2: rapid reset,
CONTINUATION flood, HPACK bomb, control-frame floods, empty frames, concurrency."""
import struct
import time

import hpack
import pytest
from h2_helpers import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PING,
    REQ,
    WINDOW_UPDATE,
    Recorder,
    data,
    frame,
    goaway_of,
    parse_frames,
    raw_server,
    rst,
    rst_of,
    settings,
    window_update,
)

PROTOCOL_ERROR, FLOW_CONTROL_ERROR, REFUSED_STREAM, ENHANCE_YOUR_CALM = 1, 3, 7, 11
POST = [(b":method", b"POST")] + REQ[1:]


def hf(sid, hdrs=REQ, end=False, enc=None):
    return frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), sid, (enc or hpack.Encoder()).encode(hdrs))


def window_updates(out):
    return [(s, struct.unpack(">I", p)[0]) for t, _f, s, p in parse_frames(out) if t == WINDOW_UPDATE]


def data_frames(out):
    return [(s, len(p), bool(f & END_STREAM)) for t, f, s, p in parse_frames(out) if t == DATA]


def server_with_stream(*peer_settings, **options):
    ours = Recorder(False, auto_ack=False, **options)
    ours.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings(*peer_settings) + settings(ack=True) + hf(1, end=True))
    ours.data_to_send()
    ours.events.clear()
    return ours


# --- sending: windows (6.9.1, 6.9.2) ---------------------------------------------

def test_rfc9113_6_9_zero_window_send_data_takes_nothing_then_resumes():
    ours = server_with_stream((4, 0))               # SETTINGS_INITIAL_WINDOW_SIZE = 0
    ours.send_headers(1, [(b":status", b"200")])
    assert ours.send_data(1, b"x" * 1000, end_stream=True) == 0
    assert data_frames(ours.data_to_send()) == []   # nothing queued inside the codec
    assert ours.stream_send_window(1) == 0
    ours.feed(window_update(1, 300))
    assert ours.kinds("window_open") == [("window_open", 1)]
    assert ours.send_data(1, b"x" * 1000, end_stream=True) == 300
    assert data_frames(ours.data_to_send()) == [(1, 300, False)]
    ours.feed(window_update(1, 700))
    assert ours.send_data(1, b"x" * 700, end_stream=True) == 700
    assert data_frames(ours.data_to_send()) == [(1, 700, True)]


def test_rfc9113_6_9_1_connection_window_shared_and_reopened():
    ours = server_with_stream((4, 100000))
    ours.feed(hf(3, end=True))
    for sid in (1, 3):
        ours.send_headers(sid, [(b":status", b"200")])
    assert ours.send_data(1, b"a" * 60000) == 60000
    assert ours.send_data(3, b"b" * 10000) == 5535           # 65535 for the connection
    assert ours.send_data(1, b"a") == 0
    ours.data_to_send()
    ours.feed(window_update(0, 10000))
    assert sorted(ours.kinds("window_open")) == [("window_open", 1), ("window_open", 3)]
    assert ours.send_data(3, b"b" * 4465) == 4465


def test_rfc9113_6_9_2_initial_window_change_applies_to_open_streams():
    ours = server_with_stream()
    ours.send_headers(1, [(b":status", b"200")])
    assert ours.send_data(1, b"x" * 60000) == 60000           # 5535 left
    ours.feed(settings((4, 16384)))                          # -49151: window goes negative
    assert ours.stream_send_window(1) == 0
    assert ours.send_data(1, b"x") == 0
    ours.feed(window_update(0, 1 << 20))
    ours.feed(settings((4, 200000)))                          # +183616
    assert ours.stream_send_window(1) == 200000 - 60000
    assert ours.kinds("window_open") == [("window_open", 1)]


def test_rfc9113_6_9_2_initial_window_change_overflowing_a_stream_is_flow_control_error():
    ours = server_with_stream()
    ours.feed(window_update(1, 0x7fffffff - 65535))
    ours.feed(settings((4, 65536)))
    assert goaway_of(ours.data_to_send())[1] == FLOW_CONTROL_ERROR


def test_rfc9113_6_9_large_data_split_at_peer_max_frame_size():
    ours = server_with_stream((4, 1 << 20), (5, 20000))
    ours.feed(window_update(0, 1 << 20))
    ours.send_headers(1, [(b":status", b"200")])
    assert ours.send_data(1, b"z" * 50000, end_stream=True) == 50000
    assert data_frames(ours.data_to_send()) == [(1, 20000, False), (1, 20000, False), (1, 10000, True)]


# --- receiving: credit follows the caller (6.9) ------------------------------------

def test_rfc9113_6_9_receive_window_opens_only_when_the_caller_acknowledges():
    ours = Recorder(False, auto_ack=False)
    ours.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings() + settings(ack=True)
              + hf(1, POST) + data(1, b"x" * 16384) + data(1, b"x" * 16384) + data(1, b"x" * 16384))
    out = ours.data_to_send()
    assert window_updates(out) == [(0, (1 << 20) - 65535)]   # only the preface's connection credit
    ours.acknowledge_received(1, 16384)
    assert window_updates(ours.data_to_send()) == []           # batched: under half the window
    ours.acknowledge_received(1, 32768)
    assert window_updates(ours.data_to_send()) == [(1, 49152)]
    # The peer may not send beyond the window it has (65535 - 49152 + 49152 left).
    ours.feed(data(1, b"y" * 16383) + data(1, b"y" * 16384) + data(1, b"y" * 16384) + data(1, b"y" * 16384))
    assert not ours.dead
    ours.feed(data(1, b"y"))
    assert goaway_of(ours.data_to_send())[1] == FLOW_CONTROL_ERROR


def test_rfc9113_6_9_1_connection_window_bounds_buffered_bytes():
    ours = Recorder(False, auto_ack=False, initial_window_size=1 << 20, connection_window_size=100000)
    ours.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings() + settings(ack=True))
    frames = b"".join(hf(s, POST) + data(s, b"x" * 16384) * 2 for s in (1, 3, 5))
    ours.feed(frames)                                           # 98304 unacknowledged: fine
    assert not ours.dead
    ours.feed(data(7 - 2, b"x" * 1697))
    assert goaway_of(ours.data_to_send())[1] == FLOW_CONTROL_ERROR


def test_rfc9113_6_1_padding_counts_against_the_window_and_is_credited_back():
    ours = server_with_stream()
    ours.feed(hf(3, POST) + data(3, b"abc", pad=200))
    assert ours.kinds("data") == [("data", 3, b"abc", False)]
    ours.acknowledge_received(3, 3)                       # 204 of the window back so far
    for _ in range(2):
        ours.feed(data(3, b"d" * 16000, pad=255))        # padding (256) credited at once
        ours.acknowledge_received(3, 16000)
    ours.feed(data(3, b"d" * 100, pad=255))
    # Credit goes back in one WINDOW_UPDATE once half the stream window is consumed.
    assert window_updates(ours.data_to_send()) == [(3, 204 + 2 * 16256 + 256)]
    assert not ours.dead


# --- abuse -------------------------------------------------------------------------

def test_rapid_reset_cve_2023_44487_goaway_enhance_your_calm():
    ours = raw_server(reset_burst=50, reset_rate=1)
    enc = hpack.Encoder()
    ours.feed(b"".join(hf(2 * i + 1, REQ, True, enc) + rst(2 * i + 1) for i in range(60)))
    assert goaway_of(ours.data_to_send()) == (101, ENHANCE_YOUR_CALM)
    assert ours.errors == {"rapid_reset": 1} and len(ours.kinds("headers")) == 51


def test_rapid_reset_default_limit():
    ours = raw_server()
    enc = hpack.Encoder()
    ours.feed(b"".join(hf(2 * i + 1, REQ, True, enc) + rst(2 * i + 1) for i in range(1100)))
    assert goaway_of(ours.data_to_send())[1] == ENHANCE_YOUR_CALM
    assert ours.errors == {"rapid_reset": 1}


def test_resets_within_the_rate_are_fine():
    ours = raw_server(reset_burst=5, reset_rate=200)
    enc = hpack.Encoder()
    for i in range(12):
        ours.feed(hf(2 * i + 1, REQ, True, enc) + rst(2 * i + 1))
        time.sleep(0.01)
    assert not ours.dead and len(ours.kinds("reset")) == 12


def test_streams_started_per_second_bounded():
    ours = raw_server(stream_burst=20, stream_rate=1)
    enc = hpack.Encoder()
    for i in range(20):
        ours.feed(hf(2 * i + 1, REQ, True, enc))
        ours.send_headers(2 * i + 1, [(b":status", b"204")], end_stream=True)
    assert not ours.dead
    ours.feed(hf(41, REQ, True, enc))
    assert goaway_of(ours.data_to_send())[1] == ENHANCE_YOUR_CALM and ours.errors == {"stream_rate": 1}


def test_continuation_flood_cve_2024_27316_bounded_by_header_block_limit():
    ours = raw_server()
    wire = frame(HEADERS, 0, 1, hpack.Encoder().encode(REQ))
    wire += b"".join(frame(CONTINUATION, 0, 1, b"\x40\x03abc\x03xyz" * 100) for _ in range(100))
    ours.feed(wire)
    assert goaway_of(ours.data_to_send())[1] == ENHANCE_YOUR_CALM
    assert ours.errors == {"header_block_too_large": 1}


def test_empty_continuation_flood_counts_frames():
    ours = raw_server(max_empty_frames=10 ** 6)
    ours.feed(frame(HEADERS, 0, 1, hpack.Encoder().encode(REQ)) + frame(CONTINUATION, 0, 1) * 10000)
    assert goaway_of(ours.data_to_send())[1] == ENHANCE_YOUR_CALM
    assert ours.errors == {"header_block_too_large": 1}


def test_empty_frames_flood_cve_2019_9518():
    ours = raw_server()
    ours.feed(hf(1, POST) + data(1, b"") * 11)
    assert goaway_of(ours.data_to_send())[1] == ENHANCE_YOUR_CALM and ours.errors == {"empty_frames": 1}


def test_hpack_bomb_refused_and_decoder_stays_in_step():
    ours = raw_server()
    enc = hpack.Encoder()
    big = (b"x-bomb", b"a" * 4000)
    ours.feed(hf(1, REQ + [big], True, enc))              # inserts the 4 KB entry
    out_before = len(ours.kinds("headers"))
    ours.feed(hf(3, REQ + [big] * 100, True, enc))        # ~400 KB decoded from ~100 bytes
    assert rst_of(ours.data_to_send()) == {3: PROTOCOL_ERROR}
    assert ours.errors == {"header_list_too_large": 1} and len(ours.kinds("headers")) == out_before
    ours.feed(hf(5, REQ + [big], True, enc))
    assert ours.kinds("headers")[-1] == ("headers", 5, REQ + [big], True)


def test_header_list_size_limit_is_an_option():
    ours = raw_server(max_header_list_size=300)
    ours.feed(hf(1, REQ + [(b"x-a", b"v" * 200)], True))
    assert rst_of(ours.data_to_send()) == {1: PROTOCOL_ERROR}


@pytest.mark.parametrize("flood", [frame(PING, 0, 0, b"12345678"), settings()], ids=["PING", "SETTINGS"])
def test_control_frame_flood_when_replies_are_not_taken(flood):
    ours = raw_server()
    ours.feed(flood * 1001)
    assert goaway_of(ours.data_to_send())[1] == ENHANCE_YOUR_CALM and ours.errors == {"control_flood": 1}


def test_control_frames_fine_when_replies_are_taken():
    ours = raw_server()
    for _ in range(30):
        ours.feed(frame(PING, 0, 0, b"12345678") * 100)
        assert len(ours.data_to_send()) == 1700
    assert not ours.dead


def test_rfc9113_5_1_2_max_concurrent_streams_refused_stream():
    ours = raw_server()
    enc = hpack.Encoder()
    ours.feed(b"".join(hf(2 * i + 1, REQ, True, enc) for i in range(129)))
    assert rst_of(ours.data_to_send()) == {257: REFUSED_STREAM}
    assert ours.active_peer == 128 and ours.errors == {"refused_stream": 1}
    ours.send_headers(1, [(b":status", b"204")], end_stream=True)
    ours.feed(hf(259, REQ, True, enc))
    assert ours.kinds("headers")[-1][1] == 259 and ours.active_peer == 128


def test_our_settings_announce_the_limits():
    ours = Recorder(False, max_concurrent_streams=7, initial_window_size=1 << 18, max_header_list_size=9999)
    frames = parse_frames(ours.data_to_send())
    pairs = dict(struct.unpack(">HI", frames[0][3][i:i + 6]) for i in range(0, len(frames[0][3]), 6))
    assert pairs == {3: 7, 4: 1 << 18, 6: 9999}
    client = Recorder(True)
    out = client.data_to_send()
    assert out.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert dict(struct.unpack(">HI", parse_frames(out)[0][3][i:i + 6]) for i in range(0, 18, 6))[2] == 0
