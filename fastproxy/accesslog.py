"""Access log: one line per request, in a combined-like text format or JSON lines.

Lines are buffered and written at most every 0.2 s (or when 64 KiB are waiting),
so logging costs a string format per request, not a system call per request.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time

from fastproxy._relay import RequestIds
from fastproxy.errorlog import describe, event, iso_time

FLUSH_INTERVAL = 0.2
FLUSH_BYTES = 65536

# `access_log.format` may be a template of these (nginx log_format style); anything else
# in it is copied as written. $cache, $user, $acl, ... are the exchange's extra fields.
VARIABLES = ("remote_addr", "time_local", "time_iso8601", "request", "method", "target",
             "version", "status", "bytes_sent", "bytes_received", "referer", "user_agent",
             "request_time", "upstream", "upstream_time", "detail", "host", "request_id")
EXTRA_VARIABLES = ("cache", "user", "acl")
_VAR_RE = re.compile(r"\$(\{[a-z_0-9]+\}|[a-z_0-9]+)")

# What the client chooses (target, Referer, User-Agent, Host, a reason quoting its input)
# must not forge fields of a text line: as nginx's log escaping, '"', '\\', control
# characters and bytes past ASCII become \xHH (latin-1 decoded, so one char is one byte).
_UNSAFE = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')


def _hex(m: re.Match) -> str:
    return "".join(f"\\x{b:02X}" for b in m.group().encode("latin-1", "replace"))


def escape(text: str) -> str:
    """text safe inside a field of a text log line (nginx's escaping)."""
    return _UNSAFE.sub(_hex, text)


def log_format(value) -> str:
    """`access_log.format`: combined, json, or a template of VARIABLES (ValueError if not)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    if value not in ("combined", "json"):
        parse_template(value)
    return value


def parse_template(text: str) -> list[tuple[str, str]]:
    """[(literal, variable)] of a log_format-like template; ValueError names a bad variable."""
    parts, pos = [], 0
    for m in _VAR_RE.finditer(text):
        name = m.group(1).strip("{}")
        if name not in VARIABLES and name not in EXTRA_VARIABLES:
            raise ValueError(f"unknown variable ${name} (known: "
                             + ", ".join("$" + v for v in VARIABLES + EXTRA_VARIABLES) + ")")
        parts.append((text[pos:m.start()], name))
        pos = m.end()
    if not parts:
        raise ValueError('expected "combined", "json" or a template with $variables, '
                         f"got {text!r}")
    parts.append((text[pos:], ""))
    return parts


def _attempts(tried: list, server) -> str:
    """Every server a retried request went to, in order, as nginx's $upstream_addr."""
    names = [s.name for s in tried]
    if server is not None and tried[-1] is not server:
        names.append(server.name)
    return ", ".join(names)


class AccessLog:
    """Formats finished exchanges and writes them to a file or stdout."""

    def __init__(self, path: str, fmt: str, loop, ids: RequestIds | None = None) -> None:
        self.path = path
        self.json = fmt == "json"
        self.template = parse_template(fmt) if fmt not in ("json", "combined") else None
        # $request_id: the id the exchange was forwarded with, else one chosen at logging
        # (the same generator, so a trusted incoming id is logged as the upstream got it).
        self.ids = ids if ids is not None else RequestIds()
        self.loop = loop
        if path == "-":
            self.fd = sys.stdout.fileno()
            self.own_fd = False
        else:
            self.fd = self._open()
            self.own_fd = True
        self.lines: list[str] = []
        self.size = 0
        self.handle = None
        self._stamp_second = -1
        self._stamp = ""
        self._iso_second = -1
        self._iso_head = self._iso_tail = ""

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot open the access log {self.path}: "
                                     f"{exc.strerror or exc}") from None

    def reopen(self) -> None:
        """Write what is buffered, then continue in a fresh file at the same path
        (logrotate renamed the old one; SIGUSR1). Raises OSError naming the file."""
        self.flush()
        if not self.own_fd:
            return
        fd = self._open()          # the old file stays in use if this fails
        os.close(self.fd)
        self.fd = fd

    def _iso(self, t: float) -> str:
        # ISO 8601 with milliseconds; the part up to the second is formatted once a second.
        sec = int(t)
        if sec != self._iso_second:
            self._iso_second = sec
            whole = iso_time(sec)           # "...T12:00:00.000+01:00"
            self._iso_head, self._iso_tail = whole[:19], whole[23:]
        return f"{self._iso_head}.{int((t - sec) * 1000):03d}{self._iso_tail}"

    def _timestamp(self, t: float) -> str:
        sec = int(t)
        if sec != self._stamp_second:
            self._stamp_second = sec
            self._stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(sec))
        return self._stamp

    def write(self, conn) -> None:
        """Record the exchange conn just finished (its fields are still set)."""
        req = conn.req
        now = time.time()
        duration = now - conn.t_start
        server = conn.server
        tried = conn.tried
        # A forward request's `tried` holds the addresses still to try, not servers tried.
        upstream = _attempts(tried, server) if tried and hasattr(tried[0], "name") else \
            server.name if server is not None else "-"
        if req is not None:
            method = req.method.decode("latin-1")
            target = req.target.decode("latin-1")
            # An HTTP/2 stream's relay writes to a transport that says so.
            version = getattr(conn.transport, "http_version", None) or \
                ("HTTP/1.1" if req.version == 11 else "HTTP/1.0")
        else:
            method = target = version = "-"
        extra = conn.log_extra
        if self.template is not None:
            line = self._templated(conn, req, now, duration, upstream, method, target, version)
        elif self.json:
            record = {
                "time": self._iso(now), "client": conn.client_ip, "method": method,
                "target": target, "version": version, "status": conn.status,
                "bytes_sent": conn.sent, "bytes_received": conn.received,
                "duration_ms": round(duration * 1000, 3), "upstream": upstream,
                "upstream_ms": round(conn.upstream_time * 1000, 3)
                if conn.upstream_time >= 0 else None,
            }
            if conn.detail:
                record["detail"] = conn.detail
            if extra:
                record.update(extra)
            line = json.dumps(record, separators=(",", ":")) + "\n"
        else:
            referer = ua = "-"
            if req is not None:
                r = req.get(b"referer")
                u = req.get(b"user-agent")
                referer = escape(r.decode("latin-1")) if r else "-"
                ua = escape(u.decode("latin-1")) if u else "-"
            ut = f"{conn.upstream_time:.3f}" if conn.upstream_time >= 0 else "-"
            line = (f'{conn.client_ip} - - [{self._timestamp(now)}] "{method} {escape(target)} '
                    f'{version}" {conn.status} {conn.sent} "{referer}" "{ua}" '
                    f'rt={duration:.3f} ua={upstream.replace(", ", ",")} ut={ut}')
            if extra:
                line += "".join(f" {k}={escape(str(v))}" for k, v in extra.items())
            if conn.detail:
                line += f' err="{escape(conn.detail)}"'
            line += "\n"
        self.lines.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES:
            self.flush()
        elif self.handle is None:
            self.handle = self.loop.call_later(FLUSH_INTERVAL, self.flush)

    def _templated(self, conn, req, now, duration, upstream, method, target, version) -> str:
        extra = conn.log_extra or {}

        def header(name: bytes) -> str:
            value = req.get(name) if req is not None else None
            return escape(value.decode("latin-1")) if value else "-"
        target = escape(target)
        values = {
            "remote_addr": conn.client_ip, "status": conn.status, "bytes_sent": conn.sent,
            "bytes_received": conn.received, "method": method, "target": target,
            "version": version, "request": f"{method} {target} {version}",
            "request_time": f"{duration:.3f}", "upstream": upstream,
            "upstream_time": f"{conn.upstream_time:.3f}" if conn.upstream_time >= 0 else "-",
            "detail": escape(conn.detail) if conn.detail else "-",
        }
        out = []
        for literal, name in self.template or ():
            out.append(literal)
            if not name:
                continue
            if name in values:
                out.append(str(values[name]))
            elif name == "time_local":
                out.append(self._timestamp(now))
            elif name == "time_iso8601":
                out.append(self._iso(now))
            elif name == "request_id":
                out.append(escape(self.ids.of(conn, req)))
            elif name in ("referer", "user_agent", "host"):
                out.append(header(name.replace("_", "-").encode()))
            else:
                out.append(escape(str(extra.get(name, "-"))))
        out.append("\n")
        return "".join(out)

    def write_record(self, record: dict) -> None:
        """Log an event that is not an HTTP exchange (a tunnel, a TCP session)."""
        if self.json:
            line = json.dumps({"time": self._iso(time.time()), **record},
                              separators=(",", ":")) + "\n"
        else:
            line = f"{record.get('client', '-')} - - [{self._timestamp(time.time())}] " + \
                " ".join(f"{k}={escape(str(v))}" for k, v in record.items()
                         if k != "client") + "\n"
        self.lines.append(line)
        self.size += len(line)
        if self.handle is None:
            self.handle = self.loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Write everything buffered."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if not self.lines:
            return
        data = "".join(self.lines).encode("utf-8", "replace")
        self.lines.clear()
        self.size = 0
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
        except OSError as exc:
            event("error", "access_log.write", f"access log {self.path}: {describe(exc)}",
                  path=self.path)

    def close(self) -> None:
        self.flush()
        if self.own_fd:
            os.close(self.fd)
            self.own_fd = False
