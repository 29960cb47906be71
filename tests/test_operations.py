"""Operating a running proxy: log rotation, control commands, the pidfile, the status page.

Real `fastproxy` processes, real signals, real sockets.
"""
from __future__ import annotations

import http.client
import os
import shutil
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
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in list(proxy.stderr_lines):
            m = re.search(r"listening on \[?[^\]]+?\]?:(\d+) \(admin\)", line)
            if m:
                return int(m.group(1))
        time.sleep(0.05)
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


# -- the status page (headless Chromium) ---------------------------------------------


def _dead_port() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()     # nothing listens there now: connections are refused
    return port


def _chromium_dom(url: str, wait_ms: int = 5000) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed")
    r = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", f"--virtual-time-budget={wait_ms}",
                        "--dump-dom", url], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_status_page_in_chromium_names_servers_and_shows_dead_ones(start_proxy, origin,
                                                                   tmp_path, workers):
    dead, checked_dead = _dead_port(), _dead_port()
    conf = tmp_path / "page.toml"
    conf.write_text(f"""
admin = "127.0.0.1:0"
workers = {workers}
[cache]
size = "16MiB"
[[listeners]]
listen = "127.0.0.1:0"
name = "web"
upstream = "app"
[[listeners]]
listen = "127.0.0.1:0"
name = "checked"
upstream = "chk"
[upstreams.app]
servers = ["{origin.url}", "http://127.0.0.1:{dead}"]
[upstreams.chk]
servers = ["http://127.0.0.1:{checked_dead}"]
[upstreams.chk.health]
path = "/"
interval = "0.1s"
fall = 1
""")
    proxy = start_proxy("serve", "--config", str(conf), listeners=3)
    admin = _admin_port(proxy)
    for _ in range(40):    # traffic reveals the dead server: it is ejected
        _get(proxy.port, "/size/3")
    dom = _chromium_dom(f"http://127.0.0.1:{admin}/")
    assert "fastproxy status" in dom
    assert f"127.0.0.1:{origin.port}" in dom
    assert re.search(rf"127\.0\.0\.1:{dead}</td><td class=\"(EJECTED|DOWN)\">(EJECTED|DOWN)<",
                     dom), dom
    assert re.search(rf"127\.0\.0\.1:{checked_dead}</td><td class=\"DOWN\">DOWN<", dom), dom
    assert re.search(rf"127\.0\.0\.1:{origin.port}</td><td class=\"UP\">UP<", dom), dom
    assert ">web<" in dom and ">checked<" in dom
    assert f"{workers} worker" in dom
    # The script ran and fetched the page again (virtual time passes the refresh).
    assert "refreshed " in dom, dom[-800:]
    assert "<link" not in dom and "src=\"http" not in dom   # no external assets


# -- POST /reload ----------------------------------------------------------------------


def _two_groups_config(path, origin, target: str, admin: bool = True) -> None:
    path.write_text(f"""
{'admin = "127.0.0.1:0"' if admin else ''}
[[listeners]]
listen = "127.0.0.1:0"
upstream = "{target}"
[upstreams.a]
servers = ["{origin.url}"]
[upstreams.b]
servers = ["{origin.url}"]
[headers]
via_name = "{target}"
""")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_admin_post_reload_applies_a_good_file_and_refuses_a_bad_one(start_proxy, origin,
                                                                     tmp_path, workers):
    conf = tmp_path / "r.toml"
    _two_groups_config(conf, origin, "a")
    proxy = start_proxy("serve", "--config", str(conf), "--workers", workers, listeners=2)
    admin = _admin_port(proxy)
    c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)

    def via() -> str:
        c.request("GET", "/size/1")
        r = c.getresponse()
        r.read()
        return r.getheader("via") or ""

    assert via().endswith(" a")
    conf.write_text(conf.read_text().replace('via_name = "a"', 'via_name = "b"'))
    status, body = _get(admin, "/reload", "POST")
    assert status == 200, body
    assert b'"reloaded": true' in body
    c.close()

    def all_b() -> bool:
        got = set()
        for _ in range(6):
            cc = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            cc.request("GET", "/size/1")
            r = cc.getresponse()
            r.read()
            got.add(r.getheader("via"))
            cc.close()
        return got == {"1.1 b"}
    assert _wait_for(all_b), proxy.stderr_lines
    conf.write_text(conf.read_text() + "\n[limits]\nmax_connections = -3\n")
    status, body = _get(admin, "/reload", "POST")
    assert status == 400 and b"limits.max_connections" in body, body
    assert _get(admin, "/reload")[0] == 405
    assert proxy.proc.poll() is None
