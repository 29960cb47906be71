"""Operating a running proxy: log rotation, control commands, the pidfile, the status page.

Real `fastproxy` processes, real signals, real sockets.
"""
from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import PKG_PARENT


def _get(port: int, target: str, method: str = "GET", body: bytes | None = None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, target, body=body)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _admin_port(proxy) -> int:
    for line in proxy.stderr_lines:
        m = re.search(r"listening on \[?[^\]]+?\]?:(\d+) \(admin\)", line)
        if m:
            return int(m.group(1))
    raise AssertionError("no admin listener: " + "\n".join(proxy.stderr_lines))


def _wait_for(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def _cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=PKG_PARENT)
    return subprocess.run([sys.executable, "-m", "fastproxy", *args], env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# -- SIGUSR1: reopen the logs --------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigusr1_reopens_the_access_log_after_a_rename(start_proxy, origin, tmp_path, workers):
    log = tmp_path / "access.log"
    proxy = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                        "--upstream", origin.url, "--access-log", str(log),
                        "--workers", workers)
    assert _get(proxy.port, "/size/1?before")[0] == 200
    assert _wait_for(lambda: log.exists() and "before" in log.read_text())
    rotated = tmp_path / "access.log.1"
    os.rename(log, rotated)
    proxy.signal(signal.SIGUSR1)
    assert _wait_for(lambda: sum("reopened" in line for line in proxy.stderr_lines)
                     >= int(workers)), proxy.stderr_lines
    for _ in range(4):   # with two workers, reach both
        assert _get(proxy.port, "/size/1?after")[0] == 200
    assert _wait_for(lambda: log.exists() and "after" in log.read_text()), proxy.stderr_lines
    assert "after" not in rotated.read_text()
    assert proxy.proc.poll() is None
    assert proxy.stop() == 0
