"""Reverse mode: route a request to an upstream group, pick a server, build the head it gets.

The route step (`router`) names a group, the balancer in the group picks a server,
and the server's pool gives a connection. The forwarded head is the client's head
as received, minus hop-by-hop fields (done in the compiled `forward_head`), plus
`Via` and the X-Forwarded-* or Forwarded fields (RFC 9110 7.6.3, RFC 7239).
When a connection fails before any response byte, the request is retried where
that is safe (`upstream_failed`).
"""
from __future__ import annotations

import os
from http import HTTPStatus

from fastproxy import _http
from fastproxy._relay import (CLIENT_CLAIMS, CONTINUE, IDEMPOTENT, STATE_CLOSED, STOP,
                              FastForward, FastForwardIds)
from fastproxy.proxy.errors import REASONS, date_line
from fastproxy.proxy.intermediary import answer_failure, max_forwards, upgrade_plan, via_lines
from fastproxy.proxy.router import normalise_host, render
from fastproxy.cache.peers import HOP
from fastproxy.limits import RateLimits
from fastproxy.targets import decision_path

TARGET_ORIGIN = _http.TARGET_ORIGIN
TARGET_ABSOLUTE = _http.TARGET_ABSOLUTE
TARGET_ASTERISK = _http.TARGET_ASTERISK
split_absolute = _http.split_absolute

CRLF = b"\r\n"
# The schemes an absolute-form target may name, and the port each leaves implicit.
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
# Retries on a stale keep-alive connection use a fresh connection to the same server.
MAX_STALE_RETRIES = 2


NO_MAX_FORWARDS = ((), b"")


class _Refused(Exception):
    """The request cannot be routed: answer status (with detail and extra field lines)."""

    def __init__(self, status: int, detail: str, extra: bytes = b"") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra


class _Fixed(Exception):
    """The route answers itself (a redirect, a fixed status): the response bytes."""

    def __init__(self, status: int, data: bytes, body_bytes: int) -> None:
        super().__init__(status)
        self.status = status
        self.data = data
        self.body_bytes = body_bytes


def _phrase(status: int) -> str:
    """The standard reason phrase of a status the relay's table lacks ("" if none)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _peer_claims(req, host: bytes | None) -> bytes:
    """The X-Forwarded-* lines of a fleet peer's hop (cache/peers.py), passed on as the
    asking node wrote them: it saw the client and the scheme; this node only sees it."""
    out = b""
    xff = req.get(b"x-forwarded-for")
    if xff:
        out += b"X-Forwarded-For: " + xff + CRLF
    proto = (req.get(b"x-forwarded-proto") or b"").lower()
    out += b"X-Forwarded-Proto: " + (proto if proto in (b"http", b"https") else b"http") + CRLF
    xfh = req.get(b"x-forwarded-host") or host
    if xfh:
        out += b"X-Forwarded-Host: " + xfh + CRLF
    return out


def _fixed_answer(conn, req, route, host: bytes | None, path: bytes, proto: bytes) -> _Fixed:
    """The response of a route's `return` table, variables filled in."""
    status, location, body = route.answer
    values = {"host": host or b"", "hostname": normalise_host(host) or b"",
              "method": req.method, "path": path, "scheme": proto}
    # 204 and 304 have no content, and no Content-Length (RFC 9110 8.6, 15.4.5).
    bodiless = status == 204 or status == 304
    content = render(body, values) if body != [b""] and not bodiless else b""
    if content and not content.endswith(b"\n"):
        content += b"\n"
    keep = conn.keep_alive and conn.body_done
    reason = REASONS.get(status) or _phrase(status)
    head = b"HTTP/1.1 %d %s\r\n" % (status, reason.encode()) + date_line()
    if location is not None:
        head += b"Location: " + render(location, values) + CRLF
    if content:
        head += b"Content-Type: text/plain; charset=utf-8\r\n"
    if not bodiless:
        head += b"Content-Length: %d\r\n" % len(content)
    if not keep:
        head += b"Connection: close\r\n"
    data = head + CRLF if req.method == b"HEAD" else head + CRLF + content
    return _Fixed(status, data, 0 if req.method == b"HEAD" else len(content))


class ReverseHandler:
    """Dispatches requests of one reverse listener."""

    def __init__(self, rt, router, tls: bool, cache=None) -> None:
        self.rt = rt
        self.router = router
        self.cache = cache
        hp = rt.config.headers
        self.via = hp.via
        self.via_lines = via_lines(hp.via_name) if hp.via else {10: b"", 11: b"", 20: b""}
        self.via_10, self.via_11, self.via_20 = (self.via_lines[v] for v in (10, 11, 20))
        self.xf = hp.forwarded in ("x-forwarded", "both")
        self.fwd = hp.forwarded in ("forwarded", "both")
        claims = CLIENT_CLAIMS[hp.forwarded]
        # headers.request_id: every request carries its id upstream in that field; the
        # client's own field of that name is dropped (RequestIds keeps its value when
        # trusted), so the upstream never sees two.
        self.ids = rt.request_ids if hp.request_id else None
        if self.ids is not None:
            claims += (self.ids.lname,)
        self.claims = claims
        # Indexed by (Host replaced) * 2 + (Expect present).
        self._drops = (claims, claims + (b"expect",), claims + (b"host",),
                       claims + (b"host", b"expect"))
        self.preserve_host = hp.preserve_host
        self.proto = b"https" if tls else b"http"
        self.upgrade = frozenset(p.encode() for p in rt.listener.upgrade)
        limits = rt.listener.rate_limit
        self.limit_conns = limits.max_connections > 0
        self.connection_hooks = self.limit_conns  # the relay calls connection_made/lost
        self.limit_rate = limits.rate > 0
        self.limits = RateLimits(limits) if self.limit_conns or self.limit_rate else None
        if cache is None and not self.limit_rate:
            # Nothing to do before routing: dispatch is forward itself (no extra call).
            self.dispatch = self.forward
        # The compiled common path (relay.FastForward) where this listener's settings
        # allow it; None keeps every request on the Python path below.
        fast = FastForwardIds if self.ids is not None else FastForward
        self.fast = fast(self) if (
            cache is None and not self.limit_rate and not self.fwd and self.preserve_host
            and router.simple   # rewrites, edits and conditions are decided here
            and not os.environ.get("FASTPROXY_NO_FASTPATH")  # debugging and differential tests
        ) else None

    # -- connection-level hooks (called by the relay) -------------------------------

    def connection_made(self, conn) -> None:
        """Per-client connection limit (the relay calls this only when it is on)."""
        self.limits.connection_made(conn)

    def connection_lost(self, conn) -> None:
        self.limits.connection_lost(conn)

    def dispatch(self, conn, req) -> int:
        """The request steps in order (rate limits, the cache, upstream) until one STOPs."""
        if self.limit_rate:
            if self.limits.remote is not None:
                self.limits.refuse_later(conn, req, self.admitted)   # fleet-wide buckets
                return STOP
            if self.rate_step(conn, req) == STOP:
                return STOP
        return self.admitted(conn, req)

    def admitted(self, conn, req) -> int:
        """After the rate limits: the listener's cache, then upstream."""
        if self.cache is not None:
            return self.cache_step(conn, req)
        return self.forward(conn, req)

    def rate_step(self, conn, req) -> int:
        """STOP with a 429 when req is over the listener's rate, else CONTINUE."""
        return STOP if self.limits.refuse(conn, req) else CONTINUE

    def cache_step(self, conn, req) -> int:
        """The cache answers, waits for a coalesced fetch, or forwards itself: STOP."""
        self.cache.handle(conn, req)
        return STOP

    def forward(self, conn, req, more: bytes = b"", ctx=None, peer=None) -> int:
        """Route req, pick a server and start sending it (STOP); `more`: field lines to add;
        `peer`: (group, server) of the fleet node that owns req's cache key instead."""
        mf = max_forwards(conn, req)
        if mf is None:
            return STOP  # answered here (Max-Forwards: 0) or refused
        try:
            group, server, key, head, upgrading = self._plan(conn, req, more, mf, peer=peer)
        except _Fixed as f:
            conn.respond(f.data, f.status, f.body_bytes)
            return STOP
        except _Refused as r:
            observer = conn.observer
            extra = r.extra + observer.status_line() if observer is not None else r.extra
            conn.respond_error(r.status, r.detail, extra)
            return STOP
        group.balancer.requests_seen += 1  # feeds the retry budget
        conn.upgrade_sent = upgrading
        conn.group = group
        conn.hash_key = key
        conn.replay = head
        self.start(conn, group, server, head)
        return STOP

    def refresh_target(self, conn, req, more: bytes, ctx=None):
        """Where a background request for req would go: (host, port, ssl, sni, head) or None."""
        try:
            group, server, _key, head, _up = self._plan(
                conn, req, more + b"Connection: close\r\n", NO_MAX_FORWARDS, False)
        except (_Refused, _Fixed):
            return None
        pool = group.pools[server]
        return (pool.connect_host, server.port, pool.ssl,
                server.host if pool.ssl is not None else None, head)

    def _plan(self, conn, req, more: bytes, mf, shadow: bool = True, peer=None):
        """(group, server, hash key, forwarded head, whether it offers an Upgrade) for req;
        raise _Refused to answer."""
        form = req.target_form
        host = req.host
        target = req.target
        start_line = None
        if form == TARGET_ORIGIN:
            path = target
            if req.version == 10:   # HTTP/2 streams come as HTTP/1.1 heads
                start_line = req.method + b" " + target + b" HTTP/1.1"
        elif form == TARGET_ABSOLUTE:
            # RFC 9112 3.2.2: a server accepts absolute-form; its authority wins over Host.
            try:
                scheme, a_host, a_port, path = split_absolute(target)
            except _http.ParseError as exc:
                raise _Refused(400, f"bad request target: {exc}") from None
            default_port = _DEFAULT_PORTS.get(scheme)
            if default_port is None:
                # No default port to name (the Host went out as "a:-1"), and no HTTP
                # resource: as the forward proxy, only http and https URLs.
                raise _Refused(400, "unsupported URL scheme "
                                    f"{scheme.decode('latin-1')!r} in the request target")
            if b":" in a_host:
                a_host = b"[" + a_host + b"]"      # an IPv6 literal (RFC 3986 3.2.2)
            # Only the scheme's own default port may be left out (RFC 9110 4.2.3):
            # http://h:443/ is not http://h/.
            host = a_host if a_port == default_port else a_host + b":%d" % a_port
            start_line = req.method + b" " + path + b" HTTP/1.1"
        elif form == TARGET_ASTERISK:
            path = b"*"
            if req.version == 10:
                start_line = req.method + b" * HTTP/1.1"
        else:
            raise _Refused(405, "CONNECT is not served by a reverse proxy listener",
                           b"Allow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS\r\n")
        route = None
        client_path = path
        if peer is not None:
            # The owning peer routes it itself: the client's target and Host, as sent.
            group, server = peer
            key = 0
        else:
            route = self.router.match(host, path, req)
            if route is None:
                raise _Refused(404, "no route for this host and path")
            if route.answer is not None:
                raise _fixed_answer(conn, req, route, host, path, self.proto)
            group = route.choose(req, conn.client_ip) if route.canary is not None else route.group
            if route.strip or route.rewrite is not None:
                # The rewrite applies to the path the route matched (router.match).
                q = path.find(b"?")
                path = route.rewrite_path(decision_path(path)) if q < 0 else \
                    route.rewrite_path(decision_path(path[:q])) + path[q:]
                start_line = req.method + b" " + path + b" HTTP/1.1"
            key = group.key_fn(req, conn.client_ip) if group.key_fn is not None else 0
            server = group.pick(key)
            if server is None:
                raise _Refused(503, f"no available server in upstream {group.name!r}")
        limit = group.admit(server)
        if limit is not None:
            raise _Refused(503, group.describe_limit(limit, server))

        # The forwarded head.
        extra = self.via_lines[req.version]
        if self.ids is not None:
            # Right after Via, where FastForwardIds puts it too (the same bytes).
            extra = self.ids.field(conn, req, extra)
        set_host = None
        if route is not None and route.upstream_host is not None:
            set_host = route.upstream_host
        elif host is None or not self.preserve_host or form == TARGET_ABSOLUTE:
            set_host = host if (host is not None and (self.preserve_host or peer)) else \
                server.name.encode()
        expect = req.expect_continue
        peers = self.cache.peers if peer is None and self.cache is not None else None
        hop = peers is not None and peers.trusts(conn, req)
        if self.xf:
            if hop:
                extra += _peer_claims(req, host)
            else:
                ip = conn.client_ip_b
                xff = req.get(b"x-forwarded-for")
                extra += b"X-Forwarded-For: " + (xff + b", " + ip if xff else ip) + \
                    b"\r\nX-Forwarded-Proto: " + self.proto + CRLF
                if host is not None:
                    extra += b"X-Forwarded-Host: " + host + CRLF
        drop = self._drops[(set_host is not None) * 2 + expect]
        if self.fwd and not hop:
            # A peer's hop keeps the Forwarded element the asking node wrote: the fleet
            # is one proxy to the origin.
            extra += self._forwarded(conn, host)
        if set_host is not None:
            extra += b"Host: " + set_host + CRLF
        if conn.body_kind == _http.BODY_CHUNKED:
            extra += b"Transfer-Encoding: chunked\r\n"
        keep_upgrade, upgrading = upgrade_plan(req, self.upgrade)
        extra += upgrading
        if mf[1]:
            drop += mf[0]
            extra += mf[1]
        edits = route.edits if route is not None else None
        if edits is not None:
            drop += edits.drop
            extra += edits.render({
                "client_ip": conn.client_ip_b, "host": host or b"", "method": req.method,
                "path": client_path, "scheme": self.proto} if edits.dynamic else {})
        if peers is not None and req.get(HOP) is not None:
            drop += (HOP,)     # a fleet-internal field: the origin does not see it
        if more:
            extra += more
        head = req.forward_head(start_line, extra, drop, keep_upgrade)
        if route is not None and route.shadow is not None and not upgrading and shadow:
            route.shadow.copy(self.rt.loop, head, key, conn)
        return group, server, key, head, bool(upgrading)

    def _forwarded(self, conn, host: bytes | None) -> bytes:
        """One RFC 7239 Forwarded element for this hop (existing ones are kept)."""
        ip = conn.client_ip
        node = f'"[{ip}]"' if ":" in ip else ip
        value = f"for={node};proto={self.proto.decode()}"
        if host is not None:
            value += ';host="' + host.decode("latin-1").replace('"', "") + '"'
        return f"Forwarded: {value}\r\n".encode("latin-1")

    def start(self, conn, group, server, head: bytes, pending=None, fresh=False) -> None:
        """Send head (and any queued body bytes) to server over a pooled connection."""
        conn.send_upstream(group.pools[server], head, pending, fresh)

    def upstream_failed(self, conn, up, status: int, detail: str, replayable: bool,
                        pending) -> None:
        """The upstream failed before answering: retry where safe, else 502/504."""
        req = conn.req
        if req is None or conn.state == STATE_CLOSED:
            return
        group = conn.group
        if replayable and not conn.resp_started:
            if pending is not None:
                # Connect failure: nothing reached any server, so any method may go
                # elsewhere, with the bytes we were holding for it.
                tried = conn.tried or []
                tried.append(up.server)
                conn.tried = tried
                if group.may_retry(req.method, conn.retries + 1, True):
                    server = group.pick(conn.hash_key, tried)
                    if server is not None:
                        conn.retries += 1
                        self.start(conn, group, server, pending[0], pending[1:])
                        return
            elif (up.reused and not up.timed_out and conn.retries < MAX_STALE_RETRIES
                  and conn.body_kind == _http.BODY_NONE and req.method in IDEMPOTENT):
                # RFC 9112 9.3.1: the server closed a kept-alive connection as we sent on
                # it; an idempotent request without a body is safely sent again, on a
                # fresh connection to the same server. A timeout is not this case: the
                # server may still be working on the request.
                conn.retries += 1
                self.start(conn, group, up.server, conn.replay, fresh=True)
                return
            elif conn.body_kind == _http.BODY_NONE and \
                    group.may_retry(req.method, conn.retries + 1, False):
                # Reset before any response byte on a fresh connection, or a timeout: the
                # retry policy decides (idempotent or configured methods, attempts,
                # budget), and the request goes to another server.
                tried = conn.tried or []
                tried.append(up.server)
                conn.tried = tried
                server = group.pick(conn.hash_key, tried)
                if server is not None:
                    conn.retries += 1
                    self.start(conn, group, server, conn.replay)
                    return
        answer_failure(conn, status, detail)
