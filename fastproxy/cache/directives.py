"""Field-value grammar the cache policy reads: Cache-Control, HTTP-date, delta-seconds, Vary, ETag.

Everything here is a pure function of bytes, so the rules can be tested one by one.
"""
from __future__ import annotations

import calendar
import re
import time

# RFC 9111 1.2.2: a delta-seconds too large to represent is 2^31.
DELTA_MAX = 2147483648

# RFC 9110 5.6.2 token, 5.6.4 quoted-string (qdtext and quoted-pair, obs-text included).
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_ELEMENT = re.compile(
    rb"([" + _TCHAR + rb"]+)(?:=(?:([" + _TCHAR + rb"]+)"
    rb'|"((?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*)"))?')
# RFC 9110 5.6.1.2: recipients accept empty list members, so "a, , b" and ", a," are clean.
_LEAD = re.compile(rb"[ \t,]*")
_NEXT = re.compile(rb"[ \t]*(?:,[ \t,]*|\Z)")
_TOKEN = re.compile(rb"[" + _TCHAR + rb"]+")
_QUOTED_PAIR = re.compile(rb"\\(.)", re.DOTALL)

# Directives that only ever restrict reuse: in a field that does not parse cleanly they
# count wherever they appear (a reading that fails safe).
RESTRICTIVE = frozenset({b"private", b"no-store", b"no-cache", b"must-revalidate",
                         b"proxy-revalidate", b"only-if-cached"})


class CacheControl(dict):
    """Directive name (lowercase) -> argument (None when absent), with `malformed`.

    `malformed` is True when the field value is not a clean RFC 9111 5.2 list; callers
    must then fail safe (a response is not stored, a request is read as no-cache).
    """

    __slots__ = ("malformed", "targeted")

    def __init__(self) -> None:
        super().__init__()
        self.malformed = False
        self.targeted = False    # read from a targeted field (RFC 9213): Expires does not count


def parse_cache_control(value: bytes | None) -> CacheControl:
    """Parse a Cache-Control field value (lines joined with ","); first occurrence wins.

    RFC 9111 5.2: `#( token [ "=" ( token / quoted-string ) ] )`; 4.2.1: with several
    values for one directive "either the first occurrence should be used or the response
    should be considered stale". A member that does not match the grammar marks the
    field malformed; reading resumes after the next comma, and every RESTRICTIVE
    directive name found anywhere in the value is added, so no reading of a malformed
    field is more permissive than the sender may have meant.
    """
    out = CacheControl()
    if not value:
        return out
    end = len(value)
    pos = _skip_empty(value, 0)
    while pos < end:
        m = _ELEMENT.match(value, pos)
        nxt = _NEXT.match(value, m.end()) if m is not None else None
        if m is None or nxt is None:
            out.malformed = True
            comma = value.find(b",", pos)
            if comma < 0:
                break
            pos = _skip_empty(value, comma)
            continue
        name = m.group(1).lower()
        if name not in out:
            quoted = m.group(3)
            out[name] = _QUOTED_PAIR.sub(rb"\1", quoted) if quoted is not None else m.group(2)
        pos = nxt.end()
    if out.malformed:
        for word in _TOKEN.findall(value):
            word = word.lower()
            if word in RESTRICTIVE and word not in out:
                out[word] = None
    return out


def listed_fields(cc: dict, name: bytes) -> frozenset[bytes] | None:
    """The field names a qualified `no-cache` or `private` lists (RFC 9111 5.2.2.4, 5.2.2.7).

    None when the directive is absent or unqualified, and when its argument is not a clean
    list of field names: such a directive is read in its unqualified form, which is the
    stricter one (the whole response rather than some fields).
    """
    arg = cc.get(name)
    if not arg or not isinstance(arg, bytes):
        return None
    names = frozenset(n.lower() for n in split_list([arg]))
    if not names or not all(_TOKEN.fullmatch(n) for n in names):
        return None
    return names


def validate_always(cc: dict) -> bool:
    """Response `no-cache` in its unqualified form: validate before every reuse (5.2.2.4)."""
    return b"no-cache" in cc and listed_fields(cc, b"no-cache") is None


def private_all(cc: dict) -> bool:
    """Response `private` in its unqualified form: a shared cache stores nothing (5.2.2.7)."""
    return b"private" in cc and listed_fields(cc, b"private") is None


def withheld_fields(cc: dict) -> frozenset[bytes]:
    """Fields a shared cache stores without: those a qualified `private` or `no-cache` lists.

    RFC 9111 5.2.2.7: a shared cache MUST NOT store the fields `private` names and MAY
    store the rest; 5.2.2.4: the fields `no-cache` names MUST NOT be sent without
    validation. Leaving both out of the stored response lets the rest be reused as fresh.
    """
    return ((listed_fields(cc, b"private") or frozenset())
            | (listed_fields(cc, b"no-cache") or frozenset()))


def _skip_empty(value: bytes, pos: int) -> int:
    # Past whitespace and empty list members (the pattern always matches, maybe empty).
    m = _LEAD.match(value, pos)
    return m.end() if m is not None else pos


def delta_seconds(arg: bytes | None) -> int | None:
    """Parse delta-seconds (RFC 9111 1.2.2); None when absent or invalid."""
    if not arg or not arg.isdigit():
        return None
    n = int(arg)
    return DELTA_MAX if n > DELTA_MAX else n


def directive_seconds(cc: dict, name: bytes, default: float) -> float:
    """A delta-seconds directive's value (0 when invalid), or `default` when absent."""
    if name in cc:
        v = delta_seconds(cc[name])
        return float(v) if v is not None else 0.0
    return default


def age_value(values: list[bytes]) -> int:
    """Age in seconds (RFC 9111 5.1): the first member of a list-valued field; 0 when the
    field is absent or that member is not a non-negative integer (then it is ignored)."""
    members = split_list(values) if values else ()
    return (delta_seconds(members[0]) or 0) if members else 0


_MONTHS = {m: i for i, m in enumerate(
    (b"jan", b"feb", b"mar", b"apr", b"may", b"jun",
     b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"), 1)}
_IMF = re.compile(rb"^[A-Za-z]{3}, (\d\d) ([A-Za-z]{3}) (\d{4}) (\d\d):(\d\d):(\d\d) GMT$")
_RFC850 = re.compile(rb"^[A-Za-z]{6,9}, (\d\d)-([A-Za-z]{3})-(\d\d) (\d\d):(\d\d):(\d\d) GMT$")
_ASCTIME = re.compile(rb"^[A-Za-z]{3} ([A-Za-z]{3}) ([ \d]\d) (\d\d):(\d\d):(\d\d) (\d{4})$")


def _timestamp(year: int, month: bytes, day: int, hh: int, mm: int, ss: int) -> float | None:
    mon = _MONTHS.get(month.lower())
    if mon is None or not (1 <= day <= 31 and hh < 24 and mm < 60 and ss < 61):
        return None
    try:
        return float(calendar.timegm((year, mon, day, hh, mm, min(ss, 59), 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


def parse_http_date(value: bytes | None, now: float | None = None) -> float | None:
    """Parse an HTTP-date in any of the three formats of RFC 9110 5.6.7; None if invalid."""
    if not value:
        return None
    value = value.strip()
    m = _IMF.match(value)
    if m:
        return _timestamp(int(m[3]), m[2], int(m[1]), int(m[4]), int(m[5]), int(m[6]))
    m = _RFC850.match(value)
    if m:
        yy = int(m[3])
        # RFC 9110 5.6.7: a two-digit year more than 50 years in the future
        # means the most recent past year with those digits.
        this_year = time.gmtime(now if now is not None else time.time()).tm_year
        year = (this_year // 100) * 100 + yy
        if year > this_year + 50:
            year -= 100
        return _timestamp(year, m[2], int(m[1]), int(m[4]), int(m[5]), int(m[6]))
    m = _ASCTIME.match(value)
    if m:
        return _timestamp(int(m[6]), m[1], int(m[2]), int(m[3]), int(m[4]), int(m[5]))
    return None


_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MON_NAMES = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
              b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")


def format_http_date(ts: float) -> bytes:
    """Format a timestamp as IMF-fixdate (RFC 9110 5.6.7), the only form senders may generate."""
    t = time.gmtime(int(ts))
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday], t.tm_mday, _MON_NAMES[t.tm_mon - 1], t.tm_year,
        t.tm_hour, t.tm_min, t.tm_sec)


def split_list(values: list[bytes]) -> list[bytes]:
    """Split comma-separated list field lines into trimmed, non-empty members (RFC 9110 5.6.1)."""
    out = []
    for v in values:
        for part in v.split(b","):
            part = part.strip(b" \t")
            if part:
                out.append(part)
    return out


def parse_etags(value: bytes) -> list[bytes] | None:
    """Entity-tags of an If-None-Match / If-Match value; None means "*" (RFC 9110 13.1.2)."""
    value = value.strip(b" \t")
    if value == b"*":
        return None
    return re.findall(rb'(?:W/)?"[^"]*"', value)


def weak_match(a: bytes, b: bytes) -> bool:
    """Weak comparison of two entity-tags (RFC 9110 8.8.3.2): opaque-tags equal, W/ ignored."""
    if a.startswith(b"W/"):
        a = a[2:]
    if b.startswith(b"W/"):
        b = b[2:]
    return a == b


def strong_match(a: bytes, b: bytes) -> bool:
    """Strong comparison (RFC 9110 8.8.3.2): both strong and identical."""
    return a == b and not a.startswith(b"W/")
