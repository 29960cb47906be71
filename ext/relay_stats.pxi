# Included by ext/relay.pyx (one extension module: see the note there).
# Per-exchange numbers for the admin interface, counted in C: latency histograms and the
# top-URL sketch (fastproxy/server/stats.py gathers them per worker).
#
# Counting them in Python, one call per finished exchange, cost ~10% of a relayed request
# and ~20% of a cache hit per CPU-second; here it is a few array stores, a hash of the
# URL's bytes where they lie in the request head, and no allocation unless a new URL
# enters the sketch.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy
from fastproxy._http cimport Field

# Prometheus' default latency buckets, seconds (le="+Inf" is the count).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

cdef enum:
    NBUCKETS = 11

cdef double _BOUNDS[NBUCKETS]
for _i, _b in enumerate(BUCKETS):
    _BOUNDS[_i] = _b
assert len(BUCKETS) == NBUCKETS


# _wall() (relay.pyx) is the clock of ClientConnection.t_start; the latency here ends at
# _wall_clock() (read now, not once per batch: a hit's start and end share a batch).


cdef class Histogram:
    """Latency histogram: counts per bucket (not cumulative: sums over workers add up),
    sum and count."""

    cdef long long buckets[NBUCKETS + 1]
    cdef public double total
    cdef public long long count

    cdef inline void add(self, double seconds) noexcept:
        cdef int i = 0
        # bisect_left: the first bound >= seconds; past the last, the +Inf bucket.
        while i < NBUCKETS and _BOUNDS[i] < seconds:
            i += 1
        self.buckets[i] += 1
        self.total += seconds
        self.count += 1

    def observe(self, double seconds):
        """Count one observation."""
        self.add(seconds)

    @property
    def counts(self):
        """Per-bucket counts, the last one above every bound."""
        return [self.buckets[i] for i in range(NBUCKETS + 1)]

    def snapshot(self):
        """Buckets (not cumulative: sums over workers add up), sum and count."""
        return {"buckets": {repr(BUCKETS[i]): self.buckets[i] for i in range(NBUCKETS)},
                "sum": self.total, "count": self.count}


cdef inline uint64_t _fnv(uint64_t h, const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * <uint64_t>0x100000001b3
    return h


cdef class TopUrls:
    """Space-Saving (Metwally et al. 2005): at most k URLs with request and cache-hit
    counts. A URL not in the sketch replaces the least counted one and inherits its
    count (the sketch's over-estimate), not its hits; counts are upper bounds, exact for
    URLs that stay in it. The URLs are bytes (latin-1 text), cut at url_max."""

    cdef int k, n
    cdef Py_ssize_t url_max
    cdef uint64_t* hashes
    cdef long long* reqs
    cdef long long* hits
    cdef list urls

    def __cinit__(self, int k=32, Py_ssize_t url_max=200):
        if k < 1 or url_max < 1:
            raise ValueError("k and url_max must be positive")
        self.k = k
        self.url_max = url_max
        self.n = 0
        self.hashes = <uint64_t*>calloc(k, sizeof(uint64_t))
        self.reqs = <long long*>calloc(k, sizeof(long long))
        self.hits = <long long*>calloc(k, sizeof(long long))
        if self.hashes == NULL or self.reqs == NULL or self.hits == NULL:
            raise MemoryError()
        self.urls = [None] * k

    def __dealloc__(self):
        free(self.hashes)
        free(self.reqs)
        free(self.hits)

    cdef int add2(self, const unsigned char* a, Py_ssize_t alen, const unsigned char* b,
                  Py_ssize_t blen, bint hit) except -1:
        """Count one request for the URL a + b (cut at url_max)."""
        cdef Py_ssize_t cut = self.url_max
        cdef uint64_t h
        cdef int i, victim
        cdef long long floor
        cdef bytes u
        cdef const unsigned char* up
        if alen > cut:
            alen = cut
        if blen > cut - alen:
            blen = cut - alen
        h = _fnv(_fnv(<uint64_t>0xcbf29ce484222325, a, alen), b, blen)
        for i in range(self.n):
            if self.hashes[i] == h:
                u = <bytes>self.urls[i]
                up = <const unsigned char*>PyBytes_AS_STRING(u)
                if (PyBytes_GET_SIZE(u) == alen + blen and memcmp(up, a, alen) == 0
                        and memcmp(up + alen, b, blen) == 0):
                    self.reqs[i] += 1
                    if hit:
                        self.hits[i] += 1
                    return 0
        u = PyBytes_FromStringAndSize(NULL, alen + blen)
        memcpy(PyBytes_AS_STRING(u), a, alen)
        memcpy(PyBytes_AS_STRING(u) + alen, b, blen)
        if self.n < self.k:
            victim = self.n
            self.n += 1
            floor = 0
        else:
            victim = 0
            for i in range(1, self.n):
                if self.reqs[i] < self.reqs[victim]:
                    victim = i
            floor = self.reqs[victim]
        self.hashes[victim] = h
        self.urls[victim] = u
        self.reqs[victim] = floor + 1
        self.hits[victim] = 1 if hit else 0
        return 0

    def add(self, url, bint hit):
        """Count one request for url (str, latin-1, or bytes)."""
        cdef bytes u = url.encode("latin-1") if isinstance(url, str) else bytes(url)
        self.add2(<const unsigned char*>PyBytes_AS_STRING(u), PyBytes_GET_SIZE(u),
                  NULL, 0, hit)

    def snapshot(self):
        """{url: {"requests": n, "hits": h}}."""
        return {(<bytes>self.urls[i]).decode("latin-1"):
                {"requests": self.reqs[i], "hits": self.hits[i]} for i in range(self.n)}


cdef class Recorder:
    """The relay's access log of one listener: counts each exchange, then logs it.

    It stands where the relay expects the access log (it calls `write(conn)` once per
    finished exchange); ClientConnection.log calls `record` directly, without a Python
    call. The numbers land in the worker's server.stats.Stats, which the admin reads.
    """

    cdef Histogram hist
    cdef dict groups
    cdef TopUrls top
    cdef public object log
    # The last exchange's group and its histogram (None: a forward exchange's origin,
    # which has no group to count under): most exchanges repeat it.
    cdef object last_group
    cdef Histogram last_hist

    def __init__(self, stats, str listener, log):
        hist = stats.listeners.get(listener)
        if hist is None:
            hist = stats.listeners[listener] = Histogram()
        self.hist = hist
        self.groups = stats.groups
        self.top = stats.top
        self.log = log
        self.last_group = self     # matches no group
        self.last_hist = None

    def write(self, conn):
        """One finished exchange."""
        self.record(conn)

    cdef int record(self, ClientConnection conn) except -1:
        cdef Request req
        cdef Field* f
        cdef const unsigned char* h
        cdef const unsigned char* host = NULL
        cdef Py_ssize_t host_len = 0
        cdef bint hit
        log = self.log
        if log is not None:
            log.write(conn)     # first: a counting bug must not cost the log line
        self.hist.add(_wall_clock() - conn.t_start)
        group = conn.group
        if group is not None and conn.upstream_time >= 0:
            if group is not self.last_group:
                self.last_group = group
                self.last_hist = self._group_hist(group)
            if self.last_hist is not None:
                self.last_hist.add(conn.upstream_time)
        req = conn.req
        if req is not None:
            h = req._h()
            # The URL: the target, after the Host when it is origin-form.
            if req._t_len and h[req._t_off] == b'/' and req._host_i >= 0:
                f = &req._fields[req._host_i]
                host = h + f.value_off
                host_len = f.value_len
            extra = conn.log_extra
            hit = (extra is not None and type(extra) is dict
                   and (<dict>extra).get("cache") == "HIT")
            self.top.add2(host, host_len, h + req._t_off, req._t_len, hit)
        return 0

    cdef Histogram _group_hist(self, group):
        # A reverse exchange's group is an UpstreamGroup; a forward one's is the origin's
        # (scheme, host, port), which has no name.
        name = getattr(group, "name", None)
        if name is None:
            return None
        hist = self.groups.get(name)
        if hist is None:
            hist = self.groups[name] = Histogram()
        return hist

    def write_record(self, record):
        """A non-HTTP event: only the log wants it."""
        if self.log is not None:
            self.log.write_record(record)
