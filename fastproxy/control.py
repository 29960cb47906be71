"""`fastproxy reload | stop | status`: find the running instance through its pidfile.

The pidfile is the one the configuration names (`--config`), the `--pidfile` given, or
the default under the runtime directory. Exit codes follow the LSB init-script
convention for status: 0 running, 3 not running (1: a stale or unreadable pidfile).
"""
from __future__ import annotations

import os
import signal
import sys
import time

from fastproxy.config import load as cfgmod
from fastproxy.config.load import ConfigError

NOT_RUNNING = 3


def _say(text: str) -> None:
    print(f"fastproxy: {text}", file=sys.stderr)


def pidfile_of(args) -> str | None:
    """The pidfile to read, from the flags and the configuration."""
    if args.pidfile:
        return args.pidfile
    if args.config:
        return cfgmod.load(args.config).pidfile
    return cfgmod.default_pidfile()


def running_pid(path: str) -> tuple[int | None, str]:
    """(pid, "") of the live fastproxy the pidfile names, or (None, why not)."""
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except FileNotFoundError:
        return None, f"not running (no pidfile {path})"
    except OSError as exc:
        return None, f"cannot read the pidfile {path}: {exc.strerror}"
    if not text.isdigit() or int(text) <= 0:
        return None, f"the pidfile {path} does not hold a process id: {text[:40]!r}"
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None, f"not running (stale pidfile {path}: no process {pid})"
    except PermissionError:
        pass    # someone else's process: the cmdline check below still applies
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        cmdline = b"fastproxy"     # no /proc: trust the pidfile
    # `fastproxy ...` or `python -m fastproxy ...`: an argument that is the program itself.
    if not any(os.path.basename(arg) == b"fastproxy" for arg in cmdline.split(b"\0")):
        return None, f"not running (stale pidfile {path}: process {pid} is not fastproxy)"
    return pid, ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # A zombie has exited; only its parent has not collected it yet.
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


def main(args) -> int:
    """Run one of the control commands; the exit code."""
    try:
        path = pidfile_of(args)
    except ConfigError as exc:
        for line in exc.problems:
            _say(line)
        return 2
    if path is None:
        _say(f"{args.config} sets pidfile = false: give --pidfile PATH")
        return 2
    pid, why = running_pid(path)
    if pid is None:
        _say(why)
        if not why.startswith("not running"):
            return 1
        # status: LSB's "not running"; stop: already done; reload: nothing to reload.
        return {"status": NOT_RUNNING, "stop": 0}.get(args.command, 1)
    if args.command == "status":
        print(f"fastproxy: running (pid {pid})")
        return 0
    sig = signal.SIGHUP if args.command == "reload" else signal.SIGTERM
    try:
        os.kill(pid, sig)
    except OSError as exc:
        _say(f"cannot signal pid {pid}: {exc.strerror}")
        return 1
    if args.command == "reload":
        print(f"fastproxy: asked pid {pid} to reload (its log says whether the file was taken)")
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            print(f"fastproxy: stopped (pid {pid})")
            return 0
        time.sleep(0.05)
    _say(f"pid {pid} is still finishing requests after {args.timeout:g}s")
    return 1
