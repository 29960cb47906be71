"""Fuzzing the configuration loader with documents built from the schema.

Every section (top level, [limits], [timeouts], [cache], upstream groups with their
health/outlier/breaker/retry tables, listeners with routes, TLS and their feature tables)
gets keys from the configuration dataclasses themselves, with plausible values, wrong types
and extreme values (huge integers, inf, nan, hundreds of digits, datetimes). The loader must
return a Config or raise ConfigError with one line per problem naming a key; a Config must
then pass what `serve` does before binding (the worker's runtime, listener settings, the
compiled parsers and pools); anything else (a traceback) is a bug.
"""
from __future__ import annotations

import asyncio
import dataclasses
import datetime
import math
import os
import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import PKG_PARENT
from fastproxy.config import load as cfg
from fastproxy.forward.acl import AclConfig
from fastproxy.forward.anonymity import AnonymityConfig
from fastproxy.forward.auth import AuthConfig
from fastproxy.upstream.breaker import BreakerConfig, OutlierConfig, RetryConfig
from fastproxy.cache.config import CacheConfig
from fastproxy.config.load import ConfigError
from fastproxy.upstream.health import HealthCheckConfig
from fastproxy.limits import RateLimitConfig
from fastproxy.forward.resolver import ResolverConfig

# -- values ----------------------------------------------------------------------------

EXTREME_INTS = [0, 1, -1, 2, 7, 100, 65535, 65536, 2**31 - 1, 2**31, 2**32, 2**53 + 1,
                2**63 - 1, -2**63]
EXTREME_FLOATS = [0.0, -0.0, 0.5, 1.0, 1.25, 99.9, 1e9, 1e308, -1e308, 1e-300,
                  math.inf, -math.inf, math.nan]
EXTREME_STRINGS = ["", " ", "x", "9" * 400, "9" * 400 + "KiB", "0.5", "1e5", "5s", "250ms",
                   "2m", "1d", "366d", "64KiB", "2GiB", "1PiB", "2PiB", "-1", "\x00", "é",
                   "💥", "a\nb", "../../etc/passwd", "*", "header:", "cookie:x",
                   "http://127.0.0.1:9", "notaurl", "127.0.0.1:0", "[::1]:0", ":0",
                   "host:99999", "GET", "/", "/health", "allow", "deny", "x" * 5000]
DATES = [datetime.datetime(2024, 1, 1, 12, 0), datetime.date(2024, 1, 1),
         datetime.time(12, 0)]

scalars = st.one_of(st.sampled_from(EXTREME_INTS), st.sampled_from(EXTREME_FLOATS),
                    st.sampled_from(EXTREME_STRINGS), st.booleans(), st.sampled_from(DATES),
                    st.integers(), st.floats(), st.text(max_size=20))
anything = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["a", "url", "weight", "x", "name"]), inner, max_size=3)),
    max_leaves=6)


def plausible(default):
    """Values of the kind the key takes, from the default's type, near and past its ends."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.one_of(st.sampled_from(EXTREME_INTS), st.integers(-10, 10**6),
                         st.sampled_from(["64KiB", "2GiB", "9" * 400, "1PiB"]))
    if isinstance(default, float):
        return st.one_of(st.sampled_from(EXTREME_FLOATS), st.floats(0, 1e6),
                         st.sampled_from(["5s", "250ms", "366d", "9" * 400 + "s", "1d"]))
    if isinstance(default, str):
        return st.sampled_from(EXTREME_STRINGS)
    if isinstance(default, (tuple, list, frozenset)):
        return st.lists(st.one_of(scalars, st.sampled_from(["10.0.0.0/8", "::1/128", 443])),
                        max_size=3)
    return anything


def value_for(default):
    return st.one_of(plausible(default), plausible(default), anything)


def table_of(cls, exclude=(), overrides=None):
    """A table with some of cls's fields (and sometimes an unknown key)."""
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            defaults[f.name] = f.default_factory()          # type: ignore[misc]
        else:
            defaults[f.name] = None
    overrides = overrides or {}
    keys = sorted(defaults)
    entries = {k: overrides[k] if k in overrides else value_for(defaults[k]) for k in keys}
    return st.fixed_dictionaries({}, optional={**entries, "bogus_key": anything})


SERVER_URLS = ["http://127.0.0.1:9", "http://[::1]:9", "https://127.0.0.1", "tcp://127.0.0.1:9",
               "http://localhost:9", "127.0.0.1:9#weight=3", "http://127.0.0.1:9#weight=0",
               "ftp://x:1", "http://:80", "notaurl", "http://127.0.0.1:9/path",
               "http://host.invalid:9"]
servers = st.one_of(
    st.lists(st.one_of(st.sampled_from(SERVER_URLS),
                       st.fixed_dictionaries({"url": st.sampled_from(SERVER_URLS)},
                                             optional={"weight": value_for(1)})),
             min_size=1, max_size=3),
    anything)
GROUPS = ["app", "api", "db"]


# Strategies are built once, at import or once per test, and only drawn from inside the
# composites: hypothesis validates a strategy the first time it is drawn, and rebuilding
# these tables on every draw spent most of the fuzz tests' time there (the same documents,
# the same distribution, a fraction of the time).
GROUP_TABLE = st.fixed_dictionaries({"servers": servers}, optional={
    "balance": st.one_of(st.sampled_from(cfg.BALANCE_POLICIES), anything),
    "hash_key": st.one_of(st.sampled_from(["path", "uri", "client_ip", "header:x-user",
                                           "cookie:sid", "header:"]), anything),
    "hash_balance_factor": value_for(1.25),
    "keepalive": value_for(64), "keepalive_timeout": value_for(60.0),
    "keepalive_requests": value_for(10000), "connect_timeout": value_for(5.0),
    "pool_purge_delay": value_for(5.0),
    "read_timeout": value_for(60.0),
    "resolve": st.one_of(st.sampled_from(cfg.RESOLVE_MODES), anything),
    "health": table_of(HealthCheckConfig), "outlier": table_of(OutlierConfig),
    "breaker": table_of(BreakerConfig), "retry": table_of(RetryConfig),
    "bogus": anything,
})


@st.composite
def group(draw):
    g = draw(GROUP_TABLE)
    # No DNS traffic from the fuzzer: names resolve at run time, or are localhost.
    if isinstance(g.get("servers"), list) and any("invalid" in str(s) for s in g["servers"]):
        g["resolve"] = "runtime"
    return g


route = st.fixed_dictionaries({"upstream": st.one_of(st.sampled_from(GROUPS), anything)}, optional={
    "host": st.one_of(st.sampled_from(["a.example", "*.example.com", ""]), anything),
    "path": st.one_of(st.sampled_from(["/", "/v1/", "nope"]), anything),
    "strip_prefix": value_for(False),
    "canary": st.fixed_dictionaries({}, optional={
        "upstream": st.sampled_from(GROUPS), "percent": value_for(10.0),
        "key": st.one_of(st.sampled_from(["random", "client_ip", "header:x"]), anything)}),
})


MODE = st.one_of(st.sampled_from(cfg.MODES), anything)


def listener(tls_pair):
    """Listener tables (a mode always set), with tls naming tls_pair's files."""
    table = st.fixed_dictionaries(
        {"listen": st.one_of(st.sampled_from(["127.0.0.1:0", "[::1]:0", "localhost:0",
                                              "0.0.0.0:0", "nope", "127.0.0.1:70000"]),
                             anything)},
        optional={
            "upstream": st.one_of(st.sampled_from(GROUPS), anything),
            "name": value_for(""),
            "routes": st.one_of(st.lists(route, max_size=2), anything),
            "tls": st.one_of(st.just({"cert": tls_pair[0], "key": tls_pair[1]}),
                             st.just({"cert": "/nonexistent.pem", "key": tls_pair[1]}),
                             anything),
            "cache": value_for(True),
            "rate_limit": table_of(RateLimitConfig),
            "acl": table_of(AclConfig), "auth": table_of(AuthConfig),
            "anonymity": table_of(AnonymityConfig), "resolver": table_of(ResolverConfig),
            "connect_ports": st.one_of(st.lists(st.sampled_from([443, 0, 65536, "8000-8100",
                                                                 "x"]), max_size=3), anything),
            "allow_private": value_for(False),
            "header_rules": anything,
            "bogus": anything,
        })

    @st.composite
    def draw_listener(draw):
        mode = draw(MODE)
        lst = draw(table)
        lst["mode"] = mode
        return lst

    return draw_listener()


def documents(tmp_dir, tls_pair):
    """Whole configuration documents (log paths under tmp_dir, TLS files tls_pair)."""
    log_paths = ["-", os.path.join(tmp_dir, "a.log"), os.path.join(tmp_dir, "no", "a.log"),
                 tmp_dir, ""]
    top = st.fixed_dictionaries({}, optional={
        "workers": st.one_of(st.sampled_from([1, "auto", 0, 300]), anything),
        "admin": st.one_of(st.sampled_from(["127.0.0.1:0", "nope"]), anything),
        "timeouts": table_of(cfg.Timeouts),
        "limits": table_of(cfg.Limits),
        "headers": table_of(cfg.HeaderPolicy),
        "access_log": st.fixed_dictionaries({}, optional={
            "path": st.one_of(st.sampled_from(log_paths), anything),
            "format": st.one_of(st.sampled_from(cfg.LOG_FORMATS), anything)}),
        "cache": table_of(CacheConfig, exclude=("heuristic_statuses",), overrides={
            "size": st.one_of(st.sampled_from([0, "16KiB", "1MiB", "8MiB", "1TiB", "2TiB",
                                               "9" * 400, -1, 2**63 - 1]), anything),
            "prefault": st.just(False)}),
        "upstreams": st.one_of(st.dictionaries(st.sampled_from(GROUPS), group(), max_size=3),
                               anything),
        "bogus": anything,
    })
    listeners = st.one_of(st.lists(listener(tls_pair), min_size=1, max_size=3), anything)

    @st.composite
    def document(draw):
        doc = draw(top)
        doc["listeners"] = draw(listeners)
        return doc

    return document()


KEY_LINE = re.compile(r"^(<top>|[A-Za-z_][\w-]*(\[\d+\])?(\.[\w-]+(\[\d+\])?)*): \S")


def check_document(doc: dict):
    """The loader's verdict on doc: a Config, or the problems (each asserted well-formed)."""
    try:
        return cfg.from_dict(doc, source="<fuzz>")
    except ConfigError as exc:
        assert exc.problems
        for line in exc.problems:
            assert "\n" not in line and KEY_LINE.match(line), line
        return exc.problems


def prepare(config) -> None:
    """What serve does in a worker before binding, on a throwaway loop."""
    from fastproxy.server import worker as server
    from fastproxy._relay import ClientConnection

    async def go():
        w = server.Worker(config)
        w.prepare()
        try:
            for lrt in w.listener_rts:
                if getattr(lrt, "relay", None) is not None:
                    ClientConnection(lrt)   # a parser with the configured limits
                for group in lrt.rt.groups.values():
                    for pool in group.pools.values():
                        assert pool.keepalive == group.config.keepalive
        finally:
            await w.runtime.aclose()
            if w.cache is not None:
                w.cache.close()

    asyncio.run(go())


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    d = tmp_path_factory.mktemp("tls")
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    return str(d / "cert.pem"), str(d / "key.pem")


@pytest.fixture
def fuzz_dir(tmp_path_factory, monkeypatch):
    # Generated strings become relative paths (an access log named "1d"): keep them here.
    d = str(tmp_path_factory.mktemp("fuzz"))
    monkeypatch.chdir(d)
    return d


def test_loader_never_raises_anything_but_config_error(fuzz_dir, tls_pair):
    valid = [0]

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(documents(fuzz_dir, tls_pair))
    def run(doc):
        verdict = check_document(doc)
        if isinstance(verdict, cfg.Config):
            valid[0] += 1
            cache = verdict.cache
            if cache is None or cache.size <= 64 << 20:   # no 1 TiB arena in a unit test
                prepare(verdict)

    run()


_PART = re.compile(r"([\w-]+)|\[(\d+)\]")


def repair(doc: dict, problems: list[str]) -> bool:
    """Drop what each problem names (or its parent when the key is missing); False when
    nothing could be dropped."""
    dropped = False
    for line in problems:
        path = line.partition(": ")[0]
        parts = [int(i) if i else k for k, i in _PART.findall(path)]
        if not parts or parts == ["<top>"]:
            continue
        while parts:
            parent, ok = doc, True
            for part in parts[:-1]:
                try:
                    parent = parent[part]
                except (KeyError, IndexError, TypeError):
                    ok = False
                    break
            last = parts[-1]
            if ok and isinstance(parent, (dict, list)) and (
                    last in parent if isinstance(parent, dict) else
                    isinstance(last, int) and last < len(parent)):
                del parent[last]
                dropped = True
                break
            parts = parts[:-1]
    if not isinstance(doc.get("listeners"), list) or not doc["listeners"]:
        doc["listeners"] = [{"listen": "127.0.0.1:0", "mode": "forward"}]
    return dropped


def test_repaired_documents_pass_what_serve_does_before_binding(fuzz_dir, tls_pair):
    # Fuzzed documents with every rejected key removed: valid configurations that keep
    # the extreme values the loader accepted, in every section, through Worker.prepare.
    seen = []

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(documents(fuzz_dir, tls_pair))
    def run(doc):
        doc.pop("workers", None)
        for _ in range(12):
            verdict = check_document(doc)
            if isinstance(verdict, cfg.Config):
                seen.append(verdict)
                cache = verdict.cache
                if cache is None or cache.size <= 64 << 20:   # no 1 TiB arena in a test
                    prepare(verdict)
                return
            if not repair(doc, verdict):
                return

    run()
    assert len(seen) >= 100, len(seen)


# -- the real commands -------------------------------------------------------------------


def to_toml(doc: dict) -> str:
    """A small TOML writer for the generated documents (inline tables throughout)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            if math.isnan(v):
                return "nan"
            if math.isinf(v):
                return "inf" if v > 0 else "-inf"
            return repr(v)
        if isinstance(v, str):
            return '"' + "".join(c if c.isprintable() and c not in '"\\' else
                                 f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}"
                                 for c in v) + '"'
        if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
            return v.isoformat()
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(type(v))

    def key(k):
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else value(k)

    return "".join(f"{key(k)} = {value(v)}\n" for k, v in doc.items())


def test_commands_exit_2_without_traceback(fuzz_dir, tls_pair, tmp_path):
    env = dict(os.environ, PYTHONPATH=PKG_PARENT)
    done = []

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(documents(fuzz_dir, tls_pair))
    def run(doc):
        if len(done) >= 4:
            return
        text = to_toml(doc)
        path = tmp_path / "fuzz.toml"
        path.write_text(text)
        # The in-process verdict on the file as TOML reads it back.
        verdict = check_document(cfg.tomllib.loads(text))
        if isinstance(verdict, cfg.Config):
            return
        done.append(doc)
        for command in ("check", "serve"):
            r = subprocess.run([sys.executable, "-m", "fastproxy", command, "--config",
                                str(path)], capture_output=True, text=True, timeout=30,
                               env=env, stdin=subprocess.DEVNULL)
            assert r.returncode == 2, (command, r.returncode, r.stderr, text)
            assert "Traceback" not in r.stderr, r.stderr
            lines = r.stderr.strip().splitlines()
            assert lines == [f"fastproxy: {p}" for p in verdict], (lines, verdict)

    run()
    assert len(done) == 4
