"""An absolute-form target on a reverse listener: its authority becomes the Host sent on.

RFC 9112 3.2.2 has a server accept absolute-form and take its authority over Host. The
Host the upstream got was built wrongly for three targets (outside probe, 12-05):
`ftp://a/x` went on as `Host: a:-1` (a scheme without a default port), an IPv6 literal
lost its brackets (`Host: ::1:8080`), and any port 80 or 443 was dropped whatever the
scheme (`http://a:443/` reached the upstream as `Host: a`, another origin, RFC 9110
4.2.3). Only http and https URLs are served now, as on a forward listener.
"""
from __future__ import annotations

import json

import pytest

from conftest import reverse_config
from wire import Conn, crlf


def _get(port: int, target: str) -> tuple[int, bytes]:
    with Conn(port) as c:
        c.send(crlf(f"GET {target} HTTP/1.1\nHost: client.example\n\n"))
        r = c.response()
        return r.status, r.body


@pytest.mark.parametrize("url, host", [
    ("http://[::1]:8080", "[::1]:8080"),
    ("http://[::1]", "[::1]"),
    ("http://a.example:443", "a.example:443"),
    ("https://a.example:80", "a.example:80"),
    ("https://a.example:443", "a.example"),
    ("http://A.example:80", "a.example"),
    ("http://a.example:8080", "a.example:8080"),
])
def test_the_targets_authority_is_the_host_sent_upstream(run_proxy, origin, url, host):
    p = run_proxy(reverse_config(origin.url))
    status, body = _get(p.port, url + "/echo")
    assert status == 200, body
    fields = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert fields["host"] == host
    assert fields["x-forwarded-host"] == host


@pytest.mark.parametrize("scheme", ["ftp", "ws", "gopher"])
def test_a_scheme_other_than_http_is_refused(run_proxy, origin, scheme):
    p = run_proxy(reverse_config(origin.url))
    status, body = _get(p.port, f"{scheme}://a.example/echo")
    assert status == 400 and b"unsupported URL scheme" in body, body
    assert origin.count("/echo") == 0
