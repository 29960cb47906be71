# Included by ext/relay.pyx (one extension module: see the note there).
# Forward mode: ForwardRoute and RouteMemo (admissions the Python handler decided, reused
# per client, destination and method), ForwardFast (the forward handler's common request
# in C: an absolute-form request or a CONNECT whose destination is in the memo).

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memchr

cdef bytes PROXY_AUTHORIZATION = b"proxy-authorization"
cdef bytes SLASH = b"/"
cdef bytes SP = b" "
cdef bytes HTTP11_TAIL = b" HTTP/1.1"
cdef bytes X_FORWARDED_FOR = b"x-forwarded-for"
# Own names rather than relay_fastpath.pxi's (the reverse fast path may change them).
cdef bytes FWD_MAX_FORWARDS = b"max-forwards"
cdef frozenset FWD_MAX_FORWARDS_METHODS = frozenset((b"TRACE", b"OPTIONS"))
cdef tuple FWD_DROP_EXPECT = (b"expect",)
cdef bytes FWD_OPTIONS = b"OPTIONS"


cdef class ForwardRoute:
    """One admitted destination of one client for one method, as fastproxy.forward.handler
    decided it (it builds every field; this module only reads them).

    `expires` is the monotonic time after which the admission must be decided again: never
    later than the resolver keeps the addresses. `drop`/`extra_10`/`extra_11` are the
    forwarded head's edits for HTTP/1.0 and 1.1 clients (anonymity, Proxy-Authorization,
    Host) when they do not depend on the request (or, with `no_xff`, for a request without
    X-Forwarded-For); drop None: ask the anonymizer per request.
    `log_extra` is shared by every request of the route and never mutated (readers copy).
    """

    cdef public double expires
    cdef public bytes scheme, host_b
    cdef public str host, rule
    cdef public long port
    cdef public object decision, allowed, origins
    cdef public tuple addrs        # allowed addresses, in the order to try them
    cdef public object group       # (scheme, host, port): what upstream_failed retries
    cdef public ConnectionPool pool  # the pool of addrs[0] (plain HTTP), or None
    cdef public dict log_extra
    cdef public bytes host_line
    cdef public tuple drop
    cdef public bytes extra_10, extra_11
    cdef public bint no_xff        # the edits hold only for a request without X-Forwarded-For

    def __init__(self, double expires, bytes scheme, str host, bytes host_b, long port,
                 decision, allowed, origins, tuple addrs, ConnectionPool pool, str rule,
                 bytes host_line, tuple drop, bytes extra_10, bytes extra_11,
                 bint no_xff=False):
        self.expires = expires
        self.scheme = scheme
        self.host = host
        self.host_b = host_b
        self.port = port
        self.decision = decision
        self.allowed = allowed
        self.origins = origins
        self.addrs = addrs
        self.group = (scheme, host, port)
        self.pool = pool
        self.rule = rule
        self.log_extra = {"acl": rule}
        self.host_line = host_line
        self.drop = drop
        self.extra_10 = extra_10
        self.extra_11 = extra_11
        self.no_xff = no_xff


cdef bytes _target_prefix(Request req):
    """The request-target up to its path: `scheme://authority` of an absolute-form target
    (the parser checked the form, RFC 9112 3.2.2), the whole authority-form one."""
    cdef const char* t = <const char*>req._h() + req._t_off
    cdef Py_ssize_t n = req._t_len, i = n
    cdef const char* colon
    if req.target_form == 1:
        colon = <const char*>memchr(t, 58, n)   # ':' ends the scheme; "//" follows
        i = (colon - t) + 3
        while i < n and t[i] != 47 and t[i] != 63:   # '/' or '?'
            i += 1
    return PyBytes_FromStringAndSize(t, i)


cdef bytes _target_path(Request req, Py_ssize_t skip):
    """The origin-form of an absolute-form target whose prefix is `skip` bytes long, as
    split_absolute makes it (an empty path is "/", RFC 9112 3.2.1)."""
    cdef const char* t = <const char*>req._h() + req._t_off
    cdef Py_ssize_t n = req._t_len
    if skip == n:
        return SLASH
    if t[skip] == 63:   # '?'
        return SLASH + PyBytes_FromStringAndSize(t + skip, n - skip)
    return PyBytes_FromStringAndSize(t + skip, n - skip)


cdef class RouteMemo:
    """Recent admissions: (client address, target prefix, method) -> ForwardRoute.

    The key is the prefix as the client sent it, so a hit costs no parsing; a prefix is
    only stored after the Python handler parsed, normalised and admitted it, and every
    field the admission read is a function of (client, prefix, method) (the memo is off
    when an ACL rule reads the URL). A handler belongs to one configuration generation,
    so a reload starts with an empty memo.
    """

    cdef dict routes
    cdef Py_ssize_t max_size

    def __init__(self, Py_ssize_t max_size=4096):
        self.routes = {}
        self.max_size = max_size

    cdef inline object key(self, str client, Request req):
        return (client, _target_prefix(req), req.method)

    cpdef ForwardRoute get(self, str client, Request req):
        """The unexpired route for this client and request's destination and method, or None."""
        cdef ForwardRoute route = self.routes.get(self.key(client, req))
        if route is not None and route.expires <= _now():
            return None
        return route

    cpdef put(self, str client, Request req, ForwardRoute route):
        """Remember route for this client and request's destination and method."""
        if len(self.routes) >= self.max_size:
            self.routes.clear()
        self.routes[self.key(client, req)] = route

    def __len__(self):
        return len(self.routes)


cdef class ForwardFast(FastForward):
    """The forward handler's common request, without Python bytecode.

    For a request whose client, destination and method are in the handler's RouteMemo (the
    admission the Python handler made: ACL both phases on the resolved addresses), it does
    what ForwardHandler._route does next: an absolute-form request is rewritten to origin
    form and sent on the destination's pool; a CONNECT opens its tunnel. Anything else
    (a miss or expired route, Upgrade offers, Max-Forwards probes, a Proxy-Authorization
    the authenticator's cache does not accept) returns CONTINUE and the Python handler
    decides, so every decision keeps its one definition in fastproxy/forward/. Installed
    only on listeners without rate limits or a cache (handler.fast).
    """

    cdef RouteMemo memo
    cdef object auth, anonymizer
    cdef tuple drop_always
    cdef double connect_timeout, tunnel_idle

    def __init__(self, handler):
        self.handler = handler
        self.memo = handler.memo
        self.auth = handler.auth
        self.anonymizer = handler.anonymizer
        self.drop_always = handler.DROP_ALWAYS
        self.connect_timeout = handler.rt.timeouts.upstream_connect
        self.tunnel_idle = handler.rt.timeouts.tunnel_idle

    cpdef int forward(self, ClientConnection conn, Request req) except -1:
        """Send or tunnel req like the handler would; CONTINUE to let the handler do it."""
        cdef int form = req.target_form
        if form != 1 and form != 2:     # absolute-form, authority-form (CONNECT)
            return X_CONTINUE
        if req._conn_upgrade and req._upgrade_i >= 0:
            return X_CONTINUE    # an Upgrade offer: the handler's upgrade_plan decides
        if req.method in FWD_MAX_FORWARDS_METHODS and req.has_c(FWD_MAX_FORWARDS):
            return X_CONTINUE
        cdef bytes prefix = _target_prefix(req)
        if form == 1 and len(prefix) == req._t_len and req.method == FWD_OPTIONS:
            return X_CONTINUE    # "OPTIONS http://host": the handler sends "*" (RFC 9112 3.2.4)
        cdef ForwardRoute route = self.memo.routes.get((conn.client_ip, prefix, req.method))
        if route is None or route.expires <= _now():
            return X_CONTINUE
        if self.auth is not None:
            result = self.auth.check_cached(req.get_c(PROXY_AUTHORIZATION))
            if result is None or not result.ok:
                return X_CONTINUE    # scrypt to run, or a 407 to answer: the handler
            conn.log_extra = {"user": result.user, "acl": route.rule}
        else:
            conn.log_extra = route.log_extra
        if form == 2:
            TunnelSetup(conn, req, route.host, route.port, route.addrs,
                        self.connect_timeout, self.tunnel_idle).start()
            return X_STOP
        cdef ConnectionPool pool = route.pool
        if pool.closed:
            # The handler trimmed its pools: take the destination's current one.
            pool = route.pool = self.handler._pool(route.addrs[0], route.scheme, route.host,
                                                   route.port)
        cdef int version = req.version
        cdef tuple drop = route.drop
        cdef bytes extra
        if drop is None or version == 20 or (route.no_xff and req.has_c(X_FORWARDED_FOR)):
            # The anonymity plan reads the request (elite; transparent with an
            # X-Forwarded-For to append to; an HTTP/2 stream, whose Via says "2" where the
            # route keeps only the 1.0 and 1.1 lines): ask it.
            drop, extra = self.anonymizer.plan(req, conn.client_ip, route.host)
            drop = drop + self.drop_always
            extra = extra + route.host_line
        else:
            extra = route.extra_11 if version == 11 else route.extra_10
        if req.expect_continue:
            drop = drop + FWD_DROP_EXPECT
        if conn.body_kind == BODY_CHUNKED:
            extra = extra + TE_CHUNKED
        start_line = req.method + SP + _target_path(req, len(prefix)) + HTTP11_TAIL
        head = req.forward_c(start_line, extra, drop, False)
        conn.replay = head
        conn.tried = list(route.addrs[1:]) if len(route.addrs) > 1 else None
        conn.group = route.group
        conn.send_upstream(pool, head, None, False)
        return X_STOP

