"""A reload keeps what the proxy learned of its upstream servers.

A server that active checks found down, or that passive detection ejected, stays out of the
balancer across a reload (SIGHUP) until the new configuration's checks or probes find it
well; the counters /metrics exports for it keep counting up. Real proxies, real sockets.
"""
from __future__ import annotations

import json
import re
import signal
import socketserver
import threading
import time
import urllib.request

from conftest import reverse_config
from fastproxy.testing import to_toml
from wire import Conn, crlf


class _Failing(socketserver.ThreadingTCPServer):
    """An upstream that answers every request (health checks too) `status` (503 until a
    test heals it), keeping connections open, and counts the requests by target."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Answer503)
        self.targets: list[str] = []
        self.status = 503
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def requests(self) -> int:
        """Requests other than health checks."""
        with self.lock:
            return sum(t != "/health" for t in self.targets)

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Answer503(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        while True:
            line = self.rfile.readline()
            if not line:
                return
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            with self.server.lock:
                self.server.targets.append(line.split()[1].decode())
            self.wfile.write(b"HTTP/1.1 %d Whatever\r\nContent-Length: 5\r\n\r\nbusy\n"
                             % self.server.status)
            self.wfile.flush()


def _reload(proxy, config_text: str | None = None) -> None:
    """SIGHUP (with a new file when given) and wait for the worker to say it took it."""
    if config_text is not None:
        with open(proxy.config_path, "w") as fh:
            fh.write(config_text)
    before = sum("reloaded configuration" in x for x in proxy.stderr_lines)
    proxy.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while sum("reloaded configuration" in x for x in proxy.stderr_lines) == before:
        assert time.monotonic() < deadline, proxy.stderr_lines
        time.sleep(0.02)


def _server_status(admin: int, url: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=10) as r:
        doc = json.load(r)
    return doc["upstreams"]["app"][url.split("//", 1)[1]]


def _metric(admin: int, name: str, server: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf'^{name}\{{group="app",server="{re.escape(server)}"\}} (\S+)$', text, re.M)
    assert m, text
    return float(m.group(1))


def _get_all(port: int, n: int) -> list[int]:
    statuses = []
    with Conn(port) as c:
        for i in range(n):
            c.send(crlf(f"GET /size/{i + 1} HTTP/1.1\nHost: h\n\n"))
            statuses.append(c.response().status)
    return statuses


def test_a_server_checks_found_down_stays_out_across_a_reload(run_proxy, origin):
    # The new generation's checker started every server UP: round robin sent half the
    # requests after each reload to the server the checks had just found failing, until
    # `fall` checks of the new generation failed again (here the whole new interval).
    bad = _Failing()
    try:
        def conf(interval: str) -> dict:
            return reverse_config(origin.url, bad.url, admin="127.0.0.1:0", upstreams={
                "app": {"servers": [origin.url, bad.url], "balance": "round_robin",
                        "health": {"path": "/health", "interval": interval,
                                   "timeout": "1s", "fall": 2, "rise": 1}}})
        proxy = run_proxy(conf("200ms"))
        admin = proxy.admin_port()
        deadline = time.monotonic() + 10
        while _server_status(admin, bad.url)["healthy"]:
            assert time.monotonic() < deadline, "the failing server was never marked down"
            time.sleep(0.05)
        assert _get_all(proxy.port, 4) == [200] * 4
        seen = bad.requests()
        # A reload that only slows the checks down: the new checker's first failure is
        # one short of `fall`, the next is 5 s away, so only the carried verdict keeps
        # the server out until then.
        doc = conf("5s")
        doc["pidfile"] = False
        doc["listeners"][0]["listen"] = f"127.0.0.1:{proxy.port}"
        _reload(proxy, to_toml(doc))
        statuses = _get_all(proxy.port, 6)
        assert bad.requests() == seen, "requests went to a server the checks found down"
        assert statuses == [200] * 6, statuses
        assert _server_status(admin, bad.url)["state"] == "DOWN"
        # Carried down, it still comes back by the new generation's checks.
        doc = conf("200ms")
        doc["pidfile"] = False
        doc["listeners"][0]["listen"] = f"127.0.0.1:{proxy.port}"
        _reload(proxy, to_toml(doc))
        bad.status = 200
        deadline = time.monotonic() + 10
        while not _server_status(admin, bad.url)["healthy"]:
            assert time.monotonic() < deadline, "the healed server never came back"
            time.sleep(0.05)
        _get_all(proxy.port, 4)
        assert bad.requests() == seen + 2, "the healed server took no share of requests"
    finally:
        bad.close()


def test_an_ejected_server_stays_out_and_its_counters_go_on_across_a_reload(run_proxy, origin):
    # Reload built new servers: an ejected one was back at once (its 5xx answers reached
    # clients again), and its failures_total and ejections_total restarted from 0.
    bad = _Failing()
    try:
        proxy = run_proxy(reverse_config(origin.url, bad.url, admin="127.0.0.1:0", upstreams={
            "app": {"servers": [origin.url, bad.url], "balance": "round_robin",
                    "outlier": {"consecutive_failures": 2, "base_ejection": "60s",
                                "max_ejection_percent": 50}}}))
        admin = proxy.admin_port()
        name = bad.url.split("//", 1)[1]
        statuses = _get_all(proxy.port, 4)
        assert statuses.count(503) == 2, statuses      # then it was ejected
        assert _server_status(admin, bad.url)["state"] == "EJECTED"
        failures = _metric(admin, "fastproxy_upstream_failures_total", name)
        ejections = _metric(admin, "fastproxy_upstream_ejections_total", name)
        assert failures == 2
        assert ejections == 1
        _reload(proxy)
        statuses = _get_all(proxy.port, 6)
        assert statuses == [200] * 6, "the ejected server answered again after the reload"
        assert bad.requests() == 2
        assert _server_status(admin, bad.url)["state"] == "EJECTED"
        assert _metric(admin, "fastproxy_upstream_failures_total", name) == failures, \
            "a counter restarted at the reload"
        assert _metric(admin, "fastproxy_upstream_ejections_total", name) == ejections, \
            "a counter restarted at the reload"
    finally:
        bad.close()
