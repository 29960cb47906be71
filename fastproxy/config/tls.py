"""A listener's `tls` table: the default certificate and the ones chosen by SNI.

    tls = { cert = "site.pem", key = "site.key",
            sni = [ { names = ["api.example.com", "*.cdn.example.com"],
                      cert = "api.pem", key = "api.key" } ] }

Files are loaded here, so a bad one is a configuration error naming its key (and
`fastproxy check` finds it), not a failure to listen.
"""
from __future__ import annotations

import os
import re
import ssl
from typing import Any

_NAME_RE = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


def _pair(where: str, raw: dict, problems: list[str]) -> tuple[str, str] | None:
    cert, key = raw.get("cert"), raw.get("key")
    ok = True
    for k, v in (("cert", cert), ("key", key)):
        if v is None:
            problems.append(f"{where}.{k}: required: a PEM file path")
            ok = False
        elif not isinstance(v, str):
            problems.append(f"{where}.{k}: expected a file path, got {v!r}")
            ok = False
        elif not os.path.isfile(v):
            problems.append(f"{where}.{k}: no such file: {v}")
            ok = False
    if not ok or not isinstance(cert, str) or not isinstance(key, str):
        return None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        problems.append(f"{where}: cannot load the certificate and key: {exc}")
        return None
    return cert, key


def read_tls(raw: Any, where: str, problems: list[str]):
    """(cert, key, sni entries ((names, cert, key), ...)) of a listener's tls table."""
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a table like {{ cert = ..., key = ... }}")
        return None, None, ()
    for k in raw:
        if k not in ("cert", "key", "sni"):
            problems.append(f"{where}.{k}: unknown key")
    pair = _pair(where, raw, problems)
    entries = []
    sni = raw.get("sni", [])
    if not isinstance(sni, list):
        problems.append(f"{where}.sni: expected a list of {{ names, cert, key }} tables")
        sni = []
    seen: dict[str, int] = {}
    for i, item in enumerate(sni):
        w = f"{where}.sni[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{w}: expected a table {{ names, cert, key }}")
            continue
        for k in item:
            if k not in ("cert", "key", "names"):
                problems.append(f"{w}.{k}: unknown key")
        names = item.get("names")
        if not isinstance(names, list) or not names or any(
                not isinstance(n, str) or not _NAME_RE.match(n.lower()) for n in names):
            problems.append(f'{w}.names: expected a list of host names like "a.example.com" '
                            f'or "*.example.com", got {names!r}')
            continue
        names = [n.lower() for n in names]
        for n in names:
            if n in seen:
                problems.append(f"{w}.names: {n} is also in sni[{seen[n]}]")
            seen[n] = i
        p = _pair(w, item, problems)
        if p is not None:
            entries.append((tuple(names), p[0], p[1]))
    return (pair[0], pair[1], tuple(entries)) if pair else (None, None, ())
