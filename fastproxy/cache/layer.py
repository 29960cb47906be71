"""The cache step of the data path: answer from the HTTP cache, or go upstream and store.

A listener with a cache hands every request to `CacheLayer.handle(conn, req)` before
routing. What happens next depends on the lookup (`fastproxy.cache.HttpCache`, RFC 9111):

    fresh hit              conn.respond(stored head + Age + Cache-Status, body): one write
    stale, swr allows      the same, then one background revalidation per entry (fetch.py)
    only-if-cached, none   504 (RFC 9111 5.2.1.7)
    miss / must revalidate upstream through the handler, with the entry's validators
                           added; an `_Exchange` observes the response on the relay:
                           stores it, turns a 304 into the refreshed entry (4.3.4), or an
                           upstream error into the stale entry (stale-if-error), and
                           invalidates after unsafe methods (4.4)
    PURGE                  from clients in `cache.purge_allow` only: drop the URL (a
                           target ending in "*" drops the prefix)
    HEAD or Range, miss    fill.py: fetch the whole response with a GET, store it,
                           answer from it
    coding without a copy  fill.py (compressing listener): encode the stored identity
                           response once, store the copy, answer from it

Concurrent GET misses for one URL are coalesced: the first goes upstream, the others wait
(up to `coalesce_timeout`) and answer from what it stored, or go upstream themselves when
it stored nothing. Every response of a caching listener carries `Cache-Status` (RFC 9211);
the access log gets `cache=HIT|MISS|...`.

The handler the layer serves calls `handle(conn, req, ctx)` and must offer
`forward(conn, req, more, ctx)` (route and send upstream with `more` field lines added)
and `refresh_target(conn, req, more, ctx)` (where a background request would go: (host,
port, ssl, server_hostname, head) or None); `ctx` is the handler's own, passed through
(the forward handler's admitted target, None in reverse mode).

In forward mode the handler admits a request fully (ACL on the client, the destination
name and every address it resolves to, port and method) before calling `handle`, and
passes `origins`: the addresses, as bytes, this client may reach for that destination.
Each stored response remembers the address it was fetched from, and is used (served,
revalidated, served stale) only for a client whose `origins` include that address, so
neither a client the rules refuse nor one for whom the name now resolves elsewhere is
answered with what another client fetched.

Each worker has its own cache (`WorkerCache`, cache/worker.py); its listeners share the store but each
keys its entries under its own namespace ("L<index> "), so two listeners that route the
same Host and path to different servers (or a forward and a reverse listener) never
answer with each other's responses. Purge by URL reaches every namespace.
"""
from __future__ import annotations

import asyncio
import time

from fastproxy import _http
from fastproxy._hitpath import FreshHits
from fastproxy._relay import STATE_CLOSED, date_line
from fastproxy.addresses import client_key
from fastproxy.cache import GATEWAY_TIMEOUT, HIT, STALE, cache_key
from fastproxy.cache.policy import SAFE_METHODS, Decision
from fastproxy.cache.fetch import FetchError, fetch
from fastproxy.cache.peers import HOP, PeerRing
from fastproxy.cache.fill import encode_copy, fill
from fastproxy.cache.ranges import hit_buffers, respond_hit
from fastproxy.cache.worker import WorkerCache

BODY_NONE = _http.BODY_NONE
BODY_LENGTH = _http.BODY_LENGTH
BODY_CLOSE = _http.BODY_CLOSE
TARGET_ORIGIN = _http.TARGET_ORIGIN
TARGET_ABSOLUTE = _http.TARGET_ABSOLUTE
_time = time.time

GET = b"GET"
HEAD = b"HEAD"
PURGE = b"PURGE"

# Access log fields (shared dicts: the log only reads them).
LOG_HIT = {"cache": "HIT"}
LOG_STALE = {"cache": "STALE"}
LOG_MISS = {"cache": "MISS"}
LOG_REVALIDATE = {"cache": "REVALIDATE"}
LOG_REVALIDATED = {"cache": "REVALIDATED"}
LOG_STALE_ERROR = {"cache": "STALE-IF-ERROR"}
LOG_COLLAPSED = {"cache": "COLLAPSED"}
LOG_BYPASS = {"cache": "BYPASS"}
LOG_ONLY_IF_CACHED = {"cache": "ONLY-IF-CACHED"}
LOG_PURGE = {"cache": "PURGE"}
LOG_SHARED = {"cache": "HIT-SHARED"}
LOG_PEER = {"cache": "PEER"}

_CLOSE_DELIMITED = Decision(False, "close-delimited")
_CANARY_SPLIT = Decision(False, "canary-split")


def _body_len(buffers) -> int:
    # Responses from the cache are [head, tail] (HEAD, 304) or [head, tail, body].
    return len(buffers[2]) if len(buffers) == 3 else 0


def _log(conn, fields: dict) -> None:
    """Set the access log's cache field, keeping what the handler logged (user, acl)."""
    extra = conn.log_extra
    if extra is None or extra is fields or "cache" in extra and len(extra) == 1:
        conn.log_extra = fields
    else:
        conn.log_extra = {**extra, **fields}


def _conditional(req) -> bool:
    return req.get(b"if-none-match") is not None or req.get(b"if-modified-since") is not None


class CacheLayer:
    """The cache step of one listener: lookup, coalescing, PURGE; `_Exchange` does the rest."""

    LOG_MISS = LOG_MISS       # for fill.py, which cannot import this module

    def __init__(self, wc: WorkerCache, handler, scheme: bytes, via: bytes, loop,
                 timeouts, limits, index: int = 0) -> None:
        self.wc = wc
        self.cache = wc.http
        self.handler = handler
        self.scheme = scheme
        self.ns = b"L%d " % index        # this listener's key namespace
        self.namespaces = (self.ns,)
        wc.namespaces.add(self.ns)
        self.loop = loop
        self.coalesce = wc.config.coalesce
        self.max_object_size = wc.config.max_object_size
        self.name = wc.config.cache_name.encode()
        # Lines added to responses written from the cache, by connection state: the relay
        # adds Via and Connection to relayed responses, so stored ones get the same.
        self.x_keep = via
        self.x_keep10 = via + b"Connection: keep-alive\r\n"
        self.x_close = via + b"Connection: close\r\n"
        self.refresh_timeout = timeouts.upstream_connect + timeouts.upstream_header
        self.max_head = limits.max_header_size
        self._prefixes: dict = {}
        self.peers: PeerRing | None = None     # a peers.PeerRing when this node is part of a caching fleet
        # The listener's compression (proxy/compress.Compression), None when off: set
        # by the worker through `compress_with`.
        self.compression = None
        self.negotiate = None
        self.codings: tuple = ()
        # The listener's route response-header edits (proxy.filters.edits_factory), None
        # when no route has any: hits get them as relayed responses do.
        self.edits = None
        self.fast: FreshHits | None = None     # the relay's fast path (fresh_hits), once made

    def storable(self, req, resp, now: float) -> Decision:
        """cache.storable, keyed also on the fields the listener's routes choose by.

        The cache answers before routing, so a response a route condition (`headers`) or
        canary (`force`, `key`) chose must be a variant of those fields, as if the
        response said Vary for them: else one client's `X-Env: beta` fills the entry
        every client is answered with. A split no field decides is not stored."""
        decision = self.cache.storable(req, resp, now)
        router = getattr(self.handler, "router", None)
        if not decision.store or router is None:
            return decision
        if router.split_unkeyed(req.host, req.target):
            return _CANARY_SPLIT
        if router.cache_vary:
            vary = tuple(sorted(set(decision.vary).union(router.cache_vary)))
            return Decision(True, decision.detail, decision.cc, vary)
        return decision

    def fresh_hits(self) -> FreshHits:
        """The relay's compiled fast path for this listener's fresh hits (hitpath.pyx)."""
        fast = FreshHits(self.cache.ring, self.ns, self.scheme, self.name, self.x_keep, LOG_HIT,
                         self.wc.config.zero_copy_min - 1, self.negotiate)
        self.wc.fast.append(fast)
        self.fast = fast
        return fast

    def compress_with(self, compression) -> None:
        """Store what this listener compresses once per negotiated coding (issue 13).

        A response the listener would encode is stored as its identity variant (Vary
        stub naming keys.CODING); a hit whose coding has no copy yet encodes one from
        the stored identity response, stores it, and answers from it, so every later hit
        in that coding is a stored response like any other (no compression per hit).
        """
        self.compression = compression
        self.negotiate = compression.coding_for if compression is not None else None
        self.codings = compression.offered if compression is not None else ()
        if self.fast is not None:
            # Hits on encoded copies are the relay's too (hitpath: the `:coding` stub).
            self.fast.negotiate = self.negotiate

    def codings_for(self, resp) -> tuple:
        """The codings resp is stored for (see compress_with); () when not encoded here."""
        if self.compression is None or self.compression.inspect(resp.status,
                                                                resp.headers()) is None:
            return ()
        return self.codings

    # -- keys -------------------------------------------------------------------

    def key(self, req, scheme: bytes | None = None) -> bytes | None:
        """The store key of req: namespace + scheme://host/target, normalised (None: unusable).

        `scheme`: of a fleet peer's hop, when its client used another than this listener's."""
        if req.target_form == TARGET_ORIGIN:
            host = req.host
            if scheme is not None and scheme != self.scheme:
                return self.ns + cache_key(scheme, host or b"", req.target)
            prefix = self._prefixes.get(host)
            if prefix is None:
                # Host is the client's to choose: the memo is bounded.
                if len(self._prefixes) >= 256:
                    self._prefixes.clear()
                prefix = self._prefixes[host] = (
                    self.ns + cache_key(self.scheme, host or b"", b"")[:-1])
            return prefix + req.target
        if req.target_form == TARGET_ABSOLUTE:
            try:
                scheme, host, port, path = _http.split_absolute(req.target)
            except _http.ParseError:
                return None
            if b":" in host:
                host = b"[" + host + b"]"
            if port >= 0:
                host += b":%d" % port
            return self.ns + cache_key(scheme, host, path)
        return None

    def extra(self, conn, req) -> bytes:
        """Via and Connection lines for a response written from the cache."""
        if not conn.keep_alive or not conn.body_done:
            return self.x_close
        # Only HTTP/1.0 needs keep-alive said; an HTTP/2 stream (version 20) takes none.
        return self.x_keep10 if req.version == 10 else self.x_keep

    def gateway_timeout(self, conn, lk) -> None:
        """Answer only-if-cached when nothing stored can (RFC 9111 5.2.1.7)."""
        _log(conn, LOG_ONLY_IF_CACHED)
        buffers = lk.buffers
        conn.respond(buffers, 504, len(buffers[1]))

    # -- the request ------------------------------------------------------------

    def handle(self, conn, req, ctx=None, origins=None, encoded: bool = False) -> None:
        """Answer req from the cache, wait for a coalesced request, or send it upstream.

        `origins`: forward mode's admitted destination addresses (see the module doc);
        `encoded`: an encoded copy was just made for req (do not try again)."""
        method = req.method
        if method == PURGE:
            self.purge(conn, req)
            return
        scheme = None
        if self.peers is not None and self.peers.trusts(conn, req):
            scheme = self.peers.hop_scheme(req)   # the asking node's client's scheme
        key = self.key(req, scheme)
        is_get = method == GET
        if key is None or req.upgrade is not None or (
                conn.body_kind != BODY_NONE and (is_get or method == HEAD)):
            # A GET with a body has no defined semantics (RFC 9110 9.3.1); an Upgrade is
            # a tunnel request: neither is answered from nor stored in the cache.
            lk = self.cache.uncacheable(req, "bypass", self.extra(conn, req))
            if lk.kind is GATEWAY_TIMEOUT:
                self.gateway_timeout(conn, lk)
            else:
                self.go(conn, req, key, None, False, LOG_BYPASS, ctx, origins)
            return
        now = _time()
        lk = self.cache.lookup(req, key, now, self.extra(conn, req), origins,
                               self.negotiate)
        kind = lk.kind
        if kind is HIT:
            self.wc.hits += 1
            _log(conn, LOG_HIT)
            respond_hit(conn, req, lk, self.edits)
            return
        if lk.coding is not None and not encoded and encode_copy(
                self, conn, req, key, lk.coding, ctx, origins):
            return
        if kind is STALE:
            self.wc.stale += 1
            _log(conn, LOG_STALE)
            self.refresh_later(conn, req, key, lk, ctx, origins)
            respond_hit(conn, req, lk, self.edits)
            return
        if kind is GATEWAY_TIMEOUT:
            self.gateway_timeout(conn, lk)
            return
        leader = False
        if is_get or method == HEAD:
            if self.coalesce and req.cache_control is None:
                coalescer = self.wc.coalescer
                fut: asyncio.Future | None
                # A HEAD miss is filled with a GET (fill below): it leads as a GET does.
                leader, fut = coalescer.begin(key)
                if not leader and fut is not None:
                    _Follower(self, conn, req, key, fut, ctx, origins)
                    return
        else:
            self.go(conn, req, key, lk, False, LOG_BYPASS, ctx, origins)
            return
        wc = self.wc
        peers = self.peers
        if peers is not None and req.get(HOP) is None:
            owner = peers.owner(key[len(self.ns):])
            if owner is not None:
                # Another node owns this key: it answers, or fetches once for the fleet.
                wc.peer_asked += 1
                wc.misses += 1
                self.go(conn, req, key, lk, leader, LOG_PEER, ctx, origins,
                        (peers.group, owner))
                return
        if (wc.shared is not None and lk.stored is None and req.cache_control is None
                and req.get(b"pragma") is None):
            # Nothing here: the shared tier before the origin (a coalescing leader asks
            # for its followers too).
            task = self.loop.create_task(self._from_shared(conn, req, key, lk, leader, ctx,
                                                           origins))
            wc.tasks.add(task)
            task.add_done_callback(wc.tasks.discard)
            return
        self.miss(conn, req, key, lk, leader, ctx, origins)

    def note_miss(self, conn) -> None:
        """The access log's cache field for a request answered after a miss."""
        _log(conn, LOG_MISS)

    def miss(self, conn, req, key, lk, leader: bool, ctx, origins) -> None:
        """Nothing stored answers req: fill the cache with a GET for a HEAD or a Range
        request, else send req upstream."""
        self.wc.misses += 1
        if lk.stored is None and (req.method == HEAD or req.get(b"range") is not None):
            target = self.handler.refresh_target(conn, req, b"", ctx)
            if target is not None:
                task = self.loop.create_task(fill(self, conn, req, key, lk, leader, ctx,
                                                  origins, target))
                self.wc.tasks.add(task)
                task.add_done_callback(self.wc.tasks.discard)
                return
        self.go(conn, req, key, lk, leader, LOG_REVALIDATE if lk.conditional else LOG_MISS,
                ctx, origins)

    async def _from_shared(self, conn, req, key, lk, leader: bool, ctx, origins) -> None:
        """Answer a local miss from the shared tier, or send it upstream as before."""
        wc = self.wc
        assert wc.shared is not None   # only called with a shared tier
        try:
            stored = await wc.shared.fetch_into(self.cache.ring, key, req, lk.fwd == "vary-miss")
        except Exception:   # noqa: BLE001 - whatever went wrong, the origin still answers
            stored = False
        if conn.req is not req or conn.state == STATE_CLOSED:
            if leader:
                wc.coalescer.finish(key, None)
            return     # the client left while Redis answered
        if stored:
            found = self.cache.lookup(req, key, _time(), self.extra(conn, req), origins,
                                      self.negotiate)
            if found.kind is HIT:
                wc.hits += 1
                _log(conn, LOG_SHARED)
                if leader:
                    wc.coalescer.finish(key, True)
                respond_hit(conn, req, found, self.edits)
                return
            if found.coding is not None:
                # The identity response came from the tier; this client's coding is
                # made from it here (its waiters look again for themselves).
                if leader:
                    wc.coalescer.finish(key, None)
                    leader = False
                if encode_copy(self, conn, req, key, found.coding, ctx, origins):
                    return
            if found.kind is not GATEWAY_TIMEOUT:
                lk = found      # stale there too: revalidate it
        self.miss(conn, req, key, lk, leader, ctx, origins)

    def go(self, conn, req, key, lk, leader: bool, log: dict, ctx, origins=None,
           peer=None) -> None:
        """Send req upstream (or to the owning peer) with an observer that stores,
        refreshes or invalidates."""
        exchange = conn.observer = _Exchange(self, req, key, lk, leader, ctx, origins)
        _log(conn, log)
        more = lk.conditional if lk is not None else b""
        if peer is None:
            self.handler.forward(conn, req, more, ctx)
        else:
            exchange.peer = peer
            assert self.peers is not None    # a peer was chosen from it
            self.handler.forward(conn, req, more + self.peers.hop_line, ctx, peer)

    def after_wait(self, conn, req, key, shared, ctx, origins=None) -> None:
        """A coalesced request's leader finished (or the wait timed out)."""
        lk = self.cache.lookup(req, key, _time(), self.extra(conn, req), origins,
                               self.negotiate)
        if lk.coding is not None and lk.kind is not HIT and encode_copy(
                self, conn, req, key, lk.coding, ctx, origins):
            return
        if lk.kind is HIT and shared:
            self.wc.collapsed += 1
            _log(conn, LOG_COLLAPSED)
            respond_hit(conn, req, lk, self.edits)
            return
        if lk.kind is HIT or lk.kind is STALE:
            # Stored by someone else in the meantime (or still servable stale).
            if lk.kind is HIT:
                self.wc.hits += 1
            else:
                self.wc.stale += 1
            _log(conn, LOG_HIT if lk.kind is HIT else LOG_STALE)
            respond_hit(conn, req, lk, self.edits)
            return
        self.wc.misses += 1
        self.go(conn, req, key, lk, False, LOG_MISS, ctx, origins)

    # -- stale-while-revalidate ------------------------------------------------

    def refresh_later(self, conn, req, key: bytes, lk, ctx, origins=None) -> None:
        """Start one background revalidation of the stale entry lk, unless one runs."""
        wc = self.wc
        if key in wc.refreshing or req.method != GET:
            return   # a HEAD would bring no body to store: the next GET refreshes it
        target = self.handler.refresh_target(conn, req, lk.conditional, ctx)
        if target is None:
            return
        wc.refreshing.add(key)
        # Forward mode: the refreshed entry is from the address the refresh goes to.
        origin = target[0].encode() if origins is not None else b""
        task = self.loop.create_task(self._refresh(key, lk, req, target, origin))
        wc.tasks.add(task)
        task.add_done_callback(wc.tasks.discard)

    async def _refresh(self, key: bytes, lk, req, target, origin: bytes = b"") -> None:
        wc = self.wc
        cache = self.cache
        host, port, ssl, server_hostname, head = target
        try:
            t_request = _time()
            resp, body = await fetch(host, port, head, ssl=ssl, server_hostname=server_hostname,
                                     timeout=self.refresh_timeout, max_head=self.max_head,
                                     max_body=self.max_object_size)
            t_response = _time()
            if resp.status == 304:
                if cache.refresh(lk, req, resp, t_request, t_response) is not None:
                    wc.revalidated += 1
            elif resp.status < 500:
                decision = self.storable(req, resp, t_response)
                if decision and body is not None:
                    if cache.store(req, key, resp, body, t_request, t_response, decision,
                                   origin, self.codings_for(resp)):
                        wc.stores += 1
                else:
                    # The new response may not be stored: the old one must not be served
                    # in its place any longer.
                    cache.ring.delete(lk.key)
            # A 5xx leaves the stale entry for stale-if-error to use.
            wc.refreshes += 1
        except (FetchError, asyncio.TimeoutError, OSError):
            wc.refresh_failures += 1
        finally:
            wc.refreshing.discard(key)

    # -- PURGE ------------------------------------------------------------------

    def purge(self, conn, req) -> None:
        """PURGE on the data path: drop the target URL (or prefix, with a trailing "*")."""
        _log(conn, LOG_PURGE)
        status_line = b"Cache-Status: " + self.name + b"; detail=purge\r\n"
        try:
            allowed = self.wc.purge_allow.contains(client_key(conn.client_ip))
        except ValueError:
            allowed = False
        if not allowed:
            conn.respond_error(403, "PURGE is not allowed from this address", status_line)
            return
        key = self.key(req)
        if key is None:
            conn.respond_error(400, "PURGE needs an origin-form or absolute-form target",
                               status_line)
            return
        # This listener's entries only: the request names a URL as this listener sees it.
        url = key[len(self.ns):]
        if url.endswith(b"*"):
            n = self.wc.purge_prefix(url[:-1], self.namespaces)
        else:
            n = self.wc.purge(url, self.namespaces)
        body = b'{"purged": %d}\n' % n
        status = 200 if n else 404
        head = (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                % (status, b"OK" if n else b"Not Found", len(body)) + date_line()
                + self.extra(conn, req) + status_line + b"\r\n")
        conn.respond([head, body] if not conn.head_request else [head], status,
                     0 if conn.head_request else len(body))


class _Follower:
    """A request waiting for a coalesced leader's response."""

    __slots__ = ("layer", "conn", "req", "key", "timer", "fired", "ctx", "origins")

    def __init__(self, layer: CacheLayer, conn, req, key: bytes, fut, ctx, origins) -> None:
        self.layer = layer
        self.conn = conn
        self.req = req
        self.key = key
        self.ctx = ctx
        self.origins = origins
        self.fired = False
        self.timer = layer.loop.call_later(layer.wc.coalescer.timeout, self.timed_out)
        fut.add_done_callback(self.done)

    def done(self, fut) -> None:
        self.wake(None if fut.cancelled() else fut.result())

    def timed_out(self) -> None:
        if not self.fired:
            self.layer.wc.coalescer.timeouts += 1
            self.wake(None)

    def wake(self, shared) -> None:
        if self.fired:
            return
        self.fired = True
        self.timer.cancel()
        conn = self.conn
        if conn.req is not self.req or conn.state == STATE_CLOSED:
            return   # the client left while waiting
        self.layer.after_wait(conn, self.req, self.key, shared, self.ctx, self.origins)


class _Exchange:
    """Observer of one upstream exchange (the relay's `conn.observer` protocol)."""

    __slots__ = ("layer", "req", "key", "lookup", "leader", "t_request", "t_response",
                 "resp", "decision", "parts", "size", "location", "content_location",
                 "replayed", "shared", "ctx", "origins", "origin", "peer")

    def __init__(self, layer: CacheLayer, req, key, lookup, leader: bool, ctx,
                 origins=None) -> None:
        self.layer = layer
        self.ctx = ctx
        self.origins = origins     # forward mode: record where the response came from
        self.origin = b""
        self.req = req
        self.key = key
        self.lookup = lookup
        self.leader = leader
        self.t_request = _time()
        self.t_response = 0.0
        self.resp = None
        self.decision = None
        self.parts = None
        self.size = 0
        self.location = None
        self.content_location = None
        self.replayed = False
        self.shared = False
        self.peer = None           # (group, server) when the request went to the owning peer

    def _answer(self, conn, hit) -> list:
        """Replace the upstream response with hit's buffers, or the range of it the
        request asks for (relay hook)."""
        buffers, conn.status = hit_buffers(self.req, hit, self.layer.edits)
        conn.sent += _body_len(buffers)
        return buffers

    def response_head(self, conn, resp):
        """The upstream response head: decide what to store; return extra lines or a
        replacement (list of buffers), or False to send the request again."""
        layer = self.layer
        cache = layer.cache
        now = self.t_response = _time()
        status = resp.status
        lk = self.lookup
        req = self.req
        if lk is not None and lk.stored is not None:
            if status == 304 and not self.replayed:
                hit = cache.refresh(lk, req, resp, self.t_request, now, layer.extra(conn, req))
                if hit is not None:
                    layer.wc.revalidated += 1
                    self.shared = True
                    _log(conn, LOG_REVALIDATED)
                    return self._answer(conn, hit)
                if not _conditional(req) and conn.body_done:
                    # RFC 9111 4.3.3: a 304 that selects no stored response cannot answer
                    # an unconditional request: ask again without the validators.
                    self.replayed = True
                    return False
            elif status == 200 and req.method == HEAD:
                cache.freshen(lk, req, resp, self.t_request, now)
            elif status >= 500 and lk.stale_if_error:
                hit = cache.serve_stale(lk, req, now, status, layer.extra(conn, req))
                if hit is not None:
                    layer.wc.stale += 1
                    _log(conn, LOG_STALE_ERROR)
                    return self._answer(conn, hit)
        decision = None
        method = req.method
        if method == GET and lk is not None:
            decision = layer.storable(req, resp, now)
            if decision.store:
                if resp.body == BODY_CLOSE:
                    decision = _CLOSE_DELIMITED
                else:
                    if self.origins is not None:
                        self.origin = conn.upstream.pool.connect_host.encode()
                    self.parts = []
                    self.resp = resp
                    self.decision = decision
        elif method not in SAFE_METHODS:
            self.location = resp.get(b"location")
            self.content_location = resp.get(b"content-location")
        if lk is None:
            return (b"Cache-Status: " + layer.name + b"; fwd=bypass; fwd-status=%d\r\n"
                    % status)
        return cache.status_field(lk, decision, status, stored=self.parts is not None)

    def response_body(self, piece) -> None:
        """A piece of the (de-chunked) response body."""
        parts = self.parts
        if parts is not None:
            self.size += len(piece)
            if self.size > self.layer.max_object_size:
                self.parts = None      # too large after all (chunked): relay, do not store
            else:
                parts.append(piece)

    def exchange_done(self, conn) -> None:
        """The response is complete: store it, or invalidate after an unsafe method."""
        layer = self.layer
        parts = self.parts
        stored = False
        if parts is not None:
            self.parts = None
            resp = self.resp
            if conn.status == resp.status:
                body = b"".join(parts)
                if resp.body != BODY_LENGTH or len(body) == resp.content_length:
                    codings = layer.codings_for(resp)
                    stored = layer.cache.store(self.req, self.key, resp, body, self.t_request,
                                               self.t_response, self.decision, self.origin,
                                               codings)
                    if stored:
                        layer.wc.stores += 1
                        if layer.wc.shared is not None:
                            layer.wc.shared.share_from(layer.cache.ring, self.key, self.req,
                                                       bool(self.decision.vary or codings))
                    else:
                        layer.wc.store_failures += 1
        elif self.req.method not in SAFE_METHODS and self.key is not None:
            ns = layer.ns
            n = layer.cache.invalidate(self.req, conn.status, self.key[len(ns):], self.location,
                                       self.content_location, ns)
            layer.wc.invalidations += n
        if self.leader:
            self.leader = False
            layer.wc.coalescer.finish(self.key, True if (stored or self.shared) else None)

    def exchange_failed(self, conn) -> None:
        """The exchange ended without a complete response: nothing is stored."""
        self.parts = None
        if self.leader:
            self.leader = False
            self.layer.wc.coalescer.finish(self.key, None)

    def replay(self, conn) -> None:
        """Send the request again without the cache's validators (after a stray 304)."""
        self.parts = None
        _log(conn, LOG_MISS)
        self.layer.handler.forward(conn, self.req, b"", self.ctx)

    def upstream_failed(self, conn, status: int, detail: str) -> bool:
        """No response from upstream: answer with the stale entry if allowed, else the error."""
        layer = self.layer
        lk = self.lookup
        if self.peer is not None and not conn.resp_started:
            # The owner did not answer: fetch it here (the peer group ejects the owner,
            # so its keys go to the next node in their preference order meanwhile).
            self.peer = None
            layer.wc.peer_failed += 1
            leader, self.leader = self.leader, False
            layer.go(conn, self.req, self.key, lk, leader, LOG_MISS, self.ctx, self.origins)
            return True
        if lk is not None and lk.stored is not None and lk.stale_if_error:
            hit = layer.cache.serve_stale(lk, self.req, _time(), 0, layer.extra(conn, self.req))
            if hit is not None:
                layer.wc.stale += 1
                _log(conn, LOG_STALE_ERROR)
                buffers, status = hit_buffers(self.req, hit, self.layer.edits)
                conn.respond(buffers, status, _body_len(buffers))
                return True
        conn.respond_error(status, detail, self.status_line())
        return True

    def status_line(self) -> bytes:
        """Cache-Status for an error the proxy answers itself on this exchange."""
        if self.lookup is None:
            return b"Cache-Status: " + self.layer.name + b"; fwd=bypass\r\n"
        return self.layer.cache.status_field(self.lookup)

