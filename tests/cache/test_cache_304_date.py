"""A 304 without Date refreshes the entry as a response received now (RFC 9110 6.6.1).

The refreshed entry kept the Date of the response it first stored, so its age ran from
then: a 304 with `max-age=600` two seconds after a `max-age=1` response made an entry
already two seconds old (`Age: 2`, ttl 598), and more for longer gaps (outside probe,
12-05). A recipient dates a response that has no Date when it receives it, as the store
path already did.
"""
from __future__ import annotations

import email.utils
import time

from conftest import reverse_config
from wire import Conn, RawServer, crlf


def dateless_304_origin(server, s):
    """200 (max-age=1, ETag "e") with a Date; to If-None-Match a 304 with no Date."""
    while True:
        head, _ = server.read_head(s)
        if b"\r\nif-none-match:" in head.lower():
            s.sendall(b'HTTP/1.1 304 Not Modified\r\nCache-Control: max-age=600\r\nETag: "e"\r\n\r\n')
        else:
            date = email.utils.formatdate(time.time(), usegmt=True).encode()
            s.sendall(b'HTTP/1.1 200 OK\r\nCache-Control: max-age=1\r\nETag: "e"\r\nDate: '
                      + date + b"\r\nContent-Length: 2\r\n\r\nok")


def test_entry_refreshed_by_a_dateless_304_is_new(run_proxy):
    origin = RawServer(dateless_304_origin)
    try:
        p = run_proxy(reverse_config(origin.url, cache={"size": "16MiB"}))
        with Conn(p.port) as c:
            c.send(crlf("GET /x HTTP/1.1\nHost: h\n\n"))
            assert c.response().body == b"ok"
            time.sleep(2.5)          # stale now: revalidated, the origin says 304
            c.send(crlf("GET /x HTTP/1.1\nHost: h\n\n"))
            r = c.response()
            assert "fwd-status=304" in r.getheader("Cache-Status"), r.getheader("Cache-Status")
            assert int(r.getheader("Age", "0")) <= 1, r.getheaders()
            sent = email.utils.parsedate_to_datetime(r.getheader("Date")).timestamp()
            assert abs(sent - time.time()) <= 1.5, r.getheader("Date")
            c.send(crlf("GET /x HTTP/1.1\nHost: h\n\n"))
            r = c.response()
            assert "hit" in r.getheader("Cache-Status") and int(r.getheader("Age")) <= 1
    finally:
        origin.close()
