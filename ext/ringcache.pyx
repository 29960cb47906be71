# cython: auto_pickle=False
"""Fixed-size ring-buffer object store with S3-FIFO eviction.

One arena is allocated up front and split into equal segments. Entries are
appended to the write segment of their queue and never moved on a hit. Whole
segments are evicted in FIFO order (Yang et al., "FIFO queues are all you need
for cache eviction", SOSP 2023):

* new keys go to the small queue (about 10% of the segments);
* when a small segment is evicted, entries read at least `promote_threshold`
  times since they were written are copied into the main queue, the others are
  dropped and their hash remembered in the ghost list;
* a key found in the ghost list when it is written again goes straight to main;
* when a main segment is evicted, entries with a non-zero 2-bit frequency are
  copied to the head of main with the frequency decremented, others dropped.

The index is open addressing with linear probing and backward-shift deletion
(no tombstones, so probe lengths do not degrade), keyed by the 64-bit xxh3 of
the key. The full key is compared on every hit, so two keys with the same hash
never answer for each other. Memory is the arena, the index and the ghost ring,
all sized at construction: nothing grows with the number of keys ever seen.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.math cimport INFINITY
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from posix.mman cimport MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, PROT_READ, PROT_WRITE, mmap, munmap

from xxhash import xxh3_64_intdigest as _xxh3

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    enum: CLOCK_REALTIME

cdef uint32_t EMPTY_SEG = 0xFFFFFFFFu

assert sizeof(Entry) == ENTRY_HDR
assert sizeof(Slot) == 16


cdef inline double wall_now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline uint32_t entry_size(Py_ssize_t klen, Py_ssize_t vlen) noexcept nogil:
    return <uint32_t>((ENTRY_HDR + klen + vlen + 7) & ~(<Py_ssize_t>7))


cdef inline uint64_t next_pow2(uint64_t n) noexcept nogil:
    cdef uint64_t p = 1
    while p < n:
        p <<= 1
    return p


def entry_overhead(Py_ssize_t key_len, Py_ssize_t value_len):
    """Return the arena bytes one entry with these key and value lengths occupies."""
    return entry_size(key_len, value_len)


cdef class RingCache:
    """A fixed-memory key -> bytes store with S3-FIFO eviction and per-entry expiry."""

    def __cinit__(self, Py_ssize_t capacity, Py_ssize_t segment_size=0,
                  double max_item_share=0.5, double small_ratio=0.1,
                  Py_ssize_t max_entries=0, int promote_threshold=1, bint prefault=False):
        cdef uint32_t s
        cdef int q
        if segment_size == 0:
            # Enough segments for the small queue to be a real FIFO (>= 10 of
            # them at 10%), segments big enough for typical responses.
            segment_size = capacity // 100
            segment_size = max(4096, min(segment_size, 4 << 20))
        segment_size &= ~7
        if segment_size < 256:
            raise ValueError("segment_size must be at least 256 bytes")
        if segment_size > (1 << 31):
            raise ValueError("segment_size must be at most 2 GiB")
        if capacity // segment_size < 4:
            raise ValueError(
                f"capacity {capacity} holds fewer than 4 segments of {segment_size} bytes")
        if not (0.0 < max_item_share <= 1.0):
            raise ValueError("max_item_share must be in (0, 1]")
        if not (0.0 < small_ratio < 1.0):
            raise ValueError("small_ratio must be in (0, 1)")
        if not (0 <= promote_threshold <= FREQ_MAX):
            raise ValueError("promote_threshold must be in 0..3")
        self.seg_size = <uint32_t>segment_size
        self.nseg = <uint32_t>(capacity // segment_size)
        if self.nseg > 0x7FFFFFF0:
            raise ValueError("too many segments")
        self.capacity = <Py_ssize_t>self.nseg * segment_size
        self.max_item = <uint32_t>(segment_size * max_item_share)
        self.small_target = max(1, <uint32_t>(self.nseg * small_ratio + 0.5))
        self.promote_threshold = <uint8_t>promote_threshold
        if max_entries <= 0:
            # Budget the index for 1 KiB entries on average (a response head
            # plus a small body): ~40 bytes of index and ghost per KiB of arena.
            # Smaller entries hit this limit before the arena fills.
            max_entries = max(64, self.capacity // 1024)
        self.max_entries = <uint64_t>max_entries
        self.small_entries = max(1, <uint64_t>(self.max_entries * small_ratio + 0.5))
        self.slot_mask = next_pow2(self.max_entries * 2) - 1
        self.ghost_size = self.max_entries
        self.gslot_mask = next_pow2(self.ghost_size * 2) - 1

        # Mapped, not malloc'ed: its pages go back to the system when it is unmapped,
        # whatever the allocator's thresholds (release() after a reload relies on it).
        self.arena = <unsigned char*>mmap(NULL, self.capacity, PROT_READ | PROT_WRITE,
                                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if <void*>self.arena == MAP_FAILED:
            self.arena = NULL
        self.seg_used = <uint32_t*>calloc(self.nseg, sizeof(uint32_t))
        self.seg_gen = <uint32_t*>calloc(self.nseg, sizeof(uint32_t))
        self.seg_pins = <uint32_t*>calloc(self.nseg, sizeof(uint32_t))
        self.seg_queue = <uint8_t*>calloc(self.nseg, sizeof(uint8_t))
        self.seg_next = <int32_t*>calloc(self.nseg, sizeof(int32_t))
        self.slots = <Slot*>malloc((self.slot_mask + 1) * sizeof(Slot))
        self.ghost_ring = <uint64_t*>calloc(self.ghost_size, sizeof(uint64_t))
        self.gslots = <GSlot*>calloc(self.gslot_mask + 1, sizeof(GSlot))
        if (self.arena == NULL or self.seg_used == NULL or self.seg_gen == NULL
                or self.seg_pins == NULL or self.seg_queue == NULL or self.seg_next == NULL
                or self.slots == NULL or self.ghost_ring == NULL or self.gslots == NULL):
            raise MemoryError()
        if prefault:
            # Touch every page now: resident memory is the arena from the start
            # and no first-write page fault lands on a request.
            memset(self.arena, 0, self.capacity)
        # 0xFF bytes make every slot's seg EMPTY_SEG.
        memset(self.slots, 0xFF, (self.slot_mask + 1) * sizeof(Slot))
        for q in range(3):
            self.q_head[q] = -1
            self.q_tail[q] = -1
            self.q_len[q] = 0
            self.write_seg[q] = -1
            self.q_count[q] = 0
        for s in range(self.nseg):
            self.q_push(Q_FREE, s)
        self.hash_fn = _xxh3
        self.now = 0.0
        self.released = False

    def __dealloc__(self):
        if self.arena != NULL:
            munmap(self.arena, self.capacity)
        free(self.seg_used)
        free(self.seg_gen)
        free(self.seg_pins)
        free(self.seg_queue)
        free(self.seg_next)
        free(self.slots)
        free(self.ghost_ring)
        free(self.gslots)

    # ---------------------------------------------------------------- index

    cdef inline Entry* entry_at(self, uint32_t seg, uint32_t off) noexcept nogil:
        return <Entry*>(self.arena + <Py_ssize_t>seg * self.seg_size + off)

    cdef int64_t find(self, uint64_t h, const unsigned char* key, Py_ssize_t klen) noexcept nogil:
        cdef uint64_t i = h & self.slot_mask
        cdef Slot* sl
        cdef Entry* e
        while True:
            sl = &self.slots[i]
            if sl.seg == EMPTY_SEG:
                return -1
            if sl.hash == h:
                e = self.entry_at(sl.seg, sl.off)
                # The generation check catches a slot left pointing into a
                # recycled segment: it must read as a miss, never a hit.
                if (e.gen == self.seg_gen[sl.seg] and e.hash == h
                        and e.key_len == klen and not (e.flags & DEAD)
                        and memcmp(<unsigned char*>e + ENTRY_HDR, key, klen) == 0):
                    return <int64_t>i
            i = (i + 1) & self.slot_mask

    cdef int64_t find_loc(self, uint64_t h, uint32_t seg, uint32_t off) noexcept nogil:
        cdef uint64_t i = h & self.slot_mask
        cdef Slot* sl
        while True:
            sl = &self.slots[i]
            if sl.seg == EMPTY_SEG:
                return -1
            if sl.hash == h and sl.seg == seg and sl.off == off:
                return <int64_t>i
            i = (i + 1) & self.slot_mask

    cdef void slot_delete(self, uint64_t i) noexcept nogil:
        # Backward-shift deletion (Knuth 6.4 algorithm R): pull later members
        # of the probe run into the hole so lookups never need tombstones.
        cdef uint64_t j = i, k
        cdef uint64_t mask = self.slot_mask
        while True:
            j = (j + 1) & mask
            if self.slots[j].seg == EMPTY_SEG:
                break
            k = self.slots[j].hash & mask
            if i <= j:
                if i < k <= j:
                    continue
            else:
                if k > i or k <= j:
                    continue
            self.slots[i] = self.slots[j]
            i = j
        self.slots[i].seg = EMPTY_SEG

    cdef void drop_slot(self, uint64_t i) noexcept nogil:
        """Kill the entry slot i points to and free the slot."""
        cdef Slot* sl = &self.slots[i]
        cdef Entry* e = self.entry_at(sl.seg, sl.off)
        e.flags |= DEAD
        self.q_count[self.seg_queue[sl.seg]] -= 1
        self.count -= 1
        self.live_bytes -= entry_size(e.key_len, e.val_len)
        self.slot_delete(i)

    # ---------------------------------------------------------------- ghost

    cdef int64_t gfind(self, uint64_t h) noexcept nogil:
        cdef uint64_t i = h & self.gslot_mask
        while self.gslots[i].seq != 0:
            if self.gslots[i].hash == h:
                return <int64_t>i
            i = (i + 1) & self.gslot_mask
        return -1

    cdef void gdelete(self, uint64_t i) noexcept nogil:
        cdef uint64_t j = i, k
        cdef uint64_t mask = self.gslot_mask
        while True:
            j = (j + 1) & mask
            if self.gslots[j].seq == 0:
                break
            k = self.gslots[j].hash & mask
            if i <= j:
                if i < k <= j:
                    continue
            else:
                if k > i or k <= j:
                    continue
            self.gslots[i] = self.gslots[j]
            i = j
        self.gslots[i].seq = 0

    cdef bint ghost_member(self, uint64_t h) noexcept nogil:
        # The ghost remembers as many evictions as main holds entries, as in
        # S3-FIFO; the ring is sized for the largest main possible.
        cdef int64_t i = self.gfind(h)
        cdef uint64_t window = self.q_count[Q_MAIN]
        if window < 1:
            window = 1
        return i >= 0 and self.ghost_seq - self.gslots[i].seq < window

    cdef void ghost_remove(self, uint64_t h) noexcept nogil:
        cdef int64_t i = self.gfind(h)
        if i >= 0:
            self.gdelete(i)

    cdef void ghost_insert(self, uint64_t h) noexcept nogil:
        cdef uint64_t seq = self.ghost_seq + 1
        cdef uint64_t pos = seq % self.ghost_size
        cdef int64_t i
        cdef uint64_t j
        self.ghost_seq = seq
        if seq > self.ghost_size:
            # The ring slot being overwritten leaves the table, unless that
            # hash was re-remembered later (its seq then differs).
            i = self.gfind(self.ghost_ring[pos])
            if i >= 0 and self.gslots[i].seq == seq - self.ghost_size:
                self.gdelete(i)
        self.ghost_ring[pos] = h
        i = self.gfind(h)
        if i >= 0:
            self.gslots[i].seq = seq
            return
        j = h & self.gslot_mask
        while self.gslots[j].seq != 0:
            j = (j + 1) & self.gslot_mask
        self.gslots[j].hash = h
        self.gslots[j].seq = seq

    # ---------------------------------------------------------------- segments

    cdef void q_push(self, int q, uint32_t s) noexcept nogil:
        self.seg_queue[s] = q
        self.seg_next[s] = -1
        if self.q_tail[q] < 0:
            self.q_head[q] = s
        else:
            self.seg_next[self.q_tail[q]] = s
        self.q_tail[q] = s
        self.q_len[q] += 1

    cdef int32_t q_pop_head(self, int q) noexcept nogil:
        cdef int32_t s = self.q_head[q]
        if s < 0:
            return -1
        self.q_head[q] = self.seg_next[s]
        if self.q_head[q] < 0:
            self.q_tail[q] = -1
        self.q_len[q] -= 1
        return s

    cdef int32_t q_unlink_unpinned(self, int q) noexcept nogil:
        # Oldest segment no transport still reads from (see Pinned).
        cdef int32_t prev = -1, s = self.q_head[q]
        while s >= 0 and self.seg_pins[s] != 0:
            prev = s
            s = self.seg_next[s]
        if s < 0:
            return -1
        if prev < 0:
            self.q_head[q] = self.seg_next[s]
        else:
            self.seg_next[prev] = self.seg_next[s]
        if self.q_tail[q] == s:
            self.q_tail[q] = prev
        self.q_len[q] -= 1
        if self.write_seg[q] == s:
            self.write_seg[q] = -1
        return s

    cdef int32_t new_segment(self, int q) noexcept nogil:
        # One free segment stays in reserve: the eviction in progress may
        # need it to copy survivors into main (they fit in one segment,
        # since they came out of one).
        cdef int32_t s
        cdef uint32_t n = 0
        cdef uint32_t limit = 4 * self.nseg + 8
        while self.q_len[Q_FREE] < 2:
            if not self.evict_one(n >= limit, False):
                return -1
            n += 1
        s = self.q_pop_head(Q_FREE)
        self.seg_used[s] = 0
        self.q_push(q, s)
        self.write_seg[q] = s
        return s

    cdef int64_t alloc(self, int q, uint32_t size) noexcept nogil:
        cdef int32_t w = self.write_seg[q]
        cdef uint32_t off
        if w < 0 or self.seg_used[w] + size > self.seg_size:
            w = self.new_segment(q)
            if w < 0:
                return -1
        off = self.seg_used[w]
        self.seg_used[w] += size
        return (<int64_t>w << 32) | off

    cdef int64_t alloc_reloc(self, uint32_t size) noexcept nogil:
        cdef int32_t w = self.write_seg[Q_MAIN]
        cdef uint32_t off
        if w < 0 or self.seg_used[w] + size > self.seg_size:
            w = self.q_pop_head(Q_FREE)
            if w < 0:       # cannot happen: the reserve segment
                return -1
            self.seg_used[w] = 0
            self.q_push(Q_MAIN, w)
            self.write_seg[Q_MAIN] = w
        off = self.seg_used[w]
        self.seg_used[w] += size
        return (<int64_t>w << 32) | off

    cdef bint evict_one(self, bint force, bint by_count) noexcept nogil:
        cdef int q, from_q
        cdef int32_t victim
        cdef uint32_t off = 0, end, size, nseg_off
        cdef Entry* e
        cdef Entry* ne
        cdef int64_t i, loc
        cdef bint expired, keep, over
        # The small queue keeps its share of the arena (space pressure) or of
        # the index (entry-count pressure, when entries are small).
        if by_count:
            over = self.q_count[Q_SMALL] > self.small_entries
        else:
            over = self.q_len[Q_SMALL] > self.small_target
        if self.q_len[Q_SMALL] > 0 and (over or self.q_len[Q_MAIN] == 0):
            q = Q_SMALL
        else:
            q = Q_MAIN
        victim = self.q_unlink_unpinned(q)
        if victim < 0:
            q = Q_MAIN if q == Q_SMALL else Q_SMALL
            victim = self.q_unlink_unpinned(q)
            if victim < 0:
                return False
        if force:
            self.forced += 1
        end = self.seg_used[victim]
        while off < end:
            e = self.entry_at(victim, off)
            size = entry_size(e.key_len, e.val_len)
            if not (e.flags & DEAD):
                i = self.find_loc(e.hash, victim, off)
                if i >= 0:
                    expired = e.expires <= self.now
                    if q == Q_SMALL:
                        keep = not force and not expired and e.freq >= self.promote_threshold
                    else:
                        keep = not force and not expired and e.freq > 0
                    if keep:
                        loc = self.alloc_reloc(size)
                        keep = loc >= 0
                    if keep:
                        nseg_off = <uint32_t>loc
                        ne = self.entry_at(<uint32_t>(loc >> 32), nseg_off)
                        memcpy(ne, e, size)
                        ne.gen = self.seg_gen[loc >> 32]
                        ne.freq = 0 if q == Q_SMALL else e.freq - 1
                        e.flags |= DEAD
                        self.slots[i].seg = <uint32_t>(loc >> 32)
                        self.slots[i].off = nseg_off
                        self.q_count[q] -= 1
                        self.q_count[Q_MAIN] += 1
                        self.relocations += 1
                    else:
                        if q == Q_SMALL and not expired:
                            self.ghost_insert(e.hash)
                        if expired:
                            self.expirations += 1
                        else:
                            self.evictions += 1
                        self.drop_slot(i)
            off += size
        self.seg_gen[victim] += 1
        self.seg_used[victim] = 0
        self.q_push(Q_FREE, victim)
        return True

    cdef bint ensure_room(self) noexcept nogil:
        cdef uint32_t n = 0
        cdef uint32_t limit = 4 * self.nseg + 8
        while self.count >= self.max_entries:
            if not self.evict_one(n >= limit, True):
                return False
            n += 1
        return True

    cdef uint64_t key_hash(self, bytes key, object h) except? 0:
        if h is None:
            return <uint64_t>self.hash_fn(key)
        return <uint64_t>h

    # ---------------------------------------------------------------- public API

    cdef int64_t live(self, bytes key, object now, object h) except -2:
        """The slot of the live entry under key, counted as a hit (or -1, counted as a miss)."""
        cdef uint64_t hv = self.key_hash(key, h)
        cdef int64_t i = self.find(hv, <const unsigned char*>PyBytes_AS_STRING(key),
                                   PyBytes_GET_SIZE(key))
        cdef Entry* e
        cdef double t
        if i < 0:
            self.misses += 1
            return -1
        e = self.entry_at(self.slots[i].seg, self.slots[i].off)
        if e.expires != INFINITY:
            t = wall_now() if now is None else <double>now
            if e.expires <= t:
                self.drop_slot(i)
                self.expirations += 1
                self.misses += 1
                return -1
        if e.freq < FREQ_MAX:
            e.freq += 1
        self.hits += 1
        return i

    def get(self, bytes key not None, now=None, h=None):
        """Return a copy of the value stored under key, or None (miss or expired)."""
        cdef int64_t i = self.live(key, now, h)
        if i < 0:
            return None
        cdef Entry* e = self.entry_at(self.slots[i].seg, self.slots[i].off)
        return PyBytes_FromStringAndSize(
            <char*>e + ENTRY_HDR + e.key_len, e.val_len)

    def get_view(self, bytes key not None, now=None, h=None):
        """Return a zero-copy read-only view of the value, pinning its segment, or None.

        The segment is not evicted while the returned object (or any memoryview
        of it) is alive, so a transport may hold it until the bytes are written.
        """
        cdef int64_t i = self.live(key, now, h)
        if i < 0:
            return None
        cdef Entry* e = self.entry_at(self.slots[i].seg, self.slots[i].off)
        return self.pin(self.slots[i].seg, <char*>e + ENTRY_HDR + e.key_len, e.val_len)

    cdef Pinned pin(self, uint32_t seg, char* ptr, Py_ssize_t length):
        """A view of length bytes at ptr inside segment seg, which stays unevicted (and
        its bytes unchanged: entries are never moved or rewritten in place) while the
        view, or any memoryview of it, is alive."""
        cdef Pinned p = Pinned.__new__(Pinned)
        p.cache = self
        p.seg = seg
        p.ptr = ptr
        p.length = length
        self.seg_pins[seg] += 1
        return p

    def set(self, bytes key not None, value, double expires=INFINITY, now=None, h=None):
        """Store value (bytes-like, or a list/tuple of them to concatenate) under key.

        Returns False when the entry bypasses the cache (larger than the item
        limit) or no segment can be freed (all pinned); any older value for the
        key is removed either way.
        """
        cdef uint64_t hv = self.key_hash(key, h)
        cdef Py_ssize_t klen = PyBytes_GET_SIZE(key)
        cdef const unsigned char* kp = <const unsigned char*>PyBytes_AS_STRING(key)
        cdef Py_ssize_t vlen = 0, n = 0, k, j
        cdef Py_buffer buf
        cdef Py_buffer* bufs = NULL
        cdef int64_t i, loc
        cdef int q
        cdef uint8_t freq = 0
        cdef uint32_t size, seg, off
        cdef Entry* e
        cdef unsigned char* dst
        cdef list parts
        self.now = wall_now() if now is None else <double>now
        if isinstance(value, (list, tuple)):
            parts = list(value)
        else:
            parts = [value]
        n = len(parts)
        bufs = <Py_buffer*>calloc(n if n > 0 else 1, sizeof(Py_buffer))
        if bufs == NULL:
            raise MemoryError()
        k = 0
        try:
            while k < n:
                PyObject_GetBuffer(parts[k], &bufs[k], PyBUF_SIMPLE)
                vlen += bufs[k].len
                k += 1
            i = self.find(hv, kp, klen)
            if klen + vlen > 0xFFFFFFF0 or entry_size(klen, vlen) > self.max_item:
                if i >= 0:
                    self.drop_slot(i)
                self.bypasses += 1
                return False
            size = entry_size(klen, vlen)
            if i >= 0:
                seg = self.slots[i].seg
                q = self.seg_queue[seg]
                freq = self.entry_at(seg, self.slots[i].off).freq
                self.drop_slot(i)
            elif self.ghost_member(hv):
                self.ghost_remove(hv)
                self.ghost_hits += 1
                q = Q_MAIN
            else:
                q = Q_SMALL
            if not self.ensure_room():
                self.alloc_failures += 1
                return False
            loc = self.alloc(q, size)
            if loc < 0:
                self.alloc_failures += 1
                return False
            seg = <uint32_t>(loc >> 32)
            off = <uint32_t>loc
            e = self.entry_at(seg, off)
            e.hash = hv
            e.expires = expires
            e.key_len = <uint32_t>klen
            e.val_len = <uint32_t>vlen
            e.gen = self.seg_gen[seg]
            e.freq = freq
            e.flags = 0
            e.pad = 0
            dst = <unsigned char*>e + ENTRY_HDR
            memcpy(dst, kp, klen)
            dst += klen
            # Not k: the finally clause releases the k buffers taken, so k must stay n.
            for j in range(n):
                memcpy(dst, bufs[j].buf, bufs[j].len)
                dst += bufs[j].len
            # Insert the slot (the key is known absent now).
            i = hv & self.slot_mask
            while self.slots[i].seg != EMPTY_SEG:
                i = (i + 1) & self.slot_mask
            self.slots[i].hash = hv
            self.slots[i].seg = seg
            self.slots[i].off = off
            self.count += 1
            self.q_count[self.seg_queue[seg]] += 1
            self.live_bytes += size
            self.inserts += 1
            return True
        finally:
            while k > 0:
                k -= 1
                PyBuffer_Release(&bufs[k])
            free(bufs)

    def delete(self, bytes key not None, h=None):
        """Remove key; return True if it was present."""
        cdef uint64_t hv = self.key_hash(key, h)
        cdef int64_t i = self.find(hv, <const unsigned char*>PyBytes_AS_STRING(key),
                                   PyBytes_GET_SIZE(key))
        if i < 0:
            return False
        self.drop_slot(i)
        return True

    def set_expires(self, bytes key not None, double expires, h=None):
        """Change the expiry of a stored key in place; return True if it was present."""
        cdef uint64_t hv = self.key_hash(key, h)
        cdef int64_t i = self.find(hv, <const unsigned char*>PyBytes_AS_STRING(key),
                                   PyBytes_GET_SIZE(key))
        if i < 0:
            return False
        self.entry_at(self.slots[i].seg, self.slots[i].off).expires = expires
        return True

    def __contains__(self, key):
        """True if key is stored (expired or not); does not count as an access."""
        cdef bytes k
        cdef uint64_t hv
        if not isinstance(key, bytes):
            return False
        k = key
        hv = self.hash_fn(k)
        return self.find(hv, <const unsigned char*>PyBytes_AS_STRING(k),
                         PyBytes_GET_SIZE(k)) >= 0

    def __len__(self):
        return self.count

    def delete_prefix(self, bytes prefix not None):
        """Remove every key starting with prefix; return how many were removed."""
        cdef Py_ssize_t plen = PyBytes_GET_SIZE(prefix)
        cdef const unsigned char* pp = <const unsigned char*>PyBytes_AS_STRING(prefix)
        cdef uint64_t removed = 0
        cdef uint32_t s, off, end
        cdef int64_t i
        cdef Entry* e
        for s in range(self.nseg):
            if self.seg_queue[s] == Q_FREE:
                continue
            off = 0
            end = self.seg_used[s]
            while off < end:
                e = self.entry_at(s, off)
                if (not (e.flags & DEAD) and e.key_len >= plen
                        and memcmp(<unsigned char*>e + ENTRY_HDR, pp, plen) == 0):
                    i = self.find_loc(e.hash, s, off)
                    if i >= 0:
                        self.drop_slot(i)
                        removed += 1
                off += entry_size(e.key_len, e.val_len)
        return removed

    def keys(self):
        """Return a list of every live key (for admin listings and tests)."""
        cdef list out = []
        cdef uint32_t s, off, end
        cdef Entry* e
        for s in range(self.nseg):
            if self.seg_queue[s] == Q_FREE:
                continue
            off = 0
            end = self.seg_used[s]
            while off < end:
                e = self.entry_at(s, off)
                if not (e.flags & DEAD) and self.find_loc(e.hash, s, off) >= 0:
                    out.append(PyBytes_FromStringAndSize(<char*>e + ENTRY_HDR, e.key_len))
                off += entry_size(e.key_len, e.val_len)
        return out

    def clear(self):
        """Remove every entry (segments are recycled by eviction, respecting pins)."""
        cdef uint64_t i
        cdef Entry* e
        for i in range(self.slot_mask + 1):
            if self.slots[i].seg != EMPTY_SEG:
                e = self.entry_at(self.slots[i].seg, self.slots[i].off)
                e.flags |= DEAD
                self.slots[i].seg = EMPTY_SEG
        self.count = 0
        self.live_bytes = 0
        self.q_count[Q_SMALL] = 0
        self.q_count[Q_MAIN] = 0

    def release(self):
        """Give the arena, index and ghost memory back now; the store stays usable, empty.

        For a store nobody will use again (a reload changed the cache settings) while
        objects still reference it: every lookup misses and every store is refused
        (counted as a bypass) from now on. A segment a Pinned view still reads keeps the
        arena until the last such view is gone.
        """
        cdef uint32_t s
        cdef int q
        cdef Slot* slots
        cdef uint64_t* ring
        cdef GSlot* gslots
        if self.released:
            return
        # One empty slot and one empty ghost slot: probes stop at once; set() bypasses
        # (max_item 0) before it could reach the ghost or allocate.
        slots = <Slot*>malloc(sizeof(Slot))
        ring = <uint64_t*>calloc(1, sizeof(uint64_t))
        gslots = <GSlot*>calloc(1, sizeof(GSlot))
        if slots == NULL or ring == NULL or gslots == NULL:
            free(slots)
            free(ring)
            free(gslots)
            raise MemoryError()
        self.released = True
        slots[0].seg = EMPTY_SEG
        free(self.slots)
        free(self.ghost_ring)
        free(self.gslots)
        self.slots = slots
        self.slot_mask = 0
        self.ghost_ring = ring
        self.ghost_size = 1
        self.gslots = gslots
        self.gslot_mask = 0
        self.max_item = 0
        self.max_entries = 0
        self.count = 0
        self.live_bytes = 0
        # Every segment reads as free, so the scans (keys, delete_prefix) skip them all.
        for s in range(self.nseg):
            self.seg_queue[s] = Q_FREE
            self.seg_used[s] = 0
        for q in range(3):
            self.q_count[q] = 0
        self.free_arena_if_unpinned()

    cdef void free_arena_if_unpinned(self) noexcept nogil:
        cdef uint32_t s
        if self.arena == NULL:
            return
        for s in range(self.nseg):
            if self.seg_pins[s]:
                return
        munmap(self.arena, self.capacity)
        self.arena = NULL
        self.capacity = 0

    def stats(self):
        """Return counters and sizes as a dict."""
        return {
            "hits": self.hits, "misses": self.misses, "inserts": self.inserts,
            "evictions": self.evictions, "expirations": self.expirations,
            "bypasses": self.bypasses, "relocations": self.relocations,
            "ghost_hits": self.ghost_hits, "forced": self.forced,
            "alloc_failures": self.alloc_failures,
            "entries": self.count, "bytes": self.live_bytes,
            "capacity": self.capacity, "segment_size": self.seg_size,
            "segments": self.nseg, "small_segments": self.q_len[Q_SMALL],
            "main_segments": self.q_len[Q_MAIN], "free_segments": self.q_len[Q_FREE],
            "small_entries": self.q_count[Q_SMALL], "main_entries": self.q_count[Q_MAIN],
            "max_entries": self.max_entries, "max_item": self.max_item,
            "pinned_segments": sum(1 for s in range(self.nseg) if self.seg_pins[s]),
            "memory": self.capacity + (self.slot_mask + 1) * sizeof(Slot)
                      + self.ghost_size * 8 + (self.gslot_mask + 1) * sizeof(GSlot)
                      + self.nseg * 17,
        }

    def _debug_check(self):
        """Verify internal invariants; raise AssertionError naming the first broken one."""
        cdef uint64_t i
        cdef uint64_t n = 0
        cdef uint64_t per_q[3]
        cdef Entry* e
        per_q[0] = per_q[1] = per_q[2] = 0
        for i in range(self.slot_mask + 1):
            if self.slots[i].seg == EMPTY_SEG:
                continue
            n += 1
            if self.slots[i].seg >= self.nseg:
                raise AssertionError(f"slot {i} points past the arena")
            if self.seg_queue[self.slots[i].seg] == Q_FREE:
                raise AssertionError(f"slot {i} points into a free segment")
            e = self.entry_at(self.slots[i].seg, self.slots[i].off)
            if e.hash != self.slots[i].hash or e.gen != self.seg_gen[self.slots[i].seg]:
                raise AssertionError(f"slot {i} points at a foreign entry")
            if e.flags & DEAD:
                raise AssertionError(f"slot {i} points at a dead entry")
            if self.find_loc(e.hash, self.slots[i].seg, self.slots[i].off) != <int64_t>i:
                raise AssertionError(f"slot {i} is unreachable from its home")
            per_q[self.seg_queue[self.slots[i].seg]] += 1
        if n != self.count:
            raise AssertionError(f"count {self.count} != {n} live slots")
        if per_q[1] != self.q_count[1] or per_q[2] != self.q_count[2]:
            raise AssertionError("per-queue counts disagree")
        if self.q_len[0] + self.q_len[1] + self.q_len[2] != self.nseg:
            raise AssertionError("segments lost from the queues")
        if self.q_len[Q_FREE] < 1:
            raise AssertionError("the reserve segment is gone")
        return True


cdef class Pinned:
    """A read-only buffer over a stored value; its segment cannot be evicted while alive."""

    def __dealloc__(self):
        if self.cache is not None:
            self.cache.seg_pins[self.seg] -= 1
            if self.cache.released:
                self.cache.free_arena_if_unpinned()

    def __len__(self):
        return self.length

    def __getbuffer__(self, Py_buffer* view, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("cached values are read-only")
        view.buf = self.ptr
        view.obj = self
        view.len = self.length
        view.readonly = 1
        view.itemsize = 1
        if flags & 4:   # PyBUF_FORMAT
            view.format = b"B"
        else:
            view.format = NULL
        view.ndim = 1
        self.shape[0] = self.length
        view.shape = self.shape if (flags & 8) else NULL   # PyBUF_ND
        view.strides = NULL
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def __bytes__(self):
        return PyBytes_FromStringAndSize(self.ptr, self.length)
