"""Listeners, workers, signals: the process around the data path.

One worker = one process = one uvloop event loop with its own listeners, pools,
and caches. With `workers > 1` the master (fastproxy.server.process) binds the addresses
and forks that many workers, each with its own SO_REUSEPORT socket per address, so the
kernel spreads connections among them.
SIGTERM, SIGINT and SIGQUIT (nginx's graceful stop) drain (stop accepting, finish in-flight requests, then exit 0);
SIGHUP reloads the configuration: new connections and the next request of every open
HTTP/1.1 connection use the new configuration (exchanges in flight, tunnels and tcp
connections finish on the old one; HTTP/2 connections get GOAWAY).
"""
from __future__ import annotations

import asyncio
import gc
import os
import signal
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from fastproxy import errorlog
from fastproxy.errorlog import log
from fastproxy.server import h2, process
from fastproxy.server import listeners as listening
from fastproxy.accesslog import AccessLog
from fastproxy.cache.layer import CacheLayer
from fastproxy.cache.worker import WorkerCache
from fastproxy.cache.peers import PEER_OUTLIER, PEER_RETRY, PeerRing
from fastproxy.config.load import (Config, ConfigError, ListenerConfig, default_pidfile,
                                   format_address, listener_label, show_size)
from fastproxy._relay import (Accepting, ClientConnection, ConnectionPool, ListenerSettings,
                              Counters, RequestIds)
from fastproxy._tls import Terminating
from fastproxy.proxy.compress import compression_factory
from fastproxy.proxy.filters import chain, edits_factory
from fastproxy.proxy.reverse import ReverseHandler
from fastproxy.proxy.router import Router
from fastproxy.server.stats import Recorder, Stats
from fastproxy.server.timers import Deadlines
from fastproxy.server.tls import CertSelector
from fastproxy.upstream.group import Server, UpstreamGroup
from fastproxy.upstream.settings import UpstreamGroupConfig
from fastproxy.upstream.tls import client_context


class Runtime:
    """One configuration generation inside one worker: groups, pools, logs, deadlines."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, cache=None,
                 counters=None, stats=None, previous: Runtime | None = None) -> None:
        self.config = config
        self.stats = stats if stats is not None else Stats()   # the worker's, across reloads
        self.loop = loop
        self.cache = cache          # the worker's WorkerCache (kept across reloads), or None
        self.counters = counters    # the worker's relay Counters (for the admin interface)
        self.timeouts = config.timeouts
        self.limits = config.limits
        # A group's own connect/read timeout counts too: a 100 ms read_timeout swept once a
        # second would fire up to a second late.
        waits = [v for v in vars(config.timeouts).values() if v > 0] + [
            v for g in config.upstreams.values()
            for v in (g.connect_timeout, g.read_timeout) if v is not None and v > 0]
        self.deadlines = Deadlines(loop, min(waits) if waits else 1.0)
        self.deadlines.start()
        hp = config.headers
        # Each request's id ($request_id in the log, headers.request_id upstream).
        self.request_ids = RequestIds(hp.request_id, hp.request_id_trust)
        al = config.access_log
        self.access_log = AccessLog(al.path, al.format, loop, self.request_ids) \
            if al.path else None
        self.response_via = f"Via: 1.1 {hp.via_name}\r\n".encode() if hp.via else b""
        self._tls: dict = {}        # group name -> its upstream TLS context (one per group)
        self.groups = {name: UpstreamGroup(gcfg, self._pool_factory(gcfg), loop)
                       for name, gcfg in config.upstreams.items()}
        # The other nodes of a caching fleet, as a group: pooled keep-alive connections
        # and outlier ejection (fastproxy.cache.peers).
        self.peer_group: UpstreamGroup | None = None
        me = config.cluster_self
        if config.cluster_peers and me is not None and cache is not None:
            others = tuple(p for p in config.cluster_peers if (p.host, p.port) != (me.host, me.port))
            pcfg = UpstreamGroupConfig(name="cluster", servers=others, balance="round_robin",
                                       retry=PEER_RETRY, outlier=PEER_OUTLIER)
            self.peer_group = UpstreamGroup(pcfg, self._pool_factory(pcfg), loop)
        if previous is not None:
            # A reload: servers keep their verdicts and counts (UpstreamGroup.carry_over).
            for name, group in self.groups.items():
                if name in previous.groups:
                    group.carry_over(previous.groups[name])
            if self.peer_group is not None and previous.peer_group is not None:
                self.peer_group.carry_over(previous.peer_group)
        for group in self.all_groups():
            group.start()  # active health checks

    def _pool_factory(self, gcfg: UpstreamGroupConfig) -> Callable[[Any, Any], ConnectionPool]:
        """The group's pool of one server: the relay's ConnectionPool with gcfg's settings;
        https:// ones get the group's TLS context (one per group)."""
        def pool(group: Any, server: Any) -> ConnectionPool:
            p = ConnectionPool(self, gcfg, server)
            if p.ssl is not None and gcfg.tls is not None:
                ctx = self._tls.get(gcfg.name)
                if ctx is None:
                    ctx = self._tls[gcfg.name] = client_context(gcfg.tls)
                p.ssl = ctx
            return p
        return pool

    def all_groups(self) -> list:
        """The configured upstream groups and the fleet's peer group, if any."""
        groups = list(self.groups.values())
        return groups + [self.peer_group] if self.peer_group is not None else groups

    async def stop_checks(self) -> None:
        """Stop health checks and ejection timers (a newer generation took over)."""
        for group in self.all_groups():
            await group.stop_checks()

    async def aclose(self) -> None:
        """Release what this generation holds once no connection uses it."""
        await self.stop_checks()
        for group in self.all_groups():
            group.close()
        self.deadlines.stop()
        if self.access_log is not None:
            self.access_log.close()


class ListenerRuntime:
    """What the connections of one listener share: its handler, cache and relay settings.

    The generation's values (loop, limits, timeouts, deadlines, Via) are read through
    from `rt`, not copied; what the relay copies at accept is built by relay_settings.
    """

    def __init__(self, rt: Runtime, lcfg: ListenerConfig, connections: set,
                 index: int = 0) -> None:
        self.rt = rt
        self.listener = lcfg
        # The relay's per-exchange call: latency and top URLs, then the access log. Only
        # the admin interface shows those numbers, so without one there is no Recorder
        # and no per-request Python call (it costs ~10% of a relayed request).
        self.access_log: Any = rt.access_log
        if rt.config.admin is not None:
            self.access_log = Recorder(rt.stats, listener_label(lcfg.name, index),
                                       rt.access_log)
        self.connections = connections
        self.fast_hits = None
        self.holder: _Holder | None = None
        self.handler: Any = None    # ReverseHandler or ForwardHandler
        # A listener uses the worker's cache unless its `cache = false`.
        self.cache = rt.cache if lcfg.cache else None
        edits = None        # the routes' response header edits (reverse listeners)
        if lcfg.mode == "reverse":
            tls = lcfg.tls_cert is not None
            layer = None
            if self.cache is not None:
                layer = CacheLayer(self.cache, None, b"https" if tls else b"http",
                                   rt.response_via, rt.loop, rt.timeouts, rt.limits, index)
            self.handler = ReverseHandler(self, Router(lcfg, rt.groups), tls, layer)
            edits = edits_factory(self.handler.router)
            if layer is not None:
                layer.handler = self.handler
                me = rt.config.cluster_self
                if rt.peer_group is not None and me is not None:
                    layer.peers = PeerRing(Server(me.host, me.port).name, rt.peer_group, rt.loop,
                                           layer.scheme)
                layer.edits = edits
                if not self.handler.limit_rate and layer.edits is None \
                        and not os.environ.get("FASTPROXY_NO_FASTPATH"):
                    # Fresh hits answered by the relay itself (hitpath.pyx); with rate
                    # limits every request must reach the handler first, and with route
                    # header edits every hit must get them (the compiled path has none).
                    # The variable (debugging, differential tests) sends every hit the
                    # Python way.
                    self.fast_hits = layer.fresh_hits()
        elif lcfg.mode == "forward":
            from fastproxy.forward.handler import ForwardHandler
            self.handler = ForwardHandler(self, lcfg)
            if self.cache is not None:
                # Hits need the forward checks (auth, ACL) first: no fast path here.
                self.handler.cache = CacheLayer(self.cache, self.handler, b"http",
                                                rt.response_via, rt.loop, rt.timeouts,
                                                rt.limits, index)
        # The response-body filter factory (compression), None when off; the relay's
        # ListenerSettings takes it (docs: the filter contract).
        compression = compression_factory(rt.config, lcfg)
        self.filter_factory = chain(edits, compression)
        if lcfg.mode == "reverse" and self.handler.cache is not None:
            # Cache hits do not pass the filter: the cache stores what it encodes.
            self.handler.cache.compress_with(compression)
        # HTTP/2 with prior knowledge: the relay hands a connection that starts with the
        # preface to fastproxy.server.h2.
        self.h2_switch = h2.switch if self.handler is not None else None
        self.relay = relay_settings(self)
        self.relay.filter_factory = self.filter_factory
        if self.cache is not None:
            self.cache.use(self.relay)

    @property
    def draining(self) -> bool:
        """The worker is draining: a connection made now closes after its first exchange."""
        return self.relay.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        # Kept in the relay settings: the compiled accept path reads it per connection.
        self.relay.draining = value

    # The generation's values, for the handlers and the relay (ConnectionPool reads them).
    @property
    def config(self) -> Config:
        """The configuration of this generation."""
        return self.rt.config

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The worker's event loop."""
        return self.rt.loop

    @property
    def limits(self) -> Any:
        """[limits] of this generation."""
        return self.rt.limits

    @property
    def timeouts(self) -> Any:
        """[timeouts] of this generation."""
        return self.rt.timeouts

    @property
    def deadlines(self) -> Deadlines:
        """The generation's timer wheel."""
        return self.rt.deadlines

    @property
    def response_via(self) -> bytes:
        """The Via line added to responses (empty when off)."""
        return self.rt.response_via

    @property
    def request_ids(self) -> RequestIds:
        """The generation's request ids (headers.request_id, the log's $request_id)."""
        return self.rt.request_ids


def relay_settings(lrt: ListenerRuntime) -> ListenerSettings:
    """The relay's per-listener settings (relay.ListenerSettings), derived from the
    listener's configuration here and nowhere else."""
    own = lrt.listener.request_buffering
    buffer_limit = lrt.rt.limits.request_buffering if own is None else own
    return ListenerSettings(lrt, lrt.rt, buffer_limit)



class Worker:
    """Runs the listeners of one configuration in the current process."""

    # Set by prepare(), in the running loop; nothing reads them before.
    loop: asyncio.AbstractEventLoop
    stopping: asyncio.Event
    gate: listening.AcceptGate
    runtime: Runtime

    def __init__(self, config: Config, reload_fn: Callable[[], Config] | None = None) -> None:
        self.config = config
        self.reload_fn = reload_fn
        self.listener_rts: list[Any] = []   # ListenerRuntime or tcp.TcpRuntime, per listener
        self.tls: dict = {}     # listener holder -> its CertSelector (TLS listeners)
        self.connections: set = set()
        self.old_runtimes: list[Runtime] = []
        self.bound: list = []   # (listener config, port actually bound)
        self.started = time.time()
        self.counters = Counters()
        self.stats = Stats()
        self.cache: WorkerCache | None = None
        self.admin: Any = None   # the admin.server.AdminServer when [admin] is set
        self.index = 0          # worker number (0 .. workers-1)
        self.peers_dir: str | None = None   # where workers' admin sockets are (workers > 1)
        self.sockets: dict | None = None    # listening sockets bound by the master, if any
        self.ready_fd: int | None = None    # the master's pipe: "ready" or "failed REASON"
        self.master_pid: int | None = None  # the master that forked this worker, if any
        self.restart_note: str | None = None  # what the last reload could not apply
        self.reload_lock = asyncio.Lock()   # reloads (SIGHUP, POST /reload) apply in order
        self._reload_tasks: set[asyncio.Task] = set()

    def _cache_for(self, config: Config) -> WorkerCache | None:
        """The worker cache for config: the current one when its settings did not change."""
        cc = config.cache
        if cc is None:
            return None
        if self.cache is not None and self.cache.config == cc:
            return self.cache
        return WorkerCache(cc)

    def prepare(self) -> None:
        """What start does before binding: connection gate, cache, runtime, listener runtimes.

        Raises StartError when the cache cannot be allocated."""
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.gate = listening.AcceptGate(self.loop, self.config.limits.max_connections)
        self.connections = self.gate.connections
        try:
            self.cache = self._cache_for(self.config)
        except MemoryError:
            size = self.config.cache.size if self.config.cache is not None else 0
            raise StartError(f"cannot allocate the cache ({show_size(size)} per worker): "
                             "out of memory") from None
        self.runtime = Runtime(self.config, self.loop, self.cache, self.counters, self.stats)
        self.listener_rts = [self._listener_runtime(lcfg, index)
                             for index, lcfg in enumerate(self.config.listeners)]

    async def start(self) -> None:
        """Bind every listener; raise StartError (or OSError naming the address) on failure."""
        self.prepare()
        for index, (lcfg, lrt) in enumerate(zip(self.config.listeners, self.listener_rts)):
            socks = self.sockets["listeners"][index] if self.sockets else \
                listening.bind(lcfg.host, lcfg.port)
            await self._bind(lcfg, lrt, socks)
            addr = socks[0].getsockname()
            self.bound.append((lcfg, addr[1]))
            log(f"listening on {format_address(addr[0], addr[1])} ({lcfg.mode})")
        if self.config.admin is not None:
            from fastproxy.admin.server import AdminServer
            from fastproxy.server.adminview import AdminView
            socks = self.sockets["admin"] if self.sockets else None
            if socks is None:
                try:
                    socks = listening.bind(*self.config.admin)
                except OSError as exc:
                    raise OSError(exc.errno, f"admin: {exc.strerror}") from None
            self.admin = AdminServer(AdminView(self, self.master_pid))
            await self.admin.start(socks)

    def _listener_runtime(self, lcfg: ListenerConfig, index: int) -> Any:
        if lcfg.mode == "tcp":
            from fastproxy.tcp import TcpRuntime
            return TcpRuntime(self.runtime, lcfg, self.connections)
        return ListenerRuntime(self.runtime, lcfg, self.connections, index)

    async def _bind(self, lcfg: ListenerConfig, lrt: Any, socks: list) -> None:
        holder = _Holder(lrt)
        lrt.holder = holder
        factory: Callable[[], Any]
        if lcfg.mode == "tcp":
            from fastproxy.tcp import TcpClient
            factory = lambda: TcpClient(holder.current)  # noqa: E731
        else:
            factory = Accepting(holder)
            for sock in socks:   # HTTP clients speak first
                listening.defer_accept(sock, self.config.timeouts.client_header)
        selector = CertSelector(lcfg) if lcfg.tls_cert else None
        self.tls[lrt.holder] = selector
        tls = selector.context if selector is not None else None
        if tls is not None and lcfg.mode != "tcp":
            # HTTP over TLS: the socket is served plain, our compiled driver does TLS
            # (ext/tls.pyx) and picks HTTP/2 or HTTP/1.1 by ALPN after the handshake.
            factory = Terminating(holder, tls, ClientConnection, h2.H2Server)
            tls = None
        for sock in socks:
            # uvloop's TLS layer (tcp listeners) gets the same handshake bound as ours.
            await self.gate.serve(sock, factory, tls, self.config.timeouts.client_header)

    def reload(self, config: Config) -> bool:
        """Switch new connections and the next request of open ones to config.

        False (and nothing changes) when listener addresses or modes differ."""
        old = self.runtime
        cache = self._cache_for(config)
        new_rt = Runtime(config, self.loop, cache, self.counters, self.stats, old)
        # Listening sockets stay as they are: a listener matches when its host, mode and
        # TLS are the same and its port is the bound one (or 0, "whatever it is now").
        same = len(self.bound) == len(config.listeners) and all(
            (b.host, b.mode, b.tls_cert) == (a.host, a.mode, a.tls_cert)
            and b.port in (0, port)
            for (a, port), b in zip(self.bound, config.listeners))
        if not same:
            if cache is not self.cache and cache is not None:
                cache.retire()
            self.loop.create_task(new_rt.aclose())
            log("reload refused: listener addresses or modes changed; restart to apply them")
            return False
        self.runtime = new_rt
        for index, (lrt_old, lcfg) in enumerate(zip(self.listener_rts, config.listeners)):
            new: Any
            if lcfg.mode == "tcp":
                from fastproxy.tcp import TcpRuntime
                new = TcpRuntime(new_rt, lcfg, self.connections)
            else:
                new = ListenerRuntime(new_rt, lcfg, self.connections, index)
                lrt_old.relay.successor = new.relay
            lrt_old.holder.current = new
            new.holder = lrt_old.holder
            selector = self.tls.get(new.holder)
            if selector is not None:
                try:
                    selector.load(lcfg)   # certificates changed on disk: new handshakes
                except (ssl.SSLError, OSError) as exc:
                    log(f"reload: {lcfg.address}: keeping the old certificates: {exc}")
        self.listener_rts = [lrt.holder.current for lrt in self.listener_rts]
        # With a master, the master says it.
        note = process.restart_note(self.config, config) if self.master_pid is None else None
        self.config = config
        self.gate.set_limit(config.limits.max_connections)
        # The start-up generation frozen in run() may now become garbage (its cycles:
        # runtime <-> listeners <-> handlers, maybe a retired cache): collectable again.
        gc.unfreeze()
        errorlog.configure(config.error_log_format)
        if cache is not self.cache and self.cache is not None:
            # Settings changed: the new generation starts empty, and the old store's
            # memory goes when the last connection that may still use it ends.
            self.cache.retire()
        self.cache = cache
        if old is not None:
            self.old_runtimes.append(old)
            self.loop.create_task(old.stop_checks())
            self._move_connections()
            self.loop.call_later(config.timeouts.drain, self._retire, old)
        log(f"reloaded configuration from {config.source}")
        if note is not None:
            log(note)
        self.restart_note = note
        return True

    def _move_connections(self) -> None:
        """A reload applies to the next request of every open connection, as it does in
        nginx (old workers close idle connections at once): HTTP/1.1 connections move to the
        new generation (idle ones now, busy ones once their exchange is done, in the relay),
        HTTP/2 ones get GOAWAY (their settings went out in SETTINGS; the client reconnects).
        Exchanges in flight, tunnels and tcp connections finish on the old generation."""
        for conn in list(self.connections):
            if type(conn) is ClientConnection:
                conn.follow()
            elif type(conn) is h2.H2Server and conn.rt.rt is not self.runtime:
                conn.drain()

    def _retire(self, rt: Runtime) -> None:
        """`drain` seconds after a reload: what still runs on the old generation (a long
        response, a tunnel, a tcp connection) closes once idle.

        Its deadlines keep running until the last of them is gone (so none outlives its
        timeouts); then its groups, deadlines and log close. Not sooner, although open
        connections have moved on at the reload: background work (shadow copies, cache
        refreshes) may still use its pools and HTTP/2 upstream links. A cache only it used
        goes with its last connection (WorkerCache.retire).
        """
        if rt not in self.old_runtimes:
            return
        for conn in [c for c in self.connections if c.rt.rt is rt]:
            conn.drain()
        self.loop.create_task(self._close_when_unused(rt))

    async def _close_when_unused(self, rt: Runtime) -> None:
        while rt in self.old_runtimes and any(c.rt.rt is rt for c in self.connections):
            await asyncio.sleep(0.5)
        if rt in self.old_runtimes:
            self.old_runtimes.remove(rt)
            await rt.aclose()

    async def drain(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the drain timeout)."""
        self.gate.close()
        if self.cache is not None:
            self.cache.close()
        for lrt in self.listener_rts:
            lrt.draining = True
        for conn in list(self.connections):
            conn.drain()
        deadline = time.monotonic() + self.config.timeouts.drain
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # The admin listener stays for the drain: /healthz says 503 to balancers meanwhile.
        if self.admin is not None:
            self.admin.close()
        cut = [conn for conn in self.connections if conn.transport is not None]
        if cut:
            # Said, so that an operator knows the stop cut requests short (their clients
            # saw a close, or a truncated response).
            errorlog.event("warning", "drain.cut", f"drain: {len(cut)} connection(s) still "
                           f"open after {self.config.timeouts.drain:g}s; closed",
                           connections=len(cut))
        for conn in cut:
            conn.transport.abort()
        old, self.old_runtimes = self.old_runtimes, []
        for rt in [self.runtime, *old]:
            await rt.aclose()
        self.gate.release()

    async def run(self) -> int:
        """Serve until a stop signal (SIGTERM, SIGINT, SIGQUIT); reload on SIGHUP. self.ready_fd hears "ready"."""
        await self.start()
        # The ports are bound: privileges can go.
        became = process.drop_privileges(self.config.user, self.config.group)
        if became:
            log(became)
            if self.master_pid is not None:
                process.follow_master(self.master_pid)   # the switch cleared it
        # What starting made (modules, configuration, listeners) lives as long as the
        # worker: frozen out of the collector's reach, a full collection under load scans
        # only what requests made, not the ~23k start-up objects (a ~5 ms pause each time,
        # which showed in the p99 latency at 64 connections). reload() unfreezes them.
        gc.collect()
        gc.freeze()
        alone = self.master_pid is None
        if alone:
            process.sd_notify(f"READY=1\nMAINPID={os.getpid()}")
        if self.ready_fd is not None:
            fd, self.ready_fd = self.ready_fd, None
            os.write(fd, b"ready\n")
            os.close(fd)
        loop = self.loop
        for sig in process.STOP_SIGNALS:
            loop.add_signal_handler(sig, self.stopping.set)
        if self.reload_fn is not None:
            loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        # Held since run_worker began (a SIGHUP from the master while starting would
        # otherwise kill this worker): delivered now, to the handlers above.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, process.HELD_SIGNALS)
        await self.stopping.wait()
        if alone:
            process.sd_notify("STOPPING=1")
        log("draining")
        await self.drain()
        log("stopped")
        return 0

    def reopen_logs(self) -> None:
        """SIGUSR1 (logrotate's convention): every generation's access log starts a new file."""
        reopened = 0
        for rt in [self.runtime, *self.old_runtimes]:
            if rt is not None and rt.access_log is not None and rt.access_log.own_fd:
                try:
                    rt.access_log.reopen()
                    reopened += 1
                except OSError as exc:
                    log(f"reopen logs: {exc.strerror}; still writing to the old file")
        log(f"reopened {reopened} log file{'s' if reopened != 1 else ''}")

    def _on_hup(self) -> None:
        task = self.loop.create_task(self._reload_from_file())
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    async def load_config(self) -> Config:
        """The configuration file, loaded in a thread: reading it resolves upstream names and
        reads certificates, which may take seconds (a slow DNS server) the loop must not lose."""
        assert self.reload_fn is not None
        loop = self.loop
        done: asyncio.Future = loop.create_future()
        reload_fn = self.reload_fn

        def settle(value, exc) -> None:
            if not done.done():
                done.set_exception(exc) if exc is not None else done.set_result(value)

        def load() -> None:
            try:
                config = reload_fn()
            except BaseException as exc:  # handed to the loop, which decides
                loop.call_soon_threadsafe(settle, None, exc)
            else:
                loop.call_soon_threadsafe(settle, config, None)

        # A daemon thread rather than the loop's executor: a lookup that never returns must
        # not hold up the worker's exit.
        threading.Thread(target=load, name="fastproxy-reload", daemon=True).start()
        return await done

    async def _reload_from_file(self) -> None:
        if self.reload_fn is None:
            return
        async with self.reload_lock:
            if self.master_pid is None:
                process.sd_notify(process.reloading_state())
            try:
                try:
                    config = await self.load_config()
                except ConfigError as exc:
                    for line in exc.problems:
                        log(f"reload refused: {line}")
                    return
                except Exception as exc:  # never let a bad file take the running proxy down
                    log(f"reload refused: {exc.__class__.__name__}: {exc}")
                    return
                if not self.stopping.is_set():
                    self.reload(config)
            finally:
                if self.master_pid is None:
                    process.sd_notify("READY=1")


class _Holder:
    """The listener runtime new connections get; swapped on reload."""

    __slots__ = ("current",)

    def __init__(self, lrt) -> None:
        self.current = lrt


def _install_loop() -> None:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class StartError(Exception):
    """A worker cannot start (the reason is the message)."""


def run_worker(config: Config, reload_fn=None, index: int = 0,
               peers_dir: str | None = None, sockets: dict | None = None,
               ready_fd: int | None = None) -> int:
    """Run one worker in this process until it is told to stop.

    With a master, `sockets` are the listening sockets it bound for this worker and
    `ready_fd` a pipe on which the worker says "ready", or "failed REASON" (then the master
    reports the reason); alone, the worker logs the reason itself. 1 when it cannot start.
    """
    # Signals wait until the worker has its handlers (Worker.run); a worker that cannot
    # start exits with them still pending, which is what they asked for anyway.
    signal.pthread_sigmask(signal.SIG_BLOCK, process.HELD_SIGNALS)
    _install_loop()
    worker = Worker(config, reload_fn)
    worker.index = index
    worker.peers_dir = peers_dir
    worker.sockets = sockets
    worker.ready_fd = ready_fd
    worker.master_pid = os.getppid() if sockets is not None else None
    try:
        return asyncio.run(worker.run())
    except (OSError, StartError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    except Exception as exc:   # a bug: the traceback is for the report
        import traceback
        traceback.print_exc()
        reason = f"{exc.__class__.__name__}: {exc}"
    if worker.ready_fd is None:
        log(reason if ready_fd is None else f"worker {index}: {reason}")
    else:
        try:
            os.write(worker.ready_fd, f"failed {reason}\n".encode("utf-8", "replace"))
        except OSError:
            pass
    return 1


def serve(config: Config, reload_fn=None) -> int:
    """Run the configuration: in-process for one worker, else a master with forked workers.

    The pidfile names this process (the master with several workers) while it runs."""
    errorlog.configure(config.error_log_format)
    errorlog.install()
    pidfile = config.pidfile
    if pidfile is not None:
        try:
            process.write_pidfile(pidfile)
        except OSError as exc:
            if pidfile != default_pidfile():
                log(exc.strerror or str(exc))
                return 1
            log(f"{exc.strerror}; going on without one (set pidfile = \"PATH\" or false)")
            pidfile = None
    try:
        if config.workers <= 1:
            return run_worker(config, reload_fn)
        return process.Master(config, reload_fn, run_worker, log).run()
    finally:
        if pidfile is not None:
            process.remove_pidfile(pidfile)
