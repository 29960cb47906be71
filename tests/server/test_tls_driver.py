"""The compiled TLS driver (ext/tls.pyx) over real sockets: the byte-level cases.

The client side is Python's ssl over a MemoryBIO on a plain socket, so a test decides
exactly which bytes go when: a handshake in 1-byte writes, a ClientHello cut short, a
request followed by close_notify or by a bare TCP FIN.
"""
from __future__ import annotations

import hashlib
import json
import signal
import socket
import ssl
import threading
import time

import pytest

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def tls_config(ca, origin, tmp_path):
    """Write a TLS reverse listener config; returns (path, ca_pem, extra-lines writer)."""
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_pem, key_pem, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))

    def write(extra: str = "") -> str:
        cfg = tmp_path / "tls.toml"
        cfg.write_text(f"""
{extra}
[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
tls = {{ cert = "{cert_pem}", key = "{key_pem}" }}
[upstreams.app]
servers = ["{origin.url}"]
""")
        return str(cfg)
    return write, ca_pem


class BioClient:
    """A TLS client whose ciphertext goes out exactly as the test says."""

    def __init__(self, port: int, ca_pem, chunk: int = 0, rcvbuf: int = 0) -> None:
        self.sock = socket.socket()
        if rcvbuf:   # a small window: the proxy's socket fills after a few responses
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = ssl.create_default_context(cafile=str(ca_pem))
        self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        self.chunk = chunk    # 0: all pending ciphertext in one send

    def send_pending(self) -> None:
        data = self.out.read()
        if not self.chunk:
            self.sock.sendall(data)
            return
        for i in range(0, len(data), self.chunk):
            self.sock.sendall(data[i:i + self.chunk])
            time.sleep(0.0005)

    def recv(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            self.inc.write_eof()
            return False
        self.inc.write(data)
        return True

    def hello(self) -> bytes:
        """The ClientHello this client would send (nothing sent yet)."""
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self.out.read()

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                self.send_pending()
                return
            except ssl.SSLWantReadError:
                self.send_pending()
                assert self.recv(), "the proxy closed during the handshake"

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.send_pending()

    def read_all(self) -> bytes:
        """Plaintext until the proxy closes (close_notify or FIN)."""
        got = []
        while True:
            try:
                piece = self.tls.read(65536)
                if not piece:
                    break
                got.append(piece)
                continue
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            if not self.recv():
                try:
                    got.append(self.tls.read(65536))
                except ssl.SSLError:
                    pass
                break
        return b"".join(got)


def test_handshake_and_request_in_one_byte_writes(start_proxy, tls_config):
    write, ca_pem = tls_config
    p = start_proxy("serve", "--config", write())
    c = BioClient(p.port, ca_pem, chunk=1)
    c.handshake()
    c.send(b"GET /size/5000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = c.read_all()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:200]
    assert len(body) == 5000


def test_request_then_close_notify_is_still_answered(start_proxy, tls_config):
    # The client says close_notify right after its request (a TLS half-close): the
    # request in flight still gets its response (RFC 9112 9.6), then our close_notify.
    write, ca_pem = tls_config
    p = start_proxy("serve", "--config", write())
    c = BioClient(p.port, ca_pem)
    c.handshake()
    c.tls.write(b"GET /size/300 HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        c.tls.unwrap()
    except ssl.SSLWantReadError:
        pass
    c.send_pending()
    data = c.read_all()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert data.endswith(b"\r\n\r\n" + data[-300:]) and len(data.partition(b"\r\n\r\n")[2]) == 300


def test_request_then_bare_fin_is_still_answered(start_proxy, tls_config):
    # An unclean close (TCP FIN, no close_notify) after a complete request: answered too.
    write, ca_pem = tls_config
    p = start_proxy("serve", "--config", write())
    c = BioClient(p.port, ca_pem)
    c.handshake()
    c.send(b"GET /size/300 HTTP/1.1\r\nHost: x\r\n\r\n")
    c.sock.shutdown(socket.SHUT_WR)
    data = c.read_all()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert len(data.partition(b"\r\n\r\n")[2]) == 300


def test_client_closing_mid_handshake_and_a_silent_one_timed_out(start_proxy, tls_config):
    # A ClientHello cut short then closed leaves nothing behind; one that never finishes
    # is closed after the client_header timeout (it bounds the handshake as the head).
    write, ca_pem = tls_config
    p = start_proxy("serve", "--config", write("[timeouts]\nclient_header = \"1s\"\n"))
    for _ in range(3):
        c = BioClient(p.port, ca_pem)
        hello = c.hello()
        c.sock.sendall(hello[:len(hello) // 2])
        c.sock.close()
    c = BioClient(p.port, ca_pem)
    c.sock.sendall(c.hello()[:20])
    start = time.monotonic()
    c.sock.settimeout(8)
    assert c.sock.recv(100) == b""
    assert time.monotonic() - start < 6
    # The listener still serves.
    ok = BioClient(p.port, ca_pem)
    ok.handshake()
    ok.send(b"GET /size/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.read_all().startswith(b"HTTP/1.1 200")


def test_large_body_both_ways_with_a_slow_reader(start_proxy, tls_config):
    write, ca_pem = tls_config
    p = start_proxy("serve", "--config", write())
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=20)
    ctx = ssl.create_default_context(cafile=str(ca_pem))
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        body = bytes(range(256)) * (3 * 4096)    # 3 MiB up
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                  + body)
        data = b""
        while not data.endswith(b"}"):
            data += s.recv(65536)
        info = json.loads(data.partition(b"\r\n\r\n")[2])
        assert info["body_len"] == len(body)
        assert info["body_sha256"] == hashlib.sha256(body).hexdigest()
        size = 8 << 20                           # 8 MiB down, read slowly at first
        s.sendall(b"GET /size/%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, got = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        n = len(got)
        slow_until = time.monotonic() + 1.5
        while n < size:
            piece = s.recv(65536)
            assert piece, f"closed after {n} of {size} bytes"
            n += len(piece)
            if time.monotonic() < slow_until:
                time.sleep(0.05)
        assert n == size
        # The connection is still usable after the backpressure.
        s.sendall(b"GET /size/7 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"\r\n\r\n" + data[-7:]) or len(data) < 7:
            data += s.recv(65536)
            if data.startswith(b"HTTP/1.1 200") and len(data.partition(b"\r\n\r\n")[2]) == 7:
                break
        assert data.startswith(b"HTTP/1.1 200")


def test_pipelined_requests_in_one_write_read_slowly(start_proxy, tls_config, origin):
    # Twenty requests, each its own TLS record, arrive in one TCP write; their large
    # responses fill the socket, so the relay stops reading (the requests not read yet
    # wait in the driver's BIO) and starts again as the client catches up: every
    # response comes, in order.
    # The cached ones are answered inside the read that decrypts their request: the
    # socket fills and the relay pauses reading there, with records still in the BIO.
    write, ca_pem = tls_config
    p = start_proxy("serve", "--config", write('[cache]\nsize = "16MiB"\n'))
    origin.override["/c/pipe"] = {"cc": "max-age=600", "size": "300000"}
    warm = BioClient(p.port, ca_pem)
    warm.handshake()
    warm.send(b"GET /c/pipe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert len(warm.read_all()) > 300000
    c = BioClient(p.port, ca_pem, rcvbuf=32768)
    c.handshake()
    sizes = [300_000 + i for i in range(20)]
    for i, n in enumerate(sizes):
        path = b"/size/%d" % n if i % 2 else b"/c/pipe"
        if not i % 2:
            sizes[i] = 300000
        c.tls.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
    c.send_pending()
    time.sleep(0.5)
    buf = b""

    def more() -> bytes:
        while True:
            try:
                return c.tls.read(65536)
            except ssl.SSLWantReadError:
                assert c.recv(), "the proxy closed"

    for n in sizes:
        while b"\r\n\r\n" not in buf:
            buf += more()
        head, _, buf = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"content-length: %d" % n in head.lower()
        while len(buf) < n:
            buf += more()
        buf = buf[n:]
    assert buf == b""


def test_graceful_stop_finishes_the_request_in_flight_then_says_close_notify(start_proxy,
                                                                           tls_config):
    # SIGTERM while a request over TLS waits for a slow upstream: the response still
    # comes, then the connection ends with our close_notify (a clean TLS EOF).
    write, ca_pem = tls_config
    p = start_proxy("serve", "--config", write())
    c = BioClient(p.port, ca_pem)
    c.handshake()
    c.send(b"GET /slow/0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
    idle = BioClient(p.port, ca_pem)
    idle.handshake()
    time.sleep(0.2)
    p.signal(signal.SIGTERM)
    data = c.read_all()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    # b"" once close_notify came; a bare FIN would be SSLEOFError (a MemoryBIO client
    # does not suppress ragged EOFs).
    assert c.tls.read(1) == b""
    assert idle.read_all() == b""  # the idle keep-alive connection is closed too
    assert idle.tls.read(1) == b""


def _metrics(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode()


def test_handshake_outcomes_are_counted_in_the_metrics(start_proxy, tls_config):
    # A failed handshake is otherwise silent (the client gets an alert, the operator
    # nothing): /metrics counts completed, failed (by OpenSSL's reason), timed-out and
    # abandoned handshakes.
    write, ca_pem = tls_config
    p = start_proxy("serve", "--config",
                    write('admin = "127.0.0.1:0"\n[timeouts]\nclient_header = "1s"\n'))
    admin = p.admin_port()
    ok = BioClient(p.port, ca_pem)
    ok.handshake()
    ok.send(b"GET /size/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.read_all().startswith(b"HTTP/1.1 200")
    # Plain HTTP to the TLS port: OpenSSL's HTTP_REQUEST.
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while s.recv(4096):
            pass
    # Half a ClientHello, then close.
    c = BioClient(p.port, ca_pem)
    hello = c.hello()
    c.sock.sendall(hello[:len(hello) // 2])
    c.sock.close()
    # A ClientHello's first bytes, then silence: closed by the client_header timeout.
    slow = BioClient(p.port, ca_pem)
    slow.sock.sendall(slow.hello()[:20])
    slow.sock.settimeout(8)
    assert slow.sock.recv(100) == b""
    want = {'fastproxy_tls_handshakes_total{result="ok"} 1',
            'fastproxy_tls_handshakes_total{result="failed"} 1',
            'fastproxy_tls_handshakes_total{result="closed"} 1',
            'fastproxy_tls_handshakes_total{result="timeout"} 1',
            'fastproxy_tls_handshake_failures_total{reason="http_request"} 1'}
    deadline = time.monotonic() + 5
    while True:    # the closed one is counted when the worker reads the FIN
        lines = set(_metrics(admin).splitlines())
        if want <= lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert want <= lines, sorted(x for x in lines if "tls" in x)


def test_tcp_listener_with_tls_bounds_the_handshake_too(start_proxy, ca, tmp_path):
    # tcp listeners terminate TLS in uvloop's layer, whose own handshake timeout is 60 s:
    # it gets timeouts.client_header as the HTTP listeners' driver does.
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_pem, key_pem = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def echo():
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data.upper())

    threading.Thread(target=echo, daemon=True).start()
    cfg = tmp_path / "tcp.toml"
    cfg.write_text(f"""
[timeouts]
client_header = "1s"
[[listeners]]
listen = "127.0.0.1:0"
mode = "tcp"
upstream = "db"
tls = {{ cert = "{cert_pem}", key = "{key_pem}" }}
[upstreams.db]
servers = ["tcp://127.0.0.1:{srv.getsockname()[1]}"]
""")
    p = start_proxy("serve", "--config", str(cfg))
    silent = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    start = time.monotonic()
    assert silent.recv(100) == b""
    # 1 s configured; 60 s was uvloop's own bound.
    assert time.monotonic() - start < 10
    ctx = ssl.create_default_context(cafile=None)
    ca.configure_trust(ctx)
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", p.port), timeout=10),
                         server_hostname="localhost") as s:
        s.sendall(b"over tls")
        assert s.recv(100) == b"OVER TLS"
    srv.close()
