"""Active health checks against real loopback origins flipped between good and bad answers."""
import asyncio
import ssl

import pytest
import trustme
import uvloop

from fastproxy.upstream.health import HealthCheckConfig, HealthChecker
from fastproxy.upstream.group import Server

pytestmark = pytest.mark.filterwarnings("error")

FAST = dict(interval=0.03, timeout=0.5, rise=2, fall=3)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Run a scenario on the stdlib loop and on uvloop (the checker uses whatever is current).

    Fails the test if anything reached the loop's exception handler (a task that died
    unobserved, a callback that raised).
    """
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(scenario, timeout=20.0):
        problems = []
        with asyncio.Runner(loop_factory=factory) as loop_runner:
            loop_runner.get_loop().set_exception_handler(lambda loop, ctx: problems.append(ctx))
            loop_runner.run(asyncio.wait_for(scenario, timeout))
        assert problems == []
    return runner


class Origin:
    """A real HTTP/1.1 server on 127.0.0.1 whose answer can be changed between probes."""

    ANSWERS = {
        "ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        "redirect": b"HTTP/1.1 302 Found\r\nLocation: /\r\nContent-Length: 0\r\n\r\n",
        "error": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
        "unavailable": b"HTTP/1.0 503 Service Unavailable\r\n\r\n",
        "garbage": b"SSH-2.0-OpenSSH_9.6\r\n",
        "bad_status": b"HTTP/1.1 2000 OK\r\n\r\n",
        "no_reason": b"HTTP/1.1 204\r\n\r\n",
        "huge": b"HTTP/1.1 200 " + b"x" * 20000 + b"\r\n\r\n",
    }

    def __init__(self, mode="ok", ssl_context=None):
        self.mode = mode
        self.hits = 0
        self.heads = []
        self.port = 0
        self._server = None
        self._handlers = set()
        self._closing = asyncio.Event()
        self._ssl = ssl_context

    async def start(self):
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self):
        """Stop listening (probes are refused) and end every open connection."""
        self._server.close()
        # Release hanging handlers rather than cancel them: asyncio's start_server reports a
        # cancelled handler task to the loop's exception handler, which fails the test.
        self._closing.set()
        await asyncio.wait_for(asyncio.gather(*self._handlers, return_exceptions=True), 5)
        await self._server.wait_closed()
        self._closing.clear()

    async def _handle(self, reader, writer):
        task = asyncio.current_task()
        self._handlers.add(task)
        try:
            if self.mode == "silent_tcp":
                return
            head = await reader.readuntil(b"\r\n\r\n")
            self.hits += 1
            self.heads.append(head)
            if self.mode == "hang":
                await self._closing.wait()
            elif self.mode != "close":
                writer.write(self.ANSWERS[self.mode])
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()


class Recorder:
    """on_change callback that records flips and lets a test wait for the next one."""

    def __init__(self):
        self.events = []
        self._changed = asyncio.Event()

    def __call__(self, server, healthy):
        self.events.append((server, healthy))
        self._changed.set()

    async def next(self, timeout=5.0):
        await asyncio.wait_for(self._changed.wait(), timeout)
        self._changed.clear()
        return self.events[-1]


def server_for(origin, **kw):
    return Server("127.0.0.1", origin.port, **kw)


async def no_health_tasks_left():
    await asyncio.sleep(0)
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("health ")] == []


def test_fall_marks_down_and_rise_brings_back(run):
    async def scenario():
        origin = await Origin("error").start()
        server = server_for(origin)
        changes = Recorder()
        checker = HealthChecker([server], HealthCheckConfig(**FAST), changes)
        checker.start()
        try:
            assert await changes.next() == (server, False)
            assert not server.healthy
            assert origin.hits == 3  # exactly `fall` failures, the first one at start
            assert checker.last_error(server) == "status 500"
            origin.mode = "ok"
            hits = origin.hits
            assert await changes.next() == (server, True)
            assert server.healthy
            assert origin.hits - hits == 2  # exactly `rise` successes
        finally:
            await checker.stop()
            await origin.stop()
        assert await no_health_tasks_left()

    run(scenario())


@pytest.mark.parametrize("mode", ["close", "garbage", "bad_status", "unavailable", "hang", "huge"])
def test_bad_answers_mark_down(run, mode):
    async def scenario():
        origin = await Origin(mode).start()
        server = server_for(origin)
        changes = Recorder()
        config = HealthCheckConfig(**dict(FAST, timeout=0.1, fall=1))
        checker = HealthChecker([server], config, changes)
        checker.start()
        try:
            assert await changes.next() == (server, False)
            reason = checker.last_error(server)
            assert reason
            if mode == "hang":
                assert reason == "no answer within 0.1s"
        finally:
            await checker.stop()
            await origin.stop()

    run(scenario())


@pytest.mark.parametrize("mode", ["ok", "redirect", "no_reason"])
def test_good_answers_keep_up_and_bring_back(run, mode):
    async def scenario():
        origin = await Origin(mode).start()
        server = server_for(origin)
        server.healthy = False
        changes = Recorder()
        checker = HealthChecker([server], HealthCheckConfig(**FAST), changes)
        checker.start()
        try:
            assert await changes.next() == (server, True)
        finally:
            await checker.stop()
            await origin.stop()

    run(scenario())


def test_expected_status_range_is_configurable(run):
    async def scenario():
        origin = await Origin("redirect").start()
        server = server_for(origin)
        changes = Recorder()
        config = HealthCheckConfig(**dict(FAST, fall=1), expect_status=(200, 299))
        checker = HealthChecker([server], config, changes)
        checker.start()
        try:
            assert await changes.next() == (server, False)
            assert checker.last_error(server) == "status 302"
        finally:
            await checker.stop()
            await origin.stop()

    run(scenario())


def test_refused_then_back_on_the_same_port(run):
    async def scenario():
        origin = await Origin("ok").start()
        server = server_for(origin)
        changes = Recorder()
        checker = HealthChecker([server], HealthCheckConfig(**FAST), changes)
        checker.start()
        try:
            await asyncio.sleep(0.1)
            assert changes.events == [] and server.healthy
            await origin.stop()  # killed: connections are refused from now on
            assert await changes.next() == (server, False)
            assert "Connect" in checker.last_error(server) or "refused" in checker.last_error(server)
            await origin.start()  # same port
            assert await changes.next() == (server, True)
        finally:
            await checker.stop()
            await origin.stop()

    run(scenario())


def test_request_line_and_host_header(run):
    async def scenario():
        origin = await Origin("ok").start()
        server = server_for(origin)
        checker = HealthChecker([server], HealthCheckConfig(path="/healthz?full=1"))
        assert await checker.probe(server) == (True, "")
        head = origin.heads[-1]
        assert head.startswith(b"GET /healthz?full=1 HTTP/1.1\r\n")
        assert f"\r\nHost: 127.0.0.1:{origin.port}\r\n".encode() in head
        assert b"\r\nConnection: close\r\n" in head
        named = HealthChecker([server], HealthCheckConfig(host="app.internal"))
        assert await named.probe(server) == (True, "")
        assert b"\r\nHost: app.internal\r\n" in origin.heads[-1]
        await origin.stop()

    run(scenario())


def test_tcp_mode_only_connects(run):
    async def scenario():
        origin = await Origin("silent_tcp").start()
        server = server_for(origin)
        changes = Recorder()
        checker = HealthChecker([server], HealthCheckConfig(mode="tcp", **FAST), changes)
        checker.start()
        try:
            await asyncio.sleep(0.15)
            assert changes.events == [] and origin.hits == 0  # nothing was sent
            await origin.stop()
            assert await changes.next() == (server, False)
            await origin.start()
            assert await changes.next() == (server, True)
        finally:
            await checker.stop()
            await origin.stop()

    run(scenario())


def test_https_servers_are_checked_over_tls(run):
    async def scenario():
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(server_ctx)
        origin = await Origin("ok", ssl_context=server_ctx).start()
        server = server_for(origin, scheme="https")
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        trusted = HealthChecker([server], HealthCheckConfig(), ssl_context=client_ctx)
        assert await trusted.probe(server) == (True, "")
        untrusted = HealthChecker([server], HealthCheckConfig())
        ok, reason = await untrusted.probe(server)
        assert not ok and "CERTIFICATE_VERIFY_FAILED" in reason
        unverified = HealthChecker([server], HealthCheckConfig(tls_verify=False))
        assert await unverified.probe(server) == (True, "")
        await origin.stop()

    run(scenario())


def test_update_follows_membership_and_stop_is_clean(run):
    async def scenario():
        one = await Origin("ok").start()
        two = await Origin("error").start()
        a, b = server_for(one), server_for(two)
        changes = Recorder()
        checker = HealthChecker([a], HealthCheckConfig(**FAST), changes)
        checker.start()
        try:
            checker.update([a, b])
            assert await changes.next() == (b, False)
            checker.update([b])  # a leaves: its probes stop
            await asyncio.sleep(0.05)
            hits = one.hits
            await asyncio.sleep(0.15)
            assert one.hits == hits
            assert two.hits > 3
        finally:
            await checker.stop()
            await one.stop()
            await two.stop()
        assert not checker.running
        assert await no_health_tasks_left()

    run(scenario())


def test_a_failing_callback_does_not_stop_checks(run):
    async def scenario():
        origin = await Origin("error").start()
        server = server_for(origin)
        calls = []

        def broken(srv, healthy):
            calls.append(healthy)
            raise RuntimeError("callback bug")

        checker = HealthChecker([server], HealthCheckConfig(**dict(FAST, fall=1, rise=1)), broken)
        checker.start()
        try:
            for _ in range(200):
                if calls:
                    break
                await asyncio.sleep(0.01)
            origin.mode = "ok"
            for _ in range(200):
                if len(calls) == 2:
                    break
                await asyncio.sleep(0.01)
            assert calls == [False, True]
        finally:
            await checker.stop()
            await origin.stop()

    run(scenario())


def test_stop_during_a_hanging_probe_leaves_nothing_behind(run):
    async def scenario():
        origin = await Origin("hang").start()
        server = server_for(origin)
        checker = HealthChecker([server], HealthCheckConfig(timeout=5.0))
        checker.start()
        for _ in range(200):
            if origin.hits:
                break
            await asyncio.sleep(0.01)
        assert origin.hits == 1
        await checker.stop()  # cancels the probe in the middle of its read
        assert await no_health_tasks_left()
        await origin.stop()

    run(scenario())


def test_start_needs_a_running_loop():
    with pytest.raises(RuntimeError):
        HealthChecker([Server("127.0.0.1", 1)]).start()


@pytest.mark.parametrize("bad, key", [
    (dict(mode="udp"), "mode"), (dict(path="health"), "path"), (dict(path="/a b"), "path"),
    (dict(path="/a\r\nX: y"), "path"), (dict(interval=0), "interval"), (dict(timeout=-1), "timeout"),
    (dict(rise=0), "rise"), (dict(fall=1.5), "fall"), (dict(expect_status=(300, 200)), "expect_status"),
    (dict(expect_status=(200,)), "expect_status"), (dict(host="a b"), "host"),
    (dict(tls_verify="no"), "tls_verify"),
])
def test_bad_config_names_the_key(bad, key):
    with pytest.raises(ValueError, match=f"^{key}:"):
        HealthCheckConfig(**bad)
