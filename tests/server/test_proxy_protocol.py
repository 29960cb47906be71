"""The PROXY protocol (HAProxy's proxy-protocol.txt, v1 text and v2 binary) over real sockets:
listeners with `proxy_protocol` take the client address from the header (access log,
X-Forwarded-For, rate limits, forward ACL, TLS and HTTP/2 after the header, tcp mode) and
close anything else unanswered; tcp groups with `send_proxy` send one."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

import pytest

from fastproxy.proxyheader import (
    V2_SIGNATURE, ProxyHeader, ProxyHeaderError, build, measure, parse,
)
from h2_client import Client
from wire import RawServer

LOOPBACK = ["127.0.0.0/8", "::1/128"]
# Plain HTTP listeners hand the socket to the compiled accept path after the header; with
# FASTPROXY_UVLOOP_ACCEPT to uvloop's transport (the path TLS and tcp listeners take).
ACCEPT_PATHS = pytest.mark.parametrize("env", [None, {**os.environ,
                                                      "FASTPROXY_UVLOOP_ACCEPT": "1"}],
                                       ids=["compiled", "uvloop"])


def v2(cmd: int, fam: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes((0x20 | cmd, fam)) + struct.pack("!H", len(body)) + body


def v2_ip4(src: str, dst: str, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    return v2(1, 0x11, socket.inet_aton(src) + socket.inet_aton(dst)
              + struct.pack("!HH", sport, dport) + tlvs)


def v2_ip6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return v2(1, 0x21, socket.inet_pton(socket.AF_INET6, src)
              + socket.inet_pton(socket.AF_INET6, dst) + struct.pack("!HH", sport, dport))


def tlv(kind: int, value: bytes) -> bytes:
    return bytes((kind,)) + struct.pack("!H", len(value)) + value


# --- the codec ------------------------------------------------------------------------------

@pytest.mark.parametrize("header, expected", [
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\n",
     ProxyHeader(1, ("203.0.113.7", 5555), ("10.0.0.1", 443))),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 80\r\n",
     ProxyHeader(1, ("2001:db8::7", 65535, 0, 0), ("2001:db8::1", 80, 0, 0))),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1)),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyHeader(1)),
    (v2_ip4("198.51.100.9", "10.0.0.1", 40000, 8443, tlv(1, b"h2") + tlv(0xEA, b"vpce-1")),
     ProxyHeader(2, ("198.51.100.9", 40000), ("10.0.0.1", 8443),
                 ((1, b"h2"), (0xEA, b"vpce-1")))),
    (v2_ip6("2001:db8::9", "::1", 1, 2), ProxyHeader(2, ("2001:db8::9", 1, 0, 0), ("::1", 2, 0, 0))),
    (v2(0, 0x00, b""), ProxyHeader(2, local=True)),
    (v2(0, 0x11, bytes(12)), ProxyHeader(2, local=True)),
    (v2(1, 0x00, b""), ProxyHeader(2)),
    (v2(1, 0x31, bytes(216)), ProxyHeader(2)),     # AF_UNIX: the socket's own address
])
def test_parse_what_measure_finds(header, expected):
    n, done = measure(header + b"GET / HTTP/1.1\r\n")
    assert (n, done) == (len(header), True)
    assert parse(header) == expected
    for cut in range(len(header)):   # every prefix is header bytes still to complete
        assert measure(header[:cut]) == (cut, False)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n", b"PROXY\r\n", b"proxy TCP4", b"\r\n\r\n\x00\r\nQUIX\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + b" " * 80,              # no CRLF within 107 bytes
    V2_SIGNATURE + b"\x21\x11\xff\xff",                           # longer than V2_MAX
])
def test_measure_refuses(data):
    with pytest.raises(ProxyHeaderError):
        measure(data)


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", b"PROXY TCP4 ::1 ::1 1 2\r\n",
    b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xff\r\n",
    v2(2, 0x11, bytes(12)),                                       # command 2
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),               # version 1 in a v2 header
    v2(1, 0x41, bytes(12)),                                       # family 4
    v2(1, 0x11, bytes(11)),                                       # short address block
    v2(1, 0x21, bytes(12)),
    v2_ip4("1.2.3.4", "5.6.7.8", 1, 2, b"\x01\x00\x05ab"),       # TLV past the end
    v2_ip4("1.2.3.4", "5.6.7.8", 1, 2, b"\x01\x00"),             # truncated TLV
])
def test_parse_refuses(header):
    assert measure(header) == (len(header), True)
    with pytest.raises(ProxyHeaderError):
        parse(header)


@pytest.mark.parametrize("src, dst", [
    (("203.0.113.7", 1234), ("10.0.0.1", 80)),
    (("2001:db8::7", 1234, 0, 0), ("2001:db8::1", 80, 0, 0)),
    (("203.0.113.7", 1234), ("2001:db8::1", 80, 0, 0)),
])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_build_parses_back(version, src, dst):
    header = parse(build(version, src, dst))
    if len(src) == len(dst):
        assert (header.source, header.dest) == (src, dst)
    else:   # an IPv4 client behind an IPv6 address: IPv4-mapped, one family in a header
        assert header.source == ("::ffff:" + src[0], src[1], 0, 0)
        assert header.dest == dst
    assert build(version, None, dst) in (b"PROXY UNKNOWN\r\n", V2_SIGNATURE + b"\x21\x00\x00\x00")


# --- receiving, over real sockets -----------------------------------------------------------

def reverse(origin, tmp_path, networks=LOOPBACK, **listener):
    return {"listeners": [{"listen": "127.0.0.1:0", "upstream": "app", "proxy_protocol": True,
                           "proxy_protocol_from": networks, **listener}],
            "upstreams": {"app": {"servers": [origin.url]}},
            "access_log": {"path": str(tmp_path / "access.log"), "format": "json"}}


def talk(port: int, data: bytes, host: str = "127.0.0.1", timeout: float = 10.0,
         shut: bool = False) -> bytes:
    """Send data (shut: then our end of the stream), read until the proxy closes (a reset
    after nothing counts as nothing)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk


def echo(port: int, header: bytes, host: str = "127.0.0.1", extra: bytes = b"") -> dict:
    """The origin's /echo through the proxy after header: its view of the request."""
    out = talk(port, header + b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               + extra + b"\r\n", host)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), out[:200]
    info = json.loads(body)
    return {k.lower(): v for k, v in info["headers"]}


def log_entries(path, n: int) -> list[dict]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines()]
            if len(lines) >= n:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} access log lines")


@pytest.mark.parametrize("header, client", [
    (b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n", "203.0.113.7"),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 80\r\n", "2001:db8::7"),
    (v2_ip4("198.51.100.9", "127.0.0.1", 40000, 80, tlv(1, b"http/1.1") + tlv(0x04, b"")),
     "198.51.100.9"),
    (v2_ip6("2001:db8::9", "2001:db8::1", 40000, 80), "2001:db8::9"),
    # UNKNOWN and LOCAL: the balancer's own connection, the socket's address stands.
    (b"PROXY UNKNOWN\r\n", "127.0.0.1"),
    (v2(0, 0x11, bytes(12)), "127.0.0.1"),
])
@ACCEPT_PATHS
def test_header_address_is_the_client(run_proxy, origin, tmp_path, header, client, env):
    p = run_proxy(reverse(origin, tmp_path), env=env)
    assert echo(p.port, header)["x-forwarded-for"] == client
    assert log_entries(tmp_path / "access.log", 1)[0]["client"] == client


def test_forwarded_header_and_ipv6_listener(run_proxy, origin, tmp_path):
    cfg = reverse(origin, tmp_path)
    cfg["headers"] = {"forwarded": "forwarded"}
    cfg["listeners"][0]["listen"] = "[::1]:0"
    p = run_proxy(cfg)
    headers = echo(p.port, b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n", host="::1")
    assert "for=203.0.113.7" in headers["forwarded"], headers


def test_header_in_pieces_and_keepalive(run_proxy, origin, tmp_path):
    """A header split over segments is put together; the connection then serves several
    requests as that client."""
    p = run_proxy(reverse(origin, tmp_path))
    header = v2_ip4("192.0.2.44", "127.0.0.1", 1, 80)
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        for piece in (header[:5], header[5:13], header[13:20], header[20:]):
            s.sendall(piece)
            time.sleep(0.05)
        f = s.makefile("rb")
        for _ in range(2):
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            assert f.readline().startswith(b"HTTP/1.1 200")
            length = 0
            while (line := f.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            info = json.loads(f.read(length))
            assert dict(info["headers"])["X-Forwarded-For"] == "192.0.2.44"


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                                # no header at all
    b"PROXY TCP4 203.0.113.7 127.0.0.1 5555\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80",                          # truncated: EOF
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + b" " * 100 + b"\r\nGET / HTTP/1.1\r\n\r\n",
    v2_ip4("1.2.3.4", "5.6.7.8", 1, 2)[:20],                              # truncated v2
    V2_SIGNATURE + b"\x21\x11\x20\x00" + bytes(8192),                     # oversized v2
    V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12) + b"GET / HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(64),           # a bare ClientHello
])
def test_bad_header_closes_unanswered(run_proxy, origin, tmp_path, data):
    p = run_proxy(reverse(origin, tmp_path))
    assert talk(p.port, data, shut=True) == b""
    # ... and the listener still serves a good one afterwards.
    assert echo(p.port, b"PROXY TCP4 203.0.113.8 127.0.0.1 1 80\r\n")["x-forwarded-for"] \
        == "203.0.113.8"


def test_untrusted_peer_is_closed_counted_and_logged(run_proxy, origin, tmp_path):
    cfg = reverse(origin, tmp_path, networks=["192.0.2.0/24"])
    cfg["admin"] = "127.0.0.1:0"
    p = run_proxy(cfg)
    for _ in range(3):
        assert talk(p.port, b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n"
                            b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    assert origin.count("/echo") == 0
    with socket.create_connection(("127.0.0.1", p.admin_port()), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        metrics = b""
        while chunk := s.recv(65536):
            metrics += chunk
    assert b"\nfastproxy_proxy_protocol_refused_total 3\n" in metrics
    # One warning line for the burst (rate-limited), naming the peer and the reason.
    lines = [x for x in p.stderr_lines if "PROXY protocol" in x]
    assert len(lines) == 1, lines
    assert "127.0.0.1: not in proxy_protocol_from" in lines[0]


def test_slow_header_times_out(run_proxy, origin, tmp_path):
    cfg = reverse(origin, tmp_path)
    cfg["timeouts"] = {"client_header": "1s"}
    p = run_proxy(cfg)
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"PROXY TCP4 203.0.113.7 ")
        started = time.monotonic()
        s.settimeout(10)
        try:
            got = s.recv(100)
        except ConnectionResetError:
            got = b""
        waited = time.monotonic() - started
    assert got == b"", "an unfinished header must get no answer"
    assert waited < 8, "the header wait must end at timeouts.client_header, not hang"


def test_reload_changes_trusted_networks_not_the_option(run_proxy, origin, tmp_path):
    """proxy_protocol_from follows a reload; proxy_protocol (the accept path of a bound
    socket) does not: that reload is refused."""
    from fastproxy.testing import to_toml
    cfg = reverse(origin, tmp_path, networks=["192.0.2.0/24"])
    p = run_proxy(cfg)
    header = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n"
    assert talk(p.port, header + b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n") == b""

    def reload(new: dict, said: str) -> None:
        before = len(p.stderr_lines)
        with open(p.config_path, "w") as fh:
            fh.write(to_toml({**new, "listeners": [
                {**new["listeners"][0], "listen": f"127.0.0.1:{p.port}"}]}))
        p.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not any(said in x for x in p.stderr_lines[before:]):
            assert time.monotonic() < deadline, p.stderr_lines[before:]
            time.sleep(0.05)

    reload(reverse(origin, tmp_path), "reloaded configuration")
    assert echo(p.port, header)["x-forwarded-for"] == "203.0.113.7"
    off = reverse(origin, tmp_path)
    del off["listeners"][0]["proxy_protocol_from"]
    off["listeners"][0]["proxy_protocol"] = False
    reload(off, "reload refused")
    assert echo(p.port, header)["x-forwarded-for"] == "203.0.113.7"


@pytest.fixture(scope="module")
def ca():
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


@pytest.fixture
def certs(ca, tmp_path):
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "both.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return str(tmp_path / "both.pem"), str(tmp_path / "ca.pem")


class HeaderFirst:
    """A client TLS context that sends the PROXY header on the raw socket first."""

    def __init__(self, ctx: ssl.SSLContext | None, header: bytes) -> None:
        self.ctx = ctx
        self.header = header

    def wrap_socket(self, raw, server_hostname=None):
        raw.sendall(self.header)
        if self.ctx is None:
            return _Plain(raw)
        return self.ctx.wrap_socket(raw, server_hostname=server_hostname)


class _Plain:
    """A plain socket, for h2_client.Client's TLS-shaped constructor (prior knowledge)."""

    def __init__(self, sock) -> None:
        self.sock = sock

    def selected_alpn_protocol(self) -> str:
        return "h2"

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_tls_after_header_http1_and_h2(run_proxy, origin, tmp_path, certs):
    both, ca_pem = certs
    p = run_proxy(reverse(origin, tmp_path, tls={"cert": both, "key": both}))
    ctx = ssl.create_default_context(cafile=ca_pem)
    ctx.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    raw.sendall(b"PROXY TCP4 203.0.113.21 127.0.0.1 5555 443\r\n")
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    info = json.loads(out.partition(b"\r\n\r\n")[2])
    assert dict(info["headers"])["X-Forwarded-For"] == "203.0.113.21"
    h2ctx = ssl.create_default_context(cafile=ca_pem)
    h2ctx.set_alpn_protocols(["h2"])
    c = Client(p.port, tls=HeaderFirst(h2ctx, v2_ip4("203.0.113.22", "127.0.0.1", 1, 443)))
    status, _, body = c.get("/echo")
    assert status == 200
    assert dict(json.loads(body)["headers"])["X-Forwarded-For"] == "203.0.113.22"


@ACCEPT_PATHS
def test_h2_prior_knowledge_after_header(run_proxy, origin, tmp_path, env):
    p = run_proxy(reverse(origin, tmp_path), env=env)
    c = Client(p.port, tls=HeaderFirst(None, b"PROXY TCP6 2001:db8::5 ::1 1 80\r\n"))
    status, _, body = c.get("/echo")
    assert status == 200
    assert dict(json.loads(body)["headers"])["X-Forwarded-For"] == "2001:db8::5"
    assert log_entries(tmp_path / "access.log", 1)[0]["client"] == "2001:db8::5"


def test_rate_limit_keys_on_header_address(run_proxy, origin, tmp_path):
    p = run_proxy(reverse(origin, tmp_path, rate_limit={"rate": 0.01, "burst": 1}))

    def status(client: str) -> bytes:
        out = talk(p.port, f"PROXY TCP4 {client} 127.0.0.1 1 80\r\n".encode()
                   + b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return out.split(b" ", 2)[1]

    assert status("203.0.113.1") == b"200"
    assert status("203.0.113.1") == b"429", "the same header client is over its rate"
    assert status("203.0.113.2") == b"200", "another header client has its own bucket"


def test_forward_acl_sees_header_address(run_proxy, origin, tmp_path):
    p = run_proxy({
        "listeners": [{"listen": "127.0.0.1:0", "mode": "forward", "allow_private": True,
                       "proxy_protocol": True, "proxy_protocol_from": LOOPBACK,
                       "acl": {"rules": [{"action": "deny", "name": "blocked",
                                          "clients": ["10.9.0.0/16"]}]}}],
        "access_log": {"path": str(tmp_path / "access.log"), "format": "json"}})
    req = f"GET {origin.url}/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    denied = talk(p.port, b"PROXY TCP4 10.9.0.7 127.0.0.1 1 3128\r\n" + req)
    public = talk(p.port, b"PROXY TCP4 203.0.113.7 127.0.0.1 1 3128\r\n" + req)
    allowed = talk(p.port, b"PROXY TCP4 10.1.2.3 127.0.0.1 1 3128\r\n" + req)
    assert denied.startswith(b"HTTP/1.1 403"), denied[:100]
    assert public.startswith(b"HTTP/1.1 403"), "a public client is not served by default"
    assert allowed.startswith(b"HTTP/1.1 200"), allowed[:100]
    clients = [e["client"] for e in log_entries(tmp_path / "access.log", 3)]
    assert clients == ["10.9.0.7", "203.0.113.7", "10.1.2.3"]


# --- tcp mode, both ways --------------------------------------------------------------------

class Recording(RawServer):
    """A tcp upstream that records what arrives on each connection, then echoes "ok"."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.lock = threading.Lock()
        super().__init__(Recording._handle)

    def _handle(self, s) -> None:
        data = b""
        while b"END" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        with self.lock:
            self.got.append(data)
        s.sendall(b"ok")


@pytest.fixture
def recording():
    server = Recording()
    yield server
    server.close()


def tcp_config(upstream_port: int, tmp_path, send_proxy=None, receive=False) -> dict:
    listener = {"listen": "127.0.0.1:0", "mode": "tcp", "upstream": "t"}
    if receive:
        listener.update(proxy_protocol=True, proxy_protocol_from=LOOPBACK)
    group = {"servers": [f"tcp://127.0.0.1:{upstream_port}"]}
    if send_proxy:
        group["send_proxy"] = send_proxy
    return {"listeners": [listener], "upstreams": {"t": group},
            "access_log": {"path": str(tmp_path / "access.log"), "format": "json"}}


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_tcp_sends_header(run_proxy, recording, tmp_path, version):
    p = run_proxy(tcp_config(recording.port, tmp_path, send_proxy=version))
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        me = s.getsockname()
        s.sendall(b"hello END")
        assert s.recv(10) == b"ok"
    got = recording.got[0]
    n, done = measure(got)
    assert done
    header = parse(got[:n])
    assert header.source == me
    assert header.dest == ("127.0.0.1", p.port)
    assert got[n:] == b"hello END"
    assert header.version == int(version[1])


def test_tcp_receives_and_passes_header_on(run_proxy, recording, tmp_path):
    """A tcp listener reading headers logs the header's client and, with send_proxy, tells
    the upstream the same client and destination (HAProxy's accept-proxy + send-proxy)."""
    p = run_proxy(tcp_config(recording.port, tmp_path, send_proxy="v2", receive=True))
    out = talk(p.port, b"PROXY TCP6 2001:db8::77 2001:db8::1 4444 5000\r\nping END")
    assert out == b"ok"
    got = recording.got[0]
    n, _ = measure(got)
    header = parse(got[:n])
    assert header.source == ("2001:db8::77", 4444, 0, 0)
    assert header.dest == ("2001:db8::1", 5000, 0, 0)
    assert got[n:] == b"ping END"
    assert log_entries(tmp_path / "access.log", 1)[0]["client"] == "2001:db8::77"


def test_tcp_listener_refuses_missing_header(run_proxy, recording, tmp_path):
    p = run_proxy(tcp_config(recording.port, tmp_path, receive=True))
    assert talk(p.port, b"ping END") == b""
    assert recording.got == []


def test_tcp_tls_listener_after_header(run_proxy, recording, tmp_path, certs):
    both, ca_pem = certs
    cfg = tcp_config(recording.port, tmp_path, send_proxy="v1", receive=True)
    cfg["listeners"][0]["tls"] = {"cert": both, "key": both}
    p = run_proxy(cfg)
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    raw.sendall(b"PROXY TCP4 203.0.113.30 127.0.0.1 3333 5000\r\n")
    ctx = ssl.create_default_context(cafile=ca_pem)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"secret END")
        assert s.recv(10) == b"ok"
    assert recording.got[0] == b"PROXY TCP4 203.0.113.30 127.0.0.1 3333 5000\r\nsecret END"


@pytest.mark.parametrize("version, local", [
    ("v1", b"PROXY UNKNOWN\r\n"), ("v2", V2_SIGNATURE + b"\x20\x00\x00\x00")])
def test_health_checks_of_send_proxy_group_send_local_header(run_proxy, tmp_path, version,
                                                              local):
    """The servers of a send_proxy group expect a header on every connection: the health
    check's says it speaks for no client (v2 LOCAL, v1 UNKNOWN), then comes its GET."""
    seen: list[bytes] = []

    def handler(server, s):
        data = b""
        while not (b"GET" in data and data.endswith(b"\r\n\r\n")):   # v2 has CRLFCRLF
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        seen.append(data)
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    upstream = RawServer(handler)
    try:
        cfg = tcp_config(upstream.port, tmp_path, send_proxy=version)
        cfg["upstreams"]["t"]["health"] = {"mode": "http", "interval": "1s"}
        run_proxy(cfg)
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        upstream.close()
    assert seen, "no health check arrived"
    assert seen[0].startswith(local + b"GET / HTTP/1.1\r\n"), seen[0][:80]


# --- configuration --------------------------------------------------------------------------

@pytest.mark.parametrize("listener, group, line", [
    ({"proxy_protocol": True}, {},
     "listeners[0].proxy_protocol_from: required with proxy_protocol = true"),
    ({"proxy_protocol": True, "proxy_protocol_from": []}, {},
     "listeners[0].proxy_protocol_from: required with proxy_protocol = true"),
    ({"proxy_protocol": True, "proxy_protocol_from": "10.0.0.0/8"}, {},
     "listeners[0].proxy_protocol_from: expected a list of networks"),
    ({"proxy_protocol": True, "proxy_protocol_from": ["10.0.0.300/8"]}, {},
     "listeners[0].proxy_protocol_from: [0]: "),
    ({"proxy_protocol_from": ["10.0.0.0/8"]}, {},
     "listeners[0].proxy_protocol_from: set proxy_protocol = true"),
    ({"proxy_protocol": "yes", "proxy_protocol_from": ["10.0.0.0/8"]}, {},
     "listeners[0].proxy_protocol: expected true or false"),
    ({}, {"send_proxy": "v3"}, "upstreams.app.send_proxy: expected one of v1, v2"),
    ({}, {"send_proxy": "v1"}, "upstreams.app.send_proxy: only for groups of tcp:// servers"),
])
def test_config_errors_name_the_key(tmp_path, listener, group, line):
    from fastproxy.testing import to_toml
    cfg = {"listeners": [{"listen": "127.0.0.1:0", "upstream": "app", **listener}],
           "upstreams": {"app": {"servers": ["http://127.0.0.1:9"], **group}}}
    path = tmp_path / "bad.toml"
    path.write_text(to_toml(cfg))
    r = subprocess.run([sys.executable, "-m", "fastproxy", "check", "--config", str(path)],
                       capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert r.returncode == 2, r.stderr
    problems = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(problems) == 1, r.stderr
    assert line in problems[0], r.stderr


# --- interoperability with HAProxy ----------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def haproxy(tmp_path):
    """Factory: a real HAProxy from a config body (global and defaults given), ready."""
    exe = shutil.which("haproxy")
    if exe is None:
        pytest.skip("haproxy not installed")
    procs = []

    def start(body: str, port: int):
        cfg = tmp_path / f"haproxy{len(procs)}.cfg"
        cfg.write_text("global\n  maxconn 256\ndefaults\n  timeout connect 5s\n"
                       "  timeout client 30s\n  timeout server 30s\n" + body)
        proc = subprocess.Popen([exe, "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.05)
        raise AssertionError("haproxy did not listen")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(5)


@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2"])
def test_haproxy_in_front(run_proxy, origin, tmp_path, haproxy, send):
    """HAProxy's send-proxy / send-proxy-v2 (with the source it was told to use) is read."""
    p = run_proxy(reverse(origin, tmp_path))
    port = free_port()
    haproxy(f"""frontend f
  mode http
  bind 127.0.0.1:{port}
  http-request set-src req.hdr(x-client)
  default_backend b
backend b
  mode http
  server s1 127.0.0.1:{p.port} {send}
""", port)
    headers = echo(port, b"", extra=b"X-Client: 203.0.113.99\r\n")
    assert headers["x-forwarded-for"] == "203.0.113.99"
    headers = echo(port, b"", extra=b"X-Client: 2001:db8::99\r\n")
    assert headers["x-forwarded-for"] == "2001:db8::99"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_haproxy_behind(run_proxy, tmp_path, haproxy, version):
    """HAProxy's accept-proxy reads what a tcp group's send_proxy writes: the client our tcp
    listener read from its own PROXY header."""
    port = free_port()
    haproxy(f"""frontend f
  mode http
  bind 127.0.0.1:{port} accept-proxy
  http-request return status 200 content-type text/plain lf-string "%ci %cp"
""", port)
    p = run_proxy(tcp_config(port, tmp_path, send_proxy=version, receive=True))
    out = talk(p.port, b"PROXY TCP4 203.0.113.5 127.0.0.1 4321 80\r\n"
                       b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200"), out[:200]
    assert out.partition(b"\r\n\r\n")[2] == b"203.0.113.5 4321"
