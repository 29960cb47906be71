"""A cache in front of routes that choose the upstream by request fields.

The cache answers before routing and keyed only the URL, so a route condition on a
header (`headers = { x-env = "beta" }`) or a canary forced by a header let one client
fill the entry every client was then answered with: `curl -H 'X-Env: beta' /page` and
the whole site got the beta upstream's page for its freshness lifetime (outside probe,
12-05). The fields the routes read now select a variant, as if the response said Vary
for them, and a canary share that no field decides (random, client_ip) is not stored.
"""
from __future__ import annotations

import pytest

from origin import Origin
from wire import Conn, RawServer


def beta_origin(server, s):
    """The other upstream: a cacheable page saying BETA for every request."""
    while True:
        server.read_head(s)
        s.sendall(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 4\r\n"
                  b"\r\nBETA")


@pytest.fixture
def beta():
    server = RawServer(beta_origin)
    yield server
    server.close()


def _get(port: int, target: str, fields: str = "") -> tuple[bytes, str]:
    with Conn(port) as c:
        c.send(f"GET {target} HTTP/1.1\r\nHost: h\r\n{fields}\r\n".encode())
        r = c.response()
        assert r.status == 200, (r.status, r.body)
        return r.body, r.getheader("Cache-Status") or ""


def _config(origin: Origin, beta: RawServer, route: dict) -> dict:
    return {"listeners": [{"upstream": "prod", "routes": [route]}],
            "upstreams": {"prod": {"servers": [origin.url]}, "beta": {"servers": [beta.url]}},
            "cache": {"size": "16MiB"}}


PAGE = "/c/page?cc=max-age%3D600"


@pytest.mark.parametrize("route, chosen", [
    ({"path": "/c/", "headers": {"x-env": "beta"}, "upstream": "beta"}, "X-Env: beta"),
    ({"path": "/c/", "upstream": "prod",
      "canary": {"upstream": "beta", "percent": 0, "force": "header:X-Canary"}},
     "X-Canary: always"),
    ({"path": "/c/", "upstream": "prod",
      "canary": {"upstream": "beta", "percent": 0, "force": "cookie:side"}},
     "Cookie: side=always"),
])
def test_a_routed_response_is_not_answered_to_other_clients(run_proxy, origin, beta, route,
                                                             chosen):
    p = run_proxy(_config(origin, beta, route))
    body, status = _get(p.port, PAGE, chosen + "\r\n")
    assert body == b"BETA" and "stored" in status, status
    # Another client (no such field) gets prod, and its own entry afterwards.
    assert _get(p.port, PAGE)[0] == b"/c/page #1\n"
    body, status = _get(p.port, PAGE)
    assert body == b"/c/page #1\n" and "hit" in status, status
    assert origin.count(PAGE) == 1
    body, status = _get(p.port, PAGE, chosen + "\r\n")
    assert body == b"BETA" and "hit" in status, status
    assert len(beta.received) == 1


def test_a_share_no_field_decides_is_not_stored(run_proxy, origin, beta):
    route = {"path": "/c/s/", "upstream": "prod",
             "canary": {"upstream": "beta", "percent": 50, "key": "random"}}
    p = run_proxy(_config(origin, beta, route))
    split = "/c/s/page?cc=max-age%3D600"
    for _ in range(4):
        body, status = _get(p.port, split)
        assert "detail=canary-split" in status, status
    assert origin.count(split) + len(beta.received) == 4
    # A path outside the split is cached as before.
    _get(p.port, PAGE)
    assert "hit" in _get(p.port, PAGE)[1]


def test_routes_without_conditions_keep_plain_entries(run_proxy, origin, beta):
    route = {"path": "/b/", "upstream": "beta"}
    p = run_proxy(_config(origin, beta, route))
    _get(p.port, PAGE)
    body, status = _get(p.port, PAGE, "X-Env: beta\r\n")
    assert body == b"/c/page #1\n" and "hit" in status, status
