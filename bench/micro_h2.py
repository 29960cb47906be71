"""Micro-benchmark: fastproxy._h2 / _hpack against the `h2` / `hpack` packages in the same run.

Per request, each side does what the proxy's HTTP/2 listener does: take a browser's
HEADERS frame from the wire (HPACK with the dynamic table warm, as on a real
connection), report the request, encode a response head and a small body, and hand
over the bytes to write.  Ours reports through a Python subclass's hook (the relay
will override it in Cython, which is cheaper still).  A DATA row moves 1 MiB each way
in 16 KiB frames.  HPACK rows time the header codecs alone.

    python -m bench.micro_h2 [--quick]
"""
from __future__ import annotations

import argparse
import sys

from bench.micro import best_ns, table
from fastproxy import _h2, _hpack

try:
    import h2.config
    import h2.connection
    import h2.events
    import hpack
except ImportError:  # the table still shows our numbers
    h2 = hpack = None

BROWSER_REQUEST = [
    (b":method", b"GET"), (b":authority", b"en.wikipedia.org"), (b":scheme", b"https"),
    (b":path", b"/wiki/Special:Search?search=proxy&go=Go"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"),
    (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"accept-language", b"en-US,en;q=0.5"), (b"accept-encoding", b"gzip, deflate, br"),
    (b"upgrade-insecure-requests", b"1"), (b"sec-fetch-dest", b"document"),
    (b"sec-fetch-mode", b"navigate"), (b"sec-fetch-site", b"none"), (b"sec-fetch-user", b"?1"),
    (b"cookie", b"WMF-Last-Access=08-Jan-2024; GeoIP=NL:NH:Amsterdam:52.37:4.89:v4"),
    (b"te", b"trailers"),
]
RESPONSE = [
    (b":status", b"200"), (b"date", b"Mon, 08 Jan 2024 10:00:00 GMT"), (b"server", b"fastproxy"),
    (b"content-type", b"text/html; charset=UTF-8"), (b"content-length", b"5"),
    (b"vary", b"Accept-Encoding, Cookie"),
    (b"cache-control", b"private, s-maxage=0, max-age=0, must-revalidate"),
    (b"last-modified", b"Mon, 08 Jan 2024 09:12:44 GMT"),
    (b"x-content-type-options", b"nosniff"), (b"age", b"1234"),
]
BODY = b"hello"




def _client_wire(n: int) -> tuple[bytes, list[bytes]]:
    """The preface and n request HEADERS frames of one browser connection (stream 1, 3, ...)."""
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    c.increment_flow_control_window(1 << 30)     # the responses' bodies never wait for credit
    preface = c.data_to_send() + b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"   # + SETTINGS ACK
    frames = []
    for i in range(n):
        c.send_headers(2 * i + 1, BROWSER_REQUEST, end_stream=True)
        frames.append(c.data_to_send())
        c.streams.pop(2 * i + 1, None)     # keep the generator's own bookkeeping small
    return preface, frames


class _Server(_h2.Connection):
    """What a Python caller writes: the hook keeps the request, the loop answers it."""

    def on_headers(self, stream_id, headers, end_stream):
        self.last = (stream_id, headers)


def ours_requests(preface: bytes, frames: list[bytes]):
    def run(loops: int) -> None:
        conn = _Server(False, max_concurrent_streams=1 << 20, stream_burst=1e12, stream_rate=1e12)
        conn.feed(preface)
        conn.data_to_send()
        for i in range(loops):
            conn.feed(frames[i])
            sid, _headers = conn.last
            conn.send_headers(sid, RESPONSE)
            conn.send_data(sid, BODY, True)
            conn.data_to_send()
        assert conn.send_window > 0 and not conn.dead
    return run


def peer_requests(preface: bytes, frames: list[bytes]):
    def run(loops: int) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        conn.receive_data(preface)
        conn.data_to_send()
        for i in range(loops):
            for ev in conn.receive_data(frames[i]):
                if isinstance(ev, h2.events.RequestReceived):
                    sid = ev.stream_id
            conn.send_headers(sid, RESPONSE)
            conn.send_data(sid, BODY, end_stream=True)
            conn.data_to_send()
    return run


def _hpack_rows(loops: int, repeats: int) -> list[dict]:
    block_warm = hpack.Encoder().encode(BROWSER_REQUEST) if hpack else _hpack.Encoder().encode(BROWSER_REQUEST)
    enc = _hpack.Encoder()
    enc.encode(BROWSER_REQUEST)
    block_hot = enc.encode(BROWSER_REQUEST)     # all indexed: a request on a warm connection

    def ours_dec(loops, block=block_warm):
        for _ in range(loops):
            _hpack.Decoder().decode(block)

    def peer_dec(loops, block=block_warm):
        for _ in range(loops):
            hpack.Decoder().decode(block, raw=True)

    def ours_enc(loops):
        e = _hpack.Encoder()
        for _ in range(loops):
            e.encode(RESPONSE)

    def peer_enc(loops):
        e = hpack.Encoder()
        for _ in range(loops):
            e.encode(RESPONSE)

    rows = []
    for name, ours, peer in ((f"HPACK decode browser request, cold table ({len(block_warm)} B)", ours_dec, peer_dec),
                             ("HPACK encode response head, warm table", ours_enc, peer_enc)):
        ns = best_ns(ours, loops, repeats)
        row = {"name": name, "ours_ns": round(ns)}
        if hpack is not None:
            pns = best_ns(peer, loops, repeats)
            row.update(peer="hpack", peer_ns=round(pns), ratio=round(pns / ns, 1))
        rows.append(row)
    rows[0]["hot_block_B"] = len(block_hot)
    return rows


def _data_rows(quick: bool) -> list[dict]:
    """1 MiB each way on one long-lived stream, in 16 KiB frames and 64 KiB reads/writes."""
    total, frame = 1 << 20, 16384
    chunk = bytes(range(256)) * (frame // 256)
    loops = 5 if quick else 40
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    preface = c.data_to_send() + b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"    # + SETTINGS ACK
    c.receive_data(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    c.send_headers(1, [(b":method", b"POST")] + BROWSER_REQUEST[1:4])
    preface += c.data_to_send()
    # Open the peer's windows wide: 1 GiB on the connection and on stream 1.
    wide = (b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x40\x00\x00\x00"
            b"\x00\x00\x04\x08\x00\x00\x00\x00\x01\x40\x00\x00\x00")
    data_frames = b"".join(b"\x00\x40\x00\x00\x00\x00\x00\x00\x01" + chunk for _ in range(total // frame))
    reads = [data_frames[i:i + 65536] for i in range(0, len(data_frames), 65536)]

    class Sink(_h2.Connection):
        def on_data(self, sid, data, end):
            self.acknowledge_received(sid, len(data))

    def ours_in(loops):
        s = Sink(False)
        s.feed(preface)
        for _ in range(loops):
            for r in reads:
                s.feed(r)
                s.data_to_send()

    def peer_in(loops):
        s = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        s.initiate_connection()
        s.receive_data(preface)
        # h2 gives credit back in its own rhythm, which 64 KiB reads outrun: open its
        # windows wide instead (ours keeps the RFC's 65535 and acknowledges as it goes).
        s.increment_flow_control_window(1 << 30)
        s.increment_flow_control_window(1 << 30, stream_id=1)
        for _ in range(loops):
            for r in reads:
                for ev in s.receive_data(r):
                    if isinstance(ev, h2.events.DataReceived):
                        s.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                s.data_to_send()

    def ours_out(loops):
        s = _h2.Connection(False)
        s.feed(preface + wide)
        s.send_headers(1, RESPONSE[:4])
        for _ in range(loops):
            for _ in range(total // 65536):
                for _ in range(4):
                    s.send_data(1, chunk)
                s.data_to_send()

    def peer_out(loops):
        s = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        s.initiate_connection()
        s.receive_data(preface + wide)
        s.send_headers(1, RESPONSE[:4])
        for _ in range(loops):
            for _ in range(total // 65536):
                for _ in range(4):
                    s.send_data(1, chunk)
                s.data_to_send()

    rows = []
    for name, ours, peer in (("DATA in: 1 MiB, 16 KiB frames, 64 KiB reads", ours_in, peer_in),
                             ("DATA out: 1 MiB, 16 KiB frames, 64 KiB writes", ours_out, peer_out)):
        ns = best_ns(ours, loops, 3 if quick else 5)
        pns = best_ns(peer, loops, 3 if quick else 5)
        rows.append({"name": name, "ours_ns": round(ns), "peer": "h2", "peer_ns": round(pns),
                     "ratio": round(pns / ns, 1), "ours_MBps": round(total / ns * 1e3),
                     "peer_MBps": round(total / pns * 1e3)})
    return rows


def run(quick: bool = False) -> list[dict]:
    """Run every case; one dict per row (ns per request, per header block or per 1 MiB)."""
    if h2 is None:
        return [{"name": "h2 package missing: pip install h2 (test extra)", "ours_ns": None}]
    loops = 2_000 if quick else 20_000
    repeats = 3 if quick else 5
    preface, frames = _client_wire(loops)
    ns = best_ns(ours_requests(preface, frames), loops, repeats)
    pns = best_ns(peer_requests(preface, frames), loops, repeats)
    rows = [{"name": "request: HEADERS in, response HEADERS+DATA out", "ours_ns": round(ns),
             "peer": "h2", "peer_ns": round(pns), "ratio": round(pns / ns, 1)}]
    rows += _hpack_rows(loops * 5, repeats)
    rows += _data_rows(quick)
    return rows




def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer loops (CI smoke run)")
    args = ap.parse_args(argv)
    print(table(run(args.quick)))
    print(f"\nratio = h2 ns / ours ns (higher is better for us); python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
