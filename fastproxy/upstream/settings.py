"""What the configuration says about an upstream group (built by config.load, read by group).

The failure-handling sections of a group (`health`, `outlier`, `breaker`, `retry`) are
validated here, once, at load time; `UpstreamGroupConfig` carries the built dataclasses.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from fastproxy.config.schema import ServerSpec, dataclass_from_table
from fastproxy.upstream.breaker import BreakerConfig, OutlierConfig, RetryConfig
from fastproxy.upstream.health import HealthCheckConfig

# The group tables read by read_sections, in the order they are checked.
SECTIONS = ("health", "outlier", "breaker", "retry")


@dataclass(frozen=True)
class UpstreamGroupConfig:
    """A named pool of servers behind one balancing policy."""

    name: str
    servers: tuple[ServerSpec, ...]
    balance: str = "round_robin"
    hash_key: str = "path"
    hash_balance_factor: float = 1.25
    slow_start: float = 0.0          # seconds a returning server ramps to its weight; 0: off
    keepalive: int = 64              # idle connections kept per server
    keepalive_timeout: float = 60.0  # idle connection lifetime
    keepalive_requests: int = 10000  # requests per upstream connection before it is retired
    pool_purge_delay: float = 5.0    # idle connections above keepalive kept this long
    connect_timeout: float | None = None   # None: timeouts.upstream_connect
    read_timeout: float | None = None      # None: timeouts.upstream_header
    resolve: str = "start"           # start: every host must resolve at load | runtime
    protocol: str = "http1"          # http1 | auto: https:// servers offered h2 by ALPN
    tls: UpstreamTLS | None = None   # None: verify against the system CAs, default SNI
    health: HealthCheckConfig | None = None   # None: no active health checks
    outlier: OutlierConfig = field(default_factory=OutlierConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)

    @property
    def tcp(self) -> bool:
        """A pool of tcp:// servers (a TCP listener's)."""
        return bool(self.servers) and all(s.scheme == "tcp" for s in self.servers)


@dataclass(frozen=True)
class UpstreamTLS:
    """How a group's https:// servers are verified and what the proxy presents to them."""

    verify: bool = True              # false: no certificate or name check (tests, labs)
    ca: str | None = None            # PEM bundle instead of the system CAs
    sni: str | None = None           # the name sent (and verified) instead of the server's host
    cert: str | None = None          # client certificate for mutual TLS (with key)
    key: str | None = None


def read_sections(raw: dict[str, Any], tcp: bool, problems: list[str]) -> dict[str, Any]:
    """The health/outlier/breaker/retry dataclasses of one group from their raw tables.

    Returns the keyword arguments for UpstreamGroupConfig (absent sections keep their
    defaults); each problem is appended as "section.key: text".
    """
    def section(name: str, cls: type, durations: tuple[str, ...] = ()) -> Any:
        try:
            return dataclass_from_table(cls, raw[name], durations)
        except ValueError as exc:
            problems.append(f"{name}.{exc}")
            return None

    out: dict[str, Any] = {}
    if "health" in raw:
        health = section("health", HealthCheckConfig, ("interval", "timeout"))
        if health is not None and tcp and health.mode == "http" and \
                "mode" not in raw["health"]:
            health = replace(health, mode="tcp")  # a TCP pool is checked by connecting
        out["health"] = health
    for name, cls, durations in (
            ("outlier", OutlierConfig, ("base_ejection", "max_ejection", "probe_interval")),
            ("breaker", BreakerConfig, ()),
            ("retry", RetryConfig, ("budget_window",))):
        if name in raw:
            value = section(name, cls, durations)
            if value is not None:
                out[name] = value
    return out
