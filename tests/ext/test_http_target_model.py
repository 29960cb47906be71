"""The request-target byte check against a Python model of RFC 3986 2 (differential).

The model (tests/uri_model.py): RFC 3986's characters, no '#', '%' starting %HH in the
path; in the query (after the first '?') also \\ ^ ` { | } and a lone '%', which browsers
and sloppy clients send raw there.

Every byte value at every position of a target long enough to cross the parser's
eight-bytes-at-a-time reads (and their tail), in origin-form and absolute-form, with the
line fed whole or cut right after the byte (the unfinished-line check must agree), and
HTTP/2's :path through the codec's own check.
"""
from __future__ import annotations

import pytest

from uri_model import allowed

from fastproxy import _h2msg
from fastproxy import _http as h

# Two full eight-byte reads and a tail on each side of the '?' (and hex letters, so a '%'
# put in the path is sometimes followed by two hex digits, sometimes not).
BASE = b"/abcdefghijklmnopqrstu?abcdefghijklmnopqrstu"
LINE_ENDS = (10, 13, 32)               # they end the target or the line: other rules


def _outcome(raw: bytes, cuts: tuple[int, ...] = ()):
    """(200, target) or (status, code) for raw fed in pieces ending at each of `cuts`,
    then whole (the parser is given the bytes so far each time, as the relay does)."""
    p = h.RequestParser()
    try:
        for cut in cuts:
            assert p.feed(raw[:cut]) is None, "an unfinished head gave a request"
        req = p.feed(raw)
    except h.ParseError as exc:
        return exc.status, exc.code
    return 200, req.target


@pytest.mark.parametrize("form", ["origin", "absolute"])
def test_every_byte_at_every_position_matches_the_model(form):
    prefix = b"" if form == "origin" else b"http://a.example"
    wrong = []
    for pos in range(1, len(BASE)):
        for b in range(256):
            if b in LINE_ENDS:
                continue
            target = prefix + BASE[:pos] + bytes((b,)) + BASE[pos + 1:]
            raw = b"GET " + target + b" HTTP/1.1\r\nHost: a.example\r\n\r\n"
            at = 4 + len(prefix) + pos        # the byte's index in raw
            # Whole; cut after the byte (the unfinished-line check sees it); cut before
            # and after it (that check resumes where it stopped, in the path or query).
            for cuts in ((), (at + 1,), (at, at + 1)):
                got = _outcome(raw, cuts)
                if allowed(target, len(prefix) + pos):
                    want = (200, target)
                else:
                    want = (400, "fragment_in_target" if b == ord("#") else "bad_target")
                if got != want:
                    wrong.append(f"{target!r} cuts={cuts}: {got}, expected {want}")
    assert not wrong, "\n".join(wrong[:40])


def test_h2_path_check_matches_the_model():
    wrong = []
    for pos in range(1, len(BASE)):
        for b in range(256):
            path = BASE[:pos] + bytes((b,)) + BASE[pos + 1:]
            kind = _h2msg.validate([(b":method", b"GET"), (b":scheme", b"http"),
                                    (b":path", path), (b":authority", b"a.example")])
            if (kind is None) != allowed(path, pos) or kind not in (None, "pseudo_header"):
                wrong.append(f"{path!r}: {kind}")
    assert not wrong, "\n".join(wrong[:40])
