"""Ingress routing: which upstream group a request goes to, and how it is rewritten.

Precedence (documented in the README): a higher `priority` first; within one priority,
the most specific host (exact, then the longest `*.suffix`, then routes without a host);
within one host, an `exact` path, then the longest `path` prefix, then `regex` routes in
the order of the file. A route whose method, header or query conditions do not hold is
passed over for the next one; the listener's `upstream` is the route of last resort.

Lookups are dictionary probes: by host (then by each suffix of it), by exact path, and by
path[:n] for each distinct prefix length n of that host's routes, longest first; regexes
are tried only when no exact or prefix route of that host matched, so the common
host+prefix table costs the same with 10 or 1,000 routes (bench/micro_routing.py).

A route may send a share of its traffic to a canary group: by a random draw, or by a
stable hash of the client address, a header or a cookie (the same user then always sees
the same version); `force` names a header or cookie whose value `always` / `never`
overrides the draw (testers, and users who must not move).
"""
from __future__ import annotations

import random
import re
from typing import Any
from urllib.parse import parse_qsl

from fastproxy.proxy.shadow import Shadow
from fastproxy.targets import decision_path
from fastproxy.upstream.balance import make_key_fn

_VAR_RE = re.compile(rb"\{([a-z_]+)\}")



def _condition_holds(value, want) -> bool:
    """A header or query condition: None = must be present, False = must be absent, else equal."""
    if want is None:
        return value is not None
    if want is False:
        return value is None
    return value == want

class Route:
    """One compiled route: match data, its group, canary split, rewrite and header edits."""

    __slots__ = ("host", "wildcard", "prefix", "exact", "regex", "group", "strip", "canary",
                 "percent", "canary_key", "canary_by", "force", "methods", "headers", "query",
                 "rewrite", "upstream_host", "edits", "response_edits", "answer", "shadow", "plain",
                 "order")

    def __init__(self, host: str | None, prefix: str, group, strip: bool = False,
                 canary=None, percent: float = 0.0, canary_key: str = "random",
                 cfg=None, order: int = 0) -> None:
        self.wildcard = bool(host and host.startswith("*."))
        self.host = (host[1:] if self.wildcard else host).encode() if host else None
        self.prefix = prefix.encode()
        self.group = group
        self.strip = strip and prefix != "/"
        self.canary = canary
        self.percent = percent
        # A stable split hashes the same request keys the balancers use (balance/keys.py).
        self.canary_key = None if canary_key == "random" else make_key_fn(canary_key)
        self.canary_by = canary_key
        self.order = order
        self.exact: bytes | None = None
        self.regex: re.Pattern | None = None
        self.rewrite: tuple[re.Pattern, bytes] | None = None
        self.upstream_host: bytes | None = None
        self.force: tuple[bool, bytes] | None = None
        self.methods: frozenset[bytes] = frozenset()
        self.headers: tuple[tuple[bytes, Any], ...] = ()
        self.query: tuple[tuple[bytes, Any], ...] = ()
        self.edits: HeaderEdits | None = None
        self.response_edits: HeaderEdits | None = None
        self.answer: tuple | None = None
        self.shadow: Shadow | None = None
        if cfg is not None:
            if cfg.answer is not None:
                status, location, body = cfg.answer
                self.answer = (status, _template(location) if location is not None else None,
                               _template(body))
            self.exact = cfg.exact.encode() if cfg.exact is not None else None
            self.regex = re.compile(cfg.regex.encode()) if cfg.regex is not None else None
            self.methods = frozenset(m.encode() for m in cfg.methods)
            self.headers = tuple((n.encode(), v.encode() if isinstance(v, str) else v)
                                 for n, v in cfg.headers)
            self.query = tuple((n.encode(), v.encode() if isinstance(v, str) else v)
                               for n, v in cfg.query)
            if cfg.rewrite is not None:
                self.rewrite = (re.compile(cfg.rewrite[0].encode()), cfg.rewrite[1].encode())
            if cfg.upstream_host is not None:
                self.upstream_host = cfg.upstream_host.encode()
            if cfg.canary is not None and cfg.canary.force is not None:
                kind, _, name = cfg.canary.force.partition(":")
                self.force = (kind == "cookie", name.encode())
            self.edits = HeaderEdits.compile(cfg.request_headers)
            self.response_edits = HeaderEdits.compile(cfg.response_headers)
        # Nothing but host, prefix and group: the compiled fast path may take it.
        self.plain = not (self.strip or canary is not None or self.exact or self.regex
                          or self.methods or self.headers or self.query or self.rewrite
                          or self.upstream_host or self.edits or self.answer
                          or self.response_edits
                          or self.shadow)

    def matches(self, host: bytes | None, path: bytes) -> bool:
        """Host and path (prefix, exact or regex) alone, as a full scan would test them."""
        if self.host is not None:
            if host is None:
                return False
            if self.wildcard:
                if not host.endswith(self.host):
                    return False
            elif host != self.host:
                return False
        if self.exact is not None:
            return path == self.exact
        if self.regex is not None:
            return self.regex.search(path) is not None
        return path.startswith(self.prefix)

    def conditions(self, req, target: bytes) -> bool:
        """Method, header and query conditions (true when the route has none)."""
        if req is None:
            return not (self.methods or self.headers or self.query)
        if self.methods and req.method not in self.methods:
            return False
        if not all(_condition_holds(req.get(name), want) for name, want in self.headers):
            return False
        if self.query:
            _, q, query = target.partition(b"?")
            args = dict(parse_qsl(query, keep_blank_values=True)) if q else {}
            return all(_condition_holds(args.get(name), want) for name, want in self.query)
        return True

    def choose(self, req, client_ip: str):
        """The group for this request: the route's own, or its canary for a share."""
        if self.canary is None:
            return self.group
        if self.force is not None:
            cookie, name = self.force
            value = _cookie(req, name) if cookie else req.get(name)
            if value is not None:
                value = value.strip().lower()
                if value == b"always":
                    return self.canary
                if value == b"never":
                    return self.group
        key_fn = self.canary_key
        if key_fn is None:
            roll = random.random() * 100.0
        else:
            roll = (key_fn(req, client_ip) % 10000) / 100.0
        return self.canary if roll < self.percent else self.group

    def rewrite_path(self, path: bytes) -> bytes:
        """The path the upstream gets: prefix stripped, then the regex replacement."""
        if self.strip and path.startswith(self.prefix):
            path = path[len(self.prefix):]
            if not path.startswith(b"/"):
                path = b"/" + path
        if self.rewrite is not None:
            pattern, replace = self.rewrite
            path = pattern.sub(replace, path, count=1)
            if not path.startswith(b"/"):
                path = b"/" + path
        return path


def _template(text: str) -> list:
    """A text with {variables}: a list of bytes (literal) and str (a variable's name)."""
    parts: list = []
    pos = 0
    raw = text.encode()
    for m in _VAR_RE.finditer(raw):
        if m.start() > pos:
            parts.append(raw[pos:m.start()])
        parts.append(m.group(1).decode())
        pos = m.end()
    if pos < len(raw) or not parts:
        parts.append(raw[pos:])
    return parts


def render(parts: list, values: dict) -> bytes:
    """A compiled template filled from values (name -> bytes)."""
    return b"".join(p if isinstance(p, bytes) else values[p] for p in parts)


def _cookie(req, name: bytes) -> bytes | None:
    for line in req.get_all(b"cookie") if hasattr(req, "get_all") else [req.get(b"cookie")]:
        if not line:
            continue
        for part in line.split(b";"):
            k, eq, v = part.strip().partition(b"=")
            if eq and k == name:
                return v
    return None


class HeaderEdits:
    """A route's request header edits: names to drop and lines to add, with variables."""

    __slots__ = ("drop", "lines", "dynamic")

    def __init__(self, drop: tuple, lines: list) -> None:
        self.drop = drop
        self.lines = lines               # [(name, [literal | variable, ...])]
        self.dynamic = any(len(parts) > 1 or isinstance(parts[0], str) for _, parts in lines)

    @classmethod
    def compile(cls, cfg) -> "HeaderEdits | None":
        """Compile the configured edits; None when there are none."""
        if not (cfg.add or cfg.set or cfg.remove):
            return None
        drop = tuple(dict.fromkeys([n.lower().encode() for n, _ in cfg.set]
                                   + [n.encode() for n in cfg.remove]))
        return cls(drop, [(name.encode(), _template(value)) for name, value in cfg.set + cfg.add])

    def render(self, values: dict) -> bytes:
        """The field lines to add, variables filled from values (name -> bytes)."""
        return b"".join(name + b": " + render(parts, values) + b"\r\n"
                        for name, parts in self.lines)


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


class _HostTable:
    """The routes of one host key (one priority): exact paths, prefixes by length, regexes."""

    __slots__ = ("exact", "prefixes", "lengths", "regexes")

    def __init__(self) -> None:
        self.exact: dict[bytes, list[Route]] = {}
        self.prefixes: dict[bytes, list[Route]] = {}
        self.lengths: tuple[int, ...] = ()
        self.regexes: list[Route] = []

    def add(self, route: Route) -> None:
        if route.exact is not None:
            self.exact.setdefault(route.exact, []).append(route)
        elif route.regex is not None:
            self.regexes.append(route)
        else:
            self.prefixes.setdefault(route.prefix, []).append(route)
            self.lengths = tuple(sorted({len(p) for p in self.prefixes}, reverse=True))

    def find(self, path: bytes, target: bytes, req) -> Route | None:
        routes = self.exact.get(path) if self.exact else None
        if routes is not None:
            for r in routes:
                if r.conditions(req, target):
                    return r
        prefixes = self.prefixes
        n_path = len(path)
        for n in self.lengths:
            if n <= n_path:
                routes = prefixes.get(path[:n])
                if routes is not None:
                    for r in routes:
                        if r.conditions(req, target):
                            return r
        for r in self.regexes:
            regex: re.Pattern = r.regex  # type: ignore[assignment]
            if regex.search(path) is not None and r.conditions(req, target):
                return r
        return None


class _Level:
    """All routes of one priority, indexed by host."""

    __slots__ = ("exact", "suffixes", "any", "suffix_lengths")

    def __init__(self, routes: list[Route]) -> None:
        self.exact: dict[bytes, _HostTable] = {}
        self.suffixes: dict[bytes, _HostTable] = {}
        self.any: _HostTable | None = None
        for r in routes:
            if r.host is None:
                if self.any is None:
                    self.any = _HostTable()
                self.any.add(r)
            elif r.wildcard:
                self.suffixes.setdefault(r.host, _HostTable()).add(r)
            else:
                self.exact.setdefault(r.host, _HostTable()).add(r)
        self.suffix_lengths = tuple(sorted({len(s) for s in self.suffixes}, reverse=True))

    def find(self, host: bytes | None, path: bytes, target: bytes, req) -> Route | None:
        if host is not None:
            table = self.exact.get(host)
            if table is not None:
                r = table.find(path, target, req)
                if r is not None:
                    return r
            n_host = len(host)
            for n in self.suffix_lengths:
                # "*.a.test" (stored ".a.test") matches x.a.test, never a.test itself.
                if n < n_host:
                    table = self.suffixes.get(host[n_host - n:])
                    if table is not None:
                        r = table.find(path, target, req)
                        if r is not None:
                            return r
        if self.any is not None:
            return self.any.find(path, target, req)
        return None


def _cache_dependence(routes) -> tuple[tuple[bytes, ...], tuple[Route, ...]]:
    """(field names the routes' choice reads, routes whose split no field decides)."""
    names: set[bytes] = set()
    unkeyed = []
    for r in routes:
        names.update(name.lower() for name, _ in r.headers)
        if r.canary is None:
            continue
        if r.force is not None:
            cookie, name = r.force
            names.add(b"cookie" if cookie else name.lower())
        kind, _, name = r.canary_by.partition(":")
        if kind == "header":
            names.add(name.lower().encode())
        elif kind == "cookie":
            names.add(b"cookie")
        elif 0.0 < r.percent < 100.0:
            unkeyed.append(r)
    return tuple(sorted(names)), tuple(unkeyed)


class Router:
    """Compiled routes of one listener."""

    def __init__(self, listener_cfg, groups: dict) -> None:
        routes = []
        for i, rc in enumerate(listener_cfg.routes):
            canary = rc.canary
            routes.append((rc.priority, Route(
                rc.host, rc.path, groups.get(rc.upstream), rc.strip_prefix,
                groups[canary.upstream] if canary else None,
                canary.percent if canary else 0.0, canary.key if canary else "random",
                rc, i)))
            if rc.shadow is not None:
                sh = rc.shadow
                routes[-1][1].shadow = Shadow(groups[sh.upstream], sh.percent, sh.max_in_flight,
                                              sh.max_body)
                routes[-1][1].plain = False
        self.routes = [r for _, r in routes]
        self.levels = [_Level([r for p, r in routes if p == prio])
                       for prio in sorted({p for p, _ in routes}, reverse=True)]
        self.default = Route(None, "/", groups[listener_cfg.upstream]) \
            if listener_cfg.upstream else None
        # The common single-upstream case skips matching entirely.
        self.only = self.default if not routes else None
        # Only host and prefix routes: the compiled fast path routes with match(host, path).
        self.simple = all(r.plain for r in self.routes)
        # What a cache in front of these routes must key on besides the URL (the cache
        # looks up before routing): the fields route conditions and canary splits read,
        # and the canary routes whose split no field decides (random, client_ip).
        self.cache_vary, self.unkeyed = _cache_dependence(self.routes)

    def split_unkeyed(self, host: bytes | None, target: bytes) -> bool:
        """Whether a request for host and target may take a route whose upstream no
        request field decides (a random or client_ip canary share)."""
        if not self.unkeyed:
            return False
        if not target.startswith(b"/"):
            return True      # absolute-form: not worth splitting; say it may
        host = normalise_host(host)
        path = decision_path(target.partition(b"?")[0])
        return any(r.matches(host, path) for r in self.unkeyed)

    def match(self, host: bytes | None, target: bytes, req=None) -> Route | None:
        """The route for host and target (path and query), else the default (or None).

        Without req, method/header/query conditions cannot hold (the compiled fast path
        calls this only when no route has any)."""
        if self.only is not None:
            return self.only
        host = normalise_host(host)
        q = target.find(b"?")
        # `/%61dmin` and `/./admin` are `/admin` to the origin: so to the routes too.
        path = decision_path(target if q < 0 else target[:q])
        for level in self.levels:
            r = level.find(host, path, target, req)
            if r is not None:
                return r
        return self.default
