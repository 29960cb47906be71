"""Shared test setup: make sure the compiled core is really what is under test."""
import os
from pathlib import Path

import fastproxy
from fastproxy.selfcheck import missing_modules

ROOT = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session):
    problems = missing_modules()
    if problems:
        raise SystemExit("compiled modules failed to load: " + "; ".join(problems))
    if os.environ.get("FASTPROXY_REQUIRE_INSTALLED"):
        here = Path(fastproxy.__file__).resolve()
        if ROOT in here.parents:
            raise SystemExit(f"fastproxy imported from the source tree ({here}), not the wheel")
