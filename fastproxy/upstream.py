"""Upstream servers and the groups (pools) they form.

A `Server` is one origin address with the live counters that balancing,
health checking and circuit breaking read and write. An `UpstreamGroup` is a
named set of servers with one balancing policy.
"""
from __future__ import annotations


class Server:
    """One upstream server and its live state."""

    __slots__ = (
        "host", "port", "weight", "name", "scheme",
        "active",          # requests in flight to this server (balancers read it)
        "healthy",         # verdict of the active health check
        "ejected_until",   # loop time until which passive detection keeps it out
        "ejections",       # consecutive ejections, for the growing back-off
        "failures",        # consecutive connect failures / 5xx seen
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
        self.conns = 0
        self.pending = 0

    def __repr__(self) -> str:
        return f"Server({self.name}, weight={self.weight})"


class UpstreamGroup:
    """A named pool of servers, its balancer and its connection pools."""

    def __init__(self, config, pool_factory) -> None:
        self.config = config
        self.name = config.name
        self.servers = [Server(s.host, s.port, s.weight, s.scheme) for s in config.servers]
        self.pools = {server: pool_factory(self, server) for server in self.servers}
        self._rr = 0
        self.eligible = list(self.servers)
        self.key_fn = None          # set when the policy hashes a request key
        # A connect failure moves on to each other server once (nginx's proxy_next_upstream).
        self.max_retries = max(0, len(self.servers) - 1)

    def pick(self, key: int = 0, exclude=()) -> Server | None:
        """The server for the next request, or None when no server is eligible."""
        eligible = self.eligible
        n = len(eligible)
        for _ in range(n):
            self._rr += 1
            server = eligible[self._rr % n]
            if server not in exclude:
                return server
        return None

    def close(self) -> None:
        """Close every pooled connection."""
        for pool in self.pools.values():
            pool.close()
