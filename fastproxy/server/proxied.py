"""The accept path of a listener with `proxy_protocol = true`: the PROXY header first, then
the listener's usual protocol on a transport whose peer is the header's client.

Only such listeners come here (listeners.AcceptGate picks it per listener), so the compiled
accept path of every other listener is untouched. Per connection:

1. accept; a peer outside `proxy_protocol_from` is closed at once (only a trusted balancer
   may say who the client is; anyone else could claim any address);
2. the header is read from the socket itself, exactly its bytes (MSG_PEEK, then a recv
   of the header's length; fastproxy.proxyheader.measure), so what follows it (a TLS
   ClientHello, an HTTP request, a TCP client's first bytes) stays in the kernel for the
   protocol that comes next; a header that is missing, malformed, too long or not complete
   within timeouts.client_header closes the connection without an answer (the spec: a
   receiver must not guess);
3. a plain HTTP/1.1 listener's socket goes to the relay's compiled accept path
   (fastproxy._relay.adopt, as if its Acceptor had accepted it) with the header's client
   as its peer; any other (TLS, tcp) goes to uvloop (`connect_accepted_socket`, with the
   listener's TLS context for a TLS tcp listener) and the listener's protocol factory,
   exactly as uvloop's server would have done it, the protocol's transport being a
   `PeerTransport` whose peername and sockname are the header's. So the access log,
   X-Forwarded-For and Forwarded, the rate limits, the forward ACL, client_ip hashing and
   TCP mode all see the client. A v2 LOCAL header (a balancer's health check) or v1
   UNKNOWN keeps the socket's own addresses.

The header wait counts against no limit but its own timeout: connections that have not
sent one are not yet in max_connections (only trusted peers get this far). Refused
connections are counted (the admin's `limits.proxy_refused`) and, at most once per
REFUSAL_LOG_EVERY seconds, a warning says why: a balancer that sends no header or the wrong
version is otherwise only silence.
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
from typing import Any

from fastproxy._relay import adopt
from fastproxy.addresses import CidrSet, client_key
from fastproxy.errorlog import event
from fastproxy.proxyheader import V2_MAX, ProxyHeaderError, measure, parse

ACCEPT_BATCH = 64
ACCEPT_RETRY = 0.5      # after EMFILE and the like, as the compiled Acceptor does
REFUSAL_LOG_EVERY = 10.0


class Refusals:
    """A worker's count of connections refused on proxy_protocol listeners, and the
    rate-limited warning that names the latest one."""

    def __init__(self, loop) -> None:
        self.loop = loop
        self.count = 0
        self.logged_at = -REFUSAL_LOG_EVERY
        self.unlogged = 0

    def refuse(self, peer, reason: str) -> None:
        """One connection closed unanswered: peer (host, port, ...) and why."""
        self.count += 1
        now = self.loop.time()
        if now - self.logged_at < REFUSAL_LOG_EVERY:
            self.unlogged += 1
            return
        more = f" ({self.unlogged} more since the last such line)" if self.unlogged else ""
        self.logged_at = now
        self.unlogged = 0
        host = peer[0] if isinstance(peer, tuple) else str(peer)
        event("warning", "proxy_protocol.refused",
              f"PROXY protocol: closed a connection from {host}: {reason}{more}",
              client=host, reason=reason)


class Trusted:
    """The networks whose connections may carry a PROXY header (`proxy_protocol_from`).

    Membership as every client rule has it (addresses.client_key): an IPv4-mapped IPv6 peer
    is its IPv4 address, a 6to4 or NAT64 one is not (those prefixes are routable from
    anywhere, and trust must not follow them)."""

    def __init__(self, networks) -> None:
        self.networks = CidrSet(ipaddress.ip_network(n) for n in networks)

    def __contains__(self, host: str) -> bool:
        try:
            return self.networks.contains(client_key(host))
        except ValueError:
            return False


class PeerTransport:
    """A transport as it is, but for peername and sockname: the PROXY header's addresses."""

    def __init__(self, transport, peer: tuple, sockname: tuple | None) -> None:
        self.transport = transport
        self.peer = peer
        self.sockname = sockname
        # The calls made per write and per read go straight to the real transport.
        self.write = transport.write
        self.writelines = transport.writelines
        self.is_closing = transport.is_closing
        self.close = transport.close
        self.abort = transport.abort
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The header's client as peername, its destination as sockname; the rest as is."""
        if name == "peername":
            return self.peer
        if name == "sockname" and self.sockname is not None:
            return self.sockname
        return self.transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class _Renamed(asyncio.Protocol):
    """Stands in for the listener's protocol until uvloop calls connection_made, then hands
    the transport over with the header's addresses."""

    def __init__(self, protocol, peer: tuple, sockname: tuple | None) -> None:
        self.protocol = protocol
        self.peer = peer
        self.sockname = sockname

    def connection_made(self, transport) -> None:
        transport.set_protocol(self.protocol)
        self.protocol.connection_made(PeerTransport(transport, self.peer, self.sockname))

    def connection_lost(self, exc) -> None:   # pragma: no cover - replaced before any event
        self.protocol.connection_lost(exc)


class ProxyAcceptor:
    """Accepts on one listening socket of a listener with proxy_protocol (see the module
    note); start/close as the gate's other servers (close stops accepting only)."""

    def __init__(self, loop, sock: socket.socket, factory, ssl, handshake_timeout: float,
                 holder, refusals: Refusals, poller=None) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.factory = factory
        self.ssl = ssl
        self.handshake_timeout = handshake_timeout
        self.holder = holder          # holder.current: the listener runtime (reloads)
        self.trusted: Trusted | None = None
        self.trusted_from: tuple = ()
        self.active = False
        self.retry = None
        self.refusals = refusals
        self.poller = poller          # the worker's epoll set: a plain HTTP/1.1 listener

    def start(self) -> "ProxyAcceptor":
        """Start accepting; returns self (what AcceptGate keeps as the listener's server)."""
        self.active = True
        self.loop.add_reader(self.fd, self._ready)
        return self

    def close(self) -> None:
        """Stop accepting (the socket stays open; headers being read still complete)."""
        if self.active:
            self.active = False
            self.loop.remove_reader(self.fd)
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None

    def _settings(self) -> tuple[Trusted, float]:
        lrt = self.holder.current
        nets = lrt.listener.proxy_protocol_from
        if self.trusted is None or nets != self.trusted_from:   # a reload changed them
            self.trusted = Trusted(nets)
            self.trusted_from = nets
        return self.trusted, lrt.timeouts.client_header

    def _ready(self) -> None:
        trusted, timeout = self._settings()
        for _ in range(ACCEPT_BATCH):
            if not self.active:
                return
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except (ConnectionAbortedError, PermissionError):
                continue
            except OSError as exc:
                # Out of descriptors or memory: stop for a moment, or the level-triggered
                # reader spins on the pending connection.
                self.loop.remove_reader(self.fd)
                self.retry = self.loop.call_later(ACCEPT_RETRY, self._again)
                self.loop.call_exception_handler({
                    "message": f"accept failed ({os.strerror(exc.errno or 0)}); accepting "
                               f"again in {ACCEPT_RETRY:g}s", "exception": exc})
                return
            if not (isinstance(addr, tuple) and addr[0] in trusted):
                conn.close()
                self.refusals.refuse(addr, "not in proxy_protocol_from")
                continue
            conn.setblocking(False)
            _HeaderRead(self, conn, addr, timeout)

    def _again(self) -> None:
        self.retry = None
        if self.active:
            self.loop.add_reader(self.fd, self._ready)

    def hand_over(self, conn: socket.socket, peer: tuple | None, dest: tuple | None) -> None:
        """The header is read: the listener's protocol gets the socket, as if just accepted."""
        factory = self.factory
        if self.poller is not None:
            self._adopt(conn, peer)
            return
        make = factory if peer is None else (lambda: _Renamed(factory(), peer, dest))
        if self.ssl is None:
            task = self.loop.connect_accepted_socket(make, conn)
        else:
            task = self.loop.connect_accepted_socket(
                make, conn, ssl=self.ssl, ssl_handshake_timeout=self.handshake_timeout)
        self.loop.create_task(self._handed(task, conn))

    def _adopt(self, conn: socket.socket, peer: tuple | None) -> None:
        try:
            if peer is None:
                peer = conn.getpeername()
            family = socket.AF_INET6 if len(peer) == 4 else socket.AF_INET
            packed = socket.inet_pton(family, peer[0].split("%", 1)[0])
        except OSError:     # reset meanwhile
            conn.close()
            return
        try:
            adopt(self.factory, self.poller, conn.detach(), family, packed, peer[1])
        except Exception as exc:   # adopt closed the socket
            self.loop.call_exception_handler({"message": "accept: no protocol",
                                              "exception": exc})

    async def _handed(self, task, conn: socket.socket) -> None:
        try:
            await task
        except (OSError, asyncio.TimeoutError):
            conn.close()   # a TLS handshake that failed or timed out: the socket goes
        except Exception as exc:   # the protocol factory failed: the socket is not left open
            conn.close()
            self.loop.call_exception_handler({"message": "accept: no protocol",
                                              "exception": exc})


class _HeaderRead:
    """One accepted connection whose PROXY header is being read."""

    __slots__ = ("acceptor", "conn", "peer", "fd", "got", "timer")

    def __init__(self, acceptor: ProxyAcceptor, conn: socket.socket, addr, timeout: float):
        self.acceptor = acceptor
        self.conn: socket.socket | None = conn   # None once handed over or closed
        self.peer = addr
        self.fd = conn.fileno()
        self.got = b""
        self.timer = None
        # The header is normally in the accept's first segment (with TCP_DEFER_ACCEPT
        # always): read it now, and poll only if it is not all there.
        self._readable()
        if self.conn is not None:
            loop = acceptor.loop
            self.timer = loop.call_later(timeout, self._fail, "no complete header within "
                                         "timeouts.client_header")
            loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            data = self.got + conn.recv(V2_MAX - len(self.got), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc.strerror or str(exc))
            return
        if len(data) == len(self.got):
            self._fail("closed before the header ended" if data else "closed without a header")
            return
        try:
            size, done = measure(data)
            # Take exactly the header's bytes; what follows is the next protocol's.
            self.got += conn.recv(size - len(self.got))
            header = parse(self.got) if done else None
        except ProxyHeaderError as exc:
            self._fail(str(exc))
            return
        except OSError as exc:
            self._fail(exc.strerror or str(exc))
            return
        if header is None:
            return
        self._stop()
        self.conn = None
        self.acceptor.hand_over(conn, header.source, header.dest)

    def _stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.acceptor.loop.remove_reader(self.fd)

    def _fail(self, reason: str) -> None:
        """No valid header (or none in time): close without a word."""
        conn = self.conn
        if conn is None:
            return
        self._stop()
        self.acceptor.refusals.refuse(self.peer, reason)
        self.conn = None
        # RST rather than FIN: nothing was answered and nothing will be.
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        conn.close()
