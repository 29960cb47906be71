"""A forward proxy's cache answers a client only as far as its ACL would let the client go.

Over real loopback: the proxy in forward mode with a cache as a subprocess, tests/origin.py
as the destination, and clients bound to different loopback source addresses (127.0.0.1
and 127.0.0.2) so one ACL treats them differently. A response one client fetched must not
reach a client that the destination rules or the private-destination guard refuse.
"""
from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time

import pytest
from conftest import ProxyProcess
from origin import Origin

A = "127.0.0.1"       # the client the rules allow
B = "127.0.0.2"       # the client they refuse


def fetch(proxy_port: int, url: str, source: str, headers: dict | None = None):
    """GET url (absolute-form) through the proxy from the given source address."""
    c = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=10,
                                   source_address=(source, 0))
    try:
        c.request("GET", url, headers=headers or {})
        r = c.getresponse()
        return r, r.read()
    finally:
        c.close()


def cache_status(r) -> str:
    return r.getheader("Cache-Status") or ""


def config(tmp_path, listener: str) -> str:
    path = tmp_path / "fwd-cache.toml"
    path.write_text(f"""
[cache]
size = "16MiB"
[access_log]
path = "{tmp_path / 'access.log'}"
format = "json"
[[listeners]]
listen = "127.0.0.1:0"
mode = "forward"
{listener}
""")
    return str(path)


def log_lines(tmp_path, n: int) -> list[dict]:
    path = tmp_path / "access.log"
    deadline = time.monotonic() + 3
    lines: list[dict] = []
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        if len(lines) >= n:
            break
        time.sleep(0.05)
    return lines


def test_destination_rule_applies_to_cache_hits(start_proxy, origin, tmp_path):
    # B may not reach loopback destinations; A may. A's stored page must not reach B.
    proxy = start_proxy("serve", "--config", config(tmp_path, """
allow_private = true
[[listeners.acl.rules]]
name = "b-no-loopback"
action = "deny"
clients = ["127.0.0.2/32"]
dest = ["127.0.0.0/8"]
"""))
    url = f"{origin.url}/c/page?cc=max-age%3D600"
    r, body = fetch(proxy.port, url, A)
    assert r.status == 200 and "stored" in cache_status(r)
    r, body = fetch(proxy.port, url, B)
    assert r.status == 403 and b"b-no-loopback" in body, (r.status, body, cache_status(r))
    r, body = fetch(proxy.port, url, A)            # still a hit for the allowed client
    assert r.status == 200 and cache_status(r).startswith("fastproxy; hit")
    assert body == b"/c/page #1\n" and origin.count("/c/page?cc=max-age%3D600") == 1
    assert [x.get("cache") for x in log_lines(tmp_path, 3)] == ["MISS", None, "HIT"]


def test_private_destination_guard_applies_to_cache_hits(start_proxy, origin, tmp_path):
    # Only A has a rule opening loopback; B falls to the default rule, whose guard
    # refuses loopback destinations.
    proxy = start_proxy("serve", "--config", config(tmp_path, """
[[listeners.acl.rules]]
name = "a-loopback"
action = "allow"
clients = ["127.0.0.1/32"]
dest = ["127.0.0.0/8"]
"""))
    url = f"{origin.url}/c/guarded?cc=max-age%3D600"
    r, _ = fetch(proxy.port, url, A)
    assert r.status == 200 and "stored" in cache_status(r)
    r, body = fetch(proxy.port, url, B)
    assert r.status == 403 and b"loopback" in body, (r.status, body, cache_status(r))
    # only-if-cached does not open it either (the cache answers only admitted requests).
    r, body = fetch(proxy.port, url, B, {"Cache-Control": "only-if-cached"})
    assert r.status == 403, (r.status, body)
    assert origin.count("/c/guarded?cc=max-age%3D600") == 1


def test_stale_entry_is_not_revalidated_for_a_refused_client(start_proxy, origin, tmp_path):
    # A stale entry with a validator: B's request must not even reach the origin as a
    # conditional request on A's entry, nor be answered from it.
    proxy = start_proxy("serve", "--config", config(tmp_path, """
allow_private = true
[[listeners.acl.rules]]
name = "b-no-loopback"
action = "deny"
clients = ["127.0.0.2/32"]
dest = ["127.0.0.0/8"]
"""))
    url = f"{origin.url}/c/stale?cc=max-age%3D0&etag=%22v%22"
    fetch(proxy.port, url, A)
    r, body = fetch(proxy.port, url, B)
    assert r.status == 403, (r.status, body)
    assert origin.count("/c/stale?cc=max-age%3D0&etag=%22v%22") == 1


# -- a name that moves to another address (DNS rebinding) ---------------------------

def _can_unshare(hosts) -> str:
    """Why a private /etc/hosts cannot be had here ("" when it can)."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts', hosts],
                           capture_output=True, check=False)
    if probe.returncode != 0:
        return ("cannot bind-mount /etc/hosts in a mount namespace here: "
                + probe.stderr.decode().strip())
    return ""


class HostsProxy(ProxyProcess):
    """`fastproxy serve` in its own mount namespace whose /etc/hosts is `hosts` (a file the
    test rewrites), so a destination name can be made to resolve elsewhere."""

    def __init__(self, args: list[str], cwd: str, hosts: str) -> None:
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        super().__init__(args, cwd, prefix=("unshare", "-m", "sh", "-c", script, hosts))


def test_entry_from_another_address_is_not_served_after_the_name_moves(origin, tmp_path):
    # rebind.test first resolves to 127.0.0.1 (A fetches and the cache stores that
    # page), then to 127.0.0.3. B may reach 127.0.0.3 but not 127.0.0.1: the admission
    # passes for B, yet the stored page came from an address B may not reach, so it
    # must not be served to B; the request goes to 127.0.0.3 instead.
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 rebind.test\n")
    why = _can_unshare(str(hosts))
    if why:
        pytest.skip(why)
    other = Origin(host="127.0.0.3", port=origin.port).start()
    proxy = None
    try:
        proxy = HostsProxy(["serve", "--config", config(tmp_path, """
allow_private = true
[listeners.resolver]
positive_ttl = 0
[[listeners.acl.rules]]
name = "b-not-first"
action = "deny"
clients = ["127.0.0.2/32"]
dest = ["127.0.0.1/32"]
""")], str(tmp_path), str(hosts)).wait_ready()
        target = "/c/moved?cc=max-age%3D600"
        url = f"http://rebind.test:{origin.port}{target}"
        r, body = fetch(proxy.port, url, A)
        assert r.status == 200 and "stored" in cache_status(r) and origin.count(target) == 1
        with open(hosts, "r+") as fh:          # in place: the bind mount follows the inode
            fh.truncate(0)
            fh.write("127.0.0.1 localhost\n127.0.0.3 rebind.test\n")
        r, body = fetch(proxy.port, url, B)
        assert r.status == 200 and not cache_status(r).startswith("fastproxy; hit"), \
            (body, cache_status(r))
        assert other.count(target) == 1 and origin.count(target) == 1
        # A may reach both: it now gets what 127.0.0.3 served (stored by B's fetch).
        r, body2 = fetch(proxy.port, url, A)
        assert body2 == body and cache_status(r).startswith("fastproxy; hit")
    finally:
        if proxy is not None:
            proxy.stop()
        other.stop()
