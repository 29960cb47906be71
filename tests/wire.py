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


def crlf(text: str) -> bytes:
    """Readable test input: newlines become CRLF (httptools' test style)."""
    return text.replace("\n", "\r\n").encode("latin-1")
