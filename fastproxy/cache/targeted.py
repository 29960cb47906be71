"""Targeted cache-control fields (RFC 9213): CDN-Cache-Control and this cache's own.

A targeted field is a Structured Field Dictionary (RFC 8941 3.2) of cache directives,
meant for one class of cache. This cache reads the first field of its target list
(`cache.targeted_fields`, in order) that is present with a valid, non-empty value, and
then ignores Cache-Control and Expires for its own storing and freshness (RFC 9213 2.1);
the fields themselves go downstream untouched. A field that does not parse as a
dictionary is ignored as if absent, and so is a directive whose value has the wrong type
(RFC 9213 2.1: "MUST ignore" the field / the directive), so the next field or
Cache-Control decides.
"""
from __future__ import annotations

import re

from .directives import CacheControl, parse_cache_control

# RFC 8941 3.1.2 key, 3.3.4 token, 3.3.1/3.3.2 numbers, 3.3.3 string, 3.3.5 byte sequence.
_KEY = re.compile(rb"[a-z*][a-z0-9_\-.*]*")
_TOKEN = re.compile(rb"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_NUMBER = re.compile(rb"-?[0-9]{1,15}(?:\.[0-9]{1,3})?")
_STRING = re.compile(rb'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_BINARY = re.compile(rb":[A-Za-z0-9+/=]*:")
_OWS = re.compile(rb"[ \t]*")
_SP = re.compile(rb" *")


def _skip(pattern: re.Pattern, value: bytes, pos: int) -> int:
    """Past what pattern (which also matches nothing) matches at pos."""
    m = pattern.match(value, pos)
    return m.end() if m is not None else pos

# Directives whose value is delta-seconds: in a targeted field an sf-integer (RFC 9213 2.1).
_SECONDS = frozenset({b"max-age", b"s-maxage", b"stale-while-revalidate", b"stale-if-error"})

_DECIMAL = object()   # a value of a type no cache directive takes
_FALSE = object()


class _Invalid(Exception):
    pass


class _String(bytes):
    """An sf-string's content (told apart from integers and tokens)."""


def _bare_item(value: bytes, pos: int):
    """(item, end): bytes for integers, tokens and strings, True/_FALSE, _DECIMAL otherwise."""
    if pos >= len(value):
        raise _Invalid
    c = value[pos:pos + 1]
    if c == b'"':
        m = _STRING.match(value, pos)
        if m is None:
            raise _Invalid
        return _String(re.sub(rb'\\(["\\])', rb"\1", m.group(1))), m.end()
    if c == b"?":
        flag = value[pos + 1:pos + 2]
        if flag not in (b"0", b"1"):
            raise _Invalid
        return (True if flag == b"1" else _FALSE), pos + 2
    if c == b":":
        m = _BINARY.match(value, pos)
        if m is None:
            raise _Invalid
        return _DECIMAL, m.end()
    if c == b"-" or c.isdigit():
        m = _NUMBER.match(value, pos)
        if m is None or (b"." not in m.group() and len(m.group().lstrip(b"-")) > 15):
            raise _Invalid
        text = m.group()
        return (_DECIMAL if b"." in text else text), m.end()
    m = _TOKEN.match(value, pos)
    if m is None:
        raise _Invalid
    return m.group(), m.end()


def _parameters(value: bytes, pos: int) -> int:
    # Parameters are allowed on every member; no cache directive defines any, so they are
    # parsed (for validity) and dropped.
    while value[pos:pos + 1] == b";":
        pos = _skip(_SP, value, pos + 1)
        m = _KEY.match(value, pos)
        if m is None:
            raise _Invalid
        pos = m.end()
        if value[pos:pos + 1] == b"=":
            _, pos = _bare_item(value, pos + 1)
    return pos


def _inner_list(value: bytes, pos: int) -> int:
    pos += 1
    while True:
        pos = _skip(_SP, value, pos)
        if value[pos:pos + 1] == b")":
            return _parameters(value, pos + 1)
        _, pos = _bare_item(value, pos)
        pos = _parameters(value, pos)
        if value[pos:pos + 1] not in (b" ", b")"):
            raise _Invalid


def parse_dictionary(value: bytes) -> dict | None:
    """An RFC 8941 dictionary as {key: bytes | True | marker}, or None if it does not parse."""
    out: dict = {}
    pos = _skip(_SP, value, 0)
    end = len(value.rstrip(b" "))
    if pos >= end:
        return None
    try:
        while True:
            m = _KEY.match(value, pos)
            if m is None:
                raise _Invalid
            key = m.group()
            pos = m.end()
            if value[pos:pos + 1] == b"=":
                if value[pos + 1:pos + 2] == b"(":
                    item, pos = _DECIMAL, _inner_list(value, pos + 1)
                else:
                    item, pos = _bare_item(value, pos + 1)
            else:
                item = True
            pos = _parameters(value, pos)
            out[key] = item          # 3.2: a later duplicate overwrites
            pos = _skip(_OWS, value, pos)
            if pos >= end:
                return out
            if value[pos:pos + 1] != b",":
                raise _Invalid
            pos = _skip(_OWS, value, pos + 1)
            if pos >= end:
                raise _Invalid       # a trailing comma
    except _Invalid:
        return None


def parse_targeted(value: bytes) -> CacheControl | None:
    """The cache directives of a targeted field value, or None when it is to be ignored."""
    members = parse_dictionary(value)
    if not members:
        return None
    out = CacheControl()
    out.targeted = True
    for key, item in members.items():
        if item is _FALSE or item is _DECIMAL:
            continue
        if key in _SECONDS:
            # A directive with a value of the wrong type is ignored (RFC 9213 2.1).
            if type(item) is not bytes or not item.isdigit():
                continue
            out[key] = item
        else:
            out[key] = None if item is True else item
    return out


def response_cache_control(response, targeted: tuple[bytes, ...]) -> CacheControl:
    """The directives this cache obeys: the first usable targeted field, else Cache-Control."""
    for name in targeted:
        values = response.get_all(name)
        if values:
            cc = parse_targeted(b", ".join(values))
            if cc is not None:
                return cc
    return parse_cache_control(b",".join(response.get_all(b"cache-control")))
