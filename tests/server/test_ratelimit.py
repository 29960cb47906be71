"""Rate limits: token-bucket timing on an injected clock, Retry-After honesty, bounded memory,
connection counting, keys, config errors, and a loopback listener answering 429."""
import asyncio
import http.client
import socket
import threading

import pytest
import uvloop
from hypothesis import given, settings, strategies as st

from fastproxy.limits import (
    ConnectionLimiter, RateLimitConfig, RateLimits, RequestRateLimiter,
)


class Clock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


class Req:
    def __init__(self, **headers):
        self.fields = {k.lower().replace("_", "-").encode(): v for k, v in headers.items()}

    def get(self, name, default=None):
        return self.fields.get(name, default)


# --- token bucket -----------------------------------------------------------------------

def test_burst_then_rate():
    clock = Clock()
    rl = RequestRateLimiter(rate=2, burst=4, clock=clock)
    assert [rl.check("a") for _ in range(4)] == [0, 0, 0, 0]
    assert rl.check("a") == 1          # 1 token short at 2/s: 0.5 s, rounded up
    clock.now += 0.49
    assert rl.check("a") == 1
    clock.now += 0.02                  # 0.51 s since empty: one token back
    assert rl.check("a") == 0
    assert rl.check("a") == 1
    clock.now += 10                    # refills to the burst, not beyond
    assert [rl.check("a") for _ in range(5)] == [0, 0, 0, 0, 1]


def test_slow_rate_retry_after_counts_down():
    clock = Clock()
    rl = RequestRateLimiter(rate=0.1, burst=1, clock=clock)
    assert rl.check("k") == 0
    assert rl.check("k") == 10
    clock.now += 3
    assert rl.check("k") == 7
    clock.now += 6.5
    assert rl.check("k") == 1          # 0.5 s left, still at least one second
    clock.now += 0.5
    assert rl.check("k") == 0


def test_default_burst_is_the_rate():
    rl = RequestRateLimiter(rate=5, clock=Clock())
    assert [rl.check("x") for _ in range(6)] == [0] * 5 + [1]
    assert RequestRateLimiter(rate=0.5, clock=Clock()).burst == 1


def test_keys_are_independent():
    rl = RequestRateLimiter(rate=1, burst=1, clock=Clock())
    assert rl.check("10.0.0.1") == 0 and rl.check("10.0.0.1") == 1
    assert rl.check("10.0.0.2") == 0


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.05, 1000), burst=st.integers(1, 50),
       steps=st.lists(st.floats(0, 5), min_size=1, max_size=60))
def test_waiting_retry_after_always_admits(rate, burst, steps):
    clock = Clock()
    rl = RequestRateLimiter(rate=rate, burst=burst, clock=clock)
    for dt in steps:
        clock.now += dt
        wait = rl.check("k")
        assert wait >= 0 and isinstance(wait, int)
        if wait:
            clock.now += wait
            assert rl.check("k") == 0, (rate, burst, wait)


def test_sustained_rate_is_respected():
    clock = Clock()
    rl = RequestRateLimiter(rate=10, burst=10, clock=clock)
    admitted = 0
    for _ in range(10_000):      # 100 s of a client trying every 10 ms
        clock.now += 0.01
        admitted += rl.check("k") == 0
    assert 1000 <= admitted <= 1010  # 10/s for 100 s, plus the initial burst at most


def test_idle_buckets_expire():
    clock = Clock()
    rl = RequestRateLimiter(rate=1, burst=5, clock=clock)
    for i in range(50):
        rl.check(f"idle{i}")
    assert len(rl) == 50
    clock.now += 5.0  # burst / rate: every idle bucket is full again, same as absent
    for _ in range(64):
        rl.check("active")
    assert len(rl) == 1


def test_memory_is_bounded_and_active_keys_survive():
    clock = Clock()
    rl = RequestRateLimiter(rate=1, burst=2, max_keys=100, clock=clock)
    assert rl.check("hot") == 0 and rl.check("hot") == 0
    for i in range(10_000):  # a flood of one-off clients, no time passing
        rl.check(f"spoof{i}")
        if i % 50 == 0:
            assert rl.check("hot") == 1  # still limited: its bucket was kept
        assert len(rl) <= 100
    assert "hot" in rl._buckets


def test_rate_must_be_positive():
    with pytest.raises(ValueError, match="^rate:"):
        RequestRateLimiter(rate=0)


# --- connections ------------------------------------------------------------------------

def test_connection_limit():
    cl = ConnectionLimiter(2)
    assert cl.open("a") and cl.open("a")
    assert not cl.open("a")           # refused and not counted
    assert cl.count("a") == 2 and cl.open("b")
    cl.close("a")
    assert cl.open("a") and not cl.open("a")
    for _ in range(2):
        cl.close("a")
    cl.close("b")
    assert len(cl) == 0               # nothing kept for clients without connections
    cl.close("never-opened")          # harmless
    assert len(cl) == 0


def test_connection_limit_zero_is_unlimited():
    cl = ConnectionLimiter(0)
    assert all(cl.open("a") for _ in range(1000))
    assert cl.count("a") == 1000


# --- keys and config --------------------------------------------------------------------

def test_keys():
    by_ip = RateLimits(RateLimitConfig(rate=1))
    assert by_ip.key(Req(x_api_key=b"k1"), "10.0.0.1") == "10.0.0.1"
    by_header = RateLimits(RateLimitConfig(rate=1, key="header:X-Api-Key"))
    assert by_header.key(Req(x_api_key=b"k1"), "10.0.0.1") == b"k1"
    assert by_header.key(Req(), "10.0.0.1") == "10.0.0.1"   # absent: fall back to the address
    xff = RateLimits(RateLimitConfig(rate=1, key="header:X-Forwarded-For"))
    assert xff.key(Req(x_forwarded_for=b"6.6.6.6, 203.0.113.9"), "10.0.0.1") == b"203.0.113.9"
    assert xff.key(Req(x_forwarded_for=b"203.0.113.9"), "10.0.0.1") == b"203.0.113.9"
    assert xff.key(Req(x_forwarded_for=b"1.1.1.1, "), "10.0.0.1") == "10.0.0.1"


def test_ipv6_clients_are_counted_per_prefix():
    clock = Clock()
    limits = RateLimits(RateLimitConfig(rate=1, burst=1, max_connections=1), clock=clock)
    assert limits.client_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert limits.client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert limits.client_key("192.0.2.1") == "192.0.2.1"
    assert limits.check_request(Req(), "2001:db8:1:2::1") == 0
    assert limits.check_request(Req(), "2001:db8:1:2::2") == 1        # same /64: same bucket
    assert limits.check_request(Req(), "2001:db8:1:3::1") == 0        # another /64
    assert limits.open_connection("2001:db8:1:2::7")
    assert not limits.open_connection("2001:db8:1:2:ffff::9")
    limits.close_connection("2001:db8:1:2::7")
    assert limits.open_connection("2001:db8:1:2::8")
    wide = RateLimits(RateLimitConfig(rate=1, ipv6_prefix=128))
    assert wide.client_key("2001:db8::1") == "2001:db8::1/128"


def test_check_request_uses_the_key_and_can_be_off():
    clock = Clock()
    limits = RateLimits(RateLimitConfig(rate=1, burst=1, key="header:X-Api-Key"), clock=clock)
    assert limits.check_request(Req(x_api_key=b"a"), "10.0.0.1") == 0
    assert limits.check_request(Req(x_api_key=b"a"), "10.0.0.2") == 1   # same key, other IP
    assert limits.check_request(Req(x_api_key=b"b"), "10.0.0.1") == 0
    off = RateLimits()
    assert off.requests is None
    assert all(off.check_request(Req(), "1.2.3.4") == 0 for _ in range(100))
    assert off.connections.limit == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_connections=-1), r"^max_connections: "),
    (dict(max_connections=1.5), r"^max_connections: "),
    (dict(rate=-1), r"^rate: "),
    (dict(rate=float("nan")), r"^rate: "),
    (dict(rate=float("inf")), r"^rate: "),
    (dict(rate="10"), r"^rate: "),
    (dict(burst=5), r"^burst: needs rate"),
    (dict(rate=1, burst=-2), r"^burst: "),
    (dict(key="ip"), r"^key: "),
    (dict(key="header:"), r"^key: "),
    (dict(key="header:Bad Name"), r"^key: "),
    (dict(max_keys=0), r"^max_keys: "),
    (dict(ipv6_prefix=0), r"^ipv6_prefix: "),
    (dict(ipv6_prefix=129), r"^ipv6_prefix: "),
])
def test_config_errors_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RateLimitConfig(**kwargs)


def test_config_defaults_are_off():
    c = RateLimitConfig()
    assert c.max_connections == 0 and c.rate == 0 and c.key == "client_ip"
    assert RateLimitConfig(rate=2.5).effective_burst == 3


# --- a loopback listener answering 429 -------------------------------------------------------

class LimitedListener:
    """Counts connections per client IP and requests per key, answering 429 + Retry-After."""

    def __init__(self, limits: RateLimits):
        self.limits = limits
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self._main())

    async def _main(self):
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        async with server:
            await self.stop.wait()

    async def _handle(self, reader, writer):
        ip = writer.get_extra_info("peername")[0]
        if not self.limits.open_connection(ip):
            writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n"
                         b"Connection: close\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                wait = self.limits.check_request(Req(), ip)
                if wait:
                    writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: %d\r\n"
                                 b"Content-Length: 0\r\n\r\n" % wait)
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.limits.close_connection(ip)
            writer.close()

    def close(self):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


def test_loopback_listener_answers_429():
    clock = Clock()  # frozen: no token comes back during the test
    listener = LimitedListener(RateLimits(RateLimitConfig(max_connections=2, rate=1, burst=3),
                                          clock=clock))
    try:
        c1 = http.client.HTTPConnection("127.0.0.1", listener.port, timeout=10)
        c2 = http.client.HTTPConnection("127.0.0.1", listener.port, timeout=10)
        statuses = []
        for conn in (c1, c1, c2, c2):
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            statuses.append((resp.status, resp.getheader("Retry-After")))
        assert statuses == [(200, None), (200, None), (200, None), (429, "1")]
        # Two connections are open for 127.0.0.1: a third is refused.
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as s3:
            s3.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s3.recv(200).startswith(b"HTTP/1.1 429")
        c2.close()
        deadline = 100
        while listener.limits.connections.count("127.0.0.1") > 1 and deadline:
            deadline -= 1
            threading.Event().wait(0.02)   # the listener sees the close asynchronously
        c3 = http.client.HTTPConnection("127.0.0.1", listener.port, timeout=10)
        c3.request("GET", "/")
        resp = c3.getresponse()
        resp.read()
        assert resp.status == 429 and resp.getheader("Retry-After") == "1"  # accepted, rate-limited
        c1.close()
        c3.close()
    finally:
        listener.close()


def test_module_doc_toml_example_builds_the_config():
    import textwrap
    import tomllib
    import fastproxy.limits as module
    doc = module.__doc__
    snippet = textwrap.dedent(doc[doc.index("::\n", doc.index("Configuration (")) + 3:])
    config = RateLimitConfig.from_table(tomllib.loads(snippet)["forward"]["limits"])
    assert config.effective_burst == 40


def test_from_table_names_unknown_keys():
    assert RateLimitConfig.from_table({"rate": 5}).rate == 5
    with pytest.raises(ValueError, match=r"^rps: unknown key"):
        RateLimitConfig.from_table({"rps": 5})
