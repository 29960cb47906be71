"""HTTP/2 connection (RFC 9113), sans-IO, compiled from ext/h2.pyx.

Driving model: `feed(data)` parses every complete frame and calls the hook methods
below on the connection itself; override them in a subclass (a Cython subclass in the
relay overrides the cpdef hooks at C speed).  Everything to send collects in one
buffer: `data_to_send()` takes it for one transport write.  Hooks may call the send
methods; they must not call feed() (RuntimeError) and should not raise (the frame
being handled is then left half-done: drop the connection).

Roles: server (client=False) expects the client preface and answers requests on
peer-opened streams with send_headers/send_data; client (client=True) sends the
preface and opens streams with send_request.  Server push is never used: the client
role announces ENABLE_PUSH=0 and PUSH_PROMISE is a PROTOCOL_ERROR either way.

Flow control (RFC 9113 5.2, 6.9):
* Receiving: credit returns only when the caller calls acknowledge_received(stream, n)
  for bytes it consumed, so what the peer can make us buffer is bounded by
  initial_window_size per stream and connection_window_size per connection.  Credit is
  batched (a WINDOW_UPDATE per half window).  Padding and DATA for streams already
  gone are credited by the codec itself.
* Sending: send_data sends what both windows allow right now and returns how many
  bytes it took; END_STREAM goes only with the last byte.  The caller keeps the rest
  (and stops reading its source: that is the backpressure) and sends it on
  on_window_open(stream_id).  The codec never queues DATA, so a zero-window peer
  costs nothing but what the caller holds.

Errors: a malformed message (see fastproxy._h2msg) is a stream error (RST_STREAM
PROTOCOL_ERROR), never reported as headers/data; a connection error queues GOAWAY
(debug data = the error kind), calls on_connection_error, sets `dead`, and later input
is ignored: write data_to_send() and close.  `errors` counts each kind on this
connection, error_totals() in the process.

Limits (options, strict defaults): max_concurrent_streams 128 (REFUSED_STREAM beyond,
RFC 9113 5.1.2); max_header_list_size 64 KiB (decoded, 6.5.2: a larger list is decoded in full and
handed to on_headers_too_large, by default a stream error; HPACK bombs cost no memory); max_header_block (default = max_header_list_size:
the header block's bytes on the wire, frame headers included, so an endless run of
CONTINUATION frames, even empty ones, ends in GOAWAY ENHANCE_YOUR_CALM,
CVE-2024-27316); max_frame_size 16 KiB; reset_rate 100/s with reset_burst 1000 (peer
RST_STREAMs, CVE-2023-44487 rapid reset -> GOAWAY ENHANCE_YOUR_CALM); stream_rate
10000/s with stream_burst 10000 (streams started); max_control_frames 1000 (PING/
SETTINGS ACKs and our RST_STREAMs queued since the last data_to_send: floods from a
peer that does not read); max_empty_frames 10 (consecutive empty DATA/HEADERS/
CONTINUATION, CVE-2019-9518).  The local SETTINGS (window, table size) take effect
when the peer acknowledges them (6.5.3).
"""
from collections.abc import Iterable
from typing import Final, TypeAlias

from fastproxy._h2frames import FrameWriter

Header: TypeAlias = tuple[bytes, bytes]

PREFACE: Final[bytes]
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
SETTINGS_TIMEOUT: Final = 0x4
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
CONNECT_ERROR: Final = 0xa
ENHANCE_YOUR_CALM: Final = 0xb
INADEQUATE_SECURITY: Final = 0xc
HTTP_1_1_REQUIRED: Final = 0xd

def error_totals() -> dict[str, int]:
    """Protocol errors of every kind counted by all connections of this process."""

class Connection(FrameWriter):
    client: bool
    max_concurrent_streams: int
    initial_window_size: int
    connection_window_size: int
    max_frame_size: int
    max_header_list_size: int
    max_header_block: int
    max_control_frames: int
    max_empty_frames: int
    stream_rate: float
    stream_burst: float
    reset_rate: float
    reset_burst: float
    peer_initial_window_size: int
    peer_max_concurrent_streams: int
    peer_max_header_list_size: int
    dead: bool
    goaway_received: int        # -1, or the peer's last stream id
    goaway_sent: int            # -1, or ours
    last_peer_stream: int
    active_local: int
    active_peer: int
    send_window: int            # connection-level send window
    def __init__(self, client: bool = False, *, max_concurrent_streams: int = 128,
                 initial_window_size: int = 65535, connection_window_size: int = 1 << 20,
                 max_frame_size: int = 16384, max_header_list_size: int = 65536,
                 max_header_block: int = -1, header_table_size: int = 4096,
                 max_control_frames: int = 1000, max_empty_frames: int = 10,
                 stream_rate: float = 10000.0, stream_burst: float = 10000.0,
                 reset_rate: float = 100.0, reset_burst: float = 1000.0) -> None: ...
    @property
    def errors(self) -> dict[str, int]: ...
    @property
    def streams_available(self) -> int: ...
    # hooks, in the order a stream meets them
    def on_headers(self, stream_id: int, headers: list[Header], end_stream: bool) -> None:
        """A request (server role) or a final response (client role) arrived, checked."""
    def on_headers_too_large(self, stream_id: int, end_stream: bool) -> None:
        """A request's header list was over max_header_list_size (server role); the
        stream is open for an answer. By default it is reset (PROTOCOL_ERROR)."""
    def on_informational(self, stream_id: int, headers: list[Header]) -> None:
        """A 1xx response arrived (client role)."""
    def on_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Body bytes (a frame may come in pieces); acknowledge_received once consumed."""
    def on_trailers(self, stream_id: int, headers: list[Header]) -> None:
        """Trailers arrived; they end the peer's side."""
    def on_reset(self, stream_id: int, error_code: int, remote: bool) -> None:
        """The stream is gone: the peer reset it (remote) or we did for a protocol error."""
    def on_window_open(self, stream_id: int) -> None:
        """A stream send_data left short may send again."""
    def on_goaway(self, last_stream_id: int, error_code: int, debug: bytes) -> None:
        """The peer is closing; our streams above last_stream_id were not processed
        (already forgotten by the codec): retry them elsewhere."""
    def on_settings(self) -> None:
        """The peer's SETTINGS were applied (peer_* attributes, e.g. max concurrent streams)."""
    def on_ping_ack(self, opaque: bytes) -> None: ...
    def on_connection_error(self, error_code: int, kind: str) -> None:
        """GOAWAY is queued: write data_to_send() and close."""
    # caller API
    def feed(self, data: bytes | bytearray | memoryview) -> None: ...
    def send_headers(self, stream_id: int, headers: Iterable[Header], end_stream: bool = False) -> int:
        """Response, 1xx or trailers on a stream; 0, or -1 if the stream cannot send."""
    def send_request(self, headers: Iterable[Header], end_stream: bool = False) -> int:
        """Client role: open a stream; its id, or 0 when none may open now (peer's
        MAX_CONCURRENT_STREAMS reached, GOAWAY received, ids exhausted)."""
    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview, end_stream: bool = False) -> int:
        """Bytes taken (what the windows allow), or -1 if the stream cannot send."""
    def reset_stream(self, stream_id: int, error_code: int = 0x8) -> int: ...
    def acknowledge_received(self, stream_id: int, n: int) -> int: ...
    def goaway(self, error_code: int = 0, last_stream_id: int = -1) -> int: ...
    def ping(self, opaque: bytes) -> int: ...
    def stream_send_window(self, stream_id: int) -> int: ...
