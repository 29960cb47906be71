"""The operator's log: one line per event on stderr, prefixed with the process (a leaf).

Each line has a level, an event name and fields. The text form is for people:
`fastproxy[PID]: MESSAGE` (info) or `fastproxy[PID]: warning: MESSAGE`; the JSON form
(`error_log.format = "json"`) is one object per line with time (ISO 8601), pid, level,
event, message and the fields, for a log shipper. Python's `logging` records of the
fastproxy.* loggers come through here too (see install), so no line lacks the prefix.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time

FORMATS = ("text", "json")
_format = "text"


def configure(fmt: str) -> None:
    """Text or JSON lines from now on."""
    global _format
    _format = fmt


def iso_time(t: float) -> str:
    """ISO 8601 with milliseconds and the UTC offset (as the JSON logs write time)."""
    local = time.localtime(t)
    offset = time.strftime("%z", local)
    return time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{int(t * 1000) % 1000:03d}" + \
        f"{offset[:3]}:{offset[3:]}"


def event(level: str, name: str, message: str, **fields) -> None:
    """One line: level (info, warning, error), event name, message and fields."""
    pid = os.getpid()
    if _format == "json":
        record = {"time": iso_time(time.time()), "pid": pid, "level": level, "event": name,
                  "message": message}
        record.update(fields)
        line = json.dumps(record, separators=(",", ":"), default=str)
    else:
        line = f"fastproxy[{pid}]: {message}" if level == "info" else \
            f"fastproxy[{pid}]: {level}: {message}"
    # One write per line: print() writes the text and the newline separately, so with
    # several workers (and unbuffered stderr) their lines could interleave.
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def log(msg: str) -> None:
    """An informational line for the operator."""
    event("info", "note", msg)


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connect refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "connection closed",
    errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EADDRNOTAVAIL: "address not available",
    errno.EMFILE: "out of file descriptors",
    errno.ENFILE: "out of file descriptors",
}


def describe(exc: BaseException) -> str:
    """A failure in words for the log, without Python's exception names or errno numbers."""
    import socket
    import ssl
    if isinstance(exc, TimeoutError) and not getattr(exc, "errno", None):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return "name does not resolve" if exc.errno in (
            socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)) else \
            f"name lookup failed ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message} ({exc.reason})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc})"
    if isinstance(exc, OSError) and exc.errno in _ERRNO_WORDS:
        return _ERRNO_WORDS[exc.errno]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    if isinstance(exc, EOFError) or type(exc).__name__ == "IncompleteReadError":
        return "connection closed early"
    text = str(exc)
    return text or type(exc).__name__


class _Bridge(logging.Handler):
    """fastproxy.* logging records as error log lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):   # a bad format string must not take the worker down
            message = str(record.msg)
        level = "error" if record.levelno >= logging.ERROR else \
            "warning" if record.levelno >= logging.WARNING else "info"
        name = getattr(record, "event", record.name.removeprefix("fastproxy."))
        event(level, name, message, **getattr(record, "fields", {}))


def install() -> None:
    """Route the fastproxy.* loggers here (idempotent)."""
    root = logging.getLogger("fastproxy")
    if not any(isinstance(h, _Bridge) for h in root.handlers):
        root.addHandler(_Bridge())
        root.setLevel(logging.INFO)
        root.propagate = False
