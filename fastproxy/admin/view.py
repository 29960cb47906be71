"""What the admin interface needs from the worker it runs in (implemented in server/)."""
from __future__ import annotations

from typing import Any, Protocol


class WorkerView(Protocol):
    """The worker as the admin interface sees it."""

    index: int                 # this worker's number (0 .. workers-1)
    workers: int               # how many workers the configuration runs
    peers_dir: str | None      # where the siblings' admin sockets are (workers > 1)

    @property
    def timeouts(self) -> Any:
        """[timeouts] of the running configuration (client_header, client_idle, ...)."""

    @property
    def admin_hosts(self) -> frozenset[bytes]:
        """Host names (lowercase) the admin interface answers to besides IP literals and
        localhost: the admin address's own name and the `admin_hosts` setting."""

    @property
    def draining(self) -> bool:
        """The worker is stopping (SIGTERM/SIGINT): in-flight requests finish, no new ones."""

    def snapshot(self) -> dict:
        """This worker's numbers (the /status document before merging)."""

    def purge(self, key: bytes, prefix: bool) -> int | None:
        """Drop a cache key (or every key with that prefix); None when there is no cache."""

    async def reload(self) -> tuple[bool, list[str]]:
        """Reload the configuration file: (accepted, problems or what happened)."""
