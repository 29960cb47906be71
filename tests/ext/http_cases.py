"""Shared message tables for the parser tests: valid messages and refused ones.

Each refused case names the rule it checks (RFC section) and the (status, code)
the parser must raise; the split and fuzz tests reuse these tables.
"""
from __future__ import annotations

from typing import NamedTuple


def crlf(text: bytes) -> bytes:
    """Write messages readably with \\n; the wire uses CRLF."""
    return text.replace(b"\n", b"\r\n")


class Bad(NamedTuple):
    raw: bytes
    status: int
    code: str
    rule: str


# ---------------------------------------------------------------------------
# Valid requests (also the oracle corpus checked against httptools)

VALID_REQUESTS: list[bytes] = [
    crlf(b"GET / HTTP/1.1\nHost: example.com\n\n"),
    crlf(b"GET /index.html?q=a+b&x=%20 HTTP/1.1\nHost: www.example.com\n"
         b"User-Agent: Mozilla/5.0 (X11; Linux x86_64)\nAccept: */*\n"
         b"Accept-Encoding: gzip, deflate\nConnection: keep-alive\n\n"),
    crlf(b"POST /submit HTTP/1.1\nHost: a.example\nContent-Type: application/x-www-form-urlencoded\n"
         b"Content-Length: 11\n\nfield=value"),
    crlf(b"PUT /upload HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n"
         b"5\nhello\n6;name=val\n world\n0\n\n"),
    crlf(b"POST /t HTTP/1.1\nHost: a\nTransfer-Encoding: Chunked\n\n"
         b"A\n0123456789\n0\nX-Checksum: abc\nX-Other: 1\n\n"),
    crlf(b"GET http://example.com:8080/path?x=1 HTTP/1.1\nHost: example.com:8080\n"
         b"Proxy-Connection: keep-alive\n\n"),
    crlf(b"CONNECT example.com:443 HTTP/1.1\nHost: example.com:443\n\n"),
    crlf(b"OPTIONS * HTTP/1.1\nHost: example.com\n\n"),
    crlf(b"GET / HTTP/1.0\n\n"),
    crlf(b"GET / HTTP/1.0\nConnection: keep-alive\nUser-Agent: ab\n\n"),
    crlf(b"DELETE /item/7 HTTP/1.1\nHost: [2001:db8::1]:8080\nConnection: close\n\n"),
    crlf(b"GET /ws HTTP/1.1\nHost: a\nConnection: Upgrade\nUpgrade: websocket\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13\n\n"),
    crlf(b"POST /e HTTP/1.1\nHost: a\nExpect: 100-continue\nContent-Length: 3\n\nabc"),
    crlf(b"GET / HTTP/1.1\nHost: a\nCache-Control: no-cache\nCache-Control: max-age=0\n"
         b"X-Empty:\nX-Spaces:    padded value   \nX-Tab:\tv\t\n\n"),
    crlf(b"GET / HTTP/1.1\nHost: a\nX-Obs-Text: caf\xc3\xa9 \xff\nContent-Length: 0\n\n"),
    crlf(b"M-SEARCH * HTTP/1.1\nHost: 239.255.255.250:1900\n\n").replace(b"M-SEARCH *", b"M-SEARCH /"),
    crlf(b"GET /a/b/../c;p=1?q=%7B%7D HTTP/1.1\nHost: a\n\n"),
    crlf(b"GET / HTTP/1.1\nHost: a\nContent-Length: 000\n\n"),
    crlf(b"GET / HTTP/1.1\nHost: \n\n"),
    crlf(b"GET / HTTP/1.1\nhost: A.Example.COM.\nCONNECTION: X-Gone, close\nX-Gone: 1\n\n"),
]

# Accepted, but httptools reads them differently or refuses them; checked by
# the unit tests instead of the oracle.
VALID_NOT_ORACLE: list[bytes] = [
    b"GET / HTTP/1.1\nHost: a\n\n",                  # bare LF line ends (RFC 9112 2.2)
    b"GET / HTTP/1.1\r\nHost: a\n\r\n",
    b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",    # empty lines first (RFC 9112 2.2)
    b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",            # higher minor = 1.1 (RFC 9110 6.2)
    # Identical repeated lengths are one length (RFC 9110 8.6); llhttp refuses them.
    crlf(b"PATCH /p HTTP/1.1\nHost: a\nContent-Length: 2\nContent-Length: 2\n\nok"),
]

# ---------------------------------------------------------------------------
# Refused requests

_H = b"Host: a\r\n"
LONG = b"a" * 9000

BAD_REQUESTS: list[Bad] = [
    # Request line (RFC 9112 3)
    Bad(b" GET / HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_method", "9112 3"),
    Bad(b"GET  / HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_target", "9112 3"),
    Bad(b"GET / HTTP/1.1 \r\n" + _H + b"\r\n", 400, "bad_version", "9112 3"),
    Bad(b"GET\t/ HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_method", "9112 3"),
    Bad(b"GET /\tx HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_target", "9112 3"),
    Bad(b"G(T / HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_method", "9110 5.6.2"),
    Bad(b"GET / http/1.1\r\n" + _H + b"\r\n", 400, "bad_version", "9112 2.3"),
    Bad(b"GET / HTTP/1.1x\r\n" + _H + b"\r\n", 400, "bad_version", "9112 2.3"),
    Bad(b"GET / HTTP/11\r\n" + _H + b"\r\n", 400, "bad_version", "9112 2.3"),
    Bad(b"GET / HTTP/1.a\r\n" + _H + b"\r\n", 400, "bad_version", "9112 2.3"),
    Bad(b"GET / HTTP/2.0\r\n" + _H + b"\r\n", 505, "unsupported_version", "9110 15.6.6"),
    Bad(b"GET / HTTP/0.9\r\n" + _H + b"\r\n", 505, "unsupported_version", "9110 15.6.6"),
    Bad(b"GET /\r\n\r\n", 400, "bad_request_line", "9112 3 (no HTTP/0.9)"),
    Bad(b"GET\r\n\r\n", 400, "bad_method", "9112 3"),
    Bad(b"GET /a\x00b HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_target", "9112 3.2"),
    Bad(b"GET /a\x7f HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_target", "9112 3.2"),
    Bad(b"GET /caf\xc3\xa9 HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_target", "9112 3.2 / 3986"),
    Bad(b"GET /a#frag HTTP/1.1\r\n" + _H + b"\r\n", 400, "fragment_in_target", "9112 3.2"),
    Bad(b"GET # HTTP/1.1\r\n" + _H + b"\r\n", 400, "fragment_in_target", "9112 3.2 (found by fuzzing)"),
    Bad(b"GET /a\rb HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_target", "9112 2.2 bare CR"),
    Bad(b"GET / HTTP/1.1\r\r\n" + _H + b"\r\n", 400, "bad_version", "9112 2.2 bare CR"),
    Bad(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "bad_method", "9112 3 (TLS on plain port)"),
    Bad(b"GET /" + LONG + b" HTTP/1.1\r\n" + _H + b"\r\n", 414, "request_line_too_long", "9112 3 / 9110 15.5.15"),
    Bad(b"GET /" + LONG, 414, "request_line_too_long", "9110 15.5.15 (before the line ends)"),
    # Target forms (RFC 9112 3.2)
    Bad(b"CONNECT example.com HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_connect_target", "9110 9.3.6"),
    Bad(b"CONNECT /x HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_connect_target", "9112 3.2.3"),
    Bad(b"CONNECT http://a:443/ HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_connect_target", "9112 3.2.3"),
    Bad(b"GET * HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_target", "9112 3.2.4"),
    Bad(b"GET example.com:80 HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_target", "9112 3.2.3"),
    Bad(b"GET a HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_target", "9112 3.2"),
    Bad(b"GET http://user:pw@a/ HTTP/1.1\r\n" + _H + b"\r\n", 400, "userinfo_in_target", "9110 4.2.4"),
    Bad(b"GET http:/// HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_authority", "9110 4.2.1"),
    Bad(b"GET http://a:99999/ HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_authority", "3986 3.2.3"),
    Bad(b"GET http://a:0/ HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_port", "3986 3.2.3"),
    Bad(b"GET http://a b/ HTTP/1.1\r\n" + _H + b"\r\n", 400, "bad_version", "9112 3"),
    # Field lines (RFC 9112 5, RFC 9110 5)
    Bad(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "ws_before_colon", "9112 5.1"),
    Bad(b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400, "ws_before_colon", "9112 5.1"),
    Bad(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, "ws_after_start_line", "9112 2.2"),
    Bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400, "obs_fold", "9112 5.2"),
    Bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", 400, "obs_fold", "9112 5.2"),
    Bad(b"GET / HTTP/1.1\r\nHost: a\r\nX a\r\n\r\n", 400, "missing_colon", "9112 5"),
    Bad(b"GET / HTTP/1.1\r\nHost: a\r\n: a\r\n\r\n", 400, "bad_field_name", "9110 5.1"),
    Bad(b"GET / HTTP/1.1\r\nHost: a\r\nX(: a\r\n\r\n", 400, "bad_field_name", "9110 5.1"),
    Bad(b"GET / HTTP/1.1\r\nHost: a\r\nX\x00: a\r\n\r\n", 400, "bad_field_name", "9110 5.1"),
    Bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400, "nul_in_field", "9110 5.5"),
    Bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400, "bare_cr", "9112 2.2 / 9110 5.5"),
    Bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\r\n\r\n", 400, "bare_cr", "9112 2.2"),
    Bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n", 400, "bad_field_value", "9110 5.5"),
    Bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", 400, "bad_field_value", "9110 5.5"),
    Bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: \x1b[31m\r\n\r\n", 400, "bad_field_value", "9110 5.5"),
    Bad(b"GET / HTTP/1.1\r\nHost: a\r\n\rX\r\n\r\n", 400, "bare_cr", "9112 2.2"),
    Bad(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + _H + b"\r\n",
        431, "too_many_fields", "9110 15.5.20 / 6585 5"),
    Bad(b"GET / HTTP/1.1\r\n" + _H + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(70))
        + b"\r\n", 431, "head_too_large", "6585 5"),
    Bad(b"GET / HTTP/1.1\r\n" + _H + b"X: " + b"v" * 70000, 431, "head_too_large",
        "6585 5 (before the head ends)"),
    # Host (RFC 9112 3.2, RFC 9110 7.2)
    Bad(b"GET / HTTP/1.1\r\n\r\n", 400, "missing_host", "9112 3.2"),
    Bad(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, "duplicate_host", "9112 3.2"),
    Bad(b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", 400, "duplicate_host", "9112 3.2"),
    Bad(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "bad_host", "9112 3.2 / 9110 7.2"),
    Bad(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "bad_host", "9110 7.2"),
    Bad(b"GET / HTTP/1.1\r\nHost: a:b\r\n\r\n", 400, "bad_host", "9110 7.2"),
    Bad(b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400, "bad_host", "9110 7.2"),
    Bad(b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400, "bad_host", "9110 4.2.4"),
    Bad(b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", 400, "bad_host", "9110 7.2"),
    # Framing (RFC 9112 6)
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nContent-Length: 5\nTransfer-Encoding: chunked\n\n"),
        400, "te_and_cl", "9112 6.3 (3)"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nContent-Length: 5\n\n"),
        400, "te_and_cl", "9112 6.3 (3)"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nContent-Length: 1, 1\n\n"), 400, "bad_content_length", "9112 6.3 (5)"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nContent-Length: +1\n\n"), 400, "bad_content_length", "9110 8.6"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nContent-Length: -1\n\n"), 400, "bad_content_length", "9110 8.6"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nContent-Length: 1 2\n\n"), 400, "bad_content_length", "9110 8.6"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nContent-Length: 0x10\n\n"), 400, "bad_content_length", "9110 8.6"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nContent-Length: 1.0\n\n"), 400, "bad_content_length", "9110 8.6"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nContent-Length:\n\n"), 400, "bad_content_length", "9110 8.6"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nContent-Length: 1\nContent-Length: 2\n\n"),
        400, "conflicting_content_length", "9112 6.3 (5)"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nContent-Length: 99999999999999999999\n\n"),
        413, "content_length_too_large", "9110 8.6"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nTransfer-Encoding: gzip\n\n"), 400, "chunked_not_final", "9112 6.3 (4)"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked, gzip\n\n"),
        400, "chunked_not_final", "9112 6.3 (4)"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nTransfer-Encoding: identity\n\n"),
        400, "chunked_not_final", "9112 6.3 (4)"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked, chunked\n\n"),
        400, "chunked_twice", "9112 7"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nTransfer-Encoding: chunked\n\n"),
        400, "chunked_twice", "9112 7"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nTransfer-Encoding: gzip, chunked\n\n"),
        501, "unsupported_transfer_coding", "9112 6.1"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked;q=1\n\n"),
        400, "chunked_not_final", "9112 7 (chunked takes no parameters)"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nTransfer-Encoding:\n\n"), 400, "bad_transfer_encoding", "9112 6.1"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked x\n\n"), 400, "bad_transfer_encoding", "9112 6.1"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nTransfer-Encoding: \"chunked\"\n\n"), 400, "bad_transfer_encoding", "9112 6.1"),
    Bad(crlf(b"POST / HTTP/1.0\nTransfer-Encoding: chunked\n\n"), 400, "te_in_http10", "9112 6.1"),
    Bad(crlf(b"GET / HTTP/1.1\nHost: a\nConnection: close;\n\n"), 400, "bad_connection", "9110 7.6.1"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\nContent-Length: 5\nTransfer_Encoding: chunked\n\n"),
        400, "framing_field_lookalike", "9112 6.3 (smuggling via '_' to '-' mapping, RFC 3875 4.1.18)"),
    Bad(crlf(b"POST / HTTP/1.1\nHost: a\ncontent_length: 5\n\n"),
        400, "framing_field_lookalike", "9112 6.3 (smuggling via '_' to '-' mapping)"),
]

# ---------------------------------------------------------------------------
# Responses

VALID_RESPONSES: list[tuple[bytes, dict]] = [
    (crlf(b"HTTP/1.1 200 OK\nContent-Length: 5\nContent-Type: text/plain\n\nhello"), {}),
    (crlf(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n5\nhello\n0\n\n"), {}),
    (crlf(b"HTTP/1.1 404 Not Found\nContent-Length: 0\nConnection: close\n\n"), {}),
    (crlf(b"HTTP/1.0 200 OK\nConnection: keep-alive\nContent-Length: 2\n\nhi"), {}),
    (crlf(b"HTTP/1.1 204 No Content\nServer: x\n\n"), {}),
    (crlf(b"HTTP/1.1 304 Not Modified\nETag: \"x\"\n\n"), {}),
    (crlf(b"HTTP/1.1 200 OK\nContent-Length: 10\n\n"), {"head_request": True}),
    (crlf(b"HTTP/1.1 301 Moved Permanently\nLocation: http://a/\nContent-Length: 3\n"
          b"Cache-Control: public\nCache-Control: max-age=60\nSet-Cookie: a=1\nSet-Cookie: b=2\n\nabc"), {}),
    (crlf(b"HTTP/1.1 101 Switching Protocols\nConnection: upgrade\nUpgrade: websocket\n\n"), {}),
]

# Accepted responses that llhttp refuses.
VALID_RESPONSES_NOT_ORACLE: list[tuple[bytes, dict]] = [
    # RFC 9112 5.1: a proxy removes whitespace before a response field's colon.
    (crlf(b"HTTP/1.1 200 OK\nX-Odd : a\nContent-Length\t: 2\n\nok"), {}),
    (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", {}),
]

BAD_RESPONSES: list[Bad] = [
    Bad(crlf(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\nContent-Length: 5\n\n"), 502, "te_and_cl", "9112 6.3 (3)"),
    Bad(crlf(b"HTTP/1.1 20 OK\n\n"), 502, "bad_status", "9112 4"),
    Bad(crlf(b"HTTP/1.1 2000 OK\n\n"), 502, "bad_status_line", "9112 4"),
    Bad(crlf(b"HTTP/1.1 099 Low\n\n"), 502, "bad_status", "9110 15"),
    Bad(crlf(b"HTTP/1.1 600 High\n\n"), 502, "bad_status", "9110 15"),
    Bad(crlf(b"HTTP/2 200\n\n"), 502, "bad_status_line", "9112 2.3"),
    Bad(crlf(b"HTTP/2.0 200 OK\n\n"), 502, "unsupported_version", "9110 6.2"),
    Bad(crlf(b"HTTP/1.1 200 O\x00K\n\n"), 502, "bad_reason", "9112 4"),
    Bad(crlf(b"ICY 200 OK\n\n"), 502, "bad_status_line", "9112 4"),
    Bad(b"\x00\x01\x02\x03", 502, "bad_status_line", "9112 4 (before the line ends)"),
    Bad(crlf(b"HTTP/1.1 200 OK\nTransfer-Encoding: gzip\n\n"), 502, "chunked_not_final", "9112 6.3 (4)"),
    Bad(crlf(b"HTTP/1.1 200 OK\nTransfer-Encoding: gzip, chunked\n\n"), 502, "unsupported_transfer_coding", "9112 6.1"),
    Bad(crlf(b"HTTP/1.0 200 OK\nTransfer-Encoding: chunked\n\n"), 502, "te_in_http10", "9112 6.1"),
    Bad(crlf(b"HTTP/1.1 200 OK\nContent-Length: 1\nContent-Length: 2\n\n"), 502, "conflicting_content_length", "9112 6.3 (5)"),
    Bad(crlf(b"HTTP/1.1 200 OK\nContent-Length: abc\n\n"), 502, "bad_content_length", "9112 6.3 (5)"),
    Bad(crlf(b"HTTP/1.1 200 OK\nX: a\n b\n\n"), 502, "obs_fold", "9112 5.2"),
    Bad(b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", 502, "bare_cr", "9112 2.2"),
]

# ---------------------------------------------------------------------------
# Chunked bodies (RFC 9112 7.1): (body, data, trailers)

VALID_CHUNKED: list[tuple[bytes, bytes, bytes]] = [
    (b"0\r\n\r\n", b"", b""),
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello", b""),
    (b"005\r\nhello\r\n000\r\n\r\n", b"hello", b""),
    (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789", b""),
    (b"a\r\n0123456789\r\n1\r\n!\r\n0\r\n\r\n", b"0123456789!", b""),
    (b"5;ext\r\nhello\r\n0\r\n\r\n", b"hello", b""),
    (b"5 ; a = 1 ; b=\"q \\\" ;\"\r\nhello\r\n0;last\r\n\r\n", b"hello", b""),
    (b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-Other:  two \r\n\r\n", b"abc", b"X-Sum: 1\r\nX-Other:  two \r\n"),
    (b"1\r\n\r\r\n1\r\n\n\r\n0\r\n\r\n", b"\r\n", b""),
]

BAD_CHUNKED: list[Bad] = [
    Bad(b"-5\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk_size", "9112 7.1"),
    Bad(b"+5\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk_size", "9112 7.1"),
    Bad(b"0x5\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk_size", "9112 7.1"),
    Bad(b"g\r\n", 400, "bad_chunk_size", "9112 7.1"),
    Bad(b"\r\n", 400, "bad_chunk_size", "9112 7.1"),
    Bad(b" 5\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk_size", "9112 7.1"),
    Bad(b"5\nhello\r\n0\r\n\r\n", 400, "bare_lf", "9112 7.1 / 2.2"),
    Bad(b"5\rXhello\r\n0\r\n\r\n", 400, "bare_cr", "9112 2.2"),
    Bad(b"5\r\nhelloX\r\n0\r\n\r\n", 400, "missing_crlf", "9112 7.1"),
    Bad(b"5\r\nhello\n0\r\n\r\n", 400, "missing_crlf", "9112 7.1"),
    Bad(b"5\r\nhello\r0\r\n\r\n", 400, "missing_crlf", "9112 7.1"),
    Bad(b"1000000000000000\r\n", 400, "chunk_size_overflow", "9112 7.1"),
    Bad(b"ffffffffffffffffff\r\n", 400, "chunk_size_overflow", "9112 7.1"),
    Bad(b"5 \r\nhello\r\n0\r\n\r\n", 400, "bad_chunk_ext", "9112 7.1.1"),
    Bad(b"5;\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk_ext", "9112 7.1.1"),
    Bad(b"5;a=\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk_ext", "9112 7.1.1"),
    Bad(b"5;a b\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk_ext", "9112 7.1.1"),
    Bad(b"5;a=\"x\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk_ext", "9112 7.1.1"),
    Bad(b"5;a\x00\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk_ext", "9112 7.1.1"),
    Bad(b"5;a\nhello\r\n0\r\n\r\n", 400, "bare_lf", "9112 7.1.1"),
    Bad(b"1;" + b"a" * 5000 + b"\r\nx\r\n0\r\n\r\n", 400, "chunk_ext_too_long", "9112 7.1.1"),
    Bad(b"0\r\n\n", 400, "bare_lf", "9112 7.1.2"),
    Bad(b"0\r\nX: a\n\r\n", 400, "bare_lf", "9112 7.1.2"),
    Bad(b"0\r\nX\n\r\n", 400, "bare_lf", "9112 7.1.2"),
    Bad(b"0\r\n X: a\r\n\r\n", 400, "obs_fold", "9112 5.2"),
    Bad(b"0\r\nX : a\r\n\r\n", 400, "bad_trailer", "9112 5.1"),
    Bad(b"0\r\nX: a\x00\r\n\r\n", 400, "bad_trailer", "9110 5.5"),
    Bad(b"0\r\nX: a\rb\r\n\r\n", 400, "bare_cr", "9112 2.2"),
    Bad(b"0\r\n\rX", 400, "bare_cr", "9112 2.2"),
    Bad(b"0\r\n" + b"X: " + b"v" * 17000 + b"\r\n\r\n", 431, "trailers_too_large", "9112 7.1.2"),
]
