"""TLS on a listener: the default certificate and the ones chosen by SNI, reloadable.

The listening server keeps one SSLContext for its life; it holds the default
certificate, and its `sni_callback` (there when SNI certificates are) hands a handshake
the context of the name the client asked for (exact name first, then the `*.suffix` one
level up, RFC 6125 6.4.3). A reload (SIGHUP) loads the files again (the default one into
the base context in place, the SNI ones into fresh contexts) and swaps the table: new
handshakes see the new certificates, open connections keep theirs. TLS 1.2 is the
minimum; OpenSSL's session tickets stay on (resumption without server-side state).

The client's cipher order wins (as nginx's default `ssl_prefer_server_ciphers off`, and
Mozilla's intermediate profile): Python's default list allows forward-secret AES and
ChaCha20 suites only, without SHA-1, and a client that lists TLS_AES_128_GCM_SHA256
first (Go, browsers with AES-NI) gets it instead of the AES-256/SHA-384 suite a server
preference forces, whose SHA-384 transcript and key schedule cost more per handshake on
CPUs with SHA extensions. A TLS 1.3 handshake issues one session ticket, not OpenSSL's
two (each is an encryption and a write): tickets stay reusable, and every resumed
handshake issues a fresh one.
"""
from __future__ import annotations

import ssl


def _context(cert: str, key: str, alpn: tuple[str, ...]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.num_tickets = 1
    ctx.load_cert_chain(cert, key)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class CertSelector:
    """The listener's server context and its name -> context table."""

    def __init__(self, lcfg) -> None:
        # HTTP listeners offer h2 and http/1.1 by ALPN (every SNI context too: the one
        # picked is the one that answers ALPN); TCP listeners offer nothing.
        self.alpn = ("h2", "http/1.1") if lcfg.mode != "tcp" else ()
        self.context = _context(lcfg.tls_cert, lcfg.tls_key, self.alpn)
        self.by_name: dict[str, ssl.SSLContext] = {}
        self.load(lcfg)

    def load(self, lcfg) -> None:
        """(Re)load the default and SNI certificates of lcfg (raises ssl.SSLError/OSError)."""
        by_name = {}
        for names, cert, key in getattr(lcfg, "tls_sni", ()):
            ctx = _context(cert, key, self.alpn)
            for name in names:
                by_name[name] = ctx
        # The base context serves the default certificate (no SNI, or no name matched):
        # reloading it in place reaches new handshakes only, open connections keep theirs.
        self.context.load_cert_chain(lcfg.tls_cert, lcfg.tls_key)
        self.by_name = by_name
        # Without SNI certificates no handshake needs the callback: a Python call per
        # handshake saved (a reload that adds some installs it).
        self.context.sni_callback = self._pick if by_name else None

    def _pick(self, sslobj, name, _ctx) -> None:
        if name is None:
            return None
        name = name.lower().rstrip(".")
        ctx = self.by_name.get(name)
        if ctx is None:
            dot = name.find(".")
            if dot > 0:
                ctx = self.by_name.get("*" + name[dot:])
        if ctx is not None:
            sslobj.context = ctx
        return None
