"""TLS termination: fastproxy against nginx with the same certificate, in one run.

    python -m bench.tls [--duration 5] [--connections 32] [--size 4k] [--repeats 1]

Both proxies terminate TLS (one worker each, pinned to core 0) in front of the same nginx
origin; the load generators and the origin share the other core. Cases, each with the
proxy's CPU-seconds and requests per proxy CPU-second, and fastproxy/nginx per CPU-second:

- `full (hey)`: a new TLS connection per request, no resumption (`hey -disable-keepalive`,
  Go's client, sends SNI);
- `full (s_time)` and `resumed (s_time)`: `openssl s_time -new` / `-reuse` (a new
  connection per HTTP/1.0 request; `-reuse` resumes the first connection's session, by
  ticket under TLS 1.3), several at once; no SNI;
- `keep-alive (wrk)`: kept-alive requests over TLS.

The certificate is one ECDSA P-256 key made with `openssl` for the run, the same for both.
With --repeats N each case runs N times (fastproxy and nginx alternating) and the rows
show the median. fastproxy is the installed one, or the one on an absolute PYTHONPATH.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import configs
from bench.hey import run_hey
from bench.procs import Supervisor, free_port, tree_cpu_seconds
from bench.wrk import run_wrk


def _cert(tmp: Path) -> tuple[Path, Path]:
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def _nginx_tls(tmp: Path, port: int, origin_port: int, cert: Path, key: Path) -> str:
    main = configs.nginx_proxy(tmp, port, origin_port, cache=False)
    return main.replace(f"listen 127.0.0.1:{port} reuseport deferred backlog=4096;",
                        f"listen 127.0.0.1:{port} ssl reuseport deferred backlog=4096;\n"
                        f"        ssl_certificate {cert};\n        ssl_certificate_key {key};\n"
                        "        ssl_protocols TLSv1.2 TLSv1.3;")


def _wait(port: int, timeout: float = 10.0) -> None:
    import socket
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _measure(pid: int, fn) -> tuple[dict, float]:
    before = tree_cpu_seconds(pid)
    res = fn()
    return res, tree_cpu_seconds(pid) - before


_S_TIME = re.compile(r"^(\d+) connections in [\d.]+ real seconds, (\d+) bytes read per", re.M)


def run_s_time(port: int, path: str, mode: str, clients: int, duration: int,
               body: int) -> dict:
    """`openssl s_time -new|-reuse` x clients at once on core 1; connections per second.

    s_time looks at no status line: a connection counts only when it read at least the
    body's bytes (an error page would be shorter)."""
    cmd = ["taskset", "-c", "1", "openssl", "s_time", "-connect", f"127.0.0.1:{port}",
           mode, "-time", str(duration), "-www", path]
    start = time.monotonic()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              stdin=subprocess.DEVNULL) for _ in range(clients)]
    total = 0
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError("openssl s_time did not finish") from None
        # s_time prints the -new run first; with -reuse its first connection is a full one.
        m = _S_TIME.findall(out)
        if not m:
            raise RuntimeError(f"openssl s_time printed no count: {out.strip()[-200:]}")
        count, per = (int(x) for x in m[-1])
        if count and per < body:
            raise RuntimeError(f"openssl s_time read {per} bytes per connection, "
                               f"fewer than the {body}-byte body: {out.strip()[-200:]}")
        total += count
    wall = time.monotonic() - start
    return {"requests": total, "rps": total / wall}


def _cases(url: str, port: int, connections: int, duration: int, body: int = 0):
    path = "/" + url.split("/", 3)[3]
    clients = 8
    return (
        ("full (hey)", lambda: run_hey(url, connections, duration, 1)),
        ("full (s_time)", lambda: run_s_time(port, path, "-new", clients, duration, body)),
        ("resumed (s_time)", lambda: run_s_time(port, path, "-reuse", clients, duration, body)),
        ("keep-alive (wrk)", lambda: run_wrk(url, connections, duration, 1)),
    )


def run(duration: int = 5, connections: int = 32, size: str = "4k",
        repeats: int = 1) -> list[dict]:
    """Rows for fastproxy and nginx per case (median of repeats) and the ratios."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as d, Supervisor(Path(d)) as sup:
        tmp = Path(d)
        docroot = tmp / "www"
        configs.write_origin_files(docroot, 1 << 20)
        cert, key = _cert(tmp)
        o_port, n_port, f_port = free_port(), free_port(), free_port()
        (tmp / "origin").mkdir()
        (tmp / "origin.conf").write_text(configs.nginx_origin(tmp / "origin", o_port, docroot))
        sup.spawn("origin", ["taskset", "-c", "1", "nginx", "-c", str(tmp / "origin.conf"),
                             "-p", str(tmp / "origin")])
        (tmp / "proxy").mkdir()
        (tmp / "nginx.conf").write_text(_nginx_tls(tmp / "proxy", n_port, o_port, cert, key))
        nginx = sup.spawn("nginx", ["taskset", "-c", "0", "nginx", "-c", str(tmp / "nginx.conf"),
                                    "-p", str(tmp / "proxy")])
        (tmp / "fp.toml").write_text(
            f'[[listeners]]\nlisten = "127.0.0.1:{f_port}"\nupstream = "o"\n'
            f'tls = {{ cert = "{cert}", key = "{key}" }}\n'
            f'[upstreams.o]\nservers = ["http://127.0.0.1:{o_port}"]\n')
        fp = sup.spawn("fastproxy", ["taskset", "-c", "0", sys.executable, "-m", "fastproxy",
                                     "serve", "--config", str(tmp / "fp.toml")])
        for port in (o_port, n_port, f_port):
            _wait(port)
        procs = {"fastproxy": (fp, f_port), "nginx": (nginx, n_port)}
        for name, (_, port) in procs.items():
            run_wrk(f"https://localhost:{port}/{size}", connections, 1, 1)   # warm-up
        samples: dict = {}
        for _ in range(repeats):
            for name, (proc, port) in procs.items():
                url = f"https://localhost:{port}/{size}"
                for case, fn in _cases(url, port, connections, duration, configs.SIZES[size]):
                    res, cpu = _measure(proc.pid, fn)
                    # Answered requests (hey, wrk) or connections (s_time, one request each).
                    reqs = res["requests"]
                    samples.setdefault((name, case), []).append(
                        (res["rps"], cpu, reqs / cpu if cpu else 0.0, res.get("errors")))
        med: dict = {}
        for (name, case), got in samples.items():
            rps, cpu, per_cpu = (statistics.median(g[i] for g in got) for i in range(3))
            med[(name, case)] = per_cpu
            errors = [g[3] for g in got if g[3] is not None]
            rows.append({"name": f"{name} {case}", "req/s": rps, "proxy CPU-s": cpu,
                         "req per CPU-s": per_cpu, "errors": sum(errors) if errors else None})
        for case, _ in _cases("https://x/y", 0, 0, 0):
            n = med[("nginx", case)]
            rows.append({"name": f"fastproxy/nginx {case} per CPU-s",
                         "ratio": med[("fastproxy", case)] / n if n else 0.0})
    return rows


def main(argv: list[str]) -> int:
    """Print the table."""
    p = argparse.ArgumentParser(prog="python -m bench.tls")
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--size", default="4k", choices=sorted(configs.SIZES))
    p.add_argument("--repeats", type=int, default=1, help="runs per case; rows show the median")
    a = p.parse_args(argv)
    from bench.micro import table
    print(table(run(a.duration, a.connections, a.size, a.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
