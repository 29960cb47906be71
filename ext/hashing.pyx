"""Compiled upstream choice: the per-request pick of every balancing policy.

One pick runs for every proxied request, so the loops that choose a server live here and
read C arrays, not Python attributes:

- `Core`: the eligible servers in a canonical order (sorted by name), their weights and an
  in-flight count per server kept in step with `Server.active` by `acquire`/`release`.
- `Maglev`: Google's Maglev lookup table (Eisenbud et al., NSDI 2016) for consistent hashing,
  with weights (a server's share of the table follows its weight) and bounded load (HAProxy's
  `hash-balance-factor`, Envoy's `hash_balance_factor`): a server over its share of the
  in-flight requests is passed over for the next server in the key's preference order.
- `SmoothWeightedRoundRobin`, `LeastConn`, `Random2`: the loops of nginx's smooth weighted
  round robin, nginx's least_conn and the power of two random choices.

- `RequestKey`: the request's hash key (uri, path, client_ip, header, cookie) found with
  memchr and hashed with xxh3 (64 bits) from the `xxhash` package; fastproxy.upstream.balance.keys
  validates the spec and documents the choices.

Server objects are duck-typed: `.name` (str), `.weight` (int), `.active` (int).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.unicode cimport PyUnicode_AsUTF8String
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memset

from hashing cimport FACTOR_SCALE, slot_t, splitmix64, under_cap

import os

from xxhash import xxh3_64_intdigest

MAX_SERVERS = 65535
MAX_WEIGHT = 10000
# Envoy's default Maglev table size: with 10 servers each owns ~6,550 entries, so table
# rounding costs < 0.02% of balance, and removing one server moves ~10% of the keys.
DEFAULT_TABLE_SIZE = 65537
# Keep the table in a few MiB whatever the weights ask for.
MAX_TABLE_SIZE = 4194301
# Each server (the lightest one included) should own at least this many entries.
MIN_ENTRIES_PER_SERVER = 100
# Weight resolution while a server slow-starts: it begins at 1/RAMP_UNIT of its weight.
cdef int64_t RAMP_UNIT = 100

cdef slot_t EMPTY = <slot_t>0xFFFF
# Looked up once: the per-request key hash is a C-level call to this object.
cdef object _xxh3 = xxh3_64_intdigest


def is_prime(Py_ssize_t m):
    """Return True when m is prime (trial division; m is a table size, at most a few million)."""
    if m < 2:
        return False
    if m % 2 == 0:
        return m == 2
    cdef Py_ssize_t d = 3
    while d * d <= m:
        if m % d == 0:
            return False
        d += 2
    return True


def next_prime(Py_ssize_t m):
    """Return the smallest prime >= m."""
    while not is_prime(m):
        m += 1
    return m


def table_size_for(weights, Py_ssize_t minimum=0):
    """Return the Maglev table size for these weights: a prime, >= minimum, >= 100 per server."""
    weights = list(weights)
    if not weights:
        return 0
    # Size for the lightest server, so a weight-1 server beside weight-100 ones still owns
    # enough entries to keep its share close to its weight.
    cdef Py_ssize_t need = -(-MIN_ENTRIES_PER_SERVER * sum(weights) // min(weights))
    need = max(need, minimum or DEFAULT_TABLE_SIZE)
    return next_prime(min(need, MAX_TABLE_SIZE))


cdef void *_alloc(Py_ssize_t count, size_t size) except NULL:
    # Never ask for zero bytes: an empty pool still gets valid pointers.
    cdef void *p = PyMem_Malloc(<size_t>(count if count > 0 else 1) * size)
    if p == NULL:
        raise MemoryError()
    return p


cdef class Counted:
    """Base of upstream servers: `active` (requests in flight) and `failures` (the
    passive health count) as C fields.

    acquire/release run on every proxied request, and the relay reads `failures` after
    every response; on a Python object with __slots__ each read and write was a
    descriptor lookup and a new int (about a thousand instructions per request in
    callgrind). Other duck-typed servers still work.
    """


cdef class Core:
    """Base of every policy: the eligible servers, their weights and in-flight counts.

    The proxy calls `pick(key, exclude)` for each attempt, `acquire(server)` when a request
    is sent to the chosen server and `release(server)` when it ends (these keep
    `server.active` and the group total in step: do not change `server.active` elsewhere),
    and `update(servers)` when the eligible set changes (health, ejection, membership).
    """

    # Attributes are declared in ext/fastproxy/_hashing.pxd (the relay cimports Core).

    def __cinit__(self, *args, **kwargs):
        self.active = NULL
        self.weight = NULL
        self.current = NULL
        self.excluded = NULL
        self.exclude_gen = 1
        self.servers = []
        self._index = {}
        self.n = 0
        self.max_active = 0
        self._ramp = {}

    def __dealloc__(self):
        PyMem_Free(self.active)
        PyMem_Free(self.weight)
        PyMem_Free(self.current)
        PyMem_Free(self.excluded)

    def __init__(self, servers=()):
        self.update(servers)

    def __len__(self):
        return self.n

    def update(self, servers):
        """Replace the eligible set; servers present before keep their state."""
        cdef list ordered = _canonical(servers)
        cdef Py_ssize_t n = len(ordered), i
        cdef int64_t *active = <int64_t *>_alloc(n, sizeof(int64_t))
        cdef int64_t *weight = NULL
        cdef int64_t *current = NULL
        cdef uint32_t *excluded = NULL
        try:
            weight = <int64_t *>_alloc(n, sizeof(int64_t))
            current = <int64_t *>_alloc(n, sizeof(int64_t))
            excluded = <uint32_t *>_alloc(n, sizeof(uint32_t))
        except MemoryError:
            PyMem_Free(active)
            PyMem_Free(weight)
            PyMem_Free(current)
            raise
        cdef dict index = {}
        cdef int64_t total_active = 0, total_weight = 0
        for i in range(n):
            server = ordered[i]
            old = self._index.get(server)
            active[i] = max(<int64_t>server.active, 0)
            # Smooth round robin state survives an update, so a health flap of one server
            # does not reset everybody's turn.
            current[i] = self.current[<Py_ssize_t>old] if old is not None else 0
            excluded[i] = 0
            total_active += active[i]
            index[server] = i
        PyMem_Free(self.active)
        PyMem_Free(self.weight)
        PyMem_Free(self.current)
        PyMem_Free(self.excluded)
        self.active, self.weight, self.current, self.excluded = active, weight, current, excluded
        self.exclude_gen = 1
        self.servers = ordered
        self._index = index
        self.n = n
        self.total_active = total_active
        self._set_weights()
        self._rebuild()

    cdef int _rebuild(self) except -1:
        return 0

    cdef int _set_weights(self) except -1:
        """Fill the weight array from the servers' weights and the slow-start ramps."""
        # While a server ramps every weight counts in RAMP_UNIT parts, so a weight-1 server
        # can hold 1% of its share; the policies compare weights only with each other, so
        # the scale changes nobody else's share (and without ramps the arithmetic is as
        # it always was).
        cdef int64_t unit = RAMP_UNIT if self._ramp else 1, total = 0, w
        cdef Py_ssize_t i
        cdef PyObject *share
        for i in range(self.n):
            server = <object>PyList_GET_ITEM(self.servers, i)
            w = <int64_t>server.weight * unit
            share = PyDict_GetItem(self._ramp, server) if self._ramp else NULL
            if share != NULL:
                w = max(<int64_t>(w * <double><object>share), 1)
            self.weight[i] = w
            total += w
        self.total_weight = total
        return 0

    def ramp(self, server, double share):
        """Give `server` this share (0 to 1) of its weight while it slow-starts; 1 ends it."""
        cdef bint scaled = bool(self._ramp)
        cdef Py_ssize_t i
        if share >= 1.0:
            if self._ramp.pop(server, None) is None:
                return
        else:
            self._ramp[server] = max(share, 0.0)
        if scaled != bool(self._ramp):
            # The weights change scale (_set_weights): the round-robin credits earned in
            # the old one change with them, or the server ahead at the switch would get a
            # run of turns while the credits in the old scale drain.
            for i in range(self.n):
                self.current[i] = self.current[i] // RAMP_UNIT if scaled else \
                    self.current[i] * RAMP_UNIT
        self._set_weights()
        self._rebuild()

    cpdef acquire(self, server):
        """Count one more request in flight to `server` (call when it is sent)."""
        if isinstance(server, Counted):
            (<Counted>server).active += 1
        else:
            server.active += 1
        cdef PyObject *found = PyDict_GetItem(self._index, server)
        if found != NULL:
            self.active[<Py_ssize_t><object>found] += 1
            self.total_active += 1

    cpdef release(self, server):
        """Count one request to `server` as finished."""
        cdef Counted c
        if isinstance(server, Counted):
            c = <Counted>server
            if c.active > 0:
                c.active -= 1
        elif server.active > 0:
            server.active -= 1
        cdef PyObject *found = PyDict_GetItem(self._index, server)
        cdef Py_ssize_t i
        if found != NULL:
            i = <Py_ssize_t><object>found
            if self.active[i] > 0:
                self.active[i] -= 1
                self.total_active -= 1

    def in_flight(self):
        """Return the in-flight count of each eligible server, in `servers` order."""
        return [self.active[i] for i in range(self.n)]

    cdef bint _mark_excluded(self, object exclude) except -1:
        """Mark the eligible servers in `exclude`; True when at least one was marked."""
        cdef PyObject *found
        cdef bint marked = False
        self._new_exclusion()
        for server in exclude:
            found = PyDict_GetItem(self._index, server)
            if found != NULL:
                self.excluded[<Py_ssize_t><object>found] = self.exclude_gen
                marked = True
        return marked

    cdef void _new_exclusion(self) noexcept:
        """Start a pick's exclusion marks afresh (earlier picks' marks no longer count)."""
        self.exclude_gen += 1
        if self.exclude_gen == 0:
            # The generation wrapped: clear the old marks once every 2**32 picks.
            memset(self.excluded, 0, <size_t>(self.n if self.n > 0 else 1) * sizeof(uint32_t))
            self.exclude_gen = 1

    cdef Py_ssize_t _choose(self, uint64_t key, bint has_excluded) except -2:
        raise NotImplementedError

    cdef Py_ssize_t _below_cap(self, uint64_t key, bint has_excluded, Py_ssize_t first) except -2:
        """The policy's next choice with the full servers passed over; `first` if all are full.

        As nginx's max_conns and HAProxy's maxconn: a full server is skipped, not answered
        503 for while others have room. Under consistent hashing the key goes to the next
        server of its own preference order, so other keys keep their servers.
        """
        cdef Py_ssize_t i = first, tries
        if not has_excluded:
            self._new_exclusion()
        for tries in range(self.n):
            self.excluded[i] = self.exclude_gen
            i = self._choose(key, True)
            if i < 0:
                break
            if self.active[i] < self.max_active:
                return i
        # Every allowed server is full: the first choice, which the breaker refuses by name.
        return first

    cpdef pick(self, uint64_t key=0, exclude=()):
        """Return the server for this request, or None when no eligible server is left.

        `key` is the 64-bit hash of the request's hash key (ignored by policies that do not
        hash); `exclude` holds servers already tried by earlier attempts of this request.
        """
        cdef bint has_excluded = False
        if self.n == 0:
            return None
        if exclude:
            has_excluded = self._mark_excluded(exclude)
        cdef Py_ssize_t i = self._choose(key, has_excluded)
        if i < 0:
            return None
        return <object>PyList_GET_ITEM(self.servers, i)

    def pick_open(self, uint64_t key=0, exclude=()):
        """pick(), passing over servers at `max_active` for the policy's next choice.

        The proxy's pick (UpstreamGroup.pick). The relay's compiled fast path calls pick()
        and, finding the server full, hands the request to the handler, which lands here:
        so the per-request path of a pool without a cap has no test for it.
        """
        cdef bint has_excluded = False
        if self.n == 0:
            return None
        if exclude:
            has_excluded = self._mark_excluded(exclude)
        cdef Py_ssize_t i = self._choose(key, has_excluded)
        if i < 0:
            return None
        if self.max_active and self.active[i] >= self.max_active:
            i = self._below_cap(key, has_excluded, i)
        return <object>PyList_GET_ITEM(self.servers, i)

    cdef Py_ssize_t _least_loaded(self, bint has_excluded) noexcept:
        """Index of the non-excluded server with the lowest active/weight (-1: none)."""
        cdef Py_ssize_t i, best = -1
        for i in range(self.n):
            if has_excluded and self._is_excluded(i):
                continue
            if best < 0 or self.active[i] * self.weight[best] < self.active[best] * self.weight[i]:
                best = i
        return best


cdef list _canonical(servers):
    """Validate servers and return them sorted by name (the order every worker agrees on)."""
    cdef list ordered = sorted(servers, key=_name_of)
    if len(ordered) > MAX_SERVERS:
        raise ValueError(f"servers: at most {MAX_SERVERS} servers in one pool, got {len(ordered)}")
    cdef set seen = set()
    for server in ordered:
        w = server.weight
        if not isinstance(w, int) or isinstance(w, bool) or not 1 <= w <= MAX_WEIGHT:
            raise ValueError(f"weight: {server.name} has weight {w!r}, "
                             f"expected an integer from 1 to {MAX_WEIGHT}")
        if server.name in seen:
            raise ValueError(f"servers: {server.name} is listed twice in one pool")
        seen.add(server.name)
    return ordered


def _name_of(server):
    return server.name


cdef class Maglev(Core):
    """Consistent hashing through a Maglev lookup table, with optional bounded load.

    Each server owns a share of a prime-sized table proportional to its weight; a key goes to
    `table[key % size]`. The table is a pure function of the (name, weight) set, so every
    worker and every instance builds the same one, and a server that leaves and comes back
    gets exactly its own keys back. The key's preference order is the table walked from its
    slot: later servers take the key when earlier ones are excluded or over their load cap.
    """

    cdef slot_t *table
    cdef readonly Py_ssize_t table_size
    cdef readonly Py_ssize_t min_table_size
    cdef readonly double balance_factor
    cdef int64_t factor
    cdef uint32_t *seen
    cdef uint32_t seen_gen

    def __cinit__(self, *args, **kwargs):
        self.table = NULL
        self.seen = NULL
        self.seen_gen = 1
        self.table_size = 0

    def __dealloc__(self):
        PyMem_Free(self.table)
        PyMem_Free(self.seen)

    def __init__(self, servers=(), Py_ssize_t table_size=0, double balance_factor=1.25):
        if table_size < 0 or table_size > MAX_TABLE_SIZE:
            raise ValueError(f"table_size: expected 0 (automatic) up to {MAX_TABLE_SIZE}, "
                             f"got {table_size}")
        if balance_factor != 0 and not 1.0 <= balance_factor <= 100.0:
            raise ValueError(f"balance_factor: expected 0 (off) or 1.0 to 100.0, "
                             f"got {balance_factor}")
        self.min_table_size = table_size
        self.balance_factor = balance_factor
        self.factor = <int64_t>(balance_factor * FACTOR_SCALE + 0.5)
        Core.__init__(self, servers)

    cdef int _rebuild(self) except -1:
        cdef Py_ssize_t n = self.n, size, i, filled, c
        if n == 0:
            PyMem_Free(self.table)
            PyMem_Free(self.seen)
            self.table = NULL
            self.seen = NULL
            self.table_size = 0
            return 0
        size = table_size_for([self.weight[i] for i in range(n)], self.min_table_size)
        cdef slot_t *table = <slot_t *>_alloc(size, sizeof(slot_t))
        cdef uint32_t *seen = NULL
        cdef int64_t *pos = NULL
        cdef int64_t *skip = NULL
        cdef int64_t *credit = NULL
        cdef int64_t wmax = 0
        try:
            seen = <uint32_t *>_alloc(n, sizeof(uint32_t))
            pos = <int64_t *>_alloc(n, sizeof(int64_t))
            skip = <int64_t *>_alloc(n, sizeof(int64_t))
            credit = <int64_t *>_alloc(n, sizeof(int64_t))
            for i in range(n):
                # Each server's permutation of the table: start at offset, step by skip
                # (size is prime, so any skip in [1, size-1] visits every entry).
                name = (<object>PyList_GET_ITEM(self.servers, i)).name.encode()
                pos[i] = xxh3_64_intdigest(name, 0xA5A5) % size
                skip[i] = xxh3_64_intdigest(name, 0x5A5A) % (size - 1) + 1
                credit[i] = 0
                seen[i] = 0
                if self.weight[i] > wmax:
                    wmax = self.weight[i]
            memset(table, 0xFF, <size_t>size * sizeof(slot_t))
            filled = 0
            # Weighted fill (as Envoy's Maglev): each round every server earns its weight in
            # credit and claims its next free preferred entry once it holds `wmax` credit, so
            # entries per server follow the weights.
            while filled < size:
                for i in range(n):
                    credit[i] += self.weight[i]
                    if credit[i] < wmax:
                        continue
                    credit[i] -= wmax
                    c = pos[i]
                    while table[c] != EMPTY:
                        c += skip[i]
                        if c >= size:
                            c -= size
                    table[c] = <slot_t>i
                    c += skip[i]
                    if c >= size:
                        c -= size
                    pos[i] = c
                    filled += 1
                    if filled == size:
                        break
        except BaseException:
            PyMem_Free(table)
            PyMem_Free(seen)
            raise
        finally:
            PyMem_Free(pos)
            PyMem_Free(skip)
            PyMem_Free(credit)
        PyMem_Free(self.table)
        PyMem_Free(self.seen)
        self.table = table
        self.seen = seen
        self.seen_gen = 1
        self.table_size = size
        return 0

    cdef Py_ssize_t _choose(self, uint64_t key, bint has_excluded) except -2:
        cdef Py_ssize_t slot = <Py_ssize_t>(key % <uint64_t>self.table_size)
        cdef Py_ssize_t i = self.table[slot]
        if not has_excluded and (self.factor == 0 or under_cap(
                self.active[i], self.weight[i], self.total_active, self.total_weight,
                self.factor)):
            return i
        return self._walk(slot, has_excluded)

    cdef Py_ssize_t _walk(self, Py_ssize_t slot, bint has_excluded) noexcept:
        """Walk the key's preference order; return the first server that may take it."""
        cdef Py_ssize_t distinct = 0, step, i, size = self.table_size
        self.seen_gen += 1
        if self.seen_gen == 0:
            memset(self.seen, 0, <size_t>self.n * sizeof(uint32_t))
            self.seen_gen = 1
        for step in range(size):
            i = self.table[slot]
            slot += 1
            if slot == size:
                slot = 0
            if self.seen[i] == self.seen_gen:
                continue
            self.seen[i] = self.seen_gen
            distinct += 1
            if not (has_excluded and self._is_excluded(i)) and (
                    self.factor == 0 or under_cap(self.active[i], self.weight[i],
                                                  self.total_active, self.total_weight,
                                                  self.factor)):
                return i
            if distinct == self.n:
                break
        # Every allowed server is over its cap (possible only when excluded servers hold
        # the slack) or owns no entry (extreme weight ratios): take the least loaded one,
        # which is under the cap whenever any allowed server is.
        return self._least_loaded(has_excluded)

    def ramp(self, server, double share):
        """Consistent hashing does not slow-start (see fastproxy.upstream.balance.maglev)."""
        raise ValueError("slow_start: maglev gives a returning server its keys back at once")

    def preference(self, uint64_t key, Py_ssize_t limit=0):
        """Return the key's servers in preference order (first = owner), ignoring load."""
        cdef list order = []
        cdef Py_ssize_t slot, step, i
        if self.n == 0:
            return order
        if limit <= 0 or limit > self.n:
            limit = self.n
        slot = <Py_ssize_t>(key % <uint64_t>self.table_size)
        self.seen_gen += 1
        if self.seen_gen == 0:
            memset(self.seen, 0, <size_t>self.n * sizeof(uint32_t))
            self.seen_gen = 1
        for step in range(self.table_size):
            i = self.table[(slot + step) % self.table_size]
            if self.seen[i] != self.seen_gen:
                self.seen[i] = self.seen_gen
                order.append(<object>PyList_GET_ITEM(self.servers, i))
                if len(order) == limit:
                    break
        return order

    def owner(self, uint64_t key):
        """Return the server owning `key` in the table, ignoring load and exclusions."""
        if self.n == 0:
            return None
        return <object>PyList_GET_ITEM(self.servers, self.table[key % <uint64_t>self.table_size])

    def owners(self, keys):
        """Return the owner index (into `servers`) of each key, as a list of ints."""
        cdef Py_ssize_t size = self.table_size
        if self.n == 0:
            return [-1 for _ in keys]
        return [self.table[<uint64_t>k % <uint64_t>size] for k in keys]

    def entries(self):
        """Return how many table entries each server owns, in `servers` order."""
        cdef list counts = [0] * self.n
        cdef Py_ssize_t s
        for s in range(self.table_size):
            counts[self.table[s]] += 1
        return counts


cdef class SmoothWeightedRoundRobin(Core):
    """nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a, not a a a a a b c."""

    cdef Py_ssize_t _choose(self, uint64_t key, bint has_excluded) except -2:
        # Every pick, each candidate gains its weight; the richest wins and pays the total
        # (ngx_http_upstream_get_peer). Excluded servers sit the round out, as nginx's
        # "tried" bitmap does for retries.
        cdef Py_ssize_t i, best = -1
        cdef int64_t total = 0
        for i in range(self.n):
            if has_excluded and self._is_excluded(i):
                continue
            self.current[i] += self.weight[i]
            total += self.weight[i]
            if best < 0 or self.current[i] > self.current[best]:
                best = i
        if best >= 0:
            self.current[best] -= total
        return best


cdef class LeastConn(Core):
    """nginx's least_conn: fewest in-flight requests per weight; ties by smooth round robin."""

    cdef Py_ssize_t _choose(self, uint64_t key, bint has_excluded) except -2:
        cdef Py_ssize_t i, best = self._least_loaded(has_excluded), chosen = -1
        cdef int64_t total = 0
        if best < 0:
            return -1
        # Several servers share the lowest load (always so when idle): share those requests
        # by weight instead of always handing them to the first (ngx_http_upstream_least_conn).
        for i in range(best, self.n):
            if has_excluded and self._is_excluded(i):
                continue
            if self.active[i] * self.weight[best] != self.active[best] * self.weight[i]:
                continue
            self.current[i] += self.weight[i]
            total += self.weight[i]
            if chosen < 0 or self.current[i] > self.current[chosen]:
                chosen = i
        self.current[chosen] -= total
        return chosen


cdef class Random2(Core):
    """Power of two choices: draw two servers by weight, send to the less loaded one."""

    cdef uint64_t rng
    cdef int64_t *cumulative

    def __cinit__(self, *args, **kwargs):
        self.cumulative = NULL

    def __dealloc__(self):
        PyMem_Free(self.cumulative)

    def __init__(self, servers=(), seed=None):
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        self.rng = <uint64_t>(seed & 0xFFFFFFFFFFFFFFFF)
        Core.__init__(self, servers)

    cdef int _rebuild(self) except -1:
        cdef int64_t *cumulative = <int64_t *>_alloc(self.n, sizeof(int64_t))
        cdef int64_t running = 0
        cdef Py_ssize_t i
        for i in range(self.n):
            running += self.weight[i]
            cumulative[i] = running
        PyMem_Free(self.cumulative)
        self.cumulative = cumulative
        return 0

    cdef inline Py_ssize_t _draw(self) noexcept:
        # Weighted draw: the first server whose cumulative weight exceeds r (binary search).
        cdef int64_t r = <int64_t>(splitmix64(&self.rng) % <uint64_t>self.total_weight)
        cdef Py_ssize_t lo = 0, hi = self.n - 1, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.cumulative[mid] > r:
                hi = mid
            else:
                lo = mid + 1
        return lo

    cdef Py_ssize_t _choose(self, uint64_t key, bint has_excluded) except -2:
        cdef Py_ssize_t a = -1, b = -1, i, draws
        if self.n == 1:
            return -1 if has_excluded else 0
        # A handful of draws finds two distinct allowed servers unless almost all are
        # excluded or one weight dwarfs the rest; then compare every allowed server.
        for draws in range(8):
            i = self._draw()
            if has_excluded and self._is_excluded(i):
                continue
            if a < 0:
                a = i
            elif i != a:
                b = i
                break
        if b < 0:
            # One weight dwarfs the rest or almost everything is excluded: compare the one
            # drawn server with the least loaded (ties keep the draw, so weights still rule).
            b = self._least_loaded(has_excluded)
            if a < 0 or b < 0:
                return b
        if self.active[b] * self.weight[a] < self.active[a] * self.weight[b]:
            return b
        return a


# --- request hash keys ------------------------------------------------------------------

KEY_URI, KEY_PATH, KEY_CLIENT_IP, KEY_HEADER, KEY_COOKIE = range(5)


cpdef bytes origin_form(bytes target):
    """Return the path and query of a request target in any form (RFC 9112 section 3.2)."""
    cdef const char *p = PyBytes_AS_STRING(target)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(target), i
    if n == 0 or p[0] == b'/' or (n == 1 and p[0] == b'*'):
        return target
    cdef const char *sep = <const char *>memchr(p, b':', n)
    if sep == NULL or sep == p or sep - p + 3 > n or sep[1] != b'/' or sep[2] != b'/':
        # authority-form (CONNECT) has no path: the authority itself is the resource.
        return target
    for i in range(sep - p):
        # RFC 3986 section 3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
        if not (b'a' <= (p[i] | 0x20) <= b'z' or (i > 0 and (b'0' <= p[i] <= b'9'
                                                          or p[i] in b'+-.'))):
            return target
    for i in range(sep - p + 3, n):
        if p[i] == b'/':
            return PyBytes_FromStringAndSize(p + i, n - i)
        if p[i] == b'?':
            # RFC 9110 section 4.2.3: an empty path is equivalent to "/".
            return b"/" + PyBytes_FromStringAndSize(p + i, n - i)
    return b"/"


cpdef object cookie_value(bytes header, bytes name):
    """Return the value of cookie `name` in a Cookie header value, or None (RFC 6265 5.4)."""
    cdef const char *p = PyBytes_AS_STRING(header)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(header), k = PyBytes_GET_SIZE(name)
    cdef Py_ssize_t start = 0, end, i
    cdef const char *key = PyBytes_AS_STRING(name)
    # RFC 6265 section 4.2.1: cookie-string = cookie-pair *( ";" SP cookie-pair ); be lenient
    # about the spaces, strict about the name (case-sensitive, whole name).
    while start < n:
        end = start
        while end < n and p[end] != b';':
            end += 1
        i = start
        while i < end and (p[i] == b' ' or p[i] == b'\t'):
            i += 1
        if end - i > k and p[i + k] == b'=' and memcmp(p + i, key, k) == 0:
            i += k + 1
            while i < end and (p[i] == b' ' or p[i] == b'\t'):
                i += 1
            while end > i and (p[end - 1] == b' ' or p[end - 1] == b'\t'):
                end -= 1
            return PyBytes_FromStringAndSize(p + i, end - i)
        start = end + 1
    return None


cdef class RequestKey:
    """Computes a request's 64-bit hash key; `key_of(request, client_ip)` is the hot call.

    `request` is duck-typed: `.target` (bytes) and `.get(lowercase_name) -> bytes | None`.
    A missing or empty header or cookie uses `fallback` (another RequestKey).
    """

    cdef readonly int kind
    cdef readonly bytes name
    cdef readonly RequestKey fallback

    def __init__(self, int kind, bytes name=b"", RequestKey fallback=None):
        if not KEY_URI <= kind <= KEY_COOKIE:
            raise ValueError(f"hash_key: unknown key kind {kind}")
        if kind in (KEY_HEADER, KEY_COOKIE) and (not name or fallback is None):
            raise ValueError("hash_key: header and cookie keys need a name and a fallback")
        self.kind = kind
        self.name = name.lower() if kind == KEY_HEADER else name
        self.fallback = fallback

    def key_of(self, request, client_ip):
        """Return the 64-bit xxh3 hash of this request's key."""
        return self._key(request, client_ip)

    cdef object _key(self, request, client_ip):
        cdef bytes target, value
        cdef const char *p
        cdef const char *q
        if self.kind == KEY_URI or self.kind == KEY_PATH:
            target = request.target
            if PyBytes_GET_SIZE(target) == 0 or PyBytes_AS_STRING(target)[0] != b'/':
                target = origin_form(target)
            if self.kind == KEY_PATH:
                p = PyBytes_AS_STRING(target)
                q = <const char *>memchr(p, b'?', PyBytes_GET_SIZE(target))
                if q != NULL:
                    target = PyBytes_FromStringAndSize(p, q - p)
            return _xxh3(target)
        if self.kind == KEY_CLIENT_IP:
            if isinstance(client_ip, bytes):
                return _xxh3(client_ip)
            return _xxh3(PyUnicode_AsUTF8String(client_ip))
        if self.kind == KEY_HEADER:
            found = request.get(self.name)
            if found:
                return _xxh3(found)
        else:
            found = request.get(b"cookie")
            if found:
                found = cookie_value(found, self.name)
                if found:
                    return _xxh3(found)
        return self.fallback._key(request, client_ip)
