"""Stopping a running proxy by signal: every stop signal drains, and no worker outlives it.

Real `fastproxy` processes, real signals, real sockets.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import time

import pytest


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _read_response(s: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


@pytest.mark.parametrize("workers", [1, 2])
def test_sigquit_drains_in_flight_requests_and_exits_0_like_sigterm(
        start_proxy, origin, tmp_path, workers):
    # nginx's graceful stop is SIGQUIT (HAProxy's soft stop is SIGUSR1, ours reopens logs).
    # Python's default action for SIGQUIT is a core dump: the request in flight was cut,
    # the pidfile stayed behind, and with workers the master died alone, leaving its
    # workers serving as orphans that `fastproxy stop` could no longer reach.
    pidfile = tmp_path / "fp.pid"
    conf = tmp_path / "q.toml"
    conf.write_text(f"""
pidfile = "{pidfile}"
workers = {workers}
[timeouts]
drain = "10s"
[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
[upstreams.app]
servers = ["{origin.url}"]
""")
    proxy = start_proxy("serve", "--config", str(conf), listeners=workers)
    workers_pids = {int(m.group(1)) for line in proxy.stderr_lines
                    if (m := re.match(r"fastproxy\[(\d+)\]: listening on", line))}
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(b"GET /slow/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            time.sleep(0.3)
            proxy.signal(signal.SIGQUIT)
            answer = _read_response(s)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert answer.endswith(b"slow\n"), answer
        assert proxy.proc.wait(10) == 0, proxy.stderr_lines
        assert not pidfile.exists(), "the pidfile outlived the proxy"
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in workers_pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in workers_pids), \
            f"workers {workers_pids} outlived the master"
    finally:
        for pid in workers_pids:     # orphans of a failed run: ours, so ours to end
            if pid != proxy.pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_stop_when_their_master_is_killed(start_proxy, origin, tmp_path):
    # A master killed outright (SIGKILL, the OOM killer) left its workers serving on as
    # orphans: the old configuration answering on the port, beyond reach of `fastproxy
    # stop`, reload and the pidfile, and a new instance sharing the port with them
    # (SO_REUSEPORT). They now drain and exit, as HAProxy's workers do.
    conf = tmp_path / "k.toml"
    conf.write_text(f"""
pidfile = false
workers = 2
[timeouts]
drain = "10s"
[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
[upstreams.app]
servers = ["{origin.url}"]
""")
    proxy = start_proxy("serve", "--config", str(conf), listeners=2)
    workers_pids = {int(m.group(1)) for line in proxy.stderr_lines
                    if (m := re.match(r"fastproxy\[(\d+)\]: listening on", line))}
    assert len(workers_pids) == 2, proxy.stderr_lines
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(b"GET /slow/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            time.sleep(0.3)
            proxy.signal(signal.SIGKILL)
            answer = _read_response(s)
        assert answer.startswith(b"HTTP/1.1 200 "), "the request in flight was not finished"
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in workers_pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in workers_pids), \
            f"workers {workers_pids} outlived their master"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
    finally:
        for pid in workers_pids:     # orphans of a failed run: ours, so ours to end
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
