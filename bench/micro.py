"""`python -m bench micro [names]`: run every bench/micro_*.py and print its table.

Convention (shared with the module authors): `bench/micro_<thing>.py` exposes
`run(quick: bool = False) -> list[dict]`, one dict per row with at least `name`,
`ours_ns`, `peer`, `peer_ns`, `ratio` where applicable, plus free-form extras.
"""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from pathlib import Path

import bench

FIRST = ("name", "ours_ns", "peer", "peer_ns", "ratio")


def discover() -> list[str]:
    """Return the names (without the micro_ prefix) of the micro-benchmark modules present."""
    return sorted(m.name[len("micro_"):] for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("micro_"))


def table(rows: list[dict]) -> str:
    """Render rows as a markdown table: the convention's columns first, then the extras."""
    cols = [c for c in FIRST if any(c in r for r in rows)]
    cols += [c for r in rows for c in r if c not in cols]
    cols = list(dict.fromkeys(cols))
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |")
    return "\n".join(out)


def best_ns(fn, loops: int, repeats: int) -> float:
    """Best mean ns per item of fn(loops) over `repeats` runs, with the collector off."""
    import gc
    import time
    best = float("inf")
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            fn(loops)
            best = min(best, (time.perf_counter_ns() - t0) / loops)
    finally:
        gc.enable()
    return best


def _cell(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def main(argv: list[str]) -> int:
    """Run the selected micro-benchmarks (all by default); returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m bench micro", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help=f"which ones (present: {', '.join(discover()) or 'none yet'})")
    p.add_argument("--quick", action="store_true", help="fewer iterations, for development")
    p.add_argument("--json", metavar="PATH", help="also write all rows as JSON")
    a = p.parse_args(argv)
    present = discover()
    unknown = [n for n in a.names if n not in present]
    if unknown:
        print(f"bench micro: unknown benchmark {unknown[0]!r}; present: {', '.join(present) or 'none'}",
              file=sys.stderr)
        return 2
    names = a.names or present
    if not names:
        print("bench micro: no bench/micro_*.py modules yet (the parser, hashing and cache "
              "benchmarks land with their modules)")
        return 0
    results = {}
    for n in names:
        mod = importlib.import_module(f"bench.micro_{n}")
        rows = mod.run(quick=a.quick)
        results[n] = rows
        print(f"### micro_{n}\n\n{table(rows)}\n", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=str))
    return 0
