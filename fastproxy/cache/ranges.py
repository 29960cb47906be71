"""Range requests answered from a stored complete response (RFC 9110 14).

The cache stores whole 200 responses only; a GET with `Range: bytes=...` that hits such an
entry is answered here with a 206 and the requested slice, or a 416 when no range can be
satisfied. `If-Range` (14.3) keeps the range only while the stored response is the one the
client names: a strong ETag match, or a Last-Modified equal to the date given (a date only
counts when the stored Last-Modified is one). Anything else (another unit, several ranges,
a syntax error) is answered with the whole 200, which 14.2 allows a server to do.

On a miss, a Range request (and a HEAD) is not sent upstream as it is: the cache layer
fetches the whole response with a GET, stores it, and answers the range from it, as
Varnish and nginx's proxy_cache do (layer.CacheLayer._fill). A response too large to
store (`max_object_size`) is left to the origin: the Range request goes upstream as sent,
and the origin's 206 is relayed (what nginx's slice module users get per slice).
`respond_fetched` answers from a fetched response that was not stored.
"""
from __future__ import annotations

import re
import time

from . import entry
from .directives import format_http_date, parse_http_date

_SPEC = re.compile(rb"^[ \t]*bytes[ \t]*=[ \t]*(\d*)[ \t]*-[ \t]*(\d*)[ \t]*$", re.IGNORECASE)


def byte_range(value: bytes, length: int) -> tuple[int, int] | None | bool:
    """(first, last) for one satisfiable byte range; False when unsatisfiable; None: ignore."""
    m = _SPEC.match(value)
    if m is None:
        return None               # several ranges, another unit, or not a range at all
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:                 # suffix: the last N bytes (14.1.2)
        n = int(last)
        if n == 0 or length == 0:
            return False
        return max(0, length - n), length - 1
    a = int(first)
    b = int(last) if last else length - 1
    if last and b < a:
        return None               # invalid: ignore the field (14.1.1)
    if a >= length:
        return False
    return a, min(b, length - 1)


def if_range_holds(value: bytes, st: entry.Stored) -> bool:
    """Whether If-Range names the stored representation (RFC 9110 13.1.5)."""
    value = value.strip()
    if value.startswith((b'"', b"W/")):
        # A strong comparison: weak tags never match here.
        return bool(st.etag) and value == st.etag and not value.startswith(b"W/")
    if not st.last_modified:
        return False
    given = parse_http_date(value)
    return given is not None and given == parse_http_date(st.last_modified)


def answer(lookup, request, tail: bytes) -> list | None:
    """The buffers of a 206 or 416 for a HIT lookup of a 200 with Range, else None.

    `tail` is the lookup's Age/extra/Cache-Status lines (ending with the blank line).
    """
    st = lookup.stored
    rng = request.get(b"range")
    if rng is None or request.method != b"GET" or lookup.status != 200 or lookup.client_304:
        return None
    if st is None:
        st = entry.Stored(_whole(lookup))
    if_range = request.get(b"if-range")
    if if_range is not None and not if_range_holds(if_range, st):
        return None
    body = st.body
    length = len(body)
    span = byte_range(rng, length)
    if span is None:
        return None
    status_line, fields = entry.parse_head(st.head)
    kept = [(n, v) for n, v in fields if n.lower() not in (b"content-length", b"content-range")]
    if not isinstance(span, tuple):
        head = entry.build_head(b"HTTP/1.1 416 Range Not Satisfiable", kept + [
            (b"Content-Range", b"bytes */%d" % length), (b"Content-Length", b"0")])
        return [head, tail]
    a, b = span
    head = entry.build_head(b"HTTP/1.1 206 Partial Content", kept + [
        (b"Content-Range", b"bytes %d-%d/%d" % (a, b, length)),
        (b"Content-Length", b"%d" % (b - a + 1))])
    return [head, tail, memoryview(body)[a:b + 1]]


def hit_buffers(req, lk, edits=None) -> tuple[list, int]:
    """(buffers, status) of a HIT or STALE lookup's answer: the stored response, or a
    206/416 for a Range; `edits`: the listener's route header edits (filters.edits_factory)."""
    buffers = lk.buffers
    status = lk.status
    if req.get(b"range") is not None:
        ranged = answer(lk, req, buffers[1])
        if ranged is not None:
            buffers, status = ranged, 206 if len(ranged) == 3 else 416
    return edited(buffers, status, req, edits), status


def edited(buffers: list, status: int, req, edits) -> list:
    """buffers with the route's response header edits applied to the head, as a relayed
    response gets them (the cache stores the origin's head, before the edits)."""
    f = edits(req.method, req) if edits is not None else None
    if f is None:
        return buffers
    status_line, fields = entry.parse_head(bytes(buffers[0]))
    return [entry.build_head(status_line, f.start(status, fields)), *buffers[1:]]


def respond_hit(conn, req, lk, edits=None) -> None:
    """Write a HIT or STALE lookup's response: the stored one, or a 206/416 for a Range."""
    buffers, status = hit_buffers(req, lk, edits)
    conn.respond(buffers, status, len(buffers[2]) if len(buffers) == 3 else 0)


def _whole(lookup) -> bytes:
    # The fresh-hit branch of lookup() keeps no Stored; its buffers are views of the value.
    return bytes(lookup.buffers[0].obj) if isinstance(lookup.buffers[0], memoryview) else b""


class _Fetched:
    """A response fetched for one request and not stored, in the shape answer() reads."""

    __slots__ = ("stored", "status", "buffers")
    client_304 = False

    def __init__(self, stored: entry.Stored, status: int, buffers: list) -> None:
        self.stored = stored
        self.status = status
        self.buffers = buffers


def respond_fetched(conn, req, resp, body: bytes | None, lines: bytes, edits=None) -> None:
    """Answer req from a response fetched for it that was not stored (a HEAD filled with a
    GET, a Range request fetched whole): its head (`lines` added: Via, Connection,
    Cache-Status), and its body, or the range of it req asks for, unless req is a HEAD.

    body None: too large to hold (a HEAD gets the head with the origin's Content-Length).
    """
    fields = resp.headers()
    drop = entry.HOP_BY_HOP | entry.connection_listed(fields)
    kept = [(n, v) for n, v in fields if n.lower() not in drop
            and (body is None or n.lower() != b"content-length")]
    status = resp.status
    if body is not None and status not in (204, 304):
        kept.append((b"Content-Length", b"%d" % len(body)))
    if resp.get(b"date") is None:
        kept.append((b"Date", format_http_date(time.time())))
    head = entry.build_head(b"HTTP/1.1 %d %s" % (status, resp.reason or b""), kept)
    tail = lines + b"\r\n"
    if req.method == b"HEAD" or body is None or status in (204, 304):
        conn.respond(edited([head, tail], status, req, edits), status, 0)
        return
    stored = entry.Stored(b"".join(entry.encode(
        status, 0, head, body, resp.get(b"etag") or b"", resp.get(b"last-modified") or b"",
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0)))
    respond_hit(conn, req, _Fetched(stored, status, [head, tail, body]), edits)
