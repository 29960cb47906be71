"""Micro-benchmark: the per-request cost of the forward-mode policy modules.

What the request path pays per request for each decision (ACL both phases, host
normalisation, cached authentication, anonymity plan, rate limit, cached DNS answer),
and, where a natural peer exists, the same work done the obvious way in the same run:
stdlib `ipaddress` membership for the special-range check, an `fnmatch` loop for host
patterns, and the uncached work the caches avoid (scrypt, getaddrinfo).

    python -m bench.micro_forward [--quick]

ratio = peer ns / ours ns (higher is better for us).

    python -m bench.micro_forward --connect [--tunnels N] [--concurrency C] [--repeats R]

measures CONNECT setup instead, over loopback: fastproxy (forward mode, one worker, pinned to
core 0) and a tiny echo target and the asyncio client (core 1). Each tunnel is a new
connection: CONNECT, 200, 4 bytes there and back through the tunnel, close. It prints
tunnels per proxy CPU-second (the proxy's user+system time), the median of the repeats.
Wrap it in `flock /work/notes/bench.lock` on a shared machine.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import fnmatch
import ipaddress
import socket
import sys
import time

from bench.micro import best_ns, table
from fastproxy.addresses import SPECIAL_SET, address_key
from fastproxy.forward.acl import Acl, AclConfig, AclRule, HostPatterns
from fastproxy.forward.anonymity import AnonymityConfig, Anonymizer
from fastproxy.forward.auth import AuthConfig, Authenticator, hash_password
from fastproxy.limits import RequestRateLimiter
from fastproxy.forward.resolver import Resolver, normalize_host

GET = (
    b"GET http://en.wikipedia.org/wiki/Special:Search?search=proxy HTTP/1.1\r\n"
    b"Host: en.wikipedia.org\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Proxy-Connection: keep-alive\r\n"
    b"Proxy-Authorization: Basic YWxpY2U6d29uZGVybGFuZA==\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"\r\n"
)


class _Request:
    """The parser Request surface the anonymizer reads, when fastproxy._http is absent."""

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.version = 11
        self._fields = [tuple(v.strip() for v in line.split(b":", 1))
                        for line in head.split(b"\r\n")[1:] if line]

    def get(self, name, default=None):
        return next((v for n, v in self._fields if n.lower() == name), default)

    def get_all(self, name):
        return [v for n, v in self._fields if n.lower() == name]


def _request():
    try:
        from fastproxy._http import RequestParser
        return RequestParser().feed(GET), "fastproxy._http"
    except ImportError:
        return _Request(GET), "stand-in"




RULES = (
    AclRule("deny", name="ads", hosts=(".doubleclick.net", ".ads.example", "tracker*.example")),
    AclRule("deny", name="exe", url=r"\.exe$"),
    AclRule("deny", name="smtp", ports=(25, 465, 587)),
    AclRule("deny", name="writes", methods=("DELETE",), hosts=(".corp.example",)),
    AclRule("allow", name="partners", clients=("198.51.100.0/24",)),
    AclRule("deny", name="blocked", hosts=("evil.example", "malware.example", "phish.example")),
    AclRule("deny", name="net", dest=("203.0.113.0/24",)),
    AclRule("allow", name="lan", clients=("10.0.0.0/8", "192.168.0.0/16")),
)

PATTERNS = [".doubleclick.net", ".ads.example", "tracker*.example", "evil.example",
            "malware.example", "phish.example", ".corp.example", "cdn?.example",
            ".googlesyndication.com", "*.adnxs.com"]


def run(quick: bool = False) -> list[dict]:
    """Rows of ns per call (ours and, where there is one, the peer)."""
    loops = 2_000 if quick else 50_000
    repeats = 3 if quick else 7
    rows: list[dict] = []

    def row(name, ours, peer=None, peer_fn=None, peer_loops=None, **extra):
        ns = best_ns(ours, loops, repeats)
        r = dict(name=name, ours_ns=round(ns), peer=peer, peer_ns=None, ratio=None, **extra)
        if peer_fn is not None:
            pns = best_ns(peer_fn, peer_loops or loops, repeats if peer_loops is None else 1)
            r.update(peer_ns=round(pns), ratio=round(pns / ns, 2))
        rows.append(r)

    # Special-range check for one address (the destination guard).
    addr = "93.184.215.14"
    nets = [n for n, _ in __import__("fastproxy.addresses", fromlist=["_SPECIAL_NETS"])._SPECIAL_NETS]

    def ours_special(n):
        for _ in range(n):
            SPECIAL_SET.contains(address_key(addr))

    def peer_special(n):
        for _ in range(n):
            a = ipaddress.ip_address(addr)
            any(a in net for net in nets)

    row("special-range check (public IPv4)", ours_special, "stdlib ipaddress", peer_special)

    hp = HostPatterns(PATTERNS)
    host = "upload.wikimedia.org"

    def ours_hosts(n):
        for _ in range(n):
            hp.match(host)

    def peer_hosts(n):
        for _ in range(n):
            any(fnmatch.fnmatchcase(host, p if not p.startswith(".") else "*" + p) or
                host == p[1:] for p in PATTERNS)

    row("host patterns, 10, no match", ours_hosts, "fnmatch loop", peer_hosts)

    plain = Acl(AclConfig())
    ruled = Acl(AclConfig(rules=RULES))

    def acl_fn(acl, method=b"GET", port=80):
        def fn(n):
            for _ in range(n):
                d = acl.check_request("192.168.1.20", b"en.wikipedia.org", port, method,
                                      b"http://en.wikipedia.org/wiki/Special:Search")
                acl.check_address(d, addr)
        return fn

    row("acl both phases, no rules", acl_fn(plain))
    row("acl both phases, 8 rules (dest rule pending)", acl_fn(ruled))
    row("acl both phases, CONNECT, 8 rules", acl_fn(ruled, b"CONNECT", 443))

    def norm(n):
        for _ in range(n):
            normalize_host(b"en.wikipedia.org")

    row("normalize_host (seen before)", norm)

    users = {"alice": hash_password("wonderland")}
    auth = Authenticator(AuthConfig(users=users))
    value = b"Basic " + base64.b64encode(b"alice:wonderland")
    auth.verify(value)

    def auth_hit(n):
        for _ in range(n):
            auth.check_cached(value)

    def auth_miss(n):
        for _ in range(n):
            auth._compute(value)

    row("auth check_cached (hit)", auth_hit, "scrypt verify (N=2^15)", auth_miss,
        peer_loops=3)

    req, source = _request()
    for level in ("anonymous", "transparent", "elite"):
        anon = Anonymizer(AnonymityConfig(level=level))

        def plan(n, anon=anon):
            for _ in range(n):
                anon.plan(req, "192.168.1.20", "en.wikipedia.org")

        row(f"anonymity plan, {level}", plan, request=source)

    rules = Anonymizer(AnonymityConfig(rules=(
        {"hosts": [".tracker.example"], "remove": ["Cookie"]},
        {"set": {"User-Agent": "Mozilla/5.0 (compatible)"}})))

    def plan_rules(n):
        for _ in range(n):
            rules.plan(req, "192.168.1.20", "en.wikipedia.org")

    row("anonymity plan, anonymous + 2 rules", plan_rules, request=source)

    rl = RequestRateLimiter(rate=1e9, burst=10 ** 9)

    def limit(n):
        for _ in range(n):
            rl.check("192.168.1.20")

    row("rate limit check", limit)

    resolver = Resolver()
    asyncio.run(resolver.resolve("localhost"))

    def cached(n):
        for _ in range(n):
            resolver.cached("localhost")

    def gai(n):
        for _ in range(n):
            socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)

    row("resolver cached answer", cached, "getaddrinfo(localhost)", gai, peer_loops=200)
    return rows




def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer loops (a smoke run)")
    parser.add_argument("--connect", action="store_true",
                        help="measure CONNECT setups per proxy CPU-second instead")
    parser.add_argument("--tunnels", type=int, default=5000, help="tunnels per repeat (--connect)")
    parser.add_argument("--concurrency", type=int, default=16, help="tunnels at a time (--connect)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats (--connect)")
    args = parser.parse_args(argv)
    if args.connect:
        if not 1 <= args.tunnels <= 200_000 or not 1 <= args.concurrency <= 256 \
                or not 1 <= args.repeats <= 10:
            parser.error("--tunnels 1-200000, --concurrency 1-256, --repeats 1-10")
        return connect_main(args.tunnels, args.concurrency, args.repeats)
    print(table(run(args.quick)))
    print(f"\nratio = peer ns / ours ns (higher is better for us); python {sys.version.split()[0]}")
    return 0


# -- CONNECT setup under load ----------------------------------------------------------

async def _echo(reader, writer) -> None:
    try:
        data = await reader.read(64)
        writer.write(data)
        await writer.drain()
    finally:
        writer.close()


async def _one_tunnel(proxy_port: int, target_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    try:
        writer.write(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
                     % (target_port, target_port))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"CONNECT answered {head[:40]!r}")
        writer.write(b"ping")
        if await asyncio.wait_for(reader.readexactly(4), 10) != b"ping":
            raise RuntimeError("the tunnel did not echo")
    finally:
        writer.close()


async def _tunnels(proxy_port: int, target_port: int, n: int, concurrency: int) -> None:
    left = [n]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            await _one_tunnel(proxy_port, target_port)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def connect_main(tunnels: int, concurrency: int, repeats: int) -> int:
    """CONNECT setups per proxy CPU-second through fastproxy (this Python's package)."""
    import os
    import subprocess
    from bench.procs import free_port, pinned, tree_cpu_seconds

    async def main() -> list[tuple[float, float]]:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0, backlog=1024)
        target_port = server.sockets[0].getsockname()[1]
        port = free_port()
        cmd = pinned([sys.executable, "-P", "-m", "fastproxy", "serve", "--listen",
                      f"127.0.0.1:{port}", "--mode", "forward", "--allow-private",
                      "--connect-ports", str(target_port), "--workers", "1"], 0)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        results = []
        try:
            for _ in range(100):
                try:
                    await _one_tunnel(port, target_port)
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            else:
                raise RuntimeError("fastproxy did not start: " + proc.stderr.read(500).decode())
            await _tunnels(port, target_port, 200, concurrency)   # warm up
            for _ in range(repeats):
                cpu0, t0 = tree_cpu_seconds(proc.pid), time.monotonic()
                await _tunnels(port, target_port, tunnels, concurrency)
                results.append((tree_cpu_seconds(proc.pid) - cpu0, time.monotonic() - t0))
        finally:
            proc.terminate()
            proc.wait(10)
            server.close()
        return results

    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    results = asyncio.run(main())
    rates = sorted(tunnels / cpu for cpu, _wall in results if cpu > 0)
    for cpu, wall in results:
        print(f"{tunnels} tunnels in {wall:.2f}s, proxy CPU {cpu:.2f}s: "
              f"{tunnels / cpu if cpu else float('nan'):,.0f} per proxy CPU-second")
    if rates:
        print(f"median: {rates[len(rates) // 2]:,.0f} CONNECT setups per proxy CPU-second "
              f"(c{concurrency})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
