"""What the configuration says about an upstream group (built by config.load, read by group)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastproxy.config.schema import ServerSpec


@dataclass(frozen=True)
class UpstreamGroupConfig:
    """A named pool of servers behind one balancing policy."""

    name: str
    servers: tuple[ServerSpec, ...]
    balance: str = "round_robin"
    hash_key: str = "path"
    hash_balance_factor: float = 1.25
    keepalive: int = 64              # idle connections kept per server
    keepalive_timeout: float = 60.0  # idle connection lifetime
    keepalive_requests: int = 10000  # requests per upstream connection before it is retired
    connect_timeout: float | None = None   # None: timeouts.upstream_connect
    read_timeout: float | None = None      # None: timeouts.upstream_header
    resolve: str = "start"           # start: every host must resolve at load | runtime
    tls: "UpstreamTLS | None" = None  # None: verify against the system CAs, default SNI
    extras: tuple[tuple[str, Any], ...] = ()  # sections owned by later modules (health, ...)

    def extra(self, key: str, default: Any = None) -> Any:
        """A section that a feature module parses itself (e.g. 'health')."""
        for k, v in self.extras:
            if k == key:
                return v
        return default


@dataclass(frozen=True)
class UpstreamTLS:
    """How a group's https:// servers are verified and what the proxy presents to them."""

    verify: bool = True              # false: no certificate or name check (tests, labs)
    ca: str | None = None            # PEM bundle instead of the system CAs
    sni: str | None = None           # the name sent (and verified) instead of the server's host
    cert: str | None = None          # client certificate for mutual TLS (with key)
    key: str | None = None
