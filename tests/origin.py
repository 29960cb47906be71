"""A real HTTP/1.1 origin server for tests: asyncio in a background thread, port 0.

It parses requests with httptools (an independent parser, so our parser is not
checking itself) and answers by path:

    /echo            200, JSON of method, target, version, headers and body length + sha256
    /size/N          200 with N bytes (Content-Length), ?chunked=1 for chunked framing,
                     ?close=1 for a close-delimited body (HTTP/1.0-style)
    /status/N        that status with a short body (204/304 with none)
    /slow/SECONDS    wait, then 200
    /slowbody/N      send the head, then N bytes slowly
    /drop            close the connection without answering
    /ws              WebSocket-like upgrade: 101, then echo bytes back
    /count           200 with the number of connections accepted so far
    /health          origin.health_status (200 unless a test changes it)
Responses built by send() carry `X-Origin: <port>` so balancing tests see who answered.
    /early           answer 413 at once without reading the body, then close
    /interim         send a 103 Early Hints before the 200
    /page.html       an HTML page loading /script.js and /img.png (browser tests)
    ?idle_close=S    on any path: close the connection S seconds after answering
    /c/NAME          cacheable responses for the cache tests, shaped by query parameters
                     (percent-encoded): cc=Cache-Control, etag=ETag value (answers 304
                     to a matching If-None-Match), lm=seconds before now for
                     Last-Modified (304 to If-Modified-Since not older), vary=Vary,
                     cookie=1 (Set-Cookie), expires=seconds from now, age=Age,
                     status=N, delay=S, chunked=1, size=N (body length), cut=1 (send
                     half the body, then close), location=..., content_location=...,
                     force304=1 (304 to any If-None-Match), cdn=CDN-Cache-Control,
                     fcc=Fastproxy-Cache-Control, drop=1 (close without answering),
                     ctype=Content-Type;
                     the body says how many times the URL was asked for; Date always.
                     `Origin.override[path]` (a dict of the same parameters) wins over
                     the query; `Origin.count(target)` is how often a target was asked.
"""
from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import threading
import time
from collections import Counter
from urllib.parse import parse_qsl

import httptools


# A page whose script and image must come through the same proxy (browser tests).
PAGE = (b"<!doctype html><html><head><title>start</title><script src='/script.js'></script>"
        b"</head><body><img id='i' src='/img.png' onload='window.imgOk=1'>"
        b"<p id='out'>waiting</p></body></html>")
SCRIPT = (b"window.addEventListener('load', function () {"
          b" document.getElementById('out').textContent ="
          b" 'script ran; image ' + (window.imgOk ? 'loaded' : 'missing'); });")
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


class _Conn(asyncio.Protocol):
    def __init__(self, server: "Origin") -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.upgraded = False
        self.queue: list = []
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body_len = 0
        self.body_hash = hashlib.sha256()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections += 1
        self.server.open.add(self)

    def data_received(self, data) -> None:
        if self.upgraded:
            self.transport.write(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            rest = data[offset:]
            if rest:
                self.transport.write(rest)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
            self.transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.server.requests.append((self.parser.get_method(), self.url, list(self.headers)))
        path = self.url.split(b"?")[0]
        if path == b"/early":
            self.transport.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n"
                                 b"Connection: close\r\n\r\nbig\n")
            self.transport.close()
        elif path == b"/ws":
            self.upgraded = True
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_len += len(body)
        self.body_hash.update(body)

    def on_message_complete(self) -> None:
        if self.upgraded:
            return
        method = self.parser.get_method()
        version = self.parser.get_http_version()
        keep = self.parser.should_keep_alive()
        info = {
            "method": method.decode(), "target": self.url.decode("latin-1"),
            "version": version,
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.headers],
            "body_len": self.body_len, "body_sha256": self.body_hash.hexdigest(),
        }
        url = self.url
        self.server.completed.append(info)
        self._reset()
        asyncio.ensure_future(self.server.respond(self, method, url, info, keep))

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.server.open.discard(self)


class Origin:
    """The origin server; start() binds 127.0.0.1:0 and returns once it listens."""

    def __init__(self, ssl_context=None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.ssl_context = ssl_context
        self.host = host
        self.want_port = port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.connections = 0
        self.requests: list = []
        self.completed: list = []  # the info dict of each complete request (body length, sha256)
        self.port = 0
        self.ident = b""          # "X-Origin: <port>" once bound (on responses built by send)
        self.health_status = 200  # what /health answers
        self._server = None
        self.counts: Counter = Counter()
        self.override: dict[str, dict] = {}
        self.open: set = set()
        self._stopped = False

    def count(self, target: str) -> int:
        """How many requests for target (path and query as sent) reached the origin."""
        return self.counts[target]

    def headers_of(self, target: str, n: int = -1) -> dict:
        """Lowercased request fields of the n-th request for target (default: the last)."""
        found = [h for m, u, h in self.requests if u.decode("latin-1") == target]
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in found[n]}

    def start(self) -> "Origin":
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        fut.result(5)
        return self

    async def _start(self) -> None:
        self._server = await self.loop.create_server(lambda: _Conn(self), self.host,
                                                     self.want_port, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        self.ident = b"X-Origin: %d\r\n" % self.port

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True

        async def _stop():
            self._server.close()
            # Down means down: open keep-alive connections are reset too.
            for conn in list(self.open):
                if conn.transport is not None:
                    conn.transport.abort()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    async def _cacheable(self, conn, t, url, path, query, info, conn_hdr, head_only) -> None:
        nth = self.counts[url.decode("latin-1")]      # before any delay: this request's number
        p = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
        p.update(self.override.get(path.decode("latin-1"), {}))
        if "delay" in p:
            await asyncio.sleep(float(p["delay"]))
            if conn.transport is None:
                return
        req = {n.lower(): v for n, v in info["headers"]}
        if p.get("drop"):
            t.close()        # no response at all
            return
        now = time.time()
        status = int(p.get("status", 200))
        fields = [("Date", email.utils.formatdate(now, usegmt=True))]
        if "cc" in p:
            fields.append(("Cache-Control", p["cc"]))
        if "cdn" in p:
            fields.append(("CDN-Cache-Control", p["cdn"]))
        if "ctype" in p:
            fields.append(("Content-Type", p["ctype"]))
        if "fcc" in p:
            fields.append(("Fastproxy-Cache-Control", p["fcc"]))
        etag = p.get("etag")
        if etag:
            fields.append(("ETag", etag))
        lm = None
        if "lm" in p:
            lm = now - float(p["lm"])
            fields.append(("Last-Modified", email.utils.formatdate(lm, usegmt=True)))
        if "vary" in p:
            fields.append(("Vary", p["vary"]))
        if p.get("cookie"):
            fields.append(("Set-Cookie", "session=secret; Path=/"))
        if "expires" in p:
            fields.append(("Expires", email.utils.formatdate(now + float(p["expires"]),
                                                             usegmt=True)))
        if "age" in p:
            fields.append(("Age", p["age"]))
        for key, name in (("location", "Location"), ("content_location", "Content-Location")):
            if key in p:
                fields.append((name, p[key]))
        not_modified = False
        if p.get("force304") and "if-none-match" in req:
            not_modified = True          # a broken server: 304 whatever the validator
        elif status == 200 and etag and "if-none-match" in req:
            tags = [x.strip() for x in req["if-none-match"].split(",")]
            not_modified = etag in tags or "*" in tags or (
                "W/" + etag.removeprefix("W/")) in ["W/" + x.removeprefix("W/") for x in tags]
        elif status == 200 and lm is not None and "if-modified-since" in req:
            since = email.utils.parsedate_to_datetime(req["if-modified-since"]).timestamp()
            not_modified = int(lm) <= since
        head_fields = "".join(f"{n}: {v}\r\n" for n, v in fields).encode("latin-1")
        if not_modified:
            t.write(b"HTTP/1.1 304 Not Modified\r\n" + head_fields + conn_hdr + b"\r\n")
            return
        text = f"{path.decode()} #{nth}\n".encode()
        size = int(p.get("size", len(text)))
        body = (text + b"." * size)[:size] if size >= len(text) else text[:size]
        reason = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error",
                  503: b"Service Unavailable"}.get(status, b"X")
        if p.get("chunked"):
            t.write(b"HTTP/1.1 %d %s\r\nTransfer-Encoding: chunked\r\n" % (status, reason)
                    + head_fields + conn_hdr + b"\r\n")
            if not head_only:
                for i in range(0, len(body), 1000):
                    piece = body[i:i + 1000]
                    t.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                t.write(b"0\r\n\r\n")
            return
        t.write(b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n" % (status, reason, len(body))
                + head_fields + conn_hdr + b"\r\n")
        if head_only:
            return
        if p.get("cut"):
            t.write(body[:len(body) // 2])
            await asyncio.sleep(0.05)
            t.close()
            return
        t.write(body)

    async def respond(self, conn: _Conn, method: bytes, url: bytes, info: dict,
                      keep: bool) -> None:
        t = conn.transport
        if t is None:
            return
        path, _, query = url.partition(b"?")
        parts = path.split(b"/")
        conn_hdr = b"" if keep else b"Connection: close\r\n"
        head_only = method == b"HEAD"

        def send(status: int, body: bytes, extra: bytes = b"") -> None:
            head = (b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n" % (status, len(body)) + extra +
                    self.ident + conn_hdr + b"\r\n")
            t.write(head if head_only else head + body)

        self.counts[url.decode("latin-1")] += 1
        if path == b"/echo":
            send(200, json.dumps(info).encode(), b"Content-Type: application/json\r\n")
        elif parts[1:2] == [b"c"]:
            await self._cacheable(conn, t, url, path, query, info, conn_hdr, head_only)
            if conn.transport is None:
                return
        elif parts[1:2] == [b"size"]:
            n = int(parts[2])
            streamed = n > (1 << 20) and b"chunked=1" not in query and b"close=1" not in query
            body = b"" if streamed else (b"0123456789abcdef" * (n // 16 + 1))[:n]
            if b"chunked=1" in query:
                t.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + conn_hdr + b"\r\n")
                if not head_only:
                    for i in range(0, n, 7000):
                        piece = body[i:i + 7000]
                        t.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                        await asyncio.sleep(0)
                    t.write(b"0\r\n\r\n")
            elif b"close=1" in query:
                t.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                t.write(body)
                t.close()
                return
            elif streamed:
                # Large bodies stream in 1 MiB blocks, waiting while the proxy is slow,
                # so the origin's own memory stays flat too.
                t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % n + conn_hdr + b"\r\n")
                if not head_only:
                    block = b"0123456789abcdef" * 65536
                    left = n
                    while left > 0 and conn.transport is not None:
                        piece = block if left >= len(block) else block[:left]
                        t.write(piece)
                        left -= len(piece)
                        while conn.transport is not None and t.get_write_buffer_size() > (4 << 20):
                            await asyncio.sleep(0.001)
            else:
                send(200, body)
        elif parts[1:2] == [b"status"]:
            status = int(parts[2])
            if status in (204, 304) or status < 200:
                t.write(b"HTTP/1.1 %d X\r\n" % status + conn_hdr + b"\r\n")
            else:
                send(status, b"status %d\n" % status)
        elif parts[1:2] == [b"slow"]:
            await asyncio.sleep(float(parts[2]))
            if conn.transport is not None:
                send(200, b"slow\n")
        elif parts[1:2] == [b"slowbody"]:
            n = int(parts[2])
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
            for _ in range(n):
                await asyncio.sleep(0.2)
                if conn.transport is None:
                    return
                t.write(b"x")
        elif path == b"/drop":
            t.close()
            return
        elif path == b"/health":
            send(self.health_status, b"health\n")
        elif path == b"/count":
            send(200, str(self.connections).encode())
        elif path == b"/page.html":
            send(200, PAGE, b"Content-Type: text/html\r\n")
        elif path == b"/script.js":
            send(200, SCRIPT, b"Content-Type: application/javascript\r\n")
        elif path == b"/img.png":
            send(200, PNG, b"Content-Type: image/png\r\n")
        elif path == b"/interim":
            t.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
            send(200, b"after hints\n")
        else:
            send(404, b"no such path\n")
        if not keep and conn.transport is not None:
            conn.transport.close()
        elif b"idle_close=" in query and conn.transport is not None:
            delay = float(query.split(b"idle_close=")[1].split(b"&")[0])
            self.loop.call_later(delay, conn.transport.close)
