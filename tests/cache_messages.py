"""Requests and responses for the cache policy tests, parsed by the project's parser.

The policy reads the parser's `Request` / `Response` interface (method, target, status,
reason, headers(), get(), get_all(), content_length); the tests write heads with bare
LFs for readability.
"""
from __future__ import annotations

from fastproxy._http import RequestParser, ResponseParser


def _lines(raw: bytes) -> bytes:
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not raw.endswith(b"\r\n\r\n"):
        raw = raw.rstrip(b"\r\n") + b"\r\n\r\n"
    return raw


def request(raw: bytes):
    """Parse a request head written with bare LFs for readability."""
    return RequestParser().feed(_lines(raw))


def response(raw: bytes, head_request: bool = False):
    """Parse a response head written with bare LFs for readability."""
    return ResponseParser().feed(_lines(raw), head_request=head_request)
