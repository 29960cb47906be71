"""The leaf of the configuration: errors, value parsers, ranges, table -> dataclass.

Every module that reads settings (config.py for the main file, the feature modules for
their own tables) parses values with these, so a duration, a size or a range means the
same everywhere. Each parser takes the raw TOML value and returns the parsed one or raises
ValueError with the text that follows "key: ".
"""
from __future__ import annotations

import difflib
import errno
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any


class ConfigError(Exception):
    """One or more configuration problems; each line names the key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def unknown_key(key: str, known) -> str:
    """The text after "KEY: " for a key its table does not have: the nearest valid name
    (a typo is the usual cause) and every valid one."""
    names = sorted(set(known))
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint} (expected one of {', '.join(names)})"


# Valid keys of tables whose readers do not list them in their own "unknown key" line
# (config/tls.py), or list only part (acl's deny_detail is the listener's, read first).
# Paths as explain_unknown normalises them.
_KNOWN_KEYS = {
    "listeners[].tls": ("cert", "key", "sni"),
    "listeners[].tls.sni[]": ("cert", "key", "names"),
    "listeners[].acl": ("deny_detail",),
}
_UNKNOWN_LINE = re.compile(r"^(?P<path>[^ ]+?): unknown key(?P<rest>.*)$")
_LISTED = re.compile(r"\((?:expected one of |expected )?(?P<names>[\w, -]+?)\)")


def explain_unknown(problem: str) -> str:
    """An "unknown key" problem line with the nearest valid name and the list, whichever
    module's reader wrote it."""
    m = _UNKNOWN_LINE.match(problem)
    if m is None:
        return problem
    path = m.group("path")
    parent, _, key = path.rpartition(".")
    key = re.sub(r"\[\d+\]$", "", key)
    known: set[str] = set()
    listed = _LISTED.search(m.group("rest"))
    if listed:
        known.update(n for n in re.split(r",\s*|\s+or\s+", listed.group("names")) if n)
    where = re.sub(r"^upstreams\.[^.]+", "upstreams.*", re.sub(r"\[\d+\]", "[]", parent))
    known.update(_KNOWN_KEYS.get(where, ()))
    if not known:
        return problem
    return f"{path}: {unknown_key(key, known)}"


_MEANT = re.compile(r"^(?P<path>[^ ]+?): unknown key; did you mean '(?P<near>[^']+)'\?")


def explain_problems(problems: list[str]) -> list[str]:
    """The problem lines a user reads: unknown keys explained (explain_unknown), and a
    "required" line left out when a misspelt key of the same table names it: one typo is
    one line, not a second one asking for a key that is there, misspelt."""
    lines = [explain_unknown(p) for p in problems]
    meant = set()
    for line in lines:
        m = _MEANT.match(line)
        if m:
            parent = m.group("path").rpartition(".")[0]
            meant.add(f"{parent}.{m.group('near')}" if parent else m.group("near"))
    kept = []
    for line in lines:
        key, _, text = line.partition(": ")
        if not (key in meant and text.startswith("required")):
            kept.append(line)
    return kept


# ---------------------------------------------------------------------------
# Value parsers. Each takes the raw value and returns the parsed one or raises
# ValueError with the text that follows "key: ".

# re.ASCII: \d would take any Unicode digit ("٥s", "1０MiB"), which no one means in a config.
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.ASCII)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# The longest duration any setting takes: timers far beyond it are mistakes, and a bound
# keeps every value a finite float that the event loop's timers accept.
MAX_DURATION = 365 * 86400.0


def parse_duration(value: Any) -> float:
    """Seconds from "250ms", "5s", "2m", "1h", "1d" or a plain number of seconds (0-365d)."""
    seconds = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) if not isinstance(value, int) or abs(value) < 1 << 64 else math.inf
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds is None or not 0 <= seconds <= MAX_DURATION:   # also refuses nan and inf
        if seconds is not None and seconds > MAX_DURATION:
            raise ValueError(f"expected a duration of at most 365d, got {value!r}")
        raise ValueError(f'expected a duration like "5s", got {value!r}')
    return seconds


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE | re.ASCII)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
# The largest size any setting takes (fits a C long long with room to add to it).
MAX_SIZE = 1 << 50


def show_size(n: int) -> str:
    """A size as the configuration writes it: 16MiB, 1PiB, 300B."""
    for unit, name in ((1 << 50, "PiB"), (1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"),
                       (1 << 10, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{name}"
    return f"{n}B"


def parse_size(value: Any) -> int:
    """Bytes from "64KiB", "256MiB", "1g", "4096" or a plain integer (binary units, 0-1PiB)."""
    n = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            number = float(m.group(1))   # inf for hundreds of digits: caught below
            unit = _SIZE_UNITS[m.group(2).lower()]
            n = int(number * unit) if number * unit <= MAX_SIZE else MAX_SIZE + 1
    if n is None or n < 0:
        raise ValueError(f'expected a size like "64MiB", got {value!r}')
    if n > MAX_SIZE:
        raise ValueError(f"expected a size of at most {show_size(MAX_SIZE)}, got {value!r}")
    return n


def size_range(low: int, high: int) -> Callable[[Any], int]:
    """A converter: parse_size, then low <= size <= high."""
    def conv(value: Any) -> int:
        v = parse_size(value)
        if not low <= v <= high:
            raise ValueError(f"expected a size from {show_size(low)} to {show_size(high)}, "
                             f"got {value!r}")
        return v

    return conv


def show_duration(seconds: float) -> str:
    """A duration as the configuration writes it: 0, 5s, 250ms, 1h."""
    if seconds == 0:
        return "0"
    for unit, name in ((86400.0, "d"), (3600.0, "h"), (60.0, "m"), (1.0, "s")):
        if seconds >= unit and seconds % unit == 0:
            return f"{seconds / unit:g}{name}"
    return f"{seconds * 1000:g}ms"


def duration_range(low: float, high: float) -> Callable[[Any], float]:
    """A converter: parse_duration, then low <= seconds <= high."""
    def conv(value: Any) -> float:
        v = parse_duration(value)
        if not low <= v <= high:
            raise ValueError(f"expected a duration from {show_duration(low)} to "
                             f"{show_duration(high)}, got {value!r}")
        return v

    return conv


def int_range(low: int, high: int) -> Callable[[Any], int]:
    """A converter: an integer (not a bool) with low <= value <= high."""
    def conv(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected an integer from {low:,} to {high:,}, got {value!r}")
        return value

    return conv


def number_range(low: float, high: float) -> Callable[[Any], float]:
    """A converter: a finite number with low <= value <= high."""
    def conv(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not low <= value <= high:   # nan fails every comparison
            raise ValueError(f"expected a number from {low:g} to {high:g}, got {value!r}")
        return float(value)

    return conv


def parse_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One CIDR network ("10.0.0.0/8", "::1"); host bits set are refused with the network meant."""
    if not isinstance(value, str):
        raise ValueError(f'expected a network like "10.0.0.0/8", got {value!r}')
    try:
        return ipaddress.ip_network(value.strip())
    except ValueError as exc:
        hint = ""
        if "host bits set" in str(exc):
            hint = f" (did you mean {ipaddress.ip_network(value.strip(), strict=False)}?)"
        raise ValueError(f"{exc}{hint}") from None


def parse_networks(value: Any) -> tuple[str, ...]:
    """A list of CIDR networks, each checked by parse_network; kept as written."""
    if not isinstance(value, list):
        raise ValueError(f'expected a list of networks like ["10.0.0.0/8"], got {value!r}')
    for i, item in enumerate(value):
        try:
            parse_network(item)
        except ValueError as exc:
            raise ValueError(f"[{i}]: {exc}") from None
    return tuple(value)


def binds_overlap(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """True when the kernel would not bind both addresses: the same port and the same
    address, or a wildcard (0.0.0.0, ::) of the same family (IPv6 listeners are V6ONLY)."""
    (host_a, port_a), (host_b, port_b) = a, b
    if not port_a or port_a != port_b:
        return False     # port 0: each bind gets its own port
    if host_a == host_b:
        return True
    try:
        ip_a, ip_b = ipaddress.ip_address(host_a), ipaddress.ip_address(host_b)
    except ValueError:
        return False     # a name: what it resolves to is the bind's business
    return ip_a.version == ip_b.version and (ip_a == ip_b or ip_a.is_unspecified
                                             or ip_b.is_unspecified)


def is_ascii_number(text: str) -> bool:
    """True for a non-empty run of ASCII digits (str.isdigit also takes "²", which int() refuses)."""
    return text.isascii() and text.isdigit()


def parse_address(value: Any, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """(host, port) from "host:port", "[::1]:port", ":port" or "port"."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f'expected an address like "127.0.0.1:8080", got {value!r}')
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ValueError(f'expected an address like "[::1]:8080", got {value!r}')
        host, port_s = text[1:end], text[end + 2:]
    elif ":" in text:
        host, _, port_s = text.rpartition(":")
        if ":" in host:
            raise ValueError(f'IPv6 addresses need brackets, like "[::1]:8080", got {value!r}')
        host = host or default_host
    else:
        host, port_s = default_host, text
    if not is_ascii_number(port_s) or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"expected a port number 0-65535 in {value!r}")
    return host, int(port_s)


# What any number in a feature's table must be when the feature states no narrower range:
# a count fits a C int, a number is finite.
MAX_COUNT = 2**31 - 1
MAX_NUMBER = 1e9


def dataclass_from_table(cls, raw: Any, durations: tuple[str, ...] = ()) -> Any:
    """A feature's config dataclass from its TOML table.

    Unknown keys and bad values raise ValueError starting with the key's name; a value
    must have a TOML type the field's annotation admits; the fields named in `durations`
    are durations ("5s" or seconds, 0-365d); any other integer must
    lie within +-MAX_COUNT and any other number be finite within +-MAX_NUMBER (the
    dataclass checks narrower ranges itself); lists become tuples (the dataclasses are
    frozen). Every feature module's `from_table` is this.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"expected a table, got {raw!r}")
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ValueError(f"{key}: {unknown_key(key, known)}")
        try:
            if key in durations and isinstance(value, (str, int, float)) \
                    and not isinstance(value, bool):
                value = parse_duration(value)
            else:
                _check_kind(known[key], value)
                _check_number(value)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
        values[key] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


# TOML kinds a field's annotation admits, read from its outermost union members.
_KINDS = (("tuple", list, "a list"), ("list", list, "a list"), ("frozenset", list, "a list"),
          ("Mapping", dict, "a table"), ("dict", dict, "a table"),
          ("bool", bool, "true or false"), ("int", int, "an integer"),
          ("float", (int, float), "a number"), ("str", str, "a string"))


def _check_kind(f: Any, value: Any) -> None:
    """ValueError unless value has a TOML type the field's annotation admits, so that a
    feature's own checks never meet, say, a number where they iterate a list."""
    annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    accepted, labels = [], []
    depth, start = 0, 0
    for i, ch in enumerate(annotation + "|"):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            member = annotation[start:i].strip()
            start = i + 1
            for prefix, kind, label in _KINDS:
                if member == prefix or member.startswith(prefix + "["):
                    accepted.append(kind)
                    labels.append(label)
                    break
            else:
                return      # a type this check does not know: the dataclass decides
    if not accepted:
        return
    is_bool = isinstance(value, bool)
    if any(isinstance(value, kind) and (kind is bool or not is_bool) for kind in accepted):
        return
    raise ValueError(f"expected {' or '.join(dict.fromkeys(labels))}, got {value!r}")


def _check_number(value: Any) -> None:
    """Refuse integers beyond a C int and non-finite or huge numbers, also inside lists."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -MAX_COUNT <= value <= MAX_COUNT:
            raise ValueError(f"expected an integer from {-MAX_COUNT:,} to {MAX_COUNT:,}, "
                             f"got {value!r}")
    elif isinstance(value, float):
        if not -MAX_NUMBER <= value <= MAX_NUMBER:
            raise ValueError(f"expected a finite number within +-{MAX_NUMBER:g}, got {value!r}")
    elif isinstance(value, (list, dict)):
        for item in value.values() if isinstance(value, dict) else value:
            _check_number(item)


def format_address(host: str, port: int) -> str:
    """The inverse of parse_address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ServerSpec:
    """One upstream server as configured."""

    host: str
    port: int
    weight: int = 1
    scheme: str = "http"  # http | https | h2c (HTTP/2 prior knowledge) | tcp


def parse_server_url(value: Any, default_scheme: str = "http") -> ServerSpec:
    """ServerSpec from "http://host:port#weight=2", "tcp://host:port" or a table."""
    weight = 1
    if isinstance(value, dict):
        unknown = set(value) - {"url", "weight"}
        if unknown:
            key = sorted(unknown)[0]
            raise ValueError(f"{key}: {unknown_key(key, ('url', 'weight'))}")
        weight = value.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 < weight <= 10000:
            raise ValueError(f"weight: expected an integer 1-10000, got {weight!r}")
        value = value.get("url")
    if not isinstance(value, str) or not value:
        raise ValueError(f'expected a URL like "http://127.0.0.1:9000", got {value!r}')
    text = value.strip()
    if "#" in text:
        text, _, frag = text.partition("#")
        for part in frag.split(","):
            k, _, v = part.partition("=")
            if k.strip() != "weight" or not is_ascii_number(v.strip()) or not 0 < int(v) <= 10000:
                raise ValueError(f'expected "#weight=N" (N 1-10000) in {value!r}')
            weight = int(v)
    scheme = default_scheme
    has_scheme = "://" in text
    if has_scheme:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
    if scheme not in ("http", "https", "h2c", "tcp"):
        raise ValueError(f"unsupported scheme {scheme!r} in {value!r} (http, https, h2c or tcp)")
    text = text.rstrip("/")
    if "/" in text:
        raise ValueError(f"an upstream URL has no path: {value!r}")
    if "?" in text:
        raise ValueError(f"an upstream URL has no query: {value!r}")
    if "@" in text:
        # Credentials for the upstream go in a header (a route's request_headers).
        raise ValueError(f"an upstream URL has no user info (user:password@): {value!r}")
    bracketed = text.startswith("[") and text.endswith("]")
    has_port = not bracketed and ":" in text
    if not has_scheme and not has_port:
        # "notaurl" is more likely a typo than a server named so on port 80.
        raise ValueError(f'expected a URL like "http://host:port" (a scheme, a port or '
                         f"both), got {value!r}")
    default_port = {"http": 80, "https": 443, "h2c": 80, "tcp": 0}[scheme]
    if not has_port and default_port:
        text = f"{text}:{default_port}"
    if text.startswith(":"):
        raise ValueError(f"a host is required in {value!r}")
    host, port = parse_address(text)
    if port == 0:
        raise ValueError(f"a port is required in {value!r}")
    check_host(host)
    return ServerSpec(host, port, weight, scheme)


_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?)+$")


def check_host(host: str) -> None:
    """Raise ValueError unless host is an IP address or a well-formed DNS name."""
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if not _HOSTNAME_RE.match(host) or ".." in host:
        raise ValueError(f"not a host name or IP address: {host!r}")


def resolves(host: str, port: int) -> str | None:
    """None when host:port resolves to a stream address now, else the resolver's reason."""
    import ipaddress
    import socket

    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return getattr(exc, "strerror", None) or str(exc)
    return None


def log_path(value: Any) -> str:
    """An access log path: "-", or a file that serve can open for appending.

    Checked here, where `check` and `serve` both pass, without creating the file."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    path = value
    if path == "-":
        return path
    if not path or "\0" in path:
        raise ValueError(f'expected a file path or "-", got {value!r}')
    return _file_serve_can_write(path)


def _file_serve_can_write(path: str) -> str:
    """`path` when serve can open it for appending or create it; ValueError saying why not.

    Checks only, so `check` leaves nothing behind."""
    if os.path.isdir(path) or path.endswith(os.sep):
        raise ValueError(f"{path} is a directory, not a file")
    if os.path.exists(path):
        try:
            # O_NONBLOCK: a FIFO without a reader must not hang the check.
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
        except OSError as exc:
            if exc.errno != errno.ENXIO:   # a FIFO nobody reads yet
                raise ValueError(f"cannot open {path} for writing: "
                                 f"{exc.strerror or exc}") from None
        return path
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"cannot create {path}: no such directory {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot create {path}: directory {parent} is not writable")
    return path


def read_document(path: str) -> dict:
    """The parsed TOML file; ConfigError (one line naming the file) when it cannot be."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # TOML is UTF-8 (TOML 1.0, "Spec"); say where the first bad byte is.
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError([f"{path}: invalid TOML: not UTF-8 (byte 0x{raw[exc.start]:02x} "
                           f"at line {line})"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    except RecursionError:   # thousands of nested arrays
        raise ConfigError([f"{path}: invalid TOML: nested too deeply"]) from None


def parse_peer(value: Any) -> ServerSpec:
    """A fleet peer's URL (http only: peers talk plain HTTP/1.1 to each other)."""
    spec = parse_server_url(value)
    if spec.scheme != "http":
        raise ValueError(f"a peer is an http:// URL, got {value!r}")
    return spec


def parse_peers(value: Any) -> tuple[ServerSpec, ...]:
    """[cluster] peers: a non-empty list of distinct peer URLs."""
    if not isinstance(value, list) or not value:
        raise ValueError(f'expected a list of URLs like ["http://10.0.0.1:8080"], got {value!r}')
    specs = []
    for i, item in enumerate(value):
        try:
            specs.append(parse_peer(item))
        except ValueError as exc:
            raise ValueError(f"[{i}]: {exc}") from None
    if len({(s.host, s.port) for s in specs}) != len(specs):
        raise ValueError("a peer is listed twice")
    return tuple(specs)


def read_cluster(table) -> tuple[tuple[ServerSpec, ...], ServerSpec | None]:
    """[cluster] read from config.load's table reader: (peers, self), both empty when unset.

    peers lists every node of a caching fleet, this one included; self is this node's URL.
    """
    peers = table.get("peers", parse_peers, ())
    me = table.get("self", parse_peer, None)
    table.finish()
    if peers and me is None and not table.has("self"):
        table.problem("self", "required with peers: this node's URL as the peers know it")
    elif me is not None and peers and (me.host, me.port) not in {(p.host, p.port) for p in peers}:
        table.problem("self", f"{me.host}:{me.port} is not one of cluster.peers")
    elif me is not None and not peers and not table.has("peers"):
        table.problem("peers", "required with self")
    return (peers, me) if peers and me is not None else ((), None)


def default_pidfile() -> str:
    """Where the pidfile goes when the configuration does not say: the runtime directory."""
    base = os.environ.get("RUNTIME_DIRECTORY")          # systemd's RuntimeDirectory=
    if base:
        return os.path.join(base.split(":")[0], "fastproxy.pid")
    if os.geteuid() == 0:
        return "/run/fastproxy.pid"
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return os.path.join(base, "fastproxy.pid")
    return f"/tmp/fastproxy-{os.getuid()}.pid"


def pidfile_path(value: Any) -> str | None:
    """A file path, or false for no pidfile."""
    if value is False:
        return None
    if not isinstance(value, str) or not value or "\0" in value:
        raise ValueError(f"expected a file path or false, got {value!r}")
    return _file_serve_can_write(value)


def account_name(kind: str) -> Callable[[Any], str]:
    def conv(value: Any) -> str:
        import grp
        import pwd
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected a {kind} name, got {value!r}")
        try:
            (pwd.getpwnam if kind == "user" else grp.getgrnam)(value)
        except KeyError:
            raise ValueError(f"no {kind} named {value!r} on this system") from None
        return value
    return conv
