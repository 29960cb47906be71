"""The stored form of a response: a fixed metadata block, validators, the head, the body.

One store value per response, so a hit is one `get` and the bytes to write are
slices of it:

    META | etag | last-modified | origin | status line + fields (each CRLF-ended) | body

`origin` is the address the response was fetched from in forward mode (empty in
reverse mode): a forward proxy serves an entry only to clients admitted to that address.

The head is kept without its final blank line: a hit appends `Age` and
`Cache-Status` (and whatever the relay adds) before the blank line. Bodies are
stored dechunked and framed by Content-Length.

A URL whose response carried `Vary` holds a small stub instead, naming the
varying fields and an epoch that is part of every variant's key, so dropping the
stub makes all variants unreachable at once.
"""
from __future__ import annotations

import struct

KIND_RESPONSE = 1
KIND_STUB = 2

# flags
MUST_REVALIDATE = 1     # must-revalidate, proxy-revalidate or s-maxage (RFC 9111 5.2.2.2, .8, .10)
NO_CACHE = 2            # response no-cache: validate before every use (RFC 9111 5.2.2.4)
ENCODED = 4             # a copy the listener encoded from the stored identity response
CODED = 8               # stored under a stub naming keys.CODING: answers vary on the coding

# kind, flags, status, head_len, etag_len, lm_len, then seconds: response_time,
# corrected_initial_age, freshness_lifetime, stale-while-revalidate,
# stale-if-error, and the time If-Modified-Since is compared with; then origin_len
# (last, so ext/hitpath.pyx reads the seconds at fixed offsets).
META = struct.Struct("<BBHIHHddddddH")
STUB = struct.Struct("<BBHIQ")   # kind, 0, 0, names length, epoch

# RFC 9110 7.6.1 hop-by-hop fields, plus Proxy-Connection (RFC 9112 9.6 notes
# its use); none may be stored (RFC 9111 3.1). Trailer is end-to-end (RFC 9110 6.6.2).
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te",
    b"transfer-encoding", b"upgrade"})


def connection_listed(fields: list[tuple[bytes, bytes]]) -> set[bytes]:
    """Names listed in Connection: hop-by-hop for this message (RFC 9110 7.6.1)."""
    out: set[bytes] = set()
    for name, value in fields:
        if name.lower() == b"connection":
            out.update(p.strip(b" \t").lower() for p in value.split(b",") if p.strip(b" \t"))
    return out


def build_head(status_line: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    """Serialize a status line and fields, each line CRLF-terminated, no blank line."""
    return b"".join([status_line, b"\r\n"] + [b"%s: %s\r\n" % nv for nv in fields])


def parse_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Split a stored head back into its status line and (name, value) fields."""
    lines = head.split(b"\r\n")
    fields = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            fields.append((name, value.strip(b" \t")))
    return lines[0], fields


def encode(status: int, flags: int, head: bytes, body: bytes, etag: bytes, last_modified: bytes,
           response_time: float, corrected_initial_age: float, lifetime: float,
           swr: float, sie: float, ims_basis: float, origin: bytes = b"") -> list[bytes]:
    """Return the parts whose concatenation is the stored value."""
    meta = META.pack(KIND_RESPONSE, flags, status, len(head), len(etag), len(last_modified),
                     response_time, corrected_initial_age, lifetime, swr, sie, ims_basis,
                     len(origin))
    return [meta, etag, last_modified, origin, head, body]


class Stored:
    """A decoded stored response (the slow paths: revalidation, 304s, stale serving)."""

    __slots__ = ("value", "flags", "status", "etag", "last_modified", "origin", "head_start",
                 "body_start", "response_time", "corrected_initial_age", "lifetime", "swr", "sie",
                 "ims_basis")

    def __init__(self, value: bytes) -> None:
        (_, self.flags, self.status, head_len, etag_len, lm_len, self.response_time,
         self.corrected_initial_age, self.lifetime, self.swr, self.sie,
         self.ims_basis, origin_len) = META.unpack_from(value)
        self.value = value
        p = META.size
        self.etag = bytes(value[p:p + etag_len])
        p += etag_len
        self.last_modified = bytes(value[p:p + lm_len])
        p += lm_len
        self.origin = bytes(value[p:p + origin_len])
        self.head_start = p + origin_len
        self.body_start = self.head_start + head_len

    @property
    def head(self) -> bytes:
        return bytes(self.value[self.head_start:self.body_start])

    @property
    def body(self):
        """The body: bytes, or a memoryview of a pinned arena slice for large values."""
        return self.value[self.body_start:]

    def age(self, now: float) -> float:
        """current_age of RFC 9111 4.2.3."""
        return self.corrected_initial_age + max(0.0, now - self.response_time)


def encode_stub(names: tuple[bytes, ...], epoch: int) -> bytes:
    """Value of a Vary stub: the varying field names (lowercase) and the variants' epoch."""
    joined = b",".join(names)
    return STUB.pack(KIND_STUB, 0, 0, len(joined), epoch) + joined


def decode_stub(value: bytes) -> tuple[tuple[bytes, ...], int]:
    """Return (names, epoch) of a stub value."""
    _, _, _, n, epoch = STUB.unpack_from(value)
    joined = bytes(value[STUB.size:STUB.size + n])
    return (tuple(joined.split(b",")) if joined else ()), epoch


class Fields:
    """Just enough of the Response interface over a list of fields (for 304 merging)."""

    def __init__(self, fields, status):
        self.fields = fields
        self.status = status

    def get(self, name):
        for n, v in self.fields:
            if n.lower() == name:
                return v
        return None

    def get_all(self, name):
        return [v for n, v in self.fields if n.lower() == name]
