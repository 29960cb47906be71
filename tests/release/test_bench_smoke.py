"""Smoke runs of the load benchmark harness (bench/): it starts, measures, reports and cleans up.

Each row runs for about a second per load (wrk c8, wrk c1, and hey with a new connection
per request when hey is installed); the numbers are never asserted, only that the harness
produced them for every row it could run, and that no process it started is left behind.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fastproxy

ROOT = Path(__file__).resolve().parents[2]
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


def test_smoke_run_reports_every_row_it_could_run(tmp_path):
    out = tmp_path / "out"
    res = bench(["load", "--no-install", "--duration", "1", "--repeats", "1", "--sizes", "100b",
                 "--connections", "8", "--tunnel-size", "8MiB", "--out", str(out)], cwd=tmp_path, timeout=170)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["rows"]) == set(ROW_NAMES)
    summary = {e["row"]: e for e in doc["summary"]}
    # Every fastproxy row, and every reference row whose programs are installed here.
    must_run = {r.name for r in ROWS if r.ours or (all(which(t) for t in r.needs)
                                                   and all(importlib.util.find_spec(m) for m in r.modules))}
    for name, row in doc["rows"].items():
        assert row["failed"] is None, f"{name}: {row['failed']}"
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


def unbuilt_copy(dest: Path) -> Path:
    """Copy the fastproxy package under test into dest without its compiled modules."""
    shutil.copytree(Path(fastproxy.__file__).resolve().parent, dest / "fastproxy",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return dest / "fastproxy"


def test_an_unbuilt_tree_in_the_current_directory_is_not_what_runs(tmp_path):
    # As from a repository root that was never built: `fastproxy/` without its .so files
    # beside `bench/`. The rows must run the installed fastproxy, not that tree.
    unbuilt_copy(tmp_path)
    (tmp_path / "bench").symlink_to(ROOT / "bench")
    out = tmp_path / "out"
    res = bench(["load", "--no-install", "--rows", "fastproxy", "--no-hey", "--no-c1", "--duration", "1",
                 "--repeats", "1", "--sizes", "100b", "--out", str(out)], cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((out / "results.json").read_text())
    row = doc["rows"]["fastproxy"]
    assert row["skipped"] is None and row["failed"] is None
    assert [r["requests"] > 0 for r in row["runs"]] == [True]
    assert doc["fastproxy"]["path"] == str(Path(fastproxy.__file__).resolve().parent)
    assert f"not the tree in {tmp_path / 'fastproxy'}" in res.stderr


def test_an_unbuilt_fastproxy_fails_before_anything_starts(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    unbuilt_copy(src)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(ROOT)]))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "bench", "load", "--no-install", "--rows", "direct,fastproxy",
                          "--no-hey", "--duration", "1", "--sizes", "100b", "--out", str(out)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"bench load: the fastproxy rows cannot run: fastproxy at {src / 'fastproxy'} "
                               "is not built ("), lines[0]
    # Where an editable install of another tree fills in the compiled modules (a developer's
    # venv), the line says so instead of running that mix.
    assert ("(no compiled fastproxy._http, " in lines[0]
            or "(fastproxy._http: loaded from another copy of fastproxy" in lines[0]), lines[0]
    assert "pip install '.[bench]'" in lines[0]
    assert not (out / "processes.log").exists()


def test_a_fastproxy_row_that_cannot_start_fails_the_command(tmp_path):
    out = tmp_path / "out"
    res = bench(["load", "--no-install", "--rows", "direct,fastproxy", "--fastproxy", "/bin/false", "--no-hey",
                 "--no-c1", "--duration", "1", "--repeats", "1", "--sizes", "100b", "--out", str(out)],
                cwd=tmp_path, timeout=60)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "bench load: fastproxy: fastproxy exited with code 1" in res.stderr
    assert "bench load: 1 row(s) could not run" in res.stderr
    assert "✗ **fastproxy** could not run: fastproxy exited with code 1" in res.stdout
    # The other rows still ran and were written.
    doc = json.loads((out / "results.json").read_text())
    assert doc["rows"]["direct"]["runs"] and doc["rows"]["direct"]["failed"] is None
    assert [(p, n) for p, n in started_pids(out) if alive(p)] == []


def test_a_reference_row_asked_for_by_name_must_run(tmp_path):
    # tinyproxy hidden from PATH (the other tools stay reachable).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("wrk", "taskset", "curl"):
        (bin_dir / tool).symlink_to(which(tool))
    env = dict(bench_env(), PATH=str(bin_dir))
    probe = subprocess.run([sys.executable, "-c", "from bench.tools import which; print(which('tinyproxy'))"],
                           env=env, capture_output=True, text=True, timeout=30)
    if probe.stdout.strip() != "None":
        pytest.skip(f"tinyproxy is installed in an sbin directory ({probe.stdout.strip()}): cannot hide it")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "bench", "load", "--no-install", "--rows", "tinyproxy",
                          "--no-hey", "--duration", "1", "--sizes", "100b", "--out", str(out)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "bench load: tinyproxy: tinyproxy not installed" in res.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["rows"]["tinyproxy"]["failed"].startswith("tinyproxy not installed")
    assert doc["rows"]["tinyproxy"]["skipped"] is None
    # (Selected through `all` or `forward` it would be skipped with a note: the smoke run above.)


def test_without_matplotlib_the_run_says_there_is_no_chart(tmp_path):
    # A matplotlib that cannot be imported, first on the path, as on a machine without it.
    fake = tmp_path / "nomatplotlib" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError('No module named matplotlib', name='matplotlib')\n")
    env = bench_env()
    env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), env["PYTHONPATH"]])
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "bench", "load", "--no-install", "--rows", "direct", "--no-hey",
                          "--no-c1", "--duration", "1", "--repeats", "1", "--sizes", "100b", "--out", str(out)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "bench: no chart: matplotlib is not installed" in res.stderr
    assert "Note: no chart: matplotlib is not installed" in (out / "results.md").read_text()
    assert not (out / "chart.png").exists()


def test_paired_ratio_is_the_median_of_repeat_by_repeat_ratios():
    """Three interleaved repeats, the third a slow moment for fastproxy alone: the paired ratio
    stays 1.1x where the ratio of the medians says 0.78x; the c1 runs are not paired in."""
    from bench import report

    def run(rep, eff, **kw):
        return {"repeat": rep, "size": "100b", "connections": 64, "tool": "wrk", "rps": eff,
                "req_per_cpu_s": eff, "p50_us": 1, "p99_us": 2, "proxy_cpu_s": 1, "requests": 1,
                "errors": 0, "closes": 0, "origin_requests": 1, "other_cpu_s": 0,
                "duration_us": 1e6, **kw}
    doc = {"options": {"connections": 64, "sizes": ["100b"]},
           "rows": {"nginx": {"group": "reverse", "runs": [run(0, 100.0), run(1, 50.0), run(2, 90.0),
                                                            run(0, 2.0, connections=1)]},
                    "fastproxy": {"group": "reverse", "runs": [run(0, 110.0), run(1, 55.0), run(2, 70.0),
                                                               run(0, 1.0, connections=1)]}}}
    report.summarize(doc)
    ours = next(e for e in doc["summary"] if e["row"] == "fastproxy")
    assert ours["ratio_eff_paired"] == pytest.approx(1.1), ours
    assert ours["ratio_eff"] == pytest.approx(70.0 / 90.0), ours
