"""Balancing: choose the upstream server of each request, one module per policy.

Policies: `maglev` (consistent hashing with bounded load, the default), `round_robin`
(smooth weighted), `least_conn`, `random2` (power of two choices). Each is a `Balancer`:

- `pick(key=0, exclude=()) -> Server | None`: the server for one attempt. `key` is the
  request's 64-bit hash key from `make_key_fn` (only policies with `uses_key` read it; pass 0
  to the others); `exclude` holds servers this request already tried. None: nothing eligible.
- `acquire(server)` / `release(server)`: one request sent to / finished at `server`. They keep
  `server.active` and the pool's total in step (bounded load, least_conn and random2 read
  them), so use them instead of changing `server.active` directly.
- `max_active`: a per-server cap on requests in flight (0: none). `pick_open(key, exclude)`
  is pick() passing over a server at the cap for the policy's next choice (the next server
  in the key's preference order for maglev); it returns the capped first choice only when
  every server is full. pick() itself ignores the cap (the relay's fast path checks it).
- `ramp(server, share)`: slow start, the server gets `share` (0 to 1) of its weight; 1 ends
  it. Maglev refuses (see maglev.py).
- `update(servers)`: the eligible set changed (health verdict, ejection, membership). Pass
  the servers that may take traffic (see `eligible_servers`); state of survivors is kept.
- `servers` (eligible, sorted by name), `len(b)`, `in_flight()`, `total_active`.

The loops are compiled (fastproxy._hashing); a pick costs tens of nanoseconds from Python.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from fastproxy._hashing import Core as Balancer

from .keys import make_key_fn, parse_key_spec
from .least_conn import LeastConnBalancer, LeastConnConfig
from .maglev import MaglevBalancer, MaglevConfig
from .random2 import Random2Balancer, Random2Config
from .round_robin import RoundRobinBalancer, RoundRobinConfig

__all__ = [
    "Balancer", "POLICIES", "DEFAULT_POLICY", "make_balancer", "make_key_fn",
    "parse_key_spec", "eligible_servers", "MaglevBalancer", "RoundRobinBalancer",
    "LeastConnBalancer", "Random2Balancer",
]

# policy name -> (balancer class, its config dataclass)
POLICIES: dict[str, tuple[type, type]] = {
    "maglev": (MaglevBalancer, MaglevConfig),
    "round_robin": (RoundRobinBalancer, RoundRobinConfig),
    "least_conn": (LeastConnBalancer, LeastConnConfig),
    "random2": (Random2Balancer, Random2Config),
}
DEFAULT_POLICY = "maglev"


def make_balancer(policy: str, servers: Sequence = (), **opts) -> Balancer:
    """Return a balancer of `policy` over `servers`; opts are that policy's config fields."""
    try:
        cls, config_cls = POLICIES[policy]
    except (KeyError, TypeError):
        raise ValueError(
            f"balance: unknown policy {policy!r}, expected one of {', '.join(POLICIES)}"
        ) from None
    known = {f.name for f in dataclasses.fields(config_cls)}
    for name in opts:
        if name not in known:
            takes = ", ".join(sorted(known)) or "no options"
            raise ValueError(f"{name}: not an option of balance policy {policy!r} (it takes {takes})")
    return cls(servers, config_cls(**opts))


def eligible_servers(servers: Iterable, now: float) -> list:
    """Return the servers that may take traffic: healthy and not ejected at loop time `now`."""
    return [s for s in servers if s.healthy and s.ejected_until <= now]
