# cython: language_level=3, boundscheck=False, wraparound=False
"""Fresh cache hits answered in C, before the request reaches Python.

A profile of the cache-hit path showed the interpreter (handler, cache layer, policy
lookup, building the response) as about a third of the CPU of a hit, the rest being the
kernel's two system calls. The common hit needs no decision Python has to make, so the
relay asks `FreshHits.serve` first: it answers exactly what `HttpCache.lookup`'s fresh
branch would, or returns None and the request goes the Python way
(`caching.CacheLayer`), which handles every other case. It answers only when:

* the method is GET or HEAD, the target is origin-form, and there is no body, no
  Upgrade, no Cache-Control or Pragma (request directives, RFC 9111 5.2.1, 5.4) and no
  conditional field (If-None-Match, If-Modified-Since, If-Match, If-Unmodified-Since,
  If-Range, nor Range: 304s, preconditions and 206s are Python's), and no Fastproxy-Hop
  (a fleet peer's request, keyed by its client's scheme);
* the key namespace + scheme://host/target (as `CacheLayer.key` builds it) holds a
  response that has not expired in the store, or a Vary stub naming only `:coding` (a
  response the listener compresses, issue 13) whose variant for the coding the request
  negotiates (`compression.coding_for`, remembered per Accept-Encoding value) is stored:
  the first hit in a coding, which makes the copy, and other Vary stubs are Python's;
* it is fresh (RFC 9111 4.2: freshness_lifetime > current_age, 4.2.3) and not
  `no-cache` (which needs validation before each use, 5.2.2.4).

Forward listeners do not use it: a hit there needs the full admission first and an entry
fetched from an address this client was admitted to (caching.py).

The relay writes the answer to the socket itself when it can (relay_hitwrite.pxi).
A small value's answer is one bytes object (stored head, Age, Via/Connection,
Cache-Status, blank line, body) handed to one transport write. A value larger than
`copy_max` (the cache's zero_copy_min) is answered as [head bytes, a memoryview of the
body in the arena]: the transport writes both in one writev, and keeps the view, so
the segment stays pinned (RingCache.pin: never evicted, its bytes never rewritten)
while any of it is queued for a slow reader. Memory does not grow with slow readers:
the queued bytes are the arena's; eviction passes over pinned segments (and a store
that finds every segment pinned is refused, not grown); the relay stops reading a
client whose transport is over its high-water mark, so one slow client pins at most
what one response needs.

The stored value's layout is fastproxy/cache/entry.py's: struct "<BBHIHHddddddH"
(kind, flags, status, head_len, etag_len, lm_len, response_time,
corrected_initial_age, freshness_lifetime, swr, sie, ims_basis, origin_len), etag,
last-modified, origin address (forward mode only), head (CRLF-ended lines, no blank
line), body.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.memoryview cimport PyMemoryView_FromObject
from libc.math cimport INFINITY
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcmp, memcpy
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME

from fastproxy._http cimport Field, Request
from fastproxy._ringcache cimport ENTRY_HDR, FREQ_MAX, Entry, RingCache

from fastproxy import _http

cdef int TARGET_ORIGIN = _http.TARGET_ORIGIN

cdef enum:
    META_SIZE = 62          # struct.calcsize("<BBHIHHddddddH")
    STUB_SIZE = 16          # entry.STUB.size ("<BBHIQ": kind, 0, 0, names length, epoch)
    KIND_RESPONSE = 1       # entry.KIND_RESPONSE
    KIND_STUB = 2           # entry.KIND_STUB
    MEMO_MAX = 512          # Accept-Encoding values remembered (the client chooses them)
    NO_CACHE = 2            # entry.NO_CACHE

cdef const char* HEX = b"0123456789abcdef"
cdef uint16_t _probe = 1
# The stored metadata is little-endian; on another host every lookup goes the Python way.
cdef bint LITTLE_ENDIAN = (<unsigned char*>&_probe)[0] == 1


cdef inline double wall_now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline unsigned char lower(unsigned char c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef inline bint name_is(const unsigned char* p, Py_ssize_t n, const char* want,
                         Py_ssize_t wn) noexcept nogil:
    """Case-insensitive field-name comparison with a lowercase name."""
    cdef Py_ssize_t i
    if n != wn:
        return False
    for i in range(n):
        if lower(p[i]) != <unsigned char>want[i]:
            return False
    return True


cdef inline bint defers_to_python(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Fields that change how a stored response may answer (RFC 9111 4.3.2, 5.4)."""
    cdef unsigned char c = lower(p[0]) if n else 0
    if c == b'i':
        return (name_is(p, n, "if-none-match", 13) or name_is(p, n, "if-modified-since", 17)
                or name_is(p, n, "if-match", 8) or name_is(p, n, "if-unmodified-since", 19)
                or name_is(p, n, "if-range", 8))
    if c == b'p':
        return name_is(p, n, "pragma", 6)
    if c == b'r':
        return name_is(p, n, "range", 5)     # a 206 from the stored response is Python's
    if c == b'f':
        # A fleet peer's hop may be keyed by its client's scheme (cache/peers.py).
        return name_is(p, n, "fastproxy-hop", 13)
    return False


cdef inline int put_uint(char* out, long long v) noexcept nogil:
    """Decimal digits of v >= 0 into out (at most 20); return how many."""
    cdef char tmp[24]
    cdef int n = 0, i
    if v <= 0:
        out[0] = b'0'
        return 1
    while v:
        tmp[n] = <char>(48 + v % 10)
        v //= 10
        n += 1
    for i in range(n):
        out[i] = tmp[n - 1 - i]
    return n


cdef inline uint64_t read_u64(const unsigned char* p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef inline double read_f64(const unsigned char* p) noexcept nogil:
    cdef double v
    memcpy(&v, p, 8)
    return v


cdef inline uint32_t read_u32(const unsigned char* p) noexcept nogil:
    return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint16_t read_u16(const unsigned char* p) noexcept nogil:
    return p[0] | (<uint16_t>p[1] << 8)


cdef class FreshHits:
    """The fresh-hit fast path of one listener over the worker's store."""

    def __init__(self, RingCache ring not None, bytes ns not None, bytes scheme not None,
                 bytes name not None, bytes via not None, log_hit, Py_ssize_t copy_max,
                 negotiate=None):
        self.ring = ring
        self.ns = ns
        self.scheme = scheme.lower()
        self.status_prefix = b"Cache-Status: " + name + b"; hit; ttl="
        self.x_keep = via
        self.x_keep10 = via + b"Connection: keep-alive\r\n"
        self.x_close = via + b"Connection: close\r\n"
        self.copy_max = copy_max
        self.log_hit = log_hit
        self.negotiate = negotiate
        self.memo = {}
        self.hits = 0
        self.status = 0
        self.body_len = 0

    def __call__(self, Request req not None, bint keep=True):
        """The complete response for req when it is a fresh hit (bytes, or [head bytes,
        memoryview of the pinned body] for a large one), else None."""
        return self.serve(req, keep)

    cdef object serve(self, Request req, bint keep):
        cdef const unsigned char* h
        cdef const unsigned char* host = NULL
        cdef const unsigned char* v
        cdef const unsigned char* m
        cdef Py_ssize_t host_len = 0, tlen, klen, slen, i, mlen, hs, head_len, blen, vlen
        cdef Py_ssize_t tail_len, total, xlen, plen, nslen
        cdef Field* f
        cdef bint is_head, pinned
        cdef bytes key, out, extra
        cdef int64_t slot
        cdef Entry* e
        cdef Entry* stub = NULL
        cdef RingCache ring = self.ring
        cdef double now, age, ttl, response_time
        cdef char age_s[32]
        cdef char ttl_s[32]
        cdef int age_n, ttl_n
        cdef char* o
        if not LITTLE_ENDIAN:
            return None
        mlen = PyBytes_GET_SIZE(req.method)
        m = <const unsigned char*>PyBytes_AS_STRING(req.method)
        if mlen == 3 and m[0] == b'G' and m[1] == b'E' and m[2] == b'T':
            is_head = False
        elif mlen == 4 and m[0] == b'H' and m[1] == b'E' and m[2] == b'A' and m[3] == b'D':
            is_head = True
        else:
            return None
        if req.target_form != TARGET_ORIGIN or req._cc_n or req._upgrade_i >= 0:
            return None
        h = req._h()
        for i in range(req._nf):
            f = &req._fields[i]
            if defers_to_python(h + f.name_off, f.name_len):
                return None
        if req._host_i >= 0:
            f = &req._fields[req._host_i]
            host = h + f.value_off
            host_len = f.value_len
            # cache_key drops the scheme's default port (RFC 9110 4.2.3).
            slen = PyBytes_GET_SIZE(self.scheme)
            if slen == 4 and host_len > 3 and host[host_len - 3] == b':' \
                    and host[host_len - 2] == b'8' and host[host_len - 1] == b'0':
                host_len -= 3
            elif slen == 5 and host_len > 4 and host[host_len - 4] == b':' \
                    and host[host_len - 3] == b'4' and host[host_len - 2] == b'4' \
                    and host[host_len - 1] == b'3':
                host_len -= 4

        # The key: namespace scheme "://" host(lowercase) target, as CacheLayer.key builds it.
        slen = PyBytes_GET_SIZE(self.scheme)
        nslen = PyBytes_GET_SIZE(self.ns)
        tlen = req._t_len
        klen = nslen + slen + 3 + host_len + tlen
        key = PyBytes_FromStringAndSize(NULL, klen)
        o = PyBytes_AS_STRING(key)
        memcpy(o, PyBytes_AS_STRING(self.ns), nslen)
        o += nslen
        memcpy(o, PyBytes_AS_STRING(self.scheme), slen)
        memcpy(o + slen, b"://", 3)
        for i in range(host_len):
            o[slen + 3 + i] = <char>lower(host[i])
        memcpy(o + slen + 3 + host_len, h + req._t_off, tlen)

        slot = ring.find(ring.key_hash(key, None),
                         <const unsigned char*>PyBytes_AS_STRING(key), klen)
        if slot < 0:
            return None            # the Python way counts the miss
        e = ring.entry_at(ring.slots[slot].seg, ring.slots[slot].off)
        now = wall_now()
        if e.expires != INFINITY and e.expires <= now:
            return None            # the Python way drops it
        vlen = e.val_len
        v = <const unsigned char*>e + ENTRY_HDR + e.key_len
        if vlen >= STUB_SIZE and v[0] == KIND_STUB:
            # A response the listener encodes: the variant of the coding req negotiates.
            stub = e
            slot = self.variant(req, key, v, vlen, now)
            if slot < 0:
                return None
            e = ring.entry_at(ring.slots[slot].seg, ring.slots[slot].off)
            vlen = e.val_len
            v = <const unsigned char*>e + ENTRY_HDR + e.key_len
        if vlen < META_SIZE:
            return None
        if v[0] != KIND_RESPONSE or v[1] & NO_CACHE:
            return None            # another Vary stub, or validation needed before each use
        response_time = read_f64(v + 12)
        # RFC 9111 4.2.3 current_age; 4.2 fresh while freshness_lifetime > current_age.
        age = read_f64(v + 20) + (now - response_time if now > response_time else 0.0)
        ttl = read_f64(v + 28) - age
        if not ttl > 0:
            return None
        head_len = read_u32(v + 4)
        hs = META_SIZE + read_u16(v + 8) + read_u16(v + 10) + read_u16(v + 60)
        blen = vlen - hs - head_len
        if blen < 0:
            return None

        extra = self.x_close if not keep else (self.x_keep if req.version == 11 else
                                               self.x_keep10)
        age_n = put_uint(age_s, <long long>age)
        ttl_n = put_uint(ttl_s, <long long>ttl)
        xlen = PyBytes_GET_SIZE(extra)
        plen = PyBytes_GET_SIZE(self.status_prefix)
        tail_len = 5 + age_n + 2 + xlen + plen + ttl_n + 4
        # Large bodies are not copied: the head goes out with a view of the arena.
        pinned = not is_head and vlen > self.copy_max
        total = head_len + tail_len + (0 if is_head or pinned else blen)
        out = PyBytes_FromStringAndSize(NULL, total)
        o = PyBytes_AS_STRING(out)
        memcpy(o, v + hs, head_len)
        o += head_len
        memcpy(o, b"Age: ", 5)
        memcpy(o + 5, age_s, age_n)
        o += 5 + age_n
        memcpy(o, b"\r\n", 2)
        memcpy(o + 2, PyBytes_AS_STRING(extra), xlen)
        o += 2 + xlen
        memcpy(o, PyBytes_AS_STRING(self.status_prefix), plen)
        memcpy(o + plen, ttl_s, ttl_n)
        o += plen + ttl_n
        memcpy(o, b"\r\n\r\n", 4)
        if not is_head and not pinned:
            memcpy(o + 4, v + hs + head_len, blen)

        # Counted as the store's get would count it (S3-FIFO frequency, hits).
        if stub != NULL:
            if stub.freq < FREQ_MAX:
                stub.freq += 1
            ring.hits += 1
        if e.freq < FREQ_MAX:
            e.freq += 1
        ring.hits += 1
        self.hits += 1
        self.status = read_u16(v + 2)
        self.body_len = 0 if is_head else blen
        if pinned and blen:
            return [out, PyMemoryView_FromObject(ring.pin(
                ring.slots[slot].seg, <char*>v + hs + head_len, blen))]
        return out

    cdef int64_t variant(self, Request req, bytes key, const unsigned char* v,
                         Py_ssize_t vlen, double now) except? -2:
        """The slot of req's variant under the Vary stub v (the value of key) when the stub
        names only keys.CODING and that variant is stored and unexpired, else -1."""
        cdef Py_ssize_t nlen = read_u32(v + 4), klen = PyBytes_GET_SIZE(key), clen, i
        cdef uint64_t epoch = read_u64(v + 8)
        cdef bytes vkey
        cdef char* o
        cdef int64_t slot
        cdef Entry* e
        if self.negotiate is None or nlen != 7 or vlen < STUB_SIZE + 7 \
                or memcmp(v + STUB_SIZE, b":coding", 7) != 0:
            return -1
        # The coding as compression.coding_for chooses it (one definition), remembered per
        # Accept-Encoding value (its lines joined, as coding_for reads them): the fast path
        # takes no request with Cache-Control, so no-transform is not in play and the value
        # alone decides.
        ae = req.get_list_c(b"accept-encoding")
        if ae is None:
            coding = b"identity"
        else:
            coding = self.memo.get(ae)
            if coding is None:
                coding = self.negotiate(req)
                if coding is None:
                    coding = b"identity"
                if len(self.memo) >= MEMO_MAX:
                    self.memo.clear()
                self.memo[ae] = coding
        # keys.variant_key: key, epoch as 16 hex digits, "ce=" coding, NUL-separated.
        clen = PyBytes_GET_SIZE(coding)
        vkey = PyBytes_FromStringAndSize(NULL, klen + 1 + 16 + 1 + 3 + clen)
        o = PyBytes_AS_STRING(vkey)
        memcpy(o, PyBytes_AS_STRING(key), klen)
        o += klen
        o[0] = 0
        for i in range(16):
            o[16 - i] = HEX[(epoch >> (4 * i)) & 15]
        o[17] = 0
        memcpy(o + 18, b"ce=", 3)
        memcpy(o + 21, PyBytes_AS_STRING(coding), clen)
        slot = self.ring.find(self.ring.key_hash(vkey, None),
                              <const unsigned char*>PyBytes_AS_STRING(vkey),
                              PyBytes_GET_SIZE(vkey))
        if slot < 0:
            return -1              # no copy in this coding yet: the Python way makes one
        e = self.ring.entry_at(self.ring.slots[slot].seg, self.ring.slots[slot].off)
        if e.expires != INFINITY and e.expires <= now:
            return -1
        return slot
