"""Richer routes through the proxy: exact/regex paths, methods, header and query
conditions, precedence and priority, rewrites, upstream Host, request header edits with
variables, forced canary sides; and the router's own index against a full scan."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from types import SimpleNamespace

import pytest

from fastproxy.config.load import ConfigError, from_dict
from fastproxy.proxy.router import Router
from origin import Origin
from wire import crlf, request


@pytest.fixture
def three():
    servers = [Origin().start() for _ in range(3)]
    yield servers
    for s in servers:
        s.stop()


def start(start_proxy, tmp_path, servers, routes: str, default: str = 'upstream = "v1"'):
    cfg = tmp_path / "routes.toml"
    groups = "".join(f'[upstreams.v{i + 1}]\nservers = ["{s.url}"]\n'
                     for i, s in enumerate(servers))
    cfg.write_text(f'[[listeners]]\nlisten = "127.0.0.1:0"\n{default}\n{routes}\n{groups}')
    return start_proxy("serve", "--config", str(cfg))


def ask(port, path="/echo", host="x.test", method="GET", extra=""):
    r = request(port, crlf(f"{method} {path} HTTP/1.1\nHost: {host}\n{extra}\n"),
                method=method)
    return r.status, r.getheader("X-Origin"), r.body


def origin_of(servers, port_text):
    return next(i + 1 for i, s in enumerate(servers) if str(s.port) == port_text)


def test_match_kinds(start_proxy, three, tmp_path):
    p = start(start_proxy, tmp_path, three, """
[[listeners.routes]]
exact = "/echo"
methods = ["POST"]
upstream = "v2"
[[listeners.routes]]
regex = "^/size/[0-9]+$"
upstream = "v3"
[[listeners.routes]]
path = "/"
headers = { x-env = "beta" }
upstream = "v2"
[[listeners.routes]]
path = "/"
query = { debug = true }
upstream = "v3"
[[listeners.routes]]
path = "/"
headers = { x-off = false }
upstream = "v1"
""", default='upstream = "v2"')
    o = lambda *a, **k: origin_of(three, ask(p.port, *a, **k)[1])  # noqa: E731
    assert o("/echo", method="POST", extra="Content-Length: 0\n") == 2   # exact + method
    assert o("/echo?debug=1") == 3                   # GET: exact route does not hold
    assert o("/size/12") == 1                        # a prefix route beats a regex
    assert o("/size/12", extra="X-Off: 1\n") == 3    # no prefix route holds: the regex
    assert o("/size/12/", extra="X-Off: 1\n") == 2   # none at all: the default
    assert o("/echo", extra="X-Env: beta\n") == 2    # header value
    assert o("/echo", extra="X-Env: prod\n") == 1    # other value: the x-off=false route


def test_precedence_host_exact_prefix_regex_and_priority(start_proxy, three, tmp_path):
    p = start(start_proxy, tmp_path, three, """
[[listeners.routes]]
regex = "^/size/"
upstream = "v3"
[[listeners.routes]]
path = "/size/"
upstream = "v2"
[[listeners.routes]]
exact = "/size/7"
upstream = "v1"
[[listeners.routes]]
host = "*.api.test"
path = "/"
upstream = "v3"
[[listeners.routes]]
host = "*.eu.api.test"
path = "/"
upstream = "v2"
[[listeners.routes]]
host = "pin.test"
regex = "^/pinned"
upstream = "v3"
priority = 10
[[listeners.routes]]
host = "pin.test"
exact = "/pinned"
upstream = "v2"
""")
    o = lambda *a, **k: origin_of(three, ask(p.port, *a, **k)[1])  # noqa: E731
    assert o("/size/7") == 1                   # exact beats prefix and regex
    assert o("/size/8") == 2                   # prefix beats regex
    assert o("/size/8", host="a.api.test") == 3     # a host route beats no-host routes
    assert o("/size/8", host="a.eu.api.test") == 2  # the longer suffix wins
    assert o("/pinned", host="pin.test") == 3       # priority overrides exact
    assert o("/other", host="pin.test") == 1        # nothing for that host: default


def test_rewrite_upstream_host_and_header_edits(start_proxy, three, tmp_path):
    p = start(start_proxy, tmp_path, three, r"""
[[listeners.routes]]
path = "/old/"
rewrite = { regex = "^/old/(\\w+)", replace = "/\\1" }
upstream_host = "internal.example:8443"
upstream = "v2"
request_headers = { set = { X-Env = "prod" }, add = { X-Client = "{client_ip} via {host} {method} {path}" }, remove = ["X-Debug"] }
""")
    status, origin, body = ask(p.port, "/old/echo?q=1", extra="X-Env: dev\nX-Debug: 1\n")
    assert (status, origin) == (200, str(three[1].port))
    info = json.loads(body)
    headers = {k.lower(): v for k, v in info["headers"]}
    assert info["target"] == "/echo?q=1"
    assert headers["host"] == "internal.example:8443"
    assert headers["x-env"] == "prod" and "x-debug" not in headers
    assert headers["x-client"] == "127.0.0.1 via x.test GET /old/echo?q=1"
    assert headers["x-forwarded-host"] == "x.test"   # the client's Host is still told


def test_forced_canary(start_proxy, three, tmp_path):
    p = start(start_proxy, tmp_path, three, """
[[listeners.routes]]
path = "/"
upstream = "v1"
canary = { upstream = "v2", percent = 50, force = "header:X-Canary" }
[[listeners.routes]]
path = "/size/2"
upstream = "v1"
canary = { upstream = "v3", percent = 0, force = "cookie:canary" }
""")
    o = lambda *a, **k: origin_of(three, ask(p.port, *a, **k)[1])  # noqa: E731
    assert {o("/size/1", extra="X-Canary: always\n") for _ in range(20)} == {2}
    assert {o("/size/1", extra="X-Canary: never\n") for _ in range(20)} == {1}
    assert {o("/size/2", extra="Cookie: a=1; canary=always\n") for _ in range(5)} == {3}
    assert {o("/size/2") for _ in range(5)} == {1}      # 0 percent without the cookie


def test_plain_routes_keep_the_fast_path_and_rules_leave_it():
    def router(routes):
        cfg = from_dict({"listeners": [{"listen": "127.0.0.1:0", "upstream": "a",
                                        "routes": routes}],
                         "upstreams": {"a": {"servers": ["http://127.0.0.1:9"]}}})
        return Router(cfg.listeners[0], {"a": SimpleNamespace(name="a")})
    assert router([{"path": "/x/", "upstream": "a"}]).simple
    for extra in ({"methods": ["GET"]}, {"strip_prefix": True}, {"upstream_host": "h"},
                  {"request_headers": {"remove": ["x-a"]}}, {"query": {"a": True}},
                  {"shadow": {"upstream": "a"}}):
        assert not router([{"path": "/x/", "upstream": "a", **extra}]).simple, extra


@pytest.mark.parametrize("route, problem", [
    ({"regex": "(["}, "listeners[0].routes[0].regex: not a valid regular expression"),
    ({"path": "/a", "exact": "/a"}, "listeners[0].routes[0].exact: give one of path"),
    ({"methods": ["GE T"]}, "listeners[0].routes[0].methods: expected a list of methods"),
    ({"headers": {"x": 3}}, "listeners[0].routes[0].headers.x: expected a value"),
    ({"rewrite": {"regex": "^/a", "replace": "/\\2"}},
     "listeners[0].routes[0].rewrite: replace refers to group 2"),
    ({"request_headers": {"set": {"Host": "x"}}},
     "listeners[0].routes[0].request_headers.set: Host is the proxy's to set"),
    ({"request_headers": {"add": {"X-A": "{nope}"}}},
     "listeners[0].routes[0].request_headers.add.X-A: unknown variable {nope}"),
    ({"canary": {"upstream": "a", "percent": 1, "force": "query:x"}},
     "listeners[0].routes[0].canary.force: expected \"header:NAME\""),
    ({"priority": "high"}, "listeners[0].routes[0].priority: expected an integer"),
])
def test_route_problems_name_the_key(route, problem):
    with pytest.raises(ConfigError) as info:
        from_dict({"listeners": [{"listen": "127.0.0.1:0",
                                  "routes": [{"upstream": "a", **route}]}],
                   "upstreams": {"a": {"servers": ["http://127.0.0.1:9"]}}})
    assert info.value.problems[0].startswith(problem), info.value.problems


def test_bad_route_file_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[listeners]]\nlisten = "127.0.0.1:0"\n[[listeners.routes]]\n'
                   'regex = "(["\nupstream = "a"\n[upstreams.a]\nservers = ["http://127.0.0.1:9"]\n')
    res = subprocess.run([sys.executable, "-m", "fastproxy", "check", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("fastproxy: listeners[0].routes[0].regex: ")


def test_index_agrees_with_a_full_scan():
    # The indexed lookup against the documented precedence applied by brute force.
    rnd = random.Random(5)
    hosts = [None, "a.test", "b.test", "*.a.test", "*.x.a.test"]
    paths = ["/", "/a", "/a/", "/a/b", "/b", "/ab"]
    routes = []
    for i in range(60):
        kind = rnd.choice(["path", "path", "exact", "regex"])
        value = rnd.choice(paths) if kind != "regex" else rnd.choice(["^/a", "b$", "^/$"])
        r = {"upstream": "a", kind: value, "priority": rnd.choice([0, 0, 0, 5])}
        if rnd.random() < 0.8 and (h := rnd.choice(hosts)):
            r["host"] = h
        routes.append(r)
    cfg = from_dict({"listeners": [{"listen": "127.0.0.1:0", "upstream": "a", "routes": routes}],
                     "upstreams": {"a": {"servers": ["http://127.0.0.1:9"]}}})
    router = Router(cfg.listeners[0], {"a": SimpleNamespace(name="a")})

    def rank(r):
        host = 0 if r.host is None else (len(r.host) if r.wildcard else 10_000)
        path = 3 if r.exact is not None else (1 if r.regex is not None else 2)
        within = len(r.prefix) if path == 2 else 0
        return (-cfg.listeners[0].routes[r.order].priority, -host, -path, -within, r.order)

    ordered = sorted(router.routes, key=rank)
    for host in ["a.test", "b.test", "y.a.test", "z.x.a.test", "c.test", None]:
        for target in paths + ["/a/b?x=1", "/zz"]:
            path = target.split("?")[0].encode()
            h = host.encode() if host else None
            want = next((r for r in ordered if r.matches(h, path)), router.default)
            assert router.match(h, target.encode()) is want, (host, target)


def test_redirects_and_fixed_answers(start_proxy, three, tmp_path):
    p = start(start_proxy, tmp_path, three, """
[[listeners.routes]]
host = "old.test"
path = "/"
return = { status = 308, location = "https://{hostname}{path}" }
[[listeners.routes]]
exact = "/gone"
return = { status = 410, body = "{path} went away" }
[[listeners.routes]]
exact = "/empty"
methods = ["GET"]
return = { status = 204 }
""")
    r = request(p.port, crlf("GET /a/b?c=1 HTTP/1.1\nHost: old.test:8080\n\n"))
    assert r.status == 308 and r.getheader("Location") == "https://old.test/a/b?c=1"
    assert r.body == b"" and r.getheader("Content-Length") == "0"
    with __import__("wire").Conn(p.port) as c:       # kept alive across fixed answers
        c.send(crlf("GET /gone HTTP/1.1\nHost: x\n\nHEAD /gone HTTP/1.1\nHost: x\n\n"
                    "GET /empty HTTP/1.1\nHost: x\n\nGET /size/2 HTTP/1.1\nHost: x\n\n"))
        r1 = c.response()
        r2 = c.response("HEAD")
        r3 = c.response()
        r4 = c.response()
    assert (r1.status, r1.body) == (410, b"/gone went away\n")
    assert (r2.status, r2.body, r2.getheader("Content-Length")) == (410, b"", "16")
    assert (r3.status, r3.body) == (204, b"")
    assert r3.getheader("Content-Length") is None    # RFC 9110 8.6: never in a 204
    assert (r4.status, r4.body) == (200, b"01")                # the default upstream
    assert all(s.requests == [] or all(t[1] != b"/gone" for t in s.requests) for s in three)
    # POST /empty: the route's method condition fails, so the default upstream answers
    assert ask(p.port, "/empty", method="POST", extra="Content-Length: 0\n")[0] == 404


@pytest.mark.parametrize("route, problem", [
    ({"return": {"status": 301}}, "listeners[0].routes[0].return.location: required"),
    ({"return": {"status": 99}}, "listeners[0].routes[0].return.status: expected a status"),
    ({"return": {"status": 200, "body": "{x}"}}, "listeners[0].routes[0].return.body: unknown variable"),
    ({"return": {"status": 200}, "upstream": "a"}, "listeners[0].routes[0].return: a route answers"),
])
def test_answer_problems(route, problem):
    with pytest.raises(ConfigError) as info:
        from_dict({"listeners": [{"listen": "127.0.0.1:0", "upstream": "a", "routes": [route]}],
                   "upstreams": {"a": {"servers": ["http://127.0.0.1:9"]}}})
    assert info.value.problems[0].startswith(problem), info.value.problems


def test_shadowing_copies_and_never_slows_the_primary(start_proxy, three, tmp_path):
    import socket
    import threading
    import time

    held = []
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)

    def accept():                     # a shadow group that takes requests, never answers
        while True:
            try:
                c, _ = hole.accept()
            except OSError:
                return
            held.append(c)
    threading.Thread(target=accept, daemon=True).start()
    cfg = tmp_path / "shadow.toml"
    cfg.write_text(f"""
[[listeners]]
listen = "127.0.0.1:0"
upstream = "v1"
[[listeners.routes]]
path = "/size/"
upstream = "v1"
shadow = {{ upstream = "v2", max_in_flight = 3 }}
[[listeners.routes]]
path = "/echo"
upstream = "v1"
shadow = {{ upstream = "v3" }}
[upstreams.v1]
servers = ["{three[0].url}"]
[upstreams.v2]
servers = ["http://127.0.0.1:{hole.getsockname()[1]}"]
[upstreams.v3]
servers = ["{three[2].url}"]
""")
    try:
        p = start_proxy("serve", "--config", str(cfg))
        t0 = time.monotonic()
        for i in range(10):
            assert ask(p.port, f"/size/{i}")[:2] == (200, str(three[0].port))
        assert time.monotonic() - t0 < 3          # the silent shadow held nobody up
        time.sleep(0.5)
        assert len(held) == 3, p.stderr_lines[-20:]  # bounded: the other copies were dropped
        for i in range(5):
            ask(p.port, f"/echo?i={i}")
        r = request(p.port, crlf("POST /echo HTTP/1.1\nHost: x\nContent-Length: 2\n\nhi"),
                    method="POST")
        assert r.status == 200
        deadline = time.monotonic() + 5
        while len(three[2].requests) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        copies = [t for m, t, h in three[2].requests]
        # The POST is copied with its body (tests/proxy/test_shadow_body.py).
        assert sorted(copies) == sorted([b"/echo"] + [f"/echo?i={i}".encode() for i in range(5)])
        assert len(three[0].requests) == 16
    finally:
        hole.close()
        for c in held:
            c.close()


def test_canary_reload_moves_only_users_who_must(start_proxy, three, tmp_path):
    # Raising the share moves users onto the canary only; nobody already there leaves.
    import signal
    import time
    cfg = tmp_path / "routes.toml"

    def write(percent):
        cfg.write_text(f"""
[[listeners]]
listen = "127.0.0.1:0"
upstream = "v1"
[[listeners.routes]]
path = "/"
upstream = "v1"
canary = {{ upstream = "v2", percent = {percent}, key = "header:X-User" }}
[upstreams.v1]
servers = ["{three[0].url}"]
[upstreams.v2]
servers = ["{three[1].url}"]
""")
    write(20)
    p = start_proxy("serve", "--config", str(cfg))

    def sides():
        return {u: origin_of(three, ask(p.port, "/size/1", extra=f"X-User: u{u}\n")[1])
                for u in range(60)}
    before = sides()
    write(50)
    p.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("reloaded" in ln for ln in p.stderr_lines):
        time.sleep(0.05)
    after = sides()
    on_before = {u for u, s in before.items() if s == 2}
    on_after = {u for u, s in after.items() if s == 2}
    assert on_before < on_after               # more users on the canary, all earlier ones kept
    assert 0.05 < len(on_before) / 60 < 0.4 and 0.3 < len(on_after) / 60 < 0.7


def test_http_to_https_listener_needs_no_upstream(start_proxy, tmp_path):
    cfg = tmp_path / "redirect.toml"
    cfg.write_text('[[listeners]]\nlisten = "127.0.0.1:0"\n[[listeners.routes]]\npath = "/"\n'
                   'return = { status = 308, location = "https://{hostname}{path}" }\n')
    p = start_proxy("serve", "--config", str(cfg))
    r = request(p.port, crlf("GET /login?next=%2F HTTP/1.1\nHost: shop.test:80\n\n"))
    assert (r.status, r.getheader("Location")) == (308, "https://shop.test/login?next=%2F")


def test_route_response_header_edits_apply_to_cache_hits(start_proxy, three, tmp_path):
    # The cache stores the origin's head; hits were written from it without the route's
    # edits (a miss had X-Route, the hit after it did not).
    p = start(start_proxy, tmp_path, three, """
[[listeners.routes]]
path = "/c/"
upstream = "v1"
response_headers = { set = { X-Frame-Options = "DENY" }, add = { X-Route = "{method} {path}" }, remove = ["X-Origin"] }
[cache]
size = "32MiB"
""")
    target = "/c/edited?cc=max-age%3D600"
    seen = []
    for method, extra in (("GET", ""), ("GET", ""), ("HEAD", ""), ("GET", "Range: bytes=0-1\n")):
        r = request(p.port, crlf(f"{method} {target} HTTP/1.1\nHost: x.test\n{extra}\n"),
                    method=method)
        seen.append((r.status, r.getheader("Cache-Status", "")))
        assert r.getheader("X-Route") == f"{method} {target}", (method, r.headers)
        assert r.getheader("X-Frame-Options") == "DENY" and r.getheader("X-Origin") is None
        assert len(r.headers.get_all("X-Route")) == 1
    assert [s for s, _ in seen] == [200, 200, 200, 206], seen
    assert all("hit" in cs for _, cs in seen[1:]), seen   # answered from the cache
