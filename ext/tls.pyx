# cython: freethreading_compatible = False
"""TLS termination on a plain uvloop transport: SSLObject + MemoryBIO driven in C.

A TLS listener is served plain by uvloop (no ssl= to create_server); every accepted
socket gets a `Connection`, which is the socket's protocol and, once the handshake is
done, the transport of the connection's HTTP protocol (the relay's ClientConnection, or
server/h2.py's H2Server when ALPN chose h2). Why not uvloop's SSLProtocol: it is a
general state machine (app/ssl states, its own plaintext write backlog and read buffer,
a handshake timer and a shutdown timer per connection, several Python-level steps per
event); a profile of a connection per request showed it at most of the ~90 us per
connection that fastproxy spent outside libcrypto and the kernel, against nginx's ~9.

What is done here, and how:
- ciphertext in: written to the incoming MemoryBIO; the handshake or SSL reads run at
  once. Reads stop when the BIO and OpenSSL hold nothing more (no SSLWantReadError
  raised per record: creating it is a formatted message and an object each time);
- plaintext out: `write` encrypts into the outgoing MemoryBIO and hands its whole
  content to the socket in one transport write (the response head and body go out in
  one write; handshake flights and session tickets each in one);
- the handshake is bounded by the listener generation's client_header timeout (the
  slow-loris guard of the request head, which the handshake precedes), through the
  generation's Deadlines sweep (no timer per connection);
- a close_notify from the client, and a TCP close without one, are an EOF for the
  protocol (eof_received: a request in flight is still answered, RFC 9112 9.6); our own
  close sends close_notify and closes without waiting for the client's;
- backpressure: the protocol's pause_reading stops the socket and the SSL reads
  (ciphertext already received stays in the BIO until resume_reading); the socket's
  pause_writing/resume_writing and its write-buffer limits are the protocol's;
- get_extra_info: ssl_object (the ssl.SSLObject: ALPN, the SNI callback's context),
  peercert, cipher, sslcontext; everything else (peername, socket) is the socket's.
The hot calls go to SSLObject's `_sslobj` (the _ssl object it wraps): the public
methods are Python frames around the same calls.
"""

from libc.time cimport time_t

cdef extern from "<time.h>" nogil:
    ctypedef int clockid_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk_id, timespec *tp)
    clockid_t CLOCK_MONOTONIC

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_FromStringAndSize

from ssl import MemoryBIO, SSLError, SSLWantReadError

cdef inline double _now() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9

DEF HANDSHAKE = 0
DEF OPEN = 1
DEF CLOSING = 2     # close()/abort() called, or the handshake failed
DEF LOST = 3        # the socket's connection_lost came

# One TLS record carries at most 16 KiB of plaintext (RFC 8446 5.1) and a read returns
# at most one record: a bigger buffer would gain nothing.
DEF READ_SIZE = 16384
# writelines joins pieces smaller than this into one SSL write (one record, not one
# per piece); bigger ones are encrypted as they are (no copy of a large body).
DEF JOIN_BELOW = 16384

# Plaintext is read into this one buffer and copied out at its exact size: reading into
# a fresh 16 KiB bytes object (then shrunk) showed as malloc work in the profile of a
# connection per request. One buffer serves every connection: a read is copied out
# before anything else runs.
cdef bytearray _rbuf = bytearray(READ_SIZE)

# Distinct failure reasons kept by name; past this many, the rest count as "other" (a
# client cannot grow the table: OpenSSL's reason codes are a fixed set, but be bounded).
DEF MAX_REASONS = 32


cdef class HandshakeCounts:
    """This worker's TLS handshakes by outcome (the admin interface's /metrics reads them).

    A failed handshake is otherwise silent (the client gets OpenSSL's alert): these say how
    many, and why (OpenSSL's reason, lower-cased: "http_request" is plain HTTP sent to a
    TLS port, "no_shared_cipher", "unsupported_protocol", ...)."""

    cdef public long long ok, timeout, closed
    cdef readonly dict failed

    def __init__(self):
        self.ok = self.timeout = self.closed = 0
        self.failed = {}

    cdef void fail(self, exc) noexcept:
        reason = getattr(exc, "reason", None)
        key = reason.lower() if isinstance(reason, str) and reason else "other"
        failed = self.failed
        if key not in failed and len(failed) >= MAX_REASONS:
            key = "other"
        failed[key] = failed.get(key, 0) + 1

    def snapshot(self):
        """{"ok": n, "timeout": n, "closed": n, "failed": {reason: n}}."""
        return {"ok": self.ok, "timeout": self.timeout, "closed": self.closed,
                "failed": dict(self.failed)}


# One per process (a worker is a process): every TLS listener of the worker counts here.
cdef HandshakeCounts _counts = HandshakeCounts()
counts = _counts


cdef class Terminating:
    """The protocol factory of a TLS listener: a Connection per accepted socket.

    holder.current is the listener runtime new connections get (swapped on reload);
    after the handshake, `h2(lrt)` makes the protocol when ALPN chose "h2", `h1(lrt)`
    otherwise."""

    cdef object holder, context, h1, h2, lrt
    cdef set deadlines
    cdef double timeout

    def __init__(self, holder, context, h1, h2):
        self.holder = holder
        self.context = context
        self.h1 = h1
        self.h2 = h2
        self.lrt = None

    def __call__(self):
        lrt = self.holder.current
        if lrt is not self.lrt:
            # A reload made a new generation: its deadlines and timeout from now on.
            gen = lrt.rt
            self.deadlines = gen.deadlines.members
            self.timeout = gen.timeouts.client_header
            self.lrt = lrt
        return Connection(self, lrt)


cdef class Connection:
    """One TLS client connection: the socket's protocol and its protocol's transport."""

    cdef Terminating f
    cdef object lrt
    cdef object raw, raw_write, sslobj, c, inbio, outbio
    cdef public object app
    cdef object app_data
    cdef int state
    cdef bint app_paused, eof_told, resume_scheduled, pending_eof
    cdef public double deadline
    cdef set deadlines

    def __init__(self, Terminating f, lrt):
        self.f = f
        self.lrt = lrt
        self.state = HANDSHAKE
        self.app = None
        self.deadline = 0.0

    # -- the socket's protocol ---------------------------------------------------

    def connection_made(self, raw):
        cdef Terminating f = self.f
        self.raw = raw
        self.raw_write = raw.write
        self.inbio = MemoryBIO()
        self.outbio = MemoryBIO()
        self.sslobj = f.context.wrap_bio(self.inbio, self.outbio, server_side=True)
        self.c = self.sslobj._sslobj
        self.deadlines = f.deadlines
        self.deadline = _now() + f.timeout
        self.deadlines.add(self)

    def data_received(self, data):
        self.inbio.write(data)
        if self.state == OPEN:
            if not self.app_paused:
                self._read()
        elif self.state == HANDSHAKE:
            self._handshake()

    def eof_received(self):
        if self.state == OPEN:
            if self.app_paused:
                # What is still in the BIO is read on resume_reading, the EOF after it.
                self.pending_eof = True
                return True
            self._read()
            if self.state == OPEN:
                return self._eof()
            return True
        # Mid-handshake (or already closing): nothing to answer.
        if self.state == HANDSHAKE:
            _counts.closed += 1
        self._close_raw()
        return False

    def connection_lost(self, exc):
        if self.state == HANDSHAKE:
            _counts.closed += 1    # reset by the client mid-handshake
        self.state = LOST
        if self.deadline:
            self.deadline = 0.0
        self.deadlines.discard(self)
        app = self.app
        self.raw_write = None
        if app is not None:
            app.connection_lost(exc)
            # The protocol keeps us as its transport; we let go of it (no cycle for the
            # collector to find, with a connection per request).
            self.app = None
            self.app_data = None

    def pause_writing(self):
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self):
        if self.app is not None:
            self.app.resume_writing()

    def on_timeout(self):
        """The handshake took longer than the listener's client_header timeout."""
        if self.state == HANDSHAKE:
            self.state = CLOSING
            _counts.timeout += 1
            self.raw.abort()

    # -- driving OpenSSL ---------------------------------------------------------

    cdef _flush(self):
        if self.outbio.pending:
            self.raw_write(self.outbio.read())

    cdef _handshake(self):
        try:
            self.c.do_handshake()
        except SSLWantReadError:
            self._flush()
            return
        except (SSLError, ValueError) as exc:
            # A bad ClientHello, no shared cipher or version, an unknown CA...: the
            # alert OpenSSL wrote goes out, then the socket closes.
            _counts.fail(exc)
            self.state = CLOSING
            self.deadlines.discard(self)
            self.deadline = 0.0
            self._flush()
            self.raw.close()
            return
        self.deadlines.discard(self)
        self.deadline = 0.0
        self.state = OPEN
        _counts.ok += 1
        if not self.inbio.pending:
            self._flush()
        # else: the request came with the client's Finished: the session ticket goes out
        # in the same socket write as what the request makes us write (uvloop writes
        # at once, a syscall per transport write), or at the end of the read below.
        lrt = self.lrt
        if self.c.selected_alpn_protocol() == "h2":
            app = self.f.h2(lrt)
        else:
            app = self.f.h1(lrt)
        self.app = app
        self.app_data = app.data_received
        app.connection_made(self)
        if self.state == OPEN and self.inbio.pending and not self.app_paused:
            self._read()
        self._flush()

    cdef _read(self):
        cdef object c = self.c
        cdef object inbio = self.inbio
        cdef Py_ssize_t n
        while True:
            try:
                n = c.read(READ_SIZE, _rbuf)
            except SSLWantReadError:
                break
            except SSLError:
                # A record that does not decrypt, an unexpected message: fatal alert out.
                self._flush()
                self.state = CLOSING
                self.raw.abort()
                return
            if n == 0:
                # close_notify: the client has nothing more to send.
                self._flush()
                self._eof()
                return
            self.app_data(PyBytes_FromStringAndSize(PyByteArray_AS_STRING(_rbuf), n))
            if self.state != OPEN or self.app_paused:
                break
            if not inbio.pending and not c.pending():
                break
        # Post-handshake messages (a KeyUpdate) may have written a reply.
        if self.state == OPEN:
            self._flush()

    cdef bint _eof(self):
        """The client is done sending: the protocol decides whether to answer still."""
        if self.eof_told:
            return True
        self.eof_told = True
        if self.app.eof_received():
            return True
        self.close()
        return True

    cdef _close_raw(self):
        if self.state < CLOSING:
            self.state = CLOSING
        self.deadlines.discard(self)
        self.deadline = 0.0
        self.raw.close()

    def _resume(self):
        self.resume_scheduled = False
        if self.state == OPEN and not self.app_paused:
            if self.inbio.pending or self.c.pending():
                self._read()
            if self.pending_eof and self.state == OPEN:
                self.pending_eof = False
                self._eof()

    # -- the protocol's transport ------------------------------------------------

    def write(self, data):
        """Encrypt data and send it (one socket write)."""
        if self.state != OPEN or not data:
            return
        self.c.write(data)
        self.raw_write(self.outbio.read())

    def writelines(self, parts):
        """write() of the pieces together: one SSL write when they are small."""
        if self.state != OPEN:
            return
        cdef Py_ssize_t total = 0
        parts = list(parts)
        for p in parts:
            total += len(p)
        if total == 0:
            return
        if total < JOIN_BELOW:
            self.c.write(b"".join(parts))
        else:
            for p in parts:
                if len(p):
                    self.c.write(p)
        self.raw_write(self.outbio.read())

    def close(self):
        """close_notify, then close the socket once what is buffered is sent."""
        if self.state >= CLOSING:
            return
        self.state = CLOSING
        try:
            self.c.shutdown()
        except (SSLError, ValueError):
            pass   # SSLWantReadError: the client's close_notify is not awaited
        self._flush()
        self.raw.close()

    def abort(self):
        """Close the socket now, buffered data lost (no close_notify)."""
        if self.state < CLOSING:
            self.state = CLOSING
        self.raw.abort()

    def is_closing(self):
        return self.state >= CLOSING or self.raw.is_closing()

    def can_write_eof(self):
        return False

    def write_eof(self):
        raise NotImplementedError("TLS connections do not half-close")

    def pause_reading(self):
        """Stop reading: the socket, and the plaintext already decrypted or buffered."""
        if not self.app_paused:
            self.app_paused = True
            if self.state < CLOSING:
                self.raw.pause_reading()

    def resume_reading(self):
        """Read again (what is buffered is delivered on the next loop turn)."""
        if self.app_paused:
            self.app_paused = False
            if self.state < CLOSING:
                if not self.eof_told and not self.pending_eof:
                    self.raw.resume_reading()
                if not self.resume_scheduled:
                    self.resume_scheduled = True
                    # Not from inside the caller: it may be in the middle of its own
                    # data_received, which the buffered plaintext would re-enter.
                    self.lrt.rt.loop.call_soon(self._resume)

    def is_reading(self):
        return not self.app_paused and self.state == OPEN

    def set_protocol(self, protocol):
        self.app = protocol
        self.app_data = protocol.data_received

    def get_protocol(self):
        return self.app

    def get_write_buffer_size(self):
        return self.raw.get_write_buffer_size() + self.outbio.pending

    def get_write_buffer_limits(self):
        return self.raw.get_write_buffer_limits()

    def set_write_buffer_limits(self, high=None, low=None):
        self.raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name, default=None):
        if name == "peername":   # the relay asks at every connection_made
            return self.raw.get_extra_info(name, default)
        if name == "ssl_object":
            return self.sslobj
        if name == "peercert":
            return self.sslobj.getpeercert()
        if name == "cipher":
            return self.sslobj.cipher()
        if name == "sslcontext":
            return self.sslobj.context
        if name == "compression":
            return self.sslobj.compression()
        return self.raw.get_extra_info(name, default)
