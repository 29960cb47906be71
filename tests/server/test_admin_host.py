"""The admin interface answers only requests for itself (DNS rebinding).

A page on evil.example that makes its name resolve to 127.0.0.1 gets a browser to read the
admin port as evil.example's own origin, so the request carries `Host: evil.example:PORT`.
Such a request is refused with 421 (RFC 9110 15.5.20, not authoritative for that name);
IP literals (how Prometheus scrapes), `localhost`, the admin address's own name and the
names in `admin_hosts` are answered. /healthz answers whatever the Host (a load balancer's
probe may send any, and "ok" tells a page nothing).
"""
from __future__ import annotations

import json

import pytest

from conftest import reverse_config
from wire import Conn


def _get(port: int, target: bytes, host: bytes | None) -> tuple[int, bytes]:
    with Conn(port) as c:
        version = b"HTTP/1.1" if host is not None else b"HTTP/1.0"
        c.send(b"GET " + target + b" " + version + b"\r\n"
               + (b"Host: " + host + b"\r\n" if host is not None else b"") + b"\r\n")
        r = c.response()
        return r.status, r.body


@pytest.fixture
def admin(run_proxy, origin):
    return run_proxy(reverse_config(origin.url, admin="127.0.0.1:0")).admin_port()


@pytest.fixture
def admin_named(run_proxy, origin):
    p = run_proxy(reverse_config(origin.url, admin="localhost:0",
                                 admin_hosts=["metrics.internal", "Mon.Example."]))
    return p.admin_port()


@pytest.mark.parametrize("path", [b"/status", b"/metrics", b"/"])
@pytest.mark.parametrize("host", [b"evil.example", b"evil.example:%d", b"EVIL.example.",
                                  b"localhost.evil.example", b"127.0.0.1.nip.io:%d"])
def test_a_rebound_name_is_refused(admin, path, host):
    host = host.replace(b"%d", str(admin).encode())
    status, body = _get(admin, path, host)
    assert status == 421, f"a request for {host!r} was answered: {body[:200]!r}"
    assert b"admin_hosts" in body, "the refusal does not name the setting that allows a name"


def test_an_absolute_target_naming_another_server_is_refused(admin):
    status, _ = _get(admin, b"http://evil.example/status", b"evil.example")
    assert status == 421, "an absolute-form target for another name was answered"


@pytest.mark.parametrize("host", [b"127.0.0.1", b"127.0.0.1:%d", b"[::1]:%d", b"[::1]",
                                  b"localhost", b"LOCALHOST:%d", b"localhost.",
                                  b"metrics.internal:%d", b"mon.example", b"10.1.2.3:9090"])
def test_addresses_and_configured_names_are_answered(admin_named, host):
    host = host.replace(b"%d", str(admin_named).encode())
    status, body = _get(admin_named, b"/metrics", host)
    assert status == 200, f"{host!r}: {status} {body[:200]!r}"
    assert b"fastproxy_requests_total" in body, "not the metrics document"


def test_no_host_and_healthz_are_answered(admin):
    assert _get(admin, b"/status", None)[0] == 200, "an HTTP/1.0 request without Host refused"
    assert _get(admin, b"/healthz", b"evil.example")[0] == 200, "/healthz refused a probe"


def test_workers_ask_each_other_past_the_check(run_proxy, origin):
    # The siblings' requests (over UNIX sockets) carry a Host too: they must pass.
    p = run_proxy(reverse_config(origin.url, admin="127.0.0.1:0", workers=2))
    status, body = _get(p.admin_port(), b"/status", b"127.0.0.1")
    assert status == 200, body[:200]
    assert json.loads(body)["workers"] == 2, "the status is not the two workers' sum"
