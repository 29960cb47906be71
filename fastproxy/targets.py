"""Request-target paths as access and routing decisions read them (a leaf: imports nothing
of fastproxy).

`/admin`, `/%61dmin`, `/./admin`, `/x/../admin` and `/%2e/admin` name one resource (RFC
3986 6.2.2: percent-encoded unreserved characters are the characters themselves, and dot
segments are removed when a reference is resolved), and origins serve them as one. A
rule or route that read the client's spelling would deny `/admin` and let the others
through, so every decision on a path reads `decision_path(path)`:

* percent-encoded unreserved characters (ALPHA, DIGIT, `-`, `.`, `_`, `~`) decoded, other
  escapes with uppercase hex digits (RFC 3986 6.2.2.1-2); `%2F` stays encoded, as it is
  not the path separator;
* dot segments removed (RFC 3986 5.2.4, 6.2.2.3);
* empty segments merged (`//admin` is `/admin`), as nginx and most application routers
  read them; not an equivalence RFC 3986 states, but the reading that makes a rule on
  `/admin` cover what those servers serve as `/admin`.

The request still goes upstream as the client wrote it: for an origin that follows RFC 3986
it names the same resource the decision saw. Case is kept (RFC 3986 6.2.2.1: the path is
case-sensitive); rules for case-insensitive origins say so themselves (`(?i)`).
"""
from __future__ import annotations

import re

__all__ = ["decision_path"]

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


def _unescape(m: re.Match) -> bytes:
    c = int(m.group(1), 16)
    return bytes((c,)) if c in _UNRESERVED else b"%" + m.group(1).upper()


def _segments(path: bytes) -> bytes:
    """remove_dot_segments (RFC 3986 5.2.4) with empty segments merged, for a path from '/'."""
    segs = path.split(b"/")[1:]
    last = len(segs) - 1
    out: list[bytes] = []
    for i, seg in enumerate(segs):
        if seg == b"..":
            if out:
                out.pop()
            if i == last:
                out.append(b"")     # "/a/b/.." is "/a/": the directory, not "/a"
        elif seg == b".":
            if i == last:
                out.append(b"")
        elif seg or i == last:
            out.append(seg)
    return b"/" + b"/".join(out)


# What can make a path differ from its decision path (one C-level scan).
_NEEDS = re.compile(rb"%|/\.|//").search

# Paths already read (bounded in count and key length): most traffic asks for a few paths,
# and one dict probe is cheaper than any scan (routing runs it on every request).
_seen: dict = {}
_SEEN_MAX = 4096
_SEEN_LEN = 256


def decision_path(path: bytes) -> bytes:
    """The path (no query) that rules and routes match: see the module doc."""
    found = _seen.get(path)
    if found is not None:
        return found
    result = path
    # Nearly every path has nothing to normalise; "*" and the like have no segments.
    if _NEEDS(path) is not None and path.startswith(b"/"):
        result = _segments(_ESCAPE.sub(_unescape, path) if b"%" in path else path)
    if len(path) <= _SEEN_LEN:
        if len(_seen) >= _SEEN_MAX:
            _seen.clear()
        _seen[path] = result
    return result
