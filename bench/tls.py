"""TLS termination: fastproxy against nginx with the same certificate, in one run.

    python -m bench.tls [--duration 5] [--connections 32] [--size 4k]

Both proxies terminate TLS (one worker each, pinned to core 0) in front of the same nginx
origin; the load generators and the origin share the other core. Rows: full handshakes
per second (`hey -disable-keepalive`: a new TLS connection per request, no resumption)
and kept-alive requests over TLS (`wrk`), each with the proxy's CPU-seconds and requests
per proxy CPU-second, and fastproxy/nginx per CPU-second. The certificate is one ECDSA
P-256 key made with `openssl` for the run. Issue 13 asks for the first measurement; the
goal is set from it. fastproxy is the installed one, or the one on an absolute PYTHONPATH.
"""
from __future__ import annotations

import argparse
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
    return main.replace(f"listen 127.0.0.1:{port} reuseport backlog=4096;",
                        f"listen 127.0.0.1:{port} ssl reuseport backlog=4096;\n"
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


def run(duration: int = 5, connections: int = 32, size: str = "4k") -> list[dict]:
    """Rows for fastproxy and nginx: handshakes and kept-alive requests per CPU-second."""
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
        results: dict = {}
        for name, proc, port in (("fastproxy", fp, f_port), ("nginx", nginx, n_port)):
            url = f"https://localhost:{port}/{size}"
            run_wrk(url, connections, 1, 1)             # warm-up
            hs, hs_cpu = _measure(proc.pid, lambda: run_hey(url, connections, duration, 1))
            ka, ka_cpu = _measure(proc.pid, lambda: run_wrk(url, connections, duration, 1))
            hs_rps = hs.get("rps") or hs.get("requests_per_sec") or 0.0
            results[name] = (hs_rps * duration / hs_cpu if hs_cpu else 0.0,
                             ka["requests"] / ka_cpu if ka_cpu else 0.0)
            rows.append({"name": f"{name} handshakes", "req/s": hs_rps, "proxy CPU-s": hs_cpu,
                         "req per CPU-s": results[name][0]})
            rows.append({"name": f"{name} keep-alive", "req/s": ka["rps"], "proxy CPU-s": ka_cpu,
                         "req per CPU-s": results[name][1], "errors": ka["errors"]})
        for i, what in enumerate(("handshakes", "keep-alive")):
            rows.append({"name": f"fastproxy/nginx {what} per CPU-s",
                         "ratio": results["fastproxy"][i] / results["nginx"][i]
                         if results["nginx"][i] else 0.0})
    return rows


def main(argv: list[str]) -> int:
    """Print the table."""
    p = argparse.ArgumentParser(prog="python -m bench.tls")
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--size", default="4k", choices=sorted(configs.SIZES))
    a = p.parse_args(argv)
    from bench.micro import table
    print(table(run(a.duration, a.connections, a.size)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
