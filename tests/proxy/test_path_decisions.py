"""Rules and routes on a path hold for every spelling of that path (targets.decision_path):
`/%61dmin`, `//admin`, `/./admin` and `/x/../admin` are `/admin` to an origin, so a proxy
that matched the client's bytes would deny one and pass the others. Over real sockets:
reverse routes over HTTP/1.1 and HTTP/2, and forward URL rules."""

import pytest

from h2_client import Client
from wire import exchange

# What RFC 3986 6.2.2 (and, for `//`, nginx and the common routers) read as /echo.
SPELLINGS = ["/%65cho", "/%65%63h%6F", "//echo", "/./echo", "/x/../echo", "/%2e/echo",
             "/x/%2E%2E/echo", "/x/y/../../echo"]


@pytest.fixture
def guarded(run_proxy, origin):
    """A reverse listener whose route answers 403 for /echo itself."""
    return run_proxy({
        "listeners": [{"upstream": "app",
                       "routes": [{"path": "/echo", "return": {"status": 403, "body": "no"}}]}],
        "upstreams": {"app": {"servers": [origin.url]}}})


@pytest.mark.parametrize("path", SPELLINGS)
def test_reverse_deny_route_holds_for_every_spelling(guarded, origin, path):
    answer = exchange(guarded.port, f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:200]
    assert origin.requests == [], "the origin was asked for what the route denies"


def test_reverse_deny_route_holds_over_h2(guarded, origin):
    client = Client(guarded.port)
    try:
        for path in SPELLINGS:
            status, _h, _b = client.get(path)
            assert status == 403, path
    finally:
        client.close()
    assert origin.requests == [], "the origin was asked for what the route denies"


def test_other_paths_still_pass_as_sent(guarded, origin):
    # Not /echo in any reading: forwarded, and with the client's own bytes.
    for path in ("/x/echo", "/ECHO", "/%2e%2e%2fecho"):
        answer = exchange(guarded.port, f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        assert not answer.startswith(b"HTTP/1.1 403 "), (path, answer[:200])
    assert [t for _m, t, _h in origin.requests] == [b"/x/echo", b"/ECHO", b"/%2e%2e%2fecho"]


def test_strip_route_rewrites_the_path_it_matched(run_proxy, origin):
    proxy = run_proxy({
        "listeners": [{"upstream": "app",
                       "routes": [{"path": "/api/", "upstream": "app", "strip_prefix": True}]}],
        "upstreams": {"app": {"servers": [origin.url]}}})
    answer = exchange(proxy.port, b"GET /%61pi/echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert [t for _m, t, _h in origin.requests] == [b"/echo"]


@pytest.mark.parametrize("path", SPELLINGS)
def test_forward_url_rule_holds_for_every_spelling(run_proxy, origin, path):
    proxy = run_proxy({"listeners": [{
        "mode": "forward", "allow_private": True,
        "acl": {"rules": [{"action": "deny", "name": "no-echo", "url": "^http://[^/]+/echo"}]}}]})
    answer = exchange(proxy.port, (f"GET {origin.url}{path} HTTP/1.1\r\nHost: x\r\n"
                                   "Connection: close\r\n\r\n").encode())
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:200]
    assert origin.requests == [], "the origin was asked for what the rule denies"


def test_forward_url_rule_reads_host_in_lowercase_without_the_default_port(run_proxy, origin):
    port = origin.url.rsplit(":", 1)[1]
    proxy = run_proxy({"listeners": [{
        "mode": "forward", "allow_private": True,
        "acl": {"rules": [{"action": "deny", "url": f"^http://127\\.0\\.0\\.1:{port}/echo$"}]}}]})
    for target in (f"HTTP://127.0.0.1:{port}/echo", f"http://127.0.0.1:{port}/./echo"):
        answer = exchange(proxy.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 403 "), (target, answer[:200])
    assert origin.requests == []
