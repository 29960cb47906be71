"""Configuration: TOML and flags validated once; every problem is one line naming the key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fastproxy.config import load as cfg
from fastproxy.config.load import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fastproxy", *args], capture_output=True,
                          text=True, timeout=30, cwd=cwd)


@pytest.mark.parametrize("text,seconds", [
    ("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5), (3, 3.0),
])
def test_durations(text, seconds):
    assert cfg.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5x", "", "-1s", True, [1], "s"])
def test_bad_durations(bad):
    with pytest.raises(ValueError, match="duration"):
        cfg.parse_duration(bad)


@pytest.mark.parametrize("text,n", [("64KiB", 65536), ("256MiB", 256 << 20), ("1g", 1 << 30),
                                    ("4096", 4096), (10, 10), ("0", 0)])
def test_sizes(text, n):
    assert cfg.parse_size(text) == n


@pytest.mark.parametrize("text,expect", [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:80", ("::1", 80)),
    (":9000", ("127.0.0.1", 9000)), ("8081", ("127.0.0.1", 8081)),
])
def test_addresses(text, expect):
    assert cfg.parse_address(text) == expect


@pytest.mark.parametrize("bad", ["::1:80", "host:99999", "host:", "[::1]80", ""])
def test_bad_addresses(bad):
    with pytest.raises(ValueError):
        cfg.parse_address(bad)


def test_server_urls():
    assert cfg.parse_server_url("http://10.0.0.1:9000#weight=3") == \
        cfg.ServerSpec("10.0.0.1", 9000, 3, "http")
    assert cfg.parse_server_url("https://example.com") == \
        cfg.ServerSpec("example.com", 443, 1, "https")
    assert cfg.parse_server_url({"url": "tcp://[::1]:5432", "weight": 2}) == \
        cfg.ServerSpec("::1", 5432, 2, "tcp")
    for bad in ("ftp://x:1", "http://x:1/path", "tcp://x", "http://x:1#weight=0"):
        with pytest.raises(ValueError):
            cfg.parse_server_url(bad)


def test_example_file_is_valid():
    c = cfg.load(str(ROOT / "examples" / "fastproxy.toml"))
    assert [lc.mode for lc in c.listeners] == ["reverse", "tcp", "forward", "forward"]
    assert c.upstreams["api"].balance == "maglev"
    assert c.upstreams["web"].servers[1].weight == 2
    route = c.listeners[0].routes[0]
    assert route.canary.percent == 10 and route.canary.key == "client_ip"


def test_every_problem_is_reported_with_its_key():
    doc = {
        "workers": "many",
        "timeouts": {"upstream_connect": "5x", "nonsense": 1},
        "listeners": [{"listen": "127.0.0.1:8000", "upstream": "missing", "color": "red"}],
        "upstreams": {"a": {"servers": ["http://127.0.0.1:1"], "balance": "fastest"}},
    }
    with pytest.raises(ConfigError) as info:
        cfg.from_dict(doc)
    problems = info.value.problems
    expected_keys = ["workers", "timeouts.upstream_connect", "timeouts.nonsense",
                     "listeners[0].upstream", "listeners[0].color", "upstreams.a.balance"]
    for key in expected_keys:
        assert any(p.startswith(key + ":") for p in problems), (key, problems)
    assert 'timeouts.upstream_connect: expected a duration like "5s", got \'5x\'' in problems


def test_duplicate_listen_address():
    doc = {"listeners": [{"listen": "127.0.0.1:8000", "upstream": "a"},
                         {"listen": "127.0.0.1:8000", "upstream": "a"}],
           "upstreams": {"a": {"servers": ["http://127.0.0.1:1"]}}}
    with pytest.raises(ConfigError, match=r"listeners\[1\].listen: .* also used"):
        cfg.from_dict(doc)


def test_tcp_listener_needs_tcp_servers():
    doc = {"listeners": [{"listen": "127.0.0.1:8000", "mode": "tcp", "upstream": "a"}],
           "upstreams": {"a": {"servers": ["http://127.0.0.1:1"]}}}
    with pytest.raises(ConfigError, match="tcp://"):
        cfg.from_dict(doc)


def test_check_command_good_file():
    r = run("check", "--config", str(ROOT / "examples" / "fastproxy.toml"))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_check_command_bad_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[timeouts]\nupstream_header = "soon"\n[[listeners]]\nlisten = "x:1:2"\n')
    r = run("check", "--config", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert any(line.startswith("fastproxy: timeouts.upstream_header:") for line in lines)
    assert any(line.startswith("fastproxy: listeners[0].listen:") for line in lines)
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("content,needle", [
    ("this is = = not toml", "invalid TOML"),
    (None, "cannot read"),
    ("listeners = 5", "listeners: expected a non-empty list"),
    ("listeners = [5]", "listeners[0]: expected a table"),
])
def test_check_command_unreadable(tmp_path, content, needle):
    path = tmp_path / "c.toml"
    if content is not None:
        path.write_text(content)
    r = run("check", "--config", str(path))
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,needle", [
    (["serve", "--listen", "nope"], "--listen nope: "),
    (["serve", "--upstream", "ftp://x:1"], "unsupported scheme"),
    (["serve", "--bogus"], "unrecognized arguments"),
    (["serve", "--balance", "maglev"], "--balance"),
    (["serve", "--workers", "0", "--upstream", "http://127.0.0.1:1"], "workers"),
    (["serve", "--cache", "lots"], "--cache lots: "),
])
def test_bad_flags_exit_2_with_one_line(args, needle):
    r = run(*args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_version_and_help():
    import fastproxy

    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"fastproxy {fastproxy.__version__}"
    r = run("--help")
    assert r.returncode == 0 and "serve" in r.stdout and "check" in r.stdout


def test_listen_port_in_use_is_reported(start_proxy, origin):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        r = run("serve", "--listen", f"127.0.0.1:{port}", "--upstream", origin.url)
        assert r.returncode != 0
        assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        s.close()
