"""Shared pieces of the HTTP/2 codec tests: a recording connection, the `h2` package
as the oracle peer, raw frame builders, and the reduction of both sides' events to
the same plain values."""
from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from fastproxy import _h2

PREFACE = _h2.PREFACE

# Frame types and flags (RFC 9113 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20


class Recorder(_h2.Connection):
    """A connection that records every hook call; auto-acks DATA unless told not to."""

    def __init__(self, client: bool = False, auto_ack: bool = True, **options) -> None:
        super().__init__(client, **options)
        self.events: list[tuple] = []
        self.auto_ack = auto_ack

    def on_headers(self, stream_id, headers, end_stream):
        self.events.append(("headers", stream_id, headers, end_stream))

    def on_informational(self, stream_id, headers):
        self.events.append(("informational", stream_id, headers))

    def on_trailers(self, stream_id, headers):
        self.events.append(("trailers", stream_id, headers))

    def on_data(self, stream_id, data, end_stream):
        self.events.append(("data", stream_id, data, end_stream))
        if self.auto_ack and data:
            self.acknowledge_received(stream_id, len(data))

    def on_reset(self, stream_id, error_code, remote):
        self.events.append(("reset", stream_id, error_code, remote))

    def on_window_open(self, stream_id):
        self.events.append(("window_open", stream_id))

    def on_goaway(self, last_stream_id, error_code, debug):
        self.events.append(("goaway", last_stream_id, error_code, debug))

    def on_settings(self):
        self.events.append(("settings",))

    def on_ping_ack(self, opaque):
        self.events.append(("ping_ack", opaque))

    def on_connection_error(self, error_code, kind):
        self.events.append(("connection_error", error_code, kind))

    def kinds(self, name: str) -> list[tuple]:
        return [e for e in self.events if e[0] == name]


def server() -> Recorder:
    """Our server with the client preface and SETTINGS exchange done by an h2 client."""
    return Recorder(client=False)


def h2_client(**kw) -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None, **kw))
    c.initiate_connection()
    return c


def h2_server(**kw) -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None, **kw))
    c.initiate_connection()
    return c


# ---------------------------------------------------------------------------
# Raw frames, for what a well-behaved library will not send

def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((ftype, flags)) + struct.pack(">I", stream_id) + payload


def settings(*pairs: tuple[int, int], ack: bool = False) -> bytes:
    return frame(SETTINGS, ACK if ack else 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def window_update(stream_id: int, inc: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", inc))


def rst(stream_id: int, code: int = 8) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def data(stream_id: int, payload: bytes, end: bool = False, pad: int | None = None) -> bytes:
    if pad is None:
        return frame(DATA, END_STREAM if end else 0, stream_id, payload)
    return frame(DATA, (END_STREAM if end else 0) | PADDED, stream_id, bytes((pad,)) + payload + b"\0" * pad)


def parse_frames(buf: bytes) -> list[tuple[int, int, int, bytes]]:
    """Split bytes we sent into (type, flags, stream_id, payload); skips the client magic."""
    buf = buf.removeprefix(PREFACE)
    out = []
    while buf:
        n = int.from_bytes(buf[:3], "big")
        out.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff, buf[9:9 + n]))
        buf = buf[9 + n:]
    return out


def goaway_of(buf: bytes):
    """(last_stream_id, error_code) of the GOAWAY in buf, or None."""
    for t, _f, _s, p in parse_frames(buf):
        if t == GOAWAY:
            return struct.unpack(">II", p[:8])
    return None


def rst_of(buf: bytes) -> dict[int, int]:
    """{stream_id: error_code} of the RST_STREAM frames in buf."""
    return {s: struct.unpack(">I", p)[0] for t, _f, s, p in parse_frames(buf) if t == RST_STREAM}


REQ = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.com"), (b":path", b"/")]


def connected_server(**options) -> tuple[Recorder, h2.connection.H2Connection]:
    """Our server after the preface exchange with an h2 client."""
    ours = Recorder(False, **options)
    peer = h2_client()
    ours.feed(peer.data_to_send())
    peer.receive_data(ours.data_to_send())
    ours.feed(peer.data_to_send())        # the client's SETTINGS ACK
    ours.events.clear()
    return ours, peer


def raw_server(**options) -> Recorder:
    """Our server after a raw client preface (magic + empty SETTINGS), output drained."""
    ours = Recorder(False, **options)
    ours.feed(PREFACE + settings() + settings(ack=True))
    ours.data_to_send()
    ours.events.clear()
    return ours


def request_block(headers, enc=None) -> bytes:
    """A HEADERS payload (HPACK block) for headers, from a fresh hpack encoder by default."""
    import hpack
    return (enc or hpack.Encoder()).encode(headers)


# ---------------------------------------------------------------------------
# Reduction of both sides' events to comparable per-stream values

def reduce_ours(events) -> dict[int, list]:
    """Per stream: [('headers', list, end), ('data', joined bytes), ('trailers', list), ('end',), ('reset', code)]."""
    out: dict[int, list] = {}
    for e in events:
        kind = e[0]
        if kind in ("settings", "ping_ack", "window_open", "goaway", "connection_error"):
            continue
        sid = e[1]
        seq = out.setdefault(sid, [])
        if kind == "headers":
            seq.append(("headers", list(e[2])))
            if e[3]:
                seq.append(("end",))
        elif kind == "informational":
            seq.append(("informational", list(e[2])))
        elif kind == "data":
            if e[2]:
                if seq and seq[-1][0] == "data":
                    seq[-1] = ("data", seq[-1][1] + e[2])
                else:
                    seq.append(("data", e[2]))
            if e[3]:
                seq.append(("end",))
        elif kind == "trailers":
            seq.append(("trailers", list(e[2])))
            seq.append(("end",))
        elif kind == "reset":
            seq.append(("reset", e[2]))
    return out


def reduce_h2(events) -> dict[int, list]:
    """The same reduction for h2 events."""
    out: dict[int, list] = {}
    E = h2.events
    for e in events:
        if isinstance(e, (E.RequestReceived, E.ResponseReceived)):
            out.setdefault(e.stream_id, []).append(("headers", [(bytes(n), bytes(v)) for n, v in e.headers]))
        elif isinstance(e, E.InformationalResponseReceived):
            out.setdefault(e.stream_id, []).append(("informational", [(bytes(n), bytes(v)) for n, v in e.headers]))
        elif isinstance(e, E.DataReceived):
            seq = out.setdefault(e.stream_id, [])
            if e.data:
                if seq and seq[-1][0] == "data":
                    seq[-1] = ("data", seq[-1][1] + e.data)
                else:
                    seq.append(("data", e.data))
        elif isinstance(e, E.TrailersReceived):
            out.setdefault(e.stream_id, []).append(("trailers", [(bytes(n), bytes(v)) for n, v in e.headers]))
        elif isinstance(e, E.StreamEnded):
            out.setdefault(e.stream_id, []).append(("end",))
        elif isinstance(e, E.StreamReset):
            out.setdefault(e.stream_id, []).append(("reset", e.error_code))
    return out


def h2_feed(conn, data: bytes) -> list:
    """Feed h2 and ack every DATA so its windows behave like our auto-acking Recorder."""
    events = conn.receive_data(data)
    for e in events:
        if isinstance(e, h2.events.DataReceived) and e.flow_controlled_length:
            conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
    return events
