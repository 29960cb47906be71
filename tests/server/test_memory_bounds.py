"""The proxy's memory stays bounded whatever clients do (issue 10), over real sockets.

A client that pipelines requests and never reads must not make the proxy buffer every
answer it writes itself (cache hits, TRACE/OPTIONS with Max-Forwards: 0, errors): the
proxy stops reading a client whose write buffer is above the high-water mark, as it
already stops reading an upstream. RSS is the proxy process's VmRSS.
"""
from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time

import pytest

from wire import Conn, _FileSock, crlf

MIB = 1024  # KiB
OBJ = 61440          # a cached object below zero_copy_min: answered by the compiled path
BIG = 100 * 1024     # above it: the compiled path too, from a pinned view of the arena


@pytest.fixture
def cached_proxy(start_proxy, origin):
    """A caching reverse proxy with /c/a, /c/b (60 KB) and /c/big (100 KB) stored."""
    for name, size in (("a", OBJ), ("b", OBJ), ("big", BIG)):
        origin.override[f"/c/{name}"] = {"cc": "max-age=600", "size": str(size)}
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", origin.url, "--cache", "64MiB")
    with Conn(p.port) as c:
        for name in ("a", "b", "big"):
            c.send(crlf(f"GET /c/{name} HTTP/1.1\nHost: t\n\n"))
            assert c.response().status == 200
        c.send(crlf("GET /c/a HTTP/1.1\nHost: t\n\n"))
        assert c.response().getheader("Cache-Status").startswith("fastproxy; hit")
    return p


def _hold_unread(proxy, payload: bytes, settle: float = 2.0, limit: float = 15.0):
    """Send payload pipelined on one connection that never reads; return (socket, bytes
    sent, peak RSS growth in KiB) once the proxy has stopped taking bytes for `settle` s."""
    base = proxy.rss_kib()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", proxy.port))
    s.setblocking(False)
    sent, peak = 0, base
    start = last = time.monotonic()
    while time.monotonic() - start < limit:
        if sent < len(payload):
            try:
                sent += s.send(payload[sent:sent + 65536])
                last = time.monotonic()
            except BlockingIOError:
                pass
        peak = max(peak, proxy.rss_kib())
        if time.monotonic() - last > settle:
            break
        time.sleep(0.02)
    return s, sent, peak - base, base


def _after_leaving(proxy, s, base) -> int:
    s.close()
    time.sleep(1.0)
    return proxy.rss_kib() - base


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["compiled-hit", "python-hit", "trace"])
def test_pipelined_requests_never_read_keep_memory_bounded(cached_proxy, kind):
    # 10,000 pipelined requests whose answers the proxy writes itself (600 MB of cache
    # hits, or 80 MB of TRACE echoes): before, every answer was buffered (RSS +650 MiB).
    if kind == "compiled-hit":
        one = b"GET /c/a HTTP/1.1\r\nHost: t\r\n\r\n"
    elif kind == "python-hit":
        one = b"GET /c/b HTTP/1.1\r\nHost: t\r\nCache-Control: max-stale=60\r\n\r\n"
    else:
        one = (b"TRACE /t HTTP/1.1\r\nHost: t\r\nMax-Forwards: 0\r\nX-Pad: "
               + b"p" * 8000 + b"\r\n\r\n")
    s, sent, held, base = _hold_unread(cached_proxy, one * 10_000)
    after = _after_leaving(cached_proxy, s, base)
    assert held <= 24 * MIB, f"RSS grew {held} KiB while the client did not read"
    assert after <= 24 * MIB, f"RSS stayed {after} KiB up after the client left"
    if kind == "trace":
        # The proxy stopped reading too: the client could not push 80 MB of requests in
        # (small requests all fit in the kernel's socket buffers, so only this one says).
        assert sent < len(one) * 10_000


def _read_in_order(conn_file, expected) -> None:
    for i, (method, check) in enumerate(expected):
        resp = http.client.HTTPResponse(_FileSock(conn_file), method=method)
        resp.begin()
        body = resp.read()
        check(i, resp, body)


@pytest.mark.slow
def test_pipelined_answers_arrive_in_order_once_the_client_reads(cached_proxy):
    # Every kind of answer in one pipeline: compiled hits (small, and large from a
    # pinned view), Python hits, TRACE/OPTIONS answered by the proxy, an error answer, relayed requests
    # (with and without a body). The client reads nothing for a while (the proxy
    # pauses), then reads them all.
    def hit(name, size):
        def check(i, resp, body):
            assert resp.status == 200 and len(body) == size, (i, resp.status, len(body))
            assert body.startswith(b"/c/%s #1\n" % name.encode()), (i, body[:20])
        return check

    def trace(seq):
        def check(i, resp, body):
            assert resp.status == 200 and b"X-Seq: %d\r\n" % seq in body, (i, body[:200])
        return check

    def echo(seq):
        def check(i, resp, body):
            assert resp.status == 200, (i, resp.status)
            assert json.loads(body)["target"] == f"/echo?seq={seq}", (i, body[:100])
        return check

    def status(code):
        def check(i, resp, body):
            assert resp.status == code, (i, resp.status, body[:100])
        return check

    reqs, expected = [], []
    for seq in range(1500):
        k = seq % 7
        if k == 0:
            reqs.append(b"GET /c/a HTTP/1.1\r\nHost: t\r\n\r\n")
            expected.append(("GET", hit("a", OBJ)))
        elif k == 1:
            reqs.append(b"GET /c/b HTTP/1.1\r\nHost: t\r\nCache-Control: max-stale=9\r\n\r\n")
            expected.append(("GET", hit("b", OBJ)))
        elif k == 2:
            reqs.append(b"GET /c/big HTTP/1.1\r\nHost: t\r\n\r\n")
            expected.append(("GET", hit("big", BIG)))
        elif k == 3:
            reqs.append(b"TRACE /t HTTP/1.1\r\nHost: t\r\nMax-Forwards: 0\r\nX-Seq: %d\r\n\r\n"
                        % seq)
            expected.append(("TRACE", trace(seq)))
        elif k == 4:
            reqs.append(b"OPTIONS * HTTP/1.1\r\nHost: t\r\nMax-Forwards: 0\r\n\r\n")
            expected.append(("OPTIONS", status(200)))
        elif k == 5:
            reqs.append(b"OPTIONS /x HTTP/1.1\r\nHost: t\r\nMax-Forwards: many\r\n\r\n")
            expected.append(("OPTIONS", status(400)))
        elif seq % 2:
            reqs.append(b"GET /echo?seq=%d HTTP/1.1\r\nHost: t\r\n\r\n" % seq)
            expected.append(("GET", echo(seq)))
        else:
            # A request body read while the client's write buffer may be full.
            reqs.append(b"POST /echo?seq=%d HTTP/1.1\r\nHost: t\r\nContent-Length: 30000"
                        b"\r\n\r\n" % seq + b"x" * 30000)
            expected.append(("POST", echo(seq)))
    payload = b"".join(reqs)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", cached_proxy.port))
    s.settimeout(30)
    base = cached_proxy.rss_kib()
    sender = threading.Thread(target=s.sendall, args=(payload,), daemon=True)
    sender.start()
    time.sleep(1.5)
    assert cached_proxy.rss_kib() - base <= 24 * MIB
    fh = s.makefile("rb")
    try:
        _read_in_order(fh, expected)
        sender.join(10)
        assert not sender.is_alive()
        # Nothing more: the connection is still open and idle.
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            fh.read1(1)
    finally:
        fh.close()
        s.close()


@pytest.mark.slow
def test_stored_responses_leave_no_copy_behind(start_proxy, origin):
    # 600 distinct 100 KB responses stored (and mostly evicted again) in a 32 MiB cache
    # whose arena is already full: RSS must stay where it was (before: every stored body
    # stayed referenced for ever, +60 MB here).
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", origin.url, "--cache", "32MiB")
    with Conn(p.port) as c:
        for i in range(400):         # every arena page written, whether prefaulted or not
            c.send(crlf(f"GET /c/w{i}?cc=max-age%3D600&size=102400 HTTP/1.1\nHost: t\n\n"))
            assert c.response().status == 200
        base = _settled_rss(p, 0.3)
        for i in range(600):
            c.send(crlf(f"GET /c/o{i}?cc=max-age%3D600&size=102400 HTTP/1.1\nHost: t\n\n"))
            r = c.response()
            assert r.status == 200 and len(r.body) == 102400
        c.send(crlf("GET /c/o599?cc=max-age%3D600&size=102400 HTTP/1.1\nHost: t\n\n"))
        assert "hit" in c.response().getheader("Cache-Status")
    grown = _settled_rss(p) - base
    assert grown <= 24 * MIB, f"RSS grew {grown} KiB storing 60 MB of responses"


# -- reloads ----------------------------------------------------------------------

RELOAD_CONFIG = """
[headers]
via_name = "{name}"
[cache]
size = "{size}MiB"
prefault = true      # each arena resident at once: what a reload keeps is seen in RSS
[[listeners]]
listen = "127.0.0.1:{port}"
upstream = "app"
[upstreams.app]
servers = ["{url}"]
"""


def _reload(p, cfg, **values) -> None:
    done = sum("reloaded configuration" in x for x in p.stderr_lines)
    cfg.write_text(RELOAD_CONFIG.format(**values))
    p.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while sum("reloaded configuration" in x for x in p.stderr_lines) == done:
        assert time.monotonic() < deadline, p.stderr_lines[-5:]
        time.sleep(0.02)


def _hit(conn, path: str) -> http.client.HTTPResponse:
    conn.send(crlf(f"GET {path} HTTP/1.1\nHost: t\n\n"))
    return conn.response()


def _settled_rss(p, seconds: float = 0.6) -> int:
    time.sleep(seconds)
    return p.rss_kib()


@pytest.mark.slow
def test_reloads_that_change_the_cache_release_the_old_arena(start_proxy, origin, tmp_path):
    # Each [cache] change gets a new (prefaulted) arena; the old one must go when the
    # last connection of its generation ends, not at some later full collection
    # (before: +arena per reload, for ever).
    origin.override["/c/r"] = {"cc": "max-age=600", "size": "1000"}
    cfg = tmp_path / "fastproxy.toml"
    cfg.write_text(RELOAD_CONFIG.format(name="g0", size=40, port=0, url=origin.url))
    p = start_proxy("serve", "--config", str(cfg))
    port = p.port
    old = Conn(port)                   # a connection of the first generation stays open
    assert _hit(old, "/c/r").status == 200
    assert _hit(old, "/c/r").getheader("Cache-Status").startswith("fastproxy; hit")
    tunnel = socket.create_connection(("127.0.0.1", port), timeout=10)   # and a tunnel
    tunnel.sendall(crlf("GET /ws HTTP/1.1\nHost: t\nUpgrade: websocket\nConnection: Upgrade\n\n"))
    assert tunnel.recv(4096).startswith(b"HTTP/1.1 101")
    base = _settled_rss(p)
    for i in range(1, 7):
        _reload(p, cfg, name=f"g{i}", size=40 + 8 * (i % 2), port=port, url=origin.url)
        with Conn(port) as c:          # every generation serves (and fills its cache)
            r = _hit(c, "/c/r")
            assert r.status == 200 and r.getheader("Via") == f"1.1 g{i}"
    # The first generation's keep-alive connection moved along (the tunnel cannot).
    r = _hit(old, "/c/r")
    assert r.getheader("Via") == "1.1 g6" and "hit" in r.getheader("Cache-Status")
    held = _settled_rss(p) - base
    # Its arena (40 MiB, in base) and the current one (40 MiB) are resident, none of
    # the five in between.
    assert held <= (40 + 24) * MIB, f"RSS grew {held} KiB over 6 reloads"
    old.close()
    assert _settled_rss(p) - base > held - 8 * MIB     # the tunnel is of that generation
    tunnel.sendall(b"ping")
    assert tunnel.recv(16) == b"ping"
    tunnel.close()
    released = _settled_rss(p) - base
    assert released <= held - 32 * MIB, f"closing the last old connection freed " \
                                          f"{held - released} KiB"
    # A reload that leaves [cache] as it is keeps the store (and its entries).
    _reload(p, cfg, name="g7", size=40 + 8 * (6 % 2), port=port, url=origin.url)
    with Conn(port) as c:
        r = _hit(c, "/c/r")
        assert r.getheader("Via") == "1.1 g7" and "hit" in r.getheader("Cache-Status")
    assert _settled_rss(p) - base <= held


@pytest.mark.slow
def test_old_connections_move_to_the_new_generation_and_free_the_old_cache(
        start_proxy, origin, tmp_path):
    # After a reload an idle keep-alive connection's next request is the new generation's
    # at once, and a busy one's after its exchange (which finishes on the old one), so
    # the old cache is freed then, not `timeouts.drain` (30 s here) later. Before: they
    # stayed on the old generation, with its arena, until the drain time closed them.
    origin.override["/c/r"] = {"cc": "max-age=600", "size": "1000"}
    cfg = tmp_path / "fastproxy.toml"
    cfg.write_text(RELOAD_CONFIG.format(name="g0", size=40, port=0, url=origin.url))
    p = start_proxy("serve", "--config", str(cfg))
    idle, busy = Conn(p.port), Conn(p.port)
    assert _hit(idle, "/c/r").status == 200 and _hit(busy, "/c/r").status == 200
    busy.send(crlf("GET /slow/1.5 HTTP/1.1\nHost: t\n\n"))   # still running after the reload
    time.sleep(0.2)
    _reload(p, cfg, name="g1", size=48, port=p.port, url=origin.url)
    base = _settled_rss(p, 0.3)            # both arenas (40 + 48 MiB)
    r = _hit(idle, "/c/r")
    assert r.status == 200 and r.getheader("Via") == "1.1 g1", "the idle connection kept g0"
    r = busy.response()
    assert r.status == 200 and r.body == b"slow\n" and r.getheader("Via") == "1.1 g0"
    assert r.getheader("Connection") != "close"
    assert _hit(busy, "/c/r").getheader("Via") == "1.1 g1", "the busy connection kept g0"
    # The old generation's last exchange is over: its arena goes (polled every 0.5 s).
    assert _settled_rss(p, 1.5) - base <= -32 * MIB, "the old arena is still resident"
    idle.close()
    busy.close()
