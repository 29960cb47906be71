# Included by ext/relay.pyx (one extension module: see the note there).
# Plain-TCP upstream connections (no TLS, no opener, a numeric connect address) as
# SockTransports in the worker's Poller, beside the accepted client sockets.
#
# Why: on the keep-alive relay the upstream side is half of the system calls of a request
# (the request's write, the response's read). Through uvloop each read is libuv's read(2)
# into a buffer, a bytes object and a Python call of data_received through the protocol
# interface; each write a Python call of transport.write; and each socket is a second epoll
# registration level next to our Poller's. Here the same socket is a SockTransport: recv and
# send called from C, data_received/connection_lost/eof_received as C calls into
# UpstreamConnection (its `uc`), its events in the same epoll set as the client sockets (one
# epoll_wait per loop turn serves both sides). TLS upstreams, h2 (the pool's opener) and
# named hosts keep uvloop's create_connection; FASTPROXY_UVLOOP_UPSTREAM=1 makes every pool
# use it (the differential tests compare the two).
#
# The transport is the accept path's: the same write queue, back-pressure (pause_writing to
# UpstreamConnection above the high-water mark), pause/resume_reading, half-close reading to
# the EOF, connection_lost on a later loop turn. What differs is the connect: a non-blocking
# connect(2) registered with EPOLLOUT; its completion (SO_ERROR) resolves the future _dial
# awaits, so a connect timeout (the task cancelled) and a refused connect (OSError with the
# errno's text, as uvloop raises it) reach UpstreamConnection._open as before.



cdef Poller _poller = None


cpdef Poller loop_poller(loop):
    """The worker's epoll set for loop (made at first use): the accept path's sockets and the
    upstream sockets dialled here share it, so one epoll_wait per loop turn serves both."""
    global _poller
    if _poller is None or _poller.loop is not loop or _poller.epfd < 0:
        _poller = Poller(loop)
    return _poller


cdef bint _dial_address(str host, int port, sockaddr_storage *ss, socklen_t *alen) except -1:
    """Fill ss with host:port when host is a numeric IPv4 or IPv6 address; False otherwise
    (a name is resolved by uvloop's create_connection, which tries each address)."""
    cdef sockaddr_in *a4 = <sockaddr_in*>ss
    cdef sockaddr_in6 *a6 = <sockaddr_in6*>ss
    memset(ss, 0, sizeof(sockaddr_storage))
    if not host or not host.isascii():
        return False
    b = host.encode("ascii")
    if inet_pton(AF_INET, b, &a4.sin_addr) == 1:
        a4.sin_family = AF_INET
        a4.sin_port = htons(port)
        alen[0] = sizeof(sockaddr_in)
        return True
    if inet_pton(AF_INET6, b, &a6.sin6_addr) == 1:
        a6.sin6_family = AF_INET6
        a6.sin6_port = htons(port)
        alen[0] = sizeof(sockaddr_in6)
        return True
    return False


cdef SockTransport _start_dial(ConnectionPool pool):
    """A socket connecting to pool's server, in the worker's Poller; its `connecting` is the
    future of the connect's completion (None: connected at once)."""
    cdef Poller poller = loop_poller(pool.loop)
    cdef SockTransport t
    cdef int fd, r, err
    fd = socket(pool.dial_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        raise _oserror(errno)
    t = SockTransport.__new__(SockTransport)
    t.setup(fd, &pool.dial_addr, pool.dial_len, poller)
    t.readable = False      # nothing to read before the server has said something
    r = connect(fd, <sockaddr*>&pool.dial_addr, pool.dial_len)
    err = 0 if r == 0 else errno
    # EINTR: the connect goes on in the background, as after EINPROGRESS.
    if err != 0 and err != EINPROGRESS and err != EINTR:
        t.fd = -1
        _close_fd(fd)
        raise _oserror(err)
    try:
        poller.add(t, err != 0)     # EPOLLOUT reports the connect's completion
    except BaseException:
        t.fd = -1
        _close_fd(fd)
        raise
    if err:
        t.connecting = pool.loop.create_future()
    return t


cdef void _dial_done(SockTransport t) except *:
    """The connect completed (EPOLLOUT, or an error): resolve the future _dial awaits."""
    cdef int err = 0
    cdef socklen_t size = sizeof(err)
    fut = t.connecting
    t.connecting = None
    if getsockopt(t.fd, SOL_SOCKET, SO_ERROR, &err, &size) < 0:
        err = errno
    if err:
        t._force_close(None)    # no protocol yet: nothing is told but the future
        if not fut.done():
            fut.set_exception(_oserror(err))
    elif not fut.done():
        fut.set_result(None)


async def _dial(UpstreamConnection up, ConnectionPool pool):
    """Connect up to pool's server through a SockTransport (see the note at the top)."""
    cdef SockTransport t = _start_dial(pool)
    if t.connecting is not None:
        try:
            await t.connecting
        except BaseException:   # refused, or cancelled (connect timeout, client gone)
            t.connecting = None
            t._force_close(None)
            raise
    t.protocol = up
    t.uc = up
    try:
        up.connection_made(t)
        if t.readable and not t.read_paused and not t.closing and t.fd >= 0:
            t._read()       # edge-triggered: what came before the protocol has no new event
    except Exception as exc:
        t._protocol_error(exc)
