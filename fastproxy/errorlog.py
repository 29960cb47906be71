"""The operator's log: one line per event on stderr, prefixed with the process (a leaf)."""
from __future__ import annotations

import os
import sys


def log(msg: str) -> None:
    """A line on stderr for the operator."""
    # One write per line: print() writes the text and the newline separately, so with
    # several workers (and unbuffered stderr) their lines could interleave.
    sys.stderr.write(f"fastproxy[{os.getpid()}]: {msg}\n")
    sys.stderr.flush()
