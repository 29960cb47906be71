"""A flood of made-up Proxy-Authorization values against a real forward proxy.

Each new value costs one scrypt (tens of milliseconds of CPU), so the checks waiting for
one are bounded (`auth.max_pending`): past the bound a new value gets 503 with Retry-After
at once instead of joining an unbounded queue (407 would tell a client its password is
wrong). A user who signed in before the flood keeps working: a cache hit, and once the
cache entry expires, a renewal that may pass the bound.
"""
from __future__ import annotations

import base64
import socket
import time

from fastproxy.forward.auth import hash_password

FLOOD = 300
MAX_PENDING = 32     # the default auth.max_pending


def _basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def _status(s: socket.socket) -> tuple[int, bytes]:
    """(status, head) of the response on s; (0, b"") if it closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return 0, data
        data += chunk
    return int(data[9:12]), data.partition(b"\r\n\r\n")[0]


def test_a_flood_of_wrong_credentials_is_bounded_and_signed_in_users_keep_working(
        start_proxy, origin, tmp_path):
    # 2^14 * r 8: 16 MiB and some 40 ms of CPU per check, as a real hash costs.
    hashed = hash_password("s3cret", n=2 ** 14)
    cfg = tmp_path / "fwd.toml"
    cfg.write_text(f"""
[[listeners]]
listen = "127.0.0.1:0"
mode = "forward"
allow_private = true
[listeners.auth]
users = {{ alice = "{hashed}" }}
cache_ttl = "1s"
""")
    p = start_proxy("serve", "--config", str(cfg))
    target = f"GET {origin.url}/size/3 HTTP/1.1\r\nHost: x\r\n".encode()
    alice = target + b"Proxy-Authorization: " + _basic("alice", "s3cret") + b"\r\n\r\n"

    def ask(data: bytes) -> int:
        with socket.create_connection(("127.0.0.1", p.port), timeout=60) as s:
            s.sendall(data)
            return _status(s)[0]

    assert ask(alice) == 200, "alice could not sign in before the flood"
    time.sleep(1.2)   # her cache entry expires: her next request is a renewal

    socks = [socket.create_connection(("127.0.0.1", p.port), timeout=60) for _ in range(FLOOD)]
    try:
        for i, s in enumerate(socks):
            s.sendall(target + b"Proxy-Authorization: " + _basic(f"mallory{i}", "guess")
                      + b"\r\n\r\n")
        during = ask(alice)
        answers = [_status(s) for s in socks]
    finally:
        for s in socks:
            s.close()
    statuses = [st for st, _ in answers]
    busy = statuses.count(503)
    checked = statuses.count(407)
    assert busy + checked == FLOOD, f"flood requests not answered 503 or 407: {statuses}"
    assert busy >= FLOOD - 4 * MAX_PENDING, (
        f"only {busy} of {FLOOD} were refused at once: the checks queued past max_pending")
    assert checked >= 1, "no flood credential was checked at all"
    assert checked <= 4 * MAX_PENDING, (
        f"{checked} scrypt checks ran for the flood: the queue is not bounded")
    assert all(b"\r\nRetry-After: 1" in head for st, head in answers if st == 503), \
        "a 503 without Retry-After"
    assert during == 200, f"alice's renewal during the flood got {during}"
    assert ask(alice) == 200, "alice could not use the proxy after the flood"
