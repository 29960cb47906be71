"""httptools (llhttp) as the reference parser for valid messages, and our parser
driven the same way, both reduced to plain comparable values."""
from __future__ import annotations

import httptools

from fastproxy import _http as h


class _Collect:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.in_head = True
        self.body = b""
        self.complete = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # RFC 9110 5.5: OWS around a value is not part of it; llhttp keeps the
        # trailing part, so strip it here before comparing.
        (self.headers if self.in_head else self.trailers).append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self.in_head = False

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1


def oracle_request(raw: bytes) -> dict:
    """What httptools sees in one complete request message."""
    c = _Collect()
    p = httptools.HttpRequestParser(c)
    try:
        p.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass  # CONNECT / Upgrade: the head is complete, the rest is another protocol
    assert c.complete == 1, "oracle did not see one complete message"
    return {"method": p.get_method(), "target": c.url, "version": p.get_http_version(),
            "headers": c.headers, "body": c.body, "trailers": c.trailers}


def oracle_response(raw: bytes) -> dict:
    c = _Collect()
    p = httptools.HttpResponseParser(c)
    try:
        p.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass
    assert c.complete == 1, "oracle did not see one complete message"
    return {"status": p.get_status_code(), "version": p.get_http_version(),
            "headers": c.headers, "body": c.body, "trailers": c.trailers}


def _trailer_pairs(raw: bytes) -> list[tuple[bytes, bytes]]:
    pairs = []
    for line in raw.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            pairs.append((name, value.strip(b" \t")))
    return pairs


def _body(m, raw: bytes) -> tuple[bytes, list, int]:
    """(body, trailers, bytes used) following the head, by our framing."""
    pos = m.head_length
    if m.body == h.BODY_LENGTH:
        return raw[pos:pos + m.content_length], [], pos + m.content_length
    if m.body == h.BODY_CHUNKED:
        d = h.ChunkedDecoder()
        out: list = []
        n = d.feed(raw, pos, out)
        assert d.done
        return b"".join(bytes(v) for v in out), _trailer_pairs(d.trailers), pos + n
    if m.body == h.BODY_CLOSE:
        return raw[pos:], [], len(raw)
    return b"", [], pos


def ours_request(raw: bytes) -> dict:
    r = h.RequestParser().feed(raw)
    assert r is not None
    body, trailers, used = _body(r, raw)
    assert used == len(raw)
    return {"method": r.method, "target": r.target,
            "version": f"{r.version // 10}.{r.version % 10}",
            "headers": r.headers(), "body": body, "trailers": trailers}


def ours_response(raw: bytes, **flags) -> dict:
    r = h.ResponseParser().feed(raw, **flags)
    assert r is not None
    body, trailers, used = _body(r, raw)
    assert used == len(raw)
    return {"status": r.status, "version": f"{r.version // 10}.{r.version % 10}",
            "headers": r.headers(), "body": body, "trailers": trailers}
