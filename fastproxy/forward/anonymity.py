"""What the destination learns about the client and the proxy: anonymity levels and header rules.

Levels:

* `transparent`: adds `Via` and `X-Forwarded-For` (appended to one the client sent), as
  Squid does by default: the origin sees the client address and that a proxy relayed it.
* `anonymous` (default): adds `Via` only and removes every field that carries a client
  address (Forwarded, X-Forwarded-For, X-Real-IP, Client-IP, True-Client-IP, ...). The
  origin sees a proxy, not who is behind it. This is the default because RFC 9110 7.6.3
  says a proxy MUST send Via, and hiding the client is what a forward proxy is for.
* `elite`: no trace of a proxy. Besides the client-address fields it removes `Via`,
  `Forwarded`, every `X-Forwarded-*`, every `Proxy-*`, proxy vendor fields (X-Proxy-ID,
  X-BlueCoat-Via), and the client hints the client sent: every `Sec-CH-*` field (RFC 8942,
  UA Client Hints) and the legacy unprefixed hints DPR, Width, Viewport-Width,
  Device-Memory, RTT, Downlink, ECT. Browsers send client hints only over secure
  transport (RFC 8942 section 4.1 and the Fetch spec), so a plain-HTTP request carrying
  them is a fingerprint of an intermediary (or of a client tool), and the high-entropy
  hints identify the device. Elite knowingly breaks RFC 9110 7.6.3's Via requirement: it
  is what the operator asked for. Save-Data stays: it states a user preference.

`Proxy-Authorization` is removed at every level: its credentials are for this proxy
(RFC 9110 11.7.2) and must never reach the destination.

Header rules then remove or set fields towards matching destinations (all matching rules
apply, in order; a later `set` of the same field wins), and override the level: a rule that
removes or sets Via or X-Forwarded-For replaces what the level would add. Framing and routing fields (Host,
Content-Length, Transfer-Encoding, Connection and the other hop-by-hop fields) cannot be
touched by rules.

The relay asks `Anonymizer.plan(request, client_ip, host)` for `(drop, extra)`: the
lowercase names to drop (tuple of bytes) and the header lines to add (bytes of
`Name: value\\r\\n`), which go straight into the parser's `forward_head(start_line, extra,
drop)`.

Configuration (`AnonymityConfig.from_table` reads it from TOML)::

    [forward.anonymity]
    level = "anonymous"          # transparent | anonymous | elite
    via = "fastproxy"            # the Via pseudonym (RFC 9110 7.6.3 received-by)

    [[forward.anonymity.rules]]
    hosts = [".tracker.example"]
    remove = ["Cookie", "Referer"]

    [[forward.anonymity.rules]]
    set = { "User-Agent" = "Mozilla/5.0 (compatible)" }
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Mapping, cast

from fastproxy.forward.acl import HostPatterns
from fastproxy.proxy.intermediary import via_lines
from fastproxy.config.schema import dataclass_from_table

__all__ = ["AnonymityConfig", "HeaderRule", "Anonymizer", "LEVELS",
           "CLIENT_ADDRESS_FIELDS", "ELITE_FIELDS"]

LEVELS = ("transparent", "anonymous", "elite")

# Fields that carry the client's address (standard, de facto and CDN-specific), so an
# anonymous proxy must not pass them on even when the client (or a proxy before us) set them.
CLIENT_ADDRESS_FIELDS: tuple[bytes, ...] = (
    b"forwarded", b"x-forwarded-for", b"x-forwarded", b"forwarded-for", b"x-real-ip",
    b"client-ip", b"true-client-ip", b"x-client-ip", b"x-cluster-client-ip",
    b"x-originating-ip", b"x-remote-ip", b"x-remote-addr", b"x-proxyuser-ip",
    b"cf-connecting-ip", b"fastly-client-ip",
)

# Elite also hides the proxy and the client hints; prefixed families are found per request.
ELITE_FIELDS: tuple[bytes, ...] = CLIENT_ADDRESS_FIELDS + (
    b"via", b"x-proxy-id", b"x-bluecoat-via",
    b"dpr", b"width", b"viewport-width", b"device-memory", b"rtt", b"downlink", b"ect",
)


def _caseless(text: bytes) -> bytes:
    return b"".join(b"[%c%c]" % (c, c ^ 0x20) if 0x61 <= c <= 0x7A else re.escape(bytes([c]))
                    for c in text)


# Field lines start after a LF (bare LF ends a line too, RFC 9112 2.2); explicit case
# classes instead of re.I, and a one-byte lookahead, keep the scan of a head near 1 us.
_ELITE_PREFIXES = re.compile(
    rb"\n(?=[xXpPsS])((?:" + rb"|".join(_caseless(p) for p in (b"x-forwarded-", b"proxy-", b"sec-ch-"))
    + rb")[^:\r\n]*):")

_PREFIX_NAME = re.compile(rb"(?:x-forwarded-|proxy-|sec-ch-)", re.I)

_ALWAYS: tuple[bytes, ...] = (b"proxy-authorization",)

# Rules may not touch what frames or routes the message (RFC 9110 7.2, 7.6.1; RFC 9112 6).
_PROTECTED = frozenset((
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
    "trailer", "upgrade", "proxy-connection",
))

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 5.6.2
_VALUE = re.compile(r"[\x20-\x7e\t]*\Z")  # visible ASCII, SP, HTAB (RFC 9110 5.5)


def _field_name(name, where: str) -> str:
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise ValueError(f"{where}: expected a header field name, got {name!r}")
    if name.lower() in _PROTECTED:
        raise ValueError(f"{where}: {name} frames or routes the message and cannot be changed")
    return name


@dataclass(frozen=True)
class HeaderRule:
    """Remove and/or set fields on requests to matching hosts (no hosts: every destination)."""

    hosts: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    set: Mapping[str, str] | tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for f in ("hosts", "remove"):
            value = getattr(self, f)
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{f}: expected a list, got {value!r}")
            object.__setattr__(self, f, tuple(value))
        try:
            HostPatterns(self.hosts)
        except ValueError as exc:
            raise ValueError(f"hosts{exc}") from None
        for i, name in enumerate(self.remove):
            _field_name(name, f"remove[{i}]")
        pairs: Any = self.set
        if isinstance(pairs, Mapping):
            pairs = tuple(pairs.items())
        elif not isinstance(pairs, (list, tuple)):
            raise ValueError(f"set: expected a table of field = value, got {pairs!r}")
        pairs = tuple(tuple(p) for p in pairs)
        for name, value in pairs:
            _field_name(name, f"set.{name}")
            if not isinstance(value, str) or not _VALUE.match(value) or value != value.strip():
                raise ValueError(f"set.{name}: expected printable ASCII without leading or "
                                 f"trailing whitespace, got {value!r}")
        object.__setattr__(self, "set", pairs)
        if not self.remove and not self.set:
            raise ValueError("a header rule needs remove or set")


_RULE_FIELDS = frozenset(f.name for f in fields(HeaderRule))


@dataclass(frozen=True)
class AnonymityConfig:
    """Anonymity level, Via pseudonym and header rules; `rules` may be HeaderRule or TOML tables."""

    level: str = "anonymous"
    via: str = "fastproxy"
    rules: tuple[HeaderRule, ...] = ()

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level: expected one of {', '.join(LEVELS)}, got {self.level!r}")
        if not isinstance(self.via, str) or not _TOKEN.match(self.via):
            raise ValueError(f"via: expected a token (RFC 9110 7.6.3 pseudonym), got {self.via!r}")
        if not isinstance(self.rules, (list, tuple)):
            raise ValueError(f"rules: expected a list, got {self.rules!r}")
        rules = []
        for i, rule in enumerate(self.rules):
            if isinstance(rule, dict):
                unknown = sorted(set(rule) - _RULE_FIELDS)
                if unknown:
                    raise ValueError(f"rules[{i}].{unknown[0]}: unknown key "
                                     f"(expected one of {', '.join(sorted(_RULE_FIELDS))})")
                try:
                    rule = HeaderRule(**rule)
                except ValueError as exc:
                    raise ValueError(f"rules[{i}].{exc}" if not str(exc).startswith("a header")
                                     else f"rules[{i}]: {exc}") from None
            elif not isinstance(rule, HeaderRule):
                raise ValueError(f"rules[{i}]: expected a table, got {rule!r}")
            rules.append(rule)
        object.__setattr__(self, "rules", tuple(rules))

    @classmethod
    def from_table(cls, raw) -> "AnonymityConfig":
        """Build from a TOML table; unknown keys and bad values raise ValueError naming the key."""
        return dataclass_from_table(cls, raw)


def _unmapped(ip: str) -> str:
    # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; origins expect a.b.c.d.
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip


class Anonymizer:
    """Computes, per request, the header fields to drop and to add towards the destination."""

    def __init__(self, config: AnonymityConfig = AnonymityConfig()) -> None:
        self.config = config
        self.level = config.level
        self._via = via_lines(config.via)
        if config.level == "transparent":
            self._drop = _ALWAYS
        elif config.level == "anonymous":
            self._drop = _ALWAYS + CLIENT_ADDRESS_FIELDS
        else:
            self._drop = _ALWAYS + ELITE_FIELDS
        self._rules = tuple(
            (HostPatterns(r.hosts) if r.hosts else None,
             tuple(n.lower().encode() for n in r.remove),
             tuple((n.lower().encode(), f"{n}: {v}\r\n".encode()) for n, v in cast("tuple[tuple[str, str], ...]", r.set)))
            for r in config.rules)
        self._per_host: dict[str, tuple[tuple[bytes, ...], bytes, frozenset]] = {}

    def _for_host(self, host: str) -> tuple[tuple[bytes, ...], bytes, frozenset]:
        """(drop, extra, names rules removed or set) from the rules matching `host`, cached."""
        found = self._per_host.get(host)
        if found is not None:
            return found
        drop: list[bytes] = []
        lines: dict[bytes, bytes] = {}
        for patterns, remove, sets in self._rules:
            if patterns is not None and not patterns.match(host):
                continue
            for name in remove:
                lines.pop(name, None)  # a later remove undoes an earlier set
                if name not in drop:
                    drop.append(name)
            for name, line in sets:
                lines[name] = line
                if name not in drop:
                    drop.append(name)
        # Every name a rule touched overrides the level: `remove = ["Via"]` means no Via.
        found = (tuple(drop), b"".join(lines.values()), frozenset(drop))
        if len(self._per_host) >= 4096:
            self._per_host.clear()
        self._per_host[host] = found
        return found

    def fixed_plan(self, host: str, client_ip: str
                   ) -> tuple[tuple[bytes, ...], bytes, bytes, bool] | None:
        """(drop, extra for HTTP/1.0, extra for HTTP/1.1, only without X-Forwarded-For): what
        `plan` answers for every request from `client_ip` to `host`, or (last item True) for
        every such request that carries no X-Forwarded-For; None when it reads more of the
        request (elite). The compiled forward path keeps it per client and destination."""
        if self.level == "elite":
            return None
        drop = self._drop
        extra = b""
        ruled: frozenset = frozenset()
        if self._rules:
            rule_drop, extra, ruled = self._for_host(host)
            if rule_drop:
                drop = drop + rule_drop
        if b"via" in ruled:
            extra_10 = extra_11 = extra
        else:
            extra_10, extra_11 = self._via[10] + extra, self._via[11] + extra
        if self.level == "transparent" and b"x-forwarded-for" not in ruled:
            xff = b"X-Forwarded-For: " + _unmapped(client_ip).encode() + b"\r\n"
            return drop, xff + extra_10, xff + extra_11, True
        return drop, extra_10, extra_11, False

    def plan(self, request, client_ip: str, host: str) -> tuple[tuple[bytes, ...], bytes]:
        """(drop, extra) for forward_head: lowercase names to remove, header lines to add.

        `request` offers `get(name)`, `get_all(name)`, `head` (raw head bytes) and `version`
        (10 or 11) like the parser's Request; `host` is the normalised destination host.
        """
        drop = self._drop
        extra = b""
        ruled: frozenset = frozenset()
        if self._rules:
            rule_drop, extra, ruled = self._for_host(host)
            if rule_drop:
                drop = drop + rule_drop
        level = self.level
        if level == "elite":
            found = _prefixed_names(request)
            if found:
                drop = drop + found
            return drop, extra
        if b"via" not in ruled:
            extra = self._via.get(getattr(request, "version", 11), self._via[11]) + extra
        if level == "transparent" and b"x-forwarded-for" not in ruled:
            previous = request.get_all(b"x-forwarded-for") if hasattr(request, "get_all") \
                else [v for v in (request.get(b"x-forwarded-for"),) if v is not None]
            client = _unmapped(client_ip).encode()
            if previous:
                # Append to the chain in one field (RFC 7239 4 semantics for the de facto
                # header); some origins read only the first X-Forwarded-For line.
                drop = drop + (b"x-forwarded-for",)
                extra = b"X-Forwarded-For: " + b", ".join(previous) + b", " + client + b"\r\n" \
                    + extra
            else:
                extra = b"X-Forwarded-For: " + client + b"\r\n" + extra
        return drop, extra


def _prefixed_names(request) -> tuple[bytes, ...]:
    """Lowercase names of X-Forwarded-*, Proxy-* and Sec-CH-* fields present in the request."""
    head = getattr(request, "head", None)
    if head is not None:
        # One C-level scan of the head; the request line never follows a LF.
        names = _ELITE_PREFIXES.findall(head)
    else:
        names = [n for n, _v in request.headers() if _PREFIX_NAME.match(n)]
    if not names:
        return ()
    return tuple(dict.fromkeys(n.lower() for n in names))
