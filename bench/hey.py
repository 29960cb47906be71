"""Run hey once with a new connection per request and return its numbers from its summary.

wrk keeps its connections open, so it measures a proxy's steady keep-alive path. hey with
`-disable-keepalive` opens a connection for every request and sends `Connection: close`
(RFC 9112 section 9.6), which is what an HTTP/1.0 client or a client that never reuses
connections costs a proxy: accept, parse one request, answer, close.

hey (0.1.x, the Debian package) has no machine-readable summary, so its text is parsed
section by section; anything unrecognised is ignored, and a summary without a total time
and a request rate is an error, never a zero.
"""
from __future__ import annotations

import re
import subprocess

from bench.procs import pinned
from bench.tools import which

# hey prints times in seconds with four decimals: latencies are known to 0.1 ms.
LATENCY_RESOLUTION_US = 100
# hey keeps at most this many per-request results (its `maxRes`); the status code counts
# stop there, while its request rate still counts every result.
HEY_MAX_RESULTS = 1_000_000

_SECTION = re.compile(r"^(\S[^:]*):\s*$")
_KEY_VALUE = re.compile(r"^\s+([A-Za-z/ ]+):\s+(\S+)")
_PERCENTILE = re.compile(r"^\s+(\d+)% in (\S+) secs")
_STATUS = re.compile(r"^\s+\[(\d{3})\]\s+(\d+) responses")
_ERROR = re.compile(r"^\s+\[(\d+)\]\s+(.*\S)")


class HeyError(RuntimeError):
    """hey failed or printed no usable summary."""


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if value != value else value  # hey prints NaN when nothing succeeded


def parse_summary(text: str) -> dict:
    """Parse hey's text summary into requests, rate, latency percentiles, statuses and errors.

    `requests` counts answered requests of any status (as wrk does); `errors` counts
    non-2xx answers plus requests that got no answer (connect, read, timeout errors).
    """
    section = ""
    summary: dict[str, float | None] = {}
    percentiles: dict[int, float] = {}
    statuses: dict[int, int] = {}
    failures: dict[str, int] = {}
    for line in text.splitlines():
        head = _SECTION.match(line)
        if head:
            section = head.group(1).strip().lower()
            continue
        if section == "summary":
            m = _KEY_VALUE.match(line)
            if m:
                summary[m.group(1).strip().lower()] = _float(m.group(2))
        elif section == "latency distribution":
            m = _PERCENTILE.match(line)
            if m and _float(m.group(2)) is not None:
                percentiles[int(m.group(1))] = _float(m.group(2))
        elif section == "status code distribution":
            m = _STATUS.match(line)
            if m:
                statuses[int(m.group(1))] = statuses.get(int(m.group(1)), 0) + int(m.group(2))
        elif section == "error distribution":
            m = _ERROR.match(line)
            if m:
                failures[m.group(2)] = failures.get(m.group(2), 0) + int(m.group(1))
    total_s, rate = summary.get("total"), summary.get("requests/sec")
    if not total_s or rate is None:
        raise HeyError("hey printed no summary (no Total and Requests/sec): " + text.strip()[-300:])
    no_answer = sum(failures.values())
    answered = sum(statuses.values())
    # hey's rate counts every result, answered or not; past its result cap the status
    # counts fall short, and the rate is the better count of answered requests.
    results = round(rate * total_s)
    if answered >= HEY_MAX_RESULTS and results - no_answer > answered:
        answered = results - no_answer
    non_2xx = sum(n for code, n in statuses.items() if not 200 <= code < 300)

    def us(p: int) -> float | None:
        return percentiles[p] * 1e6 if p in percentiles else None

    return {
        "requests": answered,
        "duration_us": total_s * 1e6,
        "rps": answered / total_s,
        "hey_rps": rate,
        "p50_us": us(50), "p90_us": us(90), "p99_us": us(99),
        "mean_us": summary["average"] * 1e6 if summary.get("average") is not None else None,
        "max_us": summary["slowest"] * 1e6 if answered and summary.get("slowest") is not None else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "non_2xx": non_2xx,
        "no_answer": no_answer,
        "errors": non_2xx + no_answer,
        # The distinct messages (connection refused, reset, timeout) say what went wrong.
        "error_kinds": dict(sorted(failures.items(), key=lambda kv: -kv[1])[:5]),
    }


def run_hey(
    url: str,
    connections: int,
    duration: int,
    core: int | None,
    proxy: str | None = None,
    timeout_s: int = 2,
) -> dict:
    """Load url with `hey -z S -c N -disable-keepalive` pinned to core; return its parsed summary.

    proxy, when given (`http://127.0.0.1:PORT`), makes hey send absolute-form targets
    to it (RFC 9112 section 3.2.2), as a client configured with a forward proxy does.
    """
    exe = which("hey")
    if exe is None:
        raise HeyError("hey is not installed (apt-get install hey)")
    # -disable-compression: no Accept-Encoding, so the request asks for what wrk's does.
    cmd = [exe, "-z", f"{duration}s", "-c", str(connections), "-t", str(timeout_s),
           "-disable-keepalive", "-disable-compression"]
    if core is not None:
        cmd += ["-cpus", "1"]  # one Go scheduler thread on the one core it is pinned to
    if proxy:
        cmd += ["-x", proxy]
    cmd.append(url)
    # A request still in flight when the time is up finishes (or times out) before hey exits.
    limit = duration + timeout_s + 30
    try:
        out = subprocess.run(pinned(cmd, core), capture_output=True, text=True, timeout=limit,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise HeyError(f"hey did not finish within {limit}s") from exc
    if out.returncode != 0:
        raise HeyError(f"hey exited {out.returncode}: {(out.stderr or out.stdout).strip()[-300:]}")
    try:
        return parse_summary(out.stdout)
    except HeyError as exc:
        raise HeyError(f"{exc} {out.stderr.strip()[-200:]}".strip()) from None
