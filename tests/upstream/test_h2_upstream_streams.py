"""HTTP/2 upstreams (`h2c://`) that allow few concurrent streams (RFC 9113 5.1.2), over real
sockets: an origin on the `h2` package announces SETTINGS_MAX_CONCURRENT_STREAMS in its
first SETTINGS and answers each stream after a pause, and HTTP/1.1 clients ask through
fastproxy at once. Links handed the connection before its SETTINGS arrived found no
stream free; the relay took the failure inside its own write and those clients waited
for ever (no answer, no timeout)."""
from __future__ import annotations

import json
import socket
import threading

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
import pytest


class _Refusing(h2.connection.H2Connection):
    """h2 answers a stream over its limit as RFC 9113 5.1.2 says (REFUSED_STREAM, the
    connection goes on) instead of raising: a client may open streams before it has the
    server's SETTINGS (3.4)."""

    refused = 0

    def _receive_headers_frame(self, frame):
        try:
            return super()._receive_headers_frame(frame)
        except h2.exceptions.TooManyStreamsError:
            self.decoder.decode(frame.data)     # the HPACK state stays in step
            self.highest_inbound_stream_id = max(self.highest_inbound_stream_id,
                                                 frame.stream_id)
            self.refused += 1
            rst = hyperframe.frame.RstStreamFrame(frame.stream_id)
            rst.error_code = 7
            return [rst], []


class LimitedOrigin:
    """An h2c server whose first SETTINGS allow `limit` concurrent streams; each answer
    (JSON: the request body's length) comes `pause` seconds after the request ended."""

    def __init__(self, limit: int, pause: float, interim: bool = False) -> None:
        self.limit = limit
        self.pause = pause
        self.interim = interim      # a 103 Early Hints before each answer
        self.most_open = 0          # the most streams open at once, on any connection
        self.connections = 0
        self.errors: list[str] = []
        self.refused = 0
        self.lock = threading.Lock()
        self.lst = socket.create_server(("127.0.0.1", 0))
        self.port = self.lst.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                s, _ = self.lst.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s: socket.socket) -> None:
        c = _Refusing(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        c.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.limit})
        c.initiate_connection()
        lock = threading.Lock()          # the answering timers share the connection
        s.sendall(c.data_to_send())
        bodies: dict[int, int] = {}
        try:
            while data := s.recv(65536):
                with lock:
                    for ev in c.receive_data(data):
                        if isinstance(ev, h2.events.RequestReceived):
                            bodies[ev.stream_id] = 0
                            with self.lock:
                                self.most_open = max(self.most_open, c.open_inbound_streams)
                        elif isinstance(ev, h2.events.DataReceived):
                            bodies[ev.stream_id] += len(ev.data)
                            c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        elif isinstance(ev, h2.events.StreamEnded):
                            if self.interim:
                                c.send_headers(ev.stream_id, [(b":status", b"103"),
                                                              (b"link", b"</s.css>; rel=preload")])
                            threading.Timer(self.pause, self._answer,
                                            (s, c, lock, ev.stream_id, bodies.pop(ev.stream_id))
                                            ).start()
                    s.sendall(c.data_to_send())
                    self.refused = c.refused
        except Exception as exc:
            self.errors.append(repr(exc))
        finally:
            s.close()

    def _answer(self, s, c, lock, sid: int, n: int) -> None:
        body = json.dumps({"n": n}).encode()
        with lock:
            try:
                c.send_headers(sid, [(b":status", b"200"), (b"content-length", b"%d" % len(body))])
                c.send_data(sid, body, end_stream=True)
                s.sendall(c.data_to_send())
            except Exception as exc:
                self.errors.append(repr(exc))

    def close(self) -> None:
        self.lst.close()


def exchange(port: int, body: bytes | None = None) -> bytes:
    """One HTTP/1.1 request on its own connection: every byte of the answer."""
    head = (b"POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n" % len(body)
            if body is not None else b"GET /x HTTP/1.1\r\nHost: a.test\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(head + b"Connection: close\r\n\r\n" + (body or b""))
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def ask(port: int, body: bytes | None = None) -> tuple[bytes, bytes]:
    """One HTTP/1.1 request on its own connection: (status line, body)."""
    head, _, rest = exchange(port, body).partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], rest


@pytest.mark.parametrize("limit", [1, 2])
def test_requests_over_the_servers_stream_limit_wait_for_a_stream(start_proxy, limit):
    # GETs: a stream the server refuses (sent before its SETTINGS came) is sent again, a
    # request that found every stream taken waits for one; either way each is answered.
    origin = LimitedOrigin(limit, pause=0.2)
    try:
        proxy = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                            "--upstream", f"h2c://127.0.0.1:{origin.port}")
        answers: dict[int, tuple] = {}

        def client(i: int) -> None:
            try:
                answers[i] = ask(proxy.port, None)
            except OSError as exc:
                answers[i] = (repr(exc).encode(), b"")

        clients = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(20)
        assert len(answers) == 6
        for i, (status, body) in sorted(answers.items()):
            assert status == b"HTTP/1.1 200 OK", (i, status, origin.errors, origin.refused, origin.connections)
            assert json.loads(body) == {"n": 0}, (i, body)
        assert origin.errors == [] and origin.most_open <= limit, (origin.errors, origin.most_open)
    finally:
        origin.close()


def test_an_interim_response_from_an_http2_server_is_forwarded(start_proxy):
    # RFC 9110 15.2: a proxy MUST forward 1xx responses. A 103 Early Hints an h2c server
    # sent was dropped; the same from an HTTP/1.1 server was passed on.
    origin = LimitedOrigin(100, pause=0.0, interim=True)
    try:
        proxy = start_proxy("serve", "--mode", "reverse", "--listen", "127.0.0.1:0",
                            "--upstream", f"h2c://127.0.0.1:{origin.port}")
        out = exchange(proxy.port)
        interim, _, final = out.partition(b"\r\n\r\n")
        assert interim.split(b"\r\n")[0] == b"HTTP/1.1 103 Early Hints", out
        assert b"\r\nlink: </s.css>; rel=preload" in interim.lower(), out
        assert final.startswith(b"HTTP/1.1 200 OK\r\n") and final.endswith(b'{"n": 0}'), out
    finally:
        origin.close()
