"""Request buffering (nginx's proxy_request_buffering): slow uploads do not pin upstream
connections. A body up to `request_buffering` bytes is read from the client before an
upstream connection is taken; a larger body streams once that much has arrived; off
(`false`), every body streams as it comes.
"""
from __future__ import annotations

import json
import socket
import time

import pytest

from fastproxy import testing
from conftest import reverse_config
from wire import Conn, crlf


def cfg(origin, listener: dict | None = None, limits: dict | None = None) -> dict:
    """A reverse listener in front of `origin`, with `listener` and `limits` settings."""
    config = reverse_config(origin.url, limits=limits or {})
    config["listeners"][0].update(listener or {})
    return config


def read_response(sock: socket.socket) -> tuple[int, dict]:
    with Conn.__new__(Conn) as c:   # reuse Conn's response reader on an open socket
        c.sock = sock
        c.fh = sock.makefile("rb")
        r = c.response()
        return r.status, json.loads(r.body)


CHUNKED_BODY = b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n"


@pytest.mark.parametrize("chunked", [False, True])
def test_slow_uploads_hold_no_upstream_connection(run_proxy, origin, chunked):
    p = run_proxy(cfg(origin))
    n = 50
    if chunked:
        head = crlf("POST /echo HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n")
        body = CHUNKED_BODY
        pieces = [body[i:i + 5] for i in range(0, len(body), 5)]
    else:
        head = crlf("POST /echo HTTP/1.1\nHost: h\nContent-Length: 4\n\n")
        pieces = [b"a", b"b", b"c", b"d"]
    socks = [socket.create_connection(("127.0.0.1", p.port), timeout=10) for _ in range(n)]
    try:
        for s in socks:
            s.sendall(head)
        for piece in pieces[:-1]:      # 1 piece every 0.5 s from each client
            for s in socks:
                s.sendall(piece)
            time.sleep(0.5)
            assert origin.connections == 0 and not origin.requests
        for s in socks:
            s.sendall(pieces[-1])
        for s in socks:
            status, info = read_response(s)
            assert status == 200
            assert info["body_len"] == (3 if chunked else 4)
    finally:
        for s in socks:
            s.close()
    assert len(origin.requests) == n


def test_body_over_the_limit_streams(run_proxy, origin):
    p = run_proxy(cfg(origin, limits={"request_buffering": "16KiB"}))
    with Conn(p.port) as c:
        c.send(crlf("POST /echo HTTP/1.1\nHost: h\nContent-Length: 100000\n\n"))
        c.send(b"x" * 10000)
        time.sleep(0.3)
        assert not origin.requests          # under the limit: still buffering
        c.send(b"x" * 10000)                # over it: the request goes upstream now
        deadline = time.monotonic() + 3
        while not origin.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        assert origin.requests, "a body over the limit must start streaming"
        c.send(b"x" * 80000)
        info = json.loads(c.response().body)
    assert info["body_len"] == 100000


@pytest.mark.parametrize("where", ["listener", "limits"])
def test_buffering_off_streams_at_once(run_proxy, origin, where):
    key = {"request_buffering": False} if where == "listener" else {"request_buffering": "0"}
    p = run_proxy(cfg(origin, **{where: key}))
    with Conn(p.port) as c:
        c.send(crlf("POST /echo HTTP/1.1\nHost: h\nContent-Length: 4\n\n") + b"a")
        deadline = time.monotonic() + 3
        while not origin.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        assert origin.requests
        c.send(b"bcd")
        assert json.loads(c.response().body)["body_len"] == 4


def test_listener_setting_wins_over_limits(run_proxy, origin):
    p = run_proxy(cfg(origin, listener={"request_buffering": "1MiB"},
                      limits={"request_buffering": False}))
    with Conn(p.port) as c:
        c.send(crlf("POST /echo HTTP/1.1\nHost: h\nContent-Length: 4\n\n") + b"a")
        time.sleep(0.3)
        assert not origin.requests
        c.send(b"bcd")
        assert json.loads(c.response().body)["body_len"] == 4


def test_expect_100_continue_still_gets_its_100(run_proxy, origin):
    p = run_proxy(cfg(origin))
    with Conn(p.port) as c:
        c.send(crlf("PUT /echo HTTP/1.1\nHost: h\nContent-Length: 4\nExpect: 100-continue\n\n"))
        assert c.fh.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert c.fh.readline() == b"\r\n"
        time.sleep(0.3)
        assert origin.connections == 0    # admitted, not yet sent
        c.send(b"data")
        info = json.loads(c.response().body)
    assert info["body_len"] == 4
    assert "expect" not in {n.lower() for n, _ in info["headers"]}


def test_buffered_request_is_one_write_with_content_length(run_proxy, origin):
    p = run_proxy(cfg(origin))
    with Conn(p.port) as c:
        for body in (b"first", b"second body"):   # keep-alive carries on after a buffered body
            c.send(crlf(f"POST /echo HTTP/1.1\nHost: h\nContent-Length: {len(body)}\n\n"))
            c.send(body)
            info = json.loads(c.response().body)
            assert info["body_len"] == len(body)
            fields = {n.lower(): v for n, v in info["headers"]}
            assert fields["content-length"] == str(len(body))


def test_client_leaving_while_buffering_costs_nothing_upstream(run_proxy, origin):
    p = run_proxy(cfg(origin))
    for _ in range(5):
        with Conn(p.port) as c:
            c.send(crlf("POST /echo HTTP/1.1\nHost: h\nContent-Length: 10\n\n") + b"abc")
            time.sleep(0.05)
    time.sleep(0.3)
    assert origin.connections == 0
    with Conn(p.port) as c:
        c.send(crlf("GET /size/3 HTTP/1.1\nHost: h\n\n"))
        assert c.response().body == b"012"


@pytest.mark.parametrize("buffering", ["64KiB", False])
def test_a_body_cut_short_by_the_client_closes_the_connection_at_once(run_proxy, origin,
                                                                     tmp_path, buffering):
    """A client that shuts its side in the middle of a body: no byte can complete the body,
    so the proxy closes (499 in the log), not after client_body (60 s) of waiting, which
    also held up a SIGTERM drain (test teardowns took their 10 s kill timeout)."""
    config = cfg(origin, listener={"request_buffering": buffering})
    config["access_log"] = {"path": str(tmp_path / "access.log"), "format": "json"}
    p = run_proxy(config)
    with socket.create_connection(("127.0.0.1", p.port)) as s:
        s.sendall(crlf("POST /echo HTTP/1.1\nHost: h\nContent-Length: 10\n\n")
                  + b"abc")
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        try:
            answer = s.recv(65536)
        except TimeoutError:
            answer = None
    assert answer == b"", f"the proxy kept the connection open (got {answer!r})"
    deadline = time.monotonic() + 5
    log = tmp_path / "access.log"
    while time.monotonic() < deadline and not (log.exists() and log.read_text()):
        time.sleep(0.02)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["target"], r["status"]) for r in records] == [("/echo", 499)], records
    assert origin.completed == [], "a request with a cut body reached the origin whole"


@pytest.mark.parametrize("value", ["lots", -1, ["64KiB"]])
def test_bad_value_names_the_key(start_proxy, origin, tmp_path, value):
    import subprocess
    import sys

    from conftest import PKG_PARENT
    path = tmp_path / "bad.toml"
    path.write_text(testing.to_toml(cfg(origin, listener={"request_buffering": value})))
    r = subprocess.run([sys.executable, "-m", "fastproxy", "check", "--config", str(path)],
                       capture_output=True, text=True, env={"PYTHONPATH": PKG_PARENT},
                       timeout=30)
    assert r.returncode == 2
    assert r.stderr.startswith("fastproxy: listeners[0].request_buffering: expected a size")
    assert "Traceback" not in r.stderr


def test_forward_proxy_buffers_too(run_proxy, origin):
    p = run_proxy({"listeners": [{"mode": "forward", "allow_private": True}]})
    with Conn(p.port) as c:
        c.send(crlf(f"POST {origin.url}/echo HTTP/1.1\nHost: h\nContent-Length: 4\n\n") + b"a")
        time.sleep(0.3)
        c.send(b"b")
        time.sleep(0.3)
        assert origin.connections == 0
        c.send(b"cd")
        assert json.loads(c.response().body)["body_len"] == 4
