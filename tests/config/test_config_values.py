"""Values that used to get past `fastproxy check` (or crash it): each is exit 2 and one line
naming the key, in `check` and in `serve` alike, and never a traceback."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from conftest import PKG_PARENT
from fastproxy.config import load as cfg
from fastproxy.config.load import ConfigError

BASE = """
[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
[upstreams.app]
servers = ["http://127.0.0.1:9"]
"""
HUGE = "9" * 400


def run(*args, cwd=None, timeout=20):
    env = dict(os.environ, PYTHONPATH=PKG_PARENT)
    return subprocess.run([sys.executable, "-m", "fastproxy", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env, stdin=subprocess.DEVNULL)


def one_line_naming(r, key: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fastproxy: {key}"), r.stderr


CASES = [
    # (TOML added to BASE, the key the line must start with)
    (f'[limits]\nmax_body = "{HUGE}"', "limits.max_body:"),
    (f'[limits]\nmax_body = "{HUGE}.5KiB"', "limits.max_body:"),
    (f"[limits]\nmax_body = {2**63 - 1}", "limits.max_body:"),
    (f'[cache]\nsize = "{HUGE}"', "cache.size:"),
    ('[cache]\nsize = "1PiB"', "cache.size:"),
    ('[cache]\nsize = "64MiB"\nmax_object_size = "100GiB"', "cache.max_object_size:"),
    (f'[cache]\nsize = "64MiB"\nmax_entries = {2**63 - 1}', "cache.max_entries:"),
    (f"[limits]\nmax_header_fields = {2**63 - 1}", "limits.max_header_fields:"),
    ('[limits]\nmax_header_size = "2GiB"', "limits.max_header_size:"),
    ('[limits]\nmax_request_line = "4GiB"', "limits.max_request_line:"),
    (f"[limits]\nmax_connections = {2**63 - 1}", "limits.max_connections:"),
    (f'[timeouts]\nclient_header = "{HUGE}s"', "timeouts.client_header:"),
    ("[timeouts]\ndrain = 1e300", "timeouts.drain:"),
    ("[timeouts]\ndrain = inf", "timeouts.drain:"),
    ("workers = 1e3", "workers:"),
    ('reuseport_balance = "random"', "reuseport_balance:"),
    ("reuseport_balance = true", "reuseport_balance:"),
]
GROUP_CASES = [
    (f"keepalive = {2**63 - 1}", "upstreams.app.keepalive:"),
    (f"keepalive_requests = {2**63 - 1}", "upstreams.app.keepalive_requests:"),
    ("hash_balance_factor = inf", "upstreams.app.hash_balance_factor:"),
    ("keepalive_timeout = nan", "upstreams.app.keepalive_timeout:"),
    ('pool_purge_delay = "2h"', "upstreams.app.pool_purge_delay:"),
    ("pool_purge_delay = -1", "upstreams.app.pool_purge_delay:"),
    (f"[upstreams.app.health]\ninterval = {2**63 - 1}", "upstreams.app.health.interval:"),
    (f"[upstreams.app.breaker]\nmax_requests = {2**63 - 1}", "upstreams.app.breaker.max_requests:"),
    ("[upstreams.app.retry]\nbudget_ratio = nan", "upstreams.app.retry.budget_ratio:"),
    (f"[upstreams.app.outlier]\nconsecutive_failures = {2**63 - 1}",
     "upstreams.app.outlier.consecutive_failures:"),
    (f'[upstreams.app.outlier]\nbase_ejection = "{HUGE}s"', "upstreams.app.outlier.base_ejection:"),
    # Found by the fuzzer: a number where a list goes (TypeError in the feature's check).
    ("[upstreams.app.retry]\nextra_methods = 0", "upstreams.app.retry.extra_methods:"),
]
LISTENER_CASES = [
    ("[listeners.rate_limit]\nrate = inf", "listeners[0].rate_limit.rate:"),
    (f"[listeners.rate_limit]\nburst = {2**63 - 1}\nrate = 5", "listeners[0].rate_limit.burst:"),
    (f"[listeners.rate_limit]\nmax_keys = {2**63 - 1}", "listeners[0].rate_limit.max_keys:"),
]


def _documents():
    for extra, key in CASES:
        yield extra + "\n" + BASE, key
    for extra, key in GROUP_CASES:
        # Group keys sit in [upstreams.app]; sub-tables follow it.
        yield BASE + extra + "\n", key
    for extra, key in LISTENER_CASES:
        yield BASE.replace('upstream = "app"\n', 'upstream = "app"\n' + extra + "\n", 1), key


DOCS = list(_documents()) + [
    # Found by the fuzzer: a list of numbers for the users table (TypeError in AuthConfig).
    ('[[listeners]]\nlisten = "127.0.0.1:0"\nmode = "forward"\n[listeners.auth]\n'
     'users = [0]\n', "listeners[0].auth.users:"),
    # Found by the fuzzer: an empty group name passed check; serve died (KeyError: '').
    ('[[listeners]]\nlisten = "127.0.0.1:0"\nmode = "tcp"\nupstream = ""\n',
     "listeners[0].upstream:"),
]


@pytest.mark.parametrize("text,key", DOCS, ids=[k for _, k in DOCS])
def test_check_and_serve_agree_exit_2_naming_the_key(tmp_path, text, key):
    path = tmp_path / "c.toml"
    path.write_text(text)
    one_line_naming(run("check", "--config", str(path)), key)
    one_line_naming(run("serve", "--config", str(path)), key)


def test_non_utf8_file_names_the_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(BASE.encode() + b"# caf\xe9\n")
    for command in ("check", "serve"):
        r = run(command, "--config", str(path))
        one_line_naming(r, f"{path}: invalid TOML: not UTF-8")


def test_pidfile_serve_cannot_write_is_a_config_error(tmp_path):
    # serve used to fail only when writing it (exit 1) while check said the file was fine.
    for pidfile in (tmp_path / "missing" / "x.pid", str(tmp_path / "dir") + "/"):
        path = tmp_path / "c.toml"
        path.write_text(f'pidfile = "{pidfile}"\n' + BASE)
        for command in ("check", "serve"):
            r = run(command, "--config", str(path))
            one_line_naming(r, "pidfile:")


def test_access_log_in_a_missing_directory(tmp_path):
    path = tmp_path / "c.toml"
    log = tmp_path / "missing" / "access.log"
    path.write_text(BASE + f'[access_log]\npath = "{log}"\n')
    for command in ("check", "serve"):
        r = run(command, "--config", str(path))
        one_line_naming(r, "access_log.path:")
        assert "missing" in r.stderr
    r = run("check", "--upstream", "http://127.0.0.1:9", "--access-log", str(log))
    one_line_naming(r, "--access-log")
    # A directory is not a log file either; a writable file path is fine.
    r = run("check", "--upstream", "http://127.0.0.1:9", "--access-log", str(tmp_path))
    one_line_naming(r, "--access-log")
    # A path ending in "/" names a directory even when nothing exists there yet (open()
    # would fail with IsADirectoryError inside the worker); found by the config fuzz test.
    for command in ("check", "serve"):
        r = run(command, "--upstream", "http://127.0.0.1:9", "--access-log",
                str(tmp_path / "notyet") + "/")
        one_line_naming(r, "--access-log")
        assert "directory" in r.stderr
    r = run("check", "--upstream", "http://127.0.0.1:9", "--access-log",
            str(tmp_path / "fine.log"))
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "fine.log").exists()   # check does not leave files behind


@pytest.mark.parametrize("value", ["notaurl", "http://", "127.0.0.1", "http://:80",
                                   "http://no-such-host.invalid:80"])
def test_upstream_flag_needs_a_scheme_or_port_and_a_resolvable_host(value):
    for command in ("check", "serve"):
        r = run(command, "--listen", "127.0.0.1:0", "--upstream", value)
        one_line_naming(r, f"--upstream {value}:")


@pytest.mark.parametrize("value,says", [
    ("http://user:pw@127.0.0.1:9", "user info"),
    ("http://127.0.0.1:9?x=1", "query"),
])
def test_upstream_url_parts_it_cannot_have_are_named(value, says):
    # "http://u:p@host:9" was told "IPv6 addresses need brackets" and "http://host:9?x=1"
    # "expected a port number": wrong leads for a user who pasted a URL.
    r = run("check", "--listen", "127.0.0.1:0", "--upstream", value)
    one_line_naming(r, f"--upstream {value}:")
    assert says in r.stderr, r.stderr
    assert "IPv6" not in r.stderr and "port number" not in r.stderr, r.stderr


def test_upstream_in_a_file_that_does_not_resolve_names_the_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(BASE.replace("http://127.0.0.1:9", "http://no-such-host.invalid:9"))
    one_line_naming(run("check", "--config", str(path)), "upstreams.app.servers[0]:")
    # ... unless the group resolves at run time.
    path.write_text(BASE.replace("http://127.0.0.1:9", "http://no-such-host.invalid:9")
                    + 'resolve = "runtime"\n')
    r = run("check", "--config", str(path))
    assert r.returncode == 0, r.stderr


def test_upstream_forms_that_stay_valid():
    for value in ("http://localhost", "localhost:9000", "https://127.0.0.1", "tcp://[::1]:5432",
                  "127.0.0.1:9000#weight=2"):
        doc = {"listeners": [{"listen": "127.0.0.1:0", "upstream": "a",
                              "mode": "tcp" if value.startswith("tcp") else "reverse"}],
               "upstreams": {"a": {"servers": [value]}}}
        cfg.from_dict(doc)


def test_a_listener_on_a_name_that_does_not_resolve(tmp_path):
    with pytest.raises(ConfigError, match=r"^listeners\[0\].listen: "):
        cfg.from_dict({"listeners": [{"listen": "no-such-host.invalid:80", "mode": "forward"}]})


def test_ranges_are_inclusive_at_both_ends():
    doc = {"listeners": [{"listen": "127.0.0.1:0", "mode": "forward"}],
           "limits": {"max_header_size": "16MiB", "max_header_fields": 10000,
                      "max_request_line": "1MiB", "max_connections": 1000000},
           "timeouts": {"drain": "365d", "client_header": 0}}
    c = cfg.from_dict(doc)
    assert c.limits.max_header_size == 16 << 20 and c.limits.max_header_fields == 10000
    assert c.timeouts.drain == 365 * 86400
    doc["timeouts"]["drain"] = "366d"
    with pytest.raises(ConfigError, match=r"^timeouts.drain: "):
        cfg.from_dict(doc)


def test_serve_with_extreme_but_valid_values_serves(tmp_path, origin):
    # The top of every range must fit the compiled layer (C int, Py_ssize_t, long long).
    path = tmp_path / "c.toml"
    path.write_text(f"""
[limits]
max_header_size = "16MiB"
max_header_fields = 10000
max_request_line = "1MiB"
max_body = "1PiB"
max_connections = 1000000
[timeouts]
client_header = "365d"
drain = "1s"
[[listeners]]
listen = "127.0.0.1:0"
upstream = "app"
[upstreams.app]
servers = ["{origin.url}"]
keepalive = 100000
keepalive_requests = 1000000000
hash_balance_factor = 100
pool_purge_delay = "1h"
""")
    from conftest import ProxyProcess

    p = ProxyProcess(["serve", "--config", str(path)], cwd=str(tmp_path)).wait_ready()
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(b"GET /size/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"012"), data
    finally:
        assert p.stop() == 0


def test_a_server_listed_twice_in_a_group(tmp_path):
    # Found by the fuzzer: check said ok, serve died in the balancer.
    path = tmp_path / "c.toml"
    path.write_text(BASE.replace('["http://127.0.0.1:9"]',
                                 '["http://127.0.0.1:9", "127.0.0.1:9#weight=2"]'))
    for command in ("check", "serve"):
        one_line_naming(run(command, "--config", str(path)), "upstreams.app.servers[1]:")


# str.isdigit() is true for "²" and int() takes "٤٤٣" and "4_43": digits a config never
# means. Each used to be a traceback (exit 1), Python's "invalid literal for int()", or a
# value silently read as a number.
NON_ASCII_DIGIT_FLAGS = [
    (("--mode", "forward", "--connect-ports", "¹"), "--connect-ports ¹:"),
    (("--mode", "forward", "--connect-ports", "4_43"), "--connect-ports 4_43:"),
    (("--upstream", "http://127.0.0.1:9", "--workers", "²"), "--workers ²:"),
    (("--listen", "127.0.0.1:¹", "--upstream", "http://127.0.0.1:9"), "--listen 127.0.0.1:¹:"),
    (("--upstream", "http://127.0.0.1:¹"), "--upstream http://127.0.0.1:¹:"),
]
NON_ASCII_DIGIT_DOCS = [
    ('[timeouts]\nclient_idle = "٥s"\n' + BASE, "timeouts.client_idle:"),
    ('[limits]\nmax_body = "١KiB"\n' + BASE, "limits.max_body:"),
    ('[cache]\nsize = "1０MiB"\n' + BASE, "cache.size:"),
    ('admin = "127.0.0.1:²"\n' + BASE, "admin:"),
    (BASE.replace("127.0.0.1:9", "127.0.0.1:9#weight=²"), "upstreams.app.servers[0]:"),
    ('[[listeners]]\nlisten = "127.0.0.1:0"\nmode = "forward"\nconnect_ports = ["٤٤٣"]\n',
     "listeners[0]"),
]


@pytest.mark.parametrize("args,key", NON_ASCII_DIGIT_FLAGS, ids=[k for _, k in NON_ASCII_DIGIT_FLAGS])
def test_non_ascii_digits_in_a_flag(args, key):
    r = run("check", *args)
    one_line_naming(r, key)
    assert "invalid literal" not in r.stderr


@pytest.mark.parametrize("text,key", NON_ASCII_DIGIT_DOCS, ids=[k for _, k in NON_ASCII_DIGIT_DOCS])
def test_non_ascii_digits_in_the_file(tmp_path, text, key):
    path = tmp_path / "c.toml"
    path.write_text(text)
    r = run("check", "--config", str(path))
    one_line_naming(r, key)
    assert "invalid literal" not in r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("first,second,admin", [
    ("0.0.0.0", "127.0.0.1", None),     # a wildcard and an address of its family
    ("[::]", "[::1]", None),
    ("127.0.0.1", "0.0.0.0", None),
    ("127.0.0.1", None, "127.0.0.1"),   # the admin on a listener's address
], ids=["wildcard-first", "ipv6-wildcard", "wildcard-second", "admin"])
def test_listen_addresses_the_kernel_would_refuse_together(tmp_path, first, second, admin):
    # check said ok and serve bound the first one, then exited 1 with "Address already in
    # use": a configuration error found late, with the wrong exit code.
    port = _free_port()
    text = f'pidfile = false\nadmin = "{admin}:{port}"\n' if admin else "pidfile = false\n"
    text += BASE.replace('"127.0.0.1:0"', f'"{first}:{port}"')
    if second:
        text += f'[[listeners]]\nlisten = "{second}:{port}"\nmode = "forward"\n'
    path = tmp_path / "c.toml"
    path.write_text(text)
    key = "admin:" if admin else "listeners[1].listen:"
    for command in ("check", "serve"):
        one_line_naming(run(command, "--config", str(path)), key)


def test_listen_addresses_that_coexist(tmp_path):
    # IPv6 listeners are V6ONLY: [::] and 0.0.0.0 on one port both bind; port 0 is one each.
    port = _free_port()
    path = tmp_path / "c.toml"
    path.write_text('admin = "127.0.0.1:0"\n' + BASE.replace('"127.0.0.1:0"', f'"[::]:{port}"')
                    + f'[[listeners]]\nlisten = "0.0.0.0:{port}"\nmode = "forward"\n'
                    + '[[listeners]]\nlisten = "127.0.0.1:0"\nmode = "forward"\n'
                    + '[[listeners]]\nlisten = "127.0.0.1:0"\nmode = "forward"\n')
    r = run("check", "--config", str(path))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("first,second,key", [
    ('name = "x"\n', 'name = "x"\n', "listeners[1].name: 'x' also names listeners[0]"),
    ("", 'name = "listener0"\n', "listeners[1].name: 'listener0' also names listeners[0]"),
    ('name = "listener1"\n', "", "listeners[0].name: 'listener1' also names listeners[1]"),
], ids=["same-name", "second-takes-the-default", "first-takes-the-default"])
def test_two_listeners_with_one_name(tmp_path, first, second, key):
    # The name keys /status's listeners and labels the metrics: two alike were shown as
    # one (the last) and their request histograms summed.
    text = ("pidfile = false\n[upstreams.app]\nservers = [\"http://127.0.0.1:9\"]\n"
            f'[[listeners]]\n{first}listen = "127.0.0.1:0"\nupstream = "app"\n'
            f'[[listeners]]\n{second}listen = "127.0.0.1:0"\nmode = "forward"\n')
    path = tmp_path / "c.toml"
    path.write_text(text)
    for command in ("check", "serve"):
        one_line_naming(run(command, "--config", str(path)), key)


@pytest.mark.parametrize("listener, servers, key, says", [
    # Passed check, then serve died at start with a KeyError traceback: routes match HTTP
    # requests, so a tcp listener given only routes had no group to connect to.
    ('mode = "tcp"\nroutes = [{path = "/", upstream = "a"}]', '["tcp://127.0.0.1:9"]',
     "listeners[0].routes:", "HTTP listeners only"),
    # Passed check: the reverse listener then spoke HTTP to a server declared as raw TCP.
    ('mode = "reverse"\nupstream = "a"', '["tcp://127.0.0.1:9", "http://127.0.0.1:10"]',
     "listeners[0].upstream:", "http:// or https://"),
])
def test_a_listener_and_its_servers_must_speak_alike(tmp_path, listener, servers, key, says):
    path = tmp_path / "c.toml"
    path.write_text(f'[[listeners]]\nlisten = "127.0.0.1:0"\n{listener}\n'
                    f'[upstreams.a]\nservers = {servers}\n')
    for command in ("check", "serve"):
        r = run(command, "--config", str(path))
        one_line_naming(r, key)
        assert says in r.stderr, r.stderr
