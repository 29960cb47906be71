"""Shared test setup: make sure the compiled core is really what is under test."""
import os
from pathlib import Path

import fastproxy
from fastproxy.selfcheck import missing_modules

ROOT = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session):
    problems = missing_modules()
    if problems:
        raise SystemExit("compiled modules failed to load: " + "; ".join(problems))
    if os.environ.get("FASTPROXY_REQUIRE_INSTALLED"):
        here = Path(fastproxy.__file__).resolve()
        if ROOT in here.parents:
            raise SystemExit(f"fastproxy imported from the source tree ({here}), not the wheel")


# ---------------------------------------------------------------------------
# Real servers for the tests: an origin (tests/origin.py) and the proxy itself,
# started as the `fastproxy` command in a subprocess.

import contextlib

import pytest
from origin import Origin

from fastproxy.testing import Proxy, run

PKG_PARENT = str(Path(fastproxy.__file__).resolve().parent.parent)


# One harness for the suite and for users: fastproxy.testing (shipped in the wheel).
ProxyProcess = Proxy


@pytest.fixture
def origin():
    """A real HTTP/1.1 origin on 127.0.0.1 (see tests/origin.py)."""
    server = Origin().start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(tmp_path):
    """A private redis-server on a free loopback port (see tests/redis_server.py)."""
    from redis_server import RedisServer
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def start_proxy(tmp_path):
    """Factory: start `fastproxy serve ARGS...` and wait until it listens."""
    procs: list[ProxyProcess] = []

    def start(*args: str, listeners: int = 1) -> ProxyProcess:
        p = ProxyProcess(list(args), cwd=str(tmp_path))
        procs.append(p)
        return p.wait_ready(listeners)

    yield start
    for p in procs:
        p.stop()


def reverse_config(*urls: str, **tables) -> dict:
    """A config dict: one reverse listener (port 0) to group "app" of `urls`, plus `tables`."""
    return {"listeners": [{"listen": "127.0.0.1:0", "upstream": "app"}],
            "upstreams": {"app": {"servers": list(urls)}}, **tables}


@pytest.fixture
def run_proxy(tmp_path):
    """Factory: start fastproxy from a config dict (or TOML text) with fastproxy.testing.run.

    run_proxy({"listeners": [{"upstream": "web"}], "upstreams": {"web": {"servers": [url]}}})
    gives a ready Proxy (listeners without `listen` get 127.0.0.1:0); all stop after the test.
    """
    with contextlib.ExitStack() as stack:
        def start(config, *args: str, listeners: int | None = None, **kw) -> Proxy:
            return stack.enter_context(run(config, args=args, listeners=listeners,
                                           directory=tmp_path, **kw))
        yield start


@pytest.fixture
def reverse_proxy(start_proxy, origin):
    """fastproxy in reverse mode in front of the test origin."""
    return start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                       "--upstream", origin.url)
