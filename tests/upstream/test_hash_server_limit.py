"""Consistent hashing with a per-server request limit, through the proxy, over real sockets.

A key whose server is at `per_server_max_requests` goes to the next server of the key's own
preference order (as HAProxy's hash-balance-factor and nginx's max_conns pass over a full
server), instead of a 503 while other servers have room; other keys keep their servers, and
the key comes back to its owner once the owner has room again.
"""
import time

import pytest

from fastproxy.upstream.balance import make_balancer, make_key_fn
from fastproxy.upstream.group import Server
from origin import Origin
from wire import Conn, crlf, request


class _Target:
    """What the balancer's key function reads from a request (the target, no fields)."""

    def __init__(self, target: str) -> None:
        self.target = target.encode()

    def get(self, name):
        return None


def preference_of(origins, paths):
    """{path: [origin port, ...] in the key's preference order}, as the proxy computes it."""
    balancer = make_balancer("maglev", [Server("127.0.0.1", o.port) for o in origins])
    key = make_key_fn("path")
    return {p: [s.port for s in balancer.preference(key(_Target(p), "127.0.0.1"))]
            for p in paths}


@pytest.fixture
def origins():
    started = [Origin().start() for _ in range(3)]
    yield started
    for o in started:
        o.stop()


def answered_by(response) -> int:
    return int(response.getheader("X-Origin"))


def test_full_owner_passes_the_key_to_its_next_server(start_proxy, tmp_path, origins):
    a, b, c = (o.port for o in origins)
    # Slow requests (/slow/0..02 all wait 2 s) to hold one request in flight on a and b,
    # and a fast key owned by a whose preference order is a, b, c.
    slow = preference_of(origins, [f"/slow/{'0' * k}2" for k in range(60)])
    fast = preference_of(origins, [f"/size/{n}" for n in range(1, 3000)])
    hold_a = next(p for p, order in slow.items() if order[0] == a)
    hold_b = next(p for p, order in slow.items() if order[0] == b)
    key_a = next(p for p, order in fast.items() if order == [a, b, c])
    key_c = next(p for p, order in fast.items() if order[0] == c)
    cfg = tmp_path / "p.toml"
    cfg.write_text(f"""[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
[upstreams.app]
servers = [{", ".join(f'"{o.url}"' for o in origins)}]
balance = "maglev"
hash_key = "path"
[upstreams.app.breaker]
per_server_max_requests = 1
""")
    p = start_proxy("serve", "--config", str(cfg))
    get = "GET {} HTTP/1.1\nHost: x\n\n"
    # Owners answer while they have room.
    assert answered_by(request(p.port, crlf(get.format(key_a)))) == a
    with Conn(p.port) as on_a, Conn(p.port) as on_b:
        on_a.send(crlf(get.format(hold_a)))
        on_b.send(crlf(get.format(hold_b)))
        deadline = time.monotonic() + 5
        while sum(o.count(hold_a) + o.count(hold_b) for o in origins) < 2 and \
                time.monotonic() < deadline:
            time.sleep(0.01)
        assert origins[0].count(hold_a) == 1, "the held request did not reach its owner a"
        assert origins[1].count(hold_b) == 1, "the held request did not reach its owner b"
        # a and b are full: a's key skips a, then b (its next choice, full too), for c.
        r = request(p.port, crlf(get.format(key_a)))
        assert r.status == 200, f"a full owner answered {r.status}: {r.body!r}"
        assert answered_by(r) == c
        # Another key keeps its own server.
        assert answered_by(request(p.port, crlf(get.format(key_c)))) == c
        assert on_a.response().status == 200
        assert on_b.response().status == 200
    # The owner has room again: the key is back on it.
    assert answered_by(request(p.port, crlf(get.format(key_a)))) == a


def test_every_server_full_is_still_refused_by_name(start_proxy, tmp_path, origins):
    """With no room anywhere the breaker's 503 names the limit (the pick does not hide it)."""
    slow = preference_of(origins, [f"/slow/{'0' * k}2" for k in range(60)])
    holds = [next(p for p, order in slow.items() if order[0] == o.port) for o in origins]
    cfg = tmp_path / "p.toml"
    cfg.write_text(f"""[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
[upstreams.app]
servers = [{", ".join(f'"{o.url}"' for o in origins)}]
balance = "maglev"
[upstreams.app.breaker]
per_server_max_requests = 1
""")
    p = start_proxy("serve", "--config", str(cfg))
    conns = [Conn(p.port) for _ in holds]
    try:
        for conn, path in zip(conns, holds):
            conn.send(crlf(f"GET {path} HTTP/1.1\nHost: x\n\n"))
        deadline = time.monotonic() + 5
        while sum(o.count(h) for o, h in zip(origins, holds)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = request(p.port, crlf("GET /size/1 HTTP/1.1\nHost: x\n\n"))
        assert r.status == 503
        assert b"per_server_max_requests (1) reached for server 127.0.0.1:" in r.body
        for conn in conns:
            assert conn.response().status == 200
    finally:
        for conn in conns:
            conn.close()
