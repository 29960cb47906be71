"""Smoke runs of the load benchmark harness (bench/): it starts, measures, reports and cleans up.

Each row runs for about a second per load (wrk c8, wrk c1, and hey with a new connection
per request when hey is installed); the numbers are never asserted, only that the harness
produced them for every row it could run, and that no process it started is left behind.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fastproxy

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # for `bench` only; fastproxy is already imported
from bench.rows import ROW_NAMES, ROWS  # noqa: E402
from bench.tools import which  # noqa: E402

BASE_TOOLS = ("wrk", "nginx", "curl")
HEY = which("hey") is not None
missing_base = [t for t in BASE_TOOLS if which(t) is None]
pytestmark = pytest.mark.skipif(
    bool(missing_base), reason=f"{', '.join(missing_base)} not installed (apt-get install {' '.join(missing_base)})"
)


def bench_env() -> dict:
    """Environment in which `python -m bench` finds bench/ and the fastproxy under test."""
    env = dict(os.environ)
    fp_parent = Path(fastproxy.__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join([str(fp_parent), str(ROOT)])
    return env


def bench(args, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=bench_env(),
                          capture_output=True, text=True, **kw)


def started_pids(out: Path) -> list[tuple[int, str]]:
    lines = (out / "processes.log").read_text().splitlines()
    return [(int(p), n) for p, n in (ln.split() for ln in lines if not ln.startswith("#"))]


def workdir_of(out: Path) -> Path:
    first = (out / "processes.log").read_text().splitlines()[0]
    assert first.startswith("# workdir ")
    return Path(first.split(" ", 2)[2])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def fastproxy_reverse_exists() -> bool:
    """True once `fastproxy serve --mode reverse` is part of the command line (issue 3)."""
    out = subprocess.run([sys.executable, "-m", "fastproxy", "serve", "--help"], env=bench_env(),
                         capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and "--mode" in out.stdout


def test_smoke_run_reports_every_row_it_could_run(tmp_path):
    out = tmp_path / "out"
    res = bench(["load", "--no-install", "--duration", "1", "--repeats", "1", "--sizes", "100b",
                 "--connections", "8", "--tunnel-size", "8MiB", "--out", str(out)], cwd=tmp_path, timeout=170)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["rows"]) == set(ROW_NAMES)
    summary = {e["row"]: e for e in doc["summary"]}
    optional = {"pproxy", "tunnel-pproxy"} if importlib.util.find_spec("pproxy") is None else set()
    must_run = {r.name for r in ROWS if not r.name.startswith(("fastproxy", "tunnel-fastproxy"))
                and all(which(t) for t in r.needs) and r.name not in optional}
    if fastproxy_reverse_exists():
        must_run |= {"fastproxy"}
    for name, row in doc["rows"].items():
        if name in must_run:
            assert row["skipped"] is None, f"{name}: {row['skipped']}"
        if row["skipped"]:
            assert len(row["skipped"]) > 10, f"{name}: skip note says nothing"
            assert f"**{name}** skipped" in res.stdout
            continue
        ok = [r for r in row["runs"] if "failed" not in r]
        assert ok, f"{name}: no successful run: {row['runs']}"
        if row["group"] == "tunnel":
            assert all(r["bytes"] == 8 << 20 and r["mb_s"] > 0 for r in ok)
        else:
            # The c8 run and the c1 run, each with requests, latency and proxy CPU accounted.
            assert sorted(r["connections"] for r in ok if r["tool"] == "wrk") == [1, 8]
            assert all(r["requests"] > 0 and r["p99_us"] >= r["p50_us"] > 0 for r in ok)
            if name not in ("direct",):
                assert all(r["proxy_cpu_s"] is not None for r in ok)
                assert summary[name]["req_per_cpu_s"] is None or summary[name]["req_per_cpu_s"] > 0
            # ...and with hey, the c8 run opening a new connection for every request.
            new = [r for r in ok if r["tool"] == "hey"]
            if HEY:
                assert [r["connections"] for r in new] == [8], row["runs"]
                assert summary[name]["new_conn_rps"] > 0 and summary[name]["new_conn_p50_ms"] > 0
                assert summary[name]["new_conn_load_core_busy"] > 0
                if name != "direct":
                    assert summary[name]["new_conn_req_per_cpu_s"] > 0
            else:
                assert new == [] and summary[name]["new_conn_rps"] is None
        assert name in summary
        assert f"| {name} |" in res.stdout
    # The cache rows really served from cache: (almost) nothing reached the origin.
    for name in ("nginx-cache", "varnish"):
        if name in summary and doc["rows"][name]["skipped"] is None:
            assert summary[name]["origin_share"] < 0.05, summary[name]
    # ...and the relaying rows did reach it once per request, with hey too (squid through -x).
    for name in ("nginx", "haproxy", "squid"):
        if name in summary and doc["rows"][name]["skipped"] is None:
            assert summary[name]["origin_share"] > 0.95, summary[name]
            if HEY:
                assert summary[name]["new_conn_origin_share"] > 0.95, summary[name]
    assert ("req/s new conn c8" in res.stdout) and (("hey is not installed" in res.stdout) != HEY)
    assert (out / "results.md").read_text().startswith("## fastproxy load benchmark")
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    leftover = [(p, n) for p, n in started_pids(out) if alive(p)]
    assert leftover == []
    assert not workdir_of(out).exists()


@pytest.mark.parametrize("how", ["--no-hey", "hey missing"])
def test_without_hey_the_new_connection_columns_say_why(tmp_path, how):
    env = bench_env()
    args = ["--no-hey"] if how == "--no-hey" else []
    if how == "hey missing":
        # A PATH with the other tools but no hey (nginx is found in sbin without PATH).
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for tool in ("wrk", "taskset"):
            (bin_dir / tool).symlink_to(which(tool))
        env["PATH"] = str(bin_dir)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "bench", "load", "--no-install", "--rows", "direct", "--no-c1",
                          "--duration", "1", "--repeats", "1", "--sizes", "100b", "--out", str(out), *args],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((out / "results.json").read_text())
    assert [r["tool"] for r in doc["rows"]["direct"]["runs"]] == ["wrk"]
    assert doc["summary"][0]["new_conn_rps"] is None
    if how == "--no-hey":
        assert doc["hey"] == "skipped (--no-hey)" and "new conn" not in res.stdout
    else:
        assert "hey is not installed" in doc["hey"]
        assert "new-connection columns empty: hey is not installed" in res.stdout
        row = next(ln for ln in res.stdout.splitlines() if ln.startswith("| direct |"))
        assert row.endswith("| – | – | – | – | – |"), row


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_every_started_process(tmp_path, sig):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "bench", "load", "--no-install", "--rows", "direct,nginx",
                             "--duration", "30", "--sizes", "100b", "--out", str(out)],
                            cwd=tmp_path, env=bench_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            log = out / "processes.log"
            if log.exists() and len(started_pids(out)) >= 2:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the harness never started the origin and nginx")
        time.sleep(1.5)  # let a wrk run begin, so the interrupt lands mid-measurement
        pids = started_pids(out)
        assert all(alive(p) for p, _ in pids)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-1000:]
    assert "interrupted" in err
    deadline = time.monotonic() + 5
    while any(alive(p) for p, _ in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(p, n) for p, n in pids if alive(p)] == []
    assert not workdir_of(out).exists()


@pytest.mark.parametrize("args, key", [
    (["--rows", "nginx,bogus"], "--rows"),
    (["--sizes", "3k"], "--sizes"),
    (["--duration", "0"], "--duration"),
    (["--tunnel-size", "lots"], "--tunnel-size"),
])
def test_bad_option_is_one_line_naming_it(tmp_path, args, key):
    res = bench(["load", "--no-install", *args, "--out", str(tmp_path)], cwd=tmp_path, timeout=30)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bench load: {key}:"), res.stderr


def test_micro_entry_point_lists_and_rejects(tmp_path):
    res = bench(["micro", "--quick", "no_such_module"], cwd=tmp_path, timeout=30)
    assert res.returncode == 2 and "unknown benchmark 'no_such_module'" in res.stderr
    present = sorted(p.stem[len("micro_"):] for p in (ROOT / "bench").glob("micro_*.py"))
    res = bench(["micro", "--help"], cwd=tmp_path, timeout=30)
    assert res.returncode == 0
    assert (", ".join(present) or "none yet") in " ".join(res.stdout.split())
