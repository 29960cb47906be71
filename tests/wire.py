"""Small raw-socket HTTP client helpers for tests that need exact bytes on the wire."""
from __future__ import annotations

import http.client
import socket


class _Unclosable:
    """The shared buffered file, which http.client must not close after one response."""

    def __init__(self, fh) -> None:
        self._fh = fh

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def close(self) -> None:
        pass


class _FileSock:
    """Lets http.client read several responses from one buffered file (pipelining)."""

    def __init__(self, fh) -> None:
        self.fh = _Unclosable(fh)

    def makefile(self, mode, *args, **kwargs):
        return self.fh


class Conn:
    """A client connection that writes raw bytes and reads parsed responses in order."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.fh = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> http.client.HTTPResponse:
        """Read one complete response (body read into .body)."""
        resp = http.client.HTTPResponse(_FileSock(self.fh), method=method)
        resp.begin()
        resp.body = resp.read()
        return resp

    def read_all(self) -> bytes:
        """Everything until the server closes."""
        chunks = []
        while True:
            try:
                data = self.fh.read1(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (EOF or reset) within timeout."""
        self.sock.settimeout(timeout)
        try:
            return self.fh.read1(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.fh.close()
        self.sock.close()

    def __enter__(self) -> "Conn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def request(port: int, data: bytes, method: str = "GET") -> http.client.HTTPResponse:
    """Send raw bytes on a new connection and read one response."""
    with Conn(port) as c:
        c.send(data)
        return c.response(method)


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send data on a fresh connection and read until the proxy closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def crlf(text: str) -> bytes:
    """Readable test input: newlines become CRLF (httptools' test style)."""
    return text.replace("\n", "\r\n").encode("latin-1")


class RawServer:
    """A loopback server that hands each accepted socket to `handler(sock)` in a thread.

    For upstream behaviour our test origin cannot show (a 101 to any Upgrade, trailers,
    exact response bytes). `received` keeps every request head read by `read_head`.
    """

    def __init__(self, handler) -> None:
        import threading

        self.handler = handler
        self.received: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import threading

        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                s, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            s.settimeout(10)
            threading.Thread(target=self._run, args=(s,), daemon=True).start()

    def _run(self, s) -> None:
        try:
            self.handler(self, s)
        except OSError:
            pass
        finally:
            s.close()

    def read_until(self, s, end: bytes, data: bytes = b"") -> tuple[bytes, bytes]:
        """Read until `end` appears: (bytes up to and with it, the rest already read)."""
        while end not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before {end!r}")
            data += chunk
        i = data.index(end) + len(end)
        return data[:i], data[i:]

    def read_head(self, s) -> tuple[bytes, bytes]:
        head, rest = self.read_until(s, b"\r\n\r\n")
        self.received.append(head)
        return head, rest

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(2)
