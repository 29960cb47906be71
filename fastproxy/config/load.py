"""Configuration: TOML (and command-line flags) -> frozen dataclasses, validated once.

Every problem is reported as one line that names the key, e.g.
``upstreams.api.connect_timeout: expected a duration like "5s", got '5x'``; all problems
are collected before giving up, so a user fixes a file in one pass.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from fastproxy.accesslog import log_format
from fastproxy.errorlog import FORMATS as ERROR_LOG_FORMATS
from fastproxy.config.schema import (  # noqa: F401 (re-exported: feature modules import them here)
    binds_overlap,
    tomllib, ConfigError, MAX_COUNT, MAX_DURATION, MAX_NUMBER, MAX_SIZE,
    ServerSpec, account_name, check_host, dataclass_from_table, default_pidfile,
    explain_problems, format_address, unknown_key,
    duration_range, int_range, log_path, pidfile_path, read_cluster,
    number_range, parse_address, parse_duration, parse_networks, parse_server_url, parse_size,
    read_document,
    resolves, show_size, size_range,
)


# ---------------------------------------------------------------------------
# The configuration model.

from fastproxy.cache.config import CacheConfig  # noqa: E402
from fastproxy.forward.settings import KEYS as FORWARD_KEYS, ForwardSettings, build_settings  # noqa: E402
from fastproxy.limits import RateLimitConfig  # noqa: E402
from fastproxy.upstream.settings import SECTIONS as GROUP_SECTIONS  # noqa: E402
from fastproxy.upstream.settings import UpstreamGroupConfig, UpstreamTLS, read_sections  # noqa: E402
from fastproxy.config.compression import CompressionConfig  # noqa: E402
from fastproxy.config.tls import read_tls  # noqa: E402
from fastproxy.config.routes import CanaryConfig, RouteConfig, ROUTE_SECTIONS, read_route  # noqa: E402,F401

BALANCE_POLICIES = ("round_robin", "maglev", "least_conn", "random2")
RESOLVE_MODES = ("start", "runtime")
UPSTREAM_PROTOCOLS = ("http1", "auto")   # auto: ALPN h2 to https:// servers
SEND_PROXY_VERSIONS = ("v1", "v2")       # the PROXY protocol header's text / binary form
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
    client_send: float = 60.0        # a client that leaves the response unread this long
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
    # The field that carries each request's id upstream (nginx's $request_id, HAProxy's
    # unique-id-header), e.g. "X-Request-ID"; "" sends none. The log's $request_id works
    # either way.
    request_id: str = ""
    # Keep a well-formed id the client sent in that field (a balancer in front chose it)
    # instead of replacing it.
    request_id_trust: bool = False


@dataclass(frozen=True)
class AccessLog:
    """Where access log lines go and in which format."""

    path: str | None = None          # None = off, "-" = stdout
    format: str = "combined"


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
    # ((names, cert, key), ...): certificates chosen by SNI (exact or *.suffix names)
    tls_sni: tuple[tuple[tuple[str, ...], str, str], ...] = ()
    # Upgrade protocols tunnelled after a 101 (lowercase names); others go as plain requests.
    upgrade: tuple[str, ...] = ("websocket",)
    request_buffering: int | None = None   # None: limits.request_buffering
    compression: bool = True         # false: this listener never compresses ([compression])
    forward: ForwardSettings | None = None   # acl, auth, anonymity, resolver (forward mode)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)   # 0s: no limits
    cache: bool = True               # false: this listener does not use the worker's cache
    # The PROXY protocol header comes first on every connection (fastproxy.server.proxied),
    # from these networks only.
    proxy_protocol: bool = False
    proxy_protocol_from: tuple[str, ...] = ()

    @property
    def accept_path(self) -> tuple:
        """What a reload cannot change on a bound socket: host, mode, TLS, PROXY header."""
        return (self.host, self.mode, self.tls_cert, self.proxy_protocol)

    @property
    def address(self) -> str:
        """host:port as the configuration writes it."""
        return format_address(self.host, self.port)


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    listeners: tuple[ListenerConfig, ...]
    upstreams: dict[str, UpstreamGroupConfig] = field(default_factory=dict)
    workers: int = 1
    # How the kernel spreads new connections over the workers' SO_REUSEPORT sockets
    # (fastproxy.server.reuseport): "round-robin" (an eBPF program) or "hash".
    reuseport_balance: str = "round-robin"
    admin: tuple[str, int] | None = None
    # Host names the admin interface answers to besides IP literals, localhost and the
    # admin address's own name (fastproxy.admin.server: DNS rebinding).
    admin_hosts: tuple[str, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    headers: HeaderPolicy = field(default_factory=HeaderPolicy)
    access_log: AccessLog = field(default_factory=AccessLog)
    cache: CacheConfig | None = None     # None: no cache
    compression: CompressionConfig | None = None   # None: no response compression
    # [cluster] / --peers --self: the fleet whose nodes cache as one (fastproxy.cache.peers)
    cluster_peers: tuple[ServerSpec, ...] = ()
    cluster_self: ServerSpec | None = None
    pidfile: str | None = None       # None = no pidfile (`pidfile = false`)
    error_log_format: str = "text"   # [error_log] format: text | json
    user: str | None = None          # drop to this user after binding (started as root)
    group: str | None = None         # and this group (default: the user's primary group)
    source: str = "<built-in default>"


_buffering_range = size_range(0, 1 << 30)


def _request_buffering(value: Any) -> int:
    """A size, or false (0: request bodies stream as they arrive)."""
    if value is False:
        return 0
    if value is True:
        return Limits.request_buffering
    try:
        parse_size(value)
    except ValueError:
        raise ValueError(f'expected a size like "64KiB", or false, got {value!r}') from None
    return _buffering_range(value)


# The range of every number of the main configuration, one definition each (the README's
# configuration section quotes them). Sizes and counts the compiled layer holds in C fields
# (ext/relay.pyx ListenerSettings and ConnectionPool, ext/http.pyx parsers) stay well
# inside those fields' types.
RANGES: dict[str, Callable[[Any], Any]] = {
    "max_request_line": size_range(64, 1 << 20),
    "max_header_size": size_range(256, 16 << 20),
    # The parser allocates a table of this many fields for every connection.
    "max_header_fields": int_range(1, 10_000),
    "max_body": parse_size,                       # 0 (no limit) to 1PiB
    "max_connections": int_range(1, 1_000_000),
    "request_buffering": _request_buffering,        # 0 (stream) to 1GiB
    "keepalive": int_range(0, 100_000),
    "keepalive_requests": int_range(1, 1_000_000_000),
    # Idle connections above `keepalive` wait this long for the next burst (HAProxy's
    # pool-purge-delay, 5s by default); 0 closes them at once (nginx).
    "pool_purge_delay": duration_range(0.0, 3600.0),
    "hash_balance_factor": number_range(1.0, 100.0),
    # A returning server's ramp to its full weight (HAProxy's slowstart, nginx's slow_start).
    "slow_start": duration_range(0.0, 3600.0),
}


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
        # Keys its reader takes only when present (the rest it asks for anyway), named
        # with the others when a key is unknown.
        self.also: set[str] = set()

    def key(self, name: str) -> str:
        # A name with control characters is shown quoted and escaped, as TOML writes
        # it: one problem stays one line.
        if _CONTROL_RE.search(name):
            name = json.dumps(name)
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
            # "key: text" from a converter of a table value names a key below this one.
            key, sep, text = str(exc).partition(": ")
            if sep and re.fullmatch(r"[a-z_]+", key):
                self.problem(f"{name}.{key}", text)
            else:
                self.problem(name, str(exc))
            return default

    def table(self, name: str) -> "_Table":
        self.seen.add(name)
        return _Table(self.data.get(name, {}), self.key(name), self.problems)

    def finish(self) -> None:
        for name in self.data:
            if name not in self.seen:
                self.problem(name, unknown_key(name, self.seen | self.also))


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


REUSEPORT_BALANCE = ("round-robin", "hash")


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
    table.also.update(convs)
    for f in fields(cls):
        if f.name in convs and table.has(f.name):
            kwargs[f.name] = table.get(f.name, convs[f.name], None)
            if kwargs[f.name] is None:
                del kwargs[f.name]
    table.finish()
    return cls(**kwargs)


# Listener keys beyond the common ones, and the modes that read them (others are an error
# naming the key).
LISTENER_KEYS = {**{name: ("forward",) for name in FORWARD_KEYS},
                 "rate_limit": ("forward", "reverse"), "cache": ("forward", "reverse")}


def _section(table: _Table, name: str, build: Callable[[Any], Any]) -> Any:
    """build(raw table) for a feature's section; a ValueError "key: text" becomes the
    problem "section.key: text" (None then)."""
    try:
        return build(table.raw(name))
    except ConfigError as exc:   # already one line per problem, keys named
        table.problems.extend(exc.problems)
    except ValueError as exc:
        _problem(table, f"{name}.{exc}" if _names_key(str(exc)) else f"{name}: {exc}")
    return None


def _names_key(text: str) -> bool:
    key, sep, _ = text.partition(": ")
    return bool(sep) and " " not in key


def _problem(table: _Table, text: str) -> None:
    """Record a feature's "key: text" message under the table's path."""
    key, sep, rest = text.partition(": ")
    if sep and " " not in key:
        table.problem(key, rest)
    else:
        table.problem("", text)


def _read_upstream(name: str, table: _Table) -> UpstreamGroupConfig | None:
    if table.bad:
        return None
    table.also.update(("tls", *GROUP_SECTIONS))
    servers = []
    raw_servers = table.raw("servers")
    if raw_servers is None:
        table.problem("servers", "required: a list of server URLs")
    elif not isinstance(raw_servers, list) or not raw_servers:
        table.problem("servers", f"expected a non-empty list of server URLs, got {raw_servers!r}")
    else:
        first: dict[tuple[str, int], int] = {}
        for i, item in enumerate(raw_servers):
            try:
                spec = parse_server_url(item)
            except ValueError as exc:
                key, sep, text = str(exc).partition(": ")   # a key of { url, weight }?
                table.problem(f"servers[{i}].{key}" if sep and " " not in key
                              else f"servers[{i}]", text if sep and " " not in key
                              else str(exc))
                continue
            # A balancer counts each server once (weights say "more of it").
            if (spec.host, spec.port) in first:
                table.problem(f"servers[{i}]", f"{format_address(spec.host, spec.port)} is "
                                               f"also servers[{first[spec.host, spec.port]}] "
                                               "(give it a weight instead)")
                continue
            first[spec.host, spec.port] = i
            servers.append(spec)
    resolve = table.get("resolve", _choice(RESOLVE_MODES), "start")
    if resolve == "start":
        # As nginx and HAProxy do: a name that does not resolve now is a typo more often
        # than a server yet to come; `resolve = "runtime"` is for the latter.
        for i, server in enumerate(servers):
            reason = resolves(server.host, server.port)
            if reason is not None:
                table.problem(f"servers[{i}]", f"host {server.host!r} does not resolve "
                                               f'({reason}); or set resolve = "runtime"')
    tcp = bool(servers) and all(s.scheme == "tcp" for s in servers)
    # TCP pools hash the client address by default (a client keeps its server).
    balance = table.get("balance", _choice(BALANCE_POLICIES), "maglev" if tcp else "round_robin")
    slow_start = table.get("slow_start", RANGES["slow_start"], 0.0)
    if slow_start and balance == "maglev":
        # Ramping a weight rebuilds the Maglev table at every step, and each rebuild moves
        # keys between servers that never left: caches would churn for the whole window.
        table.problem("slow_start", 'not applied by balance = "maglev": consistent hashing '
                      "gives a returning server its own keys back at once (its bounded load, "
                      "hash_balance_factor, caps its share); use round_robin, least_conn or "
                      "random2, or remove slow_start")
    group = UpstreamGroupConfig(
        name=name,
        servers=tuple(servers),
        balance=balance,
        hash_key=table.get("hash_key", _hash_key, "client_ip" if tcp else "path"),
        hash_balance_factor=table.get("hash_balance_factor", RANGES["hash_balance_factor"],
                                      1.25),
        slow_start=slow_start,
        keepalive=table.get("keepalive", RANGES["keepalive"], 64),
        keepalive_timeout=table.get("keepalive_timeout", parse_duration, 60.0),
        keepalive_requests=table.get("keepalive_requests", RANGES["keepalive_requests"], 10000),
        pool_purge_delay=table.get("pool_purge_delay", RANGES["pool_purge_delay"], 5.0),
        connect_timeout=table.get("connect_timeout", parse_duration, None),
        read_timeout=table.get("read_timeout", parse_duration, None),
        resolve=resolve,
        protocol=table.get("protocol", _choice(UPSTREAM_PROTOCOLS), "http1"),
        tls=_upstream_tls(table, servers),
        send_proxy=_send_proxy(table, servers, tcp),
        **_group_sections(table, tcp),
    )
    table.finish()
    return group if servers else None


def _send_proxy(table: _Table, servers: list, tcp: bool) -> str | None:
    """`send_proxy`: a PROXY header before a tcp group's bytes. Not for HTTP groups: their
    pooled connections carry many clients' requests, and a header names one client per
    connection (see the README, "PROXY protocol")."""
    value = table.get("send_proxy", _choice(SEND_PROXY_VERSIONS), None)
    if value is not None and servers and not tcp:
        table.problem("send_proxy", "only for groups of tcp:// servers (an HTTP group's "
                                    "connections are shared by clients; X-Forwarded-For "
                                    "names them there)")
        return None
    return value


def _upstream_tls(table: _Table, servers: list) -> UpstreamTLS | None:
    """[upstreams.NAME.tls]: verification, CA bundle, SNI, client certificate (checked now)."""
    if not table.has("tls"):
        return None
    tt = table.table("tls")
    if tt.bad:
        return None
    tls = UpstreamTLS(verify=tt.get("verify", _BOOL, True), ca=tt.get("ca", _STR, None),
                      sni=tt.get("sni", _STR, None), cert=tt.get("cert", _STR, None),
                      key=tt.get("key", _STR, None))
    tt.finish()
    from fastproxy.upstream.tls import check
    problem = check(tls, [s.scheme for s in servers])
    if problem is not None:
        tt.problem(*problem)
        return None
    return tls


def _group_sections(table: _Table, tcp: bool) -> dict[str, Any]:
    """A group's health/outlier/breaker/retry tables, built once (upstream.settings)."""
    raw = {name: table.raw(name) for name in GROUP_SECTIONS if table.has(name)}
    found: list[str] = []
    sections = read_sections(raw, tcp, found)
    for text in found:
        _problem(table, text)
    return sections


def _forward_settings(table: _Table) -> ForwardSettings | None:
    """A forward listener's acl/auth/anonymity/resolver keys, built once."""
    raw = {name: table.raw(name) for name in FORWARD_KEYS if table.has(name)}
    try:
        return build_settings(raw)
    except ValueError as exc:
        _problem(table, str(exc))
    return None


def listener_label(name: str, index: int) -> str:
    """The listener's name in /status, metrics and the access log: its own or listenerN."""
    return name or f"listener{index}"


def _listen_address(value: Any) -> tuple[str, int]:
    """A listener's (host, port): the host must be an address or a name that resolves."""
    host, port = parse_address(value)
    check_host(host)
    reason = resolves(host, port)
    if reason is not None:
        raise ValueError(f"host {host!r} does not resolve ({reason})")
    return host, port


def _host_names(value: Any) -> tuple[str, ...]:
    """A list of DNS names (lowercase, no trailing dot), as a Host field carries them."""
    if not isinstance(value, list):
        raise ValueError(f"expected a list of host names, got {value!r}")
    out = []
    for item in value:
        name = _STR(item).lower().rstrip(".")
        check_host(name)
        out.append(name)
    return tuple(out)


def _canary_key(value: Any) -> str:
    v = _STR(value)
    if v == "random":
        return v
    return _hash_key(v)


def _read_listener(table: _Table) -> ListenerConfig | None:
    if table.bad:
        return None
    addr = table.get("listen", _listen_address, None)
    if addr is None and not table.has("listen"):
        table.problem("listen", 'required: an address like "127.0.0.1:8000"')
    mode = table.get("mode", _choice(MODES), "reverse")
    table.also.update(["tls"] + [k for k, modes in LISTENER_KEYS.items() if mode in modes])
    routes = []
    raw_routes = table.raw("routes", [])
    if not isinstance(raw_routes, list):
        table.problem("routes", "expected a list of route tables ([[listeners.routes]])")
        raw_routes = []
    for i, r in enumerate(raw_routes):
        rt = _Table(r, table.key(f"routes[{i}]"), table.problems)
        rt.also.update(ROUTE_SECTIONS)
        route = read_route(rt, _canary_key)
        if route:
            routes.append(route)
    tls_cert = tls_key = None
    tls_sni: tuple = ()
    if table.has("tls"):
        tls_cert, tls_key, tls_sni = read_tls(table.raw("tls"), table.key("tls"),
                                              table.problems)
    for name, modes in LISTENER_KEYS.items():
        if table.has(name) and mode not in modes:
            table.raw(name)
            table.problem(name, f"not used by a {mode} listener")
    forward = _forward_settings(table) if mode == "forward" else None
    rate_limit = RateLimitConfig()
    if mode != "tcp" and table.has("rate_limit"):
        rate_limit = _section(table, "rate_limit", RateLimitConfig.from_table) or rate_limit
    cache = True
    if mode != "tcp" and table.has("cache"):
        cache = table.get("cache", _BOOL, True)
    proxy_protocol, proxy_from = _proxy_protocol(table)
    listener = ListenerConfig(
        host=addr[0] if addr else "127.0.0.1",
        port=addr[1] if addr else 0,
        mode=mode,
        name=table.get("name", _label, ""),
        upstream=table.get("upstream", _STR, None),
        routes=tuple(routes),
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_sni=tls_sni,
        upgrade=_http_only(table, mode, "upgrade", _upgrade_protocols, ("websocket",)),
        request_buffering=_http_only(table, mode, "request_buffering", _request_buffering, None),
        compression=_reverse_only(table, mode, "compression", _BOOL, True),
        forward=forward,
        rate_limit=rate_limit,
        cache=cache,
        proxy_protocol=proxy_protocol,
        proxy_protocol_from=proxy_from,
    )
    table.finish()
    return listener if addr else None


def _proxy_protocol(table: _Table) -> tuple[bool, tuple[str, ...]]:
    """`proxy_protocol` and the networks it is trusted from (required with it: a header
    from anyone would let anyone claim any client address)."""
    on = table.get("proxy_protocol", _BOOL, False)
    nets = table.get("proxy_protocol_from", parse_networks, ())
    if on and table.raw("proxy_protocol_from") in (None, []):   # (a bad value is reported)
        table.problem("proxy_protocol_from", "required with proxy_protocol = true: the "
                                             'networks of the balancers, like ["10.0.0.0/8"]')
    elif nets and table.raw("proxy_protocol") in (None, False):
        table.problem("proxy_protocol_from", "set proxy_protocol = true to use it")
    return on, nets


def _http_only(table: _Table, mode: str, name: str, conv: Callable[[Any], Any],
               default: Any) -> Any:
    """A listener key that only HTTP (reverse and forward) listeners read."""
    if mode == "tcp" and table.has(name):
        table.raw(name)
        table.problem(name, "not used by a tcp listener")
        return default
    return table.get(name, conv, default)


def _reverse_only(table: _Table, mode: str, name: str, conv: Callable[[Any], Any],
                  default: Any) -> Any:
    """A listener key that only reverse listeners read."""
    if mode != "reverse" and table.has(name):
        table.raw(name)
        table.problem(name, f"not used by a {mode} listener")
        return default
    return table.get(name, conv, default)


def _compression(top: _Table) -> CompressionConfig | None:
    """[compression] (or --compress): the settings, None when absent or `enabled = false`."""
    if not top.has("compression"):
        return None
    try:
        return CompressionConfig.from_table(top.raw("compression"))
    except ValueError as exc:
        key, sep, text = str(exc).partition(": ")
        top.problem(f"compression.{key}" if sep and " " not in key else "compression",
                    text if sep and " " not in key else str(exc))
        return None


def from_dict(data: dict, source: str = "<dict>") -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    problems: list[str] = []
    top = _Table(data, "", problems)
    top.also.update(("pidfile", "compression", "cache"))

    upstreams: dict[str, UpstreamGroupConfig] = {}
    ut = top.table("upstreams")
    for name in list(ut.data):
        ut.seen.add(name)
        if _CONTROL_RE.search(name):
            ut.problem(name, f"a group name cannot hold control characters, got {name!r}")
            continue
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
    reuseport_balance = top.get("reuseport_balance", _choice(REUSEPORT_BALANCE), "round-robin")
    pidfile = top.get("pidfile", pidfile_path, "") if "pidfile" in top.data else default_pidfile()
    user = top.get("user", account_name("user"), None)
    group = top.get("group", account_name("group"), None)
    admin = top.get("admin", _listen_address, None)
    admin_hosts = top.get("admin_hosts", _host_names, ())
    timeouts = _read_dataclass(
        top.table("timeouts"), Timeouts, {f.name: parse_duration for f in fields(Timeouts)})
    limits = _read_dataclass(top.table("limits"), Limits,
                             {f.name: RANGES[f.name] for f in fields(Limits)})
    headers_t = top.table("headers")
    headers = _read_dataclass(headers_t, HeaderPolicy, {
        "forwarded": _choice(FORWARDED_MODES), "via": _BOOL, "via_name": _token,
        "preserve_host": _BOOL, "request_id": _request_id_field, "request_id_trust": _BOOL,
    })
    if headers.request_id_trust and not headers.request_id:
        headers_t.problem("request_id_trust", "needs headers.request_id, the field whose "
                                              'incoming id to keep (e.g. "X-Request-ID")')
    log_t = top.table("access_log")
    access_log = AccessLog(
        path=log_t.get("path", log_path, None),
        format=log_t.get("format", log_format, "combined"),
    )
    log_t.finish()
    compression = _compression(top)
    cluster_peers, cluster_self = read_cluster(top.table("cluster"))
    cache = _section(top, "cache", CacheConfig.from_table) if top.has("cache") else None
    err_t = top.table("error_log")
    error_log_format = err_t.get("format", _choice(ERROR_LOG_FORMATS), "text")
    err_t.finish()
    top.finish()

    # Cross references: every listener's and route's upstream must exist.
    for lt, listener in listeners:
        if listener.mode in ("reverse", "tcp"):
            if listener.mode == "tcp" and listener.routes:
                # Routes match HTTP requests: a tcp listener has none, so it would
                # have no group to connect to.
                lt.problem("routes", "routes apply to HTTP listeners only; give upstream")
            # An empty name as well as a missing key: serve died on "" (KeyError).
            elif not listener.upstream and not listener.routes:
                lt.problem("upstream", f"required for a {listener.mode} listener "
                                       "(or give routes)")
            names = [("upstream", listener.upstream)] + [
                (f"routes[{i}].upstream", r.upstream) for i, r in enumerate(listener.routes)
            ] + [(f"routes[{i}].canary.upstream", r.canary.upstream)
                 for i, r in enumerate(listener.routes) if r.canary
                 ] + [(f"routes[{i}].shadow.upstream", r.shadow.upstream)
                      for i, r in enumerate(listener.routes) if r.shadow]
            for key, name in names:
                if name and name not in upstreams and not any(
                    p.startswith(f"upstreams.{name}.") for p in problems
                ):
                    lt.problem(key, f"no upstream group named {name!r}")
            for key, name in names:
                g = upstreams.get(name or "")
                if g is None:
                    continue
                if listener.mode == "tcp" and any(s.scheme != "tcp" for s in g.servers):
                    lt.problem(key, f"a tcp listener needs tcp:// servers in {name!r}")
                elif listener.mode == "reverse" and any(s.scheme == "tcp" for s in g.servers):
                    lt.problem(key, f"a reverse listener needs http:// or https:// servers "
                                    f"in {name!r}")
        elif listener.mode == "forward" and listener.routes:
            lt.problem("routes", "routes apply to reverse listeners only")
    # Caught here, not at bind time (exit 1 after the first listener came up, and check
    # said ok): the same address twice, a wildcard beside an address, the admin on one.
    for i, (lt, listener) in enumerate(listeners):
        where = (listener.host, listener.port)
        other = next((j for j, (_, earlier) in enumerate(listeners[:i])
                      if binds_overlap((earlier.host, earlier.port), where)), None)
        if other is not None:
            lt.problem("listen", f"{listener.address} is also used by listeners[{other}]"
                       + ("" if listeners[other][1].address == listener.address
                          else f" ({listeners[other][1].address})"))
    # The name keys the listener in /status and labels its metrics: two alike would be
    # shown as one (the last), their histograms summed.
    labels = [listener_label(lst.name, i) for i, (_, lst) in enumerate(listeners)]
    for i, (lt, listener) in enumerate(listeners):
        if labels[i] in labels[:i]:
            j = labels.index(labels[i])
            named, other = (lt, j) if listener.name else (listeners[j][0], i)
            named.problem("name", f"{labels[i]!r} also names listeners[{other}]")
    if admin is not None:
        other = next((j for j, (_, lst) in enumerate(listeners)
                      if binds_overlap((lst.host, lst.port), admin)), None)
        if other is not None:
            top.problem("admin", f"{admin[0]}:{admin[1]} is also used by listeners[{other}] "
                                 f"({listeners[other][1].address})")

    if problems:
        raise ConfigError(explain_problems(problems))
    return Config(
        listeners=tuple(listener for _, listener in listeners),
        upstreams=upstreams,
        workers=workers,
        reuseport_balance=reuseport_balance,
        admin=admin,
        admin_hosts=admin_hosts,
        timeouts=timeouts,
        limits=limits,
        headers=headers,
        access_log=access_log,
        cache=cache,
        compression=compression,
        cluster_peers=cluster_peers,
        cluster_self=cluster_self,
        pidfile=pidfile or None,
        error_log_format=error_log_format,
        user=user,
        group=group,
        source=source,
    )


_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Names go into log lines, metric labels and the status page: a newline would forge a line.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _label(value: Any) -> str:
    v = _STR(value)
    if _CONTROL_RE.search(v):
        raise ValueError(f"a name cannot hold control characters, got {value!r}")
    return v


# Fields the proxy itself frames, routes or writes: a request id in one of them would
# break the request or forge what this hop says (RFC 9110 7.6.1, 7.6.3; RFC 9112 6).
_OWN_FIELDS = frozenset(("host", "content-length", "transfer-encoding", "connection", "te",
                         "upgrade", "keep-alive", "proxy-connection", "trailer", "expect",
                         "via", "forwarded", "x-forwarded-for", "x-forwarded-proto",
                         "x-forwarded-host"))


def _request_id_field(value: Any) -> str:
    """headers.request_id: a field name (RFC 9110 5.1 token) the proxy does not own, or ""."""
    v = _STR(value)
    if v == "":
        return v
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", v):
        raise ValueError(f'expected a field name such as "X-Request-ID" (an RFC 9110 '
                         f'token), or "" for none, got {value!r}')
    if v.lower() in _OWN_FIELDS:
        raise ValueError(f"{v!r} is a field the proxy frames or writes itself; "
                         'use a name of its own such as "X-Request-ID"')
    return v


def _token(value: Any) -> str:
    v = _STR(value)
    if not _TOKEN_RE.match(v):
        raise ValueError(f"expected an HTTP token (letters, digits, -._~), got {value!r}")
    return v


def load(path: str) -> Config:
    """Read and validate a TOML file; raise ConfigError on any problem."""
    return from_dict(read_document(path), source=path)
