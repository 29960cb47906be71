"""Configuration files for the origin and every peer proxy, written into the run's temp dir.

Each peer is configured the way its documentation recommends for a fair single-core
comparison: one worker, keep-alive on both sides, no access log (fastproxy runs without
one too), and X-Forwarded-For added where the peer can (fastproxy adds Via and XFF).
"""
from __future__ import annotations

from pathlib import Path

# Response sizes the origin serves, by the name used on the command line and in URLs.
SIZES = {"100b": 100, "4k": 4096, "64k": 65536, "1m": 1 << 20}
# Served to the CONNECT tunnel rows. Written out, not sparse: a sparse file's holes are
# zero-filled on every read, which made the direct row (whose reads share a core with
# curl) measure the kernel's zero-filling instead of the network path.
BIG_NAME = "big"
CACHE_MAX_AGE = 3600
# wrk and the peers must not close a connection after N requests mid-run (nginx's default
# keepalive_requests is 1000, which would add reconnects to every nginx row).
MANY = 100000000


def write_origin_files(root: Path, big_bytes: int) -> None:
    """Create the origin's document root with one file per size and one large file."""
    root.mkdir(parents=True, exist_ok=True)
    for name, size in SIZES.items():
        (root / name).write_bytes((b"0123456789abcdef" * (size // 16 + 1))[:size])
    block = b"0123456789abcdef" * 65536
    with open(root / BIG_NAME, "wb") as fh:
        left = big_bytes
        while left > 0:
            fh.write(block[:left])
            left -= len(block)


def _nginx_main(tmp: Path, http_body: str, workers: int = 1) -> str:
    return f"""
daemon off;
master_process on;
worker_processes {workers};
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy_temp;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests {MANY};
    keepalive_timeout 75s;
    server_tokens off;
{http_body}
}}
"""


def nginx_origin(tmp: Path, port: int, docroot: Path) -> str:
    """nginx origin: static files with a cacheable Cache-Control, plus stub_status for counting."""
    return _nginx_main(tmp, f"""
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        root {docroot};
        etag on;
        location / {{
            add_header Cache-Control "public, max-age={CACHE_MAX_AGE}";
        }}
        # Requests the origin served: the cache rows use it to prove they were hits.
        location = /__origin_status {{ stub_status; }}
    }}
""")


def nginx_proxy(tmp: Path, port: int, origin_port: int, cache: bool, workers: int = 1,
                sendfile: bool = False) -> str:
    """nginx reverse proxy (upstream keepalive 64), optionally with proxy_cache (and its
    hits sent with sendfile: off is nginx's default, on is Debian's packaged nginx.conf)."""
    cache_decl = ""
    cache_use = ""
    if cache:
        cache_decl = f"    proxy_cache_path {tmp}/cache levels=1:2 keys_zone=bench:10m max_size=64m inactive=1h use_temp_path=off;\n"
        cache_use = """
            proxy_cache bench;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status;"""
        if sendfile:
            cache_decl += "    sendfile on;\n    tcp_nopush on;\n"
    return _nginx_main(tmp, f"""{cache_decl}
    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 64;
        keepalive_requests {MANY};
    }}
    server {{
        # deferred: TCP_DEFER_ACCEPT, as fastproxy's HTTP listeners (an equal accept path).
        listen 127.0.0.1:{port} reuseport deferred backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;{cache_use}
        }}
    }}
""", workers)


def haproxy(port: int, origin_port: int) -> str:
    """HAProxy: one thread, keep-alive both sides, `http-reuse always`."""
    return f"""
global
    nbthread 1
    maxconn 4096
    tune.bufsize 16384

defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 75s

frontend bench
    bind 127.0.0.1:{port} defer-accept
    default_backend origin

backend origin
    server o1 127.0.0.1:{origin_port}
"""


def squid(tmp: Path, port: int) -> str:
    """Squid forward proxy: one worker, no disk or memory cache, open to loopback clients only."""
    return f"""
http_port 127.0.0.1:{port}
workers 1
acl localnet src 127.0.0.0/8
http_access allow localnet
http_access deny all
cache deny all
cache_mem 0 MB
access_log none
cache_store_log none
cache_log {tmp}/squid-cache.log
pid_filename {tmp}/squid.pid
coredump_dir {tmp}
shutdown_lifetime 0 seconds
max_filedescriptors 4096
forwarded_for on
via on
dns_v4_first on
client_persistent_connections on
server_persistent_connections on
"""


def tinyproxy(tmp: Path, port: int) -> str:
    """tinyproxy: loopback clients only, every port allowed for CONNECT (no ConnectPort lines)."""
    return f"""
Port {port}
Listen 127.0.0.1
Timeout 60
MaxClients 512
Allow 127.0.0.1
LogLevel Critical
PidFile "{tmp}/tinyproxy.pid"
DisableViaHeader No
"""
