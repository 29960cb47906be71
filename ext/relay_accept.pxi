# Included by ext/relay.pyx (one extension module: see the note there).
# The accept path of plain HTTP/1.1 listeners: Acceptor (accept4 in a batch), SockTransport
# (the client socket's transport) and Poller (one edge-triggered epoll set per worker, in
# relay_poller.pxi).
#
# Why: with a connection per request, uvloop's server spends per connection what the
# request itself does not need: getsockname, getpeername and TCP_NODELAY (three syscalls),
# a libuv stream handle and a TCPTransport object, an epoll registration queued through
# io_uring and removed again (EPOLL_CTL_DEL) before close, a call_soon for
# connection_made, and a loop turn between the accept and the first read even though
# TCP_DEFER_ACCEPT (listeners.defer_accept) means the request is already there. Here the
# peer address comes from accept4, the request is read at once, and the socket joins the
# epoll set only if it outlives that turn (one EPOLL_CTL_ADD, edge-triggered; close(2)
# removes it), as nginx does.
#
# SockTransport implements the asyncio transport calls the relay and its successors on a
# socket make (ClientConnection, H2Server after the preface, TunnelEnd after an Upgrade or
# CONNECT, listeners._Waiting at the connection limit): write, writelines, close, abort,
# is_closing, pause/resume_reading, is_reading, write_eof, can_write_eof, set_protocol,
# get_extra_info (peername, sockname), write buffer size and limits with
# pause_writing/resume_writing to the protocol. connection_lost comes on a later loop turn,
# as asyncio does it. TLS and TCP listeners keep uvloop's server (listeners.AcceptGate).
#
# The last response of a connection (the request said Connection: close, or HTTP/1.0):
# its write is held until the close that follows it in the same loop turn, then sent with
# MSG_MORE, so the FIN that close(2) queues leaves in the same segment as the response
# (tcp_send_fin sets FIN on the unsent tail). nginx sends the FIN as a segment of its
# own; with a connection per request that segment (its transmit, and the loopback
# receive processing charged to the sender) was a measurable share of the worker's
# kernel time. A held write that no close follows goes out at the end of the turn
# (Poller.end_turn), or before the next write: the order of bytes never changes.
#
# TCP_NODELAY: set before a socket's second write, or when a write has to wait. A response
# written in one send and followed by close (a connection per request) never meets Nagle
# (nothing is unacknowledged when it goes out, and close pushes the tail), so the syscall
# is saved there; everything else (keep-alive, a head and a body written apart, a large
# body) gets it before Nagle could hold a small segment back for the peer's delayed ACK.

cimport cython
from cpython.buffer cimport PyObject_CheckBuffer
from libc.string cimport memcpy, memset
from posix.unistd cimport close as _close_fd

import os as _os

DEF READ_SIZE = 262144      # as uvloop reads
DEF READS_PER_TURN = 16     # then the rest of the loop gets a turn
DEF IOV_BATCH = 64
DEF ACCEPT_BATCH = 64
DEF EVENT_BATCH = 256
DEF WRITE_HIGH = 65536      # asyncio's default write buffer limits
DEF ACCEPT_RETRY = 0.5      # after EMFILE and the like
# A connection whose request is complete and is its last (Connection: close, HTTP/1.0) has
# nothing more to read: its socket joins the epoll set only if it is still open this long
# after the request (a late client close is noticed that much later). With a connection
# per request the response usually comes first, and the EPOLL_CTL_ADD (~3% of a
# worker's CPU time then) and the set's bookkeeping are saved.
DEF REGISTER_DELAY = 0.005
DEF JOIN_MAX = 16384        # pieces up to this many bytes together are copied into one send
DEF HOLD_MAX = 65536        # a last response held for its FIN is copied: small ones only

cdef char _rbuf[READ_SIZE]
cdef char _wbuf[JOIN_MAX]


cdef ssize_t _sendv(int fd, iovec *iov, int cnt, Py_ssize_t total) noexcept nogil:
    """writev(fd, iov, cnt) through the socket calls: send(2) for one piece or for small
    pieces joined here (total: their size, -1 unknown), else sendmsg(2). A profile of the
    keep-alive relay showed writev's VFS layer (rw_verify_area, the security and fsnotify
    hooks, import_iovec) as ~3% of the worker's time; send goes straight to the socket, as
    HAProxy's writes do, and a head with a small body is cheaper copied than iterated."""
    cdef msghdr msg
    cdef Py_ssize_t off = 0
    cdef int i
    if cnt == 1:
        return send(fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL)
    if 0 <= total <= JOIN_MAX:
        for i in range(cnt):
            memcpy(_wbuf + off, iov[i].iov_base, iov[i].iov_len)
            off += iov[i].iov_len
        return send(fd, _wbuf, off, MSG_NOSIGNAL)
    memset(&msg, 0, sizeof(msg))
    msg.msg_iov = iov
    msg.msg_iovlen = cnt
    return sendmsg(fd, &msg, MSG_NOSIGNAL)


cdef object _oserror(int err):
    """The OSError subclass for err (ConnectionResetError, ...)."""
    return OSError(err, _os.strerror(err))


include "relay_poller.pxi"


cdef inline object _part(object data, Py_ssize_t off, Py_ssize_t n):
    """data[off:off + n] (n < 0: to its end) to keep in a write queue: data itself when it
    is all of it, else a view (the queue copies a bytearray)."""
    if type(data) is bytearray:
        return bytes(data[off:] if n < 0 else data[off:off + n])   # the caller may reuse it
    if off == 0 and (n < 0 or n == len(data)):
        return data
    mv = memoryview(data).cast("B")
    return mv[off:] if n < 0 else mv[off:off + n]


cdef inline int _body_view(object body, Py_buffer* view) except -1:
    """A read-only view of body's bytes; 1 when it is a buffer export to release. For a
    bytes object (the relay's common case, a read from the upstream) its own storage:
    the export and its release were about 150 instructions per response."""
    if type(body) is bytes:
        view.buf = PyBytes_AS_STRING(body)
        view.len = PyBytes_GET_SIZE(body)
        return 0
    PyObject_GetBuffer(body, view, PyBUF_SIMPLE)
    return 1


@cython.freelist(64)
cdef class SockTransport:
    """An accepted client socket's transport (see the note at the top of this file)."""

    cdef public int fd
    cdef object protocol, loop, peer, sockname
    # The protocol when it is the relay's ClientConnection: its calls then go straight to
    # the compiled methods, not through attribute lookups and Python calls.
    cdef ClientConnection cc
    # ... and when it is an UpstreamConnection (an upstream socket, relay_dial.pxi).
    cdef UpstreamConnection uc
    cdef object connecting    # an upstream socket's connect: the future its dial awaits
    cdef str ip               # the peer's address as text, bytes and port (_peer)
    cdef bytes ip_b
    cdef int port
    cdef object lost_exc      # for connection_lost (Poller.bury)
    cdef Poller poller
    cdef list wbuf            # pending output: bytes, memoryviews (a pinned cache view)
    cdef bytes held           # a last response's write, held for the close (note at the top)
    cdef Py_ssize_t woff      # bytes of wbuf[0] already sent
    cdef Py_ssize_t wsize, high, low
    cdef bint registered      # in the poller's epoll set
    cdef bint out             # ... with EPOLLOUT
    cdef bint closing         # close()/abort() called, or a fatal error
    cdef bint read_paused
    cdef bint readable        # the kernel may hold unread bytes (edge-triggered: our flag)
    cdef bint hup             # the peer shut down its side (EPOLLRDHUP): read to the EOF
    cdef bint eof             # recv returned 0
    cdef bint eof_out         # write_eof() asked: shutdown(SHUT_WR) once wbuf is empty
    cdef bint write_paused    # the protocol was told pause_writing
    cdef bint wrote           # a send happened (the next one sets TCP_NODELAY first)
    cdef bint nodelay
    cdef sockaddr_storage addr

    cdef void setup(self, int fd, sockaddr_storage *addr, socklen_t alen, Poller poller):
        self.fd = fd
        self.poller = poller
        self.loop = poller.loop
        self.wbuf = []
        self.held = None
        self.woff = 0
        self.wsize = 0
        self.high = WRITE_HIGH
        self.low = WRITE_HIGH // 4
        self.registered = False
        self.out = False
        self.closing = False
        self.read_paused = False
        self.readable = True      # deferred accept: the request is normally there
        self.hup = False
        self.eof = False
        self.eof_out = False
        self.write_paused = False
        self.wrote = False
        self.nodelay = False
        self.peer = None
        self.sockname = None
        self.lost_exc = None
        self.cc = None
        self.uc = None
        self.connecting = None
        self.ip = None
        self.ip_b = None
        self.port = 0
        if alen > sizeof(sockaddr_storage):
            alen = sizeof(sockaddr_storage)
        memcpy(&self.addr, addr, alen)

    cdef int start(self, protocol) except -1:
        """connection_made, the first read, then the epoll set if the socket stays open."""
        cdef ClientConnection cc
        self.protocol = protocol
        try:
            if type(protocol) is ClientConnection:
                cc = <ClientConnection>protocol
                self.cc = cc
                self._peer()
                cc.made(self, self.ip, self.ip_b, self.port)
            else:
                protocol.connection_made(self)
            if not self.read_paused:
                self._read()
            if self.fd >= 0 and not self.registered:
                cc = self.cc
                if cc is not None and cc.state == S_WAIT and not cc.keep_alive:
                    self.poller.later(self)
                else:
                    self.poller.add(self, False)
        except Exception as exc:
            self._protocol_error(exc)
        return 0

    cdef int _peer(self) except -1:
        """ip, ip_b and port from the address accept4 gave."""
        global _last_ip4, _last_ip4_text, _last_ip4_bytes
        cdef char text[64]
        cdef sockaddr_in *a4
        cdef sockaddr_in6 *a6
        cdef unsigned int raw
        cdef Py_ssize_t n
        if self.addr.ss_family == AF_INET:
            a4 = <sockaddr_in*>&self.addr
            self.port = ntohs(a4.sin_port)
            memcpy(&raw, &a4.sin_addr, 4)
            if _last_ip4_text is None or raw != _last_ip4:
                n = _format_ip4(<const unsigned char*>&a4.sin_addr, text)
                _last_ip4_bytes = PyBytes_FromStringAndSize(text, n)
                _last_ip4_text = text[:n].decode("ascii")
                _last_ip4 = raw
            self.ip = _last_ip4_text
            self.ip_b = _last_ip4_bytes
        elif self.addr.ss_family == AF_INET6:
            a6 = <sockaddr_in6*>&self.addr
            self.port = ntohs(a6.sin6_port)
            inet_ntop(AF_INET6, &a6.sin6_addr, text, sizeof(text))
            self.ip_b = text
            self.ip = self.ip_b.decode("ascii")
        else:
            self.ip = "-"
            self.ip_b = b"-"
            self.port = 0
        return 0

    # -- events -------------------------------------------------------------------

    cdef void on_events(self, unsigned int ev):
        if ev & EPOLLRDHUP:
            self.hup = True
        if ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            self.readable = True
        if self.protocol is None:
            # An upstream socket still connecting, or connected and not yet handed to its
            # protocol (the flags above keep what came meanwhile: relay_dial.pxi).
            if self.connecting is not None and ev & (EPOLLOUT | EPOLLERR | EPOLLHUP):
                try:
                    _dial_done(self)
                except Exception as exc:
                    self._report(exc, "upstream connect failed")
                    self._force_close(exc)
            return
        try:
            if self.readable and not self.read_paused and not self.closing and not self.eof:
                self._read()
            if self.fd >= 0 and self.wsize and ev & (EPOLLOUT | EPOLLERR | EPOLLHUP):
                self._flush()
        except Exception as exc:
            self._protocol_error(exc)

    cdef int _read(self) except -1:
        cdef ssize_t n
        cdef int err, turns = 0
        while self.fd >= 0 and not self.read_paused and not self.closing and not self.eof:
            if turns == READS_PER_TURN:
                self.loop.call_soon(self._resume_read)
                return 0
            turns += 1
            n = recv(self.fd, _rbuf, READ_SIZE, 0)
            if n > 0:
                if n < READ_SIZE and not self.hup:
                    # Drained (edge-triggered: new bytes bring a new event).
                    self.readable = False
                if self.cc is not None:
                    self.cc.data_received(PyBytes_FromStringAndSize(_rbuf, n))
                elif self.uc is not None:
                    self.uc.data_received(PyBytes_FromStringAndSize(_rbuf, n))
                else:
                    self.protocol.data_received(PyBytes_FromStringAndSize(_rbuf, n))
                if not self.readable:
                    return 0
            elif n == 0:
                self.readable = False
                self.eof = True
                if not (self.cc.eof_received() if self.cc is not None
                        else self.uc.eof_received() if self.uc is not None
                        else self.protocol.eof_received()):
                    self.close()
                return 0
            else:
                err = errno
                if err == EINTR:
                    continue
                if err == EAGAIN:
                    self.readable = False
                    return 0
                self._force_close(_oserror(err))
                return 0
        return 0

    def _resume_read(self):
        if self.readable and not self.read_paused and not self.closing and not self.eof \
                and self.fd >= 0:
            try:
                self._read()
            except Exception as exc:
                self._protocol_error(exc)

    # -- writing ------------------------------------------------------------------

    cdef inline void _before_send(self):
        if self.wrote and not self.nodelay:
            self._set_nodelay()
        self.wrote = True

    cdef void _set_nodelay(self):
        cdef int one = 1
        self.nodelay = True
        setsockopt(self.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))

    def write(self, data):
        """Send data now as far as the socket takes it; queue the rest."""
        if self.closing or self.eof_out or self.fd < 0:
            return
        if not PyObject_CheckBuffer(data):
            raise TypeError(f"data must be a bytes-like object, not {type(data).__name__}")
        if self.held is not None:
            self._release()
        elif not self.wsize and type(data) is bytes and self.cc is not None \
                and not self.cc.keep_alive:
            # The connection's last response: the close normally follows in this turn.
            self.held = data
            self.poller.hold(self)
            return
        self._write(data, MSG_NOSIGNAL)

    cdef int _release(self) except -1:
        """Send the held write (no close came for it in time)."""
        data = self.held
        self.held = None
        if self.fd >= 0:
            self._write(data, MSG_NOSIGNAL)
        return 0

    cdef int _write(self, data, int flags) except -1:
        cdef Py_buffer view
        cdef Py_ssize_t n, done = 0
        cdef int err, exported
        if self.wsize:
            self._queue(data, 0)
            return 0
        exported = _body_view(data, &view)
        try:
            if view.len == 0:
                return 0
            self._before_send()
            while done < view.len:
                n = send(self.fd, <char*>view.buf + done, view.len - done, flags)
                if n >= 0:
                    done += n
                    continue
                err = errno
                if err == EINTR:
                    continue
                if err == EAGAIN:
                    break
                self._force_close(_oserror(err))
                return 0
            if done == view.len:
                return 0
        finally:
            if exported:
                PyBuffer_Release(&view)
        self._queue(data, done)
        return 0

    def writelines(self, list_of_data):
        """write() for several pieces: one writev."""
        if self.closing or self.eof_out or self.fd < 0:
            return
        if self.held is not None:
            self._release()
        was = self.wsize
        for data in list_of_data:
            if not PyObject_CheckBuffer(data):
                raise TypeError(f"data must be a bytes-like object, not {type(data).__name__}")
            self._append(data)
        if not was and self.wsize:
            self._flush()
        else:
            self._check_high()

    cdef int send_parts(self, object head, object body, Py_ssize_t off, Py_ssize_t n) \
            except -1:
        """head (bytes or None) then body[off:off + n] (n < 0: to its end) in one writev,
        from C: the relay's response path writes a response head with the body bytes it
        read (or a cache hit's view of the arena) without joining them into a new bytes
        object. What the socket does not take is queued as write() queues it (bytes are
        kept as views, a bytearray is copied)."""
        cdef iovec iov[2]
        cdef Py_buffer view
        cdef Py_ssize_t hlen = 0, total
        cdef ssize_t r
        cdef int cnt = 0, err = 0, exported
        cdef char* dst
        if self.closing or self.eof_out or self.fd < 0:
            return 0
        if self.held is not None:
            self._release()      # the order of bytes never changes
        elif not self.wsize and self.cc is not None and not self.cc.keep_alive:
            # The connection's last response, as in write(): held so that its FIN leaves
            # in the same segment (the note at the top). Copied from the buffers into one
            # new bytes object: a memoryview, its cast and slice and a join were ~2,400
            # instructions of a connection per request.
            exported = _body_view(body, &view)
            try:
                if n < 0 or n > view.len - off:
                    n = view.len - off
                hlen = PyBytes_GET_SIZE(head) if head is not None else 0
                if hlen + n <= HOLD_MAX:
                    held = PyBytes_FromStringAndSize(NULL, hlen + n)
                    dst = PyBytes_AS_STRING(held)
                    if hlen:
                        memcpy(dst, PyBytes_AS_STRING(head), hlen)
                    memcpy(dst + hlen, <char*>view.buf + off, n)
                    self.held = <bytes>held
                    self.poller.hold(self)
                    return 0
                hlen = 0
            finally:
                if exported:
                    PyBuffer_Release(&view)
        if self.wsize:
            if head is not None:
                self._queue(head, 0)
            self._queue(_part(body, off, n), 0)
            return 0
        exported = _body_view(body, &view)
        try:
            if n < 0:
                n = view.len - off
            if head is not None:
                hlen = PyBytes_GET_SIZE(head)
                iov[0].iov_base = PyBytes_AS_STRING(head)
                iov[0].iov_len = hlen
                cnt = 1
            iov[cnt].iov_base = <char*>view.buf + off
            iov[cnt].iov_len = n
            cnt += 1
            total = hlen + n
            if total == 0:
                return 0
            self._before_send()
            while True:
                r = _sendv(self.fd, iov, cnt, total)
                if r >= 0:
                    break
                err = errno
                if err != EINTR:
                    break
        finally:
            if exported:
                PyBuffer_Release(&view)
        if r == total:
            return 0
        if r < 0:
            if err != EAGAIN:
                self._force_close(_oserror(err))
                return 0
            r = 0
        if r < hlen:
            self._queue(head, r)
            self._queue(_part(body, off, n), 0)
        else:
            self._queue(_part(body, off + r - hlen, n - (r - hlen)), 0)
        return 0

    cdef void _append(self, data):
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data) if type(data) is bytes \
            else memoryview(data).nbytes
        if size == 0:
            return
        if type(data) is bytearray:
            data = bytes(data)      # the caller may reuse its buffer
        elif type(data) is memoryview and (<object>data).itemsize != 1:
            data = (<object>data).cast("B")
        self.wbuf.append(data)
        self.wsize += size

    cdef int _queue(self, data, Py_ssize_t sent) except -1:
        """Keep data[sent:] for later and make sure an EPOLLOUT will come for it."""
        if type(data) is bytearray:
            data = bytes(data)      # the caller may reuse its buffer
        if sent:
            data = memoryview(data).cast("B")[sent:]
        if not self.nodelay:
            self._set_nodelay()
        self._append(data)
        if not self.out and self.fd >= 0:
            self.poller.add(self, True)
        self._check_high()
        return 0

    cdef int _flush(self) except -1:
        """Write what is queued (writev, IOV_BATCH pieces at a time) until EAGAIN."""
        cdef iovec iov[IOV_BATCH]
        cdef Py_buffer views[IOV_BATCH]
        cdef int count, i, err
        cdef Py_ssize_t n, left
        cdef list wbuf = self.wbuf
        while wbuf and self.fd >= 0:
            count = 0
            try:
                while count < IOV_BATCH and count < len(wbuf):
                    PyObject_GetBuffer(wbuf[count], &views[count], PyBUF_SIMPLE)
                    iov[count].iov_base = views[count].buf
                    iov[count].iov_len = views[count].len
                    count += 1
                iov[0].iov_base = <char*>iov[0].iov_base + self.woff
                iov[0].iov_len -= self.woff
                self._before_send()
                n = _sendv(self.fd, iov, count, -1)
                err = errno
            finally:
                for i in range(count):
                    PyBuffer_Release(&views[i])
            if n < 0:
                if err == EINTR:
                    continue
                if err == EAGAIN:
                    break
                self._force_close(_oserror(err))
                return 0
            self.wsize -= n
            i = 0
            left = n
            while i < count and left >= <Py_ssize_t>iov[i].iov_len:
                left -= iov[i].iov_len
                i += 1
            if i:
                del wbuf[:i]
                self.woff = 0
            self.woff += left
        if self.fd < 0:
            return 0
        if not wbuf:
            if self.closing:
                self._close_now(None)
                return 0
            if self.eof_out:
                shutdown(self.fd, SHUT_WR)
        elif not self.out:
            if not self.nodelay:
                self._set_nodelay()
            self.poller.add(self, True)
        self._check_low()
        self._check_high()
        return 0

    cdef void _check_high(self) except *:
        if not self.write_paused and self.wsize > self.high and self.protocol is not None:
            self.write_paused = True
            try:
                self.protocol.pause_writing()
            except Exception as exc:
                self._report(exc, "protocol.pause_writing() failed")

    cdef void _check_low(self) except *:
        if self.write_paused and self.wsize <= self.low and self.protocol is not None:
            self.write_paused = False
            try:
                self.protocol.resume_writing()
            except Exception as exc:
                self._report(exc, "protocol.resume_writing() failed")

    def get_write_buffer_size(self):
        """Bytes queued, not yet taken by the socket."""
        return self.wsize + (len(self.held) if self.held is not None else 0)

    def get_write_buffer_limits(self):
        """(low, high) water marks."""
        return (self.low, self.high)

    def set_write_buffer_limits(self, high=None, low=None):
        """The water marks for pause_writing/resume_writing (asyncio's defaults and rules)."""
        if high is None:
            high = 4 * low if low is not None else WRITE_HIGH
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self.high = high
        self.low = low
        self._check_high()

    def can_write_eof(self):
        """A TCP socket can half-close."""
        return True

    def write_eof(self):
        """Shut the sending side down once the queued bytes are out."""
        if self.closing or self.eof_out:
            return
        if self.held is not None:
            self._release()
        self.eof_out = True
        if not self.wsize and self.fd >= 0:
            shutdown(self.fd, SHUT_WR)

    # -- reading control ------------------------------------------------------------

    def pause_reading(self):
        """Stop calling data_received until resume_reading."""
        if not self.closing:
            self.read_paused = True

    def resume_reading(self):
        """Read again: what arrived meanwhile comes on the next loop turn."""
        if self.read_paused:
            self.read_paused = False
            if self.readable and not self.closing and not self.eof and self.fd >= 0:
                self.loop.call_soon(self._resume_read)

    def is_reading(self):
        """True while data_received may be called."""
        return not self.read_paused and not self.closing

    # -- closing ------------------------------------------------------------------

    def is_closing(self):
        """True once close()/abort() was called or the connection failed."""
        return self.closing

    cpdef close(self):
        """Close once the queued bytes are out; connection_lost(None) follows."""
        if self.closing:
            return
        self.closing = True
        if self.held is not None:
            data = self.held
            self.held = None
            if self.fd >= 0:
                # Corked: the FIN of the close below leaves in the same segment.
                self._write(data, MSG_NOSIGNAL | MSG_MORE)
        if not self.wsize:
            self._close_now(None)

    def abort(self):
        """Close now, dropping what is queued; connection_lost(None) follows."""
        self._force_close(None)

    cdef void _force_close(self, exc) except *:
        self.closing = True
        self.held = None
        self.wbuf = []
        self.wsize = 0
        self.woff = 0
        self._close_now(exc)

    cdef void _close_now(self, exc) except *:
        cdef int fd = self.fd
        if fd < 0:
            return
        self.fd = -1
        if self.registered:
            self.poller.forget(fd, self)
        _close_fd(fd)
        self.poller.bury(self, exc)

    cdef void _lost(self) except *:
        exc = self.lost_exc
        self.lost_exc = None
        protocol = self.protocol
        cc = self.cc
        uc = self.uc
        self.protocol = None      # no cycle through the protocol's `transport`
        self.cc = None
        self.uc = None
        if protocol is not None:
            try:
                if cc is not None:
                    cc.connection_lost(exc)
                elif uc is not None:
                    (<UpstreamConnection>uc).connection_lost(exc)
                else:
                    protocol.connection_lost(exc)
            except Exception as err:
                self._report(err, "protocol.connection_lost() failed")

    cdef void _protocol_error(self, exc) except *:
        self._report(exc, "Fatal error: protocol.data_received() call failed.")
        self._force_close(exc)

    cdef void _report(self, exc, str message) except *:
        self.loop.call_exception_handler({"message": message, "exception": exc,
                                          "transport": self, "protocol": self.protocol})

    # -- the rest of the transport interface ---------------------------------------

    def set_protocol(self, protocol):
        """Hand the socket's events to another protocol (HTTP/2, a tunnel, ...)."""
        self.protocol = protocol
        self.cc = protocol if type(protocol) is ClientConnection else None
        self.uc = protocol if type(protocol) is UpstreamConnection else None

    def get_protocol(self):
        """The protocol the events go to."""
        return self.protocol

    def get_extra_info(self, name, default=None):
        """peername (from accept4) and sockname (asked once, on demand)."""
        if name == "peername":
            if self.peer is None:
                if self.addr.ss_family == AF_INET:
                    if self.ip is None:
                        self._peer()
                    self.peer = (self.ip, self.port)
                else:
                    self.peer = _addr_tuple(&self.addr)
            return self.peer
        if name == "sockname":
            if self.sockname is None and self.fd >= 0:
                self.sockname = self._sockname()
            return self.sockname if self.sockname is not None else default
        return default

    cdef object _sockname(self):
        cdef sockaddr_storage ss
        cdef socklen_t alen = sizeof(ss)
        if getsockname(self.fd, <sockaddr*>&ss, &alen) < 0:
            return None
        return _addr_tuple(&ss)


include "relay_acceptor.pxi"
