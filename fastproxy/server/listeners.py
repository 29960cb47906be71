"""Listening sockets: who may own a port, and the per-worker connection limit.

Ports. A single worker binds each address the way every server does (SO_REUSEADDR): the
kernel refuses with EADDRINUSE when anyone listens there. Several workers share a port
with SO_REUSEPORT, which would also let a second fastproxy started by mistake join the
group silently (same user) and take a share of the traffic. So the master binds the first
socket of each address exclusively (the same check as a single worker), and only then sets
SO_REUSEPORT on it; its workers' sockets join that group, while any later exclusive bind
(another fastproxy, single or multi-worker) still fails with "address already in use". The
check and the claim are one bind(2), so two instances started at the same moment cannot
both pass it (a lock taken before a separate probe would need a file or a name that both
agree on; the bound socket is that lock, released by the kernel when the process dies).

Limit. `[limits] max_connections` caps a worker's open client connections. At the limit the
worker stops accepting (its listening servers are closed, the sockets themselves are kept, so
new connections wait in the kernel's backlog) and starts again below it. uvloop accepts
everything pending in one go; connections of such a burst past the limit are held unread
(`_Waiting`) and let in first, one per connection that closes.

Accept path. Plain HTTP/1.1 listeners accept through the relay's compiled Acceptor
(ext/relay_accept.pxi: accept4 in a batch, the request read at once, the socket polled only
if it has to wait); TLS and TCP listeners through uvloop's server. FASTPROXY_UVLOOP_ACCEPT=1
in the environment sends plain HTTP listeners through uvloop's server too (debugging, the
differential tests). The Acceptors' epoll set is the worker's (`loop_poller`): plain-TCP
upstream connections are polled in it too (ext/relay_dial.pxi).
"""
from __future__ import annotations

import asyncio
import os
import socket
from collections import deque
from typing import Any

from fastproxy._relay import Acceptor, Admission, GatedAccepting, Poller, loop_poller
from fastproxy.server.proxied import ProxyAcceptor, Refusals

BACKLOG = 2048


def _addresses(host: str, port: int) -> list[tuple[int, tuple]]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    seen: list[tuple[int, tuple]] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and (family, sockaddr) not in seen:
            seen.append((family, sockaddr))
    return seen


def _socket(family: int, sockaddr: tuple, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        return sock
    except BaseException:
        sock.close()
        raise


def bind(host: str, port: int, share: bool = False, join: bool = False) -> list[socket.socket]:
    """Listening sockets for host:port, one per address the host stands for.

    Exclusive by default (EADDRINUSE when anyone listens there). `share` then turns
    SO_REUSEPORT on, so that sockets bound with `join` (this instance's other workers)
    can listen on the same port. Raises OSError saying which address failed.
    """
    socks: list[socket.socket] = []
    try:
        for family, sockaddr in _addresses(host, port):
            if port == 0 and socks:   # every address family on the port the first one got
                sockaddr = (sockaddr[0], socks[0].getsockname()[1], *sockaddr[2:])
            sock = _socket(family, sockaddr, reuse_port=join)
            socks.append(sock)
            if share and not join:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in socks:
            sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        text = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OSError(exc.errno, f"cannot listen on {where}: {text}") from None
    if not socks:
        raise OSError(0, f"cannot listen on {host}:{port}: no IPv4 or IPv6 address")
    return socks


def defer_accept(sock: socket.socket, seconds: float) -> None:
    """Have the kernel hand sock's connections over once their first bytes arrived.

    For listeners whose clients speak first (plain HTTP): TCP_DEFER_ACCEPT (nginx's
    `listen ... deferred`) saves the wake-up between accept and the request with a
    connection per request, and a connect that sends nothing waits in the kernel, not in
    the worker. After `seconds` (the client_header timeout) the kernel passes it on anyway.
    """
    if hasattr(socket, "TCP_DEFER_ACCEPT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, max(1, int(seconds + 0.999)))


class _Waiting(asyncio.Protocol):
    """A connection accepted past the limit: held unread until a slot frees."""

    def __init__(self, gate: AcceptGate, make) -> None:
        self.gate = gate
        self.make = make
        self.transport: Any = None
        self.data: list[bytes] = []
        self.eof = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.pause_reading()
        self.gate.waiting.append(self)
        self.gate.admission.alert = True

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc) -> None:
        self.transport = None
        try:
            self.gate.waiting.remove(self)
        except ValueError:
            pass

    def admit(self) -> None:
        """Hand the connection to its real protocol, as if it had just been accepted."""
        transport = self.transport
        proto = self.make()
        transport.set_protocol(proto)
        transport.resume_reading()   # takes effect on the next loop turn, after the below
        proto.connection_made(transport)
        for chunk in self.data:
            proto.data_received(chunk)
        if self.eof and not proto.eof_received():
            transport.close()


class ConnectionSet(set):
    """A worker's open client connections; a close below the limit lets the next one in.

    `add` is set.add: with a connection per request, an override was an interpreted call
    per accept (the gate's `pending` count is cleared once per loop turn instead). The
    HTTP/1.1 relay discards through `admission` (compiled); this override serves the rest.
    """

    __slots__ = ("gate", "admission")
    gate: AcceptGate
    admission: Admission

    def discard(self, conn) -> None:
        if conn in self:
            set.discard(self, conn)
            if self.admission.alert:
                self.gate.below_limit()


class AcceptGate:
    """Stops a worker accepting at max_connections and starts it again below.

    `pending` counts connections whose protocol was made at accept but which are not in
    the set yet (uvloop calls connection_made on the next loop turn, after the reset that
    the first accept of a turn schedules; a TLS connection after its handshake); it is
    cleared once per loop turn, so a TLS handshake that never completes cannot hold a slot
    for ever (TLS connections count from the handshake on). An admitted waiting connection
    (below_limit) holds a pending slot until its connection_made. The count and the check
    at accept live in `admission` (compiled, fastproxy._relay.Admission); it calls `over`
    and `pause` at the limit, and `below_limit` on a close while `alert` is set.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.loop = loop
        self.connections = ConnectionSet()
        # The limit lives in `admission` (read at every accept); set_limit on reload.
        self.admission = Admission(self, self.connections, limit, loop)
        self.connections.gate = self
        self.connections.admission = self.admission
        self.waiting: deque[_Waiting] = deque()
        # [sock, factory, ssl, server or None, handshake timeout, holder if proxy_protocol]
        self.listeners: list[list] = []
        self.paused = False
        self.pauses = 0               # times accepting stopped at the limit
        self.closed = False
        self.direct = not os.environ.get("FASTPROXY_UVLOOP_ACCEPT")
        self.poller: Poller | None = None    # the Acceptors' epoll set, made at first use
        self.refusals = Refusals(loop)       # proxy_protocol listeners' refused connections

    async def serve(self, sock: socket.socket, make, ssl=None,
                    handshake_timeout: float = 60.0, proxied=None) -> None:
        """Accept on sock (a listening socket this gate now owns), protocols from make();
        with ssl, a handshake not done within handshake_timeout seconds is closed; with
        proxied (the listener's runtime holder), each connection's PROXY header is read
        first (fastproxy.server.proxied)."""
        entry = [sock, self.admission.factory(make), ssl, None, handshake_timeout, proxied]
        self.listeners.append(entry)
        entry[3] = await self._open(entry)

    async def _open(self, entry) -> asyncio.AbstractServer | Acceptor | ProxyAcceptor:
        sock, factory, ssl, _, handshake_timeout, proxied = entry
        poller = None
        if ssl is None and self.direct and type(factory) is GatedAccepting:
            if self.poller is None:
                self.poller = loop_poller(self.loop)
            poller = self.poller
        if proxied is not None:
            return ProxyAcceptor(self.loop, sock, factory, ssl, handshake_timeout,
                                 proxied, self.refusals, poller).start()
        if poller is not None:
            return Acceptor(sock, factory, poller).start()
        # The server gets a duplicate: closing it (a pause) leaves sock listening.
        if ssl is None:
            return await self.loop.create_server(factory, sock=sock.dup(), backlog=BACKLOG)
        return await self.loop.create_server(factory, sock=sock.dup(), ssl=ssl, backlog=BACKLOG,
                                             ssl_handshake_timeout=handshake_timeout)

    def limit(self) -> int:
        """The current max_connections."""
        return self.admission.limit

    def set_limit(self, limit: int) -> None:
        """A reload changed max_connections: a close below the new limit lets the next in."""
        self.admission.limit = limit

    @property
    def pending(self) -> int:
        """Connections admitted at accept and not in the set yet (see the class note)."""
        return self.admission.pending

    def over(self, make) -> _Waiting:
        """At the limit (from admission): stop accepting, hold this connection unread."""
        self.pause()
        return _Waiting(self, make)

    def pause(self) -> None:
        """Stop accepting (from admission at the limit): on the next loop turn."""
        if self.paused or self.closed:
            return
        self.paused = True
        self.admission.alert = True
        self.pauses += 1
        # Not from inside uvloop's accept callback (closing the handle there would close
        # the connection being accepted): on the next loop turn.
        self.loop.call_soon(self._close_servers)

    def _close_servers(self) -> None:
        if not self.paused:
            return
        for entry in self.listeners:
            if entry[3] is not None:
                entry[3].close()
                entry[3] = None

    def below_limit(self) -> None:
        """A connection closed: let a waiting one in, or start accepting again."""
        limit = self.limit()
        adm = self.admission
        while self.waiting and len(self.connections) + adm.pending < limit:
            waiting = self.waiting.popleft()
            if waiting.transport is not None and not waiting.transport.is_closing():
                # On the next turn, not inside the connection_lost that got us here.
                adm.pending += 1
                self.loop.call_soon(self._admit, waiting)
        if self.paused and not self.waiting and len(self.connections) < limit \
                and not self.closed:
            self.paused = False
            self.loop.create_task(self._resume())
        adm.alert = self.paused or bool(self.waiting)

    def _admit(self, waiting: _Waiting) -> None:
        adm = self.admission
        if waiting.transport is not None and not waiting.transport.is_closing():
            waiting.admit()    # in the set now: its pending slot is taken back
            adm.pending = max(0, adm.pending - 1)
            return
        adm.pending = max(0, adm.pending - 1)
        self.below_limit()

    async def _resume(self) -> None:
        for entry in self.listeners:
            if entry[3] is None and not self.closed:
                entry[3] = await self._open(entry)
        if self.paused:   # the limit was reached again meanwhile
            self._close_servers()

    def close(self) -> None:
        """Stop accepting for good (drain): close servers, sockets and waiting connections."""
        self.closed = True
        for entry in self.listeners:
            if entry[3] is not None:
                entry[3].close()
                entry[3] = None
            entry[0].close()
        while self.waiting:
            waiting = self.waiting.popleft()
            if waiting.transport is not None:
                waiting.transport.close()

    def release(self) -> None:
        """After the drain: the accepted sockets are closed, their epoll set can go."""
        if self.poller is not None:
            self.poller.close()
            self.poller = None

    def stats(self) -> dict:
        """Numbers for the admin interface."""
        return {"max_connections": self.limit(), "accept_paused": int(self.paused),
                "accept_pauses": self.pauses, "waiting": len(self.waiting),
                "proxy_refused": self.refusals.count}
