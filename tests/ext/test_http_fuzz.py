"""Run the atheris fuzz target for a bounded time (FASTPROXY_FUZZ_SECONDS, default 10)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastproxy

pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")

HERE = Path(__file__).resolve().parent


def test_fuzz_target_runs_clean(tmp_path):
    seconds = int(os.environ.get("FASTPROXY_FUZZ_SECONDS", "10"))
    env = dict(os.environ, PYTHONPATH=str(Path(fastproxy.__file__).resolve().parent.parent))
    corpus = tmp_path / "corpus"
    target = str(HERE / "fuzz_http.py")
    subprocess.run([sys.executable, target, "--write-seeds", str(corpus)], env=env, check=True,
                   capture_output=True, timeout=60)
    proc = subprocess.run(
        ["nice", sys.executable, target, f"-max_total_time={seconds}", "-timeout=5",
         "-rss_limit_mb=1024", f"-artifact_prefix={tmp_path}/",
         f"-dict={HERE / 'corpus' / 'http_dict.txt'}", str(corpus)],
        env=env, capture_output=True, text=True, timeout=seconds + 120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Done" in proc.stderr and "runs in" in proc.stderr
