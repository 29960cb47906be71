"""The worker seen from the admin interface (fastproxy.admin.view.WorkerView)."""
from __future__ import annotations

import os
import signal

from fastproxy import __version__
from fastproxy._tls import counts as tls_counts
from fastproxy.config.load import ConfigError, format_address, listener_label


def server_state(server, ejected: bool, draining: bool) -> str:
    """A server's state in one word, as the status page and /status show it."""
    if draining:
        return "DRAINING"
    if not server.healthy:
        return "DOWN"
    if ejected:
        return "EJECTED"
    return "UP"


class AdminView:
    """Adapts a Worker to WorkerView."""

    def __init__(self, worker, master_pid: int | None) -> None:
        self.worker = worker
        self.master_pid = master_pid
        self.index = worker.index
        self.workers = worker.config.workers
        self.peers_dir = worker.peers_dir

    @property
    def timeouts(self):
        """[timeouts] of the running configuration (reloads change them)."""
        return self.worker.config.timeouts

    @property
    def admin_hosts(self) -> frozenset[bytes]:
        """The admin address's name and `admin_hosts` (reloads change the latter)."""
        config = self.worker.config
        names = list(config.admin_hosts)
        if config.admin is not None:
            names.append(config.admin[0])
        return frozenset(n.lower().rstrip(".").encode("ascii", "replace") for n in names)

    @property
    def draining(self) -> bool:
        """The worker is stopping: in-flight requests finish, no new ones."""
        stopping = self.worker.stopping
        return stopping is not None and stopping.is_set()

    def snapshot(self) -> dict:
        """This worker's numbers."""
        w = self.worker
        c = w.counters
        now = w.loop.time()
        rt = w.runtime
        draining = w.stopping is not None and w.stopping.is_set()
        upstreams: dict = {}
        for name, group in (rt.groups.items() if rt is not None else ()):
            servers = {}
            for server in group.servers:
                pool = group.pools.get(server)
                ejected = server.ejected_until > now
                check = group.health.last_error(server) if group.health is not None else ""
                limit = group.admit(server) if pool is not None else None
                servers[server.name] = {
                    "state": server_state(server, ejected, draining),
                    "active": server.active,
                    "pending": server.pending,
                    "open": getattr(pool, "open", 0),
                    "idle": len(getattr(pool, "idle", ())),
                    "opened": getattr(pool, "opened_total", 0),
                    "failures": server.failures,
                    "ejections": server.ejections,
                    "failures_total": server.failures_total,
                    "ejections_total": server.ejections_total,
                    "healthy": 1 if server.healthy and not ejected else 0,
                    "check": check or ("ok" if group.health is not None else "off"),
                    "breaker": limit or "closed",
                }
            upstreams[name] = servers
        snap = {
            "started": w.started,
            "version": __version__,
            "workers": 1,
            "listeners": {listener_label(lc.name, i): {
                "address": format_address(lc.host, port), "mode": lc.mode}
                for i, (lc, port) in enumerate(w.bound)},
            "connections": len(w.connections),
            "requests": {"total": c.requests, **c.by_class()},
            "bytes": {"sent": c.bytes_sent, "received": c.bytes_received},
            "upstreams": upstreams,
        }
        st = w.stats.snapshot()
        snap["latency"] = {"listeners": st["listeners"], "groups": st["groups"]}
        snap["top_urls"] = st["top_urls"]
        gate = getattr(w, "gate", None)    # set once the worker is prepared
        if gate is not None:
            snap["limits"] = gate.stats()
        if w.cache is not None:
            snap["cache"] = w.cache.stats()
        if any(sel is not None for sel in w.tls.values()):
            snap["tls"] = {"handshakes": tls_counts.snapshot()}
        return snap

    def purge(self, key: bytes, prefix: bool) -> int | None:
        """Drop key (or every key starting with it) from this worker's cache."""
        cache = self.worker.cache
        if cache is None:
            return None
        return cache.purge_prefix(key) if prefix else cache.purge(key)

    async def reload(self) -> tuple[bool, list[str]]:
        """Check the file; when it is good, reload (through the master with several workers)."""
        w = self.worker
        if w.reload_fn is None:
            return False, ["this proxy was started without a reloadable configuration"]
        async with w.reload_lock:   # after a SIGHUP reload in progress, not beside it
            try:
                config = await w.load_config()
            except ConfigError as exc:
                return False, list(exc.problems)
            except OSError as exc:
                return False, [exc.strerror or str(exc)]
            return self._apply(config)

    def _apply(self, config) -> tuple[bool, list[str]]:
        w = self.worker
        if self.master_pid is not None:
            # The master reloads every worker (and remembers the file for new ones).
            os.kill(self.master_pid, signal.SIGHUP)
            return True, [(f"reload of {config.source} sent to the master "
                           f"(pid {self.master_pid})")]
        if not w.reload(config):
            return False, ["listener addresses or modes changed; restart to apply them"]
        done = [f"reloaded configuration from {config.source}"]
        return True, done + [w.restart_note] if w.restart_note is not None else done
