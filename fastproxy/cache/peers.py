"""Cache peering: the nodes of a fleet cache as one, each cache key owned by one node.

`[cluster] peers = [...]` lists every node (this one included) and `self` names this
one. A key's owner is chosen by a Maglev table over the peers (fastproxy._hashing, the
same compiled table as upstream balancing, built from the sorted peer names so every node
computes the same one). A node that misses for a key it does not own sends the request to
the owner instead of the origin, over the pooled keep-alive connections of an upstream
group of the other peers, with `Fastproxy-Hop` added; the owner answers from its cache or
fetches once for the fleet (its coalescing covers the peers' requests too), and a request
carrying the hop field is never sent to a peer again. The asking node stores the answer
under its own rules, so popular objects stay local too (the store's S3-FIFO admission
decides how long).

A peer that fails is skipped at once: the request goes to the origin, and the group's
outlier detection (one failure ejects, the ejected-server probe brings it back) keeps the
next requests from trying it; its keys go to the next peer in their Maglev preference
order, or to this node. Maglev moves only the keys of a node that joins or leaves, so a
reload that changes the peers refetches only those.

The owner trusts what the asking node wrote about the client (X-Forwarded-For,
-Proto, -Host, Forwarded) and passes it on instead of describing the asking node as
the client, so an https request arrives at the origin as https from the real client:
only for a request that carries the hop field and comes from the address of a
configured peer (`PeerRing.trusts`); any other client's claims are replaced as always.
"""
from __future__ import annotations

import ipaddress
import socket

import xxhash

from fastproxy._hashing import Maglev
from fastproxy.upstream.breaker import OutlierConfig, RetryConfig

HOP = b"fastproxy-hop"     # the field that marks a request sent by a peer (lowercase: lookups)
HOP_NAME = b"Fastproxy-Hop"

# The peer group's failure handling: no retries (a failed peer means "fetch it yourself",
# decided by the cache layer), and ejection at the first connect failure.
PEER_RETRY = RetryConfig(retries=0)
PEER_OUTLIER = OutlierConfig(consecutive_failures=1, max_ejection_percent=100.0,
                             base_ejection=10.0, max_ejection=60.0)


class _Node:
    """This node in the Maglev table (peers are the group's `Server` objects)."""

    __slots__ = ("name", "weight", "active", "healthy", "ejected_until")

    def __init__(self, name: str) -> None:
        self.name = name
        self.weight = 1
        self.active = 0
        self.healthy = True
        self.ejected_until = 0.0


class PeerRing:
    """Who owns which cache key, over this node and the peer group's servers."""

    def __init__(self, self_name: str, group, loop, scheme: bytes = b"http") -> None:
        self.group = group
        self.loop = loop
        self.me = _Node(self_name)
        self.maglev = Maglev([self.me, *group.servers])
        self.size = len(group.servers) + 1
        # The listener's scheme goes with the hop: peers talk plain HTTP, and the owner
        # keys the entry by the scheme the client used (an https page and the http one,
        # often a redirect to it, are different responses).
        self.hop_line = HOP_NAME + b": " + self_name.encode() + b"; proto=" + scheme + b"\r\n"
        self.addresses = peer_addresses(s.host for s in group.servers)

    def trusts(self, conn, req) -> bool:
        """Whether req is a peer's hop (the hop field, from a configured peer's address)."""
        return req.get(HOP) is not None and conn.client_ip in self.addresses

    @staticmethod
    def hop_scheme(req) -> bytes | None:
        """The scheme a trusted hop says its client used (`; proto=`), None if unsaid."""
        value = (req.get(HOP) or b"").lower()
        i = value.find(b"; proto=")
        if i < 0:
            return None
        proto = value[i + 8:].strip(b" \t")
        return proto if proto in (b"http", b"https") else None

    def owner(self, url: bytes):
        """The peer server to ask for url, or None when this node fetches it itself."""
        now = self.loop.time()
        for node in self.maglev.preference(xxhash.xxh3_64_intdigest(url), self.size):
            if node is self.me:
                return None
            if node.healthy and node.ejected_until <= now:
                return node
        return None

    def owner_name(self, url: bytes) -> str:
        """The name of url's first-choice owner (tests and the admin interface)."""
        return self.maglev.preference(xxhash.xxh3_64_intdigest(url), 1)[0].name


def peer_addresses(hosts) -> frozenset[str]:
    """The addresses peers connect from: their configured hosts, names resolved once (at
    start and reload); a name that does not resolve trusts nothing."""
    out: set[str] = set()
    for host in hosts:
        host = host.strip("[]")
        try:
            out.add(str(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError:
            continue
        out.update(str(ipaddress.ip_address(info[4][0])) for info in infos)
    # A peer reaching an IPv6 listener over IPv4 shows as ::ffff:a.b.c.d.
    out.update(["::ffff:" + a for a in out if ":" not in a])
    return frozenset(out)
