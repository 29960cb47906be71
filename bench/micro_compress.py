"""Micro-benchmark of response compression: MB/s (CPU time) and ratio per encoding and
level, through the filter itself (64 KiB feeds, as the relay hands them over).

    python -m bench.micro_compress [--quick]

The corpus is bench/textcorpus.py (generated HTML, JavaScript and JSON, 1 MiB each).
Rows: every encoding at a few levels (the defaults marked), and gzip from zlib against
ISA-L at matching levels (why the filter uses ISA-L when it is installed). The peer
column is zlib's gzip at level 1, nginx's default `gzip_comp_level`.
"""
from __future__ import annotations

import argparse
import sys
import time
import zlib

from bench.textcorpus import corpus
from fastproxy.config.compression import LEVELS, CompressionConfig
from fastproxy.proxy.compress import Compression

CHUNK = 64 * 1024


def _through_filter(encoding: str, level: int, docs: dict[str, bytes], rounds: int):
    comp = Compression(CompressionConfig.from_table({"encodings": [encoding],
                                                     "levels": {encoding: level}}))
    total_in = total_out = 0
    t0 = time.process_time()
    for _ in range(rounds):
        for doc in docs.values():
            flt = comp(b"GET", {b"accept-encoding": encoding.encode()})
            flt.start(200, [(b"Content-Type", b"text/html")])
            out = 0
            for i in range(0, len(doc), CHUNK):
                out += len(flt.feed(doc[i:i + CHUNK]))
            out += len(flt.finish())
            total_in += len(doc)
            total_out += out
    dt = time.process_time() - t0
    return total_in / dt / 1e6, total_in / total_out


def _zlib(level: int, docs: dict[str, bytes], rounds: int):
    total_in = total_out = 0
    t0 = time.process_time()
    for _ in range(rounds):
        for doc in docs.values():
            c = zlib.compressobj(level, zlib.DEFLATED, 31)
            out = sum(len(c.compress(doc[i:i + CHUNK])) for i in range(0, len(doc), CHUNK))
            out += len(c.flush())
            total_in += len(doc)
            total_out += out
    dt = time.process_time() - t0
    return total_in / dt / 1e6, total_in / total_out


def run(quick: bool = False) -> list[dict]:
    """One row per (encoding, level)."""
    docs = corpus(256 << 10 if quick else 1 << 20)
    rounds = 1 if quick else 3
    peer_mbs, peer_ratio = _zlib(1, docs, rounds)
    rows = []
    for encoding, levels in (("br", (1, 3, 4, 5)), ("zstd", (1, 3, 6)), ("gzip", (1, 4, 6, 9))):
        for level in levels:
            mbs, ratio = _through_filter(encoding, level, docs, rounds)
            rows.append({"name": f"{encoding} {level}" + (" (default)" if LEVELS[encoding] == level
                                                          else ""),
                         "MB/s": mbs, "ratio": ratio, "peer": "zlib gzip 1",
                         "peer MB/s": peer_mbs, "peer ratio": peer_ratio})
    for level in (1, 4, 6, 9):
        mbs, ratio = _zlib(level, docs, rounds)
        rows.append({"name": f"zlib gzip {level}", "MB/s": mbs, "ratio": ratio})
    return rows


def main(argv: list[str]) -> int:
    """Print the table."""
    p = argparse.ArgumentParser(prog="python -m bench.micro_compress")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    from bench.micro import table
    print(table(run(a.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
