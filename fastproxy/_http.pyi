"""HTTP/1.1 heads and message framing for the proxy (RFC 9112), compiled from ext/http.pyx.

Decisions a reader of the proxy needs to know:

* Line endings in a head: CRLF, or a bare LF (RFC 9112 2.2 lets a recipient accept
  it).  This is safe because nothing is relayed from `head` verbatim: `forward_head`
  rebuilds every line with CRLF.  A bare CR anywhere is an error (400).  Chunked
  framing and trailers are strict: CRLF only, a bare LF or CR there is an error.
* Empty lines before a request line are skipped (RFC 9112 2.2); `head` starts at the
  request line, `head_length` counts the skipped bytes too (it is what was consumed).
* Rejected as ambiguous (RFC 9112 6.3): Transfer-Encoding together with
  Content-Length, in requests AND responses (`te_and_cl`); several Content-Length
  values that differ; a Content-Length that is not plain digits (so "42, 42" is
  refused too); Transfer-Encoding in HTTP/1.0; chunked not final or applied twice.
  Identical repeated Content-Length fields are accepted and forwarded once.
* Transfer codings: only `chunked` is implemented; any other coding is 501 for a
  request (a request whose final coding is not chunked is 400, RFC 9112 6.3).  A
  response with any coding other than chunked is refused, because the proxy removes
  Transfer-Encoding (hop-by-hop) and could not pass the coding on.
* Whitespace between a field name and its colon: 400 in a request; removed from a
  response (RFC 9112 5.1 asks a proxy to do exactly that; forward_head emits "Name: value").
  Obs-fold is refused in both (RFC 9112 5.2 allows a proxy to answer 502).
* Every ParseError from ResponseParser has status 502 (the proxy's answer to a bad
  upstream); `.code` still names the rule.
* A Connection token never makes `forward_head` drop Host or Content-Length: a
  client must not be able to strip the framing the next hop relies on.
* The request-target must be VCHARs without '#' (no fragment, no raw non-ASCII);
  CONNECT needs authority-form with a port; '*' only with OPTIONS.
* `body` is BODY_NONE when no body bytes follow (including Content-Length: 0, HEAD,
  1xx/204/304, 2xx to CONNECT); `content_length` still reports the field (-1 if absent).

Compiled callers (the relay) can `from fastproxy._http cimport RequestParser, Request, ...`
(declarations in ext/fastproxy/_http.pxd) and use feed_c / forward_c and the readonly
fields as C, without a Python call per access.

Error codes (`ParseError.code`; request status shown, every ResponseParser error is 502):
  start line   bad_method, bad_target, fragment_in_target, bad_request_line, bad_version,
               unsupported_version (505), request_line_too_long (414), bad_connect_target,
               bad_authority, bad_port, userinfo_in_target; responses: bad_status_line,
               bad_status, bad_reason, unsupported_version
  field lines  ws_after_start_line, obs_fold, ws_before_colon, missing_colon, bad_field_name,
               bad_field_value, nul_in_field, bare_cr, too_many_fields (431), head_too_large (431)
  host         missing_host, duplicate_host, bad_host
  framing      te_and_cl, te_in_http10, bad_content_length, conflicting_content_length,
               content_length_too_large (413), bad_transfer_encoding, chunked_not_final,
               chunked_twice, unsupported_transfer_coding (501), bad_connection,
               framing_field_lookalike (Content_Length / Transfer_Encoding: a gateway that
               maps '_' to '-' would frame the message differently)
  chunked body bad_chunk_size, chunk_size_overflow, bad_chunk_ext, chunk_ext_too_long, bare_lf,
               bare_cr, missing_crlf, obs_fold, bad_trailer, trailers_too_large (431)
  split_*      bad_target, bad_authority, bad_port, missing_port, userinfo_in_target,
               fragment_in_target
"""
from typing import Final

BODY_NONE: Final = 0
BODY_LENGTH: Final = 1
BODY_CHUNKED: Final = 2
BODY_CLOSE: Final = 3

TARGET_ORIGIN: Final = 0
TARGET_ABSOLUTE: Final = 1
TARGET_AUTHORITY: Final = 2
TARGET_ASTERISK: Final = 3

LAST_CHUNK: Final[bytes]

_Buffer = bytes | bytearray | memoryview

class ParseError(ValueError):
    """A message that must be refused."""

    status: int  # the HTTP status to answer with (400, 413, 414, 431, 501, 505; 502 for responses)
    code: str  # stable identifier for logs, e.g. "te_and_cl"
    def __init__(self, status: int, code: str, detail: str = "") -> None: ...

class BadSyntax(ParseError):
    """Malformed start line, field line or target (RFC 9112 2-5)."""

class BadFraming(ParseError):
    """Ambiguous or invalid framing (RFC 9112 6-7): the smuggling guards."""

class TooLarge(ParseError):
    """A configured limit was exceeded (413, 414, 431)."""

class Unsupported(ParseError):
    """Valid HTTP that is not implemented: HTTP version (505), transfer coding (501)."""

class _Message:
    head: bytes  # raw head from the start line through the blank line
    head_length: int  # bytes consumed from `start` (includes skipped empty lines)
    version: int  # 10 or 11 (a higher 1.x minor counts as 11, RFC 9110 6.2)
    content_length: int  # -1 if absent
    body: int  # BODY_*
    chunked: bool
    keep_alive: bool  # version default, Connection: close / keep-alive, and BODY_CLOSE
    @property
    def host(self) -> bytes | None: ...
    @property
    def upgrade(self) -> bytes | None:
        """Upgrade value(s), only when Connection lists "upgrade"."""
    @property
    def cache_control(self) -> bytes | None: ...
    @property
    def connection(self) -> tuple[bytes, ...]: ...
    def headers(self) -> list[tuple[bytes, bytes]]:
        """Fields in order, original name case, values OWS-trimmed."""
    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        """First value of field `name` (case-insensitive)."""
    def get_all(self, name: bytes) -> list[bytes]:
        """Every value of field `name` (case-insensitive), in order."""

class Request(_Message):
    method: bytes  # common methods are shared objects
    target_form: int  # TARGET_*
    expect_continue: bool  # Expect: 100-continue on HTTP/1.1 (ignored in 1.0, RFC 9110 10.1.1)
    @property
    def target(self) -> bytes: ...
    def forward_head(
        self,
        start_line: bytes | None = None,
        extra: bytes = b"",
        drop: tuple[bytes, ...] = (),
        keep_upgrade: bool = False,
    ) -> bytes:
        """Start line (default: as received) + CRLF, the fields as "Name: value" CRLF
        minus hop-by-hop ones (Connection, Keep-Alive, Proxy-Connection, TE, Trailer,
        Transfer-Encoding, Upgrade unless keep_upgrade, fields named by Connection),
        minus `drop` (lowercase names) and repeated Content-Length, then `extra`
        (complete lines), then CRLF."""

class Response(_Message):
    status: int
    @property
    def reason(self) -> bytes: ...
    def forward_head(
        self,
        status_line: bytes | None = None,
        extra: bytes = b"",
        drop: tuple[bytes, ...] = (),
        keep_upgrade: bool = False,
    ) -> bytes:
        """As Request.forward_head, with the status line."""

class RequestParser:
    max_line: int
    max_head: int
    max_fields: int
    def __init__(self, *, max_line: int = 8192, max_head: int = 65536, max_fields: int = 100) -> None: ...
    def feed(self, data: _Buffer, start: int = 0) -> Request | None:
        """Parse the head at data[start:]; None if incomplete (call again with the same
        start and more data).  Raises ParseError (414 for a long request line even
        before the head is complete, 431 past max_head or max_fields).  Resets on
        success and on error."""
    def reset(self) -> None: ...

class ResponseParser:
    max_head: int
    max_fields: int
    def __init__(self, *, max_head: int = 65536, max_fields: int = 100) -> None: ...
    def feed(
        self, data: _Buffer, start: int = 0, head_request: bool = False, connect_request: bool = False
    ) -> Response | None:
        """As RequestParser.feed; the flags apply the no-body rules of RFC 9112 6.3."""
    def reset(self) -> None: ...

class ChunkedDecoder:
    max_trailer: int
    max_ext: int
    def __init__(self, *, max_trailer: int = 16384, max_ext: int = 4096) -> None: ...
    def feed(self, data: _Buffer, start: int = 0, out: list[memoryview] | None = None) -> int:
        """Consume the chunked-body bytes of data[start:]; return how many belong to this
        body (the rest is the next message).  With `out`, append each chunk's data as a
        zero-copy memoryview slice of `data`."""
    @property
    def done(self) -> bool: ...
    @property
    def trailers(self) -> bytes:
        """Raw trailer lines with their CRLF; b"" if none."""
    content: int
    """Chunk-data bytes consumed so far: the body's size, without its framing."""
    passed: int
    """Of the bytes the last feed consumed, how many precede the trailer fields (a proxy
    passes those on unchanged and holds the rest)."""
    def kept_trailers(self) -> bytes:
        """The trailer section to send instead of the one received: the lines whose field
        may be a trailer (not in FORBIDDEN_TRAILERS, RFC 9110 6.5.1), then CRLF."""
    def reset(self) -> None: ...

FORBIDDEN_TRAILERS: frozenset[bytes]
"""Lowercase names of fields that are never passed on as trailers (RFC 9110 6.5.1)."""

def chunk_header(n: int) -> bytes:
    """b"%x\\r\\n" for a chunk of n > 0 bytes."""

def split_absolute(target: _Buffer) -> tuple[bytes, bytes, int, bytes]:
    """(scheme, host, port, path) of an absolute-form target; scheme and host
    lowercased, IPv6 host without brackets, port defaulted for http/ws (80) and
    https/wss (443) else -1, path "/" when empty.  ParseError(400) if malformed or
    carrying userinfo or a fragment."""

def split_authority(target: _Buffer, default_port: int = -1) -> tuple[bytes, int]:
    """(host, port) of an authority-form target; host lowercased, IPv6 without brackets.
    ParseError(400) if malformed or (with default_port < 0) the port is missing."""
