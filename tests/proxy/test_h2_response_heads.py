"""Differential: the same origin answers, relayed to an HTTP/1.1 client and to an HTTP/2
stream, carry the same fields (one definition of what the relay forwards: hop-by-hop
removal, Via, Date, the cache's fields), less the framing ones each protocol sets itself.

The HTTP/2 stream takes the relay's parsed head (ext/h2server.pyx Stream.relay_head)
instead of parsing an HTTP/1.1 head again; this is the check that nothing differs."""
from __future__ import annotations

import socket
import threading

import pytest
from h2_client import Client

DATE = b"Sat, 05 Dec 2026 10:00:00 GMT"

# path -> (raw response, close after it, the body an HTTP/2 client must get)
ANSWERS = {
    b"/hop": (b"HTTP/1.1 200 OK\r\nX-Mixed-Case: A b \r\nKeep-Alive: timeout=5\r\n"
              b"Proxy-Connection: keep-alive\r\nUpgrade: foo\r\nTE: trailers\r\nTrailer: x-t\r\n"
              b"Connection: X-Hop\r\nX-Hop: 1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
              b"Content-Length: 2\r\nContent-Length: 2\r\nETag: \"x\"\r\n"
              b"Cache-Control: max-age=60\r\n\r\nok", False, b"ok"),
    b"/chunked": (b"HTTP/1.1 200 OK\r\nDate: " + DATE + b"\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Type: text/plain\r\nVary: Accept\r\nCache-Control: max-age=60\r\n\r\n"
                  b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n", False, b"hello world"),
    b"/http10": (b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nX-Old: yes\r\n\r\n"
                 b"until the close", True, b"until the close"),
    b"/nocontent": (b"HTTP/1.1 204 No Content\r\nX-A: 1\r\nServer: origin\r\n\r\n", False, b""),
    b"/notmod": (b"HTTP/1.1 304 Not Modified\r\nETag: \"v\"\r\nContent-Length: 10\r\n\r\n",
                 False, b""),
    b"/missing": (b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n"
                  b"\r\nno!", False, b"no!"),
    b"/hints": (b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-Final: 1\r\n\r\nx", False, b"x"),
    b"/big": (b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\nContent-Type: application/octet-stream"
              b"\r\n\r\n" + bytes(range(256)) * 273 + b"\x00" * 112, False,
              bytes(range(256)) * 273 + b"\x00" * 112),
}
FRAMING = {b"connection", b"keep-alive", b"transfer-encoding", b"proxy-connection"}


class Origin:
    """Answers each request with ANSWERS[path] (the query string is ignored, so the two
    clients' requests are different cache keys); HEAD gets the head only."""

    def __init__(self) -> None:
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                method, target = head.split(b" ", 2)[:2]
                raw, close, _ = ANSWERS[target.split(b"?")[0]]
                if method == b"HEAD":
                    raw = raw[:raw.rindex(b"\r\n\r\n") + 4]
                conn.sendall(raw)
                if close:
                    return

    def close(self) -> None:
        self.srv.close()


def _h1(port: int, method: str, target: str) -> tuple[int, list]:
    """An HTTP/1.1 exchange over a raw socket: the final status and field list."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                  "Accept-Encoding: gzip, br\r\n\r\n".encode())
        data = b""
        while True:
            piece = s.recv(65536)
            if not piece:
                break
            data += piece
    while True:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        if status >= 200:
            break
    fields = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields.append((name.lower(), value.strip()))
    return status, fields


def _comparable(fields: list, origin_dated: bool) -> list:
    out = []
    for name, value in fields:
        if name in FRAMING or name.startswith(b":"):
            continue
        if name == b"date" and not origin_dated:
            value = b"<the proxy's clock>"    # added by the proxy: the second may differ
        out.append((name, value))
    return out


@pytest.fixture
def sink_origin():
    o = Origin()
    yield o
    o.close()


@pytest.mark.parametrize("flags", [(), ("--cache", "64MiB"), ("--compress",)],
                         ids=["plain", "cache", "compress"])
def test_h2_stream_gets_the_fields_an_http11_client_gets(start_proxy, sink_origin, flags):
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", f"http://127.0.0.1:{sink_origin.port}", *flags)
    c = Client(p.port)
    try:
        for path, (raw, _, body) in ANSWERS.items():
            for method in ("GET", "HEAD"):
                h1_status, h1_fields = _h1(p.port, method, f"{path.decode()}?h1-{method}")
                sid = c.request(f"{path.decode()}?h2-{method}", method=method,
                                extra=[("accept-encoding", "gzip, br")])
                c.run(lambda: c.finished(sid))
                assert sid not in c.resets, (path, method, c.resets[sid])
                h2_fields = c.header_lists[sid]
                assert int(dict(h2_fields)[b":status"]) == h1_status, (path, method)
                dated = b"\r\nDate:" in raw
                assert _comparable(h2_fields, dated) == _comparable(h1_fields, dated), \
                    (path, method)
                assert not FRAMING & {n for n, _ in h2_fields}
                if method == "GET" and not flags:
                    assert bytes(c.bodies[sid]) == body, path
                elif method == "HEAD":
                    assert bytes(c.bodies.get(sid, b"")) == b"", path
        # Each field list above was a real one: a Via and a Date on every answer.
        assert all(b"via" in dict(c.header_lists[s]) and b"date" in dict(c.header_lists[s])
                   for s in c.header_lists)
    finally:
        c.close()
