"""Large bodies through the proxy with flat memory: peak RSS while N GiB go each way.

    python -m bench.memory --size 2GiB            # reverse mode, upload and download
    python -m bench.memory --size 2GiB --tunnel   # also through a CONNECT tunnel (forward mode)

The origin is tests/origin.py (a real HTTP/1.1 server); the client is a raw socket
that reads as fast as it can. The proxy's RSS is sampled every 50 ms from /proc.
Loopback only; every process started here is stopped by its PID at the end.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from origin import Origin  # noqa: E402


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except OSError:
                return
            time.sleep(0.05)


def start_proxy(args: list[str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "fastproxy", "serve", *args],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        m = re.search(r"listening on .*:(\d+) ", line)
        if m:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, int(m.group(1))
    proc.kill()
    raise SystemExit("proxy did not start")


def download(port: int, size: int, connect_to: tuple[str, int] | None = None) -> float:
    s = socket.create_connection(("127.0.0.1", port))
    if connect_to:
        host, oport = connect_to
        s.sendall(f"CONNECT {host}:{oport} HTTP/1.1\r\nHost: {host}:{oport}\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(4096)
    t0 = time.monotonic()
    s.sendall(f"GET /size/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(65536)
    got = len(head.partition(b"\r\n\r\n")[2])
    while got < size:
        chunk = s.recv(1 << 20)
        if not chunk:
            raise SystemExit(f"download cut at {got} bytes")
        got += len(chunk)
    s.close()
    return time.monotonic() - t0


def upload(port: int, size: int) -> float:
    s = socket.create_connection(("127.0.0.1", port))
    t0 = time.monotonic()
    s.sendall(f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
    block = b"u" * (1 << 20)
    sent = 0
    while sent < size:
        n = min(len(block), size - sent)
        s.sendall(block[:n])
        sent += n
    resp = b""
    while b'"body_len": ' not in resp:
        chunk = s.recv(65536)
        if not chunk:
            break
        resp += chunk
    s.close()
    if f'"body_len": {size}'.encode() not in resp:
        raise SystemExit("upload: origin did not receive every byte")
    return time.monotonic() - t0


def parse_size(text: str) -> int:
    from fastproxy.config.load import parse_size as ps
    return ps(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2GiB")
    ap.add_argument("--tunnel", action="store_true", help="also measure a CONNECT tunnel")
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    origin = Origin().start()
    procs = []
    try:
        proxy, port = start_proxy(["--mode", "reverse", "--listen", "127.0.0.1:0",
                                   "--upstream", origin.url])
        procs.append(proxy)
        base = rss_kib(proxy.pid)
        sampler = Sampler(proxy.pid)
        sampler.start()
        td = download(port, size)
        tu = upload(port, size)
        sampler.stop.set()
        print(f"reverse: {size / 2**30:.2f} GiB down in {td:.1f}s ({size / td / 2**20:.0f} MiB/s),"
              f" up in {tu:.1f}s ({size / tu / 2**20:.0f} MiB/s); RSS {base} KiB at start,"
              f" peak {sampler.peak} KiB (+{sampler.peak - base} KiB)")
        if args.tunnel:
            fwd, fport = start_proxy(["--mode", "forward", "--listen", "127.0.0.1:0",
                                      "--allow-private", "--connect-ports", str(origin.port)])
            procs.append(fwd)
            base = rss_kib(fwd.pid)
            sampler = Sampler(fwd.pid)
            sampler.start()
            tt = download(fport, size, ("127.0.0.1", origin.port))
            sampler.stop.set()
            print(f"tunnel: {size / 2**30:.2f} GiB down in {tt:.1f}s "
                  f"({size / tt / 2**20:.0f} MiB/s); RSS {base} KiB at start, peak "
                  f"{sampler.peak} KiB (+{sampler.peak - base} KiB)")
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        origin.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
