"""What the cache step answers by making it itself, off the relay: encoded copies of
stored responses (a compressing listener, issue 13) and the fill of a HEAD or Range miss
with a whole GET (issue 16). Functions of one `layer.CacheLayer`.

Encoded copies: a hit whose negotiated coding has no copy yet encodes the stored identity
body once (inline up to ENCODE_INLINE, else a slice per loop turn, with other requests
for the same copy waiting for it), stores the copy (encoded.py) and answers the request
from the cache like any hit.

Fill: a HEAD miss, or a GET with Range that misses, fetches the whole response with a GET
(no Range) on a connection of its own (fetch.py), stores it, and answers from it; too
large to store, a HEAD gets its head and a Range request goes upstream as sent.
"""
from __future__ import annotations

import asyncio
import time

from fastproxy import _http
from fastproxy._relay import STATE_CLOSED
from fastproxy.cache import entry
from fastproxy.cache.encoded import identity_for, store_encoded
from fastproxy.cache.fetch import FetchError, fetch
from fastproxy.cache.policy import HIT
from fastproxy.cache.ranges import respond_fetched, respond_hit

GET = b"GET"
HEAD = b"HEAD"
_time = time.time
# Stored bodies up to this size are encoded at once (about a millisecond at the
# configured levels); larger ones a slice per loop turn.
ENCODE_INLINE = 256 * 1024


def encode_copy(layer, conn, req, key: bytes, coding: bytes, ctx, origins) -> bool:
    """Make the copy of the stored identity response in req's coding, then answer
    req from the cache; False when there is no fresh identity response to encode."""
    wc = layer.wc
    found = identity_for(layer.cache, req, key, _time(), coding)
    if found is None:
        return False
    st, ckey = found
    waiting = wc.encoding.get(ckey)
    if waiting is None:
        _, fields = entry.parse_head(st.head)
        head = layer.compression.head_for(st.status, fields, coding)
        if head is None:
            return False    # not encoded by this listener's settings (a reload)
        body = st.body
        if len(body) <= ENCODE_INLINE:
            _store_copy(layer, st, ckey, head, layer.compression.encode(coding, body))
            layer.handle(conn, req, ctx, origins, True)
            return True
        # A large body is encoded a slice per loop turn; requests for the same copy
        # meanwhile wait for it instead of encoding it again.
        waiting = wc.encoding[ckey] = layer.loop.create_future()
        task = layer.loop.create_task(_encode_large(layer, st, ckey, head, coding, waiting))
        wc.tasks.add(task)
        task.add_done_callback(wc.tasks.discard)
    waiting.add_done_callback(lambda _: _after_encode(layer, conn, req, ctx, origins))
    return True


def _store_copy(layer, st, ckey: bytes, head: list, data: bytes) -> None:
    if store_encoded(layer.cache, st, ckey, head, data, _time()):
        layer.wc.encoded += 1
    else:
        layer.wc.store_failures += 1


async def _encode_large(layer, st, ckey: bytes, head: list, coding: bytes, done) -> None:
    try:
        data = await layer.compression.encode_async(coding, st.body)
        _store_copy(layer, st, ckey, head, data)
    finally:
        layer.wc.encoding.pop(ckey, None)
        done.set_result(None)


def _after_encode(layer, conn, req, ctx, origins) -> None:
    if conn.req is not req or conn.state == STATE_CLOSED:
        return   # the client left while the copy was made
    layer.handle(conn, req, ctx, origins, True)


async def fill(layer, conn, req, key, lk, leader: bool, ctx, origins, target) -> None:
    """Fetch the whole response with a GET, store it, and answer req (a HEAD, or a
    GET with Range) from it, as Varnish and nginx's proxy_cache do on a miss.

    A response too large to store answers a HEAD with its head; a Range request for
    it goes upstream as it is (the origin cuts the range). A fetch that fails sends
    req upstream the usual way (retries, the error answer)."""
    wc = layer.wc
    host, port, ssl, server_hostname, head = target
    resp: _http.Response | None = None
    body: bytes | None = None
    try:
        t_request = _time()
        resp, body = await fetch(host, port, _as_full_get(head), ssl=ssl,
                                 server_hostname=server_hostname,
                                 timeout=layer.refresh_timeout, max_head=layer.max_head,
                                 max_body=layer.max_object_size)
    except (FetchError, asyncio.TimeoutError, OSError):
        resp = None
    gone = conn.req is not req or conn.state == STATE_CLOSED
    stored = False
    try:
        if resp is None or (body is None and req.method != HEAD):
            if not gone:
                layer.go(conn, req, key, lk, False, layer.LOG_MISS, ctx, origins)
            return
        t_response = _time()
        as_get = _AsGet(req)
        decision = layer.storable(as_get, resp, t_response)
        if decision and body is not None:
            origin = host.encode() if origins is not None else b""
            stored = layer.cache.store(as_get, key, resp, body, t_request, t_response,
                                       decision, origin, layer.codings_for(resp))
            if stored:
                wc.stores += 1
        if gone:
            return
        layer.note_miss(conn)
        extra = layer.extra(conn, req)
        status = layer.cache.status_field(lk, decision, resp.status, stored=stored)
        if stored:
            found = layer.cache.lookup(req, key, _time(), extra, origins, layer.negotiate)
            if found.kind is HIT:
                # The stored response, with this exchange's Cache-Status (not a hit).
                found.buffers = ([found.buffers[0], b"Age: 0\r\n" + extra + status
                                  + b"\r\n"] + found.buffers[2:])
                respond_hit(conn, req, found, layer.edits)
                return
            if found.coding is not None and encode_copy(layer, conn, req, key,
                                                        found.coding, ctx, origins):
                return
        respond_fetched(conn, req, resp, body, extra + status, layer.edits)
    finally:
        if leader:
            wc.coalescer.finish(key, True if stored else None)


class _AsGet:
    """A HEAD request seen as the GET that fills the cache for it (policy reads these)."""

    __slots__ = ("req",)
    method = GET

    def __init__(self, req) -> None:
        self.req = req

    def __getattr__(self, name):
        return getattr(self.req, name)


def _as_full_get(head: bytes) -> bytes:
    """A forwarded request head as a GET of the whole representation (no Range)."""
    if head.startswith(b"HEAD "):
        head = b"GET " + head[5:]
    lines = head.split(b"\r\n")
    return b"\r\n".join(ln for ln in lines if not ln.lower().startswith((b"range:",
                                                                        b"if-range:")))
