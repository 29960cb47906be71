"""Upstream servers and the groups (pools) they form.

A `Server` is one origin address with the live counters that balancing,
health checking and circuit breaking read and write. An `UpstreamGroup` is a
named set of servers with one balancing policy.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from fastproxy.upstream.balance import eligible_servers, make_balancer, make_key_fn
from fastproxy.upstream.breaker import (BreakerConfig, OutlierConfig, OutlierDetector, RetryConfig,
                               RetryPolicy)
from fastproxy.config.schema import dataclass_from_table
from fastproxy.upstream.health import HealthCheckConfig, HealthChecker

# Seconds a connect probe of an ejected server may take (a live server answers in well
# under a millisecond on a LAN; the probe only needs to tell "refused" from "accepted").
PROBE_TIMEOUT = 1.0


class Server:
    """One upstream server and its live state."""

    __slots__ = (
        "host", "port", "weight", "name", "scheme",
        "active",          # requests in flight to this server (balancers read it)
        "healthy",         # verdict of the active health check
        "ejected_until",   # loop time until which passive detection keeps it out
        "ejections",       # consecutive ejections, for the growing back-off
        "failures",        # consecutive connect failures / 5xx seen
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


def group_settings(raw_extras: dict, tcp: bool, problems: list | None = None) -> "GroupSettings":
    """Validated health/outlier/breaker/retry settings of one group.

    Each problem is "section.key: text"; they are appended to `problems` when given (so
    every section is checked), else the first one is raised as ValueError.
    """
    def section(name, cls, durations=()):
        if name not in raw_extras:
            return None
        try:
            return dataclass_from_table(cls, raw_extras[name], durations)
        except ValueError as exc:
            if problems is None:
                raise ValueError(f"{name}.{exc}") from None
            problems.append(f"{name}.{exc}")
            return None

    health = section("health", HealthCheckConfig, ("interval", "timeout"))
    if health is not None and tcp and health.mode == "http" and \
            "mode" not in raw_extras.get("health", {}):
        health = replace(health, mode="tcp")  # a TCP pool is checked by connecting
    return GroupSettings(
        health=health,
        outlier=section("outlier", OutlierConfig,
                        ("base_ejection", "max_ejection", "probe_interval"))
        or OutlierConfig(),
        breaker=section("breaker", BreakerConfig) or BreakerConfig(),
        retry=section("retry", RetryConfig, ("budget_window",)) or RetryConfig(),
    )


@dataclass(frozen=True)
class GroupSettings:
    """The failure-handling knobs of a group (each section's defaults as documented)."""

    health: HealthCheckConfig | None
    outlier: OutlierConfig
    breaker: BreakerConfig
    retry: RetryConfig


class UpstreamGroup:
    """A named pool of servers: its balancer, connection pools, health and failure handling.

    Eligible servers are those healthy (active checks) and not ejected (passive outlier
    detection); the balancer only ever sees those, so an ejected server leaves the Maglev
    table and gets exactly its own keys back when it returns.
    """

    def __init__(self, config, pool_factory, loop) -> None:
        self.config = config
        self.name = config.name
        self.loop = loop
        self.servers = [Server(s.host, s.port, s.weight, s.scheme) for s in config.servers]
        tcp = all(s.scheme == "tcp" for s in self.servers)
        settings = config.extra("settings") or group_settings(dict(config.extras), tcp)
        self.settings = settings
        opts = {"balance_factor": config.hash_balance_factor} \
            if config.balance == "maglev" else {}
        self.balancer = make_balancer(config.balance, self.servers, **opts)
        # The key is computed per request only for policies that read it.
        self.key_fn = make_key_fn(config.hash_key) if self.balancer.uses_key else None
        self.limits = settings.breaker
        self.retry = RetryPolicy(settings.retry)
        self.max_retries = settings.retry.retries
        self.health = HealthChecker(self.servers, settings.health, self._changed) \
            if settings.health is not None else None
        if self.health is not None:
            self.health.group = self.name
        # Ejected servers are probed with the health check's own request when there is
        # one, else with a connect (a checker that is never started, used for its probe).
        prober = self.health or HealthChecker(self.servers, HealthCheckConfig(
            mode="tcp", timeout=PROBE_TIMEOUT))
        self.outliers = OutlierDetector(
            self.servers, settings.outlier, self._changed, loop, prober.probe,
            probe_checks_answers=prober.config.mode == "http")
        self.outliers.group = self.name
        self.pools = {}
        for server in self.servers:
            pool = pool_factory(self, server)
            pool.balancer = self.balancer
            pool.group = self
            pool.on_failure = self.record_failure
            pool.on_response = self._on_response
            self.pools[server] = pool
        self.pending = 0  # requests of this group waiting for a new connection
        # First attempts since the last tick, folded into the retry budget once a tick.
        self.requests_seen = 0
        self._tick = None

    # -- picking ----------------------------------------------------------------

    def pick(self, key: int = 0, exclude=()) -> Server | None:
        """The server for the next request, or None when no server is eligible."""
        return self.balancer.pick(key, exclude)

    def admit(self, server: Server) -> str | None:
        """The circuit-breaker limit a new request to server would exceed, else None."""
        b = self.limits
        if b.max_requests and self.balancer.total_active >= b.max_requests:
            return "max_requests"
        if b.per_server_max_requests and server.active >= b.per_server_max_requests:
            return "per_server_max_requests"
        if self.pools[server].idle:
            return None  # a kept-alive connection is waiting: no new connection needed
        if b.max_connections and sum(s.conns for s in self.servers) >= b.max_connections:
            return "max_connections"
        if b.per_server_max_connections and server.conns >= b.per_server_max_connections:
            return "per_server_max_connections"
        if b.max_pending and self.pending >= b.max_pending:
            return "max_pending"
        if b.per_server_max_pending and server.pending >= b.per_server_max_pending:
            return "per_server_max_pending"
        return None

    def describe_limit(self, limit: str, server: Server) -> str:
        """The 503 body line for a full limit."""
        value = getattr(self.limits, limit)
        where = f"server {server.name}" if limit.startswith("per_server_") else \
            f"upstream {self.name!r}"
        return f"circuit breaker open: {limit} ({value}) reached for {where}"

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
        if not any_method and method not in self.retry.methods:
            return False
        return self.retry.budget.try_retry()

    def _fold(self) -> None:
        n = self.requests_seen
        if n:
            self.requests_seen = 0
            self.retry.budget.record_requests(n)

    def _on_tick(self) -> None:
        self._fold()
        self._tick = self.loop.call_later(self.retry.budget.width, self._on_tick)

    def _on_response(self, server: Server, status: int) -> None:
        """A complete response: 5xx counts against the server, anything else clears it."""
        self.outliers.record_status(server, status)

    def _changed(self, server: Server, eligible: bool) -> None:
        """Health or ejection changed: rebuild the eligible set (Maglev keeps each key's
        owner among the survivors)."""
        self.balancer.update(eligible_servers(self.servers, self.loop.time()))

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start the active health checks and the retry budget's clock (in the loop)."""
        if self.health is not None:
            self.health.start()
        if self._tick is None:
            self._tick = self.loop.call_later(self.retry.budget.width, self._on_tick)

    async def stop_checks(self) -> None:
        """Stop health checks and ejection timers (idempotent)."""
        if self.health is not None and self.health.running:
            await self.health.stop()
        self.outliers.close()
        if self._tick is not None:
            self._tick.cancel()

    def close(self) -> None:
        """Close every pooled connection."""
        for pool in self.pools.values():
            pool.close()
