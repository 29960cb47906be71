"""Large cache hits are written straight from the arena (hitpath.pyx), over real sockets.

A hit above zero_copy_min goes out as the head plus a view of the stored body; the
arena segment stays pinned while any of it is queued for the client. These tests read
such a hit slowly while other requests churn the cache through every segment: the bytes
must be exactly the stored ones (a recycled segment would show other entries' headers
and keys), eviction must go on around the pinned segment, and pins must all be released
(the client finished or went away) with the proxy's memory bounded.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from wire import Conn, _FileSock, crlf

BIG = 1 << 20
CHURN = 300_000
KIB = 1


def _admin_port(proxy) -> int:
    import re
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in list(proxy.stderr_lines):
            m = re.search(r"listening on \[?[^\]]+?\]?:(\d+) \(admin\)", line)
            if m:
                return int(m.group(1))
        time.sleep(0.05)
    raise AssertionError("no admin listener: " + "\n".join(proxy.stderr_lines))


def _cache_stats(admin: int) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    try:
        c.request("GET", "/snapshot")
        return json.loads(c.getresponse().read())["cache"]
    finally:
        c.close()


def _get(port: int, path: str) -> tuple[int, str, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", path, headers={"Host": "t"})
        r = c.getresponse()
        return r.status, r.getheader("Cache-Status") or "", r.read()
    finally:
        c.close()


@pytest.fixture
def big_proxy(start_proxy, origin):
    """A 16 MiB cache (7 segments of 2.2 MiB) holding /c/big (1 MiB); /c/churnN are 300 KB."""
    origin.override["/c/big"] = {"cc": "max-age=600", "size": str(BIG)}
    for i in range(80):
        origin.override[f"/c/churn{i}"] = {"cc": "max-age=600", "size": str(CHURN)}
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", origin.url, "--cache", "16MiB", "--admin", "127.0.0.1:0",
                    listeners=2)
    status, _, body = _get(p.port, "/c/big")
    assert status == 200 and len(body) == BIG
    status, cs, again = _get(p.port, "/c/big")
    assert status == 200 and cs.startswith("fastproxy; hit") and again == body
    return p, _admin_port(p), body


def _read_head(fh) -> int:
    """Read a response head from fh; return its Content-Length."""
    length = -1
    line = fh.readline()
    assert line.startswith(b"HTTP/1.1 200 "), line
    while True:
        line = fh.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        if name.strip().lower() == b"cache-status":
            assert value.strip().startswith(b"fastproxy; hit"), line
    return length


PIPELINED = 6


@pytest.mark.slow
def test_a_1mib_hit_read_slowly_while_the_cache_churns_is_exact(big_proxy):
    proxy, admin, expected = big_proxy
    base_rss = proxy.rss_kib()
    evictions = _cache_stats(admin)["evictions"]
    s = socket.socket()
    s.connect(("127.0.0.1", proxy.port))
    s.settimeout(30)
    # Pipelined, so more is answered than the kernel's socket buffers (up to 4 MiB on
    # loopback) take: the rest waits in the transport, pinned.
    s.sendall(crlf("GET /c/big HTTP/1.1\nHost: t\n\n") * PIPELINED)
    time.sleep(0.5)
    pinned_while_waiting = _cache_stats(admin)["pinned_segments"]

    failures: list = []

    def churn() -> None:
        # 80 x 300 KB through a 16 MiB arena, twice: every unpinned segment is recycled.
        for rnd in range(2):
            for i in range(80):
                status, _, body = _get(proxy.port, f"/c/churn{i}")
                if status != 200 or len(body) != CHURN:
                    failures.append((rnd, i, status, len(body)))

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    fh = s.makefile("rb")
    deadline = time.monotonic() + 60
    for n in range(PIPELINED):
        assert _read_head(fh) == BIG
        got = bytearray()
        while len(got) < BIG and time.monotonic() < deadline:
            # Slowly, while the churn runs: 8 KiB at a time.
            piece = fh.read(min(8192, BIG - len(got)))
            if not piece:
                break
            got += piece
            if t.is_alive():
                time.sleep(0.002)
        assert len(got) == BIG, (n, len(got))
        assert bytes(got) == expected, n        # not one byte of another entry
    t.join(60)
    assert not t.is_alive() and not failures, failures
    assert pinned_while_waiting >= 1       # the answers really waited on a pin
    assert _cache_stats(admin)["evictions"] > evictions   # eviction went on around it
    fh.close()
    s.close()
    time.sleep(0.3)
    assert _cache_stats(admin)["pinned_segments"] == 0
    assert proxy.rss_kib() - base_rss <= 24 * 1024


@pytest.mark.slow
def test_clients_that_leave_mid_body_release_their_pins_and_memory(big_proxy):
    proxy, admin, expected = big_proxy
    base_rss = proxy.rss_kib()
    socks = []
    for _ in range(40):
        s = socket.socket()
        s.connect(("127.0.0.1", proxy.port))
        # Pipelined: the proxy must not queue 20 MiB per client; it stops reading.
        s.sendall(crlf("GET /c/big HTTP/1.1\nHost: t\n\n") * 20)
        socks.append(s)
    time.sleep(1.0)
    held = _cache_stats(admin)["pinned_segments"]
    grown = proxy.rss_kib() - base_rss
    # 40 clients x 20 MiB of answers would be 800 MiB; the queued bytes are the arena's.
    assert grown <= 24 * 1024, f"RSS grew {grown} KiB"
    assert held >= 1
    # The store still works around the pinned segments (churn, then a fresh hit).
    for i in range(30):
        assert _get(proxy.port, f"/c/churn{i}")[0] == 200
    for s in socks:
        s.close()
    deadline = time.monotonic() + 10
    while _cache_stats(admin)["pinned_segments"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _cache_stats(admin)["pinned_segments"] == 0
    with Conn(proxy.port) as c:
        c.send(crlf("GET /c/churn29 HTTP/1.1\nHost: t\n\n"))
        r = c.response()
        assert r.status == 200 and r.getheader("Cache-Status").startswith("fastproxy; hit")
    assert proxy.rss_kib() - base_rss <= 24 * 1024


@pytest.mark.slow
def test_bytes_the_kernel_holds_stay_intact_when_their_segment_is_reused(big_proxy, origin):
    # A hit the socket takes whole, to a client that reads nothing yet: nothing is
    # pinned any more, so the churn recycles the segment. The client must still get the
    # bytes it was sent, not the entries written over them later (a write path that
    # left the kernel referencing arena pages, as sendfile(2) from a memfd arena does,
    # fails this unless recycled segments get fresh pages: checked while trying one).
    proxy, admin, _ = big_proxy
    origin.override["/c/mid"] = {"cc": "max-age=600", "size": str(256 << 10)}
    status, _, expected = _get(proxy.port, "/c/mid")
    assert status == 200 and _get(proxy.port, "/c/mid")[1].startswith("fastproxy; hit")
    socks = []
    for _ in range(3):
        s = socket.socket()
        s.connect(("127.0.0.1", proxy.port))
        s.settimeout(30)
        s.sendall(crlf("GET /c/mid HTTP/1.1\nHost: t\n\n"))
        socks.append(s)
    time.sleep(0.5)
    assert _cache_stats(admin)["pinned_segments"] == 0     # all of it is the kernel's
    evictions = _cache_stats(admin)["evictions"]
    for rnd in range(2):
        for i in range(80):
            assert _get(proxy.port, f"/c/churn{i}")[0] == 200
    assert _cache_stats(admin)["evictions"] > evictions
    for n, s in enumerate(socks):
        fh = s.makefile("rb")
        assert _read_head(fh) == 256 << 10
        assert fh.read(256 << 10) == expected, n
        fh.close()
        s.close()


def test_a_large_hit_over_tls_goes_through_the_tls_layer(start_proxy, origin, tmp_path):
    # Only a plain TCP connection gets the body by sendfile; over TLS it must be
    # encrypted by the transport like any other write.
    import ssl
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_pem, key_pem, ca_pem = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    cfg = tmp_path / "tls.toml"
    cfg.write_text(f"""
[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
tls = {{ cert = "{cert_pem}", key = "{key_pem}" }}
[upstreams.app]
servers = ["{origin.url}"]
[cache]
size = "16MiB"
""")
    origin.override["/c/tls"] = {"cc": "max-age=600", "size": str(300 << 10)}
    p = start_proxy("serve", "--config", str(cfg))
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    ctx = ssl.create_default_context(cafile=str(ca_pem))
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        fh = s.makefile("rb")
        bodies = []
        for _ in range(3):
            s.sendall(b"GET /c/tls HTTP/1.1\r\nHost: localhost\r\n\r\n")
            resp = http.client.HTTPResponse(_FileSock(fh))
            resp.begin()
            bodies.append((resp.getheader("Cache-Status"), resp.read()))
        fh.close()
    assert bodies[0][1] == bodies[1][1] == bodies[2][1] and len(bodies[0][1]) == 300 << 10
    assert bodies[2][0].startswith("fastproxy; hit")



class _Slow:
    """readline/read over a socket, taking at most 8 KiB per recv and pausing between."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _more(self) -> None:
        time.sleep(0.0002)
        chunk = self.sock.recv(8192)
        assert chunk, "the proxy closed the connection"
        self.buf += chunk

    def readline(self) -> bytes:
        while (i := self.buf.find(b"\n")) < 0:
            self._more()
        line = bytes(self.buf[:i + 1])
        del self.buf[:i + 1]
        return line

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def test_pipelined_hits_of_every_size_to_a_slow_reader_arrive_whole_and_in_order(
        big_proxy, origin):
    # The relay writes a hit to the socket itself only while the transport holds nothing
    # (relay_hitwrite.pxi); a client that reads slowly makes writes go part-way, and the
    # rest, and every answer after it, must queue behind them in order.
    proxy, admin, big = big_proxy
    sizes = {"/c/p0": 0, "/c/p1": 100, "/c/p4k": 4096, "/c/p20k": 20_000,
             "/c/p64k": 65536, "/c/p300k": 300_000}
    for path, size in sizes.items():
        origin.override[path] = {"cc": "max-age=600", "size": str(size)}
    expected = {"/c/big": big}
    for path in sizes:
        status, _, body = _get(proxy.port, path)
        assert status == 200 and len(body) == sizes[path]
        expected[path] = body
    order = [p for _ in range(3) for p in (*sizes, "/c/big")]
    order += [p for _ in range(30) for p in ("/c/p20k", "/c/p1", "/c/p4k", "/c/p64k")]
    want = b"".join(expected[p] for p in order)
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    got = bytearray()
    try:
        s.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p.encode() for p in order))
        fh = _Slow(s)
        for path in order:
            length = _read_head(fh)
            assert length == len(expected[path]), path
            got += fh.read(length)
    finally:
        s.close()
    assert got == want
    assert _cache_stats(admin)["compiled_hits"] >= len(order)
