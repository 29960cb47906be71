"""`fastproxy check --print`: the effective configuration, after defaults and flags.

Rendered in TOML from the validated Config (so a default the file leaves out shows with
its value, as `nginx -T` shows what runs). Names are the file's keys where they differ
only in shape (`listen = "host:port"`, servers as URLs); sections that feature modules
parse keep their field names.
"""
from __future__ import annotations

import json
from dataclasses import fields, is_dataclass
from typing import Any

_SKIP = {"source"}
# Flat fields that stand for a key of a table in the file (a set one, or absent if unset).
_TABLE_KEYS = {"error_log_format": ("error_log", "format"),
               "cluster_peers": ("cluster", "peers"), "cluster_self": ("cluster", "self"),
               "tls_cert": ("tls", "cert"), "tls_key": ("tls", "key"), "tls_sni": ("tls", "sni")}


def _fold(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Gather _TABLE_KEYS fields into their tables; unset ones are left out (the file's
    tables would refuse an empty value where the key is absent by default)."""
    out: list[tuple[str, Any]] = []
    tables: dict[str, dict[str, Any]] = {}
    for key, value in items:
        if key not in _TABLE_KEYS:
            out.append((key, value))
            continue
        table, name = _TABLE_KEYS[key]
        if value is None or value == () or value == []:
            continue
        if table not in tables:
            tables[table] = {}
            out.append((table, tables[table]))
        tables[table][name] = value
    return out
_HOISTED = {"settings", "forward"}     # typed holders of a table's own sections


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if _is_server(value):
        return json.dumps(_server_url(value))
    if isinstance(value, (tuple, list, frozenset, set)) and all(
            _scalar(v) is not None for v in value):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"   # type: ignore[misc]
    return None


def _is_server(value: Any) -> bool:
    return is_dataclass(value) and {f.name for f in fields(value)} == {
        "host", "port", "weight", "scheme"}


def _server_url(s: Any) -> str:
    host = f"[{s.host}]" if ":" in s.host else s.host
    return f"{s.scheme}://{host}:{s.port}" + (f"#weight={s.weight}" if s.weight != 1 else "")


def _items(obj: Any) -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        return [(str(k), v) for k, v in obj.items()]
    items = []
    names = {f.name for f in fields(obj)}
    if {"host", "port", "mode"} <= names:          # a listener: its address as written
        host = f"[{obj.host}]" if ":" in obj.host else obj.host
        items.append(("listen", f"{host}:{obj.port}"))
        names -= {"host", "port"}
    group = "servers" in names      # an upstream group: its name is its table's name
    for f in fields(obj):
        if f.name not in names or f.name in _SKIP or (group and f.name == "name") or \
                isinstance(getattr(obj, f.name), frozenset):   # fixed sets, not keys
            continue
        items.append((f.name, getattr(obj, f.name)))
    extras = list(getattr(obj, "extras", ()) or ())
    if any(is_dataclass(v) for _, v in extras + items):
        # The typed form of the sections is there: show it, not the raw tables it came from.
        extras = [(k, v) for k, v in extras if not isinstance(v, dict)]
    items += extras
    items = _fold(items)
    out = []
    for key, value in items:
        if key in _HOISTED and is_dataclass(value):
            out += _items(value)     # its sections are keys of the table itself
        else:
            out.append((key, value))
    return out


def _table(path: str, obj: Any, out: list[str], array: bool = False) -> None:
    simple, nested = [], []
    for key, value in _items(obj):
        text = _scalar(value)
        if value is None:
            simple.append(f"# {key}: not set")
        elif text is not None:
            simple.append(f"{_key(key)} = {text}")
        else:
            nested.append((key, value))
    if path:
        out.append("")
        out.append(f"[[{path}]]" if array else f"[{path}]")
    out.extend(simple)
    for key, value in nested:
        sub = f"{path}.{_key(key)}" if path else _key(key)
        if isinstance(value, (tuple, list)):
            for item in value:
                if isinstance(item, dict) or is_dataclass(item):
                    _table(sub, item, out, array=True)
                else:
                    out.append(f"# {sub}: {item!r}")
        elif isinstance(value, dict) or is_dataclass(value):
            _table(sub, value, out)
        else:
            out.append(f"# {sub}: {value!r}")


def _key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() else json.dumps(name)


def render(config: Any) -> str:
    """The configuration as TOML, with a header naming where it came from."""
    out = [f"# fastproxy: effective configuration of {config.source}",
           "# (every key with its value after built-in defaults and command-line flags)"]
    top = [(f.name, getattr(config, f.name)) for f in fields(config)
           if f.name not in ("listeners", "upstreams", "source")]
    top = _fold(top)
    for key, value in top:
        if key == "admin" and value is not None:
            host = f"[{value[0]}]" if ":" in value[0] else value[0]
            out.append(f'admin = "{host}:{value[1]}"')
        elif value is None:
            out.append(f"# {key}: not set")
        elif _scalar(value) is not None:
            out.append(f"{key} = {_scalar(value)}")
    for key, value in top:
        if value is not None and _scalar(value) is None and key != "admin":
            _table(key, value, out)
    for listener in config.listeners:
        _table("listeners", listener, out, array=True)
    for name, group in config.upstreams.items():
        _table(f"upstreams.{_key(name)}", group, out)
    return "\n".join(out) + "\n"
