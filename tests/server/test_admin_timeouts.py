"""The admin listener bounds its waits with the [timeouts] of the proxy listeners.

It had none (outside probe, 12-05): a connection that sent half a request head, or a
Content-Length it never sent, or stayed idle after a response, was held for ever, each
holding a descriptor of the worker whose proxied connections need them too. Now the head
must come within client_header (a keep-alive wait gets client_idle more), a body within
client_body, and the answer is 408 or a close.
"""
from __future__ import annotations

import time

from conftest import reverse_config
from wire import Conn


def _config(origin) -> dict:
    cfg = reverse_config(origin.url, admin="127.0.0.1:0",
                         timeouts={"client_header": "1s", "client_idle": "1s",
                                   "client_body": "1s"})
    return cfg


def _closed_within(c: Conn, seconds: float) -> tuple[float, bytes]:
    """(seconds until the server closed, what it sent) or fail after `seconds`."""
    t0 = time.monotonic()
    c.sock.settimeout(seconds)
    data = c.read_all()
    took = time.monotonic() - t0
    assert took < seconds, f"still open after {took:.1f}s"
    return took, data


def test_half_a_head_gets_408_and_a_close(run_proxy, origin):
    p = run_proxy(_config(origin))
    with Conn(p.admin_port()) as c:
        c.send(b"GET /status HTTP/1.1\r\nHost: localhost\r\n")
        took, data = _closed_within(c, 8)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert took > 0.5      # the 408 came from the 1 s client_header, not at once


def test_a_body_that_never_comes_is_cut(run_proxy, origin):
    p = run_proxy(_config(origin))
    with Conn(p.admin_port()) as c:
        c.send(b"POST /purge HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nabc")
        _took, data = _closed_within(c, 8)
    assert data.startswith(b"HTTP/1.1 408 "), data


def test_an_idle_keep_alive_connection_is_closed(run_proxy, origin):
    p = run_proxy(_config(origin))
    with Conn(p.admin_port()) as c:
        c.send(b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert c.response().status == 200
        took, _data = _closed_within(c, 8)
    assert took > 1.0      # client_idle (1 s) + client_header (1 s) from the response on
