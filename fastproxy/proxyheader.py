"""The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2): reading and
writing it (a leaf: imports nothing of fastproxy).

A load balancer in front of us (HAProxy `send-proxy`, nginx stream `proxy_protocol on`, a
cloud L4 balancer) opens the TCP connection itself, so the socket's peer is the balancer;
the header it sends before anything else names the client. Version 1 is one text line,
`PROXY TCP4|TCP6 src dst sport dport\\r\\n` or `PROXY UNKNOWN ...\\r\\n`, 107 bytes at most;
version 2 is binary: a 12-byte signature, version and command (0x21 PROXY, 0x20 LOCAL),
family and transport, a 2-byte length, the addresses, then TLVs.

`measure` says how many leading bytes of what arrived belong to the header, so a reader can
take exactly those from the socket and leave the client's first bytes (a TLS ClientHello,
an HTTP request) where they are. Anything that is not a well-formed header raises
ProxyHeaderError: the spec says a receiver must not guess, so the caller closes.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

__all__ = ["ProxyHeaderError", "ProxyHeader", "measure", "parse", "build", "local_header",
           "V1_MAX", "V2_MAX"]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107            # the spec's bound for the longest line (TCP6, CRLF included)
# Version 2 allows 16 + 65535 bytes; what balancers send (addresses, an ALPN, an authority,
# a VPC endpoint id, a few SSL facts) fits in far less, and a connection that has not sent
# its header yet must not cost 64 KiB. HAProxy's own bound is its buffer size.
V2_MAX = 4096
_ADDRESS_SIZE = {0x1: 12, 0x2: 36, 0x3: 216}    # AF_INET, AF_INET6, AF_UNIX blocks


class ProxyHeaderError(ValueError):
    """Not a valid PROXY protocol header (the connection is closed, unanswered)."""


@dataclass(slots=True)    # not frozen: a frozen init was ~40 times a tuple's, per connection
class ProxyHeader:
    """A parsed header: the addresses to use instead of the socket's, or None for the
    socket's own (v2 LOCAL, v1 UNKNOWN, a v2 family we cannot carry such as AF_UNIX)."""

    version: int
    source: tuple | None = None     # as socket.getpeername() gives it
    dest: tuple | None = None       # as socket.getsockname() gives it
    tlvs: tuple[tuple[int, bytes], ...] = ()
    local: bool = False             # v2 LOCAL: the balancer's own connection (health check)


def measure(data: bytes) -> tuple[int, bool]:
    """(bytes of data that belong to the header, whether the header is complete).

    data is what arrived so far, from the first byte of the connection. Raises
    ProxyHeaderError as soon as the bytes cannot start a header, or it is too long.
    """
    n = len(data)
    if n == 0:
        return 0, False
    if data[0] == 0x0D:   # "\r": version 2
        if data[:12] != V2_SIGNATURE[:n]:
            raise ProxyHeaderError("not a PROXY protocol header")
        if n < 16:
            return n, False
        total = 16 + int.from_bytes(data[14:16], "big")
        if total > V2_MAX:
            raise ProxyHeaderError(f"a version 2 header of {total} bytes (at most {V2_MAX})")
        return min(total, n), n >= total
    if data[:6] != V1_PREFIX[:n]:
        raise ProxyHeaderError("not a PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end >= 0:
        return end + 2, True
    if n >= V1_MAX:
        raise ProxyHeaderError(f"a version 1 header without CRLF in {V1_MAX} bytes")
    # Everything before the CRLF is header; a lone "\r" at the end may be its first half.
    return n, False


def parse(data: bytes) -> ProxyHeader:
    """The header that `measure` found complete in data (exactly its bytes)."""
    if data[:1] == b"\r":
        return _parse_v2(data)
    return _parse_v1(data)


def _parse_v1(data: bytes) -> ProxyHeader:
    try:
        line = data[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("a version 1 header that is not ASCII") from None
    parts = line.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        # The spec: the rest of the line is ignored and the socket's addresses are used.
        return ProxyHeader(1)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"a version 1 header not of the form "
                               f"'PROXY TCP4|TCP6 src dst sport dport': {line[:60]!r}")
    family = socket.AF_INET if parts[1] == "TCP4" else socket.AF_INET6
    src = _v1_address(family, parts[2], parts[4])
    dst = _v1_address(family, parts[3], parts[5])
    return ProxyHeader(1, src, dst)


def _v1_address(family: int, host: str, port: str) -> tuple:
    try:
        packed = socket.inet_pton(family, host)
    except OSError:
        raise ProxyHeaderError(f"a version 1 header with a bad address {host[:45]!r}") from None
    # Ports are decimal without a sign or leading zeros (the spec's 1..65535; 0 is taken
    # too, as HAProxy does).
    if not (port.isdigit() and port.isascii() and len(port) <= 5
            and (port == "0" or port[0] != "0") and int(port) <= 65535):
        raise ProxyHeaderError(f"a version 1 header with a bad port {port[:8]!r}")
    return _address(family, packed, int(port))


def _address(family: int, packed: bytes, port: int) -> tuple:
    text = socket.inet_ntop(family, packed)
    return (text, port) if family == socket.AF_INET else (text, port, 0, 0)


def _parse_v2(data: bytes) -> ProxyHeader:
    ver_cmd, fam = data[12], data[13]
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"a version 2 header of version {ver_cmd >> 4}")
    cmd = ver_cmd & 0xF
    if cmd not in (0, 1):
        raise ProxyHeaderError(f"a version 2 header with command {cmd}")
    family, proto = fam >> 4, fam & 0xF
    if family > 3 or proto > 2:
        raise ProxyHeaderError(f"a version 2 header with family/protocol byte 0x{fam:02x}")
    body = data[16:]
    size = _ADDRESS_SIZE.get(family, 0)
    if len(body) < size:
        raise ProxyHeaderError(f"a version 2 header too short for its addresses "
                               f"({len(body)} < {size} bytes)")
    tlvs = _tlvs(body[size:])
    if cmd == 0:
        # LOCAL: the balancer speaks for itself; the address block, if any, is ignored.
        return ProxyHeader(2, tlvs=tlvs, local=True)
    if family == 0x1:
        return ProxyHeader(2, _address(socket.AF_INET, body[0:4], int.from_bytes(body[8:10], "big")),
                           _address(socket.AF_INET, body[4:8], int.from_bytes(body[10:12], "big")),
                           tlvs)
    if family == 0x2:
        return ProxyHeader(2, _address(socket.AF_INET6, body[0:16],
                                       int.from_bytes(body[32:34], "big")),
                           _address(socket.AF_INET6, body[16:32],
                                    int.from_bytes(body[34:36], "big")), tlvs)
    # AF_UNSPEC, or AF_UNIX (no IP address to log or rate-limit by): the socket's own.
    return ProxyHeader(2, tlvs=tlvs)


def _tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    out = []
    i = 0
    while i < len(data):
        if len(data) - i < 3:
            raise ProxyHeaderError("a version 2 header with a truncated TLV")
        size = int.from_bytes(data[i + 1:i + 3], "big")
        if i + 3 + size > len(data):
            raise ProxyHeaderError("a version 2 header with a TLV longer than the header")
        out.append((data[i], data[i + 3:i + 3 + size]))
        i += 3 + size
    return tuple(out)


def build(version: str, source: tuple | None, dest: tuple | None) -> bytes:
    """The header that tells the next hop about a client (version "v1" or "v2").

    source and dest are socket addresses ((host, port, ...)); None, or families that
    differ and cannot be reconciled, give UNKNOWN (v1) or AF_UNSPEC (v2). An IPv4 address
    beside an IPv6 one is sent IPv4-mapped, as HAProxy does.
    """
    pair = _pair(source, dest)
    if version == "v1":
        if pair is None:
            return b"PROXY UNKNOWN\r\n"
        family, (sa, sp), (da, dp) = pair
        proto = "TCP4" if family == socket.AF_INET else "TCP6"
        return (f"PROXY {proto} {socket.inet_ntop(family, sa)} {socket.inet_ntop(family, da)}"
                f" {sp} {dp}\r\n").encode("ascii")
    if pair is None:
        return V2_SIGNATURE + b"\x21\x00\x00\x00"
    family, (sa, sp), (da, dp) = pair
    fam = 0x11 if family == socket.AF_INET else 0x21     # TCP over IPv4 / IPv6
    body = sa + da + sp.to_bytes(2, "big") + dp.to_bytes(2, "big")
    return V2_SIGNATURE + bytes((0x21, fam)) + len(body).to_bytes(2, "big") + body


def local_header(version: str) -> bytes:
    """The header of a connection made for no client (a health check): v2 LOCAL, v1
    UNKNOWN; the receiver keeps the socket's addresses."""
    return b"PROXY UNKNOWN\r\n" if version == "v1" else V2_SIGNATURE + b"\x20\x00\x00\x00"


def _packed(addr: tuple | None) -> tuple[int, bytes, int] | None:
    if not addr or not isinstance(addr[0], str):
        return None
    host = addr[0].split("%", 1)[0]
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return family, socket.inet_pton(family, host), int(addr[1])
        except OSError:
            continue
    return None


def _pair(source: tuple | None, dest: tuple | None):
    s, d = _packed(source), _packed(dest)
    if s is None or d is None:
        return None
    if s[0] != d[0]:
        mapped = b"\x00" * 10 + b"\xff\xff"
        s = s if s[0] == socket.AF_INET6 else (socket.AF_INET6, mapped + s[1], s[2])
        d = d if d[0] == socket.AF_INET6 else (socket.AF_INET6, mapped + d[1], d[2])
    return s[0], (s[1], s[2]), (d[1], d[2])
