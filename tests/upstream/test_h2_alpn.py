"""`protocol = "auto"`: https:// servers are offered h2 by ALPN. Real nginx TLS origins
(a trustme certificate) in front of the HTTP/1.1 test origin: one that speaks h2 (the
exchanges ride streams of one TLS connection), one that speaks only http/1.1."""
from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import pytest

from conftest import reverse_config
from wire import crlf, request

trustme = pytest.importorskip("trustme", reason="trustme is not installed")
NGINX = shutil.which("nginx")
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


@pytest.fixture
def tls_origins(origin, tmp_path):
    """Two nginx TLS ports: (h2 + http/1.1, http/1.1 only); the CA file; the access log."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    d = tmp_path / "nginx"
    d.mkdir()
    cert.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ports = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        s.close()
    (d / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  log_format p '$server_port $connection $server_protocol $request_method $request_uri $status';
  access_log {d}/access.log p;
  client_body_temp_path {d}/t1; proxy_temp_path {d}/t2; fastcgi_temp_path {d}/t3;
  uwsgi_temp_path {d}/t4; scgi_temp_path {d}/t5;
  ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.pem;
  server {{
    listen 127.0.0.1:{ports[0]} ssl http2;
    location / {{ proxy_pass {origin.url}; proxy_http_version 1.1; proxy_buffering off; }}
  }}
  server {{
    listen 127.0.0.1:{ports[1]} ssl;
    location / {{ proxy_pass {origin.url}; proxy_http_version 1.1; proxy_buffering off; }}
  }}
}}
""")
    proc = subprocess.Popen([NGINX, "-p", str(d), "-e", str(d / "error.log"), "-c",
                             str(d / "nginx.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    for port in ports:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
    yield ports, str(tmp_path / "ca.pem"), d / "access.log"
    proc.terminate()
    proc.wait(10)


def _log(path, port) -> list[list[str]]:
    time.sleep(0.3)
    return [line.split() for line in path.read_text().splitlines()
            if line.split()[0] == str(port)]


def _concurrent(port: int, n: int) -> list[bytes]:
    results: list[bytes] = []

    def one(i):
        results.append(request(port, crlf(f"GET /size/{i + 1} HTTP/1.1\nHost: x\n\n")).body)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_auto_selects_h2_over_tls(run_proxy, tls_origins):
    (h2_port, _), ca, log = tls_origins
    cfg = reverse_config(f"https://127.0.0.1:{h2_port}")
    cfg["upstreams"]["app"].update(protocol="auto", tls={"ca": ca})
    p = run_proxy(cfg)
    r = request(p.port, crlf("GET /size/5 HTTP/1.1\nHost: x\n\n"))
    assert (r.status, r.body) == (200, b"01234")
    r = request(p.port, crlf("GET /size/200000 HTTP/1.1\nHost: x\n\n"))
    assert r.status == 200 and len(r.body) == 200000
    assert sorted(len(b) for b in _concurrent(p.port, 20)) == list(range(1, 21))
    lines = _log(log, h2_port)
    assert {line[2] for line in lines} == {"HTTP/2.0"}
    assert len({line[1] for line in lines}) == 1       # one TLS connection, many streams


def test_auto_falls_back_to_http1_and_default_stays_http1(run_proxy, tls_origins):
    (h2_port, h1_port), ca, log = tls_origins
    cfg = reverse_config(f"https://127.0.0.1:{h1_port}")
    cfg["upstreams"]["app"].update(protocol="auto", tls={"ca": ca})
    p = run_proxy(cfg)
    assert sorted(len(b) for b in _concurrent(p.port, 5)) == list(range(1, 6))
    r = request(p.port, crlf("GET /size/7 HTTP/1.1\nHost: x\n\n"))
    assert (r.status, r.body) == (200, b"0123456")
    assert {line[2] for line in _log(log, h1_port)} == {"HTTP/1.1"}
    # Without protocol = "auto" an h2-capable server is still spoken to in HTTP/1.1.
    cfg = reverse_config(f"https://127.0.0.1:{h2_port}")
    cfg["upstreams"]["app"].update(tls={"ca": ca})
    q = run_proxy(cfg)
    assert request(q.port, crlf("GET /size/3 HTTP/1.1\nHost: x\n\n")).body == b"012"
    assert {line[2] for line in _log(log, h2_port)} == {"HTTP/1.1"}


def test_protocol_bad_value_is_one_line(tmp_path):
    import sys
    (tmp_path / "f.toml").write_text(
        '[[listeners]]\nlisten = "127.0.0.1:0"\nupstream = "app"\n'
        '[upstreams.app]\nservers = ["https://127.0.0.1:1"]\nprotocol = "h3"\n')
    out = subprocess.run([sys.executable, "-m", "fastproxy", "check", "--config",
                          str(tmp_path / "f.toml")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    err = out.stderr.strip()
    assert len(err.splitlines()) == 1 and "protocol" in err and "Traceback" not in err, err
