"""The response-body filter slot (notes/filter-contract.md) over real sockets.

The proxy runs as a subprocess started through this file (`python tests/test_body_filter.py
-m fastproxy ...`), which sets `ListenerSettings.filter_factory` to the test filters below
before the server starts; the request header `X-Filter` picks the filter per exchange.
"""
from __future__ import annotations

import os
import socket
import sys
import time

import pytest

if __name__ != "__main__":
    from conftest import ProxyProcess


class Upper:
    """Holds what feed() gets; flush() and finish() hand it out upper-cased."""

    def __init__(self, fail: bytes = b"") -> None:
        self.pending = []
        self.fail = fail

    def start(self, status, headers):
        if self.fail == b"start":
            raise RuntimeError("start failed")
        names = {n.lower() for n, _ in headers}
        assert b"content-length" in names or b"transfer-encoding" in names or status >= 200
        out = [(n, v) for n, v in headers if n.lower() != b"content-length"]
        return out + [(b"X-Filtered", b"upper")]

    def feed(self, data):
        if self.fail == b"feed":
            raise RuntimeError("feed failed")
        self.pending.append(data)
        return b""

    def flush(self):
        out = b"".join(self.pending).upper()
        self.pending = []
        return out

    def finish(self):
        if self.fail == b"finish":
            raise RuntimeError("finish failed")
        return self.flush() + b"|END"


class Aside:
    def start(self, status, headers):
        return None


def factory(method, req, version):
    pick = req.get(b"x-filter")
    if pick is None:
        return None
    if pick == b"aside":
        return Aside()
    if pick.startswith(b"raise-"):
        return Upper(fail=pick[6:])
    return Upper()


def _boot() -> None:
    """Run fastproxy (argv after this file) with `factory` on every listener."""
    import runpy

    from fastproxy.server import worker

    init = worker.ListenerRuntime.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if self.relay is not None:
            self.relay.filter_factory = factory

    worker.ListenerRuntime.__init__ = patched
    # argv: this file, then the python -m fastproxy command ProxyProcess appends.
    assert sys.argv[2:4] == ["-m", "fastproxy"], sys.argv
    sys.argv = ["fastproxy", *sys.argv[4:]]
    runpy.run_module("fastproxy", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _boot()


@pytest.fixture
def proxy(origin, tmp_path):
    p = ProxyProcess(["serve", "--mode", "reverse", "--listen", "127.0.0.1:0", "--access-log", "-", "--upstream",
                      origin.url], cwd=str(tmp_path), prefix=(sys.executable, os.path.abspath(__file__)))
    try:
        yield p.wait_ready()
    finally:
        p.stop()


def exchange(port: int, target: str, pick: str | None, method: str = "GET",
             version: str = "1.1", timeout: float = 10.0) -> tuple[bytes, bytes]:
    """Send one request with Connection: close; return (head, raw body bytes to EOF)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        extra = f"X-Filter: {pick}\r\n" if pick else ""
        s.sendall(f"{method} {target} HTTP/{version}\r\nHost: t\r\n{extra}Connection: close\r\n\r\n".encode())
        data = b""
        while True:
            try:
                got = s.recv(65536)
            except ConnectionResetError:   # a cut connection (the filter raised)
                break
            if not got:
                break
            data += got
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def dechunk(raw: bytes) -> bytes:
    out, pos = b"", 0
    while True:
        end = raw.index(b"\r\n", pos)
        n = int(raw[pos:end], 16)
        if n == 0:
            assert raw[end + 2:] == b"\r\n", raw[end:]
            return out
        out += raw[end + 2:end + 2 + n]
        assert raw[end + 2 + n:end + 4 + n] == b"\r\n"
        pos = end + 4 + n


def fields(head: bytes) -> dict:
    return {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])}


BODY = (b"0123456789abcdef" * 1000)


@pytest.mark.parametrize("query", ["", "?chunked=1", "?close=1"])
def test_upper_chunked_to_http11(proxy, query):
    head, raw = exchange(proxy.port, f"/size/9000{query}", "upper")
    f = fields(head)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert f[b"transfer-encoding"] == b"chunked" and b"content-length" not in f
    assert f[b"x-filtered"] == b"upper"
    assert dechunk(raw) == BODY[:9000].upper() + b"|END"


@pytest.mark.parametrize("query", ["", "?chunked=1"])
def test_upper_close_delimited_to_http10(proxy, query):
    head, raw = exchange(proxy.port, f"/size/5000{query}", "upper", version="1.0")
    f = fields(head)
    assert b"transfer-encoding" not in f and b"content-length" not in f
    assert f[b"connection"] == b"close"
    assert raw == BODY[:5000].upper() + b"|END"


def test_aside_and_no_filter_pass_untouched(proxy):
    for pick in ("aside", None):
        head, raw = exchange(proxy.port, "/size/3000", pick)
        f = fields(head)
        assert f[b"content-length"] == b"3000" and b"x-filtered" not in f
        assert raw == BODY[:3000]
        head, raw = exchange(proxy.port, "/size/3000?chunked=1", pick)
        assert fields(head)[b"transfer-encoding"] == b"chunked"
        assert dechunk(raw) == BODY[:3000]


def test_head_gets_the_head_a_get_would_get(proxy):
    # RFC 9110 9.3.2: HEAD's fields are those of the GET; the filter sees the head, no body
    # follows.
    head, raw = exchange(proxy.port, "/size/3000", "upper", method="HEAD")
    f = fields(head)
    get_head, _ = exchange(proxy.port, "/size/3000", "upper")
    g = fields(get_head)
    assert b"content-length" not in f and f[b"x-filtered"] == g[b"x-filtered"]
    assert f[b"transfer-encoding"] == g[b"transfer-encoding"] == b"chunked"
    assert raw == b""


def test_head_with_a_filter_that_steps_aside_is_untouched(proxy):
    head, raw = exchange(proxy.port, "/size/3000", "aside", method="HEAD")
    f = fields(head)
    assert f[b"content-length"] == b"3000" and b"x-filtered" not in f
    assert raw == b""


def test_flush_reaches_client_before_origin_finishes(proxy):
    """/slowbody/5 sends one byte per 0.2 s: each must arrive (via flush) before the end."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"GET /slowbody/5 HTTP/1.1\r\nHost: t\r\nX-Filter: upper\r\n\r\n")
        data = b""
        while b"\r\n\r\n1\r\nX\r\n" not in data:
            got = s.recv(65536)
            assert got, data
            data += got
        assert b"0\r\n\r\n" not in data   # the origin has not finished: this came by flush
        while not data.endswith(b"0\r\n\r\n"):
            got = s.recv(65536)
            assert got, data
            data += got
    _head, _, raw = data.partition(b"\r\n\r\n")
    assert dechunk(raw) == b"XXXXX|END"


@pytest.mark.parametrize("where", ["start", "feed", "finish"])
def test_filter_that_raises_cuts_the_connection(proxy, where):
    head, raw = exchange(proxy.port, "/size/9000?chunked=1", f"raise-{where}")
    if head:
        # Never a complete chunked body: the terminating chunk is missing.
        assert not raw.endswith(b"0\r\n\r\n"), raw[-20:]
    # Logged: the access log (stdout) line of the cut exchange names the reason.
    for _ in range(50):
        if any(f"{where} failed" in line for line in proxy.stdout_lines):
            break
        time.sleep(0.1)
    assert any("response filter failed" in line and f"{where} failed" in line
               for line in proxy.stdout_lines), proxy.stdout_lines[-5:]
    # The proxy goes on serving.
    head, raw = exchange(proxy.port, "/size/100", "upper")
    assert dechunk(raw) == BODY[:100].upper() + b"|END"
