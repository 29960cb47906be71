"""Failure handling of one upstream pool: outlier ejection, breaker limits, retry rules.

Three independent guards, each sans-IO apart from an optional timer, read by the proxy on
the request path:

- `OutlierDetector` (passive detection): consecutive connect failures or 5xx from a server
  eject it for base * 2**k seconds (k = its recent ejections), capped; at most a configured
  share of the pool is ejected at once, so a misbehaving check or a pool-wide outage cannot
  empty the pool (Envoy's outlier detection, with a doubling back-off). While a server is
  out it is probed (a connect, or the health check's request when the group has one) and
  returns as soon as a probe passes: a restarted server is back in well under a second
  instead of after the whole ejection. The probe interval doubles with k as the ejection
  does, so a server that keeps failing after each return is tried less and less often.
- `limit_reached` (the circuit breaker): caps on connections, pending requests and requests
  in flight, per pool and per server, checked over the counters the relay and balancer keep;
  a full limit is named so the proxy can answer 503 saying which.
- `retry_methods` / `RetryBudget`: which failed attempts may be retried (idempotent methods
  per RFC 9110 section 9.2.2, others only if configured; never after response bytes) and a
  budget that keeps retries below a share of recent requests, so retries cannot amplify an
  outage (Finagle's and Linkerd's retry budgets).

Times are event-loop times (`loop.time()`); every method that needs "now" takes it, or reads
the loop (or time.monotonic) when it is omitted.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("fastproxy.upstream.breaker")

ChangeCallback = Callable[[Any, bool], None]
# probe(server) -> (ok, reason): one check of an ejected server (health.HealthChecker.probe).
Probe = Callable[[Any], Awaitable[tuple[bool, str]]]


def _int_option(name: str, value: Any, low: int, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (
        high is not None and value > high
    ):
        bound = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name}: expected an integer {bound}, got {value!r}")


def _number_option(name: str, value: Any, low: float, high: float | None = None,
                   low_inclusive: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value >= low if low_inclusive else value > low) and (high is None or value <= high)
    if not ok:
        lower = f">= {low}" if low_inclusive else f"> {low}"
        bound = f"{lower} and <= {high}" if high is not None else lower
        raise ValueError(f"{name}: expected a number {bound}, got {value!r}")


# --- outlier ejection -------------------------------------------------------------------

@dataclass(frozen=True)
class OutlierConfig:
    """Passive detection knobs (defaults as Envoy's outlier detection)."""

    # Consecutive connect failures or 5xx that eject a server; 0 turns ejection off.
    consecutive_failures: int = 5
    # First ejection lasts this long (seconds); each repeat doubles it, up to max_ejection.
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    # At most this share of the pool is ejected at once (at least one server when > 0, never
    # the last one).
    max_ejection_percent: float = 10.0
    # Seconds between probes of an ejected server (doubling with each repeated ejection);
    # a passing probe ends the ejection at once. 0: no probes, the timer alone.
    probe_interval: float = 0.5

    def __post_init__(self) -> None:
        _int_option("consecutive_failures", self.consecutive_failures, 0)
        _number_option("base_ejection", self.base_ejection, 0.0, low_inclusive=False)
        _number_option("max_ejection", self.max_ejection, 0.0, low_inclusive=False)
        if self.max_ejection < self.base_ejection:
            raise ValueError(
                f"max_ejection: must be >= base_ejection ({self.base_ejection}), "
                f"got {self.max_ejection}"
            )
        _number_option("max_ejection_percent", self.max_ejection_percent, 0.0, 100.0)
        _number_option("probe_interval", self.probe_interval, 0.0, 3600.0)


class OutlierDetector:
    """Ejects servers that keep failing, for a back-off that doubles on repeat.

    Ejection sets `server.ejected_until` (loop time) and `server.ejections`; the pool's
    eligible set is `fastproxy.upstream.balance.eligible_servers(servers, now)`. With a loop, a timer
    returns each server when its time is up and calls `on_change(server, False/True)` on
    ejection and return; without one, call `expire(now)` (`next_expiry()` says when).

    With a loop and a `probe`, an ejected server is probed every `probe_interval` seconds
    (times 2**(k-1) on its k-th ejection in a row) and returns at the first pass. A connect
    probe only shows that the server accepts connections, so it runs only for ejections
    caused by connect failures; `probe_checks_answers` (the health check's HTTP request)
    makes it run for any ejection, 5xx included.
    """

    def __init__(self, servers: Iterable[Any], config: OutlierConfig | None = None,
                 on_change: ChangeCallback | None = None,
                 loop: asyncio.AbstractEventLoop | None = None, probe: Probe | None = None,
                 probe_checks_answers: bool = False) -> None:
        self.config = config or OutlierConfig()
        self.group = ""     # the group's name, for the log
        self.on_change = on_change
        self._loop = loop
        self._probe = probe
        self._probe_answers = probe_checks_answers
        self._servers: list[Any] = list(servers)
        self._ejected: dict[Any, float] = {}
        self._returned_at: dict[Any, float] = {}
        self._timers: dict[Any, asyncio.TimerHandle] = {}
        self._probes: dict[Any, asyncio.Task] = {}

    def _now(self, now: float | None) -> float:
        if now is not None:
            return now
        return self._loop.time() if self._loop is not None else time.monotonic()

    def update(self, servers: Iterable[Any]) -> None:
        """Set the pool membership (the share limit counts these); removed servers are freed."""
        self._servers = list(servers)
        members = set(self._servers)
        for server in [s for s in self._ejected if s not in members]:
            self._ejected.pop(server)
            timer = self._timers.pop(server, None)
            if timer is not None:
                timer.cancel()
            self._stop_probe(server)

    def max_ejected(self) -> int:
        """Return how many servers of the pool may be ejected at the same time."""
        n = len(self._servers)
        pct = self.config.max_ejection_percent
        allowed = math.floor(n * pct / 100.0 + 1e-9)
        if pct > 0 and allowed == 0:
            allowed = 1  # as Envoy: a small pool may still lose its one bad server
        return max(0, min(allowed, n - 1))

    def ejected(self) -> list[Any]:
        """Return the servers ejected now."""
        return list(self._ejected)

    def record_success(self, server: Any) -> bool:
        """Note a good response from `server`; returns False (membership does not change)."""
        server.failures = 0
        return False

    def record_status(self, server: Any, status: int, now: float | None = None) -> bool:
        """Note a response status (5xx counts as a failure); True when `server` was ejected."""
        if status >= 500:
            return self.record_failure(server, now)
        server.failures = 0
        return False

    def record_failure(self, server: Any, now: float | None = None,
                       connect: bool = False) -> bool:
        """Note a failure from `server` (`connect`: it refused or did not take a connection);
        True when it was ejected by this one."""
        server.failures += 1
        server.failures_total += 1
        threshold = self.config.consecutive_failures
        if threshold == 0 or server.failures < threshold or server in self._ejected:
            return False
        if len(self._ejected) >= self.max_ejected():
            # The share limit is reached: keep counting, so the server goes as soon as
            # another one comes back.
            return False
        now = self._now(now)
        returned = self._returned_at.get(server)
        if returned is not None and now - returned >= self.config.max_ejection:
            # It behaved for a whole maximal ejection since its last return: start over.
            server.ejections = 0
        duration = min(self.config.base_ejection * (2 ** min(server.ejections, 62)),
                       self.config.max_ejection)
        server.ejections += 1
        server.ejections_total += 1
        server.ejected_until = now + duration
        self._ejected[server] = server.ejected_until
        log.warning("upstream %s: server %s ejected for %.1fs after %d consecutive failures",
                    self.group, server.name, duration, server.failures,
                    extra={"event": "outlier.ejected", "fields": {
                        "group": self.group, "server": server.name,
                        "seconds": duration, "failures": server.failures}})
        self._arm(server, duration, connect or self._probe_answers)
        self._notify(server, False)
        return True

    def _arm(self, server: Any, duration: float, probe: bool) -> None:
        """The timer that returns an ejected server, and its probes when `probe` may tell."""
        if self._loop is None:
            return
        self._timers[server] = self._loop.call_at(server.ejected_until, self._on_timer, server)
        interval = self.config.probe_interval
        if self._probe is not None and interval > 0 and probe:
            interval = min(interval * 2 ** min(server.ejections - 1, 30), duration)
            self._probes[server] = self._loop.create_task(
                self._probing(server, interval, self._probe), name=f"probe {server.name}")

    def carry_over(self, server: Any, old: OutlierDetector, was: Any,
                   now: float | None = None) -> None:
        """Give `server` what `old` (the previous configuration's detector) knew of `was`,
        the same server: its counts, its back-off, and an ejection still running."""
        server.failures = was.failures
        server.failures_total = was.failures_total
        server.ejections = was.ejections
        server.ejections_total = was.ejections_total
        returned = old._returned_at.get(was)
        if returned is not None:
            self._returned_at[server] = returned
        now = self._now(now)
        until = was.ejected_until
        if until > now and server not in self._ejected and \
                len(self._ejected) < self.max_ejected():
            server.ejected_until = self._ejected[server] = until
            self._arm(server, until - now, was in old._probes)

    async def _probing(self, server: Any, interval: float, probe: Probe) -> None:
        """Probe an ejected server until a probe passes (it returns now) or it is back."""
        while server in self._ejected:
            await asyncio.sleep(interval)
            if server not in self._ejected:
                return
            try:
                ok, _reason = await probe(server)
            except Exception:  # a broken probe must not end the ejection or the loop
                log.exception("probe of ejected upstream %s failed", server.name)
                ok = False
            if ok and server in self._ejected:
                self._probes.pop(server, None)   # this task ends here: not cancelled
                log.info("upstream %s: server %s answered a probe", self.group, server.name,
                         extra={"event": "outlier.probe_ok",
                                "fields": {"group": self.group, "server": server.name}})
                self._return(server, self._now(None))
                return

    def _stop_probe(self, server: Any) -> None:
        task = self._probes.pop(server, None)
        if task is not None:
            task.cancel()

    def next_expiry(self) -> float | None:
        """Return the loop time of the next return from ejection, or None."""
        return min(self._ejected.values(), default=None)

    def expire(self, now: float | None = None) -> list[Any]:
        """Return to the pool every server whose ejection is over; returns those servers."""
        now = self._now(now)
        back = [s for s, until in self._ejected.items() if until <= now]
        for server in back:
            self._return(server, now)
        return back

    def _on_timer(self, server: Any) -> None:
        self._timers.pop(server, None)
        if server in self._ejected:
            self._return(server, self._now(None))

    def _return(self, server: Any, now: float) -> None:
        del self._ejected[server]
        timer = self._timers.pop(server, None)
        if timer is not None:
            timer.cancel()
        self._stop_probe(server)
        server.failures = 0
        # Loop timers may fire a little before their time (clock resolution): end the
        # ejection now, so eligible_servers() agrees with the callback.
        server.ejected_until = min(server.ejected_until, now)
        self._returned_at[server] = now
        log.info("upstream %s: server %s back from ejection", self.group, server.name,
                 extra={"event": "outlier.returned",
                        "fields": {"group": self.group, "server": server.name}})
        self._notify(server, True)

    def _notify(self, server: Any, eligible: bool) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(server, eligible)
        except Exception:
            log.exception("outlier on_change callback failed for %s", server.name)

    def close(self) -> None:
        """Cancel the return timers and probes (servers stay as they are)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._probes.values():
            task.cancel()
        self._probes.clear()


# --- circuit breaker limits -------------------------------------------------------------

@dataclass(frozen=True)
class BreakerConfig:
    """Limits per pool and per server (defaults as Envoy's cluster circuit breakers).

    0 means no limit. Per-server limits default to none: the pool limits and the bounded
    load of the balancer already spread the load.
    """

    max_connections: int = 1024
    max_pending: int = 1024
    max_requests: int = 1024
    per_server_max_connections: int = 0
    per_server_max_pending: int = 0
    per_server_max_requests: int = 0

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_pending", "max_requests",
                     "per_server_max_connections", "per_server_max_pending",
                     "per_server_max_requests"):
            _int_option(name, getattr(self, name), 0)


def limit_reached(limits: BreakerConfig, group: Any, server: Any) -> str | None:
    """The name of the limit a new request to `server` would exceed, else None.

    Stateless: it reads the counters the relay and the balancer keep anyway, so there is
    no second count to drift: `group.balancer.total_active` and `server.active` (requests
    in flight, kept by the balancer's acquire/release), `server.conns` (open connections,
    the server's pool), `group.pending` and `server.pending` (requests waiting for a new
    connection, the pools). A request that finds an idle kept-alive connection needs no
    new one, so the connection and pending limits do not apply to it.
    """
    if limits.max_requests and group.balancer.total_active >= limits.max_requests:
        return "max_requests"
    if limits.per_server_max_requests and server.active >= limits.per_server_max_requests:
        return "per_server_max_requests"
    if group.pools[server].idle:
        return None
    if limits.max_connections and \
            sum(s.conns for s in group.servers) >= limits.max_connections:
        return "max_connections"
    if limits.per_server_max_connections and \
            server.conns >= limits.per_server_max_connections:
        return "per_server_max_connections"
    if limits.max_pending and group.pending >= limits.max_pending:
        return "max_pending"
    if limits.per_server_max_pending and server.pending >= limits.per_server_max_pending:
        return "per_server_max_pending"
    return None


def describe_limit(limits: BreakerConfig, limit: str, group_name: str, server: Any) -> str:
    """The 503 body line for a full `limit` (as limit_reached named it)."""
    value = getattr(limits, limit)
    where = f"server {server.name}" if limit.startswith("per_server_") else \
        f"upstream {group_name!r}"
    return f"circuit breaker open: {limit} ({value}) reached for {where}"


# --- retries ----------------------------------------------------------------------------

# RFC 9110 section 9.2.2: PUT, DELETE and the safe methods (GET, HEAD, OPTIONS, TRACE) are
# idempotent, so a client or intermediary may repeat them after a failure.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


def is_idempotent(method: bytes) -> bool:
    """Return True for the methods RFC 9110 (9.2.2) defines as idempotent."""
    return method in IDEMPOTENT_METHODS


@dataclass(frozen=True)
class RetryConfig:
    """Retry knobs: how many, which methods, and the budget that caps them."""

    # Retries after the first attempt (each to a server not tried yet); 0 turns retries off.
    retries: int = 2
    # Non-idempotent methods to retry as well (e.g. ("POST",)); only if the upstream is known
    # to tolerate a repeated request.
    extra_methods: tuple[str, ...] = ()
    # Retries may add at most this share of the requests of the last budget_window seconds...
    budget_ratio: float = 0.2
    # ...plus this many per second, so a quiet pool can still retry.
    min_retries_per_second: float = 5.0
    budget_window: float = 10.0

    def __post_init__(self) -> None:
        _int_option("retries", self.retries, 0, 10)
        if isinstance(self.extra_methods, (str, bytes)) or not all(
            isinstance(m, str) and m and m.isascii() and m.isalpha() and m.isupper()
            for m in self.extra_methods
        ):
            raise ValueError(
                f"extra_methods: expected a list of upper-case method names, got {self.extra_methods!r}"
            )
        _number_option("budget_ratio", self.budget_ratio, 0.0, 10.0)
        _number_option("min_retries_per_second", self.min_retries_per_second, 0.0)
        _number_option("budget_window", self.budget_window, 0.0, 3600.0, low_inclusive=False)


class RetryBudget:
    """Allows retries up to `ratio` of recent requests plus `min_per_second` per second.

    Requests and retries are counted in ten buckets covering the last `window` seconds;
    first attempts count as requests, retries only as retries.
    """

    BUCKETS = 10

    def __init__(self, ratio: float = 0.2, min_per_second: float = 5.0, window: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio = ratio
        self.floor = min_per_second * window
        self.width = window / self.BUCKETS
        self.clock = clock
        self._requests = [0] * self.BUCKETS
        self._retries = [0] * self.BUCKETS
        self._tick: int | None = None
        self.requests = 0  # totals over the window
        self.retries = 0

    def _advance(self, now: float | None) -> int:
        tick = math.floor((self.clock() if now is None else now) / self.width)
        if self._tick is None:
            self._tick = tick
        elif tick != self._tick:
            # Clear the buckets that fell out of the window (all of them after a long pause).
            for t in range(max(self._tick + 1, tick - self.BUCKETS + 1), tick + 1):
                slot = t % self.BUCKETS
                self.requests -= self._requests[slot]
                self.retries -= self._retries[slot]
                self._requests[slot] = 0
                self._retries[slot] = 0
            self._tick = max(tick, self._tick)
        return self._tick % self.BUCKETS

    def record_request(self, now: float | None = None) -> None:
        """Count a first attempt."""
        self._requests[self._advance(now)] += 1
        self.requests += 1

    def record_requests(self, n: int, now: float | None = None) -> None:
        """Count n first attempts at once (the proxy folds a plain counter in once a tick,
        so a request costs an integer increment, not a clock read)."""
        if n:
            self._requests[self._advance(now)] += n
            self.requests += n

    def can_retry(self, now: float | None = None) -> bool:
        """Return True when one more retry fits in the budget."""
        self._advance(now)
        return self.retries + 1 <= self.floor + self.ratio * self.requests

    def record_retry(self, now: float | None = None) -> None:
        """Count a retry."""
        self._retries[self._advance(now)] += 1
        self.retries += 1

    def try_retry(self, now: float | None = None) -> bool:
        """Count a retry and return True if the budget allows it, else return False."""
        if not self.can_retry(now):
            return False
        self.record_retry(now)
        return True


def retry_methods(config: RetryConfig) -> frozenset[bytes]:
    """The methods whose failed attempts may go to another server (RFC 9110 9.2.2 plus
    the configured extra_methods)."""
    return IDEMPOTENT_METHODS | {m.encode("ascii") for m in config.extra_methods}
