"""A Python model of the request-target bytes the proxy takes (RFC 9112 3.2, RFC 3986 2),
for the differential tests of the parser and of every proxy path."""
from __future__ import annotations

ALPHANUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
HEX = frozenset(b"0123456789ABCDEFabcdef")
# RFC 3986 2.3 unreserved, 2.2 gen-delims except '#' (RFC 9112 3.2: no fragment),
# 2.2 sub-delims, 2.1 '%'.
URI_BYTES = frozenset(ALPHANUM + b"-._~" + b":/?[]@" + b"!$&'()*+,;=" + b"%")
# After the first '?' only: what browsers send raw in a query (WHATWG URL).
QUERY_TOO = frozenset(b"\\^`{|}")


def allowed(target: bytes, pos: int) -> bool:
    """May target[pos] be where it is? In the path a '%' must start %HH (RFC 3986 2.1);
    in the query (after the first '?') it is a plain byte, as are QUERY_TOO."""
    b = target[pos]
    in_query = b"?" in target[:pos]
    if b == ord("%") and not in_query:
        return pos + 2 < len(target) and target[pos + 1] in HEX and target[pos + 2] in HEX
    return b in URI_BYTES or (in_query and b in QUERY_TOO)
