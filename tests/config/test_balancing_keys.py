"""Config errors of the slow-start and request-id keys: one line naming the key, exit 2.

Real `fastproxy check` processes, as a user runs them.
"""
from __future__ import annotations

import subprocess
import sys

import pytest


def check(text: str, tmp_path) -> subprocess.CompletedProcess:
    conf = tmp_path / "c.toml"
    conf.write_text(text)
    return subprocess.run([sys.executable, "-m", "fastproxy", "check", "--config", str(conf)],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def group(extra: str) -> str:
    return ('[[listeners]]\nlisten = "127.0.0.1:0"\nupstream = "a"\n[upstreams.a]\n'
            f'servers = ["http://127.0.0.1:9"]\n{extra}\n')


@pytest.mark.parametrize("extra, line", [
    ('slow_start = "abc"', "upstreams.a.slow_start: "),
    ("slow_start = -1", "upstreams.a.slow_start: "),
    ('slow_start = "2h"', "upstreams.a.slow_start: "),
    ('balance = "maglev"\nslow_start = "10s"',
     'upstreams.a.slow_start: not applied by balance = "maglev"'),
])
def test_bad_slow_start_is_one_line_naming_the_key(tmp_path, extra, line):
    r = check(group(extra), tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("fastproxy: " + line), lines


@pytest.mark.parametrize("extra", ['slow_start = "30s"', 'balance = "least_conn"\nslow_start = 5',
                                   'balance = "maglev"\nslow_start = 0'])
def test_good_slow_start_is_accepted(tmp_path, extra):
    r = check(group(extra), tmp_path)
    assert r.returncode == 0, r.stderr


LISTENER = '[[listeners]]\nlisten = "127.0.0.1:0"\nupstream = "a"\n' \
    '[upstreams.a]\nservers = ["http://127.0.0.1:9"]\n'


@pytest.mark.parametrize("headers, line", [
    ('request_id = "X Request"', "headers.request_id: "),
    ("request_id = 3", "headers.request_id: "),
    ('request_id = "Host"', "headers.request_id: 'Host' is a field the proxy"),
    ('request_id = "x-forwarded-for"', "headers.request_id: "),
    ("request_id_trust = true", "headers.request_id_trust: needs headers.request_id"),
    ('request_id = "X-Request-ID"\nrequest_id_trust = "yes"', "headers.request_id_trust: "),
])
def test_bad_request_id_is_one_line_naming_the_key(tmp_path, headers, line):
    r = check(LISTENER + f"[headers]\n{headers}\n", tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("fastproxy: " + line), lines


def test_request_id_in_the_log_format_is_known(tmp_path):
    r = check(LISTENER + '[headers]\nrequest_id = "X-Request-ID"\nrequest_id_trust = true\n'
              '[access_log]\npath = "-"\nformat = "$request_id $status"\n', tmp_path)
    assert r.returncode == 0, r.stderr
