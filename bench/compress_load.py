"""Compressed responses through the proxy: fastproxy `--compress` against nginx `gzip on`.

    python -m bench.compress_load [--duration 5] [--connections 32] [--encoding gzip] [--cache]

One nginx origin serves a 64 KiB generated HTML page (bench/textcorpus.py); nginx
(`gzip on`, level 1, its default) and fastproxy (`[compression]`, the same encoding only)
relay it to wrk sending `Accept-Encoding: ENCODING`, one worker each pinned to core 0.
Rows: requests/s, bytes per response (the ratio the client sees), requests per proxy
CPU-second, and fastproxy/nginx per CPU-second. Issue 13's goal: at least 1.0x nginx per
CPU-second at a comparable ratio. fastproxy is the installed one, or the one on an
absolute PYTHONPATH (the proxies run in a temporary directory). A fastproxy whose relay
has no response-body filter slot sends identity: its row then says so instead of a number.

`--cache` puts a cache in both (nginx `proxy_cache`, fastproxy `[cache]`): every request
after the first is a hit. nginx compresses each hit again (its gzip filter runs after the
cache); fastproxy stores one copy per coding and serves hits from it (issue 13).

`--stored` (gzip only) is the like-for-like hit: nginx's `proxy_cache` holds the gzip
response a second origin (`gzip on`, level 1, `gzip_vary`) sent, so each nginx hit writes
stored gzip bytes, as each fastproxy hit writes the copy it encoded once (fastproxy keeps
the identity origin: it compresses itself, the `:coding` variant path).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench import configs
from bench.procs import Supervisor, free_port, tree_cpu_seconds
from bench.textcorpus import html
from bench.tls import _wait
from bench.wrk import run_wrk

PAGE = "page.html"


def _nginx_gzip(tmp: Path, port: int, origin_port: int, cache: bool = False) -> str:
    main = configs.nginx_proxy(tmp, port, origin_port, cache=cache)
    return main.replace("    server {\n", "    gzip on;\n    gzip_comp_level 1;\n"
                        "    gzip_proxied any;\n    gzip_vary on;\n    gzip_min_length 256;\n"
                        "    gzip_types text/plain text/css application/json "
                        "application/javascript;\n    server {\n", 1)


def run(duration: int = 5, connections: int = 32, encoding: str = "gzip",
        cache: bool = False, stored: bool = False) -> list[dict]:
    """Rows for fastproxy and nginx relaying (or, with cache, serving) a compressed 64 KiB page."""
    cache = cache or stored
    import fastproxy._relay
    slot = hasattr(fastproxy._relay.ListenerSettings, "filter_factory")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-compress-") as d, Supervisor(Path(d)) as sup:
        tmp = Path(d)
        docroot = tmp / "www"
        configs.write_origin_files(docroot, 1 << 16)
        (docroot / PAGE).write_bytes(html(64 << 10))
        o_port, n_port, f_port = free_port(), free_port(), free_port()
        for sub in ("origin", "proxy"):
            (tmp / sub).mkdir()
        (tmp / "origin.conf").write_text(configs.nginx_origin(tmp / "origin", o_port, docroot)
                                         .replace("default_type application/octet-stream;",
                                                  "types { text/html html; }"))
        sup.spawn("origin", ["taskset", "-c", "1", "nginx", "-c", str(tmp / "origin.conf"),
                             "-p", str(tmp / "origin")])
        if stored:
            # nginx's reference origin compresses; nginx caches what it sent (per Vary).
            z_port = free_port()
            (tmp / "zorigin").mkdir()
            (tmp / "zorigin.conf").write_text(
                configs.nginx_origin(tmp / "zorigin", z_port, docroot)
                .replace("default_type application/octet-stream;",
                         "types { text/html html; }\n    gzip on;\n    gzip_comp_level 1;\n"
                         "    gzip_vary on;\n    gzip_types text/html;"))
            sup.spawn("zorigin", ["taskset", "-c", "1", "nginx", "-c", str(tmp / "zorigin.conf"),
                                  "-p", str(tmp / "zorigin")])
            _wait(z_port)
            (tmp / "nginx.conf").write_text(configs.nginx_proxy(tmp / "proxy", n_port, z_port,
                                                                cache=True))
        else:
            (tmp / "nginx.conf").write_text(_nginx_gzip(tmp / "proxy", n_port, o_port, cache))
        nginx = sup.spawn("nginx", ["taskset", "-c", "0", "nginx", "-c", str(tmp / "nginx.conf"),
                                    "-p", str(tmp / "proxy")])
        (tmp / "fp.toml").write_text(
            f'[[listeners]]\nlisten = "127.0.0.1:{f_port}"\nupstream = "o"\n'
            f'[upstreams.o]\nservers = ["http://127.0.0.1:{o_port}"]\n'
            f'[compression]\nencodings = ["{encoding}"]\n'
            + ('[cache]\nsize = "64MiB"\n' if cache else ''))
        fp = sup.spawn("fastproxy", ["taskset", "-c", "0", sys.executable, "-m", "fastproxy",
                                     "serve", "--config", str(tmp / "fp.toml")])
        for port, proc in ((o_port, None), (n_port, nginx), (f_port, fp)):
            try:
                _wait(port)
            except RuntimeError:
                raise RuntimeError(f"{proc.name if proc else 'origin'} did not start: "
                                   f"{proc.tail() if proc else ''}") from None
        os.environ["BENCH_ACCEPT_ENCODING"] = encoding
        per_cpu = {}
        try:
            for name, proc, port in (("fastproxy", fp, f_port), ("nginx", nginx, n_port)):
                url = f"http://127.0.0.1:{port}/{PAGE}"
                run_wrk(url, connections, 1, 1)
                before = tree_cpu_seconds(proc.pid)
                res = run_wrk(url, connections, duration, 1)
                cpu = tree_cpu_seconds(proc.pid) - before
                per_cpu[name] = res["requests"] / cpu if cpu else 0.0
                size = res["bytes"] / res["requests"] if res["requests"] else 0
                rows.append({"name": name, "req/s": res["rps"], "bytes/response": size,
                             "ratio": (64 << 10) / size if size else 0.0,
                             "req per CPU-s": per_cpu[name], "errors": res["errors"],
                             "note": "" if name == "nginx" or slot else
                             "no filter slot in this relay: identity"})
        finally:
            os.environ.pop("BENCH_ACCEPT_ENCODING", None)
        if slot:   # without the slot fastproxy sent identity: no comparison to make
            rows.append({"name": "fastproxy/nginx per CPU-s",
                         "ratio": per_cpu["fastproxy"] / per_cpu["nginx"] if per_cpu["nginx"]
                         else 0.0})
    return rows


def main(argv: list[str]) -> int:
    """Print the table."""
    p = argparse.ArgumentParser(prog="python -m bench.compress_load")
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--encoding", default="gzip", choices=("gzip", "br", "zstd"))
    p.add_argument("--cache", action="store_true", help="both proxies cache (hits)")
    p.add_argument("--stored", action="store_true",
                   help="hits of stored gzip bytes in both (nginx caches a gzip origin's answer)")
    a = p.parse_args(argv)
    if a.stored and a.encoding != "gzip":
        p.error("--stored: nginx's origin compresses with gzip only")
    from bench.micro import table
    print(table(run(a.duration, a.connections, a.encoding, a.cache, a.stored)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
