"""TCP mode: accept a connection, pick a server, connect, and tunnel bytes both ways.

No parsing: accept -> pick (hash of the client address by default) -> tunnel. A
server that refuses the connection is skipped for the next one in the group. With the
group's `send_proxy`, the tunnel's first bytes upstream are a PROXY protocol header naming
the client and the address it connected to (the PROXY header's, when the listener read one).
"""
from __future__ import annotations

import asyncio

import xxhash

from fastproxy._relay import Holding, splice_held
from fastproxy.proxyheader import build as proxy_header

EARLY_LIMIT = 256 * 1024   # bytes a client may send before the upstream is connected


class TcpRuntime:
    """What the connections of one TCP listener share."""

    def __init__(self, rt, lcfg, connections: set) -> None:
        self.rt = rt
        self.listener = lcfg
        self.loop = rt.loop
        self.timeouts = rt.timeouts
        self.deadlines = rt.deadlines
        self.access_log = rt.access_log
        self.group = rt.groups[lcfg.upstream]
        self.connections = connections
        self.draining = False


class TcpClient(asyncio.Protocol):
    """One accepted TCP connection on its way to becoming a tunnel."""

    def __init__(self, rt: TcpRuntime) -> None:
        self.rt = rt
        self.transport = None
        self.early: list[bytes] = []
        self.early_size = 0
        self.tried: list = []
        self.client_ip = "-"
        self.task = None
        self.server = None
        self.deadline = 0.0
        self.closed = False
        self.got_eof = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "-"
        self.rt.connections.add(self)
        self._next()

    def _next(self) -> None:
        group = self.rt.group
        key = xxhash.xxh3_64_intdigest(self.client_ip.encode())
        server = group.pick(key, self.tried)
        if server is None:
            self._log(None, 0, 0, "no available server")
            self.transport.close()
            return
        self.server = server
        self.tried.append(server)
        self.task = self.rt.loop.create_task(self._connect(server))

    async def _connect(self, server) -> None:
        loop = self.rt.loop
        try:
            transport, upstream = await asyncio.wait_for(
                loop.create_connection(Holding, server.host, server.port),
                self.rt.timeouts.upstream_connect)
        except (OSError, asyncio.TimeoutError) as exc:
            if self.closed:
                return
            self.rt.group.record_failure(server, True)
            self._log(server, 0, 0, f"connect failed: {exc.__class__.__name__}")
            self._next()
            return
        if self.closed:
            transport.close()
            return
        early = b"".join(self.early)
        self.early = []
        group = self.rt.group
        if group.config.send_proxy is not None:
            early = proxy_header(group.config.send_proxy,
                                 self.transport.get_extra_info("peername"),
                                 self.transport.get_extra_info("sockname")) + early
        group.balancer.acquire(server)
        tunnel = splice_held(self.transport, upstream, early, self.rt.timeouts.tunnel_idle,
                             self.rt.deadlines, lambda a, b: self._ended(server, a, b))
        if self.got_eof:
            tunnel.a.eof_received()  # the client half-closed before we were connected

    def _ended(self, server, up_bytes: int, down_bytes: int) -> None:
        self.rt.group.balancer.release(server)
        self.rt.connections.discard(self)
        self._log(server, up_bytes, down_bytes, "")

    def _log(self, server, up_bytes: int, down_bytes: int, detail: str) -> None:
        log = self.rt.access_log
        if log is not None:
            record = {"client": self.client_ip, "mode": "tcp",
                      "upstream": server.name if server else "-",
                      "bytes_up": up_bytes, "bytes_down": down_bytes}
            if detail:
                record["detail"] = detail
            log.write_record(record)

    def data_received(self, data) -> None:
        self.early.append(data)
        self.early_size += len(data)
        if self.early_size > EARLY_LIMIT:
            self.transport.pause_reading()

    def eof_received(self):
        self.got_eof = True
        return True  # keep the connection; the tunnel will carry the half-close on

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.rt.connections.discard(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def drain(self) -> None:
        """Shutdown: tunnels finish by themselves (bounded by the drain timeout)."""
