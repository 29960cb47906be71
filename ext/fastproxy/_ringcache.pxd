# Declarations for the ring-buffer store (implementation in ringcache.pyx).
#
# Layout of one entry inside a segment (8-byte aligned):
#   Entry header | key bytes | value bytes | padding to 8
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    ENTRY_HDR = 32          # sizeof(Entry), asserted at import
    DEAD = 1                # Entry.flags: deleted or overwritten, skipped by eviction
    Q_FREE = 0
    Q_SMALL = 1
    Q_MAIN = 2
    FREQ_MAX = 3            # 2-bit saturating access counter (S3-FIFO)

cdef struct Entry:
    uint64_t hash
    double expires          # absolute time (caller's clock); +inf never expires
    uint32_t key_len
    uint32_t val_len
    uint32_t gen            # generation of the segment when written
    uint8_t freq
    uint8_t flags
    uint16_t pad

cdef struct Slot:
    uint64_t hash
    uint32_t seg            # EMPTY_SEG marks an empty slot
    uint32_t off

cdef struct GSlot:
    uint64_t hash
    uint64_t seq            # 0 marks an empty slot


cdef class Pinned


cdef class RingCache:
    cdef unsigned char* arena
    cdef Py_ssize_t capacity
    cdef uint32_t seg_size
    cdef uint32_t nseg
    cdef uint32_t max_item
    cdef uint32_t small_target
    cdef uint8_t promote_threshold
    # per segment
    cdef uint32_t* seg_used
    cdef uint32_t* seg_gen
    cdef uint32_t* seg_pins
    cdef uint8_t* seg_queue
    cdef int32_t* seg_next
    # FIFO queues of segments, oldest at head; index 0 free, 1 small, 2 main
    cdef int32_t q_head[3]
    cdef int32_t q_tail[3]
    cdef uint32_t q_len[3]
    cdef int32_t write_seg[3]
    cdef uint64_t q_count[3]     # live entries per queue
    # index
    cdef Slot* slots
    cdef uint64_t slot_mask
    cdef uint64_t max_entries
    cdef uint64_t small_entries   # small queue's share of max_entries
    cdef uint64_t count
    # ghost: FIFO ring of evicted hashes + open-addressing membership table
    cdef uint64_t* ghost_ring
    cdef uint64_t ghost_size
    cdef uint64_t ghost_seq
    cdef GSlot* gslots
    cdef uint64_t gslot_mask
    # clock of the operation in progress (expiry checks during eviction)
    cdef double now
    cdef object hash_fn
    # stats
    cdef public uint64_t hits, misses, inserts, evictions, expirations, bypasses
    cdef public uint64_t relocations, ghost_hits, forced, alloc_failures
    cdef uint64_t live_bytes
    cdef bint released            # release() was called: empty, refuses stores

    cdef inline Entry* entry_at(self, uint32_t seg, uint32_t off) noexcept nogil
    cdef int64_t find(self, uint64_t h, const unsigned char* key, Py_ssize_t klen) noexcept nogil
    cdef int64_t find_loc(self, uint64_t h, uint32_t seg, uint32_t off) noexcept nogil
    cdef void slot_delete(self, uint64_t i) noexcept nogil
    cdef void drop_slot(self, uint64_t i) noexcept nogil
    cdef bint ghost_member(self, uint64_t h) noexcept nogil
    cdef void ghost_remove(self, uint64_t h) noexcept nogil
    cdef void ghost_insert(self, uint64_t h) noexcept nogil
    cdef int64_t gfind(self, uint64_t h) noexcept nogil
    cdef void gdelete(self, uint64_t i) noexcept nogil
    cdef void q_push(self, int q, uint32_t s) noexcept nogil
    cdef int32_t q_pop_head(self, int q) noexcept nogil
    cdef int32_t q_unlink_unpinned(self, int q) noexcept nogil
    cdef int32_t new_segment(self, int q) noexcept nogil
    cdef int64_t alloc(self, int q, uint32_t size) noexcept nogil
    cdef int64_t alloc_reloc(self, uint32_t size) noexcept nogil
    cdef bint evict_one(self, bint force, bint by_count) noexcept nogil
    cdef bint ensure_room(self) noexcept nogil
    cdef uint64_t key_hash(self, bytes key, object h) except? 0
    cdef int64_t live(self, bytes key, object now, object h) except -2
    cdef void free_arena_if_unpinned(self) noexcept nogil
    cdef Pinned pin(self, uint32_t seg, char* ptr, Py_ssize_t length)


cdef class Pinned:
    cdef RingCache cache
    cdef uint32_t seg
    cdef char* ptr
    cdef Py_ssize_t length
    cdef Py_ssize_t shape[1]
