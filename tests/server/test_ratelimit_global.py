"""Fleet-wide rate limits: two real fastproxy nodes sharing token buckets in a real Redis.

`[listeners.rate_limit] backend = "redis://..."`: one bucket per key for the whole fleet;
with Redis gone, each node falls back to its own bucket (never an error for the client).
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from test_cache_proxy import get


@pytest.fixture
def limited(start_proxy, origin, tmp_path):
    """Factory: a reverse node allowing 4 requests at once, 0.5/s after, per client."""
    count = [0]

    def start(backend: str):
        count[0] += 1
        path = tmp_path / f"rl{count[0]}.toml"
        path.write_text(f"""
[upstreams.o]
servers = ["{origin.url}"]

[[listeners]]
listen = "127.0.0.1:0"
mode = "reverse"
upstream = "o"

[listeners.rate_limit]
rate = 0.5
burst = 4
backend = "{backend}"
backend_timeout = 0.2
""")
        return start_proxy("serve", "--config", str(path))
    return start


def statuses(nodes, n: int) -> list[int]:
    return [get(nodes[i % len(nodes)], "/size/1")[0].status for i in range(n)]


def test_two_nodes_share_one_bucket(limited, redis_server):
    a = limited(redis_server.url)
    b = limited(redis_server.url)
    got = statuses([a, b], 10)
    # One bucket of 4 for the fleet (two local buckets would have let 8 through).
    assert got.count(200) == 4 and got.count(429) == 6, got
    r, _ = get(a, "/size/1")
    assert r.status == 429 and int(r.getheader("Retry-After")) >= 1


def test_redis_unreachable_falls_back_to_local_buckets(limited, redis_server):
    a = limited(redis_server.url)
    b = limited(redis_server.url)
    redis_server.stop()
    got = statuses([a, b], 10)
    # Each node's own bucket of 4: limits loosen to per node, and nothing else fails.
    assert got.count(200) == 8 and got.count(429) == 2, got


def test_redis_paused_costs_at_most_the_timeout(limited, redis_server):
    a = limited(redis_server.url)
    redis_server.pause()
    got = statuses([a], 6)
    assert got.count(200) == 4 and set(got) == {200, 429}, got


def test_a_bad_backend_is_one_line(tmp_path, origin):
    path = tmp_path / "bad.toml"
    path.write_text(f"""
[upstreams.o]
servers = ["{origin.url}"]
[[listeners]]
listen = "127.0.0.1:0"
mode = "reverse"
upstream = "o"
[listeners.rate_limit]
rate = 1
backend = "http://x"
""")
    out = subprocess.run([sys.executable, "-m", "fastproxy", "check", "--config", str(path)],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "listeners[0].rate_limit.backend" in out.stderr, out.stderr
