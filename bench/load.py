"""`python -m bench load`: every proxy side by side on one machine, in one run.

The origin (nginx, one worker) and the load generator share one core; the proxy under
test gets the other. Each row is started once, checked to relay correctly, then loaded
with `wrk -t1 -c64` and `wrk -t1 -c1` (kept-alive connections) and with
`hey -c64 -disable-keepalive` (a new connection per request); repeats are interleaved
(A B C A B C) and the median is reported with its spread. Proxy CPU seconds come from /proc.

A row either produces its numbers or the command exits 1 naming it. The one exception: a
reference row (not fastproxy) whose program is not installed, when it was selected through
`all` or its group rather than by name, is reported as skipped.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench import configs, report
from bench.hey import HeyError, run_hey
from bench.procs import (StartError, Supervisor, connections_per_process, cpu_count, free_port, pinned, process_tree,
                         system_busy_seconds, tree_cpu_seconds)
from bench.rows import (GROUPS, ROW_NAMES, ROWS, Context, Endpoint, NotRunnable, check_serves, curl_download,
                        fastproxy_command, fetch, locate_fastproxy, origin_requests)
from bench.tools import apt_install, can_install, missing, version, which
from bench.wrk import WrkError, run_wrk

QUICK_DURATION = 3
QUICK_TUNNEL = "128MiB"


class UsageError(ValueError):
    """A bad option; the message names it."""


def parse_bytes(text: str, option: str) -> int:
    """Parse '512MiB', '64m', '1G' or a plain number of bytes."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = 1
    if t and t[-1] in "kmg":
        mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[t[-1]]
        t = t[:-1]
    try:
        value = int(float(t) * mult)
    except ValueError:
        raise UsageError(f"{option}: expected a size like 512MiB, got {text!r}") from None
    if value <= 0:
        raise UsageError(f"{option}: must be positive, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options of `bench load`."""
    p.add_argument("--duration", type=int, default=None,
                   help="seconds per wrk run (default 10, --quick 3)")
    p.add_argument("--connections", type=int, default=64, help="connections of the loaded run (default 64)")
    p.add_argument("--rows", default="all",
                   help=f"comma-separated rows or groups ({', '.join(GROUPS)}); rows: {', '.join(ROW_NAMES)}")
    p.add_argument("--sizes", default=None,
                   help=f"comma-separated response sizes of {', '.join(configs.SIZES)} (default 100b,4k; --quick 100b)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats per row (default 3, --quick 1)")
    p.add_argument("--quick", action="store_true", help="a few seconds per row, for development")
    p.add_argument("--no-c1", action="store_true", help="skip the single-connection (latency) runs")
    p.add_argument("--no-hey", action="store_true",
                   help="skip the new-connection-per-request runs (hey -disable-keepalive)")
    p.add_argument("--tunnel-size", default=None, help="size of the tunnel download (default 512MiB, --quick 128MiB)")
    p.add_argument("--out", default="bench/results", help="directory for results.json, results.md, chart.png")
    p.add_argument("--fastproxy", default=None,
                   help="command that runs fastproxy (default: this Python's `-m fastproxy`)")
    p.add_argument("--no-install", action="store_true",
                   help="do not apt-get install missing tools (done by default when root on Debian/Ubuntu)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with configs and logs")


def resolve_options(a: argparse.Namespace) -> dict:
    """Validate options and fill defaults; UsageError names the bad option."""
    duration = a.duration if a.duration is not None else (QUICK_DURATION if a.quick else 10)
    if not 1 <= duration <= 600:
        raise UsageError(f"--duration: expected 1..600 seconds, got {duration}")
    if not 1 <= a.connections <= 10000:
        raise UsageError(f"--connections: expected 1..10000, got {a.connections}")
    repeats = a.repeats if a.repeats is not None else (1 if a.quick else 3)
    if not 1 <= repeats <= 50:
        raise UsageError(f"--repeats: expected 1..50, got {repeats}")
    sizes = (a.sizes or ("100b" if a.quick else "100b,4k")).split(",")
    bad = [s for s in sizes if s not in configs.SIZES]
    if bad:
        raise UsageError(f"--sizes: unknown size {bad[0]!r}; choose from {', '.join(configs.SIZES)}")
    rows: list[str] = []
    named: set[str] = set()  # rows asked for by name must run, whatever they need
    for item in a.rows.split(","):
        item = item.strip()
        if item == "all":
            rows += ROW_NAMES
        elif item in GROUPS:
            rows += [r.name for r in ROWS if r.group == item]
        elif item in ROW_NAMES:
            rows.append(item)
            named.add(item)
        else:
            raise UsageError(f"--rows: unknown row {item!r}; choose from all, {', '.join(GROUPS)}, "
                             f"{', '.join(ROW_NAMES)}")
    rows = [n for n in ROW_NAMES if n in rows]  # table order, no duplicates
    tunnel = parse_bytes(a.tunnel_size or (QUICK_TUNNEL if a.quick else "512MiB"), "--tunnel-size")
    return {"duration": duration, "connections": a.connections, "repeats": repeats, "sizes": sizes,
            "rows": rows, "required": sorted(named), "tunnel_bytes": tunnel, "c1": not a.no_c1, "hey": not a.no_hey,
            "out": Path(a.out), "fastproxy": a.fastproxy, "install": not a.no_install, "keep_tmp": a.keep_tmp}


def machine_info() -> dict:
    """Describe the machine the numbers come from."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / (1 << 20):.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "usable_cores": cpu_count(), "memory": mem,
            "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}


def _tunnel_address() -> tuple[str, int]:
    # fastproxy's forward mode allows CONNECT to port 443 only by default (issue 7), so the
    # download is served on a loopback address's port 443 when one is free (root may bind it).
    for last in range(2, 10):
        host = f"127.0.0.{last}"
        with socket.socket() as s:
            try:
                s.bind((host, 443))
                return host, 443
            except OSError:
                continue
    return "127.0.0.1", free_port()


def _origin(sup: Supervisor, workdir: Path, core: int | None, tunnel: tuple[str, int], big: int) -> int:
    docroot = workdir / "www"
    configs.write_origin_files(docroot, big)
    tmp = workdir / "origin"
    tmp.mkdir()
    port = free_port()
    text = configs.nginx_origin(tmp, port, docroot)
    host, tport = tunnel
    text = text.replace(f"listen 127.0.0.1:{port} reuseport backlog=4096;",
                        f"listen 127.0.0.1:{port} reuseport backlog=4096;\n        listen {host}:{tport};")
    (tmp / "nginx.conf").write_text(text)
    proc = sup.spawn("origin", pinned([which("nginx"), "-p", str(tmp), "-e", str(tmp / "error.log"),
                                       "-c", str(tmp / "nginx.conf")], core))
    sup.wait_port(proc, port)
    return port


def _wrk(ep: Endpoint, ctx: Context, size: str, connections: int, duration: int, core: int | None):
    url = f"http://127.0.0.1:{ep.port}/{size}"
    target = f"http://127.0.0.1:{ctx.origin_port}/{size}" if ep.forward else None
    return lambda: run_wrk(url, connections, duration, core, absolute_target=target,
                           host=f"127.0.0.1:{ctx.origin_port}")


def _hey(ep: Endpoint, ctx: Context, size: str, connections: int, duration: int, core: int | None):
    if ep.forward:
        # hey sends the absolute-form target to the proxy given with -x, Host from the URL.
        url, proxy = f"http://127.0.0.1:{ctx.origin_port}/{size}", f"http://127.0.0.1:{ep.port}"
    else:
        url, proxy = f"http://127.0.0.1:{ep.port}/{size}", None
    return lambda: run_hey(url, connections, duration, core, proxy=proxy)


def _per_worker(ep: Endpoint, at: float) -> tuple[threading.Timer, dict]:
    """Count, `at` seconds from now, the established connections each worker of ep holds."""
    seen: dict[int, int] = {}

    def sample() -> None:
        workers = [p for p in process_tree(ep.proc.pid) if p != ep.proc.pid]
        seen.update(connections_per_process(workers, ep.port))
    timer = threading.Timer(at, sample)
    timer.start()
    return timer, seen


def _measure(ep: Endpoint, origin_proc, ctx: Context, tool: str, load, sample_at: float | None = None) -> dict:
    """One load run (wrk or hey) with CPU accounting of the proxy, the origin and the rest of the machine.

    With sample_at and a multi-worker endpoint, also how the kernel's SO_REUSEPORT spread
    the load's connections over the workers, sampled that many seconds into the run.
    """
    sampler = _per_worker(ep, sample_at) if sample_at is not None and ep.proc and ep.workers > 1 else None
    proxy0 = tree_cpu_seconds(ep.proc.pid) if ep.proc else 0.0
    origin0 = tree_cpu_seconds(origin_proc.pid)
    busy0 = system_busy_seconds()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    served0 = origin_requests(ctx.origin_port)
    try:
        res = load()
    finally:
        if sampler is not None:
            sampler[0].cancel()
            sampler[0].join()
    if sampler is not None and sampler[1]:
        res["per_worker"] = sorted(sampler[1].values(), reverse=True)
    served = origin_requests(ctx.origin_port) - served0 - 1
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = system_busy_seconds() - busy0
    res["proxy_cpu_s"] = (tree_cpu_seconds(ep.proc.pid) - proxy0) if ep.proc else None
    res["origin_cpu_s"] = tree_cpu_seconds(origin_proc.pid) - origin0
    res[f"{tool}_cpu_s"] = load_cpu = (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime)
    res["origin_requests"] = served
    # CPU used by anything that is not part of this measurement (other users of the machine).
    res["other_cpu_s"] = max(0.0, busy - (res["proxy_cpu_s"] or 0) - res["origin_cpu_s"] - load_cpu)
    res["req_per_cpu_s"] = (res["requests"] / res["proxy_cpu_s"]) if res["proxy_cpu_s"] else None
    res["tool"] = tool
    return res


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(opts: dict) -> dict:
    """Run the whole benchmark; return the results document (also written to opts['out'])."""
    started = dt.datetime.now(dt.timezone.utc)
    out: Path = opts["out"]
    out.mkdir(parents=True, exist_ok=True)
    doc = {"date": started.isoformat(timespec="seconds"), "command": " ".join(["python -m bench", *sys.argv[1:]])
           if sys.argv and sys.argv[0].endswith("__main__.py") else "python -m bench load",
           "machine": machine_info(), "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()},
           "rows": {}, "notes": []}
    selected = [r for r in ROWS if r.name in opts["rows"]]
    for r in selected:
        doc["rows"][r.name] = {"group": r.group, "doc": r.doc, "runs": [], "skipped": None, "failed": None}
    fp_cmd, fp_env = fastproxy_command(opts["fastproxy"])
    doc["fastproxy"] = {"command": " ".join(fp_cmd)}
    if any(r.ours for r in selected) and not opts["fastproxy"]:
        # Before anything starts: a fastproxy row that cannot run fails the whole command.
        doc["fastproxy"].update(locate_fastproxy(fp_env))
        _say(f"bench: fastproxy under test: {doc['fastproxy']['version']} from {doc['fastproxy']['path']}")
        here = Path.cwd() / "fastproxy"
        if (here / "__init__.py").exists() and here.resolve() != Path(doc["fastproxy"]["path"]).resolve():
            _say(f"bench: (not the tree in {here}: put it on PYTHONPATH, built in place, to benchmark it)")

    needed = {"wrk", "nginx", "taskset", *(t for r in selected for t in r.needs)}
    if opts["hey"] and any(r.group != "tunnel" for r in selected):
        needed.add("hey")
    absent = missing(sorted(needed))
    if absent and opts["install"] and can_install():
        absent = apt_install(absent, say=_say)
    elif absent and opts["install"]:
        doc["notes"].append(f"cannot install {', '.join(absent)}: needs root and apt-get")
    doc["tools"] = {t: version(t) for t in sorted(needed) if t not in absent}
    # Why the new-connection columns are empty, if they are; None when hey runs.
    doc["hey"] = ("skipped (--no-hey)" if not opts["hey"] else
                  "hey is not installed (apt-get install hey, or run as root without --no-install)"
                  if "hey" in absent else None)

    cores = cpu_count()
    if cores >= 2 and "taskset" not in absent:
        proxy_core, load_core = 0, 1
    else:
        proxy_core = load_core = None
        doc["notes"].append(f"no pinning: {cores} usable core(s) or no taskset")
    doc["pinning"] = {"proxy": proxy_core, "wrk_and_origin": load_core}

    workdir = Path(tempfile.mkdtemp(prefix="fastproxy-bench-"))
    pidlog = out / "processes.log"
    # Every started process is appended here ("PID name"), so a caller can check they are gone.
    pidlog.write_text(f"# workdir {workdir}\n")
    doc["workdir"] = str(workdir)
    try:
        with Supervisor(workdir, pidlog=pidlog) as sup:
            _run_rows(doc, selected, opts, sup, workdir, proxy_core, load_core, absent, (fp_cmd, fp_env))
    finally:
        if opts["keep_tmp"]:
            _say(f"bench: configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    doc["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    report.summarize(doc)
    return doc


def _skip(doc: dict, name: str, why: str) -> None:
    """A reference row that is not installed here: reported, not measured, not a failure."""
    doc["rows"][name]["skipped"] = why
    _say(f"bench: {name}: skipped: {why}")


def _fail(doc: dict, name: str, why: str) -> None:
    """A row that could not run: reported, and the command exits 1."""
    if not doc["rows"][name]["failed"]:
        doc["rows"][name]["failed"] = why
        _say(f"bench: {name}: could not run: {why}")


def row_failures(doc: dict) -> list[tuple[str, str]]:
    """Return (row, why) for every row that could not run or had a failed run."""
    out = []
    for name, row in doc["rows"].items():
        if row.get("failed"):
            out.append((name, row["failed"]))
            continue
        bad = [r for r in row["runs"] if "failed" in r]
        if bad:
            out.append((name, f"{len(bad)} of {len(row['runs'])} runs failed: {bad[0]['failed']}"))
    return out


def _run_rows(doc, selected, opts, sup, workdir, proxy_core, load_core, absent, fastproxy) -> None:
    required = set(opts.get("required", ()))
    for r in selected:
        lacking = [t for t in ("wrk", "nginx", *r.needs) if t in absent]
        if r.group == "tunnel":
            lacking = [t for t in ("nginx", *r.needs) if t in absent]
        why = f"{', '.join(lacking)} not installed (run as root without --no-install to install)" if lacking else ""
        modules = [m for m in r.modules if importlib.util.find_spec(m) is None]
        if modules and not why:
            why = f"{', '.join(modules)} not installed (pip install {' '.join(modules)}; it is in the bench extra)"
        if not why:
            continue
        if r.ours or r.name in required:
            _fail(doc, r.name, why)
        else:
            _skip(doc, r.name, why)
    runnable = [r for r in selected if not doc["rows"][r.name]["skipped"] and not doc["rows"][r.name]["failed"]]
    if not runnable:
        return
    n_load = sum(r.group != "tunnel" for r in runnable)
    use_hey = doc["hey"] is None
    per_row = opts["duration"] * (1 + opts["c1"] + use_hey) * len(opts["sizes"])
    _say(f"bench: {len(runnable)} rows, about {(n_load * per_row * opts['repeats']) / 60:.1f} minutes of load "
         f"plus start-up and downloads")
    tunnel = _tunnel_address()
    try:
        origin_port = _origin(sup, workdir, load_core, tunnel, opts["tunnel_bytes"])
    except (StartError, OSError) as exc:
        for r in runnable:
            _fail(doc, r.name, f"the origin (nginx) did not start: {exc}")
        return
    origin_proc = next(p for p in sup.procs if p.name == "origin")
    fp_cmd, fp_env = fastproxy
    ctx = Context(sup, workdir, origin_port, tunnel[0], tunnel[1], proxy_core, fp_cmd, fp_env,
                  tunnel_bytes=opts["tunnel_bytes"])
    doc["origin"] = {"port": origin_port, "tunnel": f"{tunnel[0]}:{tunnel[1]}"}

    endpoints: dict[str, Endpoint] = {}
    for r in runnable:
        try:
            ep = r.start(ctx, r.name)
            if r.group == "tunnel":
                _check_tunnel(ep, ctx, load_core)
            else:
                check_serves(ep, origin_port, opts["sizes"], r.name)
            if r.group == "cache":
                _check_hits(ep, origin_port, opts["sizes"], r.name)
        except (StartError, OSError) as exc:
            _fail(doc, r.name, str(exc))
            continue
        endpoints[r.name] = ep
        doc["rows"][r.name]["pid"] = ep.proc.pid if ep.proc else None
        _say(f"bench: {r.name}: ready on 127.0.0.1:{ep.port}")

    load_rows = [r for r in runnable if r.name in endpoints and r.group != "tunnel"]
    tunnel_rows = [r for r in runnable if r.name in endpoints and r.group == "tunnel"]
    for rep in range(opts["repeats"]):
        # Interleaved: every row once per repeat, so a noisy moment hits one sample of each.
        for size in opts["sizes"]:
            for r in load_rows:
                ep = endpoints[r.name]
                if ep.proc and ep.proc.popen.poll() is not None:
                    _fail(doc, r.name, f"exited during the run: {ep.proc.tail()}")
                    continue
                loads = [("wrk", _wrk, opts["connections"])] + ([("wrk", _wrk, 1)] if opts["c1"] else [])
                if use_hey:
                    loads.append(("hey", _hey, opts["connections"]))
                for tool, make, conns in loads:
                    try:
                        # Kept-alive connections stay put: mid-run shows where the kernel put them.
                        at = opts["duration"] / 2 if tool == "wrk" and conns > 1 else None
                        res = _measure(ep, origin_proc, ctx, tool,
                                       make(ep, ctx, size, conns, opts["duration"], load_core), at)
                    except (WrkError, HeyError, OSError) as exc:
                        res = {"failed": str(exc), "tool": tool}
                    res.update(repeat=rep, size=size, connections=conns)
                    doc["rows"][r.name]["runs"].append(res)
                    how = " new conn" if tool == "hey" else ""
                    _say(f"bench: {r.name} {size} c{conns}{how} #{rep + 1}: "
                         + (f"{res['rps']:,.0f} req/s" if "rps" in res else res["failed"]))
        for r in tunnel_rows:
            ep = endpoints[r.name]
            res = _download(ep, ctx, load_core, ctx.tunnel_bytes)
            res["repeat"] = rep
            doc["rows"][r.name]["runs"].append(res)
            _say(f"bench: {r.name} #{rep + 1}: " + (f"{res['mb_s']:,.0f} MB/s" if "mb_s" in res else res["failed"]))


def _check_hits(ep: Endpoint, origin_port: int, sizes: list[str], name: str) -> None:
    """A cache row must answer a repeated GET without the origin; else it measures no cache."""
    before = origin_requests(origin_port)
    for size in sizes:
        fetch(ep, origin_port, f"/{size}")
    reached = origin_requests(origin_port) - before - 1
    if reached:
        raise StartError(f"{name}: not answering from its cache ({reached} of {len(sizes)} repeated GETs of a "
                         f"response with max-age={configs.CACHE_MAX_AGE} reached the origin)")


def _check_tunnel(ep: Endpoint, ctx: Context, core) -> None:
    """A small fetch proves the CONNECT path works before the large download is timed."""
    cmd = [which("curl"), "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"]
    if ep.proc is not None:
        cmd += ["-p", "-x", f"http://127.0.0.1:{ep.port}"]
    cmd.append(f"http://{ctx.tunnel_host}:{ctx.tunnel_port}/100b")
    out = subprocess.run(pinned(cmd, core), capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    if out.stdout.strip() != "200":
        raise StartError(f"CONNECT to {ctx.tunnel_host}:{ctx.tunnel_port} failed: curl said "
                         f"{out.stdout.strip() or '-'} {out.stderr.strip()[-200:]}")
    # One untimed download first: the origin's page cache and the proxy's buffers are warm
    # for every timed run, not only for the rows that happen to come later.
    warm = _download(ep, ctx, core, ctx.tunnel_bytes)
    if "failed" in warm:
        raise StartError(f"warm-up download failed: {warm['failed']}")


def _download(ep: Endpoint, ctx: Context, core, size: int) -> dict:
    proxy0 = tree_cpu_seconds(ep.proc.pid) if ep.proc else 0.0
    busy0 = system_busy_seconds()
    try:
        res = curl_download(ep, ctx.tunnel_host, ctx.tunnel_port, core, timeout=max(60, size / 20e6))
    except (StartError, OSError) as exc:
        return {"failed": str(exc)}
    res["proxy_cpu_s"] = (tree_cpu_seconds(ep.proc.pid) - proxy0) if ep.proc else None
    res["busy_cpu_s"] = system_busy_seconds() - busy0
    if res["status"] != 200 or res["bytes"] != size:
        return {"failed": f"download answered {res['status']} with {res['bytes']} of {size} bytes "
                          f"{res['curl_error']}", **res}
    res["mb_s"] = res["bytes"] / res["seconds"] / 1e6 if res["seconds"] > 0 else 0.0
    return res


def main(argv: list[str]) -> int:
    """Entry point of `python -m bench load`; returns the exit code."""
    p = argparse.ArgumentParser(
        prog="python -m bench load",
        description="Load-test fastproxy side by side with nginx, HAProxy, Varnish, Squid, tinyproxy "
                    "(and pproxy if installed) on this machine, loopback only. When run as root on "
                    "Debian/Ubuntu, missing tools are installed with apt-get first (without starting "
                    "their system services); --no-install prevents that. Exit 0 when every row ran (a "
                    "reference row whose program is missing may be skipped unless named in --rows), 1 when a "
                    "row could not run (named on stderr), 2 for a bad option.")
    add_arguments(p)
    a = p.parse_args(argv)
    try:
        opts = resolve_options(a)
    except UsageError as exc:
        print(f"bench load: {exc}", file=sys.stderr)
        return 2
    try:
        doc = run(opts)
    except NotRunnable as exc:
        print(f"bench load: the fastproxy rows cannot run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench load: interrupted; every started process was stopped", file=sys.stderr)
        return 130
    no_chart = report.chart_unavailable()
    if no_chart:
        doc["notes"].append(f"no chart: {no_chart}")
    paths = report.write_all(doc, opts["out"])
    print(report.markdown(doc))
    _say("bench: wrote " + ", ".join(str(p) for p in paths))
    if no_chart:
        _say(f"bench: no chart: {no_chart}")
    return report_failures("bench load", doc)


def report_failures(prog: str, doc: dict, written: bool = True) -> int:
    """Print one line per row that could not run; return the exit code (1 if any, else 0)."""
    failed = row_failures(doc)
    for name, why in failed:
        print(f"{prog}: {name}: {why}", file=sys.stderr)
    if failed:
        print(f"{prog}: {len(failed)} row(s) could not run" + (" (results of the others are written)" * written),
              file=sys.stderr)
    return 1 if failed else 0
