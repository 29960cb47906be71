"""Micro-benchmark: fastproxy._http against httptools (llhttp) in the same run.

Each side is called from Python and made to hand over what the proxy needs from a
head: method, target, version, the header fields, the keep-alive decision and the
body framing.  For httptools that means the usual callbacks collecting the URL and
the headers; for ours, `feed` plus attribute reads.

    python -m bench.micro_parser [--quick]
"""
from __future__ import annotations

import argparse
import sys

from bench.micro import best_ns, table
from fastproxy import _http

try:
    import httptools
except ImportError:  # the table still shows our numbers
    httptools = None

GET_400 = (
    b"GET /wiki/Special:Search?search=proxy&go=Go HTTP/1.1\r\n"
    b"Host: en.wikipedia.org\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Connection: keep-alive\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Cache-Control: max-age=0\r\n"
    b"\r\n"
)

RESPONSE_1K = (
    b"HTTP/1.1 200 OK\r\n"
    b"Date: Mon, 08 Jan 2024 10:00:00 GMT\r\n"
    b"Server: nginx/1.24.0\r\n"
    b"Content-Type: text/html; charset=UTF-8\r\n"
    b"Content-Length: 5\r\n"
    b"Connection: keep-alive\r\n"
    b"Vary: Accept-Encoding, Cookie\r\n"
    b"Cache-Control: private, s-maxage=0, max-age=0, must-revalidate\r\n"
    b"Last-Modified: Mon, 08 Jan 2024 09:12:44 GMT\r\n"
    b"ETag: \"5f3c0a1b-9c4e-4a1f-8b21-6d1f0e2c3b4a\"\r\n"
    b"Content-Language: en\r\n"
    b"X-Content-Type-Options: nosniff\r\n"
    b"Strict-Transport-Security: max-age=106384710; includeSubDomains; preload\r\n"
    b"Set-Cookie: WMF-Last-Access=08-Jan-2024;Path=/;HttpOnly;secure;Expires=Fri, 09 Feb 2024 00:00:00 GMT\r\n"
    b"Set-Cookie: GeoIP=NL:NH:Amsterdam:52.37:4.89:v4; Path=/; secure; Domain=.wikipedia.org\r\n"
    b"Set-Cookie: NetworkProbeLimit=0.001;Path=/;Secure;Max-Age=3600\r\n"
    b"X-Cache: cp3066 miss, cp3066 hit/2\r\n"
    b"X-Cache-Status: hit-front\r\n"
    b"Server-Timing: cache;desc=\"hit-front\", host;desc=\"cp3066\"\r\n"
    b"Permissions-Policy: interest-cohort=(),ch-ua-arch=(self \"intake-analytics.wikimedia.org\")\r\n"
    b"Report-To: { \"group\": \"wm_nel\", \"max_age\": 604800, \"endpoints\": [{ \"url\": \"https://intake-logging.wikimedia.org/v1/events\" }] }\r\n"
    b"Accept-Ranges: bytes\r\n"
    b"Age: 1234\r\n"
    b"X-Request-Id: 1f1e1d1c-1b1a-1918-1716-151413121110\r\n"
    b"\r\n"
)
RESPONSE_BODY = b"hello"


class _ReqProto:
    """httptools callbacks collecting what the proxy needs."""

    __slots__ = ("url", "headers", "done")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True


class _BodyProto:
    __slots__ = ("n", "done")

    def __init__(self) -> None:
        self.n = 0
        self.done = False

    def on_body(self, body: bytes) -> None:
        self.n += len(body)

    def on_message_complete(self) -> None:
        self.done = True




def ours_get(loops: int) -> None:
    p = _http.RequestParser()
    data = GET_400
    for _ in range(loops):
        r = p.feed(data)
        r.method, r.target, r.host, r.keep_alive, r.body, r.content_length


def ours_get_forward(loops: int) -> None:
    p = _http.RequestParser()
    data = GET_400
    for _ in range(loops):
        r = p.feed(data)
        r.method, r.target, r.host, r.keep_alive, r.body
        r.forward_head(extra=b"Via: 1.1 fastproxy\r\n")


def ours_get_headers(loops: int) -> None:
    p = _http.RequestParser()
    data = GET_400
    for _ in range(loops):
        r = p.feed(data)
        r.method, r.target, r.keep_alive, r.body
        r.headers()


def peer_get(loops: int) -> None:
    proto = _ReqProto()
    p = httptools.HttpRequestParser(proto)
    data = GET_400
    for _ in range(loops):
        proto.url = b""
        proto.headers = []
        p.feed_data(data)
        p.get_method(), proto.url, p.get_http_version(), p.should_keep_alive()


def ours_resp(loops: int) -> None:
    p = _http.ResponseParser()
    data = RESPONSE_1K + RESPONSE_BODY
    for _ in range(loops):
        r = p.feed(data)
        r.status, r.keep_alive, r.body, r.content_length, r.cache_control


def ours_resp_forward(loops: int) -> None:
    p = _http.ResponseParser()
    data = RESPONSE_1K + RESPONSE_BODY
    for _ in range(loops):
        r = p.feed(data)
        r.status, r.keep_alive, r.body, r.content_length, r.cache_control
        r.forward_head(extra=b"Via: 1.1 fastproxy\r\n")


def peer_resp(loops: int) -> None:
    proto = _ReqProto()
    p = httptools.HttpResponseParser(proto)
    data = RESPONSE_1K + RESPONSE_BODY
    for _ in range(loops):
        proto.headers = []
        p.feed_data(data)
        p.get_status_code(), p.should_keep_alive(), p.get_http_version()


def _chunked_body(total: int, chunk: int) -> bytes:
    piece = bytes(range(256)) * (chunk // 256 + 1)
    parts = []
    for _ in range(total // chunk):
        parts.append(_http.chunk_header(chunk) + piece[:chunk] + b"\r\n")
    parts.append(_http.LAST_CHUNK)
    return b"".join(parts)


def _reads(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def _chunked_rows(quick: bool) -> list[dict]:
    total = 1 << 20
    rows = []
    for chunk in (1024, 16384):
        body = _chunked_body(total, chunk)
        reads = _reads(body, 65536)
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        peer_reads = [head + reads[0]] + reads[1:]
        loops = 3 if quick else 20

        def ours(loops, reads=reads, dechunk=False):
            for _ in range(loops):
                d = _http.ChunkedDecoder()
                out = [] if dechunk else None
                for r in reads:
                    d.feed(r, 0, out)
                assert d.done

        def ours_out(loops, reads=reads):
            ours(loops, reads, True)

        def peer(loops, reads=peer_reads):
            for _ in range(loops):
                proto = _BodyProto()
                p = httptools.HttpResponseParser(proto)
                for r in reads:
                    p.feed_data(r)
                assert proto.done and proto.n == total

        for name, fn in ((f"chunked 1 MiB in {chunk} B chunks, validate", ours),
                         (f"chunked 1 MiB in {chunk} B chunks, de-chunk", ours_out)):
            ns = best_ns(fn, loops, 3 if quick else 5)
            row = {"name": name, "ours_ns": round(ns), "ours_MBps": round(total / ns * 1e3)}
            if httptools is not None:
                pns = best_ns(peer, loops, 3 if quick else 5)
                row.update(peer="httptools", peer_ns=round(pns),
                           peer_MBps=round(total / pns * 1e3), ratio=round(pns / ns, 2))
            rows.append(row)
    return rows


def run(quick: bool = False) -> list[dict]:
    """Run every case; one dict per row (ns per message or per 1 MiB body)."""
    loops = 20_000 if quick else 200_000
    repeats = 3 if quick else 7
    cases = [
        (f"{len(GET_400)} B browser GET", ours_get, peer_get),
        (f"{len(GET_400)} B GET + forward_head", ours_get_forward, peer_get),
        (f"{len(GET_400)} B GET + headers() list", ours_get_headers, peer_get),
        (f"{len(RESPONSE_1K)} B response head", ours_resp, peer_resp),
        (f"{len(RESPONSE_1K)} B response + forward_head", ours_resp_forward, peer_resp),
    ]
    rows = []
    for name, ours, peer in cases:
        ns = best_ns(ours, loops, repeats)
        row = {"name": name, "ours_ns": round(ns)}
        if httptools is not None:
            pns = best_ns(peer, loops, repeats)
            row.update(peer="httptools", peer_ns=round(pns), ratio=round(pns / ns, 2))
        rows.append(row)
    rows.extend(_chunked_rows(quick))
    return rows




def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer loops (CI smoke run)")
    args = ap.parse_args(argv)
    print(table(run(args.quick)))
    print(f"\nratio = httptools ns / ours ns (higher is better for us); python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
