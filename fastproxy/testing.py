"""Run a real fastproxy in your tests: ``with fastproxy.testing.run(config) as proxy:``.

The proxy is the ``python -m fastproxy serve`` command in a subprocess, started from a config
(a dict as TOML would parse it, or TOML text) written to a temporary file. ``run`` returns once
every listener is bound (the "listening on HOST:PORT (kind)" lines on stderr) and stops the
process on exit (SIGTERM, then SIGKILL). A listener given no ``listen`` gets 127.0.0.1:0, so
tests never fight over ports. Errors at start raise ProxyStartError carrying the proxy's stderr.
Imports nothing of fastproxy: it drives the command, as an operator would.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

__all__ = ["Proxy", "ProxyStartError", "run", "to_toml"]

# errorlog.log writes "fastproxy[PID]: listening on 127.0.0.1:8080 (reverse)"; IPv6 in brackets.
_LISTENING = re.compile(r"listening on \[?([^\]\s]+?)\]?:(\d+) \((\w+)\)")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# The fastproxy this module belongs to: the subprocess must import the same one.
_PKG_PARENT = str(Path(__file__).resolve().parent.parent)


class ProxyStartError(RuntimeError):
    """The proxy exited or did not bind its listeners in time; ``stderr`` holds its lines."""

    def __init__(self, message: str, stderr: Sequence[str], returncode: int | None) -> None:
        super().__init__(message + ("\n" + "\n".join(stderr) if stderr else ""))
        self.stderr = list(stderr)
        self.returncode = returncode


def to_toml(config: Mapping[str, Any]) -> str:
    """TOML text for a dict of the shapes tomllib returns (tables, arrays, scalars; paths too)."""
    lines: list[str] = []
    _table(config, [], lines)
    return "\n".join(lines) + "\n"


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    if isinstance(v, str):
        # JSON's string escapes (\", \\, \n, \uXXXX) are all TOML basic-string escapes.
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")


def _table(table: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    # Scalars and arrays first: after a [header] they would belong to that subtable.
    subtables = []
    for k, v in table.items():
        if isinstance(v, Mapping):
            subtables.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in subtables:
        sub = [*path, k]
        lines.append(f"[{'.'.join(_key(p) for p in sub)}]")
        _table(v, sub, lines)


def _expected_lines(doc: Mapping[str, Any] | None) -> int:
    """How many "listening on" lines a started proxy prints: each listener and admin, per worker."""
    if not isinstance(doc, Mapping):
        return 1
    listeners = doc.get("listeners")
    n = len(listeners) if isinstance(listeners, list) else 0
    n += 1 if doc.get("admin") else 0
    workers = doc.get("workers", 1)
    workers = (os.cpu_count() or 1) if workers == "auto" else workers
    return max(1, n * (workers if isinstance(workers, int) and workers > 0 else 1))


class Proxy:
    """A ``fastproxy`` subprocess and what it said: its bound ports, its stderr and stdout lines."""

    def __init__(self, args: Sequence[str], cwd: str | None = None, *,
                 env: Mapping[str, str] | None = None, prefix: Sequence[str] = (),
                 config_path: str | None = None) -> None:
        base = dict(os.environ if env is None else env)
        base["PYTHONPATH"] = os.pathsep.join(p for p in (_PKG_PARENT, base.get("PYTHONPATH")) if p)
        base["PYTHONUNBUFFERED"] = "1"
        self.args = list(args)
        self.config_path = config_path
        # prefix: a command that execs the rest (a network namespace, say)
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "fastproxy", *self.args], cwd=cwd, env=base,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addresses: list[tuple[str, int]] = []
        self.kinds: list[str] = []
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self.expected: int | None = None
        self._ready = threading.Event()
        self._pumps = [threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines, True),
                                        daemon=True),
                       threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout_lines, False),
                                        daemon=True)]
        for pump in self._pumps:
            pump.start()

    def _pump(self, stream, sink: list[str], watch: bool) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            sink.append(line)
            m = _LISTENING.search(line) if watch else None
            if m:
                self.addresses.append((m.group(1), int(m.group(2))))
                self.kinds.append(m.group(3))
                if self.expected is not None and len(self.addresses) >= self.expected:
                    self._ready.set()
        # Closed at EOF: left to the garbage collector, the pipe's ResourceWarning lands in
        # whatever code runs then (an error where warnings are errors).
        stream.close()
        self._ready.set()

    def wait_ready(self, listeners: int = 1, timeout: float = 10.0) -> Proxy:
        """Wait for `listeners` "listening on" lines; on exit or timeout stop and raise."""
        self.expected = listeners
        if len(self.addresses) < listeners:
            self._ready.wait(timeout)
        if len(self.addresses) < listeners:
            self._pumps[0].join(1)
            # Its stderr ended: the process is exiting; wait for its code rather than race it.
            code = self.proc.poll() if self._pumps[0].is_alive() else self.proc.wait(5)
            self.stop()
            why = f"exited with code {code}" if code is not None else f"not listening after {timeout}s"
            raise ProxyStartError(f"fastproxy {' '.join(self.args)}: {why}", self.stderr_lines[-20:],
                                  self.proc.returncode)
        return self

    @property
    def ports(self) -> list[int]:
        """Every bound port in the order the proxy reported them (each worker reports its own)."""
        return [port for _, port in self.addresses]

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the first listener."""
        return self.addresses[0]

    @property
    def port(self) -> int:
        """Port of the first listener."""
        return self.addresses[0][1]

    @property
    def url(self) -> str:
        """http://HOST:PORT of the first listener."""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def admin_port(self, timeout: float = 10.0) -> int:
        """The admin listener's port, from its "listening on ... (admin)" line."""
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.stderr_lines):
                m = re.search(r"listening on \[?[^\]]+?\]?:(\d+) \(admin\)", line)
                if m:
                    return int(m.group(1))
            if time.monotonic() >= deadline:
                raise AssertionError("no admin listener: " + "\n".join(self.stderr_lines))
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        """The proxy's process id (the master when workers > 1)."""
        return self.proc.pid

    def rss_kib(self) -> int:
        """The process's resident set size (Linux /proc), 0 if unknown."""
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def signal(self, sig: int) -> None:
        """Send a signal (SIGHUP reloads the config)."""
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, SIGKILL after `timeout` seconds; return the exit code."""
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _with_ports(doc: dict[str, Any]) -> dict[str, Any]:
    # A test proxy leaves the default pidfile to the instance the machine runs.
    doc.setdefault("pidfile", False)
    listeners = doc.get("listeners")
    if isinstance(listeners, list):
        doc = dict(doc, listeners=[dict({"listen": "127.0.0.1:0"}, **lst) if isinstance(lst, Mapping)
                                   else lst for lst in listeners])
    return doc


@contextlib.contextmanager
def run(config: Mapping[str, Any] | str, *, args: Sequence[str] = (), listeners: int | None = None,
        timeout: float = 10.0, directory: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None, prefix: Sequence[str] = ()) -> Iterator[Proxy]:
    """Start `fastproxy serve --config FILE [args]`, yield the ready Proxy, stop it on exit."""
    if isinstance(config, str):
        text = config
        try:
            doc: Mapping[str, Any] | None = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            doc = None  # the proxy itself reports it, with the line
    else:
        doc = _with_ports(dict(config))
        text = to_toml(doc)
    with contextlib.ExitStack() as stack:
        where = str(directory) if directory is not None else \
            stack.enter_context(tempfile.TemporaryDirectory(prefix="fastproxy-test-"))
        # A file of its own: several proxies may share one directory (a test's tmp_path).
        fd, name = tempfile.mkstemp(prefix="fastproxy-", suffix=".toml", dir=where)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        path = Path(name)
        proxy = Proxy(["serve", "--config", str(path), *args], cwd=where, env=env, prefix=prefix,
                      config_path=str(path))
        stack.callback(proxy.stop)
        yield proxy.wait_ready(listeners if listeners is not None else _expected_lines(doc), timeout)
