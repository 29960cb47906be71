"""HTTP/2 message rules (RFC 9113 8.1-8.3) and HTTP/1.1 <-> HTTP/2 mappings, from ext/h2msg.pyx.

The rules fastproxy._h2 applies to every decoded header list (a violation is a stream
error, never forwarded), stricter than h2 where a lax reading could smuggle into an
HTTP/1.1 hop: names are lowercase tokens; values are field-vchar/SP/HTAB with no edge
whitespace (so no CR, LF, NUL or other controls); no connection-specific fields, `te`
only `trailers`; pseudo-headers known, once each, first; requests have :method,
:scheme, :path (starting with "/" for http(s), "*" only for OPTIONS; printable ASCII,
no "#") and an :authority or host (equal when both, no userinfo); CONNECT has only
:method and :authority (extended CONNECT is not enabled); responses have one
3-digit :status, not 101; content-length is digits and repeats agree.

ERROR_KINDS names every counter of fastproxy._h2 (index = kind number).
"""
from collections.abc import Iterable
from typing import Final, Literal, TypeAlias

Header: TypeAlias = tuple[bytes, bytes]

ERROR_KINDS: Final[tuple[str, ...]]

def validate(headers: list[Header], kind: Literal["request", "response", "trailers"] = "request") -> str | None:
    """Check a list as a request, response or trailers; the error kind name or None."""

def request_head(headers: list[Header], body: bool, absolute: bool = False) -> bytes:
    """HTTP/1.1 request head from a validated HTTP/2 request (Host from :authority,
    cookie crumbs joined, `transfer-encoding: chunked` when body and no content-length)."""

def response_headers(status: int, fields: Iterable[Header]) -> list[Header]:
    """HTTP/2 header list from an HTTP/1.1 response: lowercased, connection-specific and
    Connection-named fields dropped."""

def request_headers(method: bytes, scheme: bytes | None, authority: bytes | None, path: bytes | None,
                    fields: Iterable[Header]) -> list[Header]:
    """HTTP/2 request header list from an HTTP/1.1 request (Host becomes :authority; te
    kept only as `trailers`)."""

def response_head(headers: list[Header], body: bool) -> bytes:
    """HTTP/1.1 response head from a validated HTTP/2 response."""

def request_block(enc: object, req: object, scheme: bytes, authority: bytes) -> tuple[bytes, list[Header]]:
    """(the block the upstream link sends for a parsed Request, the header list it
    stands for): for tests."""
