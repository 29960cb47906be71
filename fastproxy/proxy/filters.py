"""Response-body filters beyond compression: per-route response header edits, and the
chain that runs several filters as one.

The filter contract (the relay's `ListenerSettings.filter_factory`, ext/relay_upstream.pxi
`_filter_start`): `factory(method, request, version)` is called once per response head and
returns None (no filter) or an object with
- `start(status, headers) -> headers | None`: None steps aside (the response passes
  untouched); else the fields to send. Framing (Content-Length, Transfer-Encoding) and
  Connection stay the relay's whatever the filter returns;
- `body_unchanged` (optional, read after start): True when only fields changed; the relay
  then keeps its framing lines and sends the body as it is, with no feed calls. Otherwise
  the relay frames the filtered body itself (chunked to HTTP/1.1, close-delimited to 1.0);
- `feed(data) -> bytes`, `flush() -> bytes` (the origin paused: what a client can use
  now), `finish() -> bytes` (the tail); bounded work per call. An exception aborts the
  response (the connection closes, never a half-framed body presented as complete).

A listener has one filter factory slot; `chain` fills it with the factories that apply
(route header edits first, so compression sees the edited head, e.g. a `no-transform`
set by a route). Header edits change fields only: the body keeps its framing.
"""
from __future__ import annotations

from fastproxy.proxy.router import render


class EditFilter:
    """Apply one route's response header edits to the head; the body passes as it is."""

    __slots__ = ("edits", "values")
    body_unchanged = True    # fields only: the relay keeps the body and its framing

    def __init__(self, edits, values: dict) -> None:
        self.edits = edits
        self.values = values

    def start(self, status: int, headers: list) -> list:
        """The head with the route's removals, sets and additions."""
        drop = self.edits.drop
        out = [(k, v) for k, v in headers if k.lower() not in drop]
        for name, parts in self.edits.lines:
            out.append((name, render(parts, self.values)))
        return out

    def feed(self, data: bytes) -> bytes:
        """Body bytes pass unchanged."""
        return bytes(data)

    def flush(self) -> bytes:
        """Nothing is held."""
        return b""

    def finish(self) -> bytes:
        """Nothing is held."""
        return b""


def edits_factory(router):
    """The factory of a router's response header edits, None when no route has any."""
    if not any(r.response_edits is not None for r in router.routes):
        return None

    def factory(method: bytes, req, version=None):
        host = getattr(req, "host", None)
        target = getattr(req, "target", b"/") or b"/"
        route = router.match(host, target, req)
        if route is None or route.response_edits is None:
            return None
        edits = route.response_edits
        values = {"host": host or b"", "method": method, "path": target} if edits.dynamic else {}
        return EditFilter(edits, values)
    return factory


class _Chained:
    """Several filters as one: each one's output is the next one's input."""

    __slots__ = ("filters", "body_unchanged")

    def __init__(self, filters: list) -> None:
        self.filters = filters
        self.body_unchanged = False

    def start(self, status: int, headers: list):
        """Each filter's head in turn; None when every filter steps aside."""
        active = []
        for f in self.filters:
            out = f.start(status, headers)
            if out is not None:
                headers = out
                active.append(f)
        self.filters = active
        self.body_unchanged = all(getattr(f, "body_unchanged", False) for f in active)
        return headers if active else None

    def feed(self, data: bytes) -> bytes:
        """Through every active filter."""
        for f in self.filters:
            data = f.feed(data)
        return data

    def flush(self) -> bytes:
        """Flush each filter, feeding what the earlier ones flushed into the later ones."""
        out = b""
        for f in self.filters:
            out = (f.feed(out) if out else b"") + f.flush()
        return out

    def finish(self) -> bytes:
        """End each filter, feeding what the earlier ones let out into the later ones."""
        out = b""
        for f in self.filters:
            out = (f.feed(out) if out else b"") + f.finish()
        return out


def chain(*factories):
    """One factory from several (None entries skipped); None when none is left."""
    present = [f for f in factories if f is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]

    def factory(method: bytes, req, version=None):
        filters = [f for f in (fac(method, req, version) for fac in present) if f is not None]
        if not filters:
            return None
        return filters[0] if len(filters) == 1 else _Chained(filters)
    return factory
