"""Slow start through the proxy, over real sockets: a server that comes back ramps up.

A server whose health check passes again (or whose ejection ends, or that a reload adds)
gets a share of its weight that grows from ~0 to 1 over `slow_start` (HAProxy's slowstart,
nginx's slow_start), so a cold or just restarted server is not handed its whole share at
once. Consistent hashing does not ramp (a config error says so, tests/config).
"""
import signal
import time

import pytest

from conftest import reverse_config
from fastproxy.testing import to_toml
from origin import Origin
from wire import Conn, crlf

WINDOW = 3.0       # slow_start of these tests, seconds


@pytest.fixture
def origins():
    started = [Origin().start() for _ in range(2)]
    yield started
    for o in started:
        o.stop()


def answers(conn: Conn, seconds: float, limit: int = 40000) -> list[tuple[float, int]]:
    """(time, answering origin's port) of sequential requests for `seconds` (bounded)."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(out) < limit:
        conn.send(crlf("GET /size/1 HTTP/1.1\nHost: x\n\n"))
        r = conn.response()
        assert r.status == 200
        out.append((time.monotonic(), int(r.getheader("X-Origin"))))
    return out


def reload(proxy, config_text: str) -> None:
    """Write the new configuration, SIGHUP, and wait for the worker to take it."""
    with open(proxy.config_path, "w") as fh:
        fh.write(config_text)
    before = sum("reloaded configuration" in x for x in proxy.stderr_lines)
    proxy.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while sum("reloaded configuration" in x for x in proxy.stderr_lines) == before:
        assert time.monotonic() < deadline, proxy.stderr_lines
        time.sleep(0.02)


def share(samples, port) -> float:
    return sum(1 for _, p in samples if p == port) / max(len(samples), 1)


@pytest.mark.parametrize("policy", ["round_robin", "least_conn", "random2"])
def test_server_back_from_a_failed_check_ramps_to_its_share(run_proxy, origins, policy):
    a, b = origins
    cfg = reverse_config(a.url, b.url)
    cfg["upstreams"]["app"].update(
        balance=policy, slow_start=f"{WINDOW}s",
        health={"path": "/health", "interval": "0.05s", "timeout": "0.5s", "rise": 1, "fall": 1})
    p = run_proxy(cfg)
    with Conn(p.port) as conn:
        b.health_status = 503
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and share(answers(conn, 0.2), b.port) > 0:
            pass
        assert share(answers(conn, 0.2), b.port) == 0, "b still served after failing its check"
        b.health_status = 200
        samples = answers(conn, WINDOW + 2.0)
    back = [t for t, port in samples if port == b.port]
    assert back, "b never came back after its check passed again"
    t0 = back[0]
    early = [s for s in samples if t0 <= s[0] < t0 + WINDOW * 0.3]
    late = [s for s in samples if s[0] >= t0 + WINDOW + 0.3]
    assert len(early) >= 50, f"too few requests in the first part of the window: {len(early)}"
    assert len(late) >= 50, f"too few requests after the window: {len(late)}"
    # Steady share is 0.5; over the first 30% of the ramp it averages about 0.13.
    assert share(early, b.port) < 0.3, \
        f"b took {share(early, b.port):.2f} of requests right after returning (no ramp)"
    assert share(late, b.port) > 0.4, \
        f"b has {share(late, b.port):.2f} after the window (ramp did not reach its share)"
    assert share(late, b.port) < 0.6, \
        f"b has {share(late, b.port):.2f} after the window (more than its weight)"


def test_server_back_from_an_ejection_ramps(run_proxy, origins):
    a, b = origins
    cfg = reverse_config(a.url, b.url)
    cfg["upstreams"]["app"].update(
        balance="round_robin", slow_start=f"{WINDOW}s",
        outlier={"consecutive_failures": 1, "base_ejection": "60s", "max_ejection": "60s",
                 "max_ejection_percent": 50, "probe_interval": "0.1s"})
    p = run_proxy(cfg)
    port_b = b.port
    b.stop()
    with Conn(p.port) as conn:
        # b refuses connections: ejected at the first failure (the request retried on a).
        assert share(answers(conn, 0.3), port_b) == 0
        revived = Origin(port=port_b).start()
        try:
            # A probe finds it well and ends the ejection: it ramps from there.
            samples = answers(conn, WINDOW + 2.5)
        finally:
            revived.stop()
    back = [t for t, port in samples if port == port_b]
    assert back, "b never came back after its ejection"
    t0 = back[0]
    early = [s for s in samples if t0 <= s[0] < t0 + WINDOW * 0.3]
    late = [s for s in samples if s[0] >= t0 + WINDOW + 0.3]
    assert len(early) >= 50, f"too few requests in the first part of the window: {len(early)}"
    assert len(late) >= 50, f"too few requests after the window: {len(late)}"
    assert share(early, port_b) < 0.3, \
        f"b took {share(early, port_b):.2f} right after its ejection ended (no ramp)"
    assert share(late, port_b) > 0.4, \
        f"b has {share(late, port_b):.2f} after the window (ramp did not reach its share)"
    assert share(late, port_b) < 0.6, \
        f"b has {share(late, port_b):.2f} after the window (more than its weight)"


def test_server_added_by_a_reload_ramps(run_proxy, origins):
    a, b = origins
    cfg = reverse_config(a.url)
    cfg["upstreams"]["app"].update(balance="round_robin", slow_start=f"{WINDOW}s")
    p = run_proxy(cfg)
    with Conn(p.port) as conn:
        assert share(answers(conn, 0.2), a.port) == 1.0
        # The same listener (its bound port), one more server.
        doc = reverse_config(a.url, b.url, pidfile=False)
        doc["upstreams"]["app"].update(balance="round_robin", slow_start=f"{WINDOW}s")
        doc["listeners"][0]["listen"] = f"127.0.0.1:{p.port}"
        reload(p, to_toml(doc))
    # A connection keeps the generation it was accepted by: a new one sees the new pool.
    with Conn(p.port) as conn:
        deadline = time.monotonic() + 5
        samples = []
        while time.monotonic() < deadline and not any(port == b.port for _, port in samples):
            samples = answers(conn, 0.05)
        samples += answers(conn, WINDOW + 2.0)
    back = [t for t, port in samples if port == b.port]
    assert back, "the reload's new server never served"
    t0 = back[0]
    early = [s for s in samples if t0 <= s[0] < t0 + WINDOW * 0.3]
    late = [s for s in samples if s[0] >= t0 + WINDOW + 0.3]
    assert len(early) >= 50, f"too few requests in the first part of the window: {len(early)}"
    assert len(late) >= 50, f"too few requests after the window: {len(late)}"
    assert share(early, b.port) < 0.3, \
        f"the added server took {share(early, b.port):.2f} at once (no ramp)"
    assert share(late, b.port) > 0.4, \
        f"the added server has {share(late, b.port):.2f} after the window"
    assert share(late, b.port) < 0.6, \
        f"the added server has {share(late, b.port):.2f} after the window"
