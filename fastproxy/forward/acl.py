"""Access control for forward mode: ordered allow/deny rules, first match wins, safe defaults.

A rule matches on any combination of client address (CIDR list), destination host (exact
name, `.suffix` for a domain and all its subdomains, shell-style wildcard), destination
address (CIDR list), port (numbers and ranges), method and URL regex; a rule with no
condition matches everything. Rules are compiled once (integer intervals searched with
bisect, sets, one combined wildcard regex per rule) and matched through per-dimension
bitmasks of rules, cached per client, host, port and method, so a request costs about a
microsecond however many rules there are.

The URL regex (`re.search`) sees the target normalised as the origin will read it
(`decision_url`): scheme and host in lowercase, the scheme's default port left out (RFC
9110 4.2.3), and the path as `targets.decision_path` gives it, so `/%61dmin`, `//admin`
and `/x/../admin` meet a rule written for `/admin`. The path keeps its case: write
`(?i)` into rules for case-insensitive origins. Block by host where possible.

Evaluation has two phases, because the destination address is known only after DNS:

    d = acl.check_request(client_ip, host, port, method, url)   # before resolution
    if not d.allow: 403 with d.reason
    for addr in await resolver.resolve(normalize_host(host)):
        final = acl.check_address(d, addr)                       # for the address connected
        if final.allow: connect to addr ...

`check_address` must run for every address actually connected (literal IPs too): the
destination checks run there and nowhere else, so a name that resolves to a public address
for the check and a private one for the connection (DNS rebinding) cannot get through.

Safe defaults (the guards), applied whatever the rules say unless lifted as described:

* clients: only loopback and private (RFC 1918, RFC 4193) clients are served; an allow rule
  lifts this only when it has a `clients` condition (so opening the proxy to the world is
  always written down).
* destinations: loopback, private, link-local (169.254.0.0/16 holds cloud metadata
  endpoints such as 169.254.169.254), unspecified, this-network 0.0.0.0/8, CGNAT
  100.64.0.0/10, multicast, reserved/broadcast, and the same addresses embedded in IPv6
  (IPv4-mapped and -translated, NAT64, 6to4) are refused unless `allow_private` is set or the allowing rule
  has a `dest` network lying entirely inside such a range (`dest = ["10.1.0.0/16"]` opens
  that network; `dest = ["0.0.0.0/0"]` does not open the metadata endpoint).
* ports: CONNECT only to `connect_ports` (443 by default: a tunnel to port 25 would make
  the proxy a spam relay); other requests only to `http_ports` (80, 443 and 1025-65535, as
  Squid's Safe_ports, to stop cross-protocol requests to mail, SSH and other services).

Configuration (`AclConfig.from_table` reads it from TOML)::

    [forward.acl]
    default_action = "allow"        # when no rule matches (the guards still apply)
    allow_private = false           # true: private/loopback/link-local destinations allowed
    connect_ports = [443, 8443]
    http_ports = [80, 443, "1025-65535"]

    [[forward.acl.rules]]
    name = "no-ads"
    action = "deny"
    hosts = [".doubleclick.net", "ads.*"]

    [[forward.acl.rules]]
    name = "intranet"
    action = "allow"
    clients = ["10.0.0.0/8"]
    dest = ["10.20.0.0/16"]
    ports = [80, "8000-8999"]
    methods = ["GET", "HEAD"]
    url = "^http://[^/]+/public/"
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, fields
from typing import Iterable

from fastproxy import _http
from fastproxy.addresses import (
    DEFAULT_CLIENT_NETS, SPECIAL_SET, CidrSet, address_key, client_key, special_range, within_special)
from fastproxy.forward.resolver import HostError, is_ip_literal, normalize_host
from fastproxy.config.schema import dataclass_from_table, is_ascii_number, parse_network
from fastproxy.targets import decision_path

__all__ = [
    "AclRule", "AclConfig", "Acl", "Decision", "HostPatterns", "CidrSet", "PortSet", "decision_url",
    "special_range", "address_key", "client_key",
    "DEFAULT", "DEFAULT_CLIENTS", "DEFAULT_PRIVATE", "DEFAULT_CONNECT_PORTS", "DEFAULT_HTTP_PORTS",
]

# Names of the built-in decisions (for the 403 body and the access log).
DEFAULT = "default"
DEFAULT_CLIENTS = "default:clients"
DEFAULT_PRIVATE = "default:private-destination"
DEFAULT_CONNECT_PORTS = "default:connect-ports"
DEFAULT_HTTP_PORTS = "default:http-ports"


_WILD = frozenset("*?[")


class HostPatterns:
    """Destination host patterns: exact names, `.suffix` (domain and subdomains), wildcards."""

    __slots__ = ("patterns", "_exact", "_suffixes", "_wild")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        exact, suffixes, wild = set(), set(), []
        for i, pattern in enumerate(self.patterns):
            where = f"[{i}]"
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"{where}: expected a host pattern string, got {pattern!r}")
            ipv6 = ":" in pattern  # an IPv6 literal, bracketed or not: exact, never a glob
            if _WILD & set(pattern) and not ipv6:
                if any(c.isspace() for c in pattern):
                    raise ValueError(f"{where}: whitespace in host pattern {pattern!r}")
                wild.append(fnmatch.translate(pattern.lower().rstrip(".")))
            elif pattern.startswith("."):
                try:
                    name = normalize_host(pattern[1:])
                except HostError as exc:
                    raise ValueError(f"{where}: {exc}") from None
                if name != pattern[1:].lower().rstrip(".") or is_ip_literal(name):
                    raise ValueError(f"{where}: suffix pattern {pattern!r} must be a domain name")
                suffixes.add(name)
            else:
                try:
                    exact.add(normalize_host(pattern))
                except HostError as exc:
                    raise ValueError(f"{where}: {exc}") from None
        self._exact = frozenset(exact)
        self._suffixes = frozenset(suffixes)
        self._wild = re.compile("|".join(wild)) if wild else None

    def match(self, host: str) -> bool:
        """True when the normalised host matches one of the patterns."""
        if host in self._exact:
            return True
        if self._suffixes:
            # Walk the labels: a.b.example.com, b.example.com, example.com, com.
            h = host
            while True:
                if h in self._suffixes:
                    return True
                i = h.find(".")
                if i < 0:
                    break
                h = h[i + 1:]
        return self._wild is not None and self._wild.match(host) is not None


class PortSet:
    """TCP ports from numbers, "a-b" ranges and "*"; membership is one byte lookup."""

    __slots__ = ("spec", "table")

    def __init__(self, spec: Iterable[int | str]) -> None:
        self.spec = tuple(spec)
        table = bytearray(65536)
        for i, item in enumerate(self.spec):
            lo, hi = _port_range(item, f"[{i}]")
            table[lo:hi + 1] = b"\x01" * (hi - lo + 1)
        self.table = bytes(table)  # 64 KiB: indexing beats bit twiddling in Python

    def has(self, port: int) -> bool:
        """True when `port` is in the set."""
        return 0 <= port <= 65535 and self.table[port] == 1


def _port_range(item, where: str) -> tuple[int, int]:
    if isinstance(item, bool):
        raise ValueError(f"{where}: expected a port or \"a-b\", got {item!r}")
    if isinstance(item, int):
        lo = hi = item
    elif isinstance(item, str):
        text = item.strip()
        if text == "*":
            return 1, 65535
        lo_s, sep, hi_s = (part.strip() for part in text.partition("-"))
        # int() alone would take "٤٤٣", "4_43" and "+443".
        if not is_ascii_number(lo_s) or (sep and not is_ascii_number(hi_s)):
            raise ValueError(f"{where}: expected a port or \"a-b\", got {item!r}")
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    else:
        raise ValueError(f"{where}: expected a port or \"a-b\", got {item!r}")
    if not 1 <= lo <= hi <= 65535:
        raise ValueError(f"{where}: ports must be within 1-65535 with low <= high, got {item!r}")
    return lo, hi


def decision_url(url) -> str:
    """The target as URL rules read it (see the module doc); a CONNECT authority as sent."""
    raw = url.encode("latin-1") if isinstance(url, str) else bytes(url)
    if b"://" not in raw:
        return raw.decode("latin-1")
    try:
        scheme, host, port, path = _http.split_absolute(raw)
    except _http.ParseError:
        return raw.decode("latin-1")    # the handler answers 400 before any rule runs
    path, q, query = path.partition(b"?")
    if b":" in host:
        host = b"[" + host + b"]"
    if port != (443 if scheme == b"https" else 80):
        host += b":%d" % port
    return (scheme + b"://" + host + decision_path(path) + q + query).decode("latin-1")


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 5.6.2


def _networks(values, where: str) -> tuple:
    nets = []
    for i, value in enumerate(values):
        try:
            nets.append(parse_network(value))
        except ValueError as exc:
            raise ValueError(f"{where}[{i}]: {exc}") from None
    return tuple(nets)


def _as_tuple(value, where: str) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise ValueError(f"{where}: expected a list, got {value!r}")


@dataclass(frozen=True)
class AclRule:
    """One allow/deny rule; empty conditions are absent (a rule without any matches all)."""

    action: str
    name: str = ""
    clients: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    dest: tuple[str, ...] = ()
    ports: tuple[int | str, ...] = ()
    methods: tuple[str, ...] = ()
    url: str = ""

    def __post_init__(self) -> None:
        if self.action not in ("allow", "deny"):
            raise ValueError(f"action: expected \"allow\" or \"deny\", got {self.action!r}")
        if not isinstance(self.name, str):
            raise ValueError(f"name: expected a string, got {self.name!r}")
        for f in ("clients", "hosts", "dest", "ports", "methods"):
            object.__setattr__(self, f, _as_tuple(getattr(self, f), f))
        _networks(self.clients, "clients")
        _networks(self.dest, "dest")
        try:
            HostPatterns(self.hosts)
        except ValueError as exc:
            raise ValueError(f"hosts{exc}") from None
        try:
            PortSet(self.ports)
        except ValueError as exc:
            raise ValueError(f"ports{exc}") from None
        for i, m in enumerate(self.methods):
            if not isinstance(m, str) or not _TOKEN.match(m):
                raise ValueError(f"methods[{i}]: expected an HTTP method token, got {m!r}")
        if not isinstance(self.url, str):
            raise ValueError(f"url: expected a regular expression string, got {self.url!r}")
        if self.url:
            try:
                re.compile(self.url)
            except re.error as exc:
                raise ValueError(f"url: invalid regular expression {self.url!r}: {exc}") from None


_RULE_FIELDS = frozenset(f.name for f in fields(AclRule))


@dataclass(frozen=True)
class AclConfig:
    """Forward-mode access rules and guards; `rules` may be AclRule objects or TOML tables."""

    rules: tuple[AclRule, ...] = ()
    default_action: str = "allow"
    allow_private: bool = False
    connect_ports: tuple[int | str, ...] = (443,)
    http_ports: tuple[int | str, ...] = (80, 443, "1025-65535")

    def __post_init__(self) -> None:
        rules = []
        for i, rule in enumerate(_as_tuple(self.rules, "rules")):
            if isinstance(rule, dict):
                unknown = sorted(set(rule) - _RULE_FIELDS)
                if unknown:
                    raise ValueError(f"rules[{i}].{unknown[0]}: unknown key "
                                     f"(expected one of {', '.join(sorted(_RULE_FIELDS))})")
                if "action" not in rule:
                    raise ValueError(f"rules[{i}].action: missing (\"allow\" or \"deny\")")
                try:
                    rule = AclRule(**rule)
                except ValueError as exc:
                    raise ValueError(f"rules[{i}].{exc}") from None
            elif not isinstance(rule, AclRule):
                raise ValueError(f"rules[{i}]: expected a table, got {rule!r}")
            rules.append(rule)
        object.__setattr__(self, "rules", tuple(rules))
        if self.default_action not in ("allow", "deny"):
            raise ValueError(f"default_action: expected \"allow\" or \"deny\", "
                             f"got {self.default_action!r}")
        if not isinstance(self.allow_private, bool):
            raise ValueError(f"allow_private: expected true or false, got {self.allow_private!r}")
        for f in ("connect_ports", "http_ports"):
            value = _as_tuple(getattr(self, f), f)
            object.__setattr__(self, f, value)
            try:
                PortSet(value)
            except ValueError as exc:
                raise ValueError(f"{f}{exc}") from None

    @classmethod
    def from_table(cls, raw) -> "AclConfig":
        """Build from a TOML table; unknown keys and bad values raise ValueError naming the key."""
        return dataclass_from_table(cls, raw)


# ---------------------------------------------------------------------------------------
# Compiled rules and decisions
# ---------------------------------------------------------------------------------------

class Decision:
    """Outcome of an ACL check: `allow`, the deciding `rule` name and `index` (-1: a default).

    `final` is False for the provisional result of check_request, which must go through
    check_address for each address connected. `reason` is one line for the 403 body.
    """

    __slots__ = ("allow", "final", "rule", "index", "reason", "_candidates", "_terminal",
                 "_client_ok")

    def __init__(self, allow: bool, final: bool, rule: str, index: int, reason: str,
                 candidates: tuple = (), terminal=None, client_ok: bool = True) -> None:
        self.allow = allow
        self.final = final
        self.rule = rule
        self.index = index
        self.reason = reason
        self._candidates = candidates
        self._terminal = terminal
        self._client_ok = client_ok

    def __repr__(self) -> str:
        verdict = "allow" if self.allow else "deny"
        return f"Decision({verdict}, rule={self.rule!r}, final={self.final})"


class _Rule:
    __slots__ = ("index", "name", "allow", "clients", "hosts", "dest", "dest_special", "ports",
                 "methods", "url", "final", "provisional", "denied")

    def __init__(self, index: int, name: str, allow: bool, clients=None, hosts=None, dest=None,
                 ports=None, methods=None, url=None) -> None:
        self.index = index
        self.name = name
        self.allow = allow
        self.clients = clients
        self.hosts = hosts
        self.dest = dest
        # The part of `dest` that explicitly opens default-refused ranges (see module doc).
        self.dest_special = CidrSet(n for n in dest.networks if within_special(n)) \
            if dest is not None else None
        self.ports = ports
        self.methods = methods
        self.url = url
        what = "by the default action" if index < 0 else f"by rule {name!r}"
        # Decisions are preallocated so the common path allocates nothing.
        self.final = Decision(allow, True, name, index, f"{'allowed' if allow else 'denied'} {what}")
        self.provisional = Decision(allow, False, name, index, self.final.reason, (), self, True)
        self.denied = Decision(False, True, name, index, f"denied {what}")


_method_cache: dict = {}


def _method(method) -> str:
    m = _method_cache.get(method)
    if m is None:
        text = method.decode("latin-1") if isinstance(method, (bytes, bytearray)) else str(method)
        # Methods are case-sensitive (RFC 9110 9.1), but some origins are not: match
        # rules case-insensitively so `delete` cannot slip past a rule on DELETE.
        m = text.upper()
        if len(_method_cache) < 256:
            _method_cache[bytes(method) if isinstance(method, bytearray) else method] = m
    return m


_CACHE_MAX = 4096


class Acl:
    """Compiled ACL; check_request before resolution, check_address for each address connected.

    Each request dimension (client, host, port, method) maps, through a small cache, to a
    bitmask of the rules whose condition on it holds; their AND gives the matching rules
    in one step, so the cost hardly grows with the number of rules. Only URL regexes and
    destination sets are evaluated per request, and only for rules still in the mask.
    """

    def __init__(self, config: AclConfig = AclConfig()) -> None:
        self.config = config
        rules = []
        for i, r in enumerate(config.rules):
            rules.append(_Rule(
                i, r.name or f"rules[{i}]", r.action == "allow",
                clients=CidrSet(_networks(r.clients, "clients")) if r.clients else None,
                hosts=HostPatterns(r.hosts) if r.hosts else None,
                dest=CidrSet(_networks(r.dest, "dest")) if r.dest else None,
                ports=PortSet(r.ports) if r.ports else None,
                methods=frozenset(m.upper() for m in r.methods) if r.methods else None,
                url=re.compile(r.url) if r.url else None,
            ))
        self._rules = tuple(rules)
        self._all = (1 << len(rules)) - 1
        self._default = _Rule(-1, DEFAULT, config.default_action == "allow")
        self._allow_private = config.allow_private
        self._connect_ports = PortSet(config.connect_ports).table
        self._http_ports = PortSet(config.http_ports).table
        self._any_hosts = any(r.hosts is not None for r in rules)
        self._any_ports = any(r.ports is not None for r in rules)
        self._any_methods = any(r.methods is not None for r in rules)
        self._client_cache: dict = {}
        self._host_cache: dict = {}
        self._port_cache: dict = {}
        self._method_cache: dict = {}
        self._pending_cache: dict = {}
        self._deny_clients = Decision(
            False, True, DEFAULT_CLIENTS, -1,
            "denied: only loopback and private-network clients are served by default")
        self._deny_connect = Decision(
            False, True, DEFAULT_CONNECT_PORTS, -1, "denied: CONNECT to this port is not allowed")
        self._deny_http = Decision(
            False, True, DEFAULT_HTTP_PORTS, -1, "denied: requests to this port are not allowed")

    def _mask(self, cache: dict, value, attr: str, test) -> int:
        """Bitmask of the rules without condition `attr` or whose condition holds for value."""
        mask = 0
        for rule in self._rules:
            cond = getattr(rule, attr)
            if cond is None or test(cond, value):
                mask |= 1 << rule.index
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[value] = mask
        return mask

    def _client(self, client) -> tuple[bool, int]:
        found = self._client_cache.get(client)
        if found is None:
            key = client_key(client)
            mask = 0
            for rule in self._rules:
                if rule.clients is None or rule.clients.contains(key):
                    mask |= 1 << rule.index
            found = (DEFAULT_CLIENT_NETS.contains(key), mask)
            if len(self._client_cache) >= _CACHE_MAX:
                self._client_cache.clear()
            self._client_cache[client] = found
        return found

    def check_request(self, client: str, host, port: int, method, url="") -> Decision:
        """Phase one (before DNS): deny now, or a provisional allow to confirm per address.

        `host` is as received (str or bytes, normalised here; HostError means 400), `url`
        the request target (for CONNECT, the authority), `client` the peer's IP address.
        """
        host = normalize_host(host)
        m = _method(method)
        if not 0 <= port <= 65535:
            return self._deny_connect if m == "CONNECT" else self._deny_http
        if m == "CONNECT":
            if not self._connect_ports[port]:
                return self._deny_connect
        elif not self._http_ports[port]:
            return self._deny_http
        client_ok, mask = self._client(client)
        if self._any_hosts:
            hm = self._host_cache.get(host)
            mask &= hm if hm is not None else self._mask(
                self._host_cache, host, "hosts", HostPatterns.match)
        if self._any_ports:
            pm = self._port_cache.get(port)
            mask &= pm if pm is not None else self._mask(
                self._port_cache, port, "ports", PortSet.has)
        if self._any_methods:
            mm = self._method_cache.get(m)
            mask &= mm if mm is not None else self._mask(
                self._method_cache, m, "methods", frozenset.__contains__)
        rules = self._rules
        candidates = 0
        text_url = None
        terminal = self._default
        while mask:
            low = mask & -mask  # the first rule still matching, in configured order
            mask ^= low
            rule = rules[low.bit_length() - 1]
            if rule.url is not None:
                if text_url is None:
                    text_url = decision_url(url)
                if rule.url.search(text_url) is None:
                    continue
            if rule.dest is None:
                terminal = rule
                break
            candidates |= low  # depends on the address: decided in check_address, in order
        if not candidates:
            if not terminal.allow:
                return terminal.denied
            if not client_ok and terminal.clients is None:
                return self._deny_clients
            return terminal.provisional
        key = (candidates, terminal.index, client_ok)
        decision = self._pending_cache.get(key)
        if decision is None:
            decision = self._pending(candidates, terminal, client_ok)
            if len(self._pending_cache) >= _CACHE_MAX:
                self._pending_cache.clear()
            self._pending_cache[key] = decision
        return decision

    def _pending(self, candidates: int, terminal: _Rule, client_ok: bool) -> Decision:
        cands = tuple(r for r in self._rules if candidates >> r.index & 1)
        if not terminal.allow and not any(r.allow for r in cands):
            # Whatever the address, some deny rule decides; the terminal one always does.
            return terminal.denied
        if not client_ok and not any(r.allow and r.clients is not None for r in cands) \
                and not (terminal.allow and terminal.clients is not None):
            return self._deny_clients
        return Decision(True, False, terminal.name, terminal.index, terminal.final.reason,
                        cands, terminal, client_ok)

    def check_address(self, decision: Decision, addr) -> Decision:
        """Phase two: the final decision for connecting to `addr` (an IP string from the resolver)."""
        if not decision.allow:
            return decision
        key = address_key(addr)
        rule = decision._terminal
        for cand in decision._candidates:
            if cand.dest.contains(key):
                rule = cand
                break
        if rule is None:
            raise ValueError("check_address needs a decision from check_request")
        if not rule.allow:
            return rule.denied
        if not decision._client_ok and rule.clients is None:
            return self._deny_clients
        if not self._allow_private and SPECIAL_SET.contains(key) and \
                not (rule.dest_special is not None and rule.dest_special.contains(key)):
            return Decision(False, True, DEFAULT_PRIVATE, -1,
                            f"denied: destination {addr} is {special_range(addr)}; "
                            f"set allow_private = true (or start with --allow-private), "
                            f"or add an allow rule with dest for it")
        return rule.final

    def check(self, client: str, host, port: int, method, addr, url="") -> Decision:
        """Both phases at once, for callers that already know the address (tests, tunnels)."""
        d = self.check_request(client, host, port, method, url)
        return self.check_address(d, addr) if d.allow else d
