"""The relay (compiled from ext/relay.pyx): connections, keep-alive pools, tunnels.

The request path's per-byte and per-request state machine; the listener handlers
(fastproxy.proxy.reverse, fastproxy.forward.handler) make the decisions and call into it.
"""
from typing import Any, Callable

IDEMPOTENT: frozenset[bytes]
CLIENT_CLAIMS: dict[str, tuple[bytes, ...]]   # per forwarding mode: client fields dropped
STATE_HEAD: int
STATE_BODY: int
STATE_WAIT: int
STATE_TUNNEL: int
STATE_CLOSED: int
PAUSE_CONNECTING: int
PAUSE_HANDLER: int
REASONS: dict[int, str]
CONTINUE_100: bytes
STOP: int        # a request step answered, or carries the request on itself
CONTINUE: int    # the next step decides

def date_line() -> bytes:
    """`Date: <IMF-fixdate>\\r\\n` for now, formatted once per second."""

def error_response(status: int, detail: str, close: bool = ..., extra: bytes = ...,
                   head_only: bool = ...) -> bytes:
    """A complete HTTP/1.1 error response with a one-line text/plain body naming the reason."""

class Accepting:
    """The protocol factory of a plain HTTP/1.1 listener (ClientConnection on holder.current)."""

    def __init__(self, holder: Any) -> None: ...
    def __call__(self) -> ClientConnection: ...

class Admission:
    """The compiled half of listeners.AcceptGate: the count and check at accept and close."""

    connections: Any
    pending: int
    limit: int      # the current max_connections (the gate sets it)
    alert: bool
    def __init__(self, gate: Any, connections: Any, limit: int, loop: Any) -> None: ...
    def reset(self) -> None: ...
    def factory(self, make: Callable[[], Any]) -> Callable[[], Any]: ...

class GatedAccepting:
    """A gated Accepting: the plain HTTP/1.1 listener's protocol factory."""

    def __init__(self, adm: Admission, make: Accepting) -> None: ...
    def __call__(self) -> Any: ...

class Poller:
    """The worker's edge-triggered epoll set for accepted plain HTTP sockets and plain-TCP
    upstream sockets (relay_dial.pxi)."""

    loop: Any
    def __init__(self, loop: Any) -> None: ...
    def ready(self) -> None: ...
    def open_count(self) -> int: ...
    def close(self) -> None: ...

def loop_poller(loop: Any) -> Poller:
    """The worker's epoll set for loop (accepted sockets and dialled upstream sockets)."""
    ...

class SockTransport:
    """An accepted client socket's asyncio-style transport (relay_accept.pxi)."""

    fd: int
    def write(self, data: Any) -> None: ...
    def writelines(self, list_of_data: Any) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def is_closing(self) -> bool: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def is_reading(self) -> bool: ...
    def can_write_eof(self) -> bool: ...
    def write_eof(self) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def get_write_buffer_limits(self) -> tuple[int, int]: ...
    def set_write_buffer_limits(self, high: int | None = ..., low: int | None = ...) -> None: ...
    def set_protocol(self, protocol: Any) -> None: ...
    def get_protocol(self) -> Any: ...
    def get_extra_info(self, name: str, default: Any = ...) -> Any: ...

class Acceptor:
    """Accepts on one listening socket of a plain HTTP/1.1 listener."""

    def __init__(self, sock: Any, factory: GatedAccepting, poller: Poller) -> None: ...
    def start(self) -> Acceptor: ...
    def close(self) -> None: ...
    def ready(self) -> None: ...

class ListenerSettings:
    """What every connection of one listener copies at accept, gathered once."""

    rt: Any
    loop: Any
    handler: Any
    counters: Counters
    fast_hits: Any
    fast: FastForward | None
    access_log: Any
    connections: Any
    deadlines: Any
    hooks: bool
    draining: bool   # the worker drains (ListenerRuntime.draining reads and sets it)
    open: int
    on_idle: Callable[[], None] | None
    # Response-body filter factory (the contract: fastproxy/proxy/filters.py): None = bodies pass untouched.
    filter_factory: Callable[[bytes, list[tuple[bytes, bytes]], int], Any] | None
    h2_switch: Callable[[Any, bytes], None] | None   # takes a connection on the HTTP/2 preface
    # The same listener's settings of the next generation (set on reload), or None.
    successor: ListenerSettings | None
    def __init__(self, rt: Any, gen: Any, buffer_limit: int) -> None: ...

class ClientConnection:
    """One client socket (an asyncio protocol): requests in, responses out, in order."""

    rt: Any
    transport: Any
    client_ip: str
    client_port: int
    req: Any
    status: int
    sent: int
    received: int
    keep_alive: bool
    resp_started: bool
    buffer_limit: int   # request buffering of this connection (0: stream the body)
    received_version: int   # 20: an HTTP/2 stream's relay (Request.version becomes 20)
    body_done: bool
    observer: Any
    log_extra: dict | None
    body_filter: Any  # the current response's body filter, or None
    def __init__(self, rt: Any) -> None: ...
    def connection_made(self, transport: Any) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def connection_lost(self, exc: BaseException | None) -> None: ...
    def reject(self, status: int, detail: str, extra: bytes = ...) -> None:
        """Answer with an error the proxy generates itself, then close."""
    def respond_error(self, status: int, detail: str, extra: bytes = ...) -> None:
        """Answer an admitted request with an error; keep the connection when safe."""
    def respond(self, buffers: Any, status: int, body_bytes: int, keep: bool = ...) -> None:
        """Write a complete response the handler built and finish the exchange."""
    def abort(self, detail: str) -> None:
        """Cut a connection whose response cannot be completed."""
    def send_upstream(self, pool: ConnectionPool, head: bytes, pending: list | None = ...,
                      fresh: bool = ...) -> UpstreamConnection:
        """Send head (and queued body bytes) over a connection from pool."""
    def tunnel(self, transport: Any, to_upstream: bytes, to_client: bytes, idle: float,
               on_close: Callable[[int, int], None] | None = ...) -> Tunnel:
        """Turn this connection into a byte tunnel (after a 101 or a CONNECT 200)."""
    def detach(self) -> None:
        """Give the socket to another protocol (HTTP/2): forget it here, log nothing."""
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...
    def take_buffered(self) -> bytes: ...
    def pause_reading(self, why: int) -> None: ...
    def resume_reading(self, why: int) -> None: ...
    def follow(self) -> None:
        """A reload: move to the listener's newest generation (idle now, busy after the exchange)."""
    def drain(self) -> None: ...

class UpstreamConnection:
    """One connection to an upstream server, reused across exchanges."""

    server: Any
    reused: bool      # taken from the pool (kept alive) rather than newly connected
    timed_out: bool   # the exchange failed by a timeout (not a stale connection)
    pool: ConnectionPool

class ConnectionPool:
    """Idle keep-alive connections to one server (LIFO) and their settings."""

    server: Any
    ssl: Any          # the ssl.SSLContext of an https server, else None
    idle: list[UpstreamConnection]
    open: int
    balancer: Any
    group: Any
    on_failure: Callable[[Any, bool], None] | None
    on_response: Callable[[Any, int], None] | None
    opener: Callable[[UpstreamConnection], Any] | None   # async: a virtual transport (h2c)
    direct: bool   # dialled into the worker's Poller (numeric address, FASTPROXY_UVLOOP_UPSTREAM unset)
    max_head: int
    max_fields: int
    def __init__(self, rt: Any, group_cfg: Any, server: Any,
                 connect_host: str | None = ...) -> None: ...
    def acquire(self) -> UpstreamConnection: ...
    def connect_new(self) -> UpstreamConnection: ...
    def release(self, up: UpstreamConnection) -> None: ...
    def close(self) -> None: ...

class FastForward:
    """The common reverse-mode request forwarded in C (falls back to the handler)."""

    def __init__(self, handler: Any) -> None: ...
    def forward(self, conn: ClientConnection, req: Any) -> bool: ...

class FastForwardIds(FastForward):
    """FastForward that also sends each request's id upstream (headers.request_id)."""

class RequestIds:
    """Each request's id (32 hex digits, as nginx's $request_id), chosen once per request."""

    name: bytes
    lname: bytes
    trust: bool
    def __init__(self, name: str | bytes = ..., trust: bool = ...) -> None: ...
    def of(self, conn: ClientConnection, req: Any | None) -> str: ...
    def field(self, conn: ClientConnection, req: Any | None, before: bytes = ...) -> bytes: ...

class ForwardRoute:
    """An admission the forward handler memoised (client, destination, method)."""

    expires: float
    scheme: bytes
    host: str
    host_b: bytes
    port: int
    decision: Any
    allowed: Any
    origins: Any
    addrs: tuple[str, ...]
    group: tuple[bytes, str, int]
    pool: ConnectionPool | None
    rule: str
    log_extra: dict
    host_line: bytes
    drop: tuple[bytes, ...] | None
    extra_10: bytes | None
    extra_11: bytes | None
    no_xff: bool

    def __init__(self, expires: float, scheme: bytes, host: str, host_b: bytes, port: int,
                 decision: Any, allowed: Any, origins: Any, addrs: tuple[str, ...],
                 pool: ConnectionPool | None, rule: str, host_line: bytes,
                 drop: tuple[bytes, ...] | None, extra_10: bytes | None,
                 extra_11: bytes | None, no_xff: bool = ...) -> None: ...

class RouteMemo:
    """(client address, target prefix, method) -> ForwardRoute, until it expires."""

    def __init__(self, max_size: int = ...) -> None: ...
    def get(self, client: str, req: Any) -> ForwardRoute | None: ...
    def put(self, client: str, req: Any, route: ForwardRoute) -> None: ...
    def __len__(self) -> int: ...

class ForwardFast(FastForward):
    """The forward handler's memoised requests sent or tunnelled in C."""

class TunnelPeer:
    name: str
    def __init__(self, name: str) -> None: ...

class TunnelSetup:
    """CONNECT after admission: connect to the addresses in order, 200, splice."""

    deadline: float
    def __init__(self, conn: ClientConnection, req: Any, host: str, port: int,
                 addrs: tuple[str, ...], timeout: float, idle: float) -> None: ...
    def start(self) -> None: ...
    def on_timeout(self) -> None: ...

class Tunnel:
    deadline: float
    done: bool

class Holding:
    """Protocol that holds a fresh server socket (and what it sent) until a tunnel starts."""

    early: list[bytes]
    eof: bool
    lost: bool

class Counters:
    """Per-worker exchange counters (the admin interface reads them)."""

def splice(a: Any, b: Any, to_b: bytes, to_a: bytes, idle: float, deadlines: Any,
           on_close: Callable[[int, int], None] | None = ...) -> Tunnel:
    """Join two transports into a byte tunnel."""

def splice_held(client: Any, held: Holding, to_server: bytes, idle: float, deadlines: Any,
                on_close: Callable[[int, int], None] | None = ...) -> Tunnel:
    """Join a client transport and a held server connection into a tunnel."""

# Per-exchange numbers for the admin interface (ext/relay_stats.pxi).
BUCKETS: tuple[float, ...]

class Histogram:
    total: float
    count: int
    @property
    def counts(self) -> list[int]: ...
    def observe(self, seconds: float) -> None: ...
    def snapshot(self) -> dict: ...

class TopUrls:
    def __init__(self, k: int = 32, url_max: int = 200) -> None: ...
    def add(self, url: str | bytes, hit: bool) -> None: ...
    def snapshot(self) -> dict: ...

class Recorder:
    log: Any
    def __init__(self, stats: Any, listener: str, log: Any) -> None: ...
    def write(self, conn: ClientConnection) -> None: ...
    def write_record(self, record: dict) -> None: ...
