"""Every byte value in a request-target, over real sockets, against a model of RFC 3986.

RFC 9112 3.2: the request-target is a URI reference's parts, and RFC 3986 2 lists the
characters a URI is made of: unreserved, reserved and '%'. A target carries no fragment
(no '#'); the VCHARs outside that set (" < > \\ ^ ` { | }), controls, SP, DEL and
non-ASCII bytes make it invalid: 400 and the connection closed, never forwarded, as does
a '%' not starting %HH in the path (but \\ ^ ` { | } and a lone '%' are taken in the
query, where browsers and sloppy clients send them raw; tests/uri_model.py). Each
proxy path is asked: the reverse proxy (its compiled fast path after a first request on
the connection), the reverse proxy with a cache (the compiled fresh-hit path), the forward
proxy with absolute-form targets (with and without its compiled path), CONNECT's
authority-form, and HTTP/2's :path (a malformed request: RST_STREAM PROTOCOL_ERROR,
RFC 9113 8.1.1).
"""
from __future__ import annotations

import os
import socket
import time

import pytest
from h2_helpers import DATA, END_HEADERS, END_STREAM, HEADERS, PREFACE, RST_STREAM, frame, settings
from uri_model import ALPHANUM, allowed
from wire import RawServer

from fastproxy import _hpack

# RFC 3986 3.2.2 reg-name: unreserved, sub-delims (and '%' starting a %HH).
REG_NAME = frozenset(ALPHANUM + b"-._~" + b"!$&'()*+,;=")

# Where the byte goes: a segment's first and last byte, inside an eight-byte run the
# parser reads at once, and the query.
SHAPES = (b"/t/%sx", b"/t/x%s", b"/t/abcdefgh%sijklmnop", b"/t/x?k=%sv")


def _origin(server, s):
    """200, cacheable, keep-alive, to every request."""
    rest = b""
    while True:
        try:
            _head, rest = server.read_until(s, b"\r\n\r\n", rest)
        except ConnectionError:
            return
        server.received.append(_head)
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\r\nok")


@pytest.fixture
def raw_origin():
    server = RawServer(_origin)
    yield server
    server.close()


def _read_response(s: socket.socket) -> int:
    """The status of one response with a Content-Length (0 if the connection closed first)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return 0
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head[9:12])


def _closed(s: socket.socket) -> bool:
    """The peer closed the connection (within the socket's timeout)."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except (TimeoutError, socket.timeout):
        return False


def _ask(port: int, good: bytes, variant: bytes) -> tuple[int, bool]:
    """Send `good` then `variant` (two requests) on one connection: the variant's status,
    and for a refusal whether the connection was closed. The first request makes the
    second take the compiled paths."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(good)
        assert _read_response(s) == 200, "the well-formed first request failed"
        s.sendall(variant)
        status = _read_response(s)
        return status, status != 200 and _closed(s)


def _check_all(port: int, origin: RawServer, line) -> list[str]:
    """Every byte value in every shape; the differences from the model, as text."""
    wrong = []
    for shape in SHAPES:
        for b in range(256):
            target = shape % bytes((b,))
            if b in (10, 13, 32):
                continue   # these end the target or the line: other rules (test_http_strict)
            status, closed = _ask(port, line(shape % b"x"), line(target))
            seen = any(target in h.split(b"\r\n", 1)[0] for h in origin.received)
            if allowed(target, shape.index(b"%s")):
                if status != 200 or closed:
                    wrong.append(f"{target!r}: {status} closed={closed}, expected 200")
            elif status != 400 or not closed or seen:
                wrong.append(f"{target!r}: {status} closed={closed} forwarded={seen}, "
                             "expected 400, closed, not forwarded")
    return wrong


def test_reverse_proxy_targets_follow_rfc_3986(start_proxy, raw_origin):
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", raw_origin.url)
    wrong = _check_all(p.port, raw_origin,
                       lambda t: b"GET " + t + b" HTTP/1.1\r\nHost: a.example\r\n\r\n")
    assert not wrong, "\n".join(wrong[:40])


def test_reverse_proxy_with_cache_targets_follow_rfc_3986(start_proxy, raw_origin):
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", raw_origin.url, "--cache", "16MiB")
    wrong = _check_all(p.port, raw_origin,
                       lambda t: b"GET " + t + b" HTTP/1.1\r\nHost: a.example\r\n\r\n")
    assert not wrong, "\n".join(wrong[:40])


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_forward_proxy_absolute_targets_follow_rfc_3986(start_proxy, raw_origin, compiled):
    if not compiled:
        os.environ["FASTPROXY_NO_FASTPATH"] = "1"
    try:
        p = start_proxy("serve", "--mode", "forward", "--listen", "127.0.0.1:0",
                        "--allow-private")
    finally:
        os.environ.pop("FASTPROXY_NO_FASTPATH", None)
    prefix = f"http://127.0.0.1:{raw_origin.port}".encode()
    wrong = _check_all(p.port, raw_origin,
                       lambda t: b"GET " + prefix + t + b" HTTP/1.1\r\nHost: 127.0.0.1:"
                       + str(raw_origin.port).encode() + b"\r\n\r\n")
    assert not wrong, "\n".join(wrong[:40])


def test_connect_authority_outside_rfc_3986_reg_name_is_refused(start_proxy, raw_origin):
    # Only bytes the parser must refuse: an accepted name would be looked up in the DNS.
    p = start_proxy("serve", "--mode", "forward", "--listen", "127.0.0.1:0",
                    "--allow-private", "--connect-ports", str(raw_origin.port))
    port = str(raw_origin.port).encode()
    wrong = []
    for b in range(256):
        if b in REG_NAME or b in (10, 13, 32):
            continue
        host = b"local" + bytes((b,)) + b"host"     # '%' too: "%ho" is no %HH
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            s.sendall(b"CONNECT " + host + b":" + port + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            status = _read_response(s)
            if status != 400 or not _closed(s):
                wrong.append(f"{host!r}: {status}")
    assert not wrong, "\n".join(wrong[:40])


# ---------------------------------------------------------------------------
# HTTP/2 :path

def _h2_batch(port: int, paths: list[bytes]) -> dict[bytes, str]:
    """Each path on its own stream of one connection: path -> "answered" or "reset"."""
    enc = _hpack.Encoder()
    sids = {2 * i + 1: path for i, path in enumerate(paths)}
    out = PREFACE + settings()
    for sid, path in sids.items():
        block = enc.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":path", path),
                            (b":authority", b"a.example")])
        out += frame(HEADERS, END_HEADERS | END_STREAM, sid, block)
    result: dict[bytes, str] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(out)
        got = b""
        deadline = time.monotonic() + 20
        while len(result) < len(sids) and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
            # Whole frames only: the server frames follow its SETTINGS, no preface.
            frames, pos = [], 0
            while pos + 9 <= len(got):
                n = int.from_bytes(got[pos:pos + 3], "big")
                if pos + 9 + n > len(got):
                    break
                frames.append((got[pos + 3], got[pos + 4],
                               int.from_bytes(got[pos + 5:pos + 9], "big") & 0x7fffffff))
                pos += 9 + n
            for t, flags, sid in frames:
                if sid not in sids:
                    continue
                if t == RST_STREAM:
                    result.setdefault(sids[sid], "reset")
                elif t in (HEADERS, DATA) and flags & END_STREAM:
                    result.setdefault(sids[sid], "answered")
    return result


def test_h2_path_follows_rfc_3986(start_proxy, raw_origin):
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", raw_origin.url)
    shapes = (b"/h2/a%sz", b"/h2/q?a%sz")
    cases = [(shape, b, shape % bytes((b,))) for shape in shapes for b in range(256)]
    paths = [path for _, _, path in cases]
    result: dict[bytes, str] = {}
    for i in range(0, len(paths), 64):     # under the 128 concurrent streams allowed
        result.update(_h2_batch(p.port, paths[i:i + 64]))
    wrong = []
    for shape, b, path in cases:
        seen = any(path in h.split(b"\r\n", 1)[0] for h in raw_origin.received)
        want = "answered" if allowed(path, shape.index(b"%s")) else "reset"
        if result.get(path) != want or seen != (want == "answered"):
            wrong.append(f"{path!r}: {result.get(path)} forwarded={seen}, expected {want}")
    assert not wrong, "\n".join(wrong[:40])
