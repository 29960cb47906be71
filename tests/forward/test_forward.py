"""Forward mode over real sockets: real clients through the proxy to loopback origins."""
from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest

from origin import Origin
from wire import Conn, crlf, request


@pytest.fixture(scope="module")
def ca():
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


@pytest.fixture
def tls_origin(ca):
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    server = Origin(ssl_context=ctx).start()
    yield server
    server.stop()


@pytest.fixture
def forward(start_proxy, tmp_path):
    """Factory: a forward proxy with extra TOML for its listener (and top level)."""
    def make(listener_toml: str = "", top_toml: str = "", log: bool = True):
        cfg = tmp_path / "fwd.toml"
        cfg.write_text(f"""{top_toml}
[access_log]
path = "{tmp_path / 'access.log'}"
format = "json"
[[listeners]]
listen = "127.0.0.1:0"
mode = "forward"
{listener_toml}
""")
        p = start_proxy("serve", "--config", str(cfg))
        p.log_path = tmp_path / "access.log"
        return p
    return make


def read_log(path, n: int, timeout: float = 3.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    lines: list[dict] = []
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines()]
            if len(lines) >= n:
                break
        time.sleep(0.05)
    return lines


def seen_by_origin(origin) -> dict:
    _, _, headers = origin.requests[-1]
    return {n.decode().lower(): v.decode() for n, v in headers}


# -- plain HTTP through the proxy -------------------------------------------------


def test_absolute_form_get_and_pooling(forward, origin):
    p = forward("allow_private = true")
    with Conn(p.port) as c:
        for i in range(5):
            c.send(crlf(f"GET {origin.url}/size/{i + 1} HTTP/1.1\nHost: ignored.example\n\n"))
            assert c.response().body == b"0123456789"[:i + 1]
    assert origin.connections == 1  # the destination connection was reused
    method, target, _ = origin.requests[-1]
    assert target == b"/size/5"  # origin-form towards the origin
    assert seen_by_origin(origin)["host"] == f"127.0.0.1:{origin.port}"  # authority wins


def test_ipv6_literal_destination_keeps_its_brackets_in_host(forward):
    # The Host sent on was "::1:PORT", which no server reads as an authority (outside
    # probe, 12-05): an IPv6 literal is bracketed in a URI's host (RFC 3986 3.2.2).
    try:
        origin6 = Origin(host="::1").start()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback on this machine: {exc}")
    try:
        p = forward("allow_private = true")
        for target, host in ((f"http://[::1]:{origin6.port}/echo", f"[::1]:{origin6.port}"),
                             (f"http://[0:0::1]:{origin6.port}/echo", f"[0:0::1]:{origin6.port}")):
            r = request(p.port, crlf(f"GET {target} HTTP/1.1\nHost: x\n\n"))
            assert r.status == 200, r.body
            assert seen_by_origin(origin6)["host"] == host
    finally:
        origin6.stop()


def test_post_body_through_forward_proxy(forward, origin):
    p = forward("allow_private = true")
    r = request(p.port, crlf(f"POST {origin.url}/echo HTTP/1.1\nHost: x\nContent-Length: 5\n\n")
                + b"hello")
    assert json.loads(r.body)["body_len"] == 5


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_through_forward_proxy(forward, origin):
    p = forward("allow_private = true")
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "-x", p.url, f"{origin.url}/echo"],
                         capture_output=True, check=True)
    assert json.loads(out.stdout)["method"] == "GET"


def test_urllib_through_forward_proxy(forward, origin):
    p = forward("allow_private = true")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": p.url}))
    with opener.open(f"{origin.url}/size/4", timeout=10) as resp:
        assert resp.read() == b"0123"


def test_requests_through_forward_proxy(forward, origin):
    requests = pytest.importorskip("requests")
    p = forward("allow_private = true")
    r = requests.get(f"{origin.url}/size/6", proxies={"http": p.url}, timeout=10)
    assert r.content == b"012345"


def test_httpx_https_through_connect(forward, tls_origin, ca, tmp_path):
    httpx = pytest.importorskip("httpx")
    p = forward(f"allow_private = true\nconnect_ports = [{tls_origin.port}]")
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    with httpx.Client(proxy=p.url, verify=ssl.create_default_context(cafile=str(pem)),
                      timeout=10) as client:
        r = client.get(f"https://localhost:{tls_origin.port}/size/9")
        assert r.content == b"012345678"
        r = client.get(f"https://localhost:{tls_origin.port}/echo")
        assert r.json()["method"] == "GET"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_https_through_connect_and_log(forward, tls_origin, ca, tmp_path):
    p = forward(f"allow_private = true\nconnect_ports = [{tls_origin.port}]")
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(pem), "-x", p.url,
                          f"https://localhost:{tls_origin.port}/size/3000"],
                         capture_output=True, check=True)
    assert len(out.stdout) == 3000
    [entry] = [x for x in read_log(p.log_path, 1) if x["method"] == "CONNECT"]
    assert entry["status"] == 200
    assert entry["target"] == f"localhost:{tls_origin.port}"
    assert entry["bytes_sent"] > 3000 and entry["bytes_received"] > 100


def test_connect_tunnel_half_close_and_early_data(forward, start_proxy):
    # A raw TCP echo-until-EOF server: the client sends, half-closes, and still reads
    # everything the server sends back (RFC 9110 9.3.6 tunnels carry half-closes).
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    import threading

    def serve():
        s, _ = srv.accept()
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.sendall(b"got:" + data)
        s.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    p = forward(f"allow_private = true\nconnect_ports = [{port}]")
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    # Early data right behind the CONNECT head, before the 200 (as TLS clients may do).
    s.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
              + b"early;")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 200")
    s.sendall(b"late")
    s.shutdown(socket.SHUT_WR)
    rest = head.partition(b"\r\n\r\n")[2]
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        rest += chunk
    assert rest == b"got:early;late"
    s.close()
    srv.close()


# -- security --------------------------------------------------------------------


def test_private_destinations_refused_by_default(forward, origin):
    p = forward()
    r = request(p.port, crlf(f"GET {origin.url}/size/1 HTTP/1.1\nHost: x\n\n"))
    assert r.status == 403
    assert b"loopback" in r.body
    for target in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/",
                   "http://[::1]/", "http://0x7f.1/", "http://2130706433/"):
        r = request(p.port, crlf(f"GET {target} HTTP/1.1\nHost: x\n\n"))
        assert r.status == 403, target
    assert origin.requests == []


def test_connect_only_to_allowed_ports(forward, origin):
    p = forward("allow_private = true")
    r = request(p.port, crlf(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\nHost: x\n\n"),
                method="CONNECT")
    assert r.status == 403
    assert b"port" in r.body


def test_acl_rules_first_match_wins(forward, origin):
    p = forward("""
allow_private = true
[[listeners.acl.rules]]
name = "no-size"
action = "deny"
url = "/size/"
[[listeners.acl.rules]]
name = "echo-ok"
action = "allow"
url = "/echo"
[[listeners.acl.rules]]
name = "rest"
action = "deny"
""")
    r = request(p.port, crlf(f"GET {origin.url}/size/1 HTTP/1.1\nHost: x\n\n"))
    assert r.status == 403 and b"no-size" in r.body
    r = request(p.port, crlf(f"GET {origin.url}/echo HTTP/1.1\nHost: x\n\n"))
    assert r.status == 200
    r = request(p.port, crlf(f"GET {origin.url}/status/200 HTTP/1.1\nHost: x\n\n"))
    assert r.status == 403 and b"rest" in r.body
    entries = read_log(p.log_path, 3)
    assert [e.get("acl") for e in entries] == ["no-size", "echo-ok", "rest"]


def test_acl_host_rule_by_name(forward, origin):
    p = forward("""
allow_private = true
[[listeners.acl.rules]]
name = "block-localhost"
action = "deny"
hosts = ["localhost"]
""")
    r = request(p.port, crlf(f"GET http://localhost:{origin.port}/ HTTP/1.1\nHost: x\n\n"))
    assert r.status == 403 and b"block-localhost" in r.body
    r = request(p.port, crlf(f"GET {origin.url}/size/2 HTTP/1.1\nHost: x\n\n"))
    assert r.status == 200


def test_origin_form_is_400(forward):
    p = forward("allow_private = true")
    r = request(p.port, crlf("GET /path HTTP/1.1\nHost: example.com\n\n"))
    assert r.status == 400


def test_options_asterisk_is_answered_by_the_proxy(forward):
    # RFC 9110 9.3.7: "OPTIONS *" asks the server in general, here the proxy; it was a 400
    # ("a forward proxy needs an absolute URL"), as if the request were malformed.
    p = forward("allow_private = true")
    r = request(p.port, crlf(f"OPTIONS * HTTP/1.1\nHost: 127.0.0.1:{p.port}\n\n"))
    assert r.status == 200 and b"CONNECT" in r.getheader("Allow").encode()
    r = request(p.port, crlf("GET * HTTP/1.1\nHost: x\n\n"))
    assert r.status == 400


def test_options_to_an_empty_path_is_sent_as_asterisk(forward, origin):
    # RFC 9112 3.2.4: "OPTIONS http://host:port HTTP/1.1" (empty path, no query) asks the
    # server itself; the last proxy MUST send it as "OPTIONS * HTTP/1.1". It went as "/".
    p = forward("allow_private = true")
    with Conn(p.port) as c:
        # Twice: the second comes from the memoised admission (the compiled path).
        for _ in range(2):
            c.send(crlf(f"OPTIONS {origin.url} HTTP/1.1\nHost: x\n\n"))
            c.response()
            assert origin.requests[-1][:2] == (b"OPTIONS", b"*")
        # A path or a query names a resource: it is sent as it is.
        for target, sent in ((f"{origin.url}/", b"/"), (f"{origin.url}?q=1", b"/?q=1")):
            for _ in range(2):
                c.send(crlf(f"OPTIONS {target} HTTP/1.1\nHost: x\n\n"))
                c.response()
                assert origin.requests[-1][:2] == (b"OPTIONS", sent)
        c.send(crlf(f"GET {origin.url} HTTP/1.1\nHost: x\n\n"))
        c.response()
        assert origin.requests[-1][:2] == (b"GET", b"/")


def test_dns_failure_is_502_with_reason(forward):
    p = forward()
    r = request(p.port, crlf("GET http://no-such-host.invalid/ HTTP/1.1\nHost: x\n\n"))
    assert r.status == 502
    assert b"name not found" in r.body or b"resolve" in r.body


def test_connect_refused_is_502(forward):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = forward(f"allow_private = true\nconnect_ports = [{port}]")
    r = request(p.port, crlf(f"GET http://127.0.0.1:{port}/ HTTP/1.1\nHost: x\n\n"))
    assert r.status == 502
    r = request(p.port, crlf(f"CONNECT 127.0.0.1:{port} HTTP/1.1\nHost: x\n\n"), "CONNECT")
    assert r.status == 502


# -- authentication ----------------------------------------------------------------


def test_proxy_authentication(forward, origin):
    from fastproxy.forward.auth import hash_password

    hashed = hash_password("s3cret", n=2 ** 10)
    p = forward(f'allow_private = true\n[listeners.auth]\nusers = {{ alice = "{hashed}" }}\n')
    target = f"GET {origin.url}/echo HTTP/1.1\nHost: x\n"
    r = request(p.port, crlf(target + "\n"))
    assert r.status == 407
    assert r.getheader("Proxy-Authenticate").startswith("Basic realm=")
    bad = base64.b64encode(b"alice:wrong").decode()
    r = request(p.port, crlf(target + f"Proxy-Authorization: Basic {bad}\n\n"))
    assert r.status == 407
    good = base64.b64encode(b"alice:s3cret").decode()
    r = request(p.port, crlf(target + f"Proxy-Authorization: Basic {good}\n\n"))
    assert r.status == 200
    assert "proxy-authorization" not in {n.lower() for n, _ in json.loads(r.body)["headers"]}
    entries = read_log(p.log_path, 3)
    assert entries[-1]["user"] == "alice"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_proxy_user(forward, origin):
    from fastproxy.forward.auth import hash_password

    hashed = hash_password("pw", n=2 ** 10)
    p = forward(f'allow_private = true\n[listeners.auth]\nusers = {{ bob = "{hashed}" }}\n')
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "-x", p.url, "-U", "bob:pw",
                          f"{origin.url}/size/5"], capture_output=True, check=True)
    assert out.stdout == b"01234"
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-x", p.url,
                          f"{origin.url}/size/5"], capture_output=True)
    assert out.stdout == b"407"


# -- anonymity ----------------------------------------------------------------------


@pytest.mark.parametrize("level,present,absent", [
    ("transparent", {"via", "x-forwarded-for"}, set()),
    ("anonymous", {"via"}, {"x-forwarded-for", "x-real-ip"}),
    ("elite", set(), {"via", "x-forwarded-for", "forwarded", "x-real-ip", "sec-ch-ua"}),
])
def test_anonymity_levels(forward, origin, level, present, absent):
    p = forward(f'allow_private = true\n[listeners.anonymity]\nlevel = "{level}"\n')
    request(p.port, crlf(f"GET {origin.url}/echo HTTP/1.1\nHost: x\nX-Real-IP: 10.9.9.9\n"
                         "Forwarded: for=10.9.9.9\nSec-CH-UA: \"x\"\nUser-Agent: t\n\n"))
    seen = seen_by_origin(origin)
    assert present <= set(seen), seen
    assert not (absent & set(seen)), seen
    assert seen["user-agent"] == "t"
    if level == "transparent":
        assert seen["x-forwarded-for"].endswith("127.0.0.1")


def test_header_rules(forward, origin):
    p = forward("""
allow_private = true
[[listeners.anonymity.rules]]
hosts = ["127.0.0.1"]
remove = ["Cookie"]
set = { "User-Agent" = "Proxy/1.0" }
""")
    request(p.port, crlf(f"GET {origin.url}/echo HTTP/1.1\nHost: x\nCookie: a=b\n"
                         "User-Agent: real\n\n"))
    seen = seen_by_origin(origin)
    assert "cookie" not in seen
    assert seen["user-agent"] == "Proxy/1.0"


# -- limits ----------------------------------------------------------------------------


def test_request_rate_limit(forward, origin):
    p = forward("allow_private = true\n[listeners.rate_limit]\nrate = 2\nburst = 2\n")
    statuses = []
    with Conn(p.port) as c:
        for _ in range(5):
            c.send(crlf(f"GET {origin.url}/size/1 HTTP/1.1\nHost: x\n\n"))
            r = c.response()
            statuses.append(r.status)
            if r.status == 429:
                assert int(r.getheader("Retry-After")) >= 1
    assert statuses[:2] == [200, 200]
    assert 429 in statuses


def test_connection_limit(forward, origin):
    p = forward("allow_private = true\n[listeners.rate_limit]\nmax_connections = 2\n")
    a, b = Conn(p.port), Conn(p.port)
    try:
        for c in (a, b):
            c.send(crlf(f"GET {origin.url}/size/1 HTTP/1.1\nHost: x\n\n"))
            assert c.response().status == 200
        with Conn(p.port) as third:
            # It sends its request: plain HTTP listeners accept once the client spoke.
            third.send(crlf(f"GET {origin.url}/size/1 HTTP/1.1\nHost: x\n\n"))
            r = third.response()
            assert r.status == 429
    finally:
        a.close()
        b.close()
    time.sleep(0.2)
    r = request(p.port, crlf(f"GET {origin.url}/size/1 HTTP/1.1\nHost: x\n\n"))
    assert r.status == 200


# -- configuration ---------------------------------------------------------------------


def test_forward_config_errors_name_the_key(tmp_path):
    import sys

    cfg = tmp_path / "bad.toml"
    cfg.write_text("""
[[listeners]]
listen = "127.0.0.1:0"
mode = "forward"
connect_ports = ["x"]
[listeners.auth]
users = { alice = "plaintext" }
[[listeners.acl.rules]]
action = "maybe"
""")
    r = subprocess.run([sys.executable, "-m", "fastproxy", "check", "--config", str(cfg)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("fastproxy: listeners[0].")
    assert "Traceback" not in r.stderr
    assert "plaintext" not in r.stderr  # never echo a password


def test_default_serve_is_a_forward_proxy_on_8080():
    import sys

    r = subprocess.run([sys.executable, "-m", "fastproxy", "check"], capture_output=True,
                       text=True)
    assert r.returncode == 0
    assert "127.0.0.1:8080 (forward)" in r.stdout
