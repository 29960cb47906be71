"""`python -m bench h2`: HTTP/2 from clients, fastproxy against nginx and HAProxy.

h2load (nghttp2-client) sends a bounded number of requests (`-n`, no duration: every run
ends) over 16 connections with 32 concurrent streams each (`-m 32`) and with one (`-m 1`),
cleartext HTTP/2 with prior knowledge, to each proxy in front of the same nginx origin
(HTTP/1.1 upstream, kept alive). Each proxy runs one worker pinned to one core; h2load and
the origin share the other. The figure that matters on a shared machine is requests per
proxy CPU-second (CPU of the proxy's process tree from /proc), not requests per second.

Upstream keep-alive: nginx and fastproxy keep `--keepalive` idle connections for ever
(default 64, as in the other benches). With -m 32, 512 requests are in flight: nginx
closes the surplus at once, so most of its requests open a new upstream connection;
HAProxy (pool-purge-delay) and fastproxy (pool_purge_delay) keep it 5 s for the next
burst. `--keepalive 1024` compares the HTTP/2 sides without any churn.

`--sidecar` adds the other direction: HTTP/1.1 clients in (`wrk -t1 -c16` for
`--sidecar-seconds`; h2load --h1 rejects HAProxy's status line without a reason phrase), HTTP/2 with prior knowledge out to an nginx origin listening `http2` (fastproxy
`--upstream h2c://`, HAProxy `server ... proto h2`; nginx cannot proxy to HTTP/2).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import configs
from bench.procs import Proc, Supervisor, cpu_count, free_port, pinned, tree_cpu_seconds
from bench.rows import fastproxy_command
from bench.tools import which
from bench.wrk import run_wrk


def nginx_h2(tmp: Path, port: int, origin_port: int, keepalive: int = 64) -> str:
    """nginx: `listen ... http2` (prior knowledge on a cleartext port), upstream keepalive."""
    return configs._nginx_main(tmp, f"""
    upstream origin {{ server 127.0.0.1:{origin_port}; keepalive {keepalive}; }}
    http2_max_concurrent_streams 128;
    server {{
        listen 127.0.0.1:{port} http2 reuseport backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
""")


def haproxy_h2(port: int, origin_port: int) -> str:
    """HAProxy: `bind ... proto h2`, one thread, HTTP/1.1 to the origin with reuse."""
    return configs.haproxy(port, origin_port).replace(
        f"bind 127.0.0.1:{port}", f"bind 127.0.0.1:{port} proto h2")


def haproxy_sidecar(port: int, origin_port: int) -> str:
    """HAProxy: HTTP/1.1 in, HTTP/2 (prior knowledge) to the origin."""
    return configs.haproxy(port, origin_port).replace(
        f"server o1 127.0.0.1:{origin_port}", f"server o1 127.0.0.1:{origin_port} proto h2")


def fastproxy_toml(port: int, upstream: str, keepalive: int) -> str:
    """fastproxy: one worker, one reverse listener, `keepalive` idle upstream connections."""
    return f"""workers = 1
[upstreams.origin]
servers = ["{upstream}"]
keepalive = {keepalive}
[[listeners]]
listen = "127.0.0.1:{port}"
mode = "reverse"
upstream = "origin"
"""


def _start(sup: Supervisor, work: Path, name: str, origin_port: int, core: int | None,
           sidecar: bool = False, keepalive: int = 64) -> tuple[Proc, int]:
    port = free_port()
    if name == "fastproxy":
        conf = work / f"fastproxy-{port}.toml"
        scheme = "h2c" if sidecar else "http"
        conf.write_text(fastproxy_toml(port, f"{scheme}://127.0.0.1:{origin_port}", keepalive))
        fp, env = fastproxy_command(None)
        proc = sup.spawn(name + ("-sidecar" if sidecar else ""),
                         pinned([*fp, "serve", "--config", str(conf)], core), env=env)
        sup.wait_port(proc, port)
        return proc, port
    if sidecar and name == "haproxy":
        conf = work / "haproxy-sidecar.cfg"
        conf.write_text(haproxy_sidecar(port, origin_port))
        cmd = [which("haproxy"), "-db", "-f", str(conf)]
        env = None
    elif name == "nginx":
        tmp = work / name
        tmp.mkdir()
        (tmp / "nginx.conf").write_text(nginx_h2(tmp, port, origin_port, keepalive))
        cmd = [which("nginx"), "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(tmp / "nginx.conf")]
        env = None
    elif name == "haproxy":
        conf = work / "haproxy.cfg"
        conf.write_text(haproxy_h2(port, origin_port))
        cmd = [which("haproxy"), "-db", "-f", str(conf)]
        env = None
    else:
        raise ValueError(f"unknown row {name!r}")
    proc = sup.spawn(name + ("-sidecar" if sidecar else ""), pinned(cmd, core), env=env)
    sup.wait_port(proc, port)
    return proc, port


def h2load(url: str, requests: int, streams: int, core: int | None, timeout: float) -> dict:
    """One bounded h2load run; requests, succeeded and requests/s from its summary."""
    cmd = [which("h2load"), "-n", str(requests), "-c", "16", "-m", str(streams), "-t", "1", url]
    out = subprocess.run(pinned(cmd, core), capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL, check=False).stdout
    m = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", out)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if not m or not rps:
        raise RuntimeError(f"h2load output not understood: {out[-400:]}")
    return {"requests": int(m.group(1)), "succeeded": int(m.group(2)), "req_s": float(rps.group(1))}


def run(rows: list[str], sizes: list[str], requests: int, repeats: int,
        sidecar: bool = False, sidecar_seconds: int = 10, keepalive: int = 64) -> list[dict]:
    """Every row x size x streams setting, interleaved per repeat; one dict per run."""
    cores = cpu_count()
    proxy_core, load_core = (0, 1) if cores >= 2 and which("taskset") else (None, None)
    work = Path(tempfile.mkdtemp(prefix="fastproxy-bench-h2-"))
    results = []
    try:
        with Supervisor(work) as sup:
            docroot = work / "www"
            configs.write_origin_files(docroot, 1)
            otmp = work / "origin"
            otmp.mkdir()
            origin_port = free_port()
            (otmp / "nginx.conf").write_text(configs.nginx_origin(otmp, origin_port, docroot))
            origin = sup.spawn("origin", pinned([which("nginx"), "-p", str(otmp), "-e",
                                                 str(otmp / "error.log"), "-c",
                                                 str(otmp / "nginx.conf")], load_core))
            sup.wait_port(origin, origin_port)
            started = {(name, 0): _start(sup, work, name, origin_port, proxy_core, False, keepalive)
                       for name in rows}
            if sidecar:
                h2tmp = work / "origin-h2"
                h2tmp.mkdir()
                h2_port = free_port()
                (h2tmp / "nginx.conf").write_text(
                    configs.nginx_origin(h2tmp, h2_port, docroot).replace(
                        f"listen 127.0.0.1:{h2_port} ", f"listen 127.0.0.1:{h2_port} http2 "))
                h2origin = sup.spawn("origin-h2", pinned([which("nginx"), "-p", str(h2tmp), "-e",
                                                          str(h2tmp / "error.log"), "-c",
                                                          str(h2tmp / "nginx.conf")], load_core))
                sup.wait_port(h2origin, h2_port)
                for name in rows:
                    if name != "nginx":
                        started[(name, 1)] = _start(sup, work, name, h2_port, proxy_core, True,
                                                    keepalive)
            for repeat in range(repeats):
                for size in sizes:
                    for streams in (32, 1, 0):
                        for (name, side), (proc, port) in started.items():
                            if (streams == 0) != bool(side):
                                continue
                            url = f"http://127.0.0.1:{port}/{size}"
                            h1 = streams == 0
                            if h1:
                                run_wrk(url, 16, 1, load_core)     # warm-up
                                cpu0 = tree_cpu_seconds(proc.pid)
                                w = run_wrk(url, 16, sidecar_seconds, load_core)
                                cpu = tree_cpu_seconds(proc.pid) - cpu0
                                res = {"requests": w["requests"],
                                       "succeeded": w["requests"] - w["errors"],
                                       "req_s": round(w["rps"], 2)}
                            else:
                                h2load(url, 500, streams, load_core, 60)     # warm-up
                                cpu0 = tree_cpu_seconds(proc.pid)
                                res = h2load(url, requests, streams, load_core, 300)
                                cpu = tree_cpu_seconds(proc.pid) - cpu0
                            res.update(row=name if not h1 else name + " (sidecar, h1 in)",
                                       size=size, streams=streams, repeat=repeat,
                                       proxy_cpu_s=round(cpu, 3),
                                       req_per_cpu_s=round(res["succeeded"] / cpu) if cpu else None)
                            results.append(res)
                            print(json.dumps(res), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def table(results: list[dict]) -> str:
    """Markdown table: median of the repeats per row, size and streams."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["size"], r["streams"], r["row"]), []).append(r)
    lines = ["| size | -m | proxy | req/s | req per proxy CPU-s | failed |",
             "|---|---|---|---|---|---|"]
    for (size, streams, row), runs in groups.items():
        runs.sort(key=lambda r: r["req_per_cpu_s"] or 0)
        mid = runs[len(runs) // 2]
        failed = sum(r["requests"] - r["succeeded"] for r in runs)
        lines.append(f"| {size} | {streams} | {row} | {mid['req_s']:.0f} | {mid['req_per_cpu_s']} | {failed} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Run the HTTP/2 rows and print the table (JSON lines of every run on stderr)."""
    p = argparse.ArgumentParser(prog="python -m bench h2", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="fastproxy,nginx,haproxy")
    p.add_argument("--sizes", default="100b,4k")
    p.add_argument("--requests", type=int, default=100000, help="requests per h2load run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sidecar", action="store_true",
                   help="also HTTP/1.1 in, h2c out (fastproxy and HAProxy; -m column 0)")
    p.add_argument("--keepalive", type=int, default=64,
                   help="idle upstream connections nginx and fastproxy keep (HAProxy: all)")
    p.add_argument("--sidecar-seconds", type=int, default=10, help="wrk duration per sidecar run")
    a = p.parse_args(argv)
    rows = [r for r in a.rows.split(",") if r]
    for tool in ("h2load", "nginx", *(["haproxy"] if "haproxy" in rows else [])):
        if which(tool) is None:
            print(f"bench h2: {tool} is not installed", file=sys.stderr)
            return 2
    results = run(rows, [s for s in a.sizes.split(",") if s], a.requests, a.repeats,
                  a.sidecar, a.sidecar_seconds, a.keepalive)
    print(table(results))
    return 0 if all(r["succeeded"] == r["requests"] for r in results) else 1
