"""The parser against real clients and a real server over loopback sockets.

A small asyncio server uses RequestParser + ChunkedDecoder the way the proxy
does (bytes arriving in whatever pieces TCP delivers, pipelining, keep-alive)
and answers with what it read, as JSON; requests, httpx, curl and a raw socket
talk to it.  ResponseParser reads the responses of Python's http.server.
"""
from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import shutil
import socket
import subprocess
import threading
import time

import httpx
import pytest
import requests

from fastproxy import _http as h


class EchoHead(asyncio.Protocol):
    """Parse requests with our parser; answer each with JSON describing it."""

    def connection_made(self, transport):
        self.transport = transport
        self.buf = bytearray()
        self.pos = 0
        self.parser = h.RequestParser()
        self.req = None
        self.need = 0
        self.decoder = None
        self.body = hashlib.sha256()
        self.body_len = 0

    def data_received(self, data):
        self.buf += data
        try:
            self._advance()
        except h.ParseError as exc:
            msg = exc.code.encode()
            self.transport.write(b"HTTP/1.1 %d Bad\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                                 % (exc.status, len(msg), msg))
            self.transport.close()

    def _advance(self):
        while self.pos < len(self.buf) and not self.transport.is_closing():
            if self.req is None:
                r = self.parser.feed(self.buf, self.pos)
                if r is None:
                    return
                self.pos += r.head_length
                self.req = r
                self.body = hashlib.sha256()
                self.body_len = 0
                if r.body == h.BODY_LENGTH:
                    self.need = r.content_length
                elif r.body == h.BODY_CHUNKED:
                    self.decoder = h.ChunkedDecoder()
                if r.expect_continue:
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if self.req.body == h.BODY_LENGTH and self.need:
                take = min(self.need, len(self.buf) - self.pos)
                self.body.update(self.buf[self.pos:self.pos + take])
                self.body_len += take
                self.pos += take
                self.need -= take
                if self.need:
                    return
            elif self.req.body == h.BODY_CHUNKED:
                out = []
                self.pos += self.decoder.feed(self.buf, self.pos, out)
                for m in out:
                    self.body.update(m)
                    self.body_len += len(m)
                    m.release()  # the views pin self.buf: release before it is resized
                if not self.decoder.done:
                    return
            self._answer()
        if self.pos == len(self.buf):
            del self.buf[:]
            self.pos = 0

    def _answer(self):
        r = self.req
        self.req = None
        doc = json.dumps({
            "method": r.method.decode(), "target": r.target.decode(), "version": r.version,
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in r.headers()],
            "host": r.host.decode() if r.host is not None else None,
            "keep_alive": r.keep_alive, "body": r.body, "body_len": self.body_len,
            "body_sha": self.body.hexdigest(),
            "trailers": self.decoder.trailers.decode("latin-1") if self.decoder else "",
            "forward_head": r.forward_head(extra=b"Via: 1.1 test\r\n").decode("latin-1"),
        }).encode()
        self.decoder = None
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n%s\r\n%s"
                             % (len(doc), b"" if r.keep_alive else b"Connection: close\r\n", doc))
        if not r.keep_alive:
            self.transport.close()


@pytest.fixture(scope="module")
def echo_server():
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder = {}

    def run():
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(loop.create_server(EchoHead, "127.0.0.1", 0))
        holder["server"] = server
        holder["port"] = server.sockets[0].getsockname()[1]
        started.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield f"http://127.0.0.1:{holder['port']}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_requests_get(echo_server):
    r = requests.get(echo_server + "/path?q=1", headers={"X-Custom": "two  words", "Connection": "keep-alive, X-Hop", "X-Hop": "1"}, timeout=10)
    doc = r.json()
    assert doc["method"] == "GET" and doc["target"] == "/path?q=1" and doc["version"] == 11
    assert doc["host"] == echo_server.removeprefix("http://")
    assert ["X-Custom", "two  words"] in doc["headers"]
    fwd = doc["forward_head"]
    assert fwd.startswith("GET /path?q=1 HTTP/1.1\r\n") and fwd.endswith("Via: 1.1 test\r\n\r\n")
    assert "X-Hop" not in fwd and "Connection" not in fwd and "X-Custom: two  words\r\n" in fwd


def test_requests_chunked_upload(echo_server):
    parts = [b"a" * 1000, b"b" * 70000, b"", b"c" * 5]

    def gen():
        yield from parts

    doc = requests.post(echo_server + "/up", data=gen(), timeout=10).json()
    body = b"".join(parts)
    assert doc["body"] == h.BODY_CHUNKED
    assert doc["body_len"] == len(body) and doc["body_sha"] == hashlib.sha256(body).hexdigest()


def test_httpx_keep_alive_many_requests(echo_server):
    with httpx.Client(timeout=10) as client:
        for i in range(20):
            body = bytes([i]) * (i * 997)
            doc = client.post(echo_server + f"/n/{i}", content=body).json()
            assert doc["target"] == f"/n/{i}" and doc["body_len"] == len(body)
            assert doc["body_sha"] == hashlib.sha256(body).hexdigest()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_chunked_with_expect(echo_server):
    body = b"x" * 200000
    proc = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "-H", "Transfer-Encoding: chunked", "-H", "Expect: 100-continue",
         "-H", "X-Curl: yes", "--data-binary", "@-", echo_server + "/curl"],
        input=body, capture_output=True, timeout=30, check=True)
    doc = json.loads(proc.stdout)
    assert doc["method"] == "POST" and ["X-Curl", "yes"] in doc["headers"]
    assert doc["body_len"] == len(body) and doc["body_sha"] == hashlib.sha256(body).hexdigest()


class Reader:
    """Read responses from a socket with our ResponseParser, keeping leftovers."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.parser = h.ResponseParser()

    def _more(self):
        chunk = self.sock.recv(65536)
        assert chunk, "connection closed early"
        self.buf += chunk

    def read(self, **flags):
        """One response: (Response, body bytes); consumed bytes leave the buffer."""
        while (r := self.parser.feed(self.buf, 0, **flags)) is None:
            self._more()
        pos = r.head_length
        if r.body == h.BODY_LENGTH:
            while len(self.buf) - pos < r.content_length:
                self._more()
            body = bytes(self.buf[pos:pos + r.content_length])
            pos += r.content_length
        elif r.body == h.BODY_CHUNKED:
            d = h.ChunkedDecoder()
            data = bytearray()
            while True:
                out = []
                pos += d.feed(self.buf, pos, out)
                for m in out:
                    data += m
                    m.release()
                if d.done:
                    break
                self._more()
            body = bytes(data)
        elif r.body == h.BODY_CLOSE:
            while chunk := self.sock.recv(65536):
                self.buf += chunk
            body = bytes(self.buf[pos:])
            pos = len(self.buf)
        else:
            body = b""
        del self.buf[:pos]
        return r, body


def _read_response(sock, **flags):
    return Reader(sock).read(**flags)


def test_raw_socket_pipelined_byte_by_byte(echo_server):
    port = int(echo_server.rsplit(":", 1)[1])
    msgs = (b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /two HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;e=1\r\nabc\r\n0\r\nX-T: 9\r\n\r\n"
            b"PUT /three HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nwxyz")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(msgs)):
            s.sendall(msgs[i:i + 1])
            if i % 16 == 0:
                time.sleep(0.001)
        reader = Reader(s)
        docs = [json.loads(reader.read()[1]) for _ in range(3)]
    assert [d["target"] for d in docs] == ["/one", "/two", "/three"]
    assert docs[1]["trailers"] == "X-T: 9\r\n" and docs[1]["body_len"] == 3
    assert docs[2]["keep_alive"] is False and docs[2]["body_len"] == 4


@pytest.mark.parametrize("raw,status,code", [
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, b"te_and_cl"),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, b"ws_before_colon"),
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 400, b"bad_method"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, b"request_line_too_long"),
])
def test_raw_socket_refusals(echo_server, raw, status, code):
    port = int(echo_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        r, body = _read_response(s)
    assert r.status == status and body == code


class _Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "max-age=5")
            self.end_headers()
            for piece in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until close")
            self.close_connection = True
        else:
            body = b"length body"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    do_HEAD = do_GET


@pytest.fixture(scope="module")
def origin():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_response_parser_against_http_server(origin):
    with socket.create_connection(("127.0.0.1", origin), timeout=10) as s:
        s.sendall(b"GET /chunked HTTP/1.1\r\nHost: o\r\n\r\nGET /len HTTP/1.1\r\nHost: o\r\n\r\n"
                  b"HEAD /len HTTP/1.1\r\nHost: o\r\n\r\nGET /close HTTP/1.1\r\nHost: o\r\n\r\n")
        reader = Reader(s)
        r, body = reader.read()
        assert (r.status, r.body, body, r.cache_control) == (200, h.BODY_CHUNKED, b"hello chunked world", b"max-age=5")
        assert b"Transfer-Encoding" not in r.forward_head()
        r, body = reader.read()
        assert (r.body, body, r.keep_alive) == (h.BODY_LENGTH, b"length body", True)
        r, body = reader.read(head_request=True)
        assert (r.body, body, r.content_length) == (h.BODY_NONE, b"", 11)
        r, body = reader.read()
        assert (r.body, body, r.keep_alive) == (h.BODY_CLOSE, b"until close", False)
