"""examples/fastproxy.toml shows every key the loader accepts, and the README names every
section: the key lists come from the loader itself (the "expected one of" of an unknown
key in each table), so a key added to the schema fails here until it is documented."""
from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

from fastproxy.config.load import ConfigError, from_dict

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fastproxy.toml"
PROBE = "zz_probe"

# A commented-out setting: "# key = value" or "# [table]" (prose comments do not match).
_SETTING = re.compile(r"^(\s*)#\s?(\s*(?:\[\[?[\w.\-]+\]\]?\s*(?:#.*)?|[A-Za-z_][\w\-]*\s*=\s*\S.*))$")
# Tables whose keys are the user's names, not the schema's.
FREE_FORM = {"upstreams", "compression.levels", "listeners[].routes[].headers",
             "listeners[].routes[].query", "listeners[].routes[].request_headers.set",
             "listeners[].routes[].request_headers.add",
             "listeners[].routes[].response_headers.set",
             "listeners[].routes[].response_headers.add", "listeners[].auth.users"}


def expanded_example() -> dict:
    """The example with its commented-out settings switched on."""
    lines = [m.group(1) + m.group(2) if (m := _SETTING.match(line)) else line
             for line in EXAMPLE.read_text().splitlines()]
    return tomllib.loads("\n".join(lines))


def normal(path: str) -> str:
    return re.sub(r"^upstreams\.[^.\[]+", "upstreams.*", re.sub(r"\[\d+\]", "[]", path))


def tables(node, path: str = ""):
    """(path, table) of every table in a parsed document."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from tables(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from tables(item, f"{path}[{i}]")


def valid_keys(doc: dict, path: str) -> set[str] | None:
    """The keys the loader accepts in the table at path (None: it takes any name)."""
    probe = copy.deepcopy(doc)
    table = probe
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        table = table[int(part[1:-1])] if part.startswith("[") else table[part]
    table[PROBE] = 1
    key = f"{path}.{PROBE}" if path else PROBE
    # A listener's header_rules are its anonymity.rules (a shorthand), named so.
    key = key.replace(".header_rules[", ".anonymity.rules[")
    try:
        from_dict(probe)
    except ConfigError as exc:
        for line in exc.problems:
            m = re.match(re.escape(key) + r": unknown key.*\(expected one of ([^)]*)\)$", line)
            if m:
                return set(m.group(1).split(", "))
    return None


def test_the_example_shows_every_key_of_every_table():
    doc = expanded_example()
    documented: dict[str, set[str]] = {}
    for path, table in tables(doc):
        documented.setdefault(normal(path), set()).update(table)
    required: dict[str, set[str]] = {}
    for path, _table in tables(doc):
        where = normal(path)
        if where in FREE_FORM or re.search(r"\.levels$|\.(set|add)$", where):
            continue
        keys = valid_keys(doc, path)
        assert keys is not None, f"{path or '<top>'}: the loader names no valid keys here " \
                                 "(a reader that stops at an earlier problem?)"
        required.setdefault(where, set()).update(keys)
    missing = sorted(f"{where}.{key}" if where else key
                     for where, keys in required.items()
                     for key in keys - documented.get(where, set()))
    assert not missing, "keys missing from examples/fastproxy.toml: " + ", ".join(missing)


def test_the_example_with_its_commented_settings_is_still_toml():
    assert expanded_example()["listeners"]


def test_the_readme_names_every_section_and_top_level_key():
    readme = (ROOT / "README.md").read_text()
    doc = expanded_example()
    for key in valid_keys(doc, "") or ():
        assert any(form in readme for form in (f"`{key}`", f"`[{key}]`", f"`[[{key}]]`",
                                               f"`[{key}.")), key
    for section in ("timeouts", "limits", "headers", "access_log"):
        for key in valid_keys(doc, section) or ():
            assert f"`{key}`" in readme, f"{section}.{key} is not in the README"
