"""The shared cache tier on a real redis-server, between two real fastproxy processes.

Node A fetches and stores; node B, with an empty local cache, answers from Redis; the
origin (tests/origin.py) counts what reaches it. Redis paused or stopped mid-run must
cost the clients nothing but the origin requests it would have saved.
"""
from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import time

import pytest

from test_cache_proxy import get as get_any_host
from test_cache_proxy import admin, is_hit, status_of, u

HOST = {"Host": "www.example"}   # the fleet's one name, whichever node a client reaches


def get(proxy, target: str, headers: dict | None = None):
    return get_any_host(proxy, target, headers={**HOST, **(headers or {})})


@pytest.fixture
def node(start_proxy, origin, tmp_path):
    """Factory: a reverse proxy with a local cache and the shared tier on `url`."""
    count = [0]

    def start(url: str, shared: str = "", admin: bool = False, cache: str = ""):
        count[0] += 1
        path = tmp_path / f"node{count[0]}.toml"
        path.write_text(f"""
[cache]
size = "16MiB"
{cache}

[cache.shared]
url = "{url}"
timeout = "200ms"
retry = "1s"
{shared}

[upstreams.o]
servers = ["{origin.url}"]

[[listeners]]
listen = "127.0.0.1:0"
mode = "reverse"
upstream = "o"
""")
        if admin:
            return start_proxy("serve", "--config", str(path), "--admin", "127.0.0.1:0",
                               listeners=2)
        return start_proxy("serve", "--config", str(path))
    return start


def wait_for_key(redis_server, pattern: bytes, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = redis_server.command(b"KEYS", pattern)
        if reply is not None and reply != b"*0":
            return
        time.sleep(0.02)
    raise AssertionError(f"no key {pattern!r} in Redis")


def test_a_second_node_answers_from_the_shared_tier(node, origin, redis_server):
    a = node(redis_server.url)
    b = node(redis_server.url, admin=True)
    t = u("shared1", cc="max-age=60")
    r1, body1 = get(a, t)
    assert "stored" in status_of(r1)
    wait_for_key(redis_server, b"fastproxy:*shared1*")
    r2, body2 = get(b, t)
    assert body2 == body1 and is_hit(r2), status_of(r2)
    assert int(r2.getheader("Age")) >= 0 and r2.getheader("Date") == r1.getheader("Date")
    r3, _ = get(b, t)                 # now in B's own cache as well
    assert is_hit(r3)
    assert origin.count(t) == 1
    _, metrics = admin(b.admin_port(), "GET", "/metrics")
    assert b"fastproxy_cache_shared_hits_total 1" in metrics or \
        b"cache_shared_hits_total 1" in metrics, metrics[-1500:]


def test_the_redis_ttl_follows_freshness(node, origin, redis_server):
    a = node(redis_server.url, cache='keep_stale = "0s"')   # else 60 s more, for max-stale
    get(a, u("shared2", cc="max-age=30"))
    wait_for_key(redis_server, b"fastproxy:*shared2*")
    keys = subprocess.run(["redis-cli", "-p", str(redis_server.port), "--raw", "KEYS", "*shared2*"],
                          capture_output=True, timeout=10, check=False)
    if keys.returncode != 0:
        pytest.skip("redis-cli is not installed (Debian package redis-tools)")
    key = keys.stdout.strip()
    ttl = int(redis_server.command(b"TTL", key)[1:])
    assert 25 <= ttl <= 30


def test_uncacheable_and_oversize_responses_are_not_shared(node, origin, redis_server):
    a = node(redis_server.url, 'max_object_size = "1KiB"')
    get(a, u("shared3", cc="no-store"))
    get(a, u("shared5", cc="max-age=60", size="4096"))
    get(a, u("shared6", cc="max-age=60"))
    wait_for_key(redis_server, b"fastproxy:*shared6*")
    for name in (b"shared3", b"shared5"):
        assert redis_server.command(b"KEYS", b"*" + name + b"*") == b"*0", name


def test_redis_down_or_slow_is_never_a_client_error(node, origin, redis_server):
    a = node(redis_server.url)
    b = node(redis_server.url)

    def burst(tag: str, n: int = 20) -> list[int]:
        targets = [u(f"{tag}{i}", cc="max-age=60") for i in range(n)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            return [r.status for proxy in (a, b)
                    for r, _ in pool.map(lambda t, p=proxy: get(p, t), targets)]

    assert set(burst("up")) == {200}
    redis_server.pause()              # slow: every operation times out
    t0 = time.monotonic()
    assert set(burst("paused")) == {200}
    assert time.monotonic() - t0 < 8
    redis_server.stop()               # down: connections refused
    assert set(burst("down")) == {200}
    # Without the tier, each node went to the origin for each URL.
    assert origin.count(u("down0", cc="max-age=60")) == 2


def test_bad_shared_settings_are_one_line_each(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[cache]\nsize = "16MiB"\n[cache.shared]\nurl = "http://x"\n'
                    'timeout = "soon"\nbogus = 1\n')
    out = subprocess.run([sys.executable, "-m", "fastproxy", "check", "--config", str(path)],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    for key in ("cache.shared.url", "cache.shared.timeout", "cache.shared.bogus"):
        assert key in out.stderr, out.stderr


def test_vary_variants_are_shared_with_their_stub(node, origin, redis_server):
    a = node(redis_server.url)
    b = node(redis_server.url)
    t = u("shared7", cc="max-age=60", vary="Accept")
    _, body_a = get(a, t, {"Accept": "text/a"})
    _, body_b = get(a, t, {"Accept": "text/b"})
    assert origin.count(t) == 2 and body_a != body_b
    deadline = time.monotonic() + 5
    while redis_server.command(b"KEYS", b"*shared7*") not in (b"*3",):
        assert time.monotonic() < deadline, redis_server.command(b"KEYS", b"*shared7*")
        time.sleep(0.02)
    r, body = get(b, t, {"Accept": "text/b"})          # stub and variant from Redis
    assert is_hit(r) and body == body_b, status_of(r)
    r, body = get(b, t, {"Accept": "text/a"})          # the local stub, the variant from Redis
    assert is_hit(r) and body == body_a, status_of(r)
    r, _ = get(b, t, {"Accept": "text/c"})             # no such variant anywhere
    assert not is_hit(r) and origin.count(t) == 3
