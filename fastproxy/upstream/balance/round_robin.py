"""Smooth weighted round robin (policy "round_robin"), as nginx's default balancer.

Weights 5, 1, 1 give the order a a b a c a a rather than a a a a a b c: the heavy server's
turns are spread out, so a burst does not land on it all at once. Keys are ignored. The
loop is compiled (fastproxy._hashing.SmoothWeightedRoundRobin).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastproxy._hashing import SmoothWeightedRoundRobin


@dataclass(frozen=True)
class RoundRobinConfig:
    """The round_robin policy has no knobs; weights come from the servers."""


class RoundRobinBalancer(SmoothWeightedRoundRobin):
    """Smooth weighted round robin over the eligible servers; pick() ignores the key."""

    __slots__ = ()
    policy = "round_robin"
    uses_key = False

    def __init__(self, servers: Sequence = (), config: RoundRobinConfig | None = None) -> None:
        super().__init__(servers)
