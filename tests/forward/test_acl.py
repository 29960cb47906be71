"""ACL: every rule kind, first-match order, the safe defaults, the two phases, IPv6, config errors."""
import asyncio

import pytest

from fastproxy.forward.acl import (
    DEFAULT, DEFAULT_CLIENTS, DEFAULT_CONNECT_PORTS, DEFAULT_HTTP_PORTS, DEFAULT_PRIVATE,
    Acl, AclConfig, AclRule, CidrSet, HostPatterns, PortSet, address_key, special_range,
)
from fastproxy.forward.resolver import HostError, Resolver, normalize_host

PUBLIC = "93.184.215.14"      # an ordinary public address (never connected to in these tests)
PUBLIC6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"
CLIENT = "192.168.1.10"


def acl(*rules, **kw):
    return Acl(AclConfig(rules=tuple(rules), **kw))


def decide(a, host="example.com", addr=PUBLIC, port=80, method="GET", client=CLIENT, url=None):
    url = url if url is not None else (f"{host}:{port}" if method == "CONNECT"
                                       else f"http://{host}:{port}/")
    return a.check(client, host, port, method, addr, url)


# --- rule kinds -----------------------------------------------------------------------

def test_no_rules_allows_public_destinations_for_private_clients():
    d = decide(acl())
    assert d.allow and d.final and d.rule == DEFAULT and d.index == -1


def test_default_action_deny():
    d = decide(acl(default_action="deny"))
    assert not d.allow and d.rule == DEFAULT and "default action" in d.reason


def test_clients_rule_v4_and_v6():
    a = acl(AclRule("deny", name="lab", clients=("10.9.0.0/16", "fd00:9::/32")))
    assert decide(a, client="10.9.3.4").rule == "lab"
    assert not decide(a, client="fd00:9::5").allow
    assert decide(a, client="::ffff:10.9.3.4").rule == "lab"  # dual-stack listener form
    assert decide(a, client="10.8.0.1").allow
    assert decide(a, client="fd00:8::1").allow


def test_hosts_exact_suffix_wildcard():
    a = acl(AclRule("deny", name="exact", hosts=("bad.example",)),
            AclRule("deny", name="suffix", hosts=(".ads.example",)),
            AclRule("deny", name="wild", hosts=("tracker*.example", "cdn?.t.example")))
    assert decide(a, host="bad.example").rule == "exact"
    assert decide(a, host="BAD.Example.").rule == "exact"       # normalised before matching
    assert decide(a, host="sub.bad.example").allow              # exact is exact
    assert decide(a, host="ads.example").rule == "suffix"       # the domain itself
    assert decide(a, host="x.y.ads.example").rule == "suffix"   # and every subdomain
    assert decide(a, host="notads.example").allow               # label boundary respected
    assert decide(a, host="tracker42.example").rule == "wild"
    assert decide(a, host="cdn1.t.example").rule == "wild"
    assert decide(a, host="cdn12.t.example").allow
    assert decide(a, host="example.com").allow


def test_host_rule_sees_numeric_ip_spellings_as_dotted_quads():
    a = acl(AclRule("deny", name="no-lo", hosts=("127.0.0.1", "[::1]")), allow_private=True)
    for spelling in ("127.0.0.1", "2130706433", "0x7f.1", "127.1", "0177.0.0.1"):
        assert decide(a, host=spelling, addr="127.0.0.1").rule == "no-lo", spelling
    assert decide(a, host="[::1]", addr="::1").rule == "no-lo"
    assert decide(a, host="::1", addr="::1").rule == "no-lo"


def test_malformed_host_is_a_400():
    with pytest.raises(HostError) as exc:
        acl().check_request(CLIENT, "bad host", 80, "GET")
    assert exc.value.status == 400


def test_dest_rule_v4_and_v6():
    a = acl(AclRule("deny", name="net", dest=("203.0.113.0/24", "2001:db8::/32")))
    assert decide(a, addr="203.0.113.77").rule == "net"
    assert decide(a, addr="2001:db8::1").rule == "net"
    assert decide(a, addr="::ffff:203.0.113.77").rule == "net"   # IPv4-mapped
    assert decide(a, addr="64:ff9b::cb00:714d").rule == "net"    # NAT64 of 203.0.113.77
    assert decide(a, addr="203.0.114.1").allow
    assert decide(a, addr=PUBLIC6).allow


def test_ports_numbers_and_ranges():
    a = acl(AclRule("deny", name="p", ports=(8080, "9000-9100")))
    assert decide(a, port=8080).rule == "p"
    assert decide(a, port=9000).rule == "p" and decide(a, port=9100).rule == "p"
    assert decide(a, port=9101).allow and decide(a, port=80).allow


def test_methods_match_case_insensitively():
    a = acl(AclRule("deny", name="ro", methods=("DELETE", "put")))
    assert decide(a, method="DELETE").rule == "ro"
    assert decide(a, method=b"delete").rule == "ro"  # origins that fold case get no bypass
    assert decide(a, method="PUT").rule == "ro"
    assert decide(a, method=b"GET").allow


def test_url_regex():
    a = acl(AclRule("deny", name="exe", url=r"\.exe(\?|$)"),
            AclRule("deny", name="admin", url=r"(?i)^http://[^/]+/admin/"))
    assert decide(a, url="http://example.com/setup.exe").rule == "exe"
    assert decide(a, url=b"http://example.com/setup.exe?x=1").rule == "exe"
    assert decide(a, url="http://example.com/ADMIN/x").rule == "admin"
    assert decide(a, url="http://example.com/setup.exe.txt").allow
    assert decide(a, url="http://example.com/public/admin/").allow


def test_conditions_combine_with_and():
    a = acl(AclRule("deny", name="combo", clients=("10.0.0.0/8",), hosts=(".example.com",),
                    ports=(80,), methods=("POST",), url="/upload"))
    hit = dict(client="10.1.1.1", host="www.example.com", port=80, method="POST",
               url="http://www.example.com/upload")
    assert decide(a, **hit).rule == "combo"
    for change in (dict(client="192.168.0.1"), dict(host="example.org"), dict(port=8080),
                   dict(method="GET"), dict(url="http://www.example.com/other")):
        assert decide(a, **{**hit, **change}).allow, change


# --- order ----------------------------------------------------------------------------

def test_first_match_wins():
    allow_first = acl(AclRule("allow", name="a", hosts=(".example.com",)),
                      AclRule("deny", name="d", hosts=("www.example.com",)))
    assert decide(allow_first, host="www.example.com").rule == "a"
    deny_first = acl(AclRule("deny", name="d", hosts=("www.example.com",)),
                     AclRule("allow", name="a", hosts=(".example.com",)))
    d = decide(deny_first, host="www.example.com")
    assert not d.allow and d.rule == "d" and d.index == 0
    assert decide(deny_first, host="api.example.com").rule == "a"


def test_whitelist_style_config():
    a = acl(AclRule("allow", name="ok", hosts=(".example.org",)), default_action="deny")
    assert decide(a, host="www.example.org").allow
    assert decide(a, host="example.net").rule == DEFAULT


def test_unnamed_rules_are_named_by_position():
    a = acl(AclRule("allow", hosts=("x.example",)), AclRule("deny"))
    assert decide(a, host="y.example").rule == "rules[1]"
    assert decide(a, host="y.example").index == 1


# --- two phases -----------------------------------------------------------------------

def test_phase_one_denies_without_dns():
    a = acl(AclRule("deny", name="d", hosts=(".blocked.example",)))
    d = a.check_request(CLIENT, "x.blocked.example", 80, "GET", "http://x.blocked.example/")
    assert not d.allow and d.final and d.rule == "d"


def test_phase_one_allow_is_provisional_until_the_address_is_checked():
    a = acl()
    d = a.check_request(CLIENT, "example.com", 80, "GET")
    assert d.allow and not d.final
    assert a.check_address(d, PUBLIC).final


def test_dns_rebinding_cannot_reach_private_addresses():
    # A host rule allowed the name; it then resolves to loopback / metadata: still refused,
    # because the destination check runs for the address actually connected.
    a = acl(AclRule("allow", name="trusted", hosts=("rebind.example",)), default_action="deny")
    d = a.check_request(CLIENT, "rebind.example", 80, "GET")
    assert d.allow and not d.final
    assert a.check_address(d, PUBLIC).rule == "trusted"
    for addr in ("127.0.0.1", "169.254.169.254", "::1", "::ffff:127.0.0.1", "10.0.0.1"):
        final = a.check_address(d, addr)
        assert not final.allow and final.rule == DEFAULT_PRIVATE, addr


def test_dest_rules_are_decided_in_order_in_phase_two():
    a = acl(AclRule("deny", name="bad-net", dest=("198.51.100.0/24",)),
            AclRule("allow", name="good-net", dest=("203.0.113.0/24",)),
            AclRule("allow", name="docs", hosts=(".example.com",)),
            default_action="deny")
    d = a.check_request(CLIENT, "www.example.com", 80, "GET")
    assert d.allow and not d.final
    assert a.check_address(d, "198.51.100.9").rule == "bad-net"
    assert a.check_address(d, "203.0.113.9").rule == "good-net"
    assert a.check_address(d, PUBLIC).rule == "docs"
    other = a.check_request(CLIENT, "example.net", 80, "GET")
    assert other.allow  # the allow-by-dest rule may still match: wait for the address
    assert a.check_address(other, "203.0.113.9").rule == "good-net"
    assert a.check_address(other, PUBLIC).rule == DEFAULT


def test_phase_one_denies_when_every_candidate_denies():
    a = acl(AclRule("deny", name="net", dest=("203.0.113.0/24",)), default_action="deny")
    d = a.check_request(CLIENT, "example.com", 80, "GET")
    assert not d.allow and d.rule == DEFAULT


def test_check_address_of_a_denial_stays_denied():
    a = acl(default_action="deny")
    d = a.check_request(CLIENT, "example.com", 80, "GET")
    assert a.check_address(d, PUBLIC) is d


def test_common_path_allocates_no_decision():
    a = acl(AclRule("deny", hosts=(".ads.example",)))
    d1 = a.check("10.0.0.1", "example.com", 80, "GET", PUBLIC)
    d2 = a.check("10.0.0.2", "example.org", 443, "CONNECT", PUBLIC)
    assert d1 is d2  # preallocated per rule


# --- safe defaults ----------------------------------------------------------------------

REFUSED = [
    "127.0.0.1", "127.255.255.254",            # loopback
    "10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.0.1",   # RFC 1918
    "169.254.169.254", "169.254.0.1",          # link-local, cloud metadata
    "0.0.0.0", "0.1.2.3",                      # unspecified / this network
    "100.64.0.1", "100.100.100.200",           # CGNAT (Alibaba metadata)
    "224.0.0.1", "239.255.255.250",            # multicast
    "255.255.255.255", "240.0.0.1",            # broadcast / reserved
    "192.0.0.192", "198.18.0.1",
    "::1", "::",                               # IPv6 loopback, unspecified
    "fc00::1", "fd00:ec2::254",                # RFC 4193 (AWS IPv6 metadata)
    "fe80::1", "ff02::1", "fec0::1", "::127.0.0.1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.1.2.3",   # IPv4-mapped
    "64:ff9b::a9fe:a9fe",                      # NAT64 of 169.254.169.254
    "2002:a9fe:a9fe::1",                       # 6to4 of 169.254.169.254
]


@pytest.mark.parametrize("addr", REFUSED)
def test_private_destinations_refused_by_default(addr):
    d = decide(acl(), addr=addr)
    assert not d.allow and d.final and d.rule == DEFAULT_PRIVATE
    assert addr in d.reason and special_range(addr) in d.reason


@pytest.mark.parametrize("addr", REFUSED)
def test_allow_private_switch(addr):
    assert decide(acl(allow_private=True), addr=addr).allow


@pytest.mark.parametrize("addr", [PUBLIC, "8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1",
                                  "192.169.0.1", PUBLIC6, "2001:4860:4860::8888"])
def test_public_destinations_allowed(addr):
    assert decide(acl(), addr=addr).allow
    assert special_range(addr) is None


def test_metadata_label():
    assert "metadata" in special_range("169.254.169.254")
    assert "RFC 1918" in special_range("::ffff:192.168.1.1")


def test_explicit_dest_rule_opens_only_its_private_network():
    a = acl(AclRule("allow", name="intranet", dest=("10.20.0.0/16",)))
    assert decide(a, addr="10.20.1.1").rule == "intranet"
    assert decide(a, addr="::ffff:10.20.1.1").allow
    assert decide(a, addr="10.21.0.1").rule == DEFAULT_PRIVATE
    assert decide(a, addr="169.254.169.254").rule == DEFAULT_PRIVATE
    metadata = acl(AclRule("allow", name="md", dest=("169.254.169.254/32",)))
    assert decide(metadata, addr="169.254.169.254").allow


def test_wide_dest_rule_does_not_open_private_ranges():
    a = acl(AclRule("allow", name="world", dest=("0.0.0.0/0", "::/0")), default_action="deny")
    assert decide(a, addr=PUBLIC).rule == "world"
    for addr in ("169.254.169.254", "127.0.0.1", "10.0.0.1", "::1", "fd00::1"):
        assert decide(a, addr=addr).rule == DEFAULT_PRIVATE, addr


def test_host_rule_does_not_open_private_ranges():
    a = acl(AclRule("allow", name="lo", hosts=("localhost",)))
    assert decide(a, host="localhost", addr="127.0.0.1").rule == DEFAULT_PRIVATE
    assert decide(a, host="127.0.0.1", addr="127.0.0.1").rule == DEFAULT_PRIVATE


@pytest.mark.parametrize("client", ["127.0.0.1", "::1", "10.1.2.3", "172.20.0.1",
                                    "192.168.99.1", "fd12::1", "::ffff:192.168.1.1"])
def test_private_clients_served_by_default(client):
    assert decide(acl(), client=client).allow


@pytest.mark.parametrize("client", ["8.8.8.8", "2001:4860::1", "100.64.0.1", "169.254.1.1",
                                    "64:ff9b::a00:1", "2002:a00:1::1", "::ffff:8.8.8.8"])
def test_other_clients_refused_by_default(client):
    d = decide(acl(), client=client)
    assert not d.allow and d.rule == DEFAULT_CLIENTS


def test_public_clients_need_an_explicit_clients_rule():
    a = acl(AclRule("allow", name="any-host", hosts=(".example.com",)))
    assert decide(a, client="8.8.8.8", host="www.example.com").rule == DEFAULT_CLIENTS
    opened = acl(AclRule("allow", name="partners", clients=("198.51.100.0/24",)))
    assert decide(opened, client="198.51.100.4").rule == "partners"
    assert decide(opened, client="198.51.101.4").rule == DEFAULT_CLIENTS
    # The clients rule may itself depend on the destination: decided in phase two.
    by_dest = acl(AclRule("allow", name="p", clients=("198.51.100.0/24",), dest=(PUBLIC + "/32",)))
    d = by_dest.check_request("198.51.100.4", "example.com", 80, "GET")
    assert d.allow and not d.final
    assert by_dest.check_address(d, PUBLIC).rule == "p"
    assert by_dest.check_address(d, "8.8.8.8").rule == DEFAULT_CLIENTS


def test_connect_only_to_443_by_default():
    a = acl()
    assert decide(a, method="CONNECT", port=443).allow
    for port in (80, 22, 25, 8443):
        d = decide(a, method="CONNECT", port=port)
        assert not d.allow and d.rule == DEFAULT_CONNECT_PORTS
    b = acl(connect_ports=(443, "8443-8444"))
    assert decide(b, method="CONNECT", port=8444).allow
    assert decide(b, method="connect", port=22).rule == DEFAULT_CONNECT_PORTS


def test_http_ports_guard():
    a = acl()
    for port in (80, 443, 1025, 8080, 65535):
        assert decide(a, port=port).allow, port
    for port in (22, 25, 110, 1024):
        d = decide(a, port=port)
        assert not d.allow and d.rule == DEFAULT_HTTP_PORTS, port
    assert decide(acl(http_ports=("*",)), port=25).allow


# --- with the real resolver -------------------------------------------------------------

def test_resolved_localhost_is_refused_then_allowed_with_allow_private():
    async def main():
        addrs = await Resolver().resolve(normalize_host(b"LOCALHOST"))
        for config, allowed in ((AclConfig(), False), (AclConfig(allow_private=True), True)):
            a = Acl(config)
            d = a.check_request("127.0.0.1", b"LOCALHOST", 8080, b"GET", b"http://localhost:8080/")
            assert d.allow
            assert all(a.check_address(d, addr).allow is allowed for addr in addrs)
    asyncio.run(main())


# --- building blocks ------------------------------------------------------------------------

def test_cidrset_merges_and_bisects():
    import ipaddress
    s = CidrSet(ipaddress.ip_network(n) for n in
                ("10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "192.0.2.0/32", "2001:db8::/64"))
    assert "10.0.1.255" in s and "10.0.0.0" in s and "192.0.2.0" in s
    assert "10.0.2.0" not in s and "192.0.2.1" not in s and "9.255.255.255" not in s
    assert "2001:db8::ffff" in s and "2001:db8:0:1::" not in s
    assert len(s._s4) == 2  # the adjacent /24s and the nested /25 merged


def test_address_key_rejects_garbage():
    with pytest.raises(ValueError):
        address_key("example.com")


def test_hostpatterns_and_portset_directly():
    hp = HostPatterns(["Exact.Example", ".Suffix.Example", "w*.example"])
    assert hp.match("exact.example") and hp.match("a.suffix.example") and hp.match("www.example")
    assert not hp.match("x.exact.example") and not hp.match("example")
    ps = PortSet([1, "5-6", "65535"])
    assert ps.has(1) and ps.has(5) and ps.has(6) and ps.has(65535)
    assert not ps.has(0) and not ps.has(2) and not ps.has(65536) and not ps.has(-1)


# --- configuration errors ----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(rules=[{"action": "permit"}]), r"^rules\[0\]\.action: expected"),
    (dict(rules=[{"hosts": ["x"]}]), r"^rules\[0\]\.action: missing"),
    (dict(rules=[{"action": "deny", "client": ["10.0.0.0/8"]}]), r"^rules\[0\]\.client: unknown key"),
    (dict(rules=[{"action": "deny", "clients": ["10.0.0.1/8"]}]),
     r"^rules\[0\]\.clients\[0\]: .*host bits set \(did you mean 10\.0\.0\.0/8\?\)"),
    (dict(rules=[{"action": "deny", "dest": ["nonsense"]}]), r"^rules\[0\]\.dest\[0\]:"),
    (dict(rules=[{"action": "deny", "dest": "10.0.0.0/8"}]), r"^rules\[0\]\.dest: expected a list"),
    (dict(rules=[{"action": "deny"}, {"action": "deny", "ports": [70000]}]), r"^rules\[1\]\.ports\[0\]:"),
    (dict(rules=[{"action": "deny", "ports": ["90-80"]}]), r"^rules\[0\]\.ports\[0\]:"),
    (dict(rules=[{"action": "deny", "ports": [True]}]), r"^rules\[0\]\.ports\[0\]:"),
    (dict(rules=[{"action": "deny", "methods": ["GE T"]}]), r"^rules\[0\]\.methods\[0\]:"),
    (dict(rules=[{"action": "deny", "url": "(unclosed"}]), r"^rules\[0\]\.url: invalid regular"),
    (dict(rules=[{"action": "deny", "hosts": ["bad host"]}]), r"^rules\[0\]\.hosts\[0\]:"),
    (dict(rules=[{"action": "deny", "hosts": [".10.0.0.1"]}]), r"^rules\[0\]\.hosts\[0\]: suffix"),
    (dict(rules=["deny all"]), r"^rules\[0\]: expected a table"),
    (dict(default_action="drop"), r"^default_action:"),
    (dict(allow_private="yes"), r"^allow_private:"),
    (dict(connect_ports=[0]), r"^connect_ports\[0\]:"),
    (dict(http_ports=["x"]), r"^http_ports\[0\]:"),
])
def test_config_errors_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AclConfig(**kwargs)


def test_config_from_toml_tables():
    import tomllib
    cfg = tomllib.loads('''
        default_action = "deny"
        connect_ports = [443, "8443-8444"]
        [[rules]]
        name = "intranet"
        action = "allow"
        clients = ["10.0.0.0/8"]
        dest = ["10.20.0.0/16"]
        ports = [80, "8000-8999"]
        methods = ["GET", "HEAD"]
        url = "^http://[^/]+/public/"
    ''')
    a = Acl(AclConfig(**cfg))
    ok = dict(client="10.1.1.1", host="wiki.corp", addr="10.20.0.5", port=8080,
              url="http://wiki.corp:8080/public/x")
    assert decide(a, **ok).rule == "intranet"
    assert decide(a, **{**ok, "method": "POST"}).rule == DEFAULT


# --- the compiled ACL against a plain reference evaluation -------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402
import ipaddress  # noqa: E402
import fnmatch  # noqa: E402
import re  # noqa: E402

from fastproxy.addresses import within_special as _within_special  # noqa: E402

CLIENTS = ["10.0.0.1", "8.8.8.8", "::1", "2001:db8::1", "192.168.1.1", "::ffff:8.8.8.8"]
HOSTS = ["a.example", "b.a.example", "c.example", "bee.example", "10.0.0.5", "x.test"]
ADDRS = ["93.184.215.14", "10.0.0.5", "169.254.169.254", "::1", "2001:db8::1",
         "::ffff:10.0.0.5", "8.8.4.4"]
URLS = ["http://a.example/", "http://a.example/x.exe", "a.example:443", "/relative"]

rule_st = st.builds(
    dict,
    action=st.sampled_from(["allow", "deny"]),
    clients=st.lists(st.sampled_from(["10.0.0.0/8", "8.8.8.0/24", "::/0", "0.0.0.0/0",
                                      "::ffff:0:0/96"]), max_size=2),
    hosts=st.lists(st.sampled_from([".a.example", "c.example", "*.example", "b*", "10.0.0.5"]),
                   max_size=2),
    dest=st.lists(st.sampled_from(["10.0.0.0/8", "169.254.169.254/32", "0.0.0.0/0",
                                   "2001:db8::/32", "93.184.0.0/16", "::1/128"]), max_size=2),
    ports=st.lists(st.sampled_from([80, "443-8080", 22]), max_size=2),
    methods=st.lists(st.sampled_from(["GET", "CONNECT", "POST"]), max_size=2),
    url=st.sampled_from(["", "", r"\.exe$", "^http://"]),
)


def reference(cfg, client, host, port, method, url, addr):
    """First match over all conditions at once, then the guards: the documented semantics."""
    host = normalize_host(host)
    ports = cfg.connect_ports if method == "CONNECT" else cfg.http_ports
    if not PortSet(ports).has(port):
        return False, None
    ip = ipaddress.ip_address(addr)
    v4 = (ip.ipv4_mapped or ip.sixtofour) if ip.version == 6 else None
    if ip.version == 6 and ip in ipaddress.ip_network("64:ff9b::/96"):
        v4 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    cip = ipaddress.ip_address(client)
    cv4 = cip.ipv4_mapped if cip.version == 6 else None

    def in_nets(nets, a, a4):
        return any(a in n for n in nets if n.version == a.version) or \
            (a4 is not None and any(a4 in n for n in nets if n.version == 4))

    matched = None
    for i, r in enumerate(cfg.rules):
        if r.clients and not in_nets([ipaddress.ip_network(c) for c in r.clients], cip, cv4):
            continue
        if r.hosts and not any(
                (p.startswith(".") and (host == p[1:] or host.endswith(p))) or
                (not p.startswith(".") and ("*" in p and fnmatch.fnmatchcase(host, p) or host == p))
                for p in r.hosts):
            continue
        if r.ports and not PortSet(r.ports).has(port):
            continue
        if r.methods and method.upper() not in r.methods:
            continue
        if r.url and not re.search(r.url, url):
            continue
        if r.dest and not in_nets([ipaddress.ip_network(d) for d in r.dest], ip, v4):
            continue
        matched = (r, r.name or f"rules[{i}]")
        break
    if matched is None:
        rule, name = AclRule(cfg.default_action), DEFAULT
    else:
        rule, name = matched
    if rule.action == "deny":
        return False, None
    private_clients = [ipaddress.ip_network(n) for n in
                       ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128",
                        "fc00::/7")]
    if not in_nets(private_clients, cip, cv4) and not rule.clients:
        return False, None
    if special_range(addr) and not cfg.allow_private:
        opened = [n for n in (ipaddress.ip_network(d) for d in rule.dest) if _within_special(n)]
        if not in_nets(opened, ip, v4):
            return False, None
    return True, name


@settings(max_examples=400, deadline=None)
@given(rules=st.lists(rule_st, max_size=6), default=st.sampled_from(["allow", "deny"]),
       allow_private=st.booleans(), client=st.sampled_from(CLIENTS),
       host=st.sampled_from(HOSTS), port=st.sampled_from([80, 443, 22, 8080]),
       method=st.sampled_from(["GET", "CONNECT", "post"]), url=st.sampled_from(URLS),
       addr=st.sampled_from(ADDRS))
def test_compiled_acl_agrees_with_reference(rules, default, allow_private, client, host, port,
                                            method, url, addr):
    cfg = AclConfig(rules=tuple(rules), default_action=default, allow_private=allow_private,
                    connect_ports=(443, 8080))
    a = Acl(cfg)
    got = a.check(client, host, port, method, addr, url)
    allow, name = reference(cfg, client, host, port, method, url, addr)
    assert got.allow == allow, (got, got.reason)
    if allow:
        assert got.rule == name and got.final


def test_decisions_stay_right_when_the_caches_roll_over():
    a = acl(AclRule("deny", name="bad", hosts=(".bad.example",)),
            AclRule("allow", name="net", dest=("10.20.0.0/16",)))
    for i in range(10_000):
        host = f"h{i}.bad.example" if i % 2 else f"h{i}.good.example"
        client = f"10.{i >> 8 & 255}.{i & 255}.1"
        d = a.check(client, host, 80 + (i % 3) * 1000 if i % 3 else 80, "GET",
                    "10.20.0.1" if i % 5 == 0 else PUBLIC)
        if i % 2:
            assert d.rule == "bad"
        else:
            assert d.allow and d.rule == ("net" if i % 5 == 0 else DEFAULT)
    assert len(a._host_cache) <= 4096 and len(a._client_cache) <= 4096


def test_module_doc_toml_example_builds_the_config():
    import textwrap
    import tomllib
    import fastproxy.forward.acl as module
    doc = module.__doc__
    snippet = textwrap.dedent(doc[doc.index("::\n", doc.index("Configuration (")) + 3:])
    config = AclConfig.from_table(tomllib.loads(snippet)["forward"]["acl"])
    assert config.rules[1].name == "intranet"


def test_from_table_names_unknown_keys():
    assert AclConfig.from_table({"allow_private": True}).allow_private
    with pytest.raises(ValueError, match=r"^rulez: unknown key"):
        AclConfig.from_table({"rulez": []})
