"""Field grammar the policy relies on: Cache-Control, delta-seconds, HTTP-date, entity-tags."""
import calendar

import pytest

from fastproxy.cache.directives import (
    DELTA_MAX, age_value, delta_seconds, format_http_date, parse_cache_control, parse_etags,
    parse_http_date, split_list, strong_match, weak_match)

SUNDAY = float(calendar.timegm((1994, 11, 6, 8, 49, 37)))


def test_cache_control_tokens_quoted_strings_and_case():
    cc = parse_cache_control(b'Max-Age=60 , no-cache="Set-Cookie, X-A", PRIVATE,'
                             b' ext="a\\"b",s-maxage=5')
    assert cc == {b"max-age": b"60", b"no-cache": b"Set-Cookie, X-A", b"private": None,
                  b"ext": b'a"b', b"s-maxage": b"5"}
    assert not cc.malformed


def test_cache_control_first_occurrence_wins_and_empty_members_are_clean():
    assert parse_cache_control(b"max-age=5, max-age=10")[b"max-age"] == b"5"
    assert parse_cache_control(b"") == {} and parse_cache_control(None) == {}
    cc = parse_cache_control(b",,, no-store ,")
    assert cc == {b"no-store": None} and not cc.malformed


@pytest.mark.parametrize("raw, reading", [
    (b'max-age=5, "junk", @@, public', {b"max-age": b"5", b"public": None}),
    (b"s-maxage = 5", {}),                                   # no whitespace around "="
    (b"private; max-age=600", {b"private": None}),
    (b"no-store; no-cache", {b"no-store": None, b"no-cache": None}),
    (b"private max-age=600", {b"private": None}),
    (b'max-age=60, private"', {b"max-age": b"60", b"private": None}),
    (b'max-age=60, private="a', {b"max-age": b"60", b"private": None}),
    (b"max-age=60, private=", {b"max-age": b"60", b"private": None}),
    (b'ext="x", "no-cache"', {b"ext": b"x", b"no-cache": None}),
])
def test_malformed_cache_control_is_flagged_and_keeps_every_restriction(raw, reading):
    cc = parse_cache_control(raw)
    assert cc.malformed and cc == reading


@pytest.mark.parametrize("values, age", [
    ([b"7200, 0"], 7200), ([b"60"], 60), ([b" 60 "], 60), ([b"60", b"0"], 60),
    ([b"soon"], 0), ([b"-5"], 0), ([b""], 0), ([], 0), ([b",30"], 30)])
def test_age_is_the_first_member(values, age):
    assert age_value(values) == age


@pytest.mark.parametrize("raw,value", [
    (b"0", 0), (b"60", 60), (b"2147483648", DELTA_MAX), (b"99999999999999", DELTA_MAX),
    (b"-1", None), (b"1.5", None), (b"", None), (None, None), (b" 5", None)])
def test_delta_seconds(raw, value):
    assert delta_seconds(raw) == value


@pytest.mark.parametrize("raw", [
    b"Sun, 06 Nov 1994 08:49:37 GMT",        # IMF-fixdate
    b"Sunday, 06-Nov-94 08:49:37 GMT",       # obsolete RFC 850
    b"Sun Nov  6 08:49:37 1994",             # asctime
])
def test_the_three_http_date_formats(raw):
    assert parse_http_date(raw, now=SUNDAY) == SUNDAY


def test_rfc850_two_digit_year_is_never_more_than_50_years_ahead():
    now = float(calendar.timegm((2026, 1, 1, 0, 0, 0)))
    assert parse_http_date(b"Tuesday, 01-Jan-80 00:00:00 GMT", now=now) == float(
        calendar.timegm((1980, 1, 1, 0, 0, 0)))           # 2080 would be 54 years ahead
    assert parse_http_date(b"Friday, 01-Jan-60 00:00:00 GMT", now=now) == float(
        calendar.timegm((2060, 1, 1, 0, 0, 0)))


@pytest.mark.parametrize("raw", [
    b"0", b"-1", b"yesterday", b"Sun, 32 Nov 1994 08:49:37 GMT",
    b"Sun, 06 Foo 1994 08:49:37 GMT", b"Sun, 06 Nov 1994 08:49:37 PST", b""])
def test_invalid_dates(raw):
    assert parse_http_date(raw) is None


def test_format_roundtrip():
    assert format_http_date(SUNDAY) == b"Sun, 06 Nov 1994 08:49:37 GMT"
    assert parse_http_date(format_http_date(1_700_000_000)) == 1_700_000_000


def test_lists_and_etags():
    assert split_list([b"a, b", b" ,c ,"]) == [b"a", b"b", b"c"]
    assert parse_etags(b' "a", W/"b" ,"c,d"') == [b'"a"', b'W/"b"', b'"c,d"']
    assert parse_etags(b" * ") is None
    assert weak_match(b'W/"a"', b'"a"') and not strong_match(b'W/"a"', b'"a"')
    assert strong_match(b'"a"', b'"a"') and not weak_match(b'"a"', b'"b"')
