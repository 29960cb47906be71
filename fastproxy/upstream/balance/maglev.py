"""Maglev consistent hashing with bounded load (policy "maglev").

The same key keeps going to the same server, so upstream caches stay warm; when a server
leaves or joins only about its own share of keys moves (10.3% when one of ten leaves, against
an ideal 10%), and a server that comes back gets exactly its own keys back. With a balance
factor c (default 1.25, as HAProxy's hash-balance-factor and Envoy's hash_balance_factor), a
server holding more than c times its weighted share of the in-flight requests is passed over
for the next server in the key's preference order, so one hot key cannot melt one server.
The table and the pick are compiled (fastproxy._hashing.Maglev).

Slow start does not apply: ramping a weight would rebuild the table at each step, and a
rebuild moves some keys between servers that never left, so their caches would churn for
the whole window; a returning server gets its own keys back at once, and bounded load caps
its share of the requests in flight (the config refuses slow_start with maglev).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastproxy._hashing import MAX_TABLE_SIZE, Maglev


@dataclass(frozen=True)
class MaglevConfig:
    """Knobs of the maglev policy."""

    # Minimum table size; 0 picks one (a prime >= 65,537 and >= 100 entries per server).
    table_size: int = 0
    # Bounded-load factor c >= 1.0, or 0 to turn bounded load off.
    balance_factor: float = 1.25

    def __post_init__(self) -> None:
        if not isinstance(self.table_size, int) or isinstance(self.table_size, bool) or not (
            self.table_size == 0 or 101 <= self.table_size <= MAX_TABLE_SIZE
        ):
            raise ValueError(
                f"table_size: expected 0 (automatic) or an integer from 101 to {MAX_TABLE_SIZE},"
                f" got {self.table_size!r}"
            )
        factor = self.balance_factor
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not (
            factor == 0 or 1.0 <= factor <= 100.0
        ):
            raise ValueError(
                f"balance_factor: expected 0 (off) or a number from 1.0 to 100.0, got {factor!r}"
            )


class MaglevBalancer(Maglev):
    """Consistent-hash balancer: pick(key) with key = the request's 64-bit hash key."""

    __slots__ = ()
    policy = "maglev"
    uses_key = True

    def __init__(self, servers: Sequence = (), config: MaglevConfig | None = None) -> None:
        config = config or MaglevConfig()
        super().__init__(servers, config.table_size, float(config.balance_factor))
