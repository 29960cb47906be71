"""What the access log says for a client that goes away while its request waits for the
upstream, over real sockets, on every kind of client connection.

A reset (RST) before the response is 499 (nginx's "client closed request"), and the
upstream request is dropped. A FIN is a client close on TLS (a bare FIN without
close_notify is a truncation) and HTTP/2 (the connection is over) and 499 there too; on
plain HTTP/1.1 it may be a half-close (RFC 9112 9.6: the client waits for its answer, as
`printf ... | nc -N` does), so the response is sent and logged as sent (HAProxy does the
same; nginx answers 499 and drops the response).
"""
from __future__ import annotations

import json
import socket
import ssl
import struct
import time

import pytest
from h2_helpers import END_HEADERS, END_STREAM, HEADERS, PREFACE, frame, settings

from fastproxy import _hpack

trustme = pytest.importorskip("trustme")

LINGER0 = struct.pack("ii", 1, 0)


@pytest.fixture
def proxy(run_proxy, origin, tmp_path):
    """(proxy, plain port, TLS port, client TLS context), JSON access log in tmp_path."""
    ca = trustme.CA()
    cert = ca.issue_cert("proxy.test")
    crt, key = tmp_path / "p.pem", tmp_path / "p.key"
    crt.write_bytes(b"".join(c.bytes() for c in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    p = run_proxy({"listeners": [{"listen": "127.0.0.1:0", "upstream": "app"},
                                 {"listen": "127.0.0.1:0", "upstream": "app",
                                  "tls": {"cert": str(crt), "key": str(key)}}],
                   "upstreams": {"app": {"servers": [origin.url]}},
                   "access_log": {"path": str(tmp_path / "access.log"), "format": "json"},
                   "pidfile": False}, listeners=2)
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["http/1.1"])
    return p, p.ports[0], p.ports[1], ctx


def _status_of(tmp_path, target: str, timeout: float = 5.0) -> int:
    path = tmp_path / "access.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record["target"] == target:
                    return record["status"]
        time.sleep(0.05)
    raise AssertionError(f"no access log line for {target}")


def _until_origin_has(origin, target: str) -> None:
    deadline = time.monotonic() + 10
    while origin.count(target) == 0:
        assert time.monotonic() < deadline, f"{target} never reached the origin"
        time.sleep(0.01)


@pytest.mark.parametrize("kind", ["plain", "tls", "h2"])
@pytest.mark.parametrize("how", ["fin", "rst"])
def test_a_client_gone_while_the_upstream_is_slow(proxy, origin, tmp_path, kind, how):
    p, plain, tls_port, ctx = proxy
    target = f"/slow/0.5?{kind}-{how}"
    raw = socket.create_connection(("127.0.0.1", tls_port if kind == "tls" else plain),
                                   timeout=10)
    s = ctx.wrap_socket(raw, server_hostname="proxy.test") if kind == "tls" else raw
    if kind == "h2":
        block = _hpack.Encoder().encode([(b":method", b"GET"), (b":scheme", b"http"),
                                         (b":path", target.encode()),
                                         (b":authority", b"x")])
        s.sendall(PREFACE + settings() + frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
    else:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    _until_origin_has(origin, target)
    if how == "rst":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        s.close()
        expected = 499
    elif kind == "plain":
        s.shutdown(socket.SHUT_WR)      # a half-close: the answer is still read
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        s.close()
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"slow\n"), got
        expected = 200
    else:
        s.close()                       # TLS: no close_notify; h2: the connection ends
        expected = 499
    assert _status_of(tmp_path, target) == expected
