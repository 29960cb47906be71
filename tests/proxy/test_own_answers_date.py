"""Answers the proxy writes itself carry a Date (RFC 9110 6.6.1: a server with a clock
MUST send one in every 2xx, 3xx and 4xx response it generates). They had none: the
relay's error answers (400, 403, 407, 413, 429, ...), a route's `return`, OPTIONS and
TRACE at Max-Forwards 0, the cache's purge answer and the admin listener's responses."""
from __future__ import annotations

import email.utils
import socket
import time

from h2_client import Client


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n\r\n", 1)[0]


def _date_of(head: bytes) -> float:
    lines = head.split(b"\r\n")
    dates = [line.split(b":", 1)[1].strip() for line in lines[1:]
             if line.lower().startswith(b"date:")]
    assert len(dates) == 1, head
    return email.utils.parsedate_to_datetime(dates[0].decode()).timestamp()


CONFIG = """
pidfile = false
admin = "127.0.0.1:0"
[upstreams.app]
servers = ["{origin}"]
[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
[[listeners.routes]]
exact = "/moved"
return = {{ status = 308, location = "/new" }}
[[listeners.routes]]
path = "/"
upstream = "app"
[[listeners]]
listen = "127.0.0.1:0"
mode = "forward"
[listeners.auth]
users = {{ alice = "scrypt$32768$8$1$Neu2yLCFHSWCXHkIQTTs6g==$FqFi/KfN4sEdY2Jb9dmPEP7oOfzFpKB7afPYK8j2hmM=" }}
[cache]
size = "16MiB"
"""


def test_every_answer_of_the_proxy_has_a_date(run_proxy, origin):
    p = run_proxy(CONFIG.format(origin=origin.url), listeners=2)
    reverse, forward = p.ports[0], p.ports[1]
    cases = [
        (reverse, b"GET /moved HTTP/1.1\r\nHost: x\r\n\r\n", b" 308 "),
        (reverse, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n\r\n", b" 200 "),
        (reverse, b"TRACE /t HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n\r\n", b" 200 "),
        (reverse, b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
         b" 400 "),
        (reverse, b"PURGE /size/1 HTTP/1.1\r\nHost: x\r\n\r\n", b" 404 "),
        (forward, b"GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n", b" 407 "),
        (p.admin_port(), b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n", b" 200 "),
        (p.admin_port(), b"GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n", b" 404 "),
    ]
    for port, request, status in cases:
        head = _exchange(port, request)
        assert status in head.split(b"\r\n", 1)[0], (request, head)
        # The relay's Date is refreshed once a second: 5 s catches a stale or made-up
        # date (e.g. a constant) without failing on a slow turn.
        assert abs(_date_of(head) - time.time()) < 5, head
    # Over HTTP/2 the same answers come as HEADERS: the date is a field there.
    c = Client(reverse)
    try:
        status, headers, _ = c.get("/moved", authority="x")
        assert status == 308 and b"date" in headers, headers
    finally:
        c.close()


def test_connect_200_has_a_date_and_no_framing(run_proxy, origin):
    # The forward proxy's `200 Connection Established` had no Date; RFC 9110 9.3.6 also
    # forbids Content-Length and Transfer-Encoding in it. The tunnel works after it.
    port = int(origin.url.rsplit(":", 1)[1])
    p = run_proxy({"listeners": [{"mode": "forward", "allow_private": True,
                                  "connect_ports": [port]}]})
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (port, port))
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        # The relay's Date is refreshed once a second: 5 s catches a stale or made-up
        # date (e.g. a constant) without failing on a slow turn.
        assert abs(_date_of(head) - time.time()) < 5, head
        assert b"content-length" not in head.lower() and b"transfer-encoding" not in head.lower()
        s.sendall(b"GET /size/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while chunk := s.recv(65536):
            rest += chunk
    assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"\r\n\r\n012"), rest
