"""The pool parts together against real loopback origins, one of them killed mid-test.

This test drives the pieces without the proxy, the way the request path uses them
(key -> pick -> acquire -> real HTTP GET -> outlier detector -> retry on another server
within the retry budget; the breaker's limits are checked in the proxy, tests/upstream/test_breaker.py;
tests/upstream/test_pools.py does the same through the running proxy), and checks what
clients of a proxy would see: no errors for idempotent requests,
keys staying on their server, only the dead server's keys moving, and those keys returning
to it when it comes back.
"""
import asyncio

import pytest
import uvloop

from fastproxy.upstream.balance import eligible_servers, make_balancer, make_key_fn
from fastproxy.upstream.breaker import OutlierConfig, OutlierDetector, RetryBudget
from fastproxy.upstream.health import HealthCheckConfig, HealthChecker
from fastproxy.upstream.group import Server

pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Run a scenario on both loops; fail if anything reached the loop's exception handler."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(scenario, timeout=30.0):
        problems = []
        with asyncio.Runner(loop_factory=factory) as loop_runner:
            loop_runner.get_loop().set_exception_handler(lambda loop, ctx: problems.append(ctx))
            loop_runner.run(asyncio.wait_for(scenario, timeout))
        assert problems == []
    return runner


class Origin:
    """A real HTTP/1.1 origin on 127.0.0.1 that names itself in every response body."""

    def __init__(self, ident):
        self.ident = ident
        self.port = 0
        self.served = 0
        self._server = None

    async def start(self):
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def kill(self):
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.served += 1
            body = self.ident.encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class Request:
    """What the balancer's key function reads from the parser's Request."""

    def __init__(self, target):
        self.target = target

    def get(self, name):
        return None


async def http_get(server, target):
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                     % (target, server.name.encode()))
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        return status, (await reader.readexactly(length)).decode()
    finally:
        writer.close()


class Pool:
    """The wiring the proxy will do for one upstream group."""

    def __init__(self, servers, loop):
        self.servers = servers
        self.loop = loop
        self.balancer = make_balancer("maglev", servers)
        self.key_fn = make_key_fn("uri")
        self.retries = RetryBudget(min_per_second=50, clock=loop.time)
        self.health = HealthChecker(servers, HealthCheckConfig(interval=0.05, timeout=0.5,
                                                               rise=1, fall=2), self.refresh)
        # As the group does, an ejected server is probed with the health check's request
        # and comes back at the first pass. The timer is far longer than any test: the
        # ejection lasts exactly while the origin is down, not a time a loaded machine
        # may outrun in the middle of a sweep (the timer is test_breaker's).
        self.outliers = OutlierDetector(
            servers, OutlierConfig(consecutive_failures=2, base_ejection=60.0, max_ejection=60.0,
                                   max_ejection_percent=25, probe_interval=0.05),
            self.refresh, loop, self.health.probe, probe_checks_answers=True)

    def refresh(self, server=None, eligible=None):
        self.balancer.update(eligible_servers(self.servers, self.loop.time()))

    async def fetch(self, target):
        key = self.key_fn(Request(target), "127.0.0.1")
        self.retries.record_request()
        tried = []
        while True:
            server = self.balancer.pick(key, tried)
            assert server is not None, "pool emptied"
            self.balancer.acquire(server)
            try:
                status, body = await http_get(server, target)
            except OSError:
                self.outliers.record_failure(server)
                tried.append(server)
                if len(tried) <= 2 and self.retries.try_retry():   # GET: idempotent
                    continue
                raise
            finally:
                self.balancer.release(server)
            self.outliers.record_status(server, status)
            return body


def assert_only_victim_keys_moved(pool, by_name, before, after, victim):
    """Keys follow the table, and the table moved (almost) only the victim's keys."""
    for target, ident in after.items():
        assert ident != victim
        if before[target] != victim:
            # (The victim's keys may differ: those retried before the ejection went to the
            # next server of their walk, not necessarily their owner in the rebuilt table.)
            owner = pool.balancer.owner(pool.key_fn(Request(target), ""))
            assert ident == by_name[owner.name]
    moved = [t for t, ident in before.items() if ident != victim and after[t] != ident]
    # Maglev rebuilds the table, and a removal moves a sliver (~0.02-0.3%) of the
    # survivors' keys too (test_hashing measures it on 200,000 keys); here just bound it.
    assert len(moved) <= 3, moved


def test_killed_origin_is_hidden_and_gets_its_own_keys_back(run):
    async def scenario():
        loop = asyncio.get_running_loop()
        origins = [await Origin(f"o{i}").start() for i in range(4)]
        servers = [Server("127.0.0.1", o.port) for o in origins]
        by_name = {s.name: o.ident for s, o in zip(servers, origins)}
        pool = Pool(servers, loop)
        targets = [b"/item/%d" % i for i in range(60)]

        async def sweep():
            # One at a time: a concurrent burst would (rightly) spill keys under bounded load.
            return {t: await pool.fetch(t) for t in targets}

        home = await sweep()
        assert await sweep() == home  # sticky
        assert len(set(home.values())) == 4  # spread
        for target, ident in home.items():
            owner = pool.balancer.owner(pool.key_fn(Request(target), ""))
            assert by_name[owner.name] == ident

        victim = origins[1]
        await victim.kill()
        during = await sweep()  # no client-visible error: retries go to the next server
        assert "o1" not in during.values()
        assert victim.ident not in [by_name[s.name] for s in pool.balancer.servers]
        assert servers[1].ejections == 1
        # The keys swept before the second failure ejected it followed the full table, and
        # a few of those the smaller table moves (the sliver below); so the table is
        # checked on a sweep made wholly while the victim is out.
        hidden = await sweep()
        assert servers[1].ejections == 1, "ejected again: it came back while still down"
        assert_only_victim_keys_moved(pool, by_name, home, hidden, "o1")
        for target, ident in during.items():
            if home[target] != "o1":
                assert ident in (home[target], hidden[target]), (target, ident)

        await victim.start()  # back on the same port
        while servers[1] not in pool.balancer.servers:
            await asyncio.sleep(0.02)
        assert await sweep() == home  # exactly its own keys back
        pool.outliers.close()
        for origin in origins:
            await origin.kill()

    run(scenario())


def test_health_checks_drain_a_dead_origin_before_requests_hit_it(run):
    async def scenario():
        loop = asyncio.get_running_loop()
        origins = [await Origin(f"o{i}").start() for i in range(3)]
        servers = [Server("127.0.0.1", o.port) for o in origins]
        pool = Pool(servers, loop)
        pool.health.start()
        try:
            targets = [b"/page/%d" % i for i in range(30)]
            async def sweep():
                return [await pool.fetch(t) for t in targets]

            before = await sweep()
            await origins[2].kill()
            while servers[2].healthy:
                await asyncio.sleep(0.02)
            assert servers[2] not in pool.balancer.servers
            failures = servers[2].failures
            after = await sweep()
            assert "o2" not in after and servers[2].failures == failures  # never tried
            by_name = {s.name: o.ident for s, o in zip(servers, origins)}
            assert_only_victim_keys_moved(pool, by_name, dict(zip(targets, before)),
                                          dict(zip(targets, after)), "o2")
            await origins[2].start()
            while not servers[2].healthy:
                await asyncio.sleep(0.02)
            assert await sweep() == before
        finally:
            await pool.health.stop()
            pool.outliers.close()
            for origin in origins:
                await origin.kill()

    run(scenario())
