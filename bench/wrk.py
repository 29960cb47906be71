"""Run wrk once and return its numbers from the JSON line the Lua script prints."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from bench.procs import pinned

SCRIPT = Path(__file__).with_name("bench.lua")


class WrkError(RuntimeError):
    """wrk failed or printed no result line."""


def run_wrk(
    url: str,
    connections: int,
    duration: int,
    core: int | None,
    absolute_target: str | None = None,
    host: str | None = None,
    timeout_s: int = 2,
) -> dict:
    """Load url with `wrk -t1 -cN -dS` pinned to core; return requests/s, latency and errors."""
    cmd = pinned(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", f"--timeout={timeout_s}s", "-s", str(SCRIPT), url],
        core,
    )
    env = dict(os.environ)
    env.pop("BENCH_TARGET", None)
    if absolute_target:
        env["BENCH_TARGET"] = absolute_target
        env["BENCH_HOST"] = host or ""
    try:
        out = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=duration + 30,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {duration + 30}s") from exc
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            res = json.loads(line[len("BENCH_JSON "):])
            break
    else:
        raise WrkError(f"wrk exited {out.returncode}: {(out.stderr or out.stdout).strip()[-300:]}")
    secs = res["duration_us"] / 1e6
    res["rps"] = res["requests"] / secs if secs > 0 else 0.0
    # wrk counts a server's close of a keep-alive connection as a read error even after a
    # complete response (tinyproxy closes after every response): reported apart as "closes".
    res["errors"] = sum(res[k] for k in ("err_connect", "err_write", "err_status", "err_timeout"))
    res["closes"] = res["err_read"]
    return res
