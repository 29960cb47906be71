"""Proxy authentication: `Proxy-Authorization: Basic` (RFC 7617) against scrypt-hashed passwords.

Passwords are stored only as self-describing hashes, `scrypt$N$r$p$salt$hash` (salt and
hash in base64), made by `hash_password` (the `fastproxy hash-password` command). A
configured value that is not such a hash is refused, so a plain-text password cannot end
up in a config file by accident.

scrypt is deliberately slow (tens of milliseconds), so successful verifications are
cached briefly, keyed by the exact header value: a client pays for scrypt once per cache
period, not per request. Failed verifications are cached too (separately, so a flood of
bad guesses cannot evict good entries), and concurrent verifications of one header value
share one computation. `verify_async` runs scrypt in the loop's thread pool (hashlib
releases the GIL) with at most `max_concurrent` at a time, so the event loop never stalls.

The checks waiting for scrypt are bounded too (`max_pending` distinct header values): a
flood of made-up credentials would otherwise queue CPU work without limit, and everyone's
first request behind it. Past the bound a new value is answered at once with BUSY (the
proxy sends 503 and Retry-After: 407 would tell a client its password is wrong, and a
browser would ask for it again). A value that was verified before is let in past the bound
(it only waits its turn), so users already signed in keep working through a flood: their
checks are cache hits until `cache_ttl`, then one renewal each.

Use from the request path::

    result = auth.check_cached(value)          # value = request.get(b"proxy-authorization")
    if result is None:
        result = await auth.verify_async(value)
    if not result.ok: 407 with auth.challenge (a ready header line)
    # and never forward Proxy-Authorization (anonymity.py drops it at every level)

Configuration (`AuthConfig.from_table` reads it from TOML)::

    [forward.auth]
    realm = "fastproxy"
    cache_ttl = "30s"         # how long a verified header value is trusted without scrypt
    fail_ttl = "5s"           # how long a failed one is answered without scrypt
    max_pending = 32          # new header values waiting for scrypt; more get 503 at once
    [forward.auth.users]
    # from `fastproxy hash-password`; this one is the password "change me"
    alice = "scrypt$32768$8$1$eGfOCao6pbr20FIbcW9c5w==$1O2Au4u+8pN2Xr+AL/BzCpykTQ+A6PcUq3V7PZ01UkQ="
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Mapping, cast
from fastproxy.config.schema import dataclass_from_table

__all__ = [
    "AuthConfig", "AuthResult", "Authenticator", "BUSY", "hash_password", "verify_password",
    "parse_hash", "challenge_header", "parse_basic",
]

PREFIX = "scrypt"
# OWASP's scrypt floor is N=2^17; a proxy verifies on the request path, so the default
# is 2^15 (32 MiB, ~80 ms here) and the parameters travel in the hash for later upgrades.
DEFAULT_N = 2 ** 15
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# Bounds on parameters read from a config file: memory per verification is 128*N*r bytes.
_MAX_MEMORY = 256 * 1024 * 1024
_MAX_HEADER = 4096  # a Basic credential longer than this is not a user name and password


def _maxmem(n: int, r: int, p: int) -> int:
    # OpenSSL refuses unless maxmem covers V (128*r*N) plus B (128*r*p) with some slack.
    return 128 * r * (n + p + 2) + (1 << 20)


def _prep(text: str) -> bytes:
    # RFC 7617 2.1 with charset=UTF-8 (RFC 8265 OpaqueString): compare NFC forms, as UTF-8.
    return unicodedata.normalize("NFC", text).encode("utf-8")


def hash_password(password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P,
                  salt: bytes | None = None) -> str:
    """Return the storable `scrypt$N$r$p$salt$hash` string for a password."""
    if not isinstance(password, str) or not password:
        raise ValueError("password: must be a non-empty string")
    _check_params(n, r, p)
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(_prep(password), salt=salt, n=n, r=r, p=p,
                            maxmem=_maxmem(n, r, p), dklen=HASH_BYTES)
    return "$".join((PREFIX, str(n), str(r), str(p),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()))


def _check_params(n: int, r: int, p: int) -> None:
    if not (isinstance(n, int) and n >= 2 and n & (n - 1) == 0 and n <= 2 ** 20):
        raise ValueError(f"scrypt N must be a power of two between 2 and 2^20, got {n!r}")
    if not (isinstance(r, int) and 1 <= r <= 32):
        raise ValueError(f"scrypt r must be 1-32, got {r!r}")
    if not (isinstance(p, int) and 1 <= p <= 16):
        raise ValueError(f"scrypt p must be 1-16, got {p!r}")
    if 128 * n * r > _MAX_MEMORY:
        raise ValueError(f"scrypt N*r needs {128 * n * r >> 20} MiB per check (limit 256 MiB)")


class _Hash:
    __slots__ = ("n", "r", "p", "salt", "digest")

    def __init__(self, n: int, r: int, p: int, salt: bytes, digest: bytes) -> None:
        self.n, self.r, self.p, self.salt, self.digest = n, r, p, salt, digest

    def matches(self, password: bytes) -> bool:
        computed = hashlib.scrypt(password, salt=self.salt, n=self.n, r=self.r, p=self.p,
                                  maxmem=_maxmem(self.n, self.r, self.p), dklen=len(self.digest))
        return hmac.compare_digest(computed, self.digest)  # constant time


_DECIMAL = re.compile(r"[1-9][0-9]{0,9}\Z")


def parse_hash(encoded: str) -> _Hash:
    """Parse a `scrypt$N$r$p$salt$hash` string; ValueError says what is wrong (never echoes it)."""
    if not isinstance(encoded, str):
        raise ValueError("expected a password hash string")
    parts = encoded.split("$")
    if parts[0] != PREFIX:
        raise ValueError("not a password hash (plain-text passwords are not accepted); "
                         "store the output of `fastproxy hash-password`")
    if len(parts) != 6:
        raise ValueError("malformed scrypt hash: expected scrypt$N$r$p$salt$hash")
    if not all(_DECIMAL.match(x) for x in parts[1:4]):
        raise ValueError("malformed scrypt hash: N, r and p must be decimal integers")
    n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    _check_params(n, r, p)
    try:
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("malformed scrypt hash: salt and hash must be base64") from None
    if len(salt) < 8:
        raise ValueError("malformed scrypt hash: salt shorter than 8 bytes")
    if not 16 <= len(digest) <= 64:
        raise ValueError("malformed scrypt hash: hash must be 16-64 bytes")
    return _Hash(n, r, p, salt, digest)


def verify_password(password: str, encoded: str) -> bool:
    """True when `password` matches the stored hash (slow: runs scrypt)."""
    return parse_hash(encoded).matches(_prep(password))


def _quoted(text: str) -> str:
    # RFC 9110 5.6.4 quoted-string: backslash-escape DQUOTE and backslash.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge_header(realm: str) -> bytes:
    """The `Proxy-Authenticate` header line (with CRLF) for a 407 response."""
    # RFC 7617 2.1: charset="UTF-8" tells clients to send UTF-8 user names and passwords.
    return f"Proxy-Authenticate: Basic realm={_quoted(realm)}, charset=\"UTF-8\"\r\n".encode()


class AuthResult:
    """Outcome of a credential check: `ok`, the `user` name, a `reason` for the log and
    `public`, what the client may read (never whether the user name exists)."""

    __slots__ = ("ok", "user", "reason", "public")

    def __init__(self, ok: bool, user: str | None, reason: str, public: str | None = None) -> None:
        self.ok = ok
        self.user = user
        self.reason = reason
        self.public = reason if public is None else public

    def __repr__(self) -> str:
        return f"AuthResult(ok={self.ok}, user={self.user!r}, reason={self.reason!r})"


MISSING = AuthResult(False, None, "no Proxy-Authorization")
BAD_SCHEME = AuthResult(False, None, "authentication scheme is not Basic")
MALFORMED = AuthResult(False, None, "malformed Basic credentials")
# Not a verdict on the credentials: too many checks are waiting (max_pending). A 503.
BUSY = AuthResult(False, None, "credential checks queue full (max_pending)",
                  "too many credential checks in progress, try again")
# One answer for an unknown user and a wrong password: telling them apart would let anyone
# list the accounts (the dummy scrypt below keeps the timing equal for the same reason).
REJECTED = "invalid user name or password"

_TOKEN68 = re.compile(rb"[A-Za-z0-9\-._~+/]+=*\Z")  # RFC 9110 11.2


def parse_basic(value: bytes | str | None) -> tuple[str, str] | AuthResult:
    """Split a `Basic` credential into (user, password), or return the failing AuthResult."""
    if value is None:
        return MISSING
    if isinstance(value, str):
        try:
            value = value.encode("ascii")
        except UnicodeEncodeError:
            return MALFORMED
    value = bytes(value).strip(b" \t")
    if len(value) > _MAX_HEADER:
        return MALFORMED
    scheme, _sp, rest = value.partition(b" ")
    if scheme.lower() != b"basic":  # auth-scheme is case-insensitive (RFC 9110 11.1)
        return BAD_SCHEME if scheme else MISSING
    rest = rest.lstrip(b" ")
    if not _TOKEN68.match(rest):
        return MALFORMED
    try:
        raw = base64.b64decode(rest, validate=True)
    except (binascii.Error, ValueError):
        return MALFORMED
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        # Before RFC 7617 the charset was unspecified and many clients (Python requests
        # among them) send ISO-8859-1; every byte string decodes as that.
        decoded = raw.decode("latin-1")
    user, colon, password = decoded.partition(":")
    # RFC 7617 2: the user-id cannot contain a colon, and neither part control characters.
    if not colon or not user or any(ord(c) < 32 or ord(c) == 127 for c in decoded):
        return MALFORMED
    return user, password


@dataclass(frozen=True)
class AuthConfig:
    """Users (name -> scrypt hash) and cache knobs; authentication is on when users is non-empty."""

    users: Mapping[str, str] | tuple[tuple[str, str], ...] = ()
    realm: str = "fastproxy"
    cache_ttl: float = 30.0
    fail_ttl: float = 5.0
    cache_max: int = 4096
    max_concurrent: int = 2
    max_pending: int = 32

    def __post_init__(self) -> None:
        users: Any = self.users
        if isinstance(users, Mapping):
            users = tuple(users.items())
        elif not isinstance(users, (list, tuple)):
            raise ValueError("users: expected a table of user = \"scrypt$...\" entries")
        if not all(isinstance(u, (list, tuple)) and len(u) == 2 for u in users):
            raise ValueError("users: expected a table of user = \"scrypt$...\" entries")
        users = tuple(tuple(u) for u in users)
        for name, encoded in users:
            if not isinstance(name, str) or not name or ":" in name or \
                    any(ord(c) < 32 or ord(c) == 127 for c in name):
                raise ValueError(f"users.{name}: a user name is non-empty, without ':' or "
                                 "control characters (RFC 7617)")
            try:
                parse_hash(encoded)
            except ValueError as exc:
                raise ValueError(f"users.{name}: {exc}") from None
        object.__setattr__(self, "users", users)
        if not isinstance(self.realm, str) or not self.realm.isprintable() \
                or not self.realm.isascii():
            raise ValueError(f"realm: expected printable ASCII text, got {self.realm!r}")
        for name in ("cache_ttl", "fail_ttl"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name}: expected a number of seconds >= 0, got {value!r}")
        for name in ("cache_max", "max_concurrent", "max_pending"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")

    @property
    def enabled(self) -> bool:
        """True when users are configured (requests then need credentials)."""
        return bool(self.users)

    @classmethod
    def from_table(cls, raw) -> "AuthConfig":
        """Build from a TOML table; unknown keys and bad values raise ValueError naming the key."""
        return dataclass_from_table(cls, raw, ('cache_ttl', 'fail_ttl'))


class Authenticator:
    """Checks Proxy-Authorization values against the configured users, with a short cache."""

    def __init__(self, config: AuthConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.challenge = challenge_header(config.realm)
        self._clock = clock
        self._users = {_prep(name): (name, parse_hash(h)) for name, h in cast("tuple[tuple[str, str], ...]", config.users)}
        # An unknown user still costs one scrypt (with the parameters real users have), so
        # timing does not reveal which names exist; its zero digest never matches.
        model = next(iter(self._users.values()))[1] if self._users else \
            _Hash(DEFAULT_N, DEFAULT_R, DEFAULT_P, b"", b"")
        self._dummy = _Hash(model.n, model.r, model.p, b"\0" * SALT_BYTES, b"\0" * HASH_BYTES)
        self._ok: dict[bytes, tuple[float, AuthResult]] = {}
        self._bad: dict[bytes, tuple[float, AuthResult]] = {}
        self._inflight: dict[bytes, asyncio.Future] = {}
        self._sem: asyncio.Semaphore | None = None
        self.verifications = 0  # scrypt computations done (for metrics and tests)
        self.refused = 0        # checks answered BUSY (max_pending reached)

    def check_cached(self, value) -> AuthResult | None:
        """The result for a header value without running scrypt, or None when it must be verified."""
        if value is None:
            return MISSING
        key = bytes(value) if not isinstance(value, bytes) else value
        for cache in (self._ok, self._bad):
            entry = cache.get(key)
            if entry is not None:
                if entry[0] > self._clock():
                    return entry[1]
                if cache is self._bad:
                    del cache[key]
                # An expired success stays (until renewed or evicted): its renewal may
                # pass the max_pending bound.
        parsed = parse_basic(key)
        if isinstance(parsed, AuthResult):
            return parsed  # cheap failures need no scrypt
        return None

    def verify(self, value) -> AuthResult:
        """Check a header value, running scrypt on a cache miss (blocking; see verify_async)."""
        cached = self.check_cached(value)
        if cached is not None:
            return cached
        key = bytes(value)
        result = self._compute(key)
        self._remember(key, result)
        return result

    async def verify_async(self, value) -> AuthResult:
        """verify() off the event loop, bounded in concurrency, one computation per header value."""
        cached = self.check_cached(value)
        if cached is not None:
            return cached
        key = bytes(value)
        task = self._inflight.get(key)
        if task is None:
            if len(self._inflight) >= self.config.max_pending and key not in self._ok:
                self.refused += 1
                return BUSY
            task = asyncio.get_running_loop().create_task(self._verify_in_thread(key))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        # shield: a client that disconnects must not cancel the check others wait for.
        return await asyncio.shield(task)

    async def _verify_in_thread(self, key: bytes) -> AuthResult:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.config.max_concurrent)
        async with self._sem:
            result = await asyncio.get_running_loop().run_in_executor(None, self._compute, key)
        self._remember(key, result)  # on the loop thread: the caches are not shared with workers
        return result

    def _compute(self, key: bytes) -> AuthResult:
        """Run scrypt for a well-formed Basic value (thread-safe: touches no cache)."""
        parsed = parse_basic(key)
        assert isinstance(parsed, tuple)   # check_cached() answered malformed values
        user, password = parsed
        entry = self._users.get(_prep(user))
        self.verifications += 1
        if entry is None:
            self._dummy.matches(_prep(password))
            return AuthResult(False, None, f"unknown user {user!r}", REJECTED)
        if entry[1].matches(_prep(password)):
            return AuthResult(True, entry[0], "ok")
        return AuthResult(False, None, f"wrong password for {entry[0]!r}", REJECTED)

    def _remember(self, key: bytes, result: AuthResult) -> None:
        cache, ttl = (self._ok, self.config.cache_ttl) if result.ok else \
            (self._bad, self.config.fail_ttl)
        if ttl <= 0:
            return
        if len(cache) >= self.config.cache_max:
            now = self._clock()
            for k in [k for k, (exp, _r) in cache.items() if exp <= now]:
                del cache[k]
            while len(cache) >= self.config.cache_max:
                del cache[next(iter(cache))]
        cache[key] = (self._clock() + ttl, result)
