"""Property tests of the Cache-Control parser against a reference reading of the grammar.

The reference is a character-by-character reading of RFC 9111 5.2
(`Cache-Control = #cache-directive`, `cache-directive = token [ "=" ( token /
quoted-string ) ]`) with RFC 9110 5.6.1.2's recipient list rule (empty members allowed)
and 5.6.2 / 5.6.4 (token, quoted-string, quoted-pair). It shares no code with the parser.
Then the policy: whatever the field says, a response is never stored when the reference
finds `private` or `no-store` in it or cannot read it, and a request whose field it cannot
read is never answered from a stored response without validation.
"""
from __future__ import annotations

import os

from cache_messages import request, response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy._http import ParseError
from fastproxy.cache import HIT, CacheConfig, HttpCache
from fastproxy.cache.directives import RESTRICTIVE, parse_cache_control
from fastproxy.cache.policy import REVALIDATE

SETTINGS = settings(max_examples=int(os.environ.get("FASTPROXY_HYPOTHESIS_EXAMPLES", "300")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])

TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
SP, HTAB, DQUOTE, BACKSLASH, COMMA, EQUALS = 0x20, 0x09, 0x22, 0x5C, 0x2C, 0x3D


def _qdtext(c: int) -> bool:
    return c in (HTAB, SP, 0x21) or 0x23 <= c <= 0x5B or 0x5D <= c <= 0x7E or c >= 0x80


def _escapable(c: int) -> bool:
    return c in (HTAB, SP) or 0x21 <= c <= 0x7E or c >= 0x80


def reference(value: bytes) -> dict | None:
    """The directives of a clean field (first occurrence wins), or None if not clean."""
    out: dict = {}
    n = len(value)
    i = 0
    while True:
        while i < n and value[i] in (SP, HTAB):
            i += 1
        if i < n and value[i] != COMMA:
            start = i
            while i < n and value[i] in TCHAR:
                i += 1
            if i == start:
                return None
            name = value[start:i].lower()
            arg = None
            if i < n and value[i] == EQUALS:
                i += 1
                if i < n and value[i] == DQUOTE:
                    i += 1
                    buf = bytearray()
                    while True:
                        if i >= n:
                            return None
                        c = value[i]
                        if c == DQUOTE:
                            i += 1
                            break
                        if c == BACKSLASH:
                            if i + 1 >= n or not _escapable(value[i + 1]):
                                return None
                            buf.append(value[i + 1])
                            i += 2
                        elif _qdtext(c):
                            buf.append(c)
                            i += 1
                        else:
                            return None
                    arg = bytes(buf)
                else:
                    start = i
                    while i < n and value[i] in TCHAR:
                        i += 1
                    if i == start:
                        return None
                    arg = value[start:i]
            out.setdefault(name, arg)
            while i < n and value[i] in (SP, HTAB):
                i += 1
        if i >= n:
            return out
        if value[i] != COMMA:
            return None
        i += 1


def words(value: bytes) -> set[bytes]:
    """Every maximal run of token characters, lowercased."""
    out, run = set(), bytearray()
    for c in value + b" ":
        if c in TCHAR:
            run.append(c)
        elif run:
            out.add(bytes(run).lower())
            run.clear()
    return out


# -- generated fields ---------------------------------------------------------------

tokens = st.text("".join(map(chr, sorted(TCHAR))), min_size=1, max_size=8).map(str.encode)
names = st.one_of(st.sampled_from([b"private", b"no-store", b"no-cache", b"max-age",
                                   b"s-maxage", b"public", b"must-revalidate", b"Private",
                                   b"NO-STORE", b"stale-if-error", b"only-if-cached"]), tokens)
# (as sent, as read): qdtext, and quoted-pairs for '"', '\\', 'a' and SP.
quoted_content = st.lists(st.sampled_from([
    (b"a", b"a"), (b" ", b" "), (b"\t", b"\t"), (b",", b","), (b"=", b"="), (b";", b";"),
    (b"\xe9", b"\xe9"), (b"private", b"private"), (b'\\"', b'"'), (b"\\\\", b"\\"),
    (b"\\a", b"a"), (b"\\ ", b" ")])).map(
        lambda pieces: (b"".join(p[0] for p in pieces), b"".join(p[1] for p in pieces)))
ows = st.sampled_from([b"", b" ", b"\t", b"  "])


@st.composite
def clean_fields(draw):
    """A well-formed field and the directives it carries (first occurrence wins)."""
    parts, expected = [], {}
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 4)) == 0:
            parts.append(b"")                     # an empty list member
            continue
        name = draw(names)
        kind = draw(st.integers(0, 2))
        if kind == 0:
            member, arg = name, None
        elif kind == 1:
            arg = draw(tokens)
            member = name + b"=" + arg
        else:
            sent, arg = draw(quoted_content)
            member = name + b'="' + sent + b'"'
        expected.setdefault(name.lower(), arg)
        parts.append(member)
    sep = [draw(ows) + b"," + draw(ows) for _ in parts]
    value = b"".join(p + s for p, s in zip(parts, sep))
    if parts and draw(st.booleans()):
        value = value[:-len(sep[-1])]             # no trailing comma
    return value, expected


# Fragments that make typos likely: separators that are not commas, stray quotes and
# backslashes, bytes outside token, whitespace around "=".
fragments = st.lists(st.sampled_from([
    b"private", b"no-store", b"no-cache", b"max-age", b"=", b"60", b",", b" ", b"\t", b";",
    b'"', b"\\", b"\xe9", b"\x7f", b"(", b"/", b"public", b"x", b" = ", b"only-if-cached"]),
    max_size=12).map(b"".join)


@SETTINGS
@given(clean_fields())
def test_clean_fields_read_as_the_grammar_says(field):
    value, expected = field
    assert reference(value) == expected           # the generator and the reference agree
    cc = parse_cache_control(value)
    assert not cc.malformed and cc == expected


@SETTINGS
@given(st.one_of(fragments, st.binary(max_size=30)))
def test_parser_agrees_with_the_reference_on_any_bytes(value):
    ref = reference(value)
    cc = parse_cache_control(value)
    if ref is None:
        assert cc.malformed, value
        # Whatever could be read, no restriction named anywhere in it is lost.
        assert words(value) & RESTRICTIVE <= set(cc), (value, cc)
    else:
        assert not cc.malformed and cc == ref, (value, cc, ref)


# -- the policy over generated fields ------------------------------------------------

T = 1_700_000_000.0
DATE = b"Tue, 14 Nov 2023 22:13:20 GMT"
KEY = b"http://origin.test/p"
CACHE = HttpCache(CacheConfig(size=4 << 20, max_object_size=256 << 10))
field_values = st.one_of(fragments, clean_fields().map(lambda f: f[0])).map(
    lambda v: v.strip(b" \t"))


def _parsed(parse, raw: bytes):
    try:
        return parse(raw)
    except ParseError:
        return None   # a value the HTTP parser itself refuses never reaches the policy


@SETTINGS
@given(field_values)
def test_unreadable_or_private_response_is_never_stored(value):
    # Last-Modified makes any 200 heuristically cacheable: only Cache-Control can stop it.
    resp = _parsed(response, b"HTTP/1.1 200 OK\r\nDate: " + DATE + b"\r\nLast-Modified: "
                   b"Mon, 13 Nov 2023 22:13:20 GMT\r\nContent-Length: 1\r\nCache-Control: "
                   + value + b"\r\n\r\n")
    if resp is None:
        return
    cache = CACHE
    req = request(b"GET /p HTTP/1.1\r\nHost: origin.test\r\n\r\n")
    decision = cache.storable(req, resp, T)
    ref = reference(value)
    if ref is None or b"no-store" in ref or (b"private" in ref and not _field_names(ref[b"private"])):
        assert not decision.store, (value, decision)


def _field_names(arg: bytes | None) -> bool:
    # A qualified private lists field names (RFC 9111 5.2.2.7): a comma-separated list of
    # tokens, at least one; anything else is read as unqualified.
    members = [m.strip(b" \t") for m in (arg or b"").split(b",")]
    members = [m for m in members if m]
    return bool(members) and all(m and set(m) <= TCHAR for m in members)


@SETTINGS
@given(field_values)
def test_unreadable_request_directives_never_get_an_unvalidated_answer(value):
    cache = CACHE
    plain = request(b"GET /p HTTP/1.1\r\nHost: origin.test\r\n\r\n")
    resp = response(b"HTTP/1.1 200 OK\r\nDate: " + DATE + b"\r\nETag: \"e\"\r\n"
                    b"Cache-Control: max-age=600\r\nContent-Length: 1\r\n\r\n")
    assert cache.store(plain, KEY, resp, b"x", T, T)
    req = _parsed(request, b"GET /p HTTP/1.1\r\nHost: origin.test\r\nCache-Control: " + value
                  + b"\r\n\r\n")
    if req is None or reference(value) is not None:
        return
    lk = cache.lookup(req, KEY, T + 1)
    assert lk.kind != HIT, (value, lk)
    if b"only-if-cached" not in words(value):
        assert lk.kind == REVALIDATE, (value, lk)
    assert not cache.storable(req, resp, T + 1).store
