"""`--workers N`: how client connections spread over the workers' SO_REUSEPORT sockets.

Round-robin (the default, fastproxy.server.reuseport): an eBPF program attached to each
listener's group hands the k-th new connection to socket k mod N, so every batch of N*m
connections lands exactly m on each worker, also after a worker was replaced, and per
listener (one counter each: connections alternating between two listeners still spread).

Hash (`reuseport_balance = "hash"`, or round-robin refused: no bpf(2) permission): the
kernel picks a socket by a keyed hash of each connection's addresses, so a batch of 64 over
2 workers splits like coin tosses (exactly 32/32 in about 1 batch of 10). What is
deterministic enough to assert: every batch reaches both workers (2^-63 odds otherwise),
over 32 batches the totals stay within 1.2x (a 4-sigma bound), and not all 32 batches are
exactly even (odds 0.1^32 under the hash: it would mean round-robin ran anyway).

Real `fastproxy serve --workers N`, real sockets; who holds which connection is read from
/proc (the workers are the master's children).
"""
from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fastproxy.testing import Proxy

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux only)")

BATCH = 64
BATCHES = 32
GET = b"GET /size/1 HTTP/1.1\r\nHost: x\r\n\r\n"
REFUSED = "reuseport_balance: round-robin unavailable"


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _established(port: int) -> set[int]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(f[9]))
    return inodes


def _held(pid: int, inodes: set[int]) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            n += 1
    return n


def _answer(sock: socket.socket) -> None:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data


def _batch(addresses: list[tuple[str, int]], n: int, workers: list[int]) -> list[dict[int, int]]:
    """Open n connections one after the other (cycling over addresses), each answered and
    kept open; how many of each address's connections every worker holds."""
    batch = []
    try:
        for i in range(n):
            batch.append(socket.create_connection(addresses[i % len(addresses)]))
            batch[-1].sendall(GET)
        for s in batch:
            _answer(s)   # answered: a worker accepted it and holds it (kept alive)
        out = []
        for _, port in addresses:
            inodes = _established(port)
            counts = {w: _held(w, inodes) for w in workers}
            assert sum(counts.values()) == n // len(addresses), counts
            out.append(counts)
        return out
    finally:
        for s in batch:
            s.close()


def _serve(start_proxy, origin, workers: int, *extra: str) -> tuple[Proxy, list[int]]:
    p = start_proxy("serve", "--listen", "127.0.0.1:0", "--upstream", origin.url,
                    "--workers", str(workers), *extra, listeners=workers)
    kids = _children(p.proc.pid)
    assert len(kids) == workers, kids
    return p, kids


def _assert_hash_spread(p: Proxy, workers: list[int]) -> None:
    totals = dict.fromkeys(workers, 0)
    exact = 0
    for _ in range(BATCHES):
        (counts,) = _batch([("127.0.0.1", p.port)], BATCH, workers)
        assert min(counts.values()) > 0, counts
        exact += len(set(counts.values())) == 1
        for w, n in counts.items():
            totals[w] += n
    assert max(totals.values()) / min(totals.values()) < 1.2, totals
    assert exact < BATCHES, "every batch split exactly evenly: round-robin, not the hash"


@pytest.mark.parametrize("workers,n", [(2, 64), (3, 63)])
def test_round_robin_lands_every_batch_exactly_evenly(start_proxy, origin, workers, n):
    p, kids = _serve(start_proxy, origin, workers)
    for _ in range(4):
        (counts,) = _batch([("127.0.0.1", p.port)], n, kids)
        assert sorted(counts.values()) == [n // workers] * workers, counts
    assert not any(REFUSED in line for line in p.stderr_lines), p.stderr_lines
    assert any(f"master: {workers} workers (new connections: round-robin)" in line
               for line in p.stderr_lines), p.stderr_lines


def test_round_robin_holds_after_a_worker_is_replaced(start_proxy, origin):
    p, kids = _serve(start_proxy, origin, 2)
    (counts,) = _batch([("127.0.0.1", p.port)], BATCH, kids)
    assert sorted(counts.values()) == [32, 32], counts
    time.sleep(0.5)   # both serve, so both said "ready" (a worker lost before that ends all)
    os.kill(kids[0], signal.SIGKILL)
    # The replacement says "listening on" once bound and serving.
    deadline = time.monotonic() + 15
    while len(p.addresses) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(p.addresses) == 3, p.stderr_lines
    now = _children(p.proc.pid)
    assert len(now) == 2 and kids[0] not in now, (kids, now)
    for _ in range(3):
        (counts,) = _batch([("127.0.0.1", p.port)], BATCH, now)
        assert sorted(counts.values()) == [32, 32], counts


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_each_listener_counts_for_itself(run_proxy, origin):
    """Connections alternating between two listeners (IPv4 and IPv6 where the machine has
    ::1): with one counter for both, each listener's would all reach the same worker. A tcp
    listener is balanced as well."""
    second = "[::1]:0" if _ipv6() else "127.0.0.1:0"
    tcp_url = "tcp://" + origin.url.split("://", 1)[1].rstrip("/")
    config = {"workers": 2,
              "listeners": [{"listen": "127.0.0.1:0", "upstream": "app"},
                            {"listen": second, "upstream": "app"},
                            {"listen": "127.0.0.1:0", "mode": "tcp", "upstream": "raw"}],
              "upstreams": {"app": {"servers": [origin.url]}, "raw": {"servers": [tcp_url]}}}
    p = run_proxy(config, listeners=6)
    kids = _children(p.proc.pid)
    assert len(kids) == 2, kids
    ports = sorted(set(p.addresses), key=p.addresses.index)
    assert len(ports) == 3, p.addresses
    for _ in range(2):
        for counts in _batch(ports[:2], 2 * BATCH, kids) + _batch(ports[2:], BATCH, kids):
            assert sorted(counts.values()) == [32, 32], counts


def test_hash_when_configured(start_proxy, origin):
    p, kids = _serve(start_proxy, origin, 2, "--reuseport-balance", "hash")
    _assert_hash_spread(p, kids)
    assert not any(REFUSED in line for line in p.stderr_lines), p.stderr_lines
    assert any("master: 2 workers (new connections: the kernel's hash)" in line
               for line in p.stderr_lines), p.stderr_lines


def test_refused_round_robin_falls_back_to_the_hash_with_one_line(start_proxy, origin, monkeypatch):
    """The documented test switch makes the attach fail as a refused bpf(2) does."""
    monkeypatch.setenv("FASTPROXY_REUSEPORT_BPF", "refuse")
    p, kids = _serve(start_proxy, origin, 2)
    _assert_hash_spread(p, kids)
    assert sum(REFUSED in line for line in p.stderr_lines) == 1, p.stderr_lines


@functools.lru_cache(maxsize=None)
def _unprivileged_bpf_refused() -> str | None:
    if os.geteuid() != 0:
        return "needs root to start the proxy as another user"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    try:
        if Path("/proc/sys/kernel/unprivileged_bpf_disabled").read_text().strip() == "0":
            return "this kernel lets unprivileged users load socket filters"
    except OSError:
        pass
    # The proxy runs as nobody from this Python environment: .ci/run's venv sits in a
    # private (0700) temporary directory that nobody cannot enter.
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-c", "import fastproxy._relay"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return (f"user nobody cannot import fastproxy from {sys.executable} "
                f"({probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'no output'})")
    return None


@pytest.mark.skipif(_unprivileged_bpf_refused() is not None,
                    reason=_unprivileged_bpf_refused() or "")
def test_without_bpf_permission_the_hash_spreads(origin):
    """A real refusal: the proxy runs as nobody, where bpf(2) answers EPERM."""
    where = tempfile.mkdtemp(prefix="fastproxy-rr-")
    os.chmod(where, 0o777)
    env = dict(os.environ, RUNTIME_DIRECTORY=where)
    env.pop("FASTPROXY_REUSEPORT_BPF", None)
    p = Proxy(["serve", "--listen", "127.0.0.1:0", "--upstream", origin.url, "--workers", "2"],
              cwd=where, env=env,
              prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
    try:
        p.wait_ready(2)
        kids = _children(p.proc.pid)
        assert len(kids) == 2, kids
        _assert_hash_spread(p, kids)
        lines = [line for line in p.stderr_lines if REFUSED in line]
        assert len(lines) == 1 and "Operation not permitted" in lines[0], p.stderr_lines
    finally:
        p.stop()
        shutil.rmtree(where, ignore_errors=True)
