"""Configuration: TOML (and command-line flags) -> frozen dataclasses, validated once.

Every problem is reported as one line that names the key, e.g.
``upstreams.api.connect_timeout: expected a duration like "5s", got '5x'``; all problems
are collected before giving up, so a user fixes a file in one pass.
"""
from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 wheels only
    import tomli as tomllib


class ConfigError(Exception):
    """One or more configuration problems; each line names the key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# ---------------------------------------------------------------------------
# Value parsers. Each takes the raw value and returns the parsed one or raises
# ValueError with the text that follows "key: ".

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds from "250ms", "5s", "2m", "1h", "1d" or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "5s", got {value!r}')
    if isinstance(value, (int, float)):
        if value < 0 or math.isnan(value) or math.isinf(value):
            raise ValueError(f'expected a duration like "5s", got {value!r}')
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f'expected a duration like "5s", got {value!r}')


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: Any) -> int:
    """Bytes from "64KiB", "256MiB", "1g", "4096" or a plain integer (binary units)."""
    if isinstance(value, bool):
        raise ValueError(f'expected a size like "64MiB", got {value!r}')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f'expected a size like "64MiB", got {value!r}')
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError(f'expected a size like "64MiB", got {value!r}')


def parse_address(value: Any, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """(host, port) from "host:port", "[::1]:port", ":port" or "port"."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f'expected an address like "127.0.0.1:8080", got {value!r}')
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ValueError(f'expected an address like "[::1]:8080", got {value!r}')
        host, port_s = text[1:end], text[end + 2:]
    elif ":" in text:
        host, _, port_s = text.rpartition(":")
        if ":" in host:
            raise ValueError(f'IPv6 addresses need brackets, like "[::1]:8080", got {value!r}')
        host = host or default_host
    else:
        host, port_s = default_host, text
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"expected a port number 0-65535 in {value!r}")
    return host, int(port_s)


def dataclass_from_table(cls, raw: Any, durations: tuple[str, ...] = ()) -> Any:
    """A feature's config dataclass from its TOML table.

    Unknown keys and bad values raise ValueError starting with the key's name; the fields
    named in `durations` also accept "5s"-style strings; lists become tuples (the
    dataclasses are frozen). Every feature module's `from_table` is this.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"expected a table, got {raw!r}")
    known = {f.name for f in fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ValueError(f"{key}: unknown key (expected one of {', '.join(sorted(known))})")
        if key in durations and isinstance(value, str):
            try:
                value = parse_duration(value)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        values[key] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def format_address(host: str, port: int) -> str:
    """The inverse of parse_address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ServerSpec:
    """One upstream server as configured."""

    host: str
    port: int
    weight: int = 1
    scheme: str = "http"  # http | https | tcp


def parse_server_url(value: Any, default_scheme: str = "http") -> ServerSpec:
    """ServerSpec from "http://host:port#weight=2", "tcp://host:port" or a table."""
    weight = 1
    if isinstance(value, dict):
        unknown = set(value) - {"url", "weight"}
        if unknown:
            raise ValueError(f"unknown key {sorted(unknown)[0]!r} (expected url, weight)")
        weight = value.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 < weight <= 10000:
            raise ValueError(f"weight: expected an integer 1-10000, got {weight!r}")
        value = value.get("url")
    if not isinstance(value, str) or not value:
        raise ValueError(f'expected a URL like "http://127.0.0.1:9000", got {value!r}')
    text = value.strip()
    if "#" in text:
        text, _, frag = text.partition("#")
        for part in frag.split(","):
            k, _, v = part.partition("=")
            if k.strip() != "weight" or not v.strip().isdigit() or not 0 < int(v) <= 10000:
                raise ValueError(f'expected "#weight=N" (N 1-10000) in {value!r}')
            weight = int(v)
    scheme = default_scheme
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
    if scheme not in ("http", "https", "tcp"):
        raise ValueError(f"unsupported scheme {scheme!r} in {value!r} (http, https or tcp)")
    text = text.rstrip("/")
    if "/" in text:
        raise ValueError(f"an upstream URL has no path: {value!r}")
    default_port = {"http": 80, "https": 443, "tcp": 0}[scheme]
    if text.startswith("[") and text.endswith("]") or (":" not in text and default_port):
        text = f"{text}:{default_port}"
    host, port = parse_address(text)
    if port == 0:
        raise ValueError(f"a port is required in {value!r}")
    return ServerSpec(host, port, weight, scheme)


# ---------------------------------------------------------------------------
# The configuration model.

BALANCE_POLICIES = ("round_robin", "maglev", "least_conn", "random2")
FORWARDED_MODES = ("x-forwarded", "forwarded", "both", "none")
LOG_FORMATS = ("combined", "json")
MODES = ("reverse", "forward", "tcp")


@dataclass(frozen=True)
class Timeouts:
    """How long each wait may last, in seconds."""

    client_header: float = 10.0      # whole request head (slow-loris guard)
    client_idle: float = 60.0        # keep-alive wait for the next request
    client_body: float = 60.0        # between request body bytes
    upstream_connect: float = 5.0
    upstream_header: float = 60.0    # request sent -> response head complete
    upstream_idle: float = 60.0      # between response body bytes
    tunnel_idle: float = 300.0       # CONNECT / Upgrade / TCP tunnels with no bytes either way
    drain: float = 30.0              # graceful shutdown: how long in-flight requests may finish


@dataclass(frozen=True)
class Limits:
    """Sizes the parser and relay enforce."""

    max_request_line: int = 8192
    max_header_size: int = 65536
    max_header_fields: int = 100
    max_body: int = 0                # 0 = unlimited; over it -> 413
    max_connections: int = 10000     # per worker; beyond it new connections wait in the backlog
    # A request body up to this size is read whole before an upstream connection is taken
    # (slow uploads pin none); a larger one streams from then on. 0 = stream at once.
    request_buffering: int = 64 * 1024


@dataclass(frozen=True)
class HeaderPolicy:
    """What the reverse proxy adds to or keeps in forwarded requests."""

    forwarded: str = "x-forwarded"   # x-forwarded | forwarded | both | none
    via: bool = True
    via_name: str = "fastproxy"
    preserve_host: bool = True


@dataclass(frozen=True)
class AccessLog:
    """Where access log lines go and in which format."""

    path: str | None = None          # None = off, "-" = stdout
    format: str = "combined"


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
    extras: tuple[tuple[str, Any], ...] = ()  # sections owned by later modules (health, ...)

    def extra(self, key: str, default: Any = None) -> Any:
        """A section that a feature module parses itself (e.g. 'health')."""
        for k, v in self.extras:
            if k == key:
                return v
        return default


@dataclass(frozen=True)
class CanaryConfig:
    """Send a share of a route's traffic to another upstream group."""

    upstream: str
    percent: float
    key: str = "random"              # random | client_ip | header:NAME | cookie:NAME


@dataclass(frozen=True)
class RouteConfig:
    """Ingress rule: requests matching host and path prefix go to an upstream group."""

    upstream: str
    host: str | None = None          # exact "a.example.com" or "*.example.com"
    path: str = "/"                  # prefix
    strip_prefix: bool = False
    canary: CanaryConfig | None = None


@dataclass(frozen=True)
class ListenerConfig:
    """One listening socket and what it does."""

    host: str
    port: int
    mode: str = "reverse"
    name: str = ""
    upstream: str | None = None      # default group for reverse/tcp
    routes: tuple[RouteConfig, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    # Upgrade protocols tunnelled after a 101 (lowercase names); others go as plain requests.
    upgrade: tuple[str, ...] = ("websocket",)
    request_buffering: int | None = None   # None: limits.request_buffering
    extras: tuple[tuple[str, Any], ...] = ()  # forward-mode sections (acl, auth, ...)

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    def extra(self, key: str, default: Any = None) -> Any:
        """A section that a feature module parses itself."""
        for k, v in self.extras:
            if k == key:
                return v
        return default


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    listeners: tuple[ListenerConfig, ...]
    upstreams: dict[str, UpstreamGroupConfig] = field(default_factory=dict)
    workers: int = 1
    admin: tuple[str, int] | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    headers: HeaderPolicy = field(default_factory=HeaderPolicy)
    access_log: AccessLog = field(default_factory=AccessLog)
    cache_size: int = 0              # 0 = no cache
    extras: tuple[tuple[str, Any], ...] = ()  # top-level sections owned by feature modules
    source: str = "<built-in default>"

    def extra(self, key: str, default: Any = None) -> Any:
        """A top-level section that a feature module parses itself (e.g. 'cache')."""
        for k, v in self.extras:
            if k == key:
                return v
        return default


# ---------------------------------------------------------------------------
# Reading: a small checked walker over the TOML tree.


class _Table:
    """A TOML table being read: records problems with their key path and unknown keys."""

    def __init__(self, data: Any, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        self.bad = not isinstance(data, dict)
        if self.bad:
            self.problem("", f"expected a table, got {type(data).__name__}")
            data = {}
        self.data = data
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def problem(self, name: str, text: str) -> None:
        where = self.key(name) if name else (self.path or "<top>")
        self.problems.append(f"{where}: {text}")

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = None) -> Any:
        self.seen.add(name)
        return self.data.get(name, default)

    def get(self, name: str, conv: Callable[[Any], Any], default: Any) -> Any:
        """The value converted by conv, or default when absent or bad (bad is recorded)."""
        self.seen.add(name)
        if name not in self.data:
            return default
        try:
            return conv(self.data[name])
        except ValueError as exc:
            self.problem(name, str(exc))
            return default

    def table(self, name: str) -> "_Table":
        self.seen.add(name)
        return _Table(self.data.get(name, {}), self.key(name), self.problems)

    def finish(self) -> None:
        for name in self.data:
            if name not in self.seen:
                self.problem(name, "unknown key")


def _kind(py_type: type, label: str) -> Callable[[Any], Any]:
    def conv(value: Any) -> Any:
        if isinstance(value, bool) and py_type is not bool:
            raise ValueError(f"expected {label}, got {value!r}")
        if py_type is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, py_type):
            raise ValueError(f"expected {label}, got {value!r}")
        return value

    return conv


_BOOL = _kind(bool, "true or false")
_STR = _kind(str, "a string")
_INT = _kind(int, "an integer")
_FLOAT = _kind(float, "a number")


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def conv(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return value

    return conv


def _positive_int(value: Any) -> int:
    v = _INT(value)
    if v < 1:
        raise ValueError(f"expected an integer >= 1, got {value!r}")
    return v


def _workers(value: Any) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
        raise ValueError(f'expected an integer 1-256 or "auto", got {value!r}')
    return value


def _hash_key(value: Any) -> str:
    v = _STR(value)
    if v in ("path", "uri", "client_ip") or (
        v.startswith(("header:", "cookie:")) and len(v.split(":", 1)[1]) > 0
    ):
        return v
    raise ValueError(f"expected path, uri, client_ip, header:NAME or cookie:NAME, got {value!r}")


def _request_buffering(value: Any) -> int:
    """A size, or false (0: request bodies stream as they arrive)."""
    if value is False:
        return 0
    if value is True:
        return Limits.request_buffering
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError(f'expected a size like "64KiB", or false, got {value!r}') from None


def _upgrade_protocols(value: Any) -> tuple[str, ...]:
    """The protocol names a listener tunnels after a 101 (RFC 9110 7.8), lowercased."""
    if not isinstance(value, list):
        raise ValueError(f'expected a list of protocol names like ["websocket"], got {value!r}')
    out = []
    for item in value:
        if not isinstance(item, str) or not _TOKEN_RE.match(item):
            raise ValueError(f"expected protocol names (HTTP tokens), got {item!r}")
        if item.lower() == "h2c":
            # RFC 9113 3.1 deprecates it, and a tunnel would let a client speak HTTP/2
            # to the upstream past every route and rule of this listener.
            raise ValueError("h2c is never tunnelled (RFC 9113 3.1 deprecates the h2c upgrade)")
        out.append(item.lower())
    return tuple(out)


def _read_dataclass(table: _Table, cls: type, convs: dict[str, Callable[[Any], Any]]) -> Any:
    """Fill dataclass `cls` from table, one converter per field name."""
    kwargs = {}
    for f in fields(cls):
        if f.name in convs and table.has(f.name):
            kwargs[f.name] = table.get(f.name, convs[f.name], None)
            if kwargs[f.name] is None:
                del kwargs[f.name]
    table.finish()
    return cls(**kwargs)


# Sections that feature modules own: their raw tables are kept (validated by the
# owning module at start-up through `validators`), so this file does not need to
# know every knob of every feature.
TOP_EXTRAS = ("cache", "rate_limit")
GROUP_EXTRAS = ("health", "outlier", "breaker", "retry")
LISTENER_EXTRAS = ("acl", "auth", "anonymity", "rate_limit", "resolver", "connect_ports",
                   "allow_private", "header_rules", "cache")
# Which of those each mode accepts (others are an error naming the key).
MODE_EXTRAS = {
    "forward": set(LISTENER_EXTRAS),
    "reverse": {"rate_limit", "cache"},
    "tcp": set(),
}

# name -> callable(raw_value) raising ValueError; feature modules register here.
validators: dict[str, Callable[[Any], Any]] = {}


def _cache_section(raw: Any) -> Any:
    """[cache]: a fastproxy.cache.CacheConfig, or None when size is 0 (no cache)."""
    from fastproxy.cache.config import CacheConfig

    return CacheConfig.from_table(raw)


def _cache_switch(value: Any) -> bool:
    """A listener's `cache = false` turns the worker's cache off for that listener."""
    return _BOOL(value)


validators["top.cache"] = _cache_section
validators["listener.reverse.cache"] = _cache_switch
validators["listener.forward.cache"] = _cache_switch


def _extras(table: _Table, names: tuple[str, ...], scope: str) -> tuple[tuple[str, Any], ...]:
    out = []
    for name in names:
        if table.has(name):
            raw = table.raw(name)
            check = validators.get(f"{scope}.{name}")
            if check is not None:
                try:
                    raw = check(raw)
                except ConfigError as exc:  # already one line per problem, keys named
                    table.problems.extend(exc.problems)
                    continue
                except ValueError as exc:
                    table.problem(name, str(exc))
                    continue
            out.append((name, raw))
    return tuple(out)


def _read_upstream(name: str, table: _Table) -> UpstreamGroupConfig | None:
    if table.bad:
        return None
    servers = []
    raw_servers = table.raw("servers")
    if raw_servers is None:
        table.problem("servers", "required: a list of server URLs")
    elif not isinstance(raw_servers, list) or not raw_servers:
        table.problem("servers", f"expected a non-empty list of server URLs, got {raw_servers!r}")
    else:
        for i, item in enumerate(raw_servers):
            try:
                servers.append(parse_server_url(item))
            except ValueError as exc:
                table.problem(f"servers[{i}]", str(exc))
    tcp = bool(servers) and all(s.scheme == "tcp" for s in servers)
    group = UpstreamGroupConfig(
        name=name,
        servers=tuple(servers),
        # TCP pools hash the client address by default (a client keeps its server).
        balance=table.get("balance", _choice(BALANCE_POLICIES),
                          "maglev" if tcp else "round_robin"),
        hash_key=table.get("hash_key", _hash_key, "client_ip" if tcp else "path"),
        hash_balance_factor=table.get("hash_balance_factor", _factor, 1.25),
        keepalive=table.get("keepalive", _nonneg_int, 64),
        keepalive_timeout=table.get("keepalive_timeout", parse_duration, 60.0),
        keepalive_requests=table.get("keepalive_requests", _positive_int, 10000),
        connect_timeout=table.get("connect_timeout", parse_duration, None),
        read_timeout=table.get("read_timeout", parse_duration, None),
        extras=_group_settings(table, _extras(table, GROUP_EXTRAS, "upstream"), servers),
    )
    table.finish()
    return group if servers else None


def _group_settings(table: _Table, extras: tuple, servers: list) -> tuple:
    """Validate a group's health/outlier/breaker/retry tables once; keep the result."""
    from fastproxy.upstream import group_settings

    tcp = bool(servers) and all(s.scheme == "tcp" for s in servers)
    found: list[str] = []
    settings = group_settings(dict(extras), tcp, found)
    for text in found:
        key, sep, rest = text.partition(": ")
        if sep and " " not in key:
            table.problem(key, rest)
        else:
            table.problem("", text)
    return extras if found else extras + (("settings", settings),)


def _nonneg_int(value: Any) -> int:
    v = _INT(value)
    if v < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return v


def _factor(value: Any) -> float:
    v = _FLOAT(value)
    if not v >= 1.0:
        raise ValueError(f"expected a number >= 1.0, got {value!r}")
    return v


def _read_route(table: _Table) -> RouteConfig | None:
    upstream = table.get("upstream", _STR, None)
    if upstream is None:
        table.problem("upstream", "required: the upstream group this route sends to")
    host = table.get("host", _STR, None)
    path = table.get("path", _STR, "/")
    if not path.startswith("/"):
        table.problem("path", f"expected a path prefix starting with '/', got {path!r}")
    canary = None
    if table.has("canary"):
        ct = table.table("canary")
        cu = ct.get("upstream", _STR, None)
        if cu is None:
            ct.problem("upstream", "required: the upstream group that gets the canary share")
        pct = ct.get("percent", _FLOAT, None)
        if pct is None:
            ct.problem("percent", "required: the share of requests, 0-100")
        elif not 0 <= pct <= 100:
            ct.problem("percent", f"expected 0-100, got {pct!r}")
        key = ct.get("key", _canary_key, "random")
        ct.finish()
        if cu is not None and pct is not None:
            canary = CanaryConfig(cu, pct, key)
    route = RouteConfig(
        upstream=upstream or "",
        host=host.lower() if host else None,
        path=path,
        strip_prefix=table.get("strip_prefix", _BOOL, False),
        canary=canary,
    )
    table.finish()
    return route if upstream else None


def _mode_settings(table: _Table, mode: str, extras: tuple) -> tuple:
    """Validate a listener's feature tables once, keeping the built settings in extras."""
    raw = dict(extras)
    try:
        if mode == "forward":
            from fastproxy.forward import build_settings
            return extras + (("forward", build_settings(raw)),)
        if mode == "reverse" and "rate_limit" in raw:
            from fastproxy.ratelimit import RateLimitConfig
            try:
                limits = RateLimitConfig.from_table(raw["rate_limit"])
            except ValueError as exc:
                raise ValueError(f"rate_limit.{exc}") from None
            return extras + (("rate_limits", limits),)
    except ValueError as exc:
        key, sep, text = str(exc).partition(": ")
        if sep and " " not in key:
            table.problem(key, text)
        else:
            table.problem("", str(exc))
    return extras


def _canary_key(value: Any) -> str:
    v = _STR(value)
    if v == "random":
        return v
    return _hash_key(v)


def _read_listener(table: _Table) -> ListenerConfig | None:
    if table.bad:
        return None
    addr = table.get("listen", parse_address, None)
    if addr is None and not table.has("listen"):
        table.problem("listen", 'required: an address like "127.0.0.1:8000"')
    mode = table.get("mode", _choice(MODES), "reverse")
    routes = []
    raw_routes = table.raw("routes", [])
    if not isinstance(raw_routes, list):
        table.problem("routes", "expected a list of route tables ([[listeners.routes]])")
        raw_routes = []
    for i, r in enumerate(raw_routes):
        route = _read_route(_Table(r, table.key(f"routes[{i}]"), table.problems))
        if route:
            routes.append(route)
    tls_cert = tls_key = None
    if table.has("tls"):
        tt = table.table("tls")
        tls_cert = tt.get("cert", _STR, None)
        tls_key = tt.get("key", _STR, None)
        for k, v in (("cert", tls_cert), ("key", tls_key)):
            if v is None:
                tt.problem(k, "required: a PEM file path")
            elif not os.path.isfile(v):
                tt.problem(k, f"no such file: {v}")
        if tls_cert and tls_key and os.path.isfile(tls_cert) and os.path.isfile(tls_key):
            # Load them now, so a bad file is a configuration error naming the key (and
            # `fastproxy check` finds it), not a failure to listen.
            import ssl
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                    tls_cert, tls_key)
            except (ssl.SSLError, OSError) as exc:
                tt.problem("", f"cannot load the certificate and key: {exc}")
        tt.finish()
    extras = _extras(table, LISTENER_EXTRAS, f"listener.{mode}")
    for name, _ in extras:
        if name not in MODE_EXTRAS[mode]:
            table.problem(name, f"not used by a {mode} listener")
    extras = _mode_settings(table, mode, extras)
    listener = ListenerConfig(
        host=addr[0] if addr else "127.0.0.1",
        port=addr[1] if addr else 0,
        mode=mode,
        name=table.get("name", _STR, ""),
        upstream=table.get("upstream", _STR, None),
        routes=tuple(routes),
        tls_cert=tls_cert,
        tls_key=tls_key,
        upgrade=_http_only(table, mode, "upgrade", _upgrade_protocols, ("websocket",)),
        request_buffering=_http_only(table, mode, "request_buffering", _request_buffering, None),
        extras=extras,
    )
    table.finish()
    return listener if addr else None


def _http_only(table: _Table, mode: str, name: str, conv: Callable[[Any], Any],
               default: Any) -> Any:
    """A listener key that only HTTP (reverse and forward) listeners read."""
    if mode == "tcp" and table.has(name):
        table.raw(name)
        table.problem(name, "not used by a tcp listener")
        return default
    return table.get(name, conv, default)


def from_dict(data: dict, source: str = "<dict>") -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    problems: list[str] = []
    top = _Table(data, "", problems)

    upstreams: dict[str, UpstreamGroupConfig] = {}
    ut = top.table("upstreams")
    for name in list(ut.data):
        ut.seen.add(name)
        group = _read_upstream(name, _Table(ut.data[name], ut.key(name), problems))
        if group:
            upstreams[name] = group

    listeners = []
    raw_listeners = top.raw("listeners")
    if raw_listeners is None:
        top.problem("listeners", "required: at least one [[listeners]] table")
        raw_listeners = []
    elif not isinstance(raw_listeners, list) or not raw_listeners:
        top.problem("listeners", "expected a non-empty list of [[listeners]] tables")
        raw_listeners = []
    for i, item in enumerate(raw_listeners):
        lt = _Table(item, f"listeners[{i}]", problems)
        listener = _read_listener(lt)
        if listener:
            listeners.append((lt, listener))

    workers = top.get("workers", _workers, 1)
    admin = top.get("admin", parse_address, None)
    timeouts = _read_dataclass(
        top.table("timeouts"), Timeouts, {f.name: parse_duration for f in fields(Timeouts)})
    limits = _read_dataclass(top.table("limits"), Limits, {
        "max_request_line": _size_min(64), "max_header_size": _size_min(256),
        "max_header_fields": _positive_int, "max_body": parse_size,
        "max_connections": _positive_int, "request_buffering": _request_buffering,
    })
    headers = _read_dataclass(top.table("headers"), HeaderPolicy, {
        "forwarded": _choice(FORWARDED_MODES), "via": _BOOL, "via_name": _token,
        "preserve_host": _BOOL,
    })
    log_t = top.table("access_log")
    access_log = AccessLog(
        path=log_t.get("path", _STR, None),
        format=log_t.get("format", _choice(LOG_FORMATS), "combined"),
    )
    log_t.finish()
    extras = _extras(top, TOP_EXTRAS, "top")
    cache_cfg = dict(extras).get("cache")
    cache_size = getattr(cache_cfg, "size", 0)
    top.finish()

    # Cross references: every listener's and route's upstream must exist.
    for lt, listener in listeners:
        if listener.mode in ("reverse", "tcp"):
            if listener.upstream is None and not listener.routes:
                lt.problem("upstream", f"required for a {listener.mode} listener "
                                       "(or give routes)")
            names = [("upstream", listener.upstream)] + [
                (f"routes[{i}].upstream", r.upstream) for i, r in enumerate(listener.routes)
            ] + [(f"routes[{i}].canary.upstream", r.canary.upstream)
                 for i, r in enumerate(listener.routes) if r.canary]
            for key, name in names:
                if name is not None and name not in upstreams and not any(
                    p.startswith(f"upstreams.{name}.") for p in problems
                ):
                    lt.problem(key, f"no upstream group named {name!r}")
            if listener.mode == "tcp":
                for key, name in names:
                    g = upstreams.get(name or "")
                    if g and any(s.scheme != "tcp" for s in g.servers):
                        lt.problem(key, f"a tcp listener needs tcp:// servers in {name!r}")
        elif listener.mode == "forward" and listener.routes:
            lt.problem("routes", "routes apply to reverse listeners only")
    seen_addr: dict[tuple[str, int], int] = {}
    for i, (lt, listener) in enumerate(listeners):
        key = (listener.host, listener.port)
        if listener.port and key in seen_addr:
            lt.problem("listen", f"{listener.address} is also used by "
                                 f"listeners[{seen_addr[key]}]")
        seen_addr[key] = i

    if problems:
        raise ConfigError(problems)
    return Config(
        listeners=tuple(listener for _, listener in listeners),
        upstreams=upstreams,
        workers=workers,
        admin=admin,
        timeouts=timeouts,
        limits=limits,
        headers=headers,
        access_log=access_log,
        cache_size=cache_size,
        extras=extras,
        source=source,
    )


def _size_min(minimum: int) -> Callable[[Any], int]:
    def conv(value: Any) -> int:
        v = parse_size(value)
        if v < minimum:
            raise ValueError(f"expected at least {minimum} bytes, got {value!r}")
        return v

    return conv


_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _token(value: Any) -> str:
    v = _STR(value)
    if not _TOKEN_RE.match(v):
        raise ValueError(f"expected an HTTP token (letters, digits, -._~), got {value!r}")
    return v


def load(path: str) -> Config:
    """Read and validate a TOML file; raise ConfigError on any problem."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    return from_dict(data, source=path)
