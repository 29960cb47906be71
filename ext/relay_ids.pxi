# Included by ext/relay.pyx (one extension module: see the note there).
# Request ids: nginx's $request_id, HAProxy's unique-id-format and unique-id-header.

from cpython.unicode cimport PyUnicode_AsASCIIString, PyUnicode_DecodeASCII
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

cdef const char* _HEX = b"0123456789abcdef"
# A trusted incoming id is kept only when it is this short and made of visible ASCII
# without quotes, backslashes, commas or semicolons: anything else is not an id another
# proxy wrote (a comma means two fields were combined), so a fresh one replaces it.
cdef Py_ssize_t MAX_INCOMING_ID = 128


cdef class RequestIds:
    """The id of each request: 32 hex digits, as nginx's $request_id.

    One per configuration generation of a worker: 16 random hex digits chosen when it is
    made, then a 64-bit count, so ids are unique across workers, reloads and restarts
    without a random draw per request. The id of a request is chosen once, when it is
    first asked for (forwarding it, or logging it), and kept in the exchange's
    `log_extra["request_id"]`, so the log line and the upstream see the same one, retries
    included. With `trust`, a request that arrives with a well-formed id in the `name`
    field keeps it (a proxy or balancer in front chose it).
    """

    cdef readonly bytes name        # the field sent upstream, b"" when none is
    cdef readonly bytes lname       # its lowercase form, as the parser compares names
    cdef readonly bint trust
    cdef bytes line_start           # b"X-Request-ID: "
    cdef char prefix[16]
    cdef uint64_t count

    def __init__(self, name="", bint trust=False):
        name_b = name.encode("ascii") if isinstance(name, str) else bytes(name)
        self.name = name_b
        self.lname = name_b.lower()
        self.trust = trust and bool(name_b)
        self.line_start = name_b + b": "
        seed = os.urandom(8).hex().encode("ascii")
        memcpy(self.prefix, PyBytes_AS_STRING(seed), 16)
        self.count = 0

    cdef bytes _new(self):
        cdef bytes out = PyBytes_FromStringAndSize(NULL, 32)
        cdef char* o = PyBytes_AS_STRING(out)
        cdef uint64_t n
        cdef int i
        self.count += 1
        n = self.count
        memcpy(o, self.prefix, 16)
        for i in range(31, 15, -1):
            o[i] = _HEX[n & 15]
            n >>= 4
        return out

    cdef object _incoming(self, Request req):
        """The request's own id when it is trusted and well formed, else None."""
        if not self.trust or req is None:
            return None
        value = req.get_c(self.lname)
        if value is None:
            return None
        cdef bytes v = <bytes>value
        cdef Py_ssize_t n = PyBytes_GET_SIZE(v), i
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(v)
        if n == 0 or n > MAX_INCOMING_ID:
            return None
        for i in range(n):
            if p[i] <= 0x20 or p[i] >= 0x7F or p[i] == b'"' or p[i] == b'\\' \
                    or p[i] == b',' or p[i] == b';':
                return None
        return v

    cdef bytes _id(self, ClientConnection conn, Request req):
        """The exchange's id as bytes, chosen now (and kept in log_extra) if it has none."""
        extra = conn.log_extra
        if extra is not None:
            known = (<dict>extra).get("request_id")
            if known is not None:
                return PyUnicode_AsASCIIString(known)
        rid = self._incoming(req)
        if rid is None:
            rid = self._new()
        text = PyUnicode_DecodeASCII(PyBytes_AS_STRING(<bytes>rid), PyBytes_GET_SIZE(<bytes>rid),
                                     NULL)
        # A new dict: log_extra may be shared by every request of a route (never mutated).
        conn.log_extra = {"request_id": text} if extra is None else \
            {**<dict>extra, "request_id": text}
        return <bytes>rid

    cpdef str of(self, ClientConnection conn, Request req):
        """The id of the exchange `conn` is in (req: its request, or None), chosen now if
        it has none yet."""
        cdef bytes rid = self._id(conn, req)
        return PyUnicode_DecodeASCII(PyBytes_AS_STRING(rid), PyBytes_GET_SIZE(rid), NULL)

    cpdef bytes field(self, ClientConnection conn, Request req, bytes before=b""):
        """`before` then the field line carrying the request's id upstream, in one copy
        (the client's own field of that name is dropped: the handler's drop list holds
        `lname`)."""
        cdef bytes rid = self._id(conn, req)
        cdef Py_ssize_t nb = PyBytes_GET_SIZE(before), ns = PyBytes_GET_SIZE(self.line_start)
        cdef Py_ssize_t nr = PyBytes_GET_SIZE(rid)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, nb + ns + nr + 2)
        cdef char* o = PyBytes_AS_STRING(out)
        memcpy(o, PyBytes_AS_STRING(before), nb)
        memcpy(o + nb, PyBytes_AS_STRING(self.line_start), ns)
        memcpy(o + nb + ns, PyBytes_AS_STRING(rid), nr)
        o[nb + ns + nr] = 13
        o[nb + ns + nr + 1] = 10
        return out
