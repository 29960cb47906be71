"""Host normalisation and the DNS cache, against the machine's real resolver (no network
beyond it: `localhost` and names under `.invalid`, which RFC 2606 guarantees never resolve)."""
import asyncio
import socket

import pytest
import uvloop

from fastproxy.forward.resolver import (
    HostError, ResolveError, Resolver, ResolverConfig, is_ip_literal, normalize_host,
)


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def on_both_loops(coro_fn):
    """Make a test of a coroutine, run on uvloop (what the proxy uses) and the stdlib loop."""
    @pytest.mark.parametrize("loop", sorted(LOOPS))
    def test(loop):
        with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
            runner.run(coro_fn())
    test.__name__ = test.__qualname__ = coro_fn.__name__
    test.__doc__ = coro_fn.__doc__
    return test


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class CountingGai:
    """Delegates to the loop's real getaddrinfo and counts the calls."""

    def __init__(self, delay=0.0):
        self.calls = []
        self.delay = delay

    async def __call__(self, host, port, **kw):
        self.calls.append(host)
        if self.delay:
            await asyncio.sleep(self.delay)
        return await asyncio.get_running_loop().getaddrinfo(host, port, **kw)


# --- normalize_host -------------------------------------------------------------------

@pytest.mark.parametrize("raw, canonical", [
    ("example.com", "example.com"),
    ("EXAMPLE.Com", "example.com"),
    ("example.com.", "example.com"),            # root label
    (b"www.example.com", "www.example.com"),
    (bytearray(b"Example.COM"), "example.com"),
    ("a-b_c.example", "a-b_c.example"),
    ("127.0.0.1", "127.0.0.1"),
    # WHATWG URL / inet_aton spellings of IPv4 (RFC 3696 2: TLDs are never all-numeric)
    ("2130706433", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),                 # leading zero: octal
    ("169.254.43518", "169.254.169.254"),
    ("0", "0.0.0.0"),
    ("[::1]", "::1"),
    ("[0:0:0:0:0:0:0:1]", "::1"),
    ("[FE80::1]", "fe80::1"),
    ("::1", "::1"),                              # CONNECT authority split without brackets
    ("0x1g.example", "0x1g.example"),           # not a number: a name
])
def test_normalize_host(raw, canonical):
    assert normalize_host(raw) == canonical
    assert normalize_host(canonical) == canonical  # idempotent


@pytest.mark.parametrize("raw", [
    "", ".", "a..b", ".example.com", "exa mple.com", "exa%41mple.com", "ex*ample.com",
    "[::1", "[::g]", "[fe80::1%25eth0]", "fe80::1%eth0", "[v1.x]",
    "256.0.0.1", "1.2.3.4.5", "1.2.3.256", "4294967296", "1.16777216", "09.0.0.1",
    "0x100.1.1.1", "1.0x1g.0x", "exämple.com", b"\xffexample.com", "a" * 64 + ".com", ("a" * 60 + ".") * 5,
])
def test_normalize_host_rejects(raw):
    with pytest.raises(HostError) as exc:
        normalize_host(raw)
    assert exc.value.status == 400
    assert str(exc.value)


def test_is_ip_literal():
    assert is_ip_literal("10.0.0.1") and is_ip_literal("::1") and is_ip_literal("fe80::1")
    assert not is_ip_literal("example.com") and not is_ip_literal("a1.example")


# --- resolution -----------------------------------------------------------------------

@on_both_loops
async def test_localhost_resolves_to_loopback():
    addrs = await Resolver().resolve("localhost")
    assert addrs and set(addrs) <= {"127.0.0.1", "::1"}
    assert len(addrs) == len(set(addrs))  # deduplicated across socket types


@on_both_loops
async def test_invalid_tld_fails_with_a_reason():
    with pytest.raises(ResolveError) as exc:
        await Resolver().resolve("no-such-host.invalid")
    err = exc.value
    assert err.status == 502 and err.host == "no-such-host.invalid"
    assert err.reason in ("name not found", "no address for this name",
                          "temporary DNS failure, try again", "DNS server failure")
    assert "no-such-host.invalid" in str(err)


@on_both_loops
async def test_literals_need_no_lookup():
    gai = CountingGai()
    r = Resolver(getaddrinfo=gai)
    assert await r.resolve("10.1.2.3") == ("10.1.2.3",)
    assert await r.resolve("::1") == ("::1",)
    assert r.cached("192.0.2.7") == ("192.0.2.7",)
    assert gai.calls == [] and r.lookups == 0


@on_both_loops
async def test_ipv6_answers_from_getaddrinfo():
    # No IPv6 name on this machine's /etc/hosts: drive the lookup path with a literal.
    r = Resolver(ResolverConfig(family="ipv6"))
    assert await r._lookup("::1") == ("::1",)


@on_both_loops
async def test_family_restriction():
    r4 = Resolver(ResolverConfig(family="ipv4"))
    assert await r4.resolve("localhost") == ("127.0.0.1",)
    with pytest.raises(ResolveError, match="family"):
        await r4.resolve("::1")
    r6 = Resolver(ResolverConfig(family="ipv6"))
    with pytest.raises(ResolveError, match="family"):
        await r6.resolve("127.0.0.1")
    try:
        addrs = await r6.resolve("localhost")
    except ResolveError as err:  # no IPv6 for localhost here: a clear reason, not a crash
        assert err.status == 502 and err.reason
    else:
        assert all(":" in a for a in addrs)


@on_both_loops
async def test_positive_cache_and_ttl_expiry():
    clock, gai = Clock(), CountingGai()
    r = Resolver(ResolverConfig(positive_ttl=30), clock=clock, getaddrinfo=gai)
    first = await r.resolve("localhost")
    assert await r.resolve("localhost") == first
    assert r.cached("localhost") == first
    assert gai.calls == ["localhost"]
    clock.now += 29.9
    await r.resolve("localhost")
    assert len(gai.calls) == 1
    clock.now += 0.2  # past the TTL
    assert r.cached("localhost") is None
    await r.resolve("localhost")
    assert len(gai.calls) == 2


@on_both_loops
async def test_negative_cache_and_ttl_expiry():
    clock, gai = Clock(), CountingGai()
    r = Resolver(ResolverConfig(negative_ttl=5), clock=clock, getaddrinfo=gai)
    for _ in range(3):
        with pytest.raises(ResolveError):
            await r.resolve("nothing-here.invalid")
    assert gai.calls == ["nothing-here.invalid"]
    with pytest.raises(ResolveError):
        r.cached("nothing-here.invalid")  # the failure is served from the cache
    clock.now += 5.1
    with pytest.raises(ResolveError):
        await r.resolve("nothing-here.invalid")
    assert len(gai.calls) == 2


@on_both_loops
async def test_zero_ttl_disables_caching():
    gai = CountingGai()
    r = Resolver(ResolverConfig(positive_ttl=0, negative_ttl=0), getaddrinfo=gai)
    await r.resolve("localhost")
    await r.resolve("localhost")
    assert len(gai.calls) == 2


@on_both_loops
async def test_concurrent_lookups_are_coalesced():
    gai = CountingGai(delay=0.05)
    r = Resolver(getaddrinfo=gai)
    results = await asyncio.gather(*(r.resolve("localhost") for _ in range(20)))
    assert gai.calls == ["localhost"]
    assert all(res == results[0] for res in results)
    bad = await asyncio.gather(*(r.resolve("x.invalid") for _ in range(5)),
                               return_exceptions=True)
    assert gai.calls == ["localhost", "x.invalid"]
    assert all(isinstance(e, ResolveError) for e in bad)


@on_both_loops
async def test_cancelled_waiter_does_not_cancel_the_shared_lookup():
    gai = CountingGai(delay=0.1)
    r = Resolver(getaddrinfo=gai)
    first = asyncio.ensure_future(r.resolve("localhost"))
    second = asyncio.ensure_future(r.resolve("localhost"))
    await asyncio.sleep(0.01)
    first.cancel()
    assert "127.0.0.1" in await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(gai.calls) == 1


@on_both_loops
async def test_timeout_is_a_504():
    gai = CountingGai(delay=1.0)
    r = Resolver(ResolverConfig(timeout=0.05), getaddrinfo=gai)
    with pytest.raises(ResolveError) as exc:
        await r.resolve("localhost")
    assert exc.value.status == 504 and "timed out" in exc.value.reason


@on_both_loops
async def test_cache_is_bounded():
    clock = Clock()
    r = Resolver(ResolverConfig(max_entries=3), clock=clock)
    for i in range(10):
        with pytest.raises(ResolveError):
            await r.resolve(f"n{i}.invalid")
    assert len(r._cache) == 3
    assert set(r._cache) == {"n7.invalid", "n8.invalid", "n9.invalid"}  # oldest went first
    r.clear()
    assert not r._cache


@pytest.mark.parametrize("kwargs, field", [
    (dict(positive_ttl=-1), "positive_ttl"),
    (dict(negative_ttl="5"), "negative_ttl"),
    (dict(timeout=0), "timeout"),
    (dict(max_entries=0), "max_entries"),
    (dict(max_entries=True), "max_entries"),
    (dict(family="inet"), "family"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        ResolverConfig(**kwargs)


def test_gai_error_codes_have_reasons():
    from fastproxy.forward.resolver import _GAI_REASONS
    assert _GAI_REASONS[socket.EAI_NONAME] == "name not found"
    assert "temporary" in _GAI_REASONS[socket.EAI_AGAIN]



def test_module_doc_toml_example_builds_the_config():
    import textwrap
    import tomllib
    import fastproxy.forward.resolver as module
    doc = module.__doc__
    snippet = textwrap.dedent(doc[doc.index("::\n", doc.index("Configuration (")) + 3:])
    config = ResolverConfig.from_table(tomllib.loads(snippet)["forward"]["resolver"])
    assert config == ResolverConfig()  # the example shows the defaults


def test_from_table_reads_durations_and_names_unknown_keys():
    c = ResolverConfig.from_table({"positive_ttl": "1m", "negative_ttl": 2, "timeout": "250ms"})
    assert (c.positive_ttl, c.negative_ttl, c.timeout) == (60.0, 2, 0.25)
    with pytest.raises(ValueError, match=r"^timeout: expected a duration"):
        ResolverConfig.from_table({"timeout": "soon"})
    with pytest.raises(ValueError, match=r"^ttl: unknown key"):
        ResolverConfig.from_table({"ttl": 5})
    with pytest.raises(ValueError, match=r"^expected a table"):
        ResolverConfig.from_table(["x"])
