# cython: language_level=3
"""HTTP/2 messages: the RFC 9113 8.1-8.3 checks and the HTTP/1.1 <-> HTTP/2 mappings.

The checks return an error kind (0 for a valid list); fastproxy._h2 turns a non-zero
kind into a stream error, so a malformed message is never handed on.  They are
strict where a lax reading would let an HTTP/2 message become an ambiguous HTTP/1.1
one (downgrade smuggling): every field name must be a lowercase token, every value
field-vchar/SP/HTAB without edge whitespace, :path the HTTP/1.1 request-target bytes
(RFC 3986 characters, no '#') and :authority the RFC 3986 authority characters.  The
mappings are pure byte work for the proxy: an HTTP/2 request to an HTTP/1.1 request
head, an HTTP/1.1 response to an HTTP/2 header list, and the two reverse ones for an
HTTP/2 upstream.  The surface is documented in
`fastproxy/_h2msg.pyi`.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy

from fastproxy._http cimport Field, Request, Response, target_chars
from fastproxy._hpack cimport Encoder

ctypedef unsigned char uchar

ERROR_KINDS = (
    "ok", "field_name", "field_value", "connection_field", "te", "pseudo_header",
    "authority_host", "content_length", "trailers", "status", "header_list_too_large",
    "bad_preface", "frame_size", "stream_id", "continuation", "padding", "settings",
    "compression", "header_block_too_large", "stream_closed", "flow_control",
    "window_update_zero", "push_promise", "priority", "refused_stream", "rapid_reset",
    "stream_rate", "control_flood", "empty_frames",
)
assert len(ERROR_KINDS) == N_KINDS

cdef enum:
    C_NAME = 1      # lowercase token characters (RFC 9110 5.6.2, RFC 9113 8.2.1)
    C_VALUE = 2     # field-vchar, SP, HTAB (RFC 9110 5.5)
    C_AUTH = 8      # authority characters (RFC 3986 3.2): no '@' (8.3.1), '/', '?', '#'
    C_TOKEN = 16    # token, any case (methods)
    C_DIGIT = 32

cdef uint8_t CLS[256]


cdef void _init() noexcept:
    cdef int c
    for c in range(256):
        CLS[c] = 0
        if (48 <= c <= 57) or (97 <= c <= 122) or c in b"!#$%&'*+-.^_`|~":
            CLS[c] |= C_NAME | C_TOKEN
        if 65 <= c <= 90:
            CLS[c] |= C_TOKEN
        if c == 9 or 32 <= c <= 126 or c >= 128:
            CLS[c] |= C_VALUE
        if 33 <= c <= 126 and c not in b"@/?#\\\"<>^`{|}":
            CLS[c] |= C_AUTH
        if 48 <= c <= 57:
            CLS[c] |= C_DIGIT


_init()


cdef inline bint _all(bytes s, uint8_t cls) noexcept:
    cdef const uchar* p = <const uchar*>PyBytes_AS_STRING(s)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(s)
    for i in range(n):
        if not (CLS[p[i]] & cls):
            return False
    return True


cdef inline bint _eq(bytes a, const char* b, Py_ssize_t n) noexcept:
    return PyBytes_GET_SIZE(a) == n and memcmp(PyBytes_AS_STRING(a), b, n) == 0


cdef inline bint _ieq_mem(const uchar* p, const uchar* q, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if (p[i] | 0x20 if 65 <= p[i] <= 90 else p[i]) != (q[i] | 0x20 if 65 <= q[i] <= 90 else q[i]):
            return False
    return True


cdef inline bint _ieq(bytes a, bytes b) noexcept:
    return PyBytes_GET_SIZE(a) == PyBytes_GET_SIZE(b) and _ieq_mem(
        <const uchar*>PyBytes_AS_STRING(a), <const uchar*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(a))


cdef inline bint _peq(const char* p, Py_ssize_t n, const char* s, Py_ssize_t k) noexcept:
    return n == k and memcmp(p, s, k) == 0


cdef bint connection_field(const char* p, Py_ssize_t n) noexcept:
    """RFC 9113 8.2.2: a connection-specific field name (lowercase; `te` apart). The one
    list: the checks refuse these, the mappings drop them."""
    return (_peq(p, n, "connection", 10) or _peq(p, n, "keep-alive", 10)
            or _peq(p, n, "proxy-connection", 16) or _peq(p, n, "transfer-encoding", 17)
            or _peq(p, n, "upgrade", 7))


cdef int _regular(bytes name, bytes value, MsgInfo* info) except -1:
    """Check one regular field; fold content-length into info."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name), vn = PyBytes_GET_SIZE(value)
    cdef const uchar* v = <const uchar*>PyBytes_AS_STRING(value)
    cdef long long cl
    if n == 0 or not _all(name, C_NAME):
        return K_FIELD_NAME
    if not _all(value, C_VALUE) or (vn and (v[0] in (32, 9) or v[vn - 1] in (32, 9))):
        return K_FIELD_VALUE
    if connection_field(PyBytes_AS_STRING(name), n):
        return K_CONNECTION_FIELD
    if _eq(name, "te", 2) and not _ieq(value, b"trailers"):
        return K_TE
    if info != NULL and _eq(name, "content-length", 14):
        # Digits only (no list form), at most 18 of them; repeats must agree.
        if vn == 0 or vn > 18 or not _all(value, C_DIGIT):
            return K_CONTENT_LENGTH
        cl = int(value)
        if info.content_length >= 0 and info.content_length != cl:
            return K_CONTENT_LENGTH
        info.content_length = cl
    return K_OK


cdef int check_request(list headers, MsgInfo* info) except -1:
    """RFC 9113 8.3.1 request pseudo-headers and 8.2 fields; 0 or an error kind."""
    cdef bytes method = None, scheme = None, path = None, authority = None, host = None
    cdef bytes name, value
    cdef bint regular_seen = False
    cdef int k
    cdef const char* pn
    info.content_length = -1
    info.status = 0
    info.connect = False
    info.head = False
    for name, value in headers:
        pn = PyBytes_AS_STRING(name)
        if PyBytes_GET_SIZE(name) and pn[0] == b":":
            if regular_seen:
                return K_PSEUDO
            if _eq(name, ":method", 7):
                if method is not None or not value or not _all(value, C_TOKEN):
                    return K_PSEUDO
                method = value
            elif _eq(name, ":scheme", 7):
                if scheme is not None or not value or not _all(value, C_NAME):
                    return K_PSEUDO
                scheme = value
            elif _eq(name, ":path", 5):
                # 8.3.1: the path and query of a URI, so the HTTP/1.1 request-target
                # bytes (one definition, in _http).
                if path is not None or not value or not target_chars(
                        <const uchar*>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value)):
                    return K_PSEUDO
                path = value
            elif _eq(name, ":authority", 10):
                if authority is not None or not value or not _all(value, C_AUTH):
                    return K_PSEUDO
                authority = value
            else:
                return K_PSEUDO       # :status, :protocol (no extended CONNECT), unknown
            continue
        regular_seen = True
        k = _regular(name, value, info)
        if k:
            return k
        if _eq(name, "host", 4):
            if host is not None or not value or not _all(value, C_AUTH):
                return K_AUTHORITY_HOST
            host = value
    if method is None:
        return K_PSEUDO
    if _eq(method, "CONNECT", 7):
        # 8.5: only :method and :authority.
        if scheme is not None or path is not None or authority is None:
            return K_PSEUDO
        info.connect = True
        info.content_length = -1
    else:
        if scheme is None or path is None:
            return K_PSEUDO
        if (_eq(scheme, "http", 4) or _eq(scheme, "https", 5)) and \
                (<const char*>PyBytes_AS_STRING(path))[0] != b"/" and \
                not (_eq(path, "*", 1) and _eq(method, "OPTIONS", 7)):
            return K_PSEUDO
        if authority is None and host is None:
            return K_PSEUDO
        info.head = _eq(method, "HEAD", 4)
    if authority is not None and host is not None and not _ieq(authority, host) \
            and not _same_authority(scheme, authority, host):
        return K_AUTHORITY_HOST
    return K_OK


cdef Py_ssize_t _without_port(bytes scheme, bytes a) noexcept:
    """The length of a without an empty port or its scheme's default one (RFC 3986 6.2.3)."""
    cdef const char* p = PyBytes_AS_STRING(a)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(a)
    if n and p[n - 1] == b":":
        return n - 1
    if scheme is not None and _eq(scheme, "http", 4) and n > 3 and _peq(p + n - 3, 3, ":80", 3):
        return n - 3
    if scheme is not None and _eq(scheme, "https", 5) and n > 4 and _peq(p + n - 4, 4, ":443", 4):
        return n - 4
    return n


cdef bint _same_authority(bytes scheme, bytes a, bytes b) noexcept:
    """Whether a and b name the same host and port once normalised (RFC 9113 8.3.1 compares
    :authority and Host that way): "x.test" and "X.test:80" for http are one entity."""
    cdef Py_ssize_t n = _without_port(scheme, a)
    return n == _without_port(scheme, b) and _ieq_mem(
        <const uchar*>PyBytes_AS_STRING(a), <const uchar*>PyBytes_AS_STRING(b), n)


cdef int check_response(list headers, MsgInfo* info) except -1:
    """RFC 9113 8.3.2 response pseudo-header and 8.2 fields; 0 or an error kind."""
    cdef bytes name, value, status = None
    cdef bint regular_seen = False
    cdef int k
    info.content_length = -1
    info.status = 0
    for name, value in headers:
        if PyBytes_GET_SIZE(name) and PyBytes_AS_STRING(name)[0] == b":":
            if regular_seen or status is not None or not _eq(name, ":status", 7):
                return K_PSEUDO
            status = value
            continue
        regular_seen = True
        k = _regular(name, value, info)
        if k:
            return k
    if status is None:
        return K_PSEUDO
    if PyBytes_GET_SIZE(status) != 3 or not _all(status, C_DIGIT) or status[0] == 48:
        return K_STATUS
    info.status = int(status)
    if info.status == 101:
        return K_STATUS               # 8.6: no Upgrade in HTTP/2
    return K_OK


cdef int check_trailers(list headers) except -1:
    """RFC 9113 8.1: trailers carry no pseudo-headers; fields as 8.2."""
    cdef bytes name, value
    cdef int k
    for name, value in headers:
        if PyBytes_GET_SIZE(name) and PyBytes_AS_STRING(name)[0] == b":":
            return K_TRAILERS
        k = _regular(name, value, NULL)
        if k:
            return k
    return K_OK


def validate(list headers, str kind="request"):
    """Check a header list as a request, response or trailers; return the error kind name."""
    cdef MsgInfo info
    if kind == "request":
        k = check_request(headers, &info)
    elif kind == "response":
        k = check_response(headers, &info)
    elif kind == "trailers":
        k = check_trailers(headers)
    else:
        raise ValueError(f"kind must be request, response or trailers, not {kind!r}")
    return ERROR_KINDS[k] if k else None


# ---------------------------------------------------------------------------
# HTTP/1.1 <-> HTTP/2

cdef inline bint _dropped(bytes name) noexcept:
    """Not carried across the protocol boundary (RFC 9113 8.2.2): connection-specific
    fields, and te (the request mapping keeps `te: trailers` itself)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
    cdef const char* p = PyBytes_AS_STRING(name)
    return connection_field(p, n) or _peq(p, n, "te", 2)

import http as _http_mod
cdef dict _REASONS = {int(s): s.phrase.encode() for s in _http_mod.HTTPStatus}
cdef dict _STATUS_LINES = {}


def request_head(list headers, bint body, bint absolute=False):
    """An HTTP/1.1 request head from a validated HTTP/2 request header list.

    `body`: DATA follows (the HEADERS frame did not end the stream); without a
    content-length the head then says `Transfer-Encoding: chunked`.  `absolute`: use
    the absolute form `scheme://authority/path` (for a forward proxy's next hop).
    Cookie crumbs are joined with "; " (RFC 9113 8.2.3); Host comes from :authority.
    """
    return h2_request_head(headers, body, absolute)


cdef const char* _TE_CHUNKED = "transfer-encoding: chunked\r\n"
cdef Py_ssize_t _TE_CHUNKED_LEN = 28


cdef inline char* _put(char* o, bytes b) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    memcpy(o, PyBytes_AS_STRING(b), n)
    return o + n


cdef inline char* _putc(char* o, const char* s, Py_ssize_t n) noexcept:
    memcpy(o, s, n)
    return o + n


cdef bytes h2_request_head(list headers, bint body, bint absolute):
    """request_head, compiled: the size is counted in a first pass over the fields, then
    the head is copied into one bytes object (a profile showed the list of pieces and
    its join per request)."""
    cdef bytes name, value, method = b"", scheme = b"", path = b"", authority = None
    cdef bytes target, out
    cdef Py_ssize_t size = 0, cookie_size = 0, ncookies = 0, n
    cdef bint has_cl = False, chunked
    cdef const char* p
    cdef char* o
    cdef tuple field
    for field in headers:
        if type(field[0]) is not bytes or type(field[1]) is not bytes:
            raise TypeError("field names and values must be bytes")
        name = field[0]
        value = field[1]
        p = PyBytes_AS_STRING(name)
        n = PyBytes_GET_SIZE(name)
        if n and p[0] == b':':
            if _eq(name, ":method", 7):
                method = value
            elif _eq(name, ":path", 5):
                path = value
            elif _eq(name, ":authority", 10):
                authority = value
            elif _eq(name, ":scheme", 7):
                scheme = value
        elif _eq(name, "cookie", 6):
            ncookies += 1
            cookie_size += PyBytes_GET_SIZE(value)
        elif _eq(name, "host", 4):
            if authority is None:
                authority = value
        else:
            if _eq(name, "content-length", 14):
                has_cl = True
            size += n + PyBytes_GET_SIZE(value) + 4
    if _eq(method, "CONNECT", 7):
        target = authority
    elif absolute:
        # ":path *" (server-wide OPTIONS, RFC 9113 8.3.1) is an absolute form without a
        # path (RFC 9112 3.2.4); the forward handler sends it on as "OPTIONS *".
        target = scheme + b"://" + authority + (b"" if _eq(path, "*", 1) else path)
    else:
        target = path
    if target is None:
        raise TypeError("a CONNECT or absolute-form head needs an authority")
    chunked = body and not has_cl and not _eq(method, "CONNECT", 7)
    size += PyBytes_GET_SIZE(method) + 1 + PyBytes_GET_SIZE(target) + 11 + 2
    if authority is not None:
        size += 6 + PyBytes_GET_SIZE(authority) + 2
    if ncookies:
        size += 8 + cookie_size + 2 * (ncookies - 1) + 2
    if chunked:
        size += 28
    out = PyBytes_FromStringAndSize(NULL, size)
    o = PyBytes_AS_STRING(out)
    o = _put(o, method)
    o[0] = b' '
    o = _put(o + 1, target)
    o = _putc(o, " HTTP/1.1\r\n", 11)
    if authority is not None:
        o = _putc(o, "host: ", 6)
        o = _put(o, authority)
        o = _putc(o, "\r\n", 2)
    for field in headers:
        name = field[0]
        p = PyBytes_AS_STRING(name)
        n = PyBytes_GET_SIZE(name)
        if (n and p[0] == b':') or _eq(name, "cookie", 6) or _eq(name, "host", 4):
            continue
        o = _put(o, name)
        o = _putc(o, ": ", 2)
        o = _put(o, <bytes>field[1])
        o = _putc(o, "\r\n", 2)
    if ncookies:
        o = _putc(o, "cookie: ", 8)
        for field in headers:
            if _eq(<bytes>field[0], "cookie", 6):
                if ncookies < 0:
                    o = _putc(o, "; ", 2)
                ncookies = -1
                o = _put(o, <bytes>field[1])
        o = _putc(o, "\r\n", 2)
    if chunked:
        o = _putc(o, "transfer-encoding: chunked\r\n", 28)
    _putc(o, "\r\n", 2)
    return out


cdef set _connection_names(fields):
    """Field names a Connection header lists (they are hop-by-hop too, RFC 9110 7.6.1)."""
    cdef set named = set()
    for name, value in fields:
        if name.lower() == b"connection":
            for tok in value.split(b","):
                tok = tok.strip().lower()
                if tok:
                    named.add(tok)
    return named


def response_headers(int status, fields):
    """An HTTP/2 header list from an HTTP/1.1 response's status and (name, value) fields.

    Names are lowercased; connection-specific fields and those Connection names are
    dropped (RFC 9113 8.2.2).
    """
    cdef list out = [(b":status", str(status).encode())]
    cdef set named = _connection_names(fields)
    for name, value in fields:
        name = name.lower()
        if _dropped(name) or name in named:
            continue
        out.append((name, value))
    return out


cdef dict _STATUS = {}


cdef bytes _status_value(int status):
    """The :status value (RFC 9113 8.3.2), made once per code."""
    value = _STATUS.get(status)
    if value is None:
        value = str(status).encode()
        _STATUS[status] = value
    return value


cdef inline bytes _lower_name(const uchar* h, Field* f):
    """A field's name, lowercased into a new bytes object."""
    cdef Py_ssize_t k, n = f.name_len
    cdef bytes name = PyBytes_FromStringAndSize(NULL, n)
    cdef char* q = PyBytes_AS_STRING(name)
    cdef uchar c
    for k in range(n):
        c = h[f.name_off + k]
        q[k] = <char>(c + 32 if 65 <= c <= 90 else c)
    return name


cdef list h2_response_fields(Response resp):
    """response_headers(resp.status, resp.headers()) for a parsed head, without the
    intermediate list; a head with a Connection field takes that general path."""
    cdef const uchar* h = resp._h()
    cdef list out = [(b":status", _status_value(resp.status))]
    cdef Field* f
    cdef bytes name
    cdef int i
    for i in range(resp._nf):
        f = &resp._fields[i]
        name = _lower_name(h, f)
        if _eq(name, "connection", 10):
            return response_headers(resp.status, resp.headers())
        if _dropped(name):
            continue
        out.append((name, PyBytes_FromStringAndSize(<const char*>h + f.value_off,
                                                    f.value_len)))
    return out


cdef bytes _last_extra = b""
cdef list _last_extra_fields = []


cdef list _extra_fields(bytes extra):
    """`extra`'s "Name: value" CRLF lines as (lowercase name, value) pairs, less the
    connection-specific ones. The relay's extra lines are mostly the same bytes from one
    response to the next (Via; Date changes once a second), so the last result is kept:
    the same value objects also spare the HPACK encoder hashing them again."""
    global _last_extra, _last_extra_fields
    if extra == _last_extra:
        return _last_extra_fields
    cdef const uchar* p = <const uchar*>PyBytes_AS_STRING(extra)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(extra), a = 0, e, c, v, w, k
    cdef list out = []
    cdef bytes name
    cdef char* q
    while a < n:
        e = a
        while e < n and p[e] != 13 and p[e] != 10:
            e += 1
        c = a
        while c < e and p[c] != 58:      # ':'
            c += 1
        if a < c < e:
            name = PyBytes_FromStringAndSize(NULL, c - a)
            q = PyBytes_AS_STRING(name)
            for k in range(c - a):
                q[k] = <char>(p[a + k] + 32 if 65 <= p[a + k] <= 90 else p[a + k])
            if not _dropped(name):
                v = c + 1
                w = e
                while v < w and (p[v] == 32 or p[v] == 9):
                    v += 1
                while w > v and (p[w - 1] == 32 or p[w - 1] == 9):
                    w -= 1
                out.append((name, PyBytes_FromStringAndSize(<const char*>p + v, w - v)))
        a = e
        while a < n and (p[a] == 13 or p[a] == 10):
            a += 1
    _last_extra = extra
    _last_extra_fields = out
    return out


cdef int h2_encode_forward(Encoder enc, bytearray out, Response resp, bytes extra) except -1:
    """The HTTP/2 header block of the head the relay forwards to an HTTP/1.1 client,
    resp.forward_c(None, extra, (), False), HPACK-encoded into `out` without making
    that head or a header list: :status, the same fields (Response._skips, one
    definition of what is dropped; names lowercased by the encoder, which makes no
    objects for a field it sent at this place in the last block) and `extra`'s lines
    (Via, Date, the cache's fields), less the connection-specific ones (RFC 9113 8.2.2:
    the relay's Transfer-Encoding and Connection lines)."""
    cdef const uchar* h = resp._h()
    cdef uint8_t stackmask[128]
    cdef uint8_t* skip = stackmask
    cdef Field* f
    cdef int i
    cdef Py_ssize_t at = 1
    if resp._nf > 128:
        skip = <uint8_t*>malloc(resp._nf)
        if skip == NULL:
            raise MemoryError()
    try:
        resp._skips(skip, (), False)
        enc.begin_block(out)
        enc.field_at(out, 0, b":status", _status_value(resp.status))
        for i in range(resp._nf):
            if not skip[i]:
                f = &resp._fields[i]
                enc.field_raw(out, at, h + f.name_off, f.name_len, h + f.value_off,
                              f.value_len)
                at += 1
    finally:
        if skip != stackmask:
            free(skip)
    if extra:
        for field in _extra_fields(extra):
            enc.field_at(out, at, <bytes>(<tuple>field)[0], <bytes>(<tuple>field)[1])
            at += 1
    return 0


cdef list h2_request_fields(Request req, bytes scheme, bytes authority):
    """request_headers(req.method, scheme, authority, req.target, req.headers()) plus
    `te: trailers`, for a parsed head, without the intermediate list; a head with a
    Connection field takes that general path."""
    cdef const uchar* h = req._h()
    cdef list out = [(b":method", req.method), (b":scheme", scheme),
                     (b":authority", authority), (b":path", req.target)]
    cdef Field* f
    cdef bytes name
    cdef int i
    for i in range(req._nf):
        f = &req._fields[i]
        name = _lower_name(h, f)
        if _eq(name, "connection", 10):
            out = request_headers(req.method, scheme, authority, req.target, req.headers())
            for field in out:
                if (<tuple>field)[0] == b"te":
                    return out
            break
        if _dropped(name) or _eq(name, "host", 4):
            continue
        out.append((name, PyBytes_FromStringAndSize(<const char*>h + f.value_off,
                                                    f.value_len)))
    out.append((b"te", b"trailers"))
    return out


cdef int h2_encode_request(Encoder enc, bytearray out, Request req, bytes scheme,
                           bytes authority) except -1:
    """h2_request_fields(req, scheme, authority) HPACK-encoded into `out`; for a head
    without a Connection field (the usual case) without the list: the same fields in
    the same order, each name lowercased by the encoder, which makes no objects for a
    field it sent at this place in the last block."""
    cdef const uchar* h = req._h()
    cdef Field* f
    cdef int i
    cdef Py_ssize_t k, n, at = 4
    cdef char low[32]
    cdef uchar c
    for i in range(req._nf):
        f = &req._fields[i]
        if f.name_len == 10 and _ieq_raw(h + f.name_off, "connection", 10):
            enc.encode_c(out, h2_request_fields(req, scheme, authority))
            return 0
    enc.begin_block(out)
    enc.field_at(out, 0, b":method", req.method)
    enc.field_at(out, 1, b":scheme", scheme)
    enc.field_at(out, 2, b":authority", authority)
    enc.field_at(out, 3, b":path", req.target)
    for i in range(req._nf):
        f = &req._fields[i]
        n = f.name_len
        if n <= 17:
            # The names dropped here (connection-specific ones, te, host) are short.
            for k in range(n):
                c = h[f.name_off + k]
                low[k] = <char>(c + 32 if 65 <= c <= 90 else c)
            if connection_field(low, n) or _peq(low, n, "te", 2) or _peq(low, n, "host", 4):
                continue
        enc.field_raw(out, at, h + f.name_off, n, h + f.value_off, f.value_len)
        at += 1
    enc.field_at(out, at, b"te", b"trailers")
    return 0


def request_block(Encoder enc, Request req, bytes scheme, bytes authority):
    """(the header block the upstream link sends for a parsed request, the header list
    h2_request_fields makes of it): what a test compares."""
    cdef bytearray out = bytearray()
    h2_encode_request(enc, out, req, scheme, authority)
    return bytes(out), h2_request_fields(req, scheme, authority)


cdef inline bint _ieq_raw(const uchar* p, const char* lower, Py_ssize_t n) noexcept:
    cdef Py_ssize_t k
    cdef uchar c
    for k in range(n):
        c = p[k]
        if (c + 32 if 65 <= c <= 90 else c) != <uchar>lower[k]:
            return False
    return True


def request_headers(bytes method, bytes scheme, bytes authority, bytes path, fields):
    """An HTTP/2 header list for an HTTP/1.1 request sent to an HTTP/2 upstream.

    Host becomes :authority (`authority` wins when given); connection-specific fields
    are dropped except `te: trailers` (RFC 9113 8.2.2). For CONNECT pass
    scheme=path=None.
    """
    cdef set named = _connection_names(fields)
    cdef list rest = []
    for name, value in fields:
        name = name.lower()
        if name == b"host":
            if authority is None:
                authority = value
            continue
        if name == b"te":
            if value.strip().lower() == b"trailers":
                rest.append((b"te", b"trailers"))
            continue
        if _dropped(name) or name in named:
            continue
        rest.append((name, value))
    cdef list out = [(b":method", method)]
    if scheme is not None:
        out.append((b":scheme", scheme))
    if authority is not None:
        out.append((b":authority", authority))
    if path is not None:
        out.append((b":path", path))
    return out + rest


def response_head(list headers, bint body):
    """An HTTP/1.1 response head from a validated HTTP/2 response header list.

    `body`: DATA follows; without a content-length the head then says
    `Transfer-Encoding: chunked` (not for 1xx, 204 and 304, which have no content).
    """
    return h2_response_head(headers, body)


cdef bytes h2_response_head(list headers, bint body):
    """response_head, a C call for the upstream links (ext/h2link.pyx): the head is
    measured, then written once."""
    cdef int status = 0
    cdef bint has_cl = False, chunked
    cdef bytes name, value, line
    cdef Py_ssize_t size = 2, k, nl, vl
    cdef const char* v
    for field in headers:
        name = <bytes>(<tuple>field)[0]
        value = <bytes>(<tuple>field)[1]
        nl = PyBytes_GET_SIZE(name)
        if nl and PyBytes_AS_STRING(name)[0] == b':':
            if _eq(name, ":status", 7):
                # Three digits: the codec checked :status (RFC 9113 8.3.2).
                v = PyBytes_AS_STRING(value)
                vl = PyBytes_GET_SIZE(value)
                status = 0
                for k in range(vl):
                    if not 48 <= v[k] <= 57 or k >= 3:
                        raise ValueError(f"bad :status {value!r}")
                    status = status * 10 + (v[k] - 48)
        else:
            if _eq(name, "content-length", 14):
                has_cl = True
            size += nl + 4 + PyBytes_GET_SIZE(value)
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))
        if 100 <= status <= 999:
            _STATUS_LINES[status] = line
    chunked = body and not has_cl and status >= 200 and status != 204 and status != 304
    size += PyBytes_GET_SIZE(line) + (_TE_CHUNKED_LEN if chunked else 0)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char* o = PyBytes_AS_STRING(out)
    o = _put(o, line)
    for field in headers:
        name = <bytes>(<tuple>field)[0]
        if PyBytes_GET_SIZE(name) and PyBytes_AS_STRING(name)[0] == b':':
            continue
        o = _put(o, name)
        o = _putc(o, ": ", 2)
        o = _put(o, <bytes>(<tuple>field)[1])
        o = _putc(o, "\r\n", 2)
    if chunked:
        o = _putc(o, _TE_CHUNKED, _TE_CHUNKED_LEN)
    _putc(o, "\r\n", 2)
    return out


cdef list h2_trailer_fields(bytes raw):
    """HTTP/2 trailers from HTTP/1.1 trailer lines (already checked by the decoder)."""
    cdef list fields = []
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep and name:
            fields.append((name.strip().lower(), value.strip()))
    return fields
