"""HTTP/2 from clients through the proxy, over real sockets: prior knowledge on the
HTTP/1.1 port, ALPN h2 on TLS, every stream an exchange (RFC 9113)."""
from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time

import pytest
from h2_client import Client
from h2_helpers import (
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    PREFACE,
    RST_STREAM,
    frame,
    goaway_of,
    parse_frames,
    rst_of,
    settings,
)

from fastproxy import _hpack

curl = shutil.which("curl")
needs_curl = pytest.mark.skipif(curl is None, reason="curl is not installed")


def _curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([curl, "-sS", "--max-time", "10", *args], capture_output=True)


@needs_curl
def test_prior_knowledge_get_post_on_the_http1_port(reverse_proxy, origin):
    base = reverse_proxy.url
    out = _curl("--http2-prior-knowledge", "-w", "\n%{http_version}", f"{base}/echo")
    body, _, version = out.stdout.rpartition(b"\n")
    assert version == b"2"
    info = json.loads(body)
    assert info["version"] == "1.1" and info["target"] == "/echo"
    for query in ("", "?chunked=1", "?close=1"):
        out = _curl("--http2-prior-knowledge", f"{base}/size/100000{query}")
        assert out.returncode == 0 and len(out.stdout) == 100000, (query, out.stderr)
    payload = bytes(range(256)) * 1000
    for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
        out = subprocess.run([curl, "-sS", "--max-time", "10", "--http2-prior-knowledge",
                              "--data-binary", "@-", *extra, f"{base}/echo"],
                             input=payload, capture_output=True)
        assert out.returncode == 0, (extra, out.stderr)
        info = json.loads(out.stdout)
        assert info["body_len"] == len(payload)
        assert info["body_sha256"] == hashlib.sha256(payload).hexdigest()
    # HTTP/1.1 still answered on the same port.
    out = _curl("--http1.1", f"{base}/size/3")
    assert out.stdout == b"012"


def test_preface_in_pieces_and_many_concurrent_streams(reverse_proxy, origin):
    c = Client(reverse_proxy.port)
    try:
        sizes = [1 + 997 * i for i in range(100)]
        sids = [c.request(f"/size/{n}" + ("?chunked=1" if n % 2 else "")) for n in sizes]
        c.run(lambda: all(c.finished(s) for s in sids))
        for sid, n in zip(sids, sizes):
            assert c.headers[sid][b":status"] == b"200"
            assert len(c.bodies[sid]) == n
        assert not c.resets
    finally:
        c.close()
    # The preface split across writes still switches the connection to HTTP/2.
    s = socket.create_connection(("127.0.0.1", reverse_proxy.port), timeout=10)
    try:
        for piece in (PREFACE[:5], PREFACE[5:18], PREFACE[18:]):
            s.sendall(piece)
            time.sleep(0.05)
        s.sendall(settings())
        reply = s.recv(65536)
        assert parse_frames(reply)[0][0] == 4    # SETTINGS, not an HTTP/1.1 505
    finally:
        s.close()


def test_post_with_trailers_and_interim_and_errors(reverse_proxy, origin):
    c = Client(reverse_proxy.port)
    try:
        status, _, body = c.get("/echo", method="POST", body=b"x" * 60000,
                                extra=[("te", "trailers")], trailers=[("x-sum", "1")])
        info = json.loads(body)
        assert status == 200 and info["body_len"] == 60000
        status, _, _ = c.get("/interim")
        assert status == 200
        status, _, _ = c.get("/status/404")
        assert status == 404
        # The origin closes without answering: 502 on that stream, the connection lives.
        status, _, body = c.get("/drop")
        assert status == 502
        status, _, _ = c.get("/size/1")
        assert status == 200
    finally:
        c.close()


def test_upstream_down_is_502_and_timeout_504(start_proxy, tmp_path):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", f"http://127.0.0.1:{port}")
    c = Client(p.port)
    try:
        assert c.get("/x")[0] == 502
    finally:
        c.close()


def test_slow_upstream_504(start_proxy, origin, tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text(f"""
[timeouts]
upstream_header = "0.5s"
[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
[upstreams.app]
servers = ["{origin.url}"]
""")
    p = start_proxy("serve", "--config", str(cfg))
    c = Client(p.port)
    try:
        assert c.get("/slow/3")[0] == 504
    finally:
        c.close()


@pytest.mark.parametrize("size", [None, 300 << 10])   # a large hit: a pinned arena view
def test_cache_hit_on_a_stream(start_proxy, origin, size):
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", origin.url, "--cache", "64MiB")
    c = Client(p.port)
    target = "/c/h2hit?cc=max-age%3D60" + (f"&size={size}" if size else "")
    try:
        first = c.get(target)
        second = c.get(target)
        assert first[0] == second[0] == 200 and first[2] == second[2]
        assert size is None or len(second[2]) == size
        assert origin.count(target) == 1
    finally:
        c.close()


def test_forward_proxy_request_and_connect_over_h2(start_proxy, origin):
    p = start_proxy("serve", "--mode", "forward", "--listen", "127.0.0.1:0",
                    "--allow-private", "--connect-ports", str(origin.port))
    c = Client(p.port)
    try:
        status, _, body = c.get("/size/7", authority=f"127.0.0.1:{origin.port}")
        assert (status, body) == (200, b"0123456")
        # RFC 9113 8.5: CONNECT on a stream; its DATA frames are the tunnel.
        sid = c.h2.get_next_available_stream_id()
        c.h2.send_headers(sid, [(b":method", b"CONNECT"),
                                (b":authority", f"127.0.0.1:{origin.port}".encode())])
        c.flush()
        c.run(lambda: sid in c.headers)
        assert c.headers[sid][b":status"] == b"200"
        c.h2.send_data(sid, b"GET /size/5 HTTP/1.1\r\nHost: x\r\n\r\n")
        c.flush()
        c.run(lambda: c.bodies[sid].endswith(b"01234"))
        assert c.bodies[sid].startswith(b"HTTP/1.1 200")
        # The client ends its side; the origin closes; the stream ends cleanly.
        c.h2.send_data(sid, b"GET /size/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                       end_stream=True)
        c.flush()
        c.run(lambda: c.finished(sid))
        assert sid not in c.resets and c.bodies[sid].endswith(b"012")
        # And the connection still serves other streams.
        assert c.get("/size/2", authority=f"127.0.0.1:{origin.port}")[2] == b"01"
    finally:
        c.close()


def test_server_wide_options_over_h2_through_the_forward_proxy(start_proxy, origin):
    # RFC 9113 8.3.1: ":path *" is OPTIONS for the server itself; the next hop gets
    # "OPTIONS * HTTP/1.1" (RFC 9112 3.2.4). It was a 400 (bad_authority: the head said
    # "OPTIONS http://host:port* HTTP/1.1").
    p = start_proxy("serve", "--mode", "forward", "--listen", "127.0.0.1:0", "--allow-private")
    c = Client(p.port)
    try:
        status, _, _ = c.get("*", method="OPTIONS", authority=f"127.0.0.1:{origin.port}")
        assert status != 400 and origin.requests[-1][:2] == (b"OPTIONS", b"*")
        c.get("/size/1", method="OPTIONS", authority=f"127.0.0.1:{origin.port}")
        assert origin.requests[-1][:2] == (b"OPTIONS", b"/size/1")
    finally:
        c.close()


def test_connect_over_h2_refused_port_and_reverse_mode(start_proxy, origin, reverse_proxy):
    p = start_proxy("serve", "--mode", "forward", "--listen", "127.0.0.1:0", "--allow-private")
    for port in (p.port, reverse_proxy.port):
        c = Client(port)
        try:
            sid = c.h2.get_next_available_stream_id()
            c.h2.send_headers(sid, [(b":method", b"CONNECT"),
                                    (b":authority", f"127.0.0.1:{origin.port}".encode())])
            c.flush()
            c.run(lambda: c.finished(sid))
            assert int(c.headers[sid][b":status"]) >= 400
        finally:
            c.close()


def test_client_reset_mid_response_frees_the_stream(reverse_proxy, origin):
    c = Client(reverse_proxy.port)
    try:
        sid = c.request("/slowbody/50")
        c.run(lambda: sid in c.headers)
        c.h2.reset_stream(sid)
        c.flush()
        # The connection goes on; the proxy logs 499 for the cut stream.
        assert c.get("/size/5")[2] == b"01234"
    finally:
        c.close()


def _goaways(buf: bytes) -> list[tuple[int, int]]:
    return [struct.unpack(">II", p[:8]) for t, _f, _s, p in parse_frames(buf) if t == GOAWAY]


def _read_to_close(s: socket.socket) -> bytes:
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return got
        got += chunk


def test_goaway_on_graceful_stop(start_proxy, origin):
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", origin.url)
    enc = _hpack.Encoder()
    block = enc.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/slow/1"),
                        (b":authority", b"localhost")])
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    try:
        s.sendall(PREFACE + settings() + frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
        time.sleep(0.3)
        p.signal(signal.SIGTERM)
        # This client never answers PINGs: the final GOAWAY comes after the bound.
        got = _read_to_close(s)
    finally:
        s.close()
    frames = parse_frames(got)
    # RFC 9113 6.8: first a GOAWAY naming no stream, then NO_ERROR naming stream 1 as
    # processed; its response completes.
    assert _goaways(got) == [(0x7fffffff, 0), (1, 0)]
    assert any(f[0] == HEADERS and f[2] == 1 for f in frames)
    assert any(f[0] == 0 and f[2] == 1 and f[1] & END_STREAM for f in frames)
    assert p.stop() == 0


def test_a_stream_opened_before_the_client_saw_the_goaway_is_served(start_proxy, origin):
    # The race the two-step GOAWAY exists for: a stream on its way when the stop began.
    # With one GOAWAY naming stream 1, stream 3 (sent before the client could know) was
    # dropped unprocessed.
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", origin.url)
    enc = _hpack.Encoder()

    def get(sid: int, path: bytes) -> bytes:
        return frame(HEADERS, END_HEADERS | END_STREAM, sid,
                     enc.encode([(b":method", b"GET"), (b":scheme", b"http"),
                                 (b":path", path), (b":authority", b"localhost")]))

    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    try:
        s.sendall(PREFACE + settings() + get(1, b"/slow/1"))
        time.sleep(0.3)
        p.signal(signal.SIGTERM)
        got = b""
        while not any(f[0] == PING for f in parse_frames(got)):
            chunk = s.recv(65536)
            assert chunk, "closed before the graceful stop's PING"
            got += chunk
        opaque = next(f[3] for f in parse_frames(got) if f[0] == PING)
        s.sendall(get(3, b"/size/7") + frame(PING, 1, 0, opaque))   # then the PING's ACK
        got += _read_to_close(s)
    finally:
        s.close()
    frames = parse_frames(got)
    assert _goaways(got) == [(0x7fffffff, 0), (3, 0)]
    assert b"".join(f[3] for f in frames if f[0] == 0 and f[2] == 3) == b"0123456"
    assert any(f[0] == 0 and f[2] == 1 and f[1] & END_STREAM for f in frames)
    assert p.stop() == 0


def _raw(port: int, *frames: bytes, wait: float = 1.0) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(PREFACE + settings() + b"".join(frames))
    got = b""
    deadline = time.monotonic() + wait
    s.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    s.close()
    return got


BAD_REQUESTS = {
    # RFC 9113 8.2.1: field names are lowercase
    "uppercase": [(b"X-Bad", b"1")],
    # RFC 9113 8.2.2: connection-specific fields, te other than trailers
    "connection": [(b"connection", b"close")],
    "transfer-encoding": [(b"transfer-encoding", b"chunked")],
    "te": [(b"te", b"gzip")],
    # RFC 9113 8.2.1: CR, LF, NUL in a value
    "crlf": [(b"x-a", b"a\r\nx-smuggled: 1")],
    # RFC 9113 8.3.1: :authority and host disagree
    "host": [(b"host", b"other.example")],
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_malformed_request_is_a_stream_error_never_forwarded(reverse_proxy, origin, case):
    enc = _hpack.Encoder()
    block = enc.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/bad-" +
                        case.encode()), (b":authority", b"localhost")] + BAD_REQUESTS[case])
    got = _raw(reverse_proxy.port, frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
    assert rst_of(got) == {1: 1}     # RST_STREAM PROTOCOL_ERROR
    assert origin.count("/bad-" + case) == 0


def test_content_length_disagreeing_with_data_never_completes_upstream(reverse_proxy, origin):
    # RFC 9113 8.1.1: content-length 10, 3 bytes of DATA then END_STREAM.
    enc = _hpack.Encoder()
    block = enc.encode([(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/echo?cl"),
                        (b":authority", b"localhost"), (b"content-length", b"10")])
    got = _raw(reverse_proxy.port, frame(HEADERS, END_HEADERS, 1, block),
               frame(0, END_STREAM, 1, b"abc"))
    assert rst_of(got).get(1) == 1
    assert origin.count("/echo?cl") == 0     # the origin never got a complete request


def test_rapid_reset_ends_in_goaway_enhance_your_calm(reverse_proxy, origin):
    # CVE-2023-44487: streams opened and reset at once, far past the reset rate.
    enc = _hpack.Encoder()
    frames = []
    for i in range(1500):
        sid = 1 + 2 * i
        block = enc.encode([(b":method", b"GET"), (b":scheme", b"http"),
                            (b":path", b"/slow/1"), (b":authority", b"localhost")])
        frames.append(frame(HEADERS, END_HEADERS | END_STREAM, sid, block))
        frames.append(frame(RST_STREAM, 0, sid, (8).to_bytes(4, "big")))
    got = _raw(reverse_proxy.port, *frames, wait=2.0)
    assert goaway_of(got)[1] == 0xb
    assert origin.count("/slow/1") < 1500


def test_continuation_flood_ends_in_goaway(reverse_proxy):
    # CVE-2024-27316: a header block that never ends.
    enc = _hpack.Encoder()
    block = enc.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                        (b":authority", b"localhost")])
    # 800 KB: past the wire limit of a block (4x max_header_size, at least 512 KiB).
    frames = [frame(HEADERS, 0, 1, block)] + [frame(9, 0, 1, b"x-a: " + b"b" * 4000)] * 200
    got = _raw(reverse_proxy.port, *frames)
    assert goaway_of(got)[1] == 0xb


def test_ping_flood_from_a_peer_that_does_not_read(reverse_proxy):
    # A peer that sends PINGs and never reads: the proxy stops reading it once its
    # replies are not taken (else they pile up in memory), or ends it with GOAWAY.
    s = socket.create_connection(("127.0.0.1", reverse_proxy.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    ping = frame(6, 0, 0, b"12345678")
    burst = ping * 10000
    s.settimeout(3)
    sent = 0
    try:
        s.sendall(PREFACE + settings() + ping)
        reply = b""
        while not any(f[0] == 6 and f[1] & 1 for f in parse_frames(reply)):
            reply += s.recv(65536)     # an HTTP/2 connection: the first PING is answered
        with pytest.raises((socket.timeout, ConnectionError)):
            for _ in range(200):          # 34 MB of PINGs at most
                s.sendall(burst)
                sent += len(burst)
    finally:
        s.close()
    assert sent < 200 * len(burst)


def test_zero_window_stall_bounded_by_idle_timeout(start_proxy, origin, tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text(f"""
[timeouts]
client_idle = "1s"
[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
[upstreams.app]
servers = ["{origin.url}"]
""")
    p = start_proxy("serve", "--config", str(cfg))
    c = Client(p.port, window=0)
    c.auto_ack = False
    try:
        sid = c.request("/size/200000")
        t0 = time.monotonic()
        c.run(lambda: c.goaway is not None or c.closed or sid in c.resets, timeout=8)
        # The response started (headers need no window) and then stalled until the
        # idle timeout ended the connection.
        assert c.headers[sid][b":status"] == b"200" and not c.bodies[sid]
        assert 0.7 < time.monotonic() - t0 < 6
    finally:
        c.close()


@pytest.fixture
def tls_certs(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_pem, key_pem, ca_pem = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert_pem.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    return cert_pem, key_pem, ca_pem


def test_tls_alpn_h2_and_http11(start_proxy, origin, tls_certs):
    cert_pem, key_pem, ca_pem = tls_certs
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", origin.url, "--tls-cert", str(cert_pem),
                    "--tls-key", str(key_pem))
    ctx = ssl.create_default_context(cafile=str(ca_pem))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    c = Client(p.port, tls=ctx)
    try:
        status, _, body = c.get("/echo", scheme="https")
        assert status == 200
        headers = {n.lower(): v for n, v in json.loads(body)["headers"]}
        assert headers["x-forwarded-proto"] == "https"
    finally:
        c.close()
    httpx = pytest.importorskip("httpx")
    with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=str(ca_pem))) as hc:
        rs = [hc.get(f"https://localhost:{p.port}/size/{n}") for n in (1, 70000, 3)]
        assert [(r.http_version, len(r.content)) for r in rs] == \
            [("HTTP/2", 1), ("HTTP/2", 70000), ("HTTP/2", 3)]
    if curl:
        url = f"https://localhost:{p.port}/size/10"
        for flag, want in (("--http2", b"2"), ("--http1.1", b"1.1")):
            out = _curl("--cacert", str(ca_pem), "--resolve", f"localhost:{p.port}:127.0.0.1",
                        flag, "-w", "|%{http_version}", url)
            assert out.stdout == b"0123456789|" + want, out.stderr


def test_tls_flags_need_both(tmp_path):
    import sys
    out = subprocess.run([sys.executable, "-m", "fastproxy", "check", "--mode", "reverse",
                          "--upstream", "http://127.0.0.1:1", "--tls-cert", "x.pem"],
                         capture_output=True, text=True, cwd=str(tmp_path))
    assert out.returncode == 2 and "--tls-key" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "fastproxy", "check", "--mode", "reverse",
                          "--upstream", "http://127.0.0.1:1", "--tls-cert", "x.pem",
                          "--tls-key", "y.pem"], capture_output=True, text=True, cwd=str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["fastproxy: --tls-cert x.pem: no such file: x.pem",
                                       "fastproxy: --tls-key y.pem: no such file: y.pem"]


@pytest.mark.skipif(not shutil.which("h2load"), reason="h2load (nghttp2-client) is not installed")
def test_h2load_bounded_run_all_succeed(reverse_proxy):
    out = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "16",
                          f"{reverse_proxy.url}/size/100"], capture_output=True, text=True,
                         timeout=60)
    assert "2000 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout
    out = subprocess.run(["nghttp", "-n", "--no-dep", f"{reverse_proxy.url}/size/10",
                          f"{reverse_proxy.url}/echo"], capture_output=True, timeout=30)
    assert out.returncode == 0


def test_access_log_says_http2(start_proxy, origin, tmp_path):
    log = tmp_path / "access.log"
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", origin.url, "--access-log", str(log))
    c = Client(p.port)
    try:
        c.get("/size/2")
    finally:
        c.close()
    p.stop()
    assert '"GET /size/2 HTTP/2.0" 200' in log.read_text()


def _via(info: dict) -> list[str]:
    return [v for n, v in info["headers"] if n.lower() == "via"]


@needs_curl
def test_via_names_the_received_protocol_2(reverse_proxy, start_proxy, origin):
    # RFC 9110 7.6.3: received-protocol is the version the request came in: "2" for
    # HTTP/2 (RFC 9113 3), whatever the proxy speaks upstream.
    base = reverse_proxy.url
    out = _curl("--http2-prior-knowledge", f"{base}/echo")
    assert out.returncode == 0, out.stderr
    assert _via(json.loads(out.stdout)) == ["2 fastproxy"]
    # The Python handler (OPTIONS with Max-Forwards skips the compiled fast path) too.
    out = _curl("--http2-prior-knowledge", "-H", "Max-Forwards: 5", "-X", "OPTIONS",
                f"{base}/echo")
    assert out.returncode == 0 and _via(json.loads(out.stdout)) == ["2 fastproxy"]
    out = _curl("--http1.1", f"{base}/echo")
    assert _via(json.loads(out.stdout)) == ["1.1 fastproxy"]
    out = _curl("--http1.0", f"{base}/echo")
    assert _via(json.loads(out.stdout)) == ["1.0 fastproxy"]
    # A forward listener (the anonymity rules add Via) over HTTP/2.
    p = start_proxy("serve", "--mode", "forward", "--listen", "127.0.0.1:0",
                    "--allow-private")
    c = Client(p.port)
    try:
        # Twice: the second comes from the memoised admission (the compiled forward path,
        # which said "1.0" for an HTTP/2 stream), then once more after an HTTP/1.1 one.
        for _ in range(2):
            status, _, body = c.get("/echo", authority=f"127.0.0.1:{origin.port}")
            assert status == 200 and _via(json.loads(body)) == ["2 fastproxy"]
        out = _curl("--http1.1", "-x", f"http://127.0.0.1:{p.port}", f"{origin.url}/echo")
        assert _via(json.loads(out.stdout)) == ["1.1 fastproxy"]
        status, _, body = c.get("/echo", authority=f"127.0.0.1:{origin.port}")
        assert status == 200 and _via(json.loads(body)) == ["2 fastproxy"]
    finally:
        c.close()


def test_streams_one_after_another_share_nothing(start_proxy, origin, tmp_path):
    # A finished stream's relay serves the next stream of the connection (as a kept-alive
    # HTTP/1.1 connection serves its next request): nothing of one exchange may leak into
    # the next (HEAD's missing body, a request body, gRPC's unbuffered body, errors).
    log = tmp_path / "access.log"
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", origin.url, "--access-log", str(log))
    c = Client(p.port)
    try:
        for _ in range(2):
            status, h, body = c.get("/size/10", method="HEAD")
            assert (status, body) == (200, b"") and h[b"content-length"] == b"10"
            assert c.get("/size/10") == (200, c.headers[c.h2.highest_outbound_stream_id],
                                         b"0123456789")
            status, _, body = c.get("/echo", method="POST", body=b"x" * 30000)
            info = json.loads(body)
            assert (status, info["method"], info["body_len"]) == (200, "POST", 30000)
            status, _, body = c.get("/echo", method="POST", body=b"abc",
                                    extra=[("content-type", "application/grpc")])
            assert json.loads(body)["body_len"] == 3
            assert c.get("/size/5?chunked=1")[2] == b"01234"
            status, _, body = c.get("/echo")
            info = json.loads(body)
            assert (info["method"], info["body_len"]) == ("GET", 0)
            assert _via(info) == ["2 fastproxy"]
        # Many at once, then one by one again.
        sids = [c.request(f"/size/{n}") for n in range(1, 60)]
        c.run(lambda: all(c.finished(s) for s in sids))
        assert [len(c.bodies[s]) for s in sids] == list(range(1, 60))
        assert c.get("/size/3")[2] == b"012"
    finally:
        c.close()
    p.stop()
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * 6 + 59 + 1
    assert sum('"HEAD /size/10 HTTP/2.0" 200' in line for line in lines) == 2
    assert sum('"POST /echo HTTP/2.0" 200' in line for line in lines) == 4


def test_streams_beyond_max_concurrent_are_refused(reverse_proxy, origin):
    # RFC 9113 5.1.2: we announce 128; the 129th and 130th open streams are refused
    # (REFUSED_STREAM: never processed, safe to retry) and never reach the origin.
    enc = _hpack.Encoder()
    frames = []
    for i in range(130):
        block = enc.encode([(b":method", b"GET"), (b":scheme", b"http"),
                            (b":path", b"/slow/1?%d" % i), (b":authority", b"localhost")])
        frames.append(frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i, block))
    got = _raw(reverse_proxy.port, *frames, wait=0.5)
    assert rst_of(got) == {257: 7, 259: 7}
    time.sleep(1.5)
    assert origin.count("/slow/1?128") == origin.count("/slow/1?129") == 0


def test_buffered_bytes_bounded_when_the_client_opens_no_window(reverse_proxy, origin):
    # 120 large downloads on one connection whose client grants no window: what the
    # proxy holds for it is bounded (64 KiB a stream, 1 MiB the connection), the
    # upstreams wait instead; every stream still gets its response head.
    c = Client(reverse_proxy.port, window=0)
    c.auto_ack = False
    try:
        rss0 = reverse_proxy.rss_kib()
        sids = [c.request(f"/size/{4_000_000 + i}") for i in range(120)]
        c.run(lambda: all(s in c.headers for s in sids), timeout=20)
        time.sleep(1.5)
        grown = reverse_proxy.rss_kib() - rss0
        assert grown < 24 * 1024, f"RSS grew {grown} KiB"
    finally:
        c.close()


def test_response_trailers_become_h2_trailers(start_proxy):
    # A chunked HTTP/1.1 response with trailers (as a gRPC-over-HTTP/1.1 bridge sends
    # grpc-status): the client gets DATA, then a trailing HEADERS frame ending the stream.
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def serve():
        conn, _ = srv.accept()
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n"
                         b"\r\n5\r\nhello\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n")
            time.sleep(1)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", f"http://127.0.0.1:{port}")
    c = Client(p.port)
    try:
        status, _, body = c.get("/x", extra=[("te", "trailers")])
        assert (status, body) == (200, b"hello")
        assert c.trailers[1] == {b"grpc-status": b"0", b"grpc-message": b"ok"}
    finally:
        c.close()
        srv.close()


def test_response_fields_lowercased_and_connection_fields_dropped(start_proxy):
    # RFC 9113 8.2.1/8.2.2: an HTTP/1.1 response's names go out lowercase, and the
    # connection-specific fields (and those its Connection field names) never do; the
    # `h2` client treats either as a protocol error.
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    answers = [b"HTTP/1.1 200 OK\r\nX-Mixed-Case: A b \r\nKeep-Alive: timeout=5\r\n"
               b"Proxy-Connection: keep-alive\r\nUpgrade: foo\r\nTE: trailers\r\n"
               b"Content-Length: 2\r\nETag: \"x\"\r\n\r\nok",
               b"HTTP/1.1 201 Created\r\nConnection: X-Hop\r\nX-Hop: 1\r\nX-Kept: 2\r\n"
               b"Content-Length: 0\r\n\r\n"]

    def serve():
        conn, _ = srv.accept()
        with conn:
            for answer in answers:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    buf += conn.recv(65536)
                conn.sendall(answer)
            time.sleep(1)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", f"http://127.0.0.1:{port}")
    c = Client(p.port)
    try:
        status, headers, body = c.get("/a")
        assert (status, body) == (200, b"ok")
        assert headers[b"x-mixed-case"] == b"A b" and headers[b"etag"] == b'"x"'
        hop = {b"connection", b"keep-alive", b"proxy-connection", b"upgrade", b"te",
               b"transfer-encoding"}
        assert not hop & set(headers)
        status, headers, body = c.get("/b")
        assert status == 201 and headers[b"x-kept"] == b"2"
        assert not (hop | {b"x-hop"}) & set(headers)
    finally:
        c.close()
        srv.close()


def test_hpack_bomb_is_a_stream_error_and_the_connection_lives(reverse_proxy, origin):
    # RFC 7541 7.3 / RFC 9113 6.5.2: a 4 KB field entered once in the dynamic table and
    # then referenced by one-byte indexes decodes to 80 KB, over the 64 KiB header list
    # limit: that stream gets a 431 (RFC 9113 8.1 / 10.5.1), nothing is forwarded, the
    # next stream is served.
    enc = _hpack.Encoder()
    base = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"localhost")]
    # Literal with incremental indexing, new name "x-big", 4000-byte value (RFC 7541
    # 6.2.1; length 4000 = 127 + 3873 as a 7-bit prefix integer), then 19 references to
    # dynamic entry 62 (6.1).
    literal = b"\x40\x05x-big\x7f\xa1\x1e" + b"a" * 4000
    bomb = enc.encode([*base, (b":path", b"/bomb")]) + literal + b"\xbe" * 19
    assert len(bomb) < 4200
    # The next request uses the static table only (our encoder's view of the dynamic
    # table no longer matches the peer's after the hand-made entry).
    ok = b"\x82\x86\x04\x07/size/2\x01\x09localhost"
    got = _raw(reverse_proxy.port, frame(HEADERS, END_HEADERS | END_STREAM, 1, bomb),
               frame(HEADERS, END_HEADERS | END_STREAM, 3, ok))
    assert goaway_of(got) is None and not rst_of(got)
    first = next(f for f in parse_frames(got) if f[0] == HEADERS)
    assert first[2] == 1 and dict(_hpack.Decoder().decode(first[3]))[b":status"] == b"431"
    assert any(f[0] == 0 and f[2] == 3 and f[3] == b"01" for f in parse_frames(got))
    assert origin.count("/bomb") == 0


def test_connection_without_streams_closed_after_client_idle(start_proxy, origin, tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text(f"""
[timeouts]
client_idle = "1s"
[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
[upstreams.app]
servers = ["{origin.url}"]
""")
    p = start_proxy("serve", "--config", str(cfg))
    t0 = time.monotonic()
    got = _raw(p.port, wait=5.0)
    assert goaway_of(got) == (0, 0)
    assert 0.7 < time.monotonic() - t0 < 4.5


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt install chromium)")
def test_headless_chromium_over_tls_gets_the_page_by_h2(start_proxy, origin, tls_certs, tmp_path):
    cert_pem, key_pem, _ = tls_certs
    log = tmp_path / "access.log"
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", origin.url, "--tls-cert", str(cert_pem),
                    "--tls-key", str(key_pem), "--access-log", str(log), "--log-format", "json")
    # The test CA is not in Chromium's store: it is told to accept this certificate.
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           "--ignore-certificate-errors", "--virtual-time-budget=5000", "--dump-dom",
           f"https://localhost:{p.port}/page.html"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert "script ran; image loaded" in out.stdout, out.stderr[-2000:]
    want = {"/page.html", "/script.js", "/img.png"}
    seen: dict = {}
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not want <= set(seen):
        if log.exists():
            seen = {r["target"]: r["version"] for r in map(json.loads, log.read_text().splitlines())}
        time.sleep(0.1)
    assert {t: seen.get(t) for t in want} == dict.fromkeys(want, "HTTP/2.0")


def test_streams_do_not_count_as_connections(run_proxy, origin):
    # max_connections counts client connections: one HTTP/2 connection with 4 streams in
    # flight is one, so a second client is served at once (each stream's relay used to
    # count too, idle ones included: the second client waited in the backlog).
    from conftest import reverse_config
    from wire import crlf, request
    p = run_proxy(reverse_config(origin.url, limits={"max_connections": 2}))
    c = Client(p.port)
    try:
        sids = [c.request(f"/slow/1.5?s={i}") for i in range(4)]
        end = time.monotonic() + 5
        while len(origin.requests) < 4 and time.monotonic() < end:
            time.sleep(0.02)
        t0 = time.monotonic()
        r = request(p.port, crlf("GET /size/3 HTTP/1.1\nHost: x\n\n"))
        assert (r.status, r.body) == (200, b"012")
        assert time.monotonic() - t0 < 1.0, "the second client waited for the streams"
        assert not any(c.finished(s) for s in sids)
        c.run(lambda: all(c.finished(s) for s in sids), timeout=10)
        assert all(c.headers[s][b":status"] == b"200" for s in sids)
    finally:
        c.close()
