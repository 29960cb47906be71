"""The rows of the load benchmark: how each server under test is started and reached."""
from __future__ import annotations

import http.client
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench import configs
from bench.procs import Proc, StartError, Supervisor, free_port, pinned
from bench.tools import which


@dataclass
class Context:
    """What every row's start function needs: the supervisor, the origin and the pinning."""

    sup: Supervisor
    workdir: Path
    origin_port: int
    tunnel_host: str
    tunnel_port: int
    proxy_core: int | None
    fastproxy_cmd: list[str]
    fastproxy_env: dict
    cache_size: str = "64MiB"
    tunnel_bytes: int = 0


@dataclass
class Endpoint:
    """A started server under test: where to send load and which process tree to account."""

    port: int
    proc: Proc | None  # None for the direct rows: there is no proxy
    forward: bool = False  # requests use absolute-form targets (or CONNECT for tunnels)
    workers: int = 1  # worker processes (children of proc) that share the port with SO_REUSEPORT


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    name: str
    group: str  # reverse | cache | forward | tunnel
    needs: tuple[str, ...]  # external programs (besides wrk/nginx for the origin)
    start: Callable[[Context, str], Endpoint]
    doc: str = ""
    modules: tuple[str, ...] = ()  # Python modules the row needs (reference rows only)

    @property
    def ours(self) -> bool:
        """True for the rows that run fastproxy: those are never skipped, only measured or failed."""
        return self.start in (start_fastproxy, start_fastproxy_cache, start_fastproxy_forward,
                              start_fastproxy_workers, start_fastproxy_workers_hash,
                              start_fastproxy_admin,
                              start_fastproxy_cache_admin)


GROUPS = {
    # group -> (title, reference row for the ratio columns)
    "reverse": ("Reverse proxy", "nginx"),
    "cache": ("Reverse proxy, cache hits", "nginx-cache"),
    "forward": ("Forward proxy (absolute-form requests)", "squid"),
    "tunnel": ("CONNECT tunnel, one large download with curl", "tunnel-direct"),
}


# Workers of the all-cores row: one per core of this 2-core machine.
WORKERS = 2


def _listen(ctx: Context, name: str, cmd: list[str], port: int, env: dict | None = None,
            pin: bool = True) -> Endpoint:
    proc = ctx.sup.spawn(name, pinned(cmd, ctx.proxy_core if pin else None), env=env)
    ctx.sup.wait_port(proc, port)
    return Endpoint(port, proc)


def _nginx(ctx: Context, name: str, text_fn, pin: bool = True) -> Endpoint:
    tmp = ctx.workdir / name
    tmp.mkdir()
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(text_fn(tmp, port))
    return _listen(ctx, name, [which("nginx"), "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)], port,
                   pin=pin)


def start_direct(ctx: Context, name: str) -> Endpoint:
    """The origin itself: the ceiling of every reverse row."""
    return Endpoint(ctx.origin_port, None)


def start_nginx(ctx: Context, name: str) -> Endpoint:
    """nginx reverse proxy, one worker, upstream keepalive 64."""
    return _nginx(ctx, name, lambda tmp, port: configs.nginx_proxy(tmp, port, ctx.origin_port, cache=False))


def start_nginx_workers(ctx: Context, name: str) -> Endpoint:
    """nginx with worker_processes WORKERS, not pinned: what two workers cost on this
    machine (beside fastproxy-2w), as opposed to what they cost fastproxy."""
    ep = _nginx(ctx, name, lambda tmp, port: configs.nginx_proxy(tmp, port, ctx.origin_port, cache=False,
                                                                 workers=WORKERS), pin=False)
    ep.workers = WORKERS
    return ep


def start_nginx_cache(ctx: Context, name: str) -> Endpoint:
    """nginx with proxy_cache."""
    return _nginx(ctx, name, lambda tmp, port: configs.nginx_proxy(tmp, port, ctx.origin_port, cache=True))


def start_nginx_cache_sendfile(ctx: Context, name: str) -> Endpoint:
    """nginx with proxy_cache, hits sent by sendfile(2) from the cache files."""
    return _nginx(ctx, name, lambda tmp, port: configs.nginx_proxy(tmp, port, ctx.origin_port, cache=True,
                                                                   sendfile=True))


def start_haproxy(ctx: Context, name: str) -> Endpoint:
    """HAProxy, nbthread 1, http-reuse always."""
    port = free_port()
    conf = ctx.workdir / f"{name}.cfg"
    conf.write_text(configs.haproxy(port, ctx.origin_port))
    return _listen(ctx, name, [which("haproxy"), "-db", "-f", str(conf)], port)


def start_varnish(ctx: Context, name: str) -> Endpoint:
    """Varnish with a 64 MiB malloc store and one thread pool."""
    port = free_port()
    vdir = ctx.workdir / name
    vdir.mkdir()
    # varnishd drops privileges to its own users when started as root; they must reach the dir.
    for d in (ctx.workdir, vdir):
        d.chmod(0o755)
    cmd = [which("varnishd"), "-F", "-a", f"127.0.0.1:{port}", "-b", f"127.0.0.1:{ctx.origin_port}",
           "-n", str(vdir), "-s", "malloc,64m", "-T", "127.0.0.1:0", "-p", "thread_pools=1"]
    return _listen(ctx, name, cmd, port)


def start_squid(ctx: Context, name: str) -> Endpoint:
    """Squid forward proxy, one worker, no cache."""
    port = free_port()
    tmp = ctx.workdir / name
    tmp.mkdir()
    tmp.chmod(0o777)  # squid writes its logs as its unprivileged user
    conf = tmp / "squid.conf"
    conf.write_text(configs.squid(tmp, port))
    ep = _listen(ctx, name, [which("squid"), "-N", "-f", str(conf)], port)
    ep.forward = True
    return ep


def start_tinyproxy(ctx: Context, name: str) -> Endpoint:
    """tinyproxy forward proxy."""
    port = free_port()
    tmp = ctx.workdir / name
    tmp.mkdir()
    tmp.chmod(0o777)
    conf = tmp / "tinyproxy.conf"
    conf.write_text(configs.tinyproxy(tmp, port))
    ep = _listen(ctx, name, [which("tinyproxy"), "-d", "-c", str(conf)], port)
    ep.forward = True
    return ep


def _fastproxy(ctx: Context, name: str, args: list[str], pin: bool = True) -> Endpoint:
    port = free_port()
    cmd = [*ctx.fastproxy_cmd, "serve", "--listen", f"127.0.0.1:{port}", *args]
    return _listen(ctx, name, cmd, port, env=ctx.fastproxy_env, pin=pin)


def start_fastproxy(ctx: Context, name: str) -> Endpoint:
    """fastproxy reverse mode, one worker."""
    return _fastproxy(ctx, name, ["--mode", "reverse", "--upstream", f"http://127.0.0.1:{ctx.origin_port}",
                                         "--workers", "1"])


def start_fastproxy_workers(ctx: Context, name: str) -> Endpoint:
    """fastproxy reverse mode with WORKERS workers on every core (not pinned: the load
    generator and the origin share core 1 with one of them, so compare per CPU-second)."""
    ep = _fastproxy(ctx, name, ["--mode", "reverse", "--upstream", f"http://127.0.0.1:{ctx.origin_port}",
                                "--workers", str(WORKERS)], pin=False)
    ep.workers = WORKERS
    return ep


def start_fastproxy_workers_hash(ctx: Context, name: str) -> Endpoint:
    """fastproxy-2w with the kernel's SO_REUSEPORT hash instead of round-robin."""
    ep = _fastproxy(ctx, name, ["--mode", "reverse", "--upstream", f"http://127.0.0.1:{ctx.origin_port}",
                                "--workers", str(WORKERS), "--reuseport-balance", "hash"], pin=False)
    ep.workers = WORKERS
    return ep


def start_fastproxy_cache(ctx: Context, name: str) -> Endpoint:
    """fastproxy reverse mode with its ring-buffer cache."""
    return _fastproxy(ctx, name, ["--mode", "reverse", "--upstream", f"http://127.0.0.1:{ctx.origin_port}",
                                               "--workers", "1", "--cache", ctx.cache_size])


def start_fastproxy_admin(ctx: Context, name: str) -> Endpoint:
    """fastproxy reverse mode with an admin listener (per-request latency/top-URL counting on)."""
    return _fastproxy(ctx, name, ["--mode", "reverse", "--upstream", f"http://127.0.0.1:{ctx.origin_port}",
                                  "--workers", "1", "--admin", f"127.0.0.1:{free_port()}"])


def start_fastproxy_cache_admin(ctx: Context, name: str) -> Endpoint:
    """fastproxy-cache with an admin listener (per-request latency/top-URL counting on)."""
    return _fastproxy(ctx, name, ["--mode", "reverse", "--upstream", f"http://127.0.0.1:{ctx.origin_port}",
                                  "--workers", "1", "--cache", ctx.cache_size,
                                  "--admin", f"127.0.0.1:{free_port()}"])


def start_fastproxy_forward(ctx: Context, name: str) -> Endpoint:
    """fastproxy forward mode; the origin is on loopback, hence --allow-private."""
    ep = _fastproxy(ctx, name, ["--mode", "forward", "--allow-private", "--workers", "1"])
    ep.forward = True
    return ep


# pproxy 2.7 calls asyncio.get_event_loop() after uvloop.install(); current uvloop raises there
# unless a loop is set, so the launcher installs uvloop and sets a loop itself, then runs pproxy.
PPROXY_LAUNCHER = """
import asyncio, sys, uvloop
def _install():
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())
uvloop.install = _install
from pproxy.server import main
sys.argv[0] = "pproxy"
main()
"""


def start_pproxy(ctx: Context, name: str) -> Endpoint:
    """pproxy, a pure-Python forward proxy on uvloop (the Python peer named in issue 7)."""
    port = free_port()
    ep = _listen(ctx, name, [sys.executable, "-c", PPROXY_LAUNCHER, "-l", f"http://127.0.0.1:{port}"], port)
    ep.forward = True
    return ep


def start_tunnel_direct(ctx: Context, name: str) -> Endpoint:
    """The download without a proxy."""
    return Endpoint(ctx.tunnel_port, None, forward=False)


ROWS: tuple[Row, ...] = (
    Row("direct", "reverse", (), start_direct, "wrk straight to the origin (the ceiling)"),
    Row("nginx", "reverse", ("nginx",), start_nginx, "nginx 1 worker, upstream keepalive 64"),
    Row("nginx-2w", "reverse", ("nginx",), start_nginx_workers,
        f"nginx worker_processes {WORKERS}, reuseport, not pinned (all cores)"),
    Row("haproxy", "reverse", ("haproxy",), start_haproxy, "HAProxy nbthread 1, http-reuse always"),
    Row("fastproxy", "reverse", (), start_fastproxy, "fastproxy --mode reverse --workers 1"),
    Row("fastproxy-2w", "reverse", (), start_fastproxy_workers,
        f"fastproxy --workers {WORKERS}, not pinned (all cores)"),
    Row("fastproxy-2w-hash", "reverse", (), start_fastproxy_workers_hash,
        "fastproxy-2w with --reuseport-balance hash (the kernel's spread)"),
    Row("fastproxy-admin", "reverse", (), start_fastproxy_admin, "fastproxy reverse with --admin"),
    Row("nginx-cache", "cache", ("nginx",), start_nginx_cache, "nginx proxy_cache"),
    Row("nginx-cache-sendfile", "cache", ("nginx",), start_nginx_cache_sendfile,
        "nginx proxy_cache with sendfile on (as in Debian's nginx.conf) and tcp_nopush on"),
    Row("varnish", "cache", ("varnishd",), start_varnish, "Varnish -s malloc,64m, thread_pools=1"),
    Row("fastproxy-cache", "cache", (), start_fastproxy_cache, "fastproxy --cache 64MiB"),
    Row("fastproxy-cache-admin", "cache", (), start_fastproxy_cache_admin, "fastproxy --cache 64MiB --admin"),
    Row("squid", "forward", ("squid",), start_squid, "Squid 1 worker, no cache"),
    Row("tinyproxy", "forward", ("tinyproxy",), start_tinyproxy, "tinyproxy"),
    Row("pproxy", "forward", (), start_pproxy, "pproxy (Python, uvloop), in the bench extra", ("pproxy",)),
    Row("fastproxy-forward", "forward", (), start_fastproxy_forward, "fastproxy --mode forward"),
    Row("tunnel-direct", "tunnel", ("curl",), start_tunnel_direct, "curl straight to the origin"),
    Row("tunnel-squid", "tunnel", ("curl", "squid"), start_squid, "curl -p through Squid"),
    Row("tunnel-tinyproxy", "tunnel", ("curl", "tinyproxy"), start_tinyproxy,
        "curl -p through tinyproxy"),
    Row("tunnel-pproxy", "tunnel", ("curl",), start_pproxy, "curl -p through pproxy", ("pproxy",)),
    Row("tunnel-fastproxy", "tunnel", ("curl",), start_fastproxy_forward,
        "curl -p through fastproxy forward"),
)
ROW_NAMES = tuple(r.name for r in ROWS)


# Run in a fresh process exactly as the rows start fastproxy: which package does it import,
# and do its compiled modules load?
PROBE = """
import json
try:
    import fastproxy
    from fastproxy.selfcheck import missing_modules
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
else:
    print(json.dumps({"path": fastproxy.__file__, "version": fastproxy.__version__,
                      "problems": missing_modules()}))
"""


class NotRunnable(RuntimeError):
    """fastproxy cannot be started here; the message says why and what to do."""


def fastproxy_command(spec: str | None) -> tuple[list[str], dict]:
    """Return the command and environment that start the fastproxy under test.

    By default `python -P -m fastproxy` with this Python and environment: the installed
    package, or the one PYTHONPATH names. `-P` keeps the current directory off sys.path,
    so an unbuilt source tree there is never what runs.
    """
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if spec:
        return shlex.split(spec), env
    return [sys.executable, "-P", "-m", "fastproxy"], env


def locate_fastproxy(env: dict) -> dict:
    """Return {path, version} of the fastproxy `fastproxy_command(None)` starts; NotRunnable if unusable."""
    out = subprocess.run([sys.executable, "-P", "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    try:
        found = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise NotRunnable(f"{sys.executable} could not run the fastproxy probe: "
                          f"{(out.stderr or out.stdout).strip()[-300:]}") from None
    if "error" in found:
        raise NotRunnable(f"no fastproxy is importable by {sys.executable} ({found['error']}); "
                          "install it first: pip install '.[bench]'")
    if found["problems"]:
        absent = [p.split(":")[0] for p in found["problems"] if "No module named" in p]
        what = (f"no compiled {', '.join(absent)}" if len(absent) == len(found["problems"])
                else "; ".join(found["problems"]))
        raise NotRunnable(f"fastproxy at {Path(found['path']).parent} is not built ({what}); install it "
                          "(pip install '.[bench]') or build it in place (python setup.py build_ext "
                          "--inplace) and name it with PYTHONPATH")
    return {"path": str(Path(found["path"]).resolve().parent), "version": found["version"]}


def fetch(ep: Endpoint, origin_port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes, dict]:
    """One request through ep (absolute-form for forward proxies); returns status, body, headers."""
    conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=timeout)
    try:
        target = f"http://127.0.0.1:{origin_port}{path}" if ep.forward else path
        conn.request("GET", target, headers={"Host": f"127.0.0.1:{origin_port}"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def check_serves(ep: Endpoint, origin_port: int, sizes: list[str], proc_name: str) -> None:
    """Prove the endpoint relays each size correctly before timing it; StartError otherwise."""
    for size in sizes:
        for _ in range(2):  # the second request is a cache hit on the cache rows
            try:
                status, body, _ = fetch(ep, origin_port, f"/{size}")
            except (OSError, http.client.HTTPException) as exc:
                raise StartError(f"{proc_name}: GET /{size} failed: {exc!r}") from exc
            if status != 200 or len(body) != configs.SIZES[size]:
                raise StartError(f"{proc_name}: GET /{size} answered {status} with {len(body)} bytes, "
                                 f"expected 200 with {configs.SIZES[size]}")


def origin_requests(origin_port: int) -> int:
    """Return the origin's request counter (nginx stub_status), which counts this request too.

    Requests served between two readings are `second - first - 1`.
    """
    conn = http.client.HTTPConnection("127.0.0.1", origin_port, timeout=5)
    try:
        conn.request("GET", "/__origin_status")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    # "server accepts handled requests\n A H R": the third number.
    return int(text.splitlines()[2].split()[2])


def curl_download(ep: Endpoint, host: str, port: int, core: int | None, timeout: float) -> dict:
    """Download the large file (through ep's CONNECT tunnel unless direct); return bytes and seconds."""
    url = f"http://{host}:{port}/{configs.BIG_NAME}"
    cmd = [which("curl"), "-sS", "-o", "/dev/null", "--max-time", str(int(timeout)),
           "-w", "%{http_code} %{size_download} %{time_total} %{time_starttransfer}"]
    if ep.proc is not None:
        # -p: tunnel through the proxy with CONNECT even for an http:// URL (RFC 9110 section 9.3.6).
        cmd += ["-p", "-x", f"http://127.0.0.1:{ep.port}"]
    cmd.append(url)
    t0 = time.monotonic()
    out = subprocess.run(pinned(cmd, core), capture_output=True, text=True, timeout=timeout + 10,
                         stdin=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    try:
        code, size, total, start = out.stdout.split()
    except ValueError as exc:
        raise StartError(f"curl failed: {out.stderr.strip()[-300:]}") from exc
    return {"status": int(code), "bytes": int(size), "seconds": float(total),
            "ttfb_s": float(start), "wall_s": wall, "curl_error": out.stderr.strip()[-300:]}
