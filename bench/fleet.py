"""A fleet of three fastproxy nodes on a Zipf(0.99) trace: what peering and Redis save.

Three reverse nodes on loopback in front of one counting origin; clients spread requests
over the nodes round robin (as an L4 balancer would), all under one Host. Three setups on
the same trace:

  (a) independent nodes (each its own cache)
  (b) peering (--peers/--self: each key owned by one node)
  (c) peering + the Redis shared tier ([cache.shared], a redis-server started here)

For each: origin requests, the fleet's hit ratio (requests the origin never saw), and
client latency. Then the added latency of a peer fetch (a key cached at its owner only,
asked at another node) against a local hit.

    python -m bench.fleet [--requests 20000] [--objects 10000] [--cache 4MiB] [--threads 4]
"""
from __future__ import annotations

import argparse
import http.client
import http.server
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BODY = b"x" * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Origin:
    """A counting origin: every path is a 1 KiB body, fresh for 10 minutes."""

    def __init__(self) -> None:
        counter = self
        self.count = 0
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True   # head and body are two writes

            def do_GET(self):  # noqa: N802 (http.server's name)
                with counter.lock:
                    counter.count += 1
                self.send_response(200)
                self.send_header("Cache-Control", "max-age=600")
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start_nodes(origin: Origin, cache: str, peering: bool, redis_url: str | None,
                tmp: str) -> tuple[list[subprocess.Popen], list[int]]:
    ports = [free_port() for _ in range(3)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    procs = []
    for i, port in enumerate(ports):
        path = os.path.join(tmp, f"node{i}.toml")
        with open(path, "w") as fh:
            fh.write(f'[cache]\nsize = "{cache}"\nmax_object_size = "64KiB"\n')
            if redis_url:
                fh.write(f'[cache.shared]\nurl = "{redis_url}"\n')
            if peering:
                fh.write(f"[cluster]\npeers = {urls!r}\nself = {urls[i]!r}\n".replace("'", '"'))
            fh.write(f'[upstreams.o]\nservers = ["{origin.url}"]\n[[listeners]]\n'
                     f'listen = "127.0.0.1:{port}"\nmode = "reverse"\nupstream = "o"\n')
        procs.append(subprocess.Popen([sys.executable, "-m", "fastproxy", "serve", "--config", path],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for port in ports:
        wait_port(port)
    return procs, ports


def stop(procs) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def run_trace(ports: list[int], trace: np.ndarray, threads: int) -> list[float]:
    """Send the trace (request i to node i % 3); returns per-request latencies (s)."""
    chunks = np.array_split(np.arange(len(trace)), threads)

    def worker(idx) -> list[float]:
        conns = [http.client.HTTPConnection("127.0.0.1", p, timeout=10) for p in ports]
        out = []
        for i in idx:
            c = conns[i % 3]
            t0 = time.perf_counter()
            c.request("GET", f"/obj/{trace[i]}", headers={"Host": "www.example"})
            r = c.getresponse()
            r.read()
            out.append(time.perf_counter() - t0)
            if r.status != 200:
                raise RuntimeError(f"status {r.status}")
        for c in conns:
            c.close()
        return out

    with ThreadPoolExecutor(threads) as pool:
        return [x for part in pool.map(worker, chunks) for x in part]


def peer_latency(ports: list[int], samples: int) -> tuple[float, float]:
    """Median seconds of a local hit and of a first request served by the owning peer."""
    local, peer = [], []
    for i in range(samples):
        path = f"/lat/{i}"
        # Warm the key at its owner by asking node 1 (which asks the owner, or is it).
        c = http.client.HTTPConnection("127.0.0.1", ports[1], timeout=10)
        c.request("GET", path, headers={"Host": "www.example"})
        c.getresponse().read()
        c.request("GET", path, headers={"Host": "www.example"})
        c.getresponse().read()
        t0 = time.perf_counter()
        c.request("GET", path, headers={"Host": "www.example"})
        c.getresponse().read()
        local.append(time.perf_counter() - t0)
        c.close()
        # Node 0 has never seen it: its first request goes to the owner (if not node 0).
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
        c.request("GET", "/warm", headers={"Host": "www.example"})
        c.getresponse().read()
        t0 = time.perf_counter()
        c.request("GET", path, headers={"Host": "www.example"})
        r = c.getresponse()
        r.read()
        dt = time.perf_counter() - t0
        if (r.getheader("Cache-Status") or "").count("hit") and "fwd=" in (r.getheader("Cache-Status") or ""):
            peer.append(dt)
        c.close()
    return statistics.median(local), statistics.median(peer) if peer else float("nan")


def main(argv: list[str] | None = None) -> int:
    """Run the three setups and print one table."""
    ap = argparse.ArgumentParser(prog="python -m bench.fleet")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--objects", type=int, default=10000)
    ap.add_argument("--cache", default="4MiB", help="cache size per node")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--samples", type=int, default=200, help="peer latency samples")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(1)
    ranks = np.arange(1, args.objects + 1, dtype=float)
    p = ranks ** -0.99
    trace = rng.choice(args.objects, size=args.requests, p=p / p.sum())
    redis_exe = shutil.which("redis-server")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        setups = [("independent", False, False), ("peering", True, False)]
        if redis_exe:
            setups.append(("peering + redis", True, True))
        for name, peering, shared in setups:
            origin = Origin()
            redis_proc = None
            redis_url = None
            if shared:
                rport = free_port()
                redis_proc = subprocess.Popen(
                    [redis_exe, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", tmp],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wait_port(rport)
                redis_url = f"redis://127.0.0.1:{rport}/0"
            procs, ports = start_nodes(origin, args.cache, peering, redis_url, tmp)
            try:
                t0 = time.perf_counter()
                lat = run_trace(ports, trace, args.threads)
                elapsed = time.perf_counter() - t0
                extra = ""
                if peering and not shared:
                    local, peer = peer_latency(ports, args.samples)
                    extra = (f"  local hit p50 {local * 1e6:.0f} us, "
                             f"peer fetch p50 {peer * 1e6:.0f} us")
                rows.append((name, origin.count, 1 - origin.count / args.requests,
                             statistics.median(lat) * 1e6,
                             float(np.percentile(lat, 99)) * 1e6, elapsed, extra))
            finally:
                stop(procs)
                origin.stop()
                if redis_proc is not None:
                    redis_proc.terminate()
                    redis_proc.wait(5)
    print(f"Zipf(0.99), {args.objects} objects of 1 KiB, {args.requests} requests over 3 nodes "
          f"(round robin), cache {args.cache} per node; {len(set(trace.tolist()))} distinct "
          f"objects (the least the origin can see)")
    print(f"{'setup':<18}{'origin reqs':>12}{'hit ratio':>11}{'p50 us':>9}{'p99 us':>9}{'time s':>8}")
    for name, count, ratio, p50, p99, elapsed, extra in rows:
        print(f"{name:<18}{count:>12}{ratio:>11.3f}{p50:>9.0f}{p99:>9.0f}{elapsed:>8.1f}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
