"""Power of two random choices (policy "random2").

Draw two servers at random (by weight) and send to the one with fewer in-flight requests per
weight: nearly the balance of least connections at O(1) per pick, and without the herd
effect of every worker sending to the same least loaded server (Mitzenmacher 2001; Envoy's
least_request and nginx's `random two least_conn`). Keys are ignored. The draw is compiled
(fastproxy._hashing.Random2).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastproxy._hashing import Random2


@dataclass(frozen=True)
class Random2Config:
    """Knobs of the random2 policy."""

    # Seed of the generator; None seeds from os.urandom (tests pass one to be repeatable).
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or self.seed < 0):
            raise ValueError(f"seed: expected a non-negative integer, got {self.seed!r}")


class Random2Balancer(Random2):
    """Two random choices, the less loaded wins; pick() ignores the key."""

    __slots__ = ()
    policy = "random2"
    uses_key = False

    def __init__(self, servers: Sequence = (), config: Random2Config | None = None) -> None:
        config = config or Random2Config()
        super().__init__(servers, config.seed)
