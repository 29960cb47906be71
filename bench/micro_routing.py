"""Micro-benchmark of routing: nanoseconds per `Router.match` with 1,000 routes.

    python -m bench.micro_routing [--quick]

Tables of 1,000 routes (100 hosts x 10 prefixes, plus variants with wildcard hosts and
with 100 regex routes beside them) against the peer: a linear scan over the same routes
in precedence order (what the router did before the index, and what an ordered
`use_backend` list costs). Goal (issue 13): the host+prefix case does not grow with the
route count and never scans regexes.
"""
from __future__ import annotations

import argparse
import random
import sys
import timeit
from types import SimpleNamespace

from fastproxy.config.load import from_dict
from fastproxy.proxy.router import Router, normalise_host


def _router(routes: list[dict]) -> Router:
    cfg = from_dict({"listeners": [{"listen": "127.0.0.1:0", "upstream": "a", "routes": routes}],
                     "upstreams": {"a": {"servers": ["http://127.0.0.1:9"]}}})
    return Router(cfg.listeners[0], {"a": SimpleNamespace(name="a")})


def _scan(router: Router):
    """The peer: every route in precedence order, first match wins."""
    def rank(r):
        host = 0 if r.host is None else (len(r.host) if r.wildcard else 10_000)
        kind = 3 if r.exact is not None else (1 if r.regex is not None else 2)
        return (-host, -kind, -len(r.prefix), r.order)
    ordered = sorted(router.routes, key=rank)

    def match(host, target):
        host = normalise_host(host)
        path = target.partition(b"?")[0]
        for r in ordered:
            if r.matches(host, path):
                return r
        return router.default
    return match


def tables() -> dict[str, tuple[list[dict], list[tuple[bytes, bytes]]]]:
    """{name: (routes, requests)} of the benchmarked tables."""
    rnd = random.Random(13)
    prefixes = [f"/svc{i}/" for i in range(10)]
    exact_hosts = [f"h{i}.example.test" for i in range(100)]
    base = [{"host": h, "path": p, "upstream": "a"} for h in exact_hosts for p in prefixes]
    reqs = [(rnd.choice(exact_hosts).encode(), (rnd.choice(prefixes) + "item/42?x=1").encode())
            for _ in range(1000)]
    wild = [{"host": f"*.z{i}.example.test", "path": p, "upstream": "a"}
            for i in range(100) for p in prefixes]
    wreqs = [(f"api.z{rnd.randrange(100)}.example.test".encode(),
              (rnd.choice(prefixes) + "item").encode()) for _ in range(1000)]
    regex = base[:900] + [{"host": f"r{i}.example.test", "regex": f"^/v{i}/[0-9]+$",
                           "upstream": "a"} for i in range(100)]
    rreqs = [r for r in reqs if int(r[0][1:].split(b".")[0]) < 90][:1000]
    return {"1000 host+prefix": (base, reqs), "1000 wildcard+prefix": (wild, wreqs),
            "900 host+prefix, 100 regex": (regex, rreqs),
            "10 host+prefix": (base[:10], [(b"h0.example.test", b"/svc3/item")] * 1000)}


def run(quick: bool = False) -> list[dict]:
    """One row per table: ns per match, ours and the linear scan."""
    rows = []
    number = 3 if quick else 20
    for name, (routes, reqs) in tables().items():
        router = _router(routes)
        scan = _scan(router)
        for h, t in reqs[:50]:
            assert router.match(h, t) is scan(h, t), (name, h, t)
        ours = min(timeit.repeat(lambda: [router.match(h, t) for h, t in reqs],
                                 number=number, repeat=3)) / number / len(reqs) * 1e9
        peer = min(timeit.repeat(lambda: [scan(h, t) for h, t in reqs],
                                 number=max(1, number // 5), repeat=3)) \
            / max(1, number // 5) / len(reqs) * 1e9
        rows.append({"name": name, "ours_ns": ours, "peer": "linear scan", "peer_ns": peer,
                     "ratio": peer / ours})
    return rows


def main(argv: list[str]) -> int:
    """Print the table."""
    p = argparse.ArgumentParser(prog="python -m bench.micro_routing")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    from bench.micro import table
    print(table(run(a.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
