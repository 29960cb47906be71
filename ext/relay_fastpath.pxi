# Included by ext/relay.pyx (one extension module: see the note there).
# Fast path: FastForward, ReverseHandler.forward for the common request in C.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy

# Client-supplied forwarding fields are replaced, never trusted: otherwise a client could
# claim any address or scheme to the upstream. Their underscore spellings go too: CGI and
# WSGI servers map "_" and "-" to one name, so X_Forwarded_Proto: https would reach the
# application beside ours (nginx drops fields with "_" by default).
cdef tuple X_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                          b"x_forwarded_for", b"x_forwarded_proto", b"x_forwarded_host")
# What a listener drops from the client's head in each `headers.forwarded` mode: every field
# that claims an address or scheme and that this hop neither writes nor appends to. Behind an
# x-forwarded listener a client's own Forwarded would be the only element an application
# finds there, and taken for ours (and the reverse in forwarded mode); X-Real-IP is nobody's
# standard but many frameworks read it first. `none` passes all of them: that listener sits
# behind another proxy whose fields must arrive. The one definition: proxy/reverse.py and
# FastForward both take their drop lists from here.
# The scheme, port and path prefix the client used, and the URL it asked for, as the
# frameworks behind a trusted proxy read them (Rails, Django, Spring, Werkzeug, ASP.NET;
# Symfony, Zend and IIS route by X-Original-URL / X-Rewrite-URL): from a client they would
# pick the scheme the application believes, the links it builds (which a cache then keeps
# for everyone) or a page past a route that refuses it. This hop writes none of them.
cdef tuple URL_CLAIMS = (
    b"x-forwarded-port", b"x-forwarded-prefix", b"x-forwarded-scheme", b"x-forwarded-ssl",
    b"front-end-https", b"x-url-scheme", b"x-original-url", b"x-rewrite-url",
    b"x_forwarded_port", b"x_forwarded_prefix", b"x_forwarded_scheme", b"x_forwarded_ssl",
    b"front_end_https", b"x_url_scheme", b"x_original_url", b"x_rewrite_url")
CLIENT_CLAIMS = {
    "x-forwarded": X_FORWARDED + URL_CLAIMS + (b"forwarded", b"x-real-ip"),
    "forwarded": X_FORWARDED + URL_CLAIMS + (b"x-real-ip",),
    "both": X_FORWARDED + URL_CLAIMS + (b"x-real-ip",),
    "none": (),
}
cdef bytes XFF = b"x-forwarded-for"
cdef bytes MAX_FORWARDS = b"max-forwards"
cdef frozenset MAX_FORWARDS_METHODS = frozenset((b"TRACE", b"OPTIONS"))


cdef bytes _xf_fields(bytes via, bytes ip, object xff, bytes xfp, bytes host):
    """via + X-Forwarded-For (appended to the client's) + xfp + X-Forwarded-Host, in one
    copy: b"".join of these seven parts took a buffer view of each (about 750
    instructions per request in callgrind, the most of any one call in forward)."""
    if via is None or ip is None or xfp is None or host is None:
        raise TypeError("the forwarding fields are bytes")
    cdef Py_ssize_t n_via = PyBytes_GET_SIZE(via), n_ip = PyBytes_GET_SIZE(ip)
    cdef Py_ssize_t n_xfp = PyBytes_GET_SIZE(xfp), n_host = PyBytes_GET_SIZE(host)
    cdef Py_ssize_t n_xff = 0
    if xff is not None and PyBytes_GET_SIZE(<bytes>xff) > 0:
        # An empty client list is no element to append to (as ReverseHandler._plan).
        n_xff = PyBytes_GET_SIZE(<bytes>xff) + 2
    cdef bytes out = PyBytes_FromStringAndSize(
        NULL, n_via + 17 + n_xff + n_ip + n_xfp + 18 + n_host + 2)
    cdef char* o = PyBytes_AS_STRING(out)
    memcpy(o, PyBytes_AS_STRING(via), n_via)
    o += n_via
    memcpy(o, b"X-Forwarded-For: ", 17)
    o += 17
    if n_xff:
        memcpy(o, PyBytes_AS_STRING(<bytes>xff), n_xff - 2)
        o += n_xff - 2
        memcpy(o, b", ", 2)
        o += 2
    memcpy(o, PyBytes_AS_STRING(ip), n_ip)
    o += n_ip
    memcpy(o, PyBytes_AS_STRING(xfp), n_xfp)
    o += n_xfp
    memcpy(o, b"X-Forwarded-Host: ", 18)
    o += 18
    memcpy(o, PyBytes_AS_STRING(host), n_host)
    o += n_host
    o[0] = 13
    o[1] = 10
    return out


cdef class FastForward:
    """`ReverseHandler.forward` for the common request, without Python bytecode.

    The profile of the reverse path showed the Python handler at about 45% of the
    instructions a relayed request costs. This class does what the handler does for an
    origin-form request with a Host, on a listener without cache or rate limits, in the
    `x-forwarded` (or no) forwarding mode with Host preserved: route, pick, check the
    breaker's request limits, build the forwarded head and send it. Anything else
    (absolute-form, Max-Forwards probes, HTTP/1.0 without Host, Upgrade offers, canary or
    prefix-strip routes, no eligible server, a full limit) returns False and the Python handler
    does it, so every decision keeps one readable definition in reverse.py; tests check
    both paths produce the same bytes.
    """

    cdef object handler, router, only
    cdef bytes via_11, via_10, via_20, xfp
    cdef tuple claims, claims_expect
    cdef bint xf
    # The single route's group, unpacked once (a generation's groups never change).
    cdef object group, key_fn
    cdef Core balancer
    cdef dict pools
    cdef long long max_requests, per_server_max_requests

    def __init__(self, handler):
        self.handler = handler
        self.router = handler.router
        self.only = handler.router.only
        self.via_11 = handler.via_11
        self.via_10 = handler.via_10
        self.via_20 = handler.via_20
        self.xf = handler.xf
        self.xfp = b"\r\nX-Forwarded-Proto: " + handler.proto + CRLF
        self.claims = handler.claims
        self.claims_expect = handler.claims + (b"expect",)
        self.group = None
        if self.only is not None:
            group = self.only.group
            self.group = group
            self.balancer = group.balancer
            self.key_fn = group.key_fn
            self.pools = group.pools
            self.max_requests = group.limits.max_requests
            self.per_server_max_requests = group.limits.per_server_max_requests

    cpdef int forward(self, ClientConnection conn, Request req) except -1:
        """Send req upstream like the handler would; False to let the handler do it."""
        if req.target_form != 0:  # TARGET_ORIGIN
            return X_CONTINUE
        if req._conn_upgrade and req._upgrade_i >= 0:
            return X_CONTINUE    # an Upgrade offer: the handler's upgrade_plan decides
        # The field test first: a frozenset lookup of the method was ~130 instructions.
        if req.has_c(MAX_FORWARDS) and req.method in MAX_FORWARDS_METHODS:
            return X_CONTINUE
        host = req.get_c(b"host") if req._host_i >= 0 else None
        if host is None:
            return X_CONTINUE
        cdef long long max_requests, per_server_max_requests
        cdef dict pools
        cdef Core balancer
        group = self.group
        if group is not None:
            balancer = self.balancer
            key_fn = self.key_fn
            pools = self.pools
            max_requests = self.max_requests
            per_server_max_requests = self.per_server_max_requests
        else:
            route = self.router.match(host, req.target)
            if route is None or route.canary is not None or route.strip:
                return X_CONTINUE
            group = route.group
            balancer = group.balancer
            key_fn = group.key_fn
            pools = group.pools
            max_requests = group.limits.max_requests
            per_server_max_requests = group.limits.per_server_max_requests
        key = 0
        if key_fn is not None:
            key = key_fn(req, conn.client_ip)
        server = balancer.pick(key, ())
        if server is None:
            return X_CONTINUE
        cdef ConnectionPool pool = pools[server]
        if max_requests and balancer.total_active >= max_requests:
            return X_CONTINUE
        if per_server_max_requests and server.active >= per_server_max_requests:
            return X_CONTINUE
        if not pool.idle and group.admit(server) is not None:
            return X_CONTINUE
        # The forwarded head (same fields, same order as ReverseHandler._plan).
        cdef int version = req.version
        extra = self.via_11 if version == 11 else (self.via_20 if version == 20 else self.via_10)
        cdef bint expect = req.expect_continue
        if self.xf:
            ip = conn.client_ip_b
            xff = req.get_c(XFF)
            extra = _xf_fields(extra, ip, xff, self.xfp, host)
        drop = self.claims_expect if expect else self.claims
        if conn.body_kind == BODY_CHUNKED:
            extra += TE_CHUNKED
        start_line = None if version != 10 else req.method + b" " + req.target + b" HTTP/1.1"
        head = req.forward_c(start_line, extra, drop, False)
        balancer.requests_seen += 1     # the group's retry budget (UpstreamGroup._fold)
        conn.group = group
        conn.hash_key = key
        conn.replay = head
        conn.send_upstream(pool, head, None, False)
        return X_STOP


cdef class FastForwardIds(FastForward):
    """FastForward on a listener that sends each request's id upstream (headers.request_id).

    The id field rides in the Via slot of the forwarded head: the Via line of this
    request's version is set to Via + id field just before FastForward.forward builds the
    head, so the listeners without ids run FastForward unchanged, with no test per request
    (a branch or a shared body behind a call cost the default path instructions). The
    handler's _plan puts the field in the same place, so both paths send the same bytes.
    """

    cdef RequestIds ids
    cdef bytes base_11, base_10, base_20

    def __init__(self, handler):
        FastForward.__init__(self, handler)
        self.ids = handler.ids
        self.base_11, self.base_10, self.base_20 = self.via_11, self.via_10, self.via_20

    cpdef int forward(self, ClientConnection conn, Request req) except -1:
        """Send req upstream with its id field, like the handler would."""
        # Chosen now and kept in the exchange (RequestIds.of), so a request the handler
        # takes over after all (X_CONTINUE) keeps this id.
        cdef int version = req.version
        if version == 11:
            self.via_11 = self.ids.field(conn, req, self.base_11)
        elif version == 20:
            self.via_20 = self.ids.field(conn, req, self.base_20)
        else:
            self.via_10 = self.ids.field(conn, req, self.base_10)
        return FastForward.forward(self, conn, req)
