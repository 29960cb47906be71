"""https:// upstreams: verified by default, a `ca` bundle, `sni`, `verify = false`, mutual
TLS; a failed verification is a 502 naming the reason. Real TLS origins (trustme)."""
from __future__ import annotations

import ssl

import pytest

from fastproxy.config.load import ConfigError, from_dict
from origin import Origin
from wire import crlf, request

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def pems(ca, tmp_path):
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    client = ca.issue_cert("proxy.client")
    client_cert, client_key = tmp_path / "client.pem", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(client_cert))
    client.private_key_pem.write_to_path(str(client_key))
    return ca_pem, client_cert, client_key


def tls_origin(ca, name: str, client_ca=None) -> Origin:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(ctx)
    if client_ca is not None:
        client_ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return Origin(ssl_context=ctx).start()


def proxy(start_proxy, tmp_path, url: str, tls: str = ""):
    cfg = tmp_path / "up.toml"
    cfg.write_text(f'[[listeners]]\nlisten = "127.0.0.1:0"\nupstream = "app"\n'
                   f'[upstreams.app]\nservers = ["{url}"]\n{tls}')
    return start_proxy("serve", "--config", str(cfg))


def get(p):
    r = request(p.port, crlf("GET /size/5 HTTP/1.1\nHost: x\n\n"))
    return r.status, r.body


def test_verified_by_default_and_failure_is_a_502_with_the_reason(start_proxy, ca, tmp_path):
    o = tls_origin(ca, "localhost")
    try:
        p = proxy(start_proxy, tmp_path, f"https://localhost:{o.port}")
        status, body = get(p)
        assert status == 502
        assert b"CERTIFICATE_VERIFY_FAILED" in body or b"certificate verify failed" in body
    finally:
        o.stop()


def test_ca_bundle(start_proxy, ca, pems, tmp_path):
    o = tls_origin(ca, "localhost")
    try:
        p = proxy(start_proxy, tmp_path, f"https://localhost:{o.port}",
                  f'[upstreams.app.tls]\nca = "{pems[0]}"\n')
        assert get(p) == (200, b"01234")
    finally:
        o.stop()


def test_sni_name_is_sent_and_verified(start_proxy, ca, pems, tmp_path):
    o = tls_origin(ca, "origin.internal")
    try:
        p = proxy(start_proxy, tmp_path, f"https://127.0.0.1:{o.port}",
                  f'[upstreams.app.tls]\nca = "{pems[0]}"\nsni = "origin.internal"\n')
        assert get(p) == (200, b"01234")
        p2 = proxy(start_proxy, tmp_path, f"https://127.0.0.1:{o.port}",
                   f'[upstreams.app.tls]\nca = "{pems[0]}"\n')
        status, body = get(p2)      # the certificate is not for 127.0.0.1
        assert status == 502 and b"127.0.0.1" in body
    finally:
        o.stop()


def test_verify_false(start_proxy, ca, tmp_path):
    o = tls_origin(ca, "elsewhere.test")
    try:
        p = proxy(start_proxy, tmp_path, f"https://127.0.0.1:{o.port}",
                  "[upstreams.app.tls]\nverify = false\n")
        assert get(p) == (200, b"01234")
    finally:
        o.stop()


def test_mutual_tls(start_proxy, ca, pems, tmp_path):
    ca_pem, cert, key = pems
    o = tls_origin(ca, "localhost", client_ca=ca)
    try:
        p = proxy(start_proxy, tmp_path, f"https://localhost:{o.port}",
                  f'[upstreams.app.tls]\nca = "{ca_pem}"\ncert = "{cert}"\nkey = "{key}"\n')
        assert get(p) == (200, b"01234")
        p2 = proxy(start_proxy, tmp_path, f"https://localhost:{o.port}",
                   f'[upstreams.app.tls]\nca = "{ca_pem}"\n')
        assert get(p2)[0] == 502        # no client certificate: the origin refuses
    finally:
        o.stop()


@pytest.mark.parametrize("tls, problem", [
    ({"ca": "/nonexistent.pem"}, "upstreams.app.tls.ca: no such file"),
    ({"verify": "yes"}, "upstreams.app.tls.verify: expected true or false"),
    ({"cert": "CA"}, "upstreams.app.tls.key: mutual TLS needs both"),
    ({"nope": 1}, "upstreams.app.tls.nope: unknown key"),
])
def test_tls_table_problems(tls, problem, pems):
    tls = {k: (str(pems[0]) if v == "CA" else v) for k, v in tls.items()}
    with pytest.raises(ConfigError) as info:
        from_dict({"listeners": [{"listen": "127.0.0.1:0", "upstream": "app"}],
                   "upstreams": {"app": {"servers": ["https://127.0.0.1:9"], "tls": tls}}})
    assert info.value.problems[0].startswith(problem), info.value.problems


def test_tls_table_on_plain_servers_is_a_problem():
    with pytest.raises(ConfigError) as info:
        from_dict({"listeners": [{"listen": "127.0.0.1:0", "upstream": "app"}],
                   "upstreams": {"app": {"servers": ["http://127.0.0.1:9"],
                                         "tls": {"verify": False}}}})
    assert info.value.problems == [
        "upstreams.app.tls: applies to https:// servers and this group has none"]


def test_health_checks_trust_the_group_ca(start_proxy, ca, pems, tmp_path):
    # Checks use the group's TLS settings: with the system CAs they would fail (fall = 1)
    # and mark the only server down, so requests would get 503.
    import time
    o = tls_origin(ca, "origin.internal")
    try:
        p = proxy(start_proxy, tmp_path, f"https://127.0.0.1:{o.port}",
                  f'[upstreams.app.tls]\nca = "{pems[0]}"\nsni = "origin.internal"\n'
                  '[upstreams.app.health]\npath = "/size/1"\ninterval = "100ms"\nfall = 1\n')
        time.sleep(0.6)
        assert o.count("/size/1") >= 2          # the checks reached the origin over TLS
        assert get(p) == (200, b"01234")
    finally:
        o.stop()
