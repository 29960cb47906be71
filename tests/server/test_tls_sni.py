"""Several certificates on one TLS listener, chosen by SNI (exact and wildcard names),
reloaded on SIGHUP; session resumption; bad `tls.sni` tables name their key."""
from __future__ import annotations

import signal
import socket
import ssl
import time

import pytest

from fastproxy.config.load import ConfigError, from_dict

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def write(cert, tmp_path, stem):
    c, k = tmp_path / f"{stem}.pem", tmp_path / f"{stem}.key"
    c.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(k))
    return c, k


def client(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.check_hostname = False           # we look at which certificate came, not at names
    return ctx


def handshake(port, ca, name, session=None, ctx=None):
    """(SAN names of the certificate served, whether the session was resumed, session)."""
    ctx = ctx or client(ca)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname=name, session=session) as s:
        s.sendall(b"GET /size/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"012")
        names = sorted(v for k, v in s.getpeercert()["subjectAltName"])
        return names, s.session_reused, s.session, s.version()


@pytest.fixture
def sni_proxy(start_proxy, origin, ca, tmp_path):
    d = write(ca.issue_cert("default.test"), tmp_path, "default")
    a = write(ca.issue_cert("api.test"), tmp_path, "api")
    w = write(ca.issue_cert("*.cdn.test"), tmp_path, "cdn")
    cfg = tmp_path / "sni.toml"
    cfg.write_text(f'''
[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
[listeners.tls]
cert = "{d[0]}"
key = "{d[1]}"
sni = [ {{ names = ["api.test", "API2.test"], cert = "{a[0]}", key = "{a[1]}" }},
        {{ names = ["*.cdn.test"], cert = "{w[0]}", key = "{w[1]}" }} ]
[upstreams.app]
servers = ["{origin.url}"]
''')
    return start_proxy("serve", "--config", str(cfg)), a


def test_certificate_by_name(sni_proxy, ca):
    p, _ = sni_proxy
    assert handshake(p.port, ca, "api.test")[0] == ["api.test"]
    assert handshake(p.port, ca, "api2.test")[0] == ["api.test"]     # names are lowercased
    assert handshake(p.port, ca, "img.cdn.test")[0] == ["*.cdn.test"]
    assert handshake(p.port, ca, "a.b.cdn.test")[0] == ["default.test"]  # one label only
    assert handshake(p.port, ca, "other.test")[0] == ["default.test"]
    assert handshake(p.port, ca, None)[0] == ["default.test"]        # no SNI at all
    assert handshake(p.port, ca, "api.test")[3] in ("TLSv1.2", "TLSv1.3")


def test_session_resumption(sni_proxy, ca):
    p, _ = sni_proxy
    ctx = client(ca)
    _, reused, session, _ = handshake(p.port, ca, "default.test", ctx=ctx)
    assert not reused
    assert handshake(p.port, ca, "default.test", session=session, ctx=ctx)[1]


def test_sighup_reloads_certificates(sni_proxy, ca, tmp_path):
    p, (api_cert, api_key) = sni_proxy
    assert handshake(p.port, ca, "api.test")[0] == ["api.test"]
    write(ca.issue_cert("api.test", "new.api.test"), tmp_path, "api")
    p.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if handshake(p.port, ca, "api.test")[0] == ["api.test", "new.api.test"]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the new certificate was not served after SIGHUP")


def test_sighup_adds_sni_certificates(start_proxy, origin, ca, tmp_path):
    # A listener that starts without SNI certificates takes them on a reload; the
    # default one stays for the other names, and a reload that drops them again serves
    # the default to every name.
    d = write(ca.issue_cert("default.test"), tmp_path, "default")
    a = write(ca.issue_cert("api.test"), tmp_path, "api")
    cfg = tmp_path / "sni.toml"
    plain = (f'[[listeners]]\nlisten = "127.0.0.1:0"\nupstream = "app"\n'
             f'[listeners.tls]\ncert = "{d[0]}"\nkey = "{d[1]}"\n')
    upstreams = f'[upstreams.app]\nservers = ["{origin.url}"]\n'
    cfg.write_text(plain + upstreams)
    p = start_proxy("serve", "--config", str(cfg))
    assert handshake(p.port, ca, "api.test")[0] == ["default.test"]

    def served_after_reload(text, name, want):
        cfg.write_text(text)
        p.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if handshake(p.port, ca, name)[0] == want:
                return True
            time.sleep(0.1)
        return False

    sni = f'sni = [ {{ names = ["api.test"], cert = "{a[0]}", key = "{a[1]}" }} ]\n'
    assert served_after_reload(plain + sni + upstreams, "api.test", ["api.test"])
    assert handshake(p.port, ca, "other.test")[0] == ["default.test"]
    assert handshake(p.port, ca, None)[0] == ["default.test"]
    assert served_after_reload(plain + upstreams, "api.test", ["default.test"])


@pytest.mark.parametrize("sni, problem", [
    ([{"names": ["bad name"], "cert": "C", "key": "K"}], "listeners[0].tls.sni[0].names: "),
    ([{"names": ["a.test"], "cert": "/none.pem", "key": "K"}],
     "listeners[0].tls.sni[0].cert: no such file"),
    ([{"names": ["a.test"], "cert": "C", "key": "K", "x": 1}], "listeners[0].tls.sni[0].x: unknown key"),
    ("a.test", "listeners[0].tls.sni: expected a list"),
])
def test_sni_problems(sni, problem, ca, tmp_path):
    c, k = write(ca.issue_cert("x.test"), tmp_path, "x")
    sni = [{kk: (str(c) if v == "C" else str(k) if v == "K" else v) for kk, v in e.items()}
           for e in sni] if isinstance(sni, list) else sni
    with pytest.raises(ConfigError) as info:
        from_dict({"listeners": [{"listen": "127.0.0.1:0", "upstream": "a",
                                  "tls": {"cert": str(c), "key": str(k), "sni": sni}}],
                   "upstreams": {"a": {"servers": ["http://127.0.0.1:9"]}}})
    assert info.value.problems[0].startswith(problem), info.value.problems
