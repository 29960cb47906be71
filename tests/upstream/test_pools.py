"""Upstream pools through the proxy: balancing, stickiness, failure, recovery, breakers, TCP."""
from __future__ import annotations

import collections
import socket
import threading
import time

import pytest

from conftest import reverse_config
from origin import Origin
from wire import Conn, crlf, request


@pytest.fixture
def origins():
    servers = [Origin().start() for _ in range(3)]
    yield servers
    for s in servers:
        try:
            s.stop()
        except Exception:  # already stopped by the test
            pass


def pool(servers, **group) -> dict:
    """A reverse listener to group "app" of `servers` (origins or URLs) with `group` settings."""
    cfg = reverse_config(*(getattr(s, "url", s) for s in servers))
    cfg["upstreams"]["app"].update(group)
    return cfg


def who(port: int, path: str = "/size/1", conn: Conn | None = None) -> tuple[int, str]:
    raw = crlf(f"GET {path} HTTP/1.1\nHost: x\n\n")
    if conn is not None:
        conn.send(raw)
        r = conn.response()
    else:
        r = request(port, raw)
    return r.status, r.getheader("X-Origin")


def test_round_robin_spreads_by_weight(run_proxy, origins):
    a, b, c = origins
    p = run_proxy(pool([a.url, f"{b.url}#weight=2", c.url]))
    counts = collections.Counter()
    with Conn(p.port) as conn:
        for _ in range(400):
            status, origin = who(p.port, conn=conn)
            assert status == 200
            counts[origin] += 1
    assert counts[str(b.port)] == 200
    assert counts[str(a.port)] == counts[str(c.port)] == 100


@pytest.mark.parametrize("policy", ["least_conn", "random2"])
def test_other_policies_use_every_server(run_proxy, origins, policy):
    p = run_proxy(pool(origins, balance=policy))
    seen = collections.Counter(who(p.port)[1] for _ in range(60))
    assert set(seen) == {str(o.port) for o in origins}


def test_maglev_keeps_a_path_on_one_server(run_proxy, origins):
    p = run_proxy(pool(origins, balance="maglev", hash_key="uri"))
    owners = {}
    with Conn(p.port) as conn:
        for rnd in range(3):
            for i in range(60):
                status, origin = who(p.port, f"/size/1?item={i}", conn)
                assert status == 200
                owners.setdefault(i, origin)
                assert owners[i] == origin, "a key moved between rounds"
    assert len(set(owners.values())) == 3  # the 60 keys spread over all servers


def test_maglev_header_key_with_fallback(run_proxy, origins):
    p = run_proxy(pool(origins, balance="maglev", hash_key="header:X-User"))
    for user in ("alice", "bob", "carol"):
        raw = crlf(f"GET /size/1?r={{}} HTTP/1.1\nHost: x\nX-User: {user}\n\n")
        seen = {request(p.port, raw.replace(b"{}", str(i).encode())).getheader("X-Origin")
                for i in range(10)}
        assert len(seen) == 1  # one user, one server, whatever the path


def test_dead_server_is_invisible_to_clients(run_proxy, origins):
    a, b, c = origins
    p = run_proxy(pool(origins, balance="maglev", hash_key="uri", outlier={
        "consecutive_failures": 2, "base_ejection": "30s", "max_ejection_percent": 50}))
    paths = [f"/size/1?k={i}" for i in range(60)]
    before = {path: who(p.port, path)[1] for path in paths}
    dead = str(b.port)
    b.stop()  # killed: refuses connections from now on
    # Held, not listening: another test's origin starting meanwhile cannot take the port
    # and answer for the dead server (connects to a bound, unlistening port are refused).
    hold = socket.socket()
    hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hold.bind(("127.0.0.1", b.port))
    with hold, Conn(p.port) as conn:
        for _ in range(2):
            for path in paths:
                status, origin = who(p.port, path, conn)
                assert status == 200, path  # retried on another server, never an error
                assert origin != dead
                if before[path] != dead:
                    assert origin == before[path], "a live server's key moved"


def test_ejected_server_returns_with_its_own_keys(run_proxy, origins):
    a, b, c = origins
    p = run_proxy(pool(origins, balance="maglev", hash_key="uri", outlier={
        "consecutive_failures": 1, "base_ejection": "1s", "max_ejection": "1s",
        "max_ejection_percent": 50}))
    paths = [f"/size/1?k={i}" for i in range(40)]
    before = {path: who(p.port, path)[1] for path in paths}
    port_b = b.port
    b.stop()
    for path in paths:
        assert who(p.port, path)[0] == 200
    revived = Origin(port=port_b).start()
    try:
        time.sleep(1.5)  # the ejection ends; the server is eligible again
        after = {path: who(p.port, path)[1] for path in paths}
        assert after == before
    finally:
        revived.stop()


def test_active_health_check_takes_server_out_and_back(run_proxy, origins):
    a, b, c = origins
    p = run_proxy(pool(origins, health={"path": "/health", "interval": "0.1s", "timeout": "0.5s",
                                        "rise": 1, "fall": 1}))
    b.health_status = 503
    time.sleep(0.6)
    seen = collections.Counter(who(p.port)[1] for _ in range(30))
    assert str(b.port) not in seen and len(seen) == 2
    b.health_status = 200
    time.sleep(0.6)
    seen = collections.Counter(who(p.port)[1] for _ in range(30))
    assert str(b.port) in seen


def test_all_servers_down_is_503(run_proxy, origins):
    p = run_proxy(pool(origins[:1], health={"path": "/health", "interval": "0.1s",
                                            "rise": 1, "fall": 1}))
    origins[0].health_status = 500
    time.sleep(0.5)
    r = request(p.port, crlf("GET / HTTP/1.1\nHost: x\n\n"))
    assert r.status == 503 and b"no available server" in r.body


def test_circuit_breaker_fails_fast_and_closes(run_proxy, origins):
    p = run_proxy(pool(origins[:1], breaker={"max_requests": 2}))
    slow = [Conn(p.port) for _ in range(2)]
    try:
        for c in slow:
            c.send(crlf("GET /slow/1 HTTP/1.1\nHost: x\n\n"))
        time.sleep(0.3)
        r = request(p.port, crlf("GET /size/1 HTTP/1.1\nHost: x\n\n"))
        assert r.status == 503
        assert b"max_requests" in r.body
        for c in slow:
            assert c.response().status == 200
    finally:
        for c in slow:
            c.close()
    assert request(p.port, crlf("GET /size/1 HTTP/1.1\nHost: x\n\n")).status == 200


def test_retry_budget_caps_retries(run_proxy):
    # Three servers that accept and close at once (a reset before any response byte).
    # GETs are retried on other servers, but the budget (no ratio, a floor of 0.5 retries
    # per second over a 10 s window = 5 retries) keeps retries from multiplying the load.
    accepted = collections.Counter()
    socks = []
    stop = threading.Event()

    def serve(s):
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = s.accept()
            except socket.timeout:
                continue
            except OSError:  # closed at the end of the test
                return
            accepted[s.getsockname()[1]] += 1
            c.recv(4096)
            c.close()

    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        socks.append(s)
        threading.Thread(target=serve, args=(s,), daemon=True).start()
    servers = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in socks]
    try:
        p = run_proxy(pool(servers, outlier={"consecutive_failures": 0}, retry={
            "retries": 2, "budget_ratio": 0.0, "min_retries_per_second": 0.5,
            "budget_window": "10s"}))
        for _ in range(20):
            assert request(p.port, crlf("GET / HTTP/1.1\nHost: x\n\n")).status == 502
        attempts = sum(accepted.values())
        assert 20 < attempts <= 25, attempts  # without the budget it would be 60
    finally:
        stop.set()
        for s in socks:
            s.close()


def test_tcp_mode_echo_and_half_close(start_proxy, tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def serve():
        for _ in range(2):
            s, _ = srv.accept()
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.sendall(data.upper())
            s.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    p = start_proxy("serve", "--mode", "tcp", "--listen", "127.0.0.1:0",
                    "--upstream", f"tcp://127.0.0.1:{port}")
    for payload in (b"hello tcp", b"x" * 300000):
        s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # half-close: the answer must still come back
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        assert got == payload.upper()
        s.close()
    srv.close()


def test_tcp_mode_skips_refusing_server(start_proxy, tmp_path):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def serve():
        for _ in range(3):
            s, _ = srv.accept()
            s.sendall(b"banner\n")
            s.close()

    threading.Thread(target=serve, daemon=True).start()
    p = start_proxy("serve", "--mode", "tcp", "--listen", "127.0.0.1:0",
                    "--upstream", f"tcp://127.0.0.1:{dead_port}",
                    "--upstream", f"tcp://127.0.0.1:{port}")
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        assert s.recv(100) == b"banner\n"
        s.close()
    srv.close()
