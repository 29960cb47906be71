"""A one-shot HTTP/1.1 exchange off the data path: background revalidation of cache entries.

stale-while-revalidate (RFC 5861 3) answers the client from the stale entry at once and
refreshes it "in the background": there is no client connection to relay to, so the
relay's connection objects do not fit. This sends one request head on a new connection
(the caller adds `Connection: close`), reads the whole response with the project's
parser, and gives back the head and the de-chunked body. It runs rarely (at most once
per stale entry at a time), so clarity wins over speed here.
"""
from __future__ import annotations

import asyncio

from fastproxy import _http

BODY_NONE = _http.BODY_NONE
BODY_LENGTH = _http.BODY_LENGTH
BODY_CHUNKED = _http.BODY_CHUNKED
READ_SIZE = 65536


class FetchError(Exception):
    """The exchange failed: connection, framing or limits."""


async def fetch(host: str, port: int, head: bytes, *, ssl=None, server_hostname=None,
                timeout: float = 30.0, max_head: int = 65536,
                max_body: int = 1 << 20) -> tuple[_http.Response, bytes | None]:
    """Send head, return (response head, body); body None when over max_body or close-delimited.

    Raises FetchError (or asyncio.TimeoutError after `timeout` seconds in all).
    """
    return await asyncio.wait_for(
        _exchange(host, port, head, ssl, server_hostname, max_head, max_body), timeout)


async def _exchange(host, port, head, ssl, server_hostname, max_head, max_body):
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl,
                                                       server_hostname=server_hostname)
    except OSError as exc:
        raise FetchError(f"connect to {host}:{port} failed: {exc.strerror or exc}") from None
    try:
        writer.write(head)
        return await _read_response(reader, max_head, max_body)
    except (OSError, _http.ParseError) as exc:
        raise FetchError(f"{host}:{port}: {exc}") from None
    finally:
        writer.close()


async def _read_response(reader, max_head: int, max_body: int):
    parser = _http.ResponseParser(max_head=max_head)
    buf = bytearray()
    pos = 0
    while True:
        resp = parser.feed(buf, pos) if pos < len(buf) else None
        if resp is None:
            data = await reader.read(READ_SIZE)
            if not data:
                raise FetchError("connection closed before a complete response head")
            buf += data
            continue
        pos += resp.head_length
        if resp.status >= 200:      # interim responses (RFC 9110 15.2) are skipped
            break
    rest = bytes(buf[pos:])
    kind = resp.body
    if kind == BODY_NONE:
        return resp, b""
    if kind == BODY_LENGTH:
        n = resp.content_length
        if n > max_body:
            return resp, None
        body = [rest[:n]]
        got = len(body[0])
        while got < n:
            data = await reader.read(min(READ_SIZE, n - got))
            if not data:
                raise FetchError(f"body cut after {got} of {n} bytes")
            body.append(data)
            got += len(data)
        return resp, b"".join(body)
    if kind == BODY_CHUNKED:
        dec = _http.ChunkedDecoder()
        parts: list[bytes] = []
        size = 0
        data = rest
        while True:
            out: list = []
            dec.feed(data, 0, out)
            for piece in out:
                size += len(piece)
                if size > max_body:
                    return resp, None
                parts.append(bytes(piece))
            if dec.done:
                return resp, b"".join(parts)
            data = await reader.read(READ_SIZE)
            if not data:
                raise FetchError("chunked body cut before its last chunk")
    # Close-delimited: a cut body cannot be told from a complete one (RFC 9112 8).
    return resp, None
