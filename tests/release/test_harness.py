"""The harness fastproxy.testing (shipped to users; tests/conftest.py runs the suite's proxies
with it): ready when every listener is bound, errors with the proxy's own words, nothing left
running or open after it.

A pipe left open until garbage collection raises a ResourceWarning in whichever later test
happens to collect it, and tests that turn warnings into errors then fail at random.
"""
import os
import tomllib
import urllib.request
from pathlib import Path

import pytest

from fastproxy import testing


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; Popen.wait reaped it if stop() ran.
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_a_stopped_proxy_has_its_output_pipes_closed(start_proxy):
    proxy = start_proxy("serve", "--mode", "forward", "--listen", "127.0.0.1:0")
    proxy.stop()
    assert proxy.proc.returncode is not None
    assert proxy.proc.stdout.closed and proxy.proc.stderr.closed
    assert any("listening on" in line for line in proxy.stderr_lines)


def test_run_from_a_dict_binds_port_0_and_serves(origin):
    config = {"listeners": [{"upstream": "web"}, {"mode": "forward", "name": "fwd"}],
              "admin": "127.0.0.1:0",
              "upstreams": {"web": {"servers": [origin.url]}}}
    with testing.run(config) as proxy:
        assert len(proxy.ports) == 3 and len(set(proxy.ports)) == 3 and 0 not in proxy.ports
        assert proxy.kinds == ["reverse", "forward", "admin"]
        assert proxy.address == ("127.0.0.1", proxy.port)
        assert proxy.url == f"http://127.0.0.1:{proxy.port}"
        with urllib.request.urlopen(proxy.url + "/size/5", timeout=5) as r:
            assert r.status == 200 and r.read() == b"01234"
        written = tomllib.loads(Path(proxy.config_path).read_text())
        assert written["listeners"][0]["listen"] == "127.0.0.1:0"
        pid = proxy.pid
    assert not _alive(pid)
    assert proxy.proc.returncode == 0
    assert proxy.proc.stdout.closed and proxy.proc.stderr.closed


def test_run_from_toml_text(origin):
    text = f'[[listeners]]\nlisten = "127.0.0.1:0"\nupstream = "web"\n' \
           f'[upstreams.web]\nservers = ["{origin.url}"]\n'
    with testing.run(text) as proxy, urllib.request.urlopen(proxy.url + "/size/2", timeout=5) as r:
        assert r.read() == b"01"


def test_a_bad_config_raises_with_the_proxys_message():
    config = {"listeners": [{"mode": "reverse", "upstream": "nowhere"}]}
    with pytest.raises(testing.ProxyStartError) as info, testing.run(config):
        pytest.fail("a proxy with an unknown upstream group started")
    assert info.value.returncode == 2
    assert any("nowhere" in line for line in info.value.stderr)
    assert "nowhere" in str(info.value) and "exited with code 2" in str(info.value)
    assert not any("Traceback" in line for line in info.value.stderr)


def test_a_toml_syntax_error_raises_with_the_line():
    with pytest.raises(testing.ProxyStartError) as info, testing.run("[[listeners]\nlisten = 1\n"):
        pass
    assert info.value.returncode == 2 and "line 1" in str(info.value)


def test_waiting_for_more_listeners_than_bound_times_out_and_stops(origin):
    config = {"listeners": [{"upstream": "web"}], "upstreams": {"web": {"servers": [origin.url]}}}
    with pytest.raises(testing.ProxyStartError, match="not listening after 1.0s") as info, \
            testing.run(config, listeners=2, timeout=1.0):
        pass
    assert info.value.returncode is not None  # stopped, not left running


def test_the_process_stops_when_the_block_raises(origin):
    config = {"listeners": [{"upstream": "web"}], "upstreams": {"web": {"servers": [origin.url]}}}
    with pytest.raises(KeyError), testing.run(config) as proxy:
        pid = proxy.pid
        raise KeyError("the test's own failure")
    assert not _alive(pid)


def test_workers_each_report_their_listener(origin):
    config = {"workers": 2, "listeners": [{"upstream": "web"}],
              "upstreams": {"web": {"servers": [origin.url]}}}
    with testing.run(config) as proxy:
        assert len(proxy.ports) == 2 and proxy.ports[0] == proxy.ports[1]


def test_to_toml_round_trips_what_tomllib_parses():
    doc = {"workers": 1, "ratio": 0.5, "on": True,
           "listeners": [{"listen": "127.0.0.1:0", "routes": [{"host": "a", "path": "/x"}],
                          "acl": {"rules": [{"action": "deny", "ports": [1, 2]}]}}],
           "upstreams": {"web": {"servers": ['http://h"1\\', "ü\n\t"],
                                 "retry": {"attempts": 2}},
                         "api-v2": {"servers": []}, "a.b": {"x": "y"}}}
    assert tomllib.loads(testing.to_toml(doc)) == doc
    with pytest.raises(TypeError, match="None"):
        testing.to_toml({"x": None})
