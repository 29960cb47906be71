"""Request ids, as nginx's $request_id and HAProxy's unique-id-header, over real sockets.

`headers.request_id = "X-Request-ID"` sends each request's id upstream in that field and
the access log's `$request_id` names the same id; the client's own field of that name is
replaced unless `headers.request_id_trust` keeps a well-formed one. Both the compiled
fast path and the Python handler (FASTPROXY_NO_FASTPATH) are run.
"""
import json
import os
import re
import time

import pytest

from conftest import reverse_config
from wire import Conn, crlf

HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(params=["fast", "handler"])
def env(request):
    """The compiled fast path, or the Python handler alone."""
    e = dict(os.environ)
    if request.param == "handler":
        e["FASTPROXY_NO_FASTPATH"] = "1"
    return e


def start(run_proxy, origin, tmp_path, env, **headers):
    log = tmp_path / "access.log"
    cfg = reverse_config(origin.url, access_log={"path": str(log),
                                                 "format": "$request_id $status $target"})
    if headers:
        cfg["headers"] = headers
    return run_proxy(cfg, env=env), log


def echo(port: int, *fields: str, target: str = "/echo") -> dict:
    """The request fields the origin received (lowercase names; every value of each)."""
    with Conn(port) as c:
        c.send(crlf(f"GET {target} HTTP/1.1\nHost: x\n" + "".join(f + "\n" for f in fields)
                    + "\n"))
        r = c.response()
    assert r.status == 200
    got: dict = {}
    for name, value in json.loads(r.body)["headers"]:
        got.setdefault(name.lower(), []).append(value)
    return got


def log_lines(log, count: int) -> list[list[str]]:
    """The first `count` access log lines, split (the log is flushed every 0.2 s)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= count:
            return [line.split(" ") for line in lines]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} access log lines: {lines}")


def test_each_request_gets_an_id_sent_upstream_and_logged(run_proxy, origin, tmp_path, env):
    p, log = start(run_proxy, origin, tmp_path, env, request_id="X-Request-ID")
    first = echo(p.port)["x-request-id"]
    second = echo(p.port, target="/echo?2")["x-request-id"]
    assert len(first) == 1 and HEX32.fullmatch(first[0]), first
    assert len(second) == 1 and HEX32.fullmatch(second[0]), second
    assert first != second
    lines = log_lines(log, 2)
    assert lines[0] == [first[0], "200", "/echo"]
    assert lines[1] == [second[0], "200", "/echo?2"]


def test_a_client_id_is_replaced_unless_trusted(run_proxy, origin, tmp_path, env):
    p, log = start(run_proxy, origin, tmp_path, env, request_id="X-Request-ID")
    got = echo(p.port, "X-Request-Id: forged-by-client")["x-request-id"]
    assert len(got) == 1, f"the upstream saw two id fields: {got}"
    assert got[0] != "forged-by-client"
    assert HEX32.fullmatch(got[0]), got


def test_a_trusted_incoming_id_is_kept_and_logged(run_proxy, origin, tmp_path, env):
    p, log = start(run_proxy, origin, tmp_path, env, request_id="X-Request-ID",
                   request_id_trust=True)
    kept = echo(p.port, "x-request-id: lb-7f3a.42:9")["x-request-id"]
    assert kept == ["lb-7f3a.42:9"]
    # Not an id another proxy wrote (a comma: two fields combined; a quote): replaced.
    for bad in ('a,b', 'say "hi"'):
        got = echo(p.port, f"X-Request-ID: {bad}")["x-request-id"]
        assert len(got) == 1 and HEX32.fullmatch(got[0]), (bad, got)
    assert log_lines(log, 1)[0][0] == "lb-7f3a.42:9"


def test_off_by_default_the_client_field_passes_and_the_log_still_has_ids(
        run_proxy, origin, tmp_path, env):
    p, log = start(run_proxy, origin, tmp_path, env)
    assert "x-request-id" not in echo(p.port)
    # Without headers.request_id the field is just another end-to-end field.
    assert echo(p.port, "X-Request-ID: abc")["x-request-id"] == ["abc"]
    lines = log_lines(log, 2)
    assert HEX32.fullmatch(lines[0][0]), lines
    assert HEX32.fullmatch(lines[1][0]), lines
    assert lines[0][0] != lines[1][0]
