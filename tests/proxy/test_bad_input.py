"""Requests and responses a proxy must not pass on as they are (issue 10, "bad input").

- Upgrade is tunnelled only for the listener's `upgrade` protocols (websocket by default);
  any other offer is forwarded as a plain request with Upgrade removed (RFC 9110 7.8), and
  h2c never (RFC 9113 3.1 deprecates it; tunnelling it lets a client speak HTTP/2 to the
  upstream past every route and rule).
- Trailer fields that must not be sent as trailers (RFC 9110 6.5.1) are dropped in both
  directions, the others kept byte for byte, the chunked framing intact.
- An HTTP/1.0 request with Expect: 100-continue is served, the expectation ignored
  (RFC 9110 10.1.1).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from conftest import PKG_PARENT, reverse_config
from wire import Conn, RawServer, crlf


def read_response_head(c: Conn) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def upgrade_origin(server, s):
    """101 for any Upgrade offer (then echoes bytes); a plain 200 otherwise."""
    while True:
        head, rest = server.read_head(s)
        lower = head.lower()
        if b"\r\nupgrade:" in lower or b"/force101" in lower:
            proto = b"h2c" if b"h2c" in lower else b"foo"
            s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + proto +
                      b"\r\nConnection: Upgrade\r\n\r\n" + rest)
            while True:
                data = s.recv(65536)
                if not data:
                    return
                s.sendall(data)
        body = b"plain"
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.fixture
def up_origin():
    server = RawServer(upgrade_origin)
    yield server
    server.close()


def reverse_cfg(url: str, **listener) -> dict:
    """A reverse listener (port 0) with `listener` settings, to group "app" of `url`."""
    cfg = reverse_config(url)
    cfg["listeners"][0].update(listener)
    return cfg


H2C = ("GET /x HTTP/1.1\nHost: h\nConnection: Upgrade, HTTP2-Settings\nUpgrade: h2c\n"
       "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\n\n")


@pytest.mark.parametrize("listener", [{}, {"upgrade": ["websocket", "foo"]}])
def test_h2c_upgrade_is_never_tunnelled(run_proxy, up_origin, listener):
    p = run_proxy(reverse_cfg(up_origin.url, **listener))
    with Conn(p.port) as c:
        for _ in range(2):  # a plain exchange: the connection stays usable
            c.send(crlf(H2C))
            r = c.response()
            assert (r.status, r.body) == (200, b"plain")
    head = up_origin.received[-1].lower()
    assert b"upgrade" not in head and b"http2-settings" not in head


def test_unlisted_protocol_goes_as_a_plain_request(run_proxy, up_origin):
    p = run_proxy(reverse_cfg(up_origin.url))
    with Conn(p.port) as c:
        c.send(crlf("GET /x HTTP/1.1\nHost: h\nConnection: upgrade\nUpgrade: foo/2\n\n"))
        r = c.response()
        assert (r.status, r.body) == (200, b"plain")
    assert b"upgrade" not in up_origin.received[-1].lower()


def test_listed_protocol_is_tunnelled_and_the_offer_filtered(run_proxy, up_origin):
    p = run_proxy(reverse_cfg(up_origin.url, upgrade=["websocket", "foo"]))
    with Conn(p.port) as c:
        c.send(crlf("GET /x HTTP/1.1\nHost: h\nConnection: upgrade\nUpgrade: h2c, Foo/2\n\n"))
        head = read_response_head(c)
        assert head.startswith(b"HTTP/1.1 101")
        c.sock.sendall(b"bytes both ways")
        got = head.partition(b"\r\n\r\n")[2]
        while len(got) < 15:
            got += c.sock.recv(100)
        assert got == b"bytes both ways"
    fields = up_origin.received[-1].lower().split(b"\r\n")
    assert b"upgrade: foo/2" in fields and b"connection: upgrade" in fields


def test_switching_protocols_without_a_forwarded_offer_is_502(run_proxy, up_origin):
    p = run_proxy(reverse_cfg(up_origin.url))
    with Conn(p.port) as c:
        c.send(crlf("GET /force101 HTTP/1.1\nHost: h\nConnection: upgrade\nUpgrade: h2c\n\n"))
        assert c.response().status == 502


def test_forward_proxy_does_not_tunnel_h2c(run_proxy, up_origin):
    p = run_proxy({"listeners": [{"mode": "forward", "allow_private": True}]})
    with Conn(p.port) as c:
        c.send(crlf(H2C.replace("/x", f"http://127.0.0.1:{up_origin.port}/x")))
        r = c.response()
        assert (r.status, r.body) == (200, b"plain")
    assert b"upgrade" not in up_origin.received[-1].lower()


@pytest.mark.parametrize("value,problem", [
    ('["h2c"]', "h2c is never tunnelled"), ('"websocket"', "expected a list"),
    ('["web socket"]', "HTTP tokens")])
def test_upgrade_config_errors_name_the_key(tmp_path, value, problem):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[[listeners]]\nlisten = "127.0.0.1:0"\nupstream = "a"\nupgrade = {value}\n'
                   '[upstreams.a]\nservers = ["http://127.0.0.1:9"]\n')
    r = subprocess.run([sys.executable, "-m", "fastproxy", "check", "--config", str(cfg)],
                       capture_output=True, text=True, cwd=str(tmp_path),
                       env={"PYTHONPATH": PKG_PARENT}, timeout=30)
    assert r.returncode == 2
    assert "listeners[0].upgrade: " in r.stderr
    assert problem in r.stderr.split("listeners[0].upgrade: ", 1)[1]
    assert "Traceback" not in r.stderr


# -- trailers (RFC 9110 6.5.1) ------------------------------------------------------

KEPT = b"X-Checksum: abc\r\nServer-Timing: db;dur=53\r\n"
FORBIDDEN = (b"Content-Length: 9\r\nTransfer-Encoding: gzip\r\nHost: evil.example\r\n"
             b"Authorization: Basic Zm9vOmJhcg==\r\nSet-Cookie: a=b\r\nCache-Control: no-store\r\n"
             b"Content-Type: text/evil\r\nContent-Encoding: gzip\r\nTrailer: X\r\n"
             b"Connection: close\r\nMax-Forwards: 0\r\nLocation: /elsewhere\r\n")


def trailer_origin(server, s):
    """Reads a chunked request to its end (kept in server.bodies), answers chunked with
    the trailers in server.trailers, the last piece sent in small parts."""
    while True:
        head, rest = server.read_head(s)
        body, _ = server.read_until(s, b"\r\n\r\n", rest) if b"chunked" in head.lower() \
            else (b"", b"")
        server.bodies.append(body)
        s.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        tail = b"0\r\n" + server.trailers + b"\r\n"
        for i in range(0, len(tail), 7):
            s.sendall(tail[i:i + 7])
            time.sleep(0.01)


@pytest.fixture
def tr_origin():
    server = RawServer(trailer_origin)
    server.bodies = []
    server.trailers = b""
    yield server
    server.close()


def read_chunked_response(c: Conn) -> tuple[bytes, bytes]:
    """(head, raw chunked body through the end of the trailer section)."""
    head, _, rest = read_response_head(c).partition(b"\r\n\r\n")
    data = rest
    # The body here is "5\r\nhello\r\n" then "0\r\n" + trailers + "\r\n".
    while not (data.endswith(b"\r\n\r\n") and b"0\r\n" in data):
        chunk = c.sock.recv(65536)
        assert chunk, data
        data += chunk
    return head, data


def test_forbidden_response_trailers_are_dropped(run_proxy, tr_origin):
    tr_origin.trailers = KEPT[:17] + FORBIDDEN + KEPT[17:]   # between the kept lines
    p = run_proxy(reverse_cfg(tr_origin.url))
    with Conn(p.port) as c:
        for _ in range(2):   # the framing holds: the connection carries a second exchange
            c.send(crlf("GET / HTTP/1.1\nHost: h\n\n"))
            head, body = read_chunked_response(c)
            assert b"transfer-encoding: chunked" in head.lower()
            assert body == b"5\r\nhello\r\n0\r\n" + KEPT + b"\r\n"


def test_only_forbidden_response_trailers(run_proxy, tr_origin):
    tr_origin.trailers = FORBIDDEN
    p = run_proxy(reverse_cfg(tr_origin.url))
    with Conn(p.port) as c:
        c.send(crlf("GET / HTTP/1.1\nHost: h\n\n"))
        assert read_chunked_response(c)[1] == b"5\r\nhello\r\n0\r\n\r\n"


def test_allowed_response_trailers_pass_unchanged(run_proxy, tr_origin):
    tr_origin.trailers = KEPT
    p = run_proxy(reverse_cfg(tr_origin.url))
    with Conn(p.port) as c:
        c.send(crlf("GET / HTTP/1.1\nHost: h\n\n"))
        assert read_chunked_response(c)[1] == b"5\r\nhello\r\n0\r\n" + KEPT + b"\r\n"


@pytest.mark.parametrize("buffering", [{}, {"request_buffering": False}])
def test_forbidden_request_trailers_are_dropped(run_proxy, tr_origin, buffering):
    p = run_proxy(reverse_cfg(tr_origin.url, **buffering))
    lines = FORBIDDEN.split(b"\r\n")
    mixed = b"\r\n".join(lines[:3]) + b"\r\n" + KEPT + b"\r\n".join(lines[3:])
    body = b"5\r\nhello\r\n0\r\n" + mixed + b"\r\n"
    with Conn(p.port) as c:
        c.send(crlf("POST /up HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n"))
        for i in range(0, len(body), 11):   # trailers split across reads
            c.send(body[i:i + 11])
            time.sleep(0.005)
        read_chunked_response(c)
        c.send(crlf("POST /up HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n") +
               b"3\r\nabc\r\n0\r\n" + KEPT + b"\r\n")
        read_chunked_response(c)
    assert tr_origin.bodies == [b"5\r\nhello\r\n0\r\n" + KEPT + b"\r\n",
                                b"3\r\nabc\r\n0\r\n" + KEPT + b"\r\n"]


# -- Expect in HTTP/1.0 (RFC 9110 10.1.1) ---------------------------------------------


def test_http10_expect_100_continue_is_ignored(reverse_proxy, origin):
    with Conn(reverse_proxy.port) as c:
        c.send(crlf("POST /echo HTTP/1.0\nHost: h\nExpect: 100-continue\n"
                    "Content-Length: 5\n\n") + b"hello")
        raw = c.read_all()
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    assert b"100 Continue" not in raw
    info = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert info["body_len"] == 5
    assert "expect" not in {n.lower() for n, _ in info["headers"]}


def test_http10_unknown_expectation_is_still_417(reverse_proxy):
    with Conn(reverse_proxy.port) as c:
        c.send(crlf("GET / HTTP/1.0\nHost: h\nExpect: teapot\n\n"))
        assert c.response().status == 417


def relay_through_decoder(body: bytes, cuts: list[int]) -> bytes:
    """What a proxy passes on for body fed in pieces cut at `cuts` (the relay's rule)."""
    from fastproxy import _http

    dec = _http.ChunkedDecoder()
    out = b""
    bounds = [0, *cuts, len(body)]
    for a, b in zip(bounds, bounds[1:]):
        n = dec.feed(body[a:b])
        assert n == b - a
        out += body[a:a + dec.passed]
        if dec.passed < n and dec.done:
            out += dec.kept_trailers()
    assert dec.done
    return out


@pytest.mark.parametrize("trailers,expected", [
    (b"", b""), (KEPT, KEPT), (FORBIDDEN, b""), (FORBIDDEN[:19] + KEPT + FORBIDDEN[19:], KEPT)])
def test_decoder_holds_and_filters_trailers_at_every_split(trailers, expected):
    body = b"5\r\nhello\r\n0\r\n" + trailers + b"\r\n"
    want = b"5\r\nhello\r\n0\r\n" + expected + b"\r\n"
    for cut in range(len(body) + 1):
        assert relay_through_decoder(body, [cut]) == want, cut
    assert relay_through_decoder(body, list(range(1, len(body)))) == want


def test_the_reason_names_the_parsers_code_once(run_proxy, origin):
    # The answer read "400 Bad Request: te_and_cl: te_and_cl: both ..." (outside probe,
    # 12-05): the relay put the code before a message that already starts with it.
    p = run_proxy(reverse_config(origin.url))
    with Conn(p.port) as c:
        c.send(crlf("POST / HTTP/1.1\nHost: h\nContent-Length: 3\nTransfer-Encoding: chunked\n\n"))
        r = c.response()
    assert r.status == 400
    assert r.body.decode().strip() == ("400 Bad Request: te_and_cl: both Transfer-Encoding "
                                       "and Content-Length"), r.body
    bad = RawServer(lambda server, s: (server.read_head(s), s.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")))
    try:
        p2 = run_proxy(reverse_config(bad.url))
        with Conn(p2.port) as c:
            c.send(crlf("GET / HTTP/1.1\nHost: h\n\n"))
            r = c.response()
        assert r.status == 502
        assert r.body.decode().count("conflicting_content_length") == 1, r.body
    finally:
        bad.close()


@pytest.mark.parametrize("listener", [
    {},                                                     # the compiled fast path
    {"routes": [{"path": "/", "upstream": "app",            # the handler's own path
                 "request_headers": {"set": {"X-Env": "t"}}}]},
])
def test_underscore_spellings_of_forwarding_fields_do_not_reach_the_upstream(
        run_proxy, origin, listener):
    # CGI and WSGI servers read X_Forwarded_Proto as X-Forwarded-Proto: the client's
    # value went on beside ours (outside probe, 12-05), so an application taking the
    # first of "https,http" believed the client's scheme.
    p = run_proxy(reverse_cfg(origin.url, **listener))
    with Conn(p.port) as c:
        c.send(crlf("GET /echo HTTP/1.1\nHost: h\nX_Forwarded_For: 6.6.6.6\n"
                    "X_Forwarded_Proto: https\nx_forwarded_host: evil\nX_Other: kept\n\n"))
        r = c.response()
    names = [n.lower() for n, _ in json.loads(r.body)["headers"]]
    assert not [n for n in names if n.startswith("x_forwarded")], names
    assert "x_other" in names and "x-forwarded-proto" in names


# What the upstream sees of a client's own forwarding claims, per `headers.forwarded` mode:
# (fields that must be gone, fields that must arrive as the client sent them).
CLAIMS = {
    "x-forwarded": ({"forwarded", "x-real-ip"}, set()),
    "forwarded": ({"x-real-ip", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}, set()),
    "both": ({"x-real-ip"}, set()),
    "none": (set(), {"forwarded", "x-real-ip", "x-forwarded-proto", "x-forwarded-host"}),
}


@pytest.mark.parametrize("mode", sorted(CLAIMS))
@pytest.mark.parametrize("listener", [
    {},                                                     # the compiled fast path
    {"routes": [{"path": "/", "upstream": "app",            # the handler's own path
                 "request_headers": {"set": {"X-Env": "t"}}}]},
])
def test_client_forwarding_claims_the_mode_does_not_write_do_not_reach_the_upstream(
        run_proxy, origin, listener, mode):
    # A client's Forwarded went on untouched behind an x-forwarded listener, and its
    # X-Forwarded-Proto behind a forwarded one: the application found one element there,
    # the client's, and took it for the proxy's (outside probe, 12-05). X-Real-IP likewise.
    cfg = reverse_cfg(origin.url, **listener)
    cfg["headers"] = {"forwarded": mode}
    p = run_proxy(cfg)
    with Conn(p.port) as c:
        c.send(crlf("GET /echo HTTP/1.1\nHost: h\nForwarded: for=6.6.6.6;proto=https\n"
                    "X-Real-IP: 6.6.6.6\nX-Forwarded-Proto: https\nX-Forwarded-Host: evil\n"
                    "X-Forwarded-For: 6.6.6.6\n\n"))
        r = c.response()
    fields = json.loads(r.body)["headers"]
    values: dict[str, list[str]] = {}
    for n, v in fields:
        values.setdefault(n.lower(), []).append(v)
    gone, kept = CLAIMS[mode]
    assert not gone & set(values), values
    for name in kept:
        assert values[name] == [{"forwarded": "for=6.6.6.6;proto=https", "x-real-ip": "6.6.6.6",
                                 "x-forwarded-proto": "https",
                                 "x-forwarded-host": "evil"}[name]], values
    if mode in ("x-forwarded", "both"):
        assert values["x-forwarded-proto"] == ["http"] and values["x-forwarded-host"] == ["h"]
        assert values["x-forwarded-for"] == ["6.6.6.6, 127.0.0.1"]   # appended, as nginx does
    if mode in ("forwarded", "both"):
        # The client's element is kept before ours: the chain is appended to, never trusted.
        assert values["forwarded"][-1].startswith("for=127.0.0.1;proto=http"), values
