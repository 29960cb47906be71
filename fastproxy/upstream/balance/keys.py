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
both forms of one request hash alike. Keys are hashed with xxh3 (64 bits). The extraction
is compiled (fastproxy._hashing.RequestKey): this module validates and documents.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastproxy._hashing import (
    KEY_CLIENT_IP, KEY_COOKIE, KEY_HEADER, KEY_PATH, KEY_URI, RequestKey, cookie_value, origin_form,
)

KEY_KINDS = ("uri", "path", "client_ip", "header", "cookie")
# Keys that every request has, so they can stand in for a missing header or cookie.
FALLBACK_KINDS = ("client_ip", "path", "uri")
DEFAULT_KEY = "uri"
DEFAULT_FALLBACK = "client_ip"

# RFC 9110 section 5.6.2: tchar, the characters of a token (header names; cookie names are
# tokens too, RFC 6265 section 4.1.1).
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

KeyFn = Callable[[Any, str], int]
_KINDS = {"uri": KEY_URI, "path": KEY_PATH, "client_ip": KEY_CLIENT_IP, "header": KEY_HEADER,
          "cookie": KEY_COOKIE}
__all__ = ["KEY_KINDS", "FALLBACK_KINDS", "DEFAULT_KEY", "DEFAULT_FALLBACK", "KeyFn",
           "parse_key_spec", "make_key_fn", "origin_form", "cookie_value"]


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
    fallback_key = RequestKey(_KINDS[fallback_kind])
    if kind in ("header", "cookie"):
        # Header names are case-insensitive (RFC 9110 5.1), cookie names are not (RFC 6265 5.4).
        return RequestKey(_KINDS[kind], arg.encode("ascii"), fallback_key).key_of
    return RequestKey(_KINDS[kind]).key_of
