"""Fuzz target for fastproxy._http (atheris / libFuzzer).

    python tests/ext/fuzz_http.py -max_total_time=60 -timeout=5 CORPUS_DIR
    python tests/ext/fuzz_http.py --write-seeds CORPUS_DIR     # seed from the test tables

Input layout: byte 0 picks the target (request, response, chunked body, URL
helpers), byte 1 a split position, the rest is the message.  Any exception
other than ParseError, a disagreement between whole and split feeding, or an
emitted head that our own parser does not read back the same, is a crash.

The extension is not compiled with coverage instrumentation (that needs clang),
so the harness turns the parser's outcomes (error codes, framing kinds) into
Python branches that atheris does see; the seeds from the test tables do the rest.
"""
from __future__ import annotations

import os
import sys
import zlib

import atheris

with atheris.instrument_imports():
    from fastproxy import _http as h


# One `if` arm per bucket: once instrumented, each distinct outcome (hashed into a
# bucket) is a distinct edge, i.e. new coverage for libFuzzer.
_src = "def _bucket(b):\n" + "".join(
    f"    {'if' if i == 0 else 'elif'} b == {i}:\n        return {i}\n" for i in range(128))
exec(_src)


def _branch_on(key: str) -> None:
    _bucket(zlib.crc32(key.encode()) & 127)  # noqa: F821 (defined by exec above)


def _outcome(make, data: bytes, cut: int, **kw):
    p = make()
    try:
        if 0 < cut < len(data):
            r = p.feed(data[:cut], **kw)
            if r is not None:
                return ("ok", r)
        r = p.feed(data, **kw)
        return ("ok", r) if r is not None else ("incomplete", None)
    except h.ParseError as exc:
        assert isinstance(exc.status, int) and 400 <= exc.status <= 505, exc.status
        assert exc.code and "\n" not in str(exc)
        _branch_on(exc.code)
        return ("error", (exc.status, exc.code))


def _reading(m):
    return (m.head_length, m.version, m.body, m.content_length, m.chunked, m.keep_alive,
            tuple(m.headers()))


def _check_forward(m, parser_cls, **kw):
    """What we emit must be read back by our own strict parser the same way."""
    out = m.forward_head(extra=b"Via: 1.1 fuzz\r\n")
    try:
        # Generous limits: `extra` may legitimately push a head past the defaults.
        again = parser_cls(max_head=1 << 20, max_fields=10000).feed(out, **kw)
    except h.ParseError as exc:
        raise AssertionError(f"forward_head emitted a head we refuse: {exc.code}: {out!r}")
    assert again is not None and again.head_length == len(out)
    kept = [f for f in again.headers() if f != (b"Via", b"1.1 fuzz")]
    original = m.headers()
    assert all(f in original for f in kept), (kept, original)
    assert again.content_length == (m.content_length if m.body != h.BODY_CHUNKED else -1)


def _request(data: bytes, cut: int) -> None:
    whole = _outcome(h.RequestParser, data, 0)
    split = _outcome(h.RequestParser, data, cut)
    if whole[0] == "ok" and split[0] == "ok":
        assert _reading(whole[1]) == _reading(split[1])
        r = whole[1]
        _branch_on(f"req-body-{r.body}-form-{r.target_form}")
        if r.target_form == h.TARGET_ABSOLUTE:
            h.split_absolute(r.target)
        elif r.target_form == h.TARGET_AUTHORITY:
            h.split_authority(r.target)
        _check_forward(r, h.RequestParser)
    else:
        assert whole[0] == split[0] and (whole[0] != "error" or whole[1] == split[1]), (whole, split)


def _response(data: bytes, cut: int) -> None:
    flags = {"head_request": bool(cut & 1), "connect_request": bool(cut & 2)}
    whole = _outcome(h.ResponseParser, data, 0, **flags)
    split = _outcome(h.ResponseParser, data, cut, **flags)
    if whole[0] == "ok" and split[0] == "ok":
        assert _reading(whole[1]) == _reading(split[1])
        _branch_on(f"resp-body-{whole[1].body}")
        _check_forward(whole[1], h.ResponseParser, **flags)
    else:
        assert whole[0] == split[0] and (whole[0] != "error" or whole[1] == split[1]), (whole, split)


def _decode(data: bytes, cut: int):
    d = h.ChunkedDecoder()
    out: list = []
    used = 0
    try:
        for piece in ((data[:cut], data[cut:]) if 0 < cut < len(data) else (data,)):
            n = d.feed(piece, 0, out)
            assert 0 <= n <= len(piece)
            used += n
            if d.done:
                break
            assert n == len(piece)
        return ("ok", used, b"".join(bytes(v) for v in out), d.trailers, d.done)
    except h.ParseError as exc:
        _branch_on("chunk-" + exc.code)
        return ("error", exc.status, exc.code)


def _chunked(data: bytes, cut: int) -> None:
    assert _decode(data, 0) == _decode(data, cut)


def _urls(data: bytes, cut: int) -> None:
    for fn in (h.split_absolute, h.split_authority):
        try:
            parts = fn(data)
            _branch_on(fn.__name__ + "-ok")
            assert isinstance(parts[0], bytes)
        except h.ParseError as exc:
            assert exc.status == 400
            _branch_on(fn.__name__ + exc.code)


TARGETS = (_request, _response, _chunked, _urls)


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    target = TARGETS[data[0] % len(TARGETS)]
    payload = data[2:]
    cut = data[1] * len(payload) // 255 if payload else 0
    target(payload, cut)


def write_seeds(directory: str) -> int:
    """Write the test tables as seed inputs; return how many."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import http_cases as c

    os.makedirs(directory, exist_ok=True)
    seeds = []
    seeds += [b"\x00\x80" + raw for raw in c.VALID_REQUESTS + c.VALID_NOT_ORACLE]
    seeds += [b"\x00\x40" + b.raw[:2000] for b in c.BAD_REQUESTS]
    seeds += [b"\x01\x80" + raw for raw, _ in c.VALID_RESPONSES + c.VALID_RESPONSES_NOT_ORACLE]
    seeds += [b"\x01\x40" + b.raw for b in c.BAD_RESPONSES]
    seeds += [b"\x02\x80" + body for body, _, _ in c.VALID_CHUNKED]
    seeds += [b"\x02\x40" + b.raw[:2000] for b in c.BAD_CHUNKED]
    seeds += [b"\x03\x00" + t for t in (b"http://a.b:8/x?y", b"[::1]:443", b"https://[::1]/")]
    for i, seed in enumerate(seeds):
        with open(os.path.join(directory, f"seed-{i:04d}"), "wb") as f:
            f.write(seed)
    return len(seeds)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        print(f"wrote {write_seeds(sys.argv[2])} seeds")
        return
    # Instrument this harness: its branches on the parser's outcomes are the
    # coverage signal (see the module docstring).
    for name in ("_bucket", "_branch_on", "_outcome", "_reading", "_check_forward", "_request",
                 "_response", "_decode", "_chunked", "_urls", "TestOneInput"):
        globals()[name] = atheris.instrument_func(globals()[name])
    global TARGETS
    TARGETS = (_request, _response, _chunked, _urls)
    atheris.Setup(sys.argv, globals()["TestOneInput"])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
