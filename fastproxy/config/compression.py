"""The `[compression]` table: which encodings, at which levels, for which types and sizes.

A leaf beside schema.py: config.load reads the table with `CompressionConfig.from_table`,
and the response filter (proxy/compress.py) takes the result as it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastproxy.config.schema import int_range, size_range, unknown_key

# Server preference when the client rates several equally (RFC 9110 12.5.3 leaves the
# tie to the server): brotli and zstd compress web text smaller than gzip at the same speed.
ENCODINGS = ("br", "zstd", "gzip")
# Levels chosen for speed (bench/micro_compress.py on the generated HTML/JS/JSON corpus):
# brotli 3 and zstd 3 compress at 200-530 MB/s a core; gzip 1-3 are ISA-L's levels 1-3
# (gzip 1: 830 MB/s at ratio 6.0, where zlib's level 1 gives 230 MB/s at 5.7), 4-9 zlib's.
LEVELS = {"br": 3, "zstd": 3, "gzip": 1}
LEVEL_RANGES = {"br": int_range(0, 11), "zstd": int_range(1, 19), "gzip": int_range(1, 9)}
# Text that compresses well; images, video and archives are compressed already.
TYPES = ("text/*", "application/json", "application/*+json", "application/javascript",
         "application/x-javascript", "application/ecmascript", "application/xml",
         "application/*+xml", "image/svg+xml", "application/wasm",
         "application/manifest+json", "application/x-ndjson")
MIN_SIZE = 256
_min_size = size_range(0, 1 << 30)


@dataclass(frozen=True)
class CompressionConfig:
    """Response compression of the reverse listeners (`compression = false` opts one out)."""

    encodings: tuple[str, ...] = ENCODINGS
    levels: tuple[tuple[str, int], ...] = tuple(LEVELS.items())
    types: tuple[str, ...] = TYPES
    min_size: int = MIN_SIZE

    def level(self, encoding: str) -> int:
        """The configured level of one encoding."""
        return dict(self.levels)[encoding]

    @classmethod
    def from_table(cls, raw: Any) -> "CompressionConfig | None":
        """Validate `[compression]`; None when `enabled = false`. Raise ValueError "key: text"."""
        if not isinstance(raw, dict):
            raise ValueError(f"expected a table, got {type(raw).__name__}")
        known = {"enabled", "encodings", "levels", "types", "min_size"}
        for key in raw:
            if key not in known:
                raise ValueError(f"{key}: {unknown_key(key, known)}")
        enabled = raw.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ValueError(f"enabled: expected true or false, got {enabled!r}")
        encodings = raw.get("encodings", list(ENCODINGS))
        if not isinstance(encodings, list) or not encodings or any(
                e not in ENCODINGS for e in encodings) or len(set(encodings)) != len(encodings):
            raise ValueError(f"encodings: expected a list of distinct names from "
                             f"{', '.join(ENCODINGS)} (in order of preference), got {encodings!r}")
        levels = dict(LEVELS)
        raw_levels = raw.get("levels", {})
        if not isinstance(raw_levels, dict):
            raise ValueError(f"levels: expected a table like {{ br = 3 }}, got {raw_levels!r}")
        for name, value in raw_levels.items():
            if name not in LEVEL_RANGES:
                raise ValueError(f"levels.{name}: unknown encoding (one of {', '.join(ENCODINGS)})")
            try:
                levels[name] = LEVEL_RANGES[name](value)
            except ValueError as exc:
                raise ValueError(f"levels.{name}: {exc}") from None
        types = raw.get("types", list(TYPES))
        if not isinstance(types, list) or not types or any(
                not isinstance(t, str) or t.count("/") != 1 or " " in t for t in types):
            raise ValueError(f'types: expected a list of media types like "text/*" or '
                             f'"application/json", got {types!r}')
        try:
            min_size = _min_size(raw.get("min_size", MIN_SIZE))
        except ValueError as exc:
            raise ValueError(f"min_size: {exc}") from None
        if not enabled:
            return None
        return cls(tuple(encodings), tuple(levels.items()), tuple(t.lower() for t in types),
                   min_size)
