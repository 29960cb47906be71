"""`--workers 2`: the kernel's SO_REUSEPORT spreads client connections over the workers.

The kernel picks a worker's socket by a keyed hash of each connection's addresses, so the
split of one batch of 64 connections is a coin toss per connection (max/min under 1.2 in
only about half of such batches). What is deterministic enough to assert: every batch of
64 reaches both workers (one worker getting all 64 has odds of 2^-63 when the port is
shared), and over 32 batches (2048 connections) the totals stay within 1.2x of each other
(a 4-sigma bound: about 1 run in 20,000 would fail by chance). The per-batch max/min at
64 connections is what `python -m bench load --rows fastproxy-2w` reports.

Real `fastproxy serve --workers 2`, real sockets; who holds which connection is read from
/proc (the workers are the master's children).
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux only)")

BATCH = 64
BATCHES = 32
GET = b"GET /size/1 HTTP/1.1\r\nHost: x\r\n\r\n"


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
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
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


def test_reuseport_spreads_64_connections_over_two_workers(start_proxy, origin):
    p = start_proxy("serve", "--listen", "127.0.0.1:0", "--upstream", origin.url,
                    "--workers", "2", listeners=2)
    workers = _children(p.proc.pid)
    assert len(workers) == 2, workers
    totals = dict.fromkeys(workers, 0)
    for _ in range(BATCHES):
        batch = [socket.create_connection(("127.0.0.1", p.port)) for _ in range(BATCH)]
        try:
            for s in batch:
                s.sendall(GET)
            for s in batch:
                _answer(s)   # answered: a worker accepted it and holds it (kept alive)
            inodes = _established(p.port)
            counts = {w: _held(w, inodes) for w in workers}
            assert sum(counts.values()) == BATCH, counts
            assert min(counts.values()) > 0, counts
            for w, n in counts.items():
                totals[w] += n
        finally:
            for s in batch:
                s.close()
    assert max(totals.values()) / min(totals.values()) < 1.2, totals
