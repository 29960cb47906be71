"""A blocking HTTP/2 client over a real socket for the proxy tests, on the `h2` package
(independent of our codec), plus raw frame sending for the strictness cases."""
from __future__ import annotations

import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events


class Client:
    """One HTTP/2 connection; request() opens a stream, run() reads until a condition."""

    def __init__(self, port: int, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None,
                 validate: bool = True, window: int | None = None) -> None:
        raw = socket.create_connection((host, port), timeout=10)
        if tls is not None:
            raw = tls.wrap_socket(raw, server_hostname="localhost")
            assert raw.selected_alpn_protocol() == "h2"
        self.sock = raw
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                        validate_outbound_headers=validate,
                                        normalize_outbound_headers=validate,
                                        validate_inbound_headers=False)
        self.h2 = h2.connection.H2Connection(cfg)
        self.h2.initiate_connection()
        if window is not None:
            self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()
        self.headers: dict[int, dict] = {}
        self.header_lists: dict[int, list] = {}   # as received: order and repeats kept
        self.informational: dict[int, list] = {}
        self.bodies: dict[int, bytearray] = {}
        self.trailers: dict[int, dict] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.auto_ack = True

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path: str, method: str = "GET", body: bytes | None = None,
                authority: str = "localhost", scheme: str = "http",
                extra: list[tuple[str, str]] | None = None,
                trailers: list[tuple[str, str]] | None = None) -> int:
        sid = self.h2.get_next_available_stream_id()
        headers = [(":method", method), (":path", path), (":scheme", scheme),
                   (":authority", authority)] + list(extra or [])
        end = body is None and trailers is None
        self.h2.send_headers(sid, [(n.encode(), v.encode()) for n, v in headers],
                             end_stream=end)
        if body is not None:
            size = self.h2.max_outbound_frame_size
            pieces = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
            for i, piece in enumerate(pieces):
                self.h2.send_data(sid, piece,
                                  end_stream=trailers is None and i == len(pieces) - 1)
        if trailers is not None:
            self.h2.send_headers(sid, [(n.encode(), v.encode()) for n, v in trailers],
                                 end_stream=True)
        self.flush()
        return sid

    def run(self, done, timeout: float = 10.0) -> None:
        """Read and handle events until done() or the timeout (AssertionError)."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            assert left > 0, "timed out waiting for the proxy"
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError("timed out waiting for the proxy") from None
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                if not done():
                    raise AssertionError("connection closed")
                return
            for ev in self.h2.receive_data(data):
                self.handle(ev)
            self.flush()

    def handle(self, ev) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            self.headers[ev.stream_id] = dict(ev.headers)
            self.header_lists[ev.stream_id] = list(ev.headers)
            self.bodies.setdefault(ev.stream_id, bytearray())
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            self.informational.setdefault(ev.stream_id, []).append(dict(ev.headers))
        elif isinstance(ev, h2.events.DataReceived):
            self.bodies.setdefault(ev.stream_id, bytearray()).extend(ev.data)
            if self.auto_ack and ev.flow_controlled_length:
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            self.trailers[ev.stream_id] = dict(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            self.ended.add(ev.stream_id)
        elif isinstance(ev, h2.events.StreamReset):
            self.resets[ev.stream_id] = ev.error_code
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev

    def finished(self, sid: int) -> bool:
        return sid in self.ended or sid in self.resets

    def get(self, path: str, **kw) -> tuple[int, dict, bytes]:
        """One request to completion: (status, headers, body)."""
        sid = self.request(path, **kw)
        self.run(lambda: self.finished(sid))
        assert sid not in self.resets, f"stream reset: {self.resets[sid]}"
        h = self.headers[sid]
        return int(h[b":status"]), h, bytes(self.bodies[sid])

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
