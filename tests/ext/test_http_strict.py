"""One test per strictness rule: each refused message gets its status and code.

The tables live in http_cases.py; each row names its RFC section (9110, 9112).
"""
import pytest

from fastproxy import _http as h
from http_cases import BAD_CHUNKED, BAD_REQUESTS, BAD_RESPONSES, VALID_NOT_ORACLE, crlf


def _id(case):
    return f"{case.code}[{case.rule}]"


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=_id)
def test_bad_request(case):
    with pytest.raises(h.ParseError) as info:
        h.RequestParser().feed(case.raw)
    assert (info.value.status, info.value.code) == (case.status, case.code), case.rule
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("case", BAD_RESPONSES, ids=_id)
def test_bad_response(case):
    with pytest.raises(h.ParseError) as info:
        h.ResponseParser().feed(case.raw)
    assert (info.value.status, info.value.code) == (case.status, case.code), case.rule


@pytest.mark.parametrize("case", BAD_CHUNKED, ids=_id)
def test_bad_chunked(case):
    with pytest.raises(h.ParseError) as info:
        h.ChunkedDecoder().feed(case.raw)
    assert (info.value.status, info.value.code) == (case.status, case.code), case.rule


def test_error_families():
    """Each rule family has its own subclass, all of them ParseError (a ValueError)."""
    def err(raw, parser=h.RequestParser):
        with pytest.raises(h.ParseError) as info:
            parser().feed(raw)
        return info.value
    assert isinstance(err(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"), h.BadSyntax)
    assert isinstance(err(crlf(b"POST / HTTP/1.1\nHost: a\nContent-Length: 1\nContent-Length: 2\n\n")),
                      h.BadFraming)
    assert isinstance(err(b"GET /" + b"a" * 9000), h.TooLarge)
    assert isinstance(err(b"GET / HTTP/3.0\r\n\r\n"), h.Unsupported)
    assert isinstance(err(b"x"[:0] + b"\r\n", h.ChunkedDecoder), h.BadFraming)
    assert issubclass(h.ParseError, ValueError)


def test_parser_usable_after_error():
    p = h.RequestParser()
    with pytest.raises(h.ParseError):
        p.feed(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n")
    assert p.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").target == b"/"


# --- Line endings: the bare-LF decision (RFC 9112 2.2) ----------------------

def test_bare_lf_ends_head_lines():
    """A bare LF ends a head line; forward_head re-emits CRLF, so nothing
    downstream ever sees the bare LF."""
    raw = b"GET /x HTTP/1.1\nHost: a\nX-A: 1\n\n"
    r = h.RequestParser().feed(raw)
    assert r.head == raw and r.head_length == len(raw)
    assert r.headers() == [(b"Host", b"a"), (b"X-A", b"1")]
    assert r.forward_head() == b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\r\n"
    mixed = b"GET / HTTP/1.1\r\nHost: a\n\r\n"
    assert h.RequestParser().feed(mixed).head_length == len(mixed)


def test_bare_lf_in_response_head():
    raw = b"HTTP/1.1 200 OK\nContent-Length: 0\n\n"
    r = h.ResponseParser().feed(raw)
    assert r.status == 200 and r.head_length == len(raw)
    assert r.forward_head() == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def test_bare_cr_never_ends_a_line():
    for raw in (b"GET / HTTP/1.1\rHost: a\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\r\n",
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n"):
        with pytest.raises(h.ParseError) as info:
            h.RequestParser().feed(raw)
        assert info.value.status == 400


def test_chunk_framing_is_strict_about_lf():
    """RFC 9112 7.1: chunk lines end with CRLF only (a bare LF there is a
    classic smuggling vector between parsers that disagree)."""
    for raw in (b"5\nhello\r\n0\r\n\r\n", b"5\r\nhello\n0\r\n\r\n", b"0\n\r\n", b"0\r\n\n"):
        with pytest.raises(h.ParseError):
            h.ChunkedDecoder().feed(raw)


# --- Other accepted forms ------------------------------------------------

def test_empty_lines_before_request_line_are_skipped():
    """RFC 9112 2.2: ignore at least one empty line before a request-line."""
    raw = b"\r\n\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
    r = h.RequestParser().feed(raw)
    assert r.head == raw[5:]
    assert r.head_length == len(raw)
    assert r.forward_head() == raw[5:]


def test_too_many_empty_lines():
    with pytest.raises(h.ParseError) as info:
        h.RequestParser().feed(b"\r\n" * 600 + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert info.value.status == 400


def test_higher_minor_version_is_11():
    """RFC 9110 6.2: HTTP/1.2 is handled as the highest 1.x we implement."""
    r = h.RequestParser().feed(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n")
    assert r.version == 11


def test_http10_without_host_is_fine():
    r = h.RequestParser().feed(b"GET / HTTP/1.0\r\n\r\n")
    assert r.version == 10 and r.host is None and not r.keep_alive


def test_identical_content_lengths_are_forwarded_once():
    """RFC 9110 8.6: repeated identical values are one length; pass on one field."""
    r = h.RequestParser().feed(crlf(b"POST / HTTP/1.1\nHost: a\nContent-Length: 3\nContent-Length: 3\n\n"))
    assert r.content_length == 3 and r.body == h.BODY_LENGTH
    assert r.forward_head().count(b"Content-Length") == 1


def test_content_length_leading_zeros_and_zero():
    r = h.RequestParser().feed(crlf(b"POST / HTTP/1.1\nHost: a\nContent-Length: 007\n\n"))
    assert r.content_length == 7
    r = h.RequestParser().feed(crlf(b"POST / HTTP/1.1\nHost: a\nContent-Length: 0\n\n"))
    assert r.content_length == 0 and r.body == h.BODY_NONE
    r = h.RequestParser().feed(crlf(b"POST / HTTP/1.1\nHost: a\nContent-Length: 000000000000000000000042\n\n"))
    assert r.content_length == 42


def test_transfer_encoding_is_case_insensitive_list():
    """RFC 9112 7: coding names are case-insensitive; empty list elements are
    allowed (RFC 9110 5.6.1)."""
    for value in (b"chunked", b"CHUNKED", b" ,chunked, ", b"Chunked"):
        r = h.RequestParser().feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: %s\r\n\r\n" % value)
        assert r.chunked and r.body == h.BODY_CHUNKED


def test_transfer_encoding_never_forwarded():
    r = h.RequestParser().feed(crlf(b"POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n"))
    assert r.forward_head(extra=b"Transfer-Encoding: chunked\r\n") == crlf(
        b"POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n")
    assert b"Transfer" not in r.forward_head()


def test_expect_100_continue_ignored_in_http10():
    """RFC 9110 10.1.1."""
    r = h.RequestParser().feed(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
    assert not r.expect_continue
    r = h.RequestParser().feed(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
    assert r.expect_continue


def test_obs_text_allowed_in_values():
    """RFC 9110 5.5: obs-text (0x80-0xFF) may appear in field values."""
    r = h.RequestParser().feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\xff\r\n\r\n")
    assert r.get(b"x") == b"caf\xc3\xa9\xff"


def test_limits_are_configurable():
    p = h.RequestParser(max_line=64, max_head=256, max_fields=3)
    assert p.feed(b"GET /" + b"a" * 40 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(h.TooLarge) as info:
        p.feed(b"GET /" + b"a" * 60 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert info.value.status == 414
    with pytest.raises(h.TooLarge) as info:
        p.feed(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
    assert (info.value.status, info.value.code) == (431, "too_many_fields")
    with pytest.raises(h.TooLarge) as info:
        p.feed(b"GET / HTTP/1.1\r\nHost: a\r\nA: " + b"x" * 300 + b"\r\n\r\n")
    assert (info.value.status, info.value.code) == (431, "head_too_large")
    with pytest.raises(ValueError):
        h.RequestParser(max_fields=0)


def test_head_exactly_at_limit_is_accepted():
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: "
    head += b"v" * (200 - len(head) - 4) + b"\r\n\r\n"
    assert len(head) == 200
    assert h.RequestParser(max_head=200).feed(head).head_length == 200
    with pytest.raises(h.TooLarge):
        h.RequestParser(max_head=199).feed(head)


def test_request_line_too_long_before_it_ends():
    """Refused with 414 as soon as the line is over the limit, without waiting."""
    p = h.RequestParser(max_line=100)
    assert p.feed(b"GET /" + b"a" * 95) is None
    with pytest.raises(h.TooLarge) as info:
        p.feed(b"GET /" + b"a" * 96)
    assert info.value.status == 414


def test_garbage_refused_before_line_end():
    """A binary prefix (e.g. a TLS ClientHello) is refused at once, not after 8 KiB."""
    with pytest.raises(h.BadSyntax):
        h.RequestParser().feed(b"\x16\x03\x01")
    with pytest.raises(h.BadSyntax):
        h.ResponseParser().feed(b"\x16\x03")
    assert h.RequestParser().feed(b"GET /abc HTT") is None
    assert h.ResponseParser().feed(b"HTT") is None


def test_response_ws_before_colon_is_removed():
    """RFC 9112 5.1: refused in a request, removed by a proxy from a response."""
    r = h.ResponseParser().feed(b"HTTP/1.1 200 OK\r\nX-Odd : a\r\nContent-Length\t: 2\r\n\r\nok")
    assert r.headers() == [(b"X-Odd", b"a"), (b"Content-Length", b"2")]
    assert r.content_length == 2 and r.body == h.BODY_LENGTH
    assert r.forward_head() == b"HTTP/1.1 200 OK\r\nX-Odd: a\r\nContent-Length: 2\r\n\r\n"
    with pytest.raises(h.BadSyntax):
        h.ResponseParser().feed(b"HTTP/1.1 200 OK\r\nX Odd: a\r\n\r\n")


def test_response_te_and_cl_refused():
    """RFC 9112 6.3 (3) lets a recipient treat TE + CL as an error: we do, for
    responses too (the proxy answers 502)."""
    with pytest.raises(h.BadFraming) as info:
        h.ResponseParser().feed(crlf(b"HTTP/1.1 200 OK\nContent-Length: 3\nTransfer-Encoding: chunked\n\n"))
    assert (info.value.status, info.value.code) == (502, "te_and_cl")


def test_response_no_body_ignores_framing_fields():
    """RFC 9112 6.3 (1, 2): HEAD, 1xx, 204, 304 and 2xx-to-CONNECT have no content,
    whatever Content-Length or Transfer-Encoding say."""
    r = h.ResponseParser().feed(crlf(b"HTTP/1.1 200 OK\nContent-Length: 9\n\n"), head_request=True)
    assert r.body == h.BODY_NONE and r.content_length == 9 and r.keep_alive
    r = h.ResponseParser().feed(crlf(b"HTTP/1.1 304 Not Modified\nTransfer-Encoding: chunked\n\n"))
    assert r.body == h.BODY_NONE and not r.chunked
    r = h.ResponseParser().feed(crlf(b"HTTP/1.1 200 Connection established\n\n"), connect_request=True)
    assert r.body == h.BODY_NONE


def test_response_keep_alive():
    """RFC 9112 9.3 and 6.3 (8): read-until-close ends the connection."""
    p = h.ResponseParser()
    assert p.feed(crlf(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n")).keep_alive
    assert not p.feed(crlf(b"HTTP/1.1 200 OK\nContent-Length: 0\nConnection: close\n\n")).keep_alive
    assert not p.feed(crlf(b"HTTP/1.0 200 OK\nContent-Length: 0\n\n")).keep_alive
    assert p.feed(crlf(b"HTTP/1.0 200 OK\nContent-Length: 0\nConnection: keep-alive\n\n")).keep_alive
    r = p.feed(crlf(b"HTTP/1.1 200 OK\n\n"))
    assert r.body == h.BODY_CLOSE and not r.keep_alive


@pytest.mark.parametrize("raw", VALID_NOT_ORACLE)
def test_accepted_forms_parse(raw):
    r = h.RequestParser().feed(raw)
    assert r is not None
    assert r.head_length + max(r.content_length, 0) == len(raw)


# --- split_absolute / split_authority (RFC 9110 4.2, RFC 3986 3.2) ------------

@pytest.mark.parametrize("target,code", [
    (b"example.com", "bad_target"),
    (b"http:/a", "bad_target"),
    (b"http://", "bad_authority"),
    (b"http://a:b/", "bad_authority"),
    (b"http://a:70000/", "bad_authority"),
    (b"http://a:0/", "bad_port"),
    (b"http://u@a/", "userinfo_in_target"),
    (b"http://a/#f", "fragment_in_target"),
    (b"http://a/ b", "bad_target"),
    (b"http://[::1/", "bad_authority"),
    (b"http://[zz::1]/", "bad_authority"),
    (b"1http://a/", "bad_target"),
])
def test_split_absolute_rejects(target, code):
    with pytest.raises(h.ParseError) as info:
        h.split_absolute(target)
    assert (info.value.status, info.value.code) == (400, code)


@pytest.mark.parametrize("target,code", [
    (b"example.com", "missing_port"),
    (b"example.com:", "missing_port"),
    (b"example.com:0", "bad_port"),
    (b"example.com:99999", "bad_authority"),
    (b"[::1]", "missing_port"),
    (b"::1:443", "bad_authority"),
    (b"a b:443", "bad_authority"),
    (b"", "bad_authority"),
])
def test_split_authority_rejects(target, code):
    with pytest.raises(h.ParseError) as info:
        h.split_authority(target)
    assert (info.value.status, info.value.code) == (400, code)


def test_split_authority_forms():
    assert h.split_authority(b"Example.COM:443") == (b"example.com", 443)
    assert h.split_authority(b"10.0.0.1:8080") == (b"10.0.0.1", 8080)
    assert h.split_authority(b"[2001:db8::7]:443") == (b"2001:db8::7", 443)
    assert h.split_authority(b"example.com", 80) == (b"example.com", 80)
    assert h.split_authority(bytearray(b"a:1")) == (b"a", 1)


def test_split_absolute_default_ports():
    assert h.split_absolute(b"http://a")[2] == 80
    assert h.split_absolute(b"https://a")[2] == 443
    assert h.split_absolute(b"ws://a")[2] == 80
    assert h.split_absolute(b"wss://a")[2] == 443
    assert h.split_absolute(b"ftp://a/x") == (b"ftp", b"a", -1, b"/x")


@pytest.mark.parametrize("bad", [b"(", b"\x00", b"\x80", b"\x7f", b'"'])
def test_bad_name_byte_at_every_position(bad):
    """The field-name scan steps four bytes at a time: a bad byte is found wherever it sits."""
    for n in range(1, 14):
        for k in range(n):
            name = bytearray(b"abcdefghijklm"[:n])
            name[k:k + 1] = bad
            raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + bytes(name) + b": v\r\n\r\n"
            with pytest.raises(h.ParseError) as info:
                h.RequestParser().feed(raw)
            assert info.value.code == "bad_field_name", (n, k, raw)


@pytest.mark.parametrize("bad", [b"\x01", b"\x7f", b"\x1f"])
def test_bad_value_byte_at_every_position(bad):
    """The value scan checks words of eight bytes and the last 1-7 bytes as one word that
    overlaps checked ones: a control byte is refused at any position of any length."""
    for n in range(1, 26):
        for k in range(n):
            value = bytearray(b"0123456789abcdefghijklmnopq"[:n])
            value[k:k + 1] = bad
            raw = b"HTTP/1.1 200 OK\r\nX-V: " + bytes(value) + b"\r\nContent-Length: 0\r\n\r\n"
            with pytest.raises(h.ParseError) as info:
                h.ResponseParser().feed(raw)
            assert info.value.code == "bad_field_value", (n, k, raw)


def test_values_of_every_length_parse_whole():
    """Values of 1 to 25 bytes (with an HTAB and obs-text inside) come back whole."""
    for n in range(1, 26):
        value = (b"a\tb\xe9" + b"0123456789abcdefghijklmnopq")[:n].strip(b"\t")
        raw = b"HTTP/1.1 200 OK\r\nX-Long-Name-Here: " + value + b"\r\nContent-Length: 0\r\n\r\n"
        resp = h.ResponseParser().feed(raw)
        assert resp.get(b"x-long-name-here") == value, n
