"""TLS on the proxy's own listeners (reverse termination, curl --proxy https://) and to upstreams."""
from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess

import pytest

from origin import Origin

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def certs(ca, tmp_path):
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_pem = tmp_path / "cert.pem"
    key_pem = tmp_path / "key.pem"
    ca_pem = tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    for extra in cert.cert_chain_pems[1:]:
        with open(cert_pem, "ab") as fh:
            fh.write(extra.bytes())
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    return cert_pem, key_pem, ca_pem


def client_context(ca_pem) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_pem))


def test_reverse_proxy_terminates_tls(start_proxy, origin, certs, tmp_path):
    cert_pem, key_pem, ca_pem = certs
    cfg = tmp_path / "tls.toml"
    cfg.write_text(f"""
[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
tls = {{ cert = "{cert_pem}", key = "{key_pem}" }}
[upstreams.app]
servers = ["{origin.url}"]
""")
    p = start_proxy("serve", "--config", str(cfg))
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    with client_context(ca_pem).wrap_socket(raw, server_hostname="localhost") as s:
        for _ in range(2):  # keep-alive over TLS
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n")
            data = b""
            while b"}" not in data:
                data += s.recv(65536)
            info = json.loads(data.partition(b"\r\n\r\n")[2])
            headers = {n.lower(): v for n, v in info["headers"]}
            assert headers["x-forwarded-proto"] == "https"


def test_https_upstream(start_proxy, ca, tmp_path):
    # A TLS origin whose CA the proxy trusts through SSL_CERT_FILE.
    cert = ca.issue_cert("localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    tls_origin = Origin(ssl_context=ctx).start()
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    import os

    os.environ["SSL_CERT_FILE"] = str(ca_pem)
    try:
        p = start_proxy("serve", "--listen", "127.0.0.1:0", "--upstream",
                        f"https://localhost:{tls_origin.port}")
    finally:
        del os.environ["SSL_CERT_FILE"]
    try:
        from wire import crlf, request

        r = request(p.port, crlf("GET /size/5 HTTP/1.1\nHost: x\n\n"))
        assert (r.status, r.body) == (200, b"01234")
    finally:
        tls_origin.stop()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_forward_proxy_over_tls(start_proxy, origin, certs, tmp_path):
    cert_pem, key_pem, ca_pem = certs
    cfg = tmp_path / "fwd-tls.toml"
    cfg.write_text(f"""
[[listeners]]
listen = "127.0.0.1:0"
mode = "forward"
allow_private = true
tls = {{ cert = "{cert_pem}", key = "{key_pem}" }}
""")
    p = start_proxy("serve", "--config", str(cfg))
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "--proxy-cacert", str(ca_pem),
                          "-x", f"https://localhost:{p.port}", f"{origin.url}/size/7"],
                         capture_output=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"0123456"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_connect_tunnel_inside_tls_to_the_proxy(start_proxy, ca, certs, tmp_path):
    # TLS to the proxy, CONNECT, then TLS to the origin inside the tunnel.
    cert_pem, key_pem, ca_pem = certs
    cert = ca.issue_cert("localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    tls_origin = Origin(ssl_context=ctx).start()
    try:
        cfg = tmp_path / "fwd-tls2.toml"
        cfg.write_text(f"""
[[listeners]]
listen = "127.0.0.1:0"
mode = "forward"
allow_private = true
connect_ports = [{tls_origin.port}]
tls = {{ cert = "{cert_pem}", key = "{key_pem}" }}
""")
        p = start_proxy("serve", "--config", str(cfg))
        out = subprocess.run(["curl", "-sS", "--max-time", "10", "--proxy-cacert", str(ca_pem),
                              "--cacert", str(ca_pem), "-x", f"https://localhost:{p.port}",
                              f"https://localhost:{tls_origin.port}/size/300000"],
                             capture_output=True)
        assert out.returncode == 0, out.stderr
        assert len(out.stdout) == 300000
    finally:
        tls_origin.stop()


def test_unloadable_certificate_is_a_config_error(tmp_path):
    import sys

    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[[listeners]]
listen = "127.0.0.1:0"
upstream = "a"
tls = {{ cert = "{bad}", key = "{bad}" }}
[upstreams.a]
servers = ["http://127.0.0.1:9"]
""")
    for cmd in ("check", "serve"):
        r = subprocess.run([sys.executable, "-m", "fastproxy", cmd, "--config", str(cfg)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2
        assert r.stderr.startswith("fastproxy: listeners[0].tls: cannot load")
        assert "Traceback" not in r.stderr


@pytest.fixture
def tls_proxy(start_proxy, origin, certs, tmp_path):
    cert_pem, key_pem, ca_pem = certs
    cfg = tmp_path / "tls.toml"
    cfg.write_text(f"""
[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
tls = {{ cert = "{cert_pem}", key = "{key_pem}" }}
[upstreams.app]
servers = ["{origin.url}"]
""")
    return start_proxy("serve", "--config", str(cfg)), ca_pem


def test_client_cipher_order_wins_tls12(tls_proxy):
    # Every suite the server allows is a secure one, so the client's order decides (as
    # nginx's default): a client that puts AES-128-GCM first gets it, one that puts
    # AES-256-GCM first gets that.
    p, ca_pem = tls_proxy
    aes128 = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
    aes256 = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
    for order, want in ((f"{aes128}:{aes256}", "AES128-GCM"), (f"{aes256}:{aes128}", "AES256-GCM")):
        ctx = client_context(ca_pem)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(order)
        raw = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            assert s.version() == "TLSv1.2"
            assert want in s.cipher()[0], s.cipher()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_tls13_client_cipher_order_and_one_ticket(tls_proxy):
    # TLS 1.3: the client's suite order wins (Python's client API cannot order TLS 1.3
    # suites, the openssl client can), and a full handshake issues one session ticket.
    p, ca_pem = tls_proxy
    for suites, want in (("TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"),
                         ("TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384")):
        out = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{p.port}", "-servername", "localhost",
             "-CAfile", str(ca_pem), "-verify_return_error", "-tls1_3", "-ciphersuites", suites,
             "-msg", "-ign_eof"],
            input=b"GET /size/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            capture_output=True, timeout=30)
        text = out.stdout.decode("latin-1")
        assert out.returncode == 0, out.stderr[-500:]
        assert f"Cipher is {want}" in text
        assert text.count("NewSessionTicket") == 1, text
        assert "HTTP/1.1 200" in text


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
@pytest.mark.parametrize("version, how", [("-tls1_3", []), ("-tls1_2", []), ("-tls1_2", ["-no_ticket"])])
def test_resumption_by_ticket_and_session_id(tls_proxy, tmp_path, version, how):
    # A second connection presenting the first one's session resumes it: by ticket (TLS
    # 1.3, TLS 1.2) or, for a TLS 1.2 client that takes no tickets, by session ID.
    p, ca_pem = tls_proxy
    sess = tmp_path / "session.pem"
    seen = []
    for io in (["-sess_out", str(sess)], ["-sess_in", str(sess)]):
        out = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{p.port}", "-servername", "localhost",
             "-CAfile", str(ca_pem), "-verify_return_error", version, *how, *io, "-ign_eof"],
            input=b"GET /size/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            capture_output=True, timeout=30)
        text = out.stdout.decode("latin-1")
        assert out.returncode == 0 and "HTTP/1.1 200" in text, out.stderr[-500:]
        seen.append("Reused," in text)
    assert seen == [False, True]
