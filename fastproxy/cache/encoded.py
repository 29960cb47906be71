"""Copies of stored responses encoded by a compressing listener (issue 13), in the store.

`HttpCache.store(..., codings)` keeps a response the listener encodes as the identity
variant of a Vary stub naming `keys.CODING`; the coding a request negotiates selects its
variant. The layer (fill.py) asks `identity_for` when a coding's copy is missing, encodes
the identity body once, and `store_encoded` keeps the copy with the identity response's
freshness, so later hits in that coding are plain stored responses.
"""
from __future__ import annotations

import math

from . import entry
from .keys import CODING, variant_key


def identity_for(cache, request, key_base: bytes, now: float,
                 coding: bytes) -> tuple[entry.Stored, bytes] | None:
    """(the fresh identity response, the key of its copy encoded with coding) for a
    request whose encoded copy is missing; None when there is no such response."""
    ring = cache.ring
    stub = ring.get(key_base, now)
    if stub is None or stub[0] != entry.KIND_STUB:
        return None
    names, epoch = entry.decode_stub(stub)
    if CODING not in names:
        return None
    value = ring.get(variant_key(key_base, epoch, names, request), now)
    if value is None or value[0] != entry.KIND_RESPONSE:
        return None
    st = entry.Stored(bytes(value))
    if st.flags & entry.NO_CACHE or st.lifetime <= st.age(now):
        return None     # it needs the origin first: the request goes upstream
    return st, variant_key(key_base, epoch, names, request, coding)


def store_encoded(cache, st: entry.Stored, key: bytes, fields: list, body: bytes,
                  now: float) -> bool:
    """Store a copy of st encoded by the listener (fields: its head, no Content-Length)
    under key, with st's freshness; its ETag is the weak form (RFC 9110 8.8.3)."""
    status_line = st.head.split(b"\r\n", 1)[0]
    head = entry.build_head(status_line, fields + [(b"Content-Length", b"%d" % len(body))])
    etag = st.etag
    if etag and not etag.startswith(b"W/"):
        etag = b"W/" + etag
    parts = entry.encode(st.status, st.flags | entry.ENCODED | entry.CODED, head, body, etag,
                         st.last_modified, st.response_time, st.corrected_initial_age,
                         st.lifetime, st.swr, st.sie, st.ims_basis, st.origin)
    expires = (math.inf if (etag or st.last_modified) else
               st.response_time - st.corrected_initial_age + st.lifetime
               + max(st.swr, st.sie, cache.config.keep_stale))
    return cache.ring.set(key, parts, expires=expires, now=now)
