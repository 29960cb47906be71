# Included by ext/relay_accept.pxi (one extension module: see ext/relay.pyx): Acceptor,
# the accept loop of a plain HTTP/1.1 listener's socket (accept4 in a batch), each accepted
# socket a SockTransport (relay_accept.pxi) in the worker's Poller (relay_poller.pxi).


cdef class Acceptor:
    """Accepts on one listening socket of a plain HTTP/1.1 listener (the GatedAccepting's
    gate and runtime holder): accept4 until EAGAIN or the gate says stop, each connection
    a SockTransport and a ClientConnection (or the gate's waiting protocol)."""

    cdef object sock, loop, retry
    cdef Admission adm
    cdef Accepting make
    cdef object holder
    cdef Poller poller
    cdef int fd
    cdef bint active, polling

    def __init__(self, sock, GatedAccepting factory, Poller poller):
        self.sock = sock
        self.fd = sock.fileno()
        self.adm = factory.adm
        self.make = factory.make
        self.holder = factory.holder
        self.poller = poller
        self.loop = poller.loop
        self.retry = None
        self.active = False
        self.polling = False

    def start(self):
        """Start accepting; returns self (what AcceptGate keeps as the listener's server)."""
        self.active = True
        self._poll()
        return self

    cdef void _poll(self) except *:
        if not self.polling:
            self.loop.add_reader(self.fd, self.ready)
            self.polling = True

    def close(self):
        """Stop accepting (the socket stays open: its backlog waits)."""
        self.active = False
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        if self.polling:
            self.polling = False
            self.loop.remove_reader(self.fd)

    def _again(self):
        self.retry = None
        if self.active:
            self._poll()

    def ready(self):
        """The listening socket is readable: accept what is pending."""
        _batch_start()
        try:
            self._accept_batch()
        finally:
            _batch_end()

    cdef void _accept_batch(self) except *:
        cdef sockaddr_storage addr
        cdef socklen_t alen
        cdef int cfd, err, i
        cdef Admission adm = self.adm
        cdef SockTransport t
        for i in range(ACCEPT_BATCH):
            if not self.active:
                return
            alen = sizeof(addr)
            cfd = accept4(self.fd, <sockaddr*>&addr, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if cfd < 0:
                err = errno
                if err == EAGAIN:
                    return
                if err == EINTR or err == ECONNABORTED or err == EPROTO or err == EPERM:
                    continue
                # Out of descriptors or memory: a level-triggered reader would spin on
                # the pending connection. Stop polling for a moment (asyncio does so too).
                if self.polling:
                    self.polling = False
                    self.loop.remove_reader(self.fd)
                self.retry = self.loop.call_later(ACCEPT_RETRY, self._again)
                self.loop.call_exception_handler({
                    "message": f"accept failed ({_os.strerror(err)}); accepting again in "
                               f"{ACCEPT_RETRY:g}s", "exception": _oserror(err)})
                return
            t = SockTransport.__new__(SockTransport)
            t.setup(cfd, &addr, alen, self.poller)
            try:
                held = adm.admit(self.make)
                if held is None:
                    proto = ClientConnection.__new__(ClientConnection)
                    (<ClientConnection>proto)._init(self.holder.current)
                else:
                    proto = held
            except Exception as exc:
                t._force_close(exc)     # the socket is not left open behind a failure
                self.loop.call_exception_handler({"message": "accept: no protocol",
                                                  "exception": exc})
                continue
            t.start(proto)
            if held is None and adm.pending > 0:
                # In the connection set now (connection_made ran): not pending any more.
                adm.pending -= 1
            if adm.alert:
                return      # at the limit: the gate decides what happens next
