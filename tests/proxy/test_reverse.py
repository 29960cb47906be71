"""Reverse proxy core over real sockets: relaying, framing, keep-alive, headers, errors."""
from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import socket
import subprocess
import time

import pytest

from conftest import reverse_config
from wire import Conn, crlf, request


def echo(resp) -> dict:
    assert resp.status == 200, resp.body
    return json.loads(resp.body)


def hdrs(info: dict) -> dict:
    return {n.lower(): v for n, v in info["headers"]}


# -- pass-through -------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "DELETE", "OPTIONS", "PATCH", "PUT", "POST"])
def test_methods_pass_through(reverse_proxy, method):
    c = http.client.HTTPConnection("127.0.0.1", reverse_proxy.port, timeout=10)
    body = b"payload" if method in ("PUT", "POST", "PATCH") else None
    c.request(method, "/echo?q=1", body=body)
    info = json.loads(c.getresponse().read())
    assert info["method"] == method
    assert info["target"] == "/echo?q=1"
    assert info["body_len"] == (len(body) if body else 0)


def test_head_has_no_body(reverse_proxy):
    with Conn(reverse_proxy.port) as c:
        c.send(crlf("HEAD /size/1000 HTTP/1.1\nHost: x\n\nGET /size/3 HTTP/1.1\nHost: x\n\n"))
        r1 = c.response("HEAD")
        assert r1.status == 200 and r1.getheader("Content-Length") == "1000" and r1.body == b""
        r2 = c.response()
        assert r2.body == b"012"


def test_content_length_body_round_trip(reverse_proxy):
    body = bytes(range(256)) * 4000
    c = http.client.HTTPConnection("127.0.0.1", reverse_proxy.port, timeout=10)
    c.request("POST", "/echo", body=body, headers={"Content-Type": "application/octet-stream"})
    info = json.loads(c.getresponse().read())
    assert info["body_len"] == len(body)
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert hdrs(info)["content-length"] == str(len(body))


def test_chunked_request_body_stays_chunked(reverse_proxy):
    # RFC 9112 7.1: chunked in, chunked out; extensions and trailers are valid input.
    raw = crlf("POST /echo HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n\n"
               "5;ext=1\nhello\n6\n world\n0\nX-Trailer: yes\n\n")
    info = echo(request(reverse_proxy.port, raw))
    assert info["body_len"] == 11
    assert info["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()
    assert hdrs(info)["transfer-encoding"] == "chunked"
    assert "content-length" not in hdrs(info)


def test_chunked_response_passes_to_http11_client(reverse_proxy):
    r = request(reverse_proxy.port, crlf("GET /size/50000?chunked=1 HTTP/1.1\nHost: x\n\n"))
    assert r.getheader("Transfer-Encoding") == "chunked"
    assert r.body == (b"0123456789abcdef" * 3200)[:50000]


def test_chunked_response_is_dechunked_for_http10_client(reverse_proxy):
    with Conn(reverse_proxy.port) as c:
        c.send(crlf("GET /size/20000?chunked=1 HTTP/1.0\nHost: x\n\n"))
        raw = c.read_all()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert body == (b"0123456789abcdef" * 1250)[:20000]


def test_close_delimited_response_becomes_chunked_for_http11(reverse_proxy):
    with Conn(reverse_proxy.port) as c:
        c.send(crlf("GET /size/30000?close=1 HTTP/1.1\nHost: x\n\nGET /size/5 HTTP/1.1\n"
                    "Host: x\n\n"))
        r1 = c.response()
        assert r1.getheader("Transfer-Encoding") == "chunked"
        assert len(r1.body) == 30000
        # The client connection survives: the proxy framed the body itself.
        r2 = c.response()
        assert r2.body == b"01234"


def test_http10_client_gets_http11_status_line_and_close(reverse_proxy):
    with Conn(reverse_proxy.port) as c:
        c.send(b"GET /size/10 HTTP/1.0\r\n\r\n")
        raw = c.read_all()
    assert raw.startswith(b"HTTP/1.1 200")
    assert raw.endswith(b"0123456789")


def test_http10_keep_alive(reverse_proxy):
    with Conn(reverse_proxy.port) as c:
        c.send(b"GET /size/4 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = c.response()
        assert r.getheader("Connection").lower() == "keep-alive"
        assert r.body == b"0123"
        c.send(b"GET /size/2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert c.response().body == b"01"


def test_http10_request_gets_host_and_http11_upstream(reverse_proxy, origin):
    info = echo(request(reverse_proxy.port, b"GET /echo HTTP/1.0\r\n\r\n"))
    assert info["version"] == "1.1"
    assert hdrs(info)["host"] == f"127.0.0.1:{origin.port}"


# -- pipelining and keep-alive ------------------------------------------------


def test_pipelined_requests_answered_in_order(reverse_proxy):
    reqs = b"".join(crlf(f"GET /slow/0.{9 - i} HTTP/1.1\nHost: x\n\n") if i % 2 == 0 else
                    crlf(f"GET /size/{i} HTTP/1.1\nHost: x\n\n") for i in range(6))
    with Conn(reverse_proxy.port) as c:
        c.send(reqs)
        bodies = [c.response().body for _ in range(6)]
    assert bodies == [b"slow\n", b"0", b"slow\n", b"012", b"slow\n", b"01234"]


@pytest.mark.parametrize("accept", ["compiled", "uvloop"])
def test_pipelined_requests_then_half_close_are_all_answered(start_proxy, origin, accept,
                                                              monkeypatch):
    # RFC 9112 9.6/9.3.2: a client may send its requests and shut its sending side; every
    # complete request it pipelined before the FIN is answered, in order, and the last
    # answer says Connection: close. Only the request in flight was, the others dropped.
    if accept == "uvloop":
        monkeypatch.setenv("FASTPROXY_UVLOOP_ACCEPT", "1")
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", origin.url)
    with Conn(p.port) as c:
        c.send(crlf("GET /slow/0.3 HTTP/1.1\nHost: x\n\n") +
               crlf("GET /size/3 HTTP/1.1\nHost: x\n\n") +
               crlf("GET /size/5 HTTP/1.1\nHost: x\n\n"))
        c.sock.shutdown(socket.SHUT_WR)
        answers = [c.response() for _ in range(3)]
        assert c.closed_by_peer()
    assert [(r.status, r.body) for r in answers] == [(200, b"slow\n"), (200, b"012"),
                                                     (200, b"01234")]
    assert answers[2].getheader("connection") == "close"
    # A head cut short by the FIN can never complete: the answers before it, then close.
    with Conn(p.port) as c:
        c.send(crlf("GET /slow/0.2 HTTP/1.1\nHost: x\n\n") + b"GET /size/3 HT")
        c.sock.shutdown(socket.SHUT_WR)
        assert c.response().body == b"slow\n"
        assert c.closed_by_peer()


def test_pipelined_with_bodies_split_across_writes(reverse_proxy):
    msg = (crlf("POST /echo HTTP/1.1\nHost: x\nContent-Length: 5\n\n") + b"abcde" +
           crlf("POST /echo HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n\n3\nxyz\n0\n\n") +
           crlf("GET /size/1 HTTP/1.1\nHost: x\n\n"))
    with Conn(reverse_proxy.port) as c:
        for i in range(0, len(msg), 7):
            c.send(msg[i:i + 7])
            time.sleep(0.002)
        a, b, d = c.response(), c.response(), c.response()
    assert json.loads(a.body)["body_len"] == 5
    assert json.loads(b.body)["body_len"] == 3
    assert d.body == b"0"


def test_upstream_connections_are_reused(reverse_proxy, origin):
    for _ in range(3):
        c = http.client.HTTPConnection("127.0.0.1", reverse_proxy.port, timeout=10)
        for _ in range(20):
            c.request("GET", "/size/10")
            assert c.getresponse().read() == b"0123456789"
        c.close()
    assert origin.connections == 1


def test_idle_upstream_close_is_not_a_client_error(reverse_proxy, origin):
    # The origin closes each connection 50 ms after answering, while it idles in the
    # proxy's pool; the next request must get a fresh connection, never an error.
    c = http.client.HTTPConnection("127.0.0.1", reverse_proxy.port, timeout=10)
    for _ in range(5):
        c.request("GET", "/size/3?idle_close=0.05")
        assert c.getresponse().read() == b"012"
        time.sleep(0.2)
    assert origin.connections == 5


def test_stale_pooled_connection_is_retried(start_proxy):
    # An upstream that closes each connection right after its response, without saying
    # so, makes every pooled connection stale; GETs must still all succeed.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    import threading

    stop = threading.Event()
    accepted = []

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                s, _ = srv.accept()
            except socket.timeout:
                continue
            accepted.append(s)
            data = b""
            s.settimeout(5)
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            if data:
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            time.sleep(0.05)
            s.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        p = start_proxy("serve", "--listen", "127.0.0.1:0", "--upstream",
                        f"http://127.0.0.1:{port}")
        c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
        for _ in range(5):
            c.request("GET", "/")
            r = c.getresponse()
            assert (r.status, r.read()) == (200, b"ok")
            time.sleep(0.1)
    finally:
        stop.set()
        th.join(2)
        srv.close()


# -- headers (RFC 9110 7.6) ---------------------------------------------------


def test_hop_by_hop_fields_are_removed(reverse_proxy):
    raw = crlf("GET /echo HTTP/1.1\nHost: example.test\nConnection: keep-alive, X-Secret\n"
               "X-Secret: 1\nKeep-Alive: timeout=5\nProxy-Connection: keep-alive\nTE: trailers\n"
               "Trailer: X-T\nX-Kept: yes\nUpgrade: h2c\n\n")
    h = hdrs(echo(request(reverse_proxy.port, raw)))
    for name in ("connection", "x-secret", "keep-alive", "proxy-connection", "te", "upgrade"):
        assert name not in h, name
    assert h["x-kept"] == "yes"
    # RFC 9110 6.6.2: Trailer is end-to-end (7.6.1 does not list it); it was dropped.
    assert h["trailer"] == "X-T"
    assert h["host"] == "example.test"


def test_forwarding_headers(reverse_proxy):
    raw = crlf("GET /echo HTTP/1.1\nHost: example.test\nX-Forwarded-For: 203.0.113.9\n"
               "X-Forwarded-Proto: https\nVia: 1.1 edge\n\n")
    r = request(reverse_proxy.port, raw)
    h = hdrs(echo(r))
    assert h["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert h["x-forwarded-proto"] == "http"  # the client's claim is replaced
    assert h["x-forwarded-host"] == "example.test"
    info = echo(request(reverse_proxy.port, raw))
    vias = [v for n, v in info["headers"] if n.lower() == "via"]
    assert vias == ["1.1 edge", "1.1 fastproxy"]
    assert "fastproxy" in r.getheader("Via")


def test_original_header_bytes_are_kept(reverse_proxy, origin):
    raw = crlf("GET /echo HTTP/1.1\nHost: x\nX-MiXeD-CaSe:   spaced value\n\n")
    request(reverse_proxy.port, raw)
    names = [n for n, v in origin.requests[-1][2]]
    assert b"X-MiXeD-CaSe" in names


def test_forwarded_header_mode(run_proxy, origin):
    p = run_proxy(reverse_config(origin.url, headers={"forwarded": "forwarded", "preserve_host": False}))
    h = hdrs(echo(request(p.port, crlf("GET /echo HTTP/1.1\nHost: front.test\n\n"))))
    assert h["forwarded"] == 'for=127.0.0.1;proto=http;host="front.test"'
    assert "x-forwarded-for" not in h
    assert h["host"] == f"127.0.0.1:{origin.port}"


def test_interim_responses_forwarded(reverse_proxy):
    with Conn(reverse_proxy.port) as c:
        c.send(crlf("GET /interim HTTP/1.1\nHost: x\n\n"))
        c.sock.settimeout(5)
        data = b""
        while b"after hints" not in data:
            chunk = c.sock.recv(4096)
            assert chunk
            data += chunk
    assert data.startswith(b"HTTP/1.1 103")
    assert b"HTTP/1.1 200" in data


def test_expect_100_continue(reverse_proxy):
    with Conn(reverse_proxy.port) as c:
        c.send(crlf("PUT /echo HTTP/1.1\nHost: x\nContent-Length: 4\nExpect: 100-continue\n\n"))
        # http.client skips interim responses, so read the 100 by hand.
        assert c.fh.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert c.fh.readline() == b"\r\n"
        c.send(b"data")
        info = echo(c.response())
    assert info["body_len"] == 4
    assert "expect" not in hdrs(info)


def test_unknown_expectation_is_417(reverse_proxy):
    r = request(reverse_proxy.port, crlf("GET / HTTP/1.1\nHost: x\nExpect: teapot\n\n"))
    assert r.status == 417


# -- errors -------------------------------------------------------------------


@pytest.mark.parametrize("raw,status", [
    (b"GET / HTTP/1.1\r\n\r\n", 400),                                        # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),                   # two Hosts
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
     400),                                                                    # smuggling
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", 400),
    # RFC 9112 6.3: chunked not final in a request -> 400; 6.1: unknown coding -> 501.
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),                  # obs-fold
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    (b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 70000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nZ\r\n", 400),
])
def test_malformed_requests_get_status_and_close(reverse_proxy, origin, raw, status):
    with Conn(reverse_proxy.port) as c:
        c.send(raw)
        r = c.response()
        assert r.status == status
        assert r.getheader("Connection") == "close"
        assert c.closed_by_peer()
    assert origin.requests == []


def test_upstream_refused_is_502(start_proxy):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    p = start_proxy("serve", "--listen", "127.0.0.1:0", "--upstream", f"http://127.0.0.1:{port}")
    r = request(p.port, crlf("GET / HTTP/1.1\nHost: x\n\n"))
    assert r.status == 502
    assert b"connect" in r.body


def test_upstream_drop_is_502(reverse_proxy):
    r = request(reverse_proxy.port, crlf("GET /drop HTTP/1.1\nHost: x\n\n"))
    assert r.status == 502


def test_upstream_timeout_is_504(run_proxy, origin):
    p = run_proxy(reverse_config(origin.url, timeouts={"upstream_header": "0.5s"}))
    t0 = time.monotonic()
    r = request(p.port, crlf("GET /slow/3 HTTP/1.1\nHost: x\n\n"))
    assert r.status == 504
    assert time.monotonic() - t0 < 2.5


def test_body_over_limit_is_413(run_proxy, origin):
    p = run_proxy(reverse_config(origin.url, limits={"max_body": "1KiB"}))
    r = request(p.port, crlf("POST /echo HTTP/1.1\nHost: x\nContent-Length: 2000\n\n"))
    assert r.status == 413
    assert origin.requests == []  # refused before anything went upstream
    chunked = crlf("POST /echo HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n\n") + \
        b"".join(b"100\r\n" + b"x" * 256 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n"
    r = request(p.port, chunked)
    assert r.status == 413


def test_chunked_body_under_the_limit_passes_whatever_its_framing(run_proxy, origin):
    # max_body counts the body, not the chunk framing: 1000 bytes in 250 chunks of 4
    # (2,500 bytes on the wire) are under a 1 KiB limit; 1,028 such bytes are over it.
    p = run_proxy(reverse_config(origin.url, limits={"max_body": "1KiB"}))
    head = crlf("POST /echo HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n\n")
    r = request(p.port, head + b"4\r\nabcd\r\n" * 250 + b"0\r\n\r\n")
    assert r.status == 200 and echo(r)["body_len"] == 1000
    r = request(p.port, head + b"4\r\nabcd\r\n" * 257 + b"0\r\n\r\n")
    assert r.status == 413


def test_slow_head_gets_408(run_proxy, origin):
    p = run_proxy(reverse_config(origin.url, timeouts={"client_header": "0.6s"}))
    with Conn(p.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):  # trickling bytes must not extend the deadline
            time.sleep(0.25)
            try:
                c.send(b"X: y\r\n")
            except OSError:
                break
        r = c.response()
        assert r.status == 408
        assert c.closed_by_peer()


def test_idle_keepalive_connection_is_closed(run_proxy, origin):
    p = run_proxy(reverse_config(origin.url, timeouts={"client_idle": "0.5s"}))
    with Conn(p.port) as c:
        c.send(crlf("GET /size/1 HTTP/1.1\nHost: x\n\n"))
        assert c.response().body == b"0"
        assert c.closed_by_peer(timeout=3)


def test_upstream_early_response_closes_client(reverse_proxy):
    with Conn(reverse_proxy.port) as c:
        # 70,000 bytes: past the 64 KiB request buffering, the request is on its way
        # upstream with the body still incomplete.
        c.send(crlf("POST /early HTTP/1.1\nHost: x\nContent-Length: 100000\n\n") + b"x" * 70000)
        r = c.response()
        assert r.status == 413
        assert r.getheader("Connection") == "close"


def test_mid_body_upstream_failure_cuts_client(start_proxy):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    import threading

    def serve():
        s, _ = srv.accept()
        s.recv(4096)
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
        time.sleep(0.2)
        s.close()

    threading.Thread(target=serve, daemon=True).start()
    p = start_proxy("serve", "--listen", "127.0.0.1:0", "--upstream", f"http://127.0.0.1:{port}")
    with Conn(p.port) as c:
        c.send(crlf("GET / HTTP/1.1\nHost: x\n\n"))
        with pytest.raises(http.client.IncompleteRead):
            c.response()
    srv.close()


def test_no_content_length_in_a_204_or_1xx_whatever_the_origin_sent(start_proxy):
    # RFC 9110 8.6: a sender MUST NOT send Content-Length in a 1xx or 204. The origin's
    # was passed on; HTTP/2 clients (curl, nghttp) then reset the stream.
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    answers = {b"/204": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
               b"/103": b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nContent-Length: 5\r\n\r\n"
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"}

    def conn(s):
        with s:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = s.recv(4096)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                s.sendall(answers[head.split(b" ")[1]])

    def serve():
        while True:
            try:
                s, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=conn, args=(s,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    p = start_proxy("serve", "--listen", "127.0.0.1:0", "--upstream",
                    f"http://127.0.0.1:{srv.getsockname()[1]}")
    try:
        with Conn(p.port) as c:
            c.send(crlf("GET /204 HTTP/1.1\nHost: x\n\nGET /103 HTTP/1.1\nHost: x\n\n"))
            data = b""
            while not data.endswith(b"\r\n\r\nok"):
                data += c.sock.recv(65536)
        heads = data.split(b"\r\n\r\n")
        assert heads[0].startswith(b"HTTP/1.1 204") and b"Content-Length" not in heads[0]
        assert heads[1].startswith(b"HTTP/1.1 103") and b"Content-Length" not in heads[1]
        assert heads[2].startswith(b"HTTP/1.1 200") and b"Content-Length: 2" in heads[2]
        if shutil.which("curl"):
            for path in ("/204", "/103"):
                out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o",
                                      "/dev/null", "-w", "%{http_code}",
                                      f"http://127.0.0.1:{p.port}{path}"],
                                     capture_output=True, timeout=10)
                assert out.returncode == 0 and out.stdout in (b"204", b"200"), out
    finally:
        srv.close()


# -- upgrade ------------------------------------------------------------------


def test_upgrade_in_an_http10_request_is_ignored(reverse_proxy, origin):
    # RFC 9110 7.8: "A server MUST ignore an Upgrade header field that is received in an
    # HTTP/1.0 request." It was offered upstream and a 101 tunnel opened.
    with Conn(reverse_proxy.port) as c:
        c.send(crlf("GET /echo HTTP/1.0\nHost: x\nConnection: Upgrade\n"
                    "Upgrade: websocket\n\n"))
        r = c.response()
        assert r.status == 200
        names = [k.lower() for k, _ in echo(r)["headers"]]
        assert "upgrade" not in names and "connection" not in names


def test_websocket_upgrade_becomes_tunnel(reverse_proxy, origin):
    with Conn(reverse_proxy.port) as c:
        c.send(crlf("GET /ws HTTP/1.1\nHost: x\nConnection: Upgrade\nUpgrade: websocket\n"
                    "Sec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\n"))
        data = b""
        while b"\r\n\r\n" not in data:
            data += c.sock.recv(4096)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        assert b"upgrade: websocket" in head.lower()
        for msg in (b"frame-one", b"\x00\xffbinary", b"x" * 100000):
            c.sock.sendall(msg)
            got = rest
            while len(got) < len(msg):
                got += c.sock.recv(65536)
            rest = b""
            assert got == msg
    _, _, headers = origin.requests[-1]
    names = {n.lower(): v for n, v in headers}
    assert names[b"upgrade"] == b"websocket"
    assert names[b"connection"].lower() == b"upgrade"


# -- large bodies, bounded memory ----------------------------------------------


@pytest.mark.slow
def test_large_bodies_stream_with_bounded_memory(reverse_proxy):
    size = 200 * 1024 * 1024
    base = reverse_proxy.rss_kib()
    # Download: the origin sends 200 MiB; the client reads slowly at first.
    with Conn(reverse_proxy.port) as c:
        c.send(crlf(f"GET /size/{size} HTTP/1.1\nHost: x\n\n"))
        got = 0
        peak = 0
        head = b""
        while b"\r\n\r\n" not in head:
            head += c.sock.recv(65536)
        got = len(head.partition(b"\r\n\r\n")[2])
        time.sleep(0.5)  # let buffers fill: backpressure must hold the upstream
        peak = max(peak, reverse_proxy.rss_kib())
        while got < size:
            chunk = c.sock.recv(1 << 20)
            assert chunk
            got += len(chunk)
            if got % (16 << 20) < (1 << 20):
                peak = max(peak, reverse_proxy.rss_kib())
    assert got == size
    # Upload: 200 MiB in, through to the origin, which hashes it.
    sent = 0
    block = b"y" * (1 << 20)
    with Conn(reverse_proxy.port) as c:
        c.send(crlf(f"POST /echo HTTP/1.1\nHost: x\nContent-Length: {size}\n\n"))
        while sent < size:
            c.sock.sendall(block)
            sent += len(block)
            if sent % (16 << 20) == 0:
                peak = max(peak, reverse_proxy.rss_kib())
        info = echo(c.response())
    assert info["body_len"] == size
    assert peak - base < 64 * 1024, f"RSS grew by {peak - base} KiB"


# -- shutdown and configuration ------------------------------------------------


def test_sigterm_drains_in_flight_requests(reverse_proxy):
    import signal as sig

    with Conn(reverse_proxy.port) as c:
        c.send(crlf("GET /slow/1 HTTP/1.1\nHost: x\n\n"))
        time.sleep(0.3)
        reverse_proxy.signal(sig.SIGTERM)
        r = c.response()
        assert r.status == 200 and r.body == b"slow\n"
        assert r.getheader("Connection") == "close"
    assert reverse_proxy.proc.wait(10) == 0
    # No longer listening.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", reverse_proxy.port), timeout=1)


def test_sighup_reloads_configuration(start_proxy, origin, tmp_path):
    import signal as sig

    cfg = tmp_path / "r.toml"
    body = """
[headers]
via_name = "{name}"
[[listeners]]
listen = "127.0.0.1:{port}"
upstream = "app"
[upstreams.app]
servers = ["{url}"]
"""
    cfg.write_text(body.format(name="first", port=0, url=origin.url))
    p = start_proxy("serve", "--config", str(cfg))
    r = request(p.port, crlf("GET /size/1 HTTP/1.1\nHost: x\n\n"))
    assert r.getheader("Via") == "1.1 first"
    keep = Conn(p.port)
    keep.send(crlf("GET /size/1 HTTP/1.1\nHost: x\n\n"))
    keep.response()
    cfg.write_text(body.format(name="second", port=p.port, url=origin.url))
    p.signal(sig.SIGHUP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = request(p.port, crlf("GET /size/1 HTTP/1.1\nHost: x\n\n"))
        if r.getheader("Via") == "1.1 second":
            break
        time.sleep(0.1)
    assert r.getheader("Via") == "1.1 second"
    # The connection opened before the reload still works.
    keep.send(crlf("GET /size/2 HTTP/1.1\nHost: x\n\n"))
    assert keep.response().body == b"01"
    keep.close()
    # A broken file is refused and the old configuration stays.
    cfg.write_text("listeners = 5")
    p.signal(sig.SIGHUP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any("reload refused" in x for x in p.stderr_lines):
        time.sleep(0.05)
    assert any("reload refused" in line for line in p.stderr_lines)
    assert request(p.port, crlf("GET /size/1 HTTP/1.1\nHost: x\n\n")).status == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_through_reverse_proxy(reverse_proxy):
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "-d", "hello",
                          f"{reverse_proxy.url}/echo"], capture_output=True, check=True)
    info = json.loads(out.stdout)
    assert info["method"] == "POST" and info["body_len"] == 5


def test_access_log_line(start_proxy, origin, tmp_path):
    log = tmp_path / "access.log"
    p = start_proxy("serve", "--listen", "127.0.0.1:0", "--upstream", origin.url,
                    "--access-log", str(log), "--log-format", "json")
    request(p.port, crlf("GET /size/7 HTTP/1.1\nHost: x\nUser-Agent: t\n\n"))
    request(p.port, b"BAD\r\n\r\n")
    deadline = time.monotonic() + 3
    lines = []
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        if len(lines) >= 2:
            break
        time.sleep(0.1)
    ok = [x for x in lines if x["status"] == 200][0]
    assert ok["method"] == "GET" and ok["target"] == "/size/7" and ok["bytes_sent"] == 7
    assert ok["upstream"] == f"127.0.0.1:{origin.port}" and ok["upstream_ms"] >= 0
    bad = [x for x in lines if x["status"] == 400][0]
    assert bad["detail"]


# -- RFC 9110 intermediary duties ------------------------------------------------


def test_date_added_when_upstream_sends_none(reverse_proxy):
    # RFC 9110 6.6.1: the test origin sends no Date; the proxy must add one.
    r = request(reverse_proxy.port, crlf("GET /size/1 HTTP/1.1\nHost: x\n\n"))
    from email.utils import parsedate_to_datetime

    date = parsedate_to_datetime(r.getheader("Date"))
    assert abs(date.timestamp() - time.time()) < 5


def test_max_forwards(reverse_proxy, origin):
    # RFC 9110 7.6.2: 0 -> the proxy answers itself; n > 0 -> forwarded as n - 1.
    r = request(reverse_proxy.port, crlf("OPTIONS * HTTP/1.1\nHost: x\nMax-Forwards: 0\n\n"))
    assert r.status == 200 and "GET" in r.getheader("Allow")
    r = request(reverse_proxy.port, crlf("TRACE /t HTTP/1.1\nHost: x\nMax-Forwards: 0\n"
                                         "Cookie: secret\nX-Probe: 1\n\n"))
    assert r.status == 200 and r.getheader("Content-Type") == "message/http"
    assert r.body.startswith(b"TRACE /t HTTP/1.1\r\n") and b"X-Probe: 1" in r.body
    assert b"secret" not in r.body
    assert origin.requests == []
    r = request(reverse_proxy.port, crlf("OPTIONS /echo HTTP/1.1\nHost: x\nMax-Forwards: 3\n\n"))
    assert hdrs(echo(r))["max-forwards"] == "2"


def test_several_workers_share_the_port_and_stop_cleanly(start_proxy, origin):
    import signal as sig

    p = start_proxy("serve", "--listen", "127.0.0.1:0", "--upstream", origin.url,
                    "--workers", "2", listeners=2)
    assert p.ports[0] == p.ports[1]  # both workers listen on the same port (SO_REUSEPORT)
    for _ in range(20):
        assert request(p.port, crlf("GET /size/2 HTTP/1.1\nHost: x\n\n")).body == b"01"
    p.signal(sig.SIGTERM)
    assert p.proc.wait(10) == 0
    assert sum("stopped" in line for line in p.stderr_lines) == 2


def test_upstream_stalled_mid_body_is_cut(start_proxy, origin, tmp_path):
    cfg = tmp_path / "stall.toml"
    cfg.write_text(f"""
[timeouts]
upstream_idle = "0.3s"
[access_log]
path = "{tmp_path / 'a.log'}"
[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
[upstreams.app]
servers = ["{origin.url}"]
""")
    p = start_proxy("serve", "--config", str(cfg))
    # /slowbody/20 sends a byte every 0.2 s: fine. Make the proxy's idle limit bite by
    # asking for a body whose bytes come slower than 0.3 s apart: none here, so use a
    # head that promises more than is ever sent.
    with Conn(p.port) as c:
        c.send(crlf("GET /slowbody/3 HTTP/1.1\nHost: x\n\n"))
        r = c.response()
        assert r.body == b"xxx"  # 0.2 s gaps are within the 0.3 s limit
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    import threading

    def serve():
        s, _ = srv.accept()
        s.recv(4096)
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        time.sleep(2)
        s.close()

    threading.Thread(target=serve, daemon=True).start()
    cfg.write_text(cfg.read_text().replace(origin.url, f"http://127.0.0.1:{srv.getsockname()[1]}"))
    p2 = start_proxy("serve", "--config", str(cfg))
    t0 = time.monotonic()
    with Conn(p2.port) as c:
        c.send(crlf("GET / HTTP/1.1\nHost: x\n\n"))
        with pytest.raises(http.client.IncompleteRead):
            c.response()
    assert time.monotonic() - t0 < 1.8
    srv.close()
