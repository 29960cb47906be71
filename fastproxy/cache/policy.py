"""RFC 9111 shared-cache policy around the ring-buffer store.

The relay calls, per request and response (duck-typed on the parser's
`Request` / `Response`: `method`, `target`, `status`, `reason`, `headers()`,
`get()`, `get_all()`):

* `lookup(request, key_base, now, extra, origins)` before going upstream: a
  `Lookup` saying HIT (buffers to write), STALE (buffers to write now,
  revalidate in the background), REVALIDATE (conditional fields to add
  upstream), MISS, or GATEWAY_TIMEOUT (only-if-cached, buffers of a 504);
* `storable(request, response, now)` when the response head arrives, then
  `store(...)` with the whole dechunked body;
* `refresh(lookup, response, ...)` when a revalidation answers 304, `freshen(...)` when
  a HEAD sent for a stored response answers 200 (both in revalidation.py);
* `serve_stale(lookup, now, fwd_status)` when upstream fails and the lookup
  allowed stale-if-error;
* `invalidate(request, status, key_base, location, content_location)` after
  any response (it acts on unsafe methods only);
* `purge(url)`, `purge_prefix(prefix)` for the admin interface.

Fail safe: a Cache-Control field that is not a clean list (directives.py) makes
a response unstorable and a request read as `no-cache, no-store`; no stale reuse
(max-stale, stale-while-revalidate, stale-if-error) against no-cache,
must-revalidate, proxy-revalidate or s-maxage (RFC 9111 4.2.4).

Times are wall-clock seconds (`time.time()`), because Date and Expires are.
"""
from __future__ import annotations

import math
import os

from fastproxy._ringcache import RingCache

from . import entry
from .config import UNDERSTOOD_STATUSES, CacheConfig
from .directives import (
    DELTA_MAX,
    CacheControl,
    age_value,
    delta_seconds,
    directive_seconds,
    format_http_date,
    parse_cache_control,
    parse_etags,
    parse_http_date,
    private_all,
    split_list,
    validate_always,
    weak_match,
    withheld_fields,
)
from .keys import CODING, origin_of, resolve_ref, variant_key
from .lookup import Lookup
from .revalidation import Revalidation
from .targeted import response_cache_control

# Lookup kinds
HIT = "hit"
STALE = "stale"                  # served stale (stale-while-revalidate); refresh in background
REVALIDATE = "revalidate"        # send upstream with `conditional` added
MISS = "miss"
GATEWAY_TIMEOUT = "gateway-timeout"   # only-if-cached and nothing usable (RFC 9111 5.2.1.7)

SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})   # RFC 9110 9.2.1
_INF = math.inf

# RFC 9110 15.4.5: the fields a 304 carries from the selected representation.
_NOT_MODIFIED_FIELDS = frozenset({
    b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"})

_unpack_meta = entry.META.unpack_from
_META_SIZE = entry.META.size


class Decision:
    """Whether a response may be stored, and why not (the Cache-Status detail)."""

    __slots__ = ("store", "detail", "cc", "vary")

    def __init__(self, store: bool, detail: str = "", cc=None, vary=()) -> None:
        self.store = store
        self.detail = detail
        self.cc = cc
        self.vary = vary

    def __bool__(self) -> bool:
        return self.store

    def __repr__(self) -> str:
        return f"Decision({self.store}, {self.detail!r})"


_EMPTY: dict = {}
_PRAGMA_NO_CACHE = {b"no-cache": None}
_cc_memo: dict[bytes, dict] = {}


def _request_cc(request) -> dict:
    """The request's Cache-Control directives (parsed values memoised: few distinct ones recur)."""
    value = request.cache_control          # all lines joined by the parser
    if value is None:
        # RFC 9111 5.4: Pragma: no-cache counts only when Cache-Control is absent.
        pragma = request.get(b"pragma")
        if pragma is not None and b"no-cache" in pragma.lower():
            return _PRAGMA_NO_CACHE
        return _EMPTY
    cc = _cc_memo.get(value)
    if cc is None:
        if len(_cc_memo) >= 1024:
            _cc_memo.clear()
        cc = _cc_memo[value] = _fail_safe_request(parse_cache_control(value))
    return cc


def _fail_safe_request(cc) -> dict:
    # A request field we cannot read is read as the strictest thing it could have said:
    # validate before reuse, store nothing, and no permission for stale (max-stale) is
    # taken from it. only-if-cached, if named anywhere, still keeps the origin out of it.
    if not cc.malformed:
        return cc
    strict = {b"no-cache": None, b"no-store": None}
    if b"only-if-cached" in cc:
        strict[b"only-if-cached"] = None
    return strict


class HttpCache(Revalidation):
    """The shared HTTP cache of one worker: policy decisions over one RingCache."""

    def __init__(self, config: CacheConfig | None = None) -> None:
        self.config = config or CacheConfig()
        c = self.config
        self.ring = RingCache(c.size, segment_size=c.arena_segment_size(), max_entries=c.max_entries,
                              max_item_share=0.5, prefault=c.prefault)
        self._name = c.cache_name.encode()
        self._hit_status = b"Cache-Status: " + self._name + b"; hit"
        self._zero_copy_min = c.zero_copy_min
        self._targeted = tuple(n.lower().encode() for n in c.targeted_fields)

    def _get(self, key: bytes, now: float):
        # Small values are copied (always safe, and as cheap as a view below a
        # few KiB); large ones are served from a pinned view of the arena, kept
        # from eviction until the transport has written and released them.
        view = self.ring.get_view(key, now)
        if view is None or len(view) >= self._zero_copy_min:
            return view if view is None else memoryview(view)
        return bytes(view)

    # ------------------------------------------------------------------ lookup

    def lookup(self, request, key_base: bytes, now: float, extra: bytes = b"",
               origins=None, negotiate=None) -> Lookup:
        """Decide how to answer request from the cache; `extra` lines go into served heads.

        `origins` (forward mode): the addresses, as bytes, this client was admitted to for
        the request's destination; an entry fetched from any other address is not used.
        `negotiate(request)`: the content coding the listener would answer with (None:
        identity), which selects the variant of a response stored with `codings`.
        """
        method = request.method
        rcc = _request_cc(request)
        if method != b"GET" and method != b"HEAD":
            # RFC 9111 5.2.1.7: only-if-cached keeps the origin out whatever the method;
            # no stored response can answer this one, so it is a 504.
            return self._miss(rcc, "method", "", extra)
        if (request.get(b"if-match") is not None or request.get(b"if-unmodified-since") is not None):
            # Preconditions other than 4.3.2's are the origin's to evaluate.
            return self._miss(rcc, "request", "precondition", extra)
        value = self._get(key_base, now)
        if value is None:
            return self._miss(rcc, "uri-miss", "", extra)
        key = key_base
        if value[0] == entry.KIND_STUB:
            names, epoch = entry.decode_stub(value)
            coding = (negotiate(request) if negotiate is not None and CODING in names
                      else None)
            key = variant_key(key_base, epoch, names, request, coding)
            value = self._get(key, now)
            if value is None:
                out = self._miss(rcc, "vary-miss", "", extra)
                out.coding = coding
                return out
        (_, flags, status, head_len, etag_len, lm_len, response_time, corrected_initial_age,
         lifetime, _, _, _, origin_len) = _unpack_meta(value)
        hs = _META_SIZE + etag_len + lm_len
        if origins is not None and bytes(value[hs:hs + origin_len]) not in origins:
            # Forward mode: this entry came from an address the client may not reach (the
            # name moved, or the rules differ per client): not even its validators are used.
            return self._miss(rcc, "miss", "origin-address", extra)
        hs += origin_len
        # RFC 9111 4.2.3 current_age; 4.2 fresh while lifetime > age.
        age = corrected_initial_age + (now - response_time if now > response_time else 0.0)
        ttl = lifetime - age
        if (ttl > 0 and not rcc and not (flags & entry.NO_CACHE)
                and request.get(b"if-none-match") is None
                and request.get(b"if-modified-since") is None):
            # The common case, kept short: fresh, no request directives, not conditional.
            out = Lookup(HIT)
            out.key = key
            out.status = status
            out.ttl = t = int(ttl)
            bs = hs + head_len
            mv = memoryview(value)
            tail = b"Age: %d\r\n%s%s; ttl=%d\r\n\r\n" % (age, extra, self._hit_status, t)
            if method == b"HEAD":
                out.buffers = [mv[hs:bs], tail]
            else:
                out.buffers = [mv[hs:bs], tail, mv[bs:]]
            return out
        st = entry.Stored(value)
        # Freshness as the request sees it (RFC 9111 5.2.1.1 max-age, 5.2.1.3 min-fresh).
        # An argument that is not delta-seconds is read the strict way: max-age as 0,
        # min-fresh as more than any lifetime.
        fresh = ttl > 0
        max_age = min_fresh = None
        if rcc:
            if b"max-age" in rcc:
                max_age = delta_seconds(rcc[b"max-age"])
                if max_age is None:
                    max_age = 0
            if b"min-fresh" in rcc:
                min_fresh = delta_seconds(rcc[b"min-fresh"])
                if min_fresh is None:
                    min_fresh = DELTA_MAX
            if (max_age is not None and age > max_age) or (min_fresh is not None and ttl < min_fresh):
                fresh = False
        must_validate = (st.flags & entry.NO_CACHE) or b"no-cache" in rcc
        if fresh and not must_validate:
            return self._hit(st, key, request, age, ttl, extra)
        must_revalidate = st.flags & entry.MUST_REVALIDATE
        staleness = -ttl
        if (not must_validate and not must_revalidate and staleness > 0 and min_fresh is None
                and (max_age is None or age <= max_age)):
            # RFC 9111 4.2.4: stale reuse only where the request or response allows it, and
            # never past what the request's max-age or min-fresh accept (5.2.1.1, 5.2.1.3).
            if b"max-stale" in rcc:
                limit = rcc[b"max-stale"]
                allowed = _INF if limit is None else delta_seconds(limit)
                if allowed is not None and staleness <= allowed:
                    return self._hit(st, key, request, age, ttl, extra, "max-stale")
            elif (max_age is None and staleness <= st.swr
                  and b"only-if-cached" not in rcc):
                # 5.2.1.1: a request with max-age and no max-stale wants nothing stale.
                hit = self._hit(st, key, request, age, ttl, extra, "stale-while-revalidate")
                hit.kind = STALE
                hit.conditional = self._conditional(st, request)
                return hit
        if b"only-if-cached" in rcc:
            return self._gateway_timeout(extra)
        # RFC 9211 2.2: "request" when a fresh response was refused by the
        # request's directives, "stale" when it needed validation.
        fwd = "request" if ttl > 0 and not (st.flags & entry.NO_CACHE) else "stale"
        out = Lookup(REVALIDATE if (st.etag or st.last_modified) else MISS, fwd)
        out.key = key
        out.stored = st
        out.ttl = int(ttl) if ttl > 0 else -int(staleness)
        out.conditional = self._conditional(st, request)
        out.stale_if_error = self._may_serve_on_error(st, staleness, rcc)
        return out

    @staticmethod
    def _may_serve_on_error(st: entry.Stored, staleness: float, rcc: dict) -> bool:
        # RFC 5861 4: only with stale-if-error's permission, the response's or this
        # request's own (its scope is the request it appears in), and RFC 9111 4.2.4 never
        # against no-cache (5.2.2.4), must-revalidate, proxy-revalidate or s-maxage: those
        # forbid any use without validation, and an entry the cache would need to
        # validate is not made servable by being fresh (negative staleness).
        if st.flags & (entry.MUST_REVALIDATE | entry.NO_CACHE):
            return False
        if st.sie > 0 and staleness <= st.sie:
            return True
        if b"stale-if-error" in rcc:
            allowed = delta_seconds(rcc[b"stale-if-error"])
            return allowed is not None and staleness <= allowed
        return False

    def uncacheable(self, request, fwd: str, extra: bytes = b"") -> Lookup:
        """The lookup of a request the cache cannot answer (a 504 if it says only-if-cached)."""
        return self._miss(_request_cc(request), fwd, "", extra)

    def _miss(self, rcc: dict, fwd: str, detail: str = "", extra: bytes = b"") -> Lookup:
        if b"only-if-cached" in rcc:
            return self._gateway_timeout(extra)
        return Lookup(MISS, fwd, detail)

    def _gateway_timeout(self, extra: bytes) -> Lookup:
        out = Lookup(GATEWAY_TIMEOUT, "", "only-if-cached")
        out.status = 504
        body = b"not in cache (only-if-cached)\n"
        out.buffers = [
            b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n%s%s; fwd=miss; detail=only-if-cached\r\n\r\n"
            % (len(body), extra, b"Cache-Status: " + self._name), body]
        return out

    @staticmethod
    def _conditional(st: entry.Stored, request) -> bytes:
        # RFC 9111 4.3.1: send every validator the stored response has, unless
        # the client sent its own preconditions: those are forwarded as they
        # are (If-Modified-Since is a singleton), and refresh() only updates
        # the entry if the 304 carries the entry's validator.
        if request.get(b"if-none-match") is not None or request.get(b"if-modified-since") is not None:
            return b""
        out = b""
        if st.etag:
            out += b"If-None-Match: " + st.etag + b"\r\n"
        if st.last_modified:
            out += b"If-Modified-Since: " + st.last_modified + b"\r\n"
        return out

    def _hit(self, st: entry.Stored, key: bytes, request, age: float, ttl: float,
             extra: bytes, detail: str = "", status: bytes = b"") -> Lookup:
        out = Lookup(HIT, "", detail)
        out.key = key
        out.stored = st
        out.ttl = int(ttl) if ttl >= 0 else -int(-ttl)
        if not status:
            status = b"%s; ttl=%d" % (self._hit_status, out.ttl)
            if detail:
                status += b"; detail=" + detail.encode()
        else:
            status = b"Cache-Status: " + self._name + status % out.ttl
        out.status = st.status
        if self._client_not_modified(st, request):
            out.client_304 = True
            out.status = 304
            out.buffers = [self._not_modified_head(st, age, extra, status)]
            return out
        mv = memoryview(st.value)
        tail = b"Age: %d\r\n%s%s\r\n\r\n" % (int(age), extra, status)
        if request.method == b"HEAD":
            out.buffers = [mv[st.head_start:st.body_start], tail]
        else:
            out.buffers = [mv[st.head_start:st.body_start], tail, mv[st.body_start:]]
        return out

    @staticmethod
    def _client_not_modified(st: entry.Stored, request) -> bool:
        # RFC 9111 4.3.2 with RFC 9110 13.1.2 / 13.1.3 and the order of 13.2.2.
        inm = request.get(b"if-none-match")
        if inm is not None:
            if not 200 <= st.status < 300:     # RFC 9110 13.2.1
                return False
            tags = parse_etags(b",".join(request.get_all(b"if-none-match")))
            if tags is None:
                return True
            return bool(st.etag) and any(weak_match(t, st.etag) for t in tags)
        ims = request.get(b"if-modified-since")
        if ims is not None and 200 <= st.status < 300:
            t = parse_http_date(ims)
            return t is not None and st.ims_basis <= t
        return False

    def _not_modified_head(self, st: entry.Stored, age: float, extra: bytes, status: bytes) -> bytes:
        _, fields = entry.parse_head(st.head)
        keep = [(n, v) for n, v in fields if n.lower() in _NOT_MODIFIED_FIELDS]
        return (entry.build_head(b"HTTP/1.1 304 Not Modified", keep)
                + b"Age: %d\r\n%s%s\r\n\r\n" % (int(age), extra, status))

    # ------------------------------------------------------------------ storing

    def storable(self, request, response, now: float | None = None) -> Decision:
        """Decide whether response (to request) may be stored (RFC 9111 3)."""
        if request.method != b"GET":
            return Decision(False, "method")
        status = response.status
        if status < 200 or status in (206, 304):
            return Decision(False, "status")
        rcc = _request_cc(request)
        if b"no-store" in rcc:                                 # 5.2.1.5
            return Decision(False, "request-no-store")
        cc = response_cache_control(response, self._targeted)
        if cc.malformed:
            # Fail safe: a field we cannot read may have said private or no-store.
            return Decision(False, "malformed-cache-control")
        if b"must-understand" in cc:                           # 5.2.2.3
            if status not in UNDERSTOOD_STATUSES:
                return Decision(False, "must-understand")
        elif b"no-store" in cc:                                # 5.2.2.5
            return Decision(False, "no-store")
        if private_all(cc):                                    # 5.2.2.7 (qualified: see store)
            return Decision(False, "private")
        if (request.get(b"authorization") is not None          # 3.5
                and not (b"public" in cc or b"s-maxage" in cc or b"must-revalidate" in cc)):
            return Decision(False, "authorization")
        if (response.get(b"set-cookie") is not None and not self.config.store_set_cookie
                and b"set-cookie" not in withheld_fields(cc)):
            return Decision(False, "set-cookie")
        vary_values = response.get_all(b"vary")
        vary = tuple(sorted({v.lower() for v in split_list(vary_values)})) if vary_values else ()
        if b"*" in vary:                                       # 4.1: never matches
            return Decision(False, "vary-star")
        explicit = (b"max-age" in cc or b"s-maxage" in cc
                    or (not cc.targeted and response.get(b"expires") is not None))
        if not (explicit or b"public" in cc or status in self.config.heuristic_statuses):
            return Decision(False, "status")
        length = getattr(response, "content_length", -1)
        if length is not None and length > self.config.max_object_size:
            return Decision(False, "too-large")
        if (response.get(b"etag") is None and response.get(b"last-modified") is None
                and not self._may_be_fresh(response, cc)
                and not self._may_serve_stale_on_error(cc)):
            # Without a validator it could never be reused (store() would refuse it): say
            # so now, before the head goes out.
            return Decision(False, "no-freshness")
        return Decision(True, "", cc, vary)

    def _may_serve_stale_on_error(self, cc: dict) -> bool:
        # What store() and _may_serve_on_error() will allow, read from the directives.
        if (validate_always(cc) or b"must-revalidate" in cc or b"proxy-revalidate" in cc
                or b"s-maxage" in cc):
            return False
        return directive_seconds(cc, b"stale-if-error", self.config.default_stale_if_error) > 0

    @staticmethod
    def _may_be_fresh(response, cc: CacheControl) -> bool:
        # Some freshness lifetime above zero is possible (RFC 9111 4.2.1); heuristic
        # freshness needs Last-Modified, checked by the caller.
        if validate_always(cc):
            return False
        for name in (b"s-maxage", b"max-age"):
            if name in cc:
                return bool(delta_seconds(cc[name]))
        return not cc.targeted and response.get(b"expires") is not None

    def store(self, request, key_base: bytes, response, body: bytes,
              request_time: float, response_time: float,
              decision: Decision | None = None, origin: bytes = b"",
              codings: tuple = ()) -> bool:
        """Store a complete response (body dechunked); return True if it was stored.

        `origin` is the address it came from (forward mode; see lookup's `origins`).
        `codings`: the listener encodes this response itself with these codings; it is
        stored as the identity variant of a stub naming CODING (with `Vary:
        Accept-Encoding`, which its answers carry), and the encoded copies of the
        response it replaces are dropped (`store_encoded` makes new ones on demand).
        """
        if decision is None:
            decision = self.storable(request, response, response_time)
        if not decision.store or len(body) > self.config.max_object_size:
            return False
        cc = decision.cc
        fields = response.headers()
        # Age and Date (RFC 9111 4.2.3, RFC 9110 6.6.1 for a missing Date).
        date_value = parse_http_date(response.get(b"date"))
        if date_value is None:
            date_value = response_time
        apparent_age = max(0.0, response_time - date_value)
        corrected_age_value = (age_value(response.get_all(b"age"))
                               + max(0.0, response_time - request_time))
        corrected_initial_age = max(apparent_age, corrected_age_value)

        lm_raw = response.get(b"last-modified") or b""
        last_modified = parse_http_date(lm_raw) if lm_raw else None
        if lm_raw and last_modified is None:
            lm_raw = b""     # an invalid validator cannot be sent back
        etag = response.get(b"etag") or b""
        lifetime = self._lifetime(response, cc, date_value, last_modified)
        flags = entry.CODED if codings else 0
        if b"must-revalidate" in cc or b"proxy-revalidate" in cc or b"s-maxage" in cc:
            flags |= entry.MUST_REVALIDATE
        if validate_always(cc):
            flags |= entry.NO_CACHE
        swr = sie = 0.0
        if not flags & entry.MUST_REVALIDATE:
            swr = directive_seconds(cc, b"stale-while-revalidate",
                                     self.config.default_stale_while_revalidate)
            sie = directive_seconds(cc, b"stale-if-error", self.config.default_stale_if_error)
        if (not (etag or lm_raw) and (lifetime <= 0 or flags & entry.NO_CACHE)
                and not (sie and not flags & entry.NO_CACHE)):
            return False     # it could never be reused

        vary = decision.vary
        if codings:
            # The origin's own Accept-Encoding dependence is this listener's now: it
            # answers every client from the identity bytes, in the coding it negotiates.
            vary = tuple(n for n in vary if n != b"accept-encoding") + (CODING,)
            if b"accept-encoding" not in decision.vary:
                fields = fields + [(b"Vary", b"Accept-Encoding")]
        head = self._stored_head(response, fields, len(body), date_value, withheld_fields(cc))
        ims_basis = last_modified if last_modified is not None else date_value
        parts = entry.encode(response.status, flags, head, body, etag, lm_raw, response_time,
                             corrected_initial_age, lifetime, swr, sie, ims_basis, origin)
        if etag or lm_raw:
            expires = _INF     # worth keeping for revalidation until evicted
        else:
            expires = (response_time - corrected_initial_age + lifetime
                       + max(swr, sie, self.config.keep_stale))
        key = self._key_for_store(request, key_base, vary, response_time, codings)
        if key is None:
            return False
        return self.ring.set(key, parts, expires=expires, now=response_time)

    def _key_for_store(self, request, key_base: bytes, vary: tuple, now: float,
                       codings: tuple = ()) -> bytes | None:
        if not vary:
            return key_base
        current = self.ring.get(key_base, now)
        if current is not None and current[0] == entry.KIND_STUB:
            names, epoch = entry.decode_stub(current)
            if names != vary:
                epoch = int.from_bytes(os.urandom(8), "little")
                if not self.ring.set(key_base, entry.encode_stub(vary, epoch), now=now):
                    return None
        else:
            epoch = int.from_bytes(os.urandom(8), "little")
            if not self.ring.set(key_base, entry.encode_stub(vary, epoch), now=now):
                return None
        for coding in codings:
            # Copies encoded from the response being replaced must not outlive it.
            self.ring.delete(variant_key(key_base, epoch, vary, request, coding))
        return variant_key(key_base, epoch, vary, request)

    def _lifetime(self, response, cc: CacheControl, date_value: float, last_modified: float | None) -> float:
        # RFC 9111 4.2.1: s-maxage, then max-age, then Expires - Date, then 4.2.2.
        if b"s-maxage" in cc:
            v = delta_seconds(cc[b"s-maxage"])
            return float(v) if v is not None else 0.0   # invalid: stale
        if b"max-age" in cc:
            v = delta_seconds(cc[b"max-age"])
            return float(v) if v is not None else 0.0
        # RFC 9213 2.1: with a targeted field in charge, Expires is ignored too.
        expires_values = None if cc.targeted else response.get_all(b"expires")
        if expires_values:
            # 5.3: an invalid Expires (e.g. "0") is a time in the past.
            exp = parse_http_date(expires_values[0])
            return max(0.0, exp - date_value) if exp is not None else 0.0
        if last_modified is not None and (response.status in self.config.heuristic_statuses
                                          or b"public" in cc):
            return min(self.config.heuristic_max,
                       max(0.0, (date_value - last_modified) * self.config.heuristic_fraction))
        return 0.0

    def _stored_head(self, response, fields, body_len: int, date_value: float,
                     withheld: frozenset[bytes]) -> bytes:
        drop = (entry.HOP_BY_HOP | entry.connection_listed(fields) | withheld
                | {b"age", b"content-length"})
        if self.config.store_set_cookie:
            drop = drop | {b"set-cookie", b"set-cookie2"}
        kept = [(n, v) for n, v in fields if n.lower() not in drop]
        if response.get(b"date") is None:
            kept.append((b"Date", format_http_date(date_value)))
        kept.append((b"Content-Length", b"%d" % body_len))
        reason = getattr(response, "reason", b"") or b""
        return entry.build_head(b"HTTP/1.1 %d %s" % (response.status, reason), kept)

    # ------------------------------------------------------------------ stale on error

    def serve_stale(self, lookup: Lookup, request, now: float, fwd_status: int = 0,
                    extra: bytes = b"") -> Lookup | None:
        """Buffers of the stale entry after an upstream error, if stale-if-error allows it."""
        st = lookup.stored
        if st is None or not lookup.stale_if_error:
            return None
        age = st.age(now)
        if not self._may_serve_on_error(st, age - st.lifetime, _request_cc(request)):
            return None
        fwd = b"; fwd=stale; fwd-status=%d" % fwd_status if fwd_status else b"; fwd=stale"
        return self._hit(st, lookup.key, request, age, st.lifetime - age, extra, "stale-if-error",
                         status=fwd + b"; ttl=%d; detail=stale-if-error")

    # ------------------------------------------------------------------ Cache-Status

    def status_field(self, lookup: Lookup | None, decision: Decision | None = None,
                     fwd_status: int = 0, stored: bool = False, collapsed: bool = False) -> bytes:
        """The Cache-Status field line (RFC 9211) for a response that went upstream."""
        fwd = (lookup.fwd if lookup is not None and lookup.fwd else "uri-miss")
        out = b"Cache-Status: " + self._name + b"; fwd=" + fwd.encode()
        if fwd_status:
            out += b"; fwd-status=%d" % fwd_status
        if stored:
            out += b"; stored"
        if collapsed:
            out += b"; collapsed"
        detail = (decision.detail if decision is not None and not decision.store and decision.detail
                  else (lookup.detail if lookup is not None else ""))
        if detail:
            out += b"; detail=" + detail.encode()
        return out + b"\r\n"

    # ------------------------------------------------------------------ invalidation

    def invalidate(self, request, status: int, key_base: bytes,
                   location: bytes | None = None, content_location: bytes | None = None,
                   ns: bytes = b"") -> int:
        """After a response to an unsafe method, drop the URIs it may have changed (RFC 9111 4.4).

        key_base is the target URI; `ns` prefixes every stored key (a listener's namespace).

        Returns how many stored keys were removed.
        """
        if request.method in SAFE_METHODS or not (200 <= status < 400):
            return 0
        removed = self.purge(ns + key_base)
        origin = origin_of(key_base)
        for ref in (location, content_location):
            if not ref:
                continue
            target = resolve_ref(key_base, ref)
            # Only the same origin: another origin's entries are not this
            # server's to invalidate (a denial-of-service vector otherwise).
            if target is not None and origin_of(target) == origin:
                removed += self.purge(ns + target)
        return removed

    def purge(self, url: bytes) -> int:
        """Remove the stored response(s) for one URL, all Vary variants included."""
        value = self.ring.get(url, now=0.0)    # 0: expired entries are purged too
        if value is None:
            return 0
        self.ring.delete(url)
        if value[0] == entry.KIND_STUB:
            # Variants become unreachable with their stub; delete them too so the
            # space is reported free right away.
            return 1 + self.ring.delete_prefix(url + b"\x00")
        return 1

    def purge_prefix(self, prefix: bytes) -> int:
        """Remove every stored key starting with prefix (variants included)."""
        return self.ring.delete_prefix(prefix)

    def stats(self) -> dict:
        """Store counters (hits, misses, inserts, evictions, bytes, ...)."""
        return self.ring.stats()

