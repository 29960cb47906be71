"""Store keys: the primary key of a URL, Vary variant keys, and URLs an unsafe method may
have changed (RFC 9111 2, 4.1, 4.4)."""
from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from .directives import split_list

_DEFAULT_PORTS = {b"http": b":80", b"https": b":443"}


def cache_key(scheme: bytes, host: bytes, target: bytes) -> bytes:
    """Build the primary cache key scheme://host/target with scheme and host lowercased.

    RFC 9111 2: the key is at least the method and target URI; only GET is
    stored, so the URI alone. A default port is dropped so both spellings of
    one origin share entries (RFC 9110 4.2.3).
    """
    scheme = scheme.lower()
    host = host.lower()
    port = _DEFAULT_PORTS.get(scheme)
    if port and host.endswith(port):
        host = host[:-len(port)]
    if not target.startswith(b"/"):
        target = b"/" + target if target != b"*" else target
    return b"%s://%s%s" % (scheme, host, target)


def _normalise_vary_value(name: bytes, values: list[bytes]) -> bytes:
    # RFC 9111 4.1: values may be normalised in ways the field's definition
    # makes equivalent: list members trimmed and re-joined; Accept-Encoding's
    # codings are case-insensitive and unordered (RFC 9110 12.5.3).
    members = split_list(values)
    if name == b"accept-encoding":
        members = sorted(m.lower().replace(b" ", b"").replace(b"\t", b"") for m in members)
    return b",".join(members)


# A pseudo field name in a Vary stub (a colon never occurs in a field name, RFC 9110 5.1):
# the listener encodes this response itself, and the coding it negotiates for a request
# (not the raw Accept-Encoding text) selects the variant: identity or one copy per coding.
CODING = b":coding"


def variant_key(key_base: bytes, epoch: int, names: tuple[bytes, ...], request,
                coding: bytes | None = None) -> bytes:
    """The key of request's variant under a Vary stub naming `names` (and its epoch).

    `coding` is the negotiated content coding when names hold CODING (None: identity).
    """
    parts = [key_base, b"%016x" % epoch]
    for name in names:
        if name == CODING:
            parts.append(b"ce=" + (coding or b"identity"))
            continue
        values = request.get_all(name)
        # NUL never occurs in a field value (RFC 9110 5.5), so it separates;
        # "-" and "=" tell an absent field from an empty one.
        parts.append(b"=" + _normalise_vary_value(name, values) if values else b"-")
    return b"\x00".join(parts)


def origin_of(url: bytes) -> tuple:
    """(scheme, host, port) of a URL key: what "same origin" compares."""
    parts = urlsplit(url.decode("latin-1"))
    return (parts.scheme, parts.hostname, parts.port)


def resolve_ref(base: bytes, ref: bytes) -> bytes | None:
    """The key of a Location / Content-Location reference resolved against base, or None."""
    try:
        joined = urljoin(base.decode("latin-1"), ref.strip().decode("latin-1"))
        p = urlsplit(joined)
    except ValueError:
        return None
    if not p.scheme or not p.netloc:
        return None
    target = (p.path or "/") + ("?" + p.query if p.query else "")
    return cache_key(p.scheme.encode("latin-1"), p.netloc.encode("latin-1"),
                     target.encode("latin-1"))
