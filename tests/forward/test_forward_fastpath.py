"""The compiled forward path (relay.ForwardFast) decides and sends what the Python handler does.

The compiled path answers a request only from an admission the handler memoised for the same
client, target prefix and method, so each case is sent twice on one connection (the first
request is admitted in Python, the second may take the compiled path) to two proxies: one
with the compiled path and one with it off (FASTPROXY_NO_FASTPATH=1). Every status and every
head the origin sees must be the same.
"""
from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time

import pytest
from conftest import ProxyProcess
from origin import Origin
from wire import Conn, crlf


def _config(tmp_path, name: str, listener: str) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
[access_log]
path = "{tmp_path / (name + '.log')}"
format = "json"
[[listeners]]
listen = "127.0.0.1:0"
mode = "forward"
{listener}
""")
    return str(path)


@pytest.fixture
def pair(start_proxy, tmp_path):
    """Factory: (compiled, Python-only) forward proxies with the same listener TOML."""
    def make(listener: str = "allow_private = true"):
        fast = start_proxy("serve", "--config", _config(tmp_path, "fast", listener))
        os.environ["FASTPROXY_NO_FASTPATH"] = "1"
        try:
            slow = start_proxy("serve", "--config", _config(tmp_path, "slow", listener))
        finally:
            del os.environ["FASTPROXY_NO_FASTPATH"]
        return fast, slow
    return make


def exchange(origin, port: int, raws: list[bytes], body: bytes = b"") -> list[tuple]:
    """Send each request on one connection; (status, what the origin saw or None) each."""
    out = []
    with Conn(port) as c:
        for raw in raws:
            before = len(origin.requests)
            c.send(raw)
            if b"100-continue" in raw:
                line = c.fh.readline()
                if line.startswith(b"HTTP/1.1 100"):
                    c.fh.readline()
                    c.send(body)
            method = raw.split(b" ", 1)[0].decode()
            r = c.response(method)
            got = origin.requests[-1] if len(origin.requests) > before else None
            out.append((r.status, r.getheader("Via"), got))
            if r.getheader("Connection", "").lower() == "close":
                break
    return out


def cases(url: str, port: int) -> list[str]:
    host = f"127.0.0.1:{port}"
    return [
        f"GET {url}/a?b=c HTTP/1.1\nHost: ignored\nUser-Agent: t\n\n",
        f"GET http://{host}?q=1 HTTP/1.1\nHost: {host}\n\n",
        f"GET http://{host} HTTP/1.1\nHost: {host}\n\n",
        f"GET HTTP://127.0.0.1:{port}/Mixed/Case HTTP/1.1\nHost: x\n\n",
        f"HEAD {url}/size/10 HTTP/1.1\nHost: x\n\n",
        f"GET {url}/x HTTP/1.1\nHost: x\nX-Forwarded-For: 10.1.1.1\nX-Real-IP: 10.2.2.2\n"
        "Forwarded: for=10.3.3.3\nVia: 1.1 other\nSec-CH-UA: \"x\"\nX-Forwarded-Proto: https\n"
        "Proxy-Foo: 1\n\n",
        f"GET {url}/x HTTP/1.1\nHost: x\nProxy-Authorization: Basic Zm9vOmJhcg==\n"
        "Proxy-Connection: keep-alive\nConnection: keep-alive, X-Drop\nX-Drop: 1\n"
        "Keep-Alive: 5\nTE: trailers\n\n",
        f"GET {url}/chat HTTP/1.1\nHost: x\nConnection: Upgrade\nUpgrade: websocket\n\n",
        f"OPTIONS {url}/x HTTP/1.1\nHost: x\nMax-Forwards: 5\n\n",
        f"TRACE {url}/x HTTP/1.1\nHost: x\nMax-Forwards: 0\n\n",
        f"GET {url}/v HTTP/1.0\nHost: x\nConnection: keep-alive\n\n",
        f"DELETE {url}/thing HTTP/1.1\nHost: x\nContent-Length: 0\n\n",
    ]


LEVELS = [
    "allow_private = true",
    'allow_private = true\n[listeners.anonymity]\nlevel = "transparent"\n',
    'allow_private = true\n[listeners.anonymity]\nlevel = "elite"\n',
    'allow_private = true\n[listeners.anonymity]\nvia = "edge"\n'
    '[[listeners.anonymity.rules]]\nhosts = ["127.0.0.1"]\nremove = ["Cookie", "Via"]\n'
    'set = { "User-Agent" = "Proxy/1.0" }\n',
]


@pytest.mark.parametrize("listener", LEVELS, ids=["anonymous", "transparent", "elite", "rules"])
def test_same_statuses_and_heads(pair, origin, listener):
    fast, slow = pair(listener)
    for case in cases(origin.url, origin.port):
        raw = crlf(case)
        got_fast = exchange(origin, fast.port, [raw, raw, raw])
        got_slow = exchange(origin, slow.port, [raw, raw, raw])
        assert got_fast == got_slow, case
        assert got_fast[1:] == got_fast[:1] * (len(got_fast) - 1), case   # memo = first


def test_same_bodies_sent(pair, origin):
    fast, slow = pair()
    raws = [crlf(f"POST {origin.url}/echo HTTP/1.1\nHost: x\nContent-Length: 3\n\n") + b"abc",
            crlf(f"POST {origin.url}/echo HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n\n"
                 "3\nabc\n0\n\n")]
    for raw in raws:
        assert exchange(origin, fast.port, [raw] * 3) == exchange(origin, slow.port, [raw] * 3)
    raw = crlf(f"PUT {origin.url}/echo HTTP/1.1\nHost: x\nContent-Length: 2\n"
               "Expect: 100-continue\n\n")
    assert exchange(origin, fast.port, [raw] * 2, b"hi") == \
        exchange(origin, slow.port, [raw] * 2, b"hi")


def test_denials_are_not_memoised_and_stay_denied(pair, origin):
    # The private-destination guard and a deny rule: the same 403 every time, nothing sent.
    fast, slow = pair('[[listeners.acl.rules]]\nname = "no-deny"\naction = "deny"\n'
                      'hosts = ["deny.example"]\n')
    raws = [crlf(f"GET {origin.url}/x HTTP/1.1\nHost: x\n\n"),
            crlf("GET http://deny.example/x HTTP/1.1\nHost: x\n\n"),
            crlf(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\nHost: x\n\n")]
    for raw in raws:
        for port in (fast.port, slow.port):
            for _ in range(3):
                got = exchange(origin, port, [raw])
                assert got[0][0] == 403 and got[0][2] is None, (raw, got)


def test_memoised_route_still_needs_credentials(pair, origin):
    from fastproxy.forward.auth import hash_password

    hashed = hash_password("s3cret", n=2 ** 10)
    fast, slow = pair(f'allow_private = true\n[listeners.auth]\nusers = {{ alice = "{hashed}" }}\n')
    good = base64.b64encode(b"alice:s3cret").decode()
    bad = base64.b64encode(b"alice:wrong").decode()
    target = f"GET {origin.url}/echo HTTP/1.1\nHost: x\n"
    seq = [crlf(target + f"Proxy-Authorization: Basic {good}\n\n"),
           crlf(target + f"Proxy-Authorization: Basic {good}\n\n"),
           crlf(target + "\n"),
           crlf(target + f"Proxy-Authorization: Basic {bad}\n\n"),
           crlf(target + f"Proxy-Authorization: Basic {good}\n\n")]
    for port in (fast.port, slow.port):
        got = [exchange(origin, port, [raw])[0][0] for raw in seq]
        assert got == [200, 200, 407, 407, 200], (port, got)


def test_connect_through_memoised_route(pair, origin):
    fast, slow = pair(f"allow_private = true\nconnect_ports = [{origin.port}]\n")
    for port in (fast.port, slow.port):
        for i in range(3):
            with Conn(port) as c:
                c.send(crlf(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\nHost: x\n\n"))
                assert c.fh.readline().startswith(b"HTTP/1.1 200"), (port, i)
                assert c.fh.readline().startswith(b"Date: ")
                assert c.fh.readline() == b"\r\n"
                c.send(crlf(f"GET /size/{i + 1} HTTP/1.1\nHost: x\n\n"))
                assert c.response().body == b"0123456789"[:i + 1]


def test_get_with_tcp_scheme_opens_no_tunnel(pair, origin):
    # "tcp" is the handler's name for a CONNECT destination; from a URL it would let a GET
    # open a tunnel to any http_ports port, past connect_ports.
    fast, slow = pair("allow_private = true")
    raw = crlf(f"GET tcp://127.0.0.1:{origin.port}/ HTTP/1.1\nHost: x\n\n")
    for port in (fast.port, slow.port):
        got = exchange(origin, port, [raw])
        assert got[0][0] == 400 and got[0][2] is None, got


# -- the memo never outlives the resolver's answer ----------------------------------------

class HostsProxy(ProxyProcess):
    """`fastproxy serve` in its own mount namespace whose /etc/hosts is `hosts`."""

    def __init__(self, args: list[str], cwd: str, hosts: str) -> None:
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        super().__init__(args, cwd, prefix=("unshare", "-m", "sh", "-c", script, hosts))


def _cannot_unshare(hosts) -> str:
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts', hosts],
                           capture_output=True, check=False)
    if probe.returncode != 0:
        return "cannot bind-mount /etc/hosts here: " + probe.stderr.decode().strip()
    return ""


@pytest.mark.parametrize("fastpath", [True, False], ids=["compiled", "python"])
def test_route_expires_with_the_dns_answer(origin, tmp_path, fastpath):
    # moved.test resolves to 127.0.0.1 (positive_ttl 2s). A HEAD admitted 1.2s later is
    # memoised: its route must expire with the DNS answer (at 2s), not 5s after the HEAD.
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 moved.test\n")
    why = _cannot_unshare(str(hosts))
    if why:
        pytest.skip(why)
    other = Origin(host="127.0.0.3", port=origin.port).start()
    env_before = os.environ.get("FASTPROXY_NO_FASTPATH")
    if not fastpath:
        os.environ["FASTPROXY_NO_FASTPATH"] = "1"
    proxy = None
    try:
        proxy = HostsProxy(["serve", "--config", _config(tmp_path, "dns", """
allow_private = true
[listeners.resolver]
positive_ttl = "2s"
""")], str(tmp_path), str(hosts)).wait_ready()
        head = crlf(f"HEAD http://moved.test:{origin.port}/size/3 HTTP/1.1\nHost: x\n\n")
        get = crlf(f"GET http://moved.test:{origin.port}/size/3 HTTP/1.1\nHost: x\n\n")
        t0 = time.monotonic()
        assert exchange(origin, proxy.port, [get])[0][0] == 200
        time.sleep(1.2)
        assert exchange(origin, proxy.port, [head, head])[1][0] == 200
        with open(hosts, "r+") as fh:          # in place: the bind mount follows the inode
            fh.truncate(0)
            fh.write("127.0.0.1 localhost\n127.0.0.3 moved.test\n")
        assert origin.count("/size/3") == 3 and other.count("/size/3") == 0
        time.sleep(max(0.0, t0 + 2.6 - time.monotonic()))
        assert exchange(origin, proxy.port, [head])[0][0] == 200
        assert other.count("/size/3") == 1, "the memoised route outlived the DNS answer"
    finally:
        if env_before is None:
            os.environ.pop("FASTPROXY_NO_FASTPATH", None)
        if proxy is not None:
            proxy.stop()
        other.stop()


@pytest.mark.parametrize("fastpath", [True, False], ids=["compiled", "python"])
def test_reload_forgets_memoised_routes(start_proxy, origin, tmp_path, fastpath):
    import signal

    conf = tmp_path / "reload.toml"
    text = """
[[listeners]]
listen = "127.0.0.1:%s"
mode = "forward"
allow_private = true
"""
    conf.write_text(text % 0)
    env_before = os.environ.get("FASTPROXY_NO_FASTPATH")
    if not fastpath:
        os.environ["FASTPROXY_NO_FASTPATH"] = "1"
    try:
        proxy = start_proxy("serve", "--config", str(conf))
    finally:
        if env_before is None:
            os.environ.pop("FASTPROXY_NO_FASTPATH", None)
    raw = crlf(f"GET {origin.url}/size/2 HTTP/1.1\nHost: x\n\n")
    assert [s for s, _, _ in exchange(origin, proxy.port, [raw, raw])] == [200, 200]
    conf.write_text(text % proxy.port + '[[listeners.acl.rules]]\nname = "closed"\n'
                    'action = "deny"\ndest = ["127.0.0.1/32"]\n')
    proxy.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not any("reloaded configuration" in line for line in proxy.stderr_lines) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    got = exchange(origin, proxy.port, [raw])
    assert got[0][0] == 403 and got[0][2] is None, got
