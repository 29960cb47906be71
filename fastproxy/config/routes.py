"""`[[listeners.routes]]`: what a route matches, where it sends, what it rewrites and edits.

Read by config.load with its table walker (any object with get/has/raw/table/problem/
finish); the router (proxy/router.py) compiles the result. Every problem names its key.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from fastproxy.config.schema import size_range, unknown_key

_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VAR_RE = re.compile(r"\{([a-z_]+)\}")
METHOD_RE = _TOKEN_RE
# {name} in an added or set header value: per request, in the reverse handler.
REQUEST_VARIABLES = ("client_ip", "host", "method", "path", "scheme")
# {name} in response header edits: what the request said (the filter sees no connection).
RESPONSE_VARIABLES = ("host", "method", "path")
# {name} in a fixed answer's location and body: {host} as the client sent it (with its
# port), {hostname} without the port.
ANSWER_VARIABLES = ("host", "hostname", "method", "path", "scheme")
ANSWER_STATUSES = range(200, 600)
# Fields a header edit may not touch: framing and routing stay the proxy's
# (use upstream_host for Host).
PROTECTED = frozenset(("host", "content-length", "transfer-encoding", "connection",
                       "upgrade", "te", "trailer", "keep-alive", "expect"))


@dataclass(frozen=True)
class CanaryConfig:
    """Send a share of a route's traffic to another upstream group."""

    upstream: str
    percent: float
    key: str = "random"              # random | client_ip | header:NAME | cookie:NAME
    # header:NAME or cookie:NAME whose value "always" / "never" forces a side.
    force: str | None = None


@dataclass(frozen=True)
class ShadowConfig:
    """Copy a share of a route's requests (bodies up to max_body) to another group; answers
    ignored."""

    upstream: str
    percent: float = 100.0
    max_in_flight: int = 16          # copies under way at once, per worker; more are dropped
    max_body: int = 64 * 1024        # a request with a larger body is not copied (counted)


@dataclass(frozen=True)
class HeaderEdits:
    """add / set / remove of request header fields (names lowercased, values templates)."""

    add: tuple[tuple[str, str], ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class RouteConfig:
    """Ingress rule: requests matching it go to an upstream group, rewritten and edited."""

    upstream: str
    host: str | None = None          # exact "a.example.com" or "*.example.com"
    path: str = "/"                  # prefix (unless exact or regex is given)
    exact: str | None = None         # exact path (without the query)
    regex: str | None = None         # re.search against the path (without the query)
    methods: tuple[str, ...] = ()    # empty: any method
    # (name, value): value None = present, False = absent, a string = equal to it
    headers: tuple[tuple[str, Any], ...] = ()
    query: tuple[tuple[str, Any], ...] = ()
    priority: int = 0                # higher is tried first, whatever the precedence
    strip_prefix: bool = False
    rewrite: tuple[str, str] | None = None   # (regex, replacement) on the path
    upstream_host: str | None = None  # the Host the upstream gets
    request_headers: HeaderEdits = HeaderEdits()
    response_headers: HeaderEdits = HeaderEdits()
    canary: CanaryConfig | None = None
    # A fixed answer instead of an upstream: (status, location template or None, body)
    answer: tuple[int, str | None, str] | None = None
    shadow: ShadowConfig | None = None


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -1000 <= value <= 1000:
        raise ValueError(f"expected an integer -1000..1000, got {value!r}")
    return value


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _regex(value: Any) -> str:
    v = _str(value)
    try:
        re.compile(v)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc}): {v!r}") from None
    return v


def _path(value: Any) -> str:
    v = _str(value)
    if not v.startswith("/"):
        raise ValueError(f"expected a path starting with '/', got {v!r}")
    return v


def _methods(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or any(
            not isinstance(m, str) or not METHOD_RE.match(m) for m in value):
        raise ValueError(f'expected a list of methods like ["GET", "HEAD"], got {value!r}')
    return tuple(m.upper() for m in value)


def _conditions(what: str) -> Callable[[Any], tuple]:
    def conv(value: Any) -> tuple:
        if not isinstance(value, dict):
            raise ValueError(f'expected a table like {{ x-env = "beta", x-debug = true }}, '
                             f"got {value!r}")
        out = []
        for name, want in value.items():
            if what == "header" and not _TOKEN_RE.match(name):
                raise ValueError(f"{name!r} is not a header name")
            if want is True:
                want = None
            elif not (want is False or isinstance(want, str)):
                raise ValueError(f"{name}: expected a value (string), true (present) or false "
                                 f"(absent), got {want!r}")
            out.append((name.lower() if what == "header" else name, want))
        return tuple(out)
    return conv


def _template(value: Any, variables: tuple[str, ...]) -> str:
    v = _str(value)
    if any(c in v for c in "\r\n\0"):
        raise ValueError(f"a header value cannot hold CR, LF or NUL: {v!r}")
    for name in _VAR_RE.findall(v):
        if name not in variables:
            raise ValueError(f"unknown variable {{{name}}} (known: "
                             f"{', '.join('{' + n + '}' for n in variables)})")
    return v


def _edits(value: Any, variables: tuple[str, ...] = REQUEST_VARIABLES) -> HeaderEdits:
    if not isinstance(value, dict):
        raise ValueError(f"expected a table with add, set and remove, got {value!r}")
    for key in value:
        if key not in ("add", "set", "remove"):
            raise ValueError(f"{key}: {unknown_key(key, ('add', 'set', 'remove'))}")

    def name_ok(key: str, name: Any) -> str:
        if not isinstance(name, str) or not _TOKEN_RE.match(name):
            raise ValueError(f"{key}: {name!r} is not a header name")
        if name.lower() in PROTECTED:
            raise ValueError(f"{key}: {name} is the proxy's to set "
                             "(framing, connection, or Host: use upstream_host)")
        return name

    pairs = {}
    for key in ("add", "set"):
        table = value.get(key, {})
        if not isinstance(table, dict):
            raise ValueError(f'{key}: expected a table like {{ X-Env = "prod" }}, got {table!r}')
        items = []
        for name, v in table.items():
            try:
                items.append((name_ok(key, name), _template(v, variables)))
            except ValueError as exc:
                msg = str(exc)
                raise ValueError(msg if msg.startswith(f"{key}:") else
                                 f"{key}.{name}: {msg}") from None
        pairs[key] = tuple(items)
    remove = value.get("remove", [])
    if not isinstance(remove, list):
        raise ValueError(f'remove: expected a list of header names, got {remove!r}')
    return HeaderEdits(pairs["add"], pairs["set"],
                       tuple(name_ok("remove", n).lower() for n in remove))


def _rewrite(value: Any) -> tuple[str, str]:
    for key in value if isinstance(value, dict) else ():
        if key not in ("regex", "replace"):
            raise ValueError(f"{key}: {unknown_key(key, ('regex', 'replace'))}")
    if not isinstance(value, dict) or set(value) != {"regex", "replace"}:
        raise ValueError(f'expected {{ regex = "^/old/(.*)", replace = "/new/\\\\1" }}, '
                         f"got {value!r}")
    pattern = re.compile(_regex(value["regex"]))
    replace = _str(value["replace"])
    # A reference to a group the regex does not have fails here, not per request.
    for num, name in re.findall(r"\\(\d+)|\\g<(\w+)>", replace):
        ref = num or name
        if not (ref.isdigit() and int(ref) <= pattern.groups or ref in pattern.groupindex):
            raise ValueError(f"replace refers to group {ref}, which the regex does not have")
    if not replace.startswith("/") and not replace.startswith("\\"):
        raise ValueError(f"replace must give a path starting with '/', got {replace!r}")
    return value["regex"], replace


def _answer(value: Any) -> tuple[int, str | None, str]:
    if not isinstance(value, dict):
        raise ValueError(f'expected {{ status = 301, location = "https://{{host}}{{path}}" }}, '
                         f"got {value!r}")
    for key in value:
        if key not in ("status", "location", "body"):
            raise ValueError(f"{key}: {unknown_key(key, ('status', 'location', 'body'))}")
    status = value.get("status")
    if isinstance(status, bool) or not isinstance(status, int) or status not in ANSWER_STATUSES:
        raise ValueError(f"status: expected a status 200-599, got {status!r}")
    location = value.get("location")
    if location is not None:
        try:
            location = _template(location, ANSWER_VARIABLES)
        except ValueError as exc:
            raise ValueError(f"location: {exc}") from None
    elif 300 <= status < 400 and status != 304:
        raise ValueError(f"location: required for a {status} redirect")
    body = value.get("body", "")
    if not isinstance(body, str):
        raise ValueError(f"body: expected a string, got {body!r}")
    for name in _VAR_RE.findall(body):
        if name not in ANSWER_VARIABLES:
            raise ValueError(f"body: unknown variable {{{name}}}")
    return status, location, body


def _force(value: Any) -> str:
    v = _str(value)
    kind, _, name = v.partition(":")
    if kind not in ("header", "cookie") or not name or not _TOKEN_RE.match(name):
        raise ValueError(f'expected "header:NAME" or "cookie:NAME", got {value!r}')
    return f"{kind}:{name.lower() if kind == 'header' else name}"


# The route keys read_route takes only when present.
ROUTE_SECTIONS = ("return", "canary", "shadow", "request_headers", "response_headers")


def read_route(table: Any, canary_key: Callable[[Any], str]) -> RouteConfig | None:
    """One `[[listeners.routes]]` table; None (with problems recorded) when unusable."""
    upstream = table.get("upstream", _str, None)
    answer: tuple[int, str | None, str] | None = None
    answer_given = table.has("return")
    if answer_given:
        raw = table.raw("return")
        try:
            answer = _answer(raw)
        except ValueError as exc:
            key, sep, text = str(exc).partition(": ")
            if sep and " " not in key:
                table.problem(f"return.{key}", text)
            else:
                table.problem("return", str(exc))
        if upstream is not None:
            table.problem("return", "a route answers itself or sends upstream, not both")
    if upstream is None and not answer_given:
        table.problem("upstream", "required: the upstream group this route sends to "
                                  "(or a return answer)")
    host = table.get("host", _str, None)
    path = table.get("path", _path, "/")
    exact = table.get("exact", _path, None)
    regex = table.get("regex", _regex, None)
    given = [k for k in ("path", "exact", "regex") if table.has(k)]
    if len(given) > 1:
        table.problem(given[1], f"give one of path (prefix), exact or regex, not both "
                                f"{given[0]} and {given[1]}")
    canary = None
    if table.has("canary"):
        ct = table.table("canary")
        cu = ct.get("upstream", _str, None)
        if cu is None:
            ct.problem("upstream", "required: the upstream group that gets the canary share")
        pct = ct.get("percent", _float, None)
        if pct is None:
            ct.problem("percent", "required: the share of requests, 0-100")
        elif not 0 <= pct <= 100:
            ct.problem("percent", f"expected 0-100, got {pct!r}")
        key = ct.get("key", canary_key, "random")
        force = ct.get("force", _force, None)
        ct.finish()
        if cu is not None and pct is not None:
            canary = CanaryConfig(cu, pct, key, force)
    shadow = None
    if table.has("shadow"):
        st = table.table("shadow")
        su = st.get("upstream", _str, None)
        if su is None:
            st.problem("upstream", "required: the upstream group that gets the copies")
        pct = st.get("percent", _float, 100.0)
        if not 0 <= pct <= 100:
            st.problem("percent", f"expected 0-100, got {pct!r}")
        mif = st.get("max_in_flight", _int, 16)
        if mif < 1:
            st.problem("max_in_flight", f"expected 1-1000, got {mif!r}")
        max_body = st.get("max_body", size_range(0, 16 << 20), 64 * 1024)
        st.finish()
        if su is not None:
            shadow = ShadowConfig(su, pct, mif, max_body)
    strip = table.get("strip_prefix", _bool, False)
    if strip and (exact or regex):
        table.problem("strip_prefix", "applies to a path prefix route (use rewrite with "
                                      "exact or regex)")
    edits = {}
    for which, variables in (("request_headers", REQUEST_VARIABLES),
                             ("response_headers", RESPONSE_VARIABLES)):
        edits[which] = HeaderEdits()
        if table.has(which):
            try:
                edits[which] = _edits(table.raw(which), variables)
            except ValueError as exc:
                key, sep, text = str(exc).partition(": ")
                if sep and " " not in key:
                    table.problem(f"{which}.{key}", text)
                else:
                    table.problem(which, str(exc))
    upstream_host = table.get("upstream_host", _str, None)
    if upstream_host is not None and (not upstream_host or any(
            c in upstream_host for c in " /\r\n\0")):
        table.problem("upstream_host", f"expected a host[:port], got {upstream_host!r}")
        upstream_host = None
    route = RouteConfig(
        upstream=upstream or "",
        host=host.lower() if host else None,
        path=path,
        exact=exact,
        regex=regex,
        methods=table.get("methods", _methods, ()),
        headers=table.get("headers", _conditions("header"), ()),
        query=table.get("query", _conditions("query"), ()),
        priority=table.get("priority", _int, 0),
        strip_prefix=strip,
        rewrite=table.get("rewrite", _rewrite, None),
        upstream_host=upstream_host,
        request_headers=edits["request_headers"],
        response_headers=edits["response_headers"],
        canary=canary,
        answer=answer,
        shadow=shadow,
    )
    table.finish()
    return route if upstream or answer is not None else None
