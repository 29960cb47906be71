"""The access log names every upstream a retried request tried, as nginx's $upstream_addr
does ("a:1, b:2"). Real proxies, real sockets."""
from __future__ import annotations

import json
import re
import socket
import time

import pytest

from conftest import reverse_config
from wire import Conn, crlf


def _refusing_address() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    name = f"127.0.0.1:{s.getsockname()[1]}"
    s.close()                      # nothing listens there: connects are refused
    return name


@pytest.mark.parametrize("fmt", ["$status $upstream", "json", "combined"])
def test_a_retried_request_logs_each_upstream_it_tried(run_proxy, origin, tmp_path, fmt):
    # Only the last server was logged: a request that had waited on a refused connect
    # (or a 504-long timeout) and then succeeded elsewhere looked like a plain success on
    # the good server, with nothing to explain its time.
    dead = _refusing_address()
    good = origin.url.split("//", 1)[1]
    log = tmp_path / "access.log"
    cfg = reverse_config(f"http://{dead}", origin.url,
                         access_log={"path": str(log), "format": fmt})
    cfg["upstreams"]["app"].update(balance="round_robin", outlier={"consecutive_failures": 0})
    proxy = run_proxy(cfg)
    with Conn(proxy.port) as c:
        for _ in range(2):          # one starts at each server
            c.send(crlf("GET /size/1 HTTP/1.1\nHost: h\n\n"))
            assert c.response().status == 200
    deadline = time.monotonic() + 5
    while len(log.read_text().splitlines()) < 2:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    lines = log.read_text().splitlines()
    if fmt == "json":
        upstreams = sorted(json.loads(line)["upstream"] for line in lines)
    elif fmt == "combined":         # key=value fields: no space inside one
        upstreams = sorted(re.search(r" ua=(\S+) ", line).group(1).replace(",", ", ")
                           for line in lines)
    else:
        upstreams = sorted(line.split(" ", 1)[1] for line in lines)
    assert upstreams == sorted([good, f"{dead}, {good}"]), lines
