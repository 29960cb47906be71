"""The compiled common path (relay.FastForward) sends exactly what the Python handler sends.

Two proxies in front of one origin, one with the fast path and one with it switched off
(FASTPROXY_NO_FASTPATH=1); every request must reach the origin with the same head.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wire import Conn, crlf

CASES = [
    "GET /a?b=c HTTP/1.1\nHost: example.test\nUser-Agent: t\n\n",
    "GET / HTTP/1.1\nHost: example.test\nX-Forwarded-For: 10.1.1.1\nX-Forwarded-Proto: https\n"
    "X-Forwarded-Host: evil\nVia: 1.1 edge\n\n",
    "GET / HTTP/1.1\nHost: h\nConnection: keep-alive, X-Drop\nX-Drop: 1\nKeep-Alive: 5\n"
    "TE: trailers\n\n",
    "GET /chat HTTP/1.1\nHost: h\nConnection: Upgrade\nUpgrade: websocket\n\n",
    "GET /chat HTTP/1.1\nHost: h\nConnection: Upgrade\nUpgrade: h2c, WebSocket/13\n\n",
    "GET /x HTTP/1.1\nHost: h\nConnection: Upgrade, HTTP2-Settings\nUpgrade: h2c\n"
    "HTTP2-Settings: AAMAAABkAAQAAP__\n\n",
    "POST /echo HTTP/1.0\nHost: h\nExpect: 100-continue\nContent-Length: 0\n\n",
    "GET / HTTP/1.0\nHost: h\nConnection: keep-alive\n\n",
    "OPTIONS * HTTP/1.1\nHost: h\n\n",
    "OPTIONS /x HTTP/1.1\nHost: h\nMax-Forwards: 5\n\n",
    "TRACE /x HTTP/1.1\nHost: h\n\n",
    "GET http://abs.example:8080/p HTTP/1.1\nHost: other\n\n",
    "DELETE /thing HTTP/1.1\nHost: h\nContent-Length: 0\n\n",
    # The forwarding fields are built in one copy (relay_fastpath._xf_fields): the
    # client's list, repeated or empty, is appended to like the handler does.
    "GET / HTTP/1.1\nHost: h:8080\nX-Forwarded-For: 10.0.0.1\nx-forwarded-for: 10.0.0.2\n\n",
    "GET / HTTP/1.1\nHost: h\nX-Forwarded-For:\n\n",
]


@pytest.fixture
def pair(start_proxy, origin):
    fast = start_proxy("serve", "--listen", "127.0.0.1:0", "--upstream", origin.url)
    os.environ["FASTPROXY_NO_FASTPATH"] = "1"
    try:
        slow = start_proxy("serve", "--listen", "127.0.0.1:0", "--upstream", origin.url)
    finally:
        del os.environ["FASTPROXY_NO_FASTPATH"]
    return fast, slow


def seen(origin, port: int, raw: bytes) -> tuple:
    before = len(origin.requests)
    with Conn(port) as c:
        c.send(raw)
        r = c.response("HEAD" if raw.startswith(b"HEAD") else "GET")
    assert len(origin.requests) == before + 1
    method, target, headers = origin.requests[-1]
    return r.status, method, target, headers


@pytest.mark.parametrize("case", CASES)
def test_same_head_upstream(pair, origin, case):
    fast, slow = pair
    raw = crlf(case)
    assert seen(origin, fast.port, raw) == seen(origin, slow.port, raw)


def test_same_head_with_bodies(pair, origin):
    fast, slow = pair
    for raw in (crlf("POST /echo HTTP/1.1\nHost: h\nContent-Length: 3\n\n") + b"abc",
                crlf("POST /echo HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n"
                     "3\nabc\n0\n\n"),
                crlf("PUT /echo HTTP/1.1\nHost: h\nContent-Length: 2\nExpect: 100-continue\n\n")):
        results = []
        for port in (fast.port, slow.port):
            before = len(origin.requests)
            with Conn(port) as c:
                c.send(raw)
                if b"100-continue" in raw:
                    assert c.fh.readline().startswith(b"HTTP/1.1 100")
                    c.fh.readline()
                    c.send(b"hi")
                r = c.response()
            assert r.status == 200 and len(origin.requests) == before + 1
            results.append((r.body, origin.requests[-1]))
        assert results[0] == results[1]


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
_value = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEF0123456789 ,;=/.", max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.lists(st.tuples(_token, _value), max_size=6),
       path=st.text(alphabet="abcdefghij/?=&", max_size=20))
def test_random_heads_same_upstream(pair, origin, fields, path):
    fast, slow = pair
    lines = "".join(f"X-{n}: {v.strip()}\n" for n, v in fields)
    raw = crlf(f"GET /{path} HTTP/1.1\nHost: h\n{lines}\n")
    assert seen(origin, fast.port, raw) == seen(origin, slow.port, raw)
