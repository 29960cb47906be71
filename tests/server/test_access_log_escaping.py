"""The text access log cannot be forged by what a client sends (outside probe, 12-05).

A User-Agent of `x" 200 0 "y`, a request-target holding `"` (the parser accepted it then,
as nginx does; now a 400) or `\\` (still taken in a query, where browsers send it raw), or
a byte past ASCII used to be written as it came, so one request could
append fields, or whole fake exchanges, to a combined line that log parsers split on
quotes. Like nginx's default log escaping, `"`, `\\`, control characters and bytes past
ASCII are written as \\xHH, in the combined format and in templates.
"""
from __future__ import annotations

import re
import time

from conftest import reverse_config
from wire import Conn, crlf


def _lines(path, n: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text("utf-8").splitlines()
            if len(lines) >= n:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} lines in {path}")


def _send(port: int, head: bytes) -> int:
    with Conn(port) as c:
        c.send(head)
        return c.response().status


EVIL = (b'GET /a?b\\c HTTP/1.1\r\nHost: h\r\nUser-Agent: x" 200 0 "forged\r\n'
        b'Referer: r\xff"\r\n\r\n')


def test_combined_line_escapes_what_the_client_chose(run_proxy, origin, tmp_path):
    log = tmp_path / "access.log"
    p = run_proxy(reverse_config(origin.url, access_log={"path": str(log)}))
    assert _send(p.port, EVIL) == 404
    line = _lines(log, 1)[0]
    assert ('"GET /a?b\\x5Cc HTTP/1.1" 404 13 "r\\xFF\\x22" "x\\x22 200 0 \\x22forged" '
            in line), line
    # A log parser splitting on quotes sees exactly the six quoted fields of the format.
    assert re.fullmatch(r'127\.0\.0\.1 - - \[[^\]]+\] "[^"]*" 404 13 "[^"]*" "[^"]*" rt=.*',
                        line), line


def test_template_escapes_headers_and_target(run_proxy, origin, tmp_path):
    log = tmp_path / "access.log"
    fmt = '"$request" host="$host" ua="$user_agent" ref="$referer"'
    p = run_proxy(reverse_config(origin.url, access_log={"path": str(log), "format": fmt}))
    assert _send(p.port, EVIL) == 404
    assert _send(p.port, crlf("GET /ok HTTP/1.1\nHost: h\n\n")) == 404
    first, second = _lines(log, 2)
    assert first == ('"GET /a?b\\x5Cc HTTP/1.1" host="h" ua="x\\x22 200 0 \\x22forged" '
                     'ref="r\\xFF\\x22"'), first
    assert second == '"GET /ok HTTP/1.1" host="h" ua="-" ref="-"', second
