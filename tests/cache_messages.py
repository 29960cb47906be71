"""Requests and responses for the cache policy tests, parsed by the project's parser.

The policy reads the parser's `Request` / `Response` interface (method, target,
status, reason, headers(), get(), get_all(), content_length). Until the parser
(fastproxy._http) is on this branch, a minimal reader of the same interface
stands in; it goes away with the merge.
"""
from __future__ import annotations

try:
    from fastproxy._http import RequestParser, ResponseParser
except ImportError:          # parser not merged into this branch yet
    RequestParser = ResponseParser = None


def _lines(raw: bytes) -> bytes:
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not raw.endswith(b"\r\n\r\n"):
        raw = raw.rstrip(b"\r\n") + b"\r\n\r\n"
    return raw


class _Message:
    def __init__(self, head: bytes) -> None:
        self.head = head
        lines = head.split(b"\r\n")
        self.start = lines[0]
        self._fields = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b":")
                self._fields.append((name, value.strip(b" \t")))
        cl = self.get(b"content-length")
        self.content_length = int(cl) if cl is not None else -1

    def headers(self):
        return list(self._fields)

    def get(self, name, default=None):
        for n, v in self._fields:
            if n.lower() == name:
                return v
        return default

    def get_all(self, name):
        return [v for n, v in self._fields if n.lower() == name]

    @property
    def cache_control(self):
        values = self.get_all(b"cache-control")
        return b", ".join(values) if values else None


class _Request(_Message):
    def __init__(self, head):
        super().__init__(head)
        self.method, self.target, _ = self.start.split(b" ", 2)


class _Response(_Message):
    def __init__(self, head):
        super().__init__(head)
        parts = self.start.split(b" ", 2)
        self.status = int(parts[1])
        self.reason = parts[2] if len(parts) > 2 else b""


def request(raw: bytes):
    """Parse a request head written with bare LFs for readability."""
    data = _lines(raw)
    if RequestParser is not None:
        return RequestParser().feed(data)
    return _Request(data[:-4])


def response(raw: bytes, head_request: bool = False):
    """Parse a response head written with bare LFs for readability."""
    data = _lines(raw)
    if ResponseParser is not None:
        return ResponseParser().feed(data, head_request=head_request)
    return _Response(data[:-4])
