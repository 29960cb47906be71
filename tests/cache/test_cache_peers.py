"""Cache peering: three real fastproxy processes on loopback cache as one fleet.

Each node is `fastproxy serve --peers A,B,C --self X` in front of one counting origin
(tests/origin.py). Clients reach the fleet under one name (Host: www.example), as behind
DNS or an L4 balancer.
"""
from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import signal
import time

import pytest

from fastproxy.cache.peers import PeerRing
from redis_server import free_port
from test_cache_proxy import get as get_any_host
from test_cache_proxy import status_of, u

HOST = {"Host": "www.example"}


def is_hit(r) -> bool:
    """This node's Cache-Status member (the last: the owner's, if any, comes first)."""
    return status_of(r).split(", ")[-1].startswith("fastproxy; hit")


def get(proxy, target: str, headers: dict | None = None):
    return get_any_host(proxy, target, headers={**HOST, **(headers or {})})


@pytest.fixture
def fleet(start_proxy, origin):
    """Factory: n nodes (fastproxy processes) peering with each other."""
    def start(n: int = 3, *extra: str):
        ports = [free_port() for _ in range(n)]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        return [start_proxy("serve", "--mode", "reverse", "--listen", f"127.0.0.1:{port}",
                            "--upstream", origin.url, "--cache", "16MiB",
                            "--peers", ",".join(urls), "--self", url, *extra)
                for port, url in zip(ports, urls)]
    return start


def test_every_url_is_fetched_once_for_the_fleet(fleet, origin):
    nodes = fleet(3)
    targets = [u(f"p{i}", cc="max-age=60") for i in range(30)]
    for node in nodes:
        for t in targets:
            r, body = get(node, t)
            assert r.status == 200 and body.startswith(b"/c/p"), status_of(r)
    assert [origin.count(t) for t in targets] == [1] * 30
    # Each node now also holds what it asked for: a local hit, no peer round trip.
    for node in nodes:
        assert all(is_hit(get(node, t)[0]) for t in targets[:5])


def test_a_request_from_a_peer_is_never_forwarded_again(fleet, origin):
    a, b, c = fleet(3)
    # With the hop field, whichever node it reaches fetches it itself.
    for i, node in enumerate((a, b, c)):
        t = u(f"hop{i}", cc="max-age=60")
        r, _ = get(node, t, {"Fastproxy-Hop": "http://127.0.0.1:1"})
        assert r.status == 200 and origin.count(t) == 1
    # Peers' requests reach the origin without the fleet-internal field.
    t = u("hop-other", cc="max-age=60")
    names = [f"127.0.0.1:{n.port}" for n in (a, b, c)]
    owner = PeerRing(names[0], _Group(names[1:]), _Loop()).owner_name(
        b"http://www.example" + t.encode())
    asker = next(n for n, name in zip((a, b, c), names) if name != owner)
    r, _ = get(asker, t)
    assert r.status == 200 and origin.count(t) == 1
    assert "fwd=" in status_of(r).split(", ")[0]    # the owner's member: it went upstream
    assert not any(n.lower() == b"fastproxy-hop" for _, _, headers in origin.requests
                   for n, _ in headers)


def test_concurrent_misses_on_three_nodes_make_one_origin_request(fleet, origin):
    nodes = fleet(3)
    t = u("herd", cc="max-age=60", delay="0.5")
    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        results = list(pool.map(lambda i: get(nodes[i % 3], t), range(100)))
    assert {r.status for r, _ in results} == {200}
    assert {body for _, body in results} == {b"/c/herd #1\n"}
    assert origin.count(t) == 1


def test_a_killed_node_costs_no_client_error_and_only_its_share(fleet, origin):
    a, b, c = fleet(3)
    targets = [u(f"k{i}", cc="max-age=60") for i in range(30)]
    for t in targets:
        assert get(a, t)[0].status == 200
    c.proc.send_signal(signal.SIGKILL)
    c.proc.wait(5)
    statuses = []
    for node in (a, b):
        for t in targets:
            statuses.append(get(node, t)[0].status)
    assert statuses == [200] * 60
    # Only the dead node's keys were fetched again; the others stay at one fetch.
    refetched = [t for t in targets if origin.count(t) > 1]
    assert len(refetched) < len(targets) // 2 + 3, refetched
    assert all(origin.count(t) <= 3 for t in targets)


def test_peer_fetch_latency_against_a_local_hit(fleet, origin):
    # Not a speed assertion: both paths answer, and the peer path really crossed nodes.
    a, b, _ = fleet(3)
    t = u("lat", cc="max-age=60")
    get(b, t)
    r, _ = get(a, t)
    assert r.status == 200 and origin.count(t) == 1


class _Group:
    def __init__(self, names):
        self.servers = [_Peer(n) for n in names]


class _Peer:
    def __init__(self, name):
        self.name, self.weight, self.active = name, 1, 0
        self.healthy, self.ejected_until = True, 0.0
        self.host = "192.0.2.1"     # the address PeerRing trusts hops from (TEST-NET-1)


class _Loop:
    def time(self):
        return time.monotonic()


def test_a_node_joining_moves_only_its_own_keys():
    keys = [b"http://www.example/obj/%d" % i for i in range(20000)]
    before = PeerRing("n0", _Group(["n1", "n2"]), _Loop())
    after = PeerRing("n0", _Group(["n1", "n2", "n3"]), _Loop())
    moved = [k for k in keys if before.owner_name(k) != after.owner_name(k)]
    assert 0.2 < len(moved) / len(keys) < 0.3      # about a quarter: n3's share
    # Maglev trades perfect stability for balance: a few table slots change hands between
    # the old nodes too (0.07% of keys here; the Maglev paper's "minimal disruption").
    elsewhere = [k for k in moved if after.owner_name(k) != "n3"]
    assert len(elsewhere) < len(keys) // 200


def test_an_ejected_peer_hands_its_keys_to_the_next_choice():
    group = _Group(["n1", "n2"])
    ring = PeerRing("n0", group, _Loop())
    keys = [b"k%d" % i for i in range(3000)]
    owners = {k: ring.owner(k) for k in keys}
    group.servers[0].ejected_until = time.monotonic() + 60
    for k in keys:
        now = ring.owner(k)
        if owners[k] is not group.servers[0]:
            assert now is owners[k]          # nobody else's keys move
        else:
            assert now is not group.servers[0]


def test_a_node_added_on_reload_takes_only_its_keys(start_proxy, origin, tmp_path):
    ports = [free_port() for _ in range(3)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]

    def write(i: int, peers: list[str]) -> str:
        path = tmp_path / f"node{i}.toml"
        path.write_text(f"""
[cache]
size = "16MiB"

[cluster]
peers = {peers!r}
self = "{urls[i]}"

[upstreams.o]
servers = ["{origin.url}"]

[[listeners]]
listen = "127.0.0.1:{ports[i]}"
mode = "reverse"
upstream = "o"
""".replace("'", '"'))
        return str(path)

    a = start_proxy("serve", "--config", write(0, urls[:2]))
    b = start_proxy("serve", "--config", write(1, urls[:2]))
    targets = [u(f"r{i}", cc="max-age=60") for i in range(60)]
    for t in targets:
        assert get(a, t)[0].status == 200
    start_proxy("serve", "--config", write(2, urls))
    for node, i in ((a, 0), (b, 1)):
        write(i, urls)
        node.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not all(any("reloaded configuration" in line for line in n.stderr_lines)
                  for n in (a, b)):
        assert time.monotonic() < deadline, "no reload"
        time.sleep(0.05)
    for t in targets:          # through B, which holds only the keys it owned
        assert get(b, t)[0].status == 200
    names = [f"127.0.0.1:{p}" for p in ports]
    ring = PeerRing(names[1], _Group([names[0], names[2]]), _Loop())
    new_owner = {t: ring.owner_name(b"http://www.example" + t.encode()) for t in targets}
    refetched = [t for t in targets if origin.count(t) > 1]
    assert refetched and len(refetched) < 35, refetched
    assert all(new_owner[t] == names[2] for t in refetched), (refetched, new_owner)


@pytest.mark.parametrize("flags, message", [
    (["--peers", "http://127.0.0.1:8001,http://127.0.0.1:8002", "--self", "http://127.0.0.1:9"],
     "--self http://127.0.0.1:9: 127.0.0.1:9 is not one of cluster.peers"),
    (["--peers", "http://127.0.0.1:8001"], "cluster.self: required with peers"),
    (["--self", "http://127.0.0.1:8001"], "cluster.peers: required with self"),
    (["--peers", "http://127.0.0.1:8001,https://127.0.0.1:8002", "--self", "http://127.0.0.1:8001"],
     "--peers http://127.0.0.1:8001,https://127.0.0.1:8002: a peer is an http:// URL"),
    (["--peers", "http://127.0.0.1:8001,http://127.0.0.1:8001", "--self", "http://127.0.0.1:8001"],
     "--peers http://127.0.0.1:8001,http://127.0.0.1:8001: a peer is listed twice"),
])
def test_bad_cluster_settings_are_one_line(flags, message):
    out = subprocess.run([sys.executable, "-m", "fastproxy", "check", "--mode", "reverse",
                          "--listen", "127.0.0.1:8001", "--upstream", "http://127.0.0.1:9",
                          *flags], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
