"""Least connections (policy "least_conn"), as nginx's least_conn.

The server with the fewest in-flight requests per unit of weight wins; ties (always the case
when idle) are shared by smooth weighted round robin, so a quiet pool still spreads requests.
In-flight counts are those kept by Balancer.acquire/release. The loop is compiled
(fastproxy._hashing.LeastConn).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastproxy._hashing import LeastConn


@dataclass(frozen=True)
class LeastConnConfig:
    """The least_conn policy has no knobs; weights come from the servers."""


class LeastConnBalancer(LeastConn):
    """Fewest in-flight requests per weight; pick() ignores the key."""

    __slots__ = ()
    policy = "least_conn"
    uses_key = False

    def __init__(self, servers: Sequence = (), config: LeastConnConfig | None = None) -> None:
        super().__init__(servers)
