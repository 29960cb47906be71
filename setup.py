"""Build the compiled modules: every ext/NAME.pyx becomes fastproxy._NAME.

Everything else (metadata, dependencies, entry points) lives in pyproject.toml.
"""
import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
# Optimise for the machine we build on only when asked: release wheels must run anywhere.
CFLAGS = ["-O3"] + (["-march=native"] if os.environ.get("FASTPROXY_NATIVE") else [])

# A module's own declarations live in ext/fastproxy/_NAME.pxd, a name Cython's dependency
# tree does not link to ext/NAME.pyx: after a change to that .pxd alone the generated C
# stayed, and the import failed ("_hashing.Core size changed"). A stale C file goes.
for pyx in (HERE / "ext").glob("*.pyx"):
    generated, pxd = pyx.with_suffix(".c"), HERE / "ext" / "fastproxy" / f"_{pyx.stem}.pxd"
    if generated.exists() and pxd.exists() and pxd.stat().st_mtime > generated.stat().st_mtime:
        generated.unlink()

extensions = [
    Extension(f"fastproxy._{pyx.stem}", [f"ext/{pyx.name}"], extra_compile_args=CFLAGS)
    for pyx in sorted((HERE / "ext").glob("*.pyx"))
]

# Both steps use every core: a wheel build (`python -m build`, pip) passes no -j of its own.
JOBS = len(os.sched_getaffinity(0))
modules = cythonize(
    extensions,
    include_path=["ext"],
    compiler_directives={
        "language_level": 3,
        "boundscheck": False,
        "wraparound": False,
        "cdivision": True,
        "embedsignature": True,
    },
    annotate=bool(os.environ.get("FASTPROXY_ANNOTATE")),
    nthreads=JOBS,
)
# Largest generated C first: _relay alone is about a third of the compiling, and started
# last (alphabetical order) it ran on one core while the other had nothing left to do.
modules.sort(key=lambda ext: -sum(os.path.getsize(src) for src in ext.sources))

setup(ext_modules=modules, options={"build_ext": {"parallel": JOBS}})
