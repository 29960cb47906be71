"""The master process of `workers > 1`: it owns the ports and keeps the workers running.

Ports. Before forking, the master binds every listener (and the admin) address: the first
socket exclusively, so a port someone already listens on is "address already in use" as
for a single worker, then shared with SO_REUSEPORT by one socket per worker (see
fastproxy.server.listeners). Port 0 is fixed once here, so every worker has the same port.

Workers. Each worker tells the master over a pipe that it is ready, or why it could not
start. If no worker has ever started, the master stops and exits 1 with that reason. Later
failures are retried with an exponential back-off (0.1 s doubling to 30 s, one log line per
step); a worker that ran for STABLE seconds is replaced at once and resets its back-off.
"""
from __future__ import annotations

import errno
import os
import selectors
import signal
import time
from dataclasses import replace

from fastproxy.config.schema import ConfigError
from fastproxy.server import listeners as listening
from fastproxy.server import reuseport

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 30.0
STABLE = 10.0        # seconds a worker must run before its exit counts as a one-off
# Signals that drain and stop: SIGQUIT is nginx's graceful stop, and its default action (a
# core dump) would cut requests in flight and leave a master's workers running as orphans.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# Held by a starting worker until its handlers are in place.
HELD_SIGNALS = {*STOP_SIGNALS, signal.SIGHUP, signal.SIGUSR1}
# Signals the master passes on to every worker (it holds no log file itself).
FORWARDED = (signal.SIGUSR1,)


class _Slot:
    """One worker position (index) and the process that fills it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 0
        self.pipe = -1
        self.message = b""
        self.ready = False
        self.started = 0.0
        self.delay = 0.0
        self.due: float | None = None
        self.socks: dict | None = None     # {"listeners": [[sock, ...], ...], "admin": [...]}


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Master:
    """Forks `config.workers` workers and supervises them until a stop signal."""

    def __init__(self, config, reload_fn, run_worker, log) -> None:
        self.config = config
        self.reload_fn = reload_fn
        self.run_worker = run_worker
        self.log = log
        self.slots = [_Slot(i) for i in range(config.workers)]
        self.children: dict[int, _Slot] = {}
        self.stopping = False
        self.hup = False
        self.ever_ready = False
        self.notified = False       # systemd heard READY=1
        self.exit_code = 0
        self.peers_dir: str | None = None
        self.balance_failed = False  # round-robin refused once (logged): hash from then on
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()

    # -- ports -------------------------------------------------------------------------

    def _addresses(self) -> list[tuple[str, int]]:
        addrs = [(lc.host, lc.port) for lc in self.config.listeners]
        if self.config.admin is not None:
            addrs.append(self.config.admin)
        return addrs

    def _claim(self) -> None:
        """Bind every address for every worker; the first bind of each is exclusive."""
        per_slot: list[list] = [[] for _ in self.slots]
        fixed = []
        for index, (host, port) in enumerate(self._addresses()):
            first = listening.bind(host, port, share=True)
            per_slot[0].append(first)
            self._balance(index, first)
            port = first[0].getsockname()[1]
            fixed.append(port)
            for socks in per_slot[1:]:
                socks.append(listening.bind(host, port, join=True))
        listeners = tuple(replace(lc, port=port) for lc, port in
                          zip(self.config.listeners, fixed))
        admin = (self.config.admin[0], fixed[-1]) if self.config.admin is not None else None
        self.config = replace(self.config, listeners=listeners, admin=admin)
        for slot, socks in zip(self.slots, per_slot):
            slot.socks = self._split(socks)

    def _balance(self, index: int, socks: list) -> None:
        """Round-robin for the new SO_REUSEPORT groups of listener `index` (not the admin's:
        any worker answers it); on refusal one log line and the kernel's hash from then on."""
        if index >= len(self.config.listeners) or self.balance_failed \
                or self.config.reuseport_balance != "round-robin":
            return
        try:
            reuseport.round_robin(socks, len(self.slots))
        except Exception as exc:   # whatever fails here, the hash still serves: never fatal
            self.balance_failed = True
            why = getattr(exc, "strerror", None) or exc
            self.log(f"reuseport_balance: round-robin unavailable ({why}); "
                     f"the kernel's hash spreads connections over the workers")

    def _split(self, socks: list) -> dict:
        n = len(self.config.listeners)
        return {"listeners": socks[:n], "admin": socks[n] if len(socks) > n else None}

    def _rebind(self, slot: _Slot) -> dict:
        # Join the group while a sibling holds it; alone, claim the port again exclusively.
        join = any(s.pid for s in self.slots if s is not slot)
        socks = []
        try:
            for index, (host, port) in enumerate(self._addresses()):
                socks.append(listening.bind(host, port, share=not join, join=join))
                if not join:     # a new group: the old one left with its program
                    self._balance(index, socks[-1])
        except OSError:
            for group in socks:
                for sock in group:
                    sock.close()
            raise
        return self._split(socks)

    # -- workers -----------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        slot.due = None
        if slot.socks is None:
            try:
                slot.socks = self._rebind(slot)
            except OSError as exc:
                self._failed(slot, exc.strerror or str(exc), ran=None)
                return
        r, w = os.pipe()
        # The child holds these until its handlers are in place (Worker.run); a SIGHUP
        # forwarded to a worker still starting would otherwise kill it.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        master = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                follow_master(master)    # SIGTERM, held until the worker can drain
                self._in_child(slot)
                code = self.run_worker(self.config, self.reload_fn, slot.index, self.peers_dir,
                                       slot.socks, w)
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        os.close(w)
        os.set_blocking(r, False)
        slot.pid, slot.pipe, slot.message = pid, r, b""
        slot.ready, slot.started = False, time.monotonic()
        self.children[pid] = slot
        self.sel.register(r, selectors.EVENT_READ, slot)
        self._close_socks(slot)     # the worker holds them now

    def _in_child(self, me: _Slot) -> None:
        for sig in (*STOP_SIGNALS, signal.SIGHUP, signal.SIGCHLD, *FORWARDED):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        self.sel.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        for slot in self.slots:
            if slot is not me:
                self._close_socks(slot)
                if slot.pipe >= 0:
                    os.close(slot.pipe)

    @staticmethod
    def _close_socks(slot: _Slot) -> None:
        if slot.socks is not None:
            for group in slot.socks["listeners"] + [slot.socks["admin"] or []]:
                for sock in group:
                    sock.close()
            slot.socks = None

    def _read(self, slot: _Slot) -> None:
        while slot.pipe >= 0:
            try:
                chunk = os.read(slot.pipe, 4096)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.sel.unregister(slot.pipe)
                os.close(slot.pipe)
                slot.pipe = -1
                return
            slot.message += chunk
            if slot.message.startswith(b"ready\n") and not slot.ready:
                slot.ready = True
                self.ever_ready = True
                if not self.notified and all(s.ready for s in self.slots):
                    self.notified = True
                    sd_notify(f"READY=1\nMAINPID={os.getpid()}\n"
                              f"STATUS={len(self.slots)} workers")

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.children.pop(pid, None)
            if slot is None:
                continue
            self._read(slot)
            if slot.pipe >= 0:
                self.sel.unregister(slot.pipe)
                os.close(slot.pipe)
                slot.pipe = -1
            slot.pid = 0
            if self.stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            if slot.ready:
                self._failed(slot, f"(pid {pid}) {_how(code)}", ran=time.monotonic() - slot.started)
            else:
                text = slot.message.decode("utf-8", "replace")
                reason = text[len("failed "):].strip() if text.startswith("failed ") else \
                    f"the worker {_how(code)} before it was ready"
                self._failed(slot, reason, ran=None)

    def _failed(self, slot: _Slot, reason: str, ran: float | None) -> None:
        """Worker slot is empty: give up, retry after a back-off, or replace it now."""
        if ran is None and not self.ever_ready:
            self.log(f"no worker started: {reason}")
            self.exit_code = 1
            self._stop()
            return
        if ran is not None and ran >= STABLE:
            slot.delay = 0.0
            self.log(f"worker {slot.index} {reason}; starting a new one")
            self._spawn(slot)
            return
        slot.delay = BACKOFF_FIRST if slot.delay == 0 else min(slot.delay * 2, BACKOFF_MAX)
        slot.due = time.monotonic() + slot.delay
        if ran is None:
            self.log(f"worker {slot.index} failed to start: {reason}; "
                     f"next try in {slot.delay:g}s")
        else:
            self.log(f"worker {slot.index} {reason} after {ran:.1f}s; "
                     f"next try in {slot.delay:g}s")

    # -- signals -----------------------------------------------------------------------

    def _stop(self) -> None:
        if not self.stopping:
            sd_notify("STOPPING=1")
        self.stopping = True
        for slot in self.slots:
            slot.due = None
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _on_signal(self, signum, frame) -> None:
        if signum in STOP_SIGNALS:
            self._stop()
        elif signum == signal.SIGHUP:
            self.hup = True
        elif signum in FORWARDED:
            self._tell_workers(signum)
        # SIGCHLD: the wake-up byte is the message; _reap runs after every select.

    def _tell_workers(self, signum: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _reload(self) -> None:
        self.hup = False
        sd_notify(reloading_state())
        try:
            self._reload_workers()
        finally:
            sd_notify("READY=1")

    def _reload_workers(self) -> None:
        # The master reads the file first: a broken one is refused here in one line (each
        # worker said it again, N identical lines) and the workers are not disturbed.
        try:
            new = self.reload_fn()
        except ConfigError as exc:
            for line in exc.problems:
                self.log(f"reload refused: {line}")
            return
        except Exception as exc:  # never let a bad file take the running proxy down
            self.log(f"reload refused: {exc.__class__.__name__}: {exc}")
            return
        old = self.config
        if len(new.listeners) != len(old.listeners) or any(
                a.accept_path != b.accept_path
                or b.port not in (0, a.port) for a, b in zip(old.listeners, new.listeners)):
            self.log("reload refused: listener addresses or modes changed; restart to apply them")
            return
        self._tell_workers(signal.SIGHUP)
        note = restart_note(old, new)
        if note is not None:
            self.log(note)
        # Workers started later must start from the reloaded file too (the workers
        # themselves log whether the reload took), with what only a restart changes
        # (the sockets the master bound, the account, how many) as it is.
        self.config = replace(new, **{k: getattr(old, k) for k in RESTART_ONLY},
                              listeners=tuple(replace(b, port=a.port)
                                              for a, b in zip(old.listeners, new.listeners)))

    # -- main loop ---------------------------------------------------------------------

    def run(self) -> int:
        """Claim the ports, start the workers, supervise them; the exit code."""
        try:
            self._claim()
        except OSError as exc:
            self.log(exc.strerror or str(exc))
            return 1
        if self.config.admin is not None:
            # Each worker's admin also listens here, so the one a request reaches can
            # ask the others (a purge must reach every worker's cache).
            import tempfile
            self.peers_dir = tempfile.mkdtemp(prefix="fastproxy-admin-")
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        signal.set_wakeup_fd(self.wake_w)
        for sig in (*STOP_SIGNALS, signal.SIGHUP, signal.SIGCHLD, *FORWARDED):
            signal.signal(sig, self._on_signal)
        try:
            for slot in self.slots:
                if not self.stopping:
                    self._spawn(slot)
            spread = "round-robin" if self.config.reuseport_balance == "round-robin" \
                and not self.balance_failed else "the kernel's hash"
            self.log(f"master: {len(self.slots)} workers (new connections: {spread})")
            self._loop()
        finally:
            signal.set_wakeup_fd(-1)
            for slot in self.slots:
                self._close_socks(slot)
            if self.peers_dir is not None:
                import shutil
                shutil.rmtree(self.peers_dir, ignore_errors=True)
        return self.exit_code

    def _loop(self) -> None:
        while self.children or (not self.stopping and any(s.due for s in self.slots)):
            dues = [s.due for s in self.slots if s.due is not None]
            timeout = max(0.0, min(dues) - time.monotonic()) if dues else None
            for key, _ in self.sel.select(timeout):
                if key.data is None:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except OSError as exc:
                        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                            raise
                else:
                    self._read(key.data)
            self._reap()
            if self.hup and not self.stopping:
                self._reload()
            now = time.monotonic()
            for slot in self.slots:
                if slot.due is not None and slot.due <= now and not self.stopping:
                    self._spawn(slot)


# -- the pidfile and privileges (for both one worker and a master) ------------------------


# The open pidfile, locked while this instance runs (forked workers share the lock).
_pidfile_fd: int | None = None


def write_pidfile(path: str) -> None:
    """Take path for this process: its pid, under an exclusive lock held while it runs.

    A second instance finds the lock and leaves the file to the first (OSError naming the
    holder) instead of overwriting it; a file no one holds (a crash) is taken over. The
    new content is written to a temporary file, locked, and renamed into place, so a reader
    never sees half a number."""
    global _pidfile_fd
    import fcntl
    tmp = f"{path}.{os.getpid()}.tmp"
    old = new = -1
    try:
        old = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(old, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(old, 32).decode("ascii", "replace").strip() or "?"
            raise OSError(errno.EEXIST, f"the pidfile {path} is held by the running "
                                        f"fastproxy pid {holder}") from None
        new = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        fcntl.flock(new, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(new, f"{os.getpid()}\n".encode())
        os.replace(tmp, path)
    except OSError as exc:
        for fd in (old, new):
            if fd >= 0:
                os.close(fd)
        if new >= 0:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if exc.errno == errno.EEXIST:
            raise
        raise OSError(exc.errno, f"cannot write the pidfile {path}: {exc.strerror}") from None
    os.close(old)
    _pidfile_fd = new


def remove_pidfile(path: str) -> None:
    """Remove path if it still names this process (a newer instance may have replaced it)."""
    global _pidfile_fd
    try:
        with open(path) as fh:
            if fh.read().strip() == str(os.getpid()):
                os.unlink(path)
    except OSError:
        pass
    if _pidfile_fd is not None:
        os.close(_pidfile_fd)
        _pidfile_fd = None


# Settings a reload cannot change: the workers, their account, the admin sockets and the
# pidfile are made once, at start.
RESTART_ONLY = ("workers", "reuseport_balance", "admin", "user", "group", "pidfile")


def restart_note(old, new) -> str | None:
    """The line that names the RESTART_ONLY settings `new` (a reloaded configuration)
    changes from `old`, or None when it changes none."""
    changed = []
    for key in RESTART_ONLY:
        a, b = getattr(old, key), getattr(new, key)
        if key == "admin" and a is not None and b is not None and b[0] == a[0] \
                and b[1] in (0, a[1]):
            continue    # port 0: "whatever it is now"
        if a != b:
            changed.append(key)
    if not changed:
        return None
    return (f"reload: {', '.join(changed)} changed; restart to apply "
            f"{'it' if len(changed) == 1 else 'them'} (the rest is applied)")


_PR_SET_PDEATHSIG = 1


def follow_master(master: int) -> None:
    """Have the kernel send this worker SIGTERM (a drain) when its master `master` dies.

    A master killed outright (SIGKILL, the OOM killer) otherwise leaves its workers serving
    on as orphans, out of reach of stop, reload and the pidfile. The setting is cleared by
    a change of user or group, so a worker calls this again after drop_privileges."""
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):   # not Linux: no parent-death signal
        return
    if os.getppid() != master:          # it died before the kernel watched for it
        os.kill(os.getpid(), signal.SIGTERM)


def drop_privileges(user: str | None, group: str | None) -> str | None:
    """Become user/group (after binding, so privileged ports work); a description or None.

    Raises OSError when the switch is refused (not started as root)."""
    if user is None and group is None:
        return None
    import grp
    import pwd
    pw = pwd.getpwnam(user) if user is not None else None
    gid = grp.getgrnam(group).gr_gid if group is not None else pw.pw_gid  # type: ignore[union-attr]  # one is set
    try:
        if pw is not None:
            os.initgroups(pw.pw_name, gid)
        else:
            os.setgroups([gid])
        os.setgid(gid)
        if pw is not None:
            os.setuid(pw.pw_uid)
    except PermissionError as exc:
        raise OSError(exc.errno, f"cannot switch to user {user or '-'} group {group or '-'}: "
                                 f"{exc.strerror} (start as root, or leave user/group out)") \
            from None
    return f"running as user {user or os.getuid()} group {group or gid}"


def sd_notify(state: str) -> bool:
    """Tell systemd (Type=notify) about a state change over $NOTIFY_SOCKET; False without one.

    The protocol is one datagram of "KEY=VALUE" lines (sd_notify(3)); "@" starts a name
    in the abstract namespace."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    import socket
    addr = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), addr)
    except OSError:
        return False    # systemd went away or the socket is not ours: nothing to tell
    return True


def reloading_state() -> str:
    """The notify line for a reload (systemd 253 wants the monotonic time with it)."""
    return f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
