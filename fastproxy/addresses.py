"""IP addresses as integer keys and sorted CIDR sets: the address arithmetic the forward ACL,
the cache's client rules and the rate limits share (a leaf: imports nothing of fastproxy).

IPv6 forms that embed an IPv4 address (IPv4-mapped, IPv4-translated, NAT64, 6to4) are keyed
as that IPv4 address, so one rule covers both spellings; `special_range` names the ranges a proxy must not
reach by accident (loopback, private, link-local, ...).
"""
from __future__ import annotations

import ipaddress
import socket
from bisect import bisect_right
from typing import Iterable

__all__ = ["address_key", "client_key", "CidrSet", "special_range", "within_special",
           "DEFAULT_CLIENT_NETS", "SPECIAL_SET"]

# ---------------------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------------------

_MAPPED = 0xFFFF << 32                         # ::ffff:0:0/96, RFC 4291 2.5.5.2
_TRANSLATED = 0xFFFF0000 << 32                 # ::ffff:0:0:0/96, RFC 2765 2.1 (SIIT)
_NAT64 = 0x0064FF9B << 96                      # 64:ff9b::/96, RFC 6052
_6TO4 = 0x2002                                 # 2002::/16, RFC 3056

_key_cache: dict = {}
_KEY_CACHE_MAX = 8192


def address_key(addr) -> tuple[int | None, int | None]:
    """(IPv4 int or None, IPv6 int or None) for an address; IPv6 that embeds IPv4 gives both.

    The IPv4 inside IPv4-mapped (::ffff:a.b.c.d), IPv4-translated (::ffff:0:a.b.c.d, which
    a SIIT translator delivers to a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16)
    addresses is what the packets finally reach, so rules and guards see it too.
    """
    key = _key_cache.get(addr)
    if key is not None:
        return key
    text = addr if isinstance(addr, str) else str(addr)
    try:
        if ":" in text:
            if "%" in text:
                text = text.split("%", 1)[0]  # scope id: the address is what matters
            x = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
            v4 = None
            top = x >> 32
            if top == 0xFFFF or top == (_NAT64 >> 32) or top == (_TRANSLATED >> 32):
                v4 = x & 0xFFFFFFFF
            elif x >> 112 == _6TO4:
                v4 = (x >> 80) & 0xFFFFFFFF
            key = (v4, x)
        else:
            key = (int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"), None)
    except OSError:
        raise ValueError(f"not an IP address: {addr!r}") from None
    if len(_key_cache) >= _KEY_CACHE_MAX:
        _key_cache.clear()
    _key_cache[addr] = key
    return key


def client_key(addr) -> tuple[int | None, int | None]:
    """address_key for a peer: only IPv4-mapped IPv6 (how dual-stack sockets report IPv4
    peers) counts as IPv4; a NAT64 or 6to4 source is an IPv6 host, whatever it embeds."""
    v4, v6 = key = address_key(addr)
    if v4 is not None and v6 is not None and v6 >> 32 != 0xFFFF:
        return (None, v6)
    return key


def _merge(intervals: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    starts: list[int] = []
    ends: list[int] = []
    for lo, hi in sorted(intervals):
        if ends and lo <= ends[-1] + 1:
            ends[-1] = max(ends[-1], hi)
        else:
            starts.append(lo)
            ends.append(hi)
    return starts, ends


class CidrSet:
    """A set of IPv4/IPv6 networks answering membership of an address_key in O(log n)."""

    __slots__ = ("networks", "_s4", "_e4", "_s6", "_e6")

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self.networks = tuple(networks)
        v4 = [(int(n.network_address), int(n.broadcast_address))
              for n in self.networks if n.version == 4]
        v6 = [(int(n.network_address), int(n.broadcast_address))
              for n in self.networks if n.version == 6]
        self._s4, self._e4 = _merge(v4)
        self._s6, self._e6 = _merge(v6)

    def contains(self, key: tuple[int | None, int | None]) -> bool:
        """True when the address (an address_key) is in one of the networks."""
        v4, v6 = key
        if v4 is not None and self._s4:
            i = bisect_right(self._s4, v4) - 1
            if i >= 0 and v4 <= self._e4[i]:
                return True
        if v6 is not None and self._s6:
            i = bisect_right(self._s6, v6) - 1
            if i >= 0 and v6 <= self._e6[i]:
                return True
        return False

    def __contains__(self, addr) -> bool:
        return self.contains(address_key(addr))

    def __bool__(self) -> bool:
        return bool(self.networks)


# Ranges a forward proxy must not reach by default, most specific first (for the label).
_SPECIAL: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this-network/unspecified (RFC 791, RFC 1122 3.2.1.3)"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared CGNAT space (RFC 6598)"),
    ("127.0.0.0/8", "loopback (RFC 1122)"),
    ("169.254.0.0/16", "link-local, incl. cloud metadata 169.254.169.254 (RFC 3927)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("224.0.0.0/4", "multicast (RFC 5771)"),
    ("240.0.0.0/4", "reserved, incl. broadcast 255.255.255.255 (RFC 1112, RFC 919)"),
    ("::/128", "unspecified (RFC 4291)"),
    ("::1/128", "loopback (RFC 4291)"),
    ("::/96", "IPv4-compatible, deprecated (RFC 4291 2.5.5.1)"),
    ("100::/64", "discard-only (RFC 6666)"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("fc00::/7", "unique local, incl. AWS metadata fd00:ec2::254 (RFC 4193)"),
    ("fe80::/10", "link-local (RFC 4291)"),
    ("fec0::/10", "site-local, deprecated (RFC 3879)"),
    ("ff00::/8", "multicast (RFC 4291)"),
)
_SPECIAL_NETS = tuple((ipaddress.ip_network(n), label) for n, label in _SPECIAL)
SPECIAL_SET = CidrSet(n for n, _ in _SPECIAL_NETS)

# Clients served by default: loopback and private networks (plus their IPv4-mapped forms,
# which address_key unwraps, as a dual-stack listener reports IPv4 peers).
DEFAULT_CLIENT_NETS = CidrSet(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128", "fc00::/7"))


def special_range(addr) -> str | None:
    """The label of the default-refused range holding `addr`, or None for a public address."""
    key = address_key(addr)
    if not SPECIAL_SET.contains(key):
        return None
    v4, v6 = key
    for net, label in _SPECIAL_NETS:
        x = v4 if net.version == 4 else v6
        if x is not None and int(net.network_address) <= x <= int(net.broadcast_address):
            return label
    return "special-purpose"  # pragma: no cover - every member of the set has a label


def within_special(net) -> bool:
    """True when a configured network lies entirely inside one default-refused range."""
    if net.version == 6 and int(net.network_address) >> 32 == 0xFFFF and net.prefixlen >= 96:
        net = ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return any(net.version == s.version and net.subnet_of(s) for s, _ in _SPECIAL_NETS)


# ---------------------------------------------------------------------------------------
# Hosts and ports
# ---------------------------------------------------------------------------------------
