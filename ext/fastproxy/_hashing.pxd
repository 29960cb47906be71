# Declarations of fastproxy._hashing's balancer base (implementation in ext/hashing.pyx),
# so the relay can call pick/acquire/release as C functions on every request.
from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef class Counted:
    cdef public int64_t active
    cdef public int64_t failures


cdef class Core:
    cdef readonly list servers
    cdef dict _index
    cdef Py_ssize_t n
    cdef int64_t *active
    cdef int64_t *weight
    cdef int64_t *current
    cdef uint32_t *excluded
    cdef uint32_t exclude_gen
    cdef readonly int64_t total_active
    cdef readonly int64_t total_weight
    # First attempts sent since the group's last retry-budget tick (UpstreamGroup._fold):
    # counted here, a C store per request, not as a Python attribute of the group.
    cdef public int64_t requests_seen
    # Requests in flight one server may hold (the breaker's per_server_max_requests; 0: no
    # cap): pick_open passes over a full server instead of handing the proxy one it must
    # refuse (pick does not look: the relay's fast path checks the cap itself).
    cdef public int64_t max_active
    # Slow start: server -> share of its weight (0 to 1) while it ramps up after returning.
    cdef dict _ramp

    cdef int _rebuild(self) except -1
    cdef int _set_weights(self) except -1
    cpdef acquire(self, server)
    cpdef release(self, server)
    cdef bint _mark_excluded(self, object exclude) except -1
    cdef void _new_exclusion(self) noexcept
    cdef Py_ssize_t _below_cap(self, uint64_t key, bint has_excluded, Py_ssize_t first) except -2
    cdef inline bint _is_excluded(self, Py_ssize_t i) noexcept:
        return self.excluded[i] == self.exclude_gen
    cdef Py_ssize_t _choose(self, uint64_t key, bint has_excluded) except -2
    cpdef pick(self, uint64_t key=*, exclude=*)
    cdef Py_ssize_t _least_loaded(self, bint has_excluded) noexcept
