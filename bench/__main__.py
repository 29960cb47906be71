"""`python -m bench load [options]`, `python -m bench check [options]` and `python -m bench micro [names]`."""
from __future__ import annotations

import sys

USAGE = """usage: python -m bench load [--quick] [--duration S] [--connections N] [--rows R,...]
                          [--sizes 100b,4k,64k] [--repeats N] [--no-hey] [--out DIR] ...
       python -m bench check [--duration S] [--repeats N] [--min-keepalive R] [--min-cache R] ...
       python -m bench micro [--quick] [NAME ...]
       python -m bench h2 [--rows fastproxy,nginx,haproxy] [--sizes 100b,4k] [--requests N]

  load   every proxy side by side on this machine (nginx, HAProxy, Varnish, Squid, tinyproxy,
         fastproxy), with wrk (kept-alive connections) and hey (a new connection per
         request); `python -m bench load --help` for the options
  check  regression guard: fastproxy against nginx in one short run (keep-alive relay and
         cache hits per proxy CPU-second); exit 1 below the stated ratios
  h2     HTTP/2 clients (h2load -c16 -m32 and -m1, bounded) through fastproxy, nginx and
         HAProxy: requests per proxy CPU-second
  micro  the micro-benchmarks of the compiled modules (bench/micro_*.py), each against its peer"""


def main(argv: list[str]) -> int:
    """Dispatch to the load, check or micro benchmark; returns the exit code."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "load":
        from bench import load
        return load.main(rest)
    if cmd == "check":
        from bench import check
        return check.main(rest)
    if cmd == "h2":
        from bench import h2
        return h2.main(rest)
    if cmd == "micro":
        from bench import micro
        return micro.main(rest)
    print(f"bench: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
    return 2


raise SystemExit(main(sys.argv[1:]))
