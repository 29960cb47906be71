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

import re
import signal
import subprocess
import sys
import threading

import pytest
from origin import Origin

PKG_PARENT = str(Path(fastproxy.__file__).resolve().parent.parent)


class ProxyProcess:
    """A `fastproxy serve` subprocess; `port` is where its first listener listens."""

    def __init__(self, args: list[str], cwd: str, timeout: float = 10.0,
                 prefix: tuple[str, ...] = ()) -> None:
        env = dict(os.environ, PYTHONPATH=PKG_PARENT, PYTHONUNBUFFERED="1")
        self.args = args
        # prefix: a command that execs the rest (a test's own namespace, say)
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "fastproxy", *args], cwd=cwd, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.ports: list[int] = []
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self._ready = threading.Event()
        self._pumps = [threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines, True),
                                        daemon=True),
                       threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout_lines, False),
                                        daemon=True)]
        for pump in self._pumps:
            pump.start()
        self.expected = None

    def _pump(self, stream, sink: list, watch: bool) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            sink.append(line)
            if watch:
                m = re.search(r"listening on \[?([^\]]+?)\]?:(\d+) ", line)
                if m:
                    self.ports.append(int(m.group(2)))
                    if self.expected is not None and len(self.ports) >= self.expected:
                        self._ready.set()
        # Closed here, at EOF: left to the garbage collector, the pipe's ResourceWarning
        # lands in whatever test runs then (an error where warnings are errors).
        stream.close()
        self._ready.set()

    def wait_ready(self, listeners: int = 1, timeout: float = 10.0) -> "ProxyProcess":
        self.expected = listeners
        if len(self.ports) >= listeners:
            return self
        self._ready.wait(timeout)
        if len(self.ports) < listeners:
            self.stop()
            raise RuntimeError("proxy did not start: " + "\n".join(self.stderr_lines[-20:]))
        return self

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pump in self._pumps:
            pump.join(5)
        return self.proc.returncode


@pytest.fixture
def origin():
    """A real HTTP/1.1 origin on 127.0.0.1 (see tests/origin.py)."""
    server = Origin().start()
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


@pytest.fixture
def reverse_proxy(start_proxy, origin):
    """fastproxy in reverse mode in front of the test origin."""
    return start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                       "--upstream", origin.url)
