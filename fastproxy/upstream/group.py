"""Upstream servers and the groups (pools) they form.

A `Server` is one origin address with the live counters that balancing,
health checking and circuit breaking read and write. An `UpstreamGroup` is a
named set of servers with one balancing policy.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from fastproxy._hashing import Counted
from fastproxy.upstream.balance import eligible_servers, make_balancer, make_key_fn
from fastproxy.upstream.breaker import (OutlierDetector, RetryBudget, describe_limit,
                                        limit_reached, retry_methods)
from fastproxy.upstream.h2 import H2Upstream
from fastproxy.upstream.health import HealthCheckConfig, HealthChecker
from fastproxy.upstream.settings import UpstreamGroupConfig
from fastproxy.upstream.tls import client_context

# Seconds a connect probe of an ejected server may take (a live server answers in well
# under a millisecond on a LAN; the probe only needs to tell "refused" from "accepted").
PROBE_TIMEOUT = 1.0
# Slow start updates the ramping weights this many times per window, at most every
# RAMP_MIN_STEP seconds (HAProxy steps a twentieth of slowstart too).
RAMP_STEPS = 20
RAMP_MIN_STEP = 0.05


class Server(Counted):
    """One upstream server and its live state. Two counters are C fields of the compiled
    base, read on every request: `active` (requests in flight, the balancers' input) and
    `failures` (consecutive connect failures / 5xx seen, passive health)."""

    __slots__ = (
        "host", "port", "weight", "name", "scheme",
        "healthy",         # verdict of the active health check
        "ejected_until",   # loop time until which passive detection keeps it out
        "ejections",       # consecutive ejections, for the growing back-off
        "failures_total", "ejections_total",   # monotonic counts, for /metrics
        "conns",           # open upstream connections (breaker limit)
        "pending",         # requests waiting for a connection to it (breaker limit)
    )

    def __init__(self, host: str, port: int, weight: int = 1, scheme: str = "http") -> None:
        self.host = host
        self.port = port
        self.weight = weight
        self.scheme = scheme
        self.name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.active = 0
        self.healthy = True
        self.ejected_until = 0.0
        self.ejections = 0
        self.failures = 0
        self.failures_total = 0
        self.ejections_total = 0
        self.conns = 0
        self.pending = 0

    def __repr__(self) -> str:
        return f"Server({self.name}, weight={self.weight})"


class UpstreamGroup:
    """A named pool of servers: its balancer, connection pools, health and failure handling.

    Eligible servers are those healthy (active checks) and not ejected (passive outlier
    detection); the balancer only ever sees those, so an ejected server leaves the Maglev
    table and gets exactly its own keys back when it returns.
    """

    def __init__(self, config: UpstreamGroupConfig,
                 pool_factory: Callable[[UpstreamGroup, Server], Any],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.name = config.name
        self.loop = loop
        self.servers = [Server(s.host, s.port, s.weight, s.scheme) for s in config.servers]
        opts = {"balance_factor": config.hash_balance_factor} \
            if config.balance == "maglev" else {}
        self.balancer = make_balancer(config.balance, self.servers, **opts)
        # A full server is passed over at pick time (the next in the key's preference order
        # under maglev), so the breaker's 503 means every server is full.
        self.balancer.max_active = config.breaker.per_server_max_requests
        # The key is computed per request only for policies that read it.
        self.key_fn = make_key_fn(config.hash_key) if self.balancer.uses_key else None
        self.limits = config.breaker   # the relay reads the request limits from here
        self.retry_methods = retry_methods(config.retry)
        self.retry_budget = RetryBudget(config.retry.budget_ratio,
                                        config.retry.min_retries_per_second,
                                        config.retry.budget_window)
        self.max_retries = config.retry.retries
        # Checks of https:// servers trust what the group's requests trust (its `ca`,
        # `sni`, client certificate), unless the check says tls_verify = false.
        tls = client_context(config.tls) if config.tls is not None and (
            config.health is None or config.health.tls_verify) else None
        self.health = HealthChecker(self.servers, config.health, self._changed,
                                    ssl_context=tls) if config.health is not None else None
        if self.health is not None:
            self.health.group = self.name
        # Ejected servers are probed with the health check's own request when there is
        # one, else with a connect (a checker that is never started, used for its probe).
        prober = self.health or HealthChecker(self.servers, HealthCheckConfig(
            mode="tcp", timeout=PROBE_TIMEOUT), ssl_context=tls)
        self.outliers = OutlierDetector(
            self.servers, config.outlier, self._changed, loop, prober.probe,
            probe_checks_answers=prober.config.mode == "http")
        self.outliers.group = self.name
        self.pools: dict[Server, Any] = {}
        self.h2: dict = {}     # server -> H2Upstream, for h2c:// servers
        for server in self.servers:
            pool = pool_factory(self, server)
            if server.scheme == "h2c":
                # The relay's HTTP/1.1 exchanges ride streams of one HTTP/2 connection.
                h2 = self.h2[server] = H2Upstream(loop, server, pool.max_head, pool.max_fields)
                pool.opener = h2.open
            elif server.scheme == "https" and config.protocol == "auto":
                # Their own context: ALPN h2 must not reach health checks or shadows,
                # which speak HTTP/1.1 over pool.ssl.
                alpn = client_context(config.tls)
                alpn.set_alpn_protocols(["h2", "http/1.1"])
                h2 = self.h2[server] = H2Upstream(loop, server, pool.max_head, pool.max_fields,
                                                  ssl=alpn)
                pool.opener = h2.open
            pool.balancer = self.balancer
            pool.group = self
            pool.on_failure = self.record_failure
            pool.on_response = self._on_response
            self.pools[server] = pool
        self.pending = 0  # requests of this group waiting for a new connection
        # Slow start: a server that returns (health check, end of an ejection, added by a
        # reload) ramps from ~0 to its weight over config.slow_start seconds. Servers
        # eligible at start do not ramp (as HAProxy: there is no traffic to protect yet).
        self._eligible = set(eligible_servers(self.servers, loop.time()))
        self._ramps: dict[Server, float] = {}     # server -> loop time its ramp began
        self._ramp_timer: asyncio.TimerHandle | None = None
        # First attempts since the last tick are counted in self.balancer.requests_seen
        # (a C field: one store per request) and folded into the retry budget once a tick.
        self._tick: asyncio.TimerHandle | None = None

    # -- picking ----------------------------------------------------------------

    def pick(self, key: int = 0, exclude: Iterable[Server] = ()) -> Server | None:
        """The server for the next request, or None when no server is eligible; a server
        at per_server_max_requests is passed over while another has room."""
        return self.balancer.pick_open(key, exclude)

    def admit(self, server: Server) -> str | None:
        """The circuit-breaker limit a new request to server would exceed, else None."""
        return limit_reached(self.limits, self, server)

    def describe_limit(self, limit: str, server: Server) -> str:
        """The 503 body line for a full limit."""
        return describe_limit(self.limits, limit, self.name, server)

    # -- failure handling ---------------------------------------------------------

    def record_failure(self, server: Server, connect: bool) -> None:
        """A connect failure, or a reset or timeout before any response byte (passive
        detection)."""
        self.outliers.record_failure(server, connect=connect)

    def may_retry(self, method: bytes, attempts: int, any_method: bool) -> bool:
        """Whether a failed attempt may go to another server (counts the retry).

        `any_method`: nothing reached the server (connect failure), so even a
        non-idempotent request is safe to send elsewhere.
        """
        if attempts > self.max_retries or self.max_retries == 0:
            return False
        self._fold()
        if not any_method and method not in self.retry_methods:
            return False
        return self.retry_budget.try_retry()

    def _fold(self) -> None:
        n = self.balancer.requests_seen
        if n:
            self.balancer.requests_seen = 0
            self.retry_budget.record_requests(n)

    def _on_tick(self) -> None:
        self._fold()
        self._tick = self.loop.call_later(self.retry_budget.width, self._on_tick)

    def _on_response(self, server: Server, status: int) -> None:
        """A complete response: 5xx counts against the server, anything else clears it."""
        self.outliers.record_status(server, status)

    def _changed(self, server: Server, eligible: bool) -> None:
        """Health or ejection changed: rebuild the eligible set (Maglev keeps each key's
        owner among the survivors)."""
        self._rebuild()

    def _rebuild(self) -> None:
        now = self.loop.time()
        eligible = eligible_servers(self.servers, now)
        self.balancer.update(eligible)
        now_in = set(eligible)
        if self.config.slow_start:
            for server in now_in - self._eligible:
                self._ramps[server] = now
            for server in [s for s in self._ramps if s not in now_in]:
                del self._ramps[server]
                self.balancer.ramp(server, 1.0)
            self._ramp_step()
        self._eligible = now_in

    def _ramp_step(self) -> None:
        """Set each returning server's share of its weight: elapsed / slow_start (linear,
        as HAProxy and nginx), then come back in a twentieth of the window while any ramps."""
        if self._ramp_timer is not None:
            self._ramp_timer.cancel()
            self._ramp_timer = None
        window = self.config.slow_start
        now = self.loop.time()
        for server, began in list(self._ramps.items()):
            share = (now - began) / window
            if share >= 1.0:
                del self._ramps[server]
            self.balancer.ramp(server, share)
        if self._ramps:
            self._ramp_timer = self.loop.call_later(max(window / RAMP_STEPS, RAMP_MIN_STEP),
                                                    self._ramp_step)

    def carry_over(self, old: UpstreamGroup) -> None:
        """Take over what `old` (this group in the previous configuration) learned of the
        servers both have: health verdicts, ejections and the monotonic counts.

        A reload must not put a server found dead back in the balancer until checks or
        probes of the new generation find it again (seconds of errors, or of failing
        over, on each reload), nor restart the counters /metrics exports."""
        previous = {(s.host, s.port, s.scheme): s for s in old.servers}
        now = self.loop.time()
        for server in self.servers:
            was = previous.get((server.host, server.port, server.scheme))
            if was is None:
                continue
            if self.health is not None and old.health is not None:
                server.healthy = was.healthy   # a down server needs `rise` passes again
            self.outliers.carry_over(server, old.outliers, was, now)
            pool, old_pool = self.pools[server], old.pools.get(was)
            if old_pool is not None:
                pool.opened_total = old_pool.opened_total
        # Slow start goes on across the reload: a server eligible before keeps its place
        # (and a ramp under way continues), one the reload added starts its ramp now.
        carried = {s: previous.get((s.host, s.port, s.scheme)) for s in self.servers}
        self._eligible = {s for s, was in carried.items() if was in old._eligible}
        if self.config.slow_start:
            self._ramps = {s: old._ramps[was] for s, was in carried.items()
                           if was in old._ramps}
        self._rebuild()

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start the active health checks and the retry budget's clock (in the loop)."""
        if self.health is not None:
            self.health.start()
        if self._tick is None:
            self._tick = self.loop.call_later(self.retry_budget.width, self._on_tick)

    async def stop_checks(self) -> None:
        """Stop health checks and ejection timers (idempotent)."""
        if self.health is not None and self.health.running:
            await self.health.stop()
        self.outliers.close()
        if self._tick is not None:
            self._tick.cancel()
        if self._ramp_timer is not None:
            self._ramp_timer.cancel()
            self._ramp_timer = None

    def close(self) -> None:
        """Close every pooled connection."""
        for pool in self.pools.values():
            pool.close()
        for h2 in self.h2.values():
            h2.close()
