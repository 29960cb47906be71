# cython: language_level=3
"""HTTP/1.1 message heads and framing (RFC 9112), for a proxy.

Design (picohttpparser style): the head is parsed in place in the caller's
buffer; every header field is kept as four offsets into one `bytes` object
holding the head, never as a Python object, until the caller asks for one.
A parser that sees an incomplete head remembers where the first unfinished
line starts and how far it already searched for its LF, so feeding a head
byte by byte costs O(length), not O(length^2).

Strictness: everything RFC 9112 lets a recipient reject as ambiguous is
rejected with a `ParseError` whose `.status` is the response to send and
whose `.code` is a stable identifier for the log.  The public surface is
documented in `fastproxy/_http.pyi`.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.ref cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memchr, memcmp, memcpy


# ---------------------------------------------------------------------------
# Public constants

BODY_NONE = 0
BODY_LENGTH = 1
BODY_CHUNKED = 2
BODY_CLOSE = 3

TARGET_ORIGIN = 0
TARGET_ABSOLUTE = 1
TARGET_AUTHORITY = 2
TARGET_ASTERISK = 3

LAST_CHUNK = b"0\r\n\r\n"

cdef enum:
    _BODY_NONE = 0
    _BODY_LENGTH = 1
    _BODY_CHUNKED = 2
    _BODY_CLOSE = 3

# ---------------------------------------------------------------------------
# Errors


class ParseError(ValueError):
    """A message that must be refused; `.status` is the answer, `.code` the log key."""

    def __init__(self, status, code, detail=""):
        ValueError.__init__(self, f"{code}: {detail}" if detail else code)
        self.status = status
        self.code = code


class BadSyntax(ParseError):
    """Malformed start line, field line or target (RFC 9112 sections 2-5)."""


class BadFraming(ParseError):
    """Ambiguous or invalid message framing (RFC 9112 section 6-7): smuggling guards."""


class TooLarge(ParseError):
    """A configured size or count limit was exceeded (413, 414, 431)."""


class Unsupported(ParseError):
    """Valid HTTP we do not implement: version (505) or transfer coding (501)."""


# Kept in C variables so raising does not look the classes up by name.
cdef object _BadSyntax = BadSyntax
cdef object _BadFraming = BadFraming
cdef object _TooLarge = TooLarge
cdef object _Unsupported = Unsupported


cdef int _fail(object cls, int status, str code, str detail) except -1:
    raise cls(status, code, detail)


# ---------------------------------------------------------------------------
# Byte classes

cdef enum:
    C_TCHAR = 1     # token characters (RFC 9110 5.6.2)
    C_VALUE = 2     # field-vchar, SP, HTAB (RFC 9110 5.5); obs-text included
    C_PATH = 4      # request-target bytes before the query (see _init_tables)
    C_HEX = 8
    C_DIGIT = 16
    C_REGNAME = 32  # unreserved / sub-delims / '%' (RFC 3986 3.2.2)
    C_SCHEME = 64   # ALPHA / DIGIT / "+" / "-" / "." (RFC 3986 3.1)
    C_QUERY = 128   # request-target bytes after the first '?' (see _init_tables)

cdef uint8_t CLS[256]
cdef uchar LOWER[256]
cdef signed char HEXVAL[256]


cdef void _init_tables() noexcept:
    cdef int c
    cdef bytes tchar_extra = b"!#$%&'*+-.^_`|~"
    cdef bytes sub_delims = b"!$&'()*+,;=-._~%"
    # RFC 3986 2.2 reserved (gen-delims without '#' and '?', sub-delims), 2.3 unreserved;
    # '%' is checked apart in the path (it must start %HH), a plain byte in the query.
    cdef bytes path_extra = b":/[]@!$&'()*+,;=-._~"
    for c in range(256):
        CLS[c] = 0
        LOWER[c] = c
        HEXVAL[c] = -1
        if (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122):
            CLS[c] |= C_TCHAR | C_REGNAME | C_SCHEME | C_PATH | C_QUERY
        if c == 9 or c == 32 or (33 <= c <= 126) or c >= 128:
            CLS[c] |= C_VALUE
        if 48 <= c <= 57:
            CLS[c] |= C_DIGIT | C_HEX
            HEXVAL[c] = c - 48
        if 65 <= c <= 70:
            CLS[c] |= C_HEX
            HEXVAL[c] = c - 55
        if 97 <= c <= 102:
            CLS[c] |= C_HEX
            HEXVAL[c] = c - 87
        if 65 <= c <= 90:
            LOWER[c] = c + 32
    for c in tchar_extra:
        CLS[c] |= C_TCHAR
    for c in sub_delims:
        CLS[c] |= C_REGNAME
    # RFC 9112 3.2 / RFC 3986 2: a request-target is made of unreserved, reserved and
    # '%' only. Not '#' (a target never carries a fragment), nor the VCHARs 3986 leaves
    # out (" < > \ ^ ` { | }), nor obs-text: origins differ on what they mean (IIS and
    # others read '\' as '/', so "/admin\..\x" passes a route on the raw path).
    # One exception, in the query only: \ ^ ` { | }, which browsers send raw there
    # (the WHATWG URL query percent-encode set leaves them out: Chromium sends
    # "?q=a|b{c}" as is, while it encodes them, and " < >, in the path), so refusing
    # them would refuse real users; a query is not a path an origin resolves.
    for c in path_extra:
        CLS[c] |= C_PATH | C_QUERY
    for c in b"%?\\^`{|}":
        CLS[c] |= C_QUERY
    for c in b"+-.":
        CLS[c] |= C_SCHEME


_init_tables()


cdef inline bint _ieq(const uchar* a, const char* lower, Py_ssize_t n) noexcept:
    """Compare a[0:n] case-insensitively with the lowercase ASCII string `lower`."""
    cdef Py_ssize_t i
    for i in range(n):
        if LOWER[a[i]] != <uchar>lower[i]:
            return False
    return True


cdef inline bint _ieq2(const uchar* a, const uchar* b, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if LOWER[a[i]] != LOWER[b[i]]:
            return False
    return True


# Word-at-a-time checks (portable SWAR, no SIMD flags needed for release wheels):
# a 64-bit word is tested for "some byte needs a closer look"; only then are its
# eight bytes checked one by one against the class table.
cdef extern from *:
    # Typed C constants: a bare 64-bit literal would be a Python int to Cython.
    """
    #define FP_ONES ((uint64_t)0x0101010101010101ULL)
    #define FP_HIGHS ((uint64_t)0x8080808080808080ULL)
    """
    const uint64_t FP_ONES
    const uint64_t FP_HIGHS


cdef inline uint64_t _has_less(uint64_t x, uint64_t n) noexcept:
    # Nonzero iff some byte of x is < n (exact for n <= 128, bytes >= 0x80 never match).
    return (x - FP_ONES * n) & ~x & FP_HIGHS


cdef inline uint64_t _has_byte(uint64_t x, uint64_t b) noexcept:
    return _has_less(x ^ (FP_ONES * b), 1)


cdef inline Py_ssize_t _bad_value_byte(const uchar* p, Py_ssize_t i, Py_ssize_t e) noexcept:
    """Index of the first byte of p[i:e] not allowed in a field value, else e."""
    cdef uint64_t x
    cdef Py_ssize_t start = i
    while i + 8 <= e:
        memcpy(&x, p + i, 8)
        if _has_less(x, 0x20) | _has_byte(x, 0x7f):
            # A flagged word (an HTAB, or a bad byte): the byte loop below goes on from
            # here. A loop over its 8 bytes in this one made the compiler keep 8 pointers
            # in step, 9 adds per clean word.
            break
        i += 8
    else:
        if i < e and e - start >= 8:
            # The last 1-7 bytes: one word ending at e (it overlaps checked bytes)
            # instead of a loop per byte.
            memcpy(&x, p + e - 8, 8)
            if not (_has_less(x, 0x20) | _has_byte(x, 0x7f)):
                return e
    while i < e:
        if not (CLS[p[i]] & C_VALUE):
            return i
        i += 1
    return e


cdef inline Py_ssize_t _run(const uchar* p, Py_ssize_t i, Py_ssize_t e, uint8_t cls) noexcept:
    """Index of the first byte of p[i:e] outside the class `cls`, else e."""
    # Eight table reads and-ed together per step: the sets have holes all over the
    # printable range (" < > \ ^ ` { | }), so the word-at-a-time range tests used for
    # field values would need a test per hole, more work than the reads.
    while i + 8 <= e:
        if not (CLS[p[i]] & CLS[p[i + 1]] & CLS[p[i + 2]] & CLS[p[i + 3]]
                & CLS[p[i + 4]] & CLS[p[i + 5]] & CLS[p[i + 6]] & CLS[p[i + 7]] & cls):
            break
        i += 8
    while i < e and CLS[p[i]] & cls:
        i += 1
    return i


cdef inline Py_ssize_t _target_end(const uchar* p, Py_ssize_t i, Py_ssize_t e,
                                   bint query) noexcept:
    """Index of the first byte of p[i:e] that cannot be in a request-target, else e;
    `query`: p[i] is past the target's first '?'."""
    if not query:
        while True:
            i = _run(p, i, e, C_PATH)
            # RFC 3986 2.1: '%' starts %HH. In the path only: a malformed escape is read
            # differently by origins (IIS decodes "%u0061dmin" to "admin", past a route
            # on /admin); in a query a stray '%' ("?off=100%") is common and harmless.
            if (i + 2 < e and p[i] == b'%' and CLS[p[i + 1]] & C_HEX
                    and CLS[p[i + 2]] & C_HEX):
                i += 3
                continue
            if i == e or p[i] != b'?':
                return i
            break
    return _run(p, i, e, C_QUERY)


cdef inline bint _escape_start(const uchar* p, Py_ssize_t i, Py_ssize_t n) noexcept:
    """p[i:n] is '%' and at most one hex digit: an escape whose digits are still to come."""
    return p[i] == b'%' and (i + 1 == n or (i + 2 == n and CLS[p[i + 1]] & C_HEX))


cdef int _bad_target_byte(uchar c) except -1:
    """Raise the 400 for the first byte _target_end refused (not '#': see the callers)."""
    if c == b'%':
        _fail(_BadSyntax, 400, "bad_target", "'%' not followed by two hex digits in the path")
    _fail(_BadSyntax, 400, "bad_target", "invalid character in request-target")


cdef bint target_chars(const uchar* p, Py_ssize_t n) noexcept:
    """Whether p[0:n] holds only request-target bytes (HTTP/2's :path uses this set too)."""
    return _target_end(p, 0, n, False) == n


# ---------------------------------------------------------------------------
# Header fields as offsets

cdef enum:
    K_OTHER = 0
    K_HOST
    K_CONTENT_LENGTH
    K_TRANSFER_ENCODING
    K_CONNECTION
    K_UPGRADE
    K_EXPECT
    K_CACHE_CONTROL
    K_KEEP_ALIVE
    K_PROXY_CONNECTION
    K_TE
    K_LOOKALIKE      # Content_Length / Transfer_Encoding: refused, see _analyze

cdef enum:
    F_HOP = 1        # hop-by-hop (RFC 9110 7.6.1): never forwarded
    F_DUP_CL = 2     # a repeated, identical Content-Length: forwarded once
    F_UPGRADE = 4    # the Upgrade field: forwarded only with keep_upgrade


cdef bint _ieq_us(const uchar* a, const char* lower, Py_ssize_t n) noexcept:
    """Like _ieq, but '_' in a also matches '-'."""
    cdef Py_ssize_t i
    for i in range(n):
        if LOWER[a[i]] != <uchar>lower[i] and not (a[i] == b'_' and lower[i] == b'-'):
            return False
    return True


cdef uint8_t _classify(const uchar* n, Py_ssize_t k) noexcept:
    # Dispatch on length first: most names are rejected by one comparison.
    if k == 4:
        if _ieq(n, b"host", 4):
            return K_HOST
    elif k == 14:
        if _ieq(n, b"content-length", 14):
            return K_CONTENT_LENGTH
        if _ieq_us(n, b"content-length", 14):
            return K_LOOKALIKE
    elif k == 10:
        if _ieq(n, b"connection", 10):
            return K_CONNECTION
        if _ieq(n, b"keep-alive", 10):
            return K_KEEP_ALIVE
    elif k == 17:
        if _ieq(n, b"transfer-encoding", 17):
            return K_TRANSFER_ENCODING
        if _ieq_us(n, b"transfer-encoding", 17):
            return K_LOOKALIKE
    elif k == 13:
        if _ieq(n, b"cache-control", 13):
            return K_CACHE_CONTROL
    elif k == 7:
        if _ieq(n, b"upgrade", 7):
            return K_UPGRADE
        # Trailer is end-to-end (RFC 9110 6.6.2, absent from 7.6.1's list): K_OTHER.
    elif k == 6:
        if _ieq(n, b"expect", 6):
            return K_EXPECT
    elif k == 2:
        if _ieq(n, b"te", 2):
            return K_TE
    elif k == 16:
        if _ieq(n, b"proxy-connection", 16):
            return K_PROXY_CONNECTION
    return K_OTHER


# Interned method objects: the proxy compares them with `is`-fast equality.
cdef bytes M_GET = b"GET"
cdef bytes M_HEAD = b"HEAD"
cdef bytes M_POST = b"POST"
cdef bytes M_PUT = b"PUT"
cdef bytes M_DELETE = b"DELETE"
cdef bytes M_CONNECT = b"CONNECT"
cdef bytes M_OPTIONS = b"OPTIONS"
cdef bytes M_TRACE = b"TRACE"
cdef bytes M_PATCH = b"PATCH"


cdef bytes _method(const uchar* m, Py_ssize_t n):
    # Methods are case-sensitive (RFC 9110 9.1): compare bytes exactly.
    if n == 3:
        if memcmp(m, b"GET", 3) == 0:
            return M_GET
        if memcmp(m, b"PUT", 3) == 0:
            return M_PUT
    elif n == 4:
        if memcmp(m, b"POST", 4) == 0:
            return M_POST
        if memcmp(m, b"HEAD", 4) == 0:
            return M_HEAD
    elif n == 7:
        if memcmp(m, b"CONNECT", 7) == 0:
            return M_CONNECT
        if memcmp(m, b"OPTIONS", 7) == 0:
            return M_OPTIONS
    elif n == 6:
        if memcmp(m, b"DELETE", 6) == 0:
            return M_DELETE
    elif n == 5:
        if memcmp(m, b"PATCH", 5) == 0:
            return M_PATCH
        if memcmp(m, b"TRACE", 5) == 0:
            return M_TRACE
    return PyBytes_FromStringAndSize(<const char*>m, n)


# ---------------------------------------------------------------------------
# Buffers


cdef inline int _acquire(object data, Py_buffer* view, const uchar** buf,
                         Py_ssize_t* n) except -1:
    """Point buf/n at data's bytes; return 1 if `view` must be released."""
    if PyBytes_CheckExact(data):
        buf[0] = <const uchar*>PyBytes_AS_STRING(data)
        n[0] = PyBytes_GET_SIZE(data)
        return 0
    PyObject_GetBuffer(data, view, PyBUF_SIMPLE)
    buf[0] = <const uchar*>view.buf
    n[0] = view.len
    return 1


# ---------------------------------------------------------------------------
# Authorities (RFC 3986 3.2) shared by the target checks and split_* helpers


cdef int _authority(const uchar* s, Py_ssize_t n, Py_ssize_t* hs, Py_ssize_t* hl,
                    long* port) noexcept:
    """Check host[:port] in s[0:n]; set the host span (no brackets) and port
    (-1 if absent or empty). Return 0, or -1 if malformed."""
    cdef Py_ssize_t i = 0, j
    cdef long p = 0
    cdef bint colon = False
    if n <= 0:
        return -1
    if s[0] == b'[':
        # IP-literal: only IPv6 addresses (hex, ':' and a dotted IPv4 tail).
        j = 1
        while j < n and s[j] != b']':
            if not (CLS[s[j]] & C_HEX or s[j] == b':' or s[j] == b'.'):
                return -1
            if s[j] == b':':
                colon = True
            j += 1
        if j >= n or j == 1 or not colon:
            return -1
        hs[0] = 1
        hl[0] = j - 1
        i = j + 1
    else:
        while i < n:
            if s[i] == b'%':
                if i + 2 >= n or not (CLS[s[i + 1]] & C_HEX) or not (CLS[s[i + 2]] & C_HEX):
                    return -1
                i += 3
            elif CLS[s[i]] & C_REGNAME:
                i += 1
            else:
                break
        if i == 0:
            return -1
        hs[0] = 0
        hl[0] = i
    if i == n:
        port[0] = -1
        return 0
    if s[i] != b':':
        return -1
    i += 1
    if i == n:
        port[0] = -1
        return 0
    if n - i > 5:
        return -1
    while i < n:
        if not (CLS[s[i]] & C_DIGIT):
            return -1
        p = p * 10 + (s[i] - 48)
        i += 1
    if p > 65535:
        return -1
    port[0] = p
    return 0


cdef bytes _lower_bytes(const uchar* s, Py_ssize_t n):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef uchar* o = <uchar*>PyBytes_AS_STRING(out)
    cdef Py_ssize_t i
    for i in range(n):
        o[i] = LOWER[s[i]]
    return out


def split_authority(target, long default_port=-1):
    """Split a CONNECT authority-form target into (host, port); IPv6 without brackets."""
    cdef Py_buffer view
    cdef const uchar* s
    cdef Py_ssize_t n, hs = 0, hl = 0
    cdef long port = -1
    cdef int release = _acquire(target, &view, &s, &n)
    try:
        if _authority(s, n, &hs, &hl, &port) < 0:
            _fail(_BadSyntax, 400, "bad_authority", "malformed host[:port]")
        if port < 0:
            if default_port < 0:
                # RFC 9110 9.3.6: a CONNECT target always carries the port.
                _fail(_BadSyntax, 400, "missing_port", "authority needs a port")
            port = default_port
        if port == 0:
            _fail(_BadSyntax, 400, "bad_port", "port 0")
        return _lower_bytes(s + hs, hl), port
    finally:
        if release:
            PyBuffer_Release(&view)


cdef int _absolute(const uchar* s, Py_ssize_t n, Py_ssize_t* scheme_len, Py_ssize_t* a0,
                   Py_ssize_t* a1, Py_ssize_t* hs, Py_ssize_t* hl, long* port) except -1:
    """Check an absolute-form target scheme://authority[path][?query] (RFC 9112 3.2.2)
    and locate its parts; raise ParseError(400) when malformed."""
    cdef Py_ssize_t i = 0, j
    if n == 0 or not (97 <= LOWER[s[0]] <= 122):
        _fail(_BadSyntax, 400, "bad_target", "absolute-form needs a scheme")
    while i < n and CLS[s[i]] & C_SCHEME:
        i += 1
    # Only hierarchical URIs with an authority make sense to a proxy (RFC 9110 4.2).
    if i + 2 >= n or s[i] != b':' or s[i + 1] != b'/' or s[i + 2] != b'/':
        _fail(_BadSyntax, 400, "bad_target", "absolute-form needs scheme://authority")
    scheme_len[0] = i
    j = i + 3
    a0[0] = j
    while j < n and s[j] != b'/' and s[j] != b'?':
        if s[j] == b'@':
            # RFC 9110 4.2.4: userinfo in an http(s) URI is to be treated as an error.
            _fail(_BadSyntax, 400, "userinfo_in_target", "user@host is not allowed")
        j += 1
    a1[0] = j
    i = _target_end(s, j, n, False)
    if i < n:
        if memchr(s + j, b'#', n - j) != NULL:
            _fail(_BadSyntax, 400, "fragment_in_target", "a request-target has no fragment")
        _bad_target_byte(s[i])
    if _authority(s + a0[0], j - a0[0], hs, hl, port) < 0:
        _fail(_BadSyntax, 400, "bad_authority", "malformed host[:port] in target")
    if port[0] == 0:
        _fail(_BadSyntax, 400, "bad_port", "port 0")
    return 0


def split_absolute(target):
    """Split an absolute-form target into (scheme, host, port, path); path starts with '/'."""
    cdef Py_buffer view
    cdef const uchar* s
    cdef Py_ssize_t n, sl = 0, a0 = 0, a1 = 0, hs = 0, hl = 0
    cdef long port = -1
    cdef bytes scheme, path
    cdef int release = _acquire(target, &view, &s, &n)
    try:
        _absolute(s, n, &sl, &a0, &a1, &hs, &hl, &port)
        scheme = _lower_bytes(s, sl)
        if port < 0:
            if scheme == b"http" or scheme == b"ws":
                port = 80
            elif scheme == b"https" or scheme == b"wss":
                port = 443
        if a1 == n:
            path = b"/"
        elif s[a1] == b'?':
            # RFC 9112 3.2.1: an empty path is sent as "/".
            path = b"/" + PyBytes_FromStringAndSize(<const char*>s + a1, n - a1)
        else:
            path = PyBytes_FromStringAndSize(<const char*>s + a1, n - a1)
        return scheme, _lower_bytes(s + a0 + hs, hl), port, path
    finally:
        if release:
            PyBuffer_Release(&view)


# ---------------------------------------------------------------------------
# Parsed messages


cdef class _Message:
    """Common part of Request and Response: the head and its field offsets."""


    cdef bytes _value(self, int i):
        cdef Field* f = &self._fields[i]
        return PyBytes_FromStringAndSize(<const char*>self._h() + f.value_off, f.value_len)

    cdef bytes _join(self, uint8_t kind, int first):
        """Values of every field of `kind`, joined with ", " (RFC 9110 5.3)."""
        cdef list parts = []
        cdef int i
        for i in range(first, self._nf):
            if self._fields[i].kind == kind:
                parts.append(self._value(i))
        return b", ".join(parts)

    def headers(self):
        """All fields in order: (original name, OWS-trimmed value)."""
        cdef const uchar* h = self._h()
        cdef list out = []
        cdef Field* f
        cdef int i
        for i in range(self._nf):
            f = &self._fields[i]
            out.append((PyBytes_FromStringAndSize(<const char*>h + f.name_off, f.name_len),
                        PyBytes_FromStringAndSize(<const char*>h + f.value_off, f.value_len)))
        return out

    cdef bint has_c(self, bytes name):
        """Whether a field called `name` (given in lowercase) is present; no allocation."""
        cdef const uchar* h = self._h()
        cdef const uchar* nm = <const uchar*>PyBytes_AS_STRING(name)
        cdef Py_ssize_t k = PyBytes_GET_SIZE(name)
        cdef Field* f
        cdef int i
        for i in range(self._nf):
            f = &self._fields[i]
            if f.name_len == k and _ieq2(h + f.name_off, nm, k):
                return True
        return False

    cdef object get_c(self, bytes name):
        """get(name) for compiled callers: the first value, or None."""
        cdef const uchar* h = self._h()
        cdef const uchar* nm = <const uchar*>PyBytes_AS_STRING(name)
        cdef Py_ssize_t k = PyBytes_GET_SIZE(name)
        cdef Field* f
        cdef int i
        for i in range(self._nf):
            f = &self._fields[i]
            if f.name_len == k and _ieq2(h + f.name_off, nm, k):
                return self._value(i)
        return None

    cdef object get_list_c(self, bytes name):
        """get_c for a list field: the values of every line called `name` joined with ", "
        (RFC 9110 5.3: one list), the value itself when there is one line, or None."""
        cdef const uchar* h = self._h()
        cdef const uchar* nm = <const uchar*>PyBytes_AS_STRING(name)
        cdef Py_ssize_t k = PyBytes_GET_SIZE(name)
        cdef Field* f
        cdef object first = None
        cdef list values = None
        cdef int i
        for i in range(self._nf):
            f = &self._fields[i]
            if f.name_len == k and _ieq2(h + f.name_off, nm, k):
                if first is None:
                    first = self._value(i)
                elif values is None:
                    values = [first, self._value(i)]
                else:
                    values.append(self._value(i))
        return first if values is None else b", ".join(values)

    def get(self, bytes name not None, default=None):
        """Value of the first field called `name` (case-insensitive), else default."""
        cdef const uchar* h = self._h()
        cdef const uchar* nm = <const uchar*>PyBytes_AS_STRING(name)
        cdef Py_ssize_t k = PyBytes_GET_SIZE(name)
        cdef Field* f
        cdef int i
        for i in range(self._nf):
            f = &self._fields[i]
            if f.name_len == k and _ieq2(h + f.name_off, nm, k):
                return self._value(i)
        return default

    def get_all(self, bytes name not None):
        """Values of every field called `name` (case-insensitive), in order."""
        cdef const uchar* h = self._h()
        cdef const uchar* nm = <const uchar*>PyBytes_AS_STRING(name)
        cdef Py_ssize_t k = PyBytes_GET_SIZE(name)
        cdef Field* f
        cdef list out = []
        cdef int i
        for i in range(self._nf):
            f = &self._fields[i]
            if f.name_len == k and _ieq2(h + f.name_off, nm, k):
                out.append(self._value(i))
        return out

    @property
    def host(self):
        """The Host field value (OWS-stripped), or None."""
        if self._host_i < 0:
            return None
        return self._value(self._host_i)

    @property
    def upgrade(self):
        """The Upgrade value when Connection lists "upgrade", else None."""
        if not self._conn_upgrade or self._upgrade_i < 0:
            return None
        return self._join(K_UPGRADE, self._upgrade_i)

    @property
    def cache_control(self):
        """Cache-Control value(s) joined with ", ", or None."""
        if self._cc_n == 0:
            return None
        if self._cc_n == 1:
            return self._value(self._cc_i)
        return self._join(K_CACHE_CONTROL, self._cc_i)

    @property
    def connection(self):
        """Connection tokens, lowercased, in order."""
        cdef list toks
        cdef int i
        cdef Field* f
        cdef const uchar* h
        cdef Py_ssize_t a, b, e
        if self._connection is None:
            toks = []
            h = self._h()
            for i in range(self._nf):
                f = &self._fields[i]
                if f.kind != K_CONNECTION:
                    continue
                a = f.value_off
                e = a + f.value_len
                while a < e:
                    while a < e and (h[a] == b',' or h[a] == b' ' or h[a] == b'\t'):
                        a += 1
                    b = a
                    while b < e and CLS[h[b]] & C_TCHAR:
                        b += 1
                    if b > a:
                        toks.append(_lower_bytes(h + a, b - a))
                    a = b
            self._connection = tuple(toks)
        return self._connection

    cdef int _skips(self, uint8_t* skip, tuple drop, bint keep_upgrade) except -1:
        """The one definition of the fields a forwarded head leaves out (skip[i] = 1):
        hop-by-hop (RFC 9110 7.6.1), a repeated Content-Length, Upgrade unless kept, and
        the lowercase names in `drop`. forward_c and forward_fields both use it."""
        cdef const uchar* h = self._h()
        cdef Py_ssize_t k, j, nd = len(drop)
        cdef Field* f
        cdef int i
        cdef PyObject* d
        cdef uchar c
        # The lengths and the first letters of the names in drop, as bit sets: a field
        # whose name fails either test (most of them) is compared with no name, so a long
        # drop list costs about two tests per field.
        cdef uint64_t lens = 0
        cdef bint long_names = False
        cdef uint64_t firsts[4]
        firsts[0] = firsts[1] = firsts[2] = firsts[3] = 0
        for j in range(nd):
            d = PyTuple_GET_ITEM(drop, j)
            if not PyBytes_CheckExact(<object>d):
                raise TypeError("drop must hold lowercase bytes field names")
            k = PyBytes_GET_SIZE(<object>d)
            if k == 0:
                continue
            if k < 64:
                lens |= (<uint64_t>1) << k
            else:
                long_names = True
            c = LOWER[<uchar>PyBytes_AS_STRING(<object>d)[0]]
            firsts[c >> 6] |= (<uint64_t>1) << (c & 63)
        for i in range(self._nf):
            f = &self._fields[i]
            skip[i] = (f.flags & (F_HOP | F_DUP_CL)) != 0
            if f.flags & F_UPGRADE and not keep_upgrade:
                skip[i] = 1
            if skip[i] or f.name_len == 0:
                continue
            if f.name_len < 64:
                if not ((lens >> f.name_len) & 1):
                    continue
            elif not long_names:
                continue
            c = LOWER[h[f.name_off]]
            if not (firsts[c >> 6] >> (c & 63)) & 1:
                continue
            for j in range(nd):
                d = PyTuple_GET_ITEM(drop, j)
                k = PyBytes_GET_SIZE(<object>d)
                if f.name_len == k and _ieq2(h + f.name_off,
                                             <const uchar*>PyBytes_AS_STRING(<object>d), k):
                    skip[i] = 1
                    break
        return 0

    cdef list forward_fields(self, tuple drop, bint keep_upgrade):
        """The fields forward_c keeps, as (lowercase name, value) pairs, in order: the
        same head for a next hop that takes a header list (HTTP/2, RFC 9113 8.2.1)."""
        cdef const uchar* h = self._h()
        cdef uint8_t stackmask[128]
        cdef uint8_t* skip = stackmask
        cdef list out = []
        cdef Field* f
        cdef int i
        if self._nf > 128:
            skip = <uint8_t*>malloc(self._nf)
            if skip == NULL:
                raise MemoryError()
        try:
            self._skips(skip, drop, keep_upgrade)
            for i in range(self._nf):
                if not skip[i]:
                    f = &self._fields[i]
                    out.append((_lower_bytes(h + f.name_off, f.name_len),
                                PyBytes_FromStringAndSize(<const char*>h + f.value_off,
                                                          f.value_len)))
            return out
        finally:
            if skip != stackmask:
                free(skip)

    cdef bytes forward_c(self, bytes start_line, bytes extra, tuple drop, bint keep_upgrade):
        cdef const uchar* h = self._h()
        cdef Py_ssize_t size, sl_len, ex_len
        cdef const uchar* sl
        cdef const uchar* ex
        cdef uint8_t stackmask[128]
        cdef uint8_t* skip = stackmask
        cdef int i
        cdef Field* f
        cdef uchar* o
        cdef bytes out
        cdef Py_ssize_t add_sp = 0, run_s, run_e, ls, ve
        if start_line is None:
            sl = h
            sl_len = self._sl_len
            # RFC 9112 4: status-line = HTTP-version SP status-code SP [reason-phrase].
            # The parser takes a status line without the last SP; what we send has it.
            if sl_len == 12 and memcmp(sl, b"HTTP/", 5) == 0:
                add_sp = 1
        else:
            sl = <const uchar*>PyBytes_AS_STRING(start_line)
            sl_len = PyBytes_GET_SIZE(start_line)
        ex = <const uchar*>PyBytes_AS_STRING(extra)
        ex_len = PyBytes_GET_SIZE(extra)
        if self._nf > 128:
            skip = <uint8_t*>malloc(self._nf)
            if skip == NULL:
                raise MemoryError()
        try:
            size = sl_len + add_sp + 2 + ex_len + 2
            self._skips(skip, drop, keep_upgrade)
            for i in range(self._nf):
                if not skip[i]:
                    f = &self._fields[i]
                    size += f.name_len + 1 + f.value_len + 2 + (f.value_len > 0)
            out = PyBytes_FromStringAndSize(NULL, size)
            o = <uchar*>PyBytes_AS_STRING(out)
            memcpy(o, sl, sl_len)
            if start_line is None and sl_len >= 8:
                # RFC 9110 2.5: an intermediary sends its own version. A higher 1.x minor
                # was parsed as 1.1 (RFC 9112 2.3) and goes on as HTTP/1.1 (a client or
                # server that knows no "HTTP/1.2" would refuse the message).
                if memcmp(sl, b"HTTP/1.", 7) == 0:
                    if o[7] > b'1':
                        o[7] = b'1'
                elif o[sl_len - 1] > b'1' and memcmp(sl + sl_len - 8, b"HTTP/1.", 7) == 0:
                    o[sl_len - 1] = b'1'
            if add_sp:
                o[sl_len] = b' '
            o += sl_len + add_sp
            o[0] = 13
            o[1] = 10
            o += 2
            # A field line already written as we write it ("Name: value" CRLF) is copied
            # as it is, and a run of such lines that follow each other in the head as one
            # block: most heads are mostly such runs, one memcpy instead of two per field.
            run_s = run_e = 0
            for i in range(self._nf):
                if skip[i]:
                    continue
                f = &self._fields[i]
                ls = f.name_off
                ve = f.value_off + f.value_len
                if (f.value_len and f.value_off == ls + f.name_len + 2
                        and h[ls + f.name_len] == b':' and h[ls + f.name_len + 1] == 32
                        and h[ve] == 13 and h[ve + 1] == 10):
                    if ls != run_e:
                        memcpy(o, h + run_s, run_e - run_s)
                        o += run_e - run_s
                        run_s = ls
                    run_e = ve + 2
                    continue
                memcpy(o, h + run_s, run_e - run_s)
                o += run_e - run_s
                run_s = run_e = 0
                memcpy(o, h + f.name_off, f.name_len)
                o += f.name_len
                o[0] = b':'
                o += 1
                if f.value_len:
                    o[0] = b' '
                    memcpy(o + 1, h + f.value_off, f.value_len)
                    o += 1 + f.value_len
                o[0] = 13
                o[1] = 10
                o += 2
            memcpy(o, h + run_s, run_e - run_s)
            o += run_e - run_s
            memcpy(o, ex, ex_len)
            o += ex_len
            o[0] = 13
            o[1] = 10
            return out
        finally:
            if skip != stackmask:
                free(skip)

    cdef int _analyze(self, bint response) except -1:
        """Derive framing and the proxy's fields from the headers (RFC 9112 6)."""
        cdef const uchar* h = self._h()
        cdef Field* f
        cdef int i, j, st
        cdef int te_n = 0, te_chunked = 0, te_other = 0
        cdef bint te_last_chunked = False
        cdef long long cl = -1, v
        cdef Py_ssize_t a, b, e, digits
        cdef uchar c
        cdef int host_n = 0
        cdef bint is_chunked
        cdef long port
        self._host_i = -1
        self._upgrade_i = -1
        self._cc_i = -1
        for i in range(self._nf):
            f = &self._fields[i]
            if f.kind == K_OTHER:
                continue
            a = f.value_off
            e = a + f.value_len
            if f.kind == K_HOST:
                host_n += 1
                if self._host_i < 0:
                    self._host_i = i
            elif f.kind == K_CONTENT_LENGTH:
                # RFC 9112 6.3 (5) and RFC 9110 8.6: plain digits only; a list,
                # a sign or an empty value is invalid framing.
                if a == e:
                    _fail(_BadFraming, 502 if response else 400, "bad_content_length",
                          "empty Content-Length")
                v = 0
                digits = 0
                while a < e:
                    c = h[a]
                    if not (CLS[c] & C_DIGIT):
                        _fail(_BadFraming, 502 if response else 400, "bad_content_length",
                              "Content-Length is not plain digits")
                    if digits or c != 48:
                        digits += 1
                    if digits > 18:
                        _fail(_TooLarge, 502 if response else 413, "content_length_too_large",
                              "Content-Length does not fit in 63 bits")
                    v = v * 10 + (c - 48)
                    a += 1
                if cl < 0:
                    cl = v
                elif v != cl:
                    _fail(_BadFraming, 502 if response else 400, "conflicting_content_length",
                          "several Content-Length values differ")
                else:
                    f.flags |= F_DUP_CL
            elif f.kind == K_TRANSFER_ENCODING:
                f.flags |= F_HOP
                te_n += 1
                while a < e:
                    while a < e and (h[a] == b',' or h[a] == b' ' or h[a] == b'\t'):
                        a += 1
                    if a == e:
                        break
                    b = a
                    while b < e and CLS[h[b]] & C_TCHAR:
                        b += 1
                    if b == a:
                        _fail(_BadFraming, 502 if response else 400, "bad_transfer_encoding",
                              "malformed Transfer-Encoding")
                    is_chunked = b - a == 7 and _ieq(h + a, b"chunked", 7)
                    while b < e and (h[b] == b' ' or h[b] == b'\t'):
                        b += 1
                    if b < e and h[b] == b';':
                        # A coding with parameters is one we do not implement
                        # (chunked takes none, RFC 9112 7).
                        is_chunked = False
                        while b < e and h[b] != b',':
                            if h[b] == b'"':
                                b += 1
                                while b < e and h[b] != b'"':
                                    b += 2 if h[b] == b'\\' else 1
                            b += 1
                    elif b < e and h[b] != b',':
                        _fail(_BadFraming, 502 if response else 400, "bad_transfer_encoding",
                              "malformed Transfer-Encoding")
                    if is_chunked:
                        te_chunked += 1
                        te_last_chunked = True
                    else:
                        te_other += 1
                        te_last_chunked = False
                    a = b
                if te_chunked == 0 and te_other == 0:
                    _fail(_BadFraming, 502 if response else 400, "bad_transfer_encoding",
                          "empty Transfer-Encoding")
            elif f.kind == K_CONNECTION:
                f.flags |= F_HOP
                self._conn_n += 1
                while a < e:
                    while a < e and (h[a] == b',' or h[a] == b' ' or h[a] == b'\t'):
                        a += 1
                    if a == e:
                        break
                    b = a
                    while b < e and CLS[h[b]] & C_TCHAR:
                        b += 1
                    if b == a or (b < e and h[b] != b',' and h[b] != b' ' and h[b] != b'\t'):
                        _fail(_BadSyntax, 502 if response else 400, "bad_connection",
                              "Connection must list tokens")
                    if b - a == 5 and _ieq(h + a, b"close", 5):
                        self._conn_close = True
                    elif b - a == 10 and _ieq(h + a, b"keep-alive", 10):
                        self._conn_keep_alive = True
                    elif b - a == 7 and _ieq(h + a, b"upgrade", 7):
                        self._conn_upgrade = True
                    else:
                        # RFC 9110 7.6.1: fields named by Connection are
                        # hop-by-hop too; Host and Content-Length are never
                        # dropped this way, else a client could strip the
                        # framing the next hop relies on.
                        for j in range(self._nf):
                            if (self._fields[j].name_len == b - a
                                    and self._fields[j].kind != K_HOST
                                    and self._fields[j].kind != K_CONTENT_LENGTH
                                    and _ieq2(h + self._fields[j].name_off, h + a, b - a)):
                                self._fields[j].flags |= F_HOP
                    a = b
            elif f.kind == K_UPGRADE:
                f.flags |= F_UPGRADE
                if self._upgrade_i < 0:
                    self._upgrade_i = i
            elif f.kind == K_EXPECT:
                if e - a == 12 and _ieq(h + a, b"100-continue", 12):
                    self._expect_continue = True
                    if not response and self.version != 11:
                        # RFC 9110 10.1.1: a 100-continue expectation in an HTTP/1.0
                        # request is ignored, so it is not passed on either.
                        f.flags |= F_HOP
                else:
                    self._expect_other = True
            elif f.kind == K_CACHE_CONTROL:
                self._cc_n += 1
                if self._cc_i < 0:
                    self._cc_i = i
            elif f.kind == K_LOOKALIKE:
                # Content_Length / Transfer_Encoding mean nothing to us but become the
                # real field behind a gateway that maps '_' to '-' (CGI, WSGI): the
                # two hops would frame the body differently.  Refused, as no client
                # has a reason to send them.
                _fail(_BadFraming, 502 if response else 400, "framing_field_lookalike",
                      "Content_Length or Transfer_Encoding field name")
            else:
                # Keep-Alive, Proxy-Connection, TE (RFC 9110 7.6.1).
                f.flags |= F_HOP

        self.content_length = cl
        if te_n:
            if self.version == 10:
                # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
                _fail(_BadFraming, 502 if response else 400, "te_in_http10",
                      "Transfer-Encoding in an HTTP/1.0 message")
            if cl >= 0:
                # RFC 9112 6.3 (3): both is a smuggling attempt; refuse it.
                _fail(_BadFraming, 502 if response else 400, "te_and_cl",
                      "both Transfer-Encoding and Content-Length")
            if not te_last_chunked:
                # RFC 9112 6.3 (4): a request whose final coding is not chunked
                # has no reliable length.
                _fail(_BadFraming, 502 if response else 400, "chunked_not_final",
                      "chunked must be the final transfer coding")
            if te_chunked > 1:
                # RFC 9112 7: chunked is never applied twice.
                _fail(_BadFraming, 502 if response else 400, "chunked_twice",
                      "chunked applied more than once")
            if te_other:
                # RFC 9112 6.1: a coding we do not implement is 501.
                _fail(_Unsupported, 502 if response else 501, "unsupported_transfer_coding",
                      "only the chunked transfer coding is supported")
            self.chunked = True
            self.body = _BODY_CHUNKED
        elif cl > 0:
            self.body = _BODY_LENGTH
        else:
            self.body = _BODY_NONE
        if self._conn_close:
            self.keep_alive = False
        elif self.version == 11:
            self.keep_alive = True
        else:
            self.keep_alive = self._conn_keep_alive
        if not response:
            # RFC 9110 10.1.1: ignore 100-continue in an HTTP/1.0 request.
            (<Request>self).expect_continue = self._expect_continue and self.version == 11
            # RFC 9112 3.2: exactly one Host in HTTP/1.1, never two.
            if host_n > 1:
                _fail(_BadSyntax, 400, "duplicate_host", "more than one Host field")
            if host_n == 0 and self.version == 11:
                _fail(_BadSyntax, 400, "missing_host", "HTTP/1.1 request without Host")
            if host_n == 1:
                f = &self._fields[self._host_i]
                if f.value_len and _authority(h + f.value_off, f.value_len, &a, &b, &port) < 0:
                    _fail(_BadSyntax, 400, "bad_host", "Host is not host[:port]")
        return 0


@cython.final
cdef class Request(_Message):
    """A parsed request head: offsets into `head`, Python objects made on demand."""


    @property
    def target(self):
        """The request-target bytes as received."""
        if self._target is None:
            self._target = PyBytes_FromStringAndSize(
                <const char*>self._h() + self._t_off, self._t_len)
        return self._target

    def forward_head(self, bytes start_line=None, bytes extra not None=b"", tuple drop=(), bint keep_upgrade=False):
        """The head to send onward: hop-by-hop fields removed, `extra` lines added."""
        return self.forward_c(start_line, extra, drop, keep_upgrade)

    def __repr__(self):
        return f"<Request {self.method!r} {self.target!r} HTTP/{self.version // 10}.{self.version % 10}>"


@cython.final
cdef class Response(_Message):
    """A parsed response head."""


    @property
    def reason(self):
        """The reason phrase bytes (may be empty)."""
        return PyBytes_FromStringAndSize(<const char*>self._h() + self._r_off, self._r_len)

    def forward_head(self, bytes status_line=None, bytes extra not None=b"", tuple drop=(), bint keep_upgrade=False):
        """The head to send onward: hop-by-hop fields removed, `extra` lines added."""
        return self.forward_c(status_line, extra, drop, keep_upgrade)

    def __repr__(self):
        return f"<Response {self.status} HTTP/{self.version // 10}.{self.version % 10}>"


# ---------------------------------------------------------------------------
# Head parsers


cdef class _HeadParser:
    """Incremental head scanner shared by the request and response parsers."""


    def __cinit__(self, *args, **kwargs):
        self._fields = NULL

    def __dealloc__(self):
        free(self._fields)

    cdef int _alloc(self, Py_ssize_t max_head, int max_fields) except -1:
        if max_head < 64 or max_fields < 1:
            raise ValueError("max_head must be >= 64 and max_fields >= 1")
        if max_head > 0x7fffffff:
            raise ValueError("max_head must fit in 31 bits")
        self.max_head = max_head
        self.max_fields = max_fields
        free(self._fields)  # __init__ may run twice
        self._fields = <Field*>malloc(sizeof(Field) * max_fields)
        if self._fields == NULL:
            raise MemoryError()
        return 0

    def reset(self):
        """Forget any partially parsed head."""
        self._clear()

    cdef void _clear(self) noexcept:
        self._nf = 0
        self._skip = 0
        self._pos = 0
        self._scan = 0
        self._have_line = False

    cdef int _start_line(self, const uchar* h, Py_ssize_t e) except -1:
        return 0

    cdef int _field_line(self, const uchar* p, Py_ssize_t ls, Py_ssize_t le) except -1:
        """Parse the field line p[ls:le] (le is the LF) into the next Field (RFC 9112 5)."""
        cdef Py_ssize_t e = le, i = ls, vs, ve, ne
        cdef uchar c
        cdef Field* f
        cdef int st = 502 if self._response else 400
        if e > ls and p[e - 1] == 13:
            e -= 1
        c = p[ls]
        if c == 32 or c == 9:
            if self._nf == 0:
                # RFC 9112 2.2: whitespace between the start line and the first
                # field is refused (it could hide a field from another parser).
                _fail(_BadSyntax, st, "ws_after_start_line", "whitespace before the first field")
            # RFC 9112 5.2: obs-fold is refused; a proxy must not pass it on.
            _fail(_BadSyntax, st, "obs_fold", "obsolete line folding")
        # Four bytes a step (the field name is the longest per-byte loop of a head);
        # the last step finds the byte that ends the name.
        while i + 4 <= e and (CLS[p[i]] & CLS[p[i + 1]] & CLS[p[i + 2]] & CLS[p[i + 3]]
                              & C_TCHAR):
            i += 4
        while i < e and CLS[p[i]] & C_TCHAR:
            i += 1
        ne = i
        if i >= e or p[i] != b':':
            if i < e and (p[i] == 32 or p[i] == 9) and i > ls:
                vs = i
                while vs < e and (p[vs] == 32 or p[vs] == 9):
                    vs += 1
                if vs < e and p[vs] == b':' and self._response:
                    # RFC 9112 5.1: a proxy removes whitespace before the colon of a
                    # response field (forward_head emits "Name: value").
                    i = vs
                elif vs < e and p[vs] == b':':
                    # RFC 9112 5.1: in a request it must be rejected with 400.
                    _fail(_BadSyntax, st, "ws_before_colon", "whitespace between field name and colon")
                elif memchr(p + vs, b':', e - vs) != NULL:
                    _fail(_BadSyntax, st, "bad_field_name", "invalid character in field name")
                else:
                    _fail(_BadSyntax, st, "missing_colon", "field line without a colon")
            elif i < e and p[i] == 13:
                _fail(_BadSyntax, st, "bare_cr", "CR not followed by LF")
            elif i >= e:
                _fail(_BadSyntax, st, "missing_colon", "field line without a colon")
            else:
                _fail(_BadSyntax, st, "bad_field_name", "invalid character in field name")
        if i == ls:
            _fail(_BadSyntax, st, "bad_field_name", "empty field name")
        if self._nf >= self.max_fields:
            _fail(_TooLarge, 502 if self._response else 431, "too_many_fields",
                  f"more than {self.max_fields} header fields")
        f = &self._fields[self._nf]
        f.name_off = <uint32_t>(ls - self._skip)
        f.name_len = <uint32_t>(ne - ls)
        i += 1
        while i < e and (p[i] == 32 or p[i] == 9):
            i += 1
        vs = i
        i = _bad_value_byte(p, i, e)
        if i < e:
            c = p[i]
            if c == 13:
                _fail(_BadSyntax, st, "bare_cr", "CR not followed by LF")
            if c == 0:
                _fail(_BadSyntax, st, "nul_in_field", "NUL in field value")
            _fail(_BadSyntax, st, "bad_field_value", "control character in field value")
        ve = e
        while ve > vs and (p[ve - 1] == 32 or p[ve - 1] == 9):
            ve -= 1
        f.value_off = <uint32_t>(vs - self._skip)
        f.value_len = <uint32_t>(ve - vs)
        f.kind = _classify(p + ls, f.name_len)
        f.flags = 0
        self._nf += 1
        return 0

    cdef Py_ssize_t _scan_head(self, const uchar* p, Py_ssize_t n) except -2:
        """Advance over p[0:n]; return the head length, or -1 if incomplete."""
        cdef Py_ssize_t pos = self._pos, scan = self._scan, le
        cdef const uchar* lf
        cdef uchar c
        if not self._have_line:
            if not self._response:
                # RFC 9112 2.2: ignore empty lines before a request-line.
                while pos < n:
                    if p[pos] == 10:
                        pos += 1
                    elif p[pos] == 13:
                        if pos + 1 >= n:
                            # Maybe CRLF of an empty line: wait for the next byte.
                            self._pos = pos
                            self._skip = pos
                            return -1
                        if p[pos + 1] != 10:
                            _fail(_BadSyntax, 400, "bare_cr", "CR not followed by LF")
                        pos += 2
                    else:
                        break
                    if pos > 1024:
                        _fail(_BadSyntax, 400, "bad_request_line", "too many empty lines")
                self._skip = pos
            if scan < pos:
                scan = pos
            lf = <const uchar*>memchr(p + scan, 10, n - scan)
            if lf == NULL:
                self._pos = pos
                self._scan = n
                self._partial_start_line(p + pos, n - pos)
                if n - self._skip > self.max_head:
                    _fail(_TooLarge, 502 if self._response else 431, "head_too_large",
                          f"head longer than {self.max_head} bytes")
                return -1
            le = lf - p
            self._start_line(p + pos, le - pos)
            self._have_line = True
            pos = le + 1
            scan = pos
        while True:
            if pos >= n:
                break
            c = p[pos]
            if c == 10:
                return self._finish(pos + 1)
            if c == 13:
                if pos + 1 >= n:
                    break
                if p[pos + 1] != 10:
                    _fail(_BadSyntax, 502 if self._response else 400, "bare_cr",
                          "CR not followed by LF")
                return self._finish(pos + 2)
            if scan < pos:
                scan = pos
            lf = <const uchar*>memchr(p + scan, 10, n - scan)
            if lf == NULL:
                scan = n
                break
            le = lf - p
            self._field_line(p, pos, le)
            pos = le + 1
            scan = pos
        self._pos = pos
        self._scan = scan
        if n - self._skip > self.max_head:
            _fail(_TooLarge, 502 if self._response else 431, "head_too_large",
                  f"head longer than {self.max_head} bytes")
        return -1

    cdef int _partial_start_line(self, const uchar* h, Py_ssize_t n) except -1:
        """Refuse an unfinished start line early when its prefix is already bad."""
        return 0

    cdef Py_ssize_t _finish(self, Py_ssize_t end) except -2:
        if end - self._skip > self.max_head:
            _fail(_TooLarge, 502 if self._response else 431, "head_too_large",
                  f"head longer than {self.max_head} bytes")
        return end

    cdef int _fill(self, _Message m, const uchar* p, Py_ssize_t end, object data,
                   Py_ssize_t start) except -1:
        """Hand the head bytes and field offsets over to `m` and reset."""
        cdef Py_ssize_t hl = end - self._skip
        if (self._skip == 0 and start == 0 and PyBytes_CheckExact(data)
                and PyBytes_GET_SIZE(data) == end):
            m.head = <bytes>data
        else:
            m.head = PyBytes_FromStringAndSize(<const char*>p + self._skip, hl)
        m.head_length = end
        m._nf = self._nf
        if self._nf:
            # A bytes object as the buffer: pymalloc is faster than malloc for a
            # few hundred bytes, and it is freed with the message.
            m._fields_mem = PyBytes_FromStringAndSize(<const char*>self._fields,
                                                      sizeof(Field) * self._nf)
            m._fields = <Field*>PyBytes_AS_STRING(m._fields_mem)
        self._nf = 0
        self._skip = 0
        self._pos = 0
        self._scan = 0
        self._have_line = False
        return 0


@cython.final
cdef class RequestParser(_HeadParser):
    """Incremental, strict HTTP/1.1 request-head parser (RFC 9112 3, 5, 6)."""


    def __init__(self, *, Py_ssize_t max_line=8192, Py_ssize_t max_head=65536,
                 int max_fields=100):
        if max_line < 16:
            raise ValueError("max_line must be >= 16")
        self.max_line = max_line
        self._response = False
        self._alloc(max_head, max_fields)

    def reset(self):
        """Forget any partially parsed head."""
        self.clear_c()

    cdef void clear_c(self) noexcept:
        self._clear()
        self._pv = 0
        self._pt0 = 0
        self._pphase = 0

    cdef int _partial_start_line(self, const uchar* h, Py_ssize_t n) except -1:
        """Refuse an unfinished request line early when its prefix is already bad,
        so garbage (a TLS hello on a plain port) is answered at once.  The codes
        are those the complete line would get."""
        cdef Py_ssize_t i = self._pv
        if n > self.max_line:
            _fail(_TooLarge, 414, "request_line_too_long",
                  f"request line longer than {self.max_line} bytes")
        if self._pphase == 0:
            while i < n and CLS[h[i]] & C_TCHAR:
                i += 1
            if i < n:
                if i == 0 or h[i] != 32:
                    _fail(_BadSyntax, 400, "bad_method",
                          "request line must start with a method token and SP")
                i += 1
                self._pt0 = i
                self._pphase = 1
        if self._pphase == 1:
            # Resumed where the last piece ended: in the query if a '?' came before.
            i = _target_end(h, i, n, memchr(h + self._pt0, b'?', i - self._pt0) != NULL)
            # A CR in the last byte may be the start of CRLF, a '%' in the last two the
            # start of %HH: wait for more.
            if i < n and not (h[i] == 13 and i == n - 1) and not _escape_start(h, i, n):
                if h[i] != 32 or i == self._pt0:
                    if h[i] == b'#':
                        _fail(_BadSyntax, 400, "fragment_in_target",
                              "a request-target has no fragment")
                    _bad_target_byte(h[i])
                self._pphase = 2
        self._pv = i
        return 0

    cdef int _start_line(self, const uchar* h, Py_ssize_t e) except -1:
        """Parse method SP request-target SP HTTP-version (RFC 9112 3)."""
        cdef Py_ssize_t i = 0, t0, m_len, sl
        cdef int major, minor
        if e > 0 and h[e - 1] == 13:
            e -= 1
        sl = e
        if e > self.max_line:
            _fail(_TooLarge, 414, "request_line_too_long",
                  f"request line longer than {self.max_line} bytes")
        while i < e and CLS[h[i]] & C_TCHAR:
            i += 1
        if i == 0 or i >= e or h[i] != 32:
            _fail(_BadSyntax, 400, "bad_method", "request line must start with a method token and SP")
        m_len = i
        i += 1
        t0 = i
        i = _target_end(h, i, e, False)
        if i >= e or h[i] != 32 or i == t0:
            # Same order as _partial_start_line, so the code does not depend on
            # how the line arrived.
            if i < e and h[i] == b'#':
                _fail(_BadSyntax, 400, "fragment_in_target", "a request-target has no fragment")
            if i == t0:
                _fail(_BadSyntax, 400, "bad_target", "empty request-target or extra whitespace")
            if i >= e:
                _fail(_BadSyntax, 400, "bad_request_line", "request line without an HTTP version")
            _bad_target_byte(h[i])
        self._t_off = t0
        self._t_len = i - t0
        i += 1
        if (e - i != 8 or memcmp(h + i, b"HTTP/", 5) != 0 or not (CLS[h[i + 5]] & C_DIGIT)
                or h[i + 6] != b'.' or not (CLS[h[i + 7]] & C_DIGIT)):
            _fail(_BadSyntax, 400, "bad_version", "malformed HTTP-version")
        major = h[i + 5] - 48
        minor = h[i + 7] - 48
        if major != 1:
            _fail(_Unsupported, 505, "unsupported_version", "only HTTP/1.x is spoken here")
        # RFC 9110 6.2: a higher 1.x minor is handled as the highest we know.
        self._version = 10 if minor == 0 else 11
        self._method = _method(h, m_len)
        self._pv = 0
        self._pt0 = 0
        self._pphase = 0
        self._sl = sl
        self._form = self._target_form(h + t0, self._t_len)
        return 0

    cdef int _target_form(self, const uchar* t, Py_ssize_t n) except -1:
        """Classify the request-target and check it fits the method (RFC 9112 3.2)."""
        cdef Py_ssize_t hs, hl, sl, a0, a1
        cdef long port
        if self._method is M_CONNECT:
            if _authority(t, n, &hs, &hl, &port) < 0 or port <= 0:
                _fail(_BadSyntax, 400, "bad_connect_target", "CONNECT needs host:port")
            return 2
        if t[0] == b'/':
            return 0
        if n == 1 and t[0] == b'*':
            if self._method is not M_OPTIONS:
                _fail(_BadSyntax, 400, "bad_target", "asterisk-form is only for OPTIONS")
            return 3
        _absolute(t, n, &sl, &a0, &a1, &hs, &hl, &port)
        return 1

    def feed(self, data, Py_ssize_t start=0):
        """Parse the request head at data[start:]; None while incomplete."""
        return self.feed_c(data, start)

    cdef Request feed_c(self, object data, Py_ssize_t start):
        cdef Py_buffer view
        cdef const uchar* buf
        cdef Py_ssize_t n, end
        cdef Request r
        cdef int release = _acquire(data, &view, &buf, &n)
        try:
            if start < 0 or start > n:
                raise ValueError("start outside data")
            try:
                end = self._scan_head(buf + start, n - start)
            except ParseError:
                self.clear_c()
                raise
            if end < 0:
                return None
            r = Request.__new__(Request)
            r.version = self._version
            r.method = self._method
            r.target_form = self._form
            r._t_off = self._t_off
            r._t_len = self._t_len
            r._sl_len = self._sl
            self._method = None
            self._fill(r, buf + start, end, data, start)
            r._analyze(False)
            return r
        finally:
            if release:
                PyBuffer_Release(&view)


@cython.final
cdef class ResponseParser(_HeadParser):
    """Incremental, strict HTTP/1.1 response-head parser (RFC 9112 4, 5, 6)."""


    def __init__(self, *, Py_ssize_t max_head=65536, int max_fields=100):
        self._response = True
        self._alloc(max_head, max_fields)

    cdef int _partial_start_line(self, const uchar* h, Py_ssize_t n) except -1:
        """Refuse an unfinished status line that does not start with "HTTP/"."""
        if memcmp(h, b"HTTP/", n if n < 5 else 5) != 0:
            _fail(_BadSyntax, 502, "bad_status_line", "malformed HTTP-version in status line")
        return 0

    cdef int _start_line(self, const uchar* h, Py_ssize_t e) except -1:
        """Parse HTTP-version SP status-code SP [reason-phrase] (RFC 9112 4)."""
        cdef Py_ssize_t i
        cdef int status
        if e > 0 and h[e - 1] == 13:
            e -= 1
        if (e < 12 or memcmp(h, b"HTTP/", 5) != 0 or not (CLS[h[5]] & C_DIGIT)
                or h[6] != b'.' or not (CLS[h[7]] & C_DIGIT) or h[8] != 32):
            _fail(_BadSyntax, 502, "bad_status_line", "malformed HTTP-version in status line")
        if h[5] != b'1':
            _fail(_Unsupported, 502, "unsupported_version", "only HTTP/1.x is spoken here")
        if not (CLS[h[9]] & C_DIGIT and CLS[h[10]] & C_DIGIT and CLS[h[11]] & C_DIGIT):
            _fail(_BadSyntax, 502, "bad_status", "status code is not three digits")
        status = (h[9] - 48) * 100 + (h[10] - 48) * 10 + (h[11] - 48)
        if status < 100 or status > 599:
            # RFC 9110 15: values outside 100..599 are invalid.
            _fail(_BadSyntax, 502, "bad_status", "status code outside 100..599")
        self._r_off = 13
        self._r_len = 0
        if e > 12:
            # Lenient on one point: the SP before an empty reason may be missing.
            if h[12] != 32:
                _fail(_BadSyntax, 502, "bad_status_line", "status code not followed by SP")
            for i in range(13, e):
                if not (CLS[h[i]] & C_VALUE):
                    _fail(_BadSyntax, 502, "bad_reason", "control character in reason phrase")
            self._r_len = e - 13
        self._status = status
        self._version = 10 if h[7] == b'0' else 11
        self._sl = e
        return 0

    def feed(self, data, Py_ssize_t start=0, bint head_request=False,
             bint connect_request=False):
        """Parse the response head at data[start:]; None while incomplete."""
        return self.feed_c(data, start, head_request, connect_request)

    cdef Response feed_c(self, object data, Py_ssize_t start, bint head_request,
                         bint connect_request):
        cdef Py_buffer view
        cdef const uchar* buf
        cdef Py_ssize_t n, end
        cdef Response r
        cdef int release = _acquire(data, &view, &buf, &n)
        try:
            if start < 0 or start > n:
                raise ValueError("start outside data")
            try:
                end = self._scan_head(buf + start, n - start)
            except ParseError:
                self.reset()
                raise
            if end < 0:
                return None
            r = Response.__new__(Response)
            r.version = self._version
            r.status = self._status
            r._r_off = self._r_off
            r._r_len = self._r_len
            r._sl_len = self._sl
            self._fill(r, buf + start, end, data, start)
            r._analyze(True)
            # RFC 9112 6.3 (1, 2): these responses never have content.
            if (head_request or r.status < 200 or r.status == 204 or r.status == 304
                    or (connect_request and r.status < 300)):
                r.body = _BODY_NONE
                r.chunked = False
            elif r.body == _BODY_NONE and r.content_length < 0:
                # RFC 9112 6.3 (8): no length means the body runs to close.
                r.body = _BODY_CLOSE
                r.keep_alive = False
            return r
        finally:
            if release:
                PyBuffer_Release(&view)


# ---------------------------------------------------------------------------
# Chunked transfer coding (RFC 9112 7.1)

cdef enum:
    S_SIZE_START = 0
    S_SIZE
    S_SIZE_WS
    S_EXT             # BWS after ';', before the extension name
    S_EXT_NAME
    S_EXT_POST_NAME   # BWS after the name: '=' ';' or CR
    S_EXT_PRE_VAL     # BWS after '='
    S_EXT_TOKEN
    S_EXT_QUOTED
    S_EXT_ESCAPE
    S_EXT_POST_VAL    # BWS after the value: ';' or CR
    S_SIZE_LF
    S_DATA
    S_DATA_CR
    S_DATA_LF
    S_TRAILER_START
    S_TRAILER_NAME
    S_TRAILER_VALUE
    S_TRAILER_LF
    S_END_LF
    S_DONE


# RFC 9110 6.5.1: fields needed before the content is processed cannot be trailers: a
# sender must not generate them there, and a proxy passing them on would let a later hop
# merge them into the header section. The categories are the RFC's, the members those
# RFC 7230 4.1.2 listed for them: framing, connection control (hop-by-hop), routing,
# request modifiers (controls and conditionals), authentication, response control data,
# and what says how to process the content. Others (Server-Timing, digests, grpc-status,
# Authentication-Info, ...) pass unchanged.
FORBIDDEN_TRAILERS = frozenset((
    b"content-length", b"transfer-encoding", b"trailer",
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade",
    b"host",
    b"cache-control", b"expect", b"max-forwards", b"pragma", b"range",
    b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"if-range",
    b"authorization", b"proxy-authorization", b"www-authenticate", b"proxy-authenticate",
    b"cookie", b"set-cookie",
    b"age", b"date", b"expires", b"location", b"retry-after", b"vary", b"warning",
    b"content-encoding", b"content-type", b"content-range",
))


@cython.final
cdef class ChunkedDecoder:
    """Validate (and optionally de-chunk) a chunked body fed in arbitrary pieces.

    A proxy relays the chunked bytes as they are, except the trailer section: `passed`
    says how many of the bytes the last feed consumed may go on unchanged (all of them
    when the body has no trailer fields, the common case); the rest is held and
    `kept_trailers()` gives what to send instead once `done`.
    """


    def __init__(self, *, Py_ssize_t max_trailer=16384, Py_ssize_t max_ext=4096):
        self.max_trailer = max_trailer
        self.max_ext = max_ext
        self.reset()

    def reset(self):
        """Start a new chunked body."""
        self._state = S_SIZE_START
        self._size = 0
        self._digits = 0
        self._ext_len = 0
        self._trailer_len = 0
        self._trailers = bytearray()
        self._has_trailers = False
        self.passed = 0
        self.content = 0

    @property
    def done(self):
        """True once the last chunk and the trailer section are consumed."""
        return self._state == S_DONE

    @property
    def trailers(self):
        """Raw trailer field lines (each with its CRLF), b"" if none."""
        return bytes(self._trailers)

    def feed(self, data, Py_ssize_t start=0, list out=None):
        """Consume chunked-body bytes from data[start:]; return how many belong to it."""
        return self.feed_c(data, start, out)

    cpdef bytes kept_trailers(self):
        """The trailer section to pass on in place of the one received: its lines without
        the fields RFC 9110 6.5.1 keeps out of trailers (FORBIDDEN_TRAILERS), each
        kept line as received, then the final CRLF."""
        cdef list kept = []
        cdef bytes line
        for line in bytes(self._trailers).split(b"\r\n")[:-1]:
            # Lines were checked as they arrived: a token name, ':', no CR or LF.
            if line.split(b":", 1)[0].lower() not in FORBIDDEN_TRAILERS:
                kept.append(line + b"\r\n")
        kept.append(b"\r\n")
        return b"".join(kept)

    cdef Py_ssize_t feed_c(self, object data, Py_ssize_t start, list out) except -1:
        cdef Py_buffer view
        cdef const uchar* buf
        cdef Py_ssize_t n
        cdef int release = _acquire(data, &view, &buf, &n)
        try:
            if start < 0 or start > n:
                raise ValueError("start outside data")
            return self._feed(buf + start, n - start, data, start, out)
        finally:
            if release:
                PyBuffer_Release(&view)

    cdef Py_ssize_t _feed(self, const uchar* p, Py_ssize_t n, object data, Py_ssize_t start,
                          list out) except -1:
        cdef Py_ssize_t i = 0, take, seg = -1, first = -1
        cdef int st = self._state
        cdef uchar c
        cdef int v
        cdef object mv = None
        if st == S_TRAILER_NAME or st == S_TRAILER_VALUE or st == S_TRAILER_LF:
            seg = 0
        try:
            while i < n:
                if st == S_DATA:
                    take = n - i
                    if <uint64_t>take > self._size:
                        take = <Py_ssize_t>self._size
                    if out is not None:
                        if mv is None:
                            mv = memoryview(data)
                        out.append(mv[start + i:start + i + take])
                    i += take
                    self._size -= take
                    self.content += take
                    if self._size == 0:
                        st = S_DATA_CR
                    continue
                if st == S_DONE:
                    break
                c = p[i]
                if st == S_SIZE_START:
                    v = HEXVAL[c]
                    if v < 0:
                        _fail(_BadFraming, 400, "bad_chunk_size", "chunk size is not hex")
                    self._size = v
                    self._digits = 1 if v else 0
                    st = S_SIZE
                elif st == S_SIZE:
                    v = HEXVAL[c]
                    if v >= 0:
                        if self._digits or v:
                            self._digits += 1
                            if self._digits > 15:
                                _fail(_BadFraming, 400, "chunk_size_overflow", "chunk size too large")
                        self._size = self._size * 16 + v
                    elif c == 13:
                        st = S_SIZE_LF
                    elif c == b';':
                        self._ext_len = 0
                        st = S_EXT
                    elif c == 32 or c == 9:
                        st = S_SIZE_WS
                    elif c == 10:
                        _fail(_BadFraming, 400, "bare_lf", "LF without CR in chunk framing")
                    else:
                        _fail(_BadFraming, 400, "bad_chunk_size", "chunk size is not hex")
                elif st == S_SIZE_WS:
                    # RFC 9112 7.1.1: BWS is allowed only before ';'.
                    if c == b';':
                        self._ext_len = 0
                        st = S_EXT
                    elif c != 32 and c != 9:
                        _fail(_BadFraming, 400, "bad_chunk_ext", "whitespace after chunk size")
                elif st >= S_EXT and st <= S_EXT_POST_VAL:
                    # RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ),
                    # value = token / quoted-string.  Checked exactly: another parser
                    # must not be able to find a different end of this line.
                    self._ext_len += 1
                    if self._ext_len > self.max_ext:
                        _fail(_BadFraming, 400, "chunk_ext_too_long", "chunk extension too long")
                    if st == S_EXT_QUOTED:
                        if c == b'"':
                            st = S_EXT_POST_VAL
                        elif c == b'\\':
                            st = S_EXT_ESCAPE
                        elif not (CLS[c] & C_VALUE):
                            _fail(_BadFraming, 400, "bad_chunk_ext", "control character in chunk extension")
                    elif st == S_EXT_ESCAPE:
                        if not (CLS[c] & C_VALUE):
                            _fail(_BadFraming, 400, "bad_chunk_ext", "control character in chunk extension")
                        st = S_EXT_QUOTED
                    elif CLS[c] & C_TCHAR and st != S_EXT_POST_NAME and st != S_EXT_POST_VAL:
                        if st == S_EXT:
                            st = S_EXT_NAME
                        elif st == S_EXT_PRE_VAL:
                            st = S_EXT_TOKEN
                    elif c == 32 or c == 9:
                        if st == S_EXT_NAME:
                            st = S_EXT_POST_NAME
                        elif st == S_EXT_TOKEN:
                            st = S_EXT_POST_VAL
                    elif c == b';' and st != S_EXT and st != S_EXT_PRE_VAL:
                        st = S_EXT
                    elif c == b'=' and (st == S_EXT_NAME or st == S_EXT_POST_NAME):
                        st = S_EXT_PRE_VAL
                    elif c == b'"' and st == S_EXT_PRE_VAL:
                        st = S_EXT_QUOTED
                    elif c == 13 and st != S_EXT and st != S_EXT_PRE_VAL:
                        st = S_SIZE_LF
                    elif c == 10:
                        _fail(_BadFraming, 400, "bare_lf", "LF without CR in chunk framing")
                    else:
                        _fail(_BadFraming, 400, "bad_chunk_ext", "malformed chunk extension")
                elif st == S_SIZE_LF:
                    if c != 10:
                        _fail(_BadFraming, 400, "bare_cr", "CR not followed by LF in chunk framing")
                    if self._size == 0:
                        self._trailer_len = 0
                        st = S_TRAILER_START
                    else:
                        st = S_DATA
                elif st == S_DATA_CR:
                    if c != 13:
                        _fail(_BadFraming, 400, "missing_crlf", "chunk data not followed by CRLF")
                    st = S_DATA_LF
                elif st == S_DATA_LF:
                    if c != 10:
                        _fail(_BadFraming, 400, "missing_crlf", "chunk data not followed by CRLF")
                    self._size = 0
                    st = S_SIZE_START
                elif st == S_TRAILER_START:
                    if c == 13:
                        st = S_END_LF
                    elif CLS[c] & C_TCHAR:
                        seg = i
                        st = S_TRAILER_NAME
                        if not self._has_trailers:
                            self._has_trailers = True
                            first = i
                    elif c == 32 or c == 9:
                        _fail(_BadFraming, 400, "obs_fold", "folded trailer line")
                    elif c == 10:
                        _fail(_BadFraming, 400, "bare_lf", "LF without CR in trailer section")
                    else:
                        _fail(_BadFraming, 400, "bad_trailer", "invalid trailer field name")
                elif st == S_TRAILER_NAME:
                    if c == b':':
                        st = S_TRAILER_VALUE
                    elif c == 10:
                        _fail(_BadFraming, 400, "bare_lf", "LF without CR in trailer section")
                    elif not (CLS[c] & C_TCHAR):
                        _fail(_BadFraming, 400, "bad_trailer", "invalid trailer field name")
                elif st == S_TRAILER_VALUE:
                    if c == 13:
                        st = S_TRAILER_LF
                    elif c == 10:
                        _fail(_BadFraming, 400, "bare_lf", "LF without CR in trailer section")
                    elif not (CLS[c] & C_VALUE):
                        _fail(_BadFraming, 400, "bad_trailer", "control character in trailer value")
                elif st == S_TRAILER_LF:
                    if c != 10:
                        _fail(_BadFraming, 400, "bare_cr", "CR not followed by LF in trailer section")
                    self._trailers += PyBytes_FromStringAndSize(<const char*>p + seg, i + 1 - seg)
                    seg = -1
                    st = S_TRAILER_START
                elif st == S_END_LF:
                    if c != 10:
                        _fail(_BadFraming, 400, "bare_cr", "CR not followed by LF after trailers")
                    st = S_DONE
                    i += 1
                    break
                if st >= S_TRAILER_START:
                    self._trailer_len += 1
                    if self._trailer_len > self.max_trailer:
                        _fail(_TooLarge, 431, "trailers_too_large",
                              f"trailer section longer than {self.max_trailer} bytes")
                i += 1
            if seg >= 0 and (st == S_TRAILER_NAME or st == S_TRAILER_VALUE or st == S_TRAILER_LF):
                self._trailers += PyBytes_FromStringAndSize(<const char*>p + seg, i - seg)
        finally:
            self._state = st
            # Bytes before the trailer fields pass as they are; from the first field on
            # they are held, and kept_trailers() replaces them once the body is done.
            if first >= 0:
                self.passed = first
            elif self._has_trailers:
                self.passed = 0
            else:
                self.passed = i
        return i


def chunk_header(Py_ssize_t n):
    """The chunk-size line for n bytes of data: b"%x\\r\\n"."""
    cdef char tmp[24]
    cdef int k = 22
    if n <= 0:
        raise ValueError("a data chunk has at least one byte; send LAST_CHUNK to end")
    tmp[23] = 10
    tmp[22] = 13
    while n:
        k -= 1
        tmp[k] = b"0123456789abcdef"[n & 15]
        n >>= 4
    return PyBytes_FromStringAndSize(tmp + k, 24 - k)
