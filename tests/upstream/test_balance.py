"""Balancing policies behind one interface, the factory, and hash-key extraction."""
import re
from collections import Counter

import pytest
import xxhash

from fastproxy.upstream.balance import (
    POLICIES, Balancer, LeastConnBalancer, Random2Balancer,
    RoundRobinBalancer, eligible_servers, make_balancer, make_key_fn, parse_key_spec,
)
from fastproxy.upstream.balance.keys import cookie_value, origin_form
from fastproxy.upstream.group import Server


def pool(weights):
    return [Server(f"s{i}", 9000 + i, weight=w) for i, w in enumerate(weights)]


class Request:
    """Duck-typed like the parser's Request: .target and .get(lowercase name)."""

    def __init__(self, target, **headers):
        self.target = target
        self._headers = {k.replace("_", "-").encode(): v for k, v in headers.items()}

    def get(self, name):
        return self._headers.get(name)


H = xxhash.xxh3_64_intdigest

# --- the common interface ---------------------------------------------------------------


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_honours_the_interface(policy):
    servers = pool([1, 2, 3])
    balancer = make_balancer(policy, servers)
    assert isinstance(balancer, Balancer)
    assert balancer.policy == policy
    assert len(balancer) == 3 and set(balancer.servers) == set(servers)
    seen = Counter()
    for key in range(600):
        server = balancer.pick(H(str(key).encode()))
        assert server in servers
        seen[server] += 1
        balancer.acquire(server)
        balancer.release(server)
    assert set(seen) == set(servers)  # everybody gets traffic
    # exclude is honoured, and everything excluded means None
    for key in range(50):
        assert balancer.pick(key, exclude=servers[:2]) is servers[2]
        assert balancer.pick(key, exclude=(servers[0],)) is not servers[0]
        assert balancer.pick(key, exclude=servers) is None
    balancer.update(servers[1:])
    assert all(balancer.pick(k) in servers[1:] for k in range(100))
    balancer.update([])
    assert balancer.pick(1) is None
    assert make_balancer(policy, []).pick(0) is None


def test_only_maglev_uses_the_key():
    assert [name for name, (cls, _) in POLICIES.items() if cls.uses_key] == ["maglev"]


def test_factory_rejects_unknown_policies_and_options():
    with pytest.raises(ValueError, match="unknown policy 'fastest'"):
        make_balancer("fastest", pool([1]))
    with pytest.raises(ValueError, match="balance_factor: not an option of balance policy 'round_robin'"):
        make_balancer("round_robin", pool([1]), balance_factor=2)
    with pytest.raises(ValueError, match="balance_factor"):
        make_balancer("maglev", pool([1]), balance_factor=0.3)
    with pytest.raises(ValueError, match="seed"):
        make_balancer("random2", pool([1]), seed=-4)
    assert make_balancer("maglev", pool([1, 1]), table_size=1000).table_size == 1009


def test_eligible_servers_leave_out_unhealthy_and_ejected():
    a, b, c = pool([1, 1, 1])
    b.healthy = False
    c.ejected_until = 100.0
    assert eligible_servers([a, b, c], now=50.0) == [a]
    assert eligible_servers([a, b, c], now=100.0) == [a, c]


# --- smooth weighted round robin --------------------------------------------------------


def test_round_robin_is_smooth_like_nginx():
    a, b, c = servers = pool([5, 1, 1])
    balancer = RoundRobinBalancer(servers)
    picks = [balancer.pick() for _ in range(14)]
    # nginx's documented sequence for weights 5, 1, 1
    assert picks == [a, a, b, a, c, a, a] * 2


def test_round_robin_shares_follow_weights_exactly():
    servers = pool([3, 2, 1, 4])
    balancer = RoundRobinBalancer(servers)
    counts = Counter(balancer.pick() for _ in range(1000))
    assert [counts[s] for s in servers] == [300, 200, 100, 400]


def test_round_robin_skips_excluded_without_losing_its_turns():
    a, b, c = servers = pool([1, 1, 1])
    balancer = RoundRobinBalancer(servers)
    assert [balancer.pick(exclude=[b]) for _ in range(4)] == [a, c, a, c]
    counts = Counter(balancer.pick() for _ in range(300))
    assert max(counts.values()) - min(counts.values()) <= 2


def test_round_robin_keeps_turns_of_survivors_on_update():
    servers = pool([1, 1, 1, 1])
    balancer = RoundRobinBalancer(servers)
    balancer.pick()
    balancer.update(servers[:3])
    counts = Counter(balancer.pick() for _ in range(300))
    assert set(counts) == set(servers[:3])
    assert max(counts.values()) - min(counts.values()) <= 2


# --- least connections ------------------------------------------------------------------


def test_least_conn_picks_fewest_in_flight_per_weight():
    a, b, c = servers = pool([1, 1, 2])
    balancer = LeastConnBalancer(servers)
    for server, n in ((a, 3), (b, 1), (c, 4)):
        for _ in range(n):
            balancer.acquire(server)
    # loads per weight: a 3, b 1, c 2
    assert balancer.pick() is b
    assert balancer.pick(exclude=[b]) is c
    balancer.acquire(b)
    balancer.acquire(b)
    assert balancer.pick() is c  # b now 3, c still 2


def test_least_conn_shares_ties_by_weight():
    servers = pool([2, 1, 1])
    balancer = LeastConnBalancer(servers)
    counts = Counter(balancer.pick() for _ in range(400))  # idle: everything ties
    assert [counts[s] for s in servers] == [200, 100, 100]


def test_least_conn_evens_out_concurrent_load():
    servers = pool([1, 1, 1, 1])
    balancer = LeastConnBalancer(servers)
    for _ in range(40):
        balancer.acquire(balancer.pick())
    assert balancer.in_flight() == [10, 10, 10, 10]
    assert [s.active for s in servers] == [10, 10, 10, 10]


# --- two random choices -----------------------------------------------------------------


def test_random2_prefers_the_less_loaded_of_two():
    a, b = servers = pool([1, 1])
    balancer = Random2Balancer(servers, None)
    for _ in range(5):
        balancer.acquire(a)
    assert all(balancer.pick() is b for _ in range(200))


def test_random2_draws_by_weight_when_idle():
    servers = pool([1, 3])
    balancer = make_balancer("random2", servers, seed=11)
    counts = Counter(balancer.pick() for _ in range(20_000))
    # Two distinct draws from a 2-server pool always cover both; idle ties go to the first draw.
    assert 0.70 <= counts[servers[1]] / 20_000 <= 0.80


def test_random2_is_repeatable_with_a_seed():
    servers = pool([1, 1, 1, 1, 1])
    one = make_balancer("random2", servers, seed=5)
    two = make_balancer("random2", servers, seed=5)
    assert [one.pick() for _ in range(50)] == [two.pick() for _ in range(50)]


def test_random2_spreads_concurrent_load():
    servers = pool([1] * 8)
    balancer = make_balancer("random2", servers, seed=3)
    for _ in range(800):
        balancer.acquire(balancer.pick())
    assert max(balancer.in_flight()) - min(balancer.in_flight()) <= 3


# --- hash keys --------------------------------------------------------------------------


def test_uri_and_path_keys():
    uri = make_key_fn("uri")
    path = make_key_fn("path")
    req = Request(b"/img/a.png?v=2")
    assert uri(req, "10.0.0.1") == H(b"/img/a.png?v=2")
    assert path(req, "10.0.0.1") == H(b"/img/a.png")
    assert path(Request(b"/img/a.png"), "x") == H(b"/img/a.png")
    # absolute-form (RFC 9112 3.2.2) hashes like the origin-form of the same request
    assert uri(Request(b"http://example.com/img/a.png?v=2"), "x") == H(b"/img/a.png?v=2")
    assert path(Request(b"http://example.com:8080/img/a.png?v=2"), "x") == H(b"/img/a.png")
    assert uri(Request(b"http://example.com"), "x") == H(b"/")
    assert uri(Request(b"http://example.com?q"), "x") == H(b"/?q")
    assert uri(Request(b"*"), "x") == H(b"*")


def test_origin_form():
    assert origin_form(b"/x") == b"/x"
    assert origin_form(b"https://h/x/y?z") == b"/x/y?z"
    assert origin_form(b"example.com:443") == b"example.com:443"


def test_client_ip_key():
    key = make_key_fn("client_ip")
    assert key(Request(b"/a"), "192.0.2.7") == H(b"192.0.2.7")
    assert key(Request(b"/a"), "2001:db8::1") == H(b"2001:db8::1")


def test_header_key_with_fallback():
    key = make_key_fn("header:X-Tenant")
    assert key(Request(b"/", x_tenant=b"acme"), "192.0.2.1") == H(b"acme")
    assert key(Request(b"/"), "192.0.2.1") == H(b"192.0.2.1")
    assert key(Request(b"/", x_tenant=b""), "192.0.2.1") == H(b"192.0.2.1")
    by_path = make_key_fn("header:x-tenant", fallback="path")
    assert by_path(Request(b"/p?q"), "192.0.2.1") == H(b"/p")


def test_cookie_key_with_fallback():
    key = make_key_fn("cookie:session")
    ip = "198.51.100.9"
    assert key(Request(b"/", cookie=b"session=abc"), ip) == H(b"abc")
    assert key(Request(b"/", cookie=b"a=1; session=abc; z=2"), ip) == H(b"abc")
    assert key(Request(b"/", cookie=b"xsession=no; session=yes"), ip) == H(b"yes")
    assert key(Request(b"/", cookie=b"xsession=no"), ip) == H(ip.encode())
    assert key(Request(b"/", cookie=b"Session=other"), ip) == H(ip.encode())  # case-sensitive
    assert key(Request(b"/", cookie=b"session="), ip) == H(ip.encode())
    assert key(Request(b"/"), ip) == H(ip.encode())


def test_cookie_value_parsing():
    assert cookie_value(b"a=1;b=2", b"b") == b"2"
    assert cookie_value(b"a=1;  b = 2 ", b"b") is None  # "b " is not the name "b"
    assert cookie_value(b"a=1; b=\"q v\"", b"b") == b'"q v"'
    assert cookie_value(b"ab=1", b"b") is None
    assert cookie_value(b"b=1=2; c=3", b"b") == b"1=2"


def test_same_key_same_server_through_the_full_path():
    servers = pool([1] * 6)
    balancer = make_balancer("maglev", servers)
    key = make_key_fn("cookie:sid")
    first = {sid: balancer.pick(key(Request(b"/", cookie=b"sid=" + sid), "1.1.1.1"))
             for sid in (b"u%d" % i for i in range(200))}
    again = {sid: balancer.pick(key(Request(b"/x", cookie=b"k=v; sid=" + sid), "2.2.2.2"))
             for sid in first}
    assert first == again
    assert len(set(first.values())) == 6


@pytest.mark.parametrize("spec", [
    "", "query", "header:", "header:bad name", "cookie:a;b", "uri:x", "header:ä", 7,
])
def test_bad_key_specs(spec):
    with pytest.raises(ValueError, match="hash_key"):
        make_key_fn(spec)


def test_fallback_must_always_exist():
    with pytest.raises(ValueError, match="hash_key_fallback"):
        make_key_fn("header:x", fallback="cookie:y")
    assert parse_key_spec(" Header:X-Id") == ("header", "X-Id")


# --- the compiled key helpers against plain-Python references ---------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def reference_cookie(header, name):
    for pair in header.split(b";"):
        key, eq, value = pair.strip(b" \t").partition(b"=")
        if eq and key == name:
            return value.strip(b" \t")
    return None


def reference_origin(target):
    if target[:1] == b"/" or target == b"*" or b"://" not in target:
        return target
    scheme, _, rest = target.partition(b":")
    if not rest.startswith(b"//") or not re.fullmatch(rb"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return target
    rest = rest[2:]
    for i, byte in enumerate(rest):
        if byte in b"/?":
            return rest[i:] if byte == 0x2F else b"/" + rest[i:]
    return b"/"


cookie_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\x00", b""))
piece = st.sampled_from([b"a", b"sid", b"=", b";", b" ", b"\t", b"x", b"sidx", b"1", b'"'])


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(piece, max_size=25), name=st.sampled_from([b"sid", b"a", b"x"]))
def test_cookie_value_matches_reference(parts, name):
    header = b"".join(parts)
    assert cookie_value(header, name) == reference_cookie(header, name)


@settings(max_examples=300, deadline=None)
@given(header=cookie_bytes, name=st.binary(min_size=1, max_size=5))
def test_cookie_value_survives_any_bytes(header, name):
    got = cookie_value(header, name)
    assert got is None or got in header


@settings(max_examples=400, deadline=None)
@given(target=st.lists(st.sampled_from([b"http", b"://", b":", b"/", b"?", b"h", b"*", b"q=1", b"+", b"1"]),
                       max_size=8).map(b"".join))
def test_origin_form_matches_reference(target):
    assert origin_form(target) == reference_origin(target)


def test_client_ip_may_be_bytes():
    assert make_key_fn("client_ip")(Request(b"/"), b"192.0.2.7") == H(b"192.0.2.7")
