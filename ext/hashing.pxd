# Declaration-only helpers for ext/hashing.pyx (cimported as `from hashing cimport ...`).
#
# Only ctypedefs and inline functions live here; the declarations of the module's classes
# that other compiled modules cimport are in ext/fastproxy/_hashing.pxd (Cython looks for a
# module's .pxd under its full name, fastproxy._hashing).

from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t

# One Maglev table entry: the index of a server in the eligible list. 16 bits keep the
# 65,537-entry default table in 128 KiB (it stays in L2); pools are capped at 65,535 servers.
ctypedef uint16_t slot_t

# Fixed-point scale of the bounded-load factor: c = 1.25 is stored as 1250.
cdef enum:
    FACTOR_SCALE = 1000


cdef inline uint64_t splitmix64(uint64_t *state) noexcept nogil:
    """Advance a SplitMix64 generator and return its next 64-bit output."""
    # Vigna's SplitMix64: one add and a 64-bit finaliser; good enough to pick two servers at
    # random, and it has no bad seeds (a zero state is fine).
    state[0] += <uint64_t>0x9E3779B97F4A7C15
    cdef uint64_t z = state[0]
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


cdef inline bint under_cap(int64_t active, int64_t weight, int64_t total_active,
                           int64_t total_weight, int64_t factor) noexcept nogil:
    """True when one more request keeps a server within its bounded-load share."""
    # The cap is ceil(c * (total + 1) * w / W): the "+ 1" counts the request being placed, so
    # with few requests in flight every server still has room for one (HAProxy's rounding).
    # For an integer `active`, active < ceil(x) <=> active < x, so compare the products and
    # avoid the division: active * SCALE * W < factor * (total + 1) * w.
    return active * FACTOR_SCALE * total_weight < factor * (total_active + 1) * weight
