# Included by ext/relay.pyx (one extension module: see the note there).
# Cache hits written to the client's socket with one writev from C: on the compiled accept
# path through SockTransport.send_parts (relay_accept.pxi), on uvloop's TCP transport here.
#
# Why: a fresh hit is already one or two buffers (hitpath.pyx: the whole answer, or the
# head and a pinned view of the arena). Through uvloop, writelines wraps the view in a
# new memoryview, builds a write context (a Python object, a buffer export per piece)
# and frees it again: per-hit work on the path whose kernel part cannot shrink. When the
# transport holds nothing (so nothing written here can overtake queued bytes) the relay
# writes the buffers itself; whatever the socket does not take now (EAGAIN, a full send
# buffer) goes to the transport, which queues it with its usual flow control. Errors
# are the transport's too: it is handed the same bytes, meets the same error and
# reports it the usual way (connection_lost).
#
# Why one writev of the whole answer, and not another way of sending it (measured on
# loopback, 64 kept-alive connections, requests per CPU-second; BBR with its own pacing,
# as on the bench machine):
# * sendfile(2) of the body from a memfd arena (a C server doing nothing else): +20% at
#   64 KiB only when the body starts on a page boundary and fits one splice round (16
#   pages); 3x worse when it starts mid-page (as a stored body does), 1.7x worse at
#   256 KiB and more at 1 MiB: the splice path pushes every 16 pages, and each push
#   re-arms BBR's pacing timer.
# * in this relay: the body in bounded writevs (32, 64, 256 KiB a call) 6-55% worse at
#   1 MiB; TCP_NOTSENT_LOWAT 128 KiB 35% worse at 1 MiB (a wake-up per piece);
#   TCP_CONGESTION cubic on the client socket (no pacing) 3x worse at 64 KiB, as every
#   segment then leaves (and, on loopback, is received) in the writer's context.
# What is left at 1 MiB is the copy into the socket (about 40% of the worker) and BBR's
# pacing timers (about 3 per hit against 0.4 for nginx's 32 KiB writes; on this VM each
# is a timer reprogramming and an interrupt).

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.errno cimport errno, EAGAIN, EINTR
from posix.uio cimport iovec, writev

from uvloop.loop import TCPTransport


cdef int _plain_fd(ClientConnection c):
    """The socket of c's transport when it is a plain uvloop TCP transport, else -1."""
    t = c.transport
    if type(t) is not TCPTransport:
        return -1              # TLS, an HTTP/2 stream, another loop: theirs to write
    sock = t.get_extra_info("socket")
    if sock is None:
        return -1
    c.t_pending = t.get_write_buffer_size
    return sock.fileno()


cdef bint write_hit(ClientConnection c, object out) except -1:
    """Write out (bytes, or [head bytes, view]) to c's socket; False when the transport
    must write all of it instead."""
    cdef int fd = c.direct_fd
    cdef iovec iov[2]
    cdef Py_buffer view
    cdef Py_ssize_t n, total, head_len
    cdef bint two = type(out) is not bytes
    t = c.transport
    if type(t) is SockTransport:
        # The compiled accept path's socket: one writev from C, the rest queued by the
        # transport (a view of the pinned segment stays pinned while queued).
        if two:
            (<SockTransport>t).send_parts((<list>out)[0], (<list>out)[1], 0, -1)
        else:
            (<SockTransport>t).send_parts(None, out, 0, -1)
        return True
    if fd == -2:
        fd = c.direct_fd = _plain_fd(c)
    if fd < 0 or c.state == S_CLOSED or c.t_pending() or c.transport.is_closing():
        return False
    if not two:
        iov[0].iov_base = PyBytes_AS_STRING(out)
        iov[0].iov_len = total = PyBytes_GET_SIZE(out)
        n = writev(fd, iov, 1)
        if n == total:
            return True
        if n < 0 and errno != EAGAIN and errno != EINTR:
            return False
        if n > 0:
            c.twrite(memoryview(out)[n:])
        else:
            c.twrite(out)
        return True
    head = (<list>out)[0]
    body = (<list>out)[1]
    PyObject_GetBuffer(body, &view, PyBUF_SIMPLE)
    try:
        head_len = PyBytes_GET_SIZE(head)
        iov[0].iov_base = PyBytes_AS_STRING(head)
        iov[0].iov_len = head_len
        iov[1].iov_base = view.buf
        iov[1].iov_len = view.len
        total = head_len + view.len
        n = writev(fd, iov, 2)
    finally:
        PyBuffer_Release(&view)
    if n == total:
        return True
    if n < 0 and errno != EAGAIN and errno != EINTR:
        return False
    if n <= 0:
        c.transport.writelines(out)
    elif n < head_len:
        c.transport.writelines((memoryview(head)[n:], body))
    else:
        # The rest is still a view of the pinned segment: it stays pinned while queued.
        c.twrite(body[n - head_len:])
    return True
