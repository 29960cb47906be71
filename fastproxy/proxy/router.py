"""Ingress routing: which upstream group a request goes to, by host and path.

Routes are tried most specific first: exact host before `*.suffix` host before
no host; within those, the longest path prefix first (nginx's `location` prefix
rule, HAProxy's ordered `use_backend` made deterministic). A listener's
`upstream` is the route of last resort. A route may send a share of its traffic
to a canary group: by a random draw, or by a stable hash of the client address, a
header or a cookie (the same user then always sees the same version).
"""
from __future__ import annotations

import random

from fastproxy.upstream.balance import make_key_fn


class Route:
    """One compiled route: match data, its group and an optional canary split."""

    __slots__ = ("host", "wildcard", "prefix", "group", "strip", "canary", "percent",
                 "canary_key", "rank")  # canary_key: None (random) or a balance key function

    def __init__(self, host: str | None, prefix: str, group, strip: bool = False,
                 canary=None, percent: float = 0.0, canary_key: str = "random") -> None:
        self.wildcard = bool(host and host.startswith("*."))
        self.host = (host[1:] if self.wildcard else host).encode() if host else None
        self.prefix = prefix.encode()
        self.group = group
        self.strip = strip and prefix != "/"
        self.canary = canary
        self.percent = percent
        # A stable split hashes the same request keys the balancers use (balance/keys.py).
        self.canary_key = None if canary_key == "random" else make_key_fn(canary_key)
        host_rank = 0 if host is None else (1 if self.wildcard else 2)
        self.rank = (host_rank, len(self.prefix))

    def matches(self, host: bytes | None, path: bytes) -> bool:
        if self.host is not None:
            if host is None:
                return False
            if self.wildcard:
                if not host.endswith(self.host):
                    return False
            elif host != self.host:
                return False
        return path.startswith(self.prefix)

    def choose(self, req, client_ip: str):
        """The group for this request: the route's own, or its canary for a share."""
        if self.canary is None:
            return self.group
        key_fn = self.canary_key
        if key_fn is None:
            roll = random.random() * 100.0
        else:
            roll = (key_fn(req, client_ip) % 10000) / 100.0
        return self.canary if roll < self.percent else self.group


def normalise_host(host: bytes | None) -> bytes | None:
    """Lowercase, without the port and a trailing dot (RFC 9110 7.2 authority)."""
    if not host:
        return None
    host = host.lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[:end + 1] if end > 0 else host
    colon = host.rfind(b":")
    if colon >= 0:
        host = host[:colon]
    return host.rstrip(b".")


class Router:
    """Compiled routes of one listener."""

    def __init__(self, listener_cfg, groups: dict) -> None:
        routes = []
        for rc in listener_cfg.routes:
            canary = rc.canary
            routes.append(Route(rc.host, rc.path, groups[rc.upstream], rc.strip_prefix,
                                groups[canary.upstream] if canary else None,
                                canary.percent if canary else 0.0,
                                canary.key if canary else "random"))
        routes.sort(key=lambda r: r.rank, reverse=True)
        self.routes = routes
        self.default = Route(None, "/", groups[listener_cfg.upstream]) \
            if listener_cfg.upstream else None
        # The common single-upstream case skips matching entirely.
        self.only = self.default if not routes else None

    def match(self, host: bytes | None, path: bytes) -> Route | None:
        """The first route that matches host and path, else the default (or None)."""
        if self.only is not None:
            return self.only
        host = normalise_host(host)
        for route in self.routes:
            if route.matches(host, path):
                return route
        return self.default
