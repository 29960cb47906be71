"""A higher HTTP/1.x minor version is handled as 1.1 and forwarded as HTTP/1.1.

RFC 9112 2.3 has a recipient treat `HTTP/1.2` as the highest 1.x it knows, and RFC 9110
2.5 has an intermediary send its own version. The proxy parsed 1.2 as 1.1 but forwarded
the start line as it came: the origin got `GET /x HTTP/1.2` (which httptools, like many
servers, refuses with a 400), and clients got `HTTP/1.2 200 OK` (which curl refuses as
"Unsupported HTTP version"). Found by the outside probe (12-05).
"""
from __future__ import annotations

import json

import pytest

from conftest import reverse_config
from wire import Conn, RawServer, crlf


def v12_origin(server, s):
    """Answers every request with an HTTP/1.2 status line (cacheable once per path)."""
    while True:
        server.read_head(s)
        s.sendall(b"HTTP/1.2 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok")


@pytest.fixture
def raw_v12():
    server = RawServer(v12_origin)
    yield server
    server.close()


def _raw_status_line(port: int, head: bytes) -> tuple[bytes, bytes]:
    with Conn(port) as c:
        c.send(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.sock.recv(65536)
            assert chunk, data
            data += chunk
        return data.split(b"\r\n", 1)[0], data


@pytest.mark.parametrize("cache", [False, True])
def test_response_status_line_goes_out_as_http11(run_proxy, raw_v12, cache):
    cfg = reverse_config(raw_v12.url)
    if cache:
        cfg["cache"] = {"size": "16MiB"}
    p = run_proxy(cfg)
    # With a cache the second answer is a hit written from the stored head.
    for _ in range(2 if cache else 1):
        line, data = _raw_status_line(p.port, crlf("GET /v HTTP/1.1\nHost: h\n\n"))
        assert line == b"HTTP/1.1 200 OK", data


def test_request_line_goes_upstream_as_http11(run_proxy, origin):
    p = run_proxy(reverse_config(origin.url))
    with Conn(p.port) as c:
        c.send(crlf("GET /echo HTTP/1.2\nHost: h\n\n"))
        r = c.response()
    assert r.status == 200, r.body
    assert json.loads(r.body)["version"] == "1.1"


def test_forward_proxy_request_line_goes_out_as_http11(run_proxy, origin):
    p = run_proxy({"listeners": [{"mode": "forward", "allow_private": True}]})
    with Conn(p.port) as c:
        c.send(crlf(f"GET {origin.url}/echo HTTP/1.2\nHost: h\n\n"))
        r = c.response()
    assert r.status == 200, r.body
    assert json.loads(r.body)["version"] == "1.1"


def test_a_status_line_without_reason_goes_out_with_its_space(run_proxy):
    # RFC 9112 4: HTTP-version SP status-code SP [reason-phrase]. The parser takes
    # "HTTP/1.1 200" (no last SP) from an origin; it went on as received (outside probe).
    def origin(server, s):
        while True:
            server.read_head(s)
            s.sendall(b"HTTP/1.1 200\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok")

    raw = RawServer(origin)
    try:
        cfg = reverse_config(raw.url)
        cfg["cache"] = {"size": "16MiB"}
        p = run_proxy(cfg)
        for _ in range(2):     # relayed, then a hit written from the stored head
            line, data = _raw_status_line(p.port, crlf("GET /v HTTP/1.1\nHost: h\n\n"))
            assert line == b"HTTP/1.1 200 ", data
    finally:
        raw.close()
