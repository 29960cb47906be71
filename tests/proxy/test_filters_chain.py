"""Per-route response header edits and the filter chain, driven directly (start/feed/
flush/finish) with requests from the project's parser; the over-the-wire run needs the
relay's filter slot (tests/test_compress_wire.py covers compression there)."""
from __future__ import annotations

import gzip
from types import SimpleNamespace

import pytest

from fastproxy._http import RequestParser
from fastproxy.config.compression import CompressionConfig
from fastproxy.config.load import ConfigError, from_dict
from fastproxy.proxy.compress import Compression
from fastproxy.proxy.filters import chain, edits_factory
from fastproxy.proxy.router import Router


def req(text: str):
    return RequestParser().feed(text.replace("\n", "\r\n").encode())


def router(routes):
    cfg = from_dict({"listeners": [{"listen": "127.0.0.1:0", "upstream": "a", "routes": routes}],
                     "upstreams": {"a": {"servers": ["http://127.0.0.1:9"]}}})
    return Router(cfg.listeners[0], {"a": SimpleNamespace(name="a")})


ROUTES = [{"path": "/api/", "upstream": "a", "response_headers": {
    "set": {"Cache-Control": "no-transform"}, "add": {"X-Route": "api {method} {path}"},
    "remove": ["Server"]}},
    {"path": "/", "upstream": "a"}]
HEAD = [(b"Content-Type", b"text/html"), (b"Server", b"origin"),
        (b"Cache-Control", b"max-age=60"), (b"Content-Length", b"5000")]


def test_edits_apply_to_their_route_only():
    factory = edits_factory(router(ROUTES))
    flt = factory(b"GET", req("GET /api/x?y=1 HTTP/1.1\nHost: a.test\n\n"))
    out = flt.start(200, list(HEAD))
    assert (b"Server", b"origin") not in out
    assert (b"Cache-Control", b"no-transform") in out and (b"Cache-Control", b"max-age=60") \
        not in out
    assert (b"X-Route", b"api GET /api/x?y=1") in out
    assert flt.feed(b"abc") == b"abc" and flt.flush() == b"" and flt.finish() == b""
    assert factory(b"GET", req("GET /other HTTP/1.1\nHost: a.test\n\n")) is None
    assert edits_factory(router([{"path": "/", "upstream": "a"}])) is None


def test_chain_runs_edits_then_compression():
    comp = Compression(CompressionConfig.from_table({}))
    factory = chain(edits_factory(router(ROUTES)), comp)
    # /api/ sets no-transform: compression steps aside, the edits still apply.
    flt = factory(b"GET", req("GET /api/x HTTP/1.1\nHost: a\nAccept-Encoding: gzip\n\n"))
    out = flt.start(200, list(HEAD))
    assert not any(k == b"Content-Encoding" for k, _ in out)
    assert (b"X-Route", b"api GET /api/x") in out
    # Elsewhere: compression alone, through the chain's feed/flush/finish.
    flt = factory(b"GET", req("GET /page HTTP/1.1\nHost: a\nAccept-Encoding: gzip\n\n"))
    out = flt.start(200, list(HEAD))
    assert (b"Content-Encoding", b"gzip") in out
    body = b"<p>hello filter chain</p>" * 200
    got = flt.feed(body[:1000]) + flt.flush() + flt.feed(body[1000:]) + flt.finish()
    assert gzip.decompress(got) == body
    assert chain(None, None) is None and chain(None, comp) is comp


def test_chain_of_two_active_filters_decodes():
    comp = Compression(CompressionConfig.from_table({}))
    routes = [{"path": "/", "upstream": "a", "response_headers": {"add": {"X-A": "1"}}}]
    factory = chain(edits_factory(router(routes)), comp)
    flt = factory(b"GET", req("GET /p HTTP/1.1\nHost: a\nAccept-Encoding: gzip\n\n"))
    out = flt.start(200, list(HEAD))
    assert (b"X-A", b"1") in out and (b"Content-Encoding", b"gzip") in out
    body = b"<li>item</li>" * 1000
    got = flt.feed(body[:5000]) + flt.flush() + flt.feed(body[5000:]) + flt.finish()
    assert gzip.decompress(got) == body


@pytest.mark.parametrize("edits, problem", [
    ({"add": {"X-A": "{client_ip}"}}, "listeners[0].routes[0].response_headers.add.X-A: unknown variable"),
    ({"remove": ["Content-Length"]}, "listeners[0].routes[0].response_headers.remove: Content-Length"),
])
def test_response_edit_problems(edits, problem):
    with pytest.raises(ConfigError) as info:
        router([{"path": "/", "upstream": "a", "response_headers": edits}])
    assert info.value.problems[0].startswith(problem), info.value.problems
