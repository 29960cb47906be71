"""A reload applies to the next request of every open connection, over real sockets.

nginx's old workers close their idle keep-alive connections at once on a reload and end
busy ones after their current exchange; HAProxy does the same. Here an HTTP/1.1
connection moves to the new configuration at its next request (no reconnect), an
exchange in flight finishes on the old one untouched, and an HTTP/2 connection gets a
graceful GOAWAY. Before: open connections kept the old configuration (a deny rule, a
new upstream, a rate limit) for `timeouts.drain` (30 s by default).
"""
from __future__ import annotations

import http.client
import signal
import socket
import ssl
import time

import pytest
from h2_helpers import END_HEADERS, END_STREAM, HEADERS, PREFACE, frame, goaway_of, \
    parse_frames, settings
from origin import Origin
from wire import Conn, crlf

from fastproxy import _hpack

CONFIG = """{top}
[headers]
via_name = "{name}"
[[listeners]]
listen = "127.0.0.1:{port}"
upstream = "app"
{listener}
[upstreams.app]
servers = ["{url}"]
"""

DENY = """[[listeners.routes]]
path = "/"
return = { status = 403, body = "denied\\n" }
"""


@pytest.fixture
def second_origin():
    """Another origin: the upstream a reload switches to."""
    server = Origin().start()
    yield server
    server.stop()


def _write(cfg, name: str, url: str, port: int = 0, top: str = "", listener: str = "") -> None:
    cfg.write_text(CONFIG.format(top=top, name=name, port=port, url=url, listener=listener))


def _reloaded(p, before: int, workers: int = 1) -> None:
    """Wait until `workers` more "reloaded configuration" lines than `before` were said."""
    deadline = time.monotonic() + 10
    while sum("reloaded configuration" in x for x in p.stderr_lines) < before + workers:
        assert time.monotonic() < deadline, p.stderr_lines[-5:]
        time.sleep(0.02)


def _sighup(p, cfg, name: str, url: str, workers: int = 1, **kw) -> None:
    before = sum("reloaded configuration" in x for x in p.stderr_lines)
    _write(cfg, name, url, port=p.port, **kw)
    p.signal(signal.SIGHUP)
    _reloaded(p, before, workers)


def _get(conn: Conn, path: str = "/size/3"):
    conn.send(crlf(f"GET {path} HTTP/1.1\nHost: t\n\n"))
    return conn.response()


@pytest.mark.parametrize("accept", ["compiled", "uvloop"])
def test_the_next_request_on_an_open_connection_goes_to_the_new_upstream(
        start_proxy, origin, second_origin, tmp_path, monkeypatch, accept):
    if accept == "uvloop":      # uvloop's server and transports instead of the relay's own
        monkeypatch.setenv("FASTPROXY_UVLOOP_ACCEPT", "1")
    else:
        monkeypatch.delenv("FASTPROXY_UVLOOP_ACCEPT", raising=False)
    cfg = tmp_path / "r.toml"
    _write(cfg, "g0", origin.url)
    p = start_proxy("serve", "--config", str(cfg))
    with Conn(p.port) as c:
        r = _get(c)
        assert r.status == 200 and r.getheader("Via") == "1.1 g0"
        local = c.sock.getsockname()
        _sighup(p, cfg, "g1", second_origin.url)
        # The same socket, not a reconnect: the reload's configuration answers.
        assert c.sock.getsockname() == local
        r = _get(c)
        assert r.status == 200 and r.body == b"012"
        assert r.getheader("Via") == "1.1 g1", "the open connection kept the old generation"
        assert second_origin.count("/size/3") == 1
        assert origin.count("/size/3") == 1
        assert r.getheader("Connection") != "close"
        assert _get(c).getheader("Via") == "1.1 g1"     # and stays open on it


def test_a_deny_rule_from_post_reload_applies_to_open_connections(start_proxy, origin,
                                                                   tmp_path):
    cfg = tmp_path / "r.toml"
    top = 'admin = "127.0.0.1:0"'
    _write(cfg, "g0", origin.url, top=top)
    p = start_proxy("serve", "--config", str(cfg))
    with Conn(p.port) as c:
        assert _get(c).status == 200
        _write(cfg, "g1", origin.url, port=p.port, top=top, listener=DENY)
        with Conn(p.admin_port()) as admin:
            admin.send(b"POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
            assert admin.response().status == 200
        r = _get(c, "/size/5")
        assert r.status == 403 and r.body == b"denied\n", \
            "the open connection kept the configuration without the deny rule"
        assert origin.count("/size/5") == 0


def test_a_rate_limit_from_a_reload_applies_to_open_connections(start_proxy, origin, tmp_path):
    cfg = tmp_path / "r.toml"
    _write(cfg, "g0", origin.url)
    p = start_proxy("serve", "--config", str(cfg))
    with Conn(p.port) as c:
        for _ in range(3):
            assert _get(c).status == 200
        _sighup(p, cfg, "g1", origin.url,
                listener="[listeners.rate_limit]\nrate = 1\nburst = 1\n")
        statuses = [_get(c).status for _ in range(3)]
    assert statuses[0] == 200
    assert 429 in statuses[1:], f"{statuses}: the open connection was not rate limited"


def test_an_exchange_in_flight_finishes_on_the_old_generation_then_moves(
        start_proxy, origin, second_origin, tmp_path):
    cfg = tmp_path / "r.toml"
    _write(cfg, "g0", origin.url)
    p = start_proxy("serve", "--config", str(cfg))
    with Conn(p.port) as busy, Conn(p.port) as idle:
        assert _get(busy).status == 200 and _get(idle).status == 200
        busy.send(crlf("GET /slowbody/5 HTTP/1.1\nHost: t\n\n"))   # a byte per 0.2 s
        time.sleep(0.3)
        _sighup(p, cfg, "g1", second_origin.url, listener=DENY)
        # The idle connection is on the new generation at once ...
        assert _get(idle).status == 403
        # ... the response in flight completes whole, from the old upstream, and keeps
        # the connection (its next request is the new generation's).
        r = busy.response()
        assert r.status == 200 and r.body == b"xxxxx" and r.getheader("Via") == "1.1 g0"
        assert r.getheader("Connection") != "close"
        assert second_origin.count("/slowbody/5") == 0
        assert _get(busy).status == 403, "the busy connection stayed on the old generation"


def test_a_pipelined_request_behind_the_reload_gets_the_new_generation(
        start_proxy, origin, tmp_path):
    cfg = tmp_path / "r.toml"
    _write(cfg, "g0", origin.url)
    p = start_proxy("serve", "--config", str(cfg))
    with Conn(p.port) as c:
        c.send(crlf("GET /slow/1 HTTP/1.1\nHost: t\n\nGET /size/4 HTTP/1.1\nHost: t\n\n"))
        time.sleep(0.3)
        _sighup(p, cfg, "g1", origin.url, listener=DENY)
        first = c.response()
        assert first.status == 200 and first.body == b"slow\n"
        assert c.response().status == 403


def test_with_per_client_connection_limits_old_connections_close(start_proxy, origin,
                                                                 tmp_path):
    # A connection counted by one generation's per-client limit cannot move to the next
    # one's count without a 429 nobody asked for: idle ones close at once, busy ones
    # after their exchange, with Connection: close on it (nginx's old workers).
    cfg = tmp_path / "r.toml"
    limit = "[listeners.rate_limit]\nmax_connections = 50\n"
    _write(cfg, "g0", origin.url, listener=limit)
    p = start_proxy("serve", "--config", str(cfg))
    with Conn(p.port) as busy, Conn(p.port) as idle:
        assert _get(busy).status == 200 and _get(idle).status == 200
        busy.send(crlf("GET /slow/1 HTTP/1.1\nHost: t\n\n"))
        time.sleep(0.3)
        t0 = time.monotonic()
        _sighup(p, cfg, "g1", origin.url, listener=limit)
        assert idle.closed_by_peer(timeout=5)
        took = time.monotonic() - t0
        # Upper bound: closed by the reload, not by the 30 s drain time or idle timeout.
        assert took < 3, f"the idle old connection closed only after {took:.2f}s"
        r = busy.response()
        assert r.status == 200 and r.body == b"slow\n"
        assert r.getheader("Connection") == "close"
        assert busy.closed_by_peer(timeout=5)
    with Conn(p.port) as c:
        assert _get(c).getheader("Via") == "1.1 g1"


def _h2_get(enc, sid: int, path: bytes) -> bytes:
    return frame(HEADERS, END_HEADERS | END_STREAM, sid,
                 enc.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":path", path),
                             (b":authority", b"localhost")]))


def test_http2_connections_get_goaway_and_finish_their_streams(
        start_proxy, origin, second_origin, tmp_path):
    cfg = tmp_path / "r.toml"
    _write(cfg, "g0", origin.url)
    p = start_proxy("serve", "--config", str(cfg))
    enc = _hpack.Encoder()
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    try:
        s.sendall(PREFACE + settings() + _h2_get(enc, 1, b"/slow/1"))
        time.sleep(0.3)
        t0 = time.monotonic()
        _sighup(p, cfg, "g1", second_origin.url)
        got = b""
        while True:         # this client never answers PINGs: closed after the bound
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        took = time.monotonic() - t0
    finally:
        s.close()
    frames = parse_frames(got)
    assert goaway_of(got) is not None, "no GOAWAY after the reload"
    # RFC 9113 6.8: stream 1 was in flight: processed, and its response completes (from
    # the old generation's upstream).
    assert any(f[0] == HEADERS and f[2] == 1 for f in frames)
    assert any(f[0] == 0 and f[2] == 1 and f[1] & END_STREAM for f in frames)
    assert origin.count("/slow/1") == 1 and second_origin.count("/slow/1") == 0
    # Upper bound: the reload ended it (GOAWAY), not the 30 s drain time.
    assert took < 5, f"the HTTP/2 connection closed {took:.2f}s after the reload"


@pytest.mark.slow
def test_with_two_workers_every_open_connection_moves(start_proxy, origin, second_origin,
                                                      tmp_path):
    cfg = tmp_path / "r.toml"
    _write(cfg, "g0", origin.url, top="workers = 2")
    p = start_proxy("serve", "--config", str(cfg), listeners=2)
    conns = [Conn(p.port) for _ in range(8)]    # spread over both workers by the kernel
    try:
        for c in conns:
            assert _get(c).getheader("Via") == "1.1 g0"
        _sighup(p, cfg, "g1", second_origin.url, workers=2, top="workers = 2")
        vias = [_get(c).getheader("Via") for c in conns]
    finally:
        for c in conns:
            c.close()
    assert vias == ["1.1 g1"] * 8, vias
    assert second_origin.count("/size/3") == 8


def test_a_tls_keep_alive_connection_moves_too(start_proxy, origin, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("proxy.test")
    crt, key = tmp_path / "p.pem", tmp_path / "p.key"
    crt.write_bytes(b"".join(c.bytes() for c in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    tls = f'[listeners.tls]\ncert = "{crt}"\nkey = "{key}"\n'
    cfg = tmp_path / "r.toml"
    _write(cfg, "g0", origin.url, listener=tls)
    p = start_proxy("serve", "--config", str(cfg))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.check_hostname = False
    c = http.client.HTTPSConnection("127.0.0.1", p.port, context=ctx, timeout=10)
    try:
        c.request("GET", "/size/3")
        r = c.getresponse()
        assert r.status == 200 and r.read() == b"012"
        sock = c.sock
        _sighup(p, cfg, "g1", origin.url, listener=tls + DENY)
        c.request("GET", "/size/3")
        r = c.getresponse()
        assert r.read() == b"denied\n" and r.status == 403, \
            "the open TLS connection kept the old generation"
        assert c.sock is sock, "the client had to reconnect"
    finally:
        c.close()
