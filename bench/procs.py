"""Start, watch and stop the benchmark's processes, each tracked by PID.

Every process the harness starts goes through `Supervisor.spawn`, lives in its own
session (so a Ctrl-C at the terminal reaches only the harness, which then stops the
children in order) and is stopped with SIGTERM, then SIGKILL after a grace period,
when the supervisor closes: on success, on an exception and on SIGINT/SIGTERM.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


class StartError(RuntimeError):
    """A process exited or never listened; the message is the note shown for its row."""


def _die_with_parent() -> None:
    # If the harness itself is killed with SIGKILL nothing else would stop the
    # children; the kernel sends them SIGTERM when their parent dies.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    os.setsid()


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (external servers need a number)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_count() -> int:
    """Return the number of CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def pinned(cmd: list[str], core: int | None) -> list[str]:
    """Prefix a command with `taskset -c CORE` (taskset execs, so the PID stays the program's)."""
    if core is None:
        return list(cmd)
    return ["taskset", "-c", str(core), *cmd]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    """Return pid and all its live descendants."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def tree_cpu_seconds(pid: int) -> float:
    """Return utime+stime (plus reaped children's) of pid and its live descendants, in seconds."""
    ticks = 0
    for p in process_tree(pid):
        f = _stat_fields(p)
        if f:
            # /proc/PID/stat fields 14-17 (utime, stime, cutime, cstime); f starts at field 3.
            ticks += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return ticks / CLK_TCK


def system_busy_seconds() -> float:
    """Return the CPU time spent non-idle by the whole machine since boot, in seconds."""
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1:]
    vals = [int(x) for x in parts[:8]]
    idle = vals[3] + vals[4]
    return (sum(vals) - idle) / CLK_TCK


def alive(pid: int) -> bool:
    """Return True if pid exists and is not a zombie."""
    f = _stat_fields(pid)
    return f is not None and f[0] != "Z"


@dataclass
class Proc:
    """One started process: its name, PID, and where its output goes."""

    name: str
    popen: subprocess.Popen
    log: Path
    cmd: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 3) -> str:
        """Return the last non-empty lines of the process's output, joined by ' | '."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return " | ".join(kept[-lines:])[:400]


class Supervisor:
    """Own every process of a run; `close()` stops them all by PID."""

    def __init__(self, workdir: Path, grace: float = 3.0, pidlog: Path | None = None):
        self.workdir = workdir
        self.grace = grace
        self.procs: list[Proc] = []
        self.pidlog = pidlog
        self._old_handlers: dict[int, object] = {}

    def __enter__(self) -> "Supervisor":
        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: the caller's finally still cleans up
                pass
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)

    @staticmethod
    def _on_signal(signum, frame):
        # Turn SIGTERM/SIGHUP into the same unwinding as Ctrl-C, so `finally` stops children.
        raise KeyboardInterrupt(f"signal {signum}")

    def spawn(self, name: str, cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> Proc:
        """Start cmd in its own session with output to a log file, and track it."""
        log = self.workdir / f"{name}.log"
        fh = open(log, "ab")
        try:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=str(cwd or self.workdir),
                env=env,
                preexec_fn=_die_with_parent,
            )
        finally:
            fh.close()
        proc = Proc(name, popen, log, list(cmd))
        self.procs.append(proc)
        if self.pidlog:
            with open(self.pidlog, "a") as out:
                out.write(f"{popen.pid} {name}\n")
        return proc

    def wait_port(self, proc: Proc, port: int, timeout: float = 15.0) -> None:
        """Poll-connect to 127.0.0.1:port until it accepts; StartError if proc exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = proc.popen.poll()
            if code is not None:
                raise StartError(f"{proc.name} exited with code {code}: {proc.tail() or '(no output)'}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise StartError(f"{proc.name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s: {proc.tail()}")

    def stop(self, proc: Proc) -> None:
        """SIGTERM the process (and its process group), SIGKILL after the grace period."""
        pid = proc.pid
        if proc.popen.poll() is None:
            tree = process_tree(pid)
            self._signal(pid, signal.SIGTERM)
            try:
                proc.popen.wait(self.grace)
            except subprocess.TimeoutExpired:
                self._signal(pid, signal.SIGKILL)
                for p in tree:
                    if p != pid and alive(p):
                        try:
                            os.kill(p, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                proc.popen.wait(5)
            # Children the program forked (nginx workers, varnish's cache process) may
            # outlive a master that exited on SIGTERM: give them the grace period, then kill.
            deadline = time.monotonic() + self.grace
            for p in tree:
                if p == pid:
                    continue
                while alive(p) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if alive(p):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        if proc in self.procs:
            self.procs.remove(proc)

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            # The child called setsid(), so its process group id is its own pid.
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Stop every tracked process, newest first; Ctrl-C during cleanup does not abort it."""
        old = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:
            old = None
        try:
            for proc in reversed(list(self.procs)):
                try:
                    self.stop(proc)
                except Exception:  # keep stopping the others
                    pass
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def established_on(port: int) -> set[int]:
    """Return the socket inodes of established TCP connections whose local port is port."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            # local_address is HEXIP:HEXPORT; st 01 is ESTABLISHED; field 9 is the inode.
            if len(f) > 9 and f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == port:
                found.add(int(f[9]))
    return found


def connections_per_process(pids: list[int], port: int) -> dict[int, int]:
    """Return how many established connections on local port each of pids holds."""
    live = established_on(port)
    return {pid: len(_socket_inodes(pid) & live) for pid in pids}
