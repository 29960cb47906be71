"""Shadowing requests with bodies (issue 13): the copy carries the body the primary got,
a body over the route's `max_body` is not copied (counted), and the copy never slows the
primary. Real origins (tests/origin.py) on loopback; the shadow origin records the length
and sha256 of every body it received."""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from origin import Origin
from wire import Conn, crlf


@pytest.fixture
def two():
    servers = [Origin().start() for _ in range(2)]
    yield servers
    for s in servers:
        s.stop()


def config(tmp_path, primary: str, shadow: str, extra: str = "") -> str:
    cfg = tmp_path / "shadow.toml"
    cfg.write_text(f"""
[[listeners]]
listen = "127.0.0.1:0"
upstream = "v1"
{extra}
[[listeners.routes]]
path = "/echo"
upstream = "v1"
shadow = {{ upstream = "v2", max_body = "4KiB" }}
[upstreams.v1]
servers = ["{primary}"]
[upstreams.v2]
servers = ["{shadow}"]
""")
    return str(cfg)


def post(port: int, body: bytes, chunked: bool = False, target: str = "/echo"):
    with Conn(port) as c:
        if chunked:
            framed = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000])
                              for i in range(0, len(body), 1000)) + b"0\r\n\r\n"
            c.send(crlf(f"POST {target} HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n\n")
                   + framed)
        else:
            c.send(crlf(f"POST {target} HTTP/1.1\nHost: x\nContent-Length: {len(body)}\n\n")
                   + body)
        return c.response("POST")


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    return cond()


@pytest.mark.parametrize("buffering", ["", "request_buffering = \"0B\""])
def test_a_request_body_is_copied_to_the_shadow(start_proxy, two, tmp_path, buffering):
    primary, shadow = two
    p = start_proxy("serve", "--config", config(tmp_path, primary.url, shadow.url, buffering))
    bodies = [os.urandom(3000), b"x" * 4096, os.urandom(2500)]
    for body, chunked in zip(bodies, (False, False, True)):
        r = post(p.port, body, chunked)
        assert r.status == 200
    assert wait_for(lambda: len(shadow.completed) == 3), shadow.completed
    got = sorted((i["body_len"], i["body_sha256"]) for i in shadow.completed)
    assert got == sorted((len(b), hashlib.sha256(b).hexdigest()) for b in bodies)
    assert all(i["method"] == "POST" for i in shadow.completed)
    assert [i["body_len"] for i in primary.completed] == [len(b) for b in bodies]


def test_a_body_over_max_body_is_not_copied(start_proxy, two, tmp_path):
    primary, shadow = two
    p = start_proxy("serve", "--config", config(tmp_path, primary.url, shadow.url))
    big = os.urandom(5000)
    assert post(p.port, big).status == 200                 # Content-Length over 4 KiB
    assert post(p.port, big, chunked=True).status == 200   # chunked, passes 4 KiB midway
    assert post(p.port, b"small").status == 200
    assert wait_for(lambda: len(shadow.completed) == 1)
    time.sleep(0.3)
    assert [i["body_len"] for i in shadow.completed] == [5]
    # The primary got both large bodies whole.
    assert sorted(i["body_len"] for i in primary.completed) == [5, 5000, 5000]


def test_a_silent_shadow_never_slows_a_request_with_a_body(start_proxy, two, tmp_path):
    primary, _ = two
    held = []
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)

    def accept():                     # takes the copies, never answers
        while True:
            try:
                c, _ = hole.accept()
            except OSError:
                return
            held.append(c)
    threading.Thread(target=accept, daemon=True).start()
    try:
        p = start_proxy("serve", "--config", config(
            tmp_path, primary.url, f"http://127.0.0.1:{hole.getsockname()[1]}"))
        t0 = time.monotonic()
        for i in range(30):
            assert post(p.port, os.urandom(1000 + i)).status == 200
        assert time.monotonic() - t0 < 5
        # max_in_flight (16 by default) bounds the copies waiting on the silent group.
        assert wait_for(lambda: len(held) == 16), len(held)
        time.sleep(0.3)
        assert len(held) == 16
    finally:
        hole.close()
        for c in held:
            c.close()


def test_max_body_is_checked(tmp_path):
    import sys
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[listeners]]\nlisten = "127.0.0.1:0"\nupstream = "a"\n'
                   '[[listeners.routes]]\npath = "/"\nupstream = "a"\n'
                   'shadow = { upstream = "a", max_body = "1GiB" }\n'
                   '[upstreams.a]\nservers = ["http://127.0.0.1:9"]\n')
    res = subprocess.run([sys.executable, "-m", "fastproxy", "check", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith(
        "fastproxy: listeners[0].routes[0].shadow.max_body: expected a size from 0B to 16MiB")


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp (nghttp2-client) not installed")
def test_an_http2_request_body_is_copied_too(start_proxy, two, tmp_path):
    primary, shadow = two
    p = start_proxy("serve", "--config", config(tmp_path, primary.url, shadow.url))
    body = os.urandom(3000)
    (tmp_path / "body.bin").write_bytes(body)
    # nghttp speaks h2c with prior knowledge: each stream is a relay connection of its own.
    r = subprocess.run(["nghttp", "-d", str(tmp_path / "body.bin"),
                        f"http://127.0.0.1:{p.port}/echo"], capture_output=True, timeout=20)
    assert r.returncode == 0 and b'"method": "POST"' in r.stdout, r.stderr
    assert wait_for(lambda: len(shadow.completed) == 1)
    copy = shadow.completed[0]
    assert copy["body_len"] == 3000 and copy["body_sha256"] == hashlib.sha256(body).hexdigest()
