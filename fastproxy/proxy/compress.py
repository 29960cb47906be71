"""Response compression: a body filter (the contract: proxy/filters.py) per exchange.

The relay asks the listener's filter factory once per response head. The factory reads
the request (method, Accept-Encoding, a request `no-transform`) and returns a
`CompressFilter`, or None when nothing about the response can change. The filter's
`start` looks at the response and either steps aside (None: the bytes pass untouched) or
returns the head to send, after which every body chunk goes through `feed`, the origin's
pauses through `flush` and the end through `finish`.

What is never compressed (RFC 9110, RFC 9111): `Cache-Control: no-transform` (request or
response, 5.2.2.6 / 5.2.1.6), a body with a Content-Encoding already, 1xx, 204, 304, 206
or any Content-Range, a type outside the configured list, a Content-Length under the
minimum. A compressible response that the client takes as identity still gets
`Vary: Accept-Encoding` (a cache must not hand it to a client that would get br). A HEAD
gets the head the GET would have (RFC 9110 9.3.2) and no body.
"""
from __future__ import annotations

import asyncio
import types
import zlib

import brotli
import zstandard

from fastproxy.config.compression import CompressionConfig

try:
    # ISA-L's deflate for gzip levels 1-3: 3-4x zlib's speed at level 1 with a better
    # ratio (bench/micro_compress.py). Its best level compresses less than zlib's 4, so
    # levels 4-9 (ratio before speed) stay zlib's; zlib is also the fallback on a platform
    # without the isal wheel.
    from isal import isal_zlib
    _gzip_mod: types.ModuleType = isal_zlib
    GZIP_BACKEND = "isal"
except ImportError:  # pragma: no cover - isal ships wheels for the platforms we build
    _gzip_mod = zlib
    GZIP_BACKEND = "zlib"

# Input is compressed this many bytes at a time, so one call never holds the event loop
# for more than one slice of compression work (tens of microseconds at these levels).
SLICE = 64 * 1024
# Headers the filter replaces or drops in an encoded response: framing (the relay frames
# the new body), ranges (they would address the identity bytes) and digests of those bytes
# (RFC 3230's Digest, obsoleted by RFC 9530 but still sent, covers the content-coded instance).
_DROP = frozenset((b"content-length", b"transfer-encoding", b"accept-ranges", b"content-md5",
                   b"digest", b"content-digest", b"repr-digest", b"etag", b"vary"))
_NO_BODY_STATUS = frozenset((204, 304))
_UNSET = object()


def parse_accept_encoding(value: bytes | None) -> dict[bytes, float] | None:
    """{coding: qvalue} of an Accept-Encoding field (RFC 9110 12.5.3), None when absent.

    Codings are lowercased, `x-gzip` counts as gzip (8.4.1.3); a member with a malformed
    weight is dropped (the rest of the field still counts).
    """
    if value is None:
        return None
    out: dict[bytes, float] = {}
    for member in value.split(b","):
        coding, _, params = member.partition(b";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        for param in params.split(b";"):
            name, eq, v = param.partition(b"=")
            if eq and name.strip().lower() == b"q":
                try:
                    q = float(v.strip())
                except ValueError:
                    q = -1.0
                if not 0.0 <= q <= 1.0 or len(v.strip()) > 5:
                    q = -1.0
        if q < 0.0:
            continue
        if coding == b"x-gzip":
            coding = b"gzip"
        # A coding listed twice: the first one counts (as the other servers do).
        out.setdefault(coding, q)
    return out


def negotiate(accept: dict[bytes, float] | None, offered: tuple[bytes, ...]) -> bytes | None:
    """The coding to answer with, from offered (server preference), or None for identity.

    No Accept-Encoding: identity (RFC 9110 12.5.3 allows any coding, but clients that say
    nothing are old or scripts, and every other proxy sends them identity). Otherwise the
    coding with the highest q above 0 (`*` stands for codings not listed), ties to the
    server's order; identity wins when the client rates it above every coding we have.
    """
    if not accept:
        return None
    star = accept.get(b"*")
    best = None
    best_q = 0.0
    for coding in offered:
        q = accept.get(coding, star)
        if q is not None and q > best_q:
            best, best_q = coding, q
    if best is None:
        return None
    identity_q = accept.get(b"identity")
    if identity_q is not None and identity_q > best_q:
        return None
    return best


def _header(headers, name: bytes) -> bytes | None:
    """A request list field from whatever the relay hands over (its Request, a dict or
    pairs), its lines joined with ", " (RFC 9110 5.3: a later "Accept-Encoding: br;q=0"
    or "Cache-Control: no-transform" line counts as much as the first); None when absent."""
    get_all = getattr(headers, "get_all", None)
    if get_all is not None:
        values = get_all(name)
    elif hasattr(headers, "get"):
        return headers.get(name)
    else:
        values = [v for k, v in headers if k.lower() == name]
    if not values:
        return None
    return values[0] if len(values) == 1 else b", ".join(values)


def _has_no_transform(value: bytes | None) -> bool:
    return value is not None and b"no-transform" in value.lower()


def _media_type(value: bytes) -> bytes:
    return value.partition(b";")[0].strip().lower()


class _TypeMatcher:
    """Content-Type against the configured list: exact types, `text/*`, `application/*+json`."""

    def __init__(self, types: tuple[str, ...]) -> None:
        self.exact = frozenset(t.encode() for t in types if "*" not in t)
        self.majors = tuple(t[:-1].encode() for t in types if t.endswith("/*"))
        self.suffixes = tuple((t.split("/")[0] + "/").encode() + b"|" + t.split("*")[1].encode()
                              for t in types if "/*+" in t)

    def __call__(self, media: bytes) -> bool:
        if media in self.exact or media.startswith(self.majors):
            return True
        for rule in self.suffixes:
            major, _, suffix = rule.partition(b"|")
            if media.startswith(major) and media.endswith(suffix):
                return True
        return False


class _Encoder:
    """One streaming compressor behind one interface: data in, bytes out."""

    __slots__ = ("name", "compress", "_flush", "_finish")

    def __init__(self, name: bytes, level: int) -> None:
        self.name = name
        if name == b"br":
            # A 512 KiB window (lgwin 19, nginx's brotli default) keeps each stream's
            # memory small; web text gains little from the 4 MiB default.
            c = brotli.Compressor(mode=brotli.MODE_TEXT, quality=level, lgwin=19)
            self.compress = c.process
            self._flush = c.flush
            self._finish = c.finish
        elif name == b"zstd":
            c = zstandard.ZstdCompressor(level=level).compressobj()
            self.compress = c.compress
            self._flush = lambda: c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            self._finish = c.flush
        else:
            mod = _gzip_mod if level <= 3 else zlib
            c = mod.compressobj(level, mod.DEFLATED, 31)
            self.compress = c.compress
            self._flush = lambda: c.flush(mod.Z_SYNC_FLUSH)
            self._finish = c.flush

    def flush(self) -> bytes:
        """What is pending, as a complete block the client can decode now."""
        return self._flush()

    def finish(self) -> bytes:
        """The end of the stream."""
        return self._finish()


class CompressFilter:
    """The filter of one exchange (the contract's start/feed/flush/finish)."""

    __slots__ = ("settings", "coding", "head", "encoder", "pending", "body_unchanged",
                 "if_none_match")

    def __init__(self, settings: "Compression", coding: bytes | None, head: bool,
                 if_none_match: bytes | None = None) -> None:
        self.settings = settings
        self.coding = coding        # None: identity for this client
        self.head = head
        self.if_none_match = if_none_match
        self.encoder: _Encoder | None = None
        self.pending = False        # bytes went in since the last flush
        # start() changed only fields (identity: Vary added): the relay keeps the body
        # and its framing (Content-Length stays), and feeds nothing to the filter.
        self.body_unchanged = False

    def start(self, status: int, headers: list) -> list | None:
        """The head to send instead of headers, or None to let the response pass untouched."""
        s = self.settings
        if status == 304:
            return self._not_modified(headers)
        seen = s.inspect(status, headers)
        if seen is None:
            return None
        if self.coding is None and seen[1] is None:
            return None     # identity, and Vary names Accept-Encoding already
        out = _rewrite(headers, self.coding, *seen)
        if self.coding is None:
            self.body_unchanged = True
        elif not self.head:
            self.encoder = _Encoder(self.coding, s.level(self.coding))
        return out

    def _not_modified(self, headers: list) -> list | None:
        """A 304's fields: the ETag and Vary of the 200 it stands for (RFC 9110 15.4.5),
        so weak when that 200 goes encoded; None when nothing changes."""
        fields = headers
        if _header(headers, b"content-type") is None:
            # 304s seldom say their type. The client's If-None-Match holding the weak form
            # of this strong tag says its copy came encoded by us.
            etag = _header(headers, b"etag")
            if self.coding is None or etag is None or etag.startswith(b"W/") or \
                    b"W/" + etag not in _tags(self.if_none_match):
                return None
            fields = [*headers, (b"Content-Type", b"text/plain")]   # the rules but type
        seen = self.settings.inspect(200, fields)
        if seen is None:
            return None
        etag, vary_line, _ = seen
        weaken = self.coding is not None and etag is not None and not etag.startswith(b"W/")
        if vary_line is None and not weaken:
            return None
        out = [(k, v) for k, v in headers
               if not (vary_line is not None and k.lower() == b"vary")
               and not (weaken and k.lower() == b"etag")]
        if vary_line is not None:
            out.append((b"Vary", vary_line))
        if weaken:
            out.append((b"ETag", weak(etag)))
        self.body_unchanged = True      # no body: the relay keeps the 304's framing
        return out

    def feed(self, data: bytes) -> bytes:
        """One body chunk in, encoded bytes out (maybe none yet)."""
        enc = self.encoder
        if enc is None:
            return b"" if self.head else bytes(data)
        if not data:
            return b""
        self.pending = True
        if len(data) <= SLICE:
            return enc.compress(data)
        view = memoryview(data)
        return b"".join(enc.compress(view[i:i + SLICE]) for i in range(0, len(view), SLICE))

    def flush(self) -> bytes:
        """The origin paused: everything fed so far, decodable by the client now."""
        enc = self.encoder
        if enc is None or not self.pending:
            return b""
        self.pending = False
        return enc.flush()

    def finish(self) -> bytes:
        """End of the body: the encoder's tail."""
        enc = self.encoder
        if enc is None:
            return b""
        self.encoder = None
        return enc.finish()


def _vary(values: list[bytes]) -> bytes | None:
    """The Vary value with Accept-Encoding added, or None when it is there (or `*`)."""
    members = [m.strip() for v in values for m in v.split(b",") if m.strip()]
    lower = [m.lower() for m in members]
    if b"*" in lower or b"accept-encoding" in lower:
        return None
    return b", ".join(members + [b"Accept-Encoding"])


def _rewrite(headers: list, coding: bytes | None, etag: bytes | None,
             vary_line: bytes | None, vary: list) -> list:
    """headers as sent encoded with coding (None: identity, only Vary changes)."""
    if coding is None:
        # Identity for this client, but a cache must learn the answer depends on it.
        out = [(k, v) for k, v in headers if k.lower() not in (b"vary", b"content-length",
                                                                b"transfer-encoding")]
        out.append((b"Vary", vary_line))
        return out
    out = [(k, v) for k, v in headers if k.lower() not in _DROP
           and k.lower() != b"content-encoding"]
    out.append((b"Content-Encoding", coding))
    if vary_line is not None:
        out.append((b"Vary", vary_line))
    elif vary:
        out.append((b"Vary", b", ".join(vary)))
    if etag is not None:
        # RFC 9110 8.8.3: the encoded bytes differ, so a strong validator of the
        # identity bytes cannot stand for them; a weak one still revalidates.
        out.append((b"ETag", weak(etag)))
    return out


def _tags(value: bytes | None) -> list[bytes]:
    """The entity tags of an If-None-Match value."""
    return [t.strip() for t in value.split(b",")] if value else []


def weak(etag: bytes) -> bytes:
    """The weak form of an entity tag (RFC 9110 8.8.3)."""
    return etag if etag.startswith(b"W/") else b"W/" + etag


class Compression:
    """A listener's compression settings, compiled; calling it is the filter factory."""

    def __init__(self, cfg: CompressionConfig) -> None:
        self.cfg = cfg
        self.offered = tuple(e.encode() for e in cfg.encodings)
        self.types = _TypeMatcher(cfg.types)
        self.min_size = cfg.min_size
        self._levels = {e.encode(): cfg.level(e) for e in cfg.encodings}
        self._memo: dict = {}    # Accept-Encoding value -> negotiated coding
        self.encodes = 0         # whole stored bodies encoded for the cache

    def level(self, coding: bytes) -> int:
        """The configured level of coding."""
        return self._levels[coding]

    def inspect(self, status: int, headers: list) -> tuple | None:
        """(etag, Vary value to send or None when it names Accept-Encoding, Vary values)
        when a response with this head is one the listener encodes; None when it is not."""
        if status < 200 or status in _NO_BODY_STATUS or status == 206:
            return None
        ctype = None
        length = None
        etag = None
        vary = []
        for name, value in headers:
            n = name.lower()
            if n == b"content-type":
                ctype = value
            elif n == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return None
            elif n == b"content-encoding":
                if value.strip().lower() not in (b"", b"identity"):
                    return None   # encoded already; never twice
            elif n == b"content-range":
                return None
            elif n == b"cache-control":
                if _has_no_transform(value):
                    return None
            elif n == b"etag":
                etag = value
            elif n == b"vary":
                vary.append(value)
        if ctype is None or not self.types(_media_type(ctype)):
            return None
        if length is not None and length < self.min_size:
            return None
        return etag, _vary(vary), vary

    # -- the cache's side (cache/layer.py): encoded copies of stored responses -----------

    def coding_for(self, req) -> bytes | None:
        """The coding req negotiates (None: identity), as the filter would choose it."""
        if _has_no_transform(_header(req, b"cache-control")):
            return None
        value = _header(req, b"accept-encoding")
        if value is None:
            return None
        memo = self._memo
        coding = memo.get(value, _UNSET)
        if coding is _UNSET:
            if len(memo) >= 512:   # the field is the client's to choose: bounded
                memo.clear()
            coding = memo[value] = negotiate(parse_accept_encoding(value), self.offered)
        return coding

    def head_for(self, status: int, fields: list, coding: bytes | None) -> list | None:
        """The fields of a stored response served with coding (identity: Vary added),
        or None when the listener does not encode such a response."""
        seen = self.inspect(status, fields)
        if seen is None:
            return None
        if coding is None and seen[1] is None:
            return list(fields)
        return _rewrite(fields, coding, *seen)

    def encode(self, coding: bytes, body) -> bytes:
        """A whole stored body encoded with coding (one call per variant, not per hit)."""
        enc = _Encoder(coding, self.level(coding))
        self.encodes += 1
        view = memoryview(body)
        out = [enc.compress(view[i:i + SLICE]) for i in range(0, len(view), SLICE)]
        out.append(enc.finish())
        return b"".join(out)

    async def encode_async(self, coding: bytes, body) -> bytes:
        """encode() for a large body, one slice per loop turn (the loop is never held)."""
        enc = _Encoder(coding, self.level(coding))
        self.encodes += 1
        view = memoryview(body)
        out = []
        for i in range(0, len(view), SLICE):
            out.append(enc.compress(view[i:i + SLICE]))
            await asyncio.sleep(0)
        out.append(enc.finish())
        return b"".join(out)

    def __call__(self, method: bytes, headers, version=None) -> CompressFilter | None:
        """The filter for one exchange, or None when the response cannot change."""
        if method == b"CONNECT":
            return None
        if _has_no_transform(_header(headers, b"cache-control")):
            return None
        coding = negotiate(parse_accept_encoding(_header(headers, b"accept-encoding")),
                           self.offered)
        return CompressFilter(self, coding, method == b"HEAD",
                              _header(headers, b"if-none-match") if coding else None)


def compression_factory(config, listener) -> Compression | None:
    """The filter factory of one listener (ListenerSettings.filter_factory), None when off."""
    cfg = getattr(config, "compression", None)
    if cfg is None or listener.mode != "reverse" or not getattr(listener, "compression", True):
        return None
    return Compression(cfg)
