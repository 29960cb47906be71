"""TLS to upstream servers: the client context of a group (CAs, SNI, client certificate).

Verification is on by default (RFC 9110 4.3.4: an https origin's certificate must match
its name): system CAs, or the group's `ca` bundle. A failed handshake is the relay's
502 with the reason (`connect to NAME failed: [SSL: CERTIFICATE_VERIFY_FAILED] ...`).
"""
from __future__ import annotations

import ssl

from fastproxy.upstream.settings import UpstreamTLS


class _SNIContext(ssl.SSLContext):
    """A client context that sends (and verifies) a fixed name, whatever host is dialled.

    asyncio and uvloop both create the TLS object with `context.wrap_bio(...,
    server_hostname=...)`; overriding it here sets the name without a change to the relay.
    """

    sni: str | None = None

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None,
                 session=None):
        """The TLS object for one connection, with this context's SNI name."""
        return super().wrap_bio(incoming, outgoing, server_side=server_side,
                                server_hostname=self.sni or server_hostname, session=session)


def client_context(tls: UpstreamTLS | None) -> ssl.SSLContext:
    """The context for a group's https:// connections; raises ssl.SSLError / OSError."""
    if tls is None:
        return ssl.create_default_context()
    ctx = _SNIContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.sni = tls.sni
    if tls.verify:
        if tls.ca:
            ctx.load_verify_locations(cafile=tls.ca)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert:
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


def check(tls: UpstreamTLS, schemes: list[str]) -> tuple[str, str] | None:
    """(key, problem) of a group's TLS table, or None; loads the files to find bad PEMs."""
    import os

    for name in ("ca", "cert", "key"):
        path = getattr(tls, name)
        if path is not None and not os.path.isfile(path):
            return name, f"no such file: {path}"
    if (tls.cert is None) != (tls.key is None):
        return ("key" if tls.key is None else "cert"), "mutual TLS needs both cert and key"
    if schemes and "https" not in schemes:
        return "", "applies to https:// servers and this group has none"
    try:
        client_context(tls)
    except (ssl.SSLError, OSError) as exc:
        return "", f"cannot load the CA, certificate or key: {exc}"
    return None
