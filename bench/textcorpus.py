"""A deterministic text corpus (HTML, JavaScript, JSON) for the compression benchmarks.

Generated rather than shipped: the shapes real sites serve (nested markup with repeated
class names, minified-looking script with identifiers, API JSON with repeated keys), with
enough variety from a seeded generator that the ratios are not those of a repeated string.
"""
from __future__ import annotations

import json
import random

WORDS = ("proxy request response header cache upstream listener route server client "
         "stream buffer content encoding compress table value index config worker event "
         "loop socket address status body length chunk frame window session ticket").split()


def html(size: int, seed: int = 1) -> bytes:
    """An HTML page of about size bytes."""
    rnd = random.Random(seed)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Catalogue</title>"
             "<link rel='stylesheet' href='/static/site.css'></head><body><main class='page'>"]
    n = 0
    while sum(map(len, parts)) < size:
        n += 1
        words = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(8, 30)))
        parts.append(f"<article class='card card-{n % 7}' id='item-{n}'><h2 class='card-title'>"
                     f"{rnd.choice(WORDS).title()} {n}</h2><p class='card-text'>{words}</p>"
                     f"<a class='btn btn-primary' href='/items/{n}?ref={rnd.randint(1, 999)}'>"
                     f"Open</a><span class='price'>{rnd.randint(1, 9999) / 100:.2f}</span>"
                     "</article>\n")
    parts.append("</main></body></html>")
    return "".join(parts).encode()[:size]


def script(size: int, seed: int = 2) -> bytes:
    """JavaScript of about size bytes."""
    rnd = random.Random(seed)
    parts = ["'use strict';\n"]
    n = 0
    while sum(map(len, parts)) < size:
        n += 1
        a, b = rnd.choice(WORDS), rnd.choice(WORDS)
        parts.append(f"function {a}{n}({b}, opts) {{ var r = {{}}; if (!{b}) return null; "
                     f"for (var i = 0; i < {b}.length; i++) {{ r[{b}[i].{a}] = {b}[i]."
                     f"{rnd.choice(WORDS)} + {rnd.randint(0, 1000)}; }} "
                     f"return opts && opts.{rnd.choice(WORDS)} ? r : Object.keys(r); }}\n")
    return "".join(parts).encode()[:size]


def api_json(size: int, seed: int = 3) -> bytes:
    """A JSON API answer of about size bytes."""
    rnd = random.Random(seed)
    items = []
    total = 0
    while total < size:
        item = {"id": len(items) + 1, "name": f"{rnd.choice(WORDS)}-{rnd.randint(1, 99999)}",
                "tags": rnd.sample(WORDS, 3), "price": rnd.randint(1, 99999) / 100,
                "active": rnd.random() < 0.7, "owner": {"id": rnd.randint(1, 500),
                                                         "region": rnd.choice(WORDS)}}
        text = json.dumps(item)
        total += len(text) + 1
        items.append(item)
    return json.dumps({"items": items, "count": len(items)}).encode()[:size]


def corpus(size: int = 1 << 20) -> dict[str, bytes]:
    """{kind: bytes}: one document of each kind, about size bytes each."""
    return {"html": html(size), "js": script(size), "json": api_json(size)}
