"""The type checker over fastproxy/ (pyproject's [tool.mypy]), with the compiled modules'
.pyi stubs: any error fails the test and is printed."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_mypy_passes_on_fastproxy():
    pytest.importorskip("mypy", reason="mypy is not installed (pip install .[test])")
    if not os.path.isfile(os.path.join(ROOT, "pyproject.toml")) or \
            not os.path.isdir(os.path.join(ROOT, "fastproxy")):
        pytest.skip("the source tree (pyproject.toml, fastproxy/) is not beside the tests")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--config-file",
         os.path.join(ROOT, "pyproject.toml"), os.path.join(ROOT, "fastproxy")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
