"""Revalidation of stored responses: a 304 (RFC 9111 4.3.3, 4.3.4) and a HEAD's 200 (4.3.5).

`Revalidation` is the part of `policy.HttpCache` that updates a stored response with the
fields of a newer one for the same representation; it uses the cache's store (`ring`),
settings and freshness rules (`_lifetime`, `_hit`), which policy.py defines.
"""
from __future__ import annotations

import math
from collections.abc import Callable

from fastproxy._ringcache import RingCache

from . import entry
from .config import CacheConfig
from .directives import (
    age_value,
    directive_seconds,
    format_http_date,
    parse_http_date,
    private_all,
    strong_match,
    validate_always,
    weak_match,
    withheld_fields,
)
from .lookup import Lookup
from .targeted import response_cache_control

_INF = math.inf

# RFC 9111 3.2: never replaced by a 304's fields. Content-Length by the rule,
# Content-Encoding and Content-Range because the stored bytes depend on them, Age and
# Set-Cookie because a shared entry never keeps them. Content-Type is updated (the
# stored bytes do not depend on it) except on entries the listener encodes by it.
_NOT_UPDATED = entry.HOP_BY_HOP | {b"content-length", b"content-encoding", b"content-range",
                                   b"age", b"set-cookie"}
_NOT_UPDATED_CODED = _NOT_UPDATED | {b"content-type"}


class Revalidation:
    """Updating stored responses from 304s and HEAD responses (mixed into HttpCache)."""

    # HttpCache's, which this part uses.
    ring: RingCache
    config: CacheConfig
    _targeted: tuple[bytes, ...]
    _lifetime: Callable[..., float]
    _hit: Callable[..., Lookup]

    def refresh(self, lookup: Lookup, request, response, request_time: float,
                response_time: float, extra: bytes = b"") -> Lookup | None:
        """Apply a 304 to the entry lookup revalidated (RFC 9111 4.3.3, 4.3.4).

        Returns a HIT lookup to serve (Cache-Status fwd=stale; fwd-status=304;
        a 304 again if the client's own conditional matches the refreshed
        entry), or None when the 304 does not select the stored response: the
        relay then passes the 304 on if the client's request was conditional,
        else repeats the request without the conditional fields.
        """
        st = lookup.stored
        if st is None or response.status != 304:
            return None
        return self._update(st, lookup, request, response, request_time, response_time, extra)

    def freshen(self, lookup: Lookup, request, response, request_time: float,
                response_time: float) -> bool:
        """Apply a 200 to a HEAD sent for a stored GET response (RFC 9111 4.3.5).

        Matching validators (and Content-Length, if the HEAD response has one): the stored
        fields are updated as a 304 would; otherwise the stored response is out of date
        and dropped. The client's HEAD is answered by the response itself either way.
        """
        st = lookup.stored
        if st is None or response.status != 200:
            return False
        etag = response.get(b"etag")
        lm = response.get(b"last-modified")
        length = response.get(b"content-length")
        if ((etag is not None or lm is not None)
                and (length is None or length.strip() == b"%d" % len(st.body))
                and self._update(st, lookup, request, response, request_time,
                                 response_time, b"") is not None):
            return True
        self.ring.delete(lookup.key)
        return False

    def _update(self, st: entry.Stored, lookup: Lookup, request, response, request_time: float,
                response_time: float, extra: bytes) -> Lookup | None:
        # RFC 9111 4.3.4 for a 304 and 4.3.5 for a HEAD's 200: the response selects the
        # stored one (st, lookup's) by its validators, and its fields replace the stored ones.
        new_etag = response.get(b"etag")
        new_lm = response.get(b"last-modified")
        if new_etag is not None:
            if new_etag.startswith(b"W/") or st.etag.startswith(b"W/"):
                if not (st.etag and weak_match(new_etag, st.etag)):
                    return None
            elif not strong_match(new_etag, st.etag):
                return None
        elif new_lm is not None:
            if new_lm != st.last_modified:
                return None
        status_line, old_fields = entry.parse_head(st.head)
        new_fields = response.headers()
        if response.get(b"date") is None:
            # RFC 9110 6.6.1: a response without Date is dated when received, as store
            # does; else the entry kept its first Date and the fresh 304 aged from it.
            new_fields = new_fields + [(b"Date", format_http_date(response_time))]
        conn = entry.connection_listed(new_fields)
        fixed = _NOT_UPDATED_CODED if st.flags & (entry.ENCODED | entry.CODED) else _NOT_UPDATED
        replace = {n.lower() for n, _ in new_fields} - fixed - conn
        merged = [(n, v) for n, v in old_fields if n.lower() not in replace]
        merged += [(n, v) for n, v in new_fields if n.lower() in replace]
        if st.flags & entry.ENCODED:
            # An encoded copy keeps the weak ETag (the 304 names the identity bytes).
            merged = [(n, b"W/" + v if n.lower() == b"etag" and not v.startswith(b"W/")
                       else v) for n, v in merged]
        if st.flags & entry.CODED and b"vary" in replace and not any(
                b"accept-encoding" in v.lower() for n, v in merged if n.lower() == b"vary"):
            merged.append((b"Vary", b"Accept-Encoding"))   # the listener's, whatever the 304 says
        view = entry.Fields(merged, st.status)
        cc = response_cache_control(view, self._targeted)
        if cc.malformed or b"no-store" in cc or private_all(cc):
            # The updated response may no longer be stored (RFC 9111 3, 4.3.4): drop the
            # entry rather than keep serving it; the relay then fetches a full response.
            self.ring.delete(lookup.key)
            return None

        date_value = parse_http_date(view.get(b"date")) or response_time
        corrected_initial_age = max(max(0.0, response_time - date_value),
                                    age_value(response.get_all(b"age"))
                                    + max(0.0, response_time - request_time))
        lm_raw = view.get(b"last-modified") or b""
        last_modified = parse_http_date(lm_raw) if lm_raw else None
        lifetime = self._lifetime(view, cc, date_value, last_modified)
        flags = 0
        if b"must-revalidate" in cc or b"proxy-revalidate" in cc or b"s-maxage" in cc:
            flags |= entry.MUST_REVALIDATE
        if validate_always(cc):
            flags |= entry.NO_CACHE
        flags |= st.flags & (entry.ENCODED | entry.CODED)
        swr = sie = 0.0
        if not flags & entry.MUST_REVALIDATE:
            swr = directive_seconds(cc, b"stale-while-revalidate",
                                     self.config.default_stale_while_revalidate)
            sie = directive_seconds(cc, b"stale-if-error", self.config.default_stale_if_error)
        withheld = withheld_fields(cc)
        if withheld:
            merged = [(n, v) for n, v in merged if n.lower() not in withheld]
        head = entry.build_head(status_line, merged)
        etag = view.get(b"etag") or b""
        parts = entry.encode(st.status, flags, head, st.body, etag, lm_raw, response_time,
                             corrected_initial_age, lifetime, swr, sie,
                             last_modified if last_modified is not None else date_value,
                             st.origin)
        value = b"".join(parts)
        self.ring.set(lookup.key, value, expires=_INF if (etag or lm_raw) else
                       response_time - corrected_initial_age + lifetime
                       + max(swr, sie, self.config.keep_stale), now=response_time)
        fresh = entry.Stored(value)
        age = fresh.age(response_time)
        # RFC 9211 2.2: fwd says why it went forward (stale, or the request's directives).
        fwd = b"request" if lookup.fwd == "request" else b"stale"
        return self._hit(fresh, lookup.key, request, age, lifetime - age, extra,
                         status=b"; fwd=" + fwd + b"; fwd-status=304; ttl=%d")
