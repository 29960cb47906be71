"""Release plumbing: .ci/release-check, the packaging metadata agreeing with itself, selfcheck.

The release workflow itself runs only on GitHub; what can be checked here is the script it
runs before uploading, the settings it reads from pyproject.toml, and (when actionlint is
installed) the workflow file.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import fastproxy
from fastproxy.selfcheck import COMPILED

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / ".ci" / "release-check"
WORKFLOW = ROOT / ".github" / "workflows" / "wheels.yml"
needs_checkout = pytest.mark.skipif(not CHECK.exists(), reason=".ci/release-check absent (not a git checkout)")


def release_check(*args: str, root: Path | None = None) -> subprocess.CompletedProcess:
    extra = ["--root", str(root)] if root else []
    return subprocess.run([sys.executable, str(CHECK), *args, *extra], capture_output=True, text=True, timeout=30)


def tree(tmp_path: Path, version: str, changelog: str | None) -> Path:
    """A minimal project tree: fastproxy/__init__.py with version, and CHANGELOG.md if given."""
    (tmp_path / "fastproxy").mkdir()
    (tmp_path / "fastproxy" / "__init__.py").write_text(f'"""doc."""\n\n__version__ = "{version}"\n')
    if changelog is not None:
        (tmp_path / "CHANGELOG.md").write_text(changelog)
    return tmp_path


LOG = "# Changelog\n\n## [Unreleased]\n\n## [1.2.0] - 2026-12-01\n\n### Added\n- things\n"


@needs_checkout
def test_this_checkout_is_releasable_as_its_own_version():
    res = release_check("--tag", f"v{fastproxy.__version__}")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"release-check: ok: fastproxy {fastproxy.__version__}, CHANGELOG entry, " \
                                 f"tag v{fastproxy.__version__}"


@needs_checkout
def test_consistent_release_with_its_distributions(tmp_path):
    (tmp_path / "p").mkdir()
    root = tree(tmp_path / "p", "1.2.0", LOG)
    dist = tmp_path / "dist"
    dist.mkdir()
    for name in ("fastproxy-1.2.0.tar.gz", "fastproxy-1.2.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "fastproxy-1.2.0-cp315-cp315-manylinux_2_28_aarch64.whl"):
        (dist / name).write_bytes(b"x")
    res = release_check("--tag", "v1.2.0", "--dist", str(dist), root=root)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith(f"tag v1.2.0, 3 files in {dist}")


@needs_checkout
@pytest.mark.parametrize("version, changelog, tag, files, expected", [
    ("1.2.0", LOG, "v1.2.1", None, "tag 'v1.2.1' does not match the package version 1.2.0 (expected 'v1.2.0')"),
    ("1.2.0", LOG, "1.2.0", None, "tag '1.2.0' does not match"),
    ("1.3.0", LOG, None, None, "CHANGELOG.md has no '## [1.3.0]' section"),
    ("1.2.0", None, None, None, "CHANGELOG.md is missing"),
    ("1.2", "## [1.2]\n", None, None, None),  # canonical: fine
    ("1.2.0-rc.1", "## [1.2.0-rc.1]\n", None, None, "is not a canonical PEP 440 version"),
    ("1.2.0", LOG, None, ["fastproxy-1.2.0-cp311-cp311-manylinux_2_28_x86_64.whl"], "expected one sdist, found 0"),
    ("1.2.0", LOG, None, ["fastproxy-1.2.0.tar.gz"], "no wheels"),
    ("1.2.0", LOG, None, ["fastproxy-1.2.0.tar.gz", "fastproxy-1.1.9-cp311-cp311-manylinux_2_28_x86_64.whl",
                          "fastproxy-1.2.0-cp311-cp311-manylinux_2_28_x86_64.whl"],
     "fastproxy-1.1.9-cp311-cp311-manylinux_2_28_x86_64.whl: not a fastproxy 1.2.0 distribution"),
])
def test_each_disagreement_is_one_line_and_exit_1(tmp_path, version, changelog, tag, files, expected):
    (tmp_path / "p").mkdir()
    root = tree(tmp_path / "p", version, changelog)
    args = ["--tag", tag] if tag else []
    if files is not None:
        dist = tmp_path / "dist"
        dist.mkdir()
        for name in files:
            (dist / name).write_bytes(b"x")
        args += ["--dist", str(dist)]
    res = release_check(*args, root=root)
    if expected is None:
        assert res.returncode == 0, res.stderr
        return
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("release-check: ") and expected in lines[0], res.stderr


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_python_versions_agree_across_the_metadata():
    meta = _pyproject()
    project, cibw = meta["project"], meta["tool"]["cibuildwheel"]
    floor = re.fullmatch(r">=3\.(\d+)", project["requires-python"])
    assert floor, project["requires-python"]
    classified = sorted(int(m.group(1)) for c in project["classifiers"]
                        if (m := re.fullmatch(r"Programming Language :: Python :: 3\.(\d+)", c)))
    built = sorted(int(m.group(1)) for sel in cibw["build"].split() if (m := re.fullmatch(r"cp3(\d+)-\*", sel)))
    assert classified == built, "classifiers and cibuildwheel build selectors name different versions"
    assert classified[0] == int(floor.group(1)) and classified == list(range(classified[0], classified[-1] + 1))
    # This interpreter runs the suite, so it must be one the package claims.
    assert sys.version_info[:2] >= (3, int(floor.group(1)))
    # Nothing left for versions below the floor.
    assert not [d for d in project["dependencies"] if "python_version" in d], project["dependencies"]


def test_each_runner_builds_its_own_architecture_and_the_license_ships():
    meta = _pyproject()
    assert meta["tool"]["cibuildwheel"]["linux"]["archs"] == ["native"]
    assert meta["project"]["license"] == "MIT"
    for name in meta["project"]["license-files"]:
        text = (ROOT / name).read_text()
        assert text.startswith("MIT License") and "fastproxy developers" in text


def test_selfcheck_names_compiled_modules_taken_from_another_copy(tmp_path):
    # An unbuilt copy of the package whose search path also reaches the built one: what an
    # editable install's finder does for a tree that was never compiled.
    real = Path(fastproxy.__file__).resolve().parent
    shutil.copytree(real, tmp_path / "fastproxy", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    code = (f"import fastproxy; fastproxy.__path__.append({str(real)!r}); "
            "from fastproxy.selfcheck import main; raise SystemExit(main())")
    res = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == len(COMPILED) and all(
        f"loaded from another copy of fastproxy ({real}), not built in {tmp_path / 'fastproxy'}" in ln
        for ln in lines), res.stderr


@pytest.mark.skipif(shutil.which("actionlint") is None,
                    reason="actionlint not installed (no actionlint binary on PATH)")
@pytest.mark.skipif(not WORKFLOW.exists(), reason=".github/workflows/wheels.yml absent (not a git checkout)")
def test_release_workflow_passes_actionlint():
    res = subprocess.run(["actionlint", "-oneline", str(WORKFLOW)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
