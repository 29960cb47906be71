# Declarations of fastproxy._h2msg (implementation in ext/h2msg.pyx): the HTTP/2
# message rules (RFC 9113 8.1-8.3) that fastproxy._h2 applies to every header list it
# decodes, and the error kinds both modules count.

# Kinds of protocol error, one counter each (names in _h2msg.ERROR_KINDS, same order).
cdef enum:
    K_OK = 0
    # malformed messages: a stream error, never forwarded (RFC 9113 8.1.1)
    K_FIELD_NAME = 1           # uppercase or a character outside token (8.2.1)
    K_FIELD_VALUE = 2          # NUL, CR, LF or another control, or edge whitespace (8.2.1)
    K_CONNECTION_FIELD = 3     # connection-specific field (8.2.2)
    K_TE = 4                   # te other than "trailers" (8.2.2)
    K_PSEUDO = 5               # bad, missing, repeated, unknown or misplaced pseudo-header (8.3)
    K_AUTHORITY_HOST = 6       # :authority and host disagree (8.3.1)
    K_CONTENT_LENGTH = 7       # bad content-length, or DATA that differs from it (8.1.1)
    K_TRAILERS = 8             # trailers without END_STREAM or with pseudo-headers (8.1)
    K_STATUS = 9               # bad :status, 101, 1xx ending the stream (8.3.2, 8.6)
    K_HEADER_LIST = 10         # decoded header list over SETTINGS_MAX_HEADER_LIST_SIZE (6.5.2)
    # stream and connection errors
    K_BAD_PREFACE = 11         # missing preface or first frame not SETTINGS (3.4)
    K_FRAME_SIZE = 12          # frame over SETTINGS_MAX_FRAME_SIZE or wrong length (4.2)
    K_STREAM_ID = 13           # stream 0 where forbidden, wrong parity, idle stream (5.1)
    K_CONTINUATION = 14        # CONTINUATION missing or unexpected (6.10)
    K_PADDING = 15             # padding not shorter than the payload (6.1)
    K_SETTINGS = 16            # invalid SETTINGS value (6.5.2)
    K_COMPRESSION = 17         # undecodable HPACK block (4.3)
    K_HEADER_BLOCK = 18        # header block over the limit: CONTINUATION flood (CVE-2024-27316)
    K_STREAM_CLOSED = 19       # frame on a closed or half-closed (remote) stream (5.1)
    K_FLOW_CONTROL = 20        # window exceeded or overflowed (6.9)
    K_WINDOW_ZERO = 21         # WINDOW_UPDATE of 0 (6.9)
    K_PUSH_PROMISE = 22        # PUSH_PROMISE received; push is off (8.4)
    K_PRIORITY = 23            # stream depending on itself (5.3.1)
    K_REFUSED = 24             # over MAX_CONCURRENT_STREAMS: REFUSED_STREAM (5.1.2)
    K_RAPID_RESET = 25         # peer resets over the rate (CVE-2023-44487)
    K_STREAM_RATE = 26         # streams started over the rate
    K_CONTROL_FLOOD = 27       # too many control replies queued unsent (PING/SETTINGS floods)
    K_EMPTY_FRAMES = 28        # too many empty DATA/HEADERS/CONTINUATION frames in a row
    N_KINDS = 29


cdef struct MsgInfo:
    long long content_length   # -1: absent; for bodiless responses 0
    int status                 # responses
    bint connect               # CONNECT request
    bint head                  # HEAD request


from fastproxy._http cimport Request, Response
from fastproxy._hpack cimport Encoder

cdef bint connection_field(const char* p, Py_ssize_t n) noexcept
cdef list h2_response_fields(Response resp)
cdef int h2_encode_forward(Encoder enc, bytearray out, Response resp, bytes extra) except -1
cdef bytes h2_request_head(list headers, bint body, bint absolute)
cdef bytes h2_response_head(list headers, bint body)
cdef list h2_request_fields(Request req, bytes scheme, bytes authority)
cdef int h2_encode_request(Encoder enc, bytearray out, Request req, bytes scheme, bytes authority) except -1
cdef list h2_trailer_fields(bytes raw)
cdef int check_request(list headers, MsgInfo* info) except -1
cdef int check_response(list headers, MsgInfo* info) except -1
cdef int check_trailers(list headers) except -1
