"""Hash keys: which part of a request decides its server under consistent hashing.

A pool names its key with a spec:

- `uri` (the default): path and query, so each resource stays on one server and that
  server's cache stays warm; the spread follows the number of distinct resources.
- `path`: the path without the query (`/search?q=a` and `/search?q=b` go together).
- `client_ip`: the client's address (session affinity without cookies; TCP mode's key).
- `header:NAME`: the value of a request header, e.g. `header:x-tenant`.
- `cookie:NAME`: the value of one cookie from the Cookie header, e.g. `cookie:session`.

A missing or empty header or cookie falls back to another key, `client_ip` unless configured
(`path` or `uri` also work), so requests without it are still spread and still sticky.
Targets in absolute-form are reduced to path and query first (RFC 9112 section 3.2.2), so
both forms of one request hash alike. Keys are hashed with xxh3 (64 bits).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xxhash import xxh3_64_intdigest

KEY_KINDS = ("uri", "path", "client_ip", "header", "cookie")
# Keys that every request has, so they can stand in for a missing header or cookie.
FALLBACK_KINDS = ("client_ip", "path", "uri")
DEFAULT_KEY = "uri"
DEFAULT_FALLBACK = "client_ip"

# RFC 9110 section 5.6.2: tchar, the characters of a token (header names; cookie names are
# tokens too, RFC 6265 section 4.1.1).
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

KeyFn = Callable[[Any, str], int]


def parse_key_spec(spec: str, option: str = "hash_key") -> tuple[str, str]:
    """Validate a key spec and return (kind, argument); ValueError names `option`."""
    if not isinstance(spec, str):
        raise ValueError(f"{option}: expected a string such as 'uri' or 'header:NAME', got {spec!r}")
    kind, colon, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in KEY_KINDS:
        raise ValueError(
            f"{option}: unknown key {spec!r}, expected uri, path, client_ip, header:NAME or cookie:NAME"
        )
    if kind in ("header", "cookie"):
        arg = arg.strip()
        if not arg or not set(arg.encode("utf-8", "replace")) <= _TCHAR:
            raise ValueError(f"{option}: {kind}:NAME needs a token name (RFC 9110 5.6.2), got {spec!r}")
    elif colon:
        raise ValueError(f"{option}: key {kind!r} takes no argument, got {spec!r}")
    return kind, arg


def origin_form(target: bytes) -> bytes:
    """Return the path and query of a request target in any form (RFC 9112 section 3.2)."""
    if target[:1] == b"/" or target == b"*":
        return target
    scheme_end = target.find(b"://")
    if scheme_end < 0:
        # authority-form (CONNECT) has no path: the authority itself is the resource.
        return target
    rest = target[scheme_end + 3:]
    for i, byte in enumerate(rest):
        if byte in b"/?":
            # RFC 9110 section 4.2.3: an empty path is equivalent to "/".
            return rest[i:] if byte == 0x2F else b"/" + rest[i:]
    return b"/"


def cookie_value(header: bytes, name: bytes) -> bytes | None:
    """Return the value of cookie `name` in a Cookie header value, or None (RFC 6265 5.4)."""
    needle = name + b"="
    start = 0
    while True:
        at = header.find(needle, start)
        if at < 0:
            return None
        # A match counts only at the start of a cookie-pair, so "session" does not match
        # inside "xsession=" (pairs are separated by "; ", RFC 6265 section 4.2.1).
        if at == 0 or header[at - 1] in b"; \t":
            end = header.find(b";", at)
            return header[at + len(needle):end if end >= 0 else len(header)].strip(b" \t")
        start = at + 1


def make_key_fn(spec: str = DEFAULT_KEY, fallback: str = DEFAULT_FALLBACK) -> KeyFn:
    """Return fn(request, client_ip) -> 64-bit hash of the request's key under `spec`.

    `request` is duck-typed: `.target` (bytes) and `.get(lowercase_name) -> bytes | None`.
    """
    kind, arg = parse_key_spec(spec)
    fallback_kind, _ = parse_key_spec(fallback, "hash_key_fallback")
    if fallback_kind not in FALLBACK_KINDS:
        raise ValueError(
            f"hash_key_fallback: expected client_ip, path or uri (keys every request has), got {fallback!r}"
        )
    hash64 = xxh3_64_intdigest

    if kind == "uri":
        def uri_key(request: Any, client_ip: str) -> int:
            target = request.target
            if target[:1] != b"/":
                target = origin_form(target)
            return hash64(target)
        return uri_key

    if kind == "path":
        def path_key(request: Any, client_ip: str) -> int:
            target = request.target
            if target[:1] != b"/":
                target = origin_form(target)
            return hash64(target.partition(b"?")[0])
        return path_key

    if kind == "client_ip":
        def client_ip_key(request: Any, client_ip: str) -> int:
            return hash64(client_ip.encode())
        return client_ip_key

    other = make_key_fn(fallback_kind)
    name = arg.lower().encode("ascii")

    if kind == "header":
        def header_key(request: Any, client_ip: str) -> int:
            value = request.get(name)
            if value:
                return hash64(value)
            return other(request, client_ip)
        return header_key

    cookie = arg.encode("ascii")  # cookie names are case-sensitive (RFC 6265 5.4)

    def cookie_key(request: Any, client_ip: str) -> int:
        header = request.get(b"cookie")
        if header:
            value = cookie_value(header, cookie)
            if value:
                return hash64(value)
        return other(request, client_ip)
    return cookie_key
