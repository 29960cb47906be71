"""Forward mode: fetch on a client's behalf (absolute-form) or open a CONNECT tunnel.

The data path's "route" step becomes: rate limit -> authenticate (Proxy-Authorization)
-> take the destination from the target (RFC 9112 3.2.2 absolute-form, 3.2.3
authority-form) -> ACL phase one -> resolve (cached, coalesced) -> ACL phase two for
each address, in order -> the cache, if the listener has one -> connect to the first
allowed address. The address checked is the address connected, so a name that
re-resolves elsewhere (DNS rebinding) cannot slip past a destination rule; and the
cache answers only after the same full admission, and only with an entry fetched from
an address this client was just admitted to (cache/layer.py). Plain HTTP reuses the
relay's keep-alive pools, one pool per destination address; CONNECT hands both sockets
to a byte tunnel after the 200.

Authentication and DNS may need to wait; the request then waits off the hot path (a
task per such request; a request whose answers are cached is dispatched at once).

An admission is memoised (RouteMemo: client, target prefix, method -> ForwardRoute) until
the resolver's answer or ROUTE_TTL runs out, unless an ACL rule reads the URL. The
compiled path (relay.ForwardFast) serves requests from the memo: it checks credentials
through the authenticator's cache, then does what _route/_head/_connect_allowed do with
the route's precomputed pieces; anything it does not cover comes here. CONNECT setup is
compiled for both (relay.TunnelSetup).
"""
from __future__ import annotations

import os
import time

from fastproxy import _http
from fastproxy._relay import (IDEMPOTENT, PAUSE_CONNECTING, STATE_CLOSED, STOP, ConnectionPool,
                              ForwardFast, ForwardRoute, RouteMemo, TunnelSetup)
from fastproxy.forward.acl import Acl
from fastproxy.forward.anonymity import Anonymizer
from fastproxy.forward.auth import BUSY, Authenticator
from fastproxy.upstream.settings import UpstreamGroupConfig
from fastproxy.proxy.intermediary import (answer_failure, answer_options, max_forwards,
                                          max_forwards_plan, upgrade_plan)
from fastproxy.limits import RateLimits
from fastproxy.forward.resolver import HostError, ResolveError, Resolver, normalize_host
from fastproxy.upstream.group import Server

TARGET_ORIGIN = _http.TARGET_ORIGIN
TARGET_ABSOLUTE = _http.TARGET_ABSOLUTE
TARGET_AUTHORITY = _http.TARGET_AUTHORITY
TARGET_ASTERISK = _http.TARGET_ASTERISK
split_absolute = _http.split_absolute
split_authority = _http.split_authority

CRLF = b"\r\n"
# Fields that never go to the destination: the proxy's own credentials (RFC 9110 11.7.2)
# and Host, which the target's authority replaces (RFC 9112 3.2.2).
DROP_ALWAYS = (b"proxy-authorization", b"host")
MAX_POOLS = 1024
ROUTE_TTL = 5.0          # seconds an admission decision is reused for the same client and host
ROUTE_CACHE_MAX = 4096


class ForwardHandler:
    """Dispatches requests of one forward listener."""

    DROP_ALWAYS = DROP_ALWAYS   # read by the compiled path (relay.ForwardFast)

    def __init__(self, rt, lcfg) -> None:
        self.rt = rt
        settings = lcfg.forward
        if settings is None:
            raise ValueError("a forward listener's configuration has no forward settings")
        self.settings = settings
        self.upgrade = frozenset(p.encode() for p in lcfg.upgrade)
        self.acl = Acl(settings.acl)
        self.auth = Authenticator(settings.auth) if settings.auth.enabled else None
        self.anonymizer = Anonymizer(settings.anonymity)
        self.limits = RateLimits(lcfg.rate_limit)
        self.limit_conns = lcfg.rate_limit.max_connections > 0
        self.connection_hooks = self.limit_conns  # the relay calls connection_made/lost
        self.limit_rate = lcfg.rate_limit.rate > 0
        self.resolver = Resolver(settings.resolver)
        self.tls = lcfg.tls_cert is not None
        # Recent admissions (client, target prefix, method) -> ForwardRoute, reused here and
        # by the compiled path. Only when no rule reads the URL (then the ACL's answer
        # depends on nothing else), and never longer than the DNS cache keeps the addresses.
        self.memo: RouteMemo | None = (RouteMemo(ROUTE_CACHE_MAX)
                                       if not any(r.url for r in settings.acl.rules) else None)
        # Phase two is a pure function of the phase-one decision and the addresses (both
        # shared objects while cached), so its answer is kept: (decision, addrs) ->
        # (allowed, refusal, origins).
        self.admits: dict = {}
        # A pool per destination (address, port, scheme, TLS name); created on demand.
        self.pools: dict[tuple, ConnectionPool] = {}
        self.pool_cfg = UpstreamGroupConfig(name="forward", servers=())
        self._cache = None
        self.fast = self._fast_path()

    @property
    def cache(self):
        """The listener's CacheLayer (set by the server after construction), or None."""
        return self._cache

    @cache.setter
    def cache(self, layer) -> None:
        self._cache = layer
        self.fast = self._fast_path()

    def _fast_path(self) -> ForwardFast | None:
        """The compiled common path (relay.ForwardFast) where this listener allows it: it
        reuses memoised admissions, so none without a memo; rate limits and the cache must
        see every request first."""
        if (self.memo is None or self.limit_rate or self._cache is not None
                or os.environ.get("FASTPROXY_NO_FASTPATH")):  # debugging, differential tests
            return None
        return ForwardFast(self)

    # -- connection-level hooks (called by the relay) -------------------------------

    def connection_made(self, conn) -> None:
        """Per-client connection limit (the relay calls this only when it is on)."""
        self.limits.connection_made(conn)

    def connection_lost(self, conn) -> None:
        self.limits.connection_lost(conn)

    # -- per request ----------------------------------------------------------------

    def dispatch(self, conn, req) -> int:
        """Admit req, then fetch it or open its tunnel (now, or after DNS/auth): STOP."""
        if self.limit_rate and self.limits.refuse(conn, req):
            return STOP
        if self.auth is not None:
            value = req.get(b"proxy-authorization")
            result = self.auth.check_cached(value)
            if result is None:
                conn.pause_reading(PAUSE_CONNECTING)
                self.rt.loop.create_task(self._verify_then(conn, req, value))
                return STOP
            if not result.ok:
                self._challenge(conn, result)
                return STOP
            conn.log_extra = {"user": result.user}
        self._admitted(conn, req)
        return STOP

    async def _verify_then(self, conn, req, value) -> None:
        assert self.auth is not None   # only called when the listener authenticates
        result = await self.auth.verify_async(value)
        if conn.state == STATE_CLOSED or conn.req is not req:
            return
        conn.resume_reading(PAUSE_CONNECTING)
        if not result.ok:
            self._challenge(conn, result)
            return
        conn.log_extra = {"user": result.user}
        self._admitted(conn, req)

    def _challenge(self, conn, result) -> None:
        # RFC 9110 11.7.1: 407 with Proxy-Authenticate. The body says why, not who exists;
        # the access log keeps the full reason.
        assert self.auth is not None   # only called when the listener authenticates
        conn.log_extra = {**(conn.log_extra or {}), "auth": result.reason}
        if result is BUSY:
            # Not checked (auth.max_pending): 503, so the client tries again rather than
            # taking its password for wrong (RFC 9110 15.6.4, 10.2.3).
            conn.respond_error(503, result.public, b"Retry-After: 1\r\n")
            return
        conn.respond_error(407, result.public or "proxy authentication required",
                           self.auth.challenge)

    def _admitted(self, conn, req) -> None:
        mf = max_forwards(conn, req)
        if mf is None:
            return  # answered here (Max-Forwards: 0) or refused
        form = req.target_form
        try:
            if form == TARGET_AUTHORITY:
                host_b, port = split_authority(req.target)
                scheme = b"tcp"
                path = b""
            elif form == TARGET_ABSOLUTE:
                scheme, host_b, port, path = split_absolute(req.target)
                if req.method == b"OPTIONS" and _server_wide(req.target):
                    path = b"*"
            elif form == TARGET_ASTERISK and req.method == b"OPTIONS":
                # "OPTIONS *" asks the server itself (RFC 9110 9.3.7), here the proxy: a
                # valid request, not a malformed one.
                answer_options(conn)
                return
            else:
                conn.respond_error(400, "a forward proxy needs an absolute URL "
                                        "(http://host/path) or CONNECT host:port")
                return
            host = normalize_host(host_b)
        except (_http.ParseError, HostError) as exc:
            conn.respond_error(400, f"bad request target: {exc}")
            return
        if scheme not in (b"http", b"https") and form == TARGET_ABSOLUTE:
            # "tcp" names a CONNECT tunnel inside this handler: never from a URL, or a GET
            # would open a tunnel past connect_ports.
            conn.respond_error(400, f"unsupported URL scheme {scheme.decode('latin-1')!r}")
            return
        memo = self.memo
        if memo is not None:
            route = memo.get(conn.client_ip, req)
            if route is not None:
                # The same client reached the same destination a moment ago: the ACL's
                # answer and the resolved, allowed addresses are still valid.
                self._route(conn, req, (scheme, host, host_b, port, path, route.decision),
                            route.allowed, route.origins)
                return
        decision = self.acl.check_request(conn.client_ip, host, port, req.method, req.target)
        if not decision.allow:
            self._deny(conn, decision)
            return
        target = (scheme, host, host_b, port, path, decision)
        if self.cache is not None and req.method == b"PURGE":
            # PURGE never reaches the destination: the cache's purge_allow decides it.
            self.cache.handle(conn, req)
            return
        try:
            addrs = self.resolver.cached(host)
        except ResolveError as exc:
            conn.respond_error(exc.status, str(exc))   # names the host
            return
        if addrs is None:
            conn.pause_reading(PAUSE_CONNECTING)
            self.rt.loop.create_task(self._resolve_then(conn, req, target))
            return
        self._admit_addresses(conn, req, target, addrs)

    def forward(self, conn, req, more: bytes = b"", ctx=None) -> None:
        """Send an admitted req (ctx: its target and allowed addresses) with `more` field
        lines added (the cache layer's hook)."""
        target, allowed = ctx
        self._connect_allowed(conn, req, target, allowed, more)

    def refresh_target(self, conn, req, more: bytes, ctx):
        """Where a background revalidation of an admitted req would go, or None."""
        (scheme, host, host_b, port, path, _decision), allowed = ctx
        addr = allowed[0][0]
        pool = self._pool(addr, scheme, host, port)
        head = self._head(conn, req, scheme, host, host_b, port, path,
                          more + b"Connection: close\r\n")
        return addr, port, pool.ssl, host if pool.ssl is not None else None, head

    async def _resolve_then(self, conn, req, target) -> None:
        try:
            addrs = await self.resolver.resolve(target[1])
        except ResolveError as exc:
            if conn.state != STATE_CLOSED and conn.req is req:
                conn.resume_reading(PAUSE_CONNECTING)
                conn.respond_error(exc.status, str(exc))   # names the host
            return
        if conn.state == STATE_CLOSED or conn.req is not req:
            return
        conn.resume_reading(PAUSE_CONNECTING)
        self._admit_addresses(conn, req, target, addrs)

    def _deny(self, conn, decision) -> None:
        conn.log_extra = {**(conn.log_extra or {}), "acl": decision.rule}
        detail = decision.reason if self.settings.deny_detail else "denied by policy"
        conn.respond_error(403, detail)

    def _allowed_addresses(self, conn, decision, addrs) -> tuple[list, object]:
        """The addresses the ACL allows connecting to, in order, and the last refusal."""
        allowed = []
        refusal = None
        for addr in addrs:
            final = self.acl.check_address(decision, addr)
            if final.allow:
                allowed.append((addr, final))
            elif refusal is None:
                refusal = final
        return allowed, refusal

    def _admit_addresses(self, conn, req, target, addrs) -> None:
        """ACL phase two for each resolved address; refuse, or route to those allowed."""
        scheme, host, host_b, port, path, decision = target
        found = self.admits.get((decision, addrs))
        if found is None:
            allowed, refusal = self._allowed_addresses(conn, decision, addrs)
            origins = (frozenset(a.encode() for a, _ in allowed) if self.cache is not None
                       else None)
            if len(self.admits) >= ROUTE_CACHE_MAX:
                self.admits.clear()
            found = self.admits[(decision, addrs)] = (allowed, refusal, origins)
        allowed, refusal, origins = found
        if not allowed:
            self._deny(conn, refusal)
            return
        if self.memo is not None:
            route = self._new_route(conn.client_ip, target, allowed, origins)
            if route.expires > time.monotonic():    # not when the resolver keeps nothing
                self.memo.put(conn.client_ip, req, route)
        self._route(conn, req, target, allowed, origins)

    def _new_route(self, client_ip: str, target, allowed, origins) -> ForwardRoute:
        """What the memo keeps of an admission: the decision, the addresses and, for the
        compiled path, the pool and the head edits that do not depend on the request."""
        scheme, host, host_b, port, _path, decision = target
        addrs = tuple(a for a, _ in allowed)
        expires = min(time.monotonic() + ROUTE_TTL, self.resolver.expires(host))
        pool = self._pool(addrs[0], scheme, host, port) if scheme != b"tcp" else None
        host_line = _host_line(scheme, host_b, port)
        fixed = self.anonymizer.fixed_plan(host, client_ip)
        if fixed is None:
            drop = extra_10 = extra_11 = None
            no_xff = False
        else:
            drop = fixed[0] + DROP_ALWAYS
            extra_10 = fixed[1] + host_line
            extra_11 = fixed[2] + host_line
            no_xff = fixed[3]
        return ForwardRoute(expires, scheme, host, host_b, port, decision, allowed, origins,
                            addrs, pool, allowed[0][1].rule, host_line, drop, extra_10,
                            extra_11, no_xff)

    def _route(self, conn, req, target, allowed, origins) -> None:
        """Fully admitted: the cache may answer (from these addresses only), else connect."""
        conn.log_extra = {**(conn.log_extra or {}), "acl": allowed[0][1].rule}
        if self.cache is not None and target[0] != b"tcp":
            self.cache.handle(conn, req, (target, allowed), origins)
            return
        self._connect_allowed(conn, req, target, allowed, b"")

    def _connect_allowed(self, conn, req, target, allowed, more: bytes) -> None:
        scheme, host, host_b, port, path, decision = target
        if scheme == b"tcp":
            t = self.rt.timeouts
            TunnelSetup(conn, req, host, port, tuple(a for a, _ in allowed),
                        t.upstream_connect, t.tunnel_idle).start()
            return
        head = self._head(conn, req, scheme, host, host_b, port, path, more)
        conn.upgrade_sent = req.upgrade is not None and upgrade_plan(req, self.upgrade)[1] != b""
        conn.replay = head
        conn.tried = [a for a, _ in allowed[1:]]  # addresses left to try on connect failure
        conn.group = (scheme, host, port)
        self._send(conn, allowed[0][0], scheme, host, port, head)

    def _head(self, conn, req, scheme, host, host_b, port, path, more: bytes = b"") -> bytes:
        drop, extra = self.anonymizer.plan(req, conn.client_ip, host)
        drop = drop + DROP_ALWAYS
        extra += _host_line(scheme, host_b, port)
        if req.expect_continue:
            drop += (b"expect",)
        if conn.body_kind == _http.BODY_CHUNKED:
            extra += b"Transfer-Encoding: chunked\r\n"
        keep_upgrade, upgrading = upgrade_plan(req, self.upgrade)
        extra += upgrading
        mf_drop, mf_extra = max_forwards_plan(req)
        if mf_extra:
            drop += mf_drop
            extra += mf_extra
        start_line = req.method + b" " + path + b" HTTP/1.1"
        return req.forward_head(start_line, extra + more, drop, keep_upgrade)

    def _pool(self, addr: str, scheme: bytes, host: str, port: int) -> ConnectionPool:
        key = (addr, port, scheme, host)
        pool = self.pools.get(key)
        if pool is None:
            if len(self.pools) >= MAX_POOLS:
                self._trim_pools()
            server = Server(host, port, scheme="https" if scheme == b"https" else "http")
            pool = ConnectionPool(self.rt, self.pool_cfg, server, addr)
            self.pools[key] = pool
        return pool

    def _trim_pools(self) -> None:
        """Drop pools with no connection in use (their idle connections close)."""
        for key, pool in list(self.pools.items()):
            if pool.server.active == 0:
                pool.close()
                del self.pools[key]

    def _send(self, conn, addr, scheme, host, port, head, fresh=False) -> None:
        conn.send_upstream(self._pool(addr, scheme, host, port), head, None, fresh)

    def upstream_failed(self, conn, up, status: int, detail: str, replayable: bool,
                        pending) -> None:
        """The destination failed before answering: next address, fresh connection, or error."""
        req = conn.req
        if req is None or conn.state == STATE_CLOSED:
            return
        scheme, host, port = conn.group
        if replayable and not conn.resp_started:
            if pending is not None and conn.tried:
                # Connect failure: try the next allowed address (happy-eyeballs-lite).
                addr = conn.tried.pop(0)
                conn.retries += 1
                conn.send_upstream(self._pool(addr, scheme, host, port), pending[0],
                                   pending[1:], False)
                return
            if pending is None and up.reused and not up.timed_out and conn.retries < 2 and \
                    conn.body_kind == _http.BODY_NONE and req.method in IDEMPOTENT:
                # The destination closed a kept-alive connection as we reused it (a
                # timeout is not that: the destination may be working on the request).
                conn.retries += 1
                self._send(conn, up.pool.connect_host, scheme, host, port, conn.replay, True)
                return
        answer_failure(conn, status, detail)


def _server_wide(target: bytes) -> bool:
    """True for an absolute-form target with an empty path and no query: RFC 9112 3.2.4
    says the last proxy MUST send an OPTIONS for it as "OPTIONS *" (the server itself)."""
    authority = target.partition(b"://")[2]
    return b"/" not in authority and b"?" not in authority


def _host_line(scheme: bytes, host_b: bytes, port: int) -> bytes:
    """The Host field for the destination: the target's authority (RFC 9112 3.2.2), the
    port only when it is not the scheme's default."""
    default_port = 443 if scheme == b"https" else 80
    if b":" in host_b:
        host_b = b"[" + host_b + b"]"    # an IPv6 literal keeps its brackets (RFC 3986 3.2.2)
    authority = host_b if port == default_port else host_b + b":%d" % port
    return b"Host: " + authority + CRLF
