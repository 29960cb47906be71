"""Outlier ejection (on the loop's clock), breaker limits, retry rules and the retry budget."""
import asyncio
import time

import pytest

from fastproxy.upstream.balance import eligible_servers, make_balancer
from fastproxy.upstream.breaker import (
    BreakerConfig, OutlierConfig, OutlierDetector, RetryBudget, RetryConfig, is_idempotent,
)
from fastproxy.upstream.group import Server
from origin import Origin
from wire import Conn, crlf, request


def pool(n):
    return [Server(f"10.1.0.{i}", 80) for i in range(n)]


# --- outlier ejection -------------------------------------------------------------------


def test_consecutive_failures_eject_and_a_success_resets_the_count():
    servers = pool(10)
    s = servers[0]
    detector = OutlierDetector(servers, OutlierConfig(consecutive_failures=3))
    assert not detector.record_failure(s, now=0.0)
    assert not detector.record_status(s, 502, now=0.0)
    assert not detector.record_status(s, 404, now=0.0)  # a 4xx is the client's problem
    assert s.failures == 0
    assert not detector.record_failure(s, now=0.0)
    assert not detector.record_failure(s, now=0.0)
    assert detector.record_status(s, 503, now=1.0)
    assert s.ejected_until == 31.0 and s.ejections == 1
    assert detector.ejected() == [s]
    assert eligible_servers(servers, 30.9) == servers[1:]
    assert not detector.record_failure(s, now=2.0)  # already out


def test_back_off_doubles_and_is_capped():
    servers = pool(10)
    s = servers[0]
    config = OutlierConfig(consecutive_failures=1, base_ejection=10, max_ejection=35)
    detector = OutlierDetector(servers, config)
    now = 0.0
    durations = []
    for _ in range(4):
        assert detector.record_failure(s, now=now)
        durations.append(s.ejected_until - now)
        now = s.ejected_until
        assert detector.expire(now) == [s]
        now += 1.0  # fails again soon after coming back
    assert durations == [10, 20, 35, 35]
    # Behaving for a whole max_ejection resets the back-off.
    now += 35.0
    assert detector.record_failure(s, now=now)
    assert s.ejected_until - now == 10


def test_at_most_the_configured_share_is_ejected():
    servers = pool(10)
    detector = OutlierDetector(servers, OutlierConfig(consecutive_failures=1,
                                                      max_ejection_percent=20))
    assert detector.max_ejected() == 2
    results = [detector.record_failure(s, now=0.0) for s in servers]
    assert results == [True, True] + [False] * 8
    # When one returns, the next failing server may go.
    assert detector.expire(30.0) == servers[:2]
    assert detector.record_failure(servers[5], now=30.0)


@pytest.mark.parametrize("n, pct, allowed", [
    (10, 10, 1), (30, 10, 3), (3, 10, 1), (2, 50, 1), (2, 100, 1), (1, 100, 0), (5, 0, 0), (0, 10, 0),
])
def test_share_limit_never_empties_the_pool(n, pct, allowed):
    detector = OutlierDetector(pool(n), OutlierConfig(max_ejection_percent=pct))
    assert detector.max_ejected() == allowed


def test_disabled_ejection():
    servers = pool(5)
    detector = OutlierDetector(servers, OutlierConfig(consecutive_failures=0))
    assert not any(detector.record_failure(servers[0], now=0.0) for _ in range(100))


def test_update_forgets_removed_servers():
    servers = pool(4)
    detector = OutlierDetector(servers, OutlierConfig(consecutive_failures=1,
                                                      max_ejection_percent=25))
    assert detector.record_failure(servers[0], now=0.0)
    detector.update(servers[1:])
    assert detector.ejected() == []
    assert detector.next_expiry() is None


def test_ejection_timing_follows_the_loop_clock():
    async def scenario():
        loop = asyncio.get_running_loop()
        servers = pool(4)
        balancer = make_balancer("round_robin", servers)
        log = []

        def on_change(server, eligible):
            log.append((server, eligible, loop.time()))
            balancer.update(eligible_servers(servers, loop.time()))

        config = OutlierConfig(consecutive_failures=2, base_ejection=0.05, max_ejection=0.2,
                               max_ejection_percent=25)
        detector = OutlierDetector(servers, config, on_change, loop)
        bad = servers[2]
        detector.record_failure(bad)
        start = loop.time()   # the ejection starts at or after this
        assert detector.record_failure(bad)
        assert bad not in balancer.servers and len(balancer.servers) == 3
        assert detector.next_expiry() == pytest.approx(start + 0.05, abs=0.01)
        while len(log) < 2:
            await asyncio.sleep(0.01)
        (_, out, t_out), (_, back, t_back) = log
        assert (out, back) == (False, True)
        # Measured from before the ejection: the time between the detector reading the clock
        # and its callback (a log line) may be a millisecond on a busy machine.
        assert t_out >= start and t_back - start >= 0.05 - 1e-3
        assert bad in balancer.servers and bad.failures == 0
        # second ejection lasts twice as long
        detector.record_failure(bad)
        assert detector.record_failure(bad)
        assert bad.ejected_until - loop.time() == pytest.approx(0.1, abs=0.01)
        detector.close()  # timers cancelled: nothing fires after this
        await asyncio.sleep(0.15)
        assert len(log) == 3 and bad in detector.ejected()

    asyncio.run(scenario())


def test_ejected_server_returns_at_the_first_passing_probe():
    async def scenario():
        loop = asyncio.get_running_loop()
        servers = pool(3)
        bad = servers[1]
        answers = [False, False, True]
        probed = []

        async def probe(server):
            probed.append((server, loop.time()))
            return answers.pop(0), ""

        back = []
        config = OutlierConfig(consecutive_failures=1, base_ejection=30.0, max_ejection=60.0,
                               max_ejection_percent=50, probe_interval=0.02)
        detector = OutlierDetector(servers, config, lambda s, e: back.append(e), loop, probe)
        start = loop.time()
        assert detector.record_failure(bad, connect=True)
        while not back[1:]:
            await asyncio.sleep(0.01)
        assert back == [False, True] and detector.ejected() == []
        assert [s for s, _ in probed] == [bad] * 3
        assert loop.time() - start < 1.0          # not the 30 s ejection
        assert bad.ejected_until <= loop.time() and bad.ejections == 1
        # Ejected again: the back-off is kept (60 s now) and probes come half as often.
        probed.clear()
        answers[:] = [False] * 10
        assert detector.record_failure(bad, connect=True)
        assert bad.ejected_until - loop.time() == pytest.approx(60.0, abs=0.1)
        await asyncio.sleep(0.13)
        gaps = [b - a for (_, a), (_, b) in zip(probed, probed[1:])]
        assert gaps and all(g >= 0.04 - 0.005 for g in gaps)
        detector.close()
        n = len(probed)
        await asyncio.sleep(0.1)
        assert len(probed) == n and detector.ejected() == [bad]   # probes stopped

    asyncio.run(scenario())


@pytest.mark.parametrize("answers_checked", [False, True])
def test_a_connect_probe_does_not_end_a_5xx_ejection(answers_checked):
    async def scenario():
        loop = asyncio.get_running_loop()
        servers = pool(2)
        probed = []

        async def probe(server):
            probed.append(server)
            return True, ""

        config = OutlierConfig(consecutive_failures=1, max_ejection_percent=50,
                               probe_interval=0.01)
        detector = OutlierDetector(servers, config, None, loop, probe,
                                   probe_checks_answers=answers_checked)
        assert detector.record_status(servers[0], 503)   # it answers, badly
        await asyncio.sleep(0.1)
        # A connect says nothing about its answers; the health check's request does.
        assert (detector.ejected() == []) is answers_checked
        assert bool(probed) is answers_checked
        detector.close()

    asyncio.run(scenario())


def test_failing_on_change_does_not_break_detection(caplog):
    servers = pool(2)

    def broken(server, eligible):
        raise RuntimeError("boom")

    detector = OutlierDetector(servers, OutlierConfig(consecutive_failures=1), broken)
    assert detector.record_failure(servers[0], now=0.0)
    assert "on_change callback failed" in caplog.text
    assert detector.expire(100.0) == [servers[0]]


@pytest.mark.parametrize("bad, key", [
    (dict(consecutive_failures=-1), "consecutive_failures"),
    (dict(base_ejection=0), "base_ejection"),
    (dict(max_ejection=float("inf")), "max_ejection"),
    (dict(base_ejection=60, max_ejection=30), "max_ejection"),
    (dict(max_ejection_percent=101), "max_ejection_percent"),
    (dict(max_ejection_percent="10%"), "max_ejection_percent"),
    (dict(probe_interval=-1), "probe_interval"),
])
def test_outlier_config_errors_name_the_key(bad, key):
    with pytest.raises(ValueError, match=f"^{key}:"):
        OutlierConfig(**bad)


# --- circuit breaker limits -------------------------------------------------------------


# The breaker is one stateless check (breaker.limit_reached) over the counters the relay
# and the balancer keep; these run it where it runs, in a proxy, over real sockets
# (test_pools.py has the pool-wide max_requests case).


def breaker_proxy(start_proxy, tmp_path, servers, breaker: str, group: str = ""):
    cfg = tmp_path / "b.toml"
    urls = ", ".join(f'"{s.url}"' for s in servers)
    cfg.write_text(f"""[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
[upstreams.app]
servers = [{urls}]
balance = "least_conn"
{group}
[upstreams.app.breaker]
{breaker}
""")
    return start_proxy("serve", "--config", str(cfg))


@pytest.fixture
def origin1():
    o = Origin().start()
    yield o
    o.stop()


def test_per_server_request_limit_opens_fast_and_closes(start_proxy, tmp_path, origin1):
    p = breaker_proxy(start_proxy, tmp_path, [origin1], "per_server_max_requests = 1")
    with Conn(p.port) as slow:
        slow.send(crlf("GET /slow/1 HTTP/1.1\nHost: x\n\n"))
        time.sleep(0.3)
        t0 = time.monotonic()
        r = request(p.port, crlf("GET /size/1 HTTP/1.1\nHost: x\n\n"))
        assert r.status == 503 and time.monotonic() - t0 < 0.5   # open: no waiting
        assert b"per_server_max_requests (1) reached for server 127.0.0.1:" in r.body
        assert slow.response().status == 200
    # Closed again once the request in flight is done (the balancer's count fell).
    assert request(p.port, crlf("GET /size/1 HTTP/1.1\nHost: x\n\n")).status == 200


def test_connection_limit_counts_the_pools_connections(start_proxy, tmp_path, origin1):
    p = breaker_proxy(start_proxy, tmp_path, [origin1], "max_connections = 1\nmax_requests = 0")
    with Conn(p.port) as slow:
        slow.send(crlf("GET /slow/1 HTTP/1.1\nHost: x\n\n"))
        time.sleep(0.3)
        r = request(p.port, crlf("GET /size/1 HTTP/1.1\nHost: x\n\n"))
        assert r.status == 503 and b"max_connections (1) reached for upstream 'app'" in r.body
        assert slow.response().status == 200
        # The one connection is idle in the pool now: a new request takes it, so the
        # connection limit does not apply to it.
        assert request(p.port, crlf("GET /size/1 HTTP/1.1\nHost: x\n\n")).status == 200


@pytest.mark.parametrize("key", ["max_requests", "per_server_max_pending", "max_connections"])
def test_breaker_config_errors_name_the_key(key):
    with pytest.raises(ValueError, match=f"^{key}:"):
        BreakerConfig(**{key: -1})


# --- retries ----------------------------------------------------------------------------


def test_idempotent_methods_per_rfc_9110():
    assert all(is_idempotent(m) for m in (b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
    assert not any(is_idempotent(m) for m in (b"POST", b"PATCH", b"CONNECT", b"get"))


@pytest.mark.parametrize("method, group, attempts", [
    ("GET", "", 3),                                       # idempotent: retried twice
    ("POST", "", 1),                                      # not idempotent: never resent
    ("POST", '[upstreams.app.retry]\nextra_methods = ["POST"]', 3),
    ("GET", "[upstreams.app.retry]\nretries = 0", 1),
])
def test_retry_rules_after_a_reset_before_the_response(start_proxy, tmp_path, method, group,
                                                      attempts):
    """Each origin closes /drop without answering: the request reached it, so only the
    retry rules (RFC 9110 9.2.2 methods, extra_methods, retries) may send it again."""
    origins = [Origin().start() for _ in range(3)]
    try:
        p = breaker_proxy(start_proxy, tmp_path, origins, "", group)
        body = "Content-Length: 0\n" if method == "POST" else ""
        r = request(p.port, crlf(f"{method} /drop HTTP/1.1\nHost: x\n{body}\n"))
        assert r.status == 502
        assert sum(o.count("/drop") for o in origins) == attempts
    finally:
        for o in origins:
            o.stop()


def test_budget_caps_retries_at_a_share_of_requests():
    now = [100.0]
    budget = RetryBudget(ratio=0.2, min_per_second=1.0, window=10.0, clock=lambda: now[0])
    # The floor alone: 1 per second over 10 s.
    assert sum(budget.try_retry() for _ in range(50)) == 10
    for _ in range(100):
        budget.record_request()
    # 100 requests allow 20 more.
    assert sum(budget.try_retry() for _ in range(50)) == 20
    assert not budget.can_retry()
    # Ten seconds later the window has moved on: the old counts are gone.
    now[0] += 10.0
    assert budget.requests == 100 and budget.can_retry()
    assert budget.requests == 0 and budget.retries == 0


def test_budget_window_slides_bucket_by_bucket():
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=10.0)
    for t in range(10):
        budget.record_request(now=float(t))
    assert budget.requests == 10
    budget.record_retry(now=9.5)
    budget.can_retry(now=12.0)  # buckets of t=0, 1, 2 leave the window
    assert budget.requests == 7 and budget.retries == 1
    budget.can_retry(now=1000.0)
    assert budget.requests == 0 and budget.retries == 0
    budget.record_request(now=999.0)  # a clock that steps back lands in the current bucket
    assert budget.requests == 1


def test_budget_stops_a_retry_storm_during_an_outage():
    # Every first attempt fails during an outage: retries stay near the ratio, not 3x.
    now = [0.0]
    budget = RetryBudget(ratio=0.2, min_per_second=1.0, window=10.0, clock=lambda: now[0])
    sent = retried = 0
    for i in range(2000):
        now[0] = i * 0.01  # 100 requests per second for 20 s
        budget.record_request()
        sent += 1
        attempts = 1
        while attempts <= 3 and budget.try_retry():
            retried += 1
            attempts += 1
    assert retried / sent <= 0.2 + 10 / 1000 + 0.01


@pytest.mark.parametrize("bad, key", [
    (dict(retries=-1), "retries"), (dict(retries=11), "retries"),
    (dict(extra_methods="POST"), "extra_methods"), (dict(extra_methods=("post",)), "extra_methods"),
    (dict(budget_ratio=-0.1), "budget_ratio"), (dict(min_retries_per_second=float("nan")),
                                                 "min_retries_per_second"),
    (dict(budget_window=0), "budget_window"),
])
def test_retry_config_errors_name_the_key(bad, key):
    with pytest.raises(ValueError, match=f"^{key}:"):
        RetryConfig(**bad)
