"""The outside attack probe, forward mode, over real sockets: what a client that is not
trusted can learn from or do through a forward listener."""
import base64
import json
import time


from fastproxy.addresses import special_range
from fastproxy.forward.auth import hash_password
from wire import exchange


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def log_lines(path, n: int, timeout: float = 3.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    lines: list[dict] = []
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        if len(lines) >= n:
            break
        time.sleep(0.05)
    return lines


def test_407_does_not_tell_an_unknown_user_from_a_wrong_password(run_proxy, origin, tmp_path):
    users = {"alice": hash_password("right", n=2 ** 10)}
    log = tmp_path / "access.log"
    proxy = run_proxy({"access_log": {"path": str(log), "format": "json"},
                       "listeners": [{"mode": "forward", "allow_private": True,
                                      "auth": {"users": users}}]})
    bodies = {}
    for user in ("alice", "mallory"):
        answer = exchange(proxy.port, (
            f"GET {origin.url}/echo HTTP/1.1\r\nHost: x\r\n"
            f"Proxy-Authorization: {basic(user, 'wrong')}\r\nConnection: close\r\n\r\n").encode())
        assert answer.startswith(b"HTTP/1.1 407 "), answer[:80]
        bodies[user] = answer.partition(b"\r\n\r\n")[2]
    # Different bodies would list the accounts to anyone who asks.
    assert bodies["alice"] == bodies["mallory"], bodies
    assert b"alice" not in bodies["alice"], bodies
    assert b"mallory" not in bodies["mallory"], bodies
    # The operator still reads which it was.
    reasons = [line.get("auth") for line in log_lines(log, 2)]
    assert reasons == ["wrong password for 'alice'", "unknown user 'mallory'"], reasons
    assert origin.requests == []


def test_ipv4_translated_destinations_are_refused_without_a_connect(run_proxy, origin):
    # A SIIT translator delivers ::ffff:0:a.b.c.d to a.b.c.d (RFC 2765 2.1): the guard must
    # see a.b.c.d, as it does for IPv4-mapped and NAT64 addresses. A 502 would mean a
    # connect was tried (this machine has no route for it: nothing leaves it).
    proxy = run_proxy({"listeners": [{"mode": "forward"}]})
    port = origin.url.rsplit(":", 1)[1]
    answer = exchange(proxy.port, (f"GET http://[::ffff:0:7f00:1]:{port}/echo HTTP/1.1\r\n"
                                   "Host: x\r\nConnection: close\r\n\r\n").encode())
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:200]
    assert b"loopback" in answer, answer
    # The metadata endpoint spelled the same way is link-local (no request: no route here).
    assert "link-local" in special_range("::ffff:0:169.254.169.254")
