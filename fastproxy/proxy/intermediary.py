"""Rules every HTTP intermediary follows whatever its mode (RFC 9110 section 7.6).

`max_forwards` implements 7.6.2: TRACE and OPTIONS carrying Max-Forwards are answered
by the proxy itself when the value is 0, and forwarded with the value decremented
otherwise, so a client can probe the chain hop by hop.

`via_lines` implements 7.6.3's received-protocol: the version the request came in
(`Request.version`: 10, 11, or 20 for an HTTP/2 stream, whose relay is told so).

`upgrade_plan` implements the proxy's side of 7.8: an Upgrade offer goes upstream only
for the protocols the listener tunnels (`upgrade`, websocket by default); the rest of
the offer is dropped, and a request with nothing left goes as a plain request (a server
may ignore Upgrade, so this is a valid answer to the client). Never h2c: configuration
refuses it, since a tunnelled h2c connection would carry HTTP/2 requests to the upstream
that no route or rule of the listener ever saw.
"""
from __future__ import annotations

from fastproxy._relay import PAUSE_CONNECTING, date_line

MAX_FORWARDS_METHODS = frozenset((b"TRACE", b"OPTIONS"))
DROP_MAX_FORWARDS = (b"max-forwards",)
# Fields never echoed by TRACE: credentials and cookies (RFC 9110 9.3.8).
_TRACE_HIDDEN = frozenset((b"authorization", b"proxy-authorization", b"cookie"))
ALLOW = b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, CONNECT"
# RFC 9110 7.6.3: received-protocol is the version only when the protocol is HTTP;
# HTTP/2 is "2" (RFC 9113 3).
_RECEIVED_PROTOCOL = {10: "1.0", 11: "1.1", 20: "2"}


def via_lines(name: str) -> dict[int, bytes]:
    """The `Via` line to add for each request version (Request.version -> bytes)."""
    return {v: f"Via: {proto} {name}\r\n".encode() for v, proto in _RECEIVED_PROTOCOL.items()}


def max_forwards(conn, req) -> tuple[tuple[bytes, ...], bytes] | None:
    """For TRACE/OPTIONS with Max-Forwards: answer (returns None) or the (drop, extra) to
    forward with the value decremented. Other requests: ((), b"") at once."""
    if req.method not in MAX_FORWARDS_METHODS:
        return (), b""
    raw = req.get(b"max-forwards")
    if raw is None:
        return (), b""
    raw = raw.strip()
    if not raw.isdigit():
        conn.respond_error(400, "Max-Forwards must be a non-negative integer")
        return None
    value = int(raw)
    if value > 0:
        return DROP_MAX_FORWARDS, b"Max-Forwards: %d\r\n" % (value - 1)
    if req.method == b"OPTIONS":
        answer_options(conn)
        return None
    # TRACE with Max-Forwards: 0 is for us: echo the request as received (9.3.8).
    lines = [req.head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]]
    lines += [n + b": " + v for n, v in req.headers() if n.lower() not in _TRACE_HIDDEN]
    body = b"\r\n".join(lines) + b"\r\n\r\n"
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: %d\r\n"
            % len(body) + date_line() + (b"" if conn.keep_alive else b"Connection: close\r\n") + b"\r\n")
    conn.respond(head + body, 200, len(body))
    return None


def answer_options(conn) -> None:
    """Answer an OPTIONS meant for the proxy itself: 200 with the methods it relays."""
    head = (b"HTTP/1.1 200 OK\r\nAllow: " + ALLOW + b"\r\nContent-Length: 0\r\n" + date_line()
            + (b"" if conn.keep_alive else b"Connection: close\r\n") + b"\r\n")
    conn.respond(head, 200, 0)


def max_forwards_plan(req) -> tuple[tuple[bytes, ...], bytes]:
    """The (drop, extra) that decrements a positive Max-Forwards (after max_forwards said go)."""
    if req.method not in MAX_FORWARDS_METHODS:
        return (), b""
    raw = req.get(b"max-forwards")
    if raw is None or not raw.strip().isdigit() or int(raw) <= 0:
        return (), b""
    return DROP_MAX_FORWARDS, b"Max-Forwards: %d\r\n" % (int(raw) - 1)


CONNECTION_UPGRADE = b"Connection: upgrade\r\n"
NO_UPGRADE = (False, b"")


def upgrade_plan(req, allowed: frozenset[bytes]) -> tuple[bool, bytes]:
    """(keep the Upgrade field as received, field lines to add) for req's Upgrade offer.

    (False, b"") means the request goes as a plain one, Upgrade and Connection removed;
    any other answer forwards an offer of `allowed` protocols only (names compared
    case-insensitively, versions kept: "WebSocket/13" is "websocket")."""
    offer = req.upgrade
    if offer is None or req.version == 10:
        return NO_UPGRADE    # 7.8: Upgrade in an HTTP/1.0 request MUST be ignored
    protocols = [p.strip() for p in offer.split(b",")]
    protocols = [p for p in protocols if p]
    kept = [p for p in protocols if p.split(b"/", 1)[0].rstrip().lower() in allowed]
    if not kept:
        return NO_UPGRADE
    if len(kept) == len(protocols):
        return True, CONNECTION_UPGRADE
    return False, b"Upgrade: " + b", ".join(kept) + b"\r\n" + CONNECTION_UPGRADE


def answer_failure(conn, status: int, detail: str) -> None:
    """Tell the client an upstream attempt failed for good (no retry is left).

    Mid-response the connection can only be cut; before it, the cache may still answer
    (stale-if-error, or the error with its Cache-Status); otherwise the 502/504 page."""
    conn.resume_reading(PAUSE_CONNECTING)
    if conn.resp_started:
        conn.abort(detail)
        return
    observer = conn.observer
    if observer is not None and observer.upstream_failed(conn, status, detail):
        return
    conn.respond_error(status, detail)
