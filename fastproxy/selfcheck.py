"""Fail loudly when a compiled module did not build or does not load.

`python -m fastproxy.selfcheck` exits 1 naming each missing module; CI and the
wheel tests run it so that a package which silently lost its compiled core
cannot pass.
"""
import importlib
import os
import sys

# One entry per ext/NAME.pyx; each module adds itself here when it lands.
COMPILED: tuple[str, ...] = (
    "fastproxy._http", "fastproxy._ringcache", "fastproxy._relay", "fastproxy._hashing",
    "fastproxy._hitpath", "fastproxy._hpack", "fastproxy._h2msg", "fastproxy._h2frames", "fastproxy._h2",
)
HOME = os.path.dirname(os.path.realpath(__file__))


def missing_modules() -> list[str]:
    """Return 'module: error' for each compiled module that fails to import."""
    problems = []
    for name in COMPILED:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:
            problems.append(f"{name}: {exc}")
            continue
        path = getattr(mod, "__file__", "") or ""
        if not path.endswith((".so", ".pyd")):
            problems.append(f"{name}: not a compiled extension ({path})")
        elif os.path.dirname(os.path.realpath(path)) != HOME:
            # An editable install's finder fills in what an unbuilt tree lacks from another tree.
            problems.append(f"{name}: loaded from another copy of fastproxy ({os.path.dirname(path)}), "
                            f"not built in {HOME}")
    return problems


def main() -> int:
    problems = missing_modules()
    for line in problems:
        print(f"fastproxy selfcheck: {line}", file=sys.stderr)
    if not problems:
        import fastproxy

        print(f"fastproxy {fastproxy.__version__}: {len(COMPILED)} compiled modules load")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
