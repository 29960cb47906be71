"""The admin interface (`--admin HOST:PORT`, config key `admin`): status, metrics, cache purge.

A small HTTP/1.1 server on each worker's event loop, apart from the data path:

    GET  /                           the status page (HTML, refreshes itself)
    GET  /status                     JSON: uptime, connections, the connection limit and
                                     its pauses, requests, per upstream group/server
                                     counters, cache counters
    GET  /metrics                    the same numbers in the Prometheus text format (0.0.4)
    GET  /healthz                    liveness for load balancers: 200 "ok" while serving,
                                     503 "draining" once the worker stops (SIGTERM)
    POST /reload                     check the configuration file, then reload it (400 and
                                     the problems when it is not valid)
    POST /cache/purge?url=URL        drop one URL (all its Vary variants) from the cache
    POST /cache/purge?prefix=URL     drop every URL starting with the prefix

URLs are absolute (`http://host/path?query`) as the cache keys them: scheme, the Host
the clients send (default port dropped), and the target.

With several workers every worker binds the admin port (SO_REUSEPORT), so a request
reaches one of them; that worker asks its siblings over per-worker UNIX sockets (in a
directory the master creates) and answers for all: a purge reaches every worker's cache,
and /status and /metrics are the sums. The admin port has no authentication: bind it to
loopback or a management network. A request whose Host is a name other than localhost,
the admin address's name or one of `admin_hosts` is refused with 421 (DNS rebinding).
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import platform
import time
from urllib.parse import parse_qs, urlsplit

from fastproxy import _http
from fastproxy._relay import date_line
from fastproxy.admin.page import render_page
from fastproxy.admin.view import WorkerView
from fastproxy.cache import cache_key
from fastproxy.errorlog import log

MAX_BODY = 65536
INTERNAL = b"x-fastproxy-internal"   # a sibling's request: answer for this worker only


def _cross_site(req) -> str | None:
    """Why a state-changing request a web page had a browser send is refused, else None.

    The admin port has no authentication, and a browser on the operator's machine reaches a
    loopback port too: any page could make it POST /reload or purge the cache (CSRF).
    Browsers say where such a request comes from (Fetch Metadata, Origin); curl, scripts
    and the status page itself (same origin) are not refused."""
    if req.method in (b"GET", b"HEAD"):
        return None
    site = req.get(b"sec-fetch-site")
    if site is not None and site not in (b"same-origin", b"none"):
        return "refused: a request from another site (Sec-Fetch-Site)"
    origin = req.get(b"origin")
    if origin is not None and origin.partition(b"://")[2] != (req.host or b""):
        return "refused: a request from another origin (Origin)"
    return None


def _foreign_host(req, names: frozenset[bytes]) -> str | None:
    """Why a request that names another server is refused, else None.

    DNS rebinding: a page on evil.example makes its name resolve to 127.0.0.1, and the
    browser then lets the page read what this port answers (the same origin, to it), with
    `Host: evil.example:PORT`. A rebinding needs a name, so an IP literal is always
    accepted, as are `localhost` and `names` (the admin address's name and `admin_hosts`);
    a request without a Host (HTTP/1.0) came from no browser."""
    if req.target_form == _http.TARGET_ABSOLUTE:
        try:   # RFC 9112 3.2.2: the target's authority, not Host, names the server
            host = _http.split_absolute(req.target)[1]
        except _http.ParseError:
            return None   # not an http(s) URL: no endpoint matches, a 404
    else:
        value = req.host
        if not value:
            return None
        try:
            host = _http.split_authority(value, 80)[0]
        except _http.ParseError:
            return "refused: a malformed Host"
    host = host.rstrip(b".")
    if host == b"localhost" or host in names:
        return None
    try:
        ipaddress.ip_address(host.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        shown = host.decode("ascii", "replace")
        return (f"refused: Host {shown!r} does not name this admin interface (an IP address, "
                "localhost, the admin address's name or one of admin_hosts do)")
    return None


def _sock_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"worker-{index}.sock")


class AdminServer:
    """The admin listener of one worker."""

    def __init__(self, view: WorkerView) -> None:
        self.view = view
        self.servers: list[asyncio.AbstractServer] = []

    async def start(self, socks) -> None:
        """Serve on the listening sockets the worker bound for the admin address (and on
        this worker's sibling socket when there are several)."""
        v = self.view
        for sock in socks:
            self.servers.append(await asyncio.start_server(self._client, sock=sock))
        server = self.servers[0]
        if v.peers_dir is not None:
            path = _sock_path(v.peers_dir, v.index)
            if os.path.exists(path):
                os.unlink(path)
            self.servers.append(await asyncio.start_unix_server(self._client, path))
        addr = server.sockets[0].getsockname()
        shown = f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
        log(f"listening on {shown} (admin)")

    def close(self) -> None:
        """Stop accepting admin connections."""
        for server in self.servers:
            server.close()

    # -- HTTP -------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The proxy listeners' client timeouts bound every wait, else a client that
        # sends half a head, or nothing, or never reads, holds one of the worker's
        # descriptors (which its proxied connections need too) for ever.
        first = True
        try:
            while True:
                t = self.view.timeouts
                try:
                    head = await _within(reader.readuntil(b"\r\n\r\n"), t.client_header if first
                                         else t.client_idle + t.client_header)
                except asyncio.IncompleteReadError:
                    break
                except asyncio.LimitOverrunError:
                    writer.write(_response(431, {"error": "request head too large"}, False))
                    break
                except TimeoutError:
                    writer.write(_response(408, {"error": "request head timed out"}, False))
                    break
                first = False
                try:
                    req = _http.RequestParser().feed(head)
                except _http.ParseError as exc:
                    writer.write(_response(exc.status, {"error": str(exc)}, False))
                    break
                if req.body == _http.BODY_CHUNKED:
                    # RFC 9112 7.1: every HTTP/1.1 recipient parses chunked (curl -T - sends it).
                    try:
                        fits = await _within(_read_chunked(reader, MAX_BODY), t.client_body)
                    except _http.ParseError as exc:
                        writer.write(_response(400, {"error": f"bad chunked body: {exc}"}, False))
                        break
                    except TimeoutError:
                        writer.write(_response(408, {"error": "request body timed out"},
                                               False))
                        break
                    if not fits:
                        writer.write(_response(413, {"error": "request body too large"}, False))
                        break
                if req.body == _http.BODY_LENGTH:
                    if req.content_length > MAX_BODY:
                        writer.write(_response(413, {"error": "request body too large"}, False))
                        break
                    try:   # no endpoint reads it
                        await _within(reader.readexactly(req.content_length), t.client_body)
                    except TimeoutError:
                        writer.write(_response(408, {"error": "request body timed out"},
                                               False))
                        break
                refusal = _cross_site(req)
                foreign = (_foreign_host(req, self.view.admin_hosts)
                           if _origin_form(req).partition(b"?")[0] != b"/healthz" else None)
                if foreign is not None:
                    # 421 (RFC 9110 15.5.20): this server is not authoritative for the
                    # name the request is for; nothing about the client's rights (403).
                    status, payload, ctype = 421, {"error": foreign}, "application/json"
                elif refusal is not None:
                    status, payload, ctype = 403, {"error": refusal}, "application/json"
                else:
                    status, payload, ctype = await self.route(req)
                keep = req.keep_alive
                allow = (_ALLOW.get(_origin_form(req).partition(b"?")[0], _ALLOW_SERVER)
                         if status == 405 or req.method == b"OPTIONS" else None)
                writer.write(_response(status, payload, keep, ctype, req.method == b"HEAD",
                                       allow))
                await _within(writer.drain(), t.client_send)
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError,
                TimeoutError):
            pass   # the client left or stopped reading, or the worker is stopping
        finally:
            writer.close()

    async def route(self, req) -> tuple[int, object, str]:
        """(status, payload, content type) for one admin request."""
        path, _, query = _origin_form(req).decode("latin-1").partition("?")
        method = req.method
        local = req.get(INTERNAL) is not None
        if method == b"OPTIONS" and (path == "*" or path in _ALLOW_TEXT):
            # RFC 9110 9.3.7: `OPTIONS *` asks about the server, `OPTIONS /path` about one
            # endpoint; the answer is the Allow field, with no content.
            return 200, "", "text/plain; charset=utf-8"
        if path == "/status" or path == "/metrics" or path == "/snapshot":
            if method not in (b"GET", b"HEAD"):
                return 405, {"error": f"{path} answers GET"}, "application/json"
            snap = self.snapshot() if local or path == "/snapshot" else await self.gathered()
            if path == "/snapshot":
                return 200, snap, "application/json"
            if path == "/metrics":
                return 200, render_metrics(snap), "text/plain; version=0.0.4; charset=utf-8"
            return 200, status_document(snap), "application/json"
        if path == "/healthz":
            # Cheap (no snapshot, no siblings): balancers ask often. A draining worker
            # says 503 so that they stop sending before the listeners go.
            if method not in (b"GET", b"HEAD"):
                return 405, {"error": "/healthz answers GET"}, "application/json"
            if self.view.draining:
                return 503, "draining\n", "text/plain; charset=utf-8"
            return 200, "ok\n", "text/plain; charset=utf-8"
        if path == "/":
            if method not in (b"GET", b"HEAD"):
                return 405, {"error": "/ answers GET"}, "application/json"
            return 200, render_page(status_document(await self.gathered())), \
                "text/html; charset=utf-8"
        if path == "/reload":
            if method != b"POST":
                return 405, {"error": "/reload answers POST"}, "application/json"
            ok, lines = await self.view.reload()
            return (200, {"reloaded": True, "detail": lines}, "application/json") if ok else \
                (400, {"reloaded": False, "problems": lines}, "application/json")
        if path == "/cache/purge":
            if method != b"POST":
                return 405, {"error": "/cache/purge answers POST"}, "application/json"
            return await self.purge(query, local)
        return 404, {"error": f"no such admin endpoint: {path}",
                     "endpoints": ["GET /", "GET /status", "GET /metrics", "GET /healthz",
                                   "POST /reload",
                                   "POST /cache/purge?url=URL", "POST /cache/purge?prefix=URL"]}, \
            "application/json"

    # -- purge ------------------------------------------------------------------

    async def purge(self, query: str, local: bool) -> tuple[int, object, str]:
        """Purge by url= or prefix= in this worker (and its siblings unless local)."""
        params = parse_qs(query, keep_blank_values=True)
        urls, prefixes = params.get("url", []), params.get("prefix", [])
        if len(urls) + len(prefixes) != 1:
            return 400, {"error": "give exactly one of url=URL or prefix=URL"}, "application/json"
        raw = (urls or prefixes)[0]
        key = _url_key(raw)
        if key is None:
            return 400, {"error": f"not an absolute http(s) URL: {raw!r}"}, "application/json"
        n = self.view.purge(key, prefix=not urls)
        if n is None:
            return 404, {"error": "this proxy has no cache (give --cache SIZE)"}, "application/json"
        workers = 1
        if not local:
            for other in await self._ask_siblings("POST", f"/cache/purge?{query}"):
                n += other.get("purged", 0)
                workers += 1
        kind = "url" if urls else "prefix"
        return 200, {"purged": n, kind: key.decode("latin-1"), "workers": workers}, \
            "application/json"

    # -- numbers ----------------------------------------------------------------

    def snapshot(self) -> dict:
        """This worker's numbers."""
        return self.view.snapshot()

    async def gathered(self) -> dict:
        """The sum of every worker's snapshot."""
        snap = self.snapshot()
        for other in await self._ask_siblings("GET", "/snapshot"):
            snap = _merge(snap, other)
        return snap

    async def _ask_siblings(self, method: str, target: str) -> list[dict]:
        v = self.view
        if v.peers_dir is None:
            return []
        others = [i for i in range(v.workers) if i != v.index]
        results = await asyncio.gather(*(self._ask(_sock_path(v.peers_dir, i), method, target)
                                         for i in others), return_exceptions=True)
        return [r for r in results if isinstance(r, dict)]

    @staticmethod
    async def _ask(path: str, method: str, target: str) -> dict:
        async def exchange():
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                writer.write(f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n"
                             f"X-Fastproxy-Internal: 1\r\nConnection: close\r\n"
                             f"Content-Length: 0\r\n\r\n".encode("latin-1"))
                data = await reader.read()
            finally:
                writer.close()
            _, _, body = data.partition(b"\r\n\r\n")
            return json.loads(body)
        return await asyncio.wait_for(exchange(), 5.0)


def _origin_form(req) -> bytes:
    """req's target as path and query: an absolute-form one ("GET http://host/status",
    which a server MUST accept, RFC 9112 3.2.2) loses its scheme and authority."""
    if req.target_form != _http.TARGET_ABSOLUTE:
        return req.target
    try:
        return _http.split_absolute(req.target)[3]
    except _http.ParseError:
        return req.target   # not a URL we route (ftp://...): no path matches, a 404


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bool:
    """Consume a chunked request body (no endpoint reads one); False past `limit` bytes.
    Line by line, so nothing of a pipelined next request is read; ParseError if bad."""
    decoder = _http.ChunkedDecoder()
    total = 0
    while not decoder.done:
        try:
            piece = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError:
            return False
        total += len(piece)
        if total > limit:
            return False
        decoder.feed(piece)
    return True


async def _within(aw, seconds: float):
    """await aw, raising TimeoutError after `seconds` (0: no limit, as in [timeouts])."""
    if seconds <= 0:
        return await aw
    return await asyncio.wait_for(aw, seconds)


def _url_key(raw: str) -> bytes | None:
    """The cache key of an absolute URL given to the admin interface."""
    try:
        p = urlsplit(raw.strip())
        port = p.port          # ValueError unless digits within 0-65535
    except ValueError:
        return None
    if (p.scheme.lower() not in ("http", "https") or not p.hostname or "@" in p.netloc
            or port == 0):
        # RFC 3986 3.2.3 / RFC 9110 4.2: no URL names port 0, 99999 or an empty host, and
        # a purge of one would silently match nothing.
        return None
    target = (p.path or "") + ("?" + p.query if p.query else "")
    return cache_key(p.scheme.encode("latin-1"), p.netloc.encode("latin-1"),
                     target.encode("latin-1"))


_FINE = (None, "UP", "ok", "closed", "off")
# Numbers that are verdicts (1 or 0), not counts: the workers' worst, as the state words.
_VERDICTS = ("healthy",)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if k == "started" or (k in _VERDICTS and k in out):
            out[k] = min(out.get(k, v), v)
        elif isinstance(v, dict):
            out[k] = _merge(out.get(k, {}), v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = out.get(k, 0) + v
        elif out.get(k) in _FINE:
            out[k] = v      # a server DOWN in any worker is DOWN on the summed page
        else:
            out.setdefault(k, v)
    return out


def status_document(snap: dict) -> dict:
    """The /status JSON from a (merged) snapshot."""
    doc = {k: v for k, v in snap.items() if k != "started"}
    doc["uptime"] = round(time.time() - snap["started"], 3)
    doc["pid"] = os.getpid()
    return doc


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(snap: dict) -> str:
    """Prometheus text exposition (format 0.0.4) of a (merged) snapshot."""
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples) -> None:
        out.append(f"# HELP fastproxy_{name} {help_text}")
        out.append(f"# TYPE fastproxy_{name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_label(str(v))}"' for k, v in labels.items())
            out.append(f"fastproxy_{name}{{{lab}}} {value}" if lab else f"fastproxy_{name} {value}")

    def histogram(name: str, help_text: str, label: str, series: dict) -> None:
        out.append(f"# HELP fastproxy_{name} {help_text}")
        out.append(f"# TYPE fastproxy_{name} histogram")
        for key, h in series.items():
            lab = f'{label}="{_label(key)}"'
            running = 0
            for le, n in sorted(h["buckets"].items(), key=lambda kv: float(kv[0])):
                running += n
                out.append(f'fastproxy_{name}_bucket{{{lab},le="{le}"}} {running}')
            out.append(f'fastproxy_{name}_bucket{{{lab},le="+Inf"}} {h["count"]}')
            out.append(f"fastproxy_{name}_sum{{{lab}}} {round(h['sum'], 6)}")
            out.append(f"fastproxy_{name}_count{{{lab}}} {h['count']}")

    metric("build_info", "gauge", "Always 1; the labels name the running build.",
           [({"version": snap.get("version", ""), "python": platform.python_version()}, 1)])
    metric("uptime_seconds", "gauge", "Seconds since the oldest worker started.",
           [({}, round(time.time() - snap["started"], 3))])
    metric("workers", "gauge", "Worker processes answering.", [({}, snap["workers"])])
    metric("connections", "gauge", "Open client connections.", [({}, snap["connections"])])
    limits = snap.get("limits")
    if limits is not None:
        metric("max_connections", "gauge", "Open client connections allowed (summed over "
               "workers: max_connections is per worker).", [({}, limits["max_connections"])])
        metric("accept_paused", "gauge", "Workers not accepting because they are at "
               "max_connections.", [({}, limits["accept_paused"])])
        metric("accept_pauses_total", "counter", "Times a worker stopped accepting at "
               "max_connections.", [({}, limits["accept_pauses"])])
        metric("connections_waiting", "gauge", "Connections accepted past max_connections in "
               "one burst, held unread until a slot frees.", [({}, limits["waiting"])])
    tls = snap.get("tls")
    if tls is not None:
        hs = tls["handshakes"]
        metric("tls_handshakes_total", "counter", "TLS handshakes on HTTP listeners (tcp "
               "listeners: not counted), by outcome (failed: see "
               "tls_handshake_failures_total).",
               [({"result": r}, hs[r]) for r in ("ok", "timeout", "closed")] +
               [({"result": "failed"}, sum(hs["failed"].values()))])
        metric("tls_handshake_failures_total", "counter", "TLS handshakes refused, by "
               "OpenSSL's reason (http_request: plain HTTP sent to a TLS port).",
               [({"reason": k}, v) for k, v in sorted(hs["failed"].items())])
    req = snap["requests"]
    metric("requests_total", "counter", "Requests answered, by status class.",
           [({"class": k}, v) for k, v in req.items() if k != "total"])
    metric("response_body_bytes_total", "counter", "Response body bytes sent to clients.",
           [({}, snap["bytes"]["sent"])])
    metric("request_body_bytes_total", "counter", "Request body bytes received from clients.",
           [({}, snap["bytes"]["received"])])
    ups = [(g, s, v) for g, servers in snap["upstreams"].items() for s, v in servers.items()]
    for key, name, kind, help_text in (
            ("open", "upstream_connections", "gauge", "Open connections to the server."),
            ("idle", "upstream_idle_connections", "gauge", "Idle keep-alive connections."),
            ("opened", "upstream_connections_opened_total", "counter",
             "Connections opened to the server."),
            ("active", "upstream_active_requests", "gauge", "Requests in flight to the server."),
            ("pending", "upstream_pending_requests", "gauge",
             "Requests waiting for a connection to the server."),
            # Not "upstream_ejections": that is the family name of the counter below in
            # OpenMetrics (a counter's name less _total), and parsers refuse a clash.
            ("ejections", "upstream_consecutive_ejections", "gauge",
             "Consecutive passive-health ejections of the server."),
            ("failures_total", "upstream_failures_total", "counter",
             "Failures seen from the server (connect failures, resets, timeouts, 5xx)."),
            ("ejections_total", "upstream_ejections_total", "counter",
             "Times passive health detection took the server out."),
            ("healthy", "upstream_healthy", "gauge",
             "1 when the server passes health checks and is not ejected.")):
        metric(name, kind, help_text,
               [({"group": g, "server": s}, v.get(key, 0)) for g, s, v in ups])
    latency = snap.get("latency", {})
    histogram("request_duration_seconds", "Time from the request's first byte to the "
              "logged end of the exchange, per listener.", "listener",
              latency.get("listeners", {}))
    histogram("upstream_response_seconds", "Time from the request sent upstream to the "
              "response head, per upstream group.", "group", latency.get("groups", {}))
    cache = snap.get("cache")
    if cache is not None:
        for key, kind, help_text in (
                ("hits", "counter", "Responses served from a fresh cache entry."),
                ("misses", "counter", "GET/HEAD requests that went upstream."),
                ("stale", "counter", "Responses served from a stale entry."),
                ("revalidated", "counter", "Entries refreshed by a 304."),
                ("stores", "counter", "Responses stored."),
                ("store_failures", "counter", "Storable responses the store refused."),
                ("collapsed", "counter", "Requests answered from a coalesced miss."),
                ("evictions", "counter", "Entries evicted to make room."),
                ("expirations", "counter", "Entries dropped because they expired."),
                ("invalidations", "counter", "Entries removed after unsafe methods."),
                ("purges", "counter", "Entries removed by PURGE or the admin interface."),
                ("refreshes", "counter", "Background revalidations completed."),
                ("refresh_failures", "counter", "Background revalidations that failed.")):
            metric(f"cache_{key}_total", kind, help_text, [({}, cache[key])])
        for key, help_text in (
                ("peer_asked", "Misses sent to the fleet node that owns the key."),
                ("peer_failed", "Misses whose owning node failed (fetched here instead)."),
                ("shared_hits", "Local misses answered from the Redis shared tier."),
                ("shared_misses", "Local misses the Redis shared tier did not hold."),
                ("shared_errors", "Redis operations that failed or timed out."),
                ("shared_skipped", "Lookups that skipped Redis (breaker open or busy)."),
                ("shared_writes", "Entries written to the Redis shared tier."),
                ("shared_writes_dropped", "Writes dropped (too many in flight, breaker open).")):
            if key in cache:
                metric(f"cache_{key}_total", "counter", help_text, [({}, cache[key])])
        metric("cache_entries", "gauge", "Entries in the cache.", [({}, cache["entries"])])
        metric("cache_bytes", "gauge", "Bytes of live entries.", [({}, cache["bytes"])])
        metric("cache_capacity_bytes", "gauge", "Arena size.", [({}, cache["capacity"])])
    return "\n".join(out) + "\n"


# Every status the admin writes (the parser's refusals included: 414, 501, 505).
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
            408: b"Request Timeout", 411: b"Length Required", 413: b"Content Too Large",
            414: b"URI Too Long", 431: b"Request Header Fields Too Large",
            501: b"Not Implemented", 503: b"Service Unavailable",
            505: b"HTTP Version Not Supported"}


# RFC 9110 15.5.6: a 405 lists the methods the resource answers (so does an OPTIONS).
_ALLOW = {b"/": b"GET, HEAD, OPTIONS", b"/reload": b"POST, OPTIONS",
          b"/status": b"GET, HEAD, OPTIONS", b"/metrics": b"GET, HEAD, OPTIONS",
          b"/snapshot": b"GET, HEAD, OPTIONS", b"/healthz": b"GET, HEAD, OPTIONS",
          b"/cache/purge": b"POST, OPTIONS"}
_ALLOW_TEXT = frozenset(p.decode() for p in _ALLOW)
_ALLOW_SERVER = b"GET, HEAD, POST, OPTIONS"   # `OPTIONS *`: every method some endpoint takes


def _response(status: int, payload, keep: bool, ctype: str = "application/json",
              head_only: bool = False, allow: bytes | None = None) -> bytes:
    if isinstance(payload, str):
        body = payload.encode()
    else:
        body = (json.dumps(payload, indent=1) + "\n").encode()
    extra = b"" if keep else b"Connection: close\r\n"
    if allow:
        extra += b"Allow: " + allow + b"\r\n"
    head = (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"Cache-Control: no-store\r\n%s%s\r\n"
            % (status, _REASONS.get(status, b"Error"), ctype.encode(), len(body), date_line(),
               extra))
    return head if head_only else head + body
