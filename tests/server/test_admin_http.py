"""The admin listener is an HTTP/1.1 server and takes what RFC 9112 says every server
takes: a request-target in absolute form (3.2.2: a server MUST accept it; it was a 404,
"no such admin endpoint: http://a/status") and a chunked request body (7.1: every
recipient parses chunked; it was a 411, so `curl -T - .../reload` could not reload).
"""
from __future__ import annotations

import subprocess

import pytest

from conftest import reverse_config
from wire import Conn


def test_absolute_form_targets(run_proxy, origin):
    p = run_proxy(reverse_config(origin.url, admin="127.0.0.1:0"))
    with Conn(p.admin_port()) as c:
        for target in (b"http://localhost/status", b"http://127.0.0.1:9/metrics?x=1",
                       b"HTTP://LOCALHOST/status"):
            c.send(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
            r = c.response()
            assert r.status == 200, (target, r.body[:200])
        # The 405's Allow is the endpoint's, whatever the target's form.
        c.send(b"POST http://localhost/metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        r = c.response()
        assert r.status == 405 and r.getheader("Allow") == "GET, HEAD, OPTIONS"


def test_chunked_request_bodies(run_proxy, origin):
    p = run_proxy(reverse_config(origin.url, admin="127.0.0.1:0"))
    with Conn(p.admin_port()) as c:
        # Read to its end (trailers too), and the pipelined request after it is answered.
        c.send(b"POST /reload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\n{}\n\r\n0\r\nX-T: 1\r\n\r\n"
               b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert c.response().status in (200, 400)   # the reload's own answer
        assert c.response().status == 200
    with Conn(p.admin_port()) as c:
        c.send(b"POST /reload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        assert c.response().status == 400
    with Conn(p.admin_port()) as c:
        c.send(b"POST /reload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"10000\r\n" + b"x" * 65536 + b"\r\n0\r\n\r\n")
        assert c.response().status == 413
    # What curl sends for -T - (a body of unknown length): chunked.
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                          "-T", "-", f"http://127.0.0.1:{p.admin_port()}/cache/purge?url=x"],
                         input=b"", capture_output=True, timeout=10)
    assert out.stdout != b"411", out


def test_status_lines_name_their_status(run_proxy, origin):
    # A 505 (and a 408) said "505 Error".
    p = run_proxy(reverse_config(origin.url, admin="127.0.0.1:0"))
    for request, line in ((b"GET /status HTTP/2.0\r\n\r\n", b"HTTP/1.1 505 HTTP Version Not Supported\r\n"),
                          (b"GET /status HTTP/1.1\r\nHost: localhost\r\n" + b"X: y\r\n" * 200 + b"\r\n",
                           b"HTTP/1.1 431 Request Header Fields Too Large\r\n")):
        with Conn(p.admin_port()) as c:
            c.send(request)
            assert c.read_all().startswith(line)


def test_healthz_is_200_while_serving_and_503_while_draining(run_proxy, origin):
    # A cheap liveness URL for load balancers (nginx/HAProxy setups probe one): 200 while
    # serving, 503 once SIGTERM starts the drain, so traffic moves before the port goes.
    import signal
    import socket
    import time
    p = run_proxy(reverse_config(origin.url, admin="127.0.0.1:0",
                                 timeouts={"drain": "5s"}))
    with Conn(p.admin_port()) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        r = c.response()
        assert r.status == 200 and r.body == b"ok\n" and r.getheader("Date")
        c.send(b"HEAD /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        r = c.response("HEAD")
        assert r.status == 200 and r.body == b""
        c.send(b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        r = c.response()
        assert r.status == 405 and r.getheader("Allow") == "GET, HEAD, OPTIONS"
    # A request in flight keeps the worker draining; meanwhile a new admin connection
    # is answered 503.
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"GET /slow/2 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        p.signal(signal.SIGTERM)
        time.sleep(0.3)
        with Conn(p.admin_port()) as c:
            c.send(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            r = c.response()
            assert r.status == 503 and r.body == b"draining\n"
        assert s.recv(100).startswith(b"HTTP/1.1 200 ")   # the request in flight finished


def test_options_asks_the_server_or_one_endpoint(run_proxy, origin):
    """RFC 9110 9.3.7: `OPTIONS *` is about the server in general, `OPTIONS /path` about one
    resource; a successful answer carries Allow and, with no content, Content-Length 0.
    `OPTIONS *` was a 404 ("no such admin endpoint: *"), OPTIONS /status a 405."""
    p = run_proxy(reverse_config(origin.url, admin="127.0.0.1:0"))
    with Conn(p.admin_port()) as c:
        c.send(b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n")
        r = c.response()
        assert r.status == 200 and r.getheader("Allow") == "GET, HEAD, POST, OPTIONS"
        assert r.getheader("Content-Length") == "0" and r.body == b""
        c.send(b"OPTIONS /cache/purge HTTP/1.1\r\nHost: localhost\r\n\r\n")
        r = c.response()
        assert r.status == 200 and r.getheader("Allow") == "POST, OPTIONS"
        c.send(b"OPTIONS /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert c.response().status == 404


def test_purge_refuses_urls_no_request_could_name(run_proxy, origin):
    """RFC 9110 4.2.1 with RFC 3986 3.2.3: a port is a TCP port, 1-65535. A purge of
    http://h:99999/ was answered 200 `purged: 0` as if it were a real URL that had nothing
    stored, hiding the typo from the operator."""
    import json
    p = run_proxy(reverse_config(origin.url, admin="127.0.0.1:0", cache={"size": "16MiB"}))
    with Conn(p.admin_port()) as c:
        for url in ("http://h:99999/x", "http://h:0/x", "http://h:8o/x", "http://:80/x"):
            c.send(b"POST /cache/purge?url=" + url.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
                   b"Content-Length: 0\r\n\r\n")
            r = c.response()
            assert r.status == 400, (url, r.status, r.body)
            assert "absolute" in json.loads(r.body)["error"], r.body
        c.send(b"POST /cache/purge?url=http://h:8080/x HTTP/1.1\r\nHost: localhost\r\n"
               b"Content-Length: 0\r\n\r\n")
        assert c.response().status == 200


@pytest.mark.parametrize("field", ["Origin: http://evil.example", "Origin: null",
                                   "Sec-Fetch-Site: cross-site", "Sec-Fetch-Site: same-site"])
def test_a_web_page_cannot_make_a_browser_purge_or_reload(run_proxy, origin, field):
    # CSRF: the admin port has no authentication and a local browser reaches loopback.
    proxy = run_proxy(reverse_config(origin.url, admin="127.0.0.1:0", cache={"size": "32MiB"}))
    port = proxy.admin_port()
    for target in (b"/cache/purge?prefix=http://a/", b"/reload"):
        with Conn(port) as c:
            c.send(b"POST " + target + b" HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n"
                   b"Content-Length: 0\r\n\r\n" % (port, field.encode()))
            r = c.response()
            assert r.status == 403, (target, r.status, r.body)
    with Conn(port) as c:
        # The status page's own requests (same origin) and non-browser clients still work.
        c.send(b"POST /cache/purge?prefix=http://a/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
               b"Origin: http://127.0.0.1:%d\r\nSec-Fetch-Site: same-origin\r\n"
               b"Content-Length: 0\r\n\r\n" % (port, port))
        assert c.response().status == 200
        c.send(b"POST /cache/purge?prefix=http://a/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        assert c.response().status == 200
