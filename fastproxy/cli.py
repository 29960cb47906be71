"""Command line: `fastproxy serve | check | reload | stop | status | version | hash-password`.

Flags and the TOML file meet as one TOML-shaped document (flags override the
file), which `config.from_dict` validates; so a flag and the key it stands for
are checked by the same code. Problems print one line each and exit 2.
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import sys
from typing import NoReturn

from fastproxy import __version__
from fastproxy.config import load as cfgmod
from fastproxy.config.load import ConfigError
from fastproxy.config.schema import is_ascii_number

EXIT_BAD_INPUT = 2

DEFAULT_DOCUMENT = {
    "listeners": [{"listen": "127.0.0.1:8080", "mode": "forward", "name": "forward"}],
    "cache": {"size": "64MiB"},
    "access_log": {"path": "-"},
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for the whole command line."""
    parser = _Parser(
        prog="fastproxy",
        description="High-performance HTTP forward and reverse proxy (Cython hot path on uvloop).",
        epilog="With no arguments, `fastproxy serve` runs a forward proxy on 127.0.0.1:8080.",
    )
    parser.add_argument("--version", action="version", version=f"fastproxy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    defaults = ("With no --config, --listen, --mode or --upstream the built-in default runs: "
                "a forward proxy on 127.0.0.1:8080 with a 64MiB cache and the access log on "
                "stdout. Any of those flags replaces that whole default: the proxy then has "
                "only what the flags (and --config) say, so add --cache and --access-log to "
                "keep them (serve names what was left out). `fastproxy check --print` shows "
                "what will run.")
    serve = sub.add_parser("serve", help="run the proxy (default: forward proxy on 127.0.0.1:8080)",
                           epilog=defaults)
    _listener_flags(serve)
    check = sub.add_parser("check", help="validate a configuration and exit 0, or print the "
                                         "problems and exit 2", epilog=defaults)
    _listener_flags(check)
    check.add_argument("--print", "-T", action="store_true", dest="print_config",
                       help="print the effective configuration (after defaults and flags) "
                            "as TOML")
    for name, text in (("reload", "reload the running proxy's configuration (SIGHUP)"),
                       ("stop", "stop the running proxy gracefully (SIGTERM) and wait for it"),
                       ("status", "say whether the proxy is running (exit 0) or not (exit 3)")):
        ctl = sub.add_parser(name, help=text)
        ctl.add_argument("--config", "-c", metavar="FILE",
                         help="the configuration the proxy runs (for its pidfile key)")
        ctl.add_argument("--pidfile", metavar="PATH",
                         help="the running proxy's pidfile (default: the one the --config "
                              f"file names, else {cfgmod.default_pidfile()})")
        if name == "stop":
            ctl.add_argument("--timeout", metavar="SECONDS", type=float, default=60.0,
                             help="how long to wait for it to finish (default: %(default)g)")
    sub.add_parser("version", help="print the version and exit")
    hp = sub.add_parser("hash-password", help="print a salted hash for a proxy user's password")
    hp.add_argument("password", nargs="?",
                    help="the password (prompted for, or read from stdin, if omitted)")
    return parser


def _listener_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="TOML configuration file")
    p.add_argument("--mode", choices=cfgmod.MODES,
                   help="mode of the (first) listener (default: forward; reverse with "
                        "--upstream, tcp when every --upstream is tcp://)")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="address of the (first) listener (default: 127.0.0.1:8080)")
    p.add_argument("--upstream", action="append", metavar="URL",
                   help="upstream server, repeatable: http://host:port[#weight=N], tcp://host:port")
    p.add_argument("--balance", choices=cfgmod.BALANCE_POLICIES,
                   help="balancing policy (default: round_robin)")
    p.add_argument("--hash-key", metavar="KEY",
                   help="maglev key: path, uri, client_ip, header:NAME or cookie:NAME")
    p.add_argument("--cache", metavar="SIZE",
                   help='response cache size per worker, e.g. "256MiB" (0 = off; default: '
                        '64MiB with no other flags, else off)')
    p.add_argument("--peers", metavar="URL,URL,...",
                   help="every node of the caching fleet, this one included (with --self)")
    p.add_argument("--self", dest="self_url", metavar="URL",
                   help="this node's URL as its peers reach it (one of --peers)")
    p.add_argument("--workers", metavar="N",
                   help='worker processes, or "auto" (one per core) (default: 1)')
    p.add_argument("--reuseport-balance", metavar="MODE",
                   help='how new connections spread over the workers: round-robin or hash '
                        '(the kernel\'s) (default: round-robin)')
    p.add_argument("--admin", metavar="HOST:PORT",
                   help="admin listener: status page, /metrics, reload, purge (default: off)")
    p.add_argument("--access-log", metavar="PATH",
                   help='access log file, "-" for stdout (default: "-" with no other flags, '
                        'else off)')
    p.add_argument("--log-format", metavar="FORMAT",
                   help='access log format: combined, json, or a template such as '
                        '\'$remote_addr "$request" $status $bytes_sent $request_time\' '
                        '(default: combined)')
    p.add_argument("--compress", action="store_true",
                   help="compress responses (br, zstd, gzip) on reverse listeners; "
                        "[compression] in the file tunes it (default: off)")
    p.add_argument("--tls-cert", metavar="FILE",
                   help="PEM certificate: the (first) listener speaks TLS (ALPN h2, http/1.1)")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")
    p.add_argument("--allow-private", action="store_true",
                   help="forward mode: allow private, loopback and link-local destinations")
    p.add_argument("--connect-ports", metavar="LIST",
                   help='forward mode: ports CONNECT may reach, e.g. "443,8443" (default 443)')


def document_from_args(args: argparse.Namespace) -> tuple[dict, str]:
    """The TOML-shaped document: the file (or the built-in default) with flags applied."""
    if args.config:
        doc = cfgmod.read_document(args.config)
        source = args.config
    elif args.mode or args.listen or args.upstream:
        doc, source = {}, "<command line>"
    else:
        doc, source = copy.deepcopy(DEFAULT_DOCUMENT), "<built-in default>"

    problems = []
    listeners = doc.get("listeners")
    if args.mode or args.listen or args.upstream:
        if not isinstance(listeners, list) or not listeners:
            listeners = doc["listeners"] = [{}]
        first = listeners[0]
        if not isinstance(first, dict):
            raise ConfigError(["listeners[0]: expected a table"])
        mode = args.mode
        if mode is None and "mode" not in first:
            if args.upstream:
                mode = "tcp" if all(u.startswith("tcp://") for u in args.upstream) else "reverse"
            else:
                mode = "forward"
        if mode:
            first["mode"] = mode
        if args.listen:
            first["listen"] = args.listen
        elif "listen" not in first:
            first["listen"] = "127.0.0.1:8080"
        if args.upstream:
            group = first.get("upstream") or "default"
            first["upstream"] = group
            ups = doc.setdefault("upstreams", {})
            ups.setdefault(group, {})["servers"] = list(args.upstream)
    group_name = listeners[0].get("upstream") if isinstance(listeners, list) and listeners \
        and isinstance(listeners[0], dict) else None
    for flag, key in (("balance", "balance"), ("hash_key", "hash_key")):
        value = getattr(args, flag)
        if value is not None:
            if group_name is None or group_name not in doc.get("upstreams", {}):
                problems.append(f"--{flag.replace('_', '-')}: needs an upstream group "
                                "(give --upstream or a config with one)")
            else:
                doc["upstreams"][group_name][key] = value
    if args.cache is not None:
        doc.setdefault("cache", {})["size"] = args.cache
    if args.peers is not None:
        doc.setdefault("cluster", {})["peers"] = [p for p in args.peers.split(",") if p]
    if args.self_url is not None:
        doc.setdefault("cluster", {})["self"] = args.self_url
    if args.workers is not None:
        doc["workers"] = int(args.workers) if is_ascii_number(args.workers) else args.workers
    if args.reuseport_balance is not None:
        doc["reuseport_balance"] = args.reuseport_balance
    if args.admin is not None:
        doc["admin"] = args.admin
    if args.access_log is not None:
        doc.setdefault("access_log", {})["path"] = args.access_log
    if args.compress:
        comp = doc.get("compression")
        if not isinstance(comp, dict):
            comp = doc["compression"] = {}
        comp["enabled"] = True
    if args.log_format is not None:
        doc.setdefault("access_log", {})["format"] = args.log_format
    all_listeners = doc.get("listeners")
    forward_listeners = [lst for lst in all_listeners if isinstance(lst, dict)
                         and lst.get("mode") == "forward"] \
        if isinstance(all_listeners, list) else []
    if (args.allow_private or args.connect_ports) and not forward_listeners:
        flag = "--allow-private" if args.allow_private else "--connect-ports"
        problems.append(f"{flag}: applies to forward listeners and there is none")
    for lst in forward_listeners:
        if args.allow_private:
            lst["allow_private"] = True
        if args.connect_ports:
            ports = []
            for part in args.connect_ports.split(","):
                part = part.strip()
                ports.append(int(part) if is_ascii_number(part) else part)
            lst["connect_ports"] = ports
    if args.tls_cert or args.tls_key:
        if not args.tls_cert or not args.tls_key:
            problems.append("--tls-cert and --tls-key: give both")
        elif not isinstance(all_listeners, list) or not all_listeners \
                or not isinstance(all_listeners[0], dict):
            problems.append("--tls-cert: needs a listener")
        else:
            all_listeners[0]["tls"] = {"cert": args.tls_cert, "key": args.tls_key}
    if problems:
        raise ConfigError(problems)
    return doc, source


def load_config(args: argparse.Namespace) -> cfgmod.Config:
    """Validated configuration from the file and flags; raises ConfigError."""
    doc, source = document_from_args(args)
    try:
        return cfgmod.from_dict(doc, source=source)
    except ConfigError as exc:
        raise ConfigError([_name_flag(line, doc, args) for line in exc.problems]) from None


def _name_flag(problem: str, doc: dict, args: argparse.Namespace) -> str:
    """A problem with a value that came from a flag names the flag, as the user wrote it."""
    key, sep, text = problem.partition(": ")
    if not sep:
        return problem
    flags: dict[str, str] = {}
    raw = doc.get("listeners")
    listeners: list = raw if isinstance(raw, list) else []
    group = listeners[0].get("upstream") if listeners and isinstance(listeners[0], dict) \
        else None
    if args.upstream:
        for i, value in enumerate(args.upstream):
            flags[f"upstreams.{group}.servers[{i}]"] = f"--upstream {value}"
    for flag, path in (("balance", f"upstreams.{group}.balance"),
                       ("hash_key", f"upstreams.{group}.hash_key"),
                       ("listen", "listeners[0].listen"), ("mode", "listeners[0].mode"),
                       ("cache", "cache.size"), ("peers", "cluster.peers"),
                       ("self_url", "cluster.self"), ("workers", "workers"), ("admin", "admin"),
                       ("reuseport_balance", "reuseport_balance"),
                       ("access_log", "access_log.path")):
        value = getattr(args, flag)
        if value is not None:
            name = "--self" if flag == "self_url" else "--" + flag.replace("_", "-")
            flags[path] = f"{name} {value}"
    if args.tls_cert and args.tls_key:
        flags["listeners[0].tls.cert"] = f"--tls-cert {args.tls_cert}"
        flags["listeners[0].tls.key"] = f"--tls-key {args.tls_key}"
        flags["listeners[0].tls"] = "--tls-cert/--tls-key"
    if args.log_format is not None:
        flags["access_log.format"] = "--log-format"
    for i, lst in enumerate(listeners):
        if isinstance(lst, dict) and lst.get("mode") == "forward":
            # The loader reads the shorthands inside the listener's acl table.
            if args.connect_ports:
                flags[f"listeners[{i}].acl.connect_ports"] = \
                    f"--connect-ports {args.connect_ports}"
                flags[f"listeners[{i}].connect_ports"] = f"--connect-ports {args.connect_ports}"
            if args.allow_private:
                flags[f"listeners[{i}].acl.allow_private"] = "--allow-private"
                flags[f"listeners[{i}].allow_private"] = "--allow-private"
    # The key itself, or an item of its list (connect_ports[1]; "cluster.peers: [1]: "):
    # the text quotes the bad item.
    for path, flag in flags.items():
        rest = key[len(path):] if key.startswith(path) else None
        if rest == "" or (rest is not None and re.fullmatch(r"\[\d+\]", rest)):
            return f"{flag}: " + re.sub(r"^\[\d+\]: ", "", text)
        if rest is not None and rest.startswith("."):
            return f"{flag}: {rest[1:]}: {text}"
    return problem


def _report(exc: ConfigError) -> int:
    for line in exc.problems:
        print(f"fastproxy: {line}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fastproxy` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"fastproxy {__version__}")
        return 0
    if args.command == "hash-password":
        return _hash_password(args)
    if args.command in ("reload", "stop", "status"):
        from fastproxy import control
        return control.main(args)
    if args.command not in ("serve", "check"):
        parser.print_help()
        return 0 if args.command is None else EXIT_BAD_INPUT
    try:
        config = load_config(args)
    except ConfigError as exc:
        return _report(exc)
    if args.command == "check":
        if args.print_config:
            from fastproxy.config.show import render
            sys.stdout.write(render(config))
            return 0
        modes = ", ".join(f"{lc.address} ({lc.mode})" for lc in config.listeners)
        print(f"fastproxy: {config.source}: ok: {modes}")
        return 0
    if config.source == "<command line>":
        _note_dropped_defaults(config)
    from fastproxy.server import worker as server

    def reload_fn() -> cfgmod.Config:
        return load_config(args)

    try:
        return server.serve(config, reload_fn)
    except ConfigError as exc:
        return _report(exc)


def _note_dropped_defaults(config: cfgmod.Config) -> None:
    """Say which parts of the built-in default the flags left out (not silently)."""
    dropped = [(name, flag) for name, flag, off in (
        ("access log", "--access-log -", config.access_log.path is None),
        ("cache", "--cache 64MiB", config.cache is None)) if off]
    if dropped:
        from fastproxy.errorlog import log
        log(f"the flags replace the built-in default: no {' and no '.join(n for n, _ in dropped)}"
            f" (add {' '.join(f for _, f in dropped)} to keep them)")


def _hash_password(args: argparse.Namespace) -> int:
    try:
        from fastproxy.forward.auth import hash_password
    except ImportError:
        print("fastproxy: hash-password: proxy authentication is not available in this build",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    password = args.password
    if password is None:
        # Prompt without echo on a terminal (a password on the command line shows in `ps`
        # and shell history); read a line from a pipe otherwise.
        if sys.stdin.isatty():
            import getpass
            try:
                password = getpass.getpass("password: ")
                if password and getpass.getpass("again: ") != password:
                    print("fastproxy: hash-password: the two passwords differ",
                          file=sys.stderr)
                    return EXIT_BAD_INPUT
            except (KeyboardInterrupt, EOFError):
                # Ctrl-C or Ctrl-D at the prompt: a new line after the prompt, no traceback.
                # Out at once: an interrupt can leave interpreter-exit hooks (logging's
                # shutdown) with a lock in a bad state, and they would print a traceback.
                # os._exit in a finally: a second interrupt cannot take this path back
                # to a traceback (seen under load on a pty).
                try:
                    import signal
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    os.write(2, b"\nfastproxy: hash-password: cancelled\n")
                finally:
                    os._exit(130)
        else:
            password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("fastproxy: hash-password: empty password", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    sys.exit(main())
