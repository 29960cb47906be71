"""Idle upstream connections above `keepalive`: kept `pool_purge_delay`, then closed.

A burst of concurrent requests (an HTTP/2 client's streams, or many HTTP/1.1 clients)
leaves more idle connections than `keepalive`. They wait the purge delay for the next
burst (HAProxy's pool-purge-delay), then the deadline sweep shrinks the pool back.
The origin counts the connections it accepts and those still open.
"""
from __future__ import annotations

import threading
import time

from conftest import reverse_config
from origin import Origin
from wire import crlf, request

BURST = 12


def burst(port: int, n: int = BURST) -> list[int]:
    """n requests at once, each on its own client connection, overlapping at the origin."""
    statuses: list[int] = []

    def one() -> None:
        r = request(port, crlf("GET /slow/0.4 HTTP/1.1\nHost: x\n\n"))
        statuses.append(r.status)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return statuses


def wait_open(origin: Origin, want: int, seconds: float) -> int:
    """The origin's open connections once they drop to `want` (or after `seconds`)."""
    end = time.monotonic() + seconds
    while len(origin.open) > want and time.monotonic() < end:
        time.sleep(0.05)
    return len(origin.open)


def test_second_burst_within_the_delay_reuses_connections(run_proxy, origin):
    # The default delay (5 s) keeps the surplus: no new upstream connection for burst two.
    p = run_proxy(reverse_config(origin.url, upstreams={
        "app": {"servers": [origin.url], "keepalive": 2}}))
    assert burst(p.port) == [200] * BURST
    accepted = origin.connections
    assert accepted == BURST
    assert len(origin.open) == BURST   # the surplus is still idle, not closed at once
    assert burst(p.port) == [200] * BURST
    assert origin.connections == accepted


def test_pool_shrinks_to_keepalive_after_the_delay(run_proxy, origin):
    p = run_proxy(reverse_config(origin.url, upstreams={
        "app": {"servers": [origin.url], "keepalive": 3, "pool_purge_delay": "1s"}}))
    assert burst(p.port) == [200] * BURST
    assert len(origin.open) == BURST
    time.sleep(0.5)
    assert len(origin.open) == BURST   # not before the delay
    assert wait_open(origin, 3, 5.0) == 3
    time.sleep(1.5)
    assert len(origin.open) == 3       # the kept ones stay (keepalive_timeout is 60 s)
    assert burst(p.port, 3) == [200] * 3
    assert origin.connections == BURST  # and they are reused


def test_zero_delay_closes_the_surplus_at_once(run_proxy, origin):
    p = run_proxy(reverse_config(origin.url, upstreams={
        "app": {"servers": [origin.url], "keepalive": 2, "pool_purge_delay": 0}}))
    assert burst(p.port) == [200] * BURST
    assert wait_open(origin, 2, 2.0) == 2


def test_kept_connections_still_expire_after_keepalive_timeout(run_proxy, origin):
    p = run_proxy(reverse_config(origin.url, upstreams={
        "app": {"servers": [origin.url], "keepalive": 2, "keepalive_timeout": "1500ms",
                "pool_purge_delay": "500ms"}}))
    assert burst(p.port, 4) == [200] * 4
    assert wait_open(origin, 2, 3.0) == 2
    assert wait_open(origin, 0, 4.0) == 0


def test_keepalive_zero_still_means_no_reuse(run_proxy, origin):
    # As nginx without `keepalive`: every request on a connection of its own, closed after
    # it, whatever the purge delay says (it keeps a burst's surplus, and there is no pool).
    p = run_proxy(reverse_config(origin.url, upstreams={
        "app": {"servers": [origin.url], "keepalive": 0}}))
    for i in range(3):
        r = request(p.port, crlf(f"GET /size/1?i={i} HTTP/1.1\nHost: x\n\n"))
        assert r.status == 200
    assert origin.connections == 3
    assert wait_open(origin, 0, 2.0) == 0
