"""The admin interface of several workers answers for all of them: counters are sums, a
verdict (healthy or not) is the worst any worker has. Real proxies, real sockets."""
from __future__ import annotations

import json
import re
import socket
import time
import urllib.request

from conftest import reverse_config


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode()


def _healthy_metric(admin: int, server: str) -> float:
    text = _get(admin, "/metrics")
    m = re.search(rf'^fastproxy_upstream_healthy\{{group="app",server="{re.escape(server)}"\}}'
                  r" (\S+)$", text, re.M)
    assert m, text
    return float(m.group(1))


def test_healthy_is_0_or_1_whatever_the_number_of_workers(run_proxy, origin):
    # Summed like a counter, fastproxy_upstream_healthy read 2 for a healthy server with
    # two workers (its HELP says "1 when the server passes health checks"), so
    # `== 1` alerts and dashboards were wrong as soon as workers > 1.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_name = f"127.0.0.1:{dead.getsockname()[1]}"
    dead.close()                       # nothing listens there: connects are refused
    good_name = origin.url.split("//", 1)[1]
    cfg = reverse_config(origin.url, f"http://{dead_name}", admin="127.0.0.1:0", workers=2)
    cfg["upstreams"]["app"]["health"] = {"path": "/health", "interval": "200ms", "fall": 1,
                                       "rise": 1}
    proxy = run_proxy(cfg, listeners=2)
    admin = proxy.admin_port()
    deadline = time.monotonic() + 10
    while _healthy_metric(admin, dead_name) != 0 or _healthy_metric(admin, good_name) == 0:
        assert time.monotonic() < deadline, _get(admin, "/metrics")
        time.sleep(0.1)
    assert _healthy_metric(admin, good_name) == 1
    servers = json.loads(_get(admin, "/status"))["upstreams"]["app"]
    assert servers[good_name]["healthy"] == 1, servers
    assert servers[dead_name]["healthy"] == 0, servers
