"""HTTP/2 to upstreams (`h2c://`, the sidecar upgrade) over real sockets: nginx speaks
HTTP/2 with prior knowledge in front of the HTTP/1.1 test origin."""
from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import threading
import time

import pytest

from h2_client import Client

NGINX = shutil.which("nginx")
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


@pytest.fixture
def h2c_origin(origin, tmp_path):
    """nginx on an h2c-only port (listen ... http2), proxying to the test origin."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    d = tmp_path / "nginx"
    d.mkdir()
    (d / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  log_format h2 '$connection $server_protocol $request_method $request_uri $status';
  access_log {d}/access.log h2;
  client_body_temp_path {d}/t1; proxy_temp_path {d}/t2; fastcgi_temp_path {d}/t3;
  uwsgi_temp_path {d}/t4; scgi_temp_path {d}/t5;
  client_max_body_size 0;
  server {{
    listen 127.0.0.1:{port} http2;
    location / {{ proxy_pass {origin.url}; proxy_http_version 1.1;
                 proxy_request_buffering off; proxy_buffering off; }}
  }}
}}
""")
    proc = subprocess.Popen([NGINX, "-p", str(d), "-e", str(d / "error.log"), "-c",
                             str(d / "nginx.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
    yield port, d / "access.log"
    proc.terminate()
    proc.wait(10)


def _log(path) -> list[list[str]]:
    time.sleep(0.2)
    return [line.split() for line in path.read_text().splitlines()]


def test_h2c_upstream_get_post_and_one_connection(start_proxy, h2c_origin):
    port, log = h2c_origin
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", f"h2c://127.0.0.1:{port}")
    from wire import crlf, request
    r = request(p.port, crlf("GET /size/5 HTTP/1.1\nHost: x\n\n"))
    assert (r.status, r.body) == (200, b"01234")
    # RFC 9110 7.6.3: Via names the protocol the response was received in (and nginx's
    # own hop is not one: the test origin adds none).
    assert r.getheader("Via") == "2 fastproxy"
    r = request(p.port, crlf("GET /size/200000?chunked=1 HTTP/1.1\nHost: x\n\n"))
    assert r.status == 200 and len(r.body) == 200000
    payload = bytes(range(256)) * 3000
    for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
        out = subprocess.run(["curl", "-sS", "--max-time", "10", "--data-binary", "@-", *extra,
                              f"{p.url}/echo"], input=payload, capture_output=True, check=False)
        info = json.loads(out.stdout)
        assert info["body_len"] == len(payload), out.stderr
        assert info["body_sha256"] == hashlib.sha256(payload).hexdigest()
    # Concurrent HTTP/1.1 clients: their requests share the HTTP/2 connection.
    results = []

    def one(i):
        results.append(request(p.port, crlf(f"GET /size/{i + 1} HTTP/1.1\nHost: x\n\n")).body)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(len(b) for b in results) == list(range(1, 21))
    lines = _log(log)
    assert {line[1] for line in lines} == {"HTTP/2.0"}
    assert len({line[0] for line in lines}) == 1      # one connection to the server


def test_h2_in_h2c_out_and_server_down(start_proxy, h2c_origin):
    port, log = h2c_origin
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", f"h2c://127.0.0.1:{port}")
    c = Client(p.port)
    try:
        sids = [c.request(f"/size/{1000 * (i + 1)}") for i in range(30)]
        c.run(lambda: all(c.finished(s) for s in sids))
        assert [len(c.bodies[s]) for s in sids] == [1000 * (i + 1) for i in range(30)]
    finally:
        c.close()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    q = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", f"h2c://127.0.0.1:{dead_port}")
    from wire import crlf, request
    assert request(q.port, crlf("GET / HTTP/1.1\nHost: x\n\n")).status == 502


def test_h2c_scheme_in_config():
    from fastproxy.config.schema import parse_server_url
    spec = parse_server_url("h2c://127.0.0.1")
    assert (spec.scheme, spec.port) == ("h2c", 80)
    with pytest.raises(ValueError, match="h2c"):
        parse_server_url("h3://127.0.0.1:1")


def test_h2c_next_request_before_end_stream(start_proxy, h2c_origin):
    """nginx ends a stream with an empty DATA after the content-length's last byte: the
    relay may send the link its next request before that END_STREAM. That request used
    to be dropped (the client timed out); 15 rounds of 40 concurrent requests hit it."""
    port, _ = h2c_origin
    p = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                    "--upstream", f"h2c://127.0.0.1:{port}")
    from wire import crlf, request
    for rnd in range(15):
        results: list[bytes] = []
        errors: list[tuple[int, str]] = []

        def one(i):
            try:
                r = request(p.port, crlf(f"GET /size/{i + 1} HTTP/1.1\nHost: x\n\n"))
                results.append(r.body)
            except Exception as exc:    # noqa: BLE001 - reported by the assert below
                errors.append((i, repr(exc)))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert not errors, (rnd, errors)
        assert sorted(len(b) for b in results) == list(range(1, 41))
