"""`python -m bench check` (bench/check.py): its options, verdicts and exit codes, with real runs.

The thresholds are set out of reach (1000x) or to nothing (0x) so that the verdict does not
depend on how fast anything was: no speed is asserted, only that the command compares the
rows it ran and says so with its exit code.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastproxy

ROOT = Path(__file__).resolve().parents[2]
sys.path.append(str(ROOT))  # for `bench` only; fastproxy is already imported
from bench.check import THRESHOLDS  # noqa: E402
from bench.tools import which  # noqa: E402

missing = [t for t in ("wrk", "nginx") if which(t) is None]
needs_tools = pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed "
                                 f"(apt-get install {' '.join(missing)})")
SHORT = ["--no-install", "--duration", "1", "--repeats", "1", "--sizes", "100b"]


def check(args, cwd, timeout=120):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(fastproxy.__file__).resolve().parent.parent), str(ROOT)])
    return subprocess.run([sys.executable, "-m", "bench", "check", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def verdict_rows(stdout: str) -> dict[tuple[str, str], str]:
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and cells[0] in {t.name for t in THRESHOLDS}:
            rows[(cells[0], cells[1])] = cells[7]
    return rows


@pytest.mark.parametrize("args, option", [
    (["--min-cache", "lots"], "--min-cache"),
    (["--min-keepalive", "-1"], "--min-keepalive"),
    (["--sizes", "100b,3k"], "--sizes"),
    (["--duration", "0"], "--duration"),
    (["--repeats", "0"], "--repeats"),
])
def test_bad_option_is_one_line_naming_it(tmp_path, args, option):
    res = check(args, tmp_path, timeout=30)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bench check: {option}:"), res.stderr


def test_every_threshold_has_its_option_and_default(tmp_path):
    res = check(["--help"], tmp_path, timeout=30)
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for t in THRESHOLDS:
        assert f"{t.option} RATIO" in text and f"(default {t.ratio})" in text


@needs_tools
@pytest.mark.slow
def test_a_ratio_out_of_reach_fails_and_one_of_zero_passes(tmp_path):
    out = tmp_path / "out"
    res = check([*SHORT, "--min-keepalive", "0", "--min-cache", "1000", "--out", str(out)], tmp_path)
    assert res.returncode == 1, res.stderr[-2000:]
    assert verdict_rows(res.stdout) == {("keep-alive", "100b"): "ok", ("cache hit", "100b"): "FAIL"}
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("bench check: FAIL: cache hit 100b ") and last.endswith(" < 1000.00x"), last
    doc = json.loads((out / "results.json").read_text())
    assert {r["row"] for r in doc["summary"]} == {"fastproxy", "nginx", "fastproxy-cache", "nginx-cache"}
    hits = next(c for c in doc["check"] if c["check"] == "cache hit")
    assert hits["ratio"] > 0 and hits["needed"] == 1000 and hits["ok"] is False

    res = check([*SHORT, "--min-keepalive", "0", "--min-cache", "0"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert set(verdict_rows(res.stdout).values()) == {"ok"}
    assert res.stdout.strip().splitlines()[-1] == "bench check: PASS: 2 of 2 comparisons at or above their ratio"


@needs_tools
def test_a_fastproxy_that_cannot_start_is_a_failure_not_a_pass(tmp_path):
    res = check([*SHORT, "--min-keepalive", "0", "--min-cache", "0", "--fastproxy", "/bin/false"], tmp_path)
    assert res.returncode == 1
    assert "bench check: fastproxy: fastproxy exited with code 1" in res.stderr
    assert "bench check: fastproxy-cache: fastproxy-cache exited with code 1" in res.stderr
    assert res.stdout.strip().splitlines()[-1] == "bench check: FAIL: cannot compare (see the rows above)"
