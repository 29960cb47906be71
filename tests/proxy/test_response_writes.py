"""How relayed responses reach the client socket, over real sockets.

The relay writes a response head together with the body bytes read with it in one writev
on the compiled accept path (SockTransport.send_parts), with no copy of the body; what
the socket does not take is queued as views of the bytes read from the origin. These
tests use an origin that sends every response (head and body) in one write, bodies whose
every byte depends on its offset (a piece sent twice, skipped or out of place shows),
and a client that does not read until all of its pipelined answers are due: the writes
meet a full socket and partial writevs, at every boundary (inside the head, inside the
body), on both accept paths.
"""
from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from conftest import reverse_config

KILL_SWITCH = "FASTPROXY_UVLOOP_ACCEPT"
SIZES = [100, 4096, 65536, 300_000, 3_000_000, 7]


_STEP = 2654435761
_M32 = 0xFFFFFFFF


def _body_by_words(size: int, salt: int) -> bytes:
    """_body's definition, a word at a time (what _body must equal)."""
    words = (((i * _STEP) ^ salt) & _M32 for i in range((size + 3) // 4))
    return b"".join(w.to_bytes(4, "little") for w in words)[:size]


def _body(size: int, salt: int) -> bytes:
    """size bytes in which no 4-byte window repeats within 2**24 offsets."""
    # Word i is (i * _STEP) ^ salt mod 2**32, as in _body_by_words, which took 10-20 s for
    # each 24 MB body. Here each word sits in a 64-bit lane of one big integer, so one
    # integer addition adds to every lane at once (a sum of two 32-bit values never
    # carries into the next lane): the lanes double each step, words count+i from words i.
    n = (size + 3) // 4
    lanes, ones, count = 0, 1, 1        # word 0 is 0; `ones` has a 1 in each of count lanes
    while count < n:
        upper = (lanes + ((count * _STEP) & _M32) * ones) & (_M32 * ones)
        lanes |= upper << (64 * count)
        ones |= ones << (64 * count)
        count *= 2
    raw = (lanes ^ ((salt & _M32) * ones)).to_bytes(8 * count, "little")
    out = bytearray(4 * count)
    for k in range(4):   # the low four bytes of each lane, in order
        out[k::4] = raw[k::8]
    return bytes(out[:size])


def test_body_generator_matches_its_definition():
    for size in (0, 1, 3, 4, 5, 7, 100, 4096, 65537, 300_001):
        for salt in (0, 1, 2, 7, 2**31 + 5):
            assert _body(size, salt) == _body_by_words(size, salt), (size, salt)


class OneWriteOrigin:
    """Answers GET /N with N offset-dependent bytes, head and body in one sendall."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.bodies = {n: _body(n, n) for n in SIZES}
        self.threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            t.start()

    def _serve(self, c: socket.socket) -> None:
        buf = b""
        with c:
            c.settimeout(30)
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = c.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                n = int(head.split(b" ", 2)[1][1:])
                body = self.bodies[n]
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def one_write_origin():
    o = OneWriteOrigin()
    yield o
    o.close()


@pytest.fixture(params=["compiled", "uvloop"])
def accept_env(request):
    env = {k: v for k, v in os.environ.items() if k != KILL_SWITCH}
    if request.param == "uvloop":
        env[KILL_SWITCH] = "1"
    return env


def _read_responses(s: socket.socket, count: int, timeout: float = 30.0) -> list[tuple[bytes, bytes]]:
    """count Content-Length framed responses: [(head, body)]."""
    s.settimeout(timeout)
    data = bytearray()
    out = []
    pos = 0
    while len(out) < count:
        end = data.find(b"\r\n\r\n", pos)
        if end >= 0:
            head = bytes(data[pos:end])
            length = next(int(x.split(b":")[1]) for x in head.split(b"\r\n")[1:]
                          if x.lower().startswith(b"content-length:"))
            if len(data) >= end + 4 + length:
                out.append((head, bytes(data[end + 4:end + 4 + length])))
                pos = end + 4 + length
                continue
        chunk = s.recv(1 << 20)
        if not chunk:
            raise AssertionError(f"closed after {len(out)} responses")
        data += chunk
    assert len(data) == pos, "bytes after the last response"
    return out


class _SlowReader:
    """recv in small pieces with a pause before each: the proxy's socket stays nearly full,
    so its writes keep meeting a send buffer with room for part of what they carry."""

    def __init__(self, s: socket.socket) -> None:
        self.s = s

    def settimeout(self, t: float) -> None:
        self.s.settimeout(t)

    def recv(self, n: int) -> bytes:
        time.sleep(0.0005)
        return self.s.recv(32768)


def test_pipelined_answers_to_a_client_that_reads_late_and_slowly_arrive_exact(
        run_proxy, one_write_origin, accept_env):
    """Every size, four times over, pipelined on one connection to a client with a small
    receive buffer that reads nothing for half a second and then slowly: each body is
    exactly the origin's, in order (a piece of a partial write queued from the wrong
    offset shows as wrong bytes, or as framing that never completes)."""
    proxy = run_proxy(reverse_config(f"http://127.0.0.1:{one_write_origin.port}"),
                      env=accept_env)
    seq = SIZES * 4
    s = socket.socket()
    with s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", proxy.port))
        s.sendall(b"".join(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % n for n in seq))
        time.sleep(0.5)
        got = _read_responses(_SlowReader(s), len(seq), timeout=10.0)
    for i, (n, (head, body)) in enumerate(zip(seq, got)):
        assert head.startswith(b"HTTP/1.1 200"), (i, head)
        assert len(body) == n and body == one_write_origin.bodies[n], (i, n)


def test_keep_alive_answers_read_at_once_are_exact(run_proxy, one_write_origin, accept_env):
    """The common case (head and body in one writev that the socket takes whole), many
    times over one connection: each answer complete and nothing more."""
    proxy = run_proxy(reverse_config(f"http://127.0.0.1:{one_write_origin.port}"),
                      env=accept_env)
    s = socket.create_connection(("127.0.0.1", proxy.port))
    with s:
        for i in range(40):
            n = SIZES[i % len(SIZES)]
            s.sendall(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % n)
            (head, body), = _read_responses(s, 1)
            assert head.startswith(b"HTTP/1.1 200") and b"\r\nVia: " in head
            assert body == one_write_origin.bodies[n], n


class SlowDigestOrigin:
    """Reads a request body slowly (small reads, pauses) and answers with its sha256."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        # A small receive buffer (inherited by accepted sockets): the proxy's sends fill it.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        import hashlib
        with c:
            c.settimeout(30)
            buf = b""
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = c.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    length = next(int(x.split(b":")[1]) for x in head.split(b"\r\n")[1:]
                                  if x.lower().startswith(b"content-length:"))
                    h = hashlib.sha256()
                    take = buf[:length]
                    h.update(take)
                    got = len(take)
                    buf = buf[length:]
                    while got < length:
                        time.sleep(0.0005)
                        data = c.recv(min(8192, length - got))
                        if not data:
                            return
                        h.update(data)
                        got += len(data)
                    digest = h.hexdigest().encode()
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                              % (len(digest), digest))
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


def test_request_bodies_to_an_upstream_that_reads_slowly_arrive_exact(run_proxy, accept_env):
    """Request bodies streamed to an origin that reads slowly (the proxy's sends to it
    meet a full socket, the rest waits in the transport, later sends must not overtake
    it), twice on one kept-alive upstream connection: the origin's digest of each body
    is the digest of what the client sent."""
    import hashlib
    origin = SlowDigestOrigin()
    try:
        proxy = run_proxy(reverse_config(f"http://127.0.0.1:{origin.port}",
                                         limits={"request_buffering": "0"}), env=accept_env)
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            for salt in (1, 2):
                body = _body(24_000_000, salt)
                s.sendall(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
                          % len(body))
                for i in range(0, len(body), 100_000):
                    s.sendall(body[i:i + 100_000])
                (head, digest), = _read_responses(s, 1)
                assert head.startswith(b"HTTP/1.1 200"), head
                assert digest == hashlib.sha256(body).hexdigest().encode(), salt
    finally:
        origin.close()
