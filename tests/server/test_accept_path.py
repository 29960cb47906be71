"""The accept path of plain HTTP listeners, both ways: the compiled one (ext/relay_accept.pxi:
Acceptor, SockTransport, the worker's edge-triggered epoll set) and uvloop's server
(FASTPROXY_UVLOOP_ACCEPT=1). Every test runs against both and expects the same behaviour,
over real sockets, of what the compiled transport owns: the peer address, reading (whole,
trickled, pipelined, half-closed), writing to a slow reader, resets, timeouts, the
connection limit, the drain, and no descriptor left behind.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from conftest import reverse_config

KILL_SWITCH = "FASTPROXY_UVLOOP_ACCEPT"


@pytest.fixture(params=["compiled", "uvloop"])
def accept(request):
    """(which accept path, the proxy's environment)."""
    env = {k: v for k, v in os.environ.items() if k != KILL_SWITCH}
    if request.param == "uvloop":
        env[KILL_SWITCH] = "1"
    return request.param, env


def _epolls(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[eventpoll]"
        except OSError:
            pass
    return n


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _sockets(pid: int, local: int = 0, remote: int = 0) -> int:
    """pid's connected TCP sockets with that local (or remote) port."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            next(fh)
            for line in fh:
                f = line.split()
                lport = int(f[1].rsplit(":", 1)[1], 16)
                rport = int(f[2].rsplit(":", 1)[1], 16)
                if f[3] != "0A" and f[9] in inodes and (
                        lport == local if local else rport == remote):
                    n += 1
    return n


def _proxy(run_proxy, origin, accept, tmp_path, host="127.0.0.1", **tables):
    kind, env = accept
    cfg = reverse_config(origin.url, **tables)
    cfg["listeners"][0]["listen"] = f"[{host}]:0" if ":" in host else f"{host}:0"
    cfg["access_log"] = {"path": str(tmp_path / "access.log"), "format": "json"}
    cfg["pidfile"] = False
    proxy = run_proxy(cfg, env=env)
    # The path under test is the one in use: the compiled one has its own epoll set
    # beside the loop's.
    assert _epolls(proxy.pid) == (2 if kind == "compiled" else 1), kind
    return proxy


def _log(tmp_path, n: int, timeout: float = 5.0) -> list[dict]:
    path = tmp_path / "access.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().splitlines()
            if len(lines) >= n:
                return [json.loads(x) for x in lines]
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} access log lines: "
                         f"{path.read_text() if path.exists() else 'no file'}")


def _read_all(s: socket.socket, timeout: float = 10.0) -> bytes:
    s.settimeout(timeout)
    out = bytearray()
    while True:
        data = s.recv(65536)
        if not data:
            return bytes(out)
        out += data


def _responses(data: bytes) -> list[tuple[int, bytes]]:
    """Split Content-Length framed responses: [(status, body)]."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(int(x.split(b":")[1]) for x in lines[1:]
                      if x.lower().startswith(b"content-length:"))
        if len(rest) < length:
            raise ValueError(f"incomplete response: {data!r}")
        out.append((status, rest[:length]))
        data = rest[length:]
    return out


def _responses_so_far(data: bytes) -> list:
    try:
        return _responses(data)
    except (StopIteration, ValueError, IndexError):
        return []


def _wait(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_peer_address_reaches_the_log_and_x_forwarded_for(run_proxy, origin, accept, tmp_path,
                                                          host):
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    proxy = _proxy(run_proxy, origin, accept, tmp_path, host=host)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.connect((host, proxy.port))
        port = s.getsockname()[1]
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        (status, _), = _responses(_read_all(s))
    assert status == 200
    assert origin.headers_of("/echo")["x-forwarded-for"] == host
    record = _log(tmp_path, 1)[0]
    assert record["client"] == host and record["status"] == 200, record
    assert port > 0


def test_request_in_pieces_then_pipelined_then_half_close(run_proxy, origin, accept, tmp_path):
    """A head that trickles in (the socket must wait in the epoll set), two requests in one
    write, and a half-close after the last request: every answer arrives, in order."""
    proxy = _proxy(run_proxy, origin, accept, tmp_path)
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        for piece in (b"GET /size/5 HT", b"TP/1.1\r\nHo", b"st: x\r\n", b"\r\n"):
            s.sendall(piece)
            time.sleep(0.05)
        s.sendall(b"GET /size/7 HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /size/9 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        s.settimeout(5)
        while len(_responses_so_far(got)) < 3:
            data = s.recv(65536)
            assert data, got
            got += data
        s.sendall(b"GET /slow/0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
        s.shutdown(socket.SHUT_WR)      # RFC 9112 9.6: the answer still comes
        got += _read_all(s)
    assert _responses(got) == [(200, b"01234"), (200, b"0123456"), (200, b"012345678"),
                               (200, b"slow\n")], got


def test_a_slow_reader_is_served_whole_with_bounded_buffers(run_proxy, origin, accept, tmp_path):
    """64 MiB to a client that does not read for a while: the proxy's memory stays far
    below the body (write buffer limits pause the origin), then every byte arrives."""
    proxy = _proxy(run_proxy, origin, accept, tmp_path)
    size = 64 << 20
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    s.connect(("127.0.0.1", proxy.port))
    with s:
        before = proxy.rss_kib()
        s.sendall(b"GET /size/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % size)
        time.sleep(1.5)
        grown = proxy.rss_kib() - before
        assert grown < 16 * 1024, f"the proxy buffered {grown} KiB for a client that reads nothing"
        data = _read_all(s, 30)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and len(body) == size
    assert body[:32] == b"0123456789abcdef" * 2 and body[-16:] == (
        b"0123456789abcdef" * (size // 16 + 1))[size - 16:size]


def test_resets_and_silent_closes_leave_no_descriptor_behind(run_proxy, origin, accept, tmp_path):
    """Clients that reset while the origin is still answering (499 in the log), that
    connect and close, that send half a head: afterwards the worker holds as many
    descriptors as before, and serves on."""
    proxy = _proxy(run_proxy, origin, accept, tmp_path,
                   timeouts={"client_header": "1s"})
    s = socket.create_connection(("127.0.0.1", proxy.port))
    s.sendall(b"GET /size/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    _read_all(s)
    s.close()
    _log(tmp_path, 1)
    base = _fds(proxy.pid)
    linger = struct.pack("ii", 1, 0)
    for i in range(30):
        s = socket.create_connection(("127.0.0.1", proxy.port))
        kind = i % 3
        if kind == 0:       # reset while the origin is slow
            slow = origin.count("/slow/0.5")
            s.sendall(b"GET /slow/0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
            # A reset before the proxy has read the head throws the head away with it
            # (no request, no 499): reset only once the origin has the request.
            assert _wait(lambda: origin.count("/slow/0.5") > slow, 10), "never reached the origin"
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        elif kind == 1:     # half a head, then a reset
            s.sendall(b"GET /size/1 HTTP/1.1\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        else:               # a whole request, gone before the answer is read
            s.sendall(b"GET /size/100000 HTTP/1.1\r\nHost: x\r\n\r\n")
        s.close()
    assert _wait(lambda: _sockets(proxy.pid, local=proxy.port) == 0, 10)
    assert _wait(lambda: _fds(proxy.pid) - base <= _sockets(proxy.pid, remote=origin.port), 5)
    # The log is written in batches (accesslog.FLUSH_INTERVAL): wait for every line, the
    # first request's and the 20 whose head was whole (half a head logs nothing).
    records = _log(tmp_path, 21)
    assert [r["status"] for r in records if r["target"] == "/slow/0.5"] == [499] * 10, records
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(b"GET /size/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _responses(_read_all(s)) == [(200, b"012")]


def test_header_and_idle_timeouts(run_proxy, origin, accept, tmp_path):
    proxy = _proxy(run_proxy, origin, accept, tmp_path,
                   timeouts={"client_header": "1s", "client_idle": "1s"})
    # Half a head, then nothing: 408 once client_header passed.
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(b"GET /size/1 HTTP/1.1\r\nHo")
        t0 = time.monotonic()
        data = _read_all(s)
        waited = time.monotonic() - t0
    assert data.startswith(b"HTTP/1.1 408"), data
    # Above 0.5 s: not answered at once (a transport that took the half head for an error);
    # below 4 s: the 1 s client_header fired (no timeout at all would block _read_all).
    assert 0.5 < waited < 4, waited
    # A kept-alive connection left idle is closed quietly after client_idle.
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(b"GET /size/2 HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"01"), first
        t0 = time.monotonic()
        assert _read_all(s) == b""
        waited = time.monotonic() - t0
    # Above 0.5 s: the kept-alive connection was not closed after the response; below 4 s:
    # client_idle (1 s) closed it, not the peer's own timeout.
    assert 0.5 < waited < 4, waited


def test_max_connections_holds_the_next_connection_until_one_closes(run_proxy, origin, accept,
                                                                    tmp_path):
    proxy = _proxy(run_proxy, origin, accept, tmp_path, limits={"max_connections": 2})
    get = b"GET /size/2 HTTP/1.1\r\nHost: x\r\n\r\n"
    held = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(2)]
    for s in held:
        s.sendall(get)
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
    third = socket.create_connection(("127.0.0.1", proxy.port))
    third.sendall(get)
    third.settimeout(0.5)
    with pytest.raises(socket.timeout):
        third.recv(65536)
    held[0].close()
    third.settimeout(5)
    assert third.recv(65536).startswith(b"HTTP/1.1 200")
    for s in (held[1], third):
        s.close()


def test_sigterm_finishes_the_request_in_flight(run_proxy, origin, accept, tmp_path):
    proxy = _proxy(run_proxy, origin, accept, tmp_path)
    s = socket.create_connection(("127.0.0.1", proxy.port))
    s.sendall(b"GET /slow/1 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    proxy.signal(signal.SIGTERM)
    got = _responses(_read_all(s))
    s.close()
    assert got == [(200, b"slow\n")]
    assert proxy.proc.wait(10) == 0
    # Accepting stopped with the drain.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()


def test_many_new_connections_at_once_are_all_answered(run_proxy, origin, accept, tmp_path):
    """Bursts of connections (accepted in batches) from several threads, each one request
    with Connection: close; no descriptor is left behind by a burst (what the first one
    opens for good, the origin pool aside, is the base)."""
    proxy = _proxy(run_proxy, origin, accept, tmp_path)
    results: list = []

    def client(n: int) -> None:
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", proxy.port)) as s:
                s.sendall(b"GET /size/4096 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                results.append(_responses(_read_all(s)))

    def burst() -> int:
        threads = [threading.Thread(target=client, args=(25,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert _wait(lambda: _sockets(proxy.pid, local=proxy.port) == 0, 5)
        return _fds(proxy.pid) - _sockets(proxy.pid, remote=origin.port)

    base = burst()
    assert burst() == base
    assert len(results) == 400
    body = (b"0123456789abcdef" * 256)
    assert all(r == [(200, body)] for r in results)


def test_the_socket_changes_hands_h2_preface_and_upgrade_tunnel(run_proxy, origin, accept,
                                                                tmp_path):
    """What the compiled transport hands on: HTTP/2 with prior knowledge (the relay gives the
    socket to H2Server) and an Upgrade that becomes a byte tunnel, with large writes both
    ways and the client's half-close ending it."""
    from h2_client import Client
    proxy = _proxy(run_proxy, origin, accept, tmp_path)
    c = Client(proxy.port)
    try:
        sizes = [1, 70000, 300000]
        sids = [c.request(f"/size/{n}") for n in sizes]
        c.run(lambda: all(c.finished(s) for s in sids))
        assert [len(c.bodies[s]) for s in sids] == sizes
        assert all(c.headers[s][b":status"] == b"200" for s in sids)
    finally:
        c.close()
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                  b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        s.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        msg = bytes(range(256)) * 8192          # 2 MiB echoed back through the tunnel
        sender = threading.Thread(target=s.sendall, args=(msg,))
        sender.start()
        got = bytearray(rest)
        while len(got) < len(msg):
            got += s.recv(65536)
        sender.join(10)
        assert bytes(got) == msg
        s.shutdown(socket.SHUT_WR)
        assert _read_all(s) == b""      # the half-close travelled and the tunnel ended


def test_a_last_response_streamed_in_pieces_arrives_as_it_comes(run_proxy, origin, accept,
                                                                  tmp_path):
    """Connection: close makes the response the connection's last: the compiled path holds
    its write for the close, and a write that no close follows (the body still coming)
    must still go out in the same loop turn, not with the next write or the close."""
    proxy = _proxy(run_proxy, origin, accept, tmp_path)
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(b"GET /slowbody/5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        s.settimeout(5)
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536)
        # The origin sends the head, then a byte every 0.2 s: the head comes alone (held
        # until the next write, it would come with the first byte), the rest over ~1 s.
        assert got.endswith(b"\r\n\r\n"), got
        rest = _read_all(s)
    assert rest == b"xxxxx"


def test_the_last_response_and_the_fin_leave_in_one_segment(run_proxy, origin, tmp_path):
    """The compiled path sends a connection's last response corked and closes, so the FIN
    rides on the response's segment (one segment fewer per connection than a FIN of its
    own, which uvloop's transport and nginx send). Counted at the client with TCP_INFO:
    what it received without data is the SYN-ACK and the ACK of its request (the origin
    answers after 0.5 s, so that ACK cannot ride on the response), and no bare FIN."""
    env = {k: v for k, v in os.environ.items() if k != KILL_SWITCH}
    proxy = _proxy(run_proxy, origin, ("compiled", env), tmp_path)
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(b"GET /slow/0.5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = _read_all(s)
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"slow\n"), data
    # struct tcp_info (linux/tcp.h): tcpi_segs_in at byte 140, tcpi_data_segs_in at 152.
    segs_in, = struct.unpack_from("I", info, 140)
    data_segs_in, = struct.unpack_from("I", info, 152)
    assert segs_in - data_segs_in == 2, (segs_in, data_segs_in)


def test_a_reload_changes_max_connections_for_the_next_accepts(run_proxy, origin, accept,
                                                                tmp_path):
    """The limit is read at every accept from what the worker set at start and on reload
    (it was a getter on the configuration): raised by a SIGHUP reload, a connection that
    waited at the old limit is let in once one closes, and the new one applies."""
    proxy = _proxy(run_proxy, origin, accept, tmp_path, limits={"max_connections": 1})
    get = b"GET /size/2 HTTP/1.1\r\nHost: x\r\n\r\n"
    first = socket.create_connection(("127.0.0.1", proxy.port))
    first.sendall(get)
    first.settimeout(5)
    assert first.recv(65536).startswith(b"HTTP/1.1 200")
    second = socket.create_connection(("127.0.0.1", proxy.port))
    second.sendall(get)
    second.settimeout(0.5)
    with pytest.raises(socket.timeout):
        second.recv(65536)      # the limit of 1 holds it
    path = Path(proxy.config_path)
    path.write_text(path.read_text().replace("max_connections = 1", "max_connections = 3"))
    proxy.signal(signal.SIGHUP)
    assert _wait(lambda: any("reloaded configuration" in x for x in proxy.stderr_lines), 10)
    first.close()           # the gate looks again at the next close
    second.settimeout(5)
    assert second.recv(65536).startswith(b"HTTP/1.1 200")
    # Three at once now: two more open beside `second`, all answered.
    more = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(2)]
    for s in more:
        s.sendall(get)
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
    fourth = socket.create_connection(("127.0.0.1", proxy.port))
    fourth.sendall(get)
    fourth.settimeout(0.5)
    with pytest.raises(socket.timeout):
        fourth.recv(65536)      # ... and the new limit holds the fourth
    for s in (second, *more, fourth):
        s.close()


def test_a_parser_given_back_mid_head_serves_the_next_connection_clean(
        run_proxy, origin, accept, tmp_path):
    """A client that leaves in the middle of a field section gives its parser back to the
    listener's pool (RequestParser.clear_c): the next connections, which take that parser,
    are parsed from a clean state (no start line seen, no leftover fields or offsets)."""
    proxy = _proxy(run_proxy, origin, accept, tmp_path)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            s.sendall(b"GET /size/3 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-B")
            time.sleep(0.1)     # read and parsed as far as it goes, then the client leaves
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            s.sendall(b"GET /size/5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _responses(_read_all(s)) == [(200, b"01234")]
