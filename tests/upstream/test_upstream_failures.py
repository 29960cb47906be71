"""Upstream failures over real sockets (issue 10, "upstream handling").

- A timeout is a 504, never the stale keep-alive case: only a close or reset before any
  response byte on a reused connection is resent on a fresh connection; a timeout is
  retried by the retry policy alone (idempotent methods, attempts, budget).
- An ejected server is probed while it is out and returns as soon as it answers, with
  exactly its own Maglev keys, with the CLI defaults (no health table).
"""
from __future__ import annotations

import time

import pytest

from conftest import reverse_config
from origin import Origin
from wire import Conn, crlf


def group_cfg(servers, timeouts: dict, **group) -> dict:
    """A reverse listener to group "app" of the `servers` origins with `group` settings."""
    cfg = reverse_config(*(s.url for s in servers), timeouts=timeouts)
    cfg["upstreams"]["app"].update(group)
    return cfg


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_timeout_on_a_reused_connection_is_not_resent(run_proxy, origin, method):
    p = run_proxy(group_cfg([origin], {"upstream_header": "0.5s"}, retry={"retries": 0}))
    with Conn(p.port) as c:
        c.send(crlf("GET /size/1 HTTP/1.1\nHost: h\n\n"))   # a pooled connection now
        assert c.response().status == 200
    assert origin.connections == 1
    with Conn(p.port) as c:
        t0 = time.monotonic()
        c.send(crlf(f"{method} /slow/2 HTTP/1.1\nHost: h\n\n"))
        r = c.response()
        took = time.monotonic() - t0
    assert r.status == 504 and b"did not answer within 0.5s" in r.body
    assert took < 0.95, took               # one timeout, not two
    time.sleep(0.3)
    assert origin.count("/slow/2") == 1    # the origin saw the request once


def test_timeout_is_retried_by_the_retry_policy_only(run_proxy):
    servers = [Origin().start() for _ in range(2)]
    try:
        p = run_proxy(group_cfg(servers, {"upstream_header": "0.4s"}, retry={"retries": 1},
                                outlier={"consecutive_failures": 0}))
        with Conn(p.port) as c:
            for _ in range(2):                       # a pooled connection to each server
                c.send(crlf("GET /size/1 HTTP/1.1\nHost: h\n\n"))
                assert c.response().status == 200
            # GET (idempotent): one retry, on the other server; POST: none.
            c.send(crlf("GET /slow/2 HTTP/1.1\nHost: h\n\n"))
            assert c.response().status == 504
        time.sleep(0.3)
        assert [s.count("/slow/2") for s in servers] == [1, 1]
        with Conn(p.port) as c:
            c.send(crlf("POST /slow/2 HTTP/1.1\nHost: h\nContent-Length: 1\n\nx"))
            assert c.response().status == 504
        time.sleep(0.3)
        assert sorted(s.count("/slow/2") for s in servers) == [1, 2]
    finally:
        for s in servers:
            s.stop()


def test_ejected_server_is_back_as_soon_as_it_answers(start_proxy):
    """CLI defaults (maglev, no health table, 30 s base ejection): a restarted origin gets
    its keys back within 2 s, and no client request fails meanwhile."""
    servers = [Origin().start() for _ in range(3)]
    revived = None
    try:
        args = ["serve", "--mode", "reverse", "--listen", "127.0.0.1:0", "--balance", "maglev"]
        for s in servers:
            args += ["--upstream", s.url]
        p = start_proxy(*args)
        paths = [f"/size/{i}" for i in range(1, 61)]   # the default key is the path

        def sweep(conn) -> dict:
            out = {}
            for path in paths:
                conn.send(crlf(f"GET {path} HTTP/1.1\nHost: h\n\n"))
                r = conn.response()
                assert r.status == 200, (path, r.status, r.body)
                out[path] = r.getheader("X-Origin")
            return out

        with Conn(p.port) as c:
            home = sweep(c)
            victim = servers[1]
            mine = [path for path, o in home.items() if o == str(victim.port)]
            assert len(set(home.values())) == 3 and mine
            port = victim.port
            victim.stop()
            for _ in range(3):   # its keys fail over (retries), then it is ejected
                during = sweep(c)
                assert str(port) not in during.values()
            time.sleep(1.0)
            revived = Origin(port=port).start()
            t0 = time.monotonic()
            while time.monotonic() - t0 < 5:
                c.send(crlf(f"GET {mine[0]} HTTP/1.1\nHost: h\n\n"))
                r = c.response()
                assert r.status == 200
                if r.getheader("X-Origin") == str(port):
                    break
                time.sleep(0.05)
            back = time.monotonic() - t0
            assert back < 2.0, f"keys back after {back:.1f}s"
            assert sweep(c) == home          # exactly its own keys, nobody else's
    finally:
        for s in servers + ([revived] if revived else []):
            s.stop()


def test_a_groups_own_read_timeout_fires_on_time(run_proxy, origin):
    # The deadline sweep ran at a fraction of the shortest *global* timeout (5 s connect:
    # once a second), so a group's read_timeout of 0.2 s fired anywhere up to 1.2 s.
    p = run_proxy(group_cfg([origin], {}, read_timeout="0.2s", retry={"retries": 0}))
    took = []
    for i in range(5):
        with Conn(p.port) as c:
            t0 = time.monotonic()
            c.send(crlf(f"GET /slow/2?i={i} HTTP/1.1\nHost: h\n\n"))
            r = c.response()
            took.append(time.monotonic() - t0)
        assert r.status == 504 and b"did not answer within 0.2s" in r.body, r.body
    # Not a speed claim: a timeout's meaning. The sweep runs every 0.05 s now, every 1 s
    # before (each firing 0.2-1.2 s: five all below 0.7 s about 1 time in 30).
    assert max(took) < 0.7, took
