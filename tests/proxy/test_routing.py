"""Ingress routing through the proxy: host and path rules, strip_prefix, canary splits."""
from __future__ import annotations

import collections

import pytest

from origin import Origin
from wire import crlf, request


@pytest.fixture
def two():
    a, b = Origin().start(), Origin().start()
    yield a, b
    a.stop()
    b.stop()


def start(run_proxy, a, b, routes: list[dict], default: str | None = "v1"):
    """A listener with `routes` (default group `default`) over groups v1 (a) and v2 (b)."""
    listener = {"routes": routes} if default is None else {"upstream": default, "routes": routes}
    return run_proxy({"listeners": [listener],
                      "upstreams": {"v1": {"servers": [a.url]}, "v2": {"servers": [b.url]}}})


def who(port, path="/size/1", host="x", extra=""):
    r = request(port, crlf(f"GET {path} HTTP/1.1\nHost: {host}\n{extra}\n"))
    return r.status, r.getheader("X-Origin")


def test_host_and_longest_prefix_win(run_proxy, two):
    a, b = two
    p = start(run_proxy, a, b, [{"path": "/size/", "upstream": "v2"},
                                {"path": "/size/9", "upstream": "v1"},
                                {"host": "*.api.test", "upstream": "v2"}])
    assert who(p.port, "/size/1")[1] == str(b.port)          # prefix route
    assert who(p.port, "/size/9")[1] == str(a.port)          # the longer prefix wins
    assert who(p.port, "/echo", "eu.api.test")[1] == str(b.port)   # wildcard host
    assert who(p.port, "/echo", "api.test")[1] == str(a.port)      # *.x is not x itself
    assert who(p.port, "/echo", "other.test")[1] == str(a.port)    # the listener's default


def test_no_route_and_no_default_is_404(run_proxy, two):
    a, b = two
    p = start(run_proxy, a, b, [{"path": "/only/", "upstream": "v2"}], default=None)
    assert who(p.port, "/elsewhere")[0] == 404


def test_strip_prefix(run_proxy, two):
    a, b = two
    p = start(run_proxy, a, b, [{"path": "/static/", "upstream": "v2", "strip_prefix": True}])
    status, origin = who(p.port, "/static/size/3")
    assert (status, origin) == (200, str(b.port))
    assert b.requests[-1][1] == b"/size/3"


def test_random_canary_share(run_proxy, two):
    a, b = two
    p = start(run_proxy, a, b, [{"path": "/", "upstream": "v1",
                                 "canary": {"upstream": "v2", "percent": 30}}])
    counts = collections.Counter(who(p.port)[1] for _ in range(400))
    share = counts[str(b.port)] / 400
    assert 0.20 < share < 0.40, counts  # 30% +- ~4.5 sigma


def test_sticky_canary_by_header(run_proxy, two):
    a, b = two
    p = start(run_proxy, a, b, [{"path": "/", "upstream": "v1",
                                 "canary": {"upstream": "v2", "percent": 50, "key": "header:X-User"}}])
    placed = {}
    for user in range(40):
        seen = {who(p.port, f"/size/1?r={i}", extra=f"X-User: u{user}\n")[1] for i in range(3)}
        assert len(seen) == 1, (user, seen)  # one user always sees one version
        placed[user] = seen.pop()
    assert set(placed.values()) == {str(a.port), str(b.port)}  # the users are split
