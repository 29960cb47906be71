"""Active health checks of a pool's servers (HTTP GET or TCP connect), on the current loop.

Each server gets one task that probes it at once, then every `interval` seconds (with +-10%
jitter, so workers and pools drift apart instead of probing in lockstep). `fall` failures in
a row mark a healthy server down, `rise` successes in a row bring it back (HAProxy's rise and
fall); each flip sets `server.healthy` and calls `on_change(server, healthy)`, so the pool can
`update()` its balancer. Not on the request path: plain asyncio streams are fine here.
"""
from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastproxy.errorlog import describe

log = logging.getLogger("fastproxy.upstream.health")
_reported: dict[tuple[str, str], bool] = {}   # (group, server) -> healthy, as last logged

MODES = ("http", "tcp")
# A status line longer than this is not from an HTTP server we want to send traffic to.
MAX_STATUS_LINE = 8192


def _check_number(name: str, value: Any, low: float, high: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low < value <= high:
        raise ValueError(f"{name}: expected a number > {low} and <= {high}, got {value!r}")


def _check_count(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
        raise ValueError(f"{name}: expected an integer from 1 to 100, got {value!r}")


def _visible_ascii(text: str) -> bool:
    # RFC 9112 section 3.2: the request-target is made of visible ASCII (no SP, CTL or
    # non-ASCII), or the check request would be malformed or split.
    return text.isascii() and all(0x21 <= ord(ch) <= 0x7E for ch in text)


@dataclass(frozen=True)
class HealthCheckConfig:
    """Knobs of a pool's active health check (defaults as HAProxy's `check`)."""

    mode: str = "http"          # "http": GET path and check the status; "tcp": connect only
    path: str = "/"             # origin-form target of the GET
    interval: float = 2.0       # seconds between probes of one server
    timeout: float = 1.0        # seconds for one probe (connect, send, status line)
    rise: int = 2               # successes in a row that bring a server back
    fall: int = 3               # failures in a row that mark a server down
    expect_status: tuple[int, int] = (200, 399)  # inclusive range of good statuses
    host: str = ""              # Host header of the GET; empty: the server's host:port
    tls_verify: bool = True     # verify https servers' certificates

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: expected http or tcp, got {self.mode!r}")
        if not isinstance(self.path, str) or not self.path.startswith("/") or not _visible_ascii(
            self.path
        ):
            raise ValueError(f"path: expected an origin-form path such as /health, got {self.path!r}")
        _check_number("interval", self.interval, 0.0, 86400.0)
        _check_number("timeout", self.timeout, 0.0, 3600.0)
        _check_count("rise", self.rise)
        _check_count("fall", self.fall)
        statuses = self.expect_status
        if (
            not isinstance(statuses, (tuple, list)) or len(statuses) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in statuses)
            or not 100 <= statuses[0] <= statuses[1] <= 599
        ):
            raise ValueError(
                f"expect_status: expected [low, high] statuses within 100..599, got {statuses!r}"
            )
        if not isinstance(self.host, str) or (self.host and not _visible_ascii(self.host)):
            raise ValueError(f"host: expected a host name without spaces, got {self.host!r}")
        if not isinstance(self.tls_verify, bool):
            raise ValueError(f"tls_verify: expected true or false, got {self.tls_verify!r}")


class _State:
    __slots__ = ("successes", "failures", "last_error")

    def __init__(self) -> None:
        self.successes = 0
        self.failures = 0
        self.last_error = ""


class HealthChecker:
    """Probes every server of a pool on the running loop and reports verdict changes.

    `start()` (inside a running loop) launches the probes, `update(servers)` follows
    membership changes, `await stop()` cancels and awaits every probe task.
    """

    def __init__(self, servers: Iterable[Any], config: HealthCheckConfig | None = None,
                 on_change: Callable[[Any, bool], None] | None = None,
                 ssl_context: ssl.SSLContext | None = None, preamble: bytes = b"") -> None:
        self.config = config or HealthCheckConfig()
        # Sent first on every probe: a send_proxy group's servers expect a PROXY header
        # on every connection (a LOCAL one: the check speaks for no client).
        self.preamble = preamble
        self.on_change = on_change
        self._servers = list(servers)
        self._state: dict[Any, _State] = {s: _State() for s in self._servers}
        self._tasks: dict[Any, asyncio.Task] = {}
        self._retired: set[asyncio.Task] = set()
        self._ssl_context = ssl_context
        self._running = False
        self.group = ""     # the group's name, for the log

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._running

    def start(self) -> None:
        """Start probing every server (must be called from the running loop)."""
        if self._running:
            return
        asyncio.get_running_loop()  # fail here, not in a task, when no loop runs
        self._running = True
        for server in self._servers:
            self._spawn(server)

    def _spawn(self, server: Any) -> None:
        self._tasks[server] = asyncio.get_running_loop().create_task(
            self._run(server), name=f"health {server.name}"
        )

    def update(self, servers: Iterable[Any]) -> None:
        """Probe exactly these servers from now on (new ones start, removed ones stop)."""
        servers = list(servers)
        keep = set(servers)
        for server in [s for s in self._tasks if s not in keep]:
            task = self._tasks.pop(server)
            task.cancel()
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
        for server in [s for s in self._state if s not in keep]:
            del self._state[server]
        for server in servers:
            if server not in self._state:
                self._state[server] = _State()
            if self._running and server not in self._tasks:
                self._spawn(server)
        self._servers = servers

    async def stop(self) -> None:
        """Stop probing; returns once every probe task has finished."""
        self._running = False
        tasks = list(self._tasks.values()) + list(self._retired)
        self._tasks.clear()
        self._retired.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def last_error(self, server: Any) -> str:
        """Return why the last failed probe of `server` failed ("" if none yet)."""
        state = self._state.get(server)
        return state.last_error if state else ""

    async def _run(self, server: Any) -> None:
        interval = self.config.interval
        task = asyncio.current_task()
        while self._tasks.get(server) is task:
            ok, error = await self.probe(server)
            if task is not None and task.cancelling():
                # A cancel that landed in the middle of a probe came out as a probe error
                # (a racing timeout or a transport error): honour it, or stop() never ends.
                raise asyncio.CancelledError
            self._record(server, ok, error)
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))

    def _record(self, server: Any, ok: bool, error: str) -> None:
        state = self._state.get(server)
        if state is None:
            return
        if ok:
            state.successes += 1
            state.failures = 0
            if not server.healthy and state.successes >= self.config.rise:
                self._flip(server, True, "")
        else:
            state.failures += 1
            state.successes = 0
            state.last_error = error
            if server.healthy and state.failures >= self.config.fall:
                self._flip(server, False, error)

    def _flip(self, server: Any, healthy: bool, error: str) -> None:
        server.healthy = healthy
        # A reload builds new checkers whose servers start up; a server that is still
        # down then is not news: only changes from what was last logged are.
        key = (self.group, server.name)
        if _reported.get(key, True) != healthy:
            _reported[key] = healthy
            fields = {"group": self.group, "server": server.name}
            if healthy:
                log.info("upstream %s: server %s is up (health check passed %d times)",
                         self.group, server.name, self.config.rise,
                         extra={"event": "health.up", "fields": fields})
            else:
                log.warning("upstream %s: server %s is down (health check: %s)",
                            self.group, server.name, error,
                            extra={"event": "health.down", "fields": {**fields,
                                                                      "reason": error}})
        if self.on_change is not None:
            try:
                self.on_change(server, healthy)
            except Exception:
                log.exception("health on_change callback failed for %s", server.name)

    def _tls(self, server: Any) -> ssl.SSLContext | None:
        if getattr(server, "scheme", "http") != "https":
            return None
        if self._ssl_context is None:
            ctx = ssl.create_default_context()
            if not self.config.tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl_context = ctx
        return self._ssl_context

    def _request(self, server: Any) -> bytes:
        host = self.config.host or server.name
        return (
            f"GET {self.config.path} HTTP/1.1\r\nHost: {host}\r\n"
            "User-Agent: fastproxy-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        ).encode("ascii")

    async def probe(self, server: Any) -> tuple[bool, str]:
        """Probe `server` once; return (ok, reason of the failure or "")."""
        cfg = self.config
        writer = None
        try:
            async with asyncio.timeout(cfg.timeout):
                tls = self._tls(server)
                reader, writer = await asyncio.open_connection(
                    server.host, server.port, ssl=tls,
                    server_hostname=server.host if tls is not None else None,
                    limit=MAX_STATUS_LINE,
                )
                if self.preamble:
                    writer.write(self.preamble)
                if cfg.mode == "tcp":
                    return True, ""
                writer.write(self._request(server))
                line = await reader.readline()
        except TimeoutError:
            return False, f"no answer within {cfg.timeout}s"
        except (OSError, EOFError, ValueError, ssl.SSLError) as exc:
            # ValueError: status line over MAX_STATUS_LINE (asyncio.LimitOverrunError's base).
            return False, describe(exc)
        finally:
            if writer is not None:
                writer.close()
        return self._judge(line)

    def _judge(self, line: bytes) -> tuple[bool, str]:
        # RFC 9112 section 4: status-line = HTTP-version SP status-code SP [ reason-phrase ]
        if not line:
            return False, "connection closed before a status line"
        parts = line.rstrip(b"\r\n").split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not (
            parts[1].isdigit()
        ):
            return False, f"not an HTTP/1.x status line: {line[:80]!r}"
        status = int(parts[1])
        low, high = self.config.expect_status
        if not low <= status <= high:
            return False, f"status {status}"
        return True, ""
