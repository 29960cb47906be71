# Included by ext/relay_accept.pxi (one extension module: see ext/relay.pyx): the peer
# address as text (without sprintf, reused for the same IPv4 client) and Poller, the
# worker's edge-triggered epoll set for accepted sockets, with its per-turn lists
# (connection_lost due, last writes held for their close, registrations put off).

# The last IPv4 peer's text, as str and bytes: the clients of one proxy are few addresses
# (a load balancer, a NAT, a test client) opening many connections, so most accepts reuse
# both objects instead of formatting and allocating them again.
cdef unsigned int _last_ip4 = 0
cdef str _last_ip4_text = None
cdef bytes _last_ip4_bytes = None


cdef Py_ssize_t _format_ip4(const unsigned char *a, char *out) noexcept:
    """Dotted-quad text of the 4 bytes at a into out (15 bytes at most): inet_ntop does
    it through sprintf, which was ~1,700 instructions of a ~31k-instruction connection."""
    cdef Py_ssize_t n = 0
    cdef int i, v
    for i in range(4):
        v = a[i]
        if v >= 100:
            out[n] = <char>(48 + v // 100)
            n += 1
            v %= 100
            out[n] = <char>(48 + v // 10)
            n += 1
        elif v >= 10:
            out[n] = <char>(48 + v // 10)
            n += 1
        out[n] = <char>(48 + v % 10)
        n += 1
        if i < 3:
            out[n] = 46     # '.'
            n += 1
    return n


cdef object _addr_tuple(sockaddr_storage *ss):
    """A socket address as Python's socket module gives it: (host, port[, flow, scope])."""
    cdef char text[64]
    cdef sockaddr_in *a4
    cdef sockaddr_in6 *a6
    if ss.ss_family == AF_INET:
        a4 = <sockaddr_in*>ss
        return (text[:_format_ip4(<const unsigned char*>&a4.sin_addr, text)].decode("ascii"),
                ntohs(a4.sin_port))
    if ss.ss_family == AF_INET6:
        a6 = <sockaddr_in6*>ss
        inet_ntop(AF_INET6, &a6.sin6_addr, text, sizeof(text))
        return (text.decode("ascii"), ntohs(a6.sin6_port), ntohl(a6.sin6_flowinfo),
                a6.sin6_scope_id)
    return None


cdef class Poller:
    """One edge-triggered epoll set for a worker's accepted sockets, itself polled by the
    loop (add_reader on the epoll fd): one registration per socket that has to wait
    (EPOLLIN|EPOLLRDHUP|EPOLLET), EPOLLOUT added the first time a write has to wait (and
    kept: edge-triggered, it reports only when a full send buffer drains), removal by
    close(2). Not EPOLLOUT from the start: a fresh socket is writable, so it would wake
    the loop once per connection for nothing."""

    cdef int epfd
    cdef dict conns         # fd -> SockTransport, for the sockets in the set
    cdef public object loop
    # Closed transports whose connection_lost is due, and transports holding a last write:
    # one call_soon per loop turn for all of them (`end_turn`), not a Handle per connection
    # nor one for each list (with a connection per request both fill in every turn).
    cdef list dead
    cdef bint soon
    cdef list later_list    # transports to add at the next register_later (REGISTER_DELAY)
    cdef bint later_set
    cdef list held_list     # transports holding a last write (see the note at the top)

    def __init__(self, loop):
        self.loop = loop
        self.conns = {}
        self.dead = []
        self.soon = False
        self.later_list = []
        self.later_set = False
        self.held_list = []
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise _oserror(errno)
        loop.add_reader(self.epfd, self.ready)

    cdef int add(self, SockTransport t, bint out) except -1:
        """Put t's socket in the set (out: EPOLLOUT too), or add EPOLLOUT to it."""
        cdef epoll_event ev
        ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET
        if out:
            ev.events |= EPOLLOUT
        ev.data.u64 = 0
        ev.data.fd = t.fd
        if epoll_ctl(self.epfd, EPOLL_CTL_MOD if t.registered else EPOLL_CTL_ADD, t.fd,
                     &ev) < 0:
            raise _oserror(errno)
        if not t.registered:
            self.conns[t.fd] = t
            t.registered = True
        t.out = out
        return 0

    cdef void later(self, SockTransport t) except *:
        """Add t's socket to the set after REGISTER_DELAY if it is still open then."""
        self.later_list.append(t)
        if not self.later_set:
            self.later_set = True
            self.loop.call_later(REGISTER_DELAY, self.register_later)

    def register_later(self):
        """Add the sockets put off by `later` that are still open (see REGISTER_DELAY)."""
        cdef SockTransport t
        todo = self.later_list
        self.later_list = []
        self.later_set = False
        for t in todo:
            if t.fd >= 0 and not t.registered and self.epfd >= 0:
                try:
                    self.add(t, False)
                except Exception as exc:
                    t._report(exc, "epoll_ctl failed")
                    t._force_close(exc)

    cdef void hold(self, SockTransport t) except *:
        """t holds a last write: send it at the end of this turn if no close took it."""
        self.held_list.append(t)
        self._soon()

    cdef inline void _soon(self) except *:
        if not self.soon:
            self.soon = True
            self.loop.call_soon(self.end_turn)

    def end_turn(self):
        """After this loop turn's events: release_held, then bury_all."""
        self.soon = False
        if self.held_list:
            self.release_held()
        if self.dead:
            self.bury_all()

    cdef void release_held(self) except *:
        """Send the held writes no close took (their responses go on, or wait for more)."""
        cdef SockTransport t
        todo = self.held_list
        self.held_list = []
        for t in todo:
            if t.held is not None:
                try:
                    t._release()
                except Exception as exc:
                    t._protocol_error(exc)

    cdef void forget(self, int fd, SockTransport t):
        if self.conns.get(fd) is t:
            del self.conns[fd]

    cdef void bury(self, SockTransport t, exc) except *:
        self.dead.append(t)
        t.lost_exc = exc
        self._soon()

    cdef void bury_all(self) except *:
        """connection_lost for the transports closed since the last turn."""
        cdef SockTransport t
        dead = self.dead
        self.dead = []
        for t in dead:
            t._lost()

    def ready(self):
        """The epoll fd is readable: run the sockets' events (a batch per loop turn)."""
        cdef epoll_event evs[EVENT_BATCH]
        cdef int n, i
        if self.epfd < 0:
            return
        n = epoll_wait(self.epfd, evs, EVENT_BATCH, 0)
        if n <= 0:
            return
        _batch_start()
        try:
            for i in range(n):
                # A socket closed earlier in this batch is gone from conns; its fd number
                # may only come back through accept, which does not run inside this loop.
                t = self.conns.get(evs[i].data.fd)
                if t is not None:
                    (<SockTransport>t).on_events(evs[i].events)
        finally:
            _batch_end()

    def open_count(self):
        """Sockets in the epoll set (for tests and the admin)."""
        return len(self.conns)

    def close(self):
        """Stop polling and close the epoll fd (the worker is done)."""
        if self.epfd >= 0:
            self.loop.remove_reader(self.epfd)
            _close_fd(self.epfd)
            self.epfd = -1
